/* mem.h - every heap allocation of the library goes through these, so that an embedding program
 * can supply its own allocator (lmoe_set_allocator) and the tests can fail any one allocation.
 * Memory from mem_alloc_aligned is released with mem_free_aligned; everything else with mem_free.
 * A block must be freed by the allocator that made it: lmoe_set_allocator refuses while blocks
 * are alive (mem_live_blocks). */
#ifndef LMOE_MEM_H
#define LMOE_MEM_H

#include <stddef.h>

void *mem_alloc(size_t size);                  /* like malloc; size 0 gives a unique block */
void *mem_calloc(size_t count, size_t size);   /* zeroed; NULL when count * size overflows */
void *mem_realloc(void *ptr, size_t size);     /* like realloc; on failure ptr stays valid */
void mem_free(void *ptr);                      /* NULL is ignored */
/* A block whose address is a multiple of alignment (a power of two). */
void *mem_alloc_aligned(size_t alignment, size_t size);
void mem_free_aligned(void *ptr);
/* Blocks allocated and not yet freed, over the whole process. */
size_t mem_live_blocks(void);

#endif
