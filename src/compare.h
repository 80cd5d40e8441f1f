/* compare.h — how far a quantized model's next-token distributions are from the 16-bit
 * model's, position by position (`llmint8 ppl --compare fp16`).
 *
 * For one position, r = the 16-bit model's logits row and q = the quantized model's, both
 * over the n tokens of the vocabulary; p = softmax(r) and p' = softmax(q). Computed in
 * double from the full rows:
 *   KL(p || p') = sum_i p_i (log p_i - log p'_i)
 *               = sum_i p_i ((r_i - q_i) - (lse(r) - lse(q))),   lse(x) = log sum_i exp(x_i)
 *     the information lost when p' stands in for p, in nats; >= 0, and exactly 0 when the
 *     two rows are equal (every term is p_i * 0);
 *   top-1 agreement: argmax r == argmax q (the first index on ties, as torch.argmax);
 *   |Δ logit| = max_i |r_i - q_i|.
 * CompareStats gathers these over many positions: the mean and a percentile of the KL
 * (nearest rank: the p-th percentile of N sorted values is the ceil(p/100 * N)-th), the
 * share of positions whose top token agrees, and the largest |Δ logit| of all. */
#ifndef LLMINT8_COMPARE_H
#define LLMINT8_COMPARE_H

#include <stdbool.h>

/* One position. */
typedef struct RowDistance {
    double kl;            /* KL(softmax(ref) || softmax(q)), nats */
    bool same_top;        /* argmax ref == argmax q */
    double max_abs_delta; /* max_i |ref_i - q_i| */
} RowDistance;

/* The distance of row q from row ref, both [n] with n >= 1. A NaN or infinity in either
 * row makes kl and max_abs_delta NaN (the caller checks isfinite). */
RowDistance compare_rows(const float *ref, const float *q, int n);

/* Many positions. Zero-initialise, add rows, read the results, free. */
typedef struct CompareStats {
    double *kl;           /* every position's KL, in the order added */
    long count, cap;
    double kl_sum;        /* their sum, in the order added */
    long same_top;        /* positions whose top token agrees */
    double max_abs_delta; /* the largest |Δ logit| so far */
} CompareStats;

/* Adds one position (compare_rows(ref, q, n)). Returns 0, or -1 when out of memory. */
int compare_stats_add(CompareStats *s, const float *ref, const float *q, int n);
/* Adds a position whose distance is already known. Returns 0, or -1 when out of memory. */
int compare_stats_add_distance(CompareStats *s, const RowDistance *d);
/* Mean KL, kl_sum / count (NaN with no positions). */
double compare_stats_kl_mean(const CompareStats *s);
/* The percent-th percentile of the KLs (0 < percent <= 100; nearest rank, see above); NaN
 * with no positions. Sorts s->kl (the sum and the mean are not affected). */
double compare_stats_kl_percentile(CompareStats *s, double percent);
/* Share of positions whose top token agrees, in [0, 1] (NaN with no positions). */
double compare_stats_top1(const CompareStats *s);
void compare_stats_free(CompareStats *s);

#endif
