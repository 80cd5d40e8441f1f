/* test_engine.c — the continuous-batching scheduler (engine.h) against requests run alone.
 *
 * On the fixtures of both architectures (no tokenizer: ids only) and on the demo model (with
 * its tokenizer: text, stop strings), with fp16 and LLM.int8() per-token outliers, and with
 * the float32 and the 16-bit KV cache:
 *   - a random mix of requests (greedy and seeded sampling, logprobs, echo, lengths) run
 *     together with a small prefill chunk, a small step budget and a cache too small for all
 *     of them at once (so some wait), submitted at random times: every request's tokens,
 *     logprobs, top logprobs, text and finish reason bitwise what it gives run alone with
 *     its prompt in one piece;
 *   - alone with a prefill chunk of 1 token: the same again (chunking changes nothing);
 *   - alone, against a plain loop of model_forward_last + sampler_pick (what `generate` did);
 *   - echoed prompt logprobs against model_score's NLLs, greedy tokens' against the top one;
 * and: cancel (queued and running: on_done "cancelled" once, the cache freed), the budget
 * (a request that can never fit is refused with a message, one that fits later waits),
 * ENGINE_FULL, stop strings (the text ends before the stop string, held-back text comes
 * back), and submissions from another thread. */
#include <cJSON.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "checkpoint.h"
#include "engine.h"
#include "model.h"
#include "test_util.h"
#include "tokenizer.h"

enum { NREQ = 7, MAXTOK = 2048, CTX = 64 };

static unsigned rng_state = 2024;
static int rnd(int n) {
    rng_state = rng_state * 1103515245u + 12345u;
    return (int)((rng_state >> 8) % (unsigned)n);
}

/* Everything a request handed back. */
typedef struct Record {
    int n;                      /* tokens */
    int32_t id[MAXTOK / 8];
    bool prompt[MAXTOK / 8];
    double lp[MAXTOK / 8];
    int n_top[MAXTOK / 8];
    int32_t top_ids[MAXTOK / 8][ENGINE_MAX_LOGPROBS];
    double top_lp[MAXTOK / 8][ENGINE_MAX_LOGPROBS];
    char text[4096];
    size_t text_len;
    bool offsets_ok;
    int done;                   /* on_done calls */
    char reason[32];
    int prompt_tokens, completion_tokens;
} Record;

static void on_token(void *ctx, const EngineToken *t) {
    Record *r = ctx;
    if (r->n >= MAXTOK / 8) return;
    int i = r->n++;
    r->id[i] = t->id, r->prompt[i] = t->prompt, r->lp[i] = t->logprob, r->n_top[i] = t->n_top;
    for (int j = 0; j < t->n_top; j++) r->top_ids[i][j] = t->top_ids[j], r->top_lp[i][j] = t->top_logprobs[j];
    if (t->text_offset != r->text_len) r->offsets_ok = false;
    if (r->text_len + t->text_len < sizeof r->text) {
        memcpy(r->text + r->text_len, t->text, t->text_len);
        r->text_len += t->text_len;
    }
}

static void on_done(void *ctx, const EngineDone *d) {
    Record *r = ctx;
    r->done++;
    snprintf(r->reason, sizeof r->reason, "%s", d->finish_reason);
    r->prompt_tokens = d->prompt_tokens, r->completion_tokens = d->completion_tokens;
    if (d->text_offset != r->text_len) r->offsets_ok = false;
    if (r->text_len + d->text_len < sizeof r->text) {
        memcpy(r->text + r->text_len, d->text, d->text_len);
        r->text_len += d->text_len;
    }
}

static void record_init(Record *r) {
    memset(r, 0, sizeof *r);
    r->offsets_ok = true;
}

static bool same_double(double a, double b) { return memcmp(&a, &b, sizeof a) == 0; }

/* Bitwise equality of two records; prints the first difference. */
static bool same_record(const Record *a, const Record *b, const char *what) {
    char why[200] = "";
    if (a->n != b->n) snprintf(why, sizeof why, "%d tokens vs %d", a->n, b->n);
    for (int i = 0; !why[0] && i < a->n; i++) {
        if (a->id[i] != b->id[i] || a->prompt[i] != b->prompt[i])
            snprintf(why, sizeof why, "token %d: id %d vs %d", i, a->id[i], b->id[i]);
        else if (!same_double(a->lp[i], b->lp[i]))
            snprintf(why, sizeof why, "token %d: logprob %.17g vs %.17g", i, a->lp[i], b->lp[i]);
        else if (a->n_top[i] != b->n_top[i]) snprintf(why, sizeof why, "token %d: n_top", i);
        for (int j = 0; !why[0] && j < a->n_top[i]; j++)
            if (a->top_ids[i][j] != b->top_ids[i][j] || !same_double(a->top_lp[i][j], b->top_lp[i][j]))
                snprintf(why, sizeof why, "token %d: top %d differs", i, j);
    }
    if (!why[0] && (a->text_len != b->text_len || memcmp(a->text, b->text, a->text_len)))
        snprintf(why, sizeof why, "text differs");
    if (!why[0] && (strcmp(a->reason, b->reason) || a->completion_tokens != b->completion_tokens))
        snprintf(why, sizeof why, "finish %s/%d vs %s/%d", a->reason, a->completion_tokens, b->reason,
                 b->completion_tokens);
    if (why[0]) fprintf(stderr, "  %s: %s\n", what, why);
    return !why[0];
}

static Model *load(const Checkpoint *ck, Backend *bk, bool int8, bool kv16, int ctx, int cache_tokens,
                   int batch_tokens) {
    ModelOptions mo = {.quant = {.mode = int8 ? QUANT_LLM_INT8 : QUANT_FP16, .threshold = int8 ? 6.0f : 0.0f,
                                 .outliers = OUTLIERS_PER_TOKEN},
                       .ctx = ctx, .batch_tokens = batch_tokens, .kv_f16 = kv16, .cache_tokens = cache_tokens};
    Model *m = NULL;
    Error err;
    CHECK(model_load(ck, bk, &mo, &m, &err) == 0, "model_load: %s", err.msg);
    return m;
}

/* Runs the engine until it is idle; returns the steps run. */
static int drain(Engine *e) {
    Error err;
    int steps = 0, r;
    while ((r = engine_step(e, &err)) > 0) steps++;
    CHECK(r == 0, "engine_step: %s", err.msg);
    return steps;
}

typedef struct Mix {
    int32_t prompt[NREQ][48];
    EngineRequest req[NREQ];
    const char *stop[NREQ][2];
} Mix;

/* A random mix of requests over ids from `pool`. */
static void make_mix(Mix *x, const int32_t *pool, int n_pool, int32_t eos, int vocab) {
    for (int i = 0; i < NREQ; i++) {
        int n = 1 + rnd(30);
        for (int t = 0; t < n; t++) x->prompt[i][t] = pool ? pool[rnd(n_pool)] : rnd(vocab);
        EngineRequest *r = &x->req[i];
        *r = (EngineRequest){.prompt = x->prompt[i], .n_prompt = n, .max_tokens = rnd(4) == 0 ? 0 : 1 + rnd(20),
                             .eos_id = eos, .ignore_eos = rnd(2), .logprobs = rnd(3) ? 0 : 1 + rnd(5),
                             .echo = rnd(3) == 0, .on_token = on_token, .on_done = on_done};
        if (rnd(2)) r->sampling = (SamplerConfig){.greedy = true, .temperature = 1, .top_p = 1,
                                                  .repetition_penalty = 1};
        else r->sampling = (SamplerConfig){.temperature = 0.9f, .top_k = rnd(2) ? 20 : 0, .top_p = rnd(2) ? 0.9f : 1,
                                           .repetition_penalty = rnd(2) ? 1.3f : 1, .seed = 1 + (uint64_t)rnd(1000)};
    }
}

/* Each request alone (its prompt in one piece, or chunked by `chunk`), into solo[]. */
static void run_alone(const Checkpoint *ck, Backend *bk, const Tokenizer *tok, bool int8, bool kv16, Mix *x,
                      Record *solo, int chunk) {
    for (int i = 0; i < NREQ; i++) {
        Model *m = load(ck, bk, int8, kv16, CTX, 0, 512);
        if (!m) return;
        Error err;
        EngineOptions eo = {.max_running = 1, .prefill_chunk = chunk};
        Engine *e = engine_create(m, tok, &eo, &err);
        CHECK(e != NULL, "engine_create: %s", err.msg);
        record_init(&solo[i]);
        EngineRequest r = x->req[i];
        r.ctx = &solo[i];
        uint64_t id;
        CHECK(engine_submit(e, &r, &id, &err) == ENGINE_OK, "submit: %s", err.msg);
        drain(e);
        CHECK(solo[i].done == 1 && solo[i].offsets_ok, "request %d: on_done %d times, offsets ok %d", i, solo[i].done,
              solo[i].offsets_ok);
        engine_free(e);
        model_free(m);
    }
}

/* All together, in random batches. */
static void run_together(const Checkpoint *ck, Backend *bk, const Tokenizer *tok, bool int8, bool kv16, Mix *x,
                         Record *rec, const char *what) {
    /* a cache for about three requests at once, scratch of 16 rows: sequences are cut */
    Model *m = load(ck, bk, int8, kv16, CTX, 3 * CTX, 16);
    if (!m) return;
    Error err;
    EngineOptions eo = {.max_running = 2 + rnd(4), .prefill_chunk = 1 + rnd(7), .step_tokens = 8 + rnd(16)};
    Engine *e = engine_create(m, tok, &eo, &err);
    CHECK(e != NULL, "engine_create: %s", err.msg);
    if (!e) return;
    int submitted = 0, waited = 0;
    while (submitted < NREQ || engine_busy(e)) {
        while (submitted < NREQ && rnd(3)) {
            record_init(&rec[submitted]);
            EngineRequest r = x->req[submitted];
            r.ctx = &rec[submitted];
            uint64_t id;
            CHECK(engine_submit(e, &r, &id, &err) == ENGINE_OK, "submit: %s", err.msg);
            submitted++;
        }
        CHECK(engine_step(e, &err) >= 0, "step: %s", err.msg);
        EngineStats s;
        engine_stats(e, &s);
        waited += s.queued > 0 && s.running > 0;
        CHECK(s.kv_tokens_used <= s.kv_tokens_total && s.running <= eo.max_running, "stats: %ld of %ld, %d running",
              s.kv_tokens_used, s.kv_tokens_total, s.running);
    }
    EngineStats s;
    engine_stats(e, &s);
    CHECK(s.kv_tokens_used == 0 && s.running == 0 && s.queued == 0, "idle engine holds %ld tokens", s.kv_tokens_used);
    fprintf(stderr, "  %s: %ld steps, max_running %d, chunk %d, step_tokens %d, %d steps with requests waiting\n",
            what, s.steps, eo.max_running, eo.prefill_chunk, eo.step_tokens, waited);
    engine_free(e);
    model_free(m);
}

static void test_invariance(const char *name, const Checkpoint *ck, Backend *bk, const Tokenizer *tok,
                            const int32_t *pool, int n_pool) {
    const ModelConfig *c = checkpoint_config(ck);
    static Mix x;
    static Record solo[NREQ], chunked[NREQ], together[NREQ];
    for (int int8 = 0; int8 < 2; int8++)
        for (int kv16 = 0; kv16 < 2; kv16++) {
            char what[128];
            snprintf(what, sizeof what, "%s %s %s", name, int8 ? "int8 per-token" : "fp16", kv16 ? "kv16" : "kv32");
            make_mix(&x, pool, n_pool, c->eos_id, c->vocab_size);
            run_alone(ck, bk, tok, int8, kv16, &x, solo, 0);
            run_alone(ck, bk, tok, int8, kv16, &x, chunked, 1);
            run_together(ck, bk, tok, int8, kv16, &x, together, what);
            int bad = 0;
            for (int i = 0; i < NREQ; i++) {
                char w[160];
                snprintf(w, sizeof w, "%s request %d chunked", what, i);
                bad += !same_record(&solo[i], &chunked[i], w);
                snprintf(w, sizeof w, "%s request %d batched", what, i);
                bad += !same_record(&solo[i], &together[i], w);
                CHECK(together[i].done == 1 && together[i].offsets_ok, "%s: on_done %d times", w, together[i].done);
                CHECK(together[i].prompt_tokens == x.req[i].n_prompt, "prompt_tokens %d", together[i].prompt_tokens);
            }
            CHECK(bad == 0, "%s: %d requests differ from their solo runs", what, bad);
        }
}

/* The engine alone against the loop `generate` ran before it: model_forward_last, then
 * sampler_pick and one token at a time. */
static void test_against_plain_loop(const Checkpoint *ck, Backend *bk, const int32_t *prompt, int n_prompt) {
    const ModelConfig *c = checkpoint_config(ck);
    SamplerConfig sc = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .repetition_penalty = 1.2f, .seed = 7};
    enum { NEW = 12 };
    int32_t hist[CTX];
    memcpy(hist, prompt, (size_t)n_prompt * sizeof *hist);
    Error err;
    Model *m = load(ck, bk, true, false, n_prompt + NEW, 0, 512);
    if (!m) return;
    Sampler s;
    CHECK(sampler_init(&s, &sc, c->vocab_size) == 0, "sampler_init");
    float *row = model_forward_last(m, prompt, n_prompt, &err);
    int n = n_prompt;
    while (row && n < n_prompt + NEW) {
        hist[n] = sampler_pick(&s, bk, row, hist, (size_t)n);
        n++;
        if (n < n_prompt + NEW) row = model_forward_last(m, &hist[n - 1], 1, &err);
    }
    sampler_free(&s);
    model_free(m);

    m = load(ck, bk, true, false, n_prompt + NEW, 0, 512);
    EngineOptions eo = {0};
    Engine *e = engine_create(m, NULL, &eo, &err);
    static Record r;
    record_init(&r);
    EngineRequest q = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = NEW, .sampling = sc, .eos_id = -1,
                       .on_token = on_token, .on_done = on_done, .ctx = &r};
    uint64_t id;
    CHECK(engine_submit(e, &q, &id, &err) == 0, "submit: %s", err.msg);
    drain(e);
    CHECK(r.n == NEW && memcmp(r.id, hist + n_prompt, NEW * sizeof *hist) == 0 && !strcmp(r.reason, "length"),
          "the engine's %d tokens differ from the plain loop's %d", r.n, NEW);
    engine_free(e);
    model_free(m);
}

/* Logprobs with echo, against model_score's NLLs: prompt token t's logprob is -nll of it at
 * position t - 1; greedy tokens are their row's top candidate. */
static void test_logprobs(const Checkpoint *ck, Backend *bk, const int32_t *prompt, int n_prompt) {
    Error err;
    enum { NEW = 4, TOP = 3 };
    double nll[CTX];
    int32_t targets[CTX];
    for (int t = 0; t < n_prompt; t++) targets[t] = t + 1 < n_prompt ? prompt[t + 1] : -1;
    Model *m = load(ck, bk, true, false, CTX, 0, 512);
    if (!m) return;
    CHECK(model_score(m, prompt, n_prompt, targets, nll, &err) == 0, "score: %s", err.msg);
    model_free(m);
    m = load(ck, bk, true, false, CTX, 0, 512);
    EngineOptions eo = {.prefill_chunk = 5};
    Engine *e = engine_create(m, NULL, &eo, &err);
    static Record r;
    record_init(&r);
    EngineRequest q = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = NEW, .eos_id = -1, .logprobs = TOP,
                       .echo = true, .on_token = on_token, .on_done = on_done, .ctx = &r,
                       .sampling = {.greedy = true, .temperature = 1, .top_p = 1, .repetition_penalty = 1}};
    uint64_t id;
    CHECK(engine_submit(e, &q, &id, &err) == 0, "submit: %s", err.msg);
    drain(e);
    CHECK(r.n == n_prompt + NEW && r.completion_tokens == NEW, "%d tokens handed on", r.n);
    int bad = 0;
    for (int t = 0; t < r.n && t < n_prompt + NEW; t++) {
        bool prompt_tok = t < n_prompt;
        bad += r.prompt[t] != prompt_tok || (prompt_tok && r.id[t] != prompt[t]);
        if (t == 0) {
            bad += !isnan(r.lp[0]) || r.n_top[0] != 0;
            continue;
        }
        bad += r.n_top[t] != TOP || r.top_lp[t][0] < r.top_lp[t][1] || r.top_lp[t][1] < r.top_lp[t][2] ||
               r.lp[t] > r.top_lp[t][0];
        if (prompt_tok) bad += !(fabs(r.lp[t] + nll[t - 1]) <= 1e-9);
        else bad += r.id[t] != r.top_ids[t][0] || !same_double(r.lp[t], r.top_lp[t][0]);
    }
    CHECK(bad == 0, "%d logprobs wrong (echo against model_score, greedy against the top candidate)", bad);
    engine_free(e);
    model_free(m);
}

/* Cancel, the budget, a full queue. */
static void test_cancel_budget(const Checkpoint *ck, Backend *bk) {
    Error err;
    Model *m = load(ck, bk, false, true, CTX, 2 * CTX, 512);
    if (!m) return;
    EngineOptions eo = {.max_running = 4, .prefill_chunk = 4, .max_queue = 2};
    Engine *e = engine_create(m, NULL, &eo, &err);
    static int32_t prompt[CTX];
    for (int i = 0; i < CTX; i++) prompt[i] = 3 + i % 50;
    static Record r[6];
    for (int i = 0; i < 6; i++) record_init(&r[i]);
    SamplerConfig greedy = {.greedy = true, .temperature = 1, .top_p = 1, .repetition_penalty = 1};
    EngineRequest q = {.prompt = prompt, .n_prompt = 20, .max_tokens = CTX - 20, .sampling = greedy, .eos_id = -1,
                       .on_token = on_token, .on_done = on_done};
    uint64_t id[6];

    /* never fits: beyond the context; beyond the whole cache can't be shown (cache >= ctx) */
    err.msg[0] = 0;
    q.max_tokens = CTX;
    CHECK(engine_submit(e, &q, &id[0], &err) == -1 && strstr(err.msg, "context"), "too long: '%s'", err.msg);
    q.max_tokens = CTX - 20;
    q.n_prompt = 0;
    CHECK(engine_submit(e, &q, &id[0], &err) == -1, "empty prompt accepted");
    q.n_prompt = 20;
    q.logprobs = 99;
    CHECK(engine_submit(e, &q, &id[0], &err) == -1, "logprobs 99 accepted");
    q.logprobs = 0;
    const char *stop[1] = {"x"};
    q.stop = stop, q.n_stop = 1;
    CHECK(engine_submit(e, &q, &id[0], &err) == -1 && strstr(err.msg, "tokenizer"), "stop without tokenizer");
    q.n_stop = 0;
    prompt[5] = 1 << 30;
    CHECK(engine_submit(e, &q, &id[0], &err) == -1 && strstr(err.msg, "vocabulary"), "bad id: '%s'", err.msg);
    prompt[5] = 8;

    /* three requests of a full context each in a cache of two: the third waits */
    for (int i = 0; i < 2; i++) {
        q.ctx = &r[i];
        CHECK(engine_submit(e, &q, &id[i], &err) == ENGINE_OK, "submit %d: %s", i, err.msg);
    }
    q.ctx = &r[2];
    CHECK(engine_submit(e, &q, &id[2], &err) == ENGINE_FULL, "a third request beyond max_queue 2 was accepted");
    CHECK(engine_step(e, &err) == 2, "step: %s", err.msg);
    CHECK(engine_submit(e, &q, &id[2], &err) == ENGINE_OK, "submit 2: %s", err.msg);
    q.ctx = &r[3];
    CHECK(engine_submit(e, &q, &id[3], &err) == ENGINE_OK, "submit 3: %s", err.msg);
    CHECK(engine_step(e, &err) == 2, "step: %s", err.msg);
    EngineStats s;
    engine_stats(e, &s);
    CHECK(s.running == 2 && s.queued == 2 && s.kv_tokens_used == 2 * CTX, "running %d queued %d kv %ld", s.running,
          s.queued, s.kv_tokens_used);
    /* cancel a queued one and a running one: on_done at the next step, the cache freed */
    engine_cancel(e, id[3]);
    engine_cancel(e, id[0]);
    engine_cancel(e, 12345);
    CHECK(engine_step(e, &err) == 2, "step: %s", err.msg);
    engine_stats(e, &s);
    CHECK(r[3].done == 1 && !strcmp(r[3].reason, "cancelled") && r[3].n == 0, "queued cancel: %d '%s'", r[3].done,
          r[3].reason);
    CHECK(r[0].done == 1 && !strcmp(r[0].reason, "cancelled"), "running cancel: %d '%s'", r[0].done, r[0].reason);
    CHECK(s.running == 2 && s.queued == 0 && s.kv_tokens_used == 2 * CTX, "the cancelled one's cache went to the "
          "waiting one: running %d queued %d kv %ld", s.running, s.queued, s.kv_tokens_used);
    engine_cancel(e, id[0]); /* twice: ignored */
    drain(e);
    CHECK(r[1].done == 1 && !strcmp(r[1].reason, "length") && r[1].n == CTX - 20, "request 1: %d tokens, '%s'",
          r[1].n, r[1].reason);
    CHECK(r[2].done == 1 && !strcmp(r[2].reason, "length"), "request 2 after waiting: '%s'", r[2].reason);
    CHECK(r[0].done == 1, "cancelled request's on_done called %d times", r[0].done);
    /* the engine_free path: queued and running requests are cancelled */
    q.ctx = &r[4];
    CHECK(engine_submit(e, &q, &id[4], &err) == ENGINE_OK, "submit: %s", err.msg);
    CHECK(engine_step(e, &err) == 1, "step");
    q.ctx = &r[5];
    CHECK(engine_submit(e, &q, &id[5], &err) == ENGINE_OK, "submit: %s", err.msg);
    engine_free(e);
    CHECK(r[4].done == 1 && !strcmp(r[4].reason, "cancelled") && r[5].done == 1, "engine_free: %d %d", r[4].done,
          r[5].done);
    model_free(m);
}

/* Stop strings on the demo model: the text ends right before the first occurrence. */
static void test_stop(const Checkpoint *ck, Backend *bk, const Tokenizer *tok) {
    Error err;
    int32_t *ids;
    size_t n;
    const char *text = "It was a dark and stormy night, and the";
    CHECK(tokenizer_encode(tok, text, strlen(text), true, &ids, &n, &err) == 0, "encode: %s", err.msg);
    SamplerConfig greedy = {.greedy = true, .temperature = 1, .top_p = 1, .repetition_penalty = 1};
    static Record full, cut, cut2;
    for (int k = 0; k < 3; k++) {
        Model *m = load(ck, bk, false, false, 128, 0, 512);
        EngineOptions eo = {0};
        Engine *e = engine_create(m, tok, &eo, &err);
        Record *r = k == 0 ? &full : k == 1 ? &cut : &cut2;
        record_init(r);
        char stop_a[8] = "", stop_b[16] = "";
        if (k > 0) { /* a stop string from the middle of the full text, split over tokens */
            size_t at = full.text_len / 2;
            memcpy(stop_a, full.text + at, 3);
            snprintf(stop_b, sizeof stop_b, "%s", k == 2 ? "\x01never" : "zzzq");
        }
        const char *stops[2] = {stop_a, stop_b};
        EngineRequest q = {.prompt = ids, .n_prompt = (int)n, .max_tokens = 40, .sampling = greedy, .eos_id = -1,
                           .stop = stops, .n_stop = k > 0 ? (k == 2 ? 2 : 1) : 0, .on_token = on_token,
                           .on_done = on_done, .ctx = r};
        uint64_t id;
        CHECK(engine_submit(e, &q, &id, &err) == ENGINE_OK, "submit: %s", err.msg);
        drain(e);
        if (k > 0) {
            const char *hit = memmem(full.text, full.text_len, stop_a, strlen(stop_a));
            size_t want = hit ? (size_t)(hit - full.text) : 0;
            CHECK(hit && r->text_len == want && memcmp(r->text, full.text, want) == 0 && !strcmp(r->reason, "stop"),
                  "stop '%s': %zu bytes '%.*s', reason %s; expected %zu", stop_a, r->text_len, (int)r->text_len,
                  r->text, r->reason, want);
            CHECK(r->offsets_ok, "text offsets");
        } else {
            CHECK(full.text_len > 20 && !strcmp(full.reason, "length"), "full text %zu bytes", full.text_len);
        }
        engine_free(e);
        model_free(m);
    }
    free(ids);
}

/* Submissions and cancels from another thread while this one steps. */
typedef struct Feeder {
    Engine *e;
    EngineRequest q;
    Record rec[8];
    uint64_t ids[8];
} Feeder;

static void *feed(void *arg) {
    Feeder *f = arg;
    Error err;
    for (int i = 0; i < 8; i++) {
        f->q.ctx = &f->rec[i];
        while (engine_submit(f->e, &f->q, &f->ids[i], &err) == ENGINE_FULL) engine_wait(f->e, 1);
        if (i % 3 == 2) engine_cancel(f->e, f->ids[i - 1]);
    }
    return NULL;
}

static void test_threads(const Checkpoint *ck, Backend *bk) {
    Error err;
    Model *m = load(ck, bk, false, false, CTX, 4 * CTX, 512);
    EngineOptions eo = {.max_running = 3, .max_queue = 2};
    static Feeder f;
    f.e = engine_create(m, NULL, &eo, &err);
    for (int i = 0; i < 8; i++) record_init(&f.rec[i]); /* before the other thread starts */
    static int32_t prompt[8] = {2, 10, 11, 12, 13, 14, 15, 16};
    f.q = (EngineRequest){.prompt = prompt, .n_prompt = 8, .max_tokens = 10, .eos_id = -1, .on_token = on_token,
                          .on_done = on_done,
                          .sampling = {.greedy = true, .temperature = 1, .top_p = 1, .repetition_penalty = 1}};
    pthread_t th;
    pthread_create(&th, NULL, feed, &f);
    int idle = 0;
    while (idle < 200) {
        int r = engine_step(f.e, &err);
        CHECK(r >= 0, "step: %s", err.msg);
        if (r == 0) {
            engine_wait(f.e, 5);
            idle++;
        }
        int all = 0;
        for (int i = 0; i < 8; i++) all += __atomic_load_n(&f.rec[i].done, __ATOMIC_SEQ_CST);
        if (all == 8) break;
    }
    pthread_join(th, NULL);
    drain(f.e);
    int cancelled = 0;
    for (int i = 0; i < 8; i++) {
        CHECK(f.rec[i].done == 1, "request %d: on_done %d times", i, f.rec[i].done);
        cancelled += !strcmp(f.rec[i].reason, "cancelled");
        if (strcmp(f.rec[i].reason, "cancelled"))
            CHECK(f.rec[i].n == 10 && memcmp(f.rec[i].id, f.rec[0].id, sizeof f.rec[0].id[0] * 10) == 0,
                  "request %d: %d tokens", i, f.rec[i].n);
    }
    engine_free(f.e);
    model_free(m);
    fprintf(stderr, "  threads: 8 requests from another thread, %d cancelled before they ended\n", cancelled);
}

static int32_t *golden_ids(const char *dir, int *n) {
    char path[300];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    char *text = test_read_file(path, NULL);
    cJSON *g = text ? cJSON_Parse(text) : NULL;
    free(text);
    static int32_t ids[64];
    *n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(g, "input_ids")) if (*n < 64) ids[(*n)++] =
        (int32_t)it->valuedouble;
    cJSON_Delete(g);
    return ids;
}

int main(void) {
    Error err;
    Backend *bk = backend_create("cpu", 2, NULL, &err);
    if (!bk) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return 1;
    }
    const char *const FIXTURES[] = {"opt-tiny", "bloom-tiny"};
    for (size_t f = 0; f < 2; f++) {
        char dir[256];
        snprintf(dir, sizeof dir, TEST_FIXTURES "/%s", FIXTURES[f]);
        Checkpoint *ck;
        if (checkpoint_open(dir, &ck, &err)) {
            CHECK(0, "%s: %s", FIXTURES[f], err.msg);
            continue;
        }
        int n;
        const int32_t *ids = golden_ids(dir, &n);
        CHECK(n >= 16, "%s: golden ids", FIXTURES[f]);
        test_invariance(FIXTURES[f], ck, bk, NULL, ids, n);
        if (f == 0) {
            test_against_plain_loop(ck, bk, ids, 16);
            test_logprobs(ck, bk, ids, 16);
            test_cancel_budget(ck, bk);
            test_threads(ck, bk);
        }
        checkpoint_close(ck);
    }
    /* the demo model, with its tokenizer */
    const char *demo = "models/opt-gutenberg-7m";
    Checkpoint *ck;
    Tokenizer *tok;
    if (checkpoint_open(demo, &ck, &err) == 0) {
        if (tokenizer_load(demo, &tok, &err) == 0) {
            test_invariance("demo", ck, bk, tok, NULL, 0);
            test_stop(ck, bk, tok);
            tokenizer_free(tok);
        } else {
            CHECK(0, "demo tokenizer: %s", err.msg);
        }
        checkpoint_close(ck);
    } else {
        CHECK(0, "%s: %s", demo, err.msg);
    }
    bk->destroy(bk);
    return test_finish("engine");
}
