/* threadpool.h - a persistent pool of worker threads running parallel-for loops.
 *
 * One pool per context. The calling thread works too, so a pool of n threads starts n - 1 workers.
 * Work over [0, n_items) is handed out in chunks by an atomic counter, so a slow core does not hold
 * the rest back. Between jobs workers spin briefly (a decode step follows the last one within
 * microseconds) and then sleep on a condition variable. */
#ifndef LMOE_THREADPOOL_H
#define LMOE_THREADPOOL_H

#include <stddef.h>

#include "llamamoe.h"

typedef struct lmoe_threadpool lmoe_threadpool;

/* Processes items [begin, end). thread_id is in [0, n_threads), 0 being the caller. */
typedef void (*lmoe_parallel_fn)(void *arg, size_t begin, size_t end, int thread_id);

/* n_threads >= 1 (caller included). */
lmoe_status threadpool_create(int n_threads, lmoe_threadpool **out);
/* Stops and joins the workers. NULL is a no-op. */
void threadpool_free(lmoe_threadpool *pool);
int threadpool_n_threads(const lmoe_threadpool *pool);

/* Runs fn over [0, n_items) in chunks of at most chunk_items, on all threads, and returns when every
 * chunk is done. chunk_items 0 picks about four chunks per thread. A job of a single chunk runs
 * on the caller alone. Not reentrant: fn must not call parallel_for on the same pool. One
 * thread at a time may use a pool. */
void threadpool_parallel_for(lmoe_threadpool *pool, size_t n_items, size_t chunk_items,
                             lmoe_parallel_fn fn, void *arg);

/* Number of online CPUs (at least 1). */
int threadpool_cpu_count(void);

#endif
