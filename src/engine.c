/* engine.c — the continuous-batching scheduler (engine.h): a queue of requests, the running
 * set, one model_step per engine_step, and each request's sampling, text and stop strings.
 *
 * Who touches what: the queue, the running array, the `cancelled` flags and the counters
 * behind engine_stats are guarded by e->lock; a request's progress (tokens run, sampler,
 * text) and the model are touched only by the thread in engine_step. Callbacks run with
 * the lock released, so they may submit or cancel. */
#include "engine.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "logits.h"

enum { MAX_STOP = 16, MAX_STOP_BYTES = 1024 };

typedef struct Req {
    uint64_t id;
    struct Req *next;          /* in the queue, or in the list of requests ended while queued */
    EngineRequest r;           /* as submitted; r.prompt and r.stop point at our copies */
    int32_t *tokens;           /* [n_prompt + max_tokens]: the prompt, then the generated ids */
    char **stop;               /* [n_stop] copies */
    bool cancelled;            /* set by engine_cancel (under the lock) */
    Engine *engine;            /* for model_step's row callback */

    /* progress: the step thread only */
    int seq;                   /* the model sequence while running, else -1 */
    int reserved;              /* cache tokens reserved (n_prompt + max_tokens) */
    int n_fed;                 /* tokens[0..n_fed) have run through the model */
    int n_gen;                 /* tokens generated, tokens[n_prompt..n_prompt+n_gen) */
    int n_out;                 /* of those, handed to on_token (an ending eos is not) */
    bool started;              /* sampler and text stream set up, echo of token 0 done */
    Sampler sampler;
    TokenStream ts;
    char *hold;                /* generated text not yet released (a possible stop string) */
    size_t hold_len, hold_cap;
    size_t text_done;          /* bytes of output text released so far */
} Req;

struct Engine {
    StepTarget t;              /* what runs the steps: a model or a pipeline (model.h) */
    const Tokenizer *tok;
    EngineOptions o;
    int vocab;

    pthread_mutex_t lock;
    pthread_cond_t work;       /* signalled when a request is queued or cancelled */
    Req *q_head, *q_tail;      /* waiting, oldest first */
    int n_queued;
    Req **running;             /* [max_running], in the order they started */
    int n_running;
    Req *ended;                /* cancelled while waiting: on_done still to be called */
    uint64_t next_id;
    EngineStats st;

    /* the step thread's scratch */
    SeqStep *steps;            /* [max_running] */
    Req **stepped;             /* [max_running]: whose step steps[i] is */
    float *row;                /* [vocab]: a logits row brought to the host (logprobs) */
    int32_t top_ids[ENGINE_MAX_LOGPROBS];
    double top_lp[ENGINE_MAX_LOGPROBS];
    float top_p[ENGINE_MAX_LOGPROBS];
    char *text;                /* one token's text */
    size_t text_cap;
};

/* ---- requests --------------------------------------------------------------------------- */

static void req_free(Req *q) {
    if (!q) return;
    if (q->started) sampler_free(&q->sampler);
    for (int i = 0; q->stop && i < q->r.n_stop; i++) free(q->stop[i]);
    free(q->stop), free(q->tokens), free(q->hold), free(q);
}

static int check_request(const Engine *e, const EngineRequest *r, Error *err) {
    if (!r->prompt || r->n_prompt < 1) return err_set(err, "the request has no prompt tokens");
    for (int i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= e->vocab)
            return err_set(err, "prompt token %d is id %d, outside the vocabulary (0..%d)", i, r->prompt[i],
                           e->vocab - 1);
    if (r->max_tokens < 0) return err_set(err, "max_tokens %d: expected 0 or more", r->max_tokens);
    long total = (long)r->n_prompt + r->max_tokens;
    if (total > e->t.ctx)
        return err_set(err, "the prompt's %d tokens and max_tokens %d make %ld positions, beyond the context of %d",
                       r->n_prompt, r->max_tokens, total, e->t.ctx);
    if (total > e->t.cache_tokens)
        return err_set(err, "the prompt's %d tokens and max_tokens %d need %ld tokens of KV cache, more than the "
                       "whole budget of %d", r->n_prompt, r->max_tokens, total, e->t.cache_tokens);
    if (r->logprobs < 0 || r->logprobs > ENGINE_MAX_LOGPROBS)
        return err_set(err, "logprobs %d: expected 0 to %d", r->logprobs, ENGINE_MAX_LOGPROBS);
    if (r->n_stop < 0 || r->n_stop > MAX_STOP || (r->n_stop && !r->stop))
        return err_set(err, "%d stop strings: at most %d", r->n_stop, MAX_STOP);
    if (r->echo && r->logprobs && !e->t.prompt_logits)
        return err_set(err, "logprobs of the prompt (echo with logprobs) are not available in a pipeline");
    if (r->n_stop && !e->tok) return err_set(err, "stop strings need a tokenizer (to see the text)");
    for (int i = 0; i < r->n_stop; i++) {
        size_t len = r->stop[i] ? strlen(r->stop[i]) : 0;
        if (len == 0 || len > MAX_STOP_BYTES)
            return err_set(err, "stop string %d: expected 1 to %d bytes", i + 1, MAX_STOP_BYTES);
    }
    const SamplerConfig *s = &r->sampling;
    if (!(s->temperature >= 0 && s->temperature <= 100)) return err_set(err, "temperature: expected 0 to 100");
    if (s->top_k < 0) return err_set(err, "top_k %d: expected 0 (off) or more", s->top_k);
    if (!(s->top_p > 0 && s->top_p <= 1)) return err_set(err, "top_p: expected a number in (0, 1]");
    if (!(s->repetition_penalty > 0 && s->repetition_penalty <= 100))
        return err_set(err, "repetition_penalty: expected a number in (0, 100]");
    if (r->eos_id < -1 || r->eos_id >= e->vocab) return err_set(err, "eos id %d outside the vocabulary", r->eos_id);
    return 0;
}

static Req *req_copy(Engine *e, const EngineRequest *r) {
    Req *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->r = *r;
    q->engine = e;
    q->seq = -1;
    q->reserved = r->n_prompt + r->max_tokens;
    q->tokens = malloc((size_t)q->reserved * sizeof *q->tokens);
    q->stop = r->n_stop ? calloc((size_t)r->n_stop, sizeof *q->stop) : NULL;
    if (!q->tokens || (r->n_stop && !q->stop)) {
        req_free(q);
        return NULL;
    }
    memcpy(q->tokens, r->prompt, (size_t)r->n_prompt * sizeof *q->tokens);
    q->r.prompt = q->tokens;
    for (int i = 0; i < r->n_stop; i++)
        if (!(q->stop[i] = strdup(r->stop[i]))) {
            req_free(q);
            return NULL;
        }
    q->r.stop = (const char *const *)q->stop;
    return q;
}

/* ---- create, submit, cancel, stats -------------------------------------------------------- */

Engine *engine_create(Model *m, const Tokenizer *tok, const EngineOptions *o, Error *err) {
    StepTarget t;
    model_step_target(m, &t);
    return engine_create_on(&t, tok, o, err);
}

Engine *engine_create_on(const StepTarget *t, const Tokenizer *tok, const EngineOptions *o, Error *err) {
    EngineOptions op = *o;
    if (op.max_running <= 0) op.max_running = 4;
    if (op.prefill_chunk <= 0) op.prefill_chunk = 128;
    if (op.step_tokens <= 0) op.step_tokens = t->capacity > op.max_running ? t->capacity : op.max_running;
    if (op.max_queue <= 0) op.max_queue = 1 << 30;
    if (op.max_running > MODEL_LOGIT_ROWS) {
        err_set(err, "%d requests at once: at most %d", op.max_running, MODEL_LOGIT_ROWS);
        return NULL;
    }
    if (op.step_tokens < op.max_running) {
        err_set(err, "%d tokens per step cannot hold a decode token for each of %d requests", op.step_tokens,
                op.max_running);
        return NULL;
    }
    Engine *e = calloc(1, sizeof *e);
    if (!e) {
        err_set(err, "out of memory");
        return NULL;
    }
    e->t = *t, e->tok = tok, e->o = op, e->vocab = t->vocab;
    e->next_id = 1;
    e->text_cap = tok ? 4 * tokenizer_max_token_bytes(tok) + 64 : 64;
    e->running = calloc((size_t)op.max_running, sizeof *e->running);
    e->steps = calloc((size_t)op.max_running, sizeof *e->steps);
    e->stepped = calloc((size_t)op.max_running, sizeof *e->stepped);
    e->row = malloc((size_t)e->vocab * sizeof *e->row);
    e->text = malloc(e->text_cap);
    if (!e->running || !e->steps || !e->stepped || !e->row || !e->text) {
        err_set(err, "out of memory");
        free(e->running), free(e->steps), free(e->stepped), free(e->row), free(e->text), free(e);
        return NULL;
    }
    /* The whole cache is the engine's: the default sequence gives its tokens back. */
    if (t->seq_len(t->self, 0) >= 0) t->seq_remove(t->self, 0, NULL);
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->work, NULL);
    e->st.kv_tokens_total = t->cache_tokens;
    return e;
}

int engine_submit(Engine *e, const EngineRequest *r, uint64_t *id, Error *err) {
    if (check_request(e, r, err)) return -1;
    pthread_mutex_lock(&e->lock);
    bool full = e->n_queued >= e->o.max_queue;
    pthread_mutex_unlock(&e->lock);
    if (full) return ENGINE_FULL;
    Req *q = req_copy(e, r);
    if (!q) return err_set(err, "out of memory");
    pthread_mutex_lock(&e->lock);
    if (e->n_queued >= e->o.max_queue) {
        pthread_mutex_unlock(&e->lock);
        req_free(q);
        return ENGINE_FULL;
    }
    q->id = e->next_id++;
    if (e->q_tail) e->q_tail->next = q;
    else e->q_head = q;
    e->q_tail = q;
    e->n_queued++;
    if (id) *id = q->id;
    pthread_cond_broadcast(&e->work);
    pthread_mutex_unlock(&e->lock);
    return ENGINE_OK;
}

void engine_cancel(Engine *e, uint64_t id) {
    pthread_mutex_lock(&e->lock);
    for (int i = 0; i < e->n_running; i++)
        if (e->running[i]->id == id) e->running[i]->cancelled = true;
    for (Req **p = &e->q_head, *prev = NULL; *p; prev = *p, p = &(*p)->next) {
        if ((*p)->id != id) continue;
        Req *q = *p;
        *p = q->next;
        if (e->q_tail == q) e->q_tail = prev;
        e->n_queued--;
        q->next = e->ended;
        e->ended = q;
        break;
    }
    pthread_cond_broadcast(&e->work);
    pthread_mutex_unlock(&e->lock);
}

/* Something for engine_step to do: requests waiting, running, or cancelled while waiting. */
static bool has_work(const Engine *e) { return e->n_queued || e->n_running || e->ended; }

void engine_wait(Engine *e, int ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&e->lock);
    while (!has_work(e))
        if (pthread_cond_timedwait(&e->work, &e->lock, &until) == ETIMEDOUT) break;
    pthread_mutex_unlock(&e->lock);
}

bool engine_busy(Engine *e) {
    pthread_mutex_lock(&e->lock);
    bool busy = has_work(e);
    pthread_mutex_unlock(&e->lock);
    return busy;
}

void engine_stats(Engine *e, EngineStats *s) {
    pthread_mutex_lock(&e->lock);
    *s = e->st;
    s->queued = e->n_queued;
    s->running = e->n_running;
    pthread_mutex_unlock(&e->lock);
}

/* ---- ending a request ------------------------------------------------------------------- */

/* Calls on_done and frees q (already out of the queue and the running set). `tail` is the
 * text still held back, released with it. */
static void deliver_done(Req *q, const char *reason, const char *error, const char *tail, size_t tail_len) {
    EngineDone d = {.finish_reason = reason, .prompt_tokens = q->r.n_prompt, .completion_tokens = q->n_out,
                    .text = tail ? tail : "", .text_len = tail_len, .text_offset = q->text_done, .error = error};
    if (q->r.on_done) q->r.on_done(q->r.ctx, &d);
    req_free(q);
}

/* Takes q out of the running set and gives its cache back; the caller holds the lock. */
static void unrun_locked(Engine *e, Req *q) {
    for (int i = 0; i < e->n_running; i++)
        if (e->running[i] == q) {
            memmove(e->running + i, e->running + i + 1, (size_t)(e->n_running - i - 1) * sizeof *e->running);
            e->n_running--;
            break;
        }
    if (q->seq >= 0) {
        e->t.seq_remove(e->t.self, q->seq, NULL);
        e->st.kv_tokens_used -= q->reserved;
        q->seq = -1;
    }
}

/* ---- text ------------------------------------------------------------------------------- */

static int hold_append(Req *q, const char *s, size_t n) {
    if (n == 0) return 0;
    if (q->hold_len + n > q->hold_cap) {
        size_t cap = 2 * (q->hold_len + n) + 64;
        char *h = realloc(q->hold, cap);
        if (!h) return -1;
        q->hold = h, q->hold_cap = cap;
    }
    memcpy(q->hold + q->hold_len, s, n);
    q->hold_len += n;
    return 0;
}

/* Ends a running request: what it still holds back of its text goes out with on_done
 * (nothing after a stop string; an incomplete character as U+FFFD). */
static void finish(Engine *e, Req *q, const char *reason, const char *error, bool keep_tail) {
    pthread_mutex_lock(&e->lock);
    unrun_locked(e, q);
    pthread_mutex_unlock(&e->lock);
    if (!keep_tail) q->hold_len = 0;
    else if (e->tok && q->started) {
        size_t k = token_stream_flush(&q->ts, e->text, e->text_cap);
        if (hold_append(q, e->text, k)) q->hold_len = 0;
    }
    deliver_done(q, reason, error, q->hold, q->hold_len);
}

/* Looks for the stop strings in the held text: returns true when one occurs (the first
 * occurrence; *release = the bytes before it), else false and *release = the bytes that can
 * no longer be the start of a stop string. */
static bool scan_stop(const Req *q, size_t *release) {
    size_t first = SIZE_MAX;
    for (int i = 0; i < q->r.n_stop; i++) {
        const char *p = memmem(q->hold, q->hold_len, q->stop[i], strlen(q->stop[i]));
        if (p && (size_t)(p - q->hold) < first) first = (size_t)(p - q->hold);
    }
    if (first != SIZE_MAX) {
        *release = first;
        return true;
    }
    size_t keep = 0;   /* the longest end of the held text that begins some stop string */
    for (int i = 0; i < q->r.n_stop; i++) {
        size_t len = strlen(q->stop[i]);
        for (size_t k = len - 1 < q->hold_len ? len - 1 : q->hold_len; k > keep; k--)
            if (memcmp(q->hold + q->hold_len - k, q->stop[i], k) == 0) {
                keep = k;
                break;
            }
    }
    *release = q->hold_len - keep;
    return false;
}

/* ---- logprobs ----------------------------------------------------------------------------- */

/* The top n of a host logits row x into e->top_ids / e->top_lp, as log softmax of the raw
 * logits (lse = log sum exp x). */
static void top_logprobs(Engine *e, const float *x, int n, double lse) {
    logits_top_candidates(x, e->vocab, 1.0f, n, e->top_ids, e->top_p);
    for (int j = 0; j < n; j++) e->top_lp[j] = (double)x[e->top_ids[j]] - lse;
}

/* A copy of a logits row in backend memory, in e->row (before the sampler changes it). */
static const float *row_copy(Engine *e, const float *row) {
    Backend *bk = e->t.bk;
    if (bk->host_memory) memcpy(e->row, row, (size_t)e->vocab * sizeof *e->row);
    else bk->download(bk, e->row, row, (size_t)e->vocab);
    return e->row;
}

/* ---- echo --------------------------------------------------------------------------------- */

/* Hands prompt token i to on_token; row (backend memory) holds the logits at position i - 1
 * when logprobs are asked for, else NULL. */
static void echo_token(Engine *e, Req *q, int i, float *row) {
    EngineToken t = {.id = q->tokens[i], .prompt = true, .index = i, .logprob = NAN};
    if (row && q->r.logprobs) {
        const float *x = e->t.bk->host_memory ? row : row_copy(e, row);
        double lse = logits_logsumexp(x, e->vocab, NULL);
        top_logprobs(e, x, q->r.logprobs, lse);
        t.logprob = (double)x[q->tokens[i]] - lse;
        t.n_top = q->r.logprobs, t.top_ids = e->top_ids, t.top_logprobs = e->top_lp;
    }
    size_t k = 0;
    bool bos = i == 0 && e->tok && tokenizer_uses_bos(e->tok) && q->tokens[0] == tokenizer_bos_id(e->tok);
    if (e->tok && !bos) k = token_stream_push(&q->ts, q->tokens[i], e->text, e->text_cap);
    t.text = e->text, t.text_len = k, t.text_offset = q->text_done;
    q->text_done += k;
    if (q->r.on_token) q->r.on_token(q->r.ctx, &t);
}

/* model_step's callback for a prompt chunk of a request echoing with logprobs: row t of the
 * step is position n_fed + t, which predicts prompt token n_fed + t + 1. */
static void echo_row(void *ctx, int t, float *row) {
    Req *q = ctx;
    Engine *e = q->engine;
    int i = q->n_fed + t + 1;
    if (i < q->r.n_prompt) echo_token(e, q, i, row);
}

/* ---- one generated token ------------------------------------------------------------------ */

/* Samples the next token of q from its logits row, hands it on, and ends q when it is done. */
static void take_token(Engine *e, Req *q, float *row) {
    EngineToken t = {.logprob = NAN};
    int pos = q->r.n_prompt + q->n_gen;
    /* logprobs are of the raw logits: read before the sampler applies its penalty */
    double lse = NAN;
    if (q->r.logprobs) {
        row_copy(e, row);
        lse = logits_logsumexp(e->row, e->vocab, NULL);
        top_logprobs(e, e->row, q->r.logprobs, lse);
    }
    int32_t id = sampler_pick(&q->sampler, e->t.bk, row, q->tokens, (size_t)pos);
    if (id < 0) {
        Error err;
        err_set(&err, "the logits for the token at position %d (counting from 0; the %s token) hold a NaN or an "
                "infinity: the forward pass overflowed, or the weights are not finite; no token was chosen from them",
                pos, q->n_gen == 0 ? "first new" : "next");
        finish(e, q, "error", err.msg, true);
        return;
    }
    q->tokens[pos] = id;
    q->n_gen++;
    pthread_mutex_lock(&e->lock);
    e->st.tokens_out++;
    pthread_mutex_unlock(&e->lock);
    if (id == q->r.eos_id && !q->r.ignore_eos) {
        finish(e, q, "stop", NULL, true);
        return;
    }
    if (q->r.logprobs) {
        t.logprob = (double)e->row[id] - lse;
        t.n_top = q->r.logprobs, t.top_ids = e->top_ids, t.top_logprobs = e->top_lp;
    }
    t.id = id;
    t.index = q->n_gen - 1;
    q->n_out++;
    bool stopped = false;
    size_t release = 0;
    if (e->tok) {
        size_t k = token_stream_push(&q->ts, id, e->text, e->text_cap);
        if (hold_append(q, e->text, k)) {
            finish(e, q, "error", "out of memory", false);
            return;
        }
        if (q->r.n_stop) stopped = scan_stop(q, &release);
        else release = q->hold_len;
    }
    t.text = q->hold ? q->hold : "", t.text_len = release, t.text_offset = q->text_done;
    if (q->r.on_token) q->r.on_token(q->r.ctx, &t);
    q->text_done += release;
    if (release) memmove(q->hold, q->hold + release, q->hold_len - release);
    q->hold_len -= release;
    if (stopped) {
        q->hold_len = 0;
        finish(e, q, "stop", NULL, false);
    } else if (q->n_gen == q->r.max_tokens) {
        finish(e, q, "length", NULL, true);
    }
}

/* ---- the step ----------------------------------------------------------------------------- */

/* Sets up a request that just started: its sampler and text stream; echoes what needs no
 * logits (the first prompt token, or the whole prompt without logprobs). */
static int start(Engine *e, Req *q) {
    if (sampler_init(&q->sampler, &q->r.sampling, e->vocab)) return -1;
    q->started = true;
    if (e->tok) token_stream_init(&q->ts, e->tok);
    if (q->r.echo)
        for (int i = 0; i < (q->r.logprobs ? 1 : q->r.n_prompt); i++) echo_token(e, q, i, NULL);
    return 0;
}

int engine_step(Engine *e, Error *err) {
    /* Under the lock: drop cancelled requests, start waiting ones that fit. */
    Req *gone = NULL, *fresh[MODEL_LOGIT_ROWS];
    int n_fresh = 0;
    pthread_mutex_lock(&e->lock);
    for (int i = 0; i < e->n_running;) {
        Req *q = e->running[i];
        if (!q->cancelled) {
            i++;
            continue;
        }
        unrun_locked(e, q);
        q->next = gone;
        gone = q;
    }
    while (e->q_head && e->n_running < e->o.max_running) {
        Req *q = e->q_head;
        if (e->t.seq_add(e->t.self, q->reserved, &q->seq, NULL)) break; /* waits until enough is free */
        e->q_head = q->next;
        if (!e->q_head) e->q_tail = NULL;
        e->n_queued--;
        q->next = NULL;
        e->running[e->n_running++] = q;
        e->st.kv_tokens_used += q->reserved;
        fresh[n_fresh++] = q;
    }
    Req *ended = e->ended;
    e->ended = NULL;
    pthread_mutex_unlock(&e->lock);

    while (gone) {
        Req *q = gone;
        gone = q->next;
        deliver_done(q, "cancelled", NULL, NULL, 0);
    }
    while (ended) {
        Req *q = ended;
        ended = q->next;
        deliver_done(q, "cancelled", NULL, NULL, 0);
    }
    for (int i = 0; i < n_fresh; i++)
        if (start(e, fresh[i])) finish(e, fresh[i], "error", "out of memory", false);

    /* The step: a decode token for each generating request, then prompt chunks. */
    int n = 0, budget = e->o.step_tokens, tokens_in = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < e->n_running; i++) {
            Req *q = e->running[i];
            bool decoding = q->n_fed >= q->r.n_prompt;
            if (decoding != (pass == 0)) continue;
            int T = 1;
            if (!decoding) {
                T = q->r.n_prompt - q->n_fed;
                if (T > e->o.prefill_chunk) T = e->o.prefill_chunk;
                if (T > budget) T = budget;
                if (T <= 0) continue;
                tokens_in += T;
            }
            bool rows = !decoding && q->r.echo && q->r.logprobs;
            e->steps[n] = (SeqStep){.seq = q->seq, .ids = q->tokens + q->n_fed, .T = T,
                                    .on_logits = rows ? echo_row : NULL, .logits_ctx = q};
            e->stepped[n++] = q;
            budget -= T;
        }
    if (n == 0) return 0;
    if (e->t.step(e->t.self, e->steps, n, err)) {
        for (int i = 0; i < n; i++) finish(e, e->stepped[i], "error", err->msg, false);
        return -1;
    }
    pthread_mutex_lock(&e->lock);
    e->st.steps++;
    e->st.tokens_in += tokens_in;
    e->st.last_batch_seqs = n;
    e->st.last_batch_tokens = e->o.step_tokens - budget;
    pthread_mutex_unlock(&e->lock);
    for (int i = 0; i < n; i++) {
        Req *q = e->stepped[i];
        q->n_fed += e->steps[i].T;
        if (q->n_fed < q->r.n_prompt) continue;               /* more prompt to read */
        if (q->r.max_tokens == 0) finish(e, q, "length", NULL, true);
        else take_token(e, q, e->t.step_logits(e->t.self, i));
    }
    return n;
}

void engine_free(Engine *e) {
    if (!e) return;
    while (e->n_running) {
        Req *q = e->running[0];
        unrun_locked(e, q);
        deliver_done(q, "cancelled", NULL, NULL, 0);
    }
    for (Req *lists[2] = {e->q_head, e->ended}, **l = lists; l < lists + 2; l++)
        while (*l) {
            Req *q = *l;
            *l = q->next;
            deliver_done(q, "cancelled", NULL, NULL, 0);
        }
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->work);
    free(e->running), free(e->steps), free(e->stepped), free(e->row), free(e->text);
    free(e);
}
