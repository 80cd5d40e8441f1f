/* sampler.c — the next token: penalty, greedy or a draw from the top candidates. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

#include "rng.h"

int sampler_init(Sampler *s, const SamplerConfig *cfg, int vocab) {
    s->cfg = *cfg;
    s->rng = cfg->seed ? cfg->seed : 0x9e3779b97f4a7c15ull; /* xorshift state must not be 0 */
    s->vocab = vocab;
    s->probs = malloc((size_t)vocab * sizeof *s->probs);
    s->order = malloc((size_t)vocab * sizeof *s->order);
    s->row = malloc((size_t)vocab * sizeof *s->row);
    s->seen = calloc((size_t)vocab, 1);
    if (!s->probs || !s->order || !s->row || !s->seen) {
        sampler_free(s);
        return -1;
    }
    return 0;
}

void sampler_free(Sampler *s) {
    free(s->probs), free(s->order), free(s->row), free(s->seen);
    s->probs = NULL, s->order = NULL, s->row = NULL, s->seen = NULL;
}

/* A float in [0,1) from the top 24 bits of xorshift64* (rng.h): good enough for sampling. */
static float random_unit(Sampler *s) { return (float)(xorshift64star_next(&s->rng) >> 40) / 16777216.0f; }

/* The distinct ids of the history, first occurrence first, into s->order; returns how many.
 * HF penalises a token once however often it was seen. */
static int distinct_history(Sampler *s, const int32_t *history, size_t n_history) {
    int n = 0;
    for (size_t i = 0; i < n_history; i++) {
        int32_t id = history[i];
        if (id < 0 || id >= s->vocab || s->seen[id]) continue;
        s->seen[id] = 1;
        s->order[n++] = id;
    }
    for (int i = 0; i < n; i++) s->seen[s->order[i]] = 0;
    return n;
}

/* Draws from candidates ids[0..n) with probabilities probs (most probable first). top-p
 * keeps the smallest prefix whose mass reaches top_p (at least one token); the draw is
 * from that prefix, renormalised. */
static int32_t draw(Sampler *s, const int32_t *ids, const float *probs, int n) {
    if (s->cfg.top_p < 1.0f) {
        double mass = 0;
        for (int i = 0; i < n; i++) {
            mass += probs[i];
            if (mass >= s->cfg.top_p) {
                n = i + 1;
                break;
            }
        }
    }
    double kept = 0;
    for (int i = 0; i < n; i++) kept += probs[i];
    double r = random_unit(s) * kept, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += probs[i];
        if (r < acc) return ids[i];
    }
    return ids[n - 1];
}

/* Everything after the penalty, on a host row. */
static int32_t choose_on_host(Sampler *s, const float *logits) {
    const SamplerConfig *c = &s->cfg;
    const int V = s->vocab;
    if (c->greedy || c->temperature <= 0.0f) return argmax_f32(logits, V);
    if ((c->top_k > 0 && c->top_k < V) || c->top_p < 1.0f) {
        int k = c->top_k > 0 && c->top_k < V ? c->top_k : V;
        logits_top_candidates(logits, V, c->temperature, k, s->order, s->probs);
        return draw(s, s->order, s->probs, k);
    }
    /* Plain temperature sampling: every token is a candidate, in id order. */
    float max = logits[argmax_f32(logits, V)];
    double sum = 0;
    for (int i = 0; i < V; i++) {
        s->probs[i] = expf((logits[i] - max) / c->temperature);
        s->order[i] = i;
        sum += s->probs[i];
    }
    for (int i = 0; i < V; i++) s->probs[i] = (float)(s->probs[i] / sum);
    return draw(s, s->order, s->probs, V);
}

int32_t sampler_next(Sampler *s, float *logits, const int32_t *history, size_t n_history) {
    /* -log softmax at the argmax = log(sum_i exp(x_i - max)): finite for any usable row */
    if (!isfinite(logits_nll(logits, s->vocab, argmax_f32(logits, s->vocab)))) return -1;
    const float p = s->cfg.repetition_penalty;
    if (p != 1.0f) {
        int n = distinct_history(s, history, n_history);
        for (int i = 0; i < n; i++) {
            float *l = &logits[s->order[i]];
            *l = *l > 0 ? *l / p : *l * p;
        }
    }
    return choose_on_host(s, logits);
}

int32_t sampler_pick(Sampler *s, Backend *bk, float *logits, const int32_t *history, size_t n_history) {
    const SamplerConfig *c = &s->cfg;
    const int V = s->vocab;
    /* The row check, as in sampler_next: the NLL of the argmax is log(sum_i exp(x_i - max)). */
    int32_t top = bk->argmax(bk, logits, V);
    double nll_top;
    bk->token_nll(bk, logits, 1, V, &top, &nll_top);
    if (!isfinite(nll_top)) return -1;
    const bool greedy = c->greedy || c->temperature <= 0.0f;
    if (c->repetition_penalty != 1.0f) {
        int n = distinct_history(s, history, n_history);
        if (n) {
            bk->penalize(bk, logits, s->order, n, c->repetition_penalty);
            if (greedy) top = bk->argmax(bk, logits, V);
        }
    }
    if (greedy) return top;

    /* The same candidates as choose_on_host, when the backend can give them all. */
    if ((c->top_k > 0 && c->top_k < V) || c->top_p < 1.0f) {
        int k = c->top_k > 0 && c->top_k < V ? c->top_k : V;
        if (k <= BACKEND_MAX_CANDIDATES) {
            bk->top_candidates(bk, logits, V, c->temperature, k, s->order, s->probs);
            return draw(s, s->order, s->probs, k);
        }
        if (c->top_p < 1.0f) {
            /* The nucleus is usually a few dozen tokens: if the first candidates already
             * reach top_p, the cut falls inside them and the rest are never looked at. */
            k = BACKEND_MAX_CANDIDATES;
            bk->top_candidates(bk, logits, V, c->temperature, k, s->order, s->probs);
            double mass = 0;
            for (int i = 0; i < k; i++) mass += s->probs[i];
            if (mass >= c->top_p) return draw(s, s->order, s->probs, k);
        }
    }
    /* The whole distribution is needed: bring the row over once. */
    bk->download(bk, s->row, logits, (size_t)V);
    return choose_on_host(s, s->row);
}
