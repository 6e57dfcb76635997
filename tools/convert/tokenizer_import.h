/* tokenizer_import.h - readers of foreign tokenizer files into an lmoe_vocab: SentencePiece's
 * tokenizer.model (a ModelProto in protobuf wire format) and llama2.c's tokenizer.bin. */
#ifndef LMOE_TOKENIZER_IMPORT_H
#define LMOE_TOKENIZER_IMPORT_H

#include <stddef.h>
#include <stdint.h>

#include "vocab.h"

/* Parses a SentencePiece BPE model (size bytes at data; not kept: the pieces are copied into
 * out->storage). Every length and varint is bounds-checked; a malformed file gives
 * LMOE_ERR_BAD_FILE naming the field and byte offset; a unigram/word/char model, or a normaliser
 * other than "identity" (a precompiled character map), gives LMOE_ERR_UNSUPPORTED. Token types
 * are SentencePiece's; bos/eos/unk come from the TrainerSpec, add_space_prefix and
 * remove_extra_whitespaces from the NormalizerSpec; add_bos true, stop_on_bos false. On success
 * *out is finished (vocab_finish) and must be released with vocab_free; on failure it is empty. */
lmoe_status spm_model_read(const void *data, size_t size, lmoe_vocab *out);

/* Parses a llama2.c tokenizer.bin with exactly n_vocab entries (the count is not in the file: it
 * is the model's vocab_size) and turns it back into the SentencePiece vocabulary it was exported
 * from: "<unk>" is UNKNOWN, "\n<s>\n" becomes "<s>" and "\n</s>\n" "</s>" (CONTROL), "<0xNN>" are
 * BYTE pieces, every other piece is NORMAL with its spaces written as U+2581. bos/eos/unk are the
 * ids of "<s>", "</s>" and "<unk>" (-1 if absent); add_space_prefix true and
 * remove_extra_whitespaces false (run.c never normalises); stop_on_bos true (run.c stops on BOS).
 * Ownership and failure as spm_model_read. */
lmoe_status llama2c_tokenizer_read(const void *data, size_t size, uint32_t n_vocab,
                                   lmoe_vocab *out);

#endif
