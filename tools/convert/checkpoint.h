/* checkpoint.h - read-only access to Hugging Face checkpoints: safetensors files and PyTorch
 * `torch.save` zip files, single or sharded with an index json. Tensor data is never copied: each
 * tensor points into the mapped file.
 *
 * The PyTorch reader runs no code. Its pickle interpreter knows only what a state dict needs (the
 * zip container, dicts and OrderedDicts, tuples, `torch._utils._rebuild_tensor_v2`, the Float,
 * Half and BFloat16 storage types) and refuses any other global, by name, with a clear error. */
#ifndef LMOE_CHECKPOINT_H
#define LMOE_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "file_map.h"
#include "gguf.h"
#include "llamamoe.h"

#define CKPT_MAX_DIMS 8

typedef struct ckpt_tensor {
    char *name;                   /* owned, NUL-terminated, e.g. "model.norm.weight" */
    ggml_type type;               /* GGML_TYPE_F32, GGML_TYPE_F16 or GGML_TYPE_BF16 */
    uint32_t n_dims;
    uint64_t shape[CKPT_MAX_DIMS]; /* PyTorch order: shape[0] is the outermost (rows of a matrix) */
    const void *data;             /* contiguous, row-major, little-endian; points into the file */
    uint64_t n_bytes;
} ckpt_tensor;

typedef struct ckpt_file {
    file_map map;                 /* unmapped by ckpt_file_close (unless not owned: see _parse) */
    int owns_map;
    ckpt_tensor *tensors;         /* owned */
    size_t n_tensors;
} ckpt_file;

/* Open and parse one file. Errors (LMOE_ERR_BAD_FILE / LMOE_ERR_UNSUPPORTED / LMOE_ERR_IO) name
 * the path and the field: a header offset running past the file or overlapping another tensor, a
 * pickle opcode or global that is not allowed, a truncated zip record, a non-contiguous stride. */
lmoe_status safetensors_open(const char *path, ckpt_file *out);
lmoe_status pytorch_zip_open(const char *path, ckpt_file *out);
/* The same over a caller's buffer (not copied, must outlive *out): for tests and fuzzing. */
lmoe_status safetensors_parse(const void *data, size_t size, ckpt_file *out);
lmoe_status pytorch_zip_parse(const void *data, size_t size, ckpt_file *out);
void ckpt_file_close(ckpt_file *file);

/* A checkpoint folder: `model.safetensors.index.json` or `pytorch_model.bin.index.json` (the
 * weight_map names the shards; every shard it names must exist and every tensor it lists must be
 * in its shard), else a single `model.safetensors` or `pytorch_model.bin`. */
typedef struct ckpt_set {
    ckpt_file *files;             /* owned */
    size_t n_files;
} ckpt_set;

/* progress (optional) is called after each shard is opened: (user, index, count, shard path). */
typedef void (*ckpt_progress_fn)(void *user, size_t index, size_t count, const char *path);
lmoe_status ckpt_set_open_dir(const char *dir, ckpt_set *out, ckpt_progress_fn progress,
                              void *user);
/* The tensor with this name in any file of the set, or NULL. */
const ckpt_tensor *ckpt_set_find(const ckpt_set *set, const char *name);
void ckpt_set_close(ckpt_set *set);

#endif
