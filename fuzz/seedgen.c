/* seedgen.c - makes the inputs of the fuzz targets with the project's own code (fuzz/run.sh runs
 * the seed commands; the regress command wrote tests/fuzz-regress/):
 *   seedgen ckpt OUT.bin             a tiny random llama2.c checkpoint (dim 16, 1 layer, vocab
 *                                    512) for `llamamoe-convert llama2c OUT.bin tok512.bin`: a
 *                                    GGUF small enough (< 64 KiB) to be a whole fuzz_gguf_model
 *                                    seed
 *   seedgen state MODEL.gguf DIR     saved context states of MODEL (n_ctx 16): empty, 3 tokens,
 *                                    16 tokens (full) as DIR/seed0, seed1, seed2
 *   seedgen safetensors DIR          safetensors files: F32, F16 and BF16 tensors; a scalar and an
 *                                    empty tensor; many tensors
 *   seedgen pytorch DIR              torch.save zips (tests/torch_writer.c): protocol 2 with Float,
 *                                    Half and BFloat16 storages and a view; protocol 4 with a
 *                                    byteorder record; nn.Parameters with ZIP64 extra fields
 *   seedgen spm DIR                  SentencePiece tokenizer.model protobufs: special, byte,
 *                                    normal, user-defined and unused pieces; one without bytes
 *   seedgen json DIR                 JSON like config.json, index files and safetensors headers
 *   seedgen regress MODEL.gguf DIR   hostile inputs, DIR/<target>/<what-it-is> (each < 4 KiB)
 * Each seed is read back by its reader before it is written: a seed the reader refuses would
 * only exercise an error path, so that is an error here. */
#define _POSIX_C_SOURCE 200809L /* mkdir */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "json.h"
#include "llamamoe.h"
#include "seedgen.h"
#include "tokenizer_import.h"

static int write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return perror(path), 1;
    int bad = fwrite(data, 1, size, f) != size;
    bad |= fclose(f) != 0;
    if (bad) perror(path);
    return bad;
}

int write_in(const char *dir, const char *name, tw_bytes *b) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int rc = write_file(path, b->data, b->len);
    tw_bytes_free(b);
    return rc;
}

/* A seed its reader refuses is a bug here: says which, and fails. */
static int refused(const char *what, const char *name) {
    fprintf(stderr, "seedgen: the %s reader refuses seed %s: %s\n", what, name, lmoe_last_error());
    return 1;
}

/* ---------------------------------------------------------------------------------------------
 * GGUF and saved states (through the library)
 * ------------------------------------------------------------------------------------------- */

static int make_ckpt(const char *out) {
    /* legacy llama2.c header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab, seq_len */
    const int32_t dim = 16, hidden = 32, layers = 1, heads = 2, kv_heads = 2, vocab = 512,
                  seq = 16;
    const int32_t head = dim / heads, kv_dim = head * kv_heads;
    size_t n = (size_t)vocab * dim                                   /* token embedding */
               + (size_t)layers * (dim + dim * dim + 2 * dim * kv_dim + dim * dim) /* attn */
               + (size_t)layers * (dim + 3 * (size_t)hidden * dim)  /* ffn */
               + dim                                                 /* final norm */
               + (size_t)seq * head;                                 /* legacy RoPE tables */
    size_t bytes = 28 + n * 4;
    uint8_t *buf = malloc(bytes);
    if (!buf) return 1;
    int32_t h[7] = {dim, hidden, layers, heads, kv_heads, vocab, seq};
    memcpy(buf, h, sizeof h);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        float v = ((float)(x >> 8) / 16777216.0f - 0.5f) * 0.2f;
        memcpy(buf + 28 + i * 4, &v, 4);
    }
    int rc = write_file(out, buf, bytes);
    free(buf);
    return rc;
}

static int save_state(lmoe_context *ctx, const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (lmoe_context_state_save_file(ctx, path) != LMOE_OK) {
        fprintf(stderr, "seedgen: %s: %s\n", path, lmoe_last_error());
        return 1;
    }
    return 0;
}

int open_model(const char *model_path, lmoe_model **model, lmoe_context **ctx) {
    *model = NULL;
    *ctx = NULL;
    if (lmoe_model_load(model_path, NULL, model) != LMOE_OK) {
        fprintf(stderr, "seedgen: %s: %s\n", model_path, lmoe_last_error());
        return 1;
    }
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 16;
    cp.n_threads = 1;
    if (lmoe_context_create(*model, &cp, ctx) != LMOE_OK) {
        fprintf(stderr, "seedgen: %s\n", lmoe_last_error());
        lmoe_model_free(*model);
        return 1;
    }
    return 0;
}

static int make_states(const char *model_path, const char *dir) {
    lmoe_model *model;
    lmoe_context *ctx;
    if (open_model(model_path, &model, &ctx)) return 1;
    int rc = 1;
    if (save_state(ctx, dir, "seed0")) goto done;
    lmoe_token toks[64];
    size_t n = 0;
    static const char text[] = "Once upon a time there was a little girl who liked to play";
    if (lmoe_tokenize(model, text, sizeof text - 1, 1, toks, 64, &n) != LMOE_OK) n = 0;
    if (n > 16) n = 16;
    while (n < 16) toks[n++] = 1; /* pad to a full context */
    if (lmoe_eval(ctx, toks, 3) != LMOE_OK) goto done;
    if (save_state(ctx, dir, "seed1")) goto done;
    if (lmoe_eval(ctx, toks + 3, 13) != LMOE_OK) goto done;
    if (save_state(ctx, dir, "seed2")) goto done;
    rc = 0;
done:
    if (rc) fprintf(stderr, "seedgen: %s\n", lmoe_last_error());
    lmoe_context_free(ctx);
    lmoe_model_free(model);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * safetensors
 * ------------------------------------------------------------------------------------------- */

static const float F32_VALUES[6] = {0, 1, 2, 3, 4, 5};
static const uint16_t F16_VALUES[4] = {0x3C00, 0xC000, 0x3800, 0x0000};  /* 1, -2, 0.5, 0 */
static const uint16_t BF16_VALUES[4] = {0x3F80, 0x4000, 0xBF80, 0x3F00}; /* 1, 2, -1, 0.5 */

static int st_seed(const char *dir, const char *name, const char *json, const void *data,
                   size_t len) {
    tw_bytes b = tw_make_safetensors(json, data, len);
    ckpt_file f;
    if (safetensors_parse(b.data, b.len, &f) != LMOE_OK) {
        tw_bytes_free(&b);
        return refused("safetensors", name);
    }
    ckpt_file_close(&f);
    return write_in(dir, name, &b);
}

static int make_safetensors_seeds(const char *dir) {
    uint8_t data[40];
    memcpy(data, F32_VALUES, 24);
    memcpy(data + 24, F16_VALUES, 8);
    memcpy(data + 32, BF16_VALUES, 8);
    int rc = st_seed(dir, "seed-types.safetensors",
                     "{\"__metadata__\":{\"format\":\"pt\"},"
                     "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                     "\"h\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                     "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[32,40]}}",
                     data, sizeof data);
    /* a scalar (no dims), an empty tensor, 4 dims; keys in an order other than the data's */
    rc |= st_seed(dir, "seed-shapes.safetensors",
                  "{\"e\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[4,4]},"
                  "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
                  "\"q\":{\"dtype\":\"BF16\",\"shape\":[1,1,1,2],\"data_offsets\":[4,8]},"
                  "\"__metadata__\":{}}",
                  data, 8);
    /* many names, as a sharded LLaMA-MoE checkpoint has */
    char json[4096];
    size_t at = (size_t)snprintf(json, sizeof json, "{");
    for (int i = 0; i < 16; i++)
        at += (size_t)snprintf(json + at, sizeof json - at,
                               "%s\"model.layers.%d.mlp.calculator.experts.weight_up.%d\":"
                               "{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[%d,%d]}",
                               i ? "," : "", i / 4, i % 4, 4 * i, 4 * i + 4);
    snprintf(json + at, sizeof json - at, "}");
    uint8_t many[64];
    for (int i = 0; i < 64; i++) many[i] = (uint8_t)(i * 37);
    rc |= st_seed(dir, "seed-many.safetensors", json, many, sizeof many);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * torch.save zips
 * ------------------------------------------------------------------------------------------- */

/* Two F32 tensors viewing storage 0 (one at an offset), a Half and a BFloat16 one. */
static const tw_tensor TORCH_TENSORS[] = {
    {"w", TW_FLOAT, "0", 6, 0, 2, {2, 3}, {3, 1}},
    {"v", TW_FLOAT, "0", 6, 3, 1, {3}, {1}},
    {"h", TW_HALF, "1", 4, 0, 1, {4}, {1}},
    {"b", TW_BFLOAT16, "2", 4, 0, 2, {2, 2}, {2, 1}},
};

tw_bytes torch_zip(const char *prefix, const tw_bytes *pkl, int byteorder,
                          const tw_zip_opts *o) {
    char names[6][64];
    static const char *const suffix[6] = {"data.pkl", "data/0", "data/1",
                                          "data/2",   "version", "byteorder"};
    for (int i = 0; i < 6; i++) snprintf(names[i], sizeof names[i], "%s/%s", prefix, suffix[i]);
    tw_zip_record recs[6] = {{names[0], pkl->data, pkl->len, 0},
                             {names[1], F32_VALUES, sizeof F32_VALUES, 0},
                             {names[2], F16_VALUES, sizeof F16_VALUES, 0},
                             {names[3], BF16_VALUES, sizeof BF16_VALUES, 0},
                             {names[4], "3\n", 2, 0},
                             {names[5], "little", 6, 0}};
    return tw_make_zip(recs, byteorder ? 6 : 5, o);
}

static int torch_seed(const char *dir, const char *name, const char *prefix, int proto4,
                      int as_parameter, int byteorder, const tw_zip_opts *o) {
    tw_bytes pkl = tw_make_pickle(TORCH_TENSORS, sizeof TORCH_TENSORS / sizeof TORCH_TENSORS[0],
                                  proto4, as_parameter);
    tw_bytes zip = torch_zip(prefix, &pkl, byteorder, o);
    tw_bytes_free(&pkl);
    ckpt_file f;
    if (pytorch_zip_parse(zip.data, zip.len, &f) != LMOE_OK) {
        tw_bytes_free(&zip);
        return refused("torch.save", name);
    }
    ckpt_file_close(&f);
    return write_in(dir, name, &zip);
}

static int make_pytorch_seeds(const char *dir) {
    const tw_zip_opts torch113 = {.zip64_end = 1, .align = 1};
    const tw_zip_opts zip64 = {.zip64_end = 1, .zip64_extra = 1, .align = 1};
    int rc = torch_seed(dir, "seed-proto2.pt", "archive", 0, 0, 0, &torch113);
    rc |= torch_seed(dir, "seed-proto4.pt", "archive", 1, 0, 1, &torch113);
    rc |= torch_seed(dir, "seed-param-zip64.pt", "pytorch_model", 0, 1, 0, &zip64);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * SentencePiece tokenizer.model (protobuf wire format, fields as tokenizer_import.c lists them)
 * ------------------------------------------------------------------------------------------- */

void pb_varint(tw_bytes *b, uint64_t v) {
    for (; v >= 0x80; v >>= 7) tw_put_u8(b, (unsigned)(v & 0x7F) | 0x80);
    tw_put_u8(b, (unsigned)v);
}

void pb_int(tw_bytes *b, uint32_t field, int64_t v) {
    pb_varint(b, (uint64_t)field << 3 | 0);
    pb_varint(b, (uint64_t)v);
}

void pb_len(tw_bytes *b, uint32_t field, const void *data, size_t len) {
    pb_varint(b, (uint64_t)field << 3 | 2);
    pb_varint(b, len);
    tw_put(b, data, len);
}

void pb_float(tw_bytes *b, uint32_t field, float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    pb_varint(b, (uint64_t)field << 3 | 5);
    tw_put_le(b, bits, 4);
}

void pb_piece(tw_bytes *model, const char *text, float score, int type) {
    tw_bytes p = {0};
    pb_len(&p, 1, text, strlen(text));
    pb_float(&p, 2, score);
    if (type != 1) pb_int(&p, 3, type);
    pb_len(model, 1, p.data, p.len);
    tw_bytes_free(&p);
}

typedef struct spm_opts {
    int byte_pieces;             /* <0x00>..<0xFF> and byte_fallback */
    int add_dummy_prefix, remove_extra_whitespaces;
    int64_t bos_id;
} spm_opts;

static tw_bytes make_spm(const spm_opts *o) {
    static const char *const normal[] = {
        "\xe2\x96\x81t", "he", "\xe2\x96\x81th", "\xe2\x96\x81the", "re", "er", "\xe2\x96\x81" "a",
        "\xe2\x96\x81H", "\xe2\x96\x81Hi", "in", "on", "\xe2\x96\x81" "c", "af", "\xc3\xa9", "e,",
        "\xe2\x96\x81\xe2\x96\x81", "\xe2\x96\x81", "t", "h", "e", "r", "a", "c", "f", "H", "i",
        ","};
    tw_bytes m = {0};
    pb_piece(&m, "<unk>", 0, 2);
    pb_piece(&m, "<s>", 0, 3);
    pb_piece(&m, "</s>", 0, 3);
    if (o->byte_pieces)
        for (int b = 0; b < 256; b++) {
            char text[8];
            snprintf(text, sizeof text, "<0x%02X>", b);
            pb_piece(&m, text, 0, 6);
        }
    for (size_t i = 0; i < sizeof normal / sizeof normal[0]; i++)
        pb_piece(&m, normal[i], -(float)i, 1);
    pb_piece(&m, "<|user|>", 0, 4);              /* USER_DEFINED: matched whole */
    pb_piece(&m, "\xe2\x96\x81t", 0, 5);         /* UNUSED: may repeat a piece */

    tw_bytes t = {0}; /* TrainerSpec */
    pb_int(&t, 3, 2); /* model_type BPE */
    pb_int(&t, 4, 300);
    pb_int(&t, 24, 0);
    pb_int(&t, 35, o->byte_pieces);
    pb_int(&t, 40, 0);
    pb_int(&t, 41, o->bos_id);
    pb_int(&t, 42, 2);
    pb_int(&t, 43, -1); /* pad_id: read past, a 10-byte varint */
    pb_len(&m, 2, t.data, t.len);
    tw_bytes_free(&t);

    tw_bytes n = {0}; /* NormalizerSpec, then a denormalizer the reader skips */
    pb_len(&n, 1, "identity", 8);
    pb_int(&n, 3, o->add_dummy_prefix);
    pb_int(&n, 4, o->remove_extra_whitespaces);
    pb_int(&n, 5, 1);
    pb_len(&m, 3, n.data, n.len);
    pb_len(&m, 5, n.data, n.len);
    tw_bytes_free(&n);
    return m;
}

static int spm_seed(const char *dir, const char *name, const spm_opts *o) {
    tw_bytes m = make_spm(o);
    lmoe_vocab v;
    if (spm_model_read(m.data, m.len, &v) != LMOE_OK) {
        tw_bytes_free(&m);
        return refused("tokenizer.model", name);
    }
    vocab_free(&v);
    return write_in(dir, name, &m);
}

static int make_spm_seeds(const char *dir) {
    const spm_opts llama = {.byte_pieces = 1, .add_dummy_prefix = 1, .bos_id = 1};
    const spm_opts plain = {.remove_extra_whitespaces = 1, .bos_id = -1};
    return spm_seed(dir, "seed-bytes.model", &llama) | spm_seed(dir, "seed-nobytes.model", &plain);
}

/* ---------------------------------------------------------------------------------------------
 * JSON
 * ------------------------------------------------------------------------------------------- */

static int make_json_seeds(const char *dir) {
    static const struct { const char *name, *text; } docs[] = {
        {"seed-config.json",
         "{\n  \"architectures\": [\"LlamaMoEForCausalLM\"],\n  \"hidden_size\": 64,\n"
         "  \"rms_norm_eps\": 1e-06,\n  \"rope_theta\": 10000.0,\n  \"num_experts\": 16,\n"
         "  \"gate_type\": \"mlp\",\n  \"rope_scaling\": null,\n  \"tie_word_embeddings\": false,\n"
         "  \"score_scale_factor\": 4.0,\n  \"torch_dtype\": \"bfloat16\",\n"
         "  \"size_experts\": [[16, 16], [16, 16]], \"x\": -0.5E+3\n}\n"},
        {"seed-index.json",
         "{\"metadata\": {\"total_size\": 44}, \"weight_map\": {\"a\": \"a.bin\", "
         "\"model.layers.0.mlp.gate.weight\": \"b.bin\"}}"},
        {"seed-strings.json",
         "[\"caf\\u00e9 \\ud83d\\ude00\", \"\\\"q\\\" \\\\ \\/ \\b\\f\\n\\r\\t\", \"\\u0000nul\", "
         "\"\", \"\xe2\x96\x81raw utf-8\", {\"\": {}, \"k\": [[], [true, null]]}]"},
        {"seed-header.json",
         "{\"__metadata__\":{\"format\":\"pt\"},"
         "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}"},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        json_value *v = json_parse(docs[i].text, strlen(docs[i].text));
        if (!v) {
            fprintf(stderr, "seedgen: the JSON reader refuses seed %s\n", docs[i].name);
            rc = 1;
            continue;
        }
        json_free(v);
        tw_bytes b = {0};
        tw_put_str(&b, docs[i].text);
        rc |= write_in(dir, docs[i].name, &b);
    }
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "ckpt")) return make_ckpt(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "state")) return make_states(argv[2], argv[3]);
    if (argc == 3 && !strcmp(argv[1], "safetensors")) return make_safetensors_seeds(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "pytorch")) return make_pytorch_seeds(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "spm")) return make_spm_seeds(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "json")) return make_json_seeds(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "regress")) return seedgen_regress(argv[2], argv[3]);
    fprintf(stderr, "usage: seedgen ckpt OUT.bin | state MODEL.gguf DIR | safetensors DIR | "
                    "pytorch DIR | spm DIR | json DIR | regress MODEL.gguf DIR\n");
    return 2;
}
