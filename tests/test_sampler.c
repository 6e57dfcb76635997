/* test_sampler.c - the sampling chain: greedy, run.c's seeded temperature / top-p draw (checked
 * token for token against an independent reference written in this file), top-k, min-p,
 * repetition penalty, params validation and versioned struct sizes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "llamamoe.h"
#include "params.h"
#include "test_util.h"

/* ---------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------- */

/* A test-local generator for logits, unrelated to the sampler's RNG. */
static uint64_t test_rng = 0x1234567887654321ull;
static float uniform(float lo, float hi) {
    test_rng = test_rng * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((test_rng >> 40) / 16777216.0);
}

static void random_logits(float *x, int n, float scale) {
    for (int i = 0; i < n; i++) x[i] = uniform(-scale, scale);
}

static lmoe_sampler_params params_with(float temperature, int top_k, float top_p, float min_p,
                                       uint64_t seed) {
    lmoe_sampler_params p;
    lmoe_sampler_default_params(&p, sizeof p);
    p.temperature = temperature;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.seed = seed;
    return p;
}

static lmoe_sampler *make(const lmoe_sampler_params *p) {
    lmoe_sampler *s = NULL;
    CHECK_OK(lmoe_sampler_create(p, &s));
    return s;
}

static lmoe_token sample1(lmoe_sampler *s, const float *logits, int n) {
    lmoe_token t = -1;
    CHECK_OK(lmoe_sampler_sample(s, logits, n, &t));
    CHECK(t >= 0 && t < n);
    return t;
}

/* ---------------------------------------------------------------------------------------------
 * The reference: llama2.c run.c's sampler restated from its description, written another way
 * (selection by repeated scans instead of qsort, one function, no shared code with sampler.c).
 * ------------------------------------------------------------------------------------------- */

typedef struct ref_sampler {
    uint64_t state;
    float temperature, top_p;
} ref_sampler;

static float ref_coin(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    uint32_t bits = (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
    return (float)(bits >> 8) / 16777216.0f;
}

/* Returns the token run.c would pick; n <= 512. */
static int ref_sample(ref_sampler *r, const float *logits, int n) {
    float p[512];
    int order[512];
    unsigned char used[512] = {0};
    if (r->temperature == 0.0f) {
        int best = 0;
        for (int i = 0; i < n; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    for (int i = 0; i < n; i++) p[i] = logits[i] / r->temperature;
    float mx = p[0], sum = 0.0f;
    for (int i = 0; i < n; i++) mx = p[i] > mx ? p[i] : mx;
    for (int i = 0; i < n; i++) {
        p[i] = expf(p[i] - mx);
        sum += p[i];
    }
    for (int i = 0; i < n; i++) p[i] /= sum;
    float coin = ref_coin(&r->state);
    if (r->top_p >= 1.0f) {
        float cdf = 0.0f;
        for (int i = 0; i < n; i++) {
            cdf += p[i];
            if (coin < cdf) return i;
        }
        return n - 1;
    }
    /* Candidates at least (1 - top_p) / (n - 1), most probable first, lowest id on ties. */
    float cutoff = (1.0f - r->top_p) / (float)(n - 1);
    int n_cand = 0;
    for (;;) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!used[i] && p[i] >= cutoff && (best < 0 || p[i] > p[best])) best = i;
        if (best < 0) break;
        used[best] = 1;
        order[n_cand++] = best;
    }
    if (n_cand == 0) { /* run.c reads before its buffer here; the nucleus is the argmax alone */
        int best = 0;
        for (int i = 1; i < n; i++)
            if (p[i] > p[best]) best = i;
        order[n_cand++] = best;
    }
    float cum = 0.0f;
    int last = n_cand - 1;
    for (int i = 0; i < n_cand; i++) {
        cum += p[order[i]];
        if (cum > r->top_p) {
            last = i;
            break;
        }
    }
    float target = coin * cum, cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += p[order[i]];
        if (target < cdf) return order[i];
    }
    return order[last];
}

/* ---------------------------------------------------------------------------------------------
 * Params
 * ------------------------------------------------------------------------------------------- */

static void test_default_params(void) {
    lmoe_sampler_params p;
    memset(&p, 0xAB, sizeof p);
    CHECK_OK(lmoe_sampler_default_params(&p, sizeof p));
    CHECK(p.struct_size == sizeof p);
    CHECK(p.temperature == 1.0f && p.top_p == 0.9f && p.top_k == 0 && p.min_p == 0.0f);
    CHECK(p.repeat_penalty == 1.0f && p.repeat_last_n == 64 && p.seed == 42);

    CHECK(lmoe_sampler_default_params(NULL, sizeof p) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_sampler_default_params(&p, sizeof p - 1) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(lmoe_last_error(), "sampler params") != NULL);

    /* A caller from a newer header: our fields filled, its unknown tail zeroed, its size kept. */
    struct { lmoe_sampler_params p; uint64_t newer[3]; } big;
    memset(&big, 0xCD, sizeof big);
    CHECK_OK(lmoe_sampler_default_params(&big.p, sizeof big));
    CHECK(big.p.struct_size == sizeof big);
    CHECK(big.p.top_p == 0.9f && big.newer[0] == 0 && big.newer[1] == 0 && big.newer[2] == 0);
    lmoe_sampler *s = NULL;
    CHECK_OK(lmoe_sampler_create(&big.p, &s));
    lmoe_sampler_free(s);
}

/* Creates with one field broken and checks the status, the message and *out. */
static void expect_rejected(const lmoe_sampler_params *p, const char *field) {
    lmoe_sampler *s = (lmoe_sampler *)&s; /* not NULL: must be cleared */
    lmoe_status st = lmoe_sampler_create(p, &s);
    CHECK_MSG(st == LMOE_ERR_INVALID_ARGUMENT, "%s: status %d", field, (int)st);
    CHECK_MSG(s == NULL, "%s: *out not cleared", field);
    CHECK_MSG(strstr(lmoe_last_error(), field) != NULL, "message '%s' lacks '%s'",
              lmoe_last_error(), field);
}

static void test_invalid_params(void) {
    lmoe_sampler_params p;
    const float bad_temperature[] = {-0.5f, NAN, INFINITY};
    for (int i = 0; i < 3; i++) {
        p = params_with(1.0f, 0, 0.9f, 0.0f, 1);
        p.temperature = bad_temperature[i];
        expect_rejected(&p, "temperature");
    }
    p = params_with(1.0f, -1, 0.9f, 0.0f, 1);
    expect_rejected(&p, "top_k");
    const float bad_top_p[] = {0.0f, -0.1f, 1.5f, NAN};
    for (int i = 0; i < 4; i++) {
        p = params_with(1.0f, 0, bad_top_p[i], 0.0f, 1);
        expect_rejected(&p, "top_p");
    }
    p = params_with(1.0f, 0, 1.5f, 0.0f, 1);
    expect_rejected(&p, "top_p must be in (0, 1], got 1.5");
    const float bad_min_p[] = {-0.01f, 1.01f, NAN};
    for (int i = 0; i < 3; i++) {
        p = params_with(1.0f, 0, 0.9f, bad_min_p[i], 1);
        expect_rejected(&p, "min_p");
    }
    const float bad_penalty[] = {0.0f, -1.0f, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        p = params_with(1.0f, 0, 0.9f, 0.0f, 1);
        p.repeat_penalty = bad_penalty[i];
        expect_rejected(&p, "repeat_penalty");
    }
    p = params_with(1.0f, 0, 0.9f, 0.0f, 1);
    p.repeat_last_n = -1;
    expect_rejected(&p, "repeat_last_n");

    /* Edges that are valid. */
    lmoe_sampler *s = NULL;
    p = params_with(0.0f, 0, 1.0f, 1.0f, 0);
    p.repeat_last_n = 0;
    CHECK_OK(lmoe_sampler_create(&p, &s));
    lmoe_sampler_free(s);

    /* NULL params: the defaults */
    CHECK_OK(lmoe_sampler_create(NULL, &s));
    CHECK(s != NULL);
    lmoe_sampler_free(s);
    s = NULL;
    CHECK(lmoe_sampler_create(&p, NULL) == LMOE_ERR_INVALID_ARGUMENT);
    lmoe_sampler_free(NULL);
    lmoe_sampler_reset(NULL);
    lmoe_sampler_accept(NULL, 3);
}

static void test_struct_size(void) {
    lmoe_sampler *s = (lmoe_sampler *)&s;
    lmoe_sampler_params p = params_with(1.0f, 0, 0.9f, 0.0f, 1);
    p.struct_size = sizeof p - sizeof p.seed; /* older than the first version: impossible */
    CHECK(lmoe_sampler_create(&p, &s) == LMOE_ERR_INVALID_ARGUMENT && s == NULL);
    CHECK(strstr(lmoe_last_error(), "struct_size") != NULL);
    p.struct_size = 0;
    CHECK(lmoe_sampler_create(&p, &s) == LMOE_ERR_INVALID_ARGUMENT);

    /* Newer header, unknown fields zero: accepted. Nonzero: refused as unsupported. */
    struct { lmoe_sampler_params p; uint32_t newer_field; uint32_t pad; } big;
    memset(&big, 0, sizeof big);
    big.p = params_with(1.0f, 0, 0.9f, 0.0f, 1);
    big.p.struct_size = sizeof big;
    CHECK_OK(lmoe_sampler_create(&big.p, &s));
    lmoe_sampler_free(s);
    big.newer_field = 1;
    s = (lmoe_sampler *)&s;
    CHECK(lmoe_sampler_create(&big.p, &s) == LMOE_ERR_UNSUPPORTED && s == NULL);
    CHECK(strstr(lmoe_last_error(), "newer header") != NULL);
    CHECK(strstr(lmoe_last_error(), "sampler params") != NULL);
}

/* params.h directly, with a struct whose first version was shorter than its current one: the
 * fields an older caller does not have keep their defaults. */
static void test_params_helper(void) {
    typedef struct { size_t struct_size; int32_t a; int32_t b_added_later; } demo;
    const size_t v1 = offsetof(demo, b_added_later);
    demo defaults = {sizeof(demo), 1, 7};
    demo old_caller = {v1, 5, 99}; /* b_added_later lies beyond its struct_size */
    demo got = defaults;
    CHECK_OK(params_read(&got, sizeof got, &old_caller, v1, "demo params"));
    CHECK(got.struct_size == sizeof got && got.a == 5 && got.b_added_later == 7);

    demo current = {sizeof(demo), 6, 8};
    got = defaults;
    CHECK_OK(params_read(&got, sizeof got, &current, v1, "demo params"));
    CHECK(got.a == 6 && got.b_added_later == 8);

    demo too_old = {v1 - 1, 5, 0};
    CHECK(params_read(&got, sizeof got, &too_old, v1, "demo params") == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(lmoe_last_error(), "demo params") != NULL);
    CHECK(params_read(&got, sizeof got, NULL, v1, "demo params") == LMOE_ERR_INVALID_ARGUMENT);

    /* Defaults into an older caller's struct: only its bytes are written. */
    unsigned char buf[sizeof(demo) + 4];
    memset(buf, 0xEE, sizeof buf);
    CHECK_OK(params_write_defaults(buf, v1, &defaults, sizeof defaults, v1, "demo params"));
    demo written;
    memcpy(&written, buf, sizeof written);
    CHECK(written.struct_size == v1 && written.a == 1);
    CHECK(buf[v1] == 0xEE && buf[sizeof buf - 1] == 0xEE);
    CHECK(params_write_defaults(buf, v1 - 1, &defaults, sizeof defaults, v1, "demo params") ==
          LMOE_ERR_INVALID_ARGUMENT);
}

/* ---------------------------------------------------------------------------------------------
 * Sampling
 * ------------------------------------------------------------------------------------------- */

static void test_sample_arguments(void) {
    float logits[4] = {0, 1, 2, 3};
    lmoe_sampler_params p = params_with(1.0f, 0, 0.9f, 0.0f, 1);
    lmoe_sampler *s = make(&p);
    lmoe_token t;
    CHECK(lmoe_sampler_sample(NULL, logits, 4, &t) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_sampler_sample(s, NULL, 4, &t) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_sampler_sample(s, logits, 4, NULL) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_sampler_sample(s, logits, 0, &t) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(lmoe_sampler_sample(s, logits, -3, &t) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(strstr(lmoe_last_error(), "n_vocab") != NULL);
    lmoe_sampler_free(s);
}

static void test_greedy(void) {
    lmoe_sampler_params p = params_with(0.0f, 0, 0.9f, 0.0f, 1);
    lmoe_sampler *s = make(&p);
    float x[333];
    for (int round = 0; round < 50; round++) {
        random_logits(x, 333, 5.0f);
        int best = 0;
        for (int i = 1; i < 333; i++)
            if (x[i] > x[best]) best = i;
        CHECK(sample1(s, x, 333) == best);
    }
    float ties[5] = {1.0f, 3.0f, -2.0f, 3.0f, 3.0f};
    CHECK(sample1(s, ties, 5) == 1); /* lowest id wins ties */
    float saved[5];
    memcpy(saved, ties, sizeof ties);
    sample1(s, ties, 5);
    CHECK(memcmp(saved, ties, sizeof ties) == 0); /* logits are not modified */
    lmoe_sampler_free(s);
}

/* Seeded runs against the reference, over temperatures and top-p values including 1 (the plain
 * multinomial), with fresh logits each step as in generation. */
static void test_matches_runc(void) {
    const float temps[] = {1.0f, 0.7f, 1.3f, 0.0f};
    const float top_ps[] = {0.9f, 0.5f, 0.99f, 1.0f, 0.05f};
    const int sizes[] = {2, 17, 512};
    int mismatches = 0, compared = 0;
    for (int ti = 0; ti < 4; ti++)
        for (int pi = 0; pi < 5; pi++)
            for (int ni = 0; ni < 3; ni++) {
                int n = sizes[ni];
                lmoe_sampler_params p = params_with(temps[ti], 0, top_ps[pi], 0.0f, 133742);
                lmoe_sampler *s = make(&p);
                ref_sampler r = {133742, temps[ti], top_ps[pi]};
                float x[512];
                for (int step = 0; step < 300; step++) {
                    random_logits(x, n, step % 2 ? 8.0f : 2.0f);
                    int want = ref_sample(&r, x, n);
                    if (sample1(s, x, n) != want) mismatches++;
                    compared++;
                }
                lmoe_sampler_free(s);
            }
    CHECK_MSG(mismatches == 0, "%d of %d tokens differ from the run.c reference", mismatches,
              compared);
}

/* Hand-computed: logits ln(1..4) give probabilities 0.1 0.2 0.3 0.4. With top_p 0.5 the nucleus
 * is {3, 2} (0.4 + 0.3 > 0.5) with mass 0.7, so a coin c picks 3 when 0.7c < 0.4, else 2. */
static void test_top_p_by_hand(void) {
    const float logits[4] = {logf(1.0f), logf(2.0f), logf(3.0f), logf(4.0f)};
    lmoe_sampler_params p = params_with(1.0f, 0, 0.5f, 0.0f, 2024);
    lmoe_sampler *s = make(&p);
    uint64_t state = 2024;
    int count[4] = {0}, wrong = 0, n_draws = 20000;
    for (int i = 0; i < n_draws; i++) {
        float coin = ref_coin(&state);
        lmoe_token t = sample1(s, logits, 4);
        count[t]++;
        double r = 0.7 * coin;
        if (fabs(r - 0.4) > 1e-5 && t != (r < 0.4 ? 3 : 2)) wrong++;
    }
    CHECK(count[0] == 0 && count[1] == 0);
    CHECK_MSG(wrong == 0, "%d draws disagree with the coin", wrong);
    double f3 = (double)count[3] / n_draws;
    CHECK_MSG(fabs(f3 - 4.0 / 7.0) < 0.02, "token 3 frequency %.4f, want %.4f", f3, 4.0 / 7.0);
    lmoe_sampler_free(s);
}

/* Returns the nucleus of probabilities p (double, brute force): in[i] = 1 if token i is in it,
 * or -1 if its membership is within rounding of the boundary. */
static void nucleus_double(const double *p, int n, double top_p, int *in) {
    int used[64] = {0};
    double cum = 0.0;
    for (int i = 0; i < n; i++) in[i] = 0;
    for (int k = 0; k < n; k++) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!used[i] && (best < 0 || p[i] > p[best])) best = i;
        used[best] = 1;
        in[best] = fabs(cum - top_p) < 1e-5 ? -1 : 1;
        cum += p[best];
        if (cum > top_p + 1e-5) break;
    }
}

static void test_top_p_distribution(void) {
    const int n = 50;
    float x[50];
    double pd[50];
    int in[50];
    for (int round = 0; round < 20; round++) {
        random_logits(x, n, 3.0f);
        double mx = x[0], sum = 0.0;
        for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
        for (int i = 0; i < n; i++) sum += pd[i] = exp(x[i] - mx);
        for (int i = 0; i < n; i++) pd[i] /= sum;
        float top_p = round % 2 ? 0.9f : 0.6f;
        nucleus_double(pd, n, top_p, in);
        lmoe_sampler_params p = params_with(1.0f, 0, top_p, 0.0f, 7 + (uint64_t)round);
        lmoe_sampler *s = make(&p);
        int outside = 0, count[50] = {0};
        const int n_draws = 4000;
        for (int d = 0; d < n_draws; d++) {
            lmoe_token t = sample1(s, x, n);
            count[t]++;
            if (in[t] == 0) outside++;
        }
        CHECK_MSG(outside == 0, "round %d: %d draws outside the nucleus", round, outside);
        /* Each member's frequency matches its renormalised probability (5 sigma). */
        double mass = 0.0;
        for (int i = 0; i < n; i++) mass += in[i] == 1 ? pd[i] : 0.0;
        for (int i = 0; i < n; i++) {
            if (in[i] != 1) continue;
            double q = pd[i] / mass, f = (double)count[i] / n_draws;
            double sigma = sqrt(q * (1 - q) / n_draws);
            CHECK_MSG(fabs(f - q) < 5 * sigma + 1e-3, "token %d: frequency %.4f, want %.4f", i,
                      f, q);
        }
        lmoe_sampler_free(s);
    }
}

static void test_seeds(void) {
    float x[100];
    random_logits(x, 100, 1.0f);
    lmoe_sampler_params p = params_with(1.0f, 0, 0.95f, 0.0f, 99);
    lmoe_sampler *a = make(&p), *b = make(&p);
    p.seed = 100;
    lmoe_sampler *c = make(&p);
    lmoe_token seq_a[64];
    int same_ab = 1, same_ac = 1;
    for (int i = 0; i < 64; i++) {
        seq_a[i] = sample1(a, x, 100);
        same_ab &= seq_a[i] == sample1(b, x, 100);
        same_ac &= seq_a[i] == sample1(c, x, 100);
    }
    CHECK(same_ab);
    CHECK(!same_ac);
    lmoe_sampler_reset(a); /* back to the seed */
    int same_again = 1;
    for (int i = 0; i < 64; i++) same_again &= seq_a[i] == sample1(a, x, 100);
    CHECK(same_again);

    /* Seed 0 is replaced by a fixed constant: deterministic and not stuck on one token. */
    p.seed = 0;
    lmoe_sampler *z1 = make(&p), *z2 = make(&p);
    int distinct = 0, same_z = 1;
    lmoe_token first = sample1(z1, x, 100);
    sample1(z2, x, 100);
    for (int i = 0; i < 64; i++) {
        lmoe_token t = sample1(z1, x, 100);
        same_z &= t == sample1(z2, x, 100);
        distinct |= t != first;
    }
    CHECK(same_z && distinct);
    lmoe_sampler_free(a);
    lmoe_sampler_free(b);
    lmoe_sampler_free(c);
    lmoe_sampler_free(z1);
    lmoe_sampler_free(z2);
}

static void test_top_k(void) {
    float x[200];
    lmoe_sampler_params p = params_with(1.0f, 1, 0.9f, 0.0f, 5);
    lmoe_sampler *k1 = make(&p);
    p.temperature = 0.0f;
    lmoe_sampler *greedy = make(&p);
    for (int round = 0; round < 100; round++) {
        random_logits(x, 200, 4.0f);
        CHECK(sample1(k1, x, 200) == sample1(greedy, x, 200));
    }
    /* top_k 3: only the three largest logits are ever drawn, each with its renormalised share. */
    const float y[6] = {0.5f, 2.0f, -1.0f, 1.5f, 1.0f, 0.0f}; /* top 3: ids 1, 3, 4 */
    p = params_with(1.0f, 3, 1.0f, 0.0f, 11);
    lmoe_sampler *k3 = make(&p);
    int count[6] = {0};
    for (int i = 0; i < 30000; i++) count[sample1(k3, y, 6)]++;
    CHECK(count[0] == 0 && count[2] == 0 && count[5] == 0);
    double z = exp(2.0) + exp(1.5) + exp(1.0);
    CHECK(fabs(count[1] / 30000.0 - exp(2.0) / z) < 0.015);
    CHECK(fabs(count[4] / 30000.0 - exp(1.0) / z) < 0.015);
    /* top_k and top_p together: the three renormalised are 0.51 0.31 0.19, so top_p 0.6 keeps
     * {1, 3} (0.51 + 0.31 > 0.6). */
    p = params_with(1.0f, 3, 0.6f, 0.0f, 12);
    lmoe_sampler *k3p = make(&p);
    memset(count, 0, sizeof count);
    for (int i = 0; i < 20000; i++) count[sample1(k3p, y, 6)]++;
    CHECK(count[1] > 0 && count[3] > 0 && count[0] + count[2] + count[4] + count[5] == 0);
    lmoe_sampler_free(k1);
    lmoe_sampler_free(greedy);
    lmoe_sampler_free(k3);
    lmoe_sampler_free(k3p);
}

/* top_k >= n_vocab keeps everything, so it draws the same tokens as top_k off except where float
 * rounding of a differently ordered sum decides. */
static void test_top_k_off_equivalence(void) {
    float x[64];
    lmoe_sampler_params p = params_with(1.0f, 0, 0.9f, 0.0f, 77);
    lmoe_sampler *off = make(&p);
    p.top_k = 64;
    lmoe_sampler *all = make(&p);
    int same = 0;
    for (int i = 0; i < 2000; i++) {
        random_logits(x, 64, 3.0f);
        same += sample1(off, x, 64) == sample1(all, x, 64);
    }
    CHECK_MSG(same >= 1990, "only %d of 2000 agree", same);
    lmoe_sampler_free(off);
    lmoe_sampler_free(all);
}

static void test_min_p(void) {
    /* Probabilities 0.5 0.3 0.15 0.05: min_p 0.2 keeps p >= 0.1, so token 3 never comes. */
    const float x[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    lmoe_sampler_params p = params_with(1.0f, 0, 1.0f, 0.2f, 3);
    lmoe_sampler *s = make(&p);
    int count[4] = {0};
    for (int i = 0; i < 20000; i++) count[sample1(s, x, 4)]++;
    CHECK(count[3] == 0 && count[0] > 0 && count[1] > 0 && count[2] > 0);
    CHECK(fabs(count[2] / 20000.0 - 0.15 / 0.95) < 0.015);
    p.min_p = 1.0f; /* only the most probable */
    lmoe_sampler *s1 = make(&p);
    for (int i = 0; i < 100; i++) CHECK(sample1(s1, x, 4) == 0);
    p.min_p = 0.4f; /* keeps p >= 0.2: tokens 0 and 1; with top_p 0.5 of 0.8: 0.5 > 0.4 -> {0} */
    p.top_p = 0.5f;
    lmoe_sampler *s2 = make(&p);
    for (int i = 0; i < 100; i++) CHECK(sample1(s2, x, 4) == 0);
    lmoe_sampler_free(s);
    lmoe_sampler_free(s1);
    lmoe_sampler_free(s2);
}

static void test_repeat_penalty(void) {
    lmoe_sampler_params p = params_with(0.0f, 0, 1.0f, 0.0f, 1);
    p.repeat_penalty = 1.1f;
    p.repeat_last_n = 2;
    lmoe_sampler *s = make(&p);
    const float pos[4] = {2.0f, 1.9f, -1.0f, 0.0f};
    CHECK(sample1(s, pos, 4) == 0);
    lmoe_sampler_accept(s, 0); /* 2.0 / 1.1 = 1.82 < 1.9 */
    CHECK(sample1(s, pos, 4) == 1);
    lmoe_sampler_accept(s, 2);
    lmoe_sampler_accept(s, 3); /* token 0 has left the window of 2 */
    CHECK(sample1(s, pos, 4) == 0);
    lmoe_sampler_accept(s, 0);
    lmoe_sampler_reset(s); /* forgets the history */
    CHECK(sample1(s, pos, 4) == 0);

    /* Negative logits are multiplied: -1.0 * 1.1 = -1.1 < -1.05. */
    const float neg[3] = {-1.0f, -1.05f, -3.0f};
    lmoe_sampler_accept(s, 0);
    CHECK(sample1(s, neg, 3) == 1);
    lmoe_sampler_reset(s);

    /* A token repeated in the window is penalised once: 2.0 / 1.1 = 1.82 > 1.7, while twice would
     * give 1.65. Ids outside the vocabulary are ignored. */
    const float once[3] = {2.0f, 1.7f, 0.0f};
    lmoe_sampler_accept(s, 0);
    lmoe_sampler_accept(s, 0);
    CHECK(sample1(s, once, 3) == 0);
    lmoe_sampler_accept(s, 1000);
    lmoe_sampler_accept(s, -5);
    CHECK(sample1(s, once, 3) == 0);
    lmoe_sampler_free(s);

    /* Off (penalty 1, or window 0): history changes nothing. */
    p.repeat_penalty = 1.0f;
    lmoe_sampler *off = make(&p);
    lmoe_sampler_accept(off, 0);
    CHECK(sample1(off, pos, 4) == 0);
    lmoe_sampler_free(off);
    p.repeat_penalty = 1.5f;
    p.repeat_last_n = 0;
    off = make(&p);
    lmoe_sampler_accept(off, 0);
    CHECK(sample1(off, pos, 4) == 0);
    lmoe_sampler_free(off);
}

/* Odd inputs never crash and always give an id inside the vocabulary. */
static void test_edge_inputs(void) {
    const float one[1] = {0.3f};
    const float nan_logits[3] = {NAN, NAN, NAN};
    const float masked[3] = {-INFINITY, -INFINITY, -INFINITY};
    const float half[2] = {0.0f, 0.0f}; /* run.c's cut drops both at top_p 0.1 */
    const int top_k[] = {0, 1, 2};
    const float min_p[] = {0.0f, 0.1f};
    const float top_p[] = {1.0f, 0.9f, 0.1f};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2; b++)
            for (int c = 0; c < 3; c++) {
                lmoe_sampler_params p = params_with(1.0f, top_k[a], top_p[c], min_p[b], 9);
                lmoe_sampler *s = make(&p);
                CHECK(sample1(s, one, 1) == 0);
                sample1(s, nan_logits, 3);
                sample1(s, masked, 3);
                lmoe_token t = sample1(s, half, 2);
                if (top_p[c] == 0.1f && top_k[a] == 0 && min_p[b] == 0.0f) CHECK(t == 0);
                lmoe_sampler_free(s);
            }
    /* The scratch grows with n_vocab and still works for smaller ones afterwards. */
    lmoe_sampler_params p = params_with(1.0f, 0, 0.9f, 0.0f, 9);
    lmoe_sampler *s = make(&p);
    float *big = malloc(40000 * sizeof *big);
    random_logits(big, 40000, 2.0f);
    sample1(s, big, 10);
    sample1(s, big, 40000);
    sample1(s, big, 10);
    free(big);
    lmoe_sampler_free(s);
}

int main(void) {
    test_default_params();
    test_invalid_params();
    test_struct_size();
    test_params_helper();
    test_sample_arguments();
    test_greedy();
    test_matches_runc();
    test_top_p_by_hand();
    test_top_p_distribution();
    test_seeds();
    test_top_k();
    test_top_k_off_equivalence();
    test_min_p();
    test_repeat_penalty();
    test_edge_inputs();
    return test_finish("test_sampler");
}
