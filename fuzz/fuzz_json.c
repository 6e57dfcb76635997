/* fuzz_json.c - libFuzzer target: the input is JSON text for json_parse (tools/convert/json.c),
 * the reader under config.json, the index files and safetensors headers. An accepted document is
 * walked: every kind known, every string and key NUL-terminated at its length (ASan reads them),
 * containers with their arrays, each key found again by json_get, and no deeper than the reader's
 * nesting limit (json.c's JSON_MAX_DEPTH, 256: deeper input must be refused, not recursed into). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) __builtin_trap();                                                             \
    } while (0)

#define MAX_DEPTH 256

/* depth counts containers, the outermost being 1; recursion is bounded by the check itself */
static void walk(const json_value *v, int depth) {
    switch (v->kind) {
    case JSON_NULL:
    case JSON_BOOL:
    case JSON_NUMBER: return;
    case JSON_STRING:
        FUZZ_CHECK(v->str != NULL && v->str[v->str_len] == '\0');
        return;
    case JSON_ARRAY:
    case JSON_OBJECT: break;
    default: __builtin_trap();
    }
    FUZZ_CHECK(depth <= MAX_DEPTH);
    FUZZ_CHECK(v->n_items == 0 || v->items != NULL);
    if (v->kind == JSON_OBJECT) {
        FUZZ_CHECK(v->n_items == 0 || v->keys != NULL);
        for (size_t i = 0; i < v->n_items; i++) {
            FUZZ_CHECK(v->keys[i] != NULL);
            /* the first item with an equal key (a key with a NUL compares up to it) */
            const json_value *found = json_get(v, v->keys[i]);
            FUZZ_CHECK(found != NULL && found >= v->items && found <= &v->items[i]);
        }
    } else {
        FUZZ_CHECK(v->keys == NULL);
    }
    for (size_t i = 0; i < v->n_items; i++) walk(&v->items[i], depth + 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    json_value *root = json_parse((const char *)data, size);
    if (!root) return 0;
    walk(root, 1);
    json_free(root);
    return 0;
}
