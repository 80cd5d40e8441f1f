/* cmd_outliers.c — `llmint8 outliers`: the emergent outlier features of a model on a text
 * (LLM.int8() paper, arXiv 2208.07339 §4), the paper's ablation, and a picture.
 *
 *   pass 1  the 16-bit model reads the text in non-overlapping windows (BOS first when the
 *           tokenizer uses one) while outlier_probe records every layer's attention and FFN
 *           inputs; outlier_find applies the paper's three criteria.
 *   pass 2  the same text with the outlier features set to 0 at those inputs in every layer;
 *   pass 3  the same with as many randomly chosen other dimensions set to 0 (fixed seed).
 * Each pass also scores the next-token predictions: perplexity and the mean probability of
 * the top-1 token, so the three can be compared. Definitions: docs/OUTLIERS.md. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "json_out.h"
#include "logits.h"
#include "outlier_analysis.h"
#include "rng.h"

static const char HELP[] =
    "Usage: llmint8 outliers MODEL_DIR (-f FILE | --ids FILE) [options]\n"
    "Finds the emergent outlier features of the model on a text (LLM.int8() paper, section 4):\n"
    "hidden dimensions with |x| >= threshold on >= 6% of the tokens, in >= 25% of the layers, at the\n"
    "inputs of the attention projections and the first FFN layer (16-bit forward pass). Then sets them\n"
    "to zero in every layer and reports the change in perplexity and mean top-1 probability, against\n"
    "zeroing as many random dimensions. Definitions and how to read the output: docs/OUTLIERS.md.\n\n"
    "  -f, --file FILE        the text (UTF-8)\n"
    "      --ids FILE         the text as whitespace-separated token ids (used as given, no BOS added)\n"
    "      --ctx N            tokens per window, BOS included (default: the model's positions, at\n"
    "                         most 2048); windows do not overlap\n"
    "      --max-tokens N     use the first N tokens of the text (default 4096; 0: all of it)\n"
    "      --threshold T      magnitude criterion, |x| >= T (default 6, the paper's)\n"
    "      --min-layers F     share of layers criterion (default 0.25)\n"
    "      --min-tokens F     share of tokens criterion (default 0.06)\n"
    "      --seed N           seed of the random dimensions of the control ablation (default 1234)\n"
    "      --no-ablation      only find the features (one pass over the text instead of three)\n"
    "      --svg FILE         write a heatmap: layers x hidden dimensions, colour = max |x|,\n"
    "                         outlier features marked (opens in any browser)\n"
    "      --json             print a JSON object\n"
    "      --device cpu|cuda|auto, --threads N, --tokenizer DIR   as for every command\n"
    "  -h, --help             this help\n"
    "The model always runs in 16-bit (--precision/--quant other than fp16 are refused).\n\n"
    "Examples:\n"
    "  llmint8 outliers models/opt-gutenberg-7m -f tests/data/eval/wiki.test.raw --ctx 512 --svg o.svg\n"
    "  llmint8 outliers MODEL_DIR -f wiki.test.raw --max-tokens 20000 --json > outliers.json\n"
    "  llmint8 outliers tests/data/fixtures/opt-tiny --ids ids.txt --threshold 8\n";

enum { ARG_MIN_LAYERS = ARG_COMMAND_BASE, ARG_MIN_TOKENS, ARG_SEED, ARG_NO_ABLATION, ARG_SVG, ARG_JSON };

typedef struct OutlierOptions {
    TextOptions text;
    const char *svg_file;
    uint64_t seed;
    double threshold;
    OutlierCriteria crit;
    bool json, ablation;
} OutlierOptions;

static int parse_args(int argc, char **argv, CommonOptions *co, OutlierOptions *po) {
    static const struct option longopts[] = {
        CLI_COMMON_OPTIONS,
        CLI_TEXT_OPTIONS,
        {"min-layers", required_argument, NULL, ARG_MIN_LAYERS},
        {"min-tokens", required_argument, NULL, ARG_MIN_TOKENS},
        {"seed", required_argument, NULL, ARG_SEED},
        {"no-ablation", no_argument, NULL, ARG_NO_ABLATION},
        {"svg", required_argument, NULL, ARG_SVG},
        {"json", no_argument, NULL, ARG_JSON},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "f:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': fputs(HELP, stdout); exit(0);
        case ARG_SVG: po->svg_file = optarg; break;
        case ARG_JSON: po->json = true; break;
        case ARG_NO_ABLATION: po->ablation = false; break;
        case ARG_SEED:
            if (cli_u64_option("outliers", "--seed", optarg, &po->seed)) return 2;
            break;
        case ARG_THRESHOLD:
            if (cli_parse_float(optarg, 0.0, 65504.0, &po->threshold) || !(po->threshold > 0))
                return cli_usage_error("outliers", "--threshold '%s': expected a number above 0, up to 65504", optarg);
            break;
        case ARG_MIN_LAYERS:
            if (cli_parse_float(optarg, 0.0, 1.0, &po->crit.min_layer_share))
                return cli_usage_error("outliers", "--min-layers '%s': expected a share from 0 to 1", optarg);
            break;
        case ARG_MIN_TOKENS:
            if (cli_parse_float(optarg, 0.0, 1.0, &po->crit.min_token_share))
                return cli_usage_error("outliers", "--min-tokens '%s': expected a share from 0 to 1", optarg);
            break;
        default:
            if (cli_text_or_common_option("outliers", c, optarg, &po->text, co)) return 2;
        }
    }
    if (optind < argc) co->model_dir = argv[optind++];
    if (optind < argc) return cli_usage_error("outliers", "unexpected argument '%s'", argv[optind]);
    if (!co->model_dir) return cli_usage_error("outliers", "no MODEL_DIR given");
    if (cli_text_check("outliers", &po->text)) return 2;
    if (co->quant_given && co->quant.mode != QUANT_FP16)
        return cli_usage_error("outliers", "the analysis runs the 16-bit model: --precision/--quant must be fp16");
    return 0;
}

/* ---- running the text ------------------------------------------------------------------ */

/* The text cut into non-overlapping windows: BOS (if any) + up to ctx - 1 text tokens each. */
typedef struct Windows {
    const int32_t *text;
    long n_text;
    int32_t bos;     /* -1: none */
    long ctx;
    long count;
} Windows;

static long window_text_tokens(const Windows *w) { return w->ctx - (w->bos >= 0); }

/* Next-token predictions scored in one pass. */
typedef struct Score {
    double nll_sum;    /* -log p(actual next token) */
    double top1_sum;   /* max_v p(v): the model's confidence in its top-1 choice */
    long scored;
} Score;

static double score_ppl(const Score *s) { return s->scored ? exp(s->nll_sum / (double)s->scored) : NAN; }
static double score_top1(const Score *s) { return s->scored ? s->top1_sum / (double)s->scored : NAN; }

/* Adds one prediction; returns false (adding nothing) if its NLL is not finite, which the
 * logits of a forward pass that did not overflow never give. */
static bool score_row(const float *logits, int vocab, int32_t target, Score *s) {
    float max;
    double lse = logits_logsumexp(logits, vocab, &max);
    double nll = lse - (double)logits[target];
    if (!isfinite(nll)) return false;
    s->nll_sum += nll;
    s->top1_sum += exp((double)max - lse);   /* the top token's probability */
    s->scored++;
    return true;
}

/* Runs every window through the model with the probe attached. */
static int run_text(Model *m, const Windows *w, OutlierProbe *probe, const char *label, Score *sc, Error *err) {
    const int vocab = m->cfg.vocab_size;
    const long b = w->bos >= 0, L = window_text_tokens(w);
    /* Logits of at most `chunk` rows at a time (a window may be 2048 x 250880 floats). */
    long chunk = (32L << 20) / vocab;
    if (chunk < 16) chunk = 16;
    if (chunk > model_capacity(m)) chunk = model_capacity(m);
    int32_t *win = malloc((size_t)w->ctx * sizeof *win);
    float *logits = malloc((size_t)chunk * (size_t)vocab * sizeof *logits);
    if (!win || !logits) {
        free(win), free(logits);
        return err_set(err, "out of memory");
    }
    m->observer = outlier_probe;
    m->observer_ctx = probe;
    memset(sc, 0, sizeof *sc);
    Progress prog;
    progress_begin(&prog, label, w->count);
    int rc = 0;
    for (long wi = 0; wi < w->count && rc == 0; wi++) {
        long begin = wi * L, end = begin + L < w->n_text ? begin + L : w->n_text, n = b + (end - begin);
        if (b) win[0] = w->bos;
        memcpy(win + b, w->text + begin, (size_t)(end - begin) * sizeof *win);
        model_reset(m);
        for (long off = 0; off < n && rc == 0; off += chunk) {
            long rows = n - off < chunk ? n - off : chunk;
            rc = model_forward(m, win + off, (int)rows, true, logits, err);
            for (long i = off; rc == 0 && i < off + rows && i + 1 < n; i++)
                if (!score_row(logits + (size_t)(i - off) * (size_t)vocab, vocab, win[i + 1], sc))
                    rc = err_set(err, "%s: the NLL of text token %ld (counting from 0; window %ld, position %ld) is "
                                 "not finite: the logits hold a NaN or an infinity (the forward pass overflowed, or "
                                 "the weights are not finite)", label, begin + i + 1 - b, wi + 1, i + 1);
        }
        if (probe->stats) outlier_stats_end_window(probe->stats);
        progress_update(&prog, wi + 1);
    }
    progress_end(&prog);
    m->observer = NULL;
    m->observer_ctx = NULL;
    free(win), free(logits);
    return rc;
}

/* ---- the control ablation's random dimensions ------------------------------------------ */

/* Marks up to k dimensions drawn uniformly without replacement from those not in `exclude`
 * (partial Fisher-Yates); returns how many were marked. */
static int choose_random(int hidden, const uint8_t *exclude, int k, uint64_t seed, uint8_t *chosen, Error *err) {
    int *pool = malloc((size_t)hidden * sizeof *pool), n = 0;
    if (!pool) return err_set(err, "out of memory");
    for (int d = 0; d < hidden; d++)
        if (!exclude[d]) pool[n++] = d;
    if (k > n) k = n;
    uint64_t state = seed;
    for (int i = 0; i < k; i++) {
        int j = i + (int)(splitmix64_next(&state) % (uint64_t)(n - i));
        int t = pool[i];
        pool[i] = pool[j], pool[j] = t;
        chosen[pool[i]] = 1;
    }
    free(pool);
    return k;
}

/* ---- output ------------------------------------------------------------------------------ */

static double pct_change(double now, double base) { return 100.0 * (now / base - 1.0); }

/* Up to `max` dimensions of (layer, site) meeting the token criterion, as "5 37 ...". */
static int site_dims(const OutlierStats *st, int layer, OutlierSite site, double min_tokens, char *buf,
                     size_t cap, int max) {
    int count = 0;
    size_t len = 0;
    buf[0] = 0;
    for (int d = 0; d < st->hidden; d++) {
        if (!outlier_hit(st, layer, site, d, min_tokens)) continue;
        if (count < max && len + 16 < cap) len += (size_t)snprintf(buf + len, cap - len, "%s%d", count ? " " : "", d);
        count++;
    }
    if (count > max && len + 24 < cap) snprintf(buf + len, cap - len, " ... (%d)", count);
    if (count == 0) snprintf(buf, cap, "-");
    return count;
}

static void site_max(const OutlierStats *st, int layer, OutlierSite site, float *v, int *dim) {
    const float *mx = st->max_abs + ((size_t)layer * SITE_COUNT + (size_t)site) * (size_t)st->hidden;
    *v = -1, *dim = 0;
    for (int d = 0; d < st->hidden; d++)
        if (mx[d] > *v) *v = mx[d], *dim = d;
}

/* A pass's scores as {"ppl", "nll_mean", "top1_prob_mean", "predictions"[, "dims"]}, or null. */
static void json_score(JsonOut *j, cJSON *parent, const char *name, const Score *s, const uint8_t *dims, int hidden) {
    if (!s) {
        json_add_string(j, parent, name, NULL);
        return;
    }
    cJSON *o = json_add_object(j, parent, name);
    json_add_number(j, o, "ppl", score_ppl(s), s->scored ? "exp(nll_mean) is beyond the largest double" : "no predictions");
    json_add_number(j, o, "nll_mean", s->scored ? s->nll_sum / (double)s->scored : NAN, "no predictions");
    json_add_number(j, o, "top1_prob_mean", score_top1(s), "no predictions");
    json_add_int(j, o, "predictions", s->scored);
    if (dims) {
        cJSON *list = json_add_array(j, o, "dims");
        for (int d = 0; d < hidden; d++)
            if (dims[d]) json_append_int(j, list, d);
    }
}

/* A dimension that is not a feature, with how close it came to the token criterion. */
typedef struct NearMiss {
    int dim;
    float max_abs;
    double share;     /* outlier_share_in_layers at the layer criterion */
} NearMiss;

static int near_miss_cmp(const void *a, const void *b) {
    const NearMiss *x = a, *y = b;
    if (x->share != y->share) return x->share < y->share ? 1 : -1;
    return x->dim - y->dim;
}

/* Up to `max` dimensions outside the features, closest to the token criterion first. */
static int find_near_misses(const OutlierStats *st, const uint8_t *is_feature, int min_layers, NearMiss *out,
                            int max, Error *err) {
    NearMiss *all = malloc((size_t)st->hidden * sizeof *all);
    if (!all) return err_set(err, "out of memory");
    int n = 0;
    for (int d = 0; d < st->hidden; d++) {
        double share = outlier_share_in_layers(st, d, min_layers);
        if (is_feature[d] || share <= 0) continue;
        float mx = 0;
        for (size_t at = 0; at < (size_t)st->n_layers * SITE_COUNT; at++) {
            float v = st->max_abs[at * (size_t)st->hidden + (size_t)d];
            if (v > mx) mx = v;
        }
        all[n++] = (NearMiss){.dim = d, .max_abs = mx, .share = share};
    }
    qsort(all, (size_t)n, sizeof *all, near_miss_cmp);
    if (n > max) n = max;
    memcpy(out, all, (size_t)n * sizeof *out);
    free(all);
    return n;
}

typedef struct Report {
    const char *model_dir, *source;
    const ModelConfig *cfg;
    const Windows *win;
    const OutlierStats *st;
    const OutlierCriteria *crit;
    const OutlierFeature *f;
    int n_features;
    int layers_touched;              /* layers in which at least one feature is present */
    const NearMiss *near;            /* the closest other dimensions */
    int n_near;
    const Score *base, *zero_feat, *zero_rand;
    const uint8_t *rand_dims;
    int n_rand;
    uint64_t seed;
    const char *svg;
} Report;

static int print_json(const Report *r, Error *err) {
    const OutlierStats *st = r->st;
    const char *no_values = "no input values were recorded";
    double values = st->values > 0 ? (double)st->values : NAN;
    int64_t feat_above = 0;
    for (int i = 0; i < r->n_features; i++) feat_above += r->f[i].above;
    JsonOut j;
    json_out_begin(&j);
    cJSON *root = j.root;
    json_add_string(&j, root, "model", r->model_dir);
    json_add_string(&j, root, "arch", arch_name(r->cfg->arch));
    json_add_int(&j, root, "layers", st->n_layers);
    json_add_int(&j, root, "hidden", st->hidden);
    json_add_string(&j, root, "text", r->source);
    json_add_int(&j, root, "tokens", r->win->n_text);
    json_add_int(&j, root, "windows", r->win->count);
    json_add_int(&j, root, "ctx", r->win->ctx);
    json_add_int(&j, root, "bos", r->win->bos);

    cJSON *crit = json_add_object(&j, root, "criteria");
    json_add_float(&j, crit, "threshold", st->threshold, NULL);
    json_add_number(&j, crit, "min_layer_share", r->crit->min_layer_share, NULL);
    json_add_number(&j, crit, "min_token_share", r->crit->min_token_share, NULL);
    cJSON *sites = json_add_array(&j, crit, "sites");
    json_append_string(&j, sites, "attn_input");
    json_append_string(&j, sites, "ffn_input");

    json_add_int(&j, root, "count", r->n_features);
    json_add_int(&j, root, "layers_touched", r->layers_touched);
    cJSON *list = json_add_array(&j, root, "outliers");
    for (int i = 0; i < r->n_features; i++) {
        const OutlierFeature *f = &r->f[i];
        cJSON *o = json_append_object(&j, list);
        json_add_int(&j, o, "dim", f->dim);
        json_add_float(&j, o, "max_abs", f->max_abs, NULL);
        json_add_int(&j, o, "layers", f->layers);
        json_add_number(&j, o, "layer_share", (double)f->layers / st->n_layers, NULL);
        json_add_number(&j, o, "token_share_mean", f->token_share_mean, NULL);
        json_add_number(&j, o, "token_share_max", f->token_share_max, NULL);
        json_add_number(&j, o, "value_share", (double)f->above / values, no_values);
        cJSON *in = json_add_array(&j, o, "in_layers");
        for (int l = 0; l < st->n_layers; l++)
            if (outlier_layer_hit(st, l, f->dim, r->crit->min_token_share)) json_append_int(&j, in, l);
    }
    list = json_add_array(&j, root, "near_misses");
    for (int i = 0; i < r->n_near; i++) {
        cJSON *o = json_append_object(&j, list);
        json_add_int(&j, o, "dim", r->near[i].dim);
        json_add_float(&j, o, "max_abs", r->near[i].max_abs, NULL);
        json_add_number(&j, o, "token_share_in_enough_layers", r->near[i].share, NULL);
    }

    cJSON *vs = json_add_object(&j, root, "value_shares");
    json_add_number(&j, vs, "above_threshold", (double)st->above / values, no_values);
    json_add_number(&j, vs, "above_threshold_in_outliers", (double)feat_above / values, no_values);
    json_add_number(&j, vs, "outlier_dims", (double)r->n_features / st->hidden, NULL);
    json_add_number(&j, vs, "decomposed_16bit", (double)st->decomposed / values, no_values);
    json_add_number(&j, vs, "int8", 1.0 - (double)st->decomposed / values, no_values);

    list = json_add_array(&j, root, "per_layer");
    for (int l = 0; l < st->n_layers; l++) {
        cJSON *o = json_append_object(&j, list);
        json_add_int(&j, o, "layer", l);
        for (int s = 0; s < SITE_COUNT; s++) {
            float v;
            int dim;
            site_max(st, l, (OutlierSite)s, &v, &dim);
            cJSON *site = json_add_object(&j, o, outlier_site_name((OutlierSite)s));
            json_add_float(&j, site, "max_abs", v, NULL);
            json_add_int(&j, site, "max_dim", dim);
            cJSON *dims = json_add_array(&j, site, "dims");
            for (int d = 0; d < st->hidden; d++)
                if (outlier_hit(st, l, (OutlierSite)s, d, r->crit->min_token_share)) json_append_int(&j, dims, d);
        }
    }

    cJSON *abl = json_add_object(&j, root, "ablation");
    json_add_uint(&j, abl, "seed", r->seed);
    json_score(&j, abl, "baseline", r->base, NULL, st->hidden);
    json_score(&j, abl, "zero_outliers", r->zero_feat, NULL, st->hidden);
    json_score(&j, abl, "zero_random", r->zero_rand, r->rand_dims, st->hidden);
    json_add_string(&j, root, "svg", r->svg);
    return json_out_print(&j, stdout, true, err);
}

static void print_text(const Report *r) {
    const OutlierStats *st = r->st;
    const OutlierCriteria *c = r->crit;
    const double thr = st->threshold, values = st->values > 0 ? (double)st->values : NAN;
    const int need_layers = outlier_min_layers(st, c->min_layer_share);
    printf("model     %s (%s, %d layers, hidden %d)\n", r->model_dir, arch_name(r->cfg->arch), st->n_layers,
           st->hidden);
    printf("text      %s: %ld token%s in %ld window%s of up to %ld%s\n", r->source, r->win->n_text,
           r->win->n_text == 1 ? "" : "s", r->win->count,
           r->win->count == 1 ? "" : "s", r->win->ctx, r->win->bos >= 0 ? " (BOS first)" : "");
    printf("criteria  |x| >= %g on >= %g%% of the tokens at an attention or FFN input, in >= %g%% of the layers "
           "(>= %d of %d)\n\n",
           thr, 100 * c->min_token_share, 100 * c->min_layer_share, need_layers, st->n_layers);

    printf("layer  %-40s %s\n", "attention input", "FFN input");
    printf("       %-40s %s\n", "max|x| (dim)  dims hit", "max|x| (dim)  dims hit");
    for (int l = 0; l < st->n_layers; l++) {
        printf("%5d", l);
        for (int s = 0; s < SITE_COUNT; s++) {
            float v;
            int dim;
            char dims[200], cellbuf[260];
            site_max(st, l, (OutlierSite)s, &v, &dim);
            site_dims(st, l, (OutlierSite)s, c->min_token_share, dims, sizeof dims, 6);
            snprintf(cellbuf, sizeof cellbuf, "%7.2f (%5d)  %s", (double)v, dim, dims);
            printf(s + 1 < SITE_COUNT ? "  %-40s" : "  %s", cellbuf);
        }
        printf("\n");
    }
    printf("(dims hit: |x| >= %g on >= %g%% of the tokens at that input)\n", thr, 100 * c->min_token_share);

    printf("\noutlier features: %d of %d hidden dimensions", r->n_features, st->hidden);
    if (r->n_features) printf(", present in %d of %d layers", r->layers_touched, st->n_layers);
    printf("\n");
    if (r->n_features) {
        printf("  %6s %9s %16s %22s\n", "dim", "max|x|", "layers", "tokens (mean, max)");
        for (int i = 0; i < r->n_features; i++) {
            const OutlierFeature *f = &r->f[i];
            char lay[48];
            snprintf(lay, sizeof lay, "%d of %d (%.0f%%)", f->layers, st->n_layers, 100.0 * f->layers / st->n_layers);
            printf("  %6d %9.2f %16s %13.1f%% %6.1f%%\n", f->dim, (double)f->max_abs, lay,
                   100 * f->token_share_mean, 100 * f->token_share_max);
        }
    } else {
        printf("  (none: no dimension reaches |x| >= %g on enough tokens in enough layers)\n", thr);
    }
    if (r->n_near) {
        printf("closest other dimensions: the share of tokens at which |x| >= %g in %d of %d layers "
               "(%g%% needed)\n", thr, need_layers, st->n_layers, 100 * c->min_token_share);
        for (int i = 0; i < r->n_near; i++)
            printf("  %6d %9.2f %15.2f%%\n", r->near[i].dim, (double)r->near[i].max_abs, 100 * r->near[i].share);
    }
    int64_t feat_above = 0;
    for (int i = 0; i < r->n_features; i++) feat_above += r->f[i].above;
    printf("\nvalues    %.4f%% of all recorded input values have |x| >= %g; %.4f%% are such values in the "
           "outlier features\n",
           100 * (double)st->above / values, thr, 100 * (double)feat_above / values);
    printf("          LLM.int8() at threshold %g (one matmul per window) keeps %.4f%% of the values in 16-bit, "
           "%.4f%% in 8-bit\n",
           thr, 100 * (double)st->decomposed / values, 100 - 100 * (double)st->decomposed / values);

    if (!r->base) return;
    printf("\nablation  dimensions set to 0 at the inputs of the attention projections and of fc1, every layer "
           "(%ld predictions)\n", r->base->scored);
    printf("  %-32s %12s %9s %14s %9s\n", "", "ppl", "change", "mean top-1 p", "change");
    printf("  %-32s %12.4f %9s %14.4f\n", "16-bit model", score_ppl(r->base), "", score_top1(r->base));
    if (!r->zero_feat) {
        printf("  (no outlier features: nothing to zero)\n");
        return;
    }
    char label[64];
    snprintf(label, sizeof label, "%d outlier feature%s zeroed", r->n_features, r->n_features == 1 ? "" : "s");
    printf("  %-32s %12.4f %+8.1f%% %14.4f %+8.1f%%\n", label, score_ppl(r->zero_feat),
           pct_change(score_ppl(r->zero_feat), score_ppl(r->base)), score_top1(r->zero_feat),
           pct_change(score_top1(r->zero_feat), score_top1(r->base)));
    snprintf(label, sizeof label, "%d random dimension%s zeroed", r->n_rand, r->n_rand == 1 ? "" : "s");
    printf("  %-32s %12.4f %+8.1f%% %14.4f %+8.1f%%\n", label, score_ppl(r->zero_rand),
           pct_change(score_ppl(r->zero_rand), score_ppl(r->base)), score_top1(r->zero_rand),
           pct_change(score_top1(r->zero_rand), score_top1(r->base)));
    printf("  random dimensions (seed %llu):", (unsigned long long)r->seed);
    for (int d = 0, k = 0; d < st->hidden && k < 16; d++)
        if (r->rand_dims[d]) printf(" %d", d), k++;
    printf("%s\n", r->n_rand > 16 ? " ..." : "");
}

/* ---- the command ------------------------------------------------------------------------- */

int cmd_outliers(int argc, char **argv) {
    CommonOptions co;
    OutlierOptions po = {.text.max_tokens = 4096, .seed = 1234, .threshold = 6.0,
                         .crit = {.min_layer_share = 0.25, .min_token_share = 0.06}, .ablation = true};
    cli_common_defaults(&co);
    int rc = parse_args(argc, argv, &co, &po);
    if (rc) return rc;
    co.quant.mode = QUANT_FP16;

    Error err;
    Session s;
    if (cli_session_open(&co, po.text.text_file != NULL, false, &s, &err)) return cli_fail(&err);
    const ModelConfig *cfg = checkpoint_config(s.ck);
    const char *source = po.text.text_file ? po.text.text_file : po.text.ids_file;

    int32_t *ids = NULL, bos = -1;
    size_t n_ids = 0;
    OutlierStats st = {0};
    OutlierFeature *feat = NULL;
    int n_feat = 0;
    uint8_t *feat_mask = NULL, *rand_mask = NULL;
    rc = cli_load_tokens(&s, &po.text, &ids, &n_ids, &bos, &err);
    if (rc == 0 && n_ids == 0) rc = err_set(&err, "%s: the text has no tokens", source);
    if (rc) goto done;

    long native = arch_native_context(cfg);
    long ctx = po.text.ctx ? po.text.ctx : (native < 2048 ? native : 2048);
    if (arch_max_context(cfg) > 0 && ctx > arch_max_context(cfg)) {
        rc = err_set(&err, "--ctx %ld exceeds the model's %ld positions", ctx, native);
        goto done;
    }
    if (bos < 0 && (long)n_ids < ctx) ctx = (long)n_ids;          /* one window, sized to fit */
    if (bos >= 0 && (long)n_ids + 1 < ctx) ctx = (long)n_ids + 1;
    if (ctx - (bos >= 0) < 1) {
        rc = err_set(&err, "a window of %ld position%s leaves no room for text after BOS", ctx, ctx == 1 ? "" : "s");
        goto done;
    }
    Windows win = {.text = ids, .n_text = (long)n_ids, .bos = bos, .ctx = ctx};
    win.count = (win.n_text + window_text_tokens(&win) - 1) / window_text_tokens(&win);

    ModelOptions mo = {.ctx = (int)ctx, .batch_tokens = (int)(ctx < 2048 ? ctx : 2048)};
    if ((rc = cli_session_load_model(&s, &co, &mo, &err))) goto done;
    Model *m = s.model;
    const int D = m->cfg.hidden;
    if ((rc = outlier_stats_init(&st, m->cfg.n_layers, D, (float)po.threshold, &err))) goto done;

    /* Pass 1: record, find the features. */
    Score base, zero_feat, zero_rand;
    OutlierProbe probe = {.stats = &st, .zero = NULL, .hidden = D};
    if ((rc = run_text(m, &win, &probe, "outliers: recording", &base, &err))) goto done;
    if ((rc = outlier_find(&st, &po.crit, &feat, &n_feat, &err))) goto done;
    int touched = 0;
    for (int l = 0; l < st.n_layers; l++) {
        bool any = false;
        for (int i = 0; i < n_feat && !any; i++) any = outlier_layer_hit(&st, l, feat[i].dim, po.crit.min_token_share);
        touched += any;
    }

    feat_mask = calloc((size_t)D, 1);
    rand_mask = calloc((size_t)D, 1);
    if (!feat_mask || !rand_mask) {
        rc = err_set(&err, "out of memory");
        goto done;
    }
    for (int i = 0; i < n_feat; i++) feat_mask[feat[i].dim] = 1;
    NearMiss near[5];
    int n_near = find_near_misses(&st, feat_mask, outlier_min_layers(&st, po.crit.min_layer_share), near, 5, &err);
    if (n_near < 0) {
        rc = -1;
        goto done;
    }

    /* Passes 2 and 3: the ablation. */
    int n_rand = 0;
    bool ablate = po.ablation && n_feat > 0;
    if (ablate) {
        if ((n_rand = choose_random(D, feat_mask, n_feat, po.seed, rand_mask, &err)) < 0) {
            rc = -1;
            goto done;
        }
        probe = (OutlierProbe){.stats = NULL, .zero = feat_mask, .hidden = D};
        if ((rc = run_text(m, &win, &probe, "ablation: outliers zeroed", &zero_feat, &err))) goto done;
        probe.zero = rand_mask;
        if ((rc = run_text(m, &win, &probe, "ablation: random zeroed", &zero_rand, &err))) goto done;
    }

    if (po.svg_file) {
        char title[1200], subtitle[300];
        snprintf(title, sizeof title, "Outlier features of %s", co.model_dir);
        snprintf(subtitle, sizeof subtitle,
                 "%ld tokens; |x| >= %g on >= %g%% of tokens in >= %g%% of layers: %d outlier feature%s "
                 "(%d layers, hidden %d)",
                 win.n_text, po.threshold, 100 * po.crit.min_token_share, 100 * po.crit.min_layer_share, n_feat,
                 n_feat == 1 ? "" : "s", st.n_layers, D);
        if ((rc = outlier_write_svg(&st, feat, n_feat, title, subtitle, po.svg_file, &err))) goto done;
    }

    Report r = {
        .model_dir = co.model_dir, .source = source, .cfg = &m->cfg, .win = &win, .st = &st, .crit = &po.crit,
        .f = feat, .n_features = n_feat, .layers_touched = touched, .near = near, .n_near = n_near,
        .base = po.ablation ? &base : NULL, .zero_feat = ablate ? &zero_feat : NULL,
        .zero_rand = ablate ? &zero_rand : NULL, .rand_dims = rand_mask, .n_rand = n_rand, .seed = po.seed,
        .svg = po.svg_file,
    };
    if (po.json) rc = print_json(&r, &err);
    else print_text(&r);
    if (po.svg_file && !po.json) printf("\npicture   %s\n", po.svg_file);

done:
    free(ids), free(feat), free(feat_mask), free(rand_mask);
    outlier_stats_free(&st);
    cli_session_close(&s);
    return rc ? cli_fail(&err) : 0;
}
