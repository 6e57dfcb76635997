/* test_util.h - a minimal test harness: CHECK macros that count failures, file helpers, and the
 * location of the shared test models. */
#ifndef LMOE_TEST_UTIL_H
#define LMOE_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "gguf.h"

extern int test_failures;
extern int test_checks;

#define CHECK(cond)                                                                                 \
    do {                                                                                            \
        test_checks++;                                                                              \
        if (!(cond)) {                                                                              \
            test_failures++;                                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);                \
        }                                                                                           \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                        \
    do {                                                                                            \
        test_checks++;                                                                              \
        if (!(cond)) {                                                                              \
            test_failures++;                                                                        \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                           \
            fputc('\n', stderr);                                                                    \
        }                                                                                           \
    } while (0)

/* Checks that a status is LMOE_OK, printing lmoe_last_error() when not. */
#define CHECK_OK(expr)                                                                              \
    do {                                                                                            \
        lmoe_status check_status_ = (expr);                                                         \
        CHECK_MSG(check_status_ == LMOE_OK, "%s -> %d (%s)", #expr, (int)check_status_,             \
                  lmoe_last_error());                                                               \
    } while (0)

/* The index of the largest of x[0..n) (n >= 1); the lowest index wins ties. */
int32_t test_argmax(const float *x, size_t n);

/* Checks that no block allocated by the library is alive, prints a summary and returns the
 * process exit code (0 when every check passed). */
int test_finish(const char *name);

/* Path of a file in the shared models folder (static buffer, overwritten by the next call). */
const char *test_model_path(const char *relative);
/* Returns 1 if the models folder exists. If not: prints why and exits with 77 (skip), or with 1
 * when CI=true (missing data is a failure in CI). */
int test_require_models(void);
/* Path in the test scratch folder (static buffer, overwritten by the next call). */
const char *test_tmp_path(const char *name);

/* Reads a whole file into a malloc'd buffer with a NUL appended (not counted in *size). */
char *test_read_file(const char *path, size_t *size);
/* Writes bytes to a file; returns 0 on success. */
int test_write_file(const char *path, const void *data, size_t size);

/* Runs argv[0] with arguments argv (NULL-terminated, no shell), capturing its stdout into a malloc'd
 * buffer (*out, NUL appended, *out_len bytes); stderr passes through. Returns the exit status, or -1
 * if it could not run or did not exit normally. */
int test_run(char *const argv[], char **out, size_t *out_len);
/* Same as test_run, but captures stderr too, interleaved with stdout in *out (for checking a
 * tool's error message). */
int test_run_merged(char *const argv[], char **out, size_t *out_len);

/* Converts ../shared/models/stories260K.bin + tok512.bin in-process (no tool) to a GGUF named
 * name in the scratch folder and returns its path (static buffer), or NULL with a message. */
const char *test_stories_gguf(const char *name);

/* One tensor of a safetensors file written by test_write_safetensors. */
typedef struct test_st_tensor {
    const char *name;
    const char *dtype;       /* "F32", "F16" or "BF16" */
    uint32_t n_dims;         /* 1 to 4 */
    uint64_t shape[4];       /* outermost first, as safetensors and PyTorch list them */
    const void *data;        /* the product of shape elements of dtype, little-endian */
} test_st_tensor;

/* Writes a safetensors file the way the Python library does: 8-byte little-endian header length,
 * compact JSON header ("__metadata__" {"format": "pt"} first, then the tensors in the given order)
 * padded with spaces to a multiple of 8, then the data back to back. Returns 0 on success. */
int test_write_safetensors(const char *path, const test_st_tensor *tensors, size_t n_tensors);

/* Copies a file (all of it); returns 0 on success. */
int test_copy_file(const char *from, const char *to);

/* Writes the tokenizer.ggml.* keys of a tiny SentencePiece vocabulary: <unk> (0), <s> (1),
 * </s> (2), the 256 byte tokens <0x00>..<0xFF> (3..258), then the n_normal given pieces (ids 259..)
 * with their scores. Returns the first failing writer status. */
lmoe_status test_write_tiny_vocab(gguf_writer *w, const char *const *normal_pieces,
                                  const float *normal_scores, int n_normal);

/* snprintf without gcc's truncation warnings (a cut path or label only makes a test fail). */
void test_fmt(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Collects one line for the summary a test prints at the end (at most 64 lines are kept), and
 * prints the collected lines. */
void test_summary(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void test_summary_print(void);

/* Decodes standard base64 (padding optional, whitespace skipped) into a malloc'd buffer; NULL on
 * a character outside the alphabet. */
uint8_t *test_base64_decode(const char *s, size_t len, size_t *out_len);

#endif
