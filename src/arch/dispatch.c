/* dispatch.c - picks the kernel table for this CPU, once.
 *
 * The candidates are listed best first, each with a predicate saying whether this CPU can run
 * it; the first supported one wins. The environment variable LLAMAMOE_KERNELS names a table to
 * use instead (e.g. "generic" to force the portable oracle); a name that is unknown, or whose
 * table this CPU cannot run, falls back to generic, the one table that is always safe. This is
 * the only file that may read CPU features (CPUID, HWCAP) once SIMD tables exist. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

typedef struct kernel_candidate {
    const char *name;
    int (*supported)(void);             /* nonzero if this CPU can run the table */
    const lmoe_kernels *(*table)(void);
} kernel_candidate;

static int always_supported(void) { return 1; }

/* Best first. x86 AVX-512 / AVX2 and AArch64 NEON entries go above generic, each guarded by its
 * own feature check. */
static const kernel_candidate kernel_candidates[] = {
    {"generic", always_supported, lmoe_kernels_generic},
};

#define N_KERNEL_CANDIDATES (sizeof kernel_candidates / sizeof kernel_candidates[0])

/* The choice, written once under pthread_once and read-only afterwards: the only mutable global
 * of the library besides the thread-local error text. */
static const lmoe_kernels *selected_kernels;
static pthread_once_t select_once = PTHREAD_ONCE_INIT;

static const lmoe_kernels *kernels_by_name(const char *name) {
    for (size_t i = 0; i < N_KERNEL_CANDIDATES; i++) {
        const kernel_candidate *c = &kernel_candidates[i];
        if (strcmp(c->name, name) == 0 && c->supported()) return c->table();
    }
    return lmoe_kernels_generic();
}

static const lmoe_kernels *best_supported_kernels(void) {
    for (size_t i = 0; i < N_KERNEL_CANDIDATES; i++)
        if (kernel_candidates[i].supported()) return kernel_candidates[i].table();
    return lmoe_kernels_generic();
}

static void select_kernels(void) {
    const char *forced = getenv("LLAMAMOE_KERNELS");
    selected_kernels = forced != NULL && forced[0] != '\0' ? kernels_by_name(forced)
                                                           : best_supported_kernels();
}

const lmoe_kernels *lmoe_kernels_select(void) {
    if (pthread_once(&select_once, select_kernels) != 0) return lmoe_kernels_generic();
    return selected_kernels;
}
