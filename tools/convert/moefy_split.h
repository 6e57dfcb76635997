/* moefy_split.h - how one layer's FFN neurons become experts (the LLaMA-MoE paper's expert
 * construction methods). Neuron i of a SwiGLU FFN is row i of the gate (w1) and up (w3)
 * projections and column i of the down projection (w2); these functions only choose neuron ids.
 *
 * Every function is deterministic: the same inputs and seed give the same result, on any number
 * of threads (they run on the calling thread). Results list each expert's neurons in ascending
 * id; the balanced methods order experts by their smallest neuron, the sharing methods keep
 * expert g for token group g. Errors: LMOE_ERR_INVALID_ARGUMENT (sizes) or LMOE_ERR_OUT_OF_MEMORY, with a message. */
#ifndef LMOE_MOEFY_SPLIT_H
#define LMOE_MOEFY_SPLIT_H

#include <stddef.h>
#include <stdint.h>

#include "llamamoe.h"

/* random: a uniformly shuffled balanced partition of n neurons into n_parts experts of
 * n / n_parts each (n_parts must divide n). experts: (n_parts, n / n_parts). */
lmoe_status moefy_split_random(uint32_t n, uint32_t n_parts, uint64_t seed, uint32_t *experts);

/* clustering: balanced (size-constrained) k-means of the L2-normalised rows (n, dim) into n_parts
 * clusters of exactly n / n_parts (cosine similarity; k-means++ start from the seed). */
lmoe_status moefy_split_clustering(const float *rows, uint32_t n, uint32_t dim, uint32_t n_parts,
                                   uint64_t seed, uint32_t *experts);

/* co-activation: the neurons' co-activation graph on calibration activations h (n_tokens, n)
 * (weight of edge i-j: sum over tokens of |h_ti| |h_tj|, normalised to the cosine of the two
 * neurons' |h| profiles) cut into n_parts balanced parts, keeping strongly co-activated neurons
 * together: recursive spectral bisection, then swap refinement of the n_parts-way cut. Holds the
 * graph in double: 8 n^2 bytes (about 1 GB for LLaMA-2-7B's 11008 neurons). */
lmoe_status moefy_split_coactivation(const float *h, size_t n_tokens, uint32_t n, uint32_t n_parts,
                                     uint64_t seed, uint32_t *experts);

/* The importance of each neuron to each of n_groups groups of calibration tokens, the substitute
 * for the paper's |activation x gradient| (no gradients here): tokens are clustered by their FFN
 * inputs x (n_tokens, dim; k-means on normalised rows into n_groups groups, from the seed), and
 * importance[g][i] = mean over group g's tokens of |h_ti| * down_norm[i], where down_norm[i] is the
 * L2 norm of the down projection's column i (how much neuron i's activation moves the output).
 * importance: (n_groups, n). group_of_token: (n_tokens) out, may be NULL. */
lmoe_status moefy_importance(const float *x, const float *h, size_t n_tokens, uint32_t dim,
                             uint32_t n, const float *down_norm, uint32_t n_groups, uint64_t seed,
                             float *importance, uint32_t *group_of_token);

/* sharing-inner: expert g = the expert_size neurons most important to group g (importance
 * (n_parts, n)); a neuron may be in several experts or in none. experts: (n_parts, expert_size). */
lmoe_status moefy_split_sharing_inner(const float *importance, uint32_t n, uint32_t n_parts,
                                      uint32_t expert_size, uint32_t *experts);

/* sharing-inter: the neurons most groups want (in the top n / n_parts of most groups, ties broken
 * by total importance) form one always-on shared expert of shared_size neurons (pass
 * MOEFY_SHARED_AUTO to take those wanted by more than half of the groups, rounded up to the
 * nearest size that leaves a multiple of n_parts, an error if that is n or more); every other neuron goes to exactly one routed
 * expert, greedily by highest importance, (n - shared_size) / n_parts each. *shared_size is set;
 * shared: (n) room, experts: (n) room, filled as (n_parts, (n - *shared_size) / n_parts). */
#define MOEFY_SHARED_AUTO UINT32_MAX
lmoe_status moefy_split_sharing_inter(const float *importance, uint32_t n, uint32_t n_parts,
                                      uint32_t *shared_size, uint32_t *shared, uint32_t *experts);

/* How much experts overlap: neurons in two or more experts, and neurons in none. */
typedef struct moefy_overlap {
    uint32_t n_shared_by_experts;  /* neurons in >= 2 experts */
    uint32_t n_unused;             /* neurons in no expert (and not in the shared expert) */
    uint64_t n_slots;              /* expert slots in all: n_parts * expert_size */
} moefy_overlap;
void moefy_overlap_count(const uint32_t *experts, uint32_t n_parts, uint32_t expert_size,
                         const uint32_t *shared, uint32_t shared_size, uint32_t n,
                         moefy_overlap *out);

#endif
