/* x86_avx512vnni.c - the "avx512vnni" table: x86_avx512.c compiled a second time, with
 * AVX512_VNNI (CMakeLists.txt gives this file, and only this file, the avx512 flags and
 * -mavx512vnni), so that its Q8_0 / Q4_0 block dot products use vpdpbusd. dispatch.c offers it
 * only when CPUID also has the AVX512_VNNI bit. The code lives in one place; see x86_avx512.c. */
#if defined(__AVX512VNNI__)
#define LMOE_AVX512_VNNI 1
#include "x86_avx512.c"
#else
/* Not built with the VNNI flag: nothing to compile (ISO C wants a declaration). */
typedef int lmoe_x86_avx512vnni_unavailable;
#endif
