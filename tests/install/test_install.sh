#!/bin/sh
# Installs a build tree into a fresh prefix and builds examples/simple.c against that prefix only,
# as a user of the installed library would:
#   - the prefix holds the header, libllamamoe.so (SONAME by major version), libllamamoe.a,
#     llamamoe.pc and the CMake package, and nothing else (no tests, benchmarks or examples);
#   - cc simple.c $(pkg-config --cflags --libs llamamoe): it runs on the prefix's shared library
#     (ldd checks that it is the prefix's, not the build tree's);
#   - the same with pkg-config --static --libs against the prefix's libllamamoe.a (no shared
#     llamamoe needed at run time);
#   - a CMake project with find_package(llamamoe CONFIG REQUIRED) and llamamoe::llamamoe (and
#     llamamoe::llamamoe_static), configured with CMAKE_PREFIX_PATH=prefix;
#   - each program generates text from stories260K (converted by the build's llamamoe-convert),
#     the same greedy text from all of them.
# Without the models (or without llamamoe-convert) the programs are built but not run, and the
# test is skipped (77), except under CI=true, where missing data is a failure.
#
# usage: test_install.sh BUILD_DIR WORK_DIR SOURCE_DIR CC CMAKE GENERATOR LIBDIR VERSION MODELS_DIR
#                        --config=CONFIG --convert=LLAMAMOE_CONVERT
#   LIBDIR: CMAKE_INSTALL_LIBDIR (lib, lib64, lib/x86_64-linux-gnu: relative to the prefix)
#   CONFIG, LLAMAMOE_CONVERT: may be empty
set -eu
if [ $# -ne 11 ]; then
    echo "usage: $0 BUILD_DIR WORK_DIR SOURCE_DIR CC CMAKE GENERATOR LIBDIR VERSION MODELS_DIR" \
         "--config=CONFIG --convert=LLAMAMOE_CONVERT" >&2
    exit 2
fi
build=$1 work=$2 src=$3 cc=$4 cmake=$5 generator=$6 libdir_rel=$7 version=$8 models=$9
shift 9
config=${1#--config=}
convert=${2#--convert=}
major=${version%%.*}

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
# the physical path of a folder (symlinks and .. resolved)
physdir() { (cd "$1" 2>/dev/null && pwd -P); }

command -v pkg-config >/dev/null 2>&1 ||
    fail "pkg-config not found: install the pkg-config package (apt-get install pkg-config) to run this test"
command -v ldd >/dev/null 2>&1 || fail "ldd not found (it tells which libllamamoe a program loads)"
case $libdir_rel in
/*) fail "CMAKE_INSTALL_LIBDIR is absolute ($libdir_rel): it must be relative to install into a test prefix" ;;
esac

# ---- install into a fresh prefix ----
rm -rf "$work"
mkdir -p "$work"
prefix=$(physdir "$work")/prefix
if ! "$cmake" --install "$build" --prefix "$prefix" ${config:+--config "$config"} \
        >"$work/install.log" 2>&1; then
    cat "$work/install.log" >&2
    fail "cmake --install $build --prefix $prefix"
fi
libdir=$prefix/$libdir_rel
[ -d "$libdir" ] || fail "no $libdir after the install (CMAKE_INSTALL_LIBDIR=$libdir_rel)"

# ---- what was installed: all of the library, nothing of the tests ----
for f in include/llamamoe.h \
         "$libdir_rel/libllamamoe.a" \
         "$libdir_rel/libllamamoe.so" \
         "$libdir_rel/libllamamoe.so.$major" \
         "$libdir_rel/libllamamoe.so.$version" \
         "$libdir_rel/pkgconfig/llamamoe.pc" \
         "$libdir_rel/cmake/llamamoe/llamamoeConfig.cmake" \
         "$libdir_rel/cmake/llamamoe/llamamoeConfigVersion.cmake" \
         "$libdir_rel/cmake/llamamoe/llamamoeTargets.cmake"; do
    [ -e "$prefix/$f" ] || fail "$f was not installed"
done
[ -L "$prefix/$libdir_rel/libllamamoe.so" ] || fail "$libdir_rel/libllamamoe.so is not a symlink"
if command -v objdump >/dev/null 2>&1; then
    soname=$(objdump -p "$prefix/$libdir_rel/libllamamoe.so.$version" | awk '$1 == "SONAME" {print $2}')
    [ "$soname" = "libllamamoe.so.$major" ] ||
        fail "installed library's SONAME is '$soname', want libllamamoe.so.$major"
fi
unexpected=$(cd "$prefix" && find . ! -type d | sed 's|^\./||' | sort | while read -r f; do
    case $f in
    include/llamamoe.h | "$libdir_rel"/libllamamoe.a | "$libdir_rel"/libllamamoe.so*) ;;
    "$libdir_rel"/pkgconfig/llamamoe.pc | "$libdir_rel"/cmake/llamamoe/llamamoe*.cmake) ;;
    bin/llamamoe-* | share/*) ;; # the tools and documentation, should they be installed one day
    *) echo "$f" ;;
    esac
done)
if [ -n "$unexpected" ]; then
    echo "installed files that do not belong to the library (tests, benchmarks, examples?):" >&2
    printf '%s\n' "$unexpected" | sed 's/^/  /' >&2
    fail "cmake --install installs more than the library"
fi
echo "installed into $prefix:"
(cd "$prefix" && find . ! -type d | sed 's|^\./|  |' | sort)

# ---- pkg-config ----
PKG_CONFIG_PATH=$libdir/pkgconfig
export PKG_CONFIG_PATH
pkg-config --exists llamamoe || fail "pkg-config does not find llamamoe in $PKG_CONFIG_PATH"
pc_version=$(pkg-config --modversion llamamoe)
[ "$pc_version" = "$version" ] || fail "pkg-config --modversion llamamoe: $pc_version, want $version"
cflags=$(pkg-config --cflags llamamoe)
libs=$(pkg-config --libs llamamoe)
static_libs=$(pkg-config --static --libs llamamoe)
echo "pkg-config --cflags: $cflags"
echo "pkg-config --libs: $libs"
echo "pkg-config --static --libs: $static_libs"
# every -I and -L is a folder of the prefix: the header's and the libraries'
inc_ok=0 lib_ok=0
for w in $cflags $libs; do
    case $w in
    -I*) [ "$(physdir "${w#-I}")" = "$(physdir "$prefix/include")" ] &&
             [ -f "${w#-I}/llamamoe.h" ] && inc_ok=1 ;;
    -L*) [ "$(physdir "${w#-L}")" = "$(physdir "$libdir")" ] && lib_ok=1 ;;
    esac
done
[ $inc_ok = 1 ] || fail "pkg-config --cflags ($cflags) does not name $prefix/include"
[ $lib_ok = 1 ] || fail "pkg-config --libs ($libs) does not name $libdir"
has_word() { # has_word WORD LIST...
    want=$1
    shift
    for w in "$@"; do [ "$w" = "$want" ] && return 0; done
    return 1
}
# shellcheck disable=SC2086
{
    has_word -lllamamoe $libs || fail "pkg-config --libs has no -lllamamoe"
    has_word -lm $libs && fail "pkg-config --libs has -lm (it belongs in Libs.private)"
    has_word -lllamamoe $static_libs || fail "pkg-config --static --libs has no -lllamamoe"
    has_word -lm $static_libs || fail "pkg-config --static --libs has no -lm"
    has_word -pthread $static_libs || fail "pkg-config --static --libs has no -pthread"
}

# ldd_llamamoe PROGRAM [LD_LIBRARY_PATH]: "NAME PATH" of the libllamamoe the program loads, or
# nothing when it loads none
ldd_llamamoe() {
    if [ $# -ge 2 ]; then
        LD_LIBRARY_PATH=$2 ldd "$1"
    else
        env -u LD_LIBRARY_PATH ldd "$1"
    fi | awk '$1 ~ /^libllamamoe/ {print $1, $3}'
}
# check_shared_from_prefix PROGRAM [LD_LIBRARY_PATH]
check_shared_from_prefix() {
    found=$(ldd_llamamoe "$@")
    name=${found%% *}
    path=${found#* }
    [ "$name" = "libllamamoe.so.$major" ] ||
        fail "$1 needs '$name', want libllamamoe.so.$major (ldd: $found)"
    [ -f "$path" ] || fail "$1: libllamamoe.so.$major is not found at run time (ldd: $found)"
    [ "$(physdir "$(dirname "$path")")" = "$(physdir "$libdir")" ] ||
        fail "$1 loads $path, not the prefix's library in $libdir"
    echo "$(basename "$1") loads $path"
}
check_static() {
    found=$(ldd_llamamoe "$1")
    [ -z "$found" ] || fail "$1 was meant to link libllamamoe.a but loads $found"
    echo "$(basename "$1") loads no libllamamoe (static)"
}

# ---- (a) shared, through pkg-config; run with LD_LIBRARY_PATH set to the prefix only ----
simple=$src/examples/simple.c
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Werror -o "$work/simple_pc_shared" "$simple" $cflags $libs ||
    fail "cc simple.c \$(pkg-config --cflags --libs llamamoe)"
check_shared_from_prefix "$work/simple_pc_shared" "$libdir"

# ---- (b) static, through pkg-config --static: libllamamoe.a named in place of -lllamamoe (the
# linker would otherwise take the .so that is next to it) ----
static_args=""
for w in $static_libs; do
    [ "$w" = -lllamamoe ] && w=$libdir/libllamamoe.a
    static_args="$static_args $w"
done
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -Werror -o "$work/simple_pc_static" "$simple" $cflags $static_args ||
    fail "cc simple.c \$(pkg-config --static --cflags --libs llamamoe) with libllamamoe.a"
check_static "$work/simple_pc_static"

# ---- (c) a CMake project using the installed package ----
next_major=$((major + 1))
app=$work/cmake_app
mkdir -p "$app"
cat >"$app/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.16)
project(llamamoe_install_test LANGUAGES C)
# SameMajorVersion: the next major version must not be found
find_package(llamamoe $next_major.0 CONFIG QUIET)
if(llamamoe_FOUND)
  message(FATAL_ERROR "find_package(llamamoe $next_major.0) accepted version \${llamamoe_VERSION}")
endif()
find_package(llamamoe $version CONFIG REQUIRED)
message(STATUS "llamamoe_DIR: \${llamamoe_DIR}")
get_target_property(type llamamoe::llamamoe TYPE)
if(NOT type STREQUAL "SHARED_LIBRARY")
  message(FATAL_ERROR "llamamoe::llamamoe is a \${type}, not the shared library")
endif()
add_executable(simple_shared "$simple")
target_link_libraries(simple_shared PRIVATE llamamoe::llamamoe)
add_executable(simple_static "$simple")
target_link_libraries(simple_static PRIVATE llamamoe::llamamoe_static)
CMAKE
if ! "$cmake" -S "$app" -B "$app/build" -G "$generator" -DCMAKE_C_COMPILER="$cc" \
        -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON \
        -DCMAKE_BUILD_TYPE="${config:-Release}" >"$work/cmake_app.log" 2>&1; then
    cat "$work/cmake_app.log" >&2
    fail "configuring a project with find_package(llamamoe CONFIG REQUIRED), CMAKE_PREFIX_PATH=$prefix"
fi
found_dir=$(sed -n 's/^llamamoe_DIR:PATH=//p' "$app/build/CMakeCache.txt")
[ "$(physdir "$found_dir")" = "$(physdir "$libdir/cmake/llamamoe")" ] ||
    fail "find_package(llamamoe) found $found_dir, not the prefix's $libdir/cmake/llamamoe"
if ! "$cmake" --build "$app/build" ${config:+--config "$config"} >>"$work/cmake_app.log" 2>&1; then
    cat "$work/cmake_app.log" >&2
    fail "building against llamamoe::llamamoe and llamamoe::llamamoe_static"
fi
cmake_shared=$(find "$app/build" -type f -name simple_shared | head -n 1)
cmake_static=$(find "$app/build" -type f -name simple_static | head -n 1)
{ [ -n "$cmake_shared" ] && [ -n "$cmake_static" ]; } || fail "no simple_shared/simple_static in $app/build"
check_shared_from_prefix "$cmake_shared" # by the RPATH CMake gives it, no LD_LIBRARY_PATH
check_static "$cmake_static"

# ---- run them all on stories260K ----
skip() {
    if [ "${CI:-}" = true ]; then
        fail "$* (CI=true: missing data is a failure)"
    fi
    echo "SKIP: $*; the programs were built and linked but not run"
    exit 77
}
[ -n "$convert" ] || skip "no llamamoe-convert in this build (LLAMAMOE_BUILD_TOOLS=OFF)"
{ [ -f "$models/stories260K.bin" ] && [ -f "$models/tok512.bin" ]; } ||
    skip "no stories260K.bin and tok512.bin in $models"
model=$work/stories260K.gguf
if ! "$convert" llama2c "$models/stories260K.bin" "$models/tok512.bin" -o "$model" \
        >"$work/convert.log" 2>&1; then
    cat "$work/convert.log" >&2
    fail "llamamoe-convert llama2c stories260K.bin tok512.bin"
fi
prompt="Once upon a time"
# run_simple NAME PROGRAM [LD_LIBRARY_PATH]: exits 0 and prints the prompt and generated text
run_simple() {
    out=$work/$1.out
    rc=0
    if [ $# -ge 3 ]; then
        LD_LIBRARY_PATH=$3 "$2" "$model" "$prompt" >"$out" 2>"$work/$1.err" || rc=$?
    else
        env -u LD_LIBRARY_PATH "$2" "$model" "$prompt" >"$out" 2>"$work/$1.err" || rc=$?
    fi
    if [ "$rc" -ne 0 ]; then
        cat "$work/$1.err" >&2
        fail "$1 exited with ${rc}"
    fi
    [ "$(head -c ${#prompt} "$out")" = "$prompt" ] || fail "$1 did not print the prompt first"
    generated=$(tail -c +$((${#prompt} + 1)) "$out" | tr -d ' \n')
    [ ${#generated} -ge 10 ] || fail "$1 generated no text: '$(cat "$out")'"
    echo "$1: $(head -n 1 "$out")"
}
run_simple pc_shared "$work/simple_pc_shared" "$libdir"
run_simple pc_static "$work/simple_pc_static"
run_simple cmake_shared "$cmake_shared"
run_simple cmake_static "$cmake_static"
for name in pc_static cmake_shared cmake_static; do
    cmp -s "$work/pc_shared.out" "$work/$name.out" ||
        fail "$name printed other text than pc_shared (greedy sampling: it should be the same)"
done
echo "PASS: installed library used through pkg-config (shared, static) and find_package"
