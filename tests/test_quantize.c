/* test_quantize.c - `llamamoe-convert quantize` on tiny-llama-moe-2_8 (expert width 48, not a
 * multiple of 32) and stories260K (FFN 172):
 *   - q8_0_r16 / q4_0_r16 (the same values as q8_0 / q4_0, 16 rows interleaved) give q8_0's /
 *     q4_0's logits bit for bit, the prompt at once and token by token (batched and decode
 *     kernels);
 *   - q8_0 / q4_0 files pad the FFN width to whole blocks with zero neurons (checked in the file:
 *     the padded rows of gate/up and columns of down are exactly zero), record the original width,
 *     keep norms and gates f32, and run close to the f32 model (q8_0: same top-1 as the golden
 *     output, logits within 0.05 (measured 0.018); q4_0: same top-1, within 0.5 (measured 0.31));
 *   - f16 / bf16 files equal the converter's own f16 / bf16 output exactly (same logits);
 *   - bad requests (unknown type, missing input) fail with a message.
 * argv[1] = llamamoe-convert. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "json.h"
#include "llamamoe.h"
#include "quant.h"
#include "test_util.h"

static const char *convert_tool;

static int run_tool(const char *a1, const char *a2, const char *a3, const char *a4,
                    const char *a5, const char *a6) {
    char *argv[] = {(char *)convert_tool, (char *)a1, (char *)a2, (char *)a3, (char *)a4,
                    (char *)a5, (char *)a6, NULL};
    char *out = NULL;
    size_t len = 0;
    int status = test_run_merged(argv, &out, &len);
    free(out);
    return status;
}

/* Logits of the last token of the prompt ids, evaluated at once (batched products), or one token
 * per eval when one_by_one (the decode path). */
static int last_logits_as(const char *path, const lmoe_token *ids, size_t n, float *out,
                          int n_vocab, int one_by_one) {
    lmoe_model *m = NULL;
    lmoe_context *c = NULL;
    lmoe_context_params cp;
    lmoe_context_default_params(&cp, sizeof cp);
    cp.n_ctx = 64;
    cp.n_threads = 2;
    int ok = lmoe_model_load(path, NULL, &m) == LMOE_OK && lmoe_context_create(m, &cp, &c) == LMOE_OK;
    for (size_t i = 0; ok && i < n; i += one_by_one ? 1 : n)
        ok = lmoe_eval(c, ids + i, one_by_one ? 1 : n) == LMOE_OK;
    if (ok) memcpy(out, lmoe_logits(c), (size_t)n_vocab * sizeof(float));
    else fprintf(stderr, "%s: %s\n", path, lmoe_last_error());
    lmoe_context_free(c);
    lmoe_model_free(m);
    return ok;
}

static int last_logits(const char *path, const lmoe_token *ids, size_t n, float *out, int n_vocab) {
    return last_logits_as(path, ids, n, out, n_vocab, 0);
}

static double max_diff(const float *a, const float *b, int n) {
    double d = 0;
    for (int i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* Row r of a quantised 3-D tensor, dequantised. */
static void q_row(const gguf_tensor *t, uint64_t r, float *out) {
    lmoe_matrix_row_to_f32(t->type, t->data, (size_t)r, (size_t)t->ne[0], out);
}

/* The q file: padded shapes, zero padding, f32 norms and gates, recorded original width. */
static void check_padding(const char *path, ggml_type type) {
    gguf_file *f = NULL;
    CHECK_OK(gguf_open(path, &f));
    if (!f) return;
    uint32_t n_ff = 0, unpadded = 0;
    CHECK_OK(gguf_get_u32(f, "llama_moe.feed_forward_length", &n_ff));
    CHECK_OK(gguf_get_u32(f, "llamamoe.feed_forward_length_unpadded", &unpadded));
    CHECK(n_ff == 64 && unpadded == 48);
    const gguf_tensor *gate = gguf_find_tensor(f, "blk.1.ffn_gate_exps.weight");
    const gguf_tensor *down = gguf_find_tensor(f, "blk.1.ffn_down_exps.weight");
    const gguf_tensor *inp = gguf_find_tensor(f, "blk.1.ffn_gate_inp.weight");
    const gguf_tensor *norm = gguf_find_tensor(f, "blk.1.ffn_norm.weight");
    CHECK(gate && down && inp && norm);
    if (!gate || !down || !inp || !norm) {
        gguf_close(f);
        return;
    }
    CHECK(gate->type == type && gate->ne[0] == 96 && gate->ne[1] == 64 && gate->ne[2] == 8);
    CHECK(down->type == type && down->ne[0] == 64 && down->ne[1] == 96 && down->ne[2] == 8);
    CHECK(inp->type == GGML_TYPE_F32 && norm->type == GGML_TYPE_F32);
    float row[96];
    int nonzero = 0, real_rows_nonzero = 0;
    for (uint64_t e = 0; e < 8; e++) {
        for (uint64_t r = 0; r < 64; r++) {
            q_row(gate, e * 64 + r, row);
            double mag = 0;
            for (int j = 0; j < 96; j++) mag += fabs(row[j]);
            if (r >= 48) nonzero += mag != 0;
            else real_rows_nonzero += mag != 0;
        }
        for (uint64_t r = 0; r < 96; r++) {
            q_row(down, e * 96 + r, row);
            for (int j = 48; j < 64; j++) nonzero += row[j] != 0.0f;
        }
    }
    CHECK_MSG(nonzero == 0, "%d padded weights are not zero", nonzero);
    CHECK(real_rows_nonzero == 8 * 48);
    gguf_close(f);
}

static int load_golden(lmoe_token *ids, size_t *n, int *top1) {
    size_t len = 0;
    char *text = test_read_file(test_model_path("tiny-llama-moe-2_8/golden.json"), &len);
    json_value *root = text ? json_parse(text, len) : NULL;
    const json_value *prompts = root ? json_get(root, "prompts") : NULL;
    int ok = prompts && prompts->kind == JSON_ARRAY && prompts->n_items > 0;
    if (ok) {
        const json_value *p = &prompts->items[0];
        const json_value *id_list = json_get(p, "ids");
        const json_value *top = json_get(json_get(p, "top10"), "ids");
        ok = id_list && top && top->n_items > 0 && id_list->n_items <= 64;
        for (size_t i = 0; ok && i < id_list->n_items; i++) ids[i] = (lmoe_token)id_list->items[i].number;
        if (ok) {
            *n = id_list->n_items;
            *top1 = (int)top->items[0].number;
        }
    }
    json_free(root);
    free(text);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_quantize LLAMAMOE_CONVERT\n");
        return 2;
    }
    convert_tool = argv[1];
    test_require_models();
    char dir[4096], f32[4096], f16_hf[4096], bf16_hf[4096];
    snprintf(dir, sizeof dir, "%s", test_model_path("tiny-llama-moe-2_8"));
    snprintf(f32, sizeof f32, "%s", test_tmp_path("quantize-2_8-f32.gguf"));
    snprintf(f16_hf, sizeof f16_hf, "%s", test_tmp_path("quantize-2_8-f16-hf.gguf"));
    snprintf(bf16_hf, sizeof bf16_hf, "%s", test_tmp_path("quantize-2_8-bf16-hf.gguf"));
    CHECK(run_tool("hf", dir, "-o", f32, "--type", "f32") == 0);
    CHECK(run_tool("hf", dir, "-o", f16_hf, "--type", "f16") == 0);
    CHECK(run_tool("hf", dir, "-o", bf16_hf, "--type", "bf16") == 0);

    lmoe_token ids[64];
    size_t n_ids = 0;
    int golden_top1 = -1;
    CHECK(load_golden(ids, &n_ids, &golden_top1));
    enum { V = 32000 };
    static float ref[V], got[V];
    CHECK(last_logits(f32, ids, n_ids, ref, V));
    CHECK(test_argmax(ref, V) == golden_top1);

    static const struct { const char *name; ggml_type type; double tolerance; } kinds[] = {
        {"q8_0", GGML_TYPE_Q8_0, 0.05}, {"q4_0", GGML_TYPE_Q4_0, 0.5},
        {"q4_0_r16", LMOE_TYPE_Q4_0_R16, 0.5}, {"q8_0_r16", LMOE_TYPE_Q8_0_R16, 0.05},
        {"f16", GGML_TYPE_F16, 0}, {"bf16", GGML_TYPE_BF16, 0},
    };
    /* q4_0's and q8_0's logits, batched and token by token: the _r16 types hold the same values
     * and must give them bit for bit both ways */
    static float q4[V], q4_seq[V], q8[V], q8_seq[V], seq[V];
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        char out[4096], name[64];
        snprintf(name, sizeof name, "quantize-2_8-%s.gguf", kinds[k].name);
        snprintf(out, sizeof out, "%s", test_tmp_path(name));
        CHECK(run_tool("quantize", f32, "-o", out, "--type", kinds[k].name) == 0);
        if (!last_logits(out, ids, n_ids, got, V)) {
            CHECK_MSG(0, "%s model does not run", kinds[k].name);
            continue;
        }
        double d = max_diff(got, ref, V);
        printf("%s: max |logit - f32| = %.3g, top-1 %d (golden %d)\n", kinds[k].name, d,
               test_argmax(got, V), golden_top1);
        CHECK_MSG(test_argmax(got, V) == golden_top1, "%s: top-1 changed", kinds[k].name);
        ggml_type t = kinds[k].type;
        if (t == GGML_TYPE_Q4_0 || t == GGML_TYPE_Q8_0 || ggml_type_is_r16(t)) {
            int is4 = t == GGML_TYPE_Q4_0 || t == LMOE_TYPE_Q4_0_R16;
            float *plain = is4 ? q4 : q8, *plain_seq = is4 ? q4_seq : q8_seq;
            CHECK(last_logits_as(out, ids, n_ids, seq, V, 1));
            if (!ggml_type_is_r16(t)) {
                memcpy(plain, got, sizeof q4), memcpy(plain_seq, seq, sizeof q4);
            } else {
                CHECK_MSG(memcmp(got, plain, sizeof q4) == 0, "%s: logits differ from %s's",
                          kinds[k].name, is4 ? "q4_0" : "q8_0");
                CHECK_MSG(memcmp(seq, plain_seq, sizeof q4) == 0,
                          "%s: token-by-token logits differ from %s's", kinds[k].name,
                          is4 ? "q4_0" : "q8_0");
            }
        }
        if (kinds[k].tolerance > 0) {
            CHECK_MSG(d <= kinds[k].tolerance, "%s: logits differ by %g", kinds[k].name, d);
            check_padding(out, kinds[k].type);
        } else {
            /* 16-bit quantisation of the f32 file is the converter's own 16-bit output */
            static float direct[V];
            CHECK(last_logits(kinds[k].type == GGML_TYPE_F16 ? f16_hf : bf16_hf, ids, n_ids, direct, V));
            CHECK_MSG(max_diff(got, direct, V) == 0, "%s: differs from the converter's output",
                      kinds[k].name);
        }
    }

    /* stories260K: FFN 172 -> 192, and the greedy run keeps its first tokens */
    const char *stories = test_stories_gguf("quantize-stories260K.gguf");
    char stories_q8[4096];
    snprintf(stories_q8, sizeof stories_q8, "%s", test_tmp_path("quantize-stories260K-q8_0.gguf"));
    CHECK(stories && run_tool("quantize", stories, "-o", stories_q8, "--type", "q8_0") == 0);
    lmoe_model *m = NULL;
    CHECK_OK(lmoe_model_load(stories_q8, NULL, &m));
    if (m) {
        char buf[32];
        CHECK_OK(lmoe_model_meta_string(m, "llama.feed_forward_length", buf, sizeof buf, NULL));
        CHECK(strcmp(buf, "192") == 0);
    }
    lmoe_model_free(m);

    /* bad requests */
    char bad_out[4096];
    snprintf(bad_out, sizeof bad_out, "%s", test_tmp_path("quantize-bad.gguf"));
    CHECK(run_tool("quantize", f32, "-o", bad_out, "--type", "q5_1") == 2);
    CHECK(run_tool("quantize", "/nonexistent.gguf", "-o", bad_out, "--type", "q8_0") == 1);
    return test_finish("test_quantize");
}
