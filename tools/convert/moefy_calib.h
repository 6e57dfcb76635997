/* moefy_calib.h - what a dense model's FFNs do on calibration text, for the construction methods
 * that look at activations (co-activation, sharing-*, the calibrated gate, a fitted scale).
 *
 * The text is tokenized (BOS first) and run through the model in windows of the model's context
 * (at most 512 tokens), each from an empty cache, until max_tokens tokens are seen. For every
 * layer the FFN's inputs x (after its RMSNorm) and SwiGLU activations h = silu(w1 x) * (w3 x) of
 * those tokens are kept: n_layer * n_tokens * (n_embd + n_ff) floats in memory (the progress line
 * says how much). The library computes them with its own kernels, whose results do not depend on
 * the thread count, so neither does anything built from them. */
#ifndef LMOE_MOEFY_CALIB_H
#define LMOE_MOEFY_CALIB_H

#include <stddef.h>
#include <stdint.h>

#include "llamamoe.h"

typedef struct moefy_calib {
    size_t n_tokens;         /* tokens captured (every layer has the same) */
    uint32_t n_layer, n_embd, n_ff;
    float **x;               /* [n_layer] (n_tokens, n_embd) */
    float **h;               /* [n_layer] (n_tokens, n_ff) */
} moefy_calib;

/* Runs the dense model on the text file; fails with a message naming the file if it cannot be
 * read, is empty, or gives fewer than min_tokens tokens. */
lmoe_status moefy_calib_collect(const lmoe_model *model, const char *text_path, size_t max_tokens,
                                size_t min_tokens, int n_threads,
                                void (*progress)(void *user, const char *line), void *user,
                                moefy_calib *out);
void moefy_calib_free(moefy_calib *c);

#endif
