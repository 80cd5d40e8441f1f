/* outlier_analysis.h — measuring emergent outlier features (LLM.int8() paper, arXiv
 * 2208.07339 §4.1): the paper's analysis behind `llmint8 outliers`, not the decomposition
 * (which is in quant.h and the backends).
 *
 * The paper calls hidden dimension d an *outlier feature* when, at the inputs of the
 * attention projections and of the first FFN layer, |x_d| reaches 6.0 on at least 6% of the
 * token positions, in at least 25% of the layers. This module holds what that test needs:
 *
 *   - OutlierStats: while the 16-bit model runs, per layer, per site (attention input, FFN
 *     input) and per hidden dimension, how many tokens reached the threshold and the largest
 *     |x| seen; plus the totals behind "what share of all values is an outlier".
 *   - outlier_probe(): a ProjObserver (model.h) that records into OutlierStats and, for the
 *     paper's ablation, sets chosen dimensions to zero in the same inputs.
 *   - outlier_find(): applies the three criteria.
 *   - outlier_write_svg(): the heatmap picture (layers x hidden dimensions).
 *
 * The definitions, and how to read the output, are in docs/OUTLIERS.md. */
#ifndef LLMINT8_OUTLIER_ANALYSIS_H
#define LLMINT8_OUTLIER_ANALYSIS_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "model.h"

/* Where in a layer a hidden-state vector is recorded. */
typedef enum OutlierSite {
    SITE_ATTN,    /* input of q_proj (OPT; k_proj and v_proj read the same array) or query_key_value (BLOOM) */
    SITE_FFN,     /* input of fc1 (OPT) or dense_h_to_4h (BLOOM) */
    SITE_COUNT
} OutlierSite;

const char *outlier_site_name(OutlierSite s);   /* "attn", "ffn" */

typedef struct OutlierStats {
    int n_layers, hidden;
    float threshold;
    /* per (layer, site, dim), indexed [(layer * SITE_COUNT + site) * hidden + dim] */
    int64_t *hits;           /* tokens at which |x| >= threshold */
    float *max_abs;          /* largest |x| seen */
    uint8_t *in_window;      /* reached the threshold somewhere in the current window */
    /* per (layer, site), indexed [layer * SITE_COUNT + site] */
    int64_t *tokens;         /* token positions recorded */
    int64_t *window_tokens;  /* of which in the current window */
    /* totals over every recorded input value */
    int64_t values;          /* values recorded */
    int64_t above;           /* values with |x| >= threshold */
    int64_t decomposed;      /* values in a column that the LLM.int8() decomposition would keep
                              * in 16-bit if the whole window went through one matmul */
} OutlierStats;

int outlier_stats_init(OutlierStats *s, int n_layers, int hidden, float threshold, Error *err);
void outlier_stats_free(OutlierStats *s);
/* Records one site's input x[T, hidden] of `layer` (called by outlier_probe). */
void outlier_stats_record(OutlierStats *s, int layer, OutlierSite site, const float *x, int T);
/* Closes a window (one sequence): adds its decomposed columns to s->decomposed. */
void outlier_stats_end_window(OutlierStats *s);

/* The ProjObserver's context. */
typedef struct OutlierProbe {
    OutlierStats *stats;     /* record here, or NULL */
    const uint8_t *zero;     /* [hidden]: nonzero = set this dimension to 0, or NULL */
    int hidden;
} OutlierProbe;

/* ProjObserver (model.h): records attention and FFN inputs into probe->stats, then zeroes the
 * chosen dimensions in the inputs of q/k/v_proj (or query_key_value) and fc1, in place. */
void outlier_probe(void *probe, int layer, ProjKind kind, float *x, int T, int dim);

/* The criteria besides the magnitude (which is OutlierStats.threshold). */
typedef struct OutlierCriteria {
    double min_layer_share;  /* 0.25 in the paper */
    double min_token_share;  /* 0.06 in the paper */
} OutlierCriteria;

/* Whether dimension `dim` reached the threshold on at least min_token_share of the tokens
 * recorded at (layer, site). */
bool outlier_hit(const OutlierStats *s, int layer, OutlierSite site, int dim, double min_token_share);
/* Whether `dim` counts as present in `layer`: a hit at its attention or its FFN input. */
bool outlier_layer_hit(const OutlierStats *s, int layer, int dim, double min_token_share);

/* How many layers the layer criterion asks for: the smallest k >= 1 with k >= share * n_layers. */
int outlier_min_layers(const OutlierStats *s, double min_layer_share);
/* The largest token share t such that `dim` reaches the threshold on >= t of the tokens (at its
 * attention or FFN input) in at least min_layers layers. The dimension meets the token and layer
 * criteria exactly when this is >= min_token_share, so it says how close a dimension came. */
double outlier_share_in_layers(const OutlierStats *s, int dim, int min_layers);

typedef struct OutlierFeature {
    int dim;
    float max_abs;             /* largest |x| over every recorded input */
    int layers;                /* layers where it is present (outlier_layer_hit) */
    double token_share_mean;   /* over those layers, the share of tokens at which |x| >= threshold
                                * (the larger of the layer's two sites) */
    double token_share_max;    /* the largest share at any single recorded input */
    int64_t above;             /* its values with |x| >= threshold, over every recorded input */
} OutlierFeature;

/* The dimensions that meet all three criteria, in increasing order: *out is malloc'ed
 * (NULL when *n == 0). */
int outlier_find(const OutlierStats *s, const OutlierCriteria *c, OutlierFeature **out, int *n, Error *err);

/* Writes a standalone SVG heatmap: one row per (layer, site), one column per hidden
 * dimension (or per bin of dimensions when hidden > 512), colour = max |x|, with the
 * features marked. title and subtitle are plain text (escaped here). */
int outlier_write_svg(const OutlierStats *s, const OutlierFeature *f, int n_features, const char *title,
                      const char *subtitle, const char *path, Error *err);

#endif
