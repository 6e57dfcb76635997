/* quantize.c - a GGUF model's weight matrices rewritten in another type (see quantize.h). Each
 * output tensor is produced row by row while it is written: source row -> f32 -> output type. */
#include "quantize.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "progress.h"
#include "quant.h"

/* How an FFN tensor's shape changes when its width n_ff is padded. */
typedef enum ffn_role { FFN_NONE, FFN_ROWS, FFN_COLS } ffn_role;

typedef struct out_tensor {
    const gguf_tensor *src;
    ggml_type type;
    uint64_t ne[GGUF_MAX_DIMS];  /* output shape (FFN widths padded) */
    ffn_role role;
    uint64_t n_ff;               /* the source width, for FFN tensors */
} out_tensor;

static bool ends_with(gguf_str s, const char *suffix) {
    size_t n = strlen(suffix);
    return s.len >= n && memcmp(s.ptr + s.len - n, suffix, n) == 0;
}

static bool contains(gguf_str s, const char *part) {
    size_t n = strlen(part);
    for (size_t i = 0; i + n <= s.len; i++)
        if (memcmp(s.ptr + i, part, n) == 0) return true;
    return false;
}

/* FFN tensors whose rows (gate, up) or columns (down) are the n_ff neurons: of the dense FFN, the
 * routed experts, or the shared expert (which has its own width). */
static ffn_role role_of(gguf_str name) {
    static const char *const rows[] = {".ffn_gate.weight", ".ffn_up.weight", ".ffn_gate_exps.weight",
                                       ".ffn_up_exps.weight", ".ffn_gate_shexp.weight",
                                       ".ffn_up_shexp.weight"};
    static const char *const cols[] = {".ffn_down.weight", ".ffn_down_exps.weight",
                                       ".ffn_down_shexp.weight"};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (ends_with(name, rows[i])) return FFN_ROWS;
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        if (ends_with(name, cols[i])) return FFN_COLS;
    return FFN_NONE;
}

/* An FFN's width before and after padding to whole blocks. */
typedef struct ffn_width {
    uint32_t in, out;
} ffn_width;

static bool is_block_type(ggml_type t) {
    return t == GGML_TYPE_Q8_0 || t == GGML_TYPE_Q4_0 || ggml_type_is_r16(t);
}

static void plan_tensor(const gguf_tensor *t, ggml_type target, ffn_width ffn, ffn_width shexp,
                        out_tensor *o) {
    o->src = t;
    memcpy(o->ne, t->ne, sizeof o->ne);
    o->role = role_of(t->name);
    ffn_width width = contains(t->name, "_shexp.") ? shexp : ffn;
    uint64_t n_ff = width.in, n_ff_out = width.out;
    o->n_ff = n_ff;
    if (o->role == FFN_ROWS && t->ne[1] == n_ff) o->ne[1] = n_ff_out;
    else if (o->role == FFN_COLS && t->ne[0] == n_ff) o->ne[0] = n_ff_out;
    else o->role = FFN_NONE;
    /* norms, biases, gates: f32; everything else the target, or f16 where rows are not blocks */
    if (t->n_dims == 1 || contains(t->name, "ffn_gate_inp"))
        o->type = GGML_TYPE_F32;
    else if (is_block_type(target) && o->ne[0] % LMOE_QK != 0)
        o->type = GGML_TYPE_F16;
    else if (ggml_type_is_r16(target) && o->ne[1] % LMOE_R16_ROWS != 0)
        /* not whole groups of rows: the same values, not interleaved */
        o->type = target == LMOE_TYPE_Q4_0_R16 ? GGML_TYPE_Q4_0 : GGML_TYPE_Q8_0;
    else
        o->type = target;
}

/* Row r (over all dimensions above the first) of a source tensor as f32. */
static void source_row(const gguf_tensor *t, uint64_t r, float *out) {
    lmoe_matrix_row_to_f32(t->type, t->data, (size_t)r, (size_t)t->ne[0], out);
}


static lmoe_status fill(void *user, void *dst, size_t n_bytes) {
    const out_tensor *o = user;
    size_t out_cols = (size_t)o->ne[0], in_cols = (size_t)o->src->ne[0];
    size_t out_row_bytes = out_cols / ggml_type_block_elems(o->type) * ggml_type_block_bytes(o->type);
    uint64_t rows_per_matrix = o->ne[1], matrices = o->ne[2] * o->ne[3];
    RETURN_ERROR_IF(out_row_bytes * rows_per_matrix * matrices != n_bytes, LMOE_ERR_INTERNAL,
                    "quantize: size mismatch");
    /* rows converted together: a Q4_0_R16 group, else one */
    size_t batch = ggml_type_is_r16(o->type) ? LMOE_R16_ROWS : 1;
    size_t width = out_cols > in_cols ? out_cols : in_cols;
    float *rows = calloc(batch * width, sizeof(float));
    RETURN_ERROR_IF(!rows, LMOE_ERR_OUT_OF_MEMORY, "quantize: out of memory");
    for (uint64_t m = 0; m < matrices; m++) {
        for (uint64_t r0 = 0; r0 < rows_per_matrix; r0 += batch) {
            memset(rows, 0, batch * width * sizeof(float));
            /* padded neurons (rows past the source's) stay zero */
            for (uint64_t r = r0; r < r0 + batch; r++)
                if (r < o->src->ne[1])
                    source_row(o->src, m * o->src->ne[1] + r, rows + (r - r0) * out_cols);
            char *out = (char *)dst + (m * rows_per_matrix + r0) * out_row_bytes;
            if (ggml_type_is_r16(o->type))
                lmoe_quantize_rows_r16(o->type, rows, out, out_cols);
            else
                lmoe_row_from_f32(o->type, rows, out, out_cols);
        }
    }
    free(rows);
    return LMOE_OK;
}

static void on_written(void *user, size_t index, size_t count, const char *name, uint64_t bytes) {
    (void)bytes;
    if ((index + 1) % 50 == 0 || index + 1 == count)
        report((const quantize_options *)user, "written %zu/%zu tensors (last %s)", index + 1,
               count, name);
}

/* "<arch>.<suffix>" (the architecture from general.architecture) into key. */
static lmoe_status arch_key(const gguf_file *f, const char *suffix, char *key, size_t key_size) {
    gguf_str arch = {"", 0};
    if (gguf_find_kv(f, "general.architecture"))
        FORWARD_IF_ERROR(gguf_get_str(f, "general.architecture", &arch));
    snprintf(key, key_size, "%.*s.%s", (int)(arch.len > 64 ? 64 : arch.len), arch.ptr, suffix);
    return LMOE_OK;
}

/* An FFN width key (0 when absent: a vocabulary-only file, no shared expert) and the width it is
 * padded to for the output type; the padded width replaces it, the original is kept under
 * unpadded_key. */
static lmoe_status plan_width(const gguf_file *f, const char *key, const char *unpadded_key,
                              const quantize_options *o, gguf_writer *w, ffn_width *width) {
    width->in = 0;
    FORWARD_IF_ERROR(gguf_get_u32_opt(f, key, &width->in));
    width->out = width->in;
    if (is_block_type(o->type) && width->in % LMOE_QK)
        width->out = (width->in + LMOE_QK - 1) / LMOE_QK * LMOE_QK;
    if (width->in) FORWARD_IF_ERROR(gguf_writer_set_u32(w, key, width->out));
    if (width->out != width->in) {
        FORWARD_IF_ERROR(gguf_writer_set_u32(w, unpadded_key, width->in));
        report(o, "%s %u is not a multiple of %d: padded to %u with zero neurons (exact)", key,
               width->in, LMOE_QK, width->out);
    }
    return LMOE_OK;
}

static lmoe_status quantize_file(const gguf_file *f, const char *out_path,
                                 const quantize_options *o, out_tensor **plan, gguf_writer **w) {
    RETURN_ERROR_IF(o->type != GGML_TYPE_Q8_0 && o->type != GGML_TYPE_Q4_0 &&
                        !ggml_type_is_r16(o->type) && o->type != GGML_TYPE_F16 &&
                        o->type != GGML_TYPE_BF16 && o->type != GGML_TYPE_F32,
                    LMOE_ERR_INVALID_ARGUMENT,
                    "quantize: --type must be q8_0, q4_0, q8_0_r16, q4_0_r16, bf16 or f16");
    char ff_key[128], shexp_key[128];
    static const char ff_unpadded[] = "llamamoe.feed_forward_length_unpadded";
    static const char shexp_unpadded[] = "llamamoe.expert_shared_feed_forward_length_unpadded";
    FORWARD_IF_ERROR(arch_key(f, "feed_forward_length", ff_key, sizeof ff_key));
    FORWARD_IF_ERROR(arch_key(f, "expert_shared_feed_forward_length", shexp_key, sizeof shexp_key));

    FORWARD_IF_ERROR(gguf_writer_create(w));
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (gguf_str_eq(kv->key, ff_key) || gguf_str_eq(kv->key, ff_unpadded) ||
            gguf_str_eq(kv->key, shexp_key) || gguf_str_eq(kv->key, shexp_unpadded))
            continue;
        FORWARD_IF_ERROR(gguf_writer_copy_kv(*w, kv));
    }
    ffn_width ffn, shexp;
    FORWARD_IF_ERROR(plan_width(f, ff_key, ff_unpadded, o, *w, &ffn));
    FORWARD_IF_ERROR(plan_width(f, shexp_key, shexp_unpadded, o, *w, &shexp));
    *plan = calloc(f->n_tensors ? f->n_tensors : 1, sizeof **plan);
    RETURN_ERROR_IF(!*plan, LMOE_ERR_OUT_OF_MEMORY, "quantize: out of memory");
    uint64_t bytes_in = 0, bytes_out = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        out_tensor *t = &(*plan)[i];
        plan_tensor(&f->tensors[i], o->type, ffn, shexp, t);
        char name[4097];
        snprintf(name, sizeof name, "%.*s", (int)f->tensors[i].name.len, f->tensors[i].name.ptr);
        FORWARD_IF_ERROR(gguf_writer_add_tensor_fill(*w, name, t->type, f->tensors[i].n_dims,
                                                     t->ne, fill, t));
        bytes_in += f->tensors[i].n_bytes;
        uint64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
        bytes_out += n / ggml_type_block_elems(t->type) * ggml_type_block_bytes(t->type);
    }
    report(o, "%llu tensors: %.1f MB -> %.1f MB (%s for the weight matrices%s)",
           (unsigned long long)f->n_tensors, (double)bytes_in / 1e6, (double)bytes_out / 1e6,
           ggml_type_name(o->type),
           o->type == LMOE_TYPE_Q4_0_R16   ? "; q4_0 where rows are not whole groups of 16"
           : o->type == LMOE_TYPE_Q8_0_R16 ? "; q8_0 where rows are not whole groups of 16"
                                           : "");
    gguf_writer_set_progress(*w, on_written, (void *)o);
    return gguf_writer_write(*w, out_path);
}

lmoe_status gguf_quantize(const char *in_path, const char *out_path,
                          const quantize_options *options) {
    gguf_file *f = NULL;
    FORWARD_IF_ERROR(gguf_open(in_path, &f));
    out_tensor *plan = NULL;
    gguf_writer *w = NULL;
    lmoe_status st = quantize_file(f, out_path, options, &plan, &w);
    gguf_writer_free(w);
    free(plan);
    gguf_close(f);
    return st;
}
