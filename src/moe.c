/* moe.c - the mixture-of-experts FFN for one token: gate -> top-k -> weights -> experts.
 *
 * LLaMA-MoE v1 (pjlab-sys4nlp/llama-moe, TopKBalancedNoisyGate + UniversalCalculator at inference):
 *   logits = W1 x (linear gate) or W2 tanh(W1 x) ("mlp" gate); the k largest logits are selected;
 *   p = softmax over those k logits; expert j's output is multiplied by p_j * score_scale_factor;
 *   outputs are summed in ascending expert id. No noise, no token dropping.
 * Mixtral-style ("llama" files with experts): p = softmax over all logits, the k largest are kept
 *   and renormalised to sum 1; same accumulation.
 * Exact ties in the logits go to the lower expert id (the original's torch.topk order on ties is
 * unspecified; see docs/FORMAT.md). */
#include <math.h>
#include <string.h>

#include "context.h"

/* logits (n_expert) of the gate for x (n_embd). */
static void gate_logits(lmoe_context *ctx, const layer_weights *l, const float *x) {
    const llama_hparams *hp = &ctx->model->hp;
    forward_state *s = &ctx->state;
    if (hp->gate_kind == MOE_GATE_LINEAR) {
        forward_matvec(ctx, l->gate_inp, x, s->gate_logits, hp->n_expert, hp->n_embd);
        return;
    }
    forward_matvec(ctx, l->gate_inp, x, s->gate_hidden, hp->n_expert, hp->n_embd);
    for (uint32_t e = 0; e < hp->n_expert; e++) s->gate_hidden[e] = tanhf(s->gate_hidden[e]);
    forward_matvec(ctx, l->gate_inp_2, s->gate_hidden, s->gate_logits, hp->n_expert, hp->n_expert);
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

/* Combine weights of the selected experts (see the banner for the two rules). */
static void routing_weights(lmoe_context *ctx, const layer_weights *l) {
    const llama_hparams *hp = &ctx->model->hp;
    forward_state *s = &ctx->state;
    uint32_t k = hp->n_expert_used;
    if (hp->gating == MOE_GATING_SOFTMAX_RENORM) {
        ctx->kernels->softmax(s->gate_logits, hp->n_expert); /* logits become probabilities */
        float kept = 0.0f;
        for (uint32_t i = 0; i < k; i++) kept += s->gate_logits[s->selected[i]];
        for (uint32_t i = 0; i < k; i++)
            s->selected_weights[i] = s->gate_logits[s->selected[i]] / kept;
        return;
    }
    for (uint32_t i = 0; i < k; i++) s->selected_weights[i] = s->gate_logits[s->selected[i]];
    ctx->kernels->softmax(s->selected_weights, k);
    for (uint32_t i = 0; i < k; i++) s->selected_weights[i] *= l->expert_scale;
}

/* out += weight * expert_e(x), expert_e(x) = down_e(silu(gate_e x) * (up_e x)). */
static void run_expert(lmoe_context *ctx, const layer_weights *l, uint32_t e, float weight,
                       const float *x, float *out) {
    const llama_hparams *hp = &ctx->model->hp;
    forward_state *s = &ctx->state;
    size_t n_ff = hp->n_ff, n_embd = hp->n_embd;
    forward_matvec(ctx, weight_rows(l->gate_exps, e * n_ff, n_embd), x, s->hb, n_ff, n_embd);
    forward_matvec(ctx, weight_rows(l->up_exps, e * n_ff, n_embd), x, s->hb2, n_ff, n_embd);
    ctx->kernels->swiglu(s->hb, s->hb, s->hb2, n_ff);
    forward_matvec(ctx, weight_rows(l->down_exps, e * n_embd, n_ff), s->hb, s->expert_out, n_embd,
                   n_ff);
    ctx->kernels->axpy(out, weight, s->expert_out, n_embd);
}

void moe_ffn(lmoe_context *ctx, uint32_t il, uint32_t pos, const float *x, float *out) {
    const llama_hparams *hp = &ctx->model->hp;
    const layer_weights *l = &ctx->model->layers[il];
    forward_state *s = &ctx->state;
    uint32_t k = hp->n_expert_used;

    gate_logits(ctx, l, x);
    top_k(s->gate_logits, hp->n_expert, k, s->selected);
    routing_weights(ctx, l);
    if (ctx->routing_fn)
        ctx->routing_fn(ctx->routing_user, (int32_t)il, pos, s->selected, s->selected_weights,
                        (int32_t)k);

    /* accumulate in ascending expert id, as the original's index_add does per token */
    memset(out, 0, hp->n_embd * sizeof(float));
    uint64_t *counts = ctx->expert_counts_pending + (size_t)il * hp->n_expert;
    for (uint32_t e = 0; e < hp->n_expert; e++) {
        for (uint32_t i = 0; i < k; i++) {
            if (s->selected[i] != (int32_t)e) continue;
            run_expert(ctx, l, e, s->selected_weights[i], x, out);
            counts[e]++;
        }
    }
}
