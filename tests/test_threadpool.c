/* test_threadpool.c - parallel-for over ranges: sums equal the serial sum, every item is visited
 * exactly once, thread ids are in range, back-to-back jobs (spinning and sleeping workers), and
 * many create/free cycles. Meant to run under ThreadSanitizer too. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "test_util.h"
#include "threadpool.h"

#define MAX_THREADS 8

/* One job's bookkeeping. Each thread id adds to its own slot, so no atomics are needed: a
 * thread id runs its chunks one after another. */
typedef struct job {
    const uint32_t *values;
    uint8_t *visits;                 /* (n_items,) times each item was processed */
    uint64_t partial[MAX_THREADS];   /* sum of values per thread id */
    int bad_thread_id;
    int bad_range;
    int n_threads;
    size_t n_items, chunk_items;
} job;

static void sum_items(void *arg, size_t begin, size_t end, int thread_id) {
    job *j = arg;
    if (thread_id < 0 || thread_id >= j->n_threads) {
        j->bad_thread_id = 1; /* racy write of a constant: only ever set on failure */
        return;
    }
    size_t max_chunk = j->chunk_items ? j->chunk_items : j->n_items;
    if (begin >= end || end > j->n_items || end - begin > max_chunk) {
        j->bad_range = 1;
        return;
    }
    uint64_t s = 0;
    for (size_t i = begin; i < end; i++) {
        s += j->values[i];
        if (j->visits) j->visits[i]++;
    }
    j->partial[thread_id] += s;
}

static uint64_t run_job(lmoe_threadpool *pool, job *j, size_t n_items, size_t chunk_items) {
    memset(j->partial, 0, sizeof j->partial);
    j->n_items = n_items;
    j->chunk_items = chunk_items;
    j->n_threads = threadpool_n_threads(pool);
    threadpool_parallel_for(pool, n_items, chunk_items, sum_items, j);
    uint64_t total = 0;
    for (int t = 0; t < MAX_THREADS; t++) total += j->partial[t];
    return total;
}

static void test_create_errors(void) {
    lmoe_threadpool *pool = (lmoe_threadpool *)&pool;
    CHECK(threadpool_create(0, &pool) == LMOE_ERR_INVALID_ARGUMENT && pool == NULL);
    CHECK(strstr(lmoe_last_error(), "n_threads") != NULL);
    CHECK(threadpool_create(-2, &pool) == LMOE_ERR_INVALID_ARGUMENT);
    CHECK(threadpool_create(2, NULL) == LMOE_ERR_INVALID_ARGUMENT);
    threadpool_free(NULL);
    CHECK(threadpool_cpu_count() >= 1);
}

static void test_sums_and_visits(const uint32_t *values, size_t n_items, uint64_t serial) {
    const size_t chunks[] = {0, 1, 7, 1000, 65536, 1000000, 3000000};
    uint8_t *visits = calloc(n_items, 1);
    for (int n_threads = 1; n_threads <= 4; n_threads++) {
        lmoe_threadpool *pool = NULL;
        CHECK_OK(threadpool_create(n_threads, &pool));
        if (!pool) continue;
        CHECK(threadpool_n_threads(pool) == n_threads);
        for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
            /* chunk 1 over 10^6 items is slow under TSan and valgrind; a tenth shows the same. */
            size_t n = chunks[c] == 1 ? n_items / 10 : n_items;
            job j = {.values = values, .visits = visits};
            memset(visits, 0, n);
            uint64_t want = serial;
            if (n != n_items) {
                want = 0;
                for (size_t i = 0; i < n; i++) want += values[i];
            }
            uint64_t got = run_job(pool, &j, n, chunks[c]);
            CHECK_MSG(got == want, "%d threads, chunk %zu: sum %llu, want %llu", n_threads,
                      chunks[c], (unsigned long long)got, (unsigned long long)want);
            CHECK(!j.bad_thread_id && !j.bad_range);
            size_t wrong = 0;
            for (size_t i = 0; i < n; i++) wrong += visits[i] != 1;
            CHECK_MSG(wrong == 0, "%d threads, chunk %zu: %zu items not visited exactly once",
                      n_threads, chunks[c], wrong);
        }
        job empty = {.values = values};
        CHECK(run_job(pool, &empty, 0, 16) == 0); /* no items: fn is never called */
        threadpool_free(pool);
    }
    free(visits);
}

/* Many jobs in a row: workers stay in their spin phase. Every few hundred jobs the caller pauses
 * longer than the spin, so the workers go to sleep and the next job must wake them. */
static void test_back_to_back(const uint32_t *values) {
    for (int n_threads = 2; n_threads <= 4; n_threads++) {
        lmoe_threadpool *pool = NULL;
        CHECK_OK(threadpool_create(n_threads, &pool));
        if (!pool) continue;
        uint64_t want = 0;
        for (size_t i = 0; i < 256; i++) want += values[i];
        int wrong = 0;
        for (int k = 0; k < 10000; k++) {
            if (k % 500 == 499) nanosleep(&(struct timespec){0, 2000000}, NULL);
            job j = {.values = values};
            if (run_job(pool, &j, 256, 1 + (size_t)(k % 40)) != want || j.bad_range) wrong++;
        }
        CHECK_MSG(wrong == 0, "%d threads: %d of 10000 jobs wrong", n_threads, wrong);
        threadpool_free(pool);
    }
}

static void test_create_free_cycles(const uint32_t *values) {
    int wrong = 0;
    for (int k = 0; k < 300; k++) {
        int n_threads = 1 + k % 4;
        lmoe_threadpool *pool = NULL;
        lmoe_status st = threadpool_create(n_threads, &pool);
        if (st != LMOE_OK) {
            wrong++;
            continue;
        }
        if (k % 3 != 0) { /* some pools never run a job: free must still stop idle workers */
            job j = {.values = values};
            uint64_t want = 0;
            for (size_t i = 0; i < 1000; i++) want += values[i];
            if (run_job(pool, &j, 1000, 10) != want) wrong++;
        }
        threadpool_free(pool);
    }
    CHECK_MSG(wrong == 0, "%d of 300 create/run/free cycles failed", wrong);
}

int main(void) {
    const size_t n_items = 1000000;
    uint32_t *values = malloc(n_items * sizeof *values);
    uint64_t serial = 0;
    for (size_t i = 0; i < n_items; i++) {
        values[i] = (uint32_t)((i * 2654435761u) >> 7) & 0xFFFFF;
        serial += values[i];
    }
    test_create_errors();
    test_sums_and_visits(values, n_items, serial);
    test_back_to_back(values);
    test_create_free_cycles(values);
    free(values);
    return test_finish("test_threadpool");
}
