/* quantize.h - rewriting a GGUF model's weight matrices in another type (q8_0, q4_0, q8_0_r16,
 * q4_0_r16, bf16, f16). The _r16 types are Q8_0 / Q4_0 with 16 rows interleaved (quant.h), the
 * layout the SIMD kernels read fastest; a matrix whose row count is not a multiple of 16 is
 * written as plain q8_0 / q4_0 (the same values).
 *
 * Norms, the MoE gate matrices and every 1-D tensor stay f32: they are a tiny share of the bytes
 * and the routing decisions depend on them. Block types need rows that are whole 32-element
 * blocks: an FFN or expert width that is not (LLaMA-MoE's 688) is padded with zero neurons — zero
 * rows of gate and up, zero columns of down, which add silu(0) * 0 = 0 to every output, so the
 * model computes exactly the same function — and feed_forward_length is updated (the original
 * width is kept in llamamoe.feed_forward_length_unpadded). Any other matrix whose rows are not
 * whole blocks (an embedding width that is not a multiple of 32) is written as f16 instead. */
#ifndef LMOE_QUANTIZE_H
#define LMOE_QUANTIZE_H

#include "gguf.h"
#include "llamamoe.h"

typedef struct quantize_options {
    ggml_type type;          /* q8_0, q4_0, q8_0_r16, q4_0_r16, bf16 or f16 */
    void (*progress)(void *user, const char *line); /* optional, for stderr */
    void *user;
} quantize_options;

lmoe_status gguf_quantize(const char *in_path, const char *out_path,
                          const quantize_options *options);

#endif
