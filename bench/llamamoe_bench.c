/* llamamoe_bench.c - llamamoe-bench: this machine's limits, and how close the library gets to them
 * on synthetic models at the real LLaMA-MoE-v1 shapes.
 *
 *   llamamoe-bench [--small] [--types f32,f16,bf16,q8_0,q4_0,q8_0_r16,q4_0_r16] [--shapes 4_16,2_16,2_8,mixtral_2_8]
 *                  [--threads 1,2] [--prefill 64,512|none] [--decode N] [--keep DIR] [--seed N]
 *                  [--limits-only]
 *
 * 1. Machine limits, measured here: memory read bandwidth (a sum over a 2 GiB float array, median
 *    of 15 repetitions, for each thread count), f32 FMA peak (register-resident FMA chains) and
 *    int8 dot peak (vpdpbusd, when the CPU has AVX512-VNNI or AVX-VNNI), best of 3.
 * 2. Synthetic models with random weights (seeded; matrices ~N(0, 0.02), the projections into the
 *    residual stream ~N(0, 0.02 / sqrt(2 n_layer)), embeddings ~N(0, 1), norms 1, gate matrices
 *    scaled so the gate logits spread and tokens route differently), written straight in the
 *    requested type, one tensor at a time (gguf_writer_add_tensor_fill), to --keep DIR or a
 *    temporary folder, one file at a time, deleted after use unless kept.
 *    Block types pad the 688-wide experts to 704 with zero neurons, as `llamamoe-convert quantize`
 *    does. A file that would not fit on the disk, or in memory, is refused before it is written.
 * 3. Each (shape, type, thread count) is measured in a child process of its own (so its peak RSS is
 *    its own): load time (model load + context create on a warm page cache), decode tokens/s (median
 *    token of --decode tokens, n_ctx 1024), prefill tokens/s (one lmoe_eval of N tokens after an
 *    untimed one, as llama-bench warms up), and how
 *    those compare with the limits of step 1: decode GB/s against the read bandwidth measured again
 *    just before that row (the machine may be shared), prefill GFLOP/s against threads x the
 *    per-core peak. Markdown on stdout; progress on stderr.
 *
 * Nothing here asserts a speed: the exit status is 0 when every requested measurement ran. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "arch/kernels.h"
#include "bench_util.h"
#include "error.h"
#include "gguf.h"
#include "llamamoe.h"
#include "quant.h"
#include "threadpool.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define BENCH_X86 1
#include <cpuid.h>
#include <immintrin.h>
/* _mm256_dpbusd_avx_epi32 (AVX-VNNI) needs gcc 11 / clang 12 */
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#define BENCH_AVXVNNI 1
#endif
#endif

#define MAX_THREADS 64
#define GEN_VERSION 1 /* of the synthetic weights: part of the file names --keep reuses */
#define MAX_LIST 16
#define GIB (1024.0 * 1024.0 * 1024.0)

/* ============================================================================================ *
 * small helpers
 * ============================================================================================ */




static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Files to remove if the run is interrupted (written by the main process only). */
static char g_cleanup_file[4224], g_cleanup_tmp[4240], g_cleanup_dir[4096];

static void cleanup_files(void) {
    if (g_cleanup_file[0]) unlink(g_cleanup_file);
    if (g_cleanup_tmp[0]) unlink(g_cleanup_tmp);
    if (g_cleanup_dir[0]) rmdir(g_cleanup_dir);
}

static void on_signal(int sig) {
    cleanup_files(); /* unlink and rmdir are async-signal-safe */
    _exit(128 + sig);
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("llamamoe-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    cleanup_files();
    exit(1);
}

/* The 1-, 5- and 15-minute load averages, as `uptime` prints them. */
static void load_average(char *buf, size_t size) {
    snprintf(buf, size, "?");
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f) return;
    double a, b, c;
    if (fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3) snprintf(buf, size, "%.2f %.2f %.2f", a, b, c);
    fclose(f);
}

/* A "Key:   N kB" line of a /proc file, in kB; -1 if absent. */
static long proc_kb(const char *path, const char *key) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && line[n] == ':') {
            v = strtol(line + n + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* Runs fn(arg, i, n) for i in [0, n) on n threads (the caller runs i = 0) and waits for all. */
typedef void (*par_fn)(void *arg, int index, int n);
typedef struct par_job {
    par_fn fn;
    void *arg;
    int index, n;
} par_job;

static void *par_entry(void *p) {
    par_job *j = p;
    j->fn(j->arg, j->index, j->n);
    return NULL;
}

static void run_parallel(int n, par_fn fn, void *arg) {
    pthread_t tid[MAX_THREADS];
    par_job jobs[MAX_THREADS];
    for (int i = 1; i < n; i++) {
        jobs[i] = (par_job){fn, arg, i, n};
        if (pthread_create(&tid[i], NULL, par_entry, &jobs[i]) != 0)
            die("cannot start a thread: %s", strerror(errno));
    }
    fn(arg, 0, n);
    for (int i = 1; i < n; i++) pthread_join(tid[i], NULL);
}

/* ============================================================================================ *
 * 1. machine limits
 * ============================================================================================ */

/* ---- read bandwidth: a sum over a large float array ---- */

static float sum_plain(const float *a, size_t n) {
    float s[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j];
    for (; i < n; i++) s[0] += a[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

#ifdef BENCH_X86
__attribute__((target("avx2"))) static float sum_avx2(const float *a, size_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_add_ps(s0, _mm256_loadu_ps(a + i));
        s1 = _mm256_add_ps(s1, _mm256_loadu_ps(a + i + 8));
        s2 = _mm256_add_ps(s2, _mm256_loadu_ps(a + i + 16));
        s3 = _mm256_add_ps(s3, _mm256_loadu_ps(a + i + 24));
    }
    s0 = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    float lanes[8];
    _mm256_storeu_ps(lanes, s0);
    return sum_plain(lanes, 8) + sum_plain(a + i, n - i);
}
#endif

typedef struct bw_job {
    float *a;
    size_t n;
    float (*sum)(const float *, size_t);
    volatile float sink[MAX_THREADS];
} bw_job;

static void bw_init(void *arg, int index, int n) {
    bw_job *j = arg;
    size_t i0 = j->n * (size_t)index / (size_t)n, i1 = j->n * (size_t)(index + 1) / (size_t)n;
    for (size_t i = i0; i < i1; i++) j->a[i] = (float)(i & 7) * 0.125f; /* first touch here */
}

static void bw_sum(void *arg, int index, int n) {
    bw_job *j = arg;
    size_t i0 = j->n * (size_t)index / (size_t)n, i1 = j->n * (size_t)(index + 1) / (size_t)n;
    i0 &= ~(size_t)31;
    if (index + 1 < n) i1 &= ~(size_t)31;
    j->sink[index] = j->sum(j->a + i0, i1 - i0);
}

/* ---- f32 FMA and int8 dot peaks: independent chains that never leave the registers ---- */

#define REP12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define REP16(X) REP12(X) X(12) X(13) X(14) X(15)

/* a = a * m + b converges to b / (1 - m) = 10: no overflow, no subnormals. */
static float fma_plain(uint64_t iters) {
    float a[32];
    for (int i = 0; i < 32; i++) a[i] = (float)i;
    for (uint64_t it = 0; it < iters; it++)
        for (int i = 0; i < 32; i++) a[i] = fmaf(a[i], 0.999f, 0.01f);
    return sum_plain(a, 32);
}
#define FMA_PLAIN_FLOPS (32 * 2)

#ifdef BENCH_X86
__attribute__((target("avx2,fma"))) static float fma_avx2(uint64_t iters) {
    const __m256 m = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(0.01f);
#define DECL(i) __m256 a##i = _mm256_set1_ps((float)(i));
    REP12(DECL)
#undef DECL
    for (uint64_t it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, m, b);
        REP12(STEP)
#undef STEP
    }
    __m256 s = _mm256_setzero_ps();
#define ADD(i) s = _mm256_add_ps(s, a##i);
    REP12(ADD)
#undef ADD
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    return sum_plain(lanes, 8);
}
#define FMA_AVX2_FLOPS (12 * 8 * 2)

__attribute__((target("avx512f"))) static float fma_avx512(uint64_t iters) {
    const __m512 m = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(0.01f);
#define DECL(i) __m512 a##i = _mm512_set1_ps((float)(i));
    REP16(DECL)
#undef DECL
    for (uint64_t it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, m, b);
        REP16(STEP)
#undef STEP
    }
    __m512 s = _mm512_setzero_ps();
#define ADD(i) s = _mm512_add_ps(s, a##i);
    REP16(ADD)
#undef ADD
    return _mm512_reduce_add_ps(s);
}
#define FMA_AVX512_FLOPS (16 * 16 * 2)

/* vpdpbusd: 4 u8 x s8 products summed into each int32 lane; one multiply-add = 2 ops. */
__attribute__((target("avx512f,avx512vnni"))) static float dot_vnni512(uint64_t iters) {
    const __m512i u = _mm512_set1_epi8(3), s = _mm512_set1_epi8(-2);
#define DECL(i) __m512i a##i = _mm512_set1_epi32(i);
    REP16(DECL)
#undef DECL
    for (uint64_t it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm512_dpbusd_epi32(a##i, u, s);
        REP16(STEP)
#undef STEP
    }
    __m512i t = _mm512_setzero_si512();
#define ADD(i) t = _mm512_add_epi32(t, a##i);
    REP16(ADD)
#undef ADD
    uint32_t lanes[16]; /* the sums wrap; unsigned arithmetic keeps that defined */
    _mm512_storeu_si512((void *)lanes, t);
    uint32_t r = 0;
    for (int i = 0; i < 16; i++) r += lanes[i];
    return (float)r;
}
#define DOT_VNNI512_OPS (16 * 64 * 2)

#ifdef BENCH_AVXVNNI
__attribute__((target("avx2,avxvnni"))) static float dot_avxvnni(uint64_t iters) {
    const __m256i u = _mm256_set1_epi8(3), s = _mm256_set1_epi8(-2);
#define DECL(i) __m256i a##i = _mm256_set1_epi32(i);
    REP12(DECL)
#undef DECL
    for (uint64_t it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm256_dpbusd_avx_epi32(a##i, u, s);
        REP12(STEP)
#undef STEP
    }
    __m256i t = _mm256_setzero_si256();
#define ADD(i) t = _mm256_add_epi32(t, a##i);
    REP12(ADD)
#undef ADD
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, t);
    uint32_t r = 0;
    for (int i = 0; i < 8; i++) r += lanes[i];
    return (float)r;
}
#define DOT_AVXVNNI_OPS (12 * 32 * 2)
#endif

static bool x86_avx512_vnni(void) {
    unsigned a, b, c, d;
    if (!__builtin_cpu_supports("avx512f") || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    return (c >> 11) & 1u; /* CPUID.(7,0):ECX.AVX512_VNNI */
}

static bool x86_avx_vnni(void) {
    unsigned a, b, c, d;
    if (!__builtin_cpu_supports("avx2") || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    return (a >> 4) & 1u; /* CPUID.(7,1):EAX.AVX_VNNI */
}
#endif /* BENCH_X86 */

typedef struct peak_kernel {
    const char *name;
    float (*fn)(uint64_t iters);
    double ops_per_iter;
} peak_kernel;

typedef struct peak_job {
    const peak_kernel *k;
    uint64_t iters;
    volatile float sink[MAX_THREADS];
} peak_job;

static void peak_run(void *arg, int index, int n) {
    (void)n;
    peak_job *j = arg;
    j->sink[index] = j->k->fn(j->iters);
}

/* Ops/s of kernel k on n_threads threads at once: best of 3 runs of about `seconds` each. */
static double measure_peak(const peak_kernel *k, int n_threads, double seconds) {
    peak_job job = {.k = k, .iters = 1u << 14};
    for (;;) { /* calibrate on one thread */
        double t0 = bench_now();
        peak_run(&job, 0, 1);
        double t = bench_now() - t0;
        if (t > 0.02 || job.iters > (1ull << 40)) {
            job.iters = (uint64_t)((double)job.iters * seconds / (t > 1e-6 ? t : 1e-6)) + 1;
            break;
        }
        job.iters *= 4;
    }
    double best = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = bench_now();
        run_parallel(n_threads, peak_run, &job);
        double ops = k->ops_per_iter * (double)job.iters * n_threads / (bench_now() - t0);
        if (ops > best) best = ops;
    }
    return best;
}

typedef struct machine_limits {
    int n_counts;
    int threads[MAX_LIST];
    double bw[MAX_LIST];      /* bytes/s, median */
    double bw_min[MAX_LIST], bw_max[MAX_LIST];
    double fma[MAX_LIST];     /* flop/s with that many threads at once */
    double dot[MAX_LIST];     /* int8 op/s with that many threads at once; 0 = not measured */
    double fma_core, dot_core; /* one thread alone: the per-core peaks the tables compare with */
    double region_hot_us[MAX_LIST];  /* one empty parallel region of the library's pool, back to back */
    double region_cold_us[MAX_LIST]; /* the same after the workers went to sleep */
    const char *bw_kernel, *fma_kernel, *dot_kernel;
    const char *dot_note;
    float (*sum)(const float *, size_t);
    double bw_gib;
    int bw_reps;
} machine_limits;

static int limits_index(const machine_limits *l, int n_threads) {
    for (int i = 0; i < l->n_counts; i++)
        if (l->threads[i] == n_threads) return i;
    return -1;
}

/* Read bandwidth with n_threads threads: the median (and the slowest and fastest) of `reps` sums
 * over a fresh array of l->bw_gib GiB, after one warm-up pass. */
static void measure_bandwidth(const machine_limits *l, int n_threads, double *med, double *lo,
                              double *hi) {
    bw_job bw = {.sum = l->sum};
    bw.n = (size_t)(l->bw_gib * GIB / sizeof(float));
    bw.a = malloc(bw.n * sizeof(float));
    double *t = malloc((size_t)l->bw_reps * sizeof *t);
    if (!bw.a || !t) die("cannot allocate %.2f GiB for the bandwidth measurement", l->bw_gib);
    run_parallel(n_threads, bw_init, &bw);
    run_parallel(n_threads, bw_sum, &bw); /* warm-up */
    for (int r = 0; r < l->bw_reps; r++) {
        double t0 = bench_now();
        run_parallel(n_threads, bw_sum, &bw);
        t[r] = bench_now() - t0;
    }
    double bytes = (double)bw.n * sizeof(float);
    *med = bytes / bench_median(t, l->bw_reps);
    if (lo) *lo = bytes / t[l->bw_reps - 1];
    if (hi) *hi = bytes / t[0];
    free(t);
    free(bw.a);
}

/* ---- the library's thread pool: what one parallel region costs when it does no work ---- */

static void empty_region(void *arg, size_t begin, size_t end, int thread_id) {
    (void)arg, (void)begin, (void)end, (void)thread_id;
}

/* The median cost of one threadpool_parallel_for of n_threads one-item chunks: back to back
 * (workers spinning: what a decode step's regions pay) and after 20 ms idle (workers asleep on
 * the condition variable: the first region of a step after the application did other work). */
static void measure_regions(int n_threads, double *hot_us, double *cold_us) {
    lmoe_threadpool *pool = NULL;
    if (threadpool_create(n_threads, &pool) != LMOE_OK) die("cannot start a thread pool");
    enum { BATCHES = 9, PER_BATCH = 20000, COLD = 25 };
    double hot[BATCHES], cold[COLD];
    for (int b = 0; b < BATCHES; b++) {
        double t0 = bench_now();
        for (int i = 0; i < PER_BATCH; i++)
            threadpool_parallel_for(pool, (size_t)n_threads, 1, empty_region, NULL);
        hot[b] = (bench_now() - t0) / PER_BATCH;
    }
    for (int i = 0; i < COLD; i++) {
        struct timespec idle = {0, 20 * 1000 * 1000};
        nanosleep(&idle, NULL);
        double t0 = bench_now();
        threadpool_parallel_for(pool, (size_t)n_threads, 1, empty_region, NULL);
        cold[i] = bench_now() - t0;
    }
    threadpool_free(pool);
    *hot_us = bench_median(hot, BATCHES) * 1e6;
    *cold_us = bench_median(cold, COLD) * 1e6;
}

static void measure_limits(machine_limits *l, double gib, int reps, double peak_seconds) {
    l->bw_gib = gib;
    l->bw_reps = reps;
    peak_kernel fma = {"plain C fmaf (no x86 SIMD)", fma_plain, FMA_PLAIN_FLOPS};
    peak_kernel dot = {NULL, NULL, 0};
    l->sum = sum_plain;
    l->bw_kernel = "plain C, 8 accumulators";
    l->dot_note = "no int8 dot instructions measured on this architecture";
#ifdef BENCH_X86
    if (__builtin_cpu_supports("avx2")) {
        l->sum = sum_avx2;
        l->bw_kernel = "AVX2 loads, 4 accumulators";
    }
    if (__builtin_cpu_supports("avx512f"))
        fma = (peak_kernel){"AVX-512 vfmadd, 16 chains", fma_avx512, FMA_AVX512_FLOPS};
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        fma = (peak_kernel){"AVX2 vfmadd, 12 chains", fma_avx2, FMA_AVX2_FLOPS};
    if (x86_avx512_vnni()) {
        dot = (peak_kernel){"AVX512-VNNI vpdpbusd zmm, 16 chains", dot_vnni512, DOT_VNNI512_OPS};
    } else if (x86_avx_vnni()) {
#ifdef BENCH_AVXVNNI
        dot = (peak_kernel){"AVX-VNNI vpdpbusd ymm, 12 chains", dot_avxvnni, DOT_AVXVNNI_OPS};
#else
        l->dot_note = "the CPU has AVX-VNNI but this compiler cannot emit it: skipped";
#endif
    } else {
        l->dot_note = "no AVX512-VNNI or AVX-VNNI on this CPU: int8 peak skipped";
    }
#endif
    l->fma_kernel = fma.name;
    l->dot_kernel = dot.name;
    l->fma_core = measure_peak(&fma, 1, peak_seconds);
    l->dot_core = dot.fn ? measure_peak(&dot, 1, peak_seconds) : 0.0;
    for (int c = 0; c < l->n_counts; c++) {
        int nt = l->threads[c];
        measure_bandwidth(l, nt, &l->bw[c], &l->bw_min[c], &l->bw_max[c]);
        l->fma[c] = nt == 1 ? l->fma_core : measure_peak(&fma, nt, peak_seconds);
        l->dot[c] = !dot.fn ? 0.0 : nt == 1 ? l->dot_core : measure_peak(&dot, nt, peak_seconds);
        measure_regions(nt, &l->region_hot_us[c], &l->region_cold_us[c]);
        fprintf(stderr, "limits, %d thread%s: read %.1f GB/s, f32 FMA %.0f GFLOP/s, int8 %.0f GOP/s\n",
                nt, nt == 1 ? "" : "s", l->bw[c] / 1e9, l->fma[c] / 1e9, l->dot[c] / 1e9);
    }
}

/* ============================================================================================ *
 * 2. synthetic models
 * ============================================================================================ */

typedef struct shape_def {
    const char *name;
    const char *title;
    uint32_t n_embd, n_layer, n_head, n_vocab, n_ff, n_expert, n_used;
    float score_scale;  /* llama_moe.expert_score_scale */
    bool mlp_gate;      /* tanh-MLP gate (llama_moe); else linear */
    bool llama_arch;    /* Mixtral-style "llama" file (linear gate, renormalised top-k) */
} shape_def;

static const shape_def shapes[] = {
    {"4_16", "LLaMA-MoE-v1-3.5B (4/16)", 4096, 32, 32, 32000, 688, 16, 4, 4.0f, true, false},
    {"2_16", "LLaMA-MoE-v1-3.0B (2/16)", 4096, 32, 32, 32000, 688, 16, 2, 8.0f, true, false},
    {"2_8", "LLaMA-MoE-v1-3.5B (2/8)", 4096, 32, 32, 32000, 1376, 8, 2, 4.0f, true, false},
    {"mixtral_2_8", "3.5B (2/8) shape in Mixtral layout, llama arch", 4096, 32, 32, 32000, 1376, 8,
     2, 1.0f, false, true},
    /* 176 is not a multiple of 32, like 688: block types exercise the padding here too */
    {"small", "tiny (CI)", 256, 2, 4, 1000, 176, 4, 2, 2.0f, true, false},
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

typedef struct type_def {
    const char *name;
    ggml_type type;
    bool int8;          /* products run on int8 quants: compare with the int8 peak */
} type_def;

static const type_def types[] = {
    {"f32", GGML_TYPE_F32, false},   {"f16", GGML_TYPE_F16, false},
    {"bf16", GGML_TYPE_BF16, false}, {"q8_0", GGML_TYPE_Q8_0, true},
    {"q4_0", GGML_TYPE_Q4_0, true},  {"q8_0_r16", LMOE_TYPE_Q8_0_R16, true},
    {"q4_0_r16", LMOE_TYPE_Q4_0_R16, true},
};
#define N_TYPES (sizeof types / sizeof types[0])

static bool is_block_type(ggml_type t) {
    return t == GGML_TYPE_Q8_0 || t == GGML_TYPE_Q4_0 || ggml_type_is_r16(t);
}

static double type_bytes(ggml_type t) {
    return (double)ggml_type_block_bytes(t) / (double)ggml_type_block_elems(t);
}

/* The FFN width as stored: block types pad to whole 32-element blocks, as the quantiser does. */
static uint32_t stored_ff(const shape_def *s, ggml_type t) {
    return is_block_type(t) ? (s->n_ff + LMOE_QK - 1) / LMOE_QK * LMOE_QK : s->n_ff;
}

/* What one decoded token reads and what a batch computes, from the shapes alone. */
typedef struct model_cost {
    double attn, experts, gates, classifier, norms, embd_row; /* parameters per token */
    double active_params;   /* all of the above */
    double bytes_token;     /* bytes a decoded token reads, in the file's types */
    double matmul_params;   /* parameters of the products every token of a batch runs */
    double file_bytes;      /* tensor data of the whole file (without the vocabulary) */
} model_cost;

static model_cost cost_of(const shape_def *s, ggml_type t) {
    model_cost c;
    double h = s->n_embd, L = s->n_layer, E = s->n_expert, k = s->n_used, V = s->n_vocab;
    double ff = stored_ff(s, t), tb = type_bytes(t);
    c.attn = L * 4 * h * h;
    c.experts = L * k * 3 * h * ff;
    c.gates = L * (h * E + (s->mlp_gate ? E * E : 0));
    c.classifier = h * V;
    c.norms = L * 2 * h + h;
    c.embd_row = h;
    c.active_params = c.attn + c.experts + c.gates + c.classifier + c.norms + c.embd_row;
    c.bytes_token = (c.attn + c.experts + c.classifier + c.embd_row) * tb + (c.gates + c.norms) * 4;
    c.matmul_params = c.attn + c.experts + c.gates;
    c.file_bytes = 2 * h * V * tb + h * 4 + L * (4 * h * h * tb + 2 * h * 4 + c.gates / L * 4 +
                                                 3 * h * ff * E * tb);
    return c;
}

/* ---- random values: seeded per row, so a row is the same whatever the thread count ---- */

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* An approximately standard normal value: Irwin-Hall, the sum of four 16-bit uniforms. */
static inline float normal_from(uint64_t *x) {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    uint64_t r = *x * 0x2545F4914F6CDD1Dull;
    double s = (double)(r & 0xFFFF) + (double)((r >> 16) & 0xFFFF) + (double)((r >> 32) & 0xFFFF) +
               (double)(r >> 48);
    return (float)((s * (1.0 / 65536.0) - 2.0) * 1.7320508075688772);
}

typedef struct gen_tensor {
    ggml_type type;
    uint64_t ne[4];
    uint64_t data_rows;     /* rows of each matrix with random values; the rest are padding (0) */
    uint64_t data_cols;     /* columns with random values; the rest are padding (0) */
    float stddev;           /* 0: every value is `value` */
    float value;
    uint64_t seed;
} gen_tensor;

typedef struct gen_job {
    const gen_tensor *t;
    char *dst;
    size_t row_bytes;
    uint64_t n_rows;
    int failed[MAX_THREADS];
} gen_job;


/* Rows [r0, r1) of this thread's share, in whole groups of `batch` rows. */
static void gen_rows(void *arg, int index, int n) {
    gen_job *j = arg;
    const gen_tensor *t = j->t;
    size_t cols = (size_t)t->ne[0];
    /* the _R16 types are written a group of 16 rows at a time (every matrix here has whole
     * groups) */
    uint64_t batch = ggml_type_is_r16(t->type) ? LMOE_R16_ROWS : 1;
    float *rows = malloc(batch * cols * sizeof *rows);
    if (!rows) {
        j->failed[index] = 1;
        return;
    }
    uint64_t r0 = j->n_rows * (uint64_t)index / (uint64_t)n / batch * batch;
    uint64_t r1 = index + 1 == n ? j->n_rows : j->n_rows * (uint64_t)(index + 1) / (uint64_t)n / batch * batch;
    for (uint64_t r = r0; r < r1; r++) {
        float *row = rows + (r % batch) * cols;
        if (t->stddev == 0.0f) {
            for (size_t c = 0; c < cols; c++) row[c] = t->value;
        } else if (r % t->ne[1] >= t->data_rows) {
            memset(row, 0, cols * sizeof *row); /* a padding neuron */
        } else {
            uint64_t state = t->seed ^ (r * 0xD1B54A32D192ED03ull), x = splitmix64(&state) | 1;
            for (size_t c = 0; c < t->data_cols; c++) row[c] = normal_from(&x) * t->stddev;
            for (size_t c = (size_t)t->data_cols; c < cols; c++) row[c] = 0.0f;
        }
        if (batch == 1)
            lmoe_row_from_f32(t->type, row, j->dst + r * j->row_bytes, cols);
        else if (r % batch == batch - 1)
            lmoe_quantize_rows_r16(t->type, rows, j->dst + (r + 1 - batch) * j->row_bytes, cols);
    }
    free(rows);
}

static int g_gen_threads = 1;

static lmoe_status gen_fill(void *user, void *dst, size_t n_bytes) {
    gen_job job = {.t = user, .dst = dst};
    const gen_tensor *t = job.t;
    job.row_bytes = (size_t)t->ne[0] / ggml_type_block_elems(t->type) * ggml_type_block_bytes(t->type);
    job.n_rows = t->ne[1] * t->ne[2] * t->ne[3];
    RETURN_ERROR_IF(job.row_bytes * job.n_rows != n_bytes, LMOE_ERR_INTERNAL,
                    "llamamoe-bench: tensor size mismatch");
    int n = job.n_rows < 64 ? 1 : g_gen_threads;
    run_parallel(n, gen_rows, &job);
    for (int i = 0; i < n; i++)
        RETURN_ERROR_IF(job.failed[i], LMOE_ERR_OUT_OF_MEMORY, "llamamoe-bench: out of memory");
    return LMOE_OK;
}

static void on_written(void *user, size_t index, size_t count, const char *name, uint64_t bytes) {
    (void)name;
    (void)bytes;
    const char *label = user;
    if (isatty(2) && ((index + 1) % 8 == 0 || index + 1 == count))
        fprintf(stderr, "\r  writing %s: %zu/%zu tensors", label, index + 1, count);
    if (isatty(2) && index + 1 == count) fputc('\n', stderr);
}

/* The tokenizer keys of a synthetic vocabulary: <unk>, <s>, </s>, the 256 byte tokens, then
 * unique pieces "t00259".. (the bench never tokenizes text; the file only has to load). */
static lmoe_status write_vocab(gguf_writer *w, uint32_t n_vocab) {
    const uint32_t n_fixed = 3 + 256;
    char *text = malloc((size_t)n_vocab * 16);
    const char **pieces = malloc(n_vocab * sizeof *pieces);
    uint32_t *lens = malloc(n_vocab * sizeof *lens);
    float *scores = malloc(n_vocab * sizeof *scores);
    int32_t *kinds = malloc(n_vocab * sizeof *kinds);
    lmoe_status st = LMOE_ERR_OUT_OF_MEMORY;
    if (text && pieces && lens && scores && kinds) {
        for (uint32_t i = 0; i < n_vocab; i++) {
            char *p = text + (size_t)i * 16;
            if (i == 0) snprintf(p, 16, "<unk>");
            else if (i == 1) snprintf(p, 16, "<s>");
            else if (i == 2) snprintf(p, 16, "</s>");
            else if (i < n_fixed) snprintf(p, 16, "<0x%02X>", i - 3);
            else snprintf(p, 16, "t%05u", i);
            pieces[i] = p;
            lens[i] = (uint32_t)strlen(p);
            kinds[i] = i == 0 ? 2 : i < 3 ? 3 : i < n_fixed ? 6 : 1;
            scores[i] = i < n_fixed ? 0.0f : -(float)(i - n_fixed);
        }
        st = gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
        if (st == LMOE_OK) st = gguf_writer_set_str_array(w, "tokenizer.ggml.tokens", pieces, lens, n_vocab);
        if (st == LMOE_OK)
            st = gguf_writer_set_array(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, n_vocab);
        if (st == LMOE_OK)
            st = gguf_writer_set_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, kinds, n_vocab);
        if (st == LMOE_OK) st = gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
        if (st == LMOE_OK) st = gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
        if (st == LMOE_OK) st = gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    } else {
        lmoe_error(st, "llamamoe-bench: out of memory for the vocabulary");
    }
    free(text);
    free(pieces);
    free(lens);
    free(scores);
    free(kinds);
    return st;
}

/* Writes shape s in type t to path. Every matrix (embedding and classifier included) in t, norms
 * and gates f32, experts padded with zero neurons for block types, as `llamamoe-convert quantize`
 * writes a converted checkpoint. */
static lmoe_status write_model(const shape_def *s, const type_def *td, uint64_t seed,
                               const char *path) {
    const char *arch = s->llama_arch ? "llama" : "llama_moe";
    ggml_type t = td->type;
    uint32_t ff = stored_ff(s, t), h = s->n_embd, E = s->n_expert;
    size_t per_layer = s->mlp_gate ? 11 : 10, n_tensors = 3 + per_layer * s->n_layer;
    gen_tensor *gt = calloc(n_tensors, sizeof *gt);
    gguf_writer *w = NULL;
    lmoe_status st = gt ? gguf_writer_create(&w) : LMOE_ERR_OUT_OF_MEMORY;
    if (!gt) lmoe_error(st, "llamamoe-bench: out of memory");
    char key[160], name[96], label[64];
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
#define SET(call) \
    if (st == LMOE_OK) st = (call)
    SET(gguf_writer_set_str(w, "general.architecture", arch));
    snprintf(name, sizeof name, "llamamoe-bench %s %s", s->name, td->name);
    SET(gguf_writer_set_str(w, "general.name", name));
    snprintf(name, sizeof name, "llamamoe-bench: random weights, seed %llu", (unsigned long long)seed);
    SET(gguf_writer_set_str(w, "general.source", name));
    SET(gguf_writer_set_u32(w, KEY("context_length"), 4096));
    SET(gguf_writer_set_u32(w, KEY("embedding_length"), h));
    SET(gguf_writer_set_u32(w, KEY("block_count"), s->n_layer));
    SET(gguf_writer_set_u32(w, KEY("feed_forward_length"), ff));
    SET(gguf_writer_set_u32(w, KEY("attention.head_count"), s->n_head));
    SET(gguf_writer_set_u32(w, KEY("attention.head_count_kv"), s->n_head));
    SET(gguf_writer_set_u32(w, KEY("rope.dimension_count"), h / s->n_head));
    SET(gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-6f));
    SET(gguf_writer_set_f32(w, KEY("rope.freq_base"), 10000.0f));
    SET(gguf_writer_set_u32(w, KEY("vocab_size"), s->n_vocab));
    SET(gguf_writer_set_u32(w, KEY("expert_count"), E));
    SET(gguf_writer_set_u32(w, KEY("expert_used_count"), s->n_used));
    if (!s->llama_arch) {
        SET(gguf_writer_set_str(w, KEY("expert_gate_type"), s->mlp_gate ? "mlp" : "linear"));
        SET(gguf_writer_set_f32(w, KEY("expert_score_scale"), s->score_scale));
    }
    if (ff != s->n_ff) SET(gguf_writer_set_u32(w, "llamamoe.feed_forward_length_unpadded", s->n_ff));
    SET(write_vocab(w, s->n_vocab));
#undef KEY

    /* gate scales: x reaching the gate has RMS 1 (RMSNorm, weight 1), so W1 ~ N(0, 1/h) gives
     * hidden values ~N(0, 1); the logits then get a standard deviation of about 2 */
    float gate_linear = 2.0f / sqrtf((float)h), gate_w1 = 1.0f / sqrtf((float)h);
    float gate_w2 = 2.0f / sqrtf(0.39f * (float)E); /* E[tanh(N(0,1))^2] ~ 0.39 */
    /* the residual stream must stay token-dependent or every token routes alike: embeddings of
     * RMS 1 (the scale of a normalised hidden state), and the projections that write into the
     * residual (attention output, expert down) scaled by 1/sqrt(2 * n_layer) as in GPT-2's
     * initialisation, so 2 * n_layer sublayers add about as much as the embedding */
    const float emb_std = 1.0f, out_std = 0.02f / sqrtf(2.0f * (float)s->n_layer);
    size_t i = 0;
    uint64_t seed_state = seed;
#define ADD(tensor_name, ttype, ndims, n0, n1, n2, rows, cols, sd, val)                            \
    do {                                                                                            \
        gen_tensor *g = &gt[i++];                                                                  \
        *g = (gen_tensor){ttype, {n0, n1, n2, 1}, rows, cols, sd, val, splitmix64(&seed_state)};  \
        SET(gguf_writer_add_tensor_fill(w, tensor_name, ttype, ndims, g->ne, gen_fill, g));       \
    } while (0)
    if (gt) {
        /* the _r16 types need whole groups of 16 rows; like the quantiser, q4_0 / q8_0 (the same
         * values) if not */
        ggml_type t_vocab = t;
        if (ggml_type_is_r16(t) && s->n_vocab % LMOE_R16_ROWS)
            t_vocab = t == LMOE_TYPE_Q4_0_R16 ? GGML_TYPE_Q4_0 : GGML_TYPE_Q8_0;
        ADD("token_embd.weight", t_vocab, 2, h, s->n_vocab, 1, s->n_vocab, h, emb_std, 0.0f);
        ADD("output_norm.weight", GGML_TYPE_F32, 1, h, 1, 1, 1, h, 0.0f, 1.0f);
        ADD("output.weight", t_vocab, 2, h, s->n_vocab, 1, s->n_vocab, h, 0.02f, 0.0f);
        for (uint32_t il = 0; il < s->n_layer && st == LMOE_OK; il++) {
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%u.%s.weight", il, suffix), name)
            ADD(NAME("attn_norm"), GGML_TYPE_F32, 1, h, 1, 1, 1, h, 0.0f, 1.0f);
            ADD(NAME("attn_q"), t, 2, h, h, 1, h, h, 0.02f, 0.0f);
            ADD(NAME("attn_k"), t, 2, h, h, 1, h, h, 0.02f, 0.0f);
            ADD(NAME("attn_v"), t, 2, h, h, 1, h, h, 0.02f, 0.0f);
            ADD(NAME("attn_output"), t, 2, h, h, 1, h, h, out_std, 0.0f);
            ADD(NAME("ffn_norm"), GGML_TYPE_F32, 1, h, 1, 1, 1, h, 0.0f, 1.0f);
            ADD(NAME("ffn_gate_inp"), GGML_TYPE_F32, 2, h, E, 1, E, h,
                s->mlp_gate ? gate_w1 : gate_linear, 0.0f);
            if (s->mlp_gate) ADD(NAME("ffn_gate_inp_2"), GGML_TYPE_F32, 2, E, E, 1, E, E, gate_w2, 0.0f);
            /* gate and up: padding neurons are zero rows; down: zero columns */
            ADD(NAME("ffn_gate_exps"), t, 3, h, ff, E, s->n_ff, h, 0.02f, 0.0f);
            ADD(NAME("ffn_up_exps"), t, 3, h, ff, E, s->n_ff, h, 0.02f, 0.0f);
            ADD(NAME("ffn_down_exps"), t, 3, ff, h, E, h, s->n_ff, out_std, 0.0f);
#undef NAME
        }
    }
#undef ADD
#undef SET
    if (st == LMOE_OK && i != n_tensors)
        st = lmoe_error(LMOE_ERR_INTERNAL, "llamamoe-bench: %zu tensors planned, %zu added", n_tensors, i);
    snprintf(label, sizeof label, "%s %s", s->name, td->name);
    if (st == LMOE_OK) {
        gguf_writer_set_progress(w, on_written, label);
        st = gguf_writer_write(w, path);
    }
    gguf_writer_free(w);
    free(gt);
    return st;
}

/* Reads the whole file once so that it is in the page cache (what a "warm" load means). */
static double warm_page_cache(const char *path, double *seconds) {
    double t0 = bench_now(), total = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    size_t size = 1 << 20;
    char *buf = malloc(size);
    ssize_t n;
    while (buf && (n = read(fd, buf, size)) > 0) total += (double)n;
    free(buf);
    close(fd);
    *seconds = bench_now() - t0;
    return total;
}

/* ============================================================================================ *
 * 3. measuring one model with one thread count (in a child process)
 * ============================================================================================ */

typedef struct bench_options {
    bool small, limits_only;
    int n_shapes, shape_idx[MAX_LIST];
    int n_types, type_idx[MAX_LIST];
    int n_threads, threads[MAX_LIST];
    int n_prefill, prefill[MAX_LIST];
    int decode_tokens;
    const char *keep_dir;
    uint64_t seed;
} bench_options;

typedef struct run_result {
    int ok;
    char error[512];
    double load_ms;
    double decode_tps;
    double prefill_tps[MAX_LIST];
    int prefill_reps[MAX_LIST];
    long max_rss_kb, rss_anon_kb;
    int min_experts_used;   /* over layers: fewest distinct experts selected during decode */
    double max_share;       /* over layers: the busiest expert's share of the decoded tokens */
    int logits_finite;
    char load_avg[64];
    char kernels[32];
} run_result;

static void child_fail(run_result *r, const char *what) {
    snprintf(r->error, sizeof r->error, "%s: %s", what, lmoe_last_error());
}

static void measure(const char *path, const bench_options *o, int n_threads, run_result *r) {
    uint32_t n_ctx = 1024;
    for (int i = 0; i < o->n_prefill; i++)
        if ((uint32_t)o->prefill[i] > n_ctx) n_ctx = (uint32_t)o->prefill[i];
    if ((uint32_t)o->decode_tokens + 40 > n_ctx) n_ctx = (uint32_t)o->decode_tokens + 40;
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = n_ctx;
    cp.n_threads = n_threads;
    lmoe_model *m = NULL;
    lmoe_context *ctx = NULL;

    /* load once untimed (the page cache is warm already; this also maps the vocabulary) */
    if (lmoe_model_load(path, NULL, &m) != LMOE_OK || lmoe_context_create(m, &cp, &ctx) != LMOE_OK) {
        child_fail(r, "load");
        lmoe_model_free(m);
        return;
    }
    lmoe_context_free(ctx);
    lmoe_model_free(m);
    double t0 = bench_now();
    lmoe_status st = lmoe_model_load(path, NULL, &m);
    if (st == LMOE_OK) st = lmoe_context_create(m, &cp, &ctx);
    r->load_ms = (bench_now() - t0) * 1e3;
    if (st != LMOE_OK) {
        child_fail(r, "load");
        lmoe_model_free(m);
        return;
    }
    snprintf(r->kernels, sizeof r->kernels, "%s", lmoe_kernels_select()->name);

    lmoe_model_info info;
    lmoe_model_get_info(m, &info, sizeof info);
    size_t n_tok = n_ctx;
    lmoe_token *tok = malloc(n_tok * sizeof *tok);
    double *times = malloc((size_t)o->decode_tokens * sizeof *times);
    size_t n_counts = (size_t)info.n_layer * (size_t)info.n_expert;
    uint64_t *counts = calloc(n_counts ? n_counts : 1, sizeof *counts);
    if (!tok || !times || !counts) {
        snprintf(r->error, sizeof r->error, "out of memory");
        goto done;
    }
    uint64_t state = o->seed ^ 0x5851F42D4C957F2Dull;
    for (size_t i = 0; i < n_tok; i++)
        tok[i] = 3 + (lmoe_token)(splitmix64(&state) % (uint64_t)(info.n_vocab - 3));

    /* touch the weights: 64 / k tokens (16 for top-4, 32 for top-2) select nearly every expert of
     * every layer, so the timed runs below do not take the first page faults of the mapping */
    int n_touch = info.n_expert_used > 0 ? 64 / info.n_expert_used : 8;
    if (n_touch < 8) n_touch = 8;
    if (n_touch > 32) n_touch = 32;
    if ((st = lmoe_eval(ctx, tok, (size_t)n_touch)) != LMOE_OK) goto fail;

    /* decode: 2 tokens of warm-up, then each token timed on its own */
    lmoe_context_reset(ctx);
    for (int i = 0; i < 2 && st == LMOE_OK; i++) st = lmoe_eval(ctx, &tok[i], 1);
    lmoe_context_reset_expert_counts(ctx);
    for (int i = 0; i < o->decode_tokens && st == LMOE_OK; i++) {
        double s0 = bench_now();
        st = lmoe_eval(ctx, &tok[2 + i], 1);
        times[i] = bench_now() - s0;
    }
    if (st != LMOE_OK) goto fail;
    r->decode_tps = 1.0 / bench_median(times, o->decode_tokens);
    if (n_counts && lmoe_context_expert_counts(ctx, counts, n_counts) == LMOE_OK) {
        r->min_experts_used = info.n_expert;
        for (int l = 0; l < info.n_layer; l++) {
            int used = 0;
            uint64_t top = 0;
            for (int e = 0; e < info.n_expert; e++) {
                uint64_t c = counts[(size_t)l * (size_t)info.n_expert + (size_t)e];
                used += c > 0;
                if (c > top) top = c;
            }
            if (used < r->min_experts_used) r->min_experts_used = used;
            double share = (double)top / (double)o->decode_tokens;
            if (share > r->max_share) r->max_share = share;
        }
    }
    const float *logits = lmoe_logits(ctx);
    r->logits_finite = 1;
    for (int i = 0; logits && i < info.n_vocab; i++)
        if (!isfinite(logits[i])) r->logits_finite = 0;

    /* prefill: one lmoe_eval of N tokens on an empty context, after one untimed run of the same
     * N (as llama-bench warms up: the first prompt of a context also takes the page faults of
     * the KV cache and scratch it touches first); repeated (median of 3) only when a run is
     * short, so the full-size shapes stay within minutes */
    for (int p = 0; p < o->n_prefill; p++) {
        double pt[3];
        int reps = 0;
        lmoe_context_reset(ctx);
        if ((st = lmoe_eval(ctx, tok, (size_t)o->prefill[p])) != LMOE_OK) goto fail;
        do {
            lmoe_context_reset(ctx);
            double s0 = bench_now();
            if ((st = lmoe_eval(ctx, tok, (size_t)o->prefill[p])) != LMOE_OK) goto fail;
            pt[reps++] = bench_now() - s0;
        } while (reps < 3 && pt[0] < 1.0);
        r->prefill_tps[p] = o->prefill[p] / bench_median(pt, reps);
        r->prefill_reps[p] = reps;
    }
    r->ok = 1;
    goto done;
fail:
    child_fail(r, "eval");
done:
    /* while the model and context are alive: anonymous memory = KV cache pages touched + scratch */
    r->rss_anon_kb = proc_kb("/proc/self/status", "RssAnon");
    free(tok);
    free(times);
    free(counts);
    lmoe_context_free(ctx);
    lmoe_model_free(m);
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) r->max_rss_kb = ru.ru_maxrss;
    load_average(r->load_avg, sizeof r->load_avg);
}

/* Measures in a fresh child process: its peak RSS is this model's alone, and a crash is reported
 * rather than ending the run. */
static void measure_in_child(const char *path, const bench_options *o, int n_threads,
                             run_result *r) {
    memset(r, 0, sizeof *r);
    int fds[2];
    if (pipe(fds) != 0) die("pipe: %s", strerror(errno));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        close(fds[0]);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        run_result res;
        memset(&res, 0, sizeof res);
        measure(path, o, n_threads, &res);
        const char *p = (const char *)&res;
        size_t left = sizeof res;
        while (left) {
            ssize_t n = write(fds[1], p, left);
            if (n <= 0) _exit(1);
            p += n;
            left -= (size_t)n;
        }
        _exit(0);
    }
    close(fds[1]);
    char *p = (char *)r;
    size_t got = 0;
    while (got < sizeof *r) {
        ssize_t n = read(fds[0], p + got, sizeof *r - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (got != sizeof *r) {
        memset(r, 0, sizeof *r);
        if (WIFSIGNALED(status))
            snprintf(r->error, sizeof r->error, "the measuring process died (signal %d)",
                     WTERMSIG(status));
        else
            snprintf(r->error, sizeof r->error, "the measuring process failed (exit %d)",
                     WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
}

/* ============================================================================================ *
 * command line and report
 * ============================================================================================ */

static void usage(FILE *f) {
    fprintf(f,
            "usage: llamamoe-bench [--small] [--types f32,f16,bf16,q8_0,q4_0,q8_0_r16,q4_0_r16]\n"
            "                      [--shapes 4_16,2_16,2_8,mixtral_2_8,small] [--threads 1,2]\n"
            "                      [--prefill 64,512|none] [--decode N] [--keep DIR] [--seed N]\n"
            "                      [--limits-only]\n"
            "\n"
            "Measures this machine's read bandwidth, f32 FMA and int8 dot peaks, then writes\n"
            "synthetic random-weight models at the LLaMA-MoE-v1 shapes (one at a time, to DIR or a\n"
            "temporary folder; deleted after use unless --keep) and measures load time, decode and\n"
            "prefill speed against those limits. Markdown on stdout, progress on stderr.\n"
            "\n"
            "  --small      the tiny shape in f32 with a 256 MiB bandwidth array: runs in seconds\n"
            "  --types      weight types (default q4_0,q4_0_r16,q8_0,q8_0_r16; --small: f32)\n"
            "  --shapes     4_16: 16 experts x 688, top-4, tanh-MLP gate, scale 4 (LLaMA-MoE-3.5B)\n"
            "               2_16: 16 x 688, top-2, scale 8 (3.0B); 2_8: 8 x 1376, top-2, scale 4\n"
            "               mixtral_2_8: the 2_8 shape as a Mixtral-layout 'llama' file (linear gate)\n"
            "               small: hidden 256, 2 layers, 4 experts x 176, top-2, vocab 1000\n"
            "               all: hidden 4096, 32 layers, 32 heads, vocab 32000 (default 4_16)\n"
            "  --threads    thread counts (default 1,2)\n"
            "  --prefill    prompt lengths, each one lmoe_eval (default 64,512; 'none' to skip)\n"
            "  --decode N   decoded tokens timed, the median reported (default 32, at least 16)\n"
            "  --keep DIR   write the models to DIR and keep them; a file already there is reused\n"
            "  --seed N     random seed of the weights and tokens (default 1)\n"
            "  --limits-only  measure and print the machine limits, nothing else\n");
}

static int parse_list(const char *arg, const char *what, int *out, int max_value,
                      const char *const *names, int n_names) {
    int n = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", arg);
    for (char *save = NULL, *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        if (n == MAX_LIST) die("%s: at most %d values", what, MAX_LIST);
        if (names) {
            int found = -1;
            for (int i = 0; i < n_names; i++)
                if (strcmp(item, names[i]) == 0) found = i;
            if (found < 0) die("%s: unknown value '%s'", what, item);
            out[n++] = found;
        } else {
            char *end;
            long v = strtol(item, &end, 10);
            if (*end || v < 1 || v > max_value) die("%s: '%s' is not a number from 1 to %d", what, item, max_value);
            out[n++] = (int)v;
        }
    }
    if (n == 0) die("%s: empty list", what);
    return n;
}

static void parse_args(int argc, char **argv, bench_options *o) {
    const char *shape_names[N_SHAPES], *type_names[N_TYPES];
    for (size_t i = 0; i < N_SHAPES; i++) shape_names[i] = shapes[i].name;
    for (size_t i = 0; i < N_TYPES; i++) type_names[i] = types[i].name;
    const char *a_shapes = NULL, *a_types = NULL, *a_threads = "1,2", *a_prefill = "64,512";
    *o = (bench_options){.decode_tokens = 32, .seed = 1};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        if (strcmp(a, "--small") == 0) o->small = true;
        else if (strcmp(a, "--limits-only") == 0) o->limits_only = true;
        else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            exit(0);
        } else if (!has_value) {
            usage(stderr);
            die("unknown option or missing value: %s", a);
        } else if (strcmp(a, "--types") == 0) a_types = argv[++i];
        else if (strcmp(a, "--shapes") == 0) a_shapes = argv[++i];
        else if (strcmp(a, "--threads") == 0) a_threads = argv[++i];
        else if (strcmp(a, "--prefill") == 0) a_prefill = argv[++i];
        else if (strcmp(a, "--keep") == 0) o->keep_dir = argv[++i];
        else if (strcmp(a, "--decode") == 0) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 16 || v > 4096) die("--decode: a number from 16 to 4096");
            o->decode_tokens = (int)v;
        } else if (strcmp(a, "--seed") == 0) {
            char *end;
            o->seed = strtoull(argv[++i], &end, 10);
            if (*end) die("--seed: not a number");
        } else {
            usage(stderr);
            die("unknown option: %s", a);
        }
    }
    if (!a_shapes) a_shapes = o->small ? "small" : "4_16";
    if (!a_types) a_types = o->small ? "f32" : "q4_0,q4_0_r16,q8_0,q8_0_r16";
    o->n_shapes = parse_list(a_shapes, "--shapes", o->shape_idx, 0, shape_names, (int)N_SHAPES);
    o->n_types = parse_list(a_types, "--types", o->type_idx, 0, type_names, (int)N_TYPES);
    o->n_threads = parse_list(a_threads, "--threads", o->threads, MAX_THREADS, NULL, 0);
    if (strcmp(a_prefill, "none") == 0) o->n_prefill = 0;
    else o->n_prefill = parse_list(a_prefill, "--prefill", o->prefill, 8192, NULL, 0);
}

static void print_limits(const machine_limits *l) {
    printf("## Machine limits (measured now)\n\n| measure |");
    for (int i = 0; i < l->n_counts; i++) printf(" %d thread%s |", l->threads[i], l->threads[i] == 1 ? "" : "s");
    printf("\n|---|");
    for (int i = 0; i < l->n_counts; i++) printf("---|");
    printf("\n| read bandwidth, GB/s (sum over %.2g GiB, median of %d; %s) |", l->bw_gib, l->bw_reps,
           l->bw_kernel);
    for (int i = 0; i < l->n_counts; i++) printf(" %.1f |", l->bw[i] / 1e9);
    printf("\n| read bandwidth, slowest .. fastest repetition |");
    for (int i = 0; i < l->n_counts; i++) printf(" %.1f .. %.1f |", l->bw_min[i] / 1e9, l->bw_max[i] / 1e9);
    printf("\n| f32 FMA, GFLOP/s, all threads at once (%s; best of 3) |", l->fma_kernel);
    for (int i = 0; i < l->n_counts; i++) printf(" %.0f |", l->fma[i] / 1e9);
    if (l->dot_kernel) {
        printf("\n| int8 dot, GOP/s, all threads at once (%s; best of 3) |", l->dot_kernel);
        for (int i = 0; i < l->n_counts; i++) printf(" %.0f |", l->dot[i] / 1e9);
    }
    printf("\n| thread pool: one empty parallel region, back to back, us (median of 9 x 20000) |");
    for (int i = 0; i < l->n_counts; i++) printf(" %.2f |", l->region_hot_us[i]);
    printf("\n| thread pool: one empty parallel region after 20 ms idle, us (median of 25) |");
    for (int i = 0; i < l->n_counts; i++) printf(" %.1f |", l->region_cold_us[i]);
    printf("\n\nPer-core peaks (one thread): f32 FMA %.0f GFLOP/s", l->fma_core / 1e9);
    if (l->dot_kernel) printf(", int8 dot %.0f GOP/s", l->dot_core / 1e9);
    else printf("; int8 dot: %s", l->dot_note);
    printf(". The results compare prefill with threads × these (a run of all threads at once is "
           "lower whenever another process holds a core).\n\n");
}

static void print_rooflines(const bench_options *o, const machine_limits *l) {
    printf("## Roofline: bytes a decoded token reads\n\n");
    printf("Active parameters per token = attention 4·h² per layer + gate + k experts × 3·h·ff + "
           "classifier h·vocab + one embedding row + norms; matrices in the file's type, norms and "
           "gates f32. Ceiling = measured bandwidth / bytes per token.\n\n");
    printf("| shape | type | ff stored | attention | experts (k of E) | classifier | active params | "
           "GB/token | file GB |");
    for (int i = 0; i < l->n_counts; i++) printf(" ceiling %dt tok/s |", l->threads[i]);
    printf("\n|---|---|---|---|---|---|---|---|---|");
    for (int i = 0; i < l->n_counts; i++) printf("---|");
    printf("\n");
    for (int si = 0; si < o->n_shapes; si++) {
        const shape_def *s = &shapes[o->shape_idx[si]];
        for (int ti = 0; ti < o->n_types; ti++) {
            const type_def *td = &types[o->type_idx[ti]];
            model_cost c = cost_of(s, td->type);
            printf("| %s | %s | %u | %.3f G | %.3f G (%u of %u) | %.3f G | %.3f G | %.3f | %.2f |",
                   s->name, td->name, stored_ff(s, td->type), c.attn / 1e9, c.experts / 1e9,
                   s->n_used, s->n_expert, c.classifier / 1e9, c.active_params / 1e9,
                   c.bytes_token / 1e9, c.file_bytes / 1e9);
            for (int i = 0; i < l->n_counts; i++) printf(" %.1f |", l->bw[i] / c.bytes_token);
            printf("\n");
        }
    }
    printf("\n");
}

static void print_table_header(const bench_options *o) {
    printf("## Results\n\n");
    printf("Decode: median token of %d (after one eval of 64/k tokens that touches the weights, "
           "and 2 tokens of warm-up), n_ctx 1024. Prefill ppN: one lmoe_eval of N tokens on an empty context "
           "after an untimed one of the same N, as llama-bench warms up (median of 3 when a run takes "
           "under 1 s). GFLOP/s = 2 × (attention + gate + k experts) "
           "params × N (+ the classifier once, for the last token's logits); attention scores not "
           "counted. %% peak: of threads × the per-core f32 FMA peak for float types, of threads × "
           "the per-core int8 dot peak for q8_0/q4_0. BW now: read bandwidth with the same thread "
           "count measured just before the row (the machine is shared, so it moves); GB/s = "
           "decode tok/s × GB/token, %% BW = GB/s / BW now. Load: lmoe_model_load + lmoe_context_create on a "
           "warm page cache (loaded once before). Peak RSS counts the mapped file pages touched; "
           "RssAnon is the process's own memory (KV cache and scratch), read while the context is "
           "alive. routing: over the decoded tokens, the fewest distinct experts any layer chose, "
           "and the busiest expert's share of the tokens in any layer (an even spread is k/E). "
           "load1: 1-minute load average when the row finished (includes this run's own "
           "threads).\n\n",
           o->decode_tokens);
    printf("| shape | type | thr | kernels | load ms | decode tok/s | GB/s | BW now | %% BW |");
    for (int p = 0; p < o->n_prefill; p++) printf(" pp%d tok/s | GFLOP/s | %% peak |", o->prefill[p]);
    printf(" peak RSS MB | RssAnon MB | routing | load1 |\n|---|---|---|---|---|---|---|---|---|");
    for (int p = 0; p < o->n_prefill; p++) printf("---|---|---|");
    printf("---|---|---|---|\n");
    fflush(stdout);
}

static void print_row(const bench_options *o, const machine_limits *l, const shape_def *s,
                      const type_def *td, int n_threads, double bw_now, const run_result *r) {
    if (!r->ok) {
        printf("| %s | %s | %d | failed: %s |\n", s->name, td->name, n_threads, r->error);
        fflush(stdout);
        return;
    }
    model_cost c = cost_of(s, td->type);
    double bw = r->decode_tps * c.bytes_token;
    printf("| %s | %s | %d | %s | %.1f | %.2f | %.2f | %.1f | %.0f%% |", s->name, td->name,
           n_threads, r->kernels, r->load_ms, r->decode_tps, bw / 1e9, bw_now / 1e9,
           100.0 * bw / bw_now);
    for (int p = 0; p < o->n_prefill; p++) {
        double flops = r->prefill_tps[p] * (2.0 * c.matmul_params + 2.0 * c.classifier / o->prefill[p]);
        double peak = n_threads * (td->int8 ? l->dot_core : l->fma_core);
        printf(" %.2f | %.1f |", r->prefill_tps[p], flops / 1e9);
        if (peak > 0) printf(" %.1f%% |", 100.0 * flops / peak);
        else printf(" n/a |");
    }
    char routing[512];
    snprintf(routing, sizeof routing, "≥%d/%u used, busiest %.0f%% (even %.0f%%)",
             r->min_experts_used, s->n_expert, 100.0 * r->max_share,
             100.0 * s->n_used / s->n_expert);
    printf(" %.0f | %.0f | %s%s | %s |\n", (double)r->max_rss_kb / 1024.0,
           (double)r->rss_anon_kb / 1024.0, routing, r->logits_finite ? "" : ", NON-FINITE LOGITS",
           r->load_avg);
    fflush(stdout);
}

int main(int argc, char **argv) {
    bench_options o;
    parse_args(argc, argv, &o);
    long n_cpus = sysconf(_SC_NPROCESSORS_ONLN);
    g_gen_threads = n_cpus < 1 ? 1 : n_cpus > MAX_THREADS ? MAX_THREADS : (int)n_cpus;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGPIPE, &sa, NULL); /* stdout closed early (`| head`): still remove the files */

    char la[64];
    load_average(la, sizeof la);
    printf("# llamamoe-bench\n\nlibllamamoe %s, kernels %s (LLAMAMOE_KERNELS=%s), %ld online CPUs, "
           "load average at start %s\n\n", lmoe_version(), lmoe_kernels_select()->name,
           getenv("LLAMAMOE_KERNELS") ? getenv("LLAMAMOE_KERNELS") : "unset", n_cpus, la);
    fflush(stdout);

    /* 1. limits */
    machine_limits lim;
    memset(&lim, 0, sizeof lim);
    for (int i = 0; i < o.n_threads; i++)
        if (limits_index(&lim, o.threads[i]) < 0) lim.threads[lim.n_counts++] = o.threads[i];
    if (o.small) measure_limits(&lim, 0.25, 5, 0.05);
    else measure_limits(&lim, 2.0, 15, 0.2);
    print_limits(&lim);
    if (o.limits_only) {
        load_average(la, sizeof la);
        printf("load average at end %s\n", la);
        return 0;
    }
    print_rooflines(&o, &lim);

    /* 2. + 3. one model file at a time */
    char dir[4096];
    if (o.keep_dir) {
        if (mkdir(o.keep_dir, 0777) != 0 && errno != EEXIST) die("--keep %s: %s", o.keep_dir, strerror(errno));
        snprintf(dir, sizeof dir, "%s", o.keep_dir);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/llamamoe-bench-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
        if (!mkdtemp(dir)) die("cannot create a temporary folder %s: %s", dir, strerror(errno));
        snprintf(g_cleanup_dir, sizeof g_cleanup_dir, "%s", dir);
    }
    print_table_header(&o);
    int failures = 0;
    for (int si = 0; si < o.n_shapes; si++) {
        const shape_def *s = &shapes[o.shape_idx[si]];
        for (int ti = 0; ti < o.n_types; ti++) {
            const type_def *td = &types[o.type_idx[ti]];
            model_cost c = cost_of(s, td->type);
            char path[4224];
            /* GEN_VERSION changes whenever the generated weights do, so --keep never reuses a
             * file from an older generator */
            snprintf(path, sizeof path, "%s/llamamoe-bench-g%d-%s-%s-seed%llu.gguf", dir,
                     GEN_VERSION, s->name, td->name, (unsigned long long)o.seed);
            struct stat stt;
            bool reuse = o.keep_dir && stat(path, &stt) == 0;
            double need = c.file_bytes + 64e6; /* tensors + vocabulary + slack */
            long avail_kb = proc_kb("/proc/meminfo", "MemAvailable");
            if (avail_kb > 0 && need > (double)avail_kb * 1024.0) {
                printf("| %s | %s | - | refused: the file (%.1f GB) does not fit in available "
                       "memory (%.1f GB): decode would read from disk |\n", s->name, td->name,
                       need / 1e9, (double)avail_kb * 1024.0 / 1e9);
                fflush(stdout);
                failures++;
                continue;
            }
            if (!reuse) {
                struct statvfs vfs;
                if (statvfs(dir, &vfs) == 0) {
                    double free_bytes = (double)vfs.f_bavail * (double)vfs.f_frsize;
                    if (need + 256e6 > free_bytes) {
                        printf("| %s | %s | - | refused: writing it needs %.1f GB in %s, %.1f GB "
                               "free |\n", s->name, td->name, (need + 256e6) / 1e9, dir,
                               free_bytes / 1e9);
                        fflush(stdout);
                        failures++;
                        continue;
                    }
                }
                if (!o.keep_dir) {
                    snprintf(g_cleanup_file, sizeof g_cleanup_file, "%s", path);
                    snprintf(g_cleanup_tmp, sizeof g_cleanup_tmp, "%s.tmp", path);
                }
                fprintf(stderr, "writing %s (%s, %s, about %.2f GB)\n", path, s->title, td->name,
                        need / 1e9);
                double t0 = bench_now();
                if (write_model(s, td, o.seed, path) != LMOE_OK) {
                    printf("| %s | %s | - | failed to write the model: %s |\n", s->name, td->name,
                           lmoe_last_error());
                    fflush(stdout);
                    failures++;
                    cleanup_files();
                    g_cleanup_file[0] = g_cleanup_tmp[0] = 0;
                    continue;
                }
                fprintf(stderr, "  written in %.1f s\n", bench_now() - t0);
            } else {
                fprintf(stderr, "reusing %s\n", path);
            }
            double secs = 0, bytes = warm_page_cache(path, &secs);
            fprintf(stderr, "  page cache: read %.2f GB in %.1f s\n", bytes / 1e9, secs);
            for (int k = 0; k < o.n_threads; k++) {
                fprintf(stderr, "  measuring %s %s, %d thread%s\n", s->name, td->name,
                        o.threads[k], o.threads[k] == 1 ? "" : "s");
                double bw_now;
                measure_bandwidth(&lim, o.threads[k], &bw_now, NULL, NULL);
                run_result r;
                measure_in_child(path, &o, o.threads[k], &r);
                failures += !r.ok;
                print_row(&o, &lim, s, td, o.threads[k], bw_now, &r);
            }
            if (!o.keep_dir) {
                unlink(path);
                g_cleanup_file[0] = g_cleanup_tmp[0] = 0;
            }
        }
    }
    if (!o.keep_dir) rmdir(dir);
    g_cleanup_dir[0] = 0;
    load_average(la, sizeof la);
    printf("\nload average at end %s\n", la);
    return failures ? 1 : 0;
}
