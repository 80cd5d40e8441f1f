/* logits.c — argmax, negative log-likelihood and the top candidates of a row of logits. */
#include "logits.h"

#include <math.h>
#include <stdbool.h>
#include <stddef.h>

int32_t argmax_f32(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

double logits_logsumexp(const float *x, int n, float *max_out) {
    float max = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > max) max = x[i];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)x[i] - max);
    if (max_out) *max_out = max;
    return log(sum) + max;
}

double logits_nll(const float *x, int n, int32_t target) { return logits_logsumexp(x, n, NULL) - (double)x[target]; }

/* Candidate a ranks above candidate b: the larger logit (so the larger probability, as
 * temperature > 0 keeps the order), then the lower id. */
static bool ranks_above(const float *x, int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); }

/* Restores the heap below position i of a min-heap by rank: heap[0] is the weakest kept. */
static void sift_down(const float *x, int32_t *heap, int size, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, weakest = i;
        if (l < size && ranks_above(x, heap[weakest], heap[l])) weakest = l;
        if (r < size && ranks_above(x, heap[weakest], heap[r])) weakest = r;
        if (weakest == i) return;
        int32_t t = heap[i];
        heap[i] = heap[weakest];
        heap[weakest] = t;
        i = weakest;
    }
}

void logits_top_candidates(const float *x, int n, float temperature, int k, int32_t *ids, float *probs) {
    /* Keep the k best seen so far in a heap whose root is the weakest of them: each new
     * entry only has to beat the root. */
    for (int i = 0; i < k; i++) ids[i] = i;
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(x, ids, k, i);
    for (int i = k; i < n; i++)
        if (ranks_above(x, i, ids[0])) {
            ids[0] = i;
            sift_down(x, ids, k, 0);
        }
    /* Heap sort: moving the weakest to the back, repeatedly, leaves the best in front. */
    for (int size = k - 1; size > 0; size--) {
        int32_t t = ids[0];
        ids[0] = ids[size];
        ids[size] = t;
        sift_down(x, ids, size, 0);
    }
    /* p_i = exp((x_i - max) / temperature) / sum_j exp((x_j - max) / temperature) */
    float max = x[ids[0]];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += expf((x[i] - max) / temperature);
    for (int j = 0; j < k; j++) probs[j] = (float)(expf((x[ids[j]] - max) / temperature) / sum);
}
