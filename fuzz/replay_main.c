/* replay_main.c - a main() for the fuzz targets without libFuzzer: links with any fuzz/<target>.c
 * into a plain program that runs LLVMFuzzerTestOneInput over inputs.
 *   replay_<target> FILE|DIR...   each file, and every regular file in each directory (sorted by
 *                                 name, not recursive); fails on an unreadable argument or a
 *                                 directory without inputs, so a lost corpus is not a pass
 *   replay_<target>               one input from standard input
 * A target that finds a broken invariant traps, and a sanitizer error aborts: either way the
 * program dies and its exit status is nonzero. tests/fuzz_regressions.sh replays
 * tests/fuzz-regress/ with it under ctest (gcc or clang, sanitizers or not).
 *
 * Built with AFL++'s compiler (afl-clang-fast / afl-clang-lto), the stdin form is an AFL++ target,
 * and the __AFL_LOOP block below makes it a persistent one: one process runs many inputs, read
 * from AFL++'s shared memory (see fuzz/afl.sh). Each input is copied into a buffer of exactly its
 * size, so AddressSanitizer sees a read one byte past the end. */
#define _POSIX_C_SOURCE 200809L /* scandir, alphasort */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef __AFL_FUZZ_TESTCASE_LEN
#include <unistd.h> /* read(), which AFL++'s macros use */
__AFL_FUZZ_INIT();
#endif

/* Runs the target on a private, exact-size copy (malloc(0) may return NULL: keep one byte). */
static int run_one(const uint8_t *data, size_t size) {
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) return 1;
    if (size) memcpy(copy, data, size);
    LLVMFuzzerTestOneInput(copy, size);
    free(copy);
    return 0;
}

/* Reads a whole stream into a malloc'd buffer; NULL on a read error. */
static uint8_t *read_stream(FILE *f, size_t *size) {
    size_t len = 0, cap = 4096;
    uint8_t *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap) break;
        uint8_t *bigger = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
        if (!bigger) {
            free(buf);
            return NULL;
        }
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        free(buf);
        return NULL;
    }
    *size = len;
    return buf;
}

static int replay_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    size_t size = 0;
    uint8_t *data = read_stream(f, &size);
    fclose(f);
    if (!data) {
        fprintf(stderr, "replay: %s: cannot read\n", path);
        return 1;
    }
    fprintf(stderr, "replay: %s (%zu bytes)\n", path, size);
    int rc = run_one(data, size);
    free(data);
    return rc;
}

static int is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int select_visible(const struct dirent *e) { return e->d_name[0] != '.'; }

/* Every regular file in dir, in name order; *n_run counts them. */
static int replay_dir(const char *dir, size_t *n_run) {
    struct dirent **names;
    int n = scandir(dir, &names, select_visible, alphasort);
    if (n < 0) {
        perror(dir);
        return 1;
    }
    int rc = 0;
    size_t before = *n_run;
    for (int i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        int len = snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
        if (len < 0 || (size_t)len >= sizeof path) {
            fprintf(stderr, "replay: %s/%s: path too long\n", dir, names[i]->d_name);
            rc = 1;
        } else if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            rc |= replay_file(path);
            ++*n_run;
        }
        free(names[i]);
    }
    free(names);
    if (*n_run == before) {
        fprintf(stderr, "replay: %s holds no inputs\n", dir);
        rc = 1;
    }
    return rc;
}

static int replay_stdin(void) {
#ifdef __AFL_FUZZ_TESTCASE_LEN
    __AFL_INIT();
    const uint8_t *buf = __AFL_FUZZ_TESTCASE_BUF;
    while (__AFL_LOOP(10000)) run_one(buf, (size_t)__AFL_FUZZ_TESTCASE_LEN);
    return 0;
#else
    size_t size = 0;
    uint8_t *data = read_stream(stdin, &size);
    if (!data) {
        fprintf(stderr, "replay: cannot read standard input\n");
        return 1;
    }
    int rc = run_one(data, size);
    free(data);
    return rc;
#endif
}

int main(int argc, char **argv) {
    if (argc < 2) return replay_stdin();
    int rc = 0;
    size_t n_run = 0;
    for (int i = 1; i < argc; i++) {
        if (is_dir(argv[i])) {
            rc |= replay_dir(argv[i], &n_run);
        } else {
            rc |= replay_file(argv[i]);
            n_run++;
        }
    }
    fprintf(stderr, "replay: %zu inputs, %s\n", n_run, rc ? "FAILED" : "all ran");
    return rc;
}
