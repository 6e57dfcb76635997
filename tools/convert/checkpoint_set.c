/* checkpoint_set.c - a Hugging Face checkpoint folder as one set of tensors: the index json that
 * says which shard holds which tensor, or a single weights file. Also what the two readers share:
 * closing a file, opening one through a map, and the duplicate-name check. */
#include "checkpoint.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint_internal.h"
#include "error.h"
#include "json.h"

/* A 7B index is about 30 KB; anything near this is not an index. */
#define INDEX_MAX_BYTES (64u << 20)

/* ---- shared by the readers ---- */

void ckpt_file_close(ckpt_file *file) {
    if (!file) return;
    for (size_t i = 0; i < file->n_tensors; i++) free(file->tensors[i].name);
    free(file->tensors);
    if (file->owns_map) file_map_close(&file->map);
    memset(file, 0, sizeof *file);
}

lmoe_status ckpt_open_with(const char *path, ckpt_file *out, ckpt_parse_fn parse) {
    RETURN_ERROR_IF(!out, LMOE_ERR_INVALID_ARGUMENT, "checkpoint open: out is NULL");
    memset(out, 0, sizeof *out);
    RETURN_ERROR_IF(!path, LMOE_ERR_INVALID_ARGUMENT, "checkpoint open: path is NULL");
    file_map map;
    FORWARD_IF_ERROR(file_map_open(path, &map));
    lmoe_status status = parse(map.data, map.size, out);
    if (status != LMOE_OK) {
        file_map_close(&map);
        return lmoe_error_prefix(status, "%s", path);
    }
    out->owns_map = 1; /* parse recorded the same data and size in out->map */
    return LMOE_OK;
}

static int cmp_tensor_ptr_name(const void *a, const void *b) {
    const ckpt_tensor *x = *(const ckpt_tensor *const *)a, *y = *(const ckpt_tensor *const *)b;
    return strcmp(x->name, y->name);
}

lmoe_status ckpt_check_unique_names(const ckpt_tensor *tensors, size_t n, const char *what) {
    if (n < 2) return LMOE_OK;
    const ckpt_tensor **sorted = malloc(n * sizeof *sorted);
    RETURN_ERROR_IF(!sorted, LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory sorting %zu names", what,
                    n);
    for (size_t i = 0; i < n; i++) sorted[i] = &tensors[i];
    qsort(sorted, n, sizeof *sorted, cmp_tensor_ptr_name);
    lmoe_status status = LMOE_OK;
    for (size_t i = 1; i < n && status == LMOE_OK; i++)
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0)
            status = lmoe_error(LMOE_ERR_BAD_FILE, "%s: tensor '%.200s' appears twice", what,
                                sorted[i]->name);
    free(sorted);
    return status;
}

/* ---- the folder ---- */

/* The two layouts Hugging Face writes, in the order save_pretrained prefers them. */
typedef struct ckpt_layout {
    const char *index_name;
    const char *single_name;
    ckpt_parse_fn parse;
} ckpt_layout;

static const ckpt_layout LAYOUTS[] = {
    {"model.safetensors.index.json", "model.safetensors", safetensors_parse},
    {"pytorch_model.bin.index.json", "pytorch_model.bin", pytorch_zip_parse},
};
#define N_LAYOUTS (sizeof LAYOUTS / sizeof LAYOUTS[0])

/* dir + "/" + name, malloc'd; NULL when out of memory. */
static char *join_path(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *path = malloc(a + b + 2);
    if (!path) return NULL;
    memcpy(path, dir, a);
    path[a] = '/';
    memcpy(path + a + 1, name, b + 1);
    return path;
}

/* Absent means "try the next layout"; any other stat failure is left for open to report. */
static int path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 || (errno != ENOENT && errno != ENOTDIR);
}

static lmoe_status open_one(const char *path, ckpt_set *out, ckpt_parse_fn parse,
                            ckpt_progress_fn progress, void *user) {
    out->files = calloc(1, sizeof *out->files);
    RETURN_ERROR_IF(!out->files, LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    FORWARD_IF_ERROR(ckpt_open_with(path, &out->files[0], parse));
    out->n_files = 1;
    if (progress) progress(user, 0, 1, path);
    return LMOE_OK;
}

typedef struct named_tensor {
    const char *name;
    size_t file;                 /* index into shards / out->files */
} named_tensor;

/* What an index needs while it is checked; freed by index_state_free whatever happens. */
typedef struct index_state {
    json_value *root;
    const json_value *weight_map;
    const char **shards;         /* distinct shard names, sorted; point into root */
    size_t n_shards;
    char *shard_path;            /* path of the shard being opened */
    named_tensor *all;          /* every tensor of every shard, sorted by name */
    size_t n_all;
} index_state;

static void index_state_free(index_state *s) {
    json_free(s->root);
    free(s->shards);
    free(s->shard_path);
    free(s->all);
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_named(const void *a, const void *b) {
    return strcmp(((const named_tensor *)a)->name, ((const named_tensor *)b)->name);
}

/* A shard is a file next to the index: a name that could leave the folder is refused. */
static lmoe_status check_shard_name(const char *index, const char *tensor, const json_value *v) {
    RETURN_ERROR_IF(!v || v->kind != JSON_STRING, LMOE_ERR_BAD_FILE,
                    "%s: weight_map entry for '%.200s' is not a string", index, tensor);
    RETURN_ERROR_IF(v->str_len == 0 || strlen(v->str) != v->str_len || strchr(v->str, '/') ||
                        strchr(v->str, '\\') || strstr(v->str, ".."),
                    LMOE_ERR_BAD_FILE,
                    "%s: weight_map puts '%.200s' in shard '%.200s', which is not a plain file "
                    "name in the same folder (no '/', '\\' or '..')",
                    index, tensor, v->str);
    return LMOE_OK;
}

/* Reads the index json and collects its distinct shard names. */
static lmoe_status read_index(const char *index_path, index_state *s) {
    file_map map;
    FORWARD_IF_ERROR(file_map_open(index_path, &map));
    int too_big = map.size > INDEX_MAX_BYTES;
    if (!too_big) s->root = json_parse((const char *)map.data, map.size);
    file_map_close(&map);
    RETURN_ERROR_IF(too_big, LMOE_ERR_BAD_FILE, "%s: %zu bytes is too large for an index file",
                    index_path, map.size);
    RETURN_ERROR_IF(!s->root || s->root->kind != JSON_OBJECT, LMOE_ERR_BAD_FILE,
                    "%s: not a JSON object", index_path);
    s->weight_map = json_get(s->root, "weight_map");
    RETURN_ERROR_IF(!s->weight_map || s->weight_map->kind != JSON_OBJECT, LMOE_ERR_BAD_FILE,
                    "%s: no \"weight_map\" object", index_path);
    size_t n = s->weight_map->n_items;
    RETURN_ERROR_IF(n == 0, LMOE_ERR_BAD_FILE, "%s: weight_map lists no tensors", index_path);
    s->shards = malloc(n * sizeof *s->shards);
    RETURN_ERROR_IF(!s->shards, LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory", index_path);
    for (size_t i = 0; i < n; i++) {
        FORWARD_IF_ERROR(check_shard_name(index_path, s->weight_map->keys[i],
                                          &s->weight_map->items[i]));
        s->shards[i] = s->weight_map->items[i].str;
    }
    qsort(s->shards, n, sizeof *s->shards, cmp_str_ptr);
    size_t distinct = 0;
    for (size_t i = 0; i < n; i++)
        if (distinct == 0 || strcmp(s->shards[distinct - 1], s->shards[i]) != 0)
            s->shards[distinct++] = s->shards[i];
    s->n_shards = distinct;
    return LMOE_OK;
}

/* Opens the shards in sorted name order (the -00001-of- numbering makes that file order). */
static lmoe_status open_shards(const char *dir, ckpt_parse_fn parse, index_state *s,
                               ckpt_set *out, ckpt_progress_fn progress, void *user) {
    out->files = calloc(s->n_shards, sizeof *out->files);
    RETURN_ERROR_IF(!out->files, LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory", dir);
    for (size_t i = 0; i < s->n_shards; i++) {
        free(s->shard_path);
        s->shard_path = join_path(dir, s->shards[i]);
        RETURN_ERROR_IF(!s->shard_path, LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory", dir);
        FORWARD_IF_ERROR(ckpt_open_with(s->shard_path, &out->files[i], parse));
        out->n_files = i + 1;
        if (progress) progress(user, i, s->n_shards, s->shard_path);
    }
    return LMOE_OK;
}

/* Every tensor of every shard, sorted by name; a name in two shards is ambiguous. */
static lmoe_status index_all_tensors(const char *index_path, index_state *s,
                                     const ckpt_set *set) {
    size_t n = 0;
    for (size_t f = 0; f < set->n_files; f++) n += set->files[f].n_tensors;
    s->all = malloc((n ? n : 1) * sizeof *s->all);
    RETURN_ERROR_IF(!s->all, LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory", index_path);
    for (size_t f = 0; f < set->n_files; f++)
        for (size_t t = 0; t < set->files[f].n_tensors; t++)
            s->all[s->n_all++] = (named_tensor){set->files[f].tensors[t].name, f};
    qsort(s->all, s->n_all, sizeof *s->all, cmp_named);
    for (size_t i = 1; i < s->n_all; i++)
        RETURN_ERROR_IF(strcmp(s->all[i - 1].name, s->all[i].name) == 0, LMOE_ERR_BAD_FILE,
                        "%s: tensor '%.200s' is in two shards, '%.200s' and '%.200s'",
                        index_path, s->all[i].name, s->shards[s->all[i - 1].file],
                        s->shards[s->all[i].file]);
    return LMOE_OK;
}

/* Every tensor the weight_map lists must be in the shard it names. */
static lmoe_status check_weight_map(const char *index_path, const index_state *s) {
    const json_value *map = s->weight_map;
    for (size_t i = 0; i < map->n_items; i++) {
        const char *tensor = map->keys[i], *shard = map->items[i].str;
        named_tensor key = {tensor, 0};
        const named_tensor *hit = bsearch(&key, s->all, s->n_all, sizeof *s->all, cmp_named);
        RETURN_ERROR_IF(!hit, LMOE_ERR_BAD_FILE,
                        "%s: weight_map puts tensor '%.200s' in shard '%.200s', which has no "
                        "such tensor", index_path, tensor, shard);
        RETURN_ERROR_IF(strcmp(s->shards[hit->file], shard) != 0, LMOE_ERR_BAD_FILE,
                        "%s: weight_map puts tensor '%.200s' in shard '%.200s', but it is in "
                        "shard '%.200s'", index_path, tensor, shard, s->shards[hit->file]);
    }
    return LMOE_OK;
}

static lmoe_status open_index(const char *dir, const char *index_path, ckpt_parse_fn parse,
                              ckpt_set *out, ckpt_progress_fn progress, void *user) {
    index_state s = {0};
    lmoe_status status = read_index(index_path, &s);
    if (status == LMOE_OK) status = open_shards(dir, parse, &s, out, progress, user);
    if (status == LMOE_OK) status = index_all_tensors(index_path, &s, out);
    if (status == LMOE_OK) status = check_weight_map(index_path, &s);
    index_state_free(&s);
    return status;
}

/* Tries the index files, then the single files; the first that exists decides. */
static lmoe_status open_dir(const char *dir, ckpt_set *out, ckpt_progress_fn progress,
                            void *user) {
    for (int pass = 0; pass < 2; pass++) { /* all index files first, then single files */
        for (size_t i = 0; i < N_LAYOUTS; i++) {
            const char *name = pass == 0 ? LAYOUTS[i].index_name : LAYOUTS[i].single_name;
            char *path = join_path(dir, name);
            RETURN_ERROR_IF(!path, LMOE_ERR_OUT_OF_MEMORY, "%s: out of memory", dir);
            lmoe_status status = LMOE_ERR_IO;
            int exists = path_exists(path);
            if (exists && pass == 0)
                status = open_index(dir, path, LAYOUTS[i].parse, out, progress, user);
            else if (exists)
                status = open_one(path, out, LAYOUTS[i].parse, progress, user);
            free(path);
            if (exists) return status;
        }
    }
    return lmoe_error(LMOE_ERR_IO,
                      "no weights found in %s (looked for %s, %s, %s and %s)", dir,
                      LAYOUTS[0].index_name, LAYOUTS[1].index_name, LAYOUTS[0].single_name,
                      LAYOUTS[1].single_name);
}

lmoe_status ckpt_set_open_dir(const char *dir, ckpt_set *out, ckpt_progress_fn progress,
                              void *user) {
    RETURN_ERROR_IF(!out, LMOE_ERR_INVALID_ARGUMENT, "ckpt_set_open_dir: out is NULL");
    memset(out, 0, sizeof *out);
    RETURN_ERROR_IF(!dir, LMOE_ERR_INVALID_ARGUMENT, "ckpt_set_open_dir: dir is NULL");
    struct stat st;
    RETURN_ERROR_IF(stat(dir, &st) != 0, LMOE_ERR_IO, "%s: cannot open folder: %s", dir,
                    strerror(errno));
    RETURN_ERROR_IF(!S_ISDIR(st.st_mode), LMOE_ERR_IO,
                    "%s: not a folder (give the checkpoint folder, not one of its files)", dir);
    lmoe_status status = open_dir(dir, out, progress, user);
    if (status != LMOE_OK) ckpt_set_close(out);
    return status;
}

const ckpt_tensor *ckpt_set_find(const ckpt_set *set, const char *name) {
    if (!set || !name) return NULL;
    for (size_t f = 0; f < set->n_files; f++)
        for (size_t t = 0; t < set->files[f].n_tensors; t++)
            if (strcmp(set->files[f].tensors[t].name, name) == 0) return &set->files[f].tensors[t];
    return NULL;
}

void ckpt_set_close(ckpt_set *set) {
    if (!set) return;
    /* n_files counts only files that opened: a reader empties its file when it fails */
    for (size_t f = 0; f < set->n_files; f++) ckpt_file_close(&set->files[f]);
    free(set->files);
    set->files = NULL;
    set->n_files = 0;
}
