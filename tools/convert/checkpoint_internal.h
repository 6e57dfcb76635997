/* checkpoint_internal.h - helpers the checkpoint readers share (safetensors.c, pytorch_zip.c,
 * checkpoint_set.c). Not part of the checkpoint.h interface. */
#ifndef LMOE_CHECKPOINT_INTERNAL_H
#define LMOE_CHECKPOINT_INTERNAL_H

#include "checkpoint.h"

/* Maps path and runs parse over it; on success *out owns the map, on failure the message is
 * prefixed with the path and *out is empty. */
typedef lmoe_status (*ckpt_parse_fn)(const void *data, size_t size, ckpt_file *out);
lmoe_status ckpt_open_with(const char *path, ckpt_file *out, ckpt_parse_fn parse);

/* LMOE_ERR_BAD_FILE if two tensors share a name: a loader could not tell which one is meant.
 * what names the container in the message ("safetensors header", "data.pkl"). */
lmoe_status ckpt_check_unique_names(const ckpt_tensor *tensors, size_t n, const char *what);

#endif
