/* seedgen.h - what seedgen.c (the seeds) lends seedgen_regress.c (the hostile inputs of
 * tests/fuzz-regress/): file output, the model of fuzz_state, the torch.save layout and a protobuf
 * writer. Both files make up the llamamoe_fuzz_seedgen program. */
#ifndef LMOE_SEEDGEN_H
#define LMOE_SEEDGEN_H

#include <stddef.h>
#include <stdint.h>

#include "llamamoe.h"
#include "torch_writer.h"

/* Writes b as dir/name and frees it; 0 on success. */
int write_in(const char *dir, const char *name, tw_bytes *b);

/* MODEL with a context of n_ctx 16 and one thread (what fuzz_state uses); 0 on success. */
int open_model(const char *model_path, lmoe_model **model, lmoe_context **ctx);

/* torch.save's layout: PREFIX/data.pkl (pkl), PREFIX/data/0 (6 floats), data/1 (4 halves),
 * data/2 (4 bfloat16s), PREFIX/version and, with byteorder, PREFIX/byteorder ("little"). */
tw_bytes torch_zip(const char *prefix, const tw_bytes *pkl, int byteorder, const tw_zip_opts *o);

/* Protobuf wire format: a varint; an int field (a negative value is a 10-byte varint); a
 * length-delimited field; a fixed32 float field; and a SentencePiece message (1: piece, 2: score,
 * 3: type unless NORMAL) as ModelProto field 1. */
void pb_varint(tw_bytes *b, uint64_t v);
void pb_int(tw_bytes *b, uint32_t field, int64_t v);
void pb_len(tw_bytes *b, uint32_t field, const void *data, size_t len);
void pb_float(tw_bytes *b, uint32_t field, float f);
void pb_piece(tw_bytes *model, const char *text, float score, int type);

/* `seedgen regress MODEL.gguf DIR`: writes DIR/<target>/<name> (seedgen_regress.c). */
int seedgen_regress(const char *model_path, const char *dir);

#endif
