# Cross build for 64-bit Arm Linux with Debian's cross toolchain, tests run under qemu-user:
#   apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
#   cmake -S . -B build-arm -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
#   cmake --build build-arm && ctest --test-dir build-arm
# ctest prefixes every test with CMAKE_CROSSCOMPILING_EMULATOR. "-cpu max" gives the emulated CPU
# every feature qemu has (the dot product instructions too, so the neon_dotprod table runs);
# LLAMAMOE_AARCH64_QEMU_CPU picks another model (e.g. cortex-a53, without them).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(LLAMAMOE_AARCH64_TRIPLE aarch64-linux-gnu CACHE STRING "Cross toolchain prefix")
set(LLAMAMOE_AARCH64_SYSROOT /usr/aarch64-linux-gnu CACHE PATH
    "Target libraries and headers (qemu -L, find root)")
set(LLAMAMOE_AARCH64_QEMU_CPU max CACHE STRING "qemu-aarch64 -cpu for the tests")

set(CMAKE_C_COMPILER ${LLAMAMOE_AARCH64_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${LLAMAMOE_AARCH64_TRIPLE}-g++)

set(CMAKE_FIND_ROOT_PATH ${LLAMAMOE_AARCH64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

find_program(LLAMAMOE_QEMU_AARCH64 qemu-aarch64 NO_CMAKE_FIND_ROOT_PATH)
if(LLAMAMOE_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR
      ${LLAMAMOE_QEMU_AARCH64} -L ${LLAMAMOE_AARCH64_SYSROOT} -cpu ${LLAMAMOE_AARCH64_QEMU_CPU})
endif()
