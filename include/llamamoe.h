/*
 * llamamoe.h - the whole public API of libllamamoe.
 *
 * libllamamoe runs LLaMA and mixture-of-experts LLaMA models on CPUs. It memory-maps a GGUF model
 * file, runs the transformer on a persistent thread pool, and hands text back through callbacks.
 * Anything not declared in this file is not a published API and may change without notice.
 *
 * Usage sketch (error checks shortened):
 *
 *     lmoe_model_params mp;   lmoe_model_default_params(&mp, sizeof mp);
 *     lmoe_model *model;      if (lmoe_model_load("m.gguf", &mp, &model)) puts(lmoe_last_error());
 *     lmoe_context_params cp; lmoe_context_default_params(&cp, sizeof cp);
 *     lmoe_context *ctx;      lmoe_context_create(model, &cp, &ctx);
 *     lmoe_sampler_params sp; lmoe_sampler_default_params(&sp, sizeof sp);
 *     lmoe_sampler *smp;      lmoe_sampler_create(&sp, &smp);
 *     lmoe_generate_params gp; lmoe_generate_default_params(&gp, sizeof gp);
 *     gp.max_tokens = 64; gp.on_text = print_text;
 *     lmoe_generate(ctx, smp, "Once upon a time", 16, &gp, NULL, 0);
 *     lmoe_sampler_free(smp); lmoe_context_free(ctx); lmoe_model_free(model);
 *
 * Threading rule: a loaded model is immutable and may be shared by any number of contexts on any
 * threads. A context (KV cache, scratch buffers, thread pool) and a sampler are used by one thread
 * at a time. Functions that take only a model, or nothing, may be called from any thread.
 *
 * Errors: every call that can fail returns an lmoe_status (LMOE_OK is 0). The detail of the most
 * recent failure on the calling thread is in lmoe_last_error(). The library never prints, exits or
 * aborts; diagnostics go to the optional log callback given in the model and context params.
 *
 * Params structs: obtain them from lmoe_*_default_params(ptr, sizeof *ptr), change the fields you
 * need, and pass them by pointer. Each struct starts with its own size, so a program compiled
 * against an older header keeps working with a newer library: structs only ever grow at the end.
 */
#ifndef LLAMAMOE_H
#define LLAMAMOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(LLAMAMOE_BUILD_SHARED)
#define LMOE_API __declspec(dllexport)
#elif defined(__GNUC__)
#define LMOE_API __attribute__((visibility("default")))
#else
#define LMOE_API
#endif

/* ---------------------------------------------------------------------------------------------
 * Version
 * ------------------------------------------------------------------------------------------- */

#define LMOE_VERSION_MAJOR 0
#define LMOE_VERSION_MINOR 1
#define LMOE_VERSION_PATCH 0
/* MAJOR * 1000000 + MINOR * 1000 + PATCH; compare with lmoe_version_number() at run time. */
#define LMOE_VERSION_NUMBER (LMOE_VERSION_MAJOR * 1000000 + LMOE_VERSION_MINOR * 1000 + LMOE_VERSION_PATCH)
#define LMOE_VERSION_STRING "0.1.0"

/* Returns the library's version as "MAJOR.MINOR.PATCH" (static storage; never NULL). */
LMOE_API const char *lmoe_version(void);
/* Returns the library's LMOE_VERSION_NUMBER. A program may check that it equals the header's. */
LMOE_API int lmoe_version_number(void);

/* ---------------------------------------------------------------------------------------------
 * Status codes and error detail
 * ------------------------------------------------------------------------------------------- */

/* Values are fixed; new codes are only appended. */
typedef enum lmoe_status {
    LMOE_OK = 0,                 /* success */
    LMOE_ERR_INVALID_ARGUMENT = 1, /* a NULL pointer, a bad params struct or an out-of-range value */
    LMOE_ERR_IO = 2,             /* a file could not be opened, read, mapped or written */
    LMOE_ERR_BAD_FILE = 3,       /* a file is malformed: bad magic, truncated, a value out of bounds */
    LMOE_ERR_UNSUPPORTED = 4,    /* well-formed but not supported: version, tensor type, architecture */
    LMOE_ERR_OUT_OF_MEMORY = 5,  /* an allocation failed */
    LMOE_ERR_CONTEXT_FULL = 6,   /* the tokens do not fit in the context; nothing was evaluated */
    LMOE_ERR_BUFFER_TOO_SMALL = 7, /* an output buffer is too small; the size needed is reported */
    LMOE_ERR_MISUSE = 8,         /* a call in the wrong state, e.g. eval on a vocabulary-only model */
    LMOE_ERR_ABORTED = 9,        /* the abort callback asked to stop */
    LMOE_ERR_INTERNAL = 10       /* a bug in the library; please report it */
} lmoe_status;

/* Returns a fixed English description of a status code (static storage; never NULL). */
LMOE_API const char *lmoe_status_string(lmoe_status status);

/* Returns the detail of the most recent failure on the calling thread: which file, field, offset,
 * and what was expected versus found. The text is thread-local, owned by the library, and
 * overwritten by the next failing call on the same thread; successful calls leave it unchanged.
 * Returns "" if nothing has failed on this thread. Never NULL. */
LMOE_API const char *lmoe_last_error(void);

/* ---------------------------------------------------------------------------------------------
 * Memory
 * ------------------------------------------------------------------------------------------- */

/* The functions every heap allocation of the library goes through (a game's arena, a tracking
 * allocator). They are called on the threads that call the library, several at once when contexts
 * run on several threads, so they must be thread-safe. alloc and resize behave like malloc and realloc (size is never 0)
 * and return NULL on failure, which the library reports as LMOE_ERR_OUT_OF_MEMORY; release is
 * never given NULL. Model weights are memory-mapped (or the caller's buffer), not allocated. */
typedef struct lmoe_allocator {
    void *(*alloc)(void *user, size_t size);
    void *(*resize)(void *user, void *ptr, size_t size);
    void (*release)(void *user, void *ptr);
    void *user;
} lmoe_allocator;

/* Makes the library allocate through *allocator (copied), or through libc's malloc, realloc and
 * free when allocator is NULL. Call it when no model, context, sampler or generation exists, and
 * not concurrently with other library calls: a block must be freed by the allocator that made it,
 * so this returns LMOE_ERR_MISUSE while any library block is alive. LMOE_ERR_INVALID_ARGUMENT if
 * a function pointer is NULL. */
LMOE_API lmoe_status lmoe_set_allocator(const lmoe_allocator *allocator);

/* ---------------------------------------------------------------------------------------------
 * Logging
 * ------------------------------------------------------------------------------------------- */

typedef enum lmoe_log_level {
    LMOE_LOG_ERROR = 0,
    LMOE_LOG_WARN = 1,
    LMOE_LOG_INFO = 2,
    LMOE_LOG_DEBUG = 3
} lmoe_log_level;

/* Receives one NUL-terminated line (without a trailing newline). Called on the thread that made
 * the library call; must not call back into the model or context that is logging. */
typedef void (*lmoe_log_fn)(void *user, lmoe_log_level level, const char *message);

/* ---------------------------------------------------------------------------------------------
 * Model: a loaded, immutable GGUF file
 * ------------------------------------------------------------------------------------------- */

typedef int32_t lmoe_token;
typedef struct lmoe_model lmoe_model;

typedef struct lmoe_model_params {
    size_t struct_size;     /* sizeof(lmoe_model_params) as the caller compiled it */
    lmoe_log_fn log_fn;     /* optional log callback (NULL: no logging) */
    void *log_user;         /* passed to log_fn */
    lmoe_log_level log_level; /* the most detailed level passed to log_fn (default LMOE_LOG_WARN) */
    int vocab_only;         /* nonzero: load only the tokenizer, even if the file has weights */
} lmoe_model_params;

/* Fills *params with defaults. params_size is sizeof *params as the caller compiled it; the library
 * writes only that many bytes. Returns LMOE_ERR_INVALID_ARGUMENT if params is NULL or params_size
 * is smaller than the first version of the struct. Any thread. */
LMOE_API lmoe_status lmoe_model_default_params(lmoe_model_params *params, size_t params_size);

/* CONSTRUCTOR: lmoe_model. Memory-maps the GGUF file at path and validates it: every offset, count,
 * string length and tensor extent is checked, and tensor shapes are checked against the
 * hyperparameters. A file with a vocabulary and no tensors loads as a vocabulary-only model that can
 * tokenize but not evaluate. params may be NULL for defaults. On success *out receives the model;
 * on failure *out is NULL and lmoe_last_error() names the problem. Any thread. */
LMOE_API lmoe_status lmoe_model_load(const char *path, const lmoe_model_params *params,
                                     lmoe_model **out);

/* CONSTRUCTOR: lmoe_model. As lmoe_model_load, from a file the caller has opened (read from its
 * start; the fd stays the caller's and may be closed as soon as this returns: the mapping does not
 * need it). For sandboxes and app bundles that hand out descriptors, not paths. Any thread. */
LMOE_API lmoe_status lmoe_model_load_from_fd(int fd, const lmoe_model_params *params,
                                             lmoe_model **out);

/* CONSTRUCTOR: lmoe_model. As lmoe_model_load, from a GGUF file's bytes in the caller's memory
 * (e.g. embedded in the program or downloaded): not copied, so the buffer must stay unchanged and
 * alive until lmoe_model_free, and must be aligned to 32 bytes (tensor data is aligned relative to
 * the file's start). Any thread. */
LMOE_API lmoe_status lmoe_model_load_from_memory(const void *data, size_t size,
                                                 const lmoe_model_params *params,
                                                 lmoe_model **out);

/* DESTRUCTOR: lmoe_model. Unmaps and frees the model. All contexts created from it must have been
 * freed first. NULL is a harmless no-op. */
LMOE_API void lmoe_model_free(lmoe_model *model);

typedef struct lmoe_model_info {
    size_t struct_size;       /* filled in by the library: the bytes it wrote */
    char architecture[32];    /* general.architecture, e.g. "llama" (NUL-terminated) */
    char name[64];            /* general.name if present, else "" (NUL-terminated, may be cut) */
    int has_weights;          /* 0 for a vocabulary-only model */
    int32_t n_vocab;          /* tokens in the vocabulary */
    int32_t n_ctx_train;      /* context length the model was trained with */
    int32_t n_embd;           /* hidden size */
    int32_t n_layer;          /* transformer blocks */
    int32_t n_head;           /* attention (query) heads */
    int32_t n_head_kv;        /* key/value heads (grouped-query attention when < n_head) */
    int32_t n_ff;             /* FFN intermediate size (per expert for MoE models) */
    int32_t n_expert;         /* experts per layer; 0 for a dense model */
    int32_t n_expert_used;    /* experts selected per token; 0 for a dense model */
    float rms_norm_eps;       /* RMSNorm epsilon */
    float rope_freq_base;     /* RoPE theta */
    uint64_t n_params;        /* parameters stored in the file (all tensors) */
    uint64_t n_params_active; /* parameters read per token (only the selected experts of MoE) */
    uint64_t n_bytes;         /* bytes of tensor data in the file */
} lmoe_model_info;

/* METHOD: lmoe_model. Fills *info (info_size = sizeof *info as compiled by the caller). Any thread. */
LMOE_API lmoe_status lmoe_model_get_info(const lmoe_model *model, lmoe_model_info *info,
                                         size_t info_size);

/* METHOD: lmoe_model. Copies the value of the metadata key as text into buf (NUL-terminated):
 * strings as they are, numbers in decimal, booleans as "true"/"false", arrays as
 * "[array of N TYPE]" (e.g. "[array of 32000 string]").
 * *len (optional) receives the length without the NUL. Returns LMOE_ERR_INVALID_ARGUMENT if the
 * key is absent and LMOE_ERR_BUFFER_TOO_SMALL (with *len set) if buf is too small. Any thread. */
LMOE_API lmoe_status lmoe_model_meta_string(const lmoe_model *model, const char *key, char *buf,
                                            size_t buf_size, size_t *len);

/* ---------------------------------------------------------------------------------------------
 * Tokenizer (SentencePiece BPE, from the vocabulary stored in the model file)
 * ------------------------------------------------------------------------------------------- */

/* METHOD: lmoe_model. The beginning- and end-of-sequence token ids, or -1 if the vocabulary has
 * none. Any thread. */
LMOE_API lmoe_token lmoe_token_bos(const lmoe_model *model);
LMOE_API lmoe_token lmoe_token_eos(const lmoe_model *model);

/* METHOD: lmoe_model. Tokenizes text_len bytes of text (a NUL byte is data, not the end) the way
 * SentencePiece does for the stored vocabulary: dummy-prefix space, whitespace normalisation when
 * the file asks for it, BPE merges by score, byte fallback for anything not in the vocabulary
 * (including invalid UTF-8). add_bos nonzero puts BOS first. Writes at most max_tokens ids to tokens
 * and the count to *n_tokens. If max_tokens is too small, returns LMOE_ERR_BUFFER_TOO_SMALL with
 * *n_tokens set to the count needed (tokens may be NULL when max_tokens is 0). Any thread. */
LMOE_API lmoe_status lmoe_tokenize(const lmoe_model *model, const char *text, size_t text_len,
                                   int add_bos, lmoe_token *tokens, size_t max_tokens,
                                   size_t *n_tokens);

/* METHOD: lmoe_model. Turns tokens back into text the way SentencePiece decodes: control tokens
 * (BOS, EOS) vanish, byte tokens become their raw bytes, U+2581 becomes a space, and the space the
 * tokenizer added in front of the first piece is removed. The output is not NUL-terminated; *len
 * receives its length. If buf_size is too small, returns LMOE_ERR_BUFFER_TOO_SMALL with *len set to
 * the length needed (buf may be NULL when buf_size is 0). Any thread. */
LMOE_API lmoe_status lmoe_detokenize(const lmoe_model *model, const lmoe_token *tokens,
                                     size_t n_tokens, char *buf, size_t buf_size, size_t *len);

/* METHOD: lmoe_model. The text of one token as it appears inside decoded text: U+2581 becomes a
 * space, a byte token becomes its one raw byte, control tokens give "". With strip_leading_space
 * nonzero a leading space is dropped (what decoding does to the first piece of a text). Output,
 * *len and LMOE_ERR_BUFFER_TOO_SMALL as for lmoe_detokenize. Any thread. */
LMOE_API lmoe_status lmoe_token_to_piece(const lmoe_model *model, lmoe_token token,
                                         int strip_leading_space, char *buf, size_t buf_size,
                                         size_t *len);

/* ---------------------------------------------------------------------------------------------
 * Context: one sequence's KV cache, scratch buffers and thread pool
 * ------------------------------------------------------------------------------------------- */

typedef struct lmoe_context lmoe_context;

/* Called between layers during long evaluations; return nonzero to stop with LMOE_ERR_ABORTED
 * (the tokens of the interrupted call are then not added to the KV cache). */
typedef int (*lmoe_abort_fn)(void *user);

/* Receives the routing decision of one MoE layer for one token: the n_used selected experts in
 * descending gate-logit order, and the weight each expert's output is multiplied by (for LLaMA-MoE
 * the softmax over the selected logits times the score scale; for Mixtral-style files the
 * renormalised softmax). Called on the thread running lmoe_eval, once per layer and token (a
 * batch is routed layer by layer: for each layer, its tokens in position order); the arrays are
 * valid only during the call. Must not call back into the context. */
typedef void (*lmoe_routing_fn)(void *user, int32_t layer, uint32_t pos, const int32_t *experts,
                                const float *weights, int32_t n_used);

typedef struct lmoe_context_params {
    size_t struct_size;     /* sizeof(lmoe_context_params) as the caller compiled it */
    uint32_t n_ctx;         /* KV cache size in tokens; 0 = the model's training context */
    int32_t n_threads;      /* threads for evaluation, caller included; 0 = one per online CPU */
    lmoe_log_fn log_fn;     /* optional log callback for this context (NULL: none) */
    void *log_user;         /* passed to log_fn */
    lmoe_log_level log_level; /* most detailed level passed to log_fn (default LMOE_LOG_WARN) */
    lmoe_abort_fn abort_fn; /* optional; checked between layers */
    void *abort_user;       /* passed to abort_fn */
    lmoe_routing_fn routing_fn; /* optional: every routing decision of an MoE model */
    void *routing_user;     /* passed to routing_fn */
    uint32_t n_batch;       /* most tokens one forward pass evaluates; lmoe_eval splits longer
                               inputs. 0 = 512. At most n_ctx (larger values are capped). Larger
                               batches read each weight once for more tokens (faster prompts);
                               the scratch memory grows with it. */
} lmoe_context_params;

/* Fills *params with defaults (n_ctx 0, n_threads 0, n_batch 0). As lmoe_model_default_params. */
LMOE_API lmoe_status lmoe_context_default_params(lmoe_context_params *params, size_t params_size);

/* CONSTRUCTOR: lmoe_context. Allocates the KV cache (2 * n_layer * n_ctx * n_embd_kv floats) and
 * scratch, and starts n_threads - 1 worker threads. The model must have weights and must outlive
 * the context. params may be NULL for defaults. On failure *out is NULL. Any thread. */
LMOE_API lmoe_status lmoe_context_create(const lmoe_model *model, const lmoe_context_params *params,
                                         lmoe_context **out);

/* DESTRUCTOR: lmoe_context. Stops its threads and frees it. NULL is a harmless no-op. */
LMOE_API void lmoe_context_free(lmoe_context *ctx);

/* METHOD: lmoe_context. Empties the KV cache so the next eval starts at position 0, and sets the
 * expert selection counts to zero. */
LMOE_API void lmoe_context_reset(lmoe_context *ctx);

/* METHOD: lmoe_context. Rolls the KV cache back to its first n_tokens tokens (n_tokens <= what it
 * holds), so the next eval continues from position n_tokens: undo the last tokens of a turn, or
 * retry from a common prefix without evaluating it again. The logits are invalid until the next
 * eval (unless nothing was removed). Expert counts are kept. */
LMOE_API lmoe_status lmoe_context_truncate(lmoe_context *ctx, uint32_t n_tokens);

/* METHOD: lmoe_context. Makes room when the cache is full: keeps the first n_keep tokens (e.g. BOS
 * and a system prompt), drops the n_discard after them, and moves the rest down, re-rotating their
 * keys (RoPE) to their new positions, so generation continues as if the dropped tokens had never
 * been there (up to float rounding of the re-rotation). n_keep + n_discard must not exceed the
 * tokens held. The logits stay those of the last token. An explicit call: evaluation never shifts
 * on its own (it returns LMOE_ERR_CONTEXT_FULL). */
LMOE_API lmoe_status lmoe_context_shift(lmoe_context *ctx, uint32_t n_keep, uint32_t n_discard);

/* METHOD: lmoe_context. The bytes lmoe_context_state_save writes now: the KV cache of the tokens
 * it holds, the logits and the expert counts (0 if ctx is NULL). */
LMOE_API size_t lmoe_context_state_size(const lmoe_context *ctx);

/* METHOD: lmoe_context. Saves the context's state into buf (buf_size bytes; *written, optional,
 * receives the size, also when it returns LMOE_ERR_BUFFER_TOO_SMALL). The state starts with a
 * magic and a version and ends with a checksum; it can be restored into any context of the same
 * model whose n_ctx holds its tokens, on this machine (the bytes are in its byte order). */
LMOE_API lmoe_status lmoe_context_state_save(const lmoe_context *ctx, void *buf, size_t buf_size,
                                             size_t *written);

/* METHOD: lmoe_context. Restores a saved state: the next eval continues after its tokens, and the
 * logits and expert counts are the saved ones. Everything is checked before the context changes:
 * a state of another model (LMOE_ERR_INVALID_ARGUMENT), a damaged, truncated or unknown one
 * (LMOE_ERR_BAD_FILE / LMOE_ERR_UNSUPPORTED), or one longer than n_ctx (LMOE_ERR_CONTEXT_FULL)
 * leaves the context as it was. */
LMOE_API lmoe_status lmoe_context_state_load(lmoe_context *ctx, const void *buf, size_t size);

/* METHOD: lmoe_context. The same to and from a file. */
LMOE_API lmoe_status lmoe_context_state_save_file(const lmoe_context *ctx, const char *path);
LMOE_API lmoe_status lmoe_context_state_load_file(lmoe_context *ctx, const char *path);

/* METHOD: lmoe_context. Tokens currently in the KV cache, and its capacity. */
LMOE_API uint32_t lmoe_context_n_tokens(const lmoe_context *ctx);
LMOE_API uint32_t lmoe_context_n_ctx(const lmoe_context *ctx);

/* METHOD: lmoe_context. How often each expert was selected, per layer, since the context was
 * created or its counts were last reset (by lmoe_context_reset or
 * lmoe_context_reset_expert_counts): counts[layer * n_expert + expert] for n_layer * n_expert
 * entries (see lmoe_model_get_info). Returns LMOE_ERR_BUFFER_TOO_SMALL if n_counts is smaller, and
 * LMOE_ERR_MISUSE for a dense model (n_expert 0). Tokens whose evaluation failed are not counted. */
LMOE_API lmoe_status lmoe_context_expert_counts(const lmoe_context *ctx, uint64_t *counts,
                                                size_t n_counts);

/* METHOD: lmoe_context. Sets every expert selection count to zero (the KV cache is kept). */
LMOE_API void lmoe_context_reset_expert_counts(lmoe_context *ctx);

/* METHOD: lmoe_context. The model the context was created from. */
LMOE_API const lmoe_model *lmoe_context_model(const lmoe_context *ctx);

/* METHOD: lmoe_context. Runs the model on n_tokens tokens at positions n_tokens(ctx) onward,
 * appends them to the KV cache, and computes the logits of the last one. Several tokens are
 * evaluated together (batches of up to n_batch, see lmoe_context_params): each weight is read
 * once per batch, and an MoE expert runs once over all the batch's tokens routed to it; the numbers
 * are the same as one token at a time. If the tokens do not fit, returns LMOE_ERR_CONTEXT_FULL and
 * changes nothing. A token id outside the vocabulary gives LMOE_ERR_INVALID_ARGUMENT and changes
 * nothing. After an abort (LMOE_ERR_ABORTED) the context holds the tokens it held before the
 * call, and lmoe_logits returns NULL until the next successful eval. */
LMOE_API lmoe_status lmoe_eval(lmoe_context *ctx, const lmoe_token *tokens, size_t n_tokens);

/* Advances n_streams contexts of one model by one token each (tokens[i] for ctxs[i], at the end of
 * what ctxs[i] holds) in a single forward pass, so the weights are read once for all of them:
 * decoding is bound by reading the weights, so 4 streams cost far less than 4 times one
 * (bench/bench_streams; docs/PERFORMANCE.md, "Several streams"). Each stream's cache, logits, routing callback and expert
 * counts are its own; results equal lmoe_eval of each token alone up to float rounding. The first
 * context's thread pool, kernels and abort callback do the work, and its n_batch bounds n_streams;
 * the contexts must be distinct, and none of them may be in use on another thread. If a context is
 * full nothing is evaluated (LMOE_ERR_CONTEXT_FULL naming the stream). */
LMOE_API lmoe_status lmoe_eval_streams(lmoe_context *const *ctxs, const lmoe_token *tokens,
                                       size_t n_streams);

/* METHOD: lmoe_context. The n_vocab logits computed by the last successful lmoe_eval, or NULL if
 * there was none since creation or reset. Owned by the context; valid until the next eval, reset or
 * free of that context. */
LMOE_API const float *lmoe_logits(const lmoe_context *ctx);

/* ---------------------------------------------------------------------------------------------
 * Sampler: turns logits into the next token
 *
 * The chain runs these stages in this order, each skipped when off:
 *   1. repetition penalty over the last repeat_last_n accepted tokens (positive logits divided by
 *      repeat_penalty, negative ones multiplied);
 *   2. temperature == 0: argmax (lowest id wins ties), and the chain ends here;
 *   3. logits divided by temperature, then softmax over the whole vocabulary;
 *   4. top-k: keep the k most probable tokens;
 *   5. min-p: keep tokens whose probability is at least min_p times the largest;
 *   6. top-p (nucleus): keep the most probable tokens until their mass exceeds top_p;
 *   7. draw one token from what is left with the seeded RNG (xorshift64*, as llama2.c's run.c, so
 *      the same seed and logits give the same token on every machine).
 * The defaults are run.c's (temperature 1, top-p 0.9, everything else off), and with top_k and
 * min_p off, stages 3, 6 and 7 reproduce llama2.c run.c's sampler exactly.
 * ------------------------------------------------------------------------------------------- */

typedef struct lmoe_sampler lmoe_sampler;

typedef struct lmoe_sampler_params {
    size_t struct_size;     /* sizeof(lmoe_sampler_params) as the caller compiled it */
    float temperature;      /* 0 = greedy (default 1.0) */
    int32_t top_k;          /* 0 = off (default 0) */
    float top_p;            /* 1 = off (default 0.9) */
    float min_p;            /* 0 = off (default 0) */
    float repeat_penalty;   /* 1 = off (default 1) */
    int32_t repeat_last_n;  /* tokens of history the penalty looks at (default 64) */
    uint64_t seed;          /* RNG seed (default 42); 0 is replaced by a fixed nonzero constant,
                               since xorshift cannot leave the all-zero state */
} lmoe_sampler_params;

/* Fills *params with defaults. As lmoe_model_default_params. */
LMOE_API lmoe_status lmoe_sampler_default_params(lmoe_sampler_params *params, size_t params_size);

/* CONSTRUCTOR: lmoe_sampler. params may be NULL for the defaults. Checks the params (finite
 * temperature >= 0, top_k >= 0, 0 < top_p <= 1, 0 <= min_p <= 1, finite repeat_penalty > 0,
 * repeat_last_n >= 0; no NaN). On failure *out is NULL. */
LMOE_API lmoe_status lmoe_sampler_create(const lmoe_sampler_params *params, lmoe_sampler **out);

/* DESTRUCTOR: lmoe_sampler. NULL is a harmless no-op. */
LMOE_API void lmoe_sampler_free(lmoe_sampler *sampler);

/* METHOD: lmoe_sampler. Restores the RNG to its seed and forgets the token history. */
LMOE_API void lmoe_sampler_reset(lmoe_sampler *sampler);

/* METHOD: lmoe_sampler. Picks a token from n_vocab logits (not modified) into *token. Does not add
 * it to the history; call lmoe_sampler_accept for the tokens the sequence really takes. */
LMOE_API lmoe_status lmoe_sampler_sample(lmoe_sampler *sampler, const float *logits,
                                         int32_t n_vocab, lmoe_token *token);

/* METHOD: lmoe_sampler. Adds a token to the history the repetition penalty looks at. */
LMOE_API void lmoe_sampler_accept(lmoe_sampler *sampler, lmoe_token token);

/* ---------------------------------------------------------------------------------------------
 * Generation
 * ------------------------------------------------------------------------------------------- */

/* Why lmoe_generate stopped. */
typedef enum lmoe_stop_reason {
    LMOE_STOP_NONE = 0,         /* did not stop normally (an error status was returned) */
    LMOE_STOP_EOS = 1,          /* the model produced end-of-sequence */
    LMOE_STOP_BOS = 2,          /* the model produced BOS and the file says to stop on it
                                   (llama2.c models start a new story with BOS, as run.c stops) */
    LMOE_STOP_STRING = 3,       /* the text produced one of the stop strings */
    LMOE_STOP_MAX_TOKENS = 4,   /* max_tokens tokens were produced */
    LMOE_STOP_CALLBACK = 5      /* a callback returned nonzero */
} lmoe_stop_reason;

/* Receives generated text as soon as it is final. text is not NUL-terminated and is valid only
 * during the call; len may be 0. token is the token whose sampling released the text. Text that
 * could be the start of a stop string is held back until it is known not to be; a stop string and
 * anything after it is never passed. Return nonzero to stop generation. */
typedef int (*lmoe_text_fn)(void *user, const char *text, size_t len, lmoe_token token);

/* Receives every sampled token id, including the EOS or BOS that ends generation, before its
 * text. Return nonzero to stop generation (that token is still counted). */
typedef int (*lmoe_token_fn)(void *user, lmoe_token token);

typedef struct lmoe_generate_params {
    size_t struct_size;       /* sizeof(lmoe_generate_params) as the caller compiled it */
    int32_t max_tokens;       /* tokens to sample at most, >= 0 (default 256) */
    int add_bos;              /* nonzero: put BOS before the prompt when the context is empty (default 1) */
    const char *const *stop_strings; /* optional array of n_stop_strings NUL-terminated strings */
    size_t n_stop_strings;
    lmoe_text_fn on_text;     /* optional: streamed text */
    lmoe_token_fn on_token;   /* optional: every sampled id */
    void *user;               /* passed to both callbacks */
} lmoe_generate_params;

typedef struct lmoe_generate_result {
    size_t struct_size;       /* filled in by the library: the bytes it wrote */
    lmoe_stop_reason stop_reason;
    uint32_t n_prompt_tokens; /* prompt tokens evaluated (BOS included) */
    uint32_t n_generated;     /* tokens sampled (a final EOS/BOS included) */
    double prompt_ms;         /* wall time spent evaluating the prompt */
    double generate_ms;       /* wall time spent sampling and evaluating generated tokens */
} lmoe_generate_result;

/* Fills *params with defaults. As lmoe_model_default_params. */
LMOE_API lmoe_status lmoe_generate_default_params(lmoe_generate_params *params, size_t params_size);

/* METHOD: lmoe_context. Tokenizes prompt (prompt_len bytes; may be 0) as a text of its own (so it
 * gets the dummy-prefix space like any text), evaluates it after what the context already holds,
 * then samples up to max_tokens tokens with sampler, evaluating each one
 * before sampling the next and adding it to the sampler's history. Stops on EOS, on BOS when the
 * model file says so, when the text contains a stop string, at max_tokens, or when a callback
 * returns nonzero; *result (optional, result_size = sizeof *result) says which and how long each
 * phase took. The token that ends generation is not evaluated, so the context holds the prompt and
 * every generated token before it. Returns LMOE_ERR_CONTEXT_FULL if the prompt does not fit
 * (nothing is evaluated) or if the context fills up during generation (what was generated so far
 * has been passed to the callbacks). */
LMOE_API lmoe_status lmoe_generate(lmoe_context *ctx, lmoe_sampler *sampler, const char *prompt,
                                   size_t prompt_len, const lmoe_generate_params *params,
                                   lmoe_generate_result *result, size_t result_size);

/* Step-wise generation, for a host that must not block (a game loop spreading the work over
 * frames, a UI thread): the same generation as lmoe_generate, but every lmoe_generation_step
 * evaluates at most one token, either the next prompt token or the token it samples. */
typedef struct lmoe_generation lmoe_generation;

/* CONSTRUCTOR: lmoe_generation. Checks params and tokenizes the prompt as lmoe_generate does, but
 * evaluates nothing. ctx and sampler must outlive the generation and not be used by anything else
 * until it is freed; params are copied, but the stop strings they point to must stay valid. The
 * callbacks in params are called from lmoe_generation_step. */
LMOE_API lmoe_status lmoe_generation_start(lmoe_context *ctx, lmoe_sampler *sampler,
                                           const char *prompt, size_t prompt_len,
                                           const lmoe_generate_params *params,
                                           lmoe_generation **out);

/* METHOD: lmoe_generation. Does the next bit of work: evaluates one prompt token, or samples a token
 * and evaluates it. *text (optional; *text_len bytes, NUL-terminated, valid until the next call)
 * receives the text this step released, which can be empty (prompt steps, text held back for a
 * stop string, incomplete UTF-8). *stopped (optional) becomes the stop reason once generation has
 * ended; further steps then do nothing. On an error (e.g. LMOE_ERR_ABORTED) nothing is lost but
 * that step's work, and the step can be retried. */
LMOE_API lmoe_status lmoe_generation_step(lmoe_generation *gen, const char **text,
                                          size_t *text_len, lmoe_stop_reason *stopped);

/* METHOD: lmoe_generation. Counts and timings so far, as lmoe_generate reports them. */
LMOE_API lmoe_status lmoe_generation_result(const lmoe_generation *gen,
                                            lmoe_generate_result *result, size_t result_size);

/* DESTRUCTOR: lmoe_generation. NULL is a harmless no-op. The context keeps what was evaluated. */
LMOE_API void lmoe_generation_free(lmoe_generation *gen);

#ifdef __cplusplus
}
#endif

#endif /* LLAMAMOE_H */
