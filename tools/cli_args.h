/* cli_args.h - number parsing shared by the command-line tools (header only: the tools link
 * only the public library). Each returns 0 and sets *out, or -1 if s is not entirely a number in
 * range. */
#ifndef LMOE_CLI_ARGS_H
#define LMOE_CLI_ARGS_H

#include <errno.h>
#include <stdlib.h>

static inline int cli_parse_long(const char *s, long min, long max, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) return -1;
    *out = v;
    return 0;
}

static inline int cli_parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

#endif
