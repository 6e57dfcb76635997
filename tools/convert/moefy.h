/* moefy.h - a dense LLaMA GGUF turned into a mixture-of-experts GGUF (`llamamoe-convert moefy`):
 * every layer's FFN neurons are split into experts by one of the LLaMA-MoE paper's construction
 * methods (moefy_split.h) and given a gate (moefy_gate.h). The result is an ordinary llama_moe
 * file (docs/FORMAT.md; linear gate, softmax over the top-k logits times the layer's scale, an
 * optional always-on shared expert) that the runtime and the routing statistics treat like any
 * other. docs/CONSTRUCTION.md measures what each method costs.
 *
 * Tensors other than the FFNs are copied byte for byte. Expert tensors keep the dense FFN's type
 * when it is f32, f16 or bf16 (the values are copied exactly); from a quantised dense model they
 * are written as f32 (quantise the result afterwards). The same options and seed give a
 * byte-identical file for any thread count. */
#ifndef LMOE_MOEFY_H
#define LMOE_MOEFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llamamoe.h"

typedef enum moefy_method {
    MOEFY_METHOD_RANDOM,          /* balanced random partition (what the released models used) */
    MOEFY_METHOD_CLUSTERING,      /* balanced k-means of the up projection's rows */
    MOEFY_METHOD_COACTIVATION,    /* balanced cut of the co-activation graph (calibration) */
    MOEFY_METHOD_SHARING_INNER,   /* top neurons per token group, experts overlap (calibration) */
    MOEFY_METHOD_SHARING_INTER    /* shared expert + greedy residual partition (calibration) */
} moefy_method;

typedef enum moefy_gate_init {
    MOEFY_GATE_RANDOM,            /* N(0, 1/n_embd): what continual pre-training starts from */
    MOEFY_GATE_CENTROID,          /* mean of each expert's gate-projection rows */
    MOEFY_GATE_CALIBRATED,        /* least squares on calibration data (calibration) */
    MOEFY_GATE_UNIFORM            /* all zero: every selected expert weighs 1/k (for checks) */
} moefy_gate_init;

typedef struct moefy_options {
    uint32_t n_experts;           /* E */
    uint32_t top_k;               /* K, 1..E */
    moefy_method method;
    moefy_gate_init gate;
    float scale;                  /* weights' multiplier; 0: E/K, as LLaMA-MoE */
    bool scale_fit;               /* fit the scale per layer on calibration data instead */
    uint32_t expert_size;         /* sharing-inner: neurons per expert; 0: n_ff / E */
    uint32_t shared_size;         /* sharing-inter: shared expert width; MOEFY_SHARED_AUTO */
    const char *calib_path;       /* calibration text (needed by the methods marked above) */
    size_t calib_tokens;          /* most calibration tokens used; 0: 4096 */
    uint64_t seed;
    int n_threads;                /* for the calibration forward pass; 0: one per CPU */
    void (*progress)(void *user, const char *line); /* optional, for stderr */
    void *user;
} moefy_options;

/* Defaults: E = 4, K = 2, random, centroid gate, scale E/K, seed 1, automatic shared size. */
void moefy_default_options(moefy_options *o);

/* What was built (for the tool's summary and the tests). */
typedef struct moefy_result {
    uint32_t n_layer, n_ff, expert_size, shared_size;
    size_t calib_tokens;          /* 0 without calibration */
    uint32_t max_in_several;      /* sharing methods: most neurons in >= 2 experts in a layer */
    uint32_t max_unused;          /* most neurons in no expert in a layer */
    float min_scale, max_scale;   /* over layers */
} moefy_result;

const char *moefy_method_name(moefy_method m);
const char *moefy_gate_name(moefy_gate_init g);
/* Parses a name as the command line spells it; returns false if unknown. */
bool moefy_parse_method(const char *name, moefy_method *out);
bool moefy_parse_gate(const char *name, moefy_gate_init *out);

lmoe_status moefy_convert(const char *dense_path, const char *out_path, const moefy_options *o,
                          moefy_result *result);

#endif
