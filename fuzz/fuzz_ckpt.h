/* fuzz_ckpt.h - what every ckpt_file parsed from a buffer must satisfy
 * (tools/convert/checkpoint.h), checked by fuzz_safetensors and fuzz_pytorch after a successful
 * parse. A failed check traps, so libFuzzer (or the replay driver) reports the input. */
#ifndef LMOE_FUZZ_CKPT_H
#define LMOE_FUZZ_CKPT_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

static inline int fuzz_ckpt_cmp_data(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)(*(const ckpt_tensor *const *)a)->data;
    uintptr_t y = (uintptr_t)(*(const ckpt_tensor *const *)b)->data;
    return x < y ? -1 : x > y;
}

/* Sorted by start, no tensor begins before the previous one ends (safetensors promises this;
 * a torch.save file may hold views sharing one storage, so fuzz_pytorch does not ask it). */
static inline void fuzz_ckpt_check_disjoint(const ckpt_file *f) {
    if (f->n_tensors < 2) return;
    const ckpt_tensor **sorted = malloc(f->n_tensors * sizeof *sorted);
    if (!sorted) return;
    for (size_t i = 0; i < f->n_tensors; i++) sorted[i] = &f->tensors[i];
    qsort(sorted, f->n_tensors, sizeof *sorted, fuzz_ckpt_cmp_data);
    for (size_t i = 1; i < f->n_tensors; i++) {
        uintptr_t prev_end = (uintptr_t)sorted[i - 1]->data + sorted[i - 1]->n_bytes;
        FUZZ_CHECK((uintptr_t)sorted[i]->data >= prev_end);
    }
    free(sorted);
}

/* The invariants of a file parsed from the size bytes at data:
 *   - the file lends its buffer (not owned) and the tensor list exists when it is not empty;
 *   - each name is a NUL-terminated string (strlen under ASan reads it to its end) and unique;
 *   - each type is F32, F16 or BF16, n_dims <= CKPT_MAX_DIMS;
 *   - n_bytes == product of the shape x element size, computed without overflow;
 *   - [data, data + n_bytes) lies inside the input, aligned to the element (consumers read the
 *     data in place as float / uint16_t arrays). Its first and last bytes are read, so ASan also
 *     sees a pointer that is inside the input but was computed from a freed or other buffer. */
static inline void fuzz_ckpt_check(const ckpt_file *f, const uint8_t *data, size_t size) {
    FUZZ_CHECK(!f->owns_map && f->map.data == (const void *)data && f->map.size == size);
    FUZZ_CHECK(f->n_tensors == 0 || f->tensors != NULL);
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        const ckpt_tensor *t = &f->tensors[i];
        FUZZ_CHECK(t->name != NULL);
        sink ^= (uint8_t)strlen(t->name);
        uint64_t elem = 0;
        switch (t->type) {
        case GGML_TYPE_F32: elem = 4; break;
        case GGML_TYPE_F16:
        case GGML_TYPE_BF16: elem = 2; break;
        default: __builtin_trap();
        }
        FUZZ_CHECK(t->n_dims <= CKPT_MAX_DIMS);
        uint64_t n_bytes = elem;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            uint64_t dim = t->shape[d];
            FUZZ_CHECK(dim == 0 || n_bytes <= UINT64_MAX / dim);
            n_bytes *= dim;
        }
        FUZZ_CHECK(n_bytes == t->n_bytes);
        /* as integers: comparing pointers into different objects is undefined */
        uintptr_t start = (uintptr_t)t->data, base = (uintptr_t)data;
        FUZZ_CHECK(start >= base && start - base <= size);
        size_t offset = (size_t)(start - base);
        FUZZ_CHECK(t->n_bytes <= size - offset);
        const uint8_t *p = data + offset;
        FUZZ_CHECK(offset % elem == 0);
        if (t->n_bytes) sink ^= p[0] ^ p[t->n_bytes - 1];
    }
    (void)sink;
    /* unique names; quadratic, so only for lists a small input can hold without trouble */
    if (f->n_tensors <= 512)
        for (size_t i = 0; i < f->n_tensors; i++)
            for (size_t j = i + 1; j < f->n_tensors; j++)
                FUZZ_CHECK(strcmp(f->tensors[i].name, f->tensors[j].name) != 0);
}

#endif
