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
 * All tokens of the batch are routed first; then each expert that any token selected runs once,
 * over the tokens routed to it gathered into rows, so its weights are read once per batch. Going
 * through the experts in ascending id keeps each token's accumulation order that of the
 * original, so a batch gives the same numbers as one token at a time. */
#include <math.h>
#include <string.h>

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

/* Routes every token of the batch, reporting each decision. */
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
        if (ctx->routing_fn)
            ctx->routing_fn(ctx->routing_user, (int32_t)il, pos0 + t, selected, weights,
                            (int32_t)k);
    }
}

/* Gathers the tokens that selected expert e into expert_in; returns how many. */
static uint32_t gather(lmoe_context *ctx, uint32_t e, const float *x, uint32_t n) {
    const llama_hparams *hp = &ctx->model->hp;
    forward_state *s = &ctx->state;
    uint32_t k = hp->n_expert_used, m = 0;
    for (uint32_t t = 0; t < n; t++) {
        for (uint32_t i = 0; i < k; i++) {
            if (s->selected[t * k + i] != (int32_t)e) continue;
            memcpy(s->expert_in + (size_t)m * hp->n_embd, x + (size_t)t * hp->n_embd,
                   hp->n_embd * sizeof(float));
            s->group[m] = t;
            s->group_weights[m] = s->selected_weights[t * k + i];
            m++;
        }
    }
    return m;
}

/* expert_out (m, n_embd) = down_e(silu(gate_e x) * (up_e x)) for the m gathered tokens. */
static void run_expert(lmoe_context *ctx, const layer_weights *l, uint32_t e, uint32_t m) {
    const llama_hparams *hp = &ctx->model->hp;
    forward_state *s = &ctx->state;
    size_t n_ff = hp->n_ff, dim = hp->n_embd;
    forward_matmul(ctx, weight_rows(l->gate_exps, e * n_ff, dim), s->expert_in, dim, s->hb, n_ff,
                   m, n_ff, dim);
    forward_matmul(ctx, weight_rows(l->up_exps, e * n_ff, dim), s->expert_in, dim, s->hb2, n_ff,
                   m, n_ff, dim);
    for (uint32_t i = 0; i < m; i++)
        ctx->kernels->swiglu(s->hb + i * n_ff, s->hb + i * n_ff, s->hb2 + i * n_ff, n_ff);
    forward_matmul(ctx, weight_rows(l->down_exps, e * dim, n_ff), s->hb, n_ff, s->expert_out, dim,
                   m, dim, n_ff);
}

void moe_ffn(lmoe_context *ctx, uint32_t il, uint32_t pos0, const float *x, float *out,
             uint32_t n) {
    const llama_hparams *hp = &ctx->model->hp;
    const layer_weights *l = &ctx->model->layers[il];
    forward_state *s = &ctx->state;
    size_t dim = hp->n_embd;
    route(ctx, il, pos0, x, n);
    memset(out, 0, (size_t)n * dim * sizeof(float));
    uint64_t *counts = ctx->expert_counts_pending + (size_t)il * hp->n_expert;
    for (uint32_t e = 0; e < hp->n_expert; e++) {
        uint32_t m = gather(ctx, e, x, n);
        if (m == 0) continue;
        run_expert(ctx, l, e, m);
        /* scatter-add: each token's out gains weight * this expert's output */
        for (uint32_t i = 0; i < m; i++)
            ctx->kernels->axpy(out + (size_t)s->group[i] * dim, s->group_weights[i],
                               s->expert_out + (size_t)i * dim, dim);
        counts[e] += m;
    }
}
