/* progress.h - the one line of progress a converter reports at a time (to stderr, in the tools). */
#ifndef LMOE_CONVERT_PROGRESS_H
#define LMOE_CONVERT_PROGRESS_H

#include "error.h"

typedef void (*convert_progress_fn)(void *user, const char *line);

/* Formats a line (at most 511 bytes) and passes it to fn; nothing when fn is NULL. */
void convert_report(convert_progress_fn fn, void *user, const char *fmt, ...) LMOE_PRINTF(3, 4);

/* report(options, fmt, ...) for an options struct with progress and user fields. */
#define report(o, ...) convert_report((o)->progress, (o)->user, __VA_ARGS__)

#endif
