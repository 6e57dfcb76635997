/* json.h - a small, strict JSON reader for config.json, index files, safetensors headers and test
 * data: objects, arrays, strings with \u escapes and surrogate pairs, numbers, true/false/null.
 * Strings are UTF-8 and may contain NUL bytes. */
#ifndef LMOE_JSON_H
#define LMOE_JSON_H

#include <stdbool.h>
#include <stddef.h>

typedef enum json_kind { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_kind;

typedef struct json_value {
    json_kind kind;
    bool boolean;
    double number;
    char *str;                 /* JSON_STRING: NUL-terminated, but use str_len (may hold NULs) */
    size_t str_len;
    struct json_value *items;  /* JSON_ARRAY elements, or JSON_OBJECT values */
    char **keys;               /* JSON_OBJECT keys, parallel to items */
    size_t n_items;
} json_value;

/* Parses len bytes; returns NULL on malformed input or trailing garbage. */
json_value *json_parse(const char *text, size_t len);
void json_free(json_value *value);
/* Value of key in an object, or NULL. */
const json_value *json_get(const json_value *object, const char *key);

#endif
