/* test_gemm.c - the batched quantised kernels (gemm_q8_0 / gemm_q4_0 and their _r16 forms) of every kernel table that
 * has them, against the same table's matvec run token by token: bit for bit, which is the
 * contract in kernels.h (prefill and decode of the same token give the same numbers).
 *
 * Ragged shapes: token counts that are not a multiple of the kernels' tile, row ranges that start
 * and end inside a group of 16 or 32 rows, widths from one block up; every byte value in the
 * weights (-128 included) and in the activations; scales from zero and f16 subnormals up. The
 * weights end right before a PROT_NONE page (a read past them crashes), outputs outside the rows
 * asked for must keep their sentinel, and y's row stride is wider than the rows. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "arch/kernels.h"
#include "quant.h"
#include "test_util.h"

#define N_ROWS 77 /* two full panels of 32 and a ragged one */
static const size_t widths[] = {32, 96, 256, 4096 + 32};
static const size_t token_counts[] = {1, 2, 5, 6, 7, 13, 40};
static const size_t row_ranges[][2] = {{0, N_ROWS}, {3, 70}, {16, 17}, {32, 77}, {5, 5}, {0, 16}};
/* The _R16 types (whole groups of 16 rows): the first 64 rows of the Q8_0 / Q4_0 matrix,
 * interleaved */
#define R16_ROWS 64
static const size_t r16_row_ranges[][2] = {{0, 64}, {16, 48}, {32, 64}, {16, 32}, {0, 0}};
typedef enum weight_kind { KIND_Q8_0, KIND_Q4_0, KIND_Q8_0_R16, KIND_Q4_0_R16, N_KINDS } weight_kind;
static const char *const kind_names[] = {"q8_0", "q4_0", "q8_0_r16", "q4_0_r16"};

static lmoe_gemm_fn gemm_of(const lmoe_kernels *k, weight_kind kind) {
    lmoe_gemm_fn f[] = {k->gemm_q8_0, k->gemm_q4_0, k->gemm_q8_0_r16, k->gemm_q4_0_r16};
    return f[kind];
}

typedef void (*matvec_fn)(const void *, const void *, float *, size_t, size_t, size_t);
static matvec_fn matvec_of(const lmoe_kernels *k, weight_kind kind) {
    matvec_fn f[] = {k->matvec_q8_0, k->matvec_q4_0, k->matvec_q8_0_r16, k->matvec_q4_0_r16};
    return f[kind];
}
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))
#define SENTINEL 12345.0f

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint32_t rng_u32(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 32);
}

/* bytes of memory ending right before a PROT_NONE page */
typedef struct guarded {
    void *map;
    size_t map_bytes;
} guarded;

static void *guarded_alloc(guarded *g, size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE), pages = (bytes + page - 1) / page;
    g->map_bytes = (pages + 1) * page;
    int fd = open("/dev/zero", O_RDWR); /* MAP_ANONYMOUS is not POSIX */
    g->map = fd < 0 ? MAP_FAILED : mmap(NULL, g->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (fd >= 0) close(fd);
    if (g->map == MAP_FAILED || mprotect((char *)g->map + pages * page, page, PROT_NONE) != 0) {
        fprintf(stderr, "cannot map a guarded buffer\n");
        exit(1);
    }
    return (char *)g->map + pages * page - bytes;
}

static uint16_t random_scale(void) {
    static const float scales[] = {0.01f, 0.5f, 1e-3f, 3.0f, 0.0f, 2e-7f, 0.02f, 100.0f};
    return lmoe_f32_to_f16(scales[rng_u32() % 8] * (0.5f + (float)(rng_u32() % 1000) / 1000.0f));
}

static void fill_random(block_q8_0 *w8, block_q4_0 *w4, block_q8_0 *x, size_t n_w, size_t n_x) {
    for (size_t i = 0; i < n_w; i++) {
        w8[i].d = w4[i].d = random_scale();
        for (int j = 0; j < LMOE_QK; j++) w8[i].qs[j] = (int8_t)(rng_u32() >> 24);
        for (int j = 0; j < LMOE_QK / 2; j++) w4[i].qs[j] = (uint8_t)(rng_u32() >> 24);
    }
    for (int j = 0; j < LMOE_QK; j++) w8[0].qs[j] = -128; /* the extreme the bias must survive */
    for (size_t i = 0; i < n_x; i++) {
        x[i].d = random_scale();
        for (int j = 0; j < LMOE_QK; j++) x[i].qs[j] = (int8_t)(rng_u32() >> 24);
    }
    for (int j = 0; j < LMOE_QK; j++) x[n_x - 1].qs[j] = (int8_t)(j % 2 ? 127 : -128);
}

static size_t compare_case(const lmoe_kernels *k, weight_kind kind, const void *w,
                           const block_q8_0 *x, size_t n_cols, size_t n_tokens, size_t r0,
                           size_t r1, void *scratch) {
    size_t n_blocks = n_cols / LMOE_QK, ldy = N_ROWS + 3;
    void *packed = aligned_alloc(64, (k->gemm_x_bytes(n_tokens, n_blocks) + 63) / 64 * 64);
    float *y = malloc(n_tokens * ldy * sizeof *y), *want = malloc(N_ROWS * sizeof *want);
    /* packed in reverse token order: tokens are independent */
    for (size_t t = n_tokens; t-- > 0;) k->gemm_pack_token(x + t * n_blocks, t, n_blocks, packed);
    lmoe_q8_batch batch = {packed, n_tokens, n_blocks};
    for (size_t i = 0; i < n_tokens * ldy; i++) y[i] = SENTINEL;
    gemm_of(k, kind)(w, &batch, y, ldy, n_cols, r0, r1, scratch);
    size_t bad = 0;
    for (size_t t = 0; t < n_tokens; t++) {
        matvec_of(k, kind)(w, x + t * n_blocks, want, n_cols, r0, r1);
        for (size_t r = 0; r < ldy; r++) {
            float got = y[t * ldy + r];
            int ok = r >= r0 && r < r1 ? memcmp(&got, &want[r], sizeof got) == 0 : got == SENTINEL;
            if (!ok && bad++ < 3)
                fprintf(stderr, "  %s gemm_%s n_cols=%zu tokens=%zu rows [%zu,%zu): token %zu row "
                        "%zu: %.9g, matvec %.9g\n", k->name, kind_names[kind], n_cols,
                        n_tokens, r0, r1, t, r, got, r >= r0 && r < r1 ? want[r] : SENTINEL);
        }
    }
    free(packed), free(y), free(want);
    return bad;
}

static void test_table(const lmoe_kernels *k) {
    for (size_t wi = 0; wi < COUNT(widths); wi++) {
        size_t n_cols = widths[wi], n_blocks = n_cols / LMOE_QK;
        size_t max_tokens = token_counts[COUNT(token_counts) - 1];
        guarded g8, g4, g16, g8r;
        block_q8_0 *w8 = guarded_alloc(&g8, N_ROWS * n_blocks * sizeof *w8);
        block_q4_0 *w4 = guarded_alloc(&g4, N_ROWS * n_blocks * sizeof *w4);
        size_t n_groups = R16_ROWS / LMOE_R16_ROWS;
        block_q4_0_r16 *w16 = guarded_alloc(&g16, n_groups * n_blocks * sizeof *w16);
        block_q8_0_r16 *w8r = guarded_alloc(&g8r, n_groups * n_blocks * sizeof *w8r);
        block_q8_0 *x = malloc(max_tokens * n_blocks * sizeof *x);
        void *scratch = aligned_alloc(64, LMOE_GEMM_SCRATCH_BYTES(n_cols));
        CHECK(x && scratch);
        fill_random(w8, w4, x, N_ROWS * n_blocks, max_tokens * n_blocks);
        for (size_t grp = 0; grp < n_groups; grp++) {
            lmoe_q4_0_to_r16(w4 + grp * LMOE_R16_ROWS * n_blocks, n_blocks, n_blocks,
                             w16 + grp * n_blocks);
            lmoe_q8_0_to_r16(w8 + grp * LMOE_R16_ROWS * n_blocks, n_blocks, n_blocks,
                             w8r + grp * n_blocks);
        }
        const void *weights[] = {w8, w4, w8r, w16};
        for (int kind = KIND_Q8_0; kind < N_KINDS; kind++) {
            const void *w = weights[kind];
            int r16 = kind == KIND_Q8_0_R16 || kind == KIND_Q4_0_R16;
            const size_t(*ranges)[2] = r16 ? r16_row_ranges : row_ranges;
            size_t n_ranges = r16 ? COUNT(r16_row_ranges) : COUNT(row_ranges);
            size_t bad = 0, cases = 0;
            for (size_t ti = 0; ti < COUNT(token_counts); ti++)
                for (size_t ri = 0; ri < n_ranges; ri++, cases++)
                    bad += compare_case(k, (weight_kind)kind, w, x, n_cols, token_counts[ti],
                                        ranges[ri][0], ranges[ri][1], scratch);
            CHECK_MSG(bad == 0, "%s gemm_%s n_cols=%zu: %zu outputs differ from matvec (%zu "
                      "cases)", k->name, kind_names[kind], n_cols, bad, cases);
        }
        free(x), free(scratch);
        munmap(g8.map, g8.map_bytes), munmap(g4.map, g4.map_bytes), munmap(g16.map, g16.map_bytes);
        munmap(g8r.map, g8r.map_bytes);
    }
}

int main(void) {
    size_t tested = 0;
    for (const char *const *name = lmoe_kernels_compiled(); *name; name++) {
        const lmoe_kernels *k = lmoe_kernels_by_name(*name);
        if (!k) continue; /* this CPU cannot run it */
        CHECK_MSG((k->gemm_q8_0 == NULL) == (k->gemm_q4_0 == NULL) &&
                      (k->gemm_q4_0 == NULL) == (k->gemm_q4_0_r16 == NULL) &&
                      (k->gemm_q4_0 == NULL) == (k->gemm_q8_0_r16 == NULL) &&
                      (k->gemm_q4_0 == NULL) == (k->gemm_pack_token == NULL) &&
                      (k->gemm_q4_0 == NULL) == (k->gemm_x_bytes == NULL),
                  "table '%s' has some batched kernels but not all", k->name);
        if (!k->gemm_q8_0) {
            printf("table '%s': no batched kernels (its matvec is used token by token)\n", k->name);
            continue;
        }
        int before = test_failures;
        test_table(k);
        printf("table '%s' gemm against its matvec: %s\n", k->name,
               test_failures == before ? "ok" : "FAILED");
        tested++;
    }
    printf("%zu tables with batched kernels tested\n", tested);
    return test_finish("test_gemm");
}
