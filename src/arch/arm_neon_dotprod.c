/* arm_neon_dotprod.c - the "neon_dotprod" table: arm_neon.c compiled a second time, with the
 * dot product instructions (CMakeLists.txt gives this file, and only this file,
 * -march=armv8.2-a+dotprod), so that its Q8_0 / Q4_0 block dots use SDOT. dispatch.c offers it only
 * when AT_HWCAP has HWCAP_ASIMDDP. The code lives in one place; see arm_neon.c. */
#define LMOE_NEON_DOTPROD 1
#include "arm_neon.c"
