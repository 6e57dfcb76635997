/* threadpool.c - persistent workers running parallel-for jobs (see threadpool.h).
 *
 * A job is published by writing its description and then bumping `generation`; each worker runs
 * chunks of it, taken with an atomic fetch_add on `next_item`, and then bumps `n_done`. The
 * caller runs chunks too and returns once every worker has bumped `n_done`, so no worker can
 * still be reading the job description when the next job overwrites it, and every worker sees
 * every generation exactly once.
 *
 * Waiting: a decode step issues its next job within microseconds, so an idle worker first spins
 * on `generation` for about WORKER_SPIN_NS, then sleeps on a condition variable. The publisher
 * only takes the mutex to wake workers when one has said it is going to sleep (`n_sleeping`).
 *
 * Memory order: the job fields are plain data, published by the release in the generation bump
 * and acquired by the worker's load of it; each worker's release increment of n_done, acquired by
 * the caller, publishes what fn wrote. n_sleeping and generation form a Dekker pair (each side
 * writes one and then reads the other), which needs sequential consistency. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "mem.h"

/* How long an idle worker polls for the next job before it sleeps. */
#define WORKER_SPIN_NS 80000
/* Pause-hinted polls between clock reads (spinning) or sched_yield calls (the caller's wait). */
#define SPIN_POLLS 64

/* Keeps atomics that different threads write on different cache lines. */
#define CACHE_LINE 64

typedef struct worker {
    lmoe_threadpool *pool;
    int thread_id; /* 1 .. n_threads - 1 */
} worker;

struct lmoe_threadpool {
    int n_threads;
    int n_started;       /* workers successfully created (for cleanup after a failure) */
    pthread_t *threads;  /* (n_threads - 1,) */
    worker *workers;     /* (n_threads - 1,) */

    /* The job: written by the caller only while no worker reads it (see the banner). */
    lmoe_parallel_fn fn;
    void *arg;
    size_t n_items;
    size_t chunk_items;

    char pad0[CACHE_LINE];
    atomic_uint generation;  /* bumped once per job */
    atomic_int stop;         /* set once by threadpool_free */
    char pad1[CACHE_LINE];
    atomic_size_t next_item; /* the first item no thread has claimed yet */
    char pad2[CACHE_LINE];
    atomic_int n_done;       /* workers finished with the current job */
    char pad3[CACHE_LINE];
    atomic_int n_sleeping;   /* workers blocked (or about to block) on wake */

    pthread_mutex_t mutex;   /* guards the sleep/wake handshake */
    pthread_cond_t wake;
};

/* A hint to the CPU that this is a spin loop (frees pipeline resources for a hyperthread
 * sibling). Not an ISA kernel, so it lives here rather than in arch/. */
static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Claims chunks of the current job until none is left. */
static void run_chunks(lmoe_threadpool *pool, int thread_id) {
    const size_t n_items = pool->n_items, chunk = pool->chunk_items;
    for (;;) {
        size_t begin = atomic_fetch_add_explicit(&pool->next_item, chunk, memory_order_relaxed);
        if (begin >= n_items) return;
        size_t end = n_items - begin < chunk ? n_items : begin + chunk;
        pool->fn(pool->arg, begin, end, thread_id);
    }
}

/* Polls for a generation other than seen for about WORKER_SPIN_NS. Returns 1 if one came (or stop
 * was set), 0 if the worker should sleep. */
static int spin_for_job(lmoe_threadpool *pool, unsigned seen) {
    uint64_t deadline = monotonic_ns() + WORKER_SPIN_NS;
    for (;;) {
        for (int i = 0; i < SPIN_POLLS; i++) {
            if (atomic_load_explicit(&pool->generation, memory_order_acquire) != seen ||
                atomic_load_explicit(&pool->stop, memory_order_acquire))
                return 1;
            cpu_relax();
        }
        if (monotonic_ns() > deadline) return 0;
    }
}

/* Blocks until a generation other than seen is published or stop is set. */
static void sleep_for_job(lmoe_threadpool *pool, unsigned seen) {
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add(&pool->n_sleeping, 1); /* seq_cst: see the banner */
    while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
        pthread_cond_wait(&pool->wake, &pool->mutex);
    atomic_fetch_sub(&pool->n_sleeping, 1);
    pthread_mutex_unlock(&pool->mutex);
}

static void *worker_main(void *p) {
    worker *self = p;
    lmoe_threadpool *pool = self->pool;
    /* Workers are created before any job, and the creator waits for none, so generation is 0. */
    unsigned seen = 0;
    for (;;) {
        if (!spin_for_job(pool, seen)) sleep_for_job(pool, seen);
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) return NULL;
        seen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        run_chunks(pool, self->thread_id);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
    }
}

/* Publishes the job already written into pool, waking sleepers if there are any. */
static void publish_job(lmoe_threadpool *pool) {
    atomic_fetch_add(&pool->generation, 1); /* seq_cst: release for the job, Dekker with sleepers */
    if (atomic_load(&pool->n_sleeping) > 0) {
        /* Taking the mutex waits out a worker between its n_sleeping increment and its wait. */
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
    }
}

/* The caller's wait for the workers: spin, yielding the core now and then in case a worker (or
 * fn) needs it more, e.g. with more threads than cores. */
static void wait_for_workers(lmoe_threadpool *pool) {
    const int n_workers = pool->n_threads - 1;
    for (;;) {
        for (int i = 0; i < SPIN_POLLS; i++) {
            if (atomic_load_explicit(&pool->n_done, memory_order_acquire) == n_workers) return;
            cpu_relax();
        }
        sched_yield();
    }
}

/* The job on the caller alone, still in chunks of at most chunk_items as promised. */
static void run_inline(size_t n_items, size_t chunk_items, lmoe_parallel_fn fn, void *arg) {
    for (size_t begin = 0; begin < n_items; begin += chunk_items) {
        size_t end = n_items - begin < chunk_items ? n_items : begin + chunk_items;
        fn(arg, begin, end, 0);
        if (end == n_items) return; /* begin + chunk_items could wrap */
    }
}

void threadpool_parallel_for(lmoe_threadpool *pool, size_t n_items, size_t chunk_items,
                             lmoe_parallel_fn fn, void *arg) {
    if (n_items == 0) return;
    if (chunk_items == 0) /* automatic: about four chunks per thread for balance */
        chunk_items = (n_items + 4 * (size_t)pool->n_threads - 1) / (4 * (size_t)pool->n_threads);
    if (pool->n_threads == 1 || chunk_items >= n_items) {
        run_inline(n_items, chunk_items, fn, arg); /* waking workers would only cost time */
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    pool->n_items = n_items;
    pool->chunk_items = chunk_items;
    atomic_store_explicit(&pool->next_item, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
    publish_job(pool);
    run_chunks(pool, 0);
    wait_for_workers(pool);
}

/* Stops and joins the n_started workers, then frees everything. */
static void threadpool_destroy(lmoe_threadpool *pool) {
    if (pool->n_started > 0) {
        pthread_mutex_lock(&pool->mutex);
        atomic_store(&pool->stop, 1);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
        for (int i = 0; i < pool->n_started; i++) pthread_join(pool->threads[i], NULL);
    }
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    mem_free(pool->threads);
    mem_free(pool->workers);
    mem_free(pool);
}

static lmoe_status start_workers(lmoe_threadpool *pool) {
    for (int i = 0; i < pool->n_threads - 1; i++) {
        pool->workers[i].pool = pool;
        pool->workers[i].thread_id = i + 1;
        int rc = pthread_create(&pool->threads[i], NULL, worker_main, &pool->workers[i]);
        if (rc != 0) {
            char reason[128];
            if (strerror_r(rc, reason, sizeof reason) != 0) reason[0] = '\0';
            return lmoe_error(LMOE_ERR_OUT_OF_MEMORY,
                              "threadpool: cannot start worker thread %d of %d: %s (error %d)",
                              i + 1, pool->n_threads - 1, reason, rc);
        }
        pool->n_started++;
    }
    return LMOE_OK;
}

lmoe_status threadpool_create(int n_threads, lmoe_threadpool **out) {
    RETURN_ERROR_IF(out == NULL, LMOE_ERR_INVALID_ARGUMENT, "threadpool_create: out is NULL");
    *out = NULL;
    RETURN_ERROR_IF(n_threads < 1, LMOE_ERR_INVALID_ARGUMENT,
                    "threadpool: n_threads must be >= 1, got %d", n_threads);
    lmoe_threadpool *pool = mem_calloc(1, sizeof *pool);
    RETURN_ERROR_IF(pool == NULL, LMOE_ERR_OUT_OF_MEMORY, "threadpool: out of memory");
    pool->n_threads = n_threads;
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->stop, 0);
    atomic_init(&pool->next_item, 0);
    atomic_init(&pool->n_done, 0);
    atomic_init(&pool->n_sleeping, 0);
    if (pthread_mutex_init(&pool->mutex, NULL) != 0) {
        mem_free(pool);
        return lmoe_error(LMOE_ERR_INTERNAL, "threadpool: pthread_mutex_init failed");
    }
    if (pthread_cond_init(&pool->wake, NULL) != 0) {
        pthread_mutex_destroy(&pool->mutex);
        mem_free(pool);
        return lmoe_error(LMOE_ERR_INTERNAL, "threadpool: pthread_cond_init failed");
    }
    size_t n_workers = (size_t)n_threads - 1;
    pool->threads = mem_calloc(n_workers ? n_workers : 1, sizeof *pool->threads);
    pool->workers = mem_calloc(n_workers ? n_workers : 1, sizeof *pool->workers);
    if (pool->threads == NULL || pool->workers == NULL) {
        threadpool_destroy(pool);
        return lmoe_error(LMOE_ERR_OUT_OF_MEMORY, "threadpool: out of memory for %d threads",
                          n_threads);
    }
    lmoe_status status = start_workers(pool);
    if (status != LMOE_OK) {
        threadpool_destroy(pool);
        return status;
    }
    *out = pool;
    return LMOE_OK;
}

void threadpool_free(lmoe_threadpool *pool) {
    if (pool != NULL) threadpool_destroy(pool);
}

int threadpool_n_threads(const lmoe_threadpool *pool) { return pool->n_threads; }

int threadpool_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n >= 1 && n <= 65536 ? (int)n : 1;
}
