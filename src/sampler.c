#include "sampler.h"

#include <math.h>
#include <stdlib.h>

int32_t argmax_f32(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int sampler_init(Sampler *s, const SamplerConfig *cfg, int vocab) {
    s->cfg = *cfg;
    s->rng = cfg->seed ? cfg->seed : 0x9e3779b97f4a7c15ull; /* xorshift state must not be 0 */
    s->vocab = vocab;
    s->probs = malloc((size_t)vocab * sizeof *s->probs);
    s->order = malloc((size_t)vocab * sizeof *s->order);
    if (!s->probs || !s->order) {
        sampler_free(s);
        return -1;
    }
    return 0;
}

void sampler_free(Sampler *s) {
    free(s->probs);
    free(s->order);
    s->probs = NULL;
    s->order = NULL;
}

/* xorshift64* (Vigna): 64-bit state, good enough for sampling; returns a float in [0,1). */
static float random_unit(Sampler *s) {
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (float)((s->rng * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

static const float *sort_probs; /* qsort has no context argument; sampling is single-threaded */
static int by_prob_desc(const void *a, const void *b) {
    float pa = sort_probs[*(const int32_t *)a], pb = sort_probs[*(const int32_t *)b];
    return (pa < pb) - (pa > pb);
}

int32_t sampler_next(Sampler *s, float *logits, const int32_t *history, size_t n_history) {
    const SamplerConfig *c = &s->cfg;
    const int V = s->vocab;

    /* Repetition penalty (CTRL paper, as HF applies it): make seen tokens less likely. */
    if (c->repetition_penalty != 1.0f) {
        for (size_t i = 0; i < n_history; i++) {
            int32_t id = history[i];
            if (id < 0 || id >= V) continue;
            float *l = &logits[id];
            /* A token seen twice is penalised once (HF gathers the unique ids). */
            bool seen = false;
            for (size_t j = 0; j < i && !seen; j++) seen = history[j] == id;
            if (!seen) *l = *l > 0 ? *l / c->repetition_penalty : *l * c->repetition_penalty;
        }
    }
    if (c->greedy || c->temperature <= 0.0f) return argmax_f32(logits, V);

    /* Softmax at the given temperature. */
    float max = logits[argmax_f32(logits, V)];
    double sum = 0;
    for (int i = 0; i < V; i++) {
        s->probs[i] = expf((logits[i] - max) / c->temperature);
        sum += s->probs[i];
    }
    for (int i = 0; i < V; i++) s->probs[i] = (float)(s->probs[i] / sum);

    /* Candidates in order of probability; top-k and top-p cut the list. */
    int n = V;
    for (int i = 0; i < V; i++) s->order[i] = i;
    if ((c->top_k > 0 && c->top_k < V) || c->top_p < 1.0f) {
        sort_probs = s->probs;
        qsort(s->order, (size_t)V, sizeof *s->order, by_prob_desc);
        if (c->top_k > 0 && c->top_k < n) n = c->top_k;
        if (c->top_p < 1.0f) {
            /* Keep the smallest prefix whose mass reaches top_p (always at least one token). */
            double mass = 0;
            for (int i = 0; i < n; i++) {
                mass += s->probs[s->order[i]];
                if (mass >= c->top_p) {
                    n = i + 1;
                    break;
                }
            }
        }
    }
    double kept = 0;
    for (int i = 0; i < n; i++) kept += s->probs[s->order[i]];
    double r = random_unit(s) * kept, acc = 0;
    for (int i = 0; i < n; i++) {
        acc += s->probs[s->order[i]];
        if (r < acc) return s->order[i];
    }
    return s->order[n - 1];
}
