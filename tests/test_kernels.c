/* test_kernels.c - the kernel tables against straightforward double-precision references on
 * random data with ragged sizes, the generic table against run.c's float order bit for bit, and
 * the dispatcher (LLAMAMOE_KERNELS, one choice for all threads). */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "arch/kernels.h"
#include "test_util.h"

static const size_t sizes[] = {1, 3, 7, 17, 31, 33, 100, 1000};
#define N_SIZES (sizeof sizes / sizeof sizes[0])

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float uniform(float lo, float hi) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((rng_state >> 40) / 16777216.0);
}

/* Random values, allocated one float past an aligned start so no kernel can rely on alignment. */
static float *random_vector(size_t n, float lo, float hi, float **to_free) {
    float *base = malloc((n + 1) * sizeof *base);
    *to_free = base;
    for (size_t i = 0; i <= n; i++) base[i] = uniform(lo, hi);
    return base + 1;
}

/* Bound for a float sum of n terms whose absolute values add up to abs_sum, with slack. */
static double sum_tolerance(size_t n, double abs_sum) {
    return 2.0 * (double)(n + 2) * FLT_EPSILON * abs_sum + 1e-30;
}

static void test_matvec(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_SIZES; s++) {
        size_t n_cols = sizes[s], n_rows = 6;
        float *fw, *fx, *fy;
        float *w = random_vector(n_rows * n_cols, -1, 1, &fw);
        float *x = random_vector(n_cols, -1, 1, &fx);
        float *y = random_vector(n_rows, 0, 0, &fy);
        for (size_t r = 0; r < n_rows; r++) y[r] = 12345.0f; /* sentinel */
        k->matvec_f32(w, x, y, n_cols, 1, 5);
        CHECK(y[0] == 12345.0f && y[5] == 12345.0f); /* rows outside the range untouched */
        for (size_t r = 1; r < 5; r++) {
            double ref = 0.0, abs_sum = 0.0;
            for (size_t j = 0; j < n_cols; j++) {
                ref += (double)w[r * n_cols + j] * x[j];
                abs_sum += fabs((double)w[r * n_cols + j] * x[j]);
            }
            CHECK_MSG(fabs(y[r] - ref) <= sum_tolerance(n_cols, abs_sum),
                      "%s matvec n=%zu row %zu: %g vs %g", k->name, n_cols, r, y[r], ref);
        }
        free(fw), free(fx), free(fy);
    }
}

static void test_dot_axpy(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_SIZES; s++) {
        size_t n = sizes[s];
        float *fa, *fb, *fy;
        float *a = random_vector(n, -2, 2, &fa);
        float *b = random_vector(n, -2, 2, &fb);
        float *y = random_vector(n, -2, 2, &fy);
        double ref = 0.0, abs_sum = 0.0;
        for (size_t i = 0; i < n; i++) {
            ref += (double)a[i] * b[i];
            abs_sum += fabs((double)a[i] * b[i]);
        }
        float got = k->dot_f32(a, b, n);
        CHECK_MSG(fabs(got - ref) <= sum_tolerance(n, abs_sum), "%s dot n=%zu: %g vs %g",
                  k->name, n, got, ref);

        double *want = malloc(n * sizeof *want);
        for (size_t i = 0; i < n; i++) want[i] = y[i] + 0.75 * a[i];
        k->axpy(y, 0.75f, a, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++)
            bad += fabs(y[i] - want[i]) > 4 * FLT_EPSILON * (fabs(want[i]) + fabs(0.75 * a[i]));
        CHECK_MSG(bad == 0, "%s axpy n=%zu: %zu elements off", k->name, n, bad);
        free(want);
        free(fa), free(fb), free(fy);
    }
}

static void test_rmsnorm(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_SIZES; s++) {
        size_t n = sizes[s];
        float *fx, *fw, *fo;
        float *x = random_vector(n, -3, 3, &fx);
        float *weight = random_vector(n, 0.5f, 1.5f, &fw);
        float *out = random_vector(n, 0, 0, &fo);
        double ss = 0.0;
        for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
        double scale = 1.0 / sqrt(ss / (double)n + 1e-5);
        k->rmsnorm(out, x, weight, n, 1e-5f);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            double ref = weight[i] * scale * x[i];
            bad += fabs(out[i] - ref) > (double)(n + 8) * FLT_EPSILON * fabs(ref) + 1e-30;
        }
        CHECK_MSG(bad == 0, "%s rmsnorm n=%zu: %zu elements off", k->name, n, bad);
        k->rmsnorm(x, x, weight, n, 1e-5f); /* in place gives the same result */
        CHECK_MSG(memcmp(x, out, n * sizeof *x) == 0, "%s rmsnorm in place n=%zu", k->name, n);
        free(fx), free(fw), free(fo);
    }
}

static void test_softmax(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_SIZES; s++) {
        size_t n = sizes[s];
        float *fx;
        float *x = random_vector(n, -20, 20, &fx);
        x[n / 2] = 80.0f; /* expf(80) overflows unless the max is subtracted */
        double mx = x[0], sum = 0.0;
        for (size_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
        double *ref = malloc(n * sizeof *ref), *tol = malloc(n * sizeof *tol);
        for (size_t i = 0; i < n; i++) sum += ref[i] = exp((double)x[i] - mx);
        for (size_t i = 0; i < n; i++) {
            ref[i] /= sum;
            /* The float subtraction x - max is off by up to |x - max| * eps / 2, which exp turns
             * into a relative error of the same size; the sum adds about n * eps. */
            tol[i] = ((double)(n + 8) + fabs(x[i] - mx)) * FLT_EPSILON * ref[i] + 1e-37;
        }
        k->softmax(x, n);
        size_t bad = 0;
        double total = 0.0;
        for (size_t i = 0; i < n; i++) {
            bad += !(fabs(x[i] - ref[i]) <= tol[i]);
            total += x[i];
        }
        CHECK_MSG(bad == 0, "%s softmax n=%zu: %zu elements off", k->name, n, bad);
        CHECK(fabs(total - 1.0) < 1e-4);
        free(ref);
        free(tol);
        free(fx);
    }
}

static void test_swiglu(const lmoe_kernels *k) {
    for (size_t s = 0; s < N_SIZES; s++) {
        size_t n = sizes[s];
        float *fg, *fu, *fo;
        float *gate = random_vector(n, -10, 10, &fg);
        float *up = random_vector(n, -3, 3, &fu);
        float *out = random_vector(n, 0, 0, &fo);
        k->swiglu(out, gate, up, n);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            double g = gate[i], ref = g / (1.0 + exp(-g)) * up[i];
            bad += fabs(out[i] - ref) > 8 * FLT_EPSILON * fabs(ref) + 1e-30;
        }
        CHECK_MSG(bad == 0, "%s swiglu n=%zu: %zu elements off", k->name, n, bad);
        k->swiglu(gate, gate, up, n); /* out aliasing gate */
        CHECK_MSG(memcmp(gate, out, n * sizeof *out) == 0, "%s swiglu in place n=%zu", k->name, n);
        free(fg), free(fu), free(fo);
    }
}

/* The generic table is the oracle for llama2.c run.c's numbers: its results must equal run.c's
 * float operations in run.c's order exactly, not just within a tolerance. */
static void test_generic_is_runc_order(void) {
    const lmoe_kernels *k = lmoe_kernels_generic();
    size_t n = 1000, rows = 3;
    float *fw, *fx, *fg, *fo;
    float *w = random_vector(rows * n, -1, 1, &fw);
    float *x = random_vector(n, -1, 1, &fx);
    float *weight = random_vector(n, 0.5f, 1.5f, &fg);
    float *out = random_vector(n, 0, 0, &fo);
    float y[3];
    k->matvec_f32(w, x, y, n, 0, rows);
    int exact = 1;
    for (size_t r = 0; r < rows; r++) {
        float val = 0.0f;
        for (size_t j = 0; j < n; j++) val += w[r * n + j] * x[j];
        exact &= val == y[r];
    }
    CHECK_MSG(exact, "generic matvec differs from run.c's matmul");

    k->rmsnorm(out, x, weight, n, 1e-5f);
    float ss = 0.0f;
    for (size_t j = 0; j < n; j++) ss += x[j] * x[j];
    ss /= (float)n;
    ss += 1e-5f;
    ss = 1.0f / sqrtf(ss);
    exact = 1;
    for (size_t j = 0; j < n; j++) exact &= out[j] == weight[j] * (ss * x[j]);
    CHECK_MSG(exact, "generic rmsnorm differs from run.c's rmsnorm");

    memcpy(out, x, n * sizeof *x);
    k->softmax(out, n);
    float mx = x[0], sum = 0.0f;
    for (size_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (size_t i = 0; i < n; i++) sum += expf(x[i] - mx);
    exact = 1;
    for (size_t i = 0; i < n; i++) exact &= out[i] == expf(x[i] - mx) / sum;
    CHECK_MSG(exact, "generic softmax differs from run.c's softmax");

    k->swiglu(out, x, weight, n);
    exact = 1;
    for (size_t i = 0; i < n; i++) {
        float v = x[i];
        v *= (1.0f / (1.0f + expf(-v)));
        v *= weight[i];
        exact &= out[i] == v;
    }
    CHECK_MSG(exact, "generic swiglu differs from run.c's SwiGLU");
    free(fw), free(fx), free(fg), free(fo);
}

static void test_table(const lmoe_kernels *k) {
    CHECK(k->name != NULL && k->matvec_f32 && k->dot_f32 && k->rmsnorm && k->softmax &&
          k->swiglu && k->axpy);
    test_matvec(k);
    test_dot_axpy(k);
    test_rmsnorm(k);
    test_softmax(k);
    test_swiglu(k);
}

/* In a child process (the choice is made once per process): an unknown LLAMAMOE_KERNELS name
 * falls back to generic rather than failing. */
static void test_unknown_name_falls_back(void) {
    pid_t pid = fork();
    if (pid == 0) {
        setenv("LLAMAMOE_KERNELS", "no-such-kernels", 1);
        const lmoe_kernels *k = lmoe_kernels_select();
        _exit(k == lmoe_kernels_generic() && strcmp(k->name, "generic") == 0 ? 0 : 1);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* In a child process with LLAMAMOE_KERNELS unset: whatever table dispatch picks for this CPU
 * (SIMD once such tables exist) passes the same checks against the double references. */
static void test_default_choice(void) {
    pid_t pid = fork();
    if (pid == 0) {
        unsetenv("LLAMAMOE_KERNELS");
        const lmoe_kernels *k = lmoe_kernels_select();
        printf("dispatch picks '%s' on this CPU\n", k->name);
        test_table(k);
        fflush(stdout); /* _exit does not flush */
        _exit(test_failures == 0 ? 0 : 1);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void *select_from_thread(void *out) {
    *(const lmoe_kernels **)out = lmoe_kernels_select();
    return NULL;
}

/* Threads racing for the first choice all get the same table. */
static void test_select_threads(void) {
    pthread_t threads[4];
    const lmoe_kernels *got[4] = {0};
    for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, select_from_thread, &got[i]);
    for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < 4; i++) CHECK(got[i] == got[0] && got[i] != NULL);
    CHECK(lmoe_kernels_select() == got[0]);
    CHECK(strcmp(got[0]->name, "generic") == 0);
}

int main(void) {
    fflush(stdout);
    test_unknown_name_falls_back();
    test_default_choice();
    setenv("LLAMAMOE_KERNELS", "generic", 1); /* before the first choice in this process */
    test_select_threads();
    CHECK(lmoe_kernels_select() == lmoe_kernels_generic());
    test_table(lmoe_kernels_generic());
    test_generic_is_runc_order();
    return test_finish("test_kernels");
}
