/* moe.c - the mixture-of-experts FFN for a batch: gate -> top-k -> weights -> experts.
 *
 * LLaMA-MoE v1 (pjlab-sys4nlp/llama-moe, TopKBalancedNoisyGate + UniversalCalculator at inference):
 *   logits = W1 x (linear gate) or W2 tanh(W1 x) ("mlp" gate); the k largest logits are selected;
 *   p = softmax over those k logits; expert j's output is multiplied by p_j * score_scale_factor;
 *   each token's outputs are summed in ascending expert id. No noise, no token dropping.
 * Mixtral-style ("llama" files with experts): p = softmax over all logits, the k largest are kept
 *   and renormalised to sum 1; same accumulation.
 * Exact ties in the logits go to the lower expert id (the original's torch.topk order on ties is
 * unspecified; see docs/FORMAT.md).
 *
 * A batch (prefill): all tokens are routed first; then each expert that any token selected runs
 * once, over the tokens routed to it gathered into rows, so its weights are read once per batch.
 * One token (decode): the gate and up rows of all k selected experts are one parallel region,
 * with SwiGLU applied as each block of rows is done, and their down rows a second one that also
 * sums the experts, instead of three regions per expert. Either way each token's outputs are
 * summed in ascending expert id with the same operations, so both paths give the same numbers. */
#include <math.h>
#include <string.h>

#include "threadpool.h"

#include "context.h"

/* Gate logits (n, n_expert) for x (n, n_embd). */
static void gate_logits(lmoe_context *ctx, const layer_weights *l, const float *x, uint32_t n) {
    const llama_hparams *hp = &ctx->model->hp;
    forward_state *s = &ctx->state;
    size_t e = hp->n_expert, dim = hp->n_embd;
    if (hp->gate_kind == MOE_GATE_LINEAR) {
        forward_matmul(ctx, l->gate_inp, x, dim, s->gate_logits, e, n, e, dim);
        return;
    }
    forward_matmul(ctx, l->gate_inp, x, dim, s->gate_hidden, e, n, e, dim);
    for (size_t i = 0; i < (size_t)n * e; i++) s->gate_hidden[i] = tanhf(s->gate_hidden[i]);
    forward_matmul(ctx, l->gate_inp_2, s->gate_hidden, e, s->gate_logits, e, n, e, e);
}

/* The k largest of logits (n) into selected, in descending order; ties to the lower id. A NaN
 * logit is never preferred, so a selection is made even from a broken gate. */
static void top_k(const float *logits, uint32_t n, uint32_t k, int32_t *selected) {
    for (uint32_t slot = 0; slot < k; slot++) {
        int32_t best = -1;
        for (uint32_t e = 0; e < n; e++) {
            bool taken = false;
            for (uint32_t i = 0; i < slot; i++) taken |= selected[i] == (int32_t)e;
            if (taken) continue;
            if (best < 0 || logits[e] > logits[best] || (isnan(logits[best]) && !isnan(logits[e])))
                best = (int32_t)e;
        }
        selected[slot] = best;
    }
}

/* Combine weights (k) of the selected experts from one token's logits (n_expert; overwritten). */
static void routing_weights(lmoe_context *ctx, const layer_weights *l, float *logits,
                            const int32_t *selected, float *weights) {
    const llama_hparams *hp = &ctx->model->hp;
    uint32_t k = hp->n_expert_used;
    if (hp->gating == MOE_GATING_SOFTMAX_RENORM) {
        ctx->kernels->softmax(logits, hp->n_expert); /* logits become probabilities */
        float kept = 0.0f;
        for (uint32_t i = 0; i < k; i++) kept += logits[selected[i]];
        for (uint32_t i = 0; i < k; i++) weights[i] = logits[selected[i]] / kept;
        return;
    }
    for (uint32_t i = 0; i < k; i++) weights[i] = logits[selected[i]];
    ctx->kernels->softmax(weights, k);
    for (uint32_t i = 0; i < k; i++) weights[i] *= l->expert_scale;
}

/* Routes every token of the batch, reporting each decision to the token's context (its routing
 * callback and its pending expert counts). */
static void route(lmoe_context *ctx, uint32_t il, uint32_t pos0, const float *x, uint32_t n) {
    const llama_hparams *hp = &ctx->model->hp;
    const layer_weights *l = &ctx->model->layers[il];
    forward_state *s = &ctx->state;
    uint32_t k = hp->n_expert_used;
    gate_logits(ctx, l, x, n);
    for (uint32_t t = 0; t < n; t++) {
        float *logits = s->gate_logits + (size_t)t * hp->n_expert;
        int32_t *selected = s->selected + (size_t)t * k;
        float *weights = s->selected_weights + (size_t)t * k;
        top_k(logits, hp->n_expert, k, selected);
        routing_weights(ctx, l, logits, selected, weights);
        lmoe_context *owner = forward_row_ctx(ctx, t);
        uint64_t *counts = owner->expert_counts_pending + (size_t)il * hp->n_expert;
        for (uint32_t i = 0; i < k; i++) counts[selected[i]]++;
        if (owner->routing_fn)
            owner->routing_fn(owner->routing_user, (int32_t)il, forward_row_pos(ctx, pos0, t),
                              selected, weights, (int32_t)k);
    }
}

/* Below this many gathered tokens an expert's row-wise steps (gathering its input rows, SwiGLU,
 * the scatter-add) run on the calling thread: a region costs more. */
#define ROWS_PARALLEL_MIN 16u

typedef struct rows_job {
    lmoe_context *ctx;
    const float *x;          /* gather: the batch's rows (n, n_embd) */
    float *out;              /* scatter: the batch's output rows (n, n_embd) */
} rows_job;

/* Runs fn over m gathered rows, on the pool when there are enough of them. */
static void for_rows(lmoe_context *ctx, uint32_t m, lmoe_parallel_fn fn, rows_job *job) {
    if (m >= ROWS_PARALLEL_MIN)
        threadpool_parallel_for(ctx->pool, m, 0, fn, job);
    else
        fn(job, 0, m, 0);
}

/* Gathered rows [begin, end): their tokens' rows of x copied into expert_in. */
static void gather_rows(void *arg, size_t begin, size_t end, int thread_id) {
    (void)thread_id;
    const rows_job *job = arg;
    forward_state *s = &job->ctx->state;
    size_t dim = job->ctx->model->hp.n_embd;
    for (size_t i = begin; i < end; i++)
        memcpy(s->expert_in + i * dim, job->x + (size_t)s->group[i] * dim, dim * sizeof(float));
}

/* Lists the tokens that selected expert e (group, group_weights) and gathers their rows of x
 * into expert_in; returns how many. */
static uint32_t gather(lmoe_context *ctx, uint32_t e, const float *x, uint32_t n) {
    const llama_hparams *hp = &ctx->model->hp;
    forward_state *s = &ctx->state;
    uint32_t k = hp->n_expert_used, m = 0;
    for (uint32_t t = 0; t < n; t++) {
        for (uint32_t i = 0; i < k; i++) {
            if (s->selected[t * k + i] != (int32_t)e) continue;
            s->group[m] = t;
            s->group_weights[m] = s->selected_weights[t * k + i];
            m++;
        }
    }
    rows_job job = {ctx, x, NULL};
    for_rows(ctx, m, gather_rows, &job);
    return m;
}

/* Gathered rows [begin, end): hb = silu(hb) * hb2. */
static void swiglu_rows(void *arg, size_t begin, size_t end, int thread_id) {
    (void)thread_id;
    const rows_job *job = arg;
    forward_state *s = &job->ctx->state;
    size_t n_ff = job->ctx->model->hp.n_ff;
    for (size_t i = begin; i < end; i++)
        job->ctx->kernels->swiglu(s->hb + i * n_ff, s->hb + i * n_ff, s->hb2 + i * n_ff, n_ff);
}

/* expert_out (m, n_embd) = down_e(silu(gate_e x) * (up_e x)) for the m gathered tokens. */
static void run_expert(lmoe_context *ctx, const layer_weights *l, uint32_t e, uint32_t m) {
    const llama_hparams *hp = &ctx->model->hp;
    forward_state *s = &ctx->state;
    size_t n_ff = hp->n_ff, dim = hp->n_embd;
    forward_matmul(ctx, weight_rows(l->gate_exps, e * n_ff, dim), s->expert_in, dim, s->hb, n_ff,
                   m, n_ff, dim);
    forward_matmul_same_input(ctx, weight_rows(l->up_exps, e * n_ff, dim), s->expert_in, dim,
                              s->hb2, n_ff,
                   m, n_ff, dim);
    rows_job job = {ctx, NULL, NULL};
    for_rows(ctx, m, swiglu_rows, &job);
    forward_matmul(ctx, weight_rows(l->down_exps, e * dim, n_ff), s->hb, n_ff, s->expert_out, dim,
                   m, dim, n_ff);
}

/* ---- one token: the selected experts in two parallel regions ---- */

/* Below this many multiply-adds per region the caller does the work alone. */
#define DECODE_PARALLEL_MIN_MACS 32768u
/* Most experts per token the decode path takes (forward_state's x_q8 has rows for them); more
 * go through the batch path. */
#define DECODE_MAX_SLOTS 32u

typedef struct decode_job {
    lmoe_context *ctx;
    const layer_weights *l;
    int32_t experts[DECODE_MAX_SLOTS];   /* selected experts in ascending id */
    float weights[DECODE_MAX_SLOTS];     /* their combine weights */
    uint32_t k;
    const float *x;                      /* (n_embd) the normed input */
    float *out;                          /* (n_embd) */
} decode_job;

/* Items are (slot, row) pairs of the k experts' n_ff rows: hb[slot] = silu(gate x) * (up x). */
static void decode_gate_up(void *arg, size_t begin, size_t end, int thread_id) {
    (void)thread_id;
    const decode_job *job = arg;
    lmoe_context *ctx = job->ctx;
    forward_state *s = &ctx->state;
    size_t n_ff = ctx->model->hp.n_ff, dim = ctx->model->hp.n_embd;
    while (begin < end) {
        size_t slot = begin / n_ff, r0 = begin % n_ff;
        size_t r1 = (slot + 1) * n_ff < end ? n_ff : end - slot * n_ff;
        size_t e = (size_t)job->experts[slot];
        float *h = s->hb + slot * n_ff, *h2 = s->hb2 + slot * n_ff;
        forward_rows(ctx->kernels, weight_rows(job->l->gate_exps, e * n_ff, dim), job->x, s->x_q8,
                     h, dim, r0, r1);
        forward_rows(ctx->kernels, weight_rows(job->l->up_exps, e * n_ff, dim), job->x, s->x_q8,
                     h2, dim, r0, r1);
        ctx->kernels->swiglu(h + r0, h + r0, h2 + r0, r1 - r0);
        begin = slot * n_ff + r1;
    }
}

/* Items are output dimensions: out[d] = sum over slots (ascending expert id) of w * down_e[d] . h. */
static void decode_down(void *arg, size_t begin, size_t end, int thread_id) {
    (void)thread_id;
    const decode_job *job = arg;
    lmoe_context *ctx = job->ctx;
    forward_state *s = &ctx->state;
    size_t n_ff = ctx->model->hp.n_ff, dim = ctx->model->hp.n_embd;
    memset(job->out + begin, 0, (end - begin) * sizeof(float));
    for (uint32_t slot = 0; slot < job->k; slot++) {
        size_t e = (size_t)job->experts[slot];
        const block_q8_0 *hq = s->x_q8 + slot * (n_ff / LMOE_QK);
        forward_rows(ctx->kernels, weight_rows(job->l->down_exps, e * dim, n_ff), s->hb + slot * n_ff,
                     hq, s->expert_out, n_ff, begin, end);
        ctx->kernels->axpy(job->out + begin, job->weights[slot], s->expert_out + begin, end - begin);
    }
}

/* Items are rows of weight matrices whose widths (n_ff, n_embd) are whole groups of an _R16
 * matrix: chunks of whole groups keep every range the kernels get aligned to one. */
static void run_region(lmoe_context *ctx, size_t n_items, size_t macs, lmoe_parallel_fn fn,
                       void *job) {
    if (macs < DECODE_PARALLEL_MIN_MACS) {
        fn(job, 0, n_items, 0);
        return;
    }
    size_t n_chunks = (size_t)threadpool_n_threads(ctx->pool) * 4;
    size_t chunk = (n_items + n_chunks - 1) / n_chunks;
    chunk = (chunk + LMOE_R16_ROWS - 1) / LMOE_R16_ROWS * LMOE_R16_ROWS;
    threadpool_parallel_for(ctx->pool, n_items, chunk, fn, job);
}

static void decode_experts(lmoe_context *ctx, uint32_t il, const float *x, float *out) {
    const llama_hparams *hp = &ctx->model->hp;
    forward_state *s = &ctx->state;
    size_t n_ff = hp->n_ff, dim = hp->n_embd;
    decode_job job = {.ctx = ctx, .l = &ctx->model->layers[il], .x = x, .out = out};
    for (uint32_t e = 0; e < hp->n_expert; e++)
        for (uint32_t i = 0; i < hp->n_expert_used; i++)
            if (s->selected[i] == (int32_t)e) {
                job.experts[job.k] = (int32_t)e;
                job.weights[job.k++] = s->selected_weights[i];
            }
    const layer_weights *l = job.l;
    s->x_q8_of = NULL; /* x_q8 is overwritten here, not through forward_matmul */
    if (weight_is_quantised(l->gate_exps) || weight_is_quantised(l->up_exps))
        ctx->kernels->quantize_q8_0(x, s->x_q8, dim);
    run_region(ctx, job.k * n_ff, job.k * n_ff * dim * 2, decode_gate_up, &job);
    if (weight_is_quantised(l->down_exps)) /* x is done with: its slot holds the h's now */
        for (uint32_t slot = 0; slot < job.k; slot++)
            ctx->kernels->quantize_q8_0(s->hb + slot * n_ff, s->x_q8 + slot * (n_ff / LMOE_QK), n_ff);
    run_region(ctx, dim, job.k * n_ff * dim, decode_down, &job);
}

/* Gathered rows [begin, end) of expert_out, weighted, added to their tokens' rows of out (a
 * token is in an expert's group at most once, so the rows are distinct). */
static void scatter_rows(void *arg, size_t begin, size_t end, int thread_id) {
    (void)thread_id;
    const rows_job *job = arg;
    forward_state *s = &job->ctx->state;
    size_t dim = job->ctx->model->hp.n_embd;
    for (size_t i = begin; i < end; i++)
        job->ctx->kernels->axpy(job->out + (size_t)s->group[i] * dim, s->group_weights[i],
                                s->expert_out + i * dim, dim);
}

void moe_ffn(lmoe_context *ctx, uint32_t il, uint32_t pos0, const float *x, float *out,
             uint32_t n) {
    const llama_hparams *hp = &ctx->model->hp;
    const layer_weights *l = &ctx->model->layers[il];
    size_t dim = hp->n_embd;
    route(ctx, il, pos0, x, n);
    if (n == 1 && hp->n_expert_used <= DECODE_MAX_SLOTS) {
        decode_experts(ctx, il, x, out);
        return;
    }
    memset(out, 0, (size_t)n * dim * sizeof(float));
    for (uint32_t e = 0; e < hp->n_expert; e++) {
        uint32_t m = gather(ctx, e, x, n);
        if (m == 0) continue;
        run_expert(ctx, l, e, m);
        /* scatter-add: each token's out gains weight * this expert's output */
        rows_job job = {ctx, NULL, out};
        for_rows(ctx, m, scatter_rows, &job);
    }
}
