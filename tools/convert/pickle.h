/* pickle.h - a restricted pickle stack machine for the data.pkl of torch.save files. It runs the
 * opcodes a state dict uses (up to protocol 5: ints, strings, tuples, lists, dicts, the memo,
 * MARK frames, GLOBAL/STACK_GLOBAL, REDUCE, BUILD, BINPERSID) and nothing else; it never runs
 * code. Globals are looked up in a table the caller gives, and anything not in it is refused by
 * name. What REDUCE and BINPERSID mean is up to the caller's hooks (pytorch_zip.c makes storages
 * and tensors with them), so this file knows nothing about zip records or torch's rebuild
 * functions.
 *
 * Every container (and every storage or tensor a hook makes) is one pk_obj in a single list owned
 * by the unpickler and freed in one pass by pk_free, so shared references (memo) and cycles need
 * no ownership rules, and nothing recurses on input depth. Values point into the pickle bytes and
 * into those objects: they live until pk_free. */
#ifndef LMOE_PICKLE_H
#define LMOE_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "error.h"

/* Longest GLOBAL operand line, and the newest protocol accepted by PROTO. */
#define PK_MAX_GLOBAL_LINE 256
#define PK_MAX_PROTOCOL 5

typedef enum pk_kind {
    PK_UNSET,                    /* an empty memo slot; never on the stack */
    PK_NONE,
    PK_BOOL,
    PK_INT,
    PK_STR,
    PK_GLOBAL,
    PK_TUPLE,
    PK_LIST,
    PK_DICT,
    PK_STORAGE,                  /* made by the hooks only; the machine just moves them */
    PK_TENSOR
} pk_kind;

typedef struct pk_obj pk_obj;

typedef struct pk_value {
    pk_kind kind;
    union {
        int64_t i;               /* PK_BOOL, PK_INT */
        struct {
            const char *ptr;     /* PK_STR: bytes inside data.pkl, not NUL-terminated */
            size_t len;
        } str;
        int global;              /* PK_GLOBAL: the id from the caller's pk_allowed_global table */
        pk_obj *obj;             /* PK_TUPLE, PK_LIST, PK_DICT, PK_STORAGE, PK_TENSOR */
    };
} pk_value;

struct pk_obj {
    pk_value *items;             /* tuple, list: the items; dict: key, value, key, value, ... */
    size_t n_items, cap;
    /* storage, tensor: set by the hook that made it; the machine never reads these */
    ggml_type type;              /* element type */
    const uint8_t *data;         /* first byte, in the map */
    uint64_t numel;              /* elements */
    uint32_t n_dims;             /* tensor */
    uint64_t shape[CKPT_MAX_DIMS];
};

/* A global the pickle may ask for (by GLOBAL or STACK_GLOBAL), pushed as PK_GLOBAL with id. */
typedef struct pk_allowed_global {
    const char *module, *name;
    int id;
} pk_allowed_global;

typedef struct unpickler unpickler;

/* What the caller gives the machine. Both hooks are required; *out is pushed when they succeed.
 * They report errors with PK_CHECK / PK_FAIL (or forward one already set). */
typedef struct pk_hooks {
    const pk_allowed_global *globals;
    size_t n_globals;
    /* BINPERSID: pid is the persistent id popped off the stack */
    lmoe_status (*persistent_load)(unpickler *u, void *user, const pk_value *pid, pk_value *out);
    /* REDUCE: callable is the id of a global, args is the argument tuple */
    lmoe_status (*reduce)(unpickler *u, void *user, int callable, const pk_obj *args,
                          pk_value *out);
    void *user;
} pk_hooks;

/* The machine's state; set up by pk_init (or zeroed, which pk_free accepts), fields private. */
struct unpickler {
    const uint8_t *code;         /* data.pkl */
    size_t size, pos;
    size_t op_pos;               /* offset of the opcode being run, for messages */
    const char *where;           /* data.pkl's record name, for messages */
    size_t where_len;
    const pk_hooks *hooks;
    pk_value *stack;
    size_t n_stack, cap_stack;
    size_t *marks;               /* stack heights at each MARK */
    size_t n_marks, cap_marks;
    pk_value *memo;              /* indexed by memo key; PK_UNSET where nothing was put */
    size_t cap_memo, n_memo_set;
    pk_obj **objs;               /* every object made, freed together */
    size_t n_objs, cap_objs, n_items_total;
};

/* Ready to run the size bytes at code (not copied); where (where_len bytes) names them in
 * messages. hooks must outlive the run. */
void pk_init(unpickler *u, const uint8_t *code, size_t size, const char *where, size_t where_len,
             const pk_hooks *hooks);
/* Runs to STOP and pops the result. Afterwards, pk_fail messages name the end of the pickle (the
 * caller is then checking the whole object). */
lmoe_status pk_run(unpickler *u, pk_value *result);
/* Frees every object, the stack, marks and memo. */
void pk_free(unpickler *u);

/* A new empty object of kind (PK_TUPLE, PK_LIST, PK_DICT, PK_STORAGE, PK_TENSOR) in *out. */
lmoe_status pk_new_obj(unpickler *u, pk_kind kind, pk_value *out);

/* Records "pickle in <record> at byte N: <detail>" and returns status. */
lmoe_status pk_fail(const unpickler *u, lmoe_status status, const char *fmt, ...)
    LMOE_PRINTF(3, 4);

/* Like RETURN_ERROR_IF, with the pickle's name and offset in front of the message; PK_FAIL
 * fails unconditionally. Both return status itself, so the compiler sees a nonzero constant. */
#define PK_CHECK(u, cond, status, ...)                                                             \
    do {                                                                                           \
        if (cond) {                                                                                \
            pk_fail((u), (status), __VA_ARGS__);                                                   \
            return (status);                                                                       \
        }                                                                                          \
    } while (0)
#define PK_FAIL(u, status, ...) return (pk_fail((u), (status), __VA_ARGS__), (status))

#endif
