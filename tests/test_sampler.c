/* test_sampler.c — reading results out of logits, and choosing the next token.
 *
 *   - logits_top_candidates against a full sort (probability, then the lower id), for
 *     random rows, rows full of ties and every k from 1 to n on small rows; probabilities
 *     against softmax computed in long double;
 *   - logits_nll against the formula in long double, and without overflow at |x| = 1e4;
 *   - the CPU backend's read-out ops (token_nll with unscored rows, argmax, penalize,
 *     top_candidates) against those functions;
 *   - sampler_pick on the CPU backend picks exactly what sampler_next picks, seed for seed,
 *     for greedy, plain temperature, top-k, top-p alone (a nucleus inside and one wider
 *     than BACKEND_MAX_CANDIDATES), top-k above that bound, and the repetition penalty;
 *   - the draws follow the distribution: frequencies of 40,000 draws from a known 4-way
 *     distribution within 0.01 of the probabilities; top-k and top-p never return a token
 *     outside their cut;
 *   - a row holding a NaN or +infinity, or nothing but -infinity, is refused (-1) by both
 *     sampler_next and sampler_pick, for every configuration; a lone -infinity is not. */
#include <math.h>
#include <stdint.h>

#include "backend.h"
#include "logits.h"
#include "sampler.h"
#include "test_util.h"


static void random_row(float *x, int n, float spread, int n_levels) {
    for (int i = 0; i < n; i++)
        /* n_levels > 0: values from a few levels only, so that ties are everywhere */
        x[i] = n_levels > 0 ? (float)(rng_u32() % (uint32_t)n_levels) * 0.5f : rng_uniform(-spread, spread);
}

/* ---- the reference: a full sort ------------------------------------------------------- */

static const float *cmp_x;
static int by_rank(const void *a, const void *b) {
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (cmp_x[i] != cmp_x[j]) return cmp_x[i] > cmp_x[j] ? -1 : 1;
    return (i > j) - (i < j);
}

static void check_top(const float *x, int n, float temp, int k, const char *what) {
    int32_t *want = malloc((size_t)n * sizeof *want), *ids = malloc((size_t)k * sizeof *ids);
    float *probs = malloc((size_t)k * sizeof *probs);
    for (int i = 0; i < n; i++) want[i] = i;
    cmp_x = x;
    qsort(want, (size_t)n, sizeof *want, by_rank);
    logits_top_candidates(x, n, temp, k, ids, probs);
    long double max = x[want[0]], sum = 0;
    for (int i = 0; i < n; i++) sum += expl(((long double)x[i] - max) / temp);
    int bad_id = -1, bad_p = -1;
    for (int j = 0; j < k; j++) {
        if (ids[j] != want[j] && bad_id < 0) bad_id = j;
        double p = (double)(expl(((long double)x[want[j]] - max) / temp) / sum);
        if (fabs(probs[j] - p) > 1e-6 * p + 1e-12 && bad_p < 0) bad_p = j;
    }
    CHECK(bad_id < 0, "%s (n %d, k %d): candidate %d is id %d, the sort says %d", what, n, k, bad_id,
          bad_id < 0 ? 0 : ids[bad_id], bad_id < 0 ? 0 : want[bad_id]);
    CHECK(bad_p < 0, "%s (n %d, k %d): probability of candidate %d is off", what, n, k, bad_p);
    free(want), free(ids), free(probs);
}

static void test_top_candidates(void) {
    float x[4096];
    for (int n = 1; n <= 33; n += 4)
        for (int k = 1; k <= n; k++) {
            random_row(x, n, 5.0f, 0);
            check_top(x, n, 0.8f, k, "random small row");
            random_row(x, n, 0, 3);
            check_top(x, n, 1.0f, k, "small row of ties");
        }
    int ks[] = {1, 2, 40, 1000, 1024, 4096};
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        random_row(x, 4096, 10.0f, 0);
        check_top(x, 4096, 0.7f, ks[i], "random row");
        random_row(x, 4096, 0, 7);
        check_top(x, 4096, 1.3f, ks[i], "row of ties");
    }
    /* one value everywhere: the first k ids, each 1/n */
    for (int i = 0; i < 100; i++) x[i] = 2.5f;
    int32_t ids[10];
    float probs[10];
    logits_top_candidates(x, 100, 1.0f, 10, ids, probs);
    int ok = 1;
    for (int j = 0; j < 10; j++) ok &= ids[j] == j && fabsf(probs[j] - 0.01f) < 1e-7f;
    CHECK(ok, "a constant row gives ids 0..9 with probability 1/100 each");
}

static void test_nll(void) {
    float x[50272];
    for (int rep = 0; rep < 3; rep++) {
        random_row(x, 50272, 8.0f, 0);
        int32_t target = (int32_t)(rng_u32() % 50272);
        long double max = x[argmax_f32(x, 50272)], sum = 0;
        for (int i = 0; i < 50272; i++) sum += expl((long double)x[i] - max);
        double want = (double)(logl(sum) + max - x[target]);
        double got = logits_nll(x, 50272, target);
        CHECK(fabs(got - want) <= 1e-12 * fabs(want) + 1e-12, "nll %.17g, want %.17g", got, want);
    }
    float big[3] = {1e4f, -1e4f, 1e4f - 1.0f};
    double want = log(1.0 + exp(-1.0)); /* the -1e4 term is exp(-2e4) = 0 */
    CHECK(fabs(logits_nll(big, 3, 0) - want) < 1e-12, "nll at |x| = 1e4: %.17g, want %.17g", logits_nll(big, 3, 0),
          want);
}

static void test_cpu_ops(Backend *bk) {
    enum { ROWS = 5, N = 3001 };
    float *x = malloc((size_t)ROWS * N * sizeof *x);
    random_row(x, ROWS * N, 6.0f, 0);
    int32_t targets[ROWS] = {7, -1, 3000, 0, -1};
    double nll[ROWS];
    bk->token_nll(bk, x, ROWS, N, targets, nll);
    int ok = 1;
    for (int r = 0; r < ROWS; r++)
        ok &= targets[r] < 0 ? isnan(nll[r]) : nll[r] == logits_nll(x + (size_t)r * N, N, targets[r]);
    CHECK(ok, "cpu token_nll: NaN for unscored rows, logits_nll for the others");

    x[17] = 100.0f, x[2000] = 100.0f;
    CHECK(bk->argmax(bk, x, N) == 17, "cpu argmax: the first of two equal maxima (got %d)", bk->argmax(bk, x, N));

    float before[3] = {x[5], x[6], x[7]};
    x[5] = 2.0f, x[6] = -2.0f, x[7] = 0.0f;
    int32_t pen[3] = {5, 6, 7};
    bk->penalize(bk, x, pen, 3, 1.25f);
    CHECK(x[5] == 1.6f && x[6] == -2.5f && x[7] == 0.0f, "cpu penalize: %g %g %g", x[5], x[6], x[7]);
    x[5] = before[0], x[6] = before[1], x[7] = before[2];

    int32_t ids[64], ids2[64];
    float probs[64], probs2[64];
    bk->top_candidates(bk, x, N, 0.9f, 64, ids, probs);
    logits_top_candidates(x, N, 0.9f, 64, ids2, probs2);
    CHECK(memcmp(ids, ids2, sizeof ids) == 0 && memcmp(probs, probs2, sizeof probs) == 0,
          "cpu top_candidates equals logits_top_candidates");
    free(x);
}

/* ---- sampler_pick == sampler_next --------------------------------------------------------- */

static void test_pick_equals_next(Backend *bk) {
    enum { V = 5000, STEPS = 40 };
    const SamplerConfig configs[] = {
        {.greedy = true, .temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f},
        {.temperature = 0.0f, .top_p = 1.0f, .repetition_penalty = 1.0f},
        {.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f},
        {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .repetition_penalty = 1.0f},
        {.temperature = 0.7f, .top_k = 1, .top_p = 1.0f, .repetition_penalty = 1.0f},
        {.temperature = 1.0f, .top_k = 1024, .top_p = 1.0f, .repetition_penalty = 1.0f},
        {.temperature = 1.0f, .top_k = 2000, .top_p = 1.0f, .repetition_penalty = 1.0f},
        {.temperature = 1.0f, .top_k = 2000, .top_p = 0.5f, .repetition_penalty = 1.0f},
        {.temperature = 0.5f, .top_p = 0.9f, .repetition_penalty = 1.0f},   /* narrow nucleus */
        {.temperature = 5.0f, .top_p = 0.99f, .repetition_penalty = 1.0f},  /* wider than 1024 */
        {.temperature = 0.9f, .top_k = 50, .top_p = 1.0f, .repetition_penalty = 1.3f},
        {.greedy = true, .temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 2.0f},
    };
    float *row = malloc(V * sizeof *row), *a = malloc(V * sizeof *a), *b = malloc(V * sizeof *b);
    int32_t history[STEPS + 8];
    for (size_t c = 0; c < sizeof configs / sizeof configs[0]; c++) {
        SamplerConfig cfg = configs[c];
        cfg.seed = 1000 + c;
        Sampler sa, sb;
        CHECK(sampler_init(&sa, &cfg, V) == 0 && sampler_init(&sb, &cfg, V) == 0, "sampler_init");
        for (int i = 0; i < 8; i++) history[i] = (int32_t)(rng_u32() % 20); /* repeats: penalised once */
        int same = 0;
        for (int step = 0; step < STEPS; step++) {
            random_row(row, V, 4.0f, 0);
            for (int i = 0; i < 20; i++) row[i] += 3.0f; /* make the history ids likely */
            memcpy(a, row, V * sizeof *row), memcpy(b, row, V * sizeof *row);
            size_t n_hist = (size_t)(8 + step);
            int32_t na = sampler_next(&sa, a, history, n_hist);
            int32_t nb = sampler_pick(&sb, bk, b, history, n_hist);
            same += na == nb && memcmp(a, b, V * sizeof *a) == 0;
            history[8 + step] = na;
        }
        CHECK(same == STEPS, "config %zu: sampler_pick agrees with sampler_next on %d/%d steps", c, same, STEPS);
        sampler_free(&sa), sampler_free(&sb);
    }
    free(row), free(a), free(b);
}

/* ---- the draws follow the distribution ------------------------------------------------------ */

static void test_distribution(Backend *bk) {
    /* probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1 */
    const double p[4] = {0.5, 0.3, 0.15, 0.05};
    float logits[4];
    for (int i = 0; i < 4; i++) logits[i] = (float)log(p[i]);
    struct { int top_k; float top_p; double want[4]; const char *what; } cases[] = {
        {0, 1.0f, {0.5, 0.3, 0.15, 0.05}, "plain"},
        {2, 1.0f, {0.625, 0.375, 0, 0}, "top-k 2"},
        {0, 0.79f, {0.625, 0.375, 0, 0}, "top-p 0.79"},
        {0, 0.81f, {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0}, "top-p 0.81"},
        {3, 0.5f, {1, 0, 0, 0}, "top-k 3, top-p 0.5"},
    };
    enum { DRAWS = 40000 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        SamplerConfig cfg = {.temperature = 1.0f, .top_k = cases[c].top_k, .top_p = cases[c].top_p,
                             .repetition_penalty = 1.0f, .seed = 77 + c};
        Sampler s;
        CHECK(sampler_init(&s, &cfg, 4) == 0, "sampler_init");
        long count[4] = {0};
        for (int d = 0; d < DRAWS; d++) {
            float l[4];
            memcpy(l, logits, sizeof l);
            int32_t id = sampler_pick(&s, bk, l, NULL, 0);
            if (id >= 0 && id < 4) count[id]++;
        }
        for (int i = 0; i < 4; i++) {
            double f = (double)count[i] / DRAWS;
            CHECK(fabs(f - cases[c].want[i]) < 0.01 && (cases[c].want[i] > 0 || count[i] == 0),
                  "%s: token %d drawn %.4f of the time, want %.4f", cases[c].what, i, f, cases[c].want[i]);
        }
        sampler_free(&s);
    }
}

/* ---- rows that cannot be sampled -------------------------------------------------------------- */

static void test_nonfinite_rows(Backend *bk) {
    enum { V = 3000 };
    const SamplerConfig configs[] = {
        {.greedy = true, .temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f},
        {.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f},
        {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .repetition_penalty = 1.0f},
        {.temperature = 0.9f, .top_k = 50, .top_p = 1.0f, .repetition_penalty = 1.3f},
    };
    struct { int at; float value; bool refused; const char *what; } cases[] = {
        {0, NAN, true, "NaN first"},           {1234, NAN, true, "NaN inside"},
        {V - 1, -NAN, true, "-NaN last"},      {17, INFINITY, true, "+infinity"},
        {-1, -INFINITY, true, "every logit -infinity"},
        {5, -INFINITY, false, "one -infinity among finite logits"},
    };
    float *row = malloc(V * sizeof *row);
    int32_t history[3] = {5, 6, 7};
    int wrong = 0;
    for (size_t c = 0; c < sizeof configs / sizeof configs[0]; c++)
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
            for (int on_backend = 0; on_backend < 2; on_backend++) {
                Sampler s;
                SamplerConfig cfg = configs[c];
                cfg.seed = 9;
                CHECK(sampler_init(&s, &cfg, V) == 0, "sampler_init");
                random_row(row, V, 4.0f, 0);
                if (cases[k].at >= 0) row[cases[k].at] = cases[k].value;
                else for (int i = 0; i < V; i++) row[i] = -INFINITY;
                int32_t id = on_backend ? sampler_pick(&s, bk, row, history, 3) : sampler_next(&s, row, history, 3);
                bool refused = id == -1, valid = id >= 0 && id < V;
                if (refused != cases[k].refused || (!refused && !valid)) {
                    wrong++;
                    fprintf(stderr, "config %zu, %s, %s: got %d\n", c, cases[k].what,
                            on_backend ? "sampler_pick" : "sampler_next", id);
                }
                sampler_free(&s);
            }
    CHECK(wrong == 0, "%d non-finite rows handled wrongly", wrong);
    free(row);
}

int main(void) {
    Error err;
    Backend *bk = cpu_backend_create(2, &err);
    if (!bk) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return 1;
    }
    test_top_candidates();
    test_nll();
    test_cpu_ops(bk);
    test_pick_equals_next(bk);
    test_distribution(bk);
    test_nonfinite_rows(bk);
    bk->destroy(bk);
    return test_finish("sampler");
}
