/* sampler.c - the sampling chain: repetition penalty, greedy, temperature, top-k, min-p, top-p and
 * a seeded draw (see the sampler section of llamamoe.h for the order of the stages).
 *
 * With top_k and min_p off the arithmetic is exactly llama2.c run.c's sample(): the logits divided
 * by the temperature, a float softmax, ONE random float per call from run.c's xorshift64* (none
 * when greedy), then either a multinomial draw in id order (top_p == 1) or run.c's top-p draw over
 * the candidates sorted by probability. Tests compare seeded runs token for token against run.c,
 * so every float operation below keeps run.c's order.
 *
 * Ties: argmax keeps the lowest id; candidates with equal probabilities are sorted lowest id first.
 * That is what a stable sort of run.c's candidate list (built in id order) gives, and makes the
 * result independent of the C library's qsort. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arch/kernels.h"
#include "error.h"
#include "llamamoe.h"
#include "mem.h"
#include "params.h"

/* run.c rounds every product before adding it. Clang would fuse a * b + c into one FMA when the
 * target has it (-march=native); GCC in ISO C mode (-std=c11) already does not. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* xorshift64* cannot leave the all-zero state, so seed 0 is replaced by this (2^64 / golden
 * ratio, a common nonzero seed with well-mixed bits). */
#define SAMPLER_SEED_FOR_ZERO 0x9E3779B97F4A7C15ull

/* The end of the last field of the first published lmoe_sampler_params: a smaller struct_size is
 * rejected. It must not change when the struct grows. */
#define SAMPLER_PARAMS_V1_SIZE (offsetof(lmoe_sampler_params, seed) + sizeof(uint64_t))

/* One token that survived truncation so far. */
typedef struct sampler_candidate {
    float prob;
    int32_t id;
} sampler_candidate;

struct lmoe_sampler {
    lmoe_sampler_params params;
    uint64_t rng_state;

    /* The last repeat_last_n accepted tokens, a ring: history[(history_next - 1) mod cap] is the
     * newest. Order does not matter to the penalty, which treats the window as a set. */
    lmoe_token *history;       /* (history_capacity,) */
    int32_t history_capacity;  /* = params.repeat_last_n */
    int32_t history_len;       /* valid entries, <= history_capacity */
    int32_t history_next;      /* where the next accepted token goes */

    /* Scratch, sized for the largest n_vocab seen, so sampling allocates only when it grows. */
    size_t scratch_capacity;         /* entries in each buffer below */
    float *probs;                    /* (n_vocab,) logits, then probabilities */
    sampler_candidate *candidates;   /* (n_vocab,) */
    unsigned char *penalised;        /* (n_vocab,) all zero between calls */
};

/* ---------------------------------------------------------------------------------------------
 * Params
 * ------------------------------------------------------------------------------------------- */

static void sampler_defaults(lmoe_sampler_params *p) {
    memset(p, 0, sizeof *p);
    p->struct_size = sizeof *p;
    p->temperature = 1.0f; /* run.c's defaults: -t 1.0 -p 0.9 */
    p->top_k = 0;
    p->top_p = 0.9f;
    p->min_p = 0.0f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 42;
}

lmoe_status lmoe_sampler_default_params(lmoe_sampler_params *params, size_t params_size) {
    lmoe_sampler_params defaults;
    sampler_defaults(&defaults);
    return params_write_defaults(params, params_size, &defaults, sizeof defaults,
                                 SAMPLER_PARAMS_V1_SIZE, "sampler params");
}

/* Every comparison is written so that NaN fails it. Infinite temperature or penalty would turn
 * logits into NaN, so those are rejected too. */
static lmoe_status sampler_check_params(const lmoe_sampler_params *p) {
    RETURN_ERROR_IF(!(p->temperature >= 0.0f && isfinite(p->temperature)),
                    LMOE_ERR_INVALID_ARGUMENT,
                    "sampler params: temperature must be >= 0 and finite, got %g",
                    (double)p->temperature);
    RETURN_ERROR_IF(p->top_k < 0, LMOE_ERR_INVALID_ARGUMENT,
                    "sampler params: top_k must be >= 0, got %d", (int)p->top_k);
    RETURN_ERROR_IF(!(p->top_p > 0.0f && p->top_p <= 1.0f), LMOE_ERR_INVALID_ARGUMENT,
                    "sampler params: top_p must be in (0, 1], got %g", (double)p->top_p);
    RETURN_ERROR_IF(!(p->min_p >= 0.0f && p->min_p <= 1.0f), LMOE_ERR_INVALID_ARGUMENT,
                    "sampler params: min_p must be in [0, 1], got %g", (double)p->min_p);
    RETURN_ERROR_IF(!(p->repeat_penalty > 0.0f && isfinite(p->repeat_penalty)),
                    LMOE_ERR_INVALID_ARGUMENT,
                    "sampler params: repeat_penalty must be > 0 and finite, got %g",
                    (double)p->repeat_penalty);
    RETURN_ERROR_IF(p->repeat_last_n < 0, LMOE_ERR_INVALID_ARGUMENT,
                    "sampler params: repeat_last_n must be >= 0, got %d", (int)p->repeat_last_n);
    return LMOE_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Lifetime
 * ------------------------------------------------------------------------------------------- */

lmoe_status lmoe_sampler_create(const lmoe_sampler_params *params, lmoe_sampler **out) {
    RETURN_ERROR_IF(out == NULL, LMOE_ERR_INVALID_ARGUMENT, "lmoe_sampler_create: out is NULL");
    *out = NULL;
    lmoe_sampler_params p;
    sampler_defaults(&p);
    if (params) /* NULL: the defaults, as for the model and context params */
        FORWARD_IF_ERROR(
            params_read(&p, sizeof p, params, SAMPLER_PARAMS_V1_SIZE, "sampler params"));
    FORWARD_IF_ERROR(sampler_check_params(&p));

    lmoe_sampler *s = mem_calloc(1, sizeof *s);
    RETURN_ERROR_IF(s == NULL, LMOE_ERR_OUT_OF_MEMORY, "lmoe_sampler_create: out of memory");
    s->params = p;
    s->history_capacity = p.repeat_last_n;
    if (p.repeat_last_n > 0) {
        s->history = mem_alloc((size_t)p.repeat_last_n * sizeof *s->history);
        if (s->history == NULL) {
            mem_free(s);
            return lmoe_error(LMOE_ERR_OUT_OF_MEMORY,
                              "lmoe_sampler_create: out of memory for %d tokens of history "
                              "(repeat_last_n)", (int)p.repeat_last_n);
        }
    }
    lmoe_sampler_reset(s);
    *out = s;
    return LMOE_OK;
}

void lmoe_sampler_free(lmoe_sampler *sampler) {
    if (sampler == NULL) return;
    mem_free(sampler->history);
    mem_free(sampler->probs);
    mem_free(sampler->candidates);
    mem_free(sampler->penalised);
    mem_free(sampler);
}

void lmoe_sampler_reset(lmoe_sampler *sampler) {
    if (sampler == NULL) return;
    uint64_t seed = sampler->params.seed;
    sampler->rng_state = seed != 0 ? seed : SAMPLER_SEED_FOR_ZERO;
    sampler->history_len = 0;
    sampler->history_next = 0;
}

void lmoe_sampler_accept(lmoe_sampler *sampler, lmoe_token token) {
    if (sampler == NULL || sampler->history_capacity == 0) return;
    sampler->history[sampler->history_next] = token;
    sampler->history_next = (sampler->history_next + 1) % sampler->history_capacity;
    if (sampler->history_len < sampler->history_capacity) sampler->history_len++;
}

/* Makes the scratch buffers hold n entries; all three are replaced together or not at all. */
static lmoe_status sampler_reserve(lmoe_sampler *s, size_t n) {
    if (n <= s->scratch_capacity) return LMOE_OK;
    float *probs = mem_alloc(n * sizeof *probs);
    sampler_candidate *candidates = mem_alloc(n * sizeof *candidates);
    unsigned char *penalised = mem_calloc(n, 1);
    if (probs == NULL || candidates == NULL || penalised == NULL) {
        mem_free(probs);
        mem_free(candidates);
        mem_free(penalised);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY,
                          "lmoe_sampler_sample: out of memory for %zu vocabulary entries", n);
    }
    mem_free(s->probs);
    mem_free(s->candidates);
    mem_free(s->penalised);
    s->probs = probs;
    s->candidates = candidates;
    s->penalised = penalised;
    s->scratch_capacity = n;
    return LMOE_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Random numbers: run.c's xorshift64* and its float in [0, 1)
 * ------------------------------------------------------------------------------------------- */

static uint32_t random_u32(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

/* 24 random bits, so every value is exactly representable and the result is < 1. */
static float random_f32(uint64_t *state) {
    return (float)(random_u32(state) >> 8) / 16777216.0f;
}

/* ---------------------------------------------------------------------------------------------
 * Stages that work on all n_vocab values
 * ------------------------------------------------------------------------------------------- */

/* Stage 1. Each token in the window is penalised once however often it occurs (the window is a
 * set), marked in s->penalised, which is cleared again before returning. Ids outside the
 * vocabulary are ignored: accept does not know n_vocab. */
static void apply_repeat_penalty(lmoe_sampler *s, float *logits, int32_t n_vocab) {
    float penalty = s->params.repeat_penalty;
    if (penalty == 1.0f || s->history_len == 0) return;
    for (int32_t i = 0; i < s->history_len; i++) {
        lmoe_token t = s->history[i];
        if (t < 0 || t >= n_vocab || s->penalised[t]) continue;
        s->penalised[t] = 1;
        logits[t] = logits[t] > 0.0f ? logits[t] / penalty : logits[t] * penalty;
    }
    for (int32_t i = 0; i < s->history_len; i++) {
        lmoe_token t = s->history[i];
        if (t >= 0 && t < n_vocab) s->penalised[t] = 0;
    }
}

/* First index of the largest value (lowest id wins ties, as run.c's sample_argmax). */
static int32_t argmax(const float *x, int32_t n) {
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* ---------------------------------------------------------------------------------------------
 * Candidate lists
 * ------------------------------------------------------------------------------------------- */

/* Nonzero if a goes before b: higher probability first, then lower id. NaN sorts last, so the
 * order is total even for broken logits (qsort needs a consistent comparison). */
static int candidate_before(const sampler_candidate *a, const sampler_candidate *b) {
    int a_nan = isnan(a->prob), b_nan = isnan(b->prob);
    if (a_nan != b_nan) return b_nan;
    if (!a_nan && a->prob != b->prob) return a->prob > b->prob;
    return a->id < b->id;
}

static int candidate_compare(const void *pa, const void *pb) {
    const sampler_candidate *a = pa, *b = pb;
    if (candidate_before(a, b)) return -1;
    return candidate_before(b, a) ? 1 : 0;
}

static void sort_candidates(sampler_candidate *c, int32_t n) {
    qsort(c, (size_t)n, sizeof *c, candidate_compare);
}

/* Candidate heaps. A top-k heap keeps its worst candidate on top, so it can be replaced by a
 * better one; a nucleus heap keeps its best on top, to be popped in sorted order. */
typedef enum heap_kind { HEAP_WORST_ON_TOP, HEAP_BEST_ON_TOP } heap_kind;

/* Nonzero if child belongs above parent in a heap of that kind. */
static int heap_child_wins(const sampler_candidate *parent, const sampler_candidate *child,
                           heap_kind kind) {
    return kind == HEAP_BEST_ON_TOP ? candidate_before(child, parent)
                                    : candidate_before(parent, child);
}

/* Restores the heap property below slot i of heap[0..n). */
static void heap_sift_down(sampler_candidate *heap, int32_t n, int32_t i, heap_kind kind) {
    for (;;) {
        int32_t top = i, left = 2 * i + 1, right = left + 1;
        if (left < n && heap_child_wins(&heap[top], &heap[left], kind)) top = left;
        if (right < n && heap_child_wins(&heap[top], &heap[right], kind)) top = right;
        if (top == i) return;
        sampler_candidate tmp = heap[i];
        heap[i] = heap[top];
        heap[top] = tmp;
        i = top;
    }
}

static void heap_build(sampler_candidate *heap, int32_t n, heap_kind kind) {
    for (int32_t i = n / 2 - 1; i >= 0; i--) heap_sift_down(heap, n, i, kind);
}

/* Stage 4: moves the k best of c[0..n) to c[0..k) in sorted order, in O(n log k) rather than
 * sorting the whole vocabulary on every token. Requires 0 < k < n. */
static void keep_top_k(sampler_candidate *c, int32_t n, int32_t k) {
    heap_build(c, k, HEAP_WORST_ON_TOP);
    for (int32_t i = k; i < n; i++) {
        if (candidate_before(&c[i], &c[0])) {
            c[0] = c[i];
            heap_sift_down(c, k, 0, HEAP_WORST_ON_TOP);
        }
    }
    sort_candidates(c, k);
}

/* Stage 6 on unsorted candidates c[0..n): moves the smallest most-probable-first prefix whose
 * mass exceeds threshold (all of c if none does) to c[0..count), sorted, and returns count.
 * *mass receives that prefix's mass summed in sorted order. Only the nucleus gets ordered, by
 * popping a heap (O(n + count log n)); the numbers are those a full sort would give, since the
 * order is total. */
static int32_t take_nucleus(sampler_candidate *c, int32_t n, float threshold, float *mass) {
    heap_build(c, n, HEAP_BEST_ON_TOP);
    float cumulative = 0.0f;
    int32_t count = 0;
    while (count < n) {
        /* Pop the best into the slot the heap gives up: popped ones fill c[n-1], c[n-2], ... */
        int32_t last = n - 1 - count;
        sampler_candidate best = c[0];
        c[0] = c[last];
        c[last] = best;
        heap_sift_down(c, last, 0, HEAP_BEST_ON_TOP);
        count++;
        cumulative += best.prob;
        if (cumulative > threshold) break;
    }
    *mass = cumulative;
    /* c[n-count..n) holds the nucleus worst first: reverse it and move it to the front. */
    for (int32_t i = n - count, j = n - 1; i < j; i++, j--) {
        sampler_candidate tmp = c[i];
        c[i] = c[j];
        c[j] = tmp;
    }
    memmove(c, c + (n - count), (size_t)count * sizeof *c);
    return count;
}

/* The token with the largest probability as a candidate list of one: the nucleus always holds it,
 * whatever a pruning shortcut said. */
static int32_t keep_only_argmax(const float *probs, int32_t n_vocab, sampler_candidate *c) {
    int32_t best = argmax(probs, n_vocab);
    c[0].prob = probs[best];
    c[0].id = best;
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * run.c's draws (stages 6 and 7 with top_k and min_p off)
 * ------------------------------------------------------------------------------------------- */

/* Multinomial draw in id order: the first token whose running cdf exceeds coin. */
static int32_t draw_multinomial(const float *probs, int32_t n, float coin) {
    float cdf = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        cdf += probs[i];
        if (coin < cdf) return i;
    }
    return n - 1; /* rounding left the cdf below coin */
}

/* Among sorted candidates c[0..n), the count of the smallest prefix whose mass exceeds
 * threshold; all n if none does. *mass receives that prefix's mass, summed in order. */
static int32_t nucleus_size(const sampler_candidate *c, int32_t n, float threshold, float *mass) {
    float cumulative = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        cumulative += c[i].prob;
        if (cumulative > threshold) {
            *mass = cumulative;
            return i + 1;
        }
    }
    *mass = cumulative;
    return n;
}

/* Draws from c[0..n) in list order with probabilities proportional to c[i].prob: the first whose
 * cdf exceeds coin * mass, mass being the sum of the list (the implicit renormalisation). */
static int32_t draw_from_candidates(const sampler_candidate *c, int32_t n, float coin, float mass) {
    float r = coin * mass;
    float cdf = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        cdf += c[i].prob;
        if (r < cdf) return c[i].id;
    }
    return c[n - 1].id; /* rounding */
}

/* run.c's sample_topp. Tokens below (1 - top_p) / (n - 1) are dropped before ordering: such a
 * token can only be in the nucleus if it is the most probable one, so when the cut drops
 * everything (run.c then reads before its buffer) the argmax alone is the nucleus. */
static int32_t draw_top_p_runc(lmoe_sampler *s, int32_t n_vocab, float coin) {
    const float *probs = s->probs;
    sampler_candidate *c = s->candidates;
    float top_p = s->params.top_p;
    if (n_vocab == 1) return 0;
    const float cutoff = (1.0f - top_p) / (float)(n_vocab - 1);
    int32_t n = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        if (probs[i] >= cutoff) {
            c[n].prob = probs[i];
            c[n].id = i;
            n++;
        }
    }
    if (n == 0) n = keep_only_argmax(probs, n_vocab, c);
    float mass;
    n = take_nucleus(c, n, top_p, &mass);
    return draw_from_candidates(c, n, coin, mass);
}

/* ---------------------------------------------------------------------------------------------
 * The general chain (top-k or min-p on)
 * ------------------------------------------------------------------------------------------- */

/* Stage 5 as a filter while listing the candidates (id order). */
static int32_t list_min_p(const float *probs, int32_t n_vocab, float min_p, sampler_candidate *c) {
    int32_t n = 0;
    if (min_p <= 0.0f) {
        for (int32_t i = 0; i < n_vocab; i++) {
            c[n].prob = probs[i];
            c[n].id = i;
            n++;
        }
        return n;
    }
    float threshold = min_p * probs[argmax(probs, n_vocab)];
    for (int32_t i = 0; i < n_vocab; i++) {
        if (probs[i] >= threshold) {
            c[n].prob = probs[i];
            c[n].id = i;
            n++;
        }
    }
    return n > 0 ? n : keep_only_argmax(probs, n_vocab, c); /* NaN made every test fail */
}

static float candidates_mass(const sampler_candidate *c, int32_t n) {
    float mass = 0.0f;
    for (int32_t i = 0; i < n; i++) mass += c[i].prob;
    return mass;
}

/* Before ordering for top-p: drops tokens that cannot be in the nucleus of a list of total mass
 * `mass`. A token other than the most probable one is in it only if its own mass plus that of all
 * less probable tokens is at least (1 - top_p) * mass, which needs
 * prob >= (1 - top_p) * mass / (n - 1). The bound is halved so that float rounding of the sums
 * can never make it drop a token that belongs. */
static int32_t prune_for_top_p(sampler_candidate *c, int32_t n, float top_p, float mass) {
    if (n <= 1) return n;
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (candidate_before(&c[i], &c[best])) best = i;
    float cutoff = 0.5f * (1.0f - top_p) * mass / (float)(n - 1);
    int32_t kept = 0;
    for (int32_t i = 0; i < n; i++)
        if (i == best || c[i].prob >= cutoff) c[kept++] = c[i];
    return kept;
}

/* Stages 4 to 7 when top-k or min-p is on. top-p measures mass relative to what top-k and min-p
 * kept, as if that were renormalised, and the draw renormalises over what top-p kept. */
static int32_t draw_general(lmoe_sampler *s, int32_t n_vocab, float coin) {
    sampler_candidate *c = s->candidates;
    const lmoe_sampler_params *p = &s->params;
    int32_t n = list_min_p(s->probs, n_vocab, p->min_p, c);
    int sorted = 0;
    if (p->top_k > 0 && p->top_k < n) {
        keep_top_k(c, n, p->top_k);
        n = p->top_k;
        sorted = 1;
    }
    float mass = candidates_mass(c, n);
    if (p->top_p < 1.0f) {
        float threshold = p->top_p * mass;
        if (sorted) {
            n = nucleus_size(c, n, threshold, &mass);
        } else {
            n = prune_for_top_p(c, n, p->top_p, mass);
            n = take_nucleus(c, n, threshold, &mass);
        }
    }
    return draw_from_candidates(c, n, coin, mass);
}

/* ---------------------------------------------------------------------------------------------
 * Sampling
 * ------------------------------------------------------------------------------------------- */

lmoe_status lmoe_sampler_sample(lmoe_sampler *sampler, const float *logits, int32_t n_vocab,
                                lmoe_token *token) {
    RETURN_ERROR_IF(sampler == NULL, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_sampler_sample: sampler is NULL");
    RETURN_ERROR_IF(logits == NULL, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_sampler_sample: logits is NULL");
    RETURN_ERROR_IF(token == NULL, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_sampler_sample: token is NULL");
    RETURN_ERROR_IF(n_vocab <= 0, LMOE_ERR_INVALID_ARGUMENT,
                    "lmoe_sampler_sample: n_vocab must be > 0, got %d", (int)n_vocab);
    FORWARD_IF_ERROR(sampler_reserve(sampler, (size_t)n_vocab));

    const lmoe_sampler_params *p = &sampler->params;
    float *x = sampler->probs;
    memcpy(x, logits, (size_t)n_vocab * sizeof *x);
    apply_repeat_penalty(sampler, x, n_vocab);
    if (p->temperature == 0.0f) {
        *token = argmax(x, n_vocab); /* greedy: no random number is drawn */
        return LMOE_OK;
    }
    for (int32_t i = 0; i < n_vocab; i++) x[i] /= p->temperature; /* division, as run.c */
    /* stage 3: the generic kernel is run.c's softmax, in its order; SIMD tables would round
     * differently, and the draw must not depend on the CPU */
    lmoe_kernels_generic()->softmax(x, (size_t)n_vocab);
    float coin = random_f32(&sampler->rng_state); /* exactly one per call */
    if (p->top_k == 0 && p->min_p == 0.0f)
        *token = p->top_p >= 1.0f ? draw_multinomial(x, n_vocab, coin)
                                  : draw_top_p_runc(sampler, n_vocab, coin);
    else
        *token = draw_general(sampler, n_vocab, coin);
    return LMOE_OK;
}
