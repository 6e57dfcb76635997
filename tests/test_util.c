/* test_util.c - see test_util.h. */
#include "test_util.h"

#include "error.h"
#include "file_map.h"
#include "gguf.h"
#include "llama2c.h"
#include "mem.h"
#include "tokenizer_import.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int test_failures = 0;
int test_checks = 0;

int test_finish(const char *name) {
    /* Every block the library allocated must be back: a leak, or library memory freed with
     * free() instead of through the library, shows here in every test. */
    size_t live = mem_live_blocks();
    CHECK_MSG(live == 0, "%zu blocks allocated by the library are still alive at exit", live);
    printf("%s: %d checks, %d failed\n", name, test_checks, test_failures);
    return test_failures == 0 ? 0 : 1;
}

int32_t test_argmax(const float *x, size_t n) {
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return (int32_t)best;
}

const char *test_model_path(const char *relative) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", LMOE_MODELS_DIR, relative);
    return path;
}

int test_require_models(void) {
    struct stat st;
    if (stat(LMOE_MODELS_DIR, &st) == 0 && S_ISDIR(st.st_mode)) return 1;
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0) {
        fprintf(stderr, "FAIL: test models folder %s is missing (CI=true: missing data is a failure)\n",
                LMOE_MODELS_DIR);
        exit(1);
    }
    fprintf(stderr, "SKIP: test models folder %s is missing; set -DLLAMAMOE_MODELS_DIR\n",
            LMOE_MODELS_DIR);
    exit(77);
}

const char *test_tmp_path(const char *name) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", LMOE_TEST_TMP, name);
    return path;
}

char *test_read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NULL; }
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) { fclose(f); return NULL; }
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
    fclose(f);
    if (!buf) return NULL;
    buf[n] = 0;
    if (size) *size = (size_t)n;
    return buf;
}

int test_write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t written = fwrite(data, 1, size, f);
    int rc = fclose(f);
    return (written == size && rc == 0) ? 0 : -1;
}

/* Runs argv, its stdout (and stderr too when merge_stderr) into a pipe read to the end. */
static int run_capture(char *const argv[], int merge_stderr, char **out, size_t *out_len) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        if (merge_stderr) dup2(fds[1], STDERR_FILENO);
        close(fds[0]);
        close(fds[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (buf && len == cap) {
            char *p = realloc(buf, cap * 2 + 1);
            if (!p) { free(buf); buf = NULL; }
            else { buf = p; cap *= 2; }
        }
        char sink[4096];
        ssize_t n = buf ? read(fds[0], buf + len, cap - len) : read(fds[0], sink, sizeof sink);
        if (n <= 0) break;
        if (buf) len += (size_t)n;
    }
    close(fds[0]);
    int status;
    if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || !buf) {
        free(buf);
        return -1;
    }
    buf[len] = 0;
    *out = buf;
    *out_len = len;
    return WEXITSTATUS(status);
}

int test_run(char *const argv[], char **out, size_t *out_len) {
    return run_capture(argv, 0, out, out_len);
}

int test_run_merged(char *const argv[], char **out, size_t *out_len) {
    return run_capture(argv, 1, out, out_len);
}

const char *test_stories_gguf(const char *name) {
    static char out_path[4096];
    char ckpt_path[4096], tok_path[4096];
    test_require_models();
    snprintf(ckpt_path, sizeof ckpt_path, "%s", test_model_path("stories260K.bin"));
    snprintf(tok_path, sizeof tok_path, "%s", test_model_path("tok512.bin"));
    snprintf(out_path, sizeof out_path, "%s", test_tmp_path(name));
    file_map ckpt = {0}, tok = {0};
    llama2c_config cfg;
    llama2c_weights weights;
    lmoe_vocab vocab = {0};
    gguf_writer *w = NULL;
    lmoe_status st = file_map_open(ckpt_path, &ckpt);
    if (st == LMOE_OK) st = file_map_open(tok_path, &tok);
    if (st == LMOE_OK) st = llama2c_checkpoint_read(ckpt.data, ckpt.size, &cfg, &weights);
    if (st == LMOE_OK) st = llama2c_tokenizer_read(tok.data, tok.size, (uint32_t)cfg.vocab_size, &vocab);
    if (st == LMOE_OK) st = gguf_writer_create(&w);
    if (st == LMOE_OK) st = llama2c_to_gguf(&cfg, &weights, "stories260K", w);
    if (st == LMOE_OK) st = vocab_write_gguf(&vocab, w);
    if (st == LMOE_OK) st = gguf_writer_write(w, out_path);
    gguf_writer_free(w);
    vocab_free(&vocab);
    file_map_close(&tok);
    file_map_close(&ckpt);
    if (st != LMOE_OK) {
        fprintf(stderr, "converting stories260K failed: %s\n", lmoe_last_error());
        return NULL;
    }
    return out_path;
}

int test_write_safetensors(const char *path, const test_st_tensor *tensors, size_t n_tensors) {
    size_t hcap = 256 + n_tensors * 512, hlen = 0;
    char *header = malloc(hcap + 8);
    if (!header) return -1;
    uint64_t off = 0;
    hlen += (size_t)snprintf(header + hlen, hcap - hlen, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n_tensors && hlen < hcap; i++) {
        const test_st_tensor *t = &tensors[i];
        size_t elem = strcmp(t->dtype, "F32") == 0 ? 4 : 2;
        uint64_t count = 1;
        for (uint32_t d = 0; d < t->n_dims && d < 4; d++) count *= t->shape[d];
        hlen += (size_t)snprintf(header + hlen, hcap - hlen, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                                 t->name, t->dtype);
        for (uint32_t d = 0; d < t->n_dims && d < 4 && hlen < hcap; d++)
            hlen += (size_t)snprintf(header + hlen, hcap - hlen, "%s%llu", d ? "," : "",
                                     (unsigned long long)t->shape[d]);
        if (hlen < hcap)
            hlen += (size_t)snprintf(header + hlen, hcap - hlen, "],\"data_offsets\":[%llu,%llu]}",
                                     (unsigned long long)off, (unsigned long long)(off + count * elem));
        off += count * elem;
    }
    if (hlen < hcap) hlen += (size_t)snprintf(header + hlen, hcap - hlen, "}");
    if (hlen >= hcap) {
        free(header);
        return -1;
    }
    while (hlen % 8) header[hlen++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(header);
        return -1;
    }
    uint8_t len_le[8];
    for (int b = 0; b < 8; b++) len_le[b] = (uint8_t)((uint64_t)hlen >> (8 * b));
    int ok = fwrite(len_le, 1, 8, f) == 8 && fwrite(header, 1, hlen, f) == hlen;
    for (size_t i = 0; i < n_tensors && ok; i++) {
        const test_st_tensor *t = &tensors[i];
        size_t elem = strcmp(t->dtype, "F32") == 0 ? 4 : 2;
        size_t count = 1;
        for (uint32_t d = 0; d < t->n_dims && d < 4; d++) count *= (size_t)t->shape[d];
        ok = fwrite(t->data, elem, count, f) == count;
    }
    free(header);
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

int test_copy_file(const char *from, const char *to) {
    size_t size = 0;
    char *data = test_read_file(from, &size);
    if (!data) return -1;
    int rc = test_write_file(to, data, size);
    free(data);
    return rc;
}

lmoe_status test_write_tiny_vocab(gguf_writer *w, const char *const *normal_pieces,
                                  const float *normal_scores, int n_normal) {
    enum { N_FIXED = 3 + 256, N_MAX = N_FIXED + 256 };
    if (n_normal < 0 || n_normal > N_MAX - N_FIXED) return LMOE_ERR_INVALID_ARGUMENT;
    int n = N_FIXED + n_normal;
    char byte_names[256][8];
    const char *pieces[N_MAX];
    uint32_t lens[N_MAX];
    float scores[N_MAX];
    int32_t types[N_MAX];
    pieces[0] = "<unk>";
    pieces[1] = "<s>";
    pieces[2] = "</s>";
    types[0] = 2; /* unknown */
    types[1] = types[2] = 3; /* control */
    for (int b = 0; b < 256; b++) {
        snprintf(byte_names[b], sizeof byte_names[b], "<0x%02X>", b);
        pieces[3 + b] = byte_names[b];
        types[3 + b] = 6; /* byte */
    }
    for (int i = 0; i < n_normal; i++) {
        pieces[N_FIXED + i] = normal_pieces[i];
        types[N_FIXED + i] = 1; /* normal */
    }
    for (int i = 0; i < n; i++) {
        lens[i] = (uint32_t)strlen(pieces[i]);
        scores[i] = i >= N_FIXED ? normal_scores[i - N_FIXED] : 0.0f;
    }
    lmoe_status st = gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    if (st == LMOE_OK) st = gguf_writer_set_str_array(w, "tokenizer.ggml.tokens", pieces, lens, (uint64_t)n);
    if (st == LMOE_OK)
        st = gguf_writer_set_array(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, (uint64_t)n);
    if (st == LMOE_OK)
        st = gguf_writer_set_array(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, types, (uint64_t)n);
    if (st == LMOE_OK) st = gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    if (st == LMOE_OK) st = gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    if (st == LMOE_OK) st = gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0);
    return st;
}

void test_fmt(char *buf, size_t size, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, size, fmt, ap);
    va_end(ap);
}

static char summary_lines[64][256];
static int n_summary_lines;

void test_summary(const char *fmt, ...) {
    if (n_summary_lines >= 64) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(summary_lines[n_summary_lines++], sizeof summary_lines[0], fmt, ap);
    va_end(ap);
}

void test_summary_print(void) {
    for (int i = 0; i < n_summary_lines; i++) printf("  %s\n", summary_lines[i]);
}

static int b64_value(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

uint8_t *test_base64_decode(const char *s, size_t len, size_t *out_len) {
    uint8_t *out = malloc(len / 4 * 3 + 3);
    if (!out) return NULL;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '=') break;
        if (c == '\n' || c == '\r' || c == ' ') continue;
        int v = b64_value((unsigned char)c);
        if (v < 0) {
            free(out);
            return NULL;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    *out_len = n;
    return out;
}
