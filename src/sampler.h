/* sampler.h — picking the next token from logits.
 *
 * The order of the steps is Hugging Face's (generate's logits processors then warpers):
 * repetition penalty, temperature, top-k, top-p, then a draw from the renormalised
 * distribution. Greedy (or temperature 0) takes the argmax. The random generator is a
 * seeded xorshift64*, so a seed reproduces a run.
 *
 * sampler_pick works on logits in backend memory through the backend's read-out
 * operations, so only the candidates come back to the host (on a GPU: a few kilobytes
 * instead of the whole row); sampler_next is the same choice on a host row. Both use
 * logits_top_candidates' order (probability, then the lower id), so on the CPU backend
 * they pick the same token for the same seed. */
#ifndef LLMINT8_SAMPLER_H
#define LLMINT8_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "logits.h"

typedef struct SamplerConfig {
    bool greedy;
    float temperature;          /* > 0; 0 means greedy */
    int top_k;                  /* 0 = off */
    float top_p;                /* 1 = off */
    float repetition_penalty;   /* 1 = off; HF: logit/p if > 0 else logit*p for seen tokens */
    uint64_t seed;
} SamplerConfig;

typedef struct Sampler {
    SamplerConfig cfg;
    uint64_t rng;
    int vocab;
    float *probs;               /* [vocab] candidates' probabilities */
    int32_t *order;             /* [vocab] candidate ids, most probable first; also the distinct seen ids */
    float *row;                 /* [vocab] a downloaded row of logits (sampler_pick's fallback) */
    unsigned char *seen;        /* [vocab] marks while collecting distinct history ids; all 0 between calls */
} Sampler;

int sampler_init(Sampler *s, const SamplerConfig *cfg, int vocab);   /* -1 on out-of-memory */
void sampler_free(Sampler *s);

/* Both choosers first check the row: one whose log-sum-exp is not finite — it holds a NaN
 * or +infinity, or nothing but -infinity — has no distribution to draw from. A forward pass
 * gives such a row only when it overflowed (or its weights were not finite), and then they
 * return -1, which the caller reports as an error instead of emitting a token. (A -infinity
 * among finite logits is a probability of 0 and is fine.) */

/* Chooses the next id from a host row, or -1 (see above). logits[vocab] is modified (the
 * penalty). history holds the ids seen so far (prompt and generated), used by the
 * repetition penalty. */
int32_t sampler_next(Sampler *s, float *logits, const int32_t *history, size_t n_history);

/* The same choice from a row in backend memory (e.g. model_forward_last's), or -1. logits
 * is modified (the penalty). The check costs one token_nll read-out over the row. Only
 * candidates are downloaded, unless the configuration needs the whole distribution (plain
 * temperature sampling, or top-p alone with a nucleus wider than BACKEND_MAX_CANDIDATES):
 * then the row is downloaded once. */
int32_t sampler_pick(Sampler *s, Backend *bk, float *logits, const int32_t *history, size_t n_history);

#endif
