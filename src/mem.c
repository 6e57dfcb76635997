/* mem.c - the library's allocator: libc's by default, or the one given to lmoe_set_allocator. */
#include "mem.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "llamamoe.h"

static void *libc_alloc(void *user, size_t size) {
    (void)user;
    return malloc(size);
}
static void *libc_resize(void *user, void *ptr, size_t size) {
    (void)user;
    return realloc(ptr, size);
}
static void libc_release(void *user, void *ptr) {
    (void)user;
    free(ptr);
}

static const lmoe_allocator LIBC_ALLOCATOR = {libc_alloc, libc_resize, libc_release, NULL};
static lmoe_allocator current = {libc_alloc, libc_resize, libc_release, NULL};
/* Counted so that switching allocators under live blocks is refused rather than mismatched. */
static atomic_size_t live_blocks;

lmoe_status lmoe_set_allocator(const lmoe_allocator *allocator) {
    if (!allocator) allocator = &LIBC_ALLOCATOR;
    if (!allocator->alloc || !allocator->resize || !allocator->release)
        return lmoe_error(LMOE_ERR_INVALID_ARGUMENT,
                          "lmoe_set_allocator: alloc, resize and release must all be set");
    size_t live = atomic_load(&live_blocks);
    if (live != 0)
        return lmoe_error(LMOE_ERR_MISUSE,
                          "lmoe_set_allocator: %zu blocks from the current allocator are still "
                          "alive; free every model, context, sampler and generation first", live);
    current = *allocator;
    return LMOE_OK;
}

size_t mem_live_blocks(void) { return atomic_load(&live_blocks); }

void *mem_alloc(size_t size) {
    void *p = current.alloc(current.user, size ? size : 1);
    if (p) atomic_fetch_add(&live_blocks, 1);
    return p;
}

void *mem_calloc(size_t count, size_t size) {
    if (size && count > SIZE_MAX / size) return NULL;
    void *p = mem_alloc(count * size);
    if (p) memset(p, 0, count * size);
    return p;
}

void *mem_realloc(void *ptr, size_t size) {
    if (!ptr) return mem_alloc(size);
    return current.resize(current.user, ptr, size ? size : 1);
}

void mem_free(void *ptr) {
    if (!ptr) return;
    atomic_fetch_sub(&live_blocks, 1);
    current.release(current.user, ptr);
}

/* The raw block's address is kept just before the aligned one. */
void *mem_alloc_aligned(size_t alignment, size_t size) {
    size_t extra = alignment - 1 + sizeof(void *);
    if (alignment == 0 || (alignment & (alignment - 1)) || size > SIZE_MAX - extra) return NULL;
    char *raw = mem_alloc(size + extra);
    if (!raw) return NULL;
    uintptr_t aligned = ((uintptr_t)raw + sizeof(void *) + alignment - 1) & ~(uintptr_t)(alignment - 1);
    memcpy((char *)aligned - sizeof(void *), &raw, sizeof raw);
    return (void *)aligned;
}

void mem_free_aligned(void *ptr) {
    if (!ptr) return;
    void *raw;
    memcpy(&raw, (char *)ptr - sizeof(void *), sizeof raw);
    mem_free(raw);
}
