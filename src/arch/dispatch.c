/* dispatch.c - picks the kernel table for this CPU, once.
 *
 * The candidates are listed best first, each with a predicate saying whether this CPU can run
 * it; the first supported one wins. The environment variable LLAMAMOE_KERNELS names a table to
 * use instead (e.g. "generic" to force the portable oracle); a name that is unknown, or whose
 * table this CPU cannot run, falls back to generic, the one table that is always safe. This is
 * the only file that reads CPU features (CPUID, XGETBV, HWCAP), and it is compiled without ISA
 * flags, so the checks themselves run on any CPU of the target. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* CMake defines LMOE_HAVE_X86_AVX2 / LMOE_HAVE_X86_AVX512 when it builds those tables (x86-64
 * target, compiler with the flags); the __x86_64__ test keeps other targets (or -m32) out. */
#if defined(__x86_64__) && (defined(LMOE_HAVE_X86_AVX2) || defined(LMOE_HAVE_X86_AVX512) || \
                             defined(LMOE_HAVE_X86_AVX512VNNI))
#define LMOE_X86_TABLES 1
#include <cpuid.h>

/* What this CPU and OS can run, read once. A feature counts only if the OS also saves the
 * registers it uses on a context switch (XCR0, read by XGETBV; valid when CPUID says OSXSAVE). */
typedef struct x86_features {
    int avx2;   /* AVX2 + FMA + F16C, and the OS saves XMM and YMM state (XCR0 bits 1-2) */
    int avx512; /* all of the above + AVX512F/BW/VL, and the OS saves opmask and ZMM state
                 * (XCR0 bits 5-7) */
    int avx512vnni; /* all of the above + AVX512_VNNI */
} x86_features;

#define XCR0_XMM_YMM 0x06u       /* bit 1 SSE, bit 2 AVX (upper halves of YMM) */
#define XCR0_OPMASK_ZMM 0xe0u    /* bit 5 opmask, bit 6 upper halves of ZMM0-15, bit 7 ZMM16-31 */

static uint64_t read_xcr0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

static x86_features x86;
static pthread_once_t x86_once = PTHREAD_ONCE_INIT;

static void detect_x86_features(void) {
    unsigned int eax, ebx, ecx, edx;
    if (__get_cpuid_max(0, NULL) < 7 || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return;
    int fma_f16c = (ecx & bit_FMA) && (ecx & bit_F16C);
    if (!(ecx & bit_OSXSAVE) || !(ecx & bit_AVX)) return; /* XGETBV unavailable or no AVX */
    uint64_t xcr0 = read_xcr0();
    int os_ymm = (xcr0 & XCR0_XMM_YMM) == XCR0_XMM_YMM;
    int os_zmm = os_ymm && (xcr0 & XCR0_OPMASK_ZMM) == XCR0_OPMASK_ZMM;
    __cpuid_count(7, 0, eax, ebx, ecx, edx);
    x86.avx2 = os_ymm && fma_f16c && (ebx & bit_AVX2);
    /* x86_avx512.c is also compiled with -mavx2 -mfma -mf16c, so it needs all of avx2 too. */
    x86.avx512 = x86.avx2 && os_zmm && (ebx & bit_AVX512F) && (ebx & bit_AVX512BW) &&
                 (ebx & bit_AVX512VL);
    x86.avx512vnni = x86.avx512 && (ecx & bit_AVX512VNNI);
}

static const x86_features *x86_features_get(void) {
    if (pthread_once(&x86_once, detect_x86_features) != 0) {
        static const x86_features none = {0, 0, 0};
        return &none;
    }
    return &x86;
}
#endif

/* CMake defines LMOE_HAVE_ARM_NEON / LMOE_HAVE_ARM_NEON_DOTPROD when it builds arm_neon.c /
 * arm_neon_dotprod.c (AArch64 target); the __aarch64__ test keeps other targets out. */
#if defined(__aarch64__) && (defined(LMOE_HAVE_ARM_NEON) || defined(LMOE_HAVE_ARM_NEON_DOTPROD))
#define LMOE_ARM_TABLES 1

#if defined(__linux__)
#include <sys/auxv.h>
/* The kernel's AT_HWCAP bits (asm/hwcap.h), for C libraries whose headers lack them. */
#ifndef HWCAP_ASIMD
#define HWCAP_ASIMD (1UL << 1)
#endif
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif

/* What the kernel says this CPU runs (it also hides what it does not save on a context switch).
 * getauxval reads the auxiliary vector the process started with: cheap, thread-safe, constant. */
static int neon_supported(void) { return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0; }
static int neon_dotprod_supported(void) {
    unsigned long hwcap = getauxval(AT_HWCAP);
    return (hwcap & HWCAP_ASIMD) && (hwcap & HWCAP_ASIMDDP);
}
#else
/* No AT_HWCAP to ask: Advanced SIMD is part of every AArch64 ABI in use, and the dot product
 * instructions count only when the whole build already assumes them. */
static int neon_supported(void) { return 1; }
static int neon_dotprod_supported(void) {
#if defined(__ARM_FEATURE_DOTPROD)
    return 1;
#else
    return 0;
#endif
}
#endif
#endif

#if defined(LMOE_X86_TABLES) && defined(LMOE_HAVE_X86_AVX512VNNI)
static int avx512vnni_supported(void) { return x86_features_get()->avx512vnni; }
/* x86_avx512.c compiled again by x86_avx512vnni.c. */
#endif
#if defined(LMOE_X86_TABLES) && defined(LMOE_HAVE_X86_AVX512)
static int avx512_supported(void) { return x86_features_get()->avx512; }
#endif
#if defined(LMOE_X86_TABLES) && defined(LMOE_HAVE_X86_AVX2)
static int avx2_supported(void) { return x86_features_get()->avx2; }
#endif

typedef struct kernel_candidate {
    const char *name;
    int (*supported)(void);             /* nonzero if this CPU can run the table */
    const lmoe_kernels *(*table)(void);
} kernel_candidate;

static int always_supported(void) { return 1; }

/* Best first per architecture, generic last; each entry is guarded by the build (is the table
 * compiled?) and by its own feature check (can this CPU run it?). */
static const kernel_candidate kernel_candidates[] = {
#if defined(LMOE_X86_TABLES) && defined(LMOE_HAVE_X86_AVX512VNNI)
    {"avx512vnni", avx512vnni_supported, lmoe_kernels_avx512vnni},
#endif
#if defined(LMOE_X86_TABLES) && defined(LMOE_HAVE_X86_AVX512)
    {"avx512", avx512_supported, lmoe_kernels_avx512},
#endif
#if defined(LMOE_X86_TABLES) && defined(LMOE_HAVE_X86_AVX2)
    {"avx2", avx2_supported, lmoe_kernels_avx2},
#endif
#if defined(LMOE_ARM_TABLES) && defined(LMOE_HAVE_ARM_NEON_DOTPROD)
    {"neon_dotprod", neon_dotprod_supported, lmoe_kernels_neon_dotprod},
#endif
#if defined(LMOE_ARM_TABLES) && defined(LMOE_HAVE_ARM_NEON)
    {"neon", neon_supported, lmoe_kernels_neon},
#endif
    {"generic", always_supported, lmoe_kernels_generic},
};

#define N_KERNEL_CANDIDATES (sizeof kernel_candidates / sizeof kernel_candidates[0])

/* The choice, written once under pthread_once and read-only afterwards: with the x86 feature
 * bits above, the only mutable globals of the library besides the thread-local error text. */
static const lmoe_kernels *selected_kernels;
static pthread_once_t select_once = PTHREAD_ONCE_INIT;

const lmoe_kernels *lmoe_kernels_by_name(const char *name) {
    if (name == NULL) return NULL;
    for (size_t i = 0; i < N_KERNEL_CANDIDATES; i++) {
        const kernel_candidate *c = &kernel_candidates[i];
        if (strcmp(c->name, name) == 0) return c->supported() ? c->table() : NULL;
    }
    return NULL;
}

const char *const *lmoe_kernels_compiled(void) {
    static const char *const names[] = {
#if defined(LMOE_X86_TABLES) && defined(LMOE_HAVE_X86_AVX512VNNI)
        "avx512vnni",
#endif
#if defined(LMOE_X86_TABLES) && defined(LMOE_HAVE_X86_AVX512)
        "avx512",
#endif
#if defined(LMOE_X86_TABLES) && defined(LMOE_HAVE_X86_AVX2)
        "avx2",
#endif
#if defined(LMOE_ARM_TABLES) && defined(LMOE_HAVE_ARM_NEON_DOTPROD)
        "neon_dotprod",
#endif
#if defined(LMOE_ARM_TABLES) && defined(LMOE_HAVE_ARM_NEON)
        "neon",
#endif
        "generic", NULL};
    return names;
}

static const lmoe_kernels *best_supported_kernels(void) {
    for (size_t i = 0; i < N_KERNEL_CANDIDATES; i++)
        if (kernel_candidates[i].supported()) return kernel_candidates[i].table();
    return lmoe_kernels_generic();
}

static void select_kernels(void) {
    const char *forced = getenv("LLAMAMOE_KERNELS");
    if (forced != NULL && forced[0] != '\0') {
        const lmoe_kernels *k = lmoe_kernels_by_name(forced);
        selected_kernels = k != NULL ? k : lmoe_kernels_generic();
    } else {
        selected_kernels = best_supported_kernels();
    }
}

const lmoe_kernels *lmoe_kernels_select(void) {
    if (pthread_once(&select_once, select_kernels) != 0) return lmoe_kernels_generic();
    return selected_kernels;
}
