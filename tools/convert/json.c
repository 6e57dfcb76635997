/* json.c - a small recursive-descent JSON reader for test data (RFC 8259). Strict: no comments, no
 * trailing commas, no lone surrogates, no raw control characters in strings; nesting is limited so
 * hostile input cannot exhaust the stack. Every failure frees what was built and returns NULL. */
#include "json.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 256

typedef struct json_parser {
    const char *text;
    size_t len, pos;
    int depth;
} json_parser;

/* A growable byte buffer for strings. */
typedef struct json_buf {
    char *data;
    size_t len, cap;
} json_buf;

static bool buf_reserve(json_buf *b, size_t extra) {
    if (b->cap - b->len > extra) return true; /* keeps room for the final NUL */
    size_t cap = b->cap ? b->cap : 16;
    while (cap - b->len <= extra) {
        if (cap > SIZE_MAX / 2) return false;
        cap *= 2;
    }
    char *data = realloc(b->data, cap);
    if (!data) return false;
    b->data = data;
    b->cap = cap;
    return true;
}

static bool buf_put(json_buf *b, const char *bytes, size_t n) {
    if (!buf_reserve(b, n)) return false;
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
    return true;
}

static void free_contents(json_value *v);

static void skip_space(json_parser *p) {
    while (p->pos < p->len) {
        char c = p->text[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static bool consume(json_parser *p, char c) {
    if (p->pos < p->len && p->text[p->pos] == c) {
        p->pos++;
        return true;
    }
    return false;
}

static bool consume_word(json_parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->text + p->pos, word, n) != 0) return false;
    p->pos += n;
    return true;
}

/* ---- strings ---- */

static int hex4(const char *s) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9')   ? c - '0'
                : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                         : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static size_t utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* After "\u": one code point, joining a surrogate pair. */
static bool parse_unicode_escape(json_parser *p, json_buf *b) {
    if (p->len - p->pos < 4) return false;
    int hi = hex4(p->text + p->pos);
    if (hi < 0) return false;
    p->pos += 4;
    uint32_t cp = (uint32_t)hi;
    if (hi >= 0xDC00 && hi <= 0xDFFF) return false; /* a lone low surrogate */
    if (hi >= 0xD800 && hi <= 0xDBFF) {
        if (p->len - p->pos < 6 || p->text[p->pos] != '\\' || p->text[p->pos + 1] != 'u')
            return false;
        int lo = hex4(p->text + p->pos + 2);
        if (lo < 0xDC00 || lo > 0xDFFF) return false;
        p->pos += 6;
        cp = 0x10000 + (((uint32_t)hi - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
    }
    char utf8[4];
    return buf_put(b, utf8, utf8_encode(cp, utf8));
}

static bool parse_escape(json_parser *p, json_buf *b) {
    if (p->pos >= p->len) return false;
    char c = p->text[p->pos++], out;
    switch (c) {
    case '"': out = '"'; break;
    case '\\': out = '\\'; break;
    case '/': out = '/'; break;
    case 'b': out = '\b'; break;
    case 'f': out = '\f'; break;
    case 'n': out = '\n'; break;
    case 'r': out = '\r'; break;
    case 't': out = '\t'; break;
    case 'u': return parse_unicode_escape(p, b);
    default: return false;
    }
    return buf_put(b, &out, 1);
}

/* At the opening quote. On success *out is a malloc'd NUL-terminated copy and *out_len its length
 * (which may include NUL bytes from \u0000). */
static bool parse_string_raw(json_parser *p, char **out, size_t *out_len) {
    json_buf b = {NULL, 0, 0};
    if (!consume(p, '"')) return false;
    for (;;) {
        if (p->pos >= p->len) break;
        char c = p->text[p->pos++];
        bool ok;
        if (c == '"') {
            if (!buf_reserve(&b, 0)) break;
            b.data[b.len] = 0;
            *out = b.data;
            *out_len = b.len;
            return true;
        } else if (c == '\\') {
            ok = parse_escape(p, &b);
        } else if ((unsigned char)c < 0x20) {
            ok = false; /* raw control characters must be escaped */
        } else {
            ok = buf_put(&b, &c, 1);
        }
        if (!ok) break;
    }
    free(b.data);
    return false;
}

/* ---- numbers ---- */

static bool skip_digits(json_parser *p) {
    size_t start = p->pos;
    while (p->pos < p->len && p->text[p->pos] >= '0' && p->text[p->pos] <= '9') p->pos++;
    return p->pos > start;
}

/* Checks the JSON number grammar, then converts with strtod on a NUL-terminated copy (the input
 * is not NUL-terminated). */
static bool parse_number(json_parser *p, double *out) {
    size_t start = p->pos;
    consume(p, '-');
    if (consume(p, '0')) {
        /* no leading zeros */
    } else if (!skip_digits(p)) {
        return false;
    }
    if (consume(p, '.') && !skip_digits(p)) return false;
    if (consume(p, 'e') || consume(p, 'E')) {
        if (!consume(p, '+')) consume(p, '-');
        if (!skip_digits(p)) return false;
    }
    size_t n = p->pos - start;
    char small[64], *copy = n < sizeof small ? small : malloc(n + 1);
    if (!copy) return false;
    memcpy(copy, p->text + start, n);
    copy[n] = 0;
    *out = strtod(copy, NULL);
    if (copy != small) free(copy);
    return true;
}

/* ---- values ---- */

static bool parse_value(json_parser *p, json_value *v);

/* Appends one zeroed item (and key slot for objects) to v; returns it or NULL. */
static json_value *append_item(json_value *v, size_t *cap) {
    if (v->n_items == *cap) {
        size_t new_cap = *cap ? *cap * 2 : 4;
        if (new_cap > SIZE_MAX / sizeof(json_value)) return NULL;
        json_value *items = realloc(v->items, new_cap * sizeof *items);
        if (!items) return NULL;
        v->items = items;
        if (v->kind == JSON_OBJECT) {
            char **keys = realloc(v->keys, new_cap * sizeof *keys);
            if (!keys) return NULL;
            v->keys = keys;
        }
        *cap = new_cap;
    }
    json_value *item = &v->items[v->n_items];
    memset(item, 0, sizeof *item);
    if (v->kind == JSON_OBJECT) v->keys[v->n_items] = NULL;
    v->n_items++;
    return item;
}

/* Arrays and objects share one loop; an object member is "key": value. Items are counted in
 * v->n_items as soon as they exist, so free_contents releases a half-built container. */
static bool parse_container(json_parser *p, json_value *v, char close) {
    size_t cap = 0;
    if (++p->depth > JSON_MAX_DEPTH) return false;
    skip_space(p);
    if (consume(p, close)) {
        p->depth--;
        return true;
    }
    for (;;) {
        json_value *item = append_item(v, &cap);
        if (!item) return false;
        skip_space(p);
        if (v->kind == JSON_OBJECT) {
            size_t key_len;
            if (!parse_string_raw(p, &v->keys[v->n_items - 1], &key_len)) return false;
            skip_space(p);
            if (!consume(p, ':')) return false;
        }
        if (!parse_value(p, item)) return false;
        skip_space(p);
        if (consume(p, close)) break;
        if (!consume(p, ',')) return false;
    }
    p->depth--;
    return true;
}

static bool parse_value(json_parser *p, json_value *v) {
    skip_space(p);
    if (p->pos >= p->len) return false;
    char c = p->text[p->pos];
    if (c == '{' || c == '[') {
        p->pos++;
        v->kind = c == '{' ? JSON_OBJECT : JSON_ARRAY;
        return parse_container(p, v, c == '{' ? '}' : ']');
    }
    if (c == '"') {
        v->kind = JSON_STRING;
        return parse_string_raw(p, &v->str, &v->str_len);
    }
    if (consume_word(p, "true") || consume_word(p, "false")) {
        v->kind = JSON_BOOL;
        v->boolean = c == 't';
        return true;
    }
    if (consume_word(p, "null")) {
        v->kind = JSON_NULL;
        return true;
    }
    v->kind = JSON_NUMBER;
    return parse_number(p, &v->number);
}

json_value *json_parse(const char *text, size_t len) {
    if (!text && len > 0) return NULL;
    json_parser p = {text, len, 0, 0};
    json_value *root = calloc(1, sizeof *root);
    if (!root) return NULL;
    bool ok = parse_value(&p, root);
    skip_space(&p);
    if (!ok || p.pos != p.len) {
        json_free(root);
        return NULL;
    }
    return root;
}

static void free_contents(json_value *v) {
    free(v->str);
    for (size_t i = 0; i < v->n_items; i++) {
        free_contents(&v->items[i]);
        if (v->keys) free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
}

void json_free(json_value *value) {
    if (!value) return;
    free_contents(value);
    free(value);
}

const json_value *json_get(const json_value *object, const char *key) {
    if (!object || object->kind != JSON_OBJECT || !key) return NULL;
    for (size_t i = 0; i < object->n_items; i++)
        if (object->keys[i] && strcmp(object->keys[i], key) == 0) return &object->items[i];
    return NULL;
}
