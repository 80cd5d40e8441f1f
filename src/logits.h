/* logits.h — reading results out of a row of logits, on the host.
 *
 * The reference math behind the backends' read-out operations (backend.h: token_nll,
 * argmax, top_candidates): the CPU backend runs these on its buffers, the sampler runs
 * them on a downloaded row when it needs the whole distribution, and the CUDA backend's
 * kernels are tested against them. */
#ifndef LLMINT8_LOGITS_H
#define LLMINT8_LOGITS_H

#include <stdint.h>

/* Index of the largest of x[0..n) (the first one on ties, as torch.argmax). */
int32_t argmax_f32(const float *x, int n);

/* log(sum_i exp(x_i)) = log(sum_i exp(x_i - max)) + max: nothing overflows, and the sum is
 * in double so that a 250,000-way sum loses nothing. *max_out (when not NULL) receives
 * max_i x_i, which callers often need too. */
double logits_logsumexp(const float *x, int n, float *max_out);

/* -log softmax(x)[target] = logits_logsumexp(x) - x[target]. */
double logits_nll(const float *x, int n, int32_t target);

/* The k most probable entries of p = softmax(x[0..n) / temperature), 1 <= k <= n:
 * ids[j] and probs[j] = p[ids[j]], highest probability first, ties by the lower id. The
 * probabilities are normalised over all n entries. O(n log k). */
void logits_top_candidates(const float *x, int n, float temperature, int k, int32_t *ids, float *probs);

#endif
