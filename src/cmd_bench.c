/* cmd_bench.c — `llmint8 bench`: how fast and how big int8 is next to fp16, on synthetic
 * weights of a real model's shape (no checkpoint needed).
 *
 * Two parts, both comparing the same inputs in one run:
 *
 *  1. Linear layers. One projection of the FFN shape (K = hidden, N = ffn) and one of the
 *     attention shape (K = N = hidden), created through the backend from the same random
 *     F16 weights three times: fp16, int8 with tau = 0 (no decomposition) and int8 with
 *     tau = 6 (LLM.int8()). The input rows are N(0,1) clipped below tau, except for a few
 *     planted outlier columns (--outlier-frac, default 0.5% of K) that hold +-8..20 in every
 *     row, like the paper's emergent features. Each cell reports GOP/s = 2*T*K*N / median
 *     seconds per call.
 *
 *  2. The whole model. A synthetic checkpoint (bench_checkpoint.h: random F16 weights of the
 *     shape, with LayerNorm gain 30 in 2..6 hidden dimensions so that the projections see
 *     outlier features as in real models) is written to a temporary directory, opened, and
 *     deleted at once (it stays mapped), so the normal loader and forward pass run. Measured
 *     per precision (fp16, int8): prompt processing (last position's logits only, as
 *     generation needs) and decoding at batch 1 after it, with a KV cache sized for the two
 *     as `generate` sizes it; then, from a second load whose cache holds its window (as `ppl`
 *     sizes it), perplexity-style throughput (all logits); weight bytes (what the backend
 *     objects hold) and peak resident memory.
 *
 *  3. One core busy (--busy-core, instead of 1 and 2). The whole model in int8, four ways:
 *     with the thread count as given (the default: adaptive, cpu_pool.h) and with one
 *     thread, first on the machine as it is, then while another process (bench_busy.h)
 *     spins on one CPU; three rounds of each, every figure the best of its three. It shows
 *     whether the default copes with a core taken by another program: it should never be
 *     much slower than one thread.
 *
 * Every measurement runs in a forked child process (bench_proc.h). That gives each precision
 * its own peak-RSS counter (VmHWM is per process), and keeps worker threads and GPU state out of the
 * parent, which would make fork unsafe. A child sends its result back through a pipe.
 *
 * Peak RSS: after loading, the child drops its page-table entries for the checkpoint mapping
 * (madvise DONTNEED; the data stays in the page cache), resets the high-water mark
 * (/proc/self/clear_refs) and then runs. The figure is thus what inference keeps resident:
 * fp16 faults its weights back in from the mapping, int8 does not need the 16-bit weights
 * at all (it quantized them while loading; an int8 checkpoint from `convert` would not map
 * them in the first place).
 *
 * This file: the options, the two parts, and the reports (tables or JSON). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_batch.h"
#include "bench_busy.h"
#include "bench_checkpoint.h"
#include "bench_proc.h"
#include "bench_stream.h"
#include "cli.h"
#include "commands.h"
#include "json_out.h"
#include "rng.h"

static const char HELP[] =
    "Usage: llmint8 bench [--shape NAME | --hidden N --layers N ...] [options]\n"
    "Measures int8 against fp16 on random weights of a model's shape: linear-layer GOP/s at\n"
    "several token counts, then the whole model (prompt, perplexity and decoding tokens/s,\n"
    "weight bytes and peak memory), with the int8/fp16 ratios and the targets they should meet.\n\n"
    "  --shape NAME           tiny, opt-125m, opt-350m, opt-1.3b (default), opt-2.7b, opt-6.7b,\n"
    "                         opt-13b, opt-30b, opt-66b, bloom-560m, bloom-1b1, bloom-1b7,\n"
    "                         bloom-3b, bloom-7b1\n"
    "  --arch opt|bloom       architecture for explicit dimensions (default: the shape's)\n"
    "  --hidden N  --ffn N  --layers N  --heads N  --vocab N\n"
    "                         override the shape's dimensions (a new --hidden also sets ffn to\n"
    "                         4*hidden and heads to hidden/64 unless those are given; fewer\n"
    "                         --layers make a quick run but change the model ratios)\n"
    "  --tokens LIST          token counts of the linear-layer part (default 1,16,128,512; with\n"
    "                         --device cuda 1,16,256,4096)\n"
    "  --outlier-frac F       fraction of input columns holding outliers (default 0.005)\n"
    "  --iters N              timed calls per linear-layer cell (default: at least 3 and 0.3 s)\n"
    "  --prompt-tokens N      prompt length (default 128)\n"
    "  --ppl-tokens N         tokens of the all-logits (perplexity) pass (default 512; 0 = skip)\n"
    "  --decode-tokens N      tokens generated after the prompt (default 32; 0 = skip)\n"
    "  --gemm-only            only the linear layers (no checkpoint is written)\n"
    "  --model-only           only the whole model\n"
    "  --model-tau0           also run the whole model with int8 tau = 0, to show what the\n"
    "                         decomposition costs end to end\n"
    "  --tmpdir DIR           where the synthetic checkpoint is written (default $TMPDIR or /tmp;\n"
    "                         it is deleted as soon as it is opened)\n"
    "  --busy-core            instead: the whole model in int8 with the thread count as given\n"
    "                         (default: adaptive) and with --threads 1, idle and while another\n"
    "                         process keeps one CPU busy\n"
    "  --batch LIST           instead: many sequences decoding together through the step API\n"
    "                         (e.g. 1,4,16,64): per batch size B, B sequences each given a\n"
    "                         prompt of --batch-context tokens in one step, then --decode-tokens\n"
    "                         greedy steps of all B; prompt and aggregate decode tokens/s, fp16\n"
    "                         and int8 side by side, 16-bit KV cache\n"
    "  --batch-context N      prompt tokens per sequence of --batch (default 128)\n"
    "  --json                 print one JSON object instead of tables\n"
    "\n"
    "  --threshold T sets tau of int8 (default 6), --outliers its outlier scope, --device and\n"
    "  --threads where it runs (--precision and --quant do not apply: bench runs both).\n"
    "\n%s\n"
    "Examples:\n"
    "  llmint8 bench --shape opt-1.3b --threads 2\n"
    "  llmint8 bench --shape opt-6.7b --gemm-only --tokens 1,128\n"
    "  llmint8 bench --hidden 1024 --layers 4 --json\n";

enum {
    ARG_SHAPE = ARG_COMMAND_BASE, ARG_ARCH, ARG_HIDDEN, ARG_FFN, ARG_LAYERS, ARG_HEADS, ARG_VOCAB,
    ARG_TOKENS, ARG_OUTLIER_FRAC, ARG_ITERS, ARG_PROMPT_TOKENS, ARG_PPL_TOKENS, ARG_DECODE_TOKENS,
    ARG_GEMM_ONLY, ARG_MODEL_ONLY, ARG_MODEL_TAU0, ARG_TMPDIR, ARG_JSON, ARG_BUSY_CORE, ARG_BATCH,
    ARG_BATCH_CONTEXT,
};

/* ---- shapes ------------------------------------------------------------------------ */

/* The published configs of the OPT and BLOOM families (their config.json on the Hugging Face hub). */
static const BenchShape SHAPES[] = {
    {"tiny", ARCH_OPT, 64, 2, 4, 256, 1024, 0, false},
    {"opt-125m", ARCH_OPT, 768, 12, 12, 3072, 50272, 0, false},
    {"opt-350m", ARCH_OPT, 1024, 24, 16, 4096, 50272, 512, true},
    {"opt-1.3b", ARCH_OPT, 2048, 24, 32, 8192, 50272, 0, false},
    {"opt-2.7b", ARCH_OPT, 2560, 32, 32, 10240, 50272, 0, false},
    {"opt-6.7b", ARCH_OPT, 4096, 32, 32, 16384, 50272, 0, false},
    {"opt-13b", ARCH_OPT, 5120, 40, 40, 20480, 50272, 0, false},
    {"opt-30b", ARCH_OPT, 7168, 48, 56, 28672, 50272, 0, false},
    {"opt-66b", ARCH_OPT, 9216, 64, 72, 36864, 50272, 0, false},
    {"bloom-560m", ARCH_BLOOM, 1024, 24, 16, 4096, 250880, 0, false},
    {"bloom-1b1", ARCH_BLOOM, 1536, 24, 16, 6144, 250880, 0, false},
    {"bloom-1b7", ARCH_BLOOM, 2048, 24, 16, 8192, 250880, 0, false},
    {"bloom-3b", ARCH_BLOOM, 2560, 30, 32, 10240, 250880, 0, false},
    {"bloom-7b1", ARCH_BLOOM, 4096, 30, 32, 16384, 250880, 0, false},
};
#define N_SHAPES (sizeof SHAPES / sizeof SHAPES[0])

#define MAX_TOKEN_COUNTS 16
#define MAX_OUTLIER_DIMS 6

/* ---- options ----------------------------------------------------------------------- */

typedef struct BenchOptions {
    BenchShape shape;
    bool dims_changed;               /* some dimension differs from the named shape */
    int tokens[MAX_TOKEN_COUNTS], n_tokens;
    double outlier_frac;
    long iters;                      /* 0: adaptive */
    int prompt_tokens, ppl_tokens, decode_tokens;
    bool gemm, model, json;
    bool model_tau0;                 /* also run the whole model with int8 tau = 0 */
    bool busy_core;                  /* part 3 only: default vs one thread, idle and one CPU busy */
    int batches[BENCH_MAX_BATCHES], n_batches; /* --batch: part 4 only (0: not asked) */
    int batch_context;
    const char *tmpdir;
} BenchOptions;

static int parse_dim(const char *opt, const char *arg, long lo, long hi, int *out) {
    long v;
    if (cli_parse_int(arg, lo, hi, &v))
        return cli_usage_error("bench", "%s '%s': expected a whole number from %ld to %ld", opt, arg, lo, hi);
    *out = (int)v;
    return 0;
}

/* "1,16,128,512" -> tokens[]. */
static int parse_tokens(const char *arg, BenchOptions *bo) {
    bo->n_tokens = 0;
    const char *p = arg;
    for (;;) {
        char item[32];
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof item || bo->n_tokens == MAX_TOKEN_COUNTS) break;
        memcpy(item, p, len);
        item[len] = 0;
        long v;
        if (cli_parse_int(item, 1, 8192, &v)) break;
        bo->tokens[bo->n_tokens++] = (int)v;
        if (p[len] == 0) return 0;
        p += len + 1;
    }
    return cli_usage_error("bench", "--tokens '%s': expected up to %d comma-separated counts from 1 to 8192",
                           arg, MAX_TOKEN_COUNTS);
}

/* "1,4,16,64" -> batches[]: distinct sizes from 1 to BENCH_MAX_BATCH. */
static int parse_batches(const char *arg, BenchOptions *bo) {
    bo->n_batches = 0;
    const char *p = arg;
    for (;;) {
        char item[32];
        size_t len = strcspn(p, ",");
        if (len == 0 || len >= sizeof item || bo->n_batches == BENCH_MAX_BATCHES) break;
        memcpy(item, p, len);
        item[len] = 0;
        long v;
        if (cli_parse_int(item, 1, BENCH_MAX_BATCH, &v)) break;
        bo->batches[bo->n_batches++] = (int)v;
        if (p[len] == 0) return 0;
        p += len + 1;
    }
    bo->n_batches = 0;
    return cli_usage_error("bench", "--batch '%s': expected up to %d comma-separated batch sizes from 1 to %d", arg,
                           BENCH_MAX_BATCHES, BENCH_MAX_BATCH);
}

static int parse_args(int argc, char **argv, CommonOptions *co, BenchOptions *bo) {
    static const struct option longopts[] = {
        CLI_COMMON_OPTIONS,
        {"shape", required_argument, NULL, ARG_SHAPE},
        {"arch", required_argument, NULL, ARG_ARCH},
        {"hidden", required_argument, NULL, ARG_HIDDEN},
        {"ffn", required_argument, NULL, ARG_FFN},
        {"layers", required_argument, NULL, ARG_LAYERS},
        {"heads", required_argument, NULL, ARG_HEADS},
        {"vocab", required_argument, NULL, ARG_VOCAB},
        {"tokens", required_argument, NULL, ARG_TOKENS},
        {"outlier-frac", required_argument, NULL, ARG_OUTLIER_FRAC},
        {"iters", required_argument, NULL, ARG_ITERS},
        {"prompt-tokens", required_argument, NULL, ARG_PROMPT_TOKENS},
        {"ppl-tokens", required_argument, NULL, ARG_PPL_TOKENS},
        {"decode-tokens", required_argument, NULL, ARG_DECODE_TOKENS},
        {"gemm-only", no_argument, NULL, ARG_GEMM_ONLY},
        {"model-only", no_argument, NULL, ARG_MODEL_ONLY},
        {"model-tau0", no_argument, NULL, ARG_MODEL_TAU0},
        {"tmpdir", required_argument, NULL, ARG_TMPDIR},
        {"json", no_argument, NULL, ARG_JSON},
        {"busy-core", no_argument, NULL, ARG_BUSY_CORE},
        {"batch", required_argument, NULL, ARG_BATCH},
        {"batch-context", required_argument, NULL, ARG_BATCH_CONTEXT},
        {NULL, 0, NULL, 0},
    };
    /* Explicit dimensions are applied after the loop, on top of the (possibly named) shape. */
    const char *shape_name = "opt-1.3b", *arch = NULL;
    int hidden = 0, ffn = 0, layers = 0, heads = 0, vocab = 0;
    bool gemm_only = false, model_only = false, tokens_given = false;
    bo->tokens[0] = 1, bo->tokens[1] = 16, bo->tokens[2] = 128, bo->tokens[3] = 512;
    bo->n_tokens = 4;
    bo->outlier_frac = 0.005;
    bo->prompt_tokens = 128, bo->ppl_tokens = 512, bo->decode_tokens = 32;
    bo->batch_context = 128;
    int c, rc = 0;
    double d;
    optind = 1;
    while (rc == 0 && (c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': printf(HELP, CLI_COMMON_HELP); exit(0);
        case ARG_SHAPE: shape_name = optarg; break;
        case ARG_ARCH:
            if (strcmp(optarg, "opt") && strcmp(optarg, "bloom"))
                return cli_usage_error("bench", "--arch '%s': expected opt or bloom", optarg);
            arch = optarg;
            break;
        case ARG_HIDDEN: rc = parse_dim("--hidden", optarg, 2, 65536, &hidden); break;
        case ARG_FFN: rc = parse_dim("--ffn", optarg, 1, 262144, &ffn); break;
        case ARG_LAYERS: rc = parse_dim("--layers", optarg, 1, 1024, &layers); break;
        case ARG_HEADS: rc = parse_dim("--heads", optarg, 1, 1024, &heads); break;
        case ARG_VOCAB: rc = parse_dim("--vocab", optarg, 2, 1 << 20, &vocab); break;
        case ARG_TOKENS:
            rc = parse_tokens(optarg, bo);
            tokens_given = true;
            break;
        case ARG_OUTLIER_FRAC:
            if (cli_parse_float(optarg, 0.0, 0.5, &d))
                return cli_usage_error("bench", "--outlier-frac '%s': expected a number from 0 to 0.5", optarg);
            bo->outlier_frac = d;
            break;
        case ARG_ITERS:
            if (cli_parse_int(optarg, 1, 1000000, &bo->iters))
                return cli_usage_error("bench", "--iters '%s': expected a whole number from 1 to 1000000", optarg);
            break;
        case ARG_PROMPT_TOKENS: rc = parse_dim("--prompt-tokens", optarg, 1, 2047, &bo->prompt_tokens); break;
        case ARG_PPL_TOKENS: rc = parse_dim("--ppl-tokens", optarg, 0, 2048, &bo->ppl_tokens); break;
        case ARG_DECODE_TOKENS: rc = parse_dim("--decode-tokens", optarg, 0, 2047, &bo->decode_tokens); break;
        case ARG_GEMM_ONLY: gemm_only = true; break;
        case ARG_MODEL_ONLY: model_only = true; break;
        case ARG_MODEL_TAU0: bo->model_tau0 = true; break;
        case ARG_TMPDIR: bo->tmpdir = optarg; break;
        case ARG_JSON: bo->json = true; break;
        case ARG_BUSY_CORE: bo->busy_core = true; break;
        case ARG_BATCH: rc = parse_batches(optarg, bo); break;
        case ARG_BATCH_CONTEXT: rc = parse_dim("--batch-context", optarg, 1, 1024, &bo->batch_context); break;
        case ARG_PRECISION: case ARG_QUANT: case ARG_TOKENIZER:
            return cli_usage_error("bench", "--precision, --quant and --tokenizer do not apply: bench compares "
                                            "fp16 and int8 (LLM.int8()) on synthetic weights");
        default: {
            int r = cli_common_option(c, optarg, co);
            if (r < 0) return 2;
            if (r == 0) return cli_usage_error("bench", "unknown option");
        }
        }
    }
    if (rc) return rc;
    if (optind < argc) return cli_usage_error("bench", "unexpected argument '%s' (bench needs no MODEL_DIR)", argv[optind]);
    if (gemm_only && model_only) return cli_usage_error("bench", "give at most one of --gemm-only and --model-only");
    if (!tokens_given && strcmp(co->device, "cuda") == 0) {
        /* a GPU is only busy at large batches: the CUDA issue's token counts */
        bo->tokens[0] = 1, bo->tokens[1] = 16, bo->tokens[2] = 256, bo->tokens[3] = 4096;
        bo->n_tokens = 4;
    }
    if (bo->busy_core && (gemm_only || model_only || bo->model_tau0))
        return cli_usage_error("bench", "--busy-core runs only its own comparison: no --gemm-only, --model-only "
                                        "or --model-tau0");
    if (bo->n_batches > 0 && (gemm_only || model_only || bo->model_tau0 || bo->busy_core))
        return cli_usage_error("bench", "--batch runs only its own comparison: no --gemm-only, --model-only, "
                                        "--model-tau0 or --busy-core");
    if (bo->n_batches > 0 && bo->decode_tokens < 1)
        return cli_usage_error("bench", "--batch needs --decode-tokens of at least 1");
    bo->gemm = !model_only && !bo->busy_core && bo->n_batches == 0;
    bo->model = !gemm_only;

    const BenchShape *named = NULL;
    for (size_t i = 0; i < N_SHAPES; i++)
        if (strcmp(SHAPES[i].name, shape_name) == 0) named = &SHAPES[i];
    if (!named) {
        char list[512] = "";
        for (size_t i = 0; i < N_SHAPES; i++)
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", SHAPES[i].name);
        return cli_usage_error("bench", "--shape '%s' is not one of %s", shape_name, list);
    }
    BenchShape s = *named;
    if (arch) {
        Arch a = strcmp(arch, "opt") == 0 ? ARCH_OPT : ARCH_BLOOM;
        if (a != s.arch) {
            s.arch = a;
            s.proj_dim = 0, s.post_ln = false;
            s.vocab = a == ARCH_OPT ? 50272 : 250880;
            bo->dims_changed = true;
        }
    }
    if (hidden && hidden != s.hidden) {
        s.hidden = hidden;
        s.ffn = 4 * hidden;
        s.heads = hidden >= 64 ? hidden / 64 : 1;
        s.proj_dim = 0, s.post_ln = false;
        bo->dims_changed = true;
    }
    if (ffn) s.ffn = ffn, bo->dims_changed = true;
    if (heads) s.heads = heads, bo->dims_changed = true;
    if (vocab) s.vocab = vocab, bo->dims_changed = true;
    if (layers) s.layers = layers, bo->dims_changed = bo->dims_changed || layers != named->layers;
    if (s.hidden % s.heads)
        return cli_usage_error("bench", "%d heads do not divide the hidden size %d", s.heads, s.hidden);
    if (s.arch == ARCH_BLOOM && s.ffn != 4 * s.hidden)
        return cli_usage_error("bench", "BLOOM's MLP is 4 x hidden = %d wide; --ffn %d is not possible", 4 * s.hidden,
                               s.ffn);
    bo->shape = s;
    if (s.arch == ARCH_OPT && bo->batch_context + bo->decode_tokens > BENCH_OPT_POSITIONS)
        return cli_usage_error("bench", "--batch-context + --decode-tokens must fit OPT's %d positions",
                               BENCH_OPT_POSITIONS);
    if (s.arch == ARCH_OPT && bo->prompt_tokens + bo->decode_tokens > BENCH_OPT_POSITIONS)
        return cli_usage_error("bench", "--prompt-tokens + --decode-tokens must fit OPT's %d positions",
                               BENCH_OPT_POSITIONS);
    return 0;
}

/* ---- random choices (splitmix64, rng.h: the same on every machine) ------------------ */

/* Draws n distinct values from [0, range) into out (n <= range), for outlier columns. */
static int pick_distinct(uint64_t *rng, int range, int n, int32_t *out) {
    int32_t *all = malloc((size_t)range * sizeof *all);
    if (!all) return -1;
    for (int i = 0; i < range; i++) all[i] = i;
    for (int i = 0; i < n; i++) { /* the first steps of a Fisher-Yates shuffle */
        int j = i + (int)(splitmix64_next(rng) % (uint64_t)(range - i));
        int32_t t = all[i];
        all[i] = all[j], all[j] = t;
        out[i] = all[i];
    }
    free(all);
    return 0;
}

/* ---- the plan shared by every part ------------------------------------------------- */

typedef struct BenchPlan {
    BenchOptions o;
    const char *device;
    int threads;                 /* as given; <= 0: one per core */
    QuantConfig int8;            /* LLM.int8() with the chosen tau and outlier scope */
    const Checkpoint *ck;        /* the synthetic checkpoint (model part) */
    int n_outlier_dims;          /* hidden dims with LayerNorm gain BENCH_LN_OUTLIER_GAIN */
    int32_t outlier_dims[MAX_OUTLIER_DIMS];
} BenchPlan;

/* What a child reports about the backend it ran on. */
typedef struct BackendInfo {
    char name[16];               /* Backend.name */
    char kernels[128];           /* Backend.describe(): the kernels it selected */
} BackendInfo;

static void backend_info(Backend *bk, BackendInfo *info) {
    snprintf(info->name, sizeof info->name, "%s", bk->name);
    snprintf(info->kernels, sizeof info->kernels, "%s", bk->describe(bk));
}

/* ---- part 1: linear layers --------------------------------------------------------- */

enum { V_FP16, V_INT8, V_INT8_DECOMP, N_VARIANTS };
static const char *const VARIANT_NAMES[N_VARIANTS] = {"fp16", "int8", "int8_decomp"};

typedef struct GemmCell {
    int shape;                   /* 0: FFN (fc1), 1: attention (q/k/v/out) */
    int K, N, T, outlier_cols;
    double seconds[N_VARIANTS];  /* median per call */
    int calls[N_VARIANTS];
} GemmCell;

typedef struct GemmReport {
    BackendInfo backend;
    int n;
    GemmCell cells[2 * MAX_TOKEN_COUNTS];
} GemmReport;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median seconds of one call y = x W^T, after one warm-up call. Reading one output back
 * makes a GPU backend finish the call before the clock stops. */
static double time_linear(Backend *bk, const BkLinear *l, const float *x, int T, float *y, long iters, int *calls) {
    enum { MAX_SAMPLES = 4096 };
    static double samples[MAX_SAMPLES];
    float one;
    bk->linear(bk, l, x, T, y);
    bk->download(bk, &one, y, 1);
    double start = cli_now();
    int n = 0;
    for (;;) {
        double t0 = cli_now();
        bk->linear(bk, l, x, T, y);
        bk->download(bk, &one, y, 1);
        samples[n++] = cli_now() - t0;
        if (n == MAX_SAMPLES || (iters > 0 && n >= iters)) break;
        if (iters == 0 && n >= 3 && cli_now() - start >= 0.3) break;
    }
    qsort(samples, (size_t)n, sizeof samples[0], cmp_double);
    *calls = n;
    return n % 2 ? samples[n / 2] : 0.5 * (samples[n / 2 - 1] + samples[n / 2]);
}

/* Input rows for the GEMM cells: N(0,1) clipped to +-5.5 (below tau) everywhere but the
 * outlier columns, which hold +-U(8, 20) in every row. */
static void make_gemm_input(float *x, int T, int K, const int32_t *cols, int n_cols, uint64_t *rng) {
    for (size_t i = 0; i < (size_t)T * (size_t)K; i++) {
        double v = splitmix64_normal(rng);
        x[i] = (float)(v > 5.5 ? 5.5 : v < -5.5 ? -5.5 : v);
    }
    for (int t = 0; t < T; t++)
        for (int c = 0; c < n_cols; c++) {
            double m = 8.0 + 12.0 * splitmix64_unit(rng);
            x[(size_t)t * (size_t)K + (size_t)cols[c]] = (float)(splitmix64_next(rng) & 1 ? m : -m);
        }
}

static int gemm_child(const void *plan, const void *arg, void *out, Error *err) {
    (void)arg;
    const BenchPlan *p = plan;
    GemmReport *rep = out;
    const BenchOptions *o = &p->o;
    Backend *bk = cli_backend_create(p->device, p->threads, err);
    if (!bk) return -1;
    backend_info(bk, &rep->backend);
    rep->n = 0;
    uint64_t rng = 12345;
    int rc = 0;
    for (int shape = 0; shape < 2 && rc == 0; shape++) {
        int K = o->shape.hidden, N = shape == 0 ? o->shape.ffn : o->shape.hidden;
        uint16_t *w = malloc((size_t)N * (size_t)K * sizeof *w);
        float *bias = malloc((size_t)N * sizeof *bias);
        int32_t *cols = malloc((size_t)K * sizeof *cols);
        NormalTable *table = malloc(sizeof *table);
        BkLinear *lin[N_VARIANTS] = {NULL};
        int n_cols = (int)lround(o->outlier_frac * K);
        if (o->outlier_frac > 0 && n_cols == 0) n_cols = 1;
        if (!w || !bias || !cols || !table || pick_distinct(&rng, K, n_cols, cols)) {
            rc = err_set(err, "out of memory for a %d x %d weight matrix", N, K);
        } else {
            normal_table_init(table, BENCH_WEIGHT_STD, &rng);
            fill_normal_f16(table, &rng, w, (size_t)N * (size_t)K);
            for (int i = 0; i < N; i++) bias[i] = (float)(BENCH_WEIGHT_STD * splitmix64_normal(&rng));
            HostMatrix hm = {.dtype = DT_F16, .rows = N, .cols = K, .data = w, .scb = NULL};
            QuantConfig q[N_VARIANTS] = {
                {QUANT_FP16, 0.0f, p->int8.outliers},
                {QUANT_LLM_INT8, 0.0f, p->int8.outliers},
                p->int8,
            };
            for (int v = 0; v < N_VARIANTS && rc == 0; v++)
                if (!(lin[v] = bk->linear_create(bk, &hm, bias, &q[v], err))) rc = -1;
        }
        for (int ti = 0; ti < o->n_tokens && rc == 0; ti++) {
            int T = o->tokens[ti];
            float *xh = malloc((size_t)T * (size_t)K * sizeof *xh);
            float *x = bk->alloc(bk, (size_t)T * (size_t)K);
            float *y = bk->alloc(bk, (size_t)T * (size_t)N);
            if (!xh || !x || !y) {
                rc = err_set(err, "out of memory for %d tokens of the %d x %d projection", T, N, K);
            } else {
                make_gemm_input(xh, T, K, cols, n_cols, &rng);
                bk->upload(bk, x, xh, (size_t)T * (size_t)K);
                GemmCell *cell = &rep->cells[rep->n++];
                *cell = (GemmCell){.shape = shape, .K = K, .N = N, .T = T, .outlier_cols = n_cols};
                for (int v = 0; v < N_VARIANTS; v++)
                    cell->seconds[v] = time_linear(bk, lin[v], x, T, y, o->iters, &cell->calls[v]);
            }
            free(xh);
            if (x) bk->release(bk, x);
            if (y) bk->release(bk, y);
        }
        for (int v = 0; v < N_VARIANTS; v++)
            if (lin[v]) bk->linear_free(bk, lin[v]);
        free(w), free(bias), free(cols), free(table);
    }
    bk->destroy(bk);
    return rc;
}

/* ---- part 2: the whole model ------------------------------------------------------- */

typedef struct ModelReport {
    BackendInfo backend;
    double load_s, prompt_s, ppl_s, decode_s;
    long long weight_bytes, kv_bytes;
    long long rss_load;          /* peak RSS while loading (the 16-bit pages int8 reads included) */
    long long rss_generate;      /* peak RSS of prompt + decoding, KV cache for ctx positions */
    long long rss_ppl;           /* peak RSS of the all-logits pass (its own model load) */
    long long device_mem;        /* device memory in use after decoding (GPU backends; 0 on the CPU) */
    bool rss_reset;              /* false: the peaks include the load */
    int ctx;                     /* KV-cache positions of the generation part */
    /* Outlier columns seen by the int8 projections during one prompt (tau of the plan). */
    long long outlier_calls, outlier_cols_sum;
    int outlier_cols_max;
} ModelReport;

typedef struct OutlierCount {
    float tau;
    long long calls, cols_sum;
    int cols_max;
} OutlierCount;

/* Counts the columns a per-call decomposition would take out of each projection input. */
static void count_outliers(void *ctx, int layer, ProjKind kind, float *x, int T, int dim) {
    (void)layer, (void)kind;
    OutlierCount *oc = ctx;
    int n = 0;
    for (int k = 0; k < dim; k++)
        for (int t = 0; t < T; t++)
            if (fabsf(x[(size_t)t * (size_t)dim + (size_t)k]) >= oc->tau) {
                n++;
                break;
            }
    oc->calls++;
    oc->cols_sum += n;
    if (n > oc->cols_max) oc->cols_max = n;
}

/* The same random ids for every precision. */
static void random_ids(int32_t *ids, int n, int vocab, uint64_t seed) {
    uint64_t rng = seed;
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(splitmix64_next(&rng) % (uint64_t)vocab);
}

/* Loads the model with a KV cache of ctx positions, then gets it ready to time: drops the
 * checkpoint's pages, resets the peak-RSS counter, and runs one short warm-up pass (it touches
 * every weight once, faulting the mapping back in and starting the threads). */
static int load_for_timing(const BenchPlan *p, Backend *bk, const QuantConfig *q, int ctx, Model **m,
                           ModelReport *r, Error *err) {
    ModelOptions mo = {.quant = *q, .ctx = ctx, .batch_tokens = 512};
    double t0 = cli_now();
    if (model_load(p->ck, bk, &mo, m, err)) return -1;
    if (r->load_s == 0) r->load_s = cli_now() - t0;
    if (r->rss_load == 0) r->rss_load = bench_proc_status_bytes("VmHWM:");
    bench_drop_checkpoint_pages(p->ck);
    r->rss_reset = bench_reset_peak_rss();
    int32_t ids[4];
    random_ids(ids, 4, (*m)->cfg.vocab_size, 7);
    int rc = model_forward_last(*m, ids, ctx < 4 ? ctx : 4, err) ? 0 : -1;
    model_reset(*m);
    return rc;
}

/* Generation (prompt, then decoding) with a KV cache sized for it, as `generate` does (the
 * logits stay on the backend, only the chosen id comes back); then the scoring pass with a
 * cache sized for its window, as `ppl` does. */
static int model_child(const void *plan, const void *arg, void *out, Error *err) {
    const BenchPlan *p = plan;
    const QuantConfig *q = arg;
    ModelReport *r = out;
    const BenchOptions *o = &p->o;
    memset(r, 0, sizeof *r);
    Backend *bk = cli_backend_create(p->device, p->threads, err);
    if (!bk) return -1;
    backend_info(bk, &r->backend);
    const int gen_ctx = o->prompt_tokens + o->decode_tokens;
    const int n_ids = o->ppl_tokens > gen_ctx ? o->ppl_tokens : gen_ctx;
    Model *m = NULL;
    int32_t *ids = malloc((size_t)n_ids * sizeof *ids);
    float *logits = NULL;
    int rc = ids ? load_for_timing(p, bk, q, gen_ctx, &m, r, err) : err_set(err, "out of memory");
    const int V = m ? m->cfg.vocab_size : 1;
    if (rc == 0) {
        r->ctx = m->ctx;
        r->weight_bytes = (long long)m->weight_bytes;
        r->kv_bytes = (long long)model_kv_bytes(m);
        random_ids(ids, n_ids, V, 42);
    }
    /* Prompt: best of two passes (the shorter time is the less disturbed one). */
    r->prompt_s = INFINITY;
    for (int rep = 0; rep < 2 && rc == 0; rep++) {
        model_reset(m);
        double t = cli_now();
        logits = model_forward_last(m, ids, o->prompt_tokens, err);
        rc = logits ? 0 : -1;
        t = cli_now() - t;
        if (t < r->prompt_s) r->prompt_s = t;
    }
    /* Decoding: batch 1, greedy, after the prompt now in the cache. */
    double t0 = cli_now();
    for (int i = 0; i < o->decode_tokens && rc == 0; i++) {
        int32_t next = bk->argmax(bk, logits, V);
        logits = model_forward_last(m, &next, 1, err);
        rc = logits ? 0 : -1;
    }
    r->decode_s = cli_now() - t0;
    r->rss_generate = bench_proc_status_bytes("VmHWM:");
    /* Our device allocations only grow during a run (scratch buffers are kept), so after
     * decoding this is the generation's peak, plus the CUDA context's own. */
    r->device_mem = (long long)bk->device_memory_in_use(bk);

    /* Not timed: how many columns the decomposition takes out, on the prompt. */
    if (rc == 0 && q->mode != QUANT_FP16 && q->threshold > 0) {
        OutlierCount oc = {.tau = q->threshold};
        model_reset(m);
        m->observer = count_outliers;
        m->observer_ctx = &oc;
        rc = model_forward_last(m, ids, o->prompt_tokens, err) ? 0 : -1;
        m->observer = NULL;
        r->outlier_calls = oc.calls, r->outlier_cols_sum = oc.cols_sum, r->outlier_cols_max = oc.cols_max;
    }
    model_free(m);
    m = NULL;

    /* Perplexity-style: every position scored against the next id, as `ppl` does. */
    if (rc == 0 && o->ppl_tokens > 0) {
        rc = load_for_timing(p, bk, q, o->ppl_tokens, &m, r, err);
        const int n = o->ppl_tokens;
        int32_t *targets = rc == 0 ? malloc((size_t)n * sizeof *targets) : NULL;
        double *nll = rc == 0 ? malloc((size_t)n * sizeof *nll) : NULL;
        if (rc == 0 && (!targets || !nll)) rc = err_set(err, "out of memory");
        for (int i = 0; rc == 0 && i < n; i++) targets[i] = i + 1 < n ? ids[i + 1] : -1;
        t0 = cli_now();
        if (rc == 0) rc = model_score(m, ids, n, targets, nll, err);
        r->ppl_s = cli_now() - t0;
        r->rss_ppl = bench_proc_status_bytes("VmHWM:");
        free(targets), free(nll);
        model_free(m);
    }
    free(ids);
    bk->destroy(bk);
    return rc;
}

/* ---- part 4: many sequences (--batch) and the memory roof --------------------------- */

typedef struct BatchReport {
    BackendInfo backend;
    BenchBatchReport r;
} BatchReport;

static int batch_child(const void *plan, const void *arg, void *out, Error *err) {
    const BenchPlan *p = plan;
    BatchReport *br = out;
    memset(br, 0, sizeof *br);
    Backend *bk = cli_backend_create(p->device, p->threads, err);
    if (!bk) return -1;
    backend_info(bk, &br->backend);
    int rc = bench_batch_run(p->ck, bk, arg, p->o.batches, p->o.n_batches, p->o.batch_context, p->o.decode_tokens,
                             &br->r, err);
    bk->destroy(bk);
    return rc;
}

/* Streaming-read bandwidth with the run's threads (CPU only), in bytes/s, over a buffer
 * the size of the shape's 16-bit weights, clamped to 64 MiB .. 1 GiB: beyond any core's
 * cache, and for a real model as far beyond the shared one as decoding is. */
static int stream_child(const void *plan, const void *arg, void *out, Error *err) {
    const BenchPlan *p = plan;
    const BenchShape *s = &p->o.shape;
    (void)arg;
    double *bw = out;
    double bytes = 2.0 * ((double)s->layers * (4.0 * s->hidden * (double)s->hidden + 2.0 * s->hidden * (double)s->ffn) +
                          (double)s->vocab * s->hidden);
    bytes = bytes < (double)(64 << 20) ? (double)(64 << 20) : bytes > (double)(1 << 30) ? (double)(1 << 30) : bytes;
    *bw = bench_stream_read((size_t)bytes, p->threads > 0 ? p->threads : (int)sysconf(_SC_NPROCESSORS_ONLN), err);
    return *bw > 0 ? 0 : -1;
}

/* Bytes one decode step of one sequence reads: every weight once (the lm_head is the
 * embedding table, read whole) and the KV cache of a context of ctx tokens. */
static double decode_bytes(long long weight_bytes, double kv_per_token, double ctx) {
    return (double)weight_bytes + kv_per_token * ctx;
}

/* ---- report ------------------------------------------------------------------------ */

typedef struct Results {
    GemmReport gemm;
    ModelReport model[3];        /* fp16, int8, int8 with tau = 0 (--model-tau0) */
    bool have_gemm, have_model, have_tau0;
    double decomp_overhead;      /* geometric mean over the cells of t(tau=6)/t(tau=0) - 1 */
    int worst_cell;
    double busy;                 /* share of the CPUs busy just before the run */
    BatchReport batch[2];        /* --batch: fp16, int8 */
    bool have_batch;
    double bandwidth;            /* streaming read, bytes/s (CPU runs of the model part); 0: not measured */
} Results;

/* The backend the measurements ran on (every child creates the same one). */
static const BackendInfo *ran_on(const Results *res) {
    if (res->have_batch) return &res->batch[0].backend;
    return res->have_gemm ? &res->gemm.backend : &res->model[0].backend;
}

typedef struct Target {
    const char *name, *what;
    double value, limit;
    bool at_least;               /* value >= limit passes; else value <= limit */
    bool known;
} Target;

static double tps(int tokens, double s) { return s > 0 ? tokens / s : 0.0; }
static double ratio(double a, double b) { return b > 0 ? a / b : 0.0; }
static double gops(const GemmCell *c, int v) {
    return c->seconds[v] > 0 ? 2.0 * c->T * (double)c->K * c->N / c->seconds[v] / 1e9 : 0.0;
}

/* The worse int8+decomposition / fp16 speed ratio of the two layer shapes at the largest
 * token count measured (*max_t). */
static double large_batch_ratio(const Results *res, int *max_t) {
    *max_t = 0;
    for (int i = 0; i < res->gemm.n; i++)
        if (res->gemm.cells[i].T > *max_t) *max_t = res->gemm.cells[i].T;
    double worst = 0;
    for (int i = 0, first = 1; i < res->gemm.n; i++) {
        const GemmCell *c = &res->gemm.cells[i];
        double r = ratio(gops(c, V_INT8_DECOMP), gops(c, V_FP16));
        if (c->T == *max_t && (first || r < worst)) worst = r, first = 0;
    }
    return worst;
}

/* The targets of the issue for the backend that ran: on the CPU, decode and prompt speed and
 * peak RSS; on CUDA, where int8 must beat cuBLAS fp16 at a large batch, decode speed, the
 * large-batch linear layers and the weights in GPU memory. Both: the decomposition's cost. */
static int make_targets(const BenchPlan *p, const Results *res, Target t[4]) {
    static char big_what[80];
    const BenchOptions *o = &p->o;
    const ModelReport *f = &res->model[0], *i8 = &res->model[1];
    const bool gpu = strcmp(ran_on(res)->name, "cuda") == 0;
    t[0] = (Target){"decode", gpu ? "int8 decode tokens/s >= 1.6x fp16" : "int8 decode tokens/s >= 1.7x fp16",
                    ratio(tps(o->decode_tokens, i8->decode_s), tps(o->decode_tokens, f->decode_s)), gpu ? 1.6 : 1.7,
                    true, res->have_model && o->decode_tokens > 0};
    if (gpu) {
        int max_t;
        double big = large_batch_ratio(res, &max_t);
        snprintf(big_what, sizeof big_what, "int8+decomp GOP/s at T=%d >= 1.5x fp16", max_t);
        t[1] = (Target){"large_batch", big_what, big, 1.5, true, res->have_gemm && res->gemm.n > 0};
    } else {
        t[1] = (Target){"prompt", "int8 prompt tokens/s >= 1.3x fp16",
                        ratio(tps(o->prompt_tokens, i8->prompt_s), tps(o->prompt_tokens, f->prompt_s)), 1.3, true,
                        res->have_model};
    }
    t[2] = (Target){"decomp_overhead", "decomposition (tau=6 vs tau=0) costs <= 10%", res->decomp_overhead, 0.10,
                    false, res->have_gemm};
    if (gpu)
        t[3] = (Target){"memory", "int8 weights in GPU memory <= 0.56x fp16",
                        ratio((double)i8->weight_bytes, (double)f->weight_bytes), 0.56, false,
                        res->have_model && f->weight_bytes > 0};
    else
        t[3] = (Target){"memory", "int8 peak RSS (generation) <= 0.56x fp16",
                        ratio((double)i8->rss_generate, (double)f->rss_generate), 0.56, false,
                        res->have_model && f->rss_generate > 0};
    return 4;
}

static bool target_pass(const Target *t) { return t->at_least ? t->value >= t->limit : t->value <= t->limit; }

static const char *shape_kind(int shape) { return shape == 0 ? "ffn" : "attn"; }

/* The report as one JSON object, through the program's one JSON writer (json_out.h): a
 * ratio or speed that is not finite (a time of 0) becomes null with a reason. */
static int print_json(const BenchPlan *p, const Results *res, const char *cpu, int threads, Error *err) {
    static const char NOT_TIMED[] = "a time of zero or an untimed run";
    const BenchOptions *o = &p->o;
    const BenchShape *s = &o->shape;
    JsonOut j;
    json_out_begin(&j);
    cJSON *shape = json_add_object(&j, j.root, "shape");
    json_add_string(&j, shape, "name", s->name);
    json_add_string(&j, shape, "arch", arch_name(s->arch));
    json_add_int(&j, shape, "hidden", s->hidden);
    json_add_int(&j, shape, "layers", s->layers);
    json_add_int(&j, shape, "heads", s->heads);
    json_add_int(&j, shape, "ffn", s->ffn);
    json_add_int(&j, shape, "vocab", s->vocab);
    json_add_bool(&j, shape, "modified", o->dims_changed);
    cJSON *machine = json_add_object(&j, j.root, "machine");
    json_add_string(&j, machine, "cpu", cpu);
    json_add_int(&j, machine, "cores", sysconf(_SC_NPROCESSORS_ONLN));
    json_add_string(&j, machine, "kernels", ran_on(res)->kernels);
    json_add_string(&j, j.root, "device", ran_on(res)->name);
    json_add_int(&j, j.root, "threads", threads);
    json_add_float(&j, j.root, "threshold", p->int8.threshold, NULL);
    json_add_number(&j, j.root, "outlier_frac", o->outlier_frac, NULL);
    json_add_number(&j, j.root, "cpu_busy_before", res->busy, NULL);

    cJSON *gemm = json_add_array(&j, j.root, "gemm");
    for (int i = 0; res->have_gemm && i < res->gemm.n; i++) {
        const GemmCell *c = &res->gemm.cells[i];
        cJSON *cell = json_append_object(&j, gemm);
        json_add_string(&j, cell, "shape", shape_kind(c->shape));
        json_add_int(&j, cell, "K", c->K);
        json_add_int(&j, cell, "N", c->N);
        json_add_int(&j, cell, "tokens", c->T);
        json_add_int(&j, cell, "outlier_cols", c->outlier_cols);
        for (int v = 0; v < N_VARIANTS; v++) {
            char key[64];
            snprintf(key, sizeof key, "%s_gops", VARIANT_NAMES[v]);
            json_add_number(&j, cell, key, gops(c, v), NOT_TIMED);
            snprintf(key, sizeof key, "%s_ms", VARIANT_NAMES[v]);
            json_add_number(&j, cell, key, 1e3 * c->seconds[v], NULL);
            snprintf(key, sizeof key, "%s_calls", VARIANT_NAMES[v]);
            json_add_int(&j, cell, key, c->calls[v]);
        }
    }

    if (!res->have_model) {
        cJSON_AddNullToObject(j.root, "model");
    } else {
        cJSON *model = json_add_object(&j, j.root, "model");
        json_add_int(&j, model, "prompt_tokens", o->prompt_tokens);
        json_add_int(&j, model, "ppl_tokens", o->ppl_tokens);
        json_add_int(&j, model, "decode_tokens", o->decode_tokens);
        json_add_int(&j, model, "outlier_dims", p->n_outlier_dims);
        const char *names[3] = {"fp16", "int8", "int8_tau0"};
        json_add_number(&j, model, "stream_read_bytes_per_second", res->bandwidth, "not measured (CPU only)");
        for (int k = 0; k < (res->have_tau0 ? 3 : 2); k++) {
            const ModelReport *r = &res->model[k];
            cJSON *m = json_add_object(&j, model, names[k]);
            const double ctx = o->prompt_tokens + 0.5 * (o->decode_tokens - 1);
            const double bytes = decode_bytes(r->weight_bytes, r->ctx > 0 ? (double)r->kv_bytes / r->ctx : 0.0, ctx);
            json_add_number(&j, m, "decode_bytes_per_token", bytes, NULL);
            json_add_number(&j, m, "decode_roof_fraction",
                            res->bandwidth > 0 ? ratio(tps(o->decode_tokens, r->decode_s), res->bandwidth / bytes) : 0.0,
                            "not measured");
            json_add_number(&j, m, "load_seconds", r->load_s, NULL);
            json_add_number(&j, m, "prompt_tokens_per_second", tps(o->prompt_tokens, r->prompt_s), NOT_TIMED);
            json_add_number(&j, m, "ppl_tokens_per_second", tps(o->ppl_tokens, r->ppl_s), NOT_TIMED);
            json_add_number(&j, m, "decode_tokens_per_second", tps(o->decode_tokens, r->decode_s), NOT_TIMED);
            json_add_int(&j, m, "weight_bytes", r->weight_bytes);
            json_add_int(&j, m, "kv_cache_bytes", r->kv_bytes);
            json_add_int(&j, m, "ctx", r->ctx);
            json_add_int(&j, m, "peak_rss_load_bytes", r->rss_load);
            json_add_int(&j, m, "peak_rss_generate_bytes", r->rss_generate);
            json_add_int(&j, m, "peak_rss_ppl_bytes", r->rss_ppl);
            json_add_bool(&j, m, "peak_rss_after_load", r->rss_reset);
            json_add_int(&j, m, "device_memory_bytes", r->device_mem);
            if (k == 1) {
                json_add_number(&j, m, "outlier_cols_mean",
                                r->outlier_calls ? (double)r->outlier_cols_sum / (double)r->outlier_calls : 0.0, NULL);
                json_add_int(&j, m, "outlier_cols_max", r->outlier_cols_max);
            }
        }
    }

    Target t[4];
    int nt = make_targets(p, res, t);
    cJSON *ratios = json_add_object(&j, j.root, "ratios");
    for (int i = 0; i < nt; i++) {
        if (t[i].known) json_add_number(&j, ratios, t[i].name, t[i].value, NOT_TIMED);
        else cJSON_AddNullToObject(ratios, t[i].name);
    }
    if (res->have_model) {
        json_add_number(&j, ratios, "ppl",
                        ratio(tps(o->ppl_tokens, res->model[1].ppl_s), tps(o->ppl_tokens, res->model[0].ppl_s)),
                        NOT_TIMED);
        json_add_number(&j, ratios, "weights",
                        ratio((double)res->model[1].weight_bytes, (double)res->model[0].weight_bytes), NULL);
    }
    if (res->have_tau0) { /* tau = 6 time / tau = 0 time - 1 */
        json_add_number(&j, ratios, "decomp_overhead_prompt", ratio(res->model[1].prompt_s, res->model[2].prompt_s) - 1.0,
                        NOT_TIMED);
        json_add_number(&j, ratios, "decomp_overhead_decode", ratio(res->model[1].decode_s, res->model[2].decode_s) - 1.0,
                        NOT_TIMED);
    }
    cJSON *targets = json_add_array(&j, j.root, "targets");
    for (int i = 0; i < nt; i++) {
        cJSON *tj = json_append_object(&j, targets);
        json_add_string(&j, tj, "name", t[i].name);
        json_add_string(&j, tj, "target", t[i].what);
        json_add_number(&j, tj, "limit", t[i].limit, NULL);
        json_add_number(&j, tj, "value", t[i].value, NOT_TIMED);
        if (t[i].known) json_add_bool(&j, tj, "pass", target_pass(&t[i]));
        else cJSON_AddNullToObject(tj, "pass");
    }
    return json_out_print(&j, stdout, true, err);
}

/* One row of the whole-model table: fp16, int8, (their ratio), and with --model-tau0 the
 * tau = 0 run and what the decomposition costs: tau = 6 time / tau = 0 time - 1 for a speed,
 * tau = 6 bytes / tau = 0 bytes - 1 for memory. */
static void model_row(const char *label, double f, double q, double z, const ModelReport *have_z, bool with_ratio,
                      bool speed) {
    printf("%-28s %11.*f %11.*f", label, speed ? 2 : 1, f, speed ? 2 : 1, q);
    if (with_ratio) printf(" %9.2fx", ratio(q, f));
    else if (have_z) printf(" %10s", "");
    if (have_z) {
        printf(" %11.*f", speed ? 2 : 1, z);
        if (with_ratio) printf(" %+8.1f%%", 100.0 * (speed ? ratio(z, q) - 1.0 : ratio(q, z) - 1.0));
    }
    printf("\n");
}

static void print_text(const BenchPlan *p, const Results *res, const char *cpu, int threads) {
    const BenchOptions *o = &p->o;
    const BenchShape *s = &o->shape;
    printf("llmint8 bench: %s%s: %s, hidden %d, %d layers, %d heads, ffn %d, vocab %d (synthetic F16 weights)\n",
           s->name, o->dims_changed ? " (modified)" : "", arch_name(s->arch), s->hidden, s->layers, s->heads,
           s->ffn, s->vocab);
    printf("machine: %s, %ld cores; device %s, %d threads; int8 tau = %g (%s outliers)\nkernels: %s\n", cpu,
           sysconf(_SC_NPROCESSORS_ONLN), ran_on(res)->name, threads, (double)p->int8.threshold,
           p->int8.outliers == OUTLIERS_PER_CALL ? "per-call" : "per-token", ran_on(res)->kernels);
    if (o->dims_changed) printf("note: dimensions differ from the named shape; compare ratios with care\n");
    if (res->busy >= 0.1)
        printf("note: other processes kept %.0f%% of the CPUs busy just before the run: they compete with\n"
               "      it, and the timings are unreliable\n", 100.0 * res->busy);

    if (res->have_gemm) {
        const GemmCell *c0 = &res->gemm.cells[0];
        printf("\nLinear layers, GOP/s (2*T*K*N per call, median); inputs: %d of %d columns (%.2f%%) hold |x| in "
               "8..20\n",
               c0->outlier_cols, c0->K, 100.0 * c0->outlier_cols / c0->K);
        printf("%-5s %6s %6s %5s  %9s %9s %9s  %9s %9s %8s\n", "shape", "K", "N", "T", "fp16", "int8", "int8+dec",
               "int8/fp16", "+dec/fp16", "dec cost");
        for (int i = 0; i < res->gemm.n; i++) {
            const GemmCell *c = &res->gemm.cells[i];
            printf("%-5s %6d %6d %5d  %9.2f %9.2f %9.2f  %8.2fx %8.2fx %+7.1f%%\n", shape_kind(c->shape), c->K, c->N,
                   c->T, gops(c, V_FP16), gops(c, V_INT8), gops(c, V_INT8_DECOMP),
                   ratio(gops(c, V_INT8), gops(c, V_FP16)), ratio(gops(c, V_INT8_DECOMP), gops(c, V_FP16)),
                   100.0 * (c->seconds[V_INT8_DECOMP] / c->seconds[V_INT8] - 1.0));
        }
    }
    if (res->have_model) {
        const ModelReport *f = &res->model[0], *q = &res->model[1];
        printf("\nWhole model: prompt %d tokens (last logits), ppl %d tokens (all logits), decode %d tokens at batch 1;\n"
               "LayerNorm gain %.0f in %d of %d hidden dims; int8 saw %.1f outlier columns per projection call on the "
               "prompt (max %d)\n",
               o->prompt_tokens, o->ppl_tokens, o->decode_tokens, (double)BENCH_LN_OUTLIER_GAIN, p->n_outlier_dims, s->hidden,
               q->outlier_calls ? (double)q->outlier_cols_sum / (double)q->outlier_calls : 0.0, q->outlier_cols_max);
        const ModelReport *z = res->have_tau0 ? &res->model[2] : NULL;
        printf("%-28s %11s %11s %10s", "", "fp16", "int8", "int8/fp16");
        if (z) printf(" %11s %9s", "int8 t=0", "dec cost");
        printf("\n");
        const int P = o->prompt_tokens, L = o->ppl_tokens, D = o->decode_tokens;
        model_row("prompt, tokens/s", tps(P, f->prompt_s), tps(P, q->prompt_s), z ? tps(P, z->prompt_s) : 0, z, true, true);
        if (L > 0) model_row("ppl, tokens/s", tps(L, f->ppl_s), tps(L, q->ppl_s), z ? tps(L, z->ppl_s) : 0, z, true, true);
        if (D > 0)
            model_row("decode, tokens/s", tps(D, f->decode_s), tps(D, q->decode_s), z ? tps(D, z->decode_s) : 0, z, true, true);
        model_row("weights, MB", f->weight_bytes / 1e6, q->weight_bytes / 1e6, z ? z->weight_bytes / 1e6 : 0, z, true, false);
        char kv[64];
        snprintf(kv, sizeof kv, "KV cache (%d pos.), MB", f->ctx);
        model_row(kv, f->kv_bytes / 1e6, q->kv_bytes / 1e6, z ? z->kv_bytes / 1e6 : 0, z, false, false);
        model_row(f->rss_reset ? "peak RSS generation, MB" : "peak RSS gen.+load, MB", f->rss_generate / 1e6,
                  q->rss_generate / 1e6, z ? z->rss_generate / 1e6 : 0, z, true, false);
        if (L > 0)
            model_row("peak RSS ppl, MB", f->rss_ppl / 1e6, q->rss_ppl / 1e6, z ? z->rss_ppl / 1e6 : 0, z, true, false);
        if (f->device_mem > 0)
            model_row("GPU memory in use, MB", f->device_mem / 1e6, q->device_mem / 1e6, z ? z->device_mem / 1e6 : 0,
                      z, true, false);
        model_row("load, s", f->load_s, q->load_s, z ? z->load_s : 0, z, false, false);
        if (res->bandwidth > 0 && D > 0) {
            const double ctx = P + 0.5 * (D - 1);
            double roof_f = res->bandwidth / decode_bytes(f->weight_bytes, (double)f->kv_bytes / f->ctx, ctx);
            double roof_q = res->bandwidth / decode_bytes(q->weight_bytes, (double)q->kv_bytes / q->ctx, ctx);
            printf("memory: streaming read %.1f GB/s (%d threads); decode reads %.2f GB (fp16), %.2f GB (int8) per\n"
                   "        token: roof %.1f and %.1f tokens/s; decode at %.0f%% (fp16) and %.0f%% (int8) of it\n",
                   res->bandwidth / 1e9, threads, decode_bytes(f->weight_bytes, (double)f->kv_bytes / f->ctx, ctx) / 1e9,
                   decode_bytes(q->weight_bytes, (double)q->kv_bytes / q->ctx, ctx) / 1e9, roof_f, roof_q,
                   100.0 * ratio(tps(D, f->decode_s), roof_f), 100.0 * ratio(tps(D, q->decode_s), roof_q));
        }
    }
    Target t[4];
    int nt = make_targets(p, res, t);
    printf("\nTargets (ratios from this run)\n");
    for (int i = 0; i < nt; i++) {
        if (!t[i].known) {
            printf("  %-46s %8s  %s\n", t[i].what, "-", "not measured");
        } else if (t[i].at_least) {
            printf("  %-46s %7.2fx  %s\n", t[i].what, t[i].value, target_pass(&t[i]) ? "pass" : "MISS");
        } else if (i == 2) {
            const GemmCell *w = &res->gemm.cells[res->worst_cell];
            printf("  %-46s %+7.1f%%  %s (geometric mean of the cells; worst %s T=%d: %+.1f%%)\n", t[i].what,
                   100.0 * t[i].value, target_pass(&t[i]) ? "pass" : "MISS", shape_kind(w->shape), w->T,
                   100.0 * (w->seconds[V_INT8_DECOMP] / w->seconds[V_INT8] - 1.0));
        } else {
            printf("  %-46s %7.2fx  %s\n", t[i].what, t[i].value, target_pass(&t[i]) ? "pass" : "MISS");
        }
    }
    if (res->have_tau0)
        printf("  (decomposition in the whole model, tau=6 vs tau=0: prompt %+.1f%%, decode %+.1f%%)\n",
               100.0 * (ratio(res->model[1].prompt_s, res->model[2].prompt_s) - 1.0),
               100.0 * (ratio(res->model[1].decode_s, res->model[2].decode_s) - 1.0));
}

/* ---- part 3: one core busy (--busy-core) ------------------------------------------- */

typedef struct BusyReport {
    ModelReport run[2][2];       /* [idle, busy][threads as given, one thread] */
    int cpu;                     /* the CPU the busy process was pinned to (-1: not pinned) */
} BusyReport;

/* The int8 whole-model measurement with the thread count as given and with one thread,
 * idle, then with a spinner on one CPU (started before and stopped after both runs). */
enum { BUSY_ROUNDS = 3 };
static int run_busy_core(const BenchPlan *plan, BusyReport *br, Error *err) {
    const int threads[2] = {plan->threads, 1};
    static const char *const what[2][2] = {{"threads as given, idle", "one thread, idle"},
                                           {"threads as given, one CPU busy", "one thread, one CPU busy"}};
    br->cpu = -1;
    for (int busy = 0; busy < 2; busy++) {
        pid_t spinner = 0;
        if (busy && bench_busy_start(&spinner, &br->cpu, err)) return -1;
        int rc = 0;
        /* BUSY_ROUNDS rounds, the two thread counts taking turns; each figure keeps its
         * shortest time (the least disturbed: at these sizes one decode is tens of ms). */
        for (int round = 0; round < BUSY_ROUNDS && rc == 0; round++) {
            for (int k = 0; k < 2 && rc == 0; k++) {
                if (!plan->o.json)
                    fprintf(stderr, "llmint8 bench: whole model, int8, %s (round %d of %d)\n", what[busy][k],
                            round + 1, BUSY_ROUNDS);
                BenchPlan p = *plan;
                p.threads = threads[k];
                ModelReport r;
                rc = bench_run_in_child(what[busy][k], model_child, &p, &plan->int8, &r, sizeof r, err);
                if (rc) break;
                ModelReport *best = &br->run[busy][k];
                if (round == 0) *best = r;
                best->prompt_s = fmin(best->prompt_s, r.prompt_s);
                best->ppl_s = fmin(best->ppl_s, r.ppl_s);
                best->decode_s = fmin(best->decode_s, r.decode_s);
            }
        }
        if (busy) bench_busy_stop(spinner);
        if (rc) return rc;
    }
    return 0;
}

/* Text, or JSON ({"busy_core": {...}}) through json_out; returns 0, or -1 with err when the
 * JSON could not be built (out of memory). */
static int print_busy(const BenchPlan *p, const BusyReport *br, const char *cpu, bool json, Error *err) {
    const BenchOptions *o = &p->o;
    const BenchShape *s = &o->shape;
    static const char *const cond[2] = {"idle", "busy"}, *const who[2] = {"given", "one"};
    char given[32];
    if (p->threads > 0) snprintf(given, sizeof given, "--threads %d", p->threads);
    else snprintf(given, sizeof given, "default");
    if (json) {
        JsonOut j;
        json_out_begin(&j);
        cJSON *b = json_add_object(&j, j.root, "busy_core");
        json_add_string(&j, b, "shape", s->name);
        json_add_int(&j, b, "hidden", s->hidden);
        json_add_int(&j, b, "layers", s->layers);
        json_add_string(&j, b, "cpu", cpu);
        json_add_int(&j, b, "cores", sysconf(_SC_NPROCESSORS_ONLN));
        json_add_int(&j, b, "threads_given", p->threads);
        json_add_int(&j, b, "busy_cpu", br->cpu);
        for (int c = 0; c < 2; c++) {
            cJSON *cj = json_add_object(&j, b, cond[c]);
            for (int k = 0; k < 2; k++) {
                const ModelReport *r = &br->run[c][k];
                cJSON *w = json_add_object(&j, cj, who[k]);
                json_add_number(&j, w, "prompt_tokens_per_second", tps(o->prompt_tokens, r->prompt_s), "no time");
                json_add_number(&j, w, "ppl_tokens_per_second", tps(o->ppl_tokens, r->ppl_s), "no time");
                json_add_number(&j, w, "decode_tokens_per_second", tps(o->decode_tokens, r->decode_s), "no time");
            }
        }
        return json_out_print(&j, stdout, true, err);
    }
    printf("llmint8 bench --busy-core: %s%s: hidden %d, %d layers; int8 (tau = %g), whole model\n", s->name,
           o->dims_changed ? " (modified)" : "", s->hidden, s->layers, (double)p->int8.threshold);
    printf("machine: %s, %ld cores; busy: a process spinning on CPU %d\n", cpu, sysconf(_SC_NPROCESSORS_ONLN),
           br->cpu);
    printf("tokens/s: prompt %d tokens, ppl %d tokens, decode %d tokens\n", o->prompt_tokens, o->ppl_tokens,
           o->decode_tokens);
    printf("%-6s %-12s %10s %10s %10s\n", "", "threads", "prompt", "ppl", "decode");
    for (int b = 0; b < 2; b++)
        for (int k = 0; k < 2; k++) {
            const ModelReport *r = &br->run[b][k];
            printf("%-6s %-12s %10.1f %10.1f %10.1f\n", cond[b], k ? "1" : given, tps(o->prompt_tokens, r->prompt_s),
                   tps(o->ppl_tokens, r->ppl_s), tps(o->decode_tokens, r->decode_s));
        }
    for (int b = 0; b < 2; b++) {
        const ModelReport *g = &br->run[b][0], *one = &br->run[b][1];
        printf("%s: %s / 1 thread speed: prompt %.2f, ppl %.2f, decode %.2f%s\n", cond[b], given,
               ratio(one->prompt_s, g->prompt_s), ratio(one->ppl_s, g->ppl_s), ratio(one->decode_s, g->decode_s),
               b ? " (target with one CPU busy: >= 0.90 each)" : "");
    }
    return 0;
}

/* ---- part 4's report ----------------------------------------------------------------- */

static int batch_index(const BenchOptions *o, int b) {
    for (int i = 0; i < o->n_batches; i++)
        if (o->batches[i] == b) return i;
    return -1;
}

static double batch_tps(const BenchOptions *o, const BenchBatchCell *c, bool decode) {
    return decode ? tps(c->batch * o->decode_tokens, c->decode_s) : tps(c->batch * o->batch_context, c->prompt_s);
}

/* The targets for many sequences: int8 aggregate decode at batch 16 >= 8x int8 at
 * batch 1 and >= 1.8x fp16 at batch 16 (known only when 1 and 16 were run). */
static int batch_targets(const BenchPlan *p, const Results *res, Target t[2]) {
    const BenchOptions *o = &p->o;
    int i1 = batch_index(o, 1), i16 = batch_index(o, 16);
    const BenchBatchReport *f = &res->batch[0].r, *q = &res->batch[1].r;
    t[0] = (Target){"batch16_vs_batch1", "int8 decode at batch 16 >= 8x int8 batch 1",
                    i1 >= 0 && i16 >= 0 ? ratio(batch_tps(o, &q->cells[i16], true), batch_tps(o, &q->cells[i1], true)) : 0,
                    8.0, true, i1 >= 0 && i16 >= 0};
    t[1] = (Target){"batch16_vs_fp16", "int8 decode at batch 16 >= 1.8x fp16 batch 16",
                    i16 >= 0 ? ratio(batch_tps(o, &q->cells[i16], true), batch_tps(o, &f->cells[i16], true)) : 0, 1.8,
                    true, i16 >= 0};
    return 2;
}

static int print_batch(const BenchPlan *p, const Results *res, const char *cpu, int threads, Error *err) {
    const BenchOptions *o = &p->o;
    const BenchShape *s = &o->shape;
    const BenchBatchReport *f = &res->batch[0].r, *q = &res->batch[1].r;
    const long long kv16 = q->kv_bytes_per_token, kv32 = 2 * q->kv_bytes_per_token;
    const double ctx = o->batch_context + 0.5 * (o->decode_tokens - 1);
    Target t[2];
    int nt = batch_targets(p, res, t);
    if (o->json) {
        JsonOut j;
        json_out_begin(&j);
        cJSON *b = json_add_object(&j, j.root, "batch");
        json_add_string(&j, b, "shape", s->name);
        json_add_bool(&j, b, "modified", o->dims_changed);
        json_add_string(&j, b, "cpu", cpu);
        json_add_string(&j, b, "kernels", ran_on(res)->kernels);
        json_add_int(&j, b, "threads", threads);
        json_add_number(&j, b, "cpu_busy_before", res->busy, NULL);
        json_add_int(&j, b, "context", o->batch_context);
        json_add_int(&j, b, "decode_tokens", o->decode_tokens);
        json_add_int(&j, b, "kv_bytes_per_token_f16", kv16);
        json_add_int(&j, b, "kv_bytes_per_token_f32", kv32);
        json_add_number(&j, b, "stream_read_bytes_per_second", res->bandwidth, "not measured (CPU only)");
        cJSON *rows = json_add_array(&j, b, "rows");
        for (int i = 0; i < o->n_batches; i++) {
            cJSON *r = json_append_object(&j, rows);
            json_add_int(&j, r, "batch", o->batches[i]);
            json_add_number(&j, r, "fp16_prompt_tokens_per_second", batch_tps(o, &f->cells[i], false), "no time");
            json_add_number(&j, r, "int8_prompt_tokens_per_second", batch_tps(o, &q->cells[i], false), "no time");
            json_add_number(&j, r, "fp16_decode_tokens_per_second", batch_tps(o, &f->cells[i], true), "no time");
            json_add_number(&j, r, "int8_decode_tokens_per_second", batch_tps(o, &q->cells[i], true), "no time");
            json_add_number(&j, r, "fp16_decode_tokens_per_cpu_second",
                            tps(o->batches[i] * o->decode_tokens, f->cells[i].decode_cpu_s), "no time");
            json_add_number(&j, r, "int8_decode_tokens_per_cpu_second",
                            tps(o->batches[i] * o->decode_tokens, q->cells[i].decode_cpu_s), "no time");
        }
        cJSON *targets = json_add_array(&j, b, "targets");
        for (int i = 0; i < nt; i++) {
            cJSON *tj = json_append_object(&j, targets);
            json_add_string(&j, tj, "name", t[i].name);
            json_add_string(&j, tj, "target", t[i].what);
            json_add_number(&j, tj, "limit", t[i].limit, NULL);
            if (t[i].known) {
                json_add_number(&j, tj, "value", t[i].value, "no time");
                json_add_bool(&j, tj, "pass", target_pass(&t[i]));
            } else {
                cJSON_AddNullToObject(tj, "value");
                cJSON_AddNullToObject(tj, "pass");
            }
        }
        return json_out_print(&j, stdout, true, err);
    }
    printf("llmint8 bench --batch: %s%s: %s, hidden %d, %d layers, %d heads, ffn %d, vocab %d (synthetic F16 weights)\n",
           s->name, o->dims_changed ? " (modified)" : "", arch_name(s->arch), s->hidden, s->layers, s->heads, s->ffn,
           s->vocab);
    printf("machine: %s, %ld cores; device %s, %d threads; int8 tau = %g\nkernels: %s\n", cpu,
           sysconf(_SC_NPROCESSORS_ONLN), ran_on(res)->name, threads, (double)p->int8.threshold, ran_on(res)->kernels);
    if (res->busy >= 0.1)
        printf("note: other processes kept %.0f%% of the CPUs busy just before the run: they compete with\n"
               "      it, and the timings are unreliable\n", 100.0 * res->busy);
    printf("\nB sequences through the step API: each a %d-token prompt (all B in one step), then %d greedy\n"
           "steps of all B (aggregate tokens/s); 16-bit KV cache: %lld bytes per token (float32: %lld)\n",
           o->batch_context, o->decode_tokens, kv16, kv32);
    printf("tokens/s; the last two columns: decode tokens per CPU-second of the process (the work per token)\n");
    printf("%5s  %10s %10s %9s  %10s %10s %9s  %9s  %10s %10s\n", "batch", "prompt f16", "int8", "int8/fp16",
           "decode f16", "int8", "int8/fp16", "int8/B=1", "f16/cpu-s", "int8/cpu-s");
    int i1 = batch_index(o, 1);
    for (int i = 0; i < o->n_batches; i++) {
        double fp = batch_tps(o, &f->cells[i], false), qp = batch_tps(o, &q->cells[i], false);
        double fd = batch_tps(o, &f->cells[i], true), qd = batch_tps(o, &q->cells[i], true);
        printf("%5d  %10.1f %10.1f %8.2fx  %10.2f %10.2f %8.2fx", o->batches[i], fp, qp, ratio(qp, fp), fd, qd,
               ratio(qd, fd));
        if (i1 >= 0) printf("  %8.2fx", ratio(qd, batch_tps(o, &q->cells[i1], true)));
        else printf("  %9s", "-");
        printf("  %10.2f %10.2f\n", tps(o->batches[i] * o->decode_tokens, f->cells[i].decode_cpu_s),
               tps(o->batches[i] * o->decode_tokens, q->cells[i].decode_cpu_s));
    }
    if (res->bandwidth > 0 && i1 >= 0) {
        double roof_f = res->bandwidth / decode_bytes(f->weight_bytes, (double)kv16, ctx);
        double roof_q = res->bandwidth / decode_bytes(q->weight_bytes, (double)kv16, ctx);
        printf("memory: streaming read %.1f GB/s (%d threads); batch-1 decode roof fp16 %.1f, int8 %.1f tokens/s;\n"
               "        batch-1 decode at %.0f%% (fp16) and %.0f%% (int8) of it\n",
               res->bandwidth / 1e9, threads, roof_f, roof_q, 100.0 * ratio(batch_tps(o, &f->cells[i1], true), roof_f),
               100.0 * ratio(batch_tps(o, &q->cells[i1], true), roof_q));
    }
    printf("\nTargets (ratios from this run)\n");
    for (int i = 0; i < nt; i++) {
        if (!t[i].known) printf("  %-46s %8s  %s\n", t[i].what, "-", "not measured (needs batch sizes 1 and 16)");
        else printf("  %-46s %7.2fx  %s\n", t[i].what, t[i].value, target_pass(&t[i]) ? "pass" : "MISS");
    }
    return 0;
}

/* ---- the command ------------------------------------------------------------------- */

int cmd_bench(int argc, char **argv) {
    CommonOptions co;
    BenchPlan plan;
    memset(&plan, 0, sizeof plan);
    cli_common_defaults(&co);
    int rc = parse_args(argc, argv, &co, &plan.o);
    if (rc) return rc;
    plan.device = co.device;
    plan.threads = co.threads;
    plan.int8 = (QuantConfig){QUANT_LLM_INT8, co.threshold_given ? co.quant.threshold : 6.0f, co.quant.outliers};
    int threads = co.threads > 0 ? co.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    char cpu[256];
    bench_cpu_model_name(cpu, sizeof cpu);

    Results *res = calloc(1, sizeof *res);
    if (!res) {
        Error e;
        err_set(&e, "out of memory");
        return cli_fail(&e);
    }
    res->busy = bench_cpu_busy_before();
    Error err;
    rc = 0;
    if (plan.o.gemm) {
        if (!plan.o.json) fprintf(stderr, "llmint8 bench: linear layers (fp16, int8, int8 + decomposition)\n");
        rc = bench_run_in_child("linear layers", gemm_child, &plan, NULL, &res->gemm, sizeof res->gemm, &err);
        res->have_gemm = rc == 0;
        if (rc == 0) { /* decomposition overhead: geometric mean over the cells, and the worst */
            double log_sum = 0, worst = -1;
            for (int i = 0; i < res->gemm.n; i++) {
                const GemmCell *c = &res->gemm.cells[i];
                double rel = c->seconds[V_INT8_DECOMP] / c->seconds[V_INT8];
                log_sum += log(rel);
                if (rel > worst) worst = rel, res->worst_cell = i;
            }
            res->decomp_overhead = res->gemm.n ? exp(log_sum / res->gemm.n) - 1.0 : 0.0;
        }
    }
    Checkpoint *ck = NULL;
    if (rc == 0 && plan.o.model) {
        uint64_t rng = 99;
        const BenchShape *s = &plan.o.shape;
        int n = s->hidden / 512;
        plan.n_outlier_dims = n < 2 ? 2 : n > MAX_OUTLIER_DIMS ? MAX_OUTLIER_DIMS : n;
        if (plan.n_outlier_dims > s->hidden) plan.n_outlier_dims = s->hidden;
        if (pick_distinct(&rng, s->hidden, plan.n_outlier_dims, plan.outlier_dims)) rc = err_set(&err, "out of memory");
        if (rc == 0)
            rc = bench_checkpoint_create(s, plan.outlier_dims, plan.n_outlier_dims, plan.o.tmpdir, !plan.o.json,
                                         &ck, &err);
        plan.ck = ck;
        const QuantConfig modes[3] = {
            {QUANT_FP16, 0.0f, plan.int8.outliers}, plan.int8, {QUANT_LLM_INT8, 0.0f, plan.int8.outliers}};
        const char *names[3] = {"fp16", "int8", "int8 with tau = 0"};
        if (rc == 0 && strcmp(plan.device, "cuda") != 0 && !plan.o.busy_core) {
            if (!plan.o.json) fprintf(stderr, "llmint8 bench: memory bandwidth (streaming read)\n");
            rc = bench_run_in_child("bandwidth", stream_child, &plan, NULL, &res->bandwidth, sizeof res->bandwidth,
                                    &err);
        }
        if (rc == 0 && plan.o.n_batches > 0) {
            for (int k = 0; k < 2 && rc == 0; k++) {
                if (!plan.o.json) fprintf(stderr, "llmint8 bench: batches, %s\n", names[k]);
                rc = bench_run_in_child(names[k], batch_child, &plan, &modes[k], &res->batch[k], sizeof res->batch[k],
                                        &err);
            }
            res->have_batch = rc == 0;
            if (rc == 0) rc = print_batch(&plan, res, cpu, threads, &err);
        }
        if (rc == 0 && plan.o.busy_core) {
            BusyReport *br = calloc(1, sizeof *br);
            rc = br ? run_busy_core(&plan, br, &err) : err_set(&err, "out of memory");
            if (rc == 0) rc = print_busy(&plan, br, cpu, plan.o.json, &err);
            free(br);
        }
        for (int k = 0; k < (plan.o.model_tau0 ? 3 : 2) && rc == 0 && !plan.o.busy_core && !plan.o.n_batches; k++) {
            if (!plan.o.json) fprintf(stderr, "llmint8 bench: whole model, %s\n", names[k]);
            rc = bench_run_in_child(names[k], model_child, &plan, &modes[k], &res->model[k], sizeof res->model[k], &err);
        }
        res->have_model = rc == 0;
        res->have_tau0 = rc == 0 && plan.o.model_tau0;
    }
    if (rc == 0 && !plan.o.busy_core && !plan.o.n_batches) {
        if (plan.o.json) rc = print_json(&plan, res, cpu, threads, &err);
        else print_text(&plan, res, cpu, threads);
    }
    if (ck) checkpoint_close(ck);
    free(res);
    return rc ? cli_fail(&err) : 0;
}
