/* llamamoe-convert - turns other model formats into GGUF, dense models into MoE models, and
 * inspects GGUF files (usage() lists the commands).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "file_map.h"
#include "gguf.h"
#include "hf.h"
#include "moefy.h"
#include "moefy_split.h"
#include "quantize.h"
#include "llama2c.h"
#include "tokenizer_import.h"
#include "vocab.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage:\n"
            "  llamamoe-convert llama2c CHECKPOINT TOKENIZER -o OUT.gguf\n"
            "      a llama2.c checkpoint (legacy or version-1 layout, float32) and its tokenizer\n"
            "      (llama2.c tokenizer.bin, or a SentencePiece tokenizer.model) to one GGUF file\n"
            "  llamamoe-convert hf DIR -o OUT.gguf [--type f32|f16|bf16] [--chat none|vicuna]\n"
            "      a Hugging Face checkpoint folder (config.json, tokenizer.model, safetensors or\n"
            "      PyTorch .bin shards, single or indexed) of a LLaMA-MoE v1 (llama_moe), LLaMA\n"
            "      (llama) or Mixtral-style (mixtral) model; --type sets the weight matrices' type\n"
            "      (default: the checkpoint's), --chat the recorded chat format (default: vicuna\n"
            "      for models whose name contains 'sft')\n"
            "  llamamoe-convert quantize IN.gguf -o OUT.gguf --type q8_0|q4_0|q8_0_r16|q4_0_r16|bf16|f16\n"
            "      rewrite the weight matrices (norms and MoE gates stay f32; FFN widths that are\n"
            "      not a multiple of 32 are padded with zero neurons, which is exact)\n"
            "  llamamoe-convert moefy DENSE.gguf -o MOE.gguf [--experts E] [--top-k K]\n"
            "      [--method M] [--gate G] [--scale S|fit] [--calib FILE] [--seed N] [options]\n"
            "      split a dense model's FFNs into E experts (default 4), K of them per token\n"
            "      (default 2); docs/CONSTRUCTION.md compares the choices:\n"
            "        --method random (default) | clustering | co-activation | sharing-inner |\n"
            "                 sharing-inter (the last three need --calib)\n"
            "        --gate centroid (default) | random | calibrated (needs --calib) | uniform\n"
            "        --scale S: multiplies the experts' weights (default E/K); fit: least squares\n"
            "                 per layer on the calibration text\n"
            "        --calib FILE: calibration text; --calib-tokens N: use at most N (4096)\n"
            "        --expert-size N (sharing-inner; default n_ff/E), --shared-size N\n"
            "                 (sharing-inter; default: the neurons most experts want)\n"
            "        -t N: threads for the calibration pass\n"
            "  llamamoe-convert info FILE.gguf\n"
            "      print a GGUF file's metadata keys and tensors\n");
}

static int fail(lmoe_status st) {
    fprintf(stderr, "llamamoe-convert: error: %s (%s)\n", lmoe_last_error(),
            lmoe_status_string(st));
    return 1;
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* A SentencePiece model is chosen by the .model extension; anything else is read as a llama2.c
 * tokenizer.bin, which carries no magic to sniff. */
static lmoe_status read_tokenizer(const char *path, uint32_t n_vocab, lmoe_vocab *vocab) {
    file_map map;
    FORWARD_IF_ERROR(file_map_open(path, &map));
    lmoe_status st = ends_with(path, ".model")
                         ? spm_model_read(map.data, map.size, vocab)
                         : llama2c_tokenizer_read(map.data, map.size, n_vocab, vocab);
    file_map_close(&map);
    return lmoe_error_prefix(st, "%s", path);
}

static int cmd_llama2c(const char *checkpoint, const char *tokenizer, const char *out_path) {
    file_map ckpt;
    lmoe_status st = file_map_open(checkpoint, &ckpt);
    if (st != LMOE_OK) return fail(st);
    llama2c_config cfg;
    llama2c_weights weights;
    lmoe_vocab vocab = {0};
    gguf_writer *w = NULL;
    st = llama2c_checkpoint_read(ckpt.data, ckpt.size, &cfg, &weights);
    if (st != LMOE_OK) st = lmoe_error_prefix(st, "%s", checkpoint);
    if (st == LMOE_OK) {
        fprintf(stderr, "%s: llama2.c %s checkpoint: dim %d, hidden %d, layers %d, heads %d/%d, "
                "vocab %d, seq_len %d, %s classifier\n", checkpoint,
                cfg.version ? "version-1" : "legacy", cfg.dim, cfg.hidden_dim, cfg.n_layers,
                cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, cfg.seq_len,
                cfg.shared_classifier ? "shared" : "separate");
        st = read_tokenizer(tokenizer, (uint32_t)cfg.vocab_size, &vocab);
    }
    if (st == LMOE_OK && vocab.n_tokens != (uint32_t)cfg.vocab_size)
        st = lmoe_error(LMOE_ERR_BAD_FILE, "%s has %u tokens but the checkpoint's vocab_size is %d",
                        tokenizer, vocab.n_tokens, cfg.vocab_size);
    /* llama2.c models start a new story with BOS; run.c stops there, and so do we. */
    vocab.stop_on_bos = true;
    if (st == LMOE_OK) st = gguf_writer_create(&w);
    if (st == LMOE_OK) st = llama2c_to_gguf(&cfg, &weights, base_name(checkpoint), w);
    if (st == LMOE_OK) st = vocab_write_gguf(&vocab, w);
    if (st == LMOE_OK) st = gguf_writer_write(w, out_path);
    if (st == LMOE_OK)
        fprintf(stderr, "wrote %s: %u tokens, %d layers, float32\n", out_path, vocab.n_tokens,
                cfg.n_layers);
    gguf_writer_free(w);
    vocab_free(&vocab);
    file_map_close(&ckpt);
    return st == LMOE_OK ? 0 : fail(st);
}

static void print_value(const gguf_kv *kv) {
    if (kv->type == GGUF_TYPE_STRING) {
        uint64_t len;
        memcpy(&len, kv->data, 8);
        printf("\"%.*s\"", (int)(len > 200 ? 200 : len), (const char *)kv->data + 8);
        if (len > 200) printf("...");
        return;
    }
    if (kv->type == GGUF_TYPE_ARRAY) {
        printf("[%s x %" PRIu64 "]", gguf_type_name(kv->elem_type), kv->n_elems);
        if (kv->elem_type == GGUF_TYPE_STRING && kv->n_elems > 0) {
            gguf_str first;
            uint64_t len;
            memcpy(&len, kv->data, 8);
            first.ptr = (const char *)kv->data + 8;
            first.len = len;
            printf(" first \"%.*s\"", (int)(first.len > 40 ? 40 : first.len), first.ptr);
        }
        return;
    }
    const uint8_t *p = kv->data;
    switch (kv->type) {
    case GGUF_TYPE_UINT8: printf("%u", p[0]); break;
    case GGUF_TYPE_INT8: printf("%d", (int8_t)p[0]); break;
    case GGUF_TYPE_BOOL: printf("%s", p[0] ? "true" : "false"); break;
    case GGUF_TYPE_UINT16: { uint16_t v; memcpy(&v, p, 2); printf("%u", v); break; }
    case GGUF_TYPE_INT16: { int16_t v; memcpy(&v, p, 2); printf("%d", v); break; }
    case GGUF_TYPE_UINT32: { uint32_t v; memcpy(&v, p, 4); printf("%" PRIu32, v); break; }
    case GGUF_TYPE_INT32: { int32_t v; memcpy(&v, p, 4); printf("%" PRId32, v); break; }
    case GGUF_TYPE_UINT64: { uint64_t v; memcpy(&v, p, 8); printf("%" PRIu64, v); break; }
    case GGUF_TYPE_INT64: { int64_t v; memcpy(&v, p, 8); printf("%" PRId64, v); break; }
    case GGUF_TYPE_FLOAT32: { float v; memcpy(&v, p, 4); printf("%g", (double)v); break; }
    case GGUF_TYPE_FLOAT64: { double v; memcpy(&v, p, 8); printf("%g", v); break; }
    default: printf("?"); break;
    }
}

static int cmd_info(const char *path) {
    gguf_file *f;
    lmoe_status st = gguf_open(path, &f);
    if (st != LMOE_OK) return fail(st);
    printf("%s: GGUF v%u, %" PRIu64 " keys, %" PRIu64 " tensors, alignment %" PRIu64 "\n", path,
           f->version, f->n_kv, f->n_tensors, f->alignment);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        printf("  %-44.*s %-8s = ", (int)kv->key.len, kv->key.ptr, gguf_type_name(kv->type));
        print_value(kv);
        printf("\n");
    }
    uint64_t total = 0;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        printf("  tensor %-36.*s %-5s [", (int)t->name.len, t->name.ptr, ggml_type_name(t->type));
        for (uint32_t d = 0; d < t->n_dims; d++) printf("%s%" PRIu64, d ? ", " : "", t->ne[d]);
        printf("] %" PRIu64 " bytes at %" PRIu64 "\n", t->n_bytes, f->data_offset + t->offset);
        total += t->n_bytes;
    }
    printf("tensor data: %" PRIu64 " bytes\n", total);
    gguf_close(f);
    return 0;
}

static void progress_to_stderr(void *user, const char *line) {
    (void)user;
    fprintf(stderr, "%s\n", line);
}

/* --type NAME -> ggml type; returns 0 if NAME is not one of the allowed ones. */
static int parse_type(const char *name, int allow_blocks, ggml_type *out) {
    static const struct { const char *name; ggml_type type; int block; } types[] = {
        {"f32", GGML_TYPE_F32, 0},   {"f16", GGML_TYPE_F16, 0},   {"bf16", GGML_TYPE_BF16, 0},
        {"q8_0", GGML_TYPE_Q8_0, 1}, {"q4_0", GGML_TYPE_Q4_0, 1}, {"q4_0_r16", LMOE_TYPE_Q4_0_R16, 1},
        {"q8_0_r16", LMOE_TYPE_Q8_0_R16, 1},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(name, types[i].name) == 0 && (allow_blocks || !types[i].block)) {
            *out = types[i].type;
            return 1;
        }
    return 0;
}

static int cmd_quantize(const char *in_path, const char *out_path, const char *type) {
    quantize_options o = {.progress = progress_to_stderr};
    if (!type || !parse_type(type, 1, &o.type) || o.type == GGML_TYPE_F32) {
        fprintf(stderr, "llamamoe-convert quantize: --type must be q8_0, q4_0, q8_0_r16, q4_0_r16, bf16 or f16\n");
        return 2;
    }
    lmoe_status st = gguf_quantize(in_path, out_path, &o);
    if (st != LMOE_OK) return fail(st);
    fprintf(stderr, "wrote %s\n", out_path);
    return 0;
}

static int cmd_hf(const char *dir, const char *out_path, const char *type, const char *chat) {
    hf_options o = {.progress = progress_to_stderr};
    if (type) {
        o.type_set = true;
        if (!parse_type(type, 0, &o.type)) {
            fprintf(stderr, "llamamoe-convert hf: --type must be f32, f16 or bf16, not '%s' "
                    "(quantise the result with llamamoe-convert quantize)\n", type);
            return 2;
        }
    }
    if (chat && strcmp(chat, "none") != 0 && strcmp(chat, "vicuna") != 0) {
        fprintf(stderr, "llamamoe-convert hf: --chat must be none or vicuna, not '%s'\n", chat);
        return 2;
    }
    o.chat_format = chat;
    lmoe_status st = hf_convert(dir, out_path, &o);
    if (st != LMOE_OK) return fail(st);
    fprintf(stderr, "wrote %s\n", out_path);
    return 0;
}

static int moefy_usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "llamamoe-convert moefy: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    return 2;
}

static int parse_u32(const char *s, uint32_t *out) {
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end || s[0] == '-' || v > UINT32_MAX) return 0;
    *out = (uint32_t)v;
    return 1;
}

static void moefy_summary(const moefy_options *o, const moefy_result *r, const char *out) {
    fprintf(stderr, "wrote %s: %u layers, %u experts of %u neurons%s, top-%u (%.1f%% of the "
            "FFN active per token), method %s, gate %s, scale %.4g..%.4g, seed %llu\n", out,
            r->n_layer, o->n_experts, r->expert_size, r->shared_size ? " + a shared expert" : "",
            o->top_k, 100.0 * (o->top_k * r->expert_size + r->shared_size) / r->n_ff,
            moefy_method_name(o->method), moefy_gate_name(o->gate), (double)r->min_scale,
            (double)r->max_scale, (unsigned long long)o->seed);
    if (o->method == MOEFY_METHOD_SHARING_INNER || o->method == MOEFY_METHOD_SHARING_INTER)
        fprintf(stderr, "overlap: at most %u neurons of a layer are in several experts, %u in "
                "none\n", r->max_in_several, r->max_unused);
    if (r->shared_size)
        fprintf(stderr, "shared expert: %u always-on neurons per layer\n", r->shared_size);
}

static int cmd_moefy(int argc, char **argv) {
    moefy_options o;
    moefy_default_options(&o);
    o.progress = progress_to_stderr;
    const char *dense = NULL, *out = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-') {
            if (dense) return moefy_usage_error("one DENSE.gguf only ('%s' is extra)", a);
            dense = a;
            continue;
        }
        if (i + 1 >= argc) return moefy_usage_error("%s needs a value", a);
        const char *v = argv[++i];
        int ok = 1;
        uint32_t n = 0;
        if (!strcmp(a, "-o")) out = v;
        else if (!strcmp(a, "--experts")) ok = parse_u32(v, &o.n_experts);
        else if (!strcmp(a, "--top-k")) ok = parse_u32(v, &o.top_k);
        else if (!strcmp(a, "--method")) ok = moefy_parse_method(v, &o.method);
        else if (!strcmp(a, "--gate")) ok = moefy_parse_gate(v, &o.gate);
        else if (!strcmp(a, "--calib")) o.calib_path = v;
        else if (!strcmp(a, "--calib-tokens")) ok = parse_u32(v, &n) && n > 0, o.calib_tokens = n;
        else if (!strcmp(a, "--expert-size")) ok = parse_u32(v, &o.expert_size) && o.expert_size;
        else if (!strcmp(a, "--shared-size")) ok = parse_u32(v, &o.shared_size);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
            ok = parse_u32(v, &n) && n >= 1 && n <= 512, o.n_threads = (int)n;
        else if (!strcmp(a, "--seed")) {
            char *end;
            o.seed = strtoull(v, &end, 10);
            ok = end != v && !*end && v[0] != '-';
        } else if (!strcmp(a, "--scale")) {
            char *end;
            o.scale_fit = strcmp(v, "fit") == 0;
            if (!o.scale_fit) {
                o.scale = strtof(v, &end);
                ok = end != v && !*end && o.scale > 0 && o.scale < 1e30f;
            }
        } else return moefy_usage_error("unknown option %s (see llamamoe-convert --help)", a);
        if (!ok) {
            fprintf(stderr, "llamamoe-convert moefy: bad value '%s' for %s\n", v, a);
            if (!strcmp(a, "--method"))
                fprintf(stderr, "  methods: random, clustering, co-activation, sharing-inner, "
                        "sharing-inter\n");
            if (!strcmp(a, "--gate"))
                fprintf(stderr, "  gates: centroid, random, calibrated, uniform\n");
            return 2;
        }
    }
    if (!dense || !out) return moefy_usage_error("needs %s", "DENSE.gguf -o MOE.gguf");
    moefy_result r;
    lmoe_status st = moefy_convert(dense, out, &o, &r);
    if (st != LMOE_OK) return fail(st);
    moefy_summary(&o, &r, out);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "moefy") == 0) return cmd_moefy(argc, argv); /* options of its own */
    const char *out = NULL, *type = NULL, *chat = NULL;
    const char *pos[4];
    int n_pos = 0;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strcmp(argv[i], "--type") == 0 && i + 1 < argc) {
            type = argv[++i];
        } else if (strcmp(argv[i], "--chat") == 0 && i + 1 < argc) {
            chat = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "llamamoe-convert: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (n_pos < 4) {
            pos[n_pos++] = argv[i];
        } else {
            fprintf(stderr, "llamamoe-convert: too many arguments\n");
            return 2;
        }
    }
    if (strcmp(cmd, "llama2c") == 0) {
        if (n_pos != 2 || !out) {
            fprintf(stderr, "llamamoe-convert llama2c: needs CHECKPOINT TOKENIZER -o OUT.gguf\n");
            return 2;
        }
        return cmd_llama2c(pos[0], pos[1], out);
    }
    if (strcmp(cmd, "hf") == 0) {
        if (n_pos != 1 || !out) {
            fprintf(stderr, "llamamoe-convert hf: needs DIR -o OUT.gguf\n");
            return 2;
        }
        return cmd_hf(pos[0], out, type, chat);
    }
    if (strcmp(cmd, "quantize") == 0) {
        if (n_pos != 1 || !out) {
            fprintf(stderr, "llamamoe-convert quantize: needs IN.gguf -o OUT.gguf --type TYPE\n");
            return 2;
        }
        return cmd_quantize(pos[0], out, type);
    }
    if (strcmp(cmd, "info") == 0) {
        if (n_pos != 1) {
            fprintf(stderr, "llamamoe-convert info: needs one FILE\n");
            return 2;
        }
        return cmd_info(pos[0]);
    }
    fprintf(stderr, "llamamoe-convert: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
