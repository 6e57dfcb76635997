/* test_hf_convert.c - `llamamoe-convert hf` end to end on hand-written Hugging Face folders, and
 * the CLI's --routing and --chat.
 *
 * 1. Dense LLaMA: Karpathy's stories260K (llama2.c, adjacent-pair RoPE rows) rewritten as a
 *    Hugging Face folder (rotate-half q/k rows: HF row i = llama2.c row 2i, HF row i + d/2 =
 *    llama2.c row 2i + 1 within each head; tied embeddings; tok512.model). Converted with `hf`:
 *    every tensor equals the llama2c-converted GGUF's bit for bit, logits of positions 0..7 are
 *    within 1e-4 of run.c's, 50 greedy tokens from BOS equal run.c's first reference run. The same
 *    folder with the q/k rows NOT permuted converts too, and its logits differ by more than 1e-3:
 *    the permutation is what makes the first result right.
 * 2. Mixture of experts, one set of seeded random weights written twice: as a Mixtral folder
 *    (block_sparse_moe) and as a LLaMA-MoE v1 folder with a linear gate and score scale 1 (plus
 *    the inv_freq and weight_noise tensors the converter must skip). Both become
 *    general.architecture "llama" with the same logits (1e-5) and routing. Score scale 2 and a
 *    per-layer [1, 3] give "llama_moe" with the scale stored (scalar / array) and applied.
 *    Refusals: an unknown tensor, rope_scaling, no tokenizer.model.
 * 3. tiny-llama-moe-2_8 converted with --type f16: matrices f16, about half the f32 bytes,
 *    last-position logits of the first golden prompt within 2e-3 of golden.json, same top-1.
 * 4. llamamoe-cli --routing (a per-layer table that matches the library's counts; "dense" for a
 *    dense model), --chat (refused without a recorded chat format; with --chat vicuna the output
 *    is the greedy continuation of the Vicuna v1.1 prompt), and the automatic vicuna_v1.1 for a
 *    model whose name says "sft".
 *
 * argv[1] = llamamoe-convert, argv[2] = llamamoe-cli. */
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gguf.h"
#include "json.h"
#include "llamamoe.h"
#include "test_util.h"

#define N_CTX 128

static const char *convert_tool, *cli_tool;

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* llamamoe-convert hf DIR -o OUT [--type TYPE] [--chat CHAT]; stdout and stderr into *output
 * (optional). Returns the exit status. */
static int convert_hf(const char *dir, const char *out_path, const char *type, const char *chat,
                      char **output) {
    unlink(out_path);
    char *argv[12];
    int n = 0;
    argv[n++] = (char *)convert_tool;
    argv[n++] = "hf";
    argv[n++] = (char *)dir;
    argv[n++] = "-o";
    argv[n++] = (char *)out_path;
    if (type) {
        argv[n++] = "--type";
        argv[n++] = (char *)type;
    }
    if (chat) {
        argv[n++] = "--chat";
        argv[n++] = (char *)chat;
    }
    argv[n] = NULL;
    char *out = NULL;
    size_t len = 0;
    int status = test_run_merged(argv, &out, &len);
    if (output) *output = out;
    else free(out);
    return status;
}

/* Converts and loads; NULL (with a failed check) if either fails. */
static lmoe_model *convert_and_load(const char *dir, const char *out_path, const char *type,
                                    const char *chat) {
    char *out = NULL;
    int status = convert_hf(dir, out_path, type, chat, &out);
    CHECK_MSG(status == 0, "converting %s: llamamoe-convert exited with %d:\n%s", dir, status,
              out ? out : "");
    free(out);
    lmoe_model *m = NULL;
    if (status == 0) CHECK_OK(lmoe_model_load(out_path, NULL, &m));
    return m;
}

/* Expects `hf` to fail with a message containing word, leaving no output file. */
static void expect_convert_error(const char *dir, const char *label, const char *word) {
    char out_path[4096];
    test_fmt(out_path, sizeof out_path, "%s.gguf", dir);
    char *out = NULL;
    int status = convert_hf(dir, out_path, "f32", NULL, &out);
    const char *text = out ? out : "";
    const char *err = strstr(text, "error:");
    printf("%s: exit %d: %.*s\n", label, status, err ? (int)strcspn(err, "\n") : 0, err ? err : "");
    CHECK_MSG(status > 0, "%s: llamamoe-convert exited with %d, expected a failure", label, status);
    CHECK_MSG(!file_exists(out_path), "%s: %s exists after a failed conversion", label, out_path);
    CHECK_MSG(strstr(text, word) != NULL, "%s: the message does not name '%s':\n%s", label, word,
              text);
    free(out);
}

/* The value of a metadata key as text, or "<absent>". */
static const char *meta(const lmoe_model *m, const char *key) {
    static char buf[256];
    if (lmoe_model_meta_string(m, key, buf, sizeof buf, NULL) != LMOE_OK) return "<absent>";
    return buf;
}

static lmoe_context *make_ctx(const lmoe_model *m, lmoe_routing_fn fn, void *user) {
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = N_CTX;
    cp.n_threads = 1;
    cp.routing_fn = fn;
    cp.routing_user = user;
    lmoe_context *ctx = NULL;
    CHECK_OK(lmoe_context_create(m, &cp, &ctx));
    return ctx;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (isnan(d)) d = INFINITY;
        if (d > m) m = d;
    }
    return m;
}

static const char *config_text_write(const char *dir, const char *text) {
    static char path[4096];
    test_fmt(path, sizeof path, "%s/config.json", dir);
    return test_write_file(path, text, strlen(text)) == 0 ? path : NULL;
}

/* ------------------------------------------------------------------------------------------------
 * 1. dense LLaMA: stories260K as a Hugging Face folder
 * ---------------------------------------------------------------------------------------------- */

#define ST_DIM 64
#define ST_HIDDEN 172
#define ST_LAYERS 5
#define ST_HEADS 8
#define ST_KV_HEADS 4
#define ST_VOCAB 512
#define ST_SEQ 512
#define ST_HEAD_DIM (ST_DIM / ST_HEADS)
#define ST_KV_DIM (ST_KV_HEADS * ST_HEAD_DIM)

typedef struct stories {
    float *all; /* the float32 body of the checkpoint, owned */
    const float *embd, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final;
} stories;

static int stories_read(stories *s) {
    memset(s, 0, sizeof *s);
    size_t size = 0;
    char *file = test_read_file(test_model_path("stories260K.bin"), &size);
    if (!file || size < 28) {
        free(file);
        return -1;
    }
    int32_t hdr[7];
    memcpy(hdr, file, sizeof hdr);
    const int32_t want[7] = {ST_DIM, ST_HIDDEN, ST_LAYERS, ST_HEADS, ST_KV_HEADS, ST_VOCAB, ST_SEQ};
    size_t n_floats = (size - 28) / 4;
    size_t need = (size_t)ST_VOCAB * ST_DIM + 2 * ST_LAYERS * ST_DIM +
                  (size_t)ST_LAYERS * (2 * ST_DIM * ST_DIM + 2 * ST_KV_DIM * ST_DIM) +
                  3 * (size_t)ST_LAYERS * ST_HIDDEN * ST_DIM + ST_DIM;
    if (memcmp(hdr, want, sizeof hdr) != 0 || n_floats < need) {
        fprintf(stderr, "stories260K.bin: unexpected header or size %zu\n", size);
        free(file);
        return -1;
    }
    s->all = malloc(n_floats * sizeof(float));
    if (!s->all) {
        free(file);
        return -1;
    }
    memcpy(s->all, file + 28, n_floats * sizeof(float));
    free(file);
    const float *p = s->all;
    s->embd = p, p += ST_VOCAB * ST_DIM;
    s->rms_att = p, p += ST_LAYERS * ST_DIM;
    s->wq = p, p += ST_LAYERS * ST_DIM * ST_DIM;
    s->wk = p, p += ST_LAYERS * ST_KV_DIM * ST_DIM;
    s->wv = p, p += ST_LAYERS * ST_KV_DIM * ST_DIM;
    s->wo = p, p += ST_LAYERS * ST_DIM * ST_DIM;
    s->rms_ffn = p, p += ST_LAYERS * ST_DIM;
    s->w1 = p, p += ST_LAYERS * ST_HIDDEN * ST_DIM;
    s->w2 = p, p += ST_LAYERS * ST_DIM * ST_HIDDEN;
    s->w3 = p, p += ST_LAYERS * ST_HIDDEN * ST_DIM;
    s->rms_final = p;
    return 0;
}

/* llama2.c rows (adjacent pairs) to Hugging Face rows (rotate-half), head by head. */
static void to_rotate_half(const float *src, float *dst, int n_head) {
    const int d = ST_HEAD_DIM, half = ST_HEAD_DIM / 2;
    for (int h = 0; h < n_head; h++)
        for (int i = 0; i < half; i++) {
            memcpy(dst + (size_t)(h * d + i) * ST_DIM, src + (size_t)(h * d + 2 * i) * ST_DIM,
                   ST_DIM * sizeof(float));
            memcpy(dst + (size_t)(h * d + half + i) * ST_DIM,
                   src + (size_t)(h * d + 2 * i + 1) * ST_DIM, ST_DIM * sizeof(float));
        }
}

static int stories_write_hf(const stories *s, const char *dir, bool permute) {
    mkdir(dir, 0755);
    static char names[64][96];
    test_st_tensor t[64];
    size_t n = 0;
    float *qk = malloc((size_t)ST_LAYERS * (ST_DIM + ST_KV_DIM) * ST_DIM * sizeof(float));
    if (!qk) return -1;
#define ADD(dims, d0, d1, ptr, ...)                                                                 \
    do {                                                                                            \
        test_fmt(names[n], sizeof names[n], __VA_ARGS__);                                                \
        t[n] = (test_st_tensor){names[n], "F32", dims, {d0, d1, 0, 0}, ptr};                        \
        n++;                                                                                        \
    } while (0)
    ADD(2, ST_VOCAB, ST_DIM, s->embd, "model.embed_tokens.weight");
    for (int l = 0; l < ST_LAYERS; l++) {
        const float *wq = s->wq + (size_t)l * ST_DIM * ST_DIM;
        const float *wk = s->wk + (size_t)l * ST_KV_DIM * ST_DIM;
        float *q = qk + (size_t)l * (ST_DIM + ST_KV_DIM) * ST_DIM, *k = q + ST_DIM * ST_DIM;
        if (permute) {
            to_rotate_half(wq, q, ST_HEADS);
            to_rotate_half(wk, k, ST_KV_HEADS);
        } else {
            memcpy(q, wq, (size_t)ST_DIM * ST_DIM * sizeof(float));
            memcpy(k, wk, (size_t)ST_KV_DIM * ST_DIM * sizeof(float));
        }
        ADD(2, ST_DIM, ST_DIM, q, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(2, ST_KV_DIM, ST_DIM, k, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(2, ST_KV_DIM, ST_DIM, s->wv + (size_t)l * ST_KV_DIM * ST_DIM,
            "model.layers.%d.self_attn.v_proj.weight", l);
        ADD(2, ST_DIM, ST_DIM, s->wo + (size_t)l * ST_DIM * ST_DIM,
            "model.layers.%d.self_attn.o_proj.weight", l);
        ADD(2, ST_HIDDEN, ST_DIM, s->w1 + (size_t)l * ST_HIDDEN * ST_DIM,
            "model.layers.%d.mlp.gate_proj.weight", l);
        ADD(2, ST_HIDDEN, ST_DIM, s->w3 + (size_t)l * ST_HIDDEN * ST_DIM,
            "model.layers.%d.mlp.up_proj.weight", l);
        ADD(2, ST_DIM, ST_HIDDEN, s->w2 + (size_t)l * ST_DIM * ST_HIDDEN,
            "model.layers.%d.mlp.down_proj.weight", l);
        ADD(1, ST_DIM, 0, s->rms_att + (size_t)l * ST_DIM, "model.layers.%d.input_layernorm.weight", l);
        ADD(1, ST_DIM, 0, s->rms_ffn + (size_t)l * ST_DIM,
            "model.layers.%d.post_attention_layernorm.weight", l);
    }
    ADD(1, ST_DIM, 0, s->rms_final, "model.norm.weight");
#undef ADD
    char path[4096];
    test_fmt(path, sizeof path, "%s/model.safetensors", dir);
    int rc = test_write_safetensors(path, t, n);
    free(qk);
    static const char cfg[] =
        "{\n"
        "  \"architectures\": [\"LlamaForCausalLM\"],\n"
        "  \"bos_token_id\": 1,\n"
        "  \"eos_token_id\": 2,\n"
        "  \"hidden_act\": \"silu\",\n"
        "  \"hidden_size\": 64,\n"
        "  \"intermediate_size\": 172,\n"
        "  \"max_position_embeddings\": 512,\n"
        "  \"model_type\": \"llama\",\n"
        "  \"num_attention_heads\": 8,\n"
        "  \"num_hidden_layers\": 5,\n"
        "  \"num_key_value_heads\": 4,\n"
        "  \"rms_norm_eps\": 1e-05,\n"
        "  \"rope_scaling\": null,\n"
        "  \"rope_theta\": 10000.0,\n"
        "  \"tie_word_embeddings\": true,\n"
        "  \"torch_dtype\": \"float32\",\n"
        "  \"vocab_size\": 512\n"
        "}\n";
    rc |= config_text_write(dir, cfg) ? 0 : -1;
    test_fmt(path, sizeof path, "%s/tokenizer.model", dir);
    rc |= test_copy_file(test_model_path("tok512.model"), path);
    return rc;
}

/* Logits of positions 0..7 fed the reference ids one at a time: max |diff| from run.c's. */
static double stories_logit_diff(const lmoe_model *m, const lmoe_token *ids, const float *ref) {
    lmoe_context *ctx = make_ctx(m, NULL, NULL);
    double max_d = ctx ? 0 : INFINITY;
    for (int pos = 0; ctx && pos < 8; pos++) {
        lmoe_status st = lmoe_eval(ctx, &ids[pos], 1);
        CHECK_MSG(st == LMOE_OK, "eval pos %d: %s", pos, lmoe_last_error());
        const float *lg = lmoe_logits(ctx);
        if (st != LMOE_OK || !lg) {
            max_d = INFINITY;
            break;
        }
        double d = max_abs_diff(lg, ref + (size_t)pos * ST_VOCAB, ST_VOCAB);
        if (d > max_d) max_d = d;
    }
    lmoe_context_free(ctx);
    return max_d;
}

/* Greedy decoding from BOS with lmoe_eval + argmax (the HF file does not stop on BOS, so
 * lmoe_generate is not used); writes n + 1 ids (BOS first). */
static void greedy_from_bos(const lmoe_model *m, lmoe_token *out, int n) {
    lmoe_context *ctx = make_ctx(m, NULL, NULL);
    out[0] = 1;
    for (int i = 0; i < n; i++) out[i + 1] = -1;
    for (int i = 0; ctx && i < n; i++) {
        if (lmoe_eval(ctx, &out[i], 1) != LMOE_OK || !lmoe_logits(ctx)) {
            CHECK_MSG(false, "greedy eval %d: %s", i, lmoe_last_error());
            break;
        }
        out[i + 1] = test_argmax(lmoe_logits(ctx), ST_VOCAB);
    }
    lmoe_context_free(ctx);
}

/* Every tensor of the llama2c conversion equals the HF conversion's of the same name, bit for
 * bit; returns the number of tensors compared (-1 on failure to open). */
static int compare_with_llama2c(const char *hf_gguf, const char *l2c_gguf) {
    gguf_file *a = NULL, *b = NULL;
    lmoe_status sa = gguf_open(hf_gguf, &a), sb = gguf_open(l2c_gguf, &b);
    CHECK_MSG(sa == LMOE_OK && sb == LMOE_OK, "cannot open %s / %s: %s", hf_gguf, l2c_gguf,
              lmoe_last_error());
    int compared = -1;
    if (a && b) {
        compared = 0;
        CHECK_MSG(a->n_tensors == b->n_tensors, "HF conversion has %llu tensors, llama2c %llu",
                  (unsigned long long)a->n_tensors, (unsigned long long)b->n_tensors);
        for (uint64_t i = 0; i < b->n_tensors; i++) {
            const gguf_tensor *tb = &b->tensors[i];
            char name[128];
            test_fmt(name, sizeof name, "%.*s", (int)tb->name.len, tb->name.ptr);
            const gguf_tensor *ta = gguf_find_tensor(a, name);
            CHECK_MSG(ta != NULL, "HF conversion lacks tensor %s", name);
            if (!ta) continue;
            bool same = ta->type == tb->type && ta->n_dims == tb->n_dims &&
                        ta->n_bytes == tb->n_bytes &&
                        memcmp(ta->ne, tb->ne, sizeof ta->ne) == 0 &&
                        memcmp(ta->data, tb->data, (size_t)tb->n_bytes) == 0;
            CHECK_MSG(same, "tensor %s differs between the HF and the llama2c conversion", name);
            compared++;
        }
    }
    gguf_close(a);
    gguf_close(b);
    return compared;
}

/* Returns the path of the dense GGUF (static) for part 4, or NULL. */
static const char *test_dense(void) {
    static char gguf[4096];
    stories s;
    int rc = stories_read(&s);
    CHECK_MSG(rc == 0, "cannot read stories260K.bin");
    if (rc != 0) return NULL;
    size_t ref_size = 0;
    float *ref = (float *)test_read_file(test_model_path("stories260K-greedy-logits-pos0-7.f32"),
                                         &ref_size);
    size_t json_len = 0;
    char *json_text = test_read_file(test_model_path("stories260K-reference.json"), &json_len);
    json_value *root = json_text ? json_parse(json_text, json_len) : NULL;
    free(json_text);
    lmoe_token ref_ids[64];
    size_t n_ref = 0;
    const json_value *ids = root && root->kind == JSON_ARRAY && root->n_items > 0
                                ? json_get(&root->items[0], "ids")
                                : NULL;
    for (size_t i = 0; ids && ids->kind == JSON_ARRAY && i < ids->n_items && n_ref < 64; i++)
        ref_ids[n_ref++] = (lmoe_token)ids->items[i].number;
    json_free(root);
    CHECK_MSG(ref && ref_size == 8 * ST_VOCAB * sizeof(float) && n_ref >= 51 && ref_ids[0] == 1,
              "reference data: logits %zu bytes, %zu ids", ref_size, n_ref);
    const char *result = NULL;
    if (!ref || ref_size != 8 * ST_VOCAB * sizeof(float) || n_ref < 51) goto done;

    for (int variant = 0; variant < 2; variant++) {
        bool permute = variant == 0;
        const char *name = permute ? "hf-stories260K" : "hf-stories260K-unpermuted";
        char dir[4096], out[4096];
        test_fmt(dir, sizeof dir, "%s", test_tmp_path(name));
        test_fmt(out, sizeof out, "%s.gguf", dir);
        CHECK_MSG(stories_write_hf(&s, dir, permute) == 0, "%s: cannot write the folder", name);
        lmoe_model *m = convert_and_load(dir, out, NULL, NULL);
        if (!m) continue;
        double d = stories_logit_diff(m, ref_ids, ref);
        lmoe_token greedy[51];
        greedy_from_bos(m, greedy, 50);
        int same = 0;
        while (same < 50 && greedy[same + 1] == ref_ids[same + 1]) same++;
        if (permute) {
            lmoe_model_info info;
            CHECK_OK(lmoe_model_get_info(m, &info, sizeof info));
            CHECK_MSG(strcmp(info.architecture, "llama") == 0 && info.n_expert == 0 &&
                      info.n_embd == ST_DIM && info.n_layer == ST_LAYERS &&
                      info.n_head == ST_HEADS && info.n_head_kv == ST_KV_HEADS &&
                      info.n_ff == ST_HIDDEN && info.n_vocab == ST_VOCAB &&
                      info.n_params == 260032,
                      "dense HF: arch %s experts %d embd %d layers %d heads %d/%d ff %d vocab %d "
                      "params %llu", info.architecture, info.n_expert, info.n_embd, info.n_layer,
                      info.n_head, info.n_head_kv, info.n_ff, info.n_vocab,
                      (unsigned long long)info.n_params);
            CHECK_MSG(strcmp(meta(m, "llamamoe.stop_on_bos"), "<absent>") == 0 ||
                      strcmp(meta(m, "llamamoe.stop_on_bos"), "false") == 0,
                      "dense HF: llamamoe.stop_on_bos = %s", meta(m, "llamamoe.stop_on_bos"));
            printf("dense HF (permuted q/k): logits pos 0..7 max |diff| from run.c %.3g; greedy "
                   "%d/50 tokens equal\n", d, same);
            CHECK_MSG(d <= 1e-4, "dense HF: logits differ from run.c by %g", d);
            CHECK_MSG(same == 50, "dense HF: greedy run differs from run.c at generated token %d "
                      "(%d vs %d)", same, (int)greedy[same + 1], (int)ref_ids[same + 1]);
            const char *l2c = test_stories_gguf("hf-stories260K-llama2c.gguf");
            int compared = l2c ? compare_with_llama2c(out, l2c) : -1;
            CHECK_MSG(compared == 2 + 9 * ST_LAYERS, "compared %d tensors with the llama2c "
                      "conversion, expected %d", compared, 2 + 9 * ST_LAYERS);
            test_summary("%-34s logits %.2e  greedy %d/50  tensors == llama2c: %d", "dense HF stories260K",
                    d, same, compared);
            test_fmt(gguf, sizeof gguf, "%s", out);
            result = gguf;
        } else {
            printf("dense HF (q/k NOT permuted): logits pos 0..7 max |diff| from run.c %.3g; "
                   "greedy %d/50 tokens equal\n", d, same);
            CHECK_MSG(d > 1e-3, "unpermuted q/k: logits differ from run.c by only %g: the test "
                      "does not see the permutation", d);
            test_summary("%-34s logits %.2e (must be > 1e-3)  greedy %d/50", "dense HF unpermuted q/k",
                    d, same);
        }
        lmoe_model_free(m);
    }
done:
    free(ref);
    free(s.all);
    return result;
}

/* ------------------------------------------------------------------------------------------------
 * 2. Mixtral folder vs LLaMA-MoE folder
 * ---------------------------------------------------------------------------------------------- */

#define M_H 32
#define M_L 2
#define M_HEADS 4
#define M_HD (M_H / M_HEADS)
#define M_FF 16
#define M_E 8
#define M_K 2
#define M_V 512
#define M_POS 8

static struct {
    float embd[M_V][M_H], lm_head[M_V][M_H], norm[M_H];
    struct {
        float attn_norm[M_H], ffn_norm[M_H];
        float wq[M_H][M_H], wk[M_H][M_H], wv[M_H][M_H], wo[M_H][M_H];
        float gate[M_E][M_H], noise[M_E][M_H];
        float inv_freq[M_HD / 2];
        float w1[M_E][M_FF][M_H], w3[M_E][M_FF][M_H], w2[M_E][M_H][M_FF];
    } layer[M_L];
} mw;

static uint64_t m_rng = 0x2545F4914F6CDD1Dull;

static void m_fill(float *p, size_t n, double scale, double offset) {
    for (size_t i = 0; i < n; i++) {
        m_rng ^= m_rng << 13;
        m_rng ^= m_rng >> 7;
        m_rng ^= m_rng << 17;
        double u = (double)(m_rng >> 11) / 4503599627370496.0 - 1.0; /* [-1, 1) */
        p[i] = (float)(offset + scale * u);
    }
}

#define FILL(arr, scale, offset) m_fill((float *)(arr), sizeof(arr) / sizeof(float), scale, offset)

static void m_init(void) {
    FILL(mw.embd, 1.0, 0);
    FILL(mw.lm_head, 0.3, 0);
    FILL(mw.norm, 0.2, 1.0);
    for (int l = 0; l < M_L; l++) {
        FILL(mw.layer[l].attn_norm, 0.2, 1.0);
        FILL(mw.layer[l].ffn_norm, 0.2, 1.0);
        FILL(mw.layer[l].wq, 0.3, 0);
        FILL(mw.layer[l].wk, 0.3, 0);
        FILL(mw.layer[l].wv, 0.3, 0);
        FILL(mw.layer[l].wo, 0.3, 0);
        FILL(mw.layer[l].gate, 1.0, 0); /* gate logits spread over a few units */
        FILL(mw.layer[l].noise, 5.0, 0); /* would change the routing if it were used */
        FILL(mw.layer[l].w1, 0.3, 0);
        FILL(mw.layer[l].w3, 0.3, 0);
        FILL(mw.layer[l].w2, 0.3, 0);
        for (int i = 0; i < M_HD / 2; i++)
            mw.layer[l].inv_freq[i] = (float)pow(10000.0, -2.0 * i / M_HD);
    }
}

typedef struct moe_folder {
    bool mixtral;
    const char *scale_json;     /* score_scale_factor (llama_moe); NULL: key absent */
    const char *extra_tensor;   /* an extra tensor nobody uses */
    bool rope_scaling;          /* rope_scaling non-null */
    bool no_tokenizer;          /* leave tokenizer.model out */
} moe_folder;

static int moe_write(const char *dir, const moe_folder *o) {
    mkdir(dir, 0755);
    static char names[128][112];
    static test_st_tensor t[128];
    size_t n = 0;
#define ADD(dims, d0, d1, ptr, ...)                                                                 \
    do {                                                                                            \
        test_fmt(names[n], sizeof names[n], __VA_ARGS__);                                                \
        t[n] = (test_st_tensor){names[n], "F32", dims, {d0, d1, 0, 0}, ptr};                        \
        n++;                                                                                        \
    } while (0)
    ADD(2, M_V, M_H, mw.embd, "model.embed_tokens.weight");
    for (int l = 0; l < M_L; l++) {
        ADD(2, M_H, M_H, mw.layer[l].wq, "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(2, M_H, M_H, mw.layer[l].wk, "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(2, M_H, M_H, mw.layer[l].wv, "model.layers.%d.self_attn.v_proj.weight", l);
        ADD(2, M_H, M_H, mw.layer[l].wo, "model.layers.%d.self_attn.o_proj.weight", l);
        if (o->mixtral) {
            ADD(2, M_E, M_H, mw.layer[l].gate, "model.layers.%d.block_sparse_moe.gate.weight", l);
            for (int j = 0; j < M_E; j++) {
                ADD(2, M_FF, M_H, mw.layer[l].w1[j], "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", l, j);
                ADD(2, M_H, M_FF, mw.layer[l].w2[j], "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l, j);
                ADD(2, M_FF, M_H, mw.layer[l].w3[j], "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", l, j);
            }
        } else {
            ADD(1, M_HD / 2, 0, mw.layer[l].inv_freq, "model.layers.%d.self_attn.rotary_emb.inv_freq", l);
            ADD(2, M_E, M_H, mw.layer[l].gate, "model.layers.%d.mlp.gate.gate_network.weight", l);
            ADD(2, M_E, M_H, mw.layer[l].noise, "model.layers.%d.mlp.gate.weight_noise.weight", l);
            for (int j = 0; j < M_E; j++)
                ADD(2, M_FF, M_H, mw.layer[l].w1[j], "model.layers.%d.mlp.calculator.experts.weight_gate.%d", l, j);
            for (int j = 0; j < M_E; j++)
                ADD(2, M_FF, M_H, mw.layer[l].w3[j], "model.layers.%d.mlp.calculator.experts.weight_up.%d", l, j);
            for (int j = 0; j < M_E; j++)
                ADD(2, M_H, M_FF, mw.layer[l].w2[j], "model.layers.%d.mlp.calculator.experts.weight_down.%d", l, j);
        }
        ADD(1, M_H, 0, mw.layer[l].attn_norm, "model.layers.%d.input_layernorm.weight", l);
        ADD(1, M_H, 0, mw.layer[l].ffn_norm, "model.layers.%d.post_attention_layernorm.weight", l);
    }
    ADD(1, M_H, 0, mw.norm, "model.norm.weight");
    ADD(2, M_V, M_H, mw.lm_head, "lm_head.weight");
    if (o->extra_tensor) ADD(2, M_E, M_H, mw.layer[0].noise, "%s", o->extra_tensor);
#undef ADD
    char path[4096];
    test_fmt(path, sizeof path, "%s/model.safetensors", dir);
    int rc = test_write_safetensors(path, t, n);
    char cfg[4096];
    if (o->mixtral)
        test_fmt(cfg, sizeof cfg,
            "{\n"
            "  \"architectures\": [\"MixtralForCausalLM\"],\n"
            "  \"attention_dropout\": 0.0,\n"
            "  \"bos_token_id\": 1,\n"
            "  \"eos_token_id\": 2,\n"
            "  \"hidden_act\": \"silu\",\n"
            "  \"hidden_size\": %d,\n"
            "  \"initializer_range\": 0.02,\n"
            "  \"intermediate_size\": %d,\n"
            "  \"max_position_embeddings\": 256,\n"
            "  \"model_type\": \"mixtral\",\n"
            "  \"num_attention_heads\": %d,\n"
            "  \"num_experts_per_tok\": %d,\n"
            "  \"num_hidden_layers\": %d,\n"
            "  \"num_key_value_heads\": %d,\n"
            "  \"num_local_experts\": %d,\n"
            "  \"output_router_logits\": false,\n"
            "  \"rms_norm_eps\": 1e-05,\n"
            "  \"rope_scaling\": %s,\n"
            "  \"rope_theta\": 10000.0,\n"
            "  \"router_aux_loss_coef\": 0.02,\n"
            "  \"sliding_window\": null,\n"
            "  \"tie_word_embeddings\": false,\n"
            "  \"torch_dtype\": \"float32\",\n"
            "  \"vocab_size\": %d\n"
            "}\n",
            M_H, M_FF, M_HEADS, M_K, M_L, M_HEADS, M_E,
            o->rope_scaling ? "{\"type\": \"linear\", \"factor\": 2.0}" : "null", M_V);
    else {
        char sizes[512] = "[", *p = sizes + 1;
        for (int l = 0; l < M_L; l++) {
            p += sprintf(p, "%s[", l ? ", " : "");
            for (int j = 0; j < M_E; j++) p += sprintf(p, "%s%d", j ? ", " : "", M_FF);
            p += sprintf(p, "]");
        }
        sprintf(p, "]");
        char scale_line[128] = "";
        if (o->scale_json) test_fmt(scale_line, sizeof scale_line, "  \"score_scale_factor\": %s,\n", o->scale_json);
        test_fmt(cfg, sizeof cfg,
            "{\n"
            "  \"architectures\": [\"LlamaMoEForCausalLM\"],\n"
            "  \"bos_token_id\": 1,\n"
            "  \"calculator_type\": \"UniversalCalculator\",\n"
            "  \"eos_token_id\": 2,\n"
            "  \"gate_add_noise\": true,\n"
            "  \"gate_network\": \"linear\",\n"
            "  \"gate_type\": \"TopKBalancedNoisyGate\",\n"
            "  \"gate_use_softmax\": true,\n"
            "  \"hidden_act\": \"silu\",\n"
            "  \"hidden_size\": %d,\n"
            "  \"intermediate_size\": %d,\n"
            "  \"max_position_embeddings\": 256,\n"
            "  \"model_type\": \"llama_moe\",\n"
            "  \"multiply_gate_scores\": true,\n"
            "  \"num_attention_heads\": %d,\n"
            "  \"num_experts\": %d,\n"
            "  \"num_hidden_layers\": %d,\n"
            "  \"num_key_value_heads\": %d,\n"
            "  \"num_selects\": %d,\n"
            "  \"rms_norm_eps\": 1e-05,\n"
            "  \"rope_scaling\": null,\n"
            "  \"rope_theta\": 10000.0,\n"
            "%s"
            "  \"size_experts\": %s,\n"
            "  \"tie_word_embeddings\": false,\n"
            "  \"torch_dtype\": \"float32\",\n"
            "  \"vocab_size\": %d\n"
            "}\n",
            M_H, M_FF * M_E, M_HEADS, M_E, M_L, M_HEADS, M_K, scale_line, sizes, M_V);
    }
    rc |= config_text_write(dir, cfg) ? 0 : -1;
    test_fmt(path, sizeof path, "%s/tokenizer.model", dir);
    unlink(path);
    if (!o->no_tokenizer) rc |= test_copy_file(test_model_path("tok512.model"), path);
    return rc;
}

typedef struct trace {
    int32_t experts[M_L][M_POS][M_K];
    float weights[M_L][M_POS][M_K];
    int calls[M_L][M_POS];
    int bad;
} trace;

static void on_routing(void *user, int32_t layer, uint32_t pos, const int32_t *experts,
                       const float *weights, int32_t n_used) {
    trace *t = user;
    if (layer < 0 || layer >= M_L || pos >= M_POS || n_used != M_K) {
        t->bad++;
        return;
    }
    t->calls[layer][pos]++;
    for (int k = 0; k < M_K; k++) {
        t->experts[layer][pos][k] = experts[k];
        t->weights[layer][pos][k] = weights[k];
    }
}

static const lmoe_token m_tokens[6] = {1, 300, 301, 400, 45, 500};

/* Evaluates m_tokens one at a time; logits after each call into logits[6][M_V]. */
static void moe_run(const lmoe_model *m, trace *t, float (*logits)[M_V]) {
    memset(t, 0, sizeof *t);
    lmoe_context *ctx = make_ctx(m, on_routing, t);
    for (int i = 0; i < 6; i++) {
        const float *lg = NULL;
        if (ctx) {
            CHECK_OK(lmoe_eval(ctx, &m_tokens[i], 1));
            lg = lmoe_logits(ctx);
        }
        if (lg) memcpy(logits[i], lg, sizeof logits[i]);
        else for (int j = 0; j < M_V; j++) logits[i][j] = NAN;
    }
    lmoe_context_free(ctx);
    int wrong = 0;
    for (int l = 0; l < M_L; l++)
        for (int p = 0; p < 6; p++) wrong += t->calls[l][p] != 1;
    CHECK_MSG(wrong == 0 && t->bad == 0, "routing_fn: %d (layer, pos) not reported once, %d bad calls",
              wrong, t->bad);
}

/* Largest |sum of a position's weights - want[layer]| over the trace. */
static double weight_sum_err(const trace *t, const double want[M_L]) {
    double e = 0;
    for (int l = 0; l < M_L; l++)
        for (int p = 0; p < 6; p++) {
            double s = 0;
            for (int k = 0; k < M_K; k++) s += t->weights[l][p][k];
            if (fabs(s - want[l]) > e) e = fabs(s - want[l]);
        }
    return e;
}

/* Layer `layer` of a and b: same experts, weights of b = factor * weights of a (max error). */
static double layer_compare(const trace *a, const trace *b, int layer, double factor, int *diff_experts) {
    double e = 0;
    for (int p = 0; p < 6; p++)
        for (int k = 0; k < M_K; k++) {
            *diff_experts += a->experts[layer][p][k] != b->experts[layer][p][k];
            double d = fabs(factor * a->weights[layer][p][k] - b->weights[layer][p][k]);
            if (d > e) e = d;
        }
    return e;
}

static void test_moe(void) {
    m_init();
    static float la[6][M_V], lb[6][M_V], lc[6][M_V];
    static trace ta, tb, tc;
    char dir_a[4096], dir_b[4096], out_a[4096], out_b[4096];
    test_fmt(dir_a, sizeof dir_a, "%s", test_tmp_path("hf-moe-mixtral"));
    test_fmt(dir_b, sizeof dir_b, "%s", test_tmp_path("hf-moe-llama_moe-linear"));
    test_fmt(out_a, sizeof out_a, "%s.gguf", dir_a);
    test_fmt(out_b, sizeof out_b, "%s.gguf", dir_b);
    moe_folder fa = {.mixtral = true}, fb = {.scale_json = "1.0"};
    CHECK(moe_write(dir_a, &fa) == 0);
    CHECK(moe_write(dir_b, &fb) == 0);
    lmoe_model *ma = convert_and_load(dir_a, out_a, NULL, NULL);
    lmoe_model *mb = convert_and_load(dir_b, out_b, NULL, NULL);
    const lmoe_model *both[2] = {ma, mb};
    for (int i = 0; i < 2; i++) {
        const lmoe_model *m = both[i];
        const char *label = i ? "llama_moe linear, scale 1" : "mixtral";
        if (!m) continue;
        lmoe_model_info info;
        CHECK_OK(lmoe_model_get_info(m, &info, sizeof info));
        CHECK_MSG(strcmp(meta(m, "general.architecture"), "llama") == 0 &&
                  strcmp(info.architecture, "llama") == 0,
                  "%s: general.architecture '%s'", label, meta(m, "general.architecture"));
        CHECK_MSG(strcmp(meta(m, "llama.expert_count"), "8") == 0 &&
                  strcmp(meta(m, "llama.expert_used_count"), "2") == 0,
                  "%s: expert_count %s, expert_used_count %s", label, meta(m, "llama.expert_count"),
                  meta(m, "llama.expert_used_count"));
        CHECK_MSG(info.n_expert == M_E && info.n_expert_used == M_K && info.n_ff == M_FF &&
                  info.n_embd == M_H && info.n_layer == M_L && info.n_vocab == M_V &&
                  info.n_head == M_HEADS && info.n_head_kv == M_HEADS,
                  "%s: experts %d used %d ff %d embd %d layers %d vocab %d", label, info.n_expert,
                  info.n_expert_used, info.n_ff, info.n_embd, info.n_layer, info.n_vocab);
        /* everything but inv_freq and weight_noise */
        uint64_t want = 2ull * M_V * M_H + M_H +
                        M_L * (4ull * M_H * M_H + 2 * M_H + (uint64_t)M_E * M_H + 3ull * M_E * M_FF * M_H);
        CHECK_MSG(info.n_params == want, "%s: n_params %llu, expected %llu", label,
                  (unsigned long long)info.n_params, (unsigned long long)want);
    }
    /* `llamamoe-convert info` says the same */
    if (ma) {
        char *argv[] = {(char *)convert_tool, "info", out_a, NULL};
        char *out = NULL;
        size_t len = 0;
        int status = test_run(argv, &out, &len);
        const char *line = out ? strstr(out, "general.architecture") : NULL;
        char arch_line[256] = "";
        if (line) test_fmt(arch_line, sizeof arch_line, "%.*s", (int)strcspn(line, "\n"), line);
        bool llama = strstr(arch_line, "= \"llama\"") != NULL;
        CHECK_MSG(status == 0 && llama, "llamamoe-convert info (exit %d) does not show "
                  "general.architecture \"llama\":\n%s", status, out ? out : "");
        free(out);
    }
    if (ma && mb) {
        moe_run(ma, &ta, la);
        moe_run(mb, &tb, lb);
        double d = 0;
        for (int i = 0; i < 6; i++) {
            double x = max_abs_diff(la[i], lb[i], M_V);
            if (x > d) d = x;
        }
        int diff_experts = 0;
        double w = 0;
        for (int l = 0; l < M_L; l++) {
            double x = layer_compare(&ta, &tb, l, 1.0, &diff_experts);
            if (x > w) w = x;
        }
        const double ones[M_L] = {1.0, 1.0};
        double sum_err = weight_sum_err(&ta, ones);
        printf("mixtral vs llama_moe linear: logits max |diff| %.3g over 6 tokens, routing weights "
               "%.3g, %d expert choices differ, weights sum to 1 within %.3g\n", d, w,
               diff_experts, sum_err);
        CHECK_MSG(d <= 1e-5, "mixtral vs llama_moe: logits differ by %g", d);
        CHECK_MSG(diff_experts == 0, "mixtral vs llama_moe: %d expert choices differ", diff_experts);
        CHECK_MSG(w <= 1e-6, "mixtral vs llama_moe: routing weights differ by %g", w);
        CHECK_MSG(sum_err <= 1e-6, "mixtral: routing weights do not sum to 1 (%g)", sum_err);
        /* the weights are not uniform: routing really happens */
        int distinct = 0;
        for (int e = 0; e < M_E; e++) {
            bool used = false;
            for (int l = 0; l < M_L; l++)
                for (int p = 0; p < 6; p++)
                    for (int k = 0; k < M_K; k++) used |= ta.experts[l][p][k] == e;
            distinct += used;
        }
        CHECK_MSG(distinct >= 4, "only %d experts ever selected", distinct);
        test_summary("%-34s logits %.2e  routing w %.2e  experts differing %d  (%d experts used)",
                "mixtral vs llama_moe (linear, 1)", d, w, diff_experts, distinct);
    }

    /* score scale 2 and per-layer [1, 3]: "llama_moe", scale stored and applied */
    struct {
        const char *name, *scale_json, *arch, *stored;
        double sums[M_L];
    } scaled[] = {
        {"hf-moe-llama_moe-scale2", "2.0", "llama_moe", "2", {2.0, 2.0}},
        {"hf-moe-llama_moe-scale1-3", "[1.0, 3.0]", "llama_moe", "[array of 2]", {1.0, 3.0}},
        {"hf-moe-llama_moe-scale1-1", "[1.0, 1.0]", "llama", NULL, {1.0, 1.0}},
    };
    for (size_t c = 0; c < sizeof scaled / sizeof scaled[0]; c++) {
        char dir[4096], out[4096];
        test_fmt(dir, sizeof dir, "%s", test_tmp_path(scaled[c].name));
        test_fmt(out, sizeof out, "%s.gguf", dir);
        moe_folder f = {.scale_json = scaled[c].scale_json};
        CHECK(moe_write(dir, &f) == 0);
        lmoe_model *m = convert_and_load(dir, out, NULL, NULL);
        if (!m) continue;
        char arch[64];
        test_fmt(arch, sizeof arch, "%s", meta(m, "general.architecture"));
        CHECK_MSG(strcmp(arch, scaled[c].arch) == 0, "%s: general.architecture '%s', expected '%s'",
                  scaled[c].name, arch, scaled[c].arch);
        char stored[64] = "-";
        if (scaled[c].stored) {
            test_fmt(stored, sizeof stored, "%s", meta(m, "llama_moe.expert_score_scale"));
            /* llamamoe.h documents arrays as "[array of N]"; the library adds the element type */
            bool ok = scaled[c].stored[0] == '['
                          ? strcmp(stored, "[array of 2]") == 0 || strncmp(stored, "[array of 2 ", 12) == 0
                          : strtod(stored, NULL) == strtod(scaled[c].stored, NULL);
            CHECK_MSG(ok, "%s: llama_moe.expert_score_scale '%s', expected %s", scaled[c].name,
                      stored, scaled[c].stored);
            CHECK_MSG(strcmp(meta(m, "llama_moe.expert_gate_type"), "linear") == 0,
                      "%s: llama_moe.expert_gate_type '%s'", scaled[c].name,
                      meta(m, "llama_moe.expert_gate_type"));
        }
        if (ma && mb) {
            moe_run(m, &tc, lc);
            double sum_err = weight_sum_err(&tc, scaled[c].sums);
            /* layer 0's input does not depend on any FFN: same experts as scale 1, weights scaled */
            int diff_experts = 0;
            double w0 = layer_compare(&tb, &tc, 0, scaled[c].sums[0], &diff_experts);
            double d = 0;
            for (int i = 0; i < 6; i++) {
                double x = max_abs_diff(lb[i], lc[i], M_V);
                if (x > d) d = x;
            }
            printf("%s: architecture %s, scale %s; weights sum per layer to [%g, %g] within %.3g; "
                   "layer 0 vs scale 1: %d expert choices differ, weights %.3g; logits vs scale 1 "
                   "%.3g\n", scaled[c].name, arch, stored, scaled[c].sums[0], scaled[c].sums[1],
                   sum_err, diff_experts, w0, d);
            CHECK_MSG(sum_err <= 1e-5, "%s: routing weights do not sum to the scale (%g)",
                      scaled[c].name, sum_err);
            CHECK_MSG(diff_experts == 0 && w0 <= 1e-5, "%s: layer 0 routing is not the scale-1 "
                      "routing times the scale (%d experts differ, weights %g)", scaled[c].name,
                      diff_experts, w0);
            if (scaled[c].stored) CHECK_MSG(d > 1e-3, "%s: the scale changes nothing (%g)", scaled[c].name, d);
            else CHECK_MSG(d <= 1e-6, "%s: logits differ from scale 1 by %g", scaled[c].name, d);
            test_summary("%-34s arch %-9s sums within %.1e  layer-0 w %.1e  logits vs scale 1 %.2e",
                    scaled[c].name + 7, arch, sum_err, w0, d);
        }
        lmoe_model_free(m);
    }
    lmoe_model_free(ma);
    lmoe_model_free(mb);

    /* refusals */
    char dir[4096];
    const char *extra = "model.layers.1.mlp.gate.extra_bias.weight";
    moe_folder fx = {.scale_json = "1.0", .extra_tensor = extra};
    test_fmt(dir, sizeof dir, "%s", test_tmp_path("hf-moe-bad-extra-tensor"));
    CHECK(moe_write(dir, &fx) == 0);
    expect_convert_error(dir, "llama_moe with an unknown tensor", extra);
    moe_folder fr = {.mixtral = true, .rope_scaling = true};
    test_fmt(dir, sizeof dir, "%s", test_tmp_path("hf-moe-bad-rope-scaling"));
    CHECK(moe_write(dir, &fr) == 0);
    expect_convert_error(dir, "mixtral with rope_scaling", "rope_scaling");
    moe_folder ft = {.mixtral = true, .no_tokenizer = true};
    test_fmt(dir, sizeof dir, "%s", test_tmp_path("hf-moe-bad-no-tokenizer"));
    CHECK(moe_write(dir, &ft) == 0);
    expect_convert_error(dir, "mixtral without tokenizer.model", "tokenizer.model");
}

/* ------------------------------------------------------------------------------------------------
 * 3. f16 conversion of tiny-llama-moe-2_8
 * ---------------------------------------------------------------------------------------------- */

#define G_VOCAB 32000

/* The first prompt of tiny-llama-moe-2_8/golden.json: ids and last-position logits. */
static int golden_first_prompt(lmoe_token *ids, size_t *n_ids, float **logits) {
    size_t len = 0;
    char *text = test_read_file(test_model_path("tiny-llama-moe-2_8/golden.json"), &len);
    json_value *root = text ? json_parse(text, len) : NULL;
    free(text);
    const json_value *prompts = root ? json_get(root, "prompts") : NULL;
    const json_value *p = prompts && prompts->kind == JSON_ARRAY && prompts->n_items ? &prompts->items[0] : NULL;
    const json_value *jids = p ? json_get(p, "ids") : NULL;
    const json_value *ll = p ? json_get(p, "last_logits") : NULL;
    const json_value *data = ll ? json_get(ll, "data") : NULL;
    int rc = -1;
    *logits = NULL;
    if (jids && jids->kind == JSON_ARRAY && data && data->kind == JSON_STRING && jids->n_items <= 64) {
        *n_ids = 0;
        for (size_t i = 0; i < jids->n_items; i++) ids[(*n_ids)++] = (lmoe_token)jids->items[i].number;
        size_t n_bytes = 0;
        *logits = (float *)test_base64_decode(data->str, data->str_len, &n_bytes);
        if (*logits && n_bytes == G_VOCAB * sizeof(float)) rc = 0;
        else {
            free(*logits);
            *logits = NULL;
        }
    }
    json_free(root);
    return rc;
}

static void test_f16(const char *f32_gguf) {
    char dir[4096], out[4096];
    test_fmt(dir, sizeof dir, "%s", test_model_path("tiny-llama-moe-2_8"));
    test_fmt(out, sizeof out, "%s", test_tmp_path("hf-2_8-f16.gguf"));
    lmoe_model *m = convert_and_load(dir, out, "f16", NULL);
    lmoe_model *m32 = NULL;
    CHECK_OK(lmoe_model_load(f32_gguf, NULL, &m32));
    if (!m || !m32) goto done;
    /* tensor types: matrices f16; norms and the gate f32 */
    gguf_file *f = NULL;
    CHECK_OK(gguf_open(out, &f));
    int n_f16 = 0, n_f32 = 0, wrong = 0;
    for (uint64_t i = 0; f && i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        char name[128];
        test_fmt(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        bool want_f32 = t->n_dims == 1 || strstr(name, "ffn_gate_inp") != NULL;
        ggml_type want = want_f32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
        if (t->type != want && wrong++ < 5)
            fprintf(stderr, "f16 conversion: tensor %s is %s, expected %s\n", name,
                    ggml_type_name(t->type), ggml_type_name(want));
        n_f16 += t->type == GGML_TYPE_F16;
        n_f32 += t->type == GGML_TYPE_F32;
    }
    gguf_close(f);
    /* f16: token_embd, output, 3 x (q, k, v, o, 3 stacked experts); f32: output_norm,
     * 3 x (2 norms, the two gate matrices) */
    CHECK_MSG(wrong == 0 && n_f16 == 2 + 3 * 7 && n_f32 == 1 + 3 * 4, "f16 conversion: %d tensors "
              "of the wrong type, %d f16 (expected %d), %d f32 (expected %d)", wrong, n_f16,
              2 + 3 * 7, n_f32, 1 + 3 * 4);
    lmoe_model_info i16, i32;
    CHECK_OK(lmoe_model_get_info(m, &i16, sizeof i16));
    CHECK_OK(lmoe_model_get_info(m32, &i32, sizeof i32));
    double ratio = (double)i16.n_bytes / (double)i32.n_bytes;
    CHECK_MSG(ratio > 0.49 && ratio < 0.52, "f16 / f32 tensor bytes = %llu / %llu = %.4f",
              (unsigned long long)i16.n_bytes, (unsigned long long)i32.n_bytes, ratio);
    CHECK_MSG(i16.n_params == i32.n_params, "n_params f16 %llu, f32 %llu",
              (unsigned long long)i16.n_params, (unsigned long long)i32.n_params);
    lmoe_token ids[64];
    size_t n_ids = 0;
    float *golden = NULL;
    int rc = golden_first_prompt(ids, &n_ids, &golden);
    CHECK_MSG(rc == 0, "tiny-llama-moe-2_8/golden.json unreadable");
    lmoe_context *ctx = rc == 0 ? make_ctx(m, NULL, NULL) : NULL;
    if (ctx) {
        CHECK_OK(lmoe_eval(ctx, ids, n_ids));
        const float *lg = lmoe_logits(ctx);
        if (lg) {
            double d = max_abs_diff(lg, golden, G_VOCAB);
            lmoe_token top = test_argmax(lg, G_VOCAB), gtop = test_argmax(golden, G_VOCAB);
            printf("2_8 f16: tensor bytes %llu vs f32 %llu (ratio %.4f); last-position logits max "
                   "|diff| from golden %.3g; top-1 %d (golden %d)\n",
                   (unsigned long long)i16.n_bytes, (unsigned long long)i32.n_bytes, ratio, d,
                   (int)top, (int)gtop);
            CHECK_MSG(d <= 2e-3, "2_8 f16: logits differ from golden by %g", d);
            CHECK_MSG(top == gtop, "2_8 f16: top-1 %d, golden %d", (int)top, (int)gtop);
            test_summary("%-34s bytes ratio %.4f  logits %.2e  top-1 %s", "2_8 --type f16", ratio, d,
                    top == gtop ? "same" : "DIFFERS");
        }
    }
    lmoe_context_free(ctx);
    free(golden);
done:
    lmoe_model_free(m);
    lmoe_model_free(m32);
}

/* ------------------------------------------------------------------------------------------------
 * 4. llamamoe-cli --routing and --chat; the SFT name rule
 * ---------------------------------------------------------------------------------------------- */

static const char *skip_line(const char *p) {
    p = strchr(p, '\n');
    return p ? p + 1 : NULL;
}

typedef struct text_buf {
    char data[4096];
    size_t len;
} text_buf;

static int collect_text(void *user, const char *text, size_t len, lmoe_token token) {
    (void)token;
    text_buf *b = user;
    if (b->len + len < sizeof b->data) {
        memcpy(b->data + b->len, text, len);
        b->len += len;
    }
    return 0;
}

/* Greedy lmoe_generate of prompt (max_tokens), as the CLI runs it; the text into *text and the
 * expert counts (n_layer x n_expert) into counts (optional). */
static void generate_greedy(const lmoe_model *m, const char *prompt, int max_tokens, text_buf *text,
                            uint64_t *counts, size_t n_counts) {
    lmoe_context *ctx = make_ctx(m, NULL, NULL);
    lmoe_sampler_params sp;
    lmoe_sampler_default_params(&sp, sizeof sp);
    sp.temperature = 0;
    lmoe_sampler *smp = NULL;
    CHECK_OK(lmoe_sampler_create(&sp, &smp));
    lmoe_generate_params gp;
    lmoe_generate_default_params(&gp, sizeof gp);
    gp.max_tokens = max_tokens;
    gp.on_text = collect_text;
    gp.user = text;
    text->len = 0;
    if (ctx && smp) {
        CHECK_OK(lmoe_generate(ctx, smp, prompt, strlen(prompt), &gp, NULL, 0));
        if (counts) CHECK_OK(lmoe_context_expert_counts(ctx, counts, n_counts));
    }
    lmoe_sampler_free(smp);
    lmoe_context_free(ctx);
}

/* Parses the CLI's routing table: rows of "LAYER p0 p1 ... p7". */
static void check_routing_table(const char *out, const lmoe_model *m) {
    const char *p = strstr(out, "expert usage");
    CHECK_MSG(p != NULL, "llamamoe-cli --routing printed no 'expert usage':\n%s", out);
    if (!p) return;
    uint64_t counts[3 * 8];
    text_buf text;
    generate_greedy(m, "The capital of France is", 5, &text, counts, 3 * 8);
    p = skip_line(p); /* the column header */
    CHECK_MSG(p && strncmp(p, "layer", 5) == 0, "no header line after 'expert usage'");
    double max_row_err = 0, max_vs_lib = 0;
    int rows = 0;
    for (int l = 0; l < 3 && p; l++) {
        p = skip_line(p);
        if (!p) break;
        char *end;
        long layer = strtol(p, &end, 10);
        CHECK_MSG(end != p && layer == l, "routing row %d starts with '%.20s'", l, p);
        const char *q = end;
        double sum = 0;
        uint64_t total = 0;
        for (int e = 0; e < 8; e++) total += counts[l * 8 + e];
        int cols = 0;
        for (int e = 0; e < 8; e++) {
            double v = strtod(q, &end);
            if (end == q) break;
            cols++;
            q = end;
            sum += v;
            double want = total ? 100.0 * (double)counts[l * 8 + e] / (double)total : 0;
            if (fabs(v - want) > max_vs_lib) max_vs_lib = fabs(v - want);
        }
        while (*q == ' ') q++;
        CHECK_MSG(cols == 8 && (*q == '\n' || *q == 0), "routing row %d: %d columns", l, cols);
        if (fabs(sum - 100) > max_row_err) max_row_err = fabs(sum - 100);
        rows += cols == 8;
    }
    /* and no row for a fourth layer */
    const char *next = p ? skip_line(p) : NULL;
    if (next) {
        char *end;
        long layer = strtol(next, &end, 10);
        CHECK_MSG(end == next || layer != 3, "routing table has a row for layer 3");
    }
    printf("llamamoe-cli --routing: %d rows of 8 columns; rows sum to 100 within %.2f; percentages "
           "within %.3f of the library's counts\n", rows, max_row_err, max_vs_lib);
    CHECK_MSG(rows == 3, "routing table: %d rows of 8 experts, expected 3", rows);
    CHECK_MSG(max_row_err <= 0.45, "routing rows sum to 100 only within %g", max_row_err);
    CHECK_MSG(max_vs_lib <= 0.051, "routing percentages differ from the library's counts by %g",
              max_vs_lib);
    test_summary("%-34s %d rows x 8  row sums +-%.2f  vs counts %.3f", "cli --routing (2_8)", rows,
            max_row_err, max_vs_lib);
}

#define VICUNA_SYSTEM                                                                              \
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives " \
    "helpful, detailed, and polite answers to the user's questions."

static void test_cli(const char *moe_gguf, const char *dense_gguf) {
    lmoe_model *m = NULL;
    CHECK_OK(lmoe_model_load(moe_gguf, NULL, &m));
    if (!m) return;

    /* --routing on the MoE model */
    char *argv_r[] = {(char *)cli_tool, "-m", (char *)moe_gguf, "-p", "The capital of France is",
                      "-n", "5", "--temp", "0", "--routing", "-t", "1", NULL};
    char *out = NULL;
    size_t len = 0;
    int status = test_run_merged(argv_r, &out, &len);
    CHECK_MSG(status == 0, "llamamoe-cli --routing exited with %d:\n%s", status, out ? out : "");
    if (out) check_routing_table(out, m);
    free(out);

    /* --routing on a dense model */
    if (dense_gguf) {
        char *argv_d[] = {(char *)cli_tool, "-m", (char *)dense_gguf, "-p", "Once upon a time",
                          "-n", "5", "--temp", "0", "--routing", "-t", "1", NULL};
        out = NULL;
        status = test_run_merged(argv_d, &out, &len);
        bool dense = out && strstr(out, "dense") != NULL;
        bool table = out && strstr(out, "expert usage") != NULL;
        printf("llamamoe-cli --routing on the dense model: exit %d, says dense: %s\n", status,
               dense ? "yes" : "no");
        CHECK_MSG(status == 0 && dense && !table, "llamamoe-cli --routing on a dense model (exit "
                  "%d) does not say 'dense':\n%s", status, out ? out : "");
        free(out);
    }

    /* --chat without a recorded chat format */
    CHECK_MSG(strcmp(meta(m, "llamamoe.chat_format"), "<absent>") == 0,
              "2_8 converted without --chat has llamamoe.chat_format '%s'", meta(m, "llamamoe.chat_format"));
    char *argv_c[] = {(char *)cli_tool, "-m", (char *)moe_gguf, "--chat", "-p", "Hello", "-n", "4",
                      "--temp", "0", "-t", "1", NULL};
    out = NULL;
    status = test_run_merged(argv_c, &out, &len);
    const char *msg = out ? strstr(out, "chat format") : NULL;
    printf("llamamoe-cli --chat without a chat format: exit %d: %.*s\n", status,
           msg ? (int)strcspn(msg, "\n") : 0, msg ? msg : "");
    CHECK_MSG(status > 0 && msg, "llamamoe-cli --chat on a model without a chat format: exit %d:\n%s",
              status, out ? out : "");
    free(out);
    lmoe_model_free(m);

    /* --chat vicuna: the format is recorded and the CLI uses it */
    char dir[4096], vic[4096];
    test_fmt(dir, sizeof dir, "%s", test_model_path("tiny-llama-moe-2_8"));
    test_fmt(vic, sizeof vic, "%s", test_tmp_path("hf-2_8-vicuna.gguf"));
    lmoe_model *mv = convert_and_load(dir, vic, "f32", "vicuna");
    if (mv) {
        CHECK_MSG(strcmp(meta(mv, "llamamoe.chat_format"), "vicuna_v1.1") == 0,
                  "--chat vicuna: llamamoe.chat_format '%s'", meta(mv, "llamamoe.chat_format"));
        char *argv_v[] = {(char *)cli_tool, "-m", vic, "--chat", "-p", "Hello", "-n", "4", "--temp",
                          "0", "-t", "1", NULL};
        out = NULL;
        status = test_run(argv_v, &out, &len);
        CHECK_MSG(status == 0, "llamamoe-cli --chat on the vicuna model exited with %d", status);
        text_buf want;
        generate_greedy(mv, VICUNA_SYSTEM " USER: Hello ASSISTANT:", 4, &want, NULL, 0);
        want.data[want.len++] = '\n';
        bool same = out && len == want.len && memcmp(out, want.data, len) == 0;
        printf("llamamoe-cli --chat (vicuna_v1.1): exit %d, printed %zu bytes, %s the greedy "
               "continuation of the Vicuna v1.1 prompt\n", status, out ? len : 0,
               same ? "equal to" : "NOT equal to");
        CHECK_MSG(same, "llamamoe-cli --chat printed '%s', the library's greedy continuation of the "
                  "Vicuna prompt is '%.*s'", out ? out : "", (int)want.len, want.data);
        test_summary("%-34s exit %d, output %s", "cli --chat (vicuna)", status,
                same ? "= Vicuna greedy" : "DIFFERS");
        free(out);
        lmoe_model_free(mv);
    }

    /* an SFT name gets vicuna_v1.1 without --chat; --chat none overrides it */
    char sft[4096];
    test_fmt(sft, sizeof sft, "%s", test_tmp_path("hf-2_8-sft"));
    mkdir(sft, 0755);
    static const char *const links[] = {"generation_config.json", "model.safetensors.index.json",
                                        "tokenizer.model", "model-00001-of-00002.safetensors",
                                        "model-00002-of-00002.safetensors"};
    int rc = 0;
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        char from[4096], to[4096], rel[256];
        test_fmt(rel, sizeof rel, "tiny-llama-moe-2_8/%s", links[i]);
        test_fmt(from, sizeof from, "%s", test_model_path(rel));
        test_fmt(to, sizeof to, "%s/%s", sft, links[i]);
        unlink(to);
        rc |= symlink(from, to);
    }
    size_t cfg_len = 0;
    char *cfg = test_read_file(test_model_path("tiny-llama-moe-2_8/config.json"), &cfg_len);
    const char *old_name = "\"_name_or_path\": \"tiny-llama-moe-2_8\"";
    char *at = cfg ? strstr(cfg, old_name) : NULL;
    CHECK_MSG(at != NULL, "tiny-llama-moe-2_8/config.json has no %s", old_name);
    if (at && rc == 0) {
        size_t new_cap = cfg_len + 128;
        char *new_cfg = malloc(new_cap);
        if (!new_cfg) abort();
        test_fmt(new_cfg, new_cap, "%.*s\"_name_or_path\": \"x/LLaMA-MoE-v1-3_5B-2_8-sft\"%s",
            (int)(at - cfg), cfg, at + strlen(old_name));
        CHECK(config_text_write(sft, new_cfg) != NULL);
        free(new_cfg);
        char out_sft[4096];
        test_fmt(out_sft, sizeof out_sft, "%s.gguf", sft);
        lmoe_model *ms = convert_and_load(sft, out_sft, NULL, NULL);
        if (ms) {
            char chat[64], name[128];
            test_fmt(chat, sizeof chat, "%s", meta(ms, "llamamoe.chat_format"));
            test_fmt(name, sizeof name, "%s", meta(ms, "general.name"));
            printf("SFT name '%s' without --chat: llamamoe.chat_format '%s'\n", name, chat);
            CHECK_MSG(strcmp(chat, "vicuna_v1.1") == 0, "SFT model: llamamoe.chat_format '%s'", chat);
            CHECK_MSG(strcmp(name, "x/LLaMA-MoE-v1-3_5B-2_8-sft") == 0, "SFT model: general.name '%s'",
                      name);
            test_summary("%-34s chat_format %s", "SFT name, no --chat", chat);
            lmoe_model_free(ms);
        }
        lmoe_model *mn = convert_and_load(sft, out_sft, NULL, "none");
        if (mn) {
            CHECK_MSG(strcmp(meta(mn, "llamamoe.chat_format"), "<absent>") == 0,
                      "SFT model with --chat none: llamamoe.chat_format '%s'",
                      meta(mn, "llamamoe.chat_format"));
            lmoe_model_free(mn);
        }
    } else {
        CHECK_MSG(rc == 0, "cannot make the symlinks in %s", sft);
    }
    free(cfg);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_hf_convert LLAMAMOE_CONVERT LLAMAMOE_CLI\n");
        return 2;
    }
    test_require_models();
    convert_tool = argv[1];
    cli_tool = argv[2];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    const char *dense = test_dense();
    test_moe();
    char dir[4096], moe_f32[4096];
    test_fmt(dir, sizeof dir, "%s", test_model_path("tiny-llama-moe-2_8"));
    test_fmt(moe_f32, sizeof moe_f32, "%s", test_tmp_path("hf-2_8-f32.gguf"));
    char *out = NULL;
    int status = convert_hf(dir, moe_f32, "f32", NULL, &out);
    CHECK_MSG(status == 0, "converting tiny-llama-moe-2_8 (f32) exited with %d:\n%s", status,
              out ? out : "");
    free(out);
    if (status == 0) {
        test_f16(moe_f32);
        test_cli(moe_f32, dense);
    }

    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("\nsummary:\n");
    test_summary_print();
    printf("  time %.2f s\n", (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    return test_finish("test_hf_convert");
}
