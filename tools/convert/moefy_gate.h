/* moefy_gate.h - the gate of an MoE layer built from a dense FFN: a linear gate, logits = G x
 * with G (n_experts, dim), whose top-k logits choose the experts of a token (and whose softmax
 * over those k weights them, times the layer's scale; see docs/FORMAT.md, llama_moe).
 *
 * Deterministic like moefy_split.h: same inputs and seed, same bytes, on any thread count. */
#ifndef LMOE_MOEFY_GATE_H
#define LMOE_MOEFY_GATE_H

#include <stddef.h>
#include <stdint.h>

#include "llamamoe.h"

/* random: every entry N(0, 1/dim), what training starts from. */
lmoe_status moefy_gate_random(uint32_t n_experts, uint32_t dim, uint64_t seed, float *gate);

/* centroid (training-free): row j = the mean of expert j's neurons' gate-projection rows
 * w_gate (n_neurons, dim), so expert j's logit is its neurons' mean pre-activation.
 * experts: (n_experts, expert_size) neuron ids. */
lmoe_status moefy_gate_centroid(const float *w_gate, uint32_t dim, const uint32_t *experts,
                                uint32_t n_experts, uint32_t expert_size, float *gate);

/* calibrated: least squares fit on calibration data, so that the logits rank experts as the
 * sizes of their outputs do. x (n_tokens, dim) are the FFN inputs, target (n_tokens, n_experts)
 * how large each expert's output is for each token (e.g. the L2 norm). The targets are centred
 * per token (top-k and softmax ignore a per-token shift), then G minimises
 * sum_t |G x_t - y_t|^2 + lambda |G|^2 (ridge lambda = 1e-3 x mean diagonal of X^T X), solved
 * through a Cholesky factorisation of the normal equations in double precision. */
lmoe_status moefy_gate_calibrated(const float *x, const float *target, size_t n_tokens, uint32_t dim,
                                  uint32_t n_experts, float *gate);

#endif
