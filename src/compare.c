/* compare.c — distances between two logits rows, and their statistics (compare.h). */
#include "compare.h"

#include <math.h>
#include <stdlib.h>

#include "logits.h"

RowDistance compare_rows(const float *ref, const float *q, int n) {
    RowDistance d = {0};
    double lse_ref = logits_logsumexp(ref, n, NULL), lse_q = logits_logsumexp(q, n, NULL);
    double lse_gap = lse_ref - lse_q;
    double kl = 0.0, max_delta = 0.0;
    for (int i = 0; i < n; i++) {
        double delta = (double)ref[i] - (double)q[i];
        kl += exp((double)ref[i] - lse_ref) * (delta - lse_gap);
        /* a NaN delta makes the maximum NaN, and it stays NaN */
        if (!isnan(max_delta) && !(fabs(delta) <= max_delta)) max_delta = fabs(delta);
    }
    d.kl = kl;
    d.max_abs_delta = max_delta;
    d.same_top = argmax_f32(ref, n) == argmax_f32(q, n);
    return d;
}

int compare_stats_add_distance(CompareStats *s, const RowDistance *d) {
    if (s->count == s->cap) {
        long cap = s->cap ? 2 * s->cap : 1024;
        double *kl = realloc(s->kl, (size_t)cap * sizeof *kl);
        if (!kl) return -1;
        s->kl = kl;
        s->cap = cap;
    }
    s->kl[s->count++] = d->kl;
    s->kl_sum += d->kl;
    if (d->same_top) s->same_top++;
    if (!isnan(s->max_abs_delta) && !(d->max_abs_delta <= s->max_abs_delta)) s->max_abs_delta = d->max_abs_delta;
    return 0;
}

int compare_stats_add(CompareStats *s, const float *ref, const float *q, int n) {
    RowDistance d = compare_rows(ref, q, n);
    return compare_stats_add_distance(s, &d);
}

double compare_stats_kl_mean(const CompareStats *s) {
    return s->count ? s->kl_sum / (double)s->count : NAN;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double compare_stats_kl_percentile(CompareStats *s, double percent) {
    if (s->count == 0) return NAN;
    qsort(s->kl, (size_t)s->count, sizeof *s->kl, compare_doubles);
    /* nearest rank: the smallest value with at least percent% of the values <= it */
    long rank = (long)ceil(percent / 100.0 * (double)s->count);
    if (rank < 1) rank = 1;
    if (rank > s->count) rank = s->count;
    return s->kl[rank - 1];
}

double compare_stats_top1(const CompareStats *s) {
    return s->count ? (double)s->same_top / (double)s->count : NAN;
}

void compare_stats_free(CompareStats *s) {
    free(s->kl);
    *s = (CompareStats){0};
}
