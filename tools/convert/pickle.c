/* pickle.c - the restricted pickle stack machine that runs a torch.save data.pkl without running
 * any code. See pickle.h.
 *
 * It knows the opcodes a state dict uses and refuses any other opcode, and any global not in the
 * caller's table, by name. Its own state (stack, MARK frames, memo, the list of objects) is bounded
 * by the PK_MAX_* limits below, so a hostile pickle cannot make it allocate without limit; its
 * messages all read "pickle in <record> at byte N: ...". Split from the torch.save reader so the
 * machine can be read (and checked) apart from what torch's globals mean, which pytorch_zip.c
 * supplies through pk_hooks. */
#include "pickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* At most this many bytes of a name from the file go into a message. */
#define NAME_MAX_SHOWN 200
#define SHOWN(len) ((int)((len) < NAME_MAX_SHOWN ? (len) : NAME_MAX_SHOWN))

/* ---------------------------------------------------------------------------------------------
 * limits, messages, objects
 * ------------------------------------------------------------------------------------------- */

/* Bounds on what a hostile data.pkl can make the machine allocate. A 7B state dict needs a few
 * thousand of each. */
#define PK_MAX_STACK (1u << 20)
#define PK_MAX_MARKS (1u << 20)
#define PK_MAX_MEMO (1u << 20)
#define PK_MAX_OBJECTS (1u << 22)
#define PK_MAX_ITEMS (1u << 22)        /* container items, all containers together */

lmoe_status pk_fail(const unpickler *u, lmoe_status status, const char *fmt, ...) {
    char detail[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return lmoe_error(status, "pickle in %.*s at byte %zu: %s", SHOWN(u->where_len), u->where,
                      u->op_pos, detail);
}

/* Room for need items of elem bytes in array (capacity *cap, doubled up to limit). Returns the
 * array, moved or not, or NULL past the limit or out of memory (the old array is untouched). */
static void *grow(void *array, size_t *cap, size_t need, size_t elem, size_t limit) {
    if (need <= *cap) return array;
    if (need > limit) return NULL;
    size_t new_cap = *cap ? *cap : 16;
    while (new_cap < need) new_cap *= 2;
    if (new_cap > limit) new_cap = limit;
    void *p = realloc(array, new_cap * elem);
    if (p) *cap = new_cap;
    return p;
}

void pk_free(unpickler *u) {
    for (size_t i = 0; i < u->n_objs; i++) {
        free(u->objs[i]->items);
        free(u->objs[i]);
    }
    free(u->objs);
    free(u->stack);
    free(u->marks);
    free(u->memo);
}

lmoe_status pk_new_obj(unpickler *u, pk_kind kind, pk_value *out) {
    pk_obj **objs = grow(u->objs, &u->cap_objs, u->n_objs + 1, sizeof *objs, PK_MAX_OBJECTS);
    PK_CHECK(u, !objs, LMOE_ERR_UNSUPPORTED, "more than %u objects (or out of memory)",
             PK_MAX_OBJECTS);
    u->objs = objs;
    pk_obj *obj = calloc(1, sizeof *obj);
    PK_CHECK(u, !obj, LMOE_ERR_OUT_OF_MEMORY, "out of memory");
    u->objs[u->n_objs++] = obj;
    out->kind = kind;
    out->obj = obj;
    return LMOE_OK;
}

static lmoe_status obj_append(unpickler *u, pk_obj *obj, pk_value v) {
    pk_value *items = u->n_items_total < PK_MAX_ITEMS
                          ? grow(obj->items, &obj->cap, obj->n_items + 1, sizeof *items,
                                 PK_MAX_ITEMS)
                          : NULL;
    PK_CHECK(u, !items, LMOE_ERR_UNSUPPORTED, "more than %u container items (or out of memory)",
             PK_MAX_ITEMS);
    obj->items = items;
    obj->items[obj->n_items++] = v;
    u->n_items_total++;
    return LMOE_OK;
}

/* ---- the stack; MARK splits it into frames that pops may not cross ---- */

static size_t frame_floor(const unpickler *u) { return u->n_marks ? u->marks[u->n_marks - 1] : 0; }

static lmoe_status push(unpickler *u, pk_value v) {
    pk_value *stack = grow(u->stack, &u->cap_stack, u->n_stack + 1, sizeof *stack, PK_MAX_STACK);
    PK_CHECK(u, !stack, LMOE_ERR_UNSUPPORTED, "stack deeper than %u (or out of memory)",
             PK_MAX_STACK);
    u->stack = stack;
    u->stack[u->n_stack++] = v;
    return LMOE_OK;
}

static lmoe_status pop(unpickler *u, pk_value *out) {
    PK_CHECK(u, u->n_stack <= frame_floor(u), LMOE_ERR_BAD_FILE,
             "opcode 0x%02x pops from an empty stack", u->code[u->op_pos]);
    *out = u->stack[--u->n_stack];
    return LMOE_OK;
}

static lmoe_status peek(unpickler *u, pk_value **out) {
    PK_CHECK(u, u->n_stack <= frame_floor(u), LMOE_ERR_BAD_FILE,
             "opcode 0x%02x needs a value on an empty stack", u->code[u->op_pos]);
    *out = &u->stack[u->n_stack - 1];
    return LMOE_OK;
}

/* Ends the innermost MARK frame: its items are stack[*start, n_stack), still on the stack; the
 * caller uses them and then sets n_stack = *start. */
static lmoe_status pop_mark(unpickler *u, size_t *start) {
    PK_CHECK(u, u->n_marks == 0, LMOE_ERR_BAD_FILE, "opcode 0x%02x without a MARK",
             u->code[u->op_pos]);
    *start = u->marks[--u->n_marks];
    return LMOE_OK;
}

/* ---- operands ---- */

static lmoe_status take(unpickler *u, size_t n, const uint8_t **out) {
    PK_CHECK(u, u->size - u->pos < n, LMOE_ERR_BAD_FILE,
             "data ends inside the operand of opcode 0x%02x", u->code[u->op_pos]);
    *out = u->code + u->pos;
    u->pos += n;
    return LMOE_OK;
}

static lmoe_status take_uint(unpickler *u, size_t n, uint64_t *out) {
    const uint8_t *p;
    FORWARD_IF_ERROR(take(u, n, &p));
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;) v = v << 8 | p[i];
    *out = v;
    return LMOE_OK;
}

/* GLOBAL's operands: "module\nname\n". */
static lmoe_status take_line(unpickler *u, const char **line, size_t *len) {
    size_t left = u->size - u->pos;
    size_t limit = left < PK_MAX_GLOBAL_LINE ? left : PK_MAX_GLOBAL_LINE;
    const uint8_t *start = u->code + u->pos, *nl = memchr(start, '\n', limit);
    PK_CHECK(u, !nl, LMOE_ERR_BAD_FILE, "GLOBAL operand has no newline in %zu bytes", limit);
    *line = (const char *)start;
    *len = (size_t)(nl - start);
    u->pos += *len + 1;
    return LMOE_OK;
}

/* ---------------------------------------------------------------------------------------------
 * pickle opcodes
 * ------------------------------------------------------------------------------------------- */

static lmoe_status load_global(unpickler *u, const char *module, size_t module_len,
                               const char *name, size_t name_len) {
    const pk_allowed_global *g = u->hooks->globals;
    for (size_t i = 0; i < u->hooks->n_globals; i++)
        if (strlen(g[i].module) == module_len && memcmp(g[i].module, module, module_len) == 0 &&
            strlen(g[i].name) == name_len && memcmp(g[i].name, name, name_len) == 0)
            return push(u, (pk_value){.kind = PK_GLOBAL, .global = g[i].id});
    PK_FAIL(u, LMOE_ERR_UNSUPPORTED,
            "asks for global '%.*s.%.*s'; a state dict never needs it (refused: this reader "
            "runs no code)", SHOWN(module_len), module, SHOWN(name_len), name);
}

static lmoe_status op_global(unpickler *u) {
    const char *module, *name;
    size_t module_len, name_len;
    FORWARD_IF_ERROR(take_line(u, &module, &module_len));
    FORWARD_IF_ERROR(take_line(u, &name, &name_len));
    return load_global(u, module, module_len, name, name_len);
}

static lmoe_status op_stack_global(unpickler *u) {
    pk_value module, name;
    FORWARD_IF_ERROR(pop(u, &name));
    FORWARD_IF_ERROR(pop(u, &module));
    PK_CHECK(u, module.kind != PK_STR || name.kind != PK_STR, LMOE_ERR_BAD_FILE,
             "STACK_GLOBAL needs two strings");
    return load_global(u, module.str.ptr, module.str.len, name.str.ptr, name.str.len);
}

static lmoe_status op_string(unpickler *u, size_t len_bytes) {
    uint64_t len;
    const uint8_t *p;
    FORWARD_IF_ERROR(take_uint(u, len_bytes, &len));
    PK_CHECK(u, len > u->size - u->pos, LMOE_ERR_BAD_FILE,
             "string of %llu bytes runs past the end of the pickle", (unsigned long long)len);
    FORWARD_IF_ERROR(take(u, (size_t)len, &p));
    return push(u, (pk_value){.kind = PK_STR, .str = {(const char *)p, (size_t)len}});
}

/* BININT1/BININT2 are unsigned, BININT signed 32-bit, LONG1 signed little-endian of n bytes. */
static lmoe_status op_int(unpickler *u, size_t n_bytes, int is_signed) {
    uint64_t raw;
    FORWARD_IF_ERROR(take_uint(u, n_bytes, &raw));
    int64_t v = (int64_t)raw;
    if (is_signed && n_bytes > 0 && n_bytes < 8 && (raw >> (8 * n_bytes - 1)) & 1)
        v = (int64_t)(raw | ~(uint64_t)0 << (8 * n_bytes)); /* sign-extend */
    return push(u, (pk_value){.kind = PK_INT, .i = v});
}

static lmoe_status op_long1(unpickler *u) {
    uint64_t n;
    FORWARD_IF_ERROR(take_uint(u, 1, &n));
    PK_CHECK(u, n > 8, LMOE_ERR_UNSUPPORTED, "LONG1 integer of %llu bytes (at most 8 supported)",
             (unsigned long long)n);
    return op_int(u, (size_t)n, 1);
}

/* A tuple of the n values on top of the stack (n = SIZE_MAX: everything since the MARK). */
static lmoe_status op_tuple(unpickler *u, size_t n) {
    size_t start;
    if (n == SIZE_MAX) {
        FORWARD_IF_ERROR(pop_mark(u, &start));
    } else {
        PK_CHECK(u, u->n_stack - frame_floor(u) < n, LMOE_ERR_BAD_FILE,
                 "TUPLE%zu with fewer than %zu values on the stack", n, n);
        start = u->n_stack - n;
    }
    pk_value tuple;
    FORWARD_IF_ERROR(pk_new_obj(u, PK_TUPLE, &tuple));
    for (size_t i = start; i < u->n_stack; i++)
        FORWARD_IF_ERROR(obj_append(u, tuple.obj, u->stack[i]));
    u->n_stack = start;
    return push(u, tuple);
}

static lmoe_status op_put(unpickler *u, uint64_t index) {
    pk_value *top;
    FORWARD_IF_ERROR(peek(u, &top));
    PK_CHECK(u, index >= PK_MAX_MEMO, LMOE_ERR_UNSUPPORTED,
             "memo index %llu (at most %u supported)", (unsigned long long)index, PK_MAX_MEMO);
    size_t old_cap = u->cap_memo;
    pk_value *memo = grow(u->memo, &u->cap_memo, (size_t)index + 1, sizeof *memo, PK_MAX_MEMO);
    PK_CHECK(u, !memo, LMOE_ERR_OUT_OF_MEMORY, "out of memory for memo index %llu",
             (unsigned long long)index);
    u->memo = memo;
    for (size_t i = old_cap; i < u->cap_memo; i++) u->memo[i].kind = PK_UNSET;
    if (u->memo[index].kind == PK_UNSET) u->n_memo_set++;
    u->memo[index] = *top;
    return LMOE_OK;
}

static lmoe_status op_get(unpickler *u, uint64_t index) {
    PK_CHECK(u, index >= u->cap_memo || u->memo[index].kind == PK_UNSET, LMOE_ERR_BAD_FILE,
             "memo index %llu was never put", (unsigned long long)index);
    return push(u, u->memo[index]);
}

/* BINPERSID: the caller's persistent_load turns the id into an object. */
static lmoe_status op_persistent_id(unpickler *u) {
    pk_value pid, result;
    FORWARD_IF_ERROR(pop(u, &pid));
    FORWARD_IF_ERROR(u->hooks->persistent_load(u, u->hooks->user, &pid, &result));
    return push(u, result);
}

/* REDUCE calls a global on an argument tuple; what the call means is the caller's reduce. */
static lmoe_status op_reduce(unpickler *u) {
    pk_value args, callable, result;
    FORWARD_IF_ERROR(pop(u, &args));
    FORWARD_IF_ERROR(pop(u, &callable));
    PK_CHECK(u, callable.kind != PK_GLOBAL || args.kind != PK_TUPLE, LMOE_ERR_BAD_FILE,
             "REDUCE needs a global and an argument tuple");
    FORWARD_IF_ERROR(u->hooks->reduce(u, u->hooks->user, callable.global, args.obj, &result));
    return push(u, result);
}

/* SETITEM(S) into the dict under the items; n_values is 2 or SIZE_MAX (since the MARK). */
static lmoe_status op_setitems(unpickler *u, size_t n_values) {
    size_t start;
    if (n_values == SIZE_MAX) {
        FORWARD_IF_ERROR(pop_mark(u, &start));
    } else {
        PK_CHECK(u, u->n_stack - frame_floor(u) < 2, LMOE_ERR_BAD_FILE,
                 "SETITEM needs a key and a value");
        start = u->n_stack - 2;
    }
    PK_CHECK(u, (u->n_stack - start) % 2 != 0, LMOE_ERR_BAD_FILE,
             "SETITEMS with an odd number of values");
    PK_CHECK(u, start <= frame_floor(u) || u->stack[start - 1].kind != PK_DICT,
             LMOE_ERR_BAD_FILE, "SETITEM(S) on something that is not a dict");
    pk_obj *dict = u->stack[start - 1].obj;
    for (size_t i = start; i < u->n_stack; i++)
        FORWARD_IF_ERROR(obj_append(u, dict, u->stack[i]));
    u->n_stack = start;
    return LMOE_OK;
}

static lmoe_status op_appends(unpickler *u, size_t n_values) {
    size_t start;
    if (n_values == SIZE_MAX) {
        FORWARD_IF_ERROR(pop_mark(u, &start));
    } else {
        PK_CHECK(u, u->n_stack - frame_floor(u) < 1, LMOE_ERR_BAD_FILE, "APPEND needs a value");
        start = u->n_stack - 1;
    }
    PK_CHECK(u, start <= frame_floor(u) || u->stack[start - 1].kind != PK_LIST,
             LMOE_ERR_BAD_FILE, "APPEND(S) on something that is not a list");
    pk_obj *list = u->stack[start - 1].obj;
    for (size_t i = start; i < u->n_stack; i++)
        FORWARD_IF_ERROR(obj_append(u, list, u->stack[i]));
    u->n_stack = start;
    return LMOE_OK;
}

/* BUILD sets an object's state; torch only builds OrderedDicts (with empty state): ignored. */
static lmoe_status op_build(unpickler *u) {
    pk_value state, *target;
    FORWARD_IF_ERROR(pop(u, &state));
    FORWARD_IF_ERROR(peek(u, &target));
    PK_CHECK(u, target->kind != PK_DICT, LMOE_ERR_UNSUPPORTED,
             "BUILD on something other than an OrderedDict");
    return LMOE_OK;
}

static lmoe_status op_mark(unpickler *u) {
    size_t *marks = grow(u->marks, &u->cap_marks, u->n_marks + 1, sizeof *marks, PK_MAX_MARKS);
    PK_CHECK(u, !marks, LMOE_ERR_UNSUPPORTED, "more than %u nested MARKs (or out of memory)",
             PK_MAX_MARKS);
    u->marks = marks;
    u->marks[u->n_marks++] = u->n_stack;
    return LMOE_OK;
}

static lmoe_status op_proto(unpickler *u) {
    uint64_t version;
    FORWARD_IF_ERROR(take_uint(u, 1, &version));
    PK_CHECK(u, version > PK_MAX_PROTOCOL, LMOE_ERR_UNSUPPORTED,
             "pickle protocol %llu (at most %d supported)", (unsigned long long)version,
             PK_MAX_PROTOCOL);
    return LMOE_OK;
}

static lmoe_status op_new(unpickler *u, pk_kind kind) {
    pk_value v;
    FORWARD_IF_ERROR(pk_new_obj(u, kind, &v));
    return push(u, v);
}

/* Runs one opcode; *stop is set by STOP. */
static lmoe_status step(unpickler *u, uint8_t op, int *stop) {
    uint64_t n;
    switch (op) {
    case 0x80: return op_proto(u);                                   /* PROTO */
    case 0x95: return take_uint(u, 8, &n);                           /* FRAME: a buffering hint */
    case '}': return op_new(u, PK_DICT);                             /* EMPTY_DICT */
    case ']': return op_new(u, PK_LIST);                             /* EMPTY_LIST */
    case ')': return op_tuple(u, 0);                                 /* EMPTY_TUPLE */
    case '(': return op_mark(u);                                     /* MARK */
    case 'q': FORWARD_IF_ERROR(take_uint(u, 1, &n)); return op_put(u, n); /* BINPUT */
    case 'r': FORWARD_IF_ERROR(take_uint(u, 4, &n)); return op_put(u, n); /* LONG_BINPUT */
    case 'h': FORWARD_IF_ERROR(take_uint(u, 1, &n)); return op_get(u, n); /* BINGET */
    case 'j': FORWARD_IF_ERROR(take_uint(u, 4, &n)); return op_get(u, n); /* LONG_BINGET */
    case 0x94: return op_put(u, u->n_memo_set);                      /* MEMOIZE */
    case 'X': return op_string(u, 4);                                /* BINUNICODE */
    case 0x8c: return op_string(u, 1);                               /* SHORT_BINUNICODE */
    case 0x8d: return op_string(u, 8);                               /* BINUNICODE8 */
    case 'J': return op_int(u, 4, 1);                                /* BININT */
    case 'K': return op_int(u, 1, 0);                                /* BININT1 */
    case 'M': return op_int(u, 2, 0);                                /* BININT2 */
    case 0x8a: return op_long1(u);                                   /* LONG1 */
    case 'N': return push(u, (pk_value){.kind = PK_NONE});           /* NONE */
    case 0x88: return push(u, (pk_value){.kind = PK_BOOL, .i = 1});  /* NEWTRUE */
    case 0x89: return push(u, (pk_value){.kind = PK_BOOL, .i = 0});  /* NEWFALSE */
    case 't': return op_tuple(u, SIZE_MAX);                          /* TUPLE */
    case 0x85: return op_tuple(u, 1);                                /* TUPLE1 */
    case 0x86: return op_tuple(u, 2);                                /* TUPLE2 */
    case 0x87: return op_tuple(u, 3);                                /* TUPLE3 */
    case 'c': return op_global(u);                                   /* GLOBAL */
    case 0x93: return op_stack_global(u);                            /* STACK_GLOBAL */
    case 'Q': return op_persistent_id(u);                            /* BINPERSID */
    case 'R': return op_reduce(u);                                   /* REDUCE */
    case 's': return op_setitems(u, 2);                              /* SETITEM */
    case 'u': return op_setitems(u, SIZE_MAX);                       /* SETITEMS */
    case 'a': return op_appends(u, 1);                               /* APPEND */
    case 'e': return op_appends(u, SIZE_MAX);                        /* APPENDS */
    case 'b': return op_build(u);                                    /* BUILD */
    case '.': *stop = 1; return LMOE_OK;                             /* STOP */
    default: break;
    }
    PK_FAIL(u, LMOE_ERR_UNSUPPORTED,
            "opcode 0x%02x ('%c') is not one a state dict uses (refused: this reader runs no "
            "code)", op, op >= 0x20 && op < 0x7f ? op : '?');
}

void pk_init(unpickler *u, const uint8_t *code, size_t size, const char *where, size_t where_len,
             const pk_hooks *hooks) {
    *u = (unpickler){.code = code, .size = size, .where = where, .where_len = where_len,
                     .hooks = hooks};
}

lmoe_status pk_run(unpickler *u, pk_value *result) {
    for (int stop = 0; !stop;) {
        u->op_pos = u->pos;
        PK_CHECK(u, u->pos >= u->size, LMOE_ERR_BAD_FILE, "the pickle ends without STOP");
        FORWARD_IF_ERROR(step(u, u->code[u->pos++], &stop));
    }
    FORWARD_IF_ERROR(pop(u, result));
    u->op_pos = u->size;
    return LMOE_OK;
}
