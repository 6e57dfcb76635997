/* forward.c - the LLaMA transformer for a batch of tokens: RMSNorm, RoPE, grouped-query attention
 * over the KV cache, SwiGLU FFN (dense here, experts in moe.c), classifier.
 *
 * Layer by layer over the whole batch, so every weight row is read once per batch. Each token's
 * arithmetic is the same, in the same order, as llama2.c run.c's forward() for one token, so
 * logits match run.c to rounding whatever the batch size. The products run on the context's
 * thread pool; attention heads too. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "error.h"
#include "mem.h"
#include "quant.h"

/* Below this many multiply-adds a product runs on the calling thread: waking workers costs more. */
#define PARALLEL_MIN_MACS 32768u
/* Rows of a weight matrix applied to all tokens of a batch before the next rows are read: whole
 * groups of the _R16 types, whose kernels take only group-aligned ranges. */
#define ROWS_PER_BLOCK 16u
_Static_assert(ROWS_PER_BLOCK % LMOE_R16_ROWS == 0, "row blocks must be whole _R16 groups");
/* The batched kernels unpack 32 rows at a time: chunks of whole panels waste no unpacking. */
#define GEMM_ROWS_PER_PANEL 32u

/* ------------------------------------------------------------------------------------------------
 * state
 * ---------------------------------------------------------------------------------------------- */

static float *alloc_rows(size_t rows, size_t width, bool *ok) {
    float *p = mem_calloc(rows * width, sizeof(float));
    *ok = *ok && p;
    return p;
}

lmoe_status forward_state_init(forward_state *s, const llama_hparams *hp, const lmoe_kernels *k,
                               uint32_t n_ctx, uint32_t n_batch, int n_threads) {
    memset(s, 0, sizeof *s);
    size_t kv_elems = (size_t)hp->n_layer * n_ctx * hp->n_embd_kv;
    RETURN_ERROR_IF(kv_elems / n_ctx / hp->n_layer != hp->n_embd_kv ||
                        kv_elems > SIZE_MAX / sizeof(float) / 2,
                    LMOE_ERR_INVALID_ARGUMENT, "n_ctx %u is too large for this model", n_ctx);
    bool ok = true;
    size_t B = n_batch;
    s->n_batch = n_batch;
    s->x = alloc_rows(B, hp->n_embd, &ok);
    s->xb = alloc_rows(B, hp->n_embd, &ok);
    s->xb2 = alloc_rows(B, hp->n_embd, &ok);
    s->q = alloc_rows(B, hp->n_embd, &ok);
    size_t ff = hp->n_ff > hp->n_ff_shexp ? hp->n_ff : hp->n_ff_shexp; /* widest FFN */
    s->hb = alloc_rows(B, ff, &ok);
    s->hb2 = alloc_rows(B, ff, &ok);
    s->att_stride = (size_t)LMOE_ATTENTION_BLOCK * n_ctx;
    s->att = alloc_rows((size_t)n_threads, s->att_stride, &ok);
    s->logits = alloc_rows(1, hp->n_vocab, &ok);
    s->rope = alloc_rows(B, hp->head_dim, &ok);
    /* quantised activations: a batch's rows, or the decode path's per-expert hidden vectors */
    size_t max_cols = hp->n_embd > ff ? hp->n_embd : ff;
    size_t q8_blocks = (B > 32 ? B : 32) * (max_cols / LMOE_QK + 1);
    s->x_q8 = mem_calloc(q8_blocks, sizeof(block_q8_0));
    ok = ok && s->x_q8;
    if (k->gemm_pack_token) { /* the batched kernels' copy of a batch's activations, and scratch */
        size_t packed = (k->gemm_x_bytes(B, max_cols / LMOE_QK) + 63) / 64 * 64;
        s->x_packed = mem_alloc_aligned(64, packed ? packed : 64);
        s->gemm_scratch_stride = (LMOE_GEMM_SCRATCH_BYTES(max_cols) + 63) / 64 * 64;
        s->gemm_scratch = mem_alloc_aligned(64, (size_t)n_threads * s->gemm_scratch_stride);
        ok = ok && s->x_packed && s->gemm_scratch;
    }
    s->key_cache = mem_calloc(kv_elems, sizeof(float));
    s->value_cache = mem_calloc(kv_elems, sizeof(float));
    ok = ok && s->key_cache && s->value_cache;
    if (hp->n_expert) {
        s->gate_logits = alloc_rows(B, hp->n_expert, &ok);
        s->gate_hidden = alloc_rows(B, hp->n_expert, &ok);
        s->selected = mem_calloc(B * hp->n_expert_used, sizeof(int32_t));
        s->selected_weights = alloc_rows(B, hp->n_expert_used, &ok);
        s->expert_in = alloc_rows(B, hp->n_embd, &ok);
        s->expert_out = alloc_rows(B, hp->n_embd, &ok);
        s->group = mem_calloc(B, sizeof(uint32_t));
        s->group_weights = alloc_rows(B, 1, &ok);
        ok = ok && s->selected && s->group;
    }
    if (!ok) {
        forward_state_free(s);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY,
                          "out of memory for a context of %u tokens (KV cache %zu MiB) and "
                          "batches of %u", n_ctx, kv_elems * 2 * sizeof(float) >> 20, n_batch);
    }
    return LMOE_OK;
}

void forward_state_free(forward_state *s) {
    mem_free(s->x);
    mem_free(s->xb);
    mem_free(s->xb2);
    mem_free(s->q);
    mem_free(s->hb);
    mem_free(s->hb2);
    mem_free(s->att);
    mem_free(s->logits);
    mem_free(s->rope);
    mem_free(s->x_q8);
    mem_free_aligned(s->x_packed);
    mem_free_aligned(s->gemm_scratch);
    mem_free(s->key_cache);
    mem_free(s->value_cache);
    mem_free(s->gate_logits);
    mem_free(s->gate_hidden);
    mem_free(s->selected);
    mem_free(s->selected_weights);
    mem_free(s->expert_in);
    mem_free(s->expert_out);
    mem_free(s->group);
    mem_free(s->group_weights);
    memset(s, 0, sizeof *s);
}

/* ------------------------------------------------------------------------------------------------
 * matrix products over the batch
 * ---------------------------------------------------------------------------------------------- */

typedef struct matmul_job {
    const lmoe_kernels *k;
    weight_ref w;
    const float *x;          /* (n_tokens, n_cols; stride ldx) activations */
    const block_q8_0 *x_q8;  /* (n_tokens, n_cols / 32) the same, quantised, for Q8_0/Q4_0 weights */
    size_t ldx;
    float *y;
    size_t ldy;
    size_t n_tokens;
    size_t n_cols;
    lmoe_q8_batch batch;     /* x_q8 packed for the batched kernels */
    char *scratch;           /* per thread, scratch_stride bytes apart */
    size_t scratch_stride;
} matmul_job;

void forward_rows(const lmoe_kernels *k, weight_ref w, const float *x, const block_q8_0 *x_q8,
                  float *y, size_t n_cols, size_t r0, size_t r1) {
    switch (w.type) {
    case GGML_TYPE_Q8_0: k->matvec_q8_0(w.data, x_q8, y, n_cols, r0, r1); break;
    case GGML_TYPE_Q4_0: k->matvec_q4_0(w.data, x_q8, y, n_cols, r0, r1); break;
    case LMOE_TYPE_Q4_0_R16: k->matvec_q4_0_r16(w.data, x_q8, y, n_cols, r0, r1); break;
    case LMOE_TYPE_Q8_0_R16: k->matvec_q8_0_r16(w.data, x_q8, y, n_cols, r0, r1); break;
    case GGML_TYPE_F16: k->matvec_f16(w.data, x, y, n_cols, r0, r1); break;
    case GGML_TYPE_BF16: k->matvec_bf16(w.data, x, y, n_cols, r0, r1); break;
    default: /* model.c binds only the types above and f32 */
        k->matvec_f32(w.data, x, y, n_cols, r0, r1);
        break;
    }
}

bool weight_is_quantised(weight_ref w) {
    return w.type == GGML_TYPE_Q8_0 || w.type == GGML_TYPE_Q4_0 || ggml_type_is_r16(w.type);
}

/* The table's batched kernel for a quantised type, or NULL. */
static lmoe_gemm_fn gemm_for(const lmoe_kernels *k, ggml_type type) {
    switch (type) {
    case GGML_TYPE_Q8_0: return k->gemm_q8_0;
    case GGML_TYPE_Q4_0: return k->gemm_q4_0;
    case LMOE_TYPE_Q4_0_R16: return k->gemm_q4_0_r16;
    case LMOE_TYPE_Q8_0_R16: return k->gemm_q8_0_r16;
    default: return NULL;
    }
}

/* Rows [begin, end) for every token, a block of rows at a time. */
static void matmul_rows(void *arg, size_t begin, size_t end, int thread_id) {
    (void)thread_id;
    const matmul_job *job = arg;
    for (size_t r0 = begin; r0 < end; r0 += ROWS_PER_BLOCK) {
        size_t r1 = r0 + ROWS_PER_BLOCK < end ? r0 + ROWS_PER_BLOCK : end;
        for (size_t t = 0; t < job->n_tokens; t++)
            forward_rows(job->k, job->w, job->x + t * job->ldx,
                         job->x_q8 + t * (job->n_cols / LMOE_QK), job->y + t * job->ldy,
                         job->n_cols, r0, r1);
    }
}

/* The same with the table's batched kernel (quantised weights, several tokens). */
static void matmul_rows_gemm(void *arg, size_t begin, size_t end, int thread_id) {
    const matmul_job *job = arg;
    void *scratch = job->scratch + (size_t)thread_id * job->scratch_stride;
    gemm_for(job->k, job->w.type)(job->w.data, &job->batch, job->y, job->ldy, job->n_cols, begin,
                                  end, scratch);
}

/* Below this many tokens a product's activations are quantised on the calling thread. */
#define QUANTIZE_PARALLEL_MIN_TOKENS 16u

typedef struct quantize_job {
    const lmoe_kernels *k;
    const float *x;          /* (n_tokens, n_cols; stride ldx) */
    size_t ldx, n_cols;
    block_q8_0 *x_q8;        /* (n_tokens, n_cols / 32) out */
    void *packed;            /* NULL, or the same packed for the batched kernels */
} quantize_job;

/* Tokens [begin, end): quantised, and packed for the batched kernels when asked for. */
static void quantize_rows(void *arg, size_t begin, size_t end, int thread_id) {
    (void)thread_id;
    const quantize_job *job = arg;
    size_t n_blocks = job->n_cols / LMOE_QK;
    for (size_t t = begin; t < end; t++) {
        block_q8_0 *q = job->x_q8 + t * n_blocks;
        job->k->quantize_q8_0(job->x + t * job->ldx, q, job->n_cols);
        if (job->packed) job->k->gemm_pack_token(q, t, n_blocks, job->packed);
    }
}

weight_ref weight_rows(weight_ref w, size_t first_row, size_t n_cols) {
    size_t row_bytes = n_cols / ggml_type_block_elems(w.type) * ggml_type_block_bytes(w.type);
    w.data = (const char *)w.data + first_row * row_bytes;
    return w;
}

/* x's quantised form in the state (blocks, and their packed copy for a batched kernel), unless
 * it holds exactly this x already and the caller says x has not changed since. */
static void quantise_input(lmoe_context *ctx, const float *x, size_t ldx, size_t n_tokens,
                           size_t n_cols, bool may_reuse) {
    forward_state *s = &ctx->state;
    const lmoe_kernels *k = ctx->kernels;
    /* packed only for a table's batched kernels (for any weight type: the rows may be reused by
     * a product of another one) */
    bool pack = n_tokens > 1 && k->gemm_pack_token;
    if (may_reuse && s->x_q8_of == x && s->x_q8_ldx == ldx && s->x_q8_tokens == n_tokens &&
        s->x_q8_cols == n_cols)
        return;
    /* a batch's tokens on the pool: done on one thread it would cost prefill its 2-thread
     * scaling */
    quantize_job q = {k, x, ldx, n_cols, s->x_q8, pack ? s->x_packed : NULL};
    if (n_tokens >= QUANTIZE_PARALLEL_MIN_TOKENS)
        threadpool_parallel_for(ctx->pool, n_tokens, 0, quantize_rows, &q);
    else
        quantize_rows(&q, 0, n_tokens, 0);
    s->x_q8_of = x, s->x_q8_ldx = ldx, s->x_q8_tokens = n_tokens, s->x_q8_cols = n_cols;
}

static void matmul(lmoe_context *ctx, weight_ref w, const float *x, size_t ldx, float *y,
                   size_t ldy, size_t n_tokens, size_t n_rows, size_t n_cols, bool may_reuse) {
    forward_state *s = &ctx->state;
    const lmoe_kernels *k = ctx->kernels;
    matmul_job job = {k, w, x, s->x_q8, ldx, y, ldy, n_tokens, n_cols, {0}, s->gemm_scratch,
                      s->gemm_scratch_stride};
    lmoe_parallel_fn fn = matmul_rows;
    size_t granule = ROWS_PER_BLOCK; /* rows a chunk is a multiple of */
    if (!may_reuse) s->x_q8_of = NULL; /* x may have changed since it was last quantised */
    if (weight_is_quantised(w)) {
        /* each token's activations quantised once for all rows of this product */
        quantise_input(ctx, x, ldx, n_tokens, n_cols, may_reuse);
        bool batched = n_tokens > 1 && gemm_for(k, w.type);
        if (batched) {
            job.batch = (lmoe_q8_batch){s->x_packed, n_tokens, n_cols / LMOE_QK};
            fn = matmul_rows_gemm;
            granule = GEMM_ROWS_PER_PANEL;
        }
    }
    if (n_rows * n_cols * n_tokens < PARALLEL_MIN_MACS) {
        fn(&job, 0, n_rows, 0);
        return;
    }
    size_t n_chunks = (size_t)threadpool_n_threads(ctx->pool) * 4;
    size_t chunk = (n_rows + n_chunks - 1) / n_chunks;
    chunk = (chunk + granule - 1) / granule * granule;
    threadpool_parallel_for(ctx->pool, n_rows, chunk, fn, &job);
}

void forward_matmul(lmoe_context *ctx, weight_ref w, const float *x, size_t ldx, float *y,
                    size_t ldy, size_t n_tokens, size_t n_rows, size_t n_cols) {
    matmul(ctx, w, x, ldx, y, ldy, n_tokens, n_rows, n_cols, false);
}

void forward_matmul_same_input(lmoe_context *ctx, weight_ref w, const float *x, size_t ldx,
                               float *y, size_t ldy, size_t n_tokens, size_t n_rows,
                               size_t n_cols) {
    matmul(ctx, w, x, ldx, y, ldy, n_tokens, n_rows, n_cols, true);
}

/* ------------------------------------------------------------------------------------------------
 * attention
 * ---------------------------------------------------------------------------------------------- */

/* Where position pos of KV head kv_head of a layer starts in the key (and value) cache. The cache
 * is head-major, (n_layer, n_head_kv, n_ctx, head_dim): the keys a head attends to are one
 * contiguous run, which the attention kernels stream (position-major rows of n_embd_kv put
 * each key of a head in another 4 KiB page, and attention over 512 positions ran at half speed). */
static size_t cache_offset(const lmoe_context *ctx, uint32_t layer, size_t kv_head, size_t pos) {
    const llama_hparams *hp = &ctx->model->hp;
    return (((size_t)layer * hp->n_head_kv + kv_head) * ctx->n_ctx + pos) * hp->head_dim;
}

/* Copies n tokens' rows of src (n, n_embd_kv) into cache at positions pos0.., head by head. */
static void cache_store(const lmoe_context *ctx, float *cache, uint32_t layer, uint32_t pos0,
                        const float *src, uint32_t n) {
    const llama_hparams *hp = &ctx->model->hp;
    size_t hd = hp->head_dim;
    for (size_t h = 0; h < hp->n_head_kv; h++) {
        float *dst = cache + cache_offset(ctx, layer, h, pos0);
        for (uint32_t t = 0; t < n; t++)
            memcpy(dst + t * hd, src + (size_t)t * hp->n_embd_kv + h * hd, hd * sizeof(float));
    }
}

typedef struct attention_job {
    lmoe_context *ctx;
    uint32_t layer;
    uint32_t pos0;           /* position of the batch's first token */
    uint32_t n;              /* tokens in the batch */
    const float *q;          /* (n_tokens, n_embd) their queries */
    float *out;              /* (n_tokens, n_embd) their attention outputs */
} attention_job;

/* Queries of one head handed to the attention kernel at once. */
#define ATTENTION_QUERIES_PER_ITEM 16u

/* Causal attention for items [begin, end): item = (head, block of ATTENTION_QUERIES_PER_ITEM
 * tokens), head-major; each token attends to every cached key up to its own position. */
static void attention_items(void *arg, size_t begin, size_t end, int thread_id) {
    const attention_job *job = arg;
    lmoe_context *ctx = job->ctx;
    const llama_hparams *hp = &ctx->model->hp;
    const lmoe_kernels *k = ctx->kernels;
    forward_state *s = &ctx->state;
    size_t hd = hp->head_dim, dim = hp->n_embd;
    size_t heads_per_kv = hp->n_head / hp->n_head_kv;
    size_t n_blocks = (job->n + ATTENTION_QUERIES_PER_ITEM - 1) / ATTENTION_QUERIES_PER_ITEM;
    float *scores = s->att + (size_t)thread_id * s->att_stride;
    for (size_t item = begin; item < end; item++) {
        size_t h = item / n_blocks, t0 = item % n_blocks * ATTENTION_QUERIES_PER_ITEM;
        size_t n_q = job->n - t0 < ATTENTION_QUERIES_PER_ITEM ? job->n - t0
                                                             : ATTENTION_QUERIES_PER_ITEM;
        size_t kv_offset = cache_offset(ctx, job->layer, h / heads_per_kv, 0);
        const float *q = job->q + t0 * dim + h * hd;
        float *out = job->out + t0 * dim + h * hd;
        if (k->attention)
            k->attention(q, dim, s->key_cache + kv_offset, s->value_cache + kv_offset, hd, out,
                         dim, hd, job->pos0 + t0, n_q, scores);
        else
            lmoe_attention_composed(k, q, dim, s->key_cache + kv_offset, s->value_cache + kv_offset,
                                    hd, out, dim, hd, job->pos0 + t0, n_q, scores);
    }
}

/* Attention of n tokens at positions pos0.. (their keys and values already in the cache). */
static void attention(lmoe_context *ctx, uint32_t layer, uint32_t pos0, uint32_t n,
                      const float *q, float *out) {
    const llama_hparams *hp = &ctx->model->hp;
    attention_job job = {ctx, layer, pos0, n, q, out};
    size_t n_items = (size_t)hp->n_head *
                     ((n + ATTENTION_QUERIES_PER_ITEM - 1) / ATTENTION_QUERIES_PER_ITEM);
    /* multiply-adds: each token reads pos + 1 keys and values of every head */
    size_t macs = (size_t)n * ((size_t)pos0 + (n + 1) / 2) * hp->n_embd * 2;
    if (macs < PARALLEL_MIN_MACS)
        attention_items(&job, 0, n_items, 0);
    else /* one item at a time: their costs differ (a later token reads more keys) */
        threadpool_parallel_for(ctx->pool, n_items, 1, attention_items, &job);
}

/* Row `row` of the embedding matrix (n_embd wide) as f32. */
static void embedding_row(weight_ref table, size_t row, size_t n_embd, float *out) {
    lmoe_matrix_row_to_f32(table.type, table.data, row, n_embd, out);
}

/* The rotation of pair i (dimensions 2i, 2i+1 of a head) at position pos: angle pos *
 * theta^(-2i/head_dim), the GGUF llama (and original Meta / llama2.c) layout. Every head and both
 * q and k use the same head_dim / 2 angles, so they are computed once per token (the values
 * are the ones run.c computes for every element). */
static void rope_angles(float *cos_sin, uint32_t head_dim, float pos, float theta) {
    for (uint32_t i = 0; i < head_dim; i += 2) {
        float freq = 1.0f / powf(theta, (float)i / (float)head_dim);
        float angle = pos * freq;
        cos_sin[i] = cosf(angle);
        cos_sin[i + 1] = sinf(angle);
    }
}

/* Rotates adjacent pairs of each head of vec (n floats) by the angles of rope_angles. */
static void rope(float *vec, uint32_t n, uint32_t head_dim, const float *cos_sin) {
    for (uint32_t h = 0; h < n; h += head_dim)
        for (uint32_t i = 0; i < head_dim; i += 2) {
            float c = cos_sin[i], sn = cos_sin[i + 1];
            float v0 = vec[h + i], v1 = vec[h + i + 1];
            vec[h + i] = v0 * c - v1 * sn;
            vec[h + i + 1] = v0 * sn + v1 * c;
        }
}

void forward_shift_cache(lmoe_context *ctx, uint32_t n_keep, uint32_t n_discard) {
    const llama_hparams *hp = &ctx->model->hp;
    forward_state *s = &ctx->state;
    size_t hd = hp->head_dim, n_move = ctx->n_past - n_keep - n_discard;
    /* the moved keys were rotated for positions n_discard further on: rotate them back */
    float *cos_sin = s->rope; /* free between evaluations */
    rope_angles(cos_sin, hp->head_dim, -(float)n_discard, hp->rope_theta);
    for (uint32_t l = 0; l < hp->n_layer; l++)
        for (uint32_t h = 0; h < hp->n_head_kv; h++) {
            float *k = s->key_cache + cache_offset(ctx, l, h, 0);
            float *v = s->value_cache + cache_offset(ctx, l, h, 0);
            memmove(k + n_keep * hd, k + (n_keep + n_discard) * hd, n_move * hd * sizeof(float));
            memmove(v + n_keep * hd, v + (n_keep + n_discard) * hd, n_move * hd * sizeof(float));
            for (size_t pos = n_keep; pos < n_keep + n_move; pos++)
                rope(k + pos * hd, (uint32_t)hd, hp->head_dim, cos_sin);
        }
}

/* ------------------------------------------------------------------------------------------------
 * the forward pass
 * ---------------------------------------------------------------------------------------------- */

/* The batch's keys (or values) in xb2 (n, n_embd_kv) into the cache: the context's at pos0.., or
 * each row's own context at its position when several streams are evaluated together. */
static void store_keys_values(lmoe_context *ctx, uint32_t il, uint32_t pos0, uint32_t n,
                              bool values) {
    forward_state *s = &ctx->state;
    if (!s->row_ctx) {
        cache_store(ctx, values ? s->value_cache : s->key_cache, il, pos0, s->xb2, n);
        return;
    }
    size_t kv_dim = ctx->model->hp.n_embd_kv;
    for (uint32_t t = 0; t < n; t++) {
        lmoe_context *row = s->row_ctx[t];
        cache_store(row, values ? row->state.value_cache : row->state.key_cache, il,
                    s->row_pos[t], s->xb2 + t * kv_dim, 1);
    }
}

/* Below this many tokens the per-token steps run on the calling thread. */
#define TOKEN_PARALLEL_MIN 16u

typedef struct token_job {
    lmoe_context *ctx;
    const float *add;        /* (n, n_embd) added to the residual first, or NULL */
    const float *norm;       /* RMSNorm weight: xb = rmsnorm(x) after, or NULL */
} token_job;

static void token_rows(void *arg, size_t begin, size_t end, int thread_id) {
    (void)thread_id;
    const token_job *job = arg;
    const llama_hparams *hp = &job->ctx->model->hp;
    const lmoe_kernels *k = job->ctx->kernels;
    forward_state *s = &job->ctx->state;
    size_t dim = hp->n_embd;
    for (size_t t = begin; t < end; t++) {
        if (job->add) k->axpy(s->x + t * dim, 1.0f, job->add + t * dim, dim);
        if (job->norm) k->rmsnorm(s->xb + t * dim, s->x + t * dim, job->norm, dim, hp->rms_eps);
    }
}

/* For each of n tokens: x += add (when given), then xb = RMSNorm(x) * norm (when given). Done on
 * the pool for a batch (on one thread these steps cost prefill part of its 2-thread scaling). */
static void residual_and_norm(lmoe_context *ctx, uint32_t n, const float *add, const float *norm) {
    token_job job = {ctx, add, norm};
    if (n >= TOKEN_PARALLEL_MIN)
        threadpool_parallel_for(ctx->pool, n, 0, token_rows, &job);
    else
        token_rows(&job, 0, n, 0);
}

/* A SwiGLU FFN n_ff wide on the batch's normed rows: out = down(silu(gate xb) * (up xb)). The
 * dense FFN of a layer, or the shared expert of an MoE layer. */
static void swiglu_ffn(lmoe_context *ctx, uint32_t il, weight_ref gate, weight_ref up,
                       weight_ref down, size_t n_ff, uint32_t n, float *out) {
    forward_state *s = &ctx->state;
    size_t dim = ctx->model->hp.n_embd;
    forward_matmul(ctx, gate, s->xb, dim, s->hb, n_ff, n, n_ff, dim);
    forward_matmul_same_input(ctx, up, s->xb, dim, s->hb2, n_ff, n, n_ff, dim);
    for (uint32_t t = 0; t < n; t++)
        ctx->kernels->swiglu(s->hb + t * n_ff, s->hb + t * n_ff, s->hb2 + t * n_ff, n_ff);
    if (ctx->ffn_observer && !ctx->model->hp.n_expert)
        ctx->ffn_observer(ctx->ffn_observer_user, il, s->xb, s->hb, n);
    forward_matmul(ctx, down, s->hb, n_ff, out, dim, n, dim, n_ff);
}

lmoe_status forward_batch(lmoe_context *ctx, const lmoe_token *tokens, uint32_t n,
                          uint32_t pos0, bool want_logits) {
    const lmoe_model *m = ctx->model;
    const llama_hparams *hp = &m->hp;
    const lmoe_kernels *k = ctx->kernels;
    forward_state *s = &ctx->state;
    size_t dim = hp->n_embd, kv_dim = hp->n_embd_kv;

    /* token embeddings */
    for (uint32_t t = 0; t < n; t++) embedding_row(m->tok_embd, (size_t)tokens[t], dim, s->x + t * dim);

    for (uint32_t t = 0; t < n; t++)
        rope_angles(s->rope + (size_t)t * hp->head_dim, hp->head_dim,
                    (float)forward_row_pos(ctx, pos0, t), hp->rope_theta);

    for (uint32_t il = 0; il < hp->n_layer; il++) {
        if (ctx->abort_fn && ctx->abort_fn(ctx->abort_user))
            return lmoe_error(LMOE_ERR_ABORTED, "evaluation aborted by the abort callback");
        const layer_weights *l = &m->layers[il];
        /* attention: x -> RMSNorm -> q, k, v; RoPE on q and k; k, v into the cache (computed
         * in xb2, free until the output projection) */
        residual_and_norm(ctx, n, NULL, l->attn_norm);
        forward_matmul(ctx, l->wq, s->xb, dim, s->q, dim, n, dim, dim);
        forward_matmul_same_input(ctx, l->wk, s->xb, dim, s->xb2, kv_dim, n, kv_dim, dim);
        for (uint32_t t = 0; t < n; t++) {
            const float *angles = s->rope + (size_t)t * hp->head_dim;
            rope(s->q + t * dim, (uint32_t)dim, hp->head_dim, angles);
            rope(s->xb2 + t * kv_dim, (uint32_t)kv_dim, hp->head_dim, angles);
        }
        store_keys_values(ctx, il, pos0, n, false);
        forward_matmul_same_input(ctx, l->wv, s->xb, dim, s->xb2, kv_dim, n, kv_dim, dim);
        store_keys_values(ctx, il, pos0, n, true);

        /* causal attention over positions 0..pos into xb (the whole batch's keys are in the
         * cache already; a token looks only at those up to its own position) */
        if (s->row_ctx) /* several streams: each row attends to its own context's cache */
            for (uint32_t t = 0; t < n; t++)
                attention(s->row_ctx[t], il, s->row_pos[t], 1, s->q + (size_t)t * dim,
                          s->xb + (size_t)t * dim);
        else
            attention(ctx, il, pos0, n, s->q, s->xb);

        /* output projection and residual */
        forward_matmul(ctx, l->wo, s->xb, dim, s->xb2, dim, n, dim, dim);
        residual_and_norm(ctx, n, s->xb2, l->ffn_norm);

        /* FFN on the normed residual: dense, or the experts the gate selects (moe.c) plus the
         * shared expert if there is one; residual */
        if (hp->n_expert) {
            moe_ffn(ctx, il, pos0, s->xb, s->xb2, n);
            if (hp->n_ff_shexp) {
                /* expert_out is free once moe_ffn returns */
                swiglu_ffn(ctx, il, l->gate_shexp, l->up_shexp, l->down_shexp, hp->n_ff_shexp, n,
                           s->expert_out);
                for (uint32_t t = 0; t < n; t++)
                    k->axpy(s->xb2 + t * dim, 1.0f, s->expert_out + t * dim, dim);
            }
        } else {
            swiglu_ffn(ctx, il, l->ffn_gate, l->ffn_up, l->ffn_down, hp->n_ff, n, s->xb2);
        }
        residual_and_norm(ctx, n, s->xb2, NULL);
    }

    if (!want_logits) return LMOE_OK;
    float *last = s->x + (size_t)(n - 1) * dim;
    k->rmsnorm(last, last, m->output_norm, dim, hp->rms_eps);
    forward_matmul(ctx, m->output, last, dim, s->logits, hp->n_vocab, 1, hp->n_vocab, dim);
    return LMOE_OK;
}
