/* moefy.c - a dense LLaMA GGUF to a mixture-of-experts GGUF (moefy.h): checks the request, runs
 * the calibration text if the method, gate or scale needs it, plans every layer (which neurons
 * each expert gets, the gate, the scale), then writes the file, FFN tensors produced at write time
 * from the dense ones and everything else copied. */
#include "moefy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "progress.h"
#include "gguf.h"
#include "model.h"
#include "moefy_calib.h"
#include "moefy_gate.h"
#include "moefy_split.h"
#include "quant.h"

#define DEFAULT_CALIB_TOKENS 4096u

static const char *const method_names[] = {"random", "clustering", "co-activation",
                                           "sharing-inner", "sharing-inter"};
static const char *const gate_names[] = {"random", "centroid", "calibrated", "uniform"};

const char *moefy_method_name(moefy_method m) {
    return (unsigned)m < sizeof method_names / sizeof method_names[0] ? method_names[m] : "?";
}

const char *moefy_gate_name(moefy_gate_init g) {
    return (unsigned)g < sizeof gate_names / sizeof gate_names[0] ? gate_names[g] : "?";
}

bool moefy_parse_method(const char *name, moefy_method *out) {
    for (size_t i = 0; i < sizeof method_names / sizeof method_names[0]; i++)
        if (strcmp(name, method_names[i]) == 0) return *out = (moefy_method)i, true;
    return false;
}

bool moefy_parse_gate(const char *name, moefy_gate_init *out) {
    for (size_t i = 0; i < sizeof gate_names / sizeof gate_names[0]; i++)
        if (strcmp(name, gate_names[i]) == 0) return *out = (moefy_gate_init)i, true;
    return false;
}

void moefy_default_options(moefy_options *o) {
    memset(o, 0, sizeof *o);
    o->n_experts = 4;
    o->top_k = 2;
    o->method = MOEFY_METHOD_RANDOM;
    o->gate = MOEFY_GATE_CENTROID;
    o->shared_size = MOEFY_SHARED_AUTO;
    o->seed = 1;
}

static bool method_is_partition(moefy_method m) {
    return m == MOEFY_METHOD_RANDOM || m == MOEFY_METHOD_CLUSTERING ||
           m == MOEFY_METHOD_COACTIVATION;
}

static bool method_needs_calib(moefy_method m) {
    return m == MOEFY_METHOD_COACTIVATION || m == MOEFY_METHOD_SHARING_INNER ||
           m == MOEFY_METHOD_SHARING_INTER;
}

/* One layer's plan. */
typedef struct layer_plan {
    uint32_t *experts;       /* (E, expert_size) neuron ids */
    uint32_t *shared;        /* (shared_size) neuron ids */
    float *gate;             /* (E, n_embd) */
    float scale;
    float gate_factor;       /* what fit_scale multiplied the gate by (1: as built) */
    moefy_overlap overlap;
} layer_plan;

/* The dense layer's FFN in f32: w1 and w3 rows, and w2 transposed so that neuron i's output
 * direction (column i of w2) is row i. */
typedef struct dense_ffn {
    float *w_gate, *w_up;    /* (n_ff, n_embd) */
    float *w_down_t;         /* (n_ff, n_embd) */
    float *down_norm;        /* (n_ff) |column i of w2| */
} dense_ffn;

typedef struct moefy_run {
    const moefy_options *o;
    const lmoe_model *model;
    uint32_t n_embd, n_ff, E, K, expert_size, shared_size;
    moefy_calib calib;       /* n_tokens 0 without calibration */
    layer_plan *layers;      /* [n_layer] */
    float **importance;      /* [n_layer] (E, n_ff) of the sharing methods, once computed */
} moefy_run;

/* A seed for one layer and one purpose, so layers do not repeat each other. */
static uint64_t layer_seed(uint64_t seed, uint32_t il, uint32_t purpose) {
    return seed ^ ((uint64_t)(il + 1) * 0x9E3779B97F4A7C15ull) ^
           ((uint64_t)(purpose + 1) * 0xC2B2AE3D27D4EB4Full);
}

/* ---- checking the request ---- */

/* "2, 4, 43, 86": the expert counts that divide n (besides 1 and n). */
static void divisors(uint32_t n, char *buf, size_t size) {
    size_t len = 0;
    buf[0] = 0;
    for (uint32_t d = 2; d < n && len + 16 < size; d++)
        if (n % d == 0) len += (size_t)snprintf(buf + len, size - len, "%s%u", len ? ", " : "", d);
    if (!len) snprintf(buf, size, "none");
}

static lmoe_status check_request(const moefy_options *o, const lmoe_model *m,
                                 const char *dense_path) {
    const llama_hparams *hp = &m->hp;
    RETURN_ERROR_IF(!m->has_weights, LMOE_ERR_INVALID_ARGUMENT,
                    "%s has no weights (a vocabulary-only file)", dense_path);
    RETURN_ERROR_IF(hp->n_expert, LMOE_ERR_INVALID_ARGUMENT,
                    "%s is already a mixture-of-experts model (%u experts, top-%u); moefy needs a "
                    "dense model", dense_path, hp->n_expert, hp->n_expert_used);
    RETURN_ERROR_IF(strcmp(m->architecture, "llama") != 0, LMOE_ERR_UNSUPPORTED,
                    "%s: architecture '%s'; moefy reads dense 'llama' models", dense_path,
                    m->architecture);
    uint32_t E = o->n_experts, n_ff = hp->n_ff;
    RETURN_ERROR_IF(E < 1 || E > n_ff, LMOE_ERR_INVALID_ARGUMENT,
                    "--experts %u: must be between 1 and the FFN's %u neurons", E, n_ff);
    RETURN_ERROR_IF(E > 1024, LMOE_ERR_INVALID_ARGUMENT, "--experts %u: at most 1024", E);
    RETURN_ERROR_IF(o->top_k < 1 || o->top_k > E, LMOE_ERR_INVALID_ARGUMENT,
                    "--top-k %u: must be between 1 and the number of experts (%u)", o->top_k, E);
    char list[256];
    divisors(n_ff, list, sizeof list);
    RETURN_ERROR_IF(method_is_partition(o->method) && n_ff % E != 0, LMOE_ERR_INVALID_ARGUMENT,
                    "--method %s splits the FFN's %u neurons into equal experts, and %u does not "
                    "divide %u (expert counts that do: %s)", moefy_method_name(o->method), n_ff,
                    E, n_ff, list);
    RETURN_ERROR_IF(o->method == MOEFY_METHOD_SHARING_INNER && o->expert_size > n_ff,
                    LMOE_ERR_INVALID_ARGUMENT, "--expert-size %u is larger than the FFN (%u)",
                    o->expert_size, n_ff);
    RETURN_ERROR_IF(o->method == MOEFY_METHOD_SHARING_INTER && o->shared_size != MOEFY_SHARED_AUTO &&
                        (o->shared_size >= n_ff || (n_ff - o->shared_size) % E != 0),
                    LMOE_ERR_INVALID_ARGUMENT,
                    "--shared-size %u must be below %u and leave a multiple of %u neurons for "
                    "the routed experts", o->shared_size, n_ff, E);
    RETURN_ERROR_IF(!(o->scale >= 0.0f) || !isfinite(o->scale), LMOE_ERR_INVALID_ARGUMENT,
                    "--scale must be a positive number");
    if (o->calib_path) return LMOE_OK;
    RETURN_ERROR_IF(method_needs_calib(o->method), LMOE_ERR_INVALID_ARGUMENT,
                    "--method %s needs calibration text: give it with --calib FILE",
                    moefy_method_name(o->method));
    RETURN_ERROR_IF(o->gate == MOEFY_GATE_CALIBRATED, LMOE_ERR_INVALID_ARGUMENT,
                    "--gate calibrated needs calibration text: give it with --calib FILE");
    RETURN_ERROR_IF(o->scale_fit, LMOE_ERR_INVALID_ARGUMENT,
                    "--scale fit needs calibration text: give it with --calib FILE");
    return LMOE_OK;
}

/* ---- planning a layer ---- */

static void dense_ffn_free(dense_ffn *d) {
    free(d->w_gate);
    free(d->w_up);
    free(d->w_down_t);
    free(d->down_norm);
}

static lmoe_status dense_ffn_load(const layer_weights *l, uint32_t n_ff, uint32_t n_embd,
                                  dense_ffn *d) {
    memset(d, 0, sizeof *d);
    size_t n = (size_t)n_ff * n_embd;
    d->w_gate = malloc(n * sizeof(float));
    d->w_up = malloc(n * sizeof(float));
    d->w_down_t = malloc(n * sizeof(float));
    d->down_norm = calloc(n_ff, sizeof(float));
    float *row = malloc((size_t)n_ff * sizeof(float));
    bool ok = d->w_gate && d->w_up && d->w_down_t && d->down_norm && row;
    if (ok) {
        for (uint32_t i = 0; i < n_ff; i++) {
            lmoe_matrix_row_to_f32(l->ffn_gate.type, l->ffn_gate.data, i, n_embd,
                                   d->w_gate + (size_t)i * n_embd);
            lmoe_matrix_row_to_f32(l->ffn_up.type, l->ffn_up.data, i, n_embd,
                                   d->w_up + (size_t)i * n_embd);
        }
        for (uint32_t c = 0; c < n_embd; c++) {
            lmoe_matrix_row_to_f32(l->ffn_down.type, l->ffn_down.data, c, n_ff, row);
            for (uint32_t i = 0; i < n_ff; i++) d->w_down_t[(size_t)i * n_embd + c] = row[i];
        }
        for (uint32_t i = 0; i < n_ff; i++) {
            double sum = 0;
            for (uint32_t c = 0; c < n_embd; c++) {
                double v = d->w_down_t[(size_t)i * n_embd + c];
                sum += v * v;
            }
            d->down_norm[i] = (float)sqrt(sum);
        }
    }
    free(row);
    if (!ok) {
        dense_ffn_free(d);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "moefy: out of memory for a layer's FFN");
    }
    return LMOE_OK;
}

/* out (n_embd) = sum over the neurons ids (n) of h[id] * down column id. */
static void ffn_output(const dense_ffn *d, uint32_t n_embd, const float *h, const uint32_t *ids,
                       uint32_t n, double *out) {
    memset(out, 0, n_embd * sizeof *out);
    for (uint32_t r = 0; r < n; r++) {
        double a = h[ids[r]];
        if (a == 0.0) continue;
        const float *col = d->w_down_t + (size_t)ids[r] * n_embd;
        for (uint32_t c = 0; c < n_embd; c++) out[c] += a * col[c];
    }
}

/* Layer il's neuron importance to each token group (computed once, kept in run->importance). */
static lmoe_status layer_importance(moefy_run *run, uint32_t il, const dense_ffn *d,
                                    const float **out) {
    if (!run->importance) {
        run->importance = calloc(run->calib.n_layer, sizeof *run->importance);
        RETURN_ERROR_IF(!run->importance, LMOE_ERR_OUT_OF_MEMORY, "moefy: out of memory");
    }
    if (!run->importance[il]) {
        float *imp = malloc((size_t)run->E * run->n_ff * sizeof(float));
        RETURN_ERROR_IF(!imp, LMOE_ERR_OUT_OF_MEMORY, "moefy: out of memory");
        const moefy_calib *c = &run->calib;
        lmoe_status st = moefy_importance(c->x[il], c->h[il], c->n_tokens, run->n_embd, run->n_ff,
                                          d->down_norm, run->E, layer_seed(run->o->seed, il, 0),
                                          imp, NULL);
        if (st != LMOE_OK) {
            free(imp);
            return st;
        }
        run->importance[il] = imp;
    }
    *out = run->importance[il];
    return LMOE_OK;
}

/* The routed experts' neurons (and the shared expert's) of one layer. */
static lmoe_status split_layer(moefy_run *run, uint32_t il, const dense_ffn *d,
                               layer_plan *p) {
    const moefy_options *o = run->o;
    uint32_t n_ff = run->n_ff, E = run->E;
    const moefy_calib *c = &run->calib;
    uint64_t seed = layer_seed(o->seed, il, 0);
    switch (o->method) {
    case MOEFY_METHOD_RANDOM:
        return moefy_split_random(n_ff, E, seed, p->experts);
    case MOEFY_METHOD_CLUSTERING:
        return moefy_split_clustering(d->w_up, n_ff, run->n_embd, E, seed, p->experts);
    case MOEFY_METHOD_COACTIVATION:
        return moefy_split_coactivation(c->h[il], c->n_tokens, n_ff, E, seed, p->experts);
    case MOEFY_METHOD_SHARING_INNER:
    case MOEFY_METHOD_SHARING_INTER:
        break;
    }
    const float *importance;
    FORWARD_IF_ERROR(layer_importance(run, il, d, &importance));
    if (o->method == MOEFY_METHOD_SHARING_INNER)
        return moefy_split_sharing_inner(importance, n_ff, E, run->expert_size, p->experts);
    uint32_t shared = run->shared_size;
    return moefy_split_sharing_inter(importance, n_ff, E, &shared, p->shared, p->experts);
}

/* Each calibration token's output of every expert, as its L2 norm: targets (n_tokens, E). */
static lmoe_status expert_output_norms(const moefy_run *run, uint32_t il, const dense_ffn *d,
                                       const layer_plan *p, float *targets) {
    const moefy_calib *c = &run->calib;
    uint32_t n_embd = run->n_embd, E = run->E;
    double *out = malloc(n_embd * sizeof *out);
    RETURN_ERROR_IF(!out, LMOE_ERR_OUT_OF_MEMORY, "moefy: out of memory");
    for (size_t t = 0; t < c->n_tokens; t++) {
        const float *h = c->h[il] + t * run->n_ff;
        for (uint32_t j = 0; j < E; j++) {
            ffn_output(d, n_embd, h, p->experts + (size_t)j * run->expert_size, run->expert_size,
                       out);
            double sum = 0;
            for (uint32_t e = 0; e < n_embd; e++) sum += out[e] * out[e];
            targets[t * E + j] = (float)sqrt(sum);
        }
    }
    free(out);
    return LMOE_OK;
}

static lmoe_status gate_layer(moefy_run *run, uint32_t il, const dense_ffn *d, layer_plan *p) {
    const moefy_options *o = run->o;
    uint32_t E = run->E, n_embd = run->n_embd;
    switch (o->gate) {
    case MOEFY_GATE_RANDOM:
        return moefy_gate_random(E, n_embd, layer_seed(o->seed, il, 1), p->gate);
    case MOEFY_GATE_CENTROID:
        return moefy_gate_centroid(d->w_gate, n_embd, p->experts, E, run->expert_size, p->gate);
    case MOEFY_GATE_UNIFORM:
        memset(p->gate, 0, (size_t)E * n_embd * sizeof(float));
        return LMOE_OK;
    case MOEFY_GATE_CALIBRATED:
        break;
    }
    float *targets = malloc(run->calib.n_tokens * E * sizeof(float));
    RETURN_ERROR_IF(!targets, LMOE_ERR_OUT_OF_MEMORY, "moefy: out of memory");
    lmoe_status st = expert_output_norms(run, il, d, p, targets);
    if (st == LMOE_OK)
        st = moefy_gate_calibrated(run->calib.x[il], targets, run->calib.n_tokens, n_embd, E,
                                   p->gate);
    free(targets);
    return st;
}

/* The k largest logits, largest first (ties to the lower id, as the runtime chooses). */
static void select_top_k(const float *logits, uint32_t E, uint32_t k, uint32_t *sel) {
    for (uint32_t s = 0; s < k; s++) {
        int32_t best = -1;
        for (uint32_t e = 0; e < E; e++) {
            bool taken = false;
            for (uint32_t i = 0; i < s; i++) taken |= sel[i] == e;
            if (!taken && (best < 0 || logits[e] > logits[best])) best = (int32_t)e;
        }
        sel[s] = (uint32_t)best;
    }
}

/* Factors the gate may be multiplied by when the scale is fitted, sharpest first. They keep every
 * token's choice of experts (a positive factor keeps the order of the logits) and only change how
 * evenly the softmax over the k selected logits weights them: toward 1/k each as the factor
 * shrinks, which is what a gate fitted to output sizes needs (its logits' spread is in units of
 * output norms, not of log-weights). */
static const double gate_factors[] = {1.0, 0.5, 0.25, 0.1, 0.05, 0.025, 0.01, 0.001};
#define N_GATE_FACTORS (sizeof gate_factors / sizeof gate_factors[0])

/* Sums of the least squares fit of one gate factor: the scale is num / den, and what is left of
 * the dense output's energy after it is energy - num^2 / den. */
typedef struct scale_sums {
    double num, den;
} scale_sums;

/* One calibration token: the k selected experts' outputs (out: K x n_embd) and logits (sel_logits),
 * and the dense FFN's output beyond the shared expert (dense). */
static void token_outputs(const moefy_run *run, const dense_ffn *d, const layer_plan *p,
                          const float *x, const float *h, const uint32_t *all, float *logits,
                          uint32_t *sel, double *sel_logits, double *dense, double *part,
                          double *out) {
    uint32_t n_embd = run->n_embd, E = run->E, K = run->K;
    ffn_output(d, n_embd, h, all, run->n_ff, dense);
    ffn_output(d, n_embd, h, p->shared, run->shared_size, part);
    for (uint32_t e = 0; e < n_embd; e++) dense[e] -= part[e];
    for (uint32_t j = 0; j < E; j++) {
        double dot = 0;
        for (uint32_t e = 0; e < n_embd; e++) dot += (double)p->gate[(size_t)j * n_embd + e] * x[e];
        logits[j] = (float)dot;
    }
    select_top_k(logits, E, K, sel);
    for (uint32_t s = 0; s < K; s++) {
        sel_logits[s] = logits[sel[s]];
        ffn_output(d, n_embd, h, p->experts + (size_t)sel[s] * run->expert_size,
                   run->expert_size, out + (size_t)s * n_embd);
    }
}

/* Least squares over the calibration tokens, so that the routed experts' weighted sum comes
 * closest to what the dense FFN adds beyond the shared expert: for each gate factor the best
 * scale, then the factor that leaves the least error. The gate is multiplied by that factor. */
static lmoe_status fit_scale(const moefy_run *run, uint32_t il, const dense_ffn *d,
                             layer_plan *p) {
    const moefy_calib *c = &run->calib;
    uint32_t n_embd = run->n_embd, n_ff = run->n_ff, E = run->E, K = run->K;
    double *dense = malloc(n_embd * sizeof *dense), *part = malloc(n_embd * sizeof *part),
           *moe = malloc(n_embd * sizeof *moe), *out = malloc((size_t)K * n_embd * sizeof *out),
           *sel_logits = malloc(K * sizeof *sel_logits), *w = malloc(K * sizeof *w);
    float *logits = malloc(E * sizeof *logits);
    uint32_t *sel = malloc(K * sizeof *sel), *all = malloc(n_ff * sizeof *all);
    bool ok = dense && part && moe && out && sel_logits && w && logits && sel && all;
    scale_sums sums[N_GATE_FACTORS] = {{0, 0}};
    double energy = 0;
    for (uint32_t i = 0; ok && i < n_ff; i++) all[i] = i;
    for (size_t t = 0; ok && t < c->n_tokens; t++) {
        token_outputs(run, d, p, c->x[il] + t * n_embd, c->h[il] + t * n_ff, all, logits, sel,
                      sel_logits, dense, part, out);
        for (uint32_t e = 0; e < n_embd; e++) energy += dense[e] * dense[e];
        for (size_t f = 0; f < N_GATE_FACTORS; f++) {
            double sum = 0;
            for (uint32_t s = 0; s < K; s++)
                sum += w[s] = exp(gate_factors[f] * (sel_logits[s] - sel_logits[0]));
            memset(moe, 0, n_embd * sizeof *moe);
            for (uint32_t s = 0; s < K; s++)
                for (uint32_t e = 0; e < n_embd; e++) moe[e] += w[s] / sum * out[(size_t)s * n_embd + e];
            for (uint32_t e = 0; e < n_embd; e++) {
                sums[f].num += dense[e] * moe[e];
                sums[f].den += moe[e] * moe[e];
            }
        }
    }
    free(dense);
    free(part);
    free(moe);
    free(out);
    free(sel_logits);
    free(w);
    free(logits);
    free(sel);
    free(all);
    RETURN_ERROR_IF(!ok, LMOE_ERR_OUT_OF_MEMORY, "moefy: out of memory");
    size_t best = N_GATE_FACTORS;
    double best_left = energy;
    for (size_t f = 0; f < N_GATE_FACTORS; f++) {
        if (!(sums[f].den > 0 && sums[f].num > 0)) continue;
        double left = energy - sums[f].num * sums[f].num / sums[f].den;
        if (best == N_GATE_FACTORS || left < best_left) best = f, best_left = left;
    }
    p->gate_factor = 1.0f;
    /* no signal (the experts are silent on every token): keep LLaMA-MoE's E/K */
    p->scale = (float)E / (float)K;
    if (best == N_GATE_FACTORS) return LMOE_OK;
    p->gate_factor = (float)gate_factors[best];
    p->scale = (float)(sums[best].num / sums[best].den);
    for (size_t i = 0; i < (size_t)E * n_embd; i++) p->gate[i] *= p->gate_factor;
    return LMOE_OK;
}

static lmoe_status plan_layer(moefy_run *run, uint32_t il) {
    const moefy_options *o = run->o;
    layer_plan *p = &run->layers[il];
    size_t n_slots = (size_t)run->E * run->expert_size;
    /* sharing-inter's split fills up to n_ff ids into each list */
    size_t room = n_slots > run->n_ff ? n_slots : run->n_ff;
    p->experts = malloc(room * sizeof *p->experts);
    p->shared = malloc((size_t)run->n_ff * sizeof *p->shared);
    p->gate = malloc((size_t)run->E * run->n_embd * sizeof *p->gate);
    RETURN_ERROR_IF(!p->experts || !p->shared || !p->gate, LMOE_ERR_OUT_OF_MEMORY,
                    "moefy: out of memory");
    dense_ffn d;
    FORWARD_IF_ERROR(dense_ffn_load(&run->model->layers[il], run->n_ff, run->n_embd, &d));
    lmoe_status st = split_layer(run, il, &d, p);
    if (st == LMOE_OK) st = gate_layer(run, il, &d, p);
    p->gate_factor = 1.0f;
    if (st == LMOE_OK && o->scale_fit) st = fit_scale(run, il, &d, p);
    else p->scale = o->scale > 0 ? o->scale : (float)run->E / (float)run->K;
    if (st == LMOE_OK)
        moefy_overlap_count(p->experts, run->E, run->expert_size, p->shared, run->shared_size,
                            run->n_ff, &p->overlap);
    dense_ffn_free(&d);
    return lmoe_error_prefix(st, "layer %u", il);
}

/* sharing-inter with an automatic shared size: every layer's own choice, then their rounded
 * mean for all (the file has one shared width). */
static lmoe_status choose_shared_size(moefy_run *run) {
    uint32_t n_ff = run->n_ff, E = run->E;
    uint32_t *shared = malloc(n_ff * sizeof *shared), *experts = malloc(n_ff * sizeof *experts);
    dense_ffn d = {0};
    lmoe_status st = shared && experts
                         ? LMOE_OK
                         : lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "moefy: out of memory");
    uint64_t total = 0;
    for (uint32_t il = 0; st == LMOE_OK && il < run->calib.n_layer; il++) {
        st = dense_ffn_load(&run->model->layers[il], n_ff, run->n_embd, &d);
        if (st != LMOE_OK) break;
        uint32_t size = MOEFY_SHARED_AUTO;
        const float *importance; /* kept for split_layer */
        st = layer_importance(run, il, &d, &importance);
        if (st == LMOE_OK) st = moefy_split_sharing_inter(importance, n_ff, E, &size, shared, experts);
        dense_ffn_free(&d);
        total += size;
    }
    if (st == LMOE_OK) {
        uint32_t size = (uint32_t)((total + run->calib.n_layer / 2) / run->calib.n_layer);
        while ((n_ff - size) % E) size++; /* the layers' sizes are all valid, so this ends */
        run->shared_size = size;
    }
    free(shared);
    free(experts);
    return st;
}

/* ---- writing ---- */

typedef enum ffn_part { PART_GATE, PART_UP, PART_DOWN } ffn_part;

/* One FFN tensor of the output, produced at write time from the dense layer. */
typedef struct fill_job {
    const moefy_run *run;
    uint32_t il;
    ffn_part part;
    bool shared;             /* the shared expert, else the stacked routed experts */
    ggml_type type;
} fill_job;

static lmoe_status fill_ffn(void *user, void *dst, size_t n_bytes) {
    const fill_job *f = user;
    const moefy_run *run = f->run;
    const layer_weights *l = &run->model->layers[f->il];
    const layer_plan *p = &run->layers[f->il];
    const uint32_t *ids = f->shared ? p->shared : p->experts;
    uint32_t per = f->shared ? run->shared_size : run->expert_size;
    uint32_t matrices = f->shared ? 1 : run->E, n_embd = run->n_embd, n_ff = run->n_ff;
    size_t elem = ggml_type_block_bytes(f->type) / ggml_type_block_elems(f->type);
    size_t expect = (size_t)matrices * per * n_embd * elem;
    RETURN_ERROR_IF(expect != n_bytes, LMOE_ERR_INTERNAL, "moefy: tensor size mismatch");
    float *full = malloc((size_t)(n_ff > n_embd ? n_ff : n_embd) * sizeof(float));
    float *row = malloc((size_t)(per > n_embd ? per : n_embd) * sizeof(float));
    lmoe_status st = full && row ? LMOE_OK
                                 : lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "moefy: out of memory");
    char *out = dst;
    for (uint32_t m = 0; st == LMOE_OK && m < matrices; m++) {
        const uint32_t *mine = ids + (size_t)m * per;
        if (f->part != PART_DOWN) { /* rows: the neurons' rows of w1 / w3 */
            weight_ref w = f->part == PART_GATE ? l->ffn_gate : l->ffn_up;
            for (uint32_t r = 0; r < per; r++, out += n_embd * elem) {
                lmoe_matrix_row_to_f32(w.type, w.data, mine[r], n_embd, row);
                lmoe_row_from_f32(f->type, row, out, n_embd);
            }
        } else { /* columns: each output dimension's row of w2, at the neurons */
            for (uint32_t c = 0; c < n_embd; c++, out += per * elem) {
                lmoe_matrix_row_to_f32(l->ffn_down.type, l->ffn_down.data, c, n_ff, full);
                for (uint32_t r = 0; r < per; r++) row[r] = full[mine[r]];
                lmoe_row_from_f32(f->type, row, out, per);
            }
        }
    }
    free(full);
    free(row);
    return st;
}

/* The expert tensors keep a float type of the dense FFN; quantised ones become f32. */
static ggml_type expert_type(ggml_type dense) {
    return dense == GGML_TYPE_F16 || dense == GGML_TYPE_BF16 ? dense : GGML_TYPE_F32;
}

static lmoe_status write_keys(const moefy_run *run, const gguf_file *f, const char *dense_path,
                              gguf_writer *w) {
    const moefy_options *o = run->o;
    FORWARD_IF_ERROR(gguf_writer_set_str(w, "general.architecture", "llama_moe"));
    char key[320];
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (gguf_str_eq(kv->key, "general.architecture") || gguf_str_eq(kv->key, "general.name") ||
            gguf_str_eq(kv->key, "general.source") ||
            gguf_str_eq(kv->key, "llama.feed_forward_length") ||
            gguf_str_eq(kv->key, "llamamoe.feed_forward_length_unpadded"))
            continue;
        RETURN_ERROR_IF(kv->key.len > 256, LMOE_ERR_UNSUPPORTED, "moefy: a key of %llu bytes",
                        (unsigned long long)kv->key.len);
        if (kv->key.len > 6 && memcmp(kv->key.ptr, "llama.", 6) == 0) {
            snprintf(key, sizeof key, "llama_moe.%.*s", (int)kv->key.len - 6, kv->key.ptr + 6);
            FORWARD_IF_ERROR(gguf_writer_copy_kv_as(w, key, kv));
        } else {
            FORWARD_IF_ERROR(gguf_writer_copy_kv(w, kv));
        }
    }
    const char *base = strrchr(dense_path, '/') ? strrchr(dense_path, '/') + 1 : dense_path;
    char text[512];
    snprintf(text, sizeof text, "%s (moefy: %u experts, top-%u, %s)",
             run->model->name[0] ? run->model->name : base, run->E, run->K,
             moefy_method_name(o->method));
    FORWARD_IF_ERROR(gguf_writer_set_str(w, "general.name", text));
    snprintf(text, sizeof text, "llamamoe-convert moefy of %s", base);
    FORWARD_IF_ERROR(gguf_writer_set_str(w, "general.source", text));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, "llama_moe.feed_forward_length", run->expert_size));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, "llama_moe.expert_count", run->E));
    FORWARD_IF_ERROR(gguf_writer_set_u32(w, "llama_moe.expert_used_count", run->K));
    FORWARD_IF_ERROR(gguf_writer_set_str(w, "llama_moe.expert_gate_type", "linear"));
    uint32_t n_layer = run->model->hp.n_layer;
    float *scales = malloc(n_layer * sizeof *scales), *factors = malloc(n_layer * sizeof *factors);
    uint32_t *several = malloc(n_layer * sizeof *several), *unused = malloc(n_layer * sizeof *unused);
    lmoe_status st = scales && factors && several && unused
                         ? LMOE_OK
                         : lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "moefy: out of memory");
    for (uint32_t il = 0; st == LMOE_OK && il < n_layer; il++) {
        scales[il] = run->layers[il].scale;
        factors[il] = run->layers[il].gate_factor;
        several[il] = run->layers[il].overlap.n_shared_by_experts;
        unused[il] = run->layers[il].overlap.n_unused;
    }
    if (st == LMOE_OK)
        st = gguf_writer_set_array(w, "llama_moe.expert_score_scale", GGUF_TYPE_FLOAT32, scales,
                                   n_layer);
    if (st == LMOE_OK && run->shared_size)
        st = gguf_writer_set_u32(w, "llama_moe.expert_shared_feed_forward_length",
                                 run->shared_size);
    /* how it was built */
    if (st == LMOE_OK) st = gguf_writer_set_str(w, "llamamoe.moefy.method", moefy_method_name(o->method));
    if (st == LMOE_OK) st = gguf_writer_set_str(w, "llamamoe.moefy.gate", moefy_gate_name(o->gate));
    if (o->scale_fit) snprintf(text, sizeof text, "fit");
    else if (o->scale > 0) snprintf(text, sizeof text, "%.9g", (double)o->scale);
    else snprintf(text, sizeof text, "E/K");
    if (st == LMOE_OK) st = gguf_writer_set_str(w, "llamamoe.moefy.scale", text);
    if (st == LMOE_OK) st = gguf_writer_set_u64(w, "llamamoe.moefy.seed", o->seed);
    if (st == LMOE_OK) st = gguf_writer_set_u32(w, "llamamoe.moefy.dense_feed_forward_length", run->n_ff);
    if (st == LMOE_OK) st = gguf_writer_set_u32(w, "llamamoe.moefy.calibration_tokens", (uint32_t)run->calib.n_tokens);
    if (st == LMOE_OK)
        st = gguf_writer_set_array(w, "llamamoe.moefy.neurons_in_several_experts",
                                   GGUF_TYPE_UINT32, several, n_layer);
    if (st == LMOE_OK)
        st = gguf_writer_set_array(w, "llamamoe.moefy.neurons_unused", GGUF_TYPE_UINT32, unused,
                                   n_layer);
    if (st == LMOE_OK)
        st = gguf_writer_set_array(w, "llamamoe.moefy.gate_factor", GGUF_TYPE_FLOAT32, factors,
                                   n_layer);
    free(scales);
    free(factors);
    free(several);
    free(unused);
    return st;
}

static lmoe_status add_ffn_tensor(gguf_writer *w, fill_job *job, const char *name) {
    uint32_t per = job->shared ? job->run->shared_size : job->run->expert_size;
    uint64_t n_embd = job->run->n_embd;
    uint64_t ne[3] = {n_embd, per, job->run->E};
    if (job->part == PART_DOWN) ne[0] = per, ne[1] = n_embd;
    return gguf_writer_add_tensor_fill(w, name, job->type, job->shared ? 2 : 3, ne, fill_ffn, job);
}

/* Tensors in the dense file's order; each layer's FFN becomes its gate, stacked experts and
 * shared expert. */
static lmoe_status write_tensors(const moefy_run *run, const gguf_file *f, gguf_writer *w,
                                 fill_job *jobs) {
    static const char *const parts[] = {"gate", "up", "down"};
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        char name[320], tail[32];
        RETURN_ERROR_IF(t->name.len > 256, LMOE_ERR_UNSUPPORTED, "moefy: a tensor name of %llu "
                        "bytes", (unsigned long long)t->name.len);
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        unsigned il;
        int part = -1;
        if (sscanf(name, "blk.%u.ffn_%31[a-z].weight", &il, tail) == 2 && il < run->model->hp.n_layer)
            for (int p = 0; p < 3; p++)
                if (strcmp(tail, parts[p]) == 0) {
                    char expect[64];
                    snprintf(expect, sizeof expect, "blk.%u.ffn_%s.weight", il, parts[p]);
                    if (strcmp(expect, name) == 0) part = p;
                }
        if (part < 0) {
            FORWARD_IF_ERROR(gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, t->data));
            continue;
        }
        const layer_weights *l = &run->model->layers[il];
        weight_ref src = part == PART_GATE ? l->ffn_gate : part == PART_UP ? l->ffn_up : l->ffn_down;
        fill_job *job = &jobs[((size_t)il * 3 + (size_t)part) * 2];
        *job = (fill_job){run, il, (ffn_part)part, false, expert_type(src.type)};
        job[1] = *job;
        job[1].shared = true;
        if (part == PART_GATE) {
            uint64_t ne[2] = {run->n_embd, run->E};
            snprintf(name, sizeof name, "blk.%u.ffn_gate_inp.weight", il);
            FORWARD_IF_ERROR(gguf_writer_add_tensor(w, name, GGML_TYPE_F32, 2, ne,
                                                    run->layers[il].gate));
        }
        snprintf(name, sizeof name, "blk.%u.ffn_%s_exps.weight", il, parts[part]);
        FORWARD_IF_ERROR(add_ffn_tensor(w, job, name));
        if (run->shared_size) {
            snprintf(name, sizeof name, "blk.%u.ffn_%s_shexp.weight", il, parts[part]);
            FORWARD_IF_ERROR(add_ffn_tensor(w, &job[1], name));
        }
    }
    return LMOE_OK;
}

static void on_written(void *user, size_t index, size_t count, const char *name, uint64_t bytes) {
    (void)bytes;
    const moefy_options *o = user;
    if ((index + 1) % 50 == 0 || index + 1 == count)
        report(o, "written %zu/%zu tensors (last %s)", index + 1, count, name);
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static lmoe_status build(moefy_run *run, const char *dense_path, const char *out_path) {
    const moefy_options *o = run->o;
    const llama_hparams *hp = &run->model->hp;
    FORWARD_IF_ERROR(check_request(o, run->model, dense_path));
    run->n_embd = hp->n_embd;
    run->n_ff = hp->n_ff;
    run->E = o->n_experts;
    run->K = o->top_k;
    run->expert_size = run->n_ff / run->E;
    if (o->method == MOEFY_METHOD_SHARING_INNER && o->expert_size) run->expert_size = o->expert_size;
    bool calibrate = method_needs_calib(o->method) || o->gate == MOEFY_GATE_CALIBRATED || o->scale_fit;
    if (o->calib_path && !calibrate)
        report(o, "note: --calib is not used by --method %s --gate %s", moefy_method_name(o->method),
               moefy_gate_name(o->gate));
    if (calibrate)
        FORWARD_IF_ERROR(moefy_calib_collect(run->model, o->calib_path,
                                             o->calib_tokens ? o->calib_tokens : DEFAULT_CALIB_TOKENS,
                                             run->E, o->n_threads, o->progress, o->user,
                                             &run->calib));
    if (o->method == MOEFY_METHOD_SHARING_INTER) {
        if (o->shared_size == MOEFY_SHARED_AUTO) FORWARD_IF_ERROR(choose_shared_size(run));
        else run->shared_size = o->shared_size;
        run->expert_size = (run->n_ff - run->shared_size) / run->E;
        report(o, "sharing-inter: a shared expert of %u neurons, %u routed experts of %u",
               run->shared_size, run->E, run->expert_size);
    }
    RETURN_ERROR_IF(run->expert_size == 0, LMOE_ERR_INVALID_ARGUMENT,
                    "moefy: experts of 0 neurons (%u experts for %u neurons)", run->E, run->n_ff);
    run->layers = calloc(hp->n_layer, sizeof *run->layers);
    RETURN_ERROR_IF(!run->layers, LMOE_ERR_OUT_OF_MEMORY, "moefy: out of memory");
    report(o, "%s: %u layers, FFN %u neurons -> %u experts of %u%s, top-%u, method %s, gate %s",
           dense_path, hp->n_layer, run->n_ff, run->E, run->expert_size,
           run->shared_size ? " + a shared expert" : "", run->K, moefy_method_name(o->method),
           moefy_gate_name(o->gate));
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        double t0 = seconds();
        FORWARD_IF_ERROR(plan_layer(run, il));
        const layer_plan *p = &run->layers[il];
        report(o, "layer %u/%u: scale %.4g, gate x %g, neurons in several experts %u, in none %u "
               "(%.2f s)", il + 1, hp->n_layer, (double)p->scale, (double)p->gate_factor,
               p->overlap.n_shared_by_experts, p->overlap.n_unused, seconds() - t0);
    }
    gguf_writer *w = NULL;
    fill_job *jobs = calloc((size_t)hp->n_layer * 6, sizeof *jobs);
    lmoe_status st = jobs ? gguf_writer_create(&w)
                          : lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "moefy: out of memory");
    if (st == LMOE_OK) st = write_keys(run, run->model->file, dense_path, w);
    if (st == LMOE_OK) st = write_tensors(run, run->model->file, w, jobs);
    if (st == LMOE_OK) {
        gguf_writer_set_progress(w, on_written, (void *)o);
        st = gguf_writer_write(w, out_path);
    }
    gguf_writer_free(w);
    free(jobs);
    return st;
}

lmoe_status moefy_convert(const char *dense_path, const char *out_path, const moefy_options *o,
                          moefy_result *result) {
    lmoe_model_params mp;
    lmoe_model_default_params(&mp, sizeof mp);
    lmoe_model *model = NULL;
    FORWARD_IF_ERROR(lmoe_model_load(dense_path, &mp, &model));
    moefy_run run = {.o = o, .model = model};
    lmoe_status st = build(&run, dense_path, out_path);
    if (st == LMOE_OK && result) {
        memset(result, 0, sizeof *result);
        result->n_layer = run.model->hp.n_layer;
        result->n_ff = run.n_ff;
        result->expert_size = run.expert_size;
        result->shared_size = run.shared_size;
        result->calib_tokens = run.calib.n_tokens;
        result->min_scale = result->max_scale = run.layers[0].scale;
        for (uint32_t il = 0; il < result->n_layer; il++) {
            const layer_plan *p = &run.layers[il];
            if (p->overlap.n_shared_by_experts > result->max_in_several)
                result->max_in_several = p->overlap.n_shared_by_experts;
            if (p->overlap.n_unused > result->max_unused) result->max_unused = p->overlap.n_unused;
            if (p->scale < result->min_scale) result->min_scale = p->scale;
            if (p->scale > result->max_scale) result->max_scale = p->scale;
        }
    }
    if (run.layers)
        for (uint32_t il = 0; il < run.model->hp.n_layer; il++) {
            free(run.layers[il].experts);
            free(run.layers[il].shared);
            free(run.layers[il].gate);
        }
    free(run.layers);
    for (uint32_t il = 0; run.importance && il < run.calib.n_layer; il++) free(run.importance[il]);
    free(run.importance);
    moefy_calib_free(&run.calib);
    lmoe_model_free(model);
    return st;
}
