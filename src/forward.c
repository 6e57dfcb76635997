/* forward.c - the LLaMA transformer for one token: RMSNorm, RoPE, grouped-query attention over the
 * KV cache, SwiGLU FFN, classifier. Reads top to bottom like llama2.c's run.c forward(), with the
 * same order of floating-point operations, so its logits match run.c's to rounding. The
 * matrix-vector products and the attention heads run on the context's thread pool. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "error.h"
#include "quant.h"

/* Below this many multiply-adds a product runs on the calling thread: waking workers costs more. */
#define PARALLEL_MIN_MACS 32768u

/* ------------------------------------------------------------------------------------------------
 * state
 * ---------------------------------------------------------------------------------------------- */

lmoe_status forward_state_init(forward_state *s, const llama_hparams *hp, uint32_t n_ctx) {
    memset(s, 0, sizeof *s);
    size_t kv_elems = (size_t)hp->n_layer * n_ctx * hp->n_embd_kv;
    RETURN_ERROR_IF(kv_elems / n_ctx / hp->n_layer != hp->n_embd_kv ||
                        kv_elems > SIZE_MAX / sizeof(float) / 2,
                    LMOE_ERR_INVALID_ARGUMENT, "n_ctx %u is too large for this model", n_ctx);
    s->x = calloc(hp->n_embd, sizeof(float));
    s->xb = calloc(hp->n_embd, sizeof(float));
    s->xb2 = calloc(hp->n_embd, sizeof(float));
    s->q = calloc(hp->n_embd, sizeof(float));
    s->hb = calloc(hp->n_ff, sizeof(float));
    s->hb2 = calloc(hp->n_ff, sizeof(float));
    s->att = calloc((size_t)hp->n_head * n_ctx, sizeof(float));
    s->logits = calloc(hp->n_vocab, sizeof(float));
    s->key_cache = calloc(kv_elems, sizeof(float));
    s->value_cache = calloc(kv_elems, sizeof(float));
    bool moe_ok = true;
    if (hp->n_expert) {
        s->gate_logits = calloc(hp->n_expert, sizeof(float));
        s->gate_hidden = calloc(hp->n_expert, sizeof(float));
        s->expert_out = calloc(hp->n_embd, sizeof(float));
        s->selected = calloc(hp->n_expert_used, sizeof(int32_t));
        s->selected_weights = calloc(hp->n_expert_used, sizeof(float));
        moe_ok = s->gate_logits && s->gate_hidden && s->expert_out && s->selected &&
                 s->selected_weights;
    }
    if (!moe_ok || !s->x || !s->xb || !s->xb2 || !s->q || !s->hb || !s->hb2 || !s->att || !s->logits ||
        !s->key_cache || !s->value_cache) {
        forward_state_free(s);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY,
                          "out of memory for a context of %u tokens (KV cache %zu MiB)", n_ctx,
                          kv_elems * 2 * sizeof(float) >> 20);
    }
    return LMOE_OK;
}

void forward_state_free(forward_state *s) {
    free(s->x);
    free(s->xb);
    free(s->xb2);
    free(s->q);
    free(s->hb);
    free(s->hb2);
    free(s->att);
    free(s->logits);
    free(s->key_cache);
    free(s->value_cache);
    free(s->gate_logits);
    free(s->gate_hidden);
    free(s->expert_out);
    free(s->selected);
    free(s->selected_weights);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------------------------------
 * parallel pieces
 * ---------------------------------------------------------------------------------------------- */

typedef struct matvec_job {
    const lmoe_kernels *k;
    weight_ref w;
    const float *x;
    float *y;
    size_t n_cols;
} matvec_job;

static void matvec_rows(void *arg, size_t begin, size_t end, int thread_id) {
    (void)thread_id;
    const matvec_job *job = arg;
    switch (job->w.type) {
    case GGML_TYPE_F16:
        job->k->matvec_f16(job->w.data, job->x, job->y, job->n_cols, begin, end);
        break;
    case GGML_TYPE_BF16:
        job->k->matvec_bf16(job->w.data, job->x, job->y, job->n_cols, begin, end);
        break;
    default: /* model.c binds only f32, f16 and bf16 matrices */
        job->k->matvec_f32(job->w.data, job->x, job->y, job->n_cols, begin, end);
        break;
    }
}

weight_ref weight_rows(weight_ref w, size_t first_row, size_t n_cols) {
    size_t elem = ggml_type_block_bytes(w.type);
    w.data = (const char *)w.data + first_row * n_cols * elem;
    return w;
}

void forward_matvec(lmoe_context *ctx, weight_ref w, const float *x, float *y, size_t n_rows,
                    size_t n_cols) {
    matvec_job job = {ctx->kernels, w, x, y, n_cols};
    if (n_rows * n_cols < PARALLEL_MIN_MACS) {
        matvec_rows(&job, 0, n_rows, 0);
        return;
    }
    size_t n_chunks = (size_t)threadpool_n_threads(ctx->pool) * 4;
    size_t chunk = (n_rows + n_chunks - 1) / n_chunks;
    threadpool_parallel_for(ctx->pool, n_rows, chunk < 4 ? 4 : chunk, matvec_rows, &job);
}

typedef struct attention_job {
    lmoe_context *ctx;
    uint32_t layer;
    uint32_t pos;
} attention_job;

/* Causal attention of the current token for heads [begin, end): scores against every cached key
 * up to pos, softmax, weighted sum of the cached values into xb. */
static void attention_heads(void *arg, size_t begin, size_t end, int thread_id) {
    (void)thread_id;
    const attention_job *job = arg;
    lmoe_context *ctx = job->ctx;
    const llama_hparams *hp = &ctx->model->hp;
    const lmoe_kernels *k = ctx->kernels;
    forward_state *s = &ctx->state;
    uint32_t hd = hp->head_dim, kv_dim = hp->n_embd_kv;
    uint32_t heads_per_kv = hp->n_head / hp->n_head_kv;
    size_t layer_offset = (size_t)job->layer * ctx->n_ctx * kv_dim;
    float scale = sqrtf((float)hd);
    for (size_t h = begin; h < end; h++) {
        const float *q = s->q + h * hd;
        float *att = s->att + h * ctx->n_ctx;
        size_t kv_head_offset = (h / heads_per_kv) * hd;
        for (uint32_t t = 0; t <= job->pos; t++) {
            const float *key = s->key_cache + layer_offset + (size_t)t * kv_dim + kv_head_offset;
            att[t] = k->dot_f32(q, key, hd) / scale;
        }
        k->softmax(att, job->pos + 1);
        float *out = s->xb + h * hd;
        memset(out, 0, hd * sizeof(float));
        for (uint32_t t = 0; t <= job->pos; t++) {
            const float *v = s->value_cache + layer_offset + (size_t)t * kv_dim + kv_head_offset;
            k->axpy(out, att[t], v, hd);
        }
    }
}

/* Row `row` of the embedding matrix (n_embd wide) as f32. */
static void embedding_row(weight_ref table, size_t row, size_t n_embd, float *out) {
    weight_ref r = weight_rows(table, row, n_embd);
    if (r.type == GGML_TYPE_F16)
        lmoe_f16_row_to_f32(r.data, out, n_embd);
    else if (r.type == GGML_TYPE_BF16)
        lmoe_bf16_row_to_f32(r.data, out, n_embd);
    else
        memcpy(out, r.data, n_embd * sizeof(float));
}

/* Rotates adjacent pairs (2i, 2i+1) of each head by pos * theta^(-2i/head_dim): the GGUF llama
 * (and original Meta / llama2.c) layout. */
static void rope(float *vec, uint32_t n, uint32_t head_dim, uint32_t pos, float theta) {
    for (uint32_t i = 0; i < n; i += 2) {
        uint32_t dim_in_head = i % head_dim;
        float freq = 1.0f / powf(theta, (float)dim_in_head / (float)head_dim);
        float angle = (float)pos * freq;
        float c = cosf(angle), sn = sinf(angle);
        float v0 = vec[i], v1 = vec[i + 1];
        vec[i] = v0 * c - v1 * sn;
        vec[i + 1] = v0 * sn + v1 * c;
    }
}

/* ------------------------------------------------------------------------------------------------
 * the forward pass
 * ---------------------------------------------------------------------------------------------- */

lmoe_status forward_token(lmoe_context *ctx, lmoe_token token, uint32_t pos, bool want_logits) {
    const lmoe_model *m = ctx->model;
    const llama_hparams *hp = &m->hp;
    const lmoe_kernels *k = ctx->kernels;
    forward_state *s = &ctx->state;
    uint32_t dim = hp->n_embd, kv_dim = hp->n_embd_kv, n_ff = hp->n_ff;

    /* token embedding */
    embedding_row(m->tok_embd, (size_t)token, dim, s->x);

    for (uint32_t il = 0; il < hp->n_layer; il++) {
        if (ctx->abort_fn && ctx->abort_fn(ctx->abort_user))
            return lmoe_error(LMOE_ERR_ABORTED, "evaluation aborted by the abort callback");
        const layer_weights *l = &m->layers[il];
        size_t cache_row = ((size_t)il * ctx->n_ctx + pos) * kv_dim;
        float *key = s->key_cache + cache_row;
        float *value = s->value_cache + cache_row;

        /* attention: x -> RMSNorm -> q, k, v; RoPE on q and k; k, v into the cache */
        k->rmsnorm(s->xb, s->x, l->attn_norm, dim, hp->rms_eps);
        forward_matvec(ctx, l->wq, s->xb, s->q, dim, dim);
        forward_matvec(ctx, l->wk, s->xb, key, kv_dim, dim);
        forward_matvec(ctx, l->wv, s->xb, value, kv_dim, dim);
        rope(s->q, dim, hp->head_dim, pos, hp->rope_theta);
        rope(key, kv_dim, hp->head_dim, pos, hp->rope_theta);

        /* per-head causal attention over positions 0..pos into xb */
        attention_job job = {ctx, il, pos};
        if ((size_t)(pos + 1) * dim < PARALLEL_MIN_MACS)
            attention_heads(&job, 0, hp->n_head, 0);
        else
            threadpool_parallel_for(ctx->pool, hp->n_head, 1, attention_heads, &job);

        /* output projection and residual */
        forward_matvec(ctx, l->wo, s->xb, s->xb2, dim, dim);
        k->axpy(s->x, 1.0f, s->xb2, dim);

        /* FFN on the normed residual, then residual: dense w2(silu(w1 x) * (w3 x)), or the
         * weighted sum of the experts the gate selects (moe.c) */
        k->rmsnorm(s->xb, s->x, l->ffn_norm, dim, hp->rms_eps);
        if (hp->n_expert) {
            moe_ffn(ctx, il, pos, s->xb, s->xb2);
            k->axpy(s->x, 1.0f, s->xb2, dim);
            continue;
        }
        forward_matvec(ctx, l->ffn_gate, s->xb, s->hb, n_ff, dim);
        forward_matvec(ctx, l->ffn_up, s->xb, s->hb2, n_ff, dim);
        k->swiglu(s->hb, s->hb, s->hb2, n_ff);
        forward_matvec(ctx, l->ffn_down, s->hb, s->xb, dim, n_ff);
        k->axpy(s->x, 1.0f, s->xb, dim);
    }

    if (!want_logits) return LMOE_OK;
    k->rmsnorm(s->x, s->x, m->output_norm, dim, hp->rms_eps);
    forward_matvec(ctx, m->output, s->x, s->logits, hp->n_vocab, dim);
    return LMOE_OK;
}
