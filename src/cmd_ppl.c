/* cmd_ppl.c — `llmint8 ppl`: perplexity of a text, exp(mean negative log-likelihood).
 *
 * Windows (Hugging Face's strided perplexity recipe): a window holds ctx tokens — BOS first
 * when the model uses one, then up to L = ctx - 1 text tokens (L = ctx without BOS). Windows
 * start every `stride` text tokens; each text token is scored exactly once, in the first
 * window that reaches it, so with stride < ctx every token after the first window is scored
 * with at least ctx - stride tokens of left context. With BOS every text token is scored
 * (the first one given BOS alone); without BOS the first text token cannot be.
 * With --ids the ids are used as given (no BOS added): a sequence shorter than ctx is one
 * window in which every id after the first is scored.
 *
 * --compare fp16 loads the 16-bit model beside the quantized one and runs every window
 * through both, in stages, MODEL_LOGIT_ROWS rows of logits at a time: for each scored
 * position the full logits rows of both come to the host, where both NLLs and the
 * distances of compare.h (KL of the quantized next-token distribution from the 16-bit one,
 * top-1 agreement, |Δ logit|) are computed in double. The staged run is bit-identical to
 * model_score's, and the host NLL is the CPU backend's own formula (logits.h), so the
 * quantized perplexity is the one plain `ppl` prints. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "compare.h"
#include "json_out.h"
#include "logits.h"

static const char HELP[] =
    "Usage: llmint8 ppl MODEL_DIR (-f FILE | --ids FILE) [options]\n"
    "Prints the perplexity of the text: 'ppl = X' (or a JSON object with --json).\n\n"
    "  -f, --file FILE        the text (UTF-8)\n"
    "      --ids FILE         the text as whitespace-separated token ids (used as given)\n"
    "      --ctx N            tokens per window, BOS included (default: the model's positions;\n"
    "                         2048 for ALiBi models)\n"
    "      --stride S         text tokens between window starts (default: a full window, no overlap)\n"
    "      --max-tokens N     score only the first N tokens of the text (default 0: all of it)\n"
    "      --quant all        run every quantization mode on the same text and print a table\n"
    "      --compare fp16     also run the 16-bit model on the same windows and report how far the\n"
    "                         quantized next-token distributions are from it: mean and 99th-percentile\n"
    "                         KL(p16 || pq), top-1 agreement, largest |logit difference| (both models\n"
    "                         are in memory at once)\n"
    "      --batch N          score N windows per forward call (1..64, default 1), as N sequences\n"
    "                         of the batched engine: the same result with --outliers per-token\n"
    "                         (bit for bit); with per-call outliers the columns are chosen over\n"
    "                         all windows of a call, which moves the result slightly; in a\n"
    "                         pipeline (docs/PIPELINE.md), N windows in flight through the stages\n"
    "      --json             print a JSON object (with 'ppl', 'nll_mean', 'tokens_scored', 'seconds')\n"
    "      --token-nll        with --json: also 'token_nll', every scored token's NLL in text order\n"
    "\n%s\n"
    "Examples:\n"
    "  llmint8 ppl models/opt-gutenberg-7m -f wiki.test.raw --ctx 256 --max-tokens 65536\n"
    "  llmint8 ppl MODEL_DIR -f wiki.test.raw --ctx 1024 --stride 512 --json\n"
    "  llmint8 ppl MODEL_DIR -f c4.txt --quant all --max-tokens 20000\n"
    "  llmint8 ppl MODEL_DIR -f wiki.test.raw --ctx 256 --quant all --compare fp16\n";

enum { ARG_STRIDE = ARG_COMMAND_BASE, ARG_JSON, ARG_COMPARE, ARG_BATCH, ARG_TOKEN_NLL };

typedef struct PplOptions {
    TextOptions text;
    long stride;
    long batch;              /* windows per forward call; 0: 1 */
    bool json, all_modes;
    bool token_nll;             /* --token-nll */
    bool compare_fp16;          /* --compare fp16 */
} PplOptions;

typedef struct PplResult {
    QuantMode mode;
    float threshold;
    double nll_sum;
    long scored, windows;
    double seconds;
    /* --compare fp16 only: the 16-bit model on the same positions, and the distances */
    bool compared;
    double ref_nll_sum;
    double kl_mean, kl_p99, kl_max, top1, max_abs_delta;
    /* --token-nll: every scored token's NLL, in text order ([scored] of cap) */
    bool keep_tokens;
    double *token_nll;
    long token_cap;
} PplResult;

/* --compare fp16: the 16-bit reference model and what one mode's run gathers. */
typedef struct Comparison {
    Model *ref;
    float *rows_ref, *rows_q;   /* host [MODEL_LOGIT_ROWS, vocab] each */
    double ref_nll_sum;         /* the reference's NLL over the scored positions, in order */
    CompareStats stats;
} Comparison;

static int parse_args(int argc, char **argv, CommonOptions *co, PplOptions *po) {
    static const struct option longopts[] = {
        CLI_COMMON_OPTIONS,
        CLI_TEXT_OPTIONS,
        {"stride", required_argument, NULL, ARG_STRIDE},
        {"json", no_argument, NULL, ARG_JSON},
        {"compare", required_argument, NULL, ARG_COMPARE},
        {"batch", required_argument, NULL, ARG_BATCH},
        {"token-nll", no_argument, NULL, ARG_TOKEN_NLL},
        {NULL, 0, NULL, 0},
    };
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "f:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': printf(HELP, CLI_COMMON_HELP); exit(0);
        case ARG_STRIDE:
            if (cli_int_option("ppl", "--stride", optarg, 1, 1 << 20, &po->stride)) return 2;
            break;
        case ARG_JSON: po->json = true; break;
        case ARG_TOKEN_NLL: po->token_nll = true; break;
        case ARG_COMPARE:
            if (strcmp(optarg, "fp16") != 0)
                return cli_usage_error("ppl", "--compare '%s': the only reference is 'fp16' (the 16-bit model)", optarg);
            po->compare_fp16 = true;
            break;
        case ARG_BATCH:
            if (cli_int_option("ppl", "--batch", optarg, 1, MODEL_LOGIT_ROWS, &po->batch)) return 2;
            break;
        case ARG_QUANT:
            if (strcmp(optarg, "all") == 0) {
                po->all_modes = true;
                break;
            }
            /* fall through */
        default:
            if (cli_text_or_common_option("ppl", c, optarg, &po->text, co)) return 2;
        }
    }
    if (optind < argc) co->model_dir = argv[optind++];
    if (optind < argc) return cli_usage_error("ppl", "unexpected argument '%s'", argv[optind]);
    if (!co->model_dir) return cli_usage_error("ppl", "no MODEL_DIR given");
    if (po->token_nll && !po->json) return cli_usage_error("ppl", "--token-nll goes with --json");
    if (po->compare_fp16 && (strchr(co->device, ',') || pipeline_mpi_size() > 1))
        return cli_usage_error("ppl", "--compare runs in one process: not with a device list or under mpirun");
    if (po->compare_fp16 && po->batch > 1)
        return cli_usage_error("ppl", "--compare runs one window at a time: it cannot be combined with --batch");
    return cli_text_check("ppl", &po->text);
}

/* The stages of a forward pass up to the final hidden states, for T <= model_capacity(m)
 * tokens at the next positions (model.h). */
static int run_to_hidden(Model *m, const int32_t *ids, int T, const float **hidden, Error *err) {
    if (model_embed(m, ids, T, err) || model_run_layers(m, 0, m->cfg.n_layers, T, err)) return -1;
    return model_finish(m, T, hidden, err);
}

/* --compare: one window through the quantized model m and the reference, both reset. Fills
 * nll[] as model_score would (NaN where targets[t] is -1) from m's logits, and adds each
 * scored position's reference NLL and distances to c. */
static int score_window_compared(Model *m, Comparison *c, const int32_t *win, long n, const int32_t *targets,
                                 double *nll, long window, Error *err) {
    Model *ref = c->ref;
    const int V = m->cfg.vocab_size;
    const size_t E = (size_t)m->cfg.word_embed_proj_dim;
    const int cap = model_capacity(m) < model_capacity(ref) ? model_capacity(m) : model_capacity(ref);
    model_reset(ref);
    for (long start = 0; start < n; start += cap) {
        int T = n - start < cap ? (int)(n - start) : cap;
        const float *hidden_q, *hidden_ref;
        if (run_to_hidden(m, win + start, T, &hidden_q, err) || run_to_hidden(ref, win + start, T, &hidden_ref, err))
            return -1;
        for (int r = 0; r < T; r += MODEL_LOGIT_ROWS) {
            int rows = T - r < MODEL_LOGIT_ROWS ? T - r : MODEL_LOGIT_ROWS;
            float *logits;
            if (model_logits(m, hidden_q + (size_t)r * E, rows, &logits, err)) return -1;
            m->bk->download(m->bk, c->rows_q, logits, (size_t)rows * (size_t)V);
            if (model_logits(ref, hidden_ref + (size_t)r * E, rows, &logits, err)) return -1;
            ref->bk->download(ref->bk, c->rows_ref, logits, (size_t)rows * (size_t)V);
            for (int k = 0; k < rows; k++) {
                long t = start + r + k;
                if (targets[t] < 0) {
                    nll[t] = NAN;
                    continue;
                }
                const float *row_q = c->rows_q + (size_t)k * (size_t)V, *row_ref = c->rows_ref + (size_t)k * (size_t)V;
                nll[t] = logits_nll(row_q, V, targets[t]);
                double nll_ref = logits_nll(row_ref, V, targets[t]);
                RowDistance d = compare_rows(row_ref, row_q, V);
                if (!isfinite(nll[t]) || !isfinite(nll_ref) || !isfinite(d.kl) || !isfinite(d.max_abs_delta))
                    return err_set(err, "window %ld, position %ld: the logits hold a NaN or an infinity (the forward "
                                   "pass overflowed, or the weights are not finite); no comparison", window, t + 1);
                c->ref_nll_sum += nll_ref;
                if (compare_stats_add_distance(&c->stats, &d)) return err_set(err, "out of memory");
            }
        }
        if (model_advance(m, T, err) || model_advance(ref, T, err)) return -1;
    }
    return 0;
}

/* One window: positions [0, n) of win, each predicting the next; targets -1 where not scored. */
typedef struct Window {
    int32_t *win, *targets;
    double *nll;
    long n, begin;
} Window;

/* Adds window w's NLLs to r in position order (so the sum does not depend on threads,
 * devices or the batch). */
static int add_window(const Window *w, long b, PplResult *r, Error *err) {
    for (long i = 0; i < w->n; i++) {
        if (w->targets[i] < 0) continue;
        /* An NLL is finite whenever the logits are: a NaN or infinity means the forward
         * pass overflowed, and no perplexity can be made of it. */
        if (!isfinite(w->nll[i]))
            return err_set(err, "the NLL of text token %ld (counting from 0; window %ld, position %ld) is %g: the "
                           "logits hold a NaN or an infinity (the forward pass overflowed, or the weights are not "
                           "finite); no perplexity", i + 1 - b + w->begin, r->windows + 1, i + 1, w->nll[i]);
        if (r->keep_tokens && r->scored == r->token_cap) {
            long cap = r->token_cap ? 2 * r->token_cap : 1024;
            double *p = realloc(r->token_nll, (size_t)cap * sizeof *p);
            if (!p) return err_set(err, "out of memory");
            r->token_nll = p, r->token_cap = cap;
        }
        if (r->keep_tokens) r->token_nll[r->scored] = w->nll[i];
        r->nll_sum += w->nll[i];
        r->scored++;
    }
    r->windows++;
    return 0;
}

/* Scores windows[0..n): alone on the default sequence when n_batch is 1 (beside the 16-bit
 * reference with --compare; `window` numbers it for messages), else as n sequences of one
 * model_step (the default sequence was removed to make room for them). */
static int score_windows(Model *m, Comparison *cmp, Window *w, int n, int n_batch, long ctx, long window,
                         Error *err) {
    if (n_batch == 1) {
        model_reset(m);
        if (cmp) return score_window_compared(m, cmp, w[0].win, w[0].n, w[0].targets, w[0].nll, window, err);
        return model_score(m, w[0].win, (int)w[0].n, w[0].targets, w[0].nll, err);
    }
    SeqStep steps[MODEL_LOGIT_ROWS];
    int added = 0, rc = 0;
    for (; added < n && rc == 0; added++) {
        rc = model_seq_add(m, (int)ctx, &steps[added].seq, err);
        if (rc) break;
        steps[added].ids = w[added].win, steps[added].T = (int)w[added].n;
        steps[added].targets = w[added].targets, steps[added].nll = w[added].nll;
    }
    if (rc == 0) rc = model_step(m, steps, n, err);
    for (int i = 0; i < added; i++) model_seq_remove(m, steps[i].seq, NULL);
    return rc;
}

/* A pipeline (pipeline.h) scores the windows as micro-batches in flight together. */
static int score_windows_pipelined(Pipeline *p, const Window *w, int n, Error *err) {
    const int32_t *ids[MODEL_LOGIT_ROWS], *targets[MODEL_LOGIT_ROWS];
    int T[MODEL_LOGIT_ROWS];
    double *nll[MODEL_LOGIT_ROWS];
    for (int i = 0; i < n; i++) ids[i] = w[i].win, T[i] = (int)w[i].n, targets[i] = w[i].targets, nll[i] = w[i].nll;
    return pipeline_score_windows(p, n, ids, T, targets, nll, err);
}

/* Scores the text under the loaded model (and, with cmp, the reference beside it, one window
 * at a time); see the file comment for the window rule. */
static int evaluate(Session *s, const int32_t *text, long n_text, int32_t bos, long ctx, long stride, int n_batch,
                    Comparison *cmp, PplResult *r, Error *err) {
    Model *m = s->model;
    const long b = bos >= 0 ? 1 : 0, L = ctx - b;
    Window w[MODEL_LOGIT_ROWS] = {{0}};
    int rc = 0;
    for (int k = 0; k < n_batch && rc == 0; k++) {
        w[k].win = malloc((size_t)ctx * sizeof *w[k].win);
        w[k].targets = malloc((size_t)ctx * sizeof *w[k].targets);
        w[k].nll = malloc((size_t)ctx * sizeof *w[k].nll);
        if (!w[k].win || !w[k].targets || !w[k].nll) rc = err_set(err, "out of memory");
    }
    if (rc == 0 && n_batch > 1 && !s->pipe) rc = model_seq_remove(m, 0, err);
    long n_windows = n_text <= L ? 1 : 1 + (n_text - L + stride - 1) / stride;
    Progress prog;
    progress_begin(&prog, "ppl", n_windows);
    double t0 = cli_now();
    long prev_end = 0;
    r->nll_sum = 0, r->scored = 0, r->windows = 0;
    bool last = false;
    for (long begin = 0; rc == 0 && !last;) {
        int k = 0;
        for (; k < n_batch && !last; k++, begin += stride) {
            Window *x = &w[k];
            long end = begin + L < n_text ? begin + L : n_text;
            x->n = b + (end - begin), x->begin = begin;
            if (b) x->win[0] = bos;
            memcpy(x->win + b, text + begin, (size_t)(end - begin) * sizeof *x->win);
            /* Window position i predicts position i + 1; text token j sits at i = j - begin + b.
             * Tokens already scored by the previous window (before prev_end) are not scored again. */
            long first = prev_end > begin + 1 - b ? prev_end : begin + 1 - b;
            for (long i = 0; i < x->n; i++) {
                long j = i + 1 - b + begin; /* text index of the token predicted at position i */
                x->targets[i] = (i + 1 >= x->n || j < first) ? -1 : text[j];
            }
            prev_end = end;
            last = end >= n_text;
        }
        rc = s->pipe ? score_windows_pipelined(s->pipe, w, k, err)
                     : score_windows(m, cmp, w, k, n_batch, ctx, r->windows + 1, err);
        for (int i = 0; i < k && rc == 0; i++) rc = add_window(&w[i], b, r, err);
        if (rc == 0) progress_update(&prog, r->windows);
    }
    progress_end(&prog);
    r->seconds = cli_now() - t0;
    for (int k = 0; k < n_batch; k++) free(w[k].win), free(w[k].targets), free(w[k].nll);
    return rc;
}

/* Moves what a mode's run gathered in c into r, leaving c ready for the next mode. */
static void take_comparison(Comparison *c, PplResult *r) {
    r->compared = true;
    r->ref_nll_sum = c->ref_nll_sum;
    r->kl_mean = compare_stats_kl_mean(&c->stats);
    r->kl_p99 = compare_stats_kl_percentile(&c->stats, 99.0);
    r->kl_max = compare_stats_kl_percentile(&c->stats, 100.0);
    r->top1 = compare_stats_top1(&c->stats);
    r->max_abs_delta = c->stats.max_abs_delta;
    compare_stats_free(&c->stats);
    c->ref_nll_sum = 0.0;
}

/* The mean NLL's exp() overflows a double beyond this (a model that is very wrong, but finite). */
#define PPL_OVERFLOW_NOTE "exp(nll_mean) is beyond the largest double"

static double nll_mean(const PplResult *r) { return r->scored ? r->nll_sum / (double)r->scored : NAN; }

/* --compare's fields of a JSON result: compare, ppl_fp16, nll_mean_fp16, kl_mean, kl_p99,
 * kl_max, top1_agreement, max_abs_logit_diff. The distances are finite (score_window_compared
 * checks); exp() of a very large mean NLL can still overflow. */
static void json_comparison(JsonOut *j, cJSON *obj, const PplResult *r) {
    double ref_mean = r->scored ? r->ref_nll_sum / (double)r->scored : NAN;
    json_add_string(j, obj, "compare", "fp16");
    json_add_number(j, obj, "ppl_fp16", exp(ref_mean), "exp(nll_mean_fp16) is beyond the largest double");
    json_add_number(j, obj, "nll_mean_fp16", ref_mean, "no tokens scored");
    json_add_number(j, obj, "kl_mean", r->kl_mean, "no tokens scored");
    json_add_number(j, obj, "kl_p99", r->kl_p99, "no tokens scored");
    json_add_number(j, obj, "kl_max", r->kl_max, "no tokens scored");
    json_add_number(j, obj, "top1_agreement", r->top1, "no tokens scored");
    json_add_number(j, obj, "max_abs_logit_diff", r->max_abs_delta, NULL);
}

/* One result as a JSON object: quant, threshold, ppl, nll_mean, tokens_scored, windows,
 * seconds, tokens_per_second, and with --compare the fields above. */
static void json_result(JsonOut *j, cJSON *obj, const PplResult *r) {
    double mean = nll_mean(r);
    json_add_string(j, obj, "quant", quant_mode_name(r->mode));
    json_add_number(j, obj, "threshold", (double)r->threshold, NULL);
    json_add_number(j, obj, "ppl", exp(mean), PPL_OVERFLOW_NOTE);
    json_add_number(j, obj, "nll_mean", mean, "no tokens scored");
    json_add_int(j, obj, "tokens_scored", r->scored);
    json_add_int(j, obj, "windows", r->windows);
    json_add_number(j, obj, "seconds", round(r->seconds * 1e3) / 1e3, NULL);
    json_add_number(j, obj, "tokens_per_second", r->seconds > 0 ? round(100.0 * (double)r->scored / r->seconds) / 100.0 : 0.0,
                    NULL);
    if (r->compared) json_comparison(j, obj, r);
    if (r->keep_tokens) {
        cJSON *list = json_add_array(j, obj, "token_nll");
        for (long i = 0; i < r->scored; i++) json_append_number(j, list, r->token_nll[i]);
    }
}

static int print_json(const PplResult *results, int n_modes, long ctx, long stride, Error *err) {
    JsonOut j;
    json_out_begin(&j);
    if (n_modes == 1) {
        json_result(&j, j.root, &results[0]);
    } else {
        json_add_int(&j, j.root, "ctx", ctx);
        json_add_int(&j, j.root, "stride", stride);
        cJSON *list = json_add_array(&j, j.root, "results");
        for (int i = 0; i < n_modes; i++) json_result(&j, json_append_object(&j, list), &results[i]);
    }
    return json_out_print(&j, stdout, false, err);
}

/* --compare's table: one row per mode, both perplexities and the distances. */
static void print_comparison_table(const PplResult *results, int n_modes, long ctx, long stride) {
    printf("%-22s %9s %10s %10s %11s %11s %8s %12s\n", "quant", "threshold", "ppl", "ppl fp16", "KL mean",
           "KL p99", "top-1 %", "max |dlogit|");
    for (int i = 0; i < n_modes; i++) {
        const PplResult *r = &results[i];
        printf("%-22s %9.3g %10.4f %10.4f %11.3e %11.3e %8.3f %12.4g\n", quant_mode_name(r->mode),
               (double)r->threshold, exp(r->nll_sum / r->scored), exp(r->ref_nll_sum / r->scored), r->kl_mean,
               r->kl_p99, 100.0 * r->top1, r->max_abs_delta);
    }
    printf("(KL(p_fp16 || p_quant) in nats per position; %ld positions scored, windows of %ld, stride %ld)\n",
           results[0].scored, ctx, stride);
}

int cmd_ppl(int argc, char **argv) {
    CommonOptions co;
    PplOptions po = {0};
    cli_common_defaults(&co);
    co.pipelined = true; /* windows run through pipeline_score_windows in a pipeline */
    int rc = parse_args(argc, argv, &co, &po);
    if (rc) return rc;

    Error err;
    Session s;
    if (cli_session_open(&co, po.text.text_file != NULL, false, &s, &err)) return cli_fail(&err);
    const ModelConfig *cfg = checkpoint_config(s.ck);

    int32_t *ids = NULL, bos = -1;
    size_t n_ids = 0;
    Comparison cmp = {0};
    PplResult results[QUANT_MODE_COUNT] = {0};
    rc = cli_load_tokens(&s, &po.text, &ids, &n_ids, &bos, &err);
    if (rc == 0 && n_ids + (bos >= 0) < 2)
        rc = err_set(&err, "%s: the text has %zu token(s); perplexity needs at least 2",
                     po.text.text_file ? po.text.text_file : po.text.ids_file, n_ids);
    if (rc) goto done;

    long native = arch_native_context(cfg);
    long ctx = po.text.ctx ? po.text.ctx : native;
    if (arch_max_context(cfg) > 0 && ctx > arch_max_context(cfg)) {
        rc = err_set(&err, "--ctx %ld exceeds the model's %ld positions", ctx, native);
        goto done;
    }
    if (po.text.ids_file && (long)n_ids <= ctx) ctx = (long)n_ids; /* one window, sized to fit */
    long L = ctx - (bos >= 0);
    long stride = po.stride ? po.stride : L;
    if (stride > L) {
        rc = err_set(&err, "--stride %ld is longer than a window's %ld text tokens", stride, L);
        goto done;
    }

    QuantMode modes[QUANT_MODE_COUNT];
    int n_modes = 0;
    if (po.all_modes) {
        for (int mm = 0; mm < QUANT_MODE_COUNT; mm++) modes[n_modes++] = (QuantMode)mm;
    } else {
        modes[n_modes++] = co.quant.mode;
    }
    ModelOptions mo = {.ctx = (int)ctx, .batch_tokens = (int)(ctx < 2048 ? ctx : 2048)};
    if (po.compare_fp16) {
        ModelOptions ref_opts = mo;
        ref_opts.quant = (QuantConfig){.mode = QUANT_FP16, .threshold = 0.0f, .outliers = co.quant.outliers};
        size_t row_bytes = (size_t)MODEL_LOGIT_ROWS * (size_t)cfg->vocab_size * sizeof(float);
        cmp.rows_ref = malloc(row_bytes);
        cmp.rows_q = malloc(row_bytes);
        if (!cmp.rows_ref || !cmp.rows_q) rc = err_set(&err, "out of memory (two blocks of %zu bytes of logits)", row_bytes);
        if (rc == 0) rc = model_load(s.ck, s.bk, &ref_opts, &cmp.ref, &err);
        if (rc) goto done;
    }
    for (int i = 0; i < n_modes && rc == 0; i++) {
        co.quant.mode = modes[i];
        long n_batch = po.batch ? po.batch : 1;
        if (n_batch > 1 && !(strchr(co.device, ',') || pipeline_mpi_size() > 1)) {
            /* n_batch windows per call: as many rows per GEMM as fit in 2048 (a pipeline
             * instead keeps n_batch windows in flight through its stages, one at a time each) */
            long rows = n_batch * ctx < 2048 ? n_batch * ctx : 2048;
            mo.batch_tokens = (int)(rows > ctx ? rows : ctx);
            mo.cache_tokens = (int)(n_batch * ctx);
        }
        rc = cli_session_load_model(&s, &co, &mo, &err);
        if (rc == 0) {
            results[i].mode = modes[i];
            results[i].threshold = s.model->quant.threshold;
            results[i].keep_tokens = po.token_nll;
            rc = evaluate(&s, ids, (long)n_ids, bos, ctx, stride, (int)n_batch, po.compare_fp16 ? &cmp : NULL,
                          &results[i], &err);
        }
        if (rc == 0 && po.compare_fp16) take_comparison(&cmp, &results[i]);
        if (rc == 0 && po.all_modes && !po.json)
            fprintf(stderr, "llmint8: %-22s ppl %.4f\n", quant_mode_name(modes[i]),
                    exp(results[i].nll_sum / results[i].scored));
    }
    if (rc) goto done;

    if (po.json) {
        rc = print_json(results, n_modes, ctx, stride, &err);
    } else if (po.compare_fp16) {
        print_comparison_table(results, n_modes, ctx, stride);
    } else if (n_modes == 1) {
        double ppl = exp(nll_mean(&results[0]));
        if (isfinite(ppl)) printf("ppl = %.4f\n", ppl);
        else printf("ppl = inf (the mean NLL, %.6g, is too large: " PPL_OVERFLOW_NOTE ")\n", nll_mean(&results[0]));
        fprintf(stderr, "llmint8: %ld tokens scored in %ld windows of %ld (stride %ld), %.1f s, %.1f tokens/s (%s)\n",
                results[0].scored, results[0].windows, ctx, stride, results[0].seconds,
                results[0].scored / (results[0].seconds > 0 ? results[0].seconds : 1e-9),
                quant_mode_name(results[0].mode));
    } else {
        double base = exp(results[0].nll_sum / results[0].scored); /* QUANT_FP16 is mode 0 */
        printf("%-22s %9s %12s %10s %9s\n", "quant", "threshold", "ppl", "vs fp16", "seconds");
        for (int i = 0; i < n_modes; i++) {
            double p = exp(results[i].nll_sum / results[i].scored);
            printf("%-22s %9.3g %12.4f %+9.3f%% %9.1f\n", quant_mode_name(results[i].mode),
                   (double)results[i].threshold, p, 100.0 * (p / base - 1.0), results[i].seconds);
        }
        printf("(%ld tokens scored, windows of %ld, stride %ld)\n", results[0].scored, ctx, stride);
    }
done:
    for (int i = 0; i < QUANT_MODE_COUNT; i++) free(results[i].token_nll);
    free(ids);
    if (cmp.ref) model_free(cmp.ref);
    free(cmp.rows_ref), free(cmp.rows_q);
    compare_stats_free(&cmp.stats);
    cli_session_close(&s);
    return rc ? cli_fail(&err) : 0;
}
