/* outliers.c — emergent outlier features: statistics, criteria, ablation hook, heatmap
 * (see outliers.h; definitions in docs/OUTLIERS.md). */
#include "outliers.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *outlier_site_name(OutlierSite s) {
    return s == SITE_ATTN ? "attn" : s == SITE_FFN ? "ffn" : "?";
}

/* ---- statistics ------------------------------------------------------------------- */

int outlier_stats_init(OutlierStats *s, int n_layers, int hidden, float threshold, Error *err) {
    memset(s, 0, sizeof *s);
    if (n_layers <= 0 || hidden <= 0) return err_set(err, "outlier statistics need layers and a hidden size");
    size_t sites = (size_t)n_layers * SITE_COUNT, cells = sites * (size_t)hidden;
    s->n_layers = n_layers;
    s->hidden = hidden;
    s->threshold = threshold;
    s->hits = calloc(cells, sizeof *s->hits);
    s->max_abs = calloc(cells, sizeof *s->max_abs);
    s->in_window = calloc(cells, sizeof *s->in_window);
    s->tokens = calloc(sites, sizeof *s->tokens);
    s->window_tokens = calloc(sites, sizeof *s->window_tokens);
    if (!s->hits || !s->max_abs || !s->in_window || !s->tokens || !s->window_tokens) {
        outlier_stats_free(s);
        return err_set(err, "out of memory for outlier statistics (%d layers x %d dimensions)", n_layers, hidden);
    }
    return 0;
}

void outlier_stats_free(OutlierStats *s) {
    free(s->hits), free(s->max_abs), free(s->in_window), free(s->tokens), free(s->window_tokens);
    memset(s, 0, sizeof *s);
}

void outlier_stats_record(OutlierStats *s, int layer, OutlierSite site, const float *x, int T) {
    if (layer < 0 || layer >= s->n_layers || site < 0 || site >= SITE_COUNT || T <= 0) return;
    const size_t D = (size_t)s->hidden, at = (size_t)layer * SITE_COUNT + (size_t)site;
    int64_t *hits = s->hits + at * D;
    float *mx = s->max_abs + at * D;
    uint8_t *win = s->in_window + at * D;
    const float thr = s->threshold;
    int64_t above = 0;
    for (int t = 0; t < T; t++) {
        const float *row = x + (size_t)t * D;
        for (size_t d = 0; d < D; d++) {
            float a = fabsf(row[d]);
            if (a > mx[d]) mx[d] = a;          /* a NaN never compares greater: ignored */
            if (a >= thr) hits[d]++, win[d] = 1, above++;
        }
    }
    s->tokens[at] += T;
    s->window_tokens[at] += T;
    s->values += (int64_t)T * (int64_t)D;
    s->above += above;
}

/* LLM.int8() keeps in 16-bit every column (hidden dimension) of a matmul's input in which any
 * row reaches the threshold (SPEC §1.3): over a window that is in_window's columns, all rows. */
void outlier_stats_end_window(OutlierStats *s) {
    const size_t D = (size_t)s->hidden;
    for (size_t at = 0; at < (size_t)s->n_layers * SITE_COUNT; at++) {
        uint8_t *win = s->in_window + at * D;
        int64_t cols = 0;
        for (size_t d = 0; d < D; d++) cols += win[d], win[d] = 0;
        s->decomposed += cols * s->window_tokens[at];
        s->window_tokens[at] = 0;
    }
}

/* ---- the model hook ----------------------------------------------------------------- */

void outlier_probe(void *ctx, int layer, ProjKind kind, float *x, int T, int dim) {
    OutlierProbe *p = ctx;
    if (dim != p->hidden) return;   /* not a hidden-state input (cannot happen for these kinds) */
    /* OPT's q, k and v projections read one array: record it once, at q_proj. */
    if (p->stats && (kind == PROJ_Q || kind == PROJ_QKV)) outlier_stats_record(p->stats, layer, SITE_ATTN, x, T);
    if (p->stats && kind == PROJ_FC1) outlier_stats_record(p->stats, layer, SITE_FFN, x, T);
    /* Zeroing is repeated at k_proj and v_proj: on a backend that hands the observer a copy,
     * each projection's input is edited separately (model_linear uploads it back). */
    bool site = kind == PROJ_Q || kind == PROJ_K || kind == PROJ_V || kind == PROJ_QKV || kind == PROJ_FC1;
    if (!p->zero || !site) return;
    for (int t = 0; t < T; t++) {
        float *row = x + (size_t)t * (size_t)dim;
        for (int d = 0; d < dim; d++)
            if (p->zero[d]) row[d] = 0.0f;
    }
}

/* ---- the criteria ------------------------------------------------------------------- */

/* hits / tokens >= share, without the rounding of 0.06 * n tipping either way. */
static bool share_at_least(int64_t hits, int64_t tokens, double share) {
    return tokens > 0 && hits > 0 && (double)hits >= share * (double)tokens * (1.0 - 1e-12);
}

bool outlier_hit(const OutlierStats *s, int layer, OutlierSite site, int dim, double min_token_share) {
    size_t at = (size_t)layer * SITE_COUNT + (size_t)site;
    return share_at_least(s->hits[at * (size_t)s->hidden + (size_t)dim], s->tokens[at], min_token_share);
}

bool outlier_layer_hit(const OutlierStats *s, int layer, int dim, double min_token_share) {
    return outlier_hit(s, layer, SITE_ATTN, dim, min_token_share) ||
           outlier_hit(s, layer, SITE_FFN, dim, min_token_share);
}

int outlier_min_layers(const OutlierStats *s, double min_layer_share) {
    int k = 1;
    while (k < s->n_layers && (double)k < min_layer_share * s->n_layers * (1.0 - 1e-12)) k++;
    return k;
}

/* Share of the tokens at which `dim` reaches the threshold in `layer`: the larger of its two sites. */
static double layer_share(const OutlierStats *s, int layer, int dim) {
    double share = 0;
    for (int site = 0; site < SITE_COUNT; site++) {
        size_t at = (size_t)layer * SITE_COUNT + (size_t)site;
        if (s->tokens[at] <= 0) continue;
        double v = (double)s->hits[at * (size_t)s->hidden + (size_t)dim] / (double)s->tokens[at];
        if (v > share) share = v;
    }
    return share;
}

double outlier_share_in_layers(const OutlierStats *s, int dim, int min_layers) {
    /* The min_layers-th largest per-layer share: the largest share that at least min_layers
     * layers reach. Quadratic in the layers, and only used for a report. */
    double best = 0;
    for (int l = 0; l < s->n_layers; l++) {
        double v = layer_share(s, l, dim);
        if (v <= best) continue;
        int reach = 0;
        for (int k = 0; k < s->n_layers; k++) reach += layer_share(s, k, dim) >= v;
        if (reach >= min_layers) best = v;
    }
    return best;
}

int outlier_find(const OutlierStats *s, const OutlierCriteria *c, OutlierFeature **out, int *n, Error *err) {
    *out = NULL;
    *n = 0;
    OutlierFeature *f = NULL;
    int count = 0;
    const size_t D = (size_t)s->hidden;
    for (int d = 0; d < s->hidden; d++) {
        OutlierFeature ft = {.dim = d};
        double share_sum = 0;
        for (int l = 0; l < s->n_layers; l++) {
            for (int site = 0; site < SITE_COUNT; site++) {
                size_t at = (size_t)l * SITE_COUNT + (size_t)site, i = at * D + (size_t)d;
                if (s->max_abs[i] > ft.max_abs) ft.max_abs = s->max_abs[i];
                ft.above += s->hits[i];
            }
            double share = layer_share(s, l, d);
            if (share > ft.token_share_max) ft.token_share_max = share;
            if (outlier_layer_hit(s, l, d, c->min_token_share)) {
                ft.layers++;
                share_sum += share;
            }
        }
        if (!share_at_least(ft.layers, s->n_layers, c->min_layer_share)) continue;
        ft.token_share_mean = share_sum / ft.layers;
        OutlierFeature *bigger = realloc(f, (size_t)(count + 1) * sizeof *f);
        if (!bigger) {
            free(f);
            return err_set(err, "out of memory listing outlier features");
        }
        f = bigger;
        f[count++] = ft;
    }
    *out = f;
    *n = count;
    return 0;
}

/* ---- the heatmap -------------------------------------------------------------------- */

/* Colour of max |x|: eight steps of blue below the threshold (linear in |x| / threshold), eight
 * steps from yellow to dark red at or above it (log scale up to the largest value). */
static const char *const PALETTE[16] = {
    "#f7f9fc", "#e3ebf6", "#cbdaee", "#aec5e3", "#8dadd6", "#6b93c7", "#4a78b5", "#2c5e9e",
    "#ffe066", "#ffc145", "#ffa02e", "#fb7c1f", "#ee5519", "#d63215", "#b01510", "#7a0000",
};

static int colour_bucket(float v, float thr, float vmax) {
    if (v < thr) {
        int b = (int)(8.0f * v / thr);
        return b < 0 ? 0 : b > 7 ? 7 : b;
    }
    if (!isfinite(v) || v >= vmax) return 15;
    if (!(vmax > thr)) return 8;
    double t = log((double)v / thr) / log((double)vmax / thr);   /* in [0, 1) */
    int b = 8 + (int)(8.0 * t);
    return b < 8 ? 8 : b > 15 ? 15 : b;
}

/* Writes text as XML character data: markup characters escaped, invalid UTF-8, control
 * characters and U+FFFE/U+FFFF (not allowed in XML) replaced by '?'. */
static void xml_text(FILE *f, const char *text) {
    const unsigned char *p = (const unsigned char *)text;
    while (*p) {
        unsigned c = *p;
        if (c < 0x80) {
            if (c == '&') fputs("&amp;", f);
            else if (c == '<') fputs("&lt;", f);
            else if (c == '>') fputs("&gt;", f);
            else if (c == '"') fputs("&quot;", f);
            else if (c < 0x20 && c != '\t' && c != '\n') fputc('?', f);
            else fputc((int)c, f);
            p++;
            continue;
        }
        /* Length and the allowed range of the second byte (RFC 3629: no overlongs, no surrogates). */
        int len = 0;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c == 0xE0) len = 3, lo = 0xA0;
        else if (c == 0xED) len = 3, hi = 0x9F;
        else if (c >= 0xE1 && c <= 0xEF) len = 3;
        else if (c == 0xF0) len = 4, lo = 0x90;
        else if (c >= 0xF1 && c <= 0xF3) len = 4;
        else if (c == 0xF4) len = 4, hi = 0x8F;
        bool ok = len > 0 && p[1] >= lo && p[1] <= hi;
        for (int i = 2; ok && i < len; i++) ok = p[i] >= 0x80 && p[i] <= 0xBF;
        if (ok && len == 3 && c == 0xEF && p[1] == 0xBF && p[2] >= 0xBE) ok = false;  /* U+FFFE, U+FFFF */
        if (!ok) {
            fputc('?', f);
            p++;
            continue;
        }
        fwrite(p, 1, (size_t)len, f);
        p += len;
    }
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

int outlier_write_svg(const OutlierStats *s, const OutlierFeature *ft, int n_features, const char *title,
                      const char *subtitle, const char *path, Error *err) {
    /* Grid: one row per (layer, site); at most 512 columns, each the max over `bin` dimensions. */
    const int D = s->hidden, n_rows = s->n_layers * SITE_COUNT;
    const int bin = D > 512 ? (D + 511) / 512 : 1, n_cols = (D + bin - 1) / bin;
    const int cw = clampi(1024 / n_cols, 1, 12);               /* cell width */
    const int rh = clampi(480 / n_rows, 2, 12);                /* row height */
    const int gap = rh >= 6 ? 1 : 0;                           /* between layers */
    const int layer_h = SITE_COUNT * rh + gap;
    const int x0 = 78, y0 = 92;
    const int W = n_cols * cw, H = s->n_layers * layer_h - gap;
    const int width = (x0 + W + 24 > 720 ? x0 + W + 24 : 720), height = y0 + H + 110;

    float vmax = 0;
    for (size_t i = 0; i < (size_t)n_rows * (size_t)D; i++)
        if (s->max_abs[i] > vmax) vmax = s->max_abs[i];
    uint8_t *cell = malloc((size_t)n_rows * (size_t)n_cols);
    if (!cell) return err_set(err, "out of memory drawing the heatmap");
    for (int r = 0; r < n_rows; r++)
        for (int c = 0; c < n_cols; c++) {
            float v = 0;
            for (int d = c * bin; d < (c + 1) * bin && d < D; d++)
                if (s->max_abs[(size_t)r * D + (size_t)d] > v) v = s->max_abs[(size_t)r * D + (size_t)d];
            cell[(size_t)r * n_cols + (size_t)c] = (uint8_t)colour_bucket(v, s->threshold, vmax);
        }

    FILE *f = fopen(path, "w");
    if (!f) {
        free(cell);
        return err_set(err, "%s: cannot write the picture: %s", path, strerror(errno));
    }
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"sans-serif\" font-size=\"11\">\n",
            width, height, width, height);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", width, height);
    fputs("<text x=\"10\" y=\"18\" font-size=\"14\" font-weight=\"bold\">", f);
    xml_text(f, title);
    fputs("</text>\n<text x=\"10\" y=\"36\">", f);
    xml_text(f, subtitle);
    fputs("</text>\n", f);

    /* Cells: the lightest colour is the background; every other colour is one path whose
     * subpaths are runs of equal cells along a row, which keeps big models' pictures small. */
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"/>\n", x0, y0, W, H, PALETTE[0]);
    for (int b = 1; b < 16; b++) {
        bool open = false;
        for (int r = 0; r < n_rows; r++) {
            int y = y0 + (r / SITE_COUNT) * layer_h + (r % SITE_COUNT) * rh;
            const uint8_t *row = cell + (size_t)r * n_cols;
            for (int c = 0; c < n_cols;) {
                if (row[c] != b) {
                    c++;
                    continue;
                }
                int c2 = c;
                while (c2 < n_cols && row[c2] == b) c2++;
                if (!open) fprintf(f, "<path fill=\"%s\" d=\"", PALETTE[b]), open = true;
                fprintf(f, "M%d %dh%dv%dh-%dz", x0 + c * cw, y, (c2 - c) * cw, rh, (c2 - c) * cw);
                c = c2;
            }
        }
        if (open) fputs("\"/>\n", f);
    }

    /* Row labels: "Ln attn" / "Ln ffn" when rows are tall enough, else every k-th layer. */
    if (rh >= 10) {
        for (int r = 0; r < n_rows; r++)
            fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" font-size=\"9\">L%d %s</text>\n", x0 - 4,
                    y0 + (r / SITE_COUNT) * layer_h + (r % SITE_COUNT) * rh + rh - 2, r / SITE_COUNT,
                    outlier_site_name((OutlierSite)(r % SITE_COUNT)));
    } else {
        int every = (12 + layer_h - 1) / layer_h;
        for (int l = 0; l < s->n_layers; l += every)
            fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" font-size=\"10\">L%d</text>\n", x0 - 4,
                    y0 + l * layer_h + layer_h / 2 + 4, l);
    }

    /* Hidden-dimension axis: ticks at multiples of a power of two, at most ~8 of them. */
    int step = 1;
    while (D / step > 8) step *= 2;
    for (int d = 0; d < D; d += step) {
        double x = x0 + (double)(d / bin) * cw + cw / 2.0;
        fprintf(f, "<path d=\"M%.1f %dv4\" stroke=\"#444\"/><text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" "
                   "font-size=\"10\">%d</text>\n", x, y0 + H, x, y0 + H + 14, d);
    }
    if (bin > 1)
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\">hidden dimension (one column = the max over %d "
                   "dimensions)</text>\n", x0, y0 + H + 28, bin);
    else
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\">hidden dimension</text>\n", x0, y0 + H + 28);

    /* The features: a triangle above and below their column, a label, a tooltip. */
    for (int i = 0; i < n_features; i++) {
        double x = x0 + (double)(ft[i].dim / bin) * cw + cw / 2.0;
        fprintf(f, "<g fill=\"#c00000\"><title>dim %d: max |x| %.2f, in %d of %d layers, %.1f%% of tokens "
                   "(mean over those layers)</title>", ft[i].dim, (double)ft[i].max_abs, ft[i].layers, s->n_layers,
                100.0 * ft[i].token_share_mean);
        fprintf(f, "<path d=\"M%.1f %dl-4 -7h8z\"/>", x, y0 - 2);
        if (n_features <= 64)
            fprintf(f, "<text transform=\"translate(%.1f %d) rotate(-90)\" font-size=\"9\">%d</text>", x + 3, y0 - 11,
                    ft[i].dim);
        fputs("</g>\n", f);
    }

    /* Legend. */
    int ly = y0 + H + 46;
    fprintf(f, "<text x=\"10\" y=\"%d\">max |x|:</text>\n", ly + 9);
    for (int b = 0; b < 16; b++)
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"22\" height=\"10\" fill=\"%s\" stroke=\"#999\" "
                   "stroke-width=\"0.5\"/>\n", x0 + b * 22, ly, PALETTE[b]);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\">0</text>\n", x0, ly + 22);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\" text-anchor=\"middle\">%.3g</text>\n", x0 + 8 * 22, ly + 22,
            (double)s->threshold);
    fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\" text-anchor=\"end\">%.4g</text>\n", x0 + 16 * 22, ly + 22,
            (double)(vmax > s->threshold ? vmax : s->threshold));
    fprintf(f, "<text x=\"10\" y=\"%d\" font-size=\"10\">Blue: below the threshold (linear); yellow to red: at "
               "or above it (log scale up to the largest value).</text>\n", ly + 38);
    fprintf(f, "<text x=\"10\" y=\"%d\" font-size=\"10\">Each layer: upper row = input of the attention "
               "projections, lower row = input of the first FFN layer. Red marks: outlier features.</text>\n",
            ly + 52);
    fputs("</svg>\n", f);
    free(cell);
    /* Every write above went to the stream's buffer; the flush and close say whether all of
     * it reached the file (errno is the first failure's if the flush meets it again). */
    errno = 0;
    bool failed = fflush(f) != 0 || ferror(f);
    int why = errno;
    if (fclose(f) != 0 && !failed) {
        failed = true;
        why = errno;
    }
    if (failed)
        return err_set(err, "%s: could not write the picture: %s", path, why ? strerror(why) : "write error");
    return 0;
}
