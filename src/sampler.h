/* sampler.h — picking the next token from logits.
 *
 * The order of the steps is Hugging Face's (generate's logits processors then warpers):
 * repetition penalty, temperature, top-k, top-p, then a draw from the renormalised
 * distribution. Greedy (or temperature 0) takes the argmax. The random generator is a
 * seeded xorshift64*, so a seed reproduces a run. */
#ifndef LLMINT8_SAMPLER_H
#define LLMINT8_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
    float *probs;               /* [vocab] scratch */
    int32_t *order;             /* [vocab] scratch: candidate ids sorted by probability */
} Sampler;

int sampler_init(Sampler *s, const SamplerConfig *cfg, int vocab);   /* -1 on out-of-memory */
void sampler_free(Sampler *s);

/* Chooses the next id. logits[vocab] is modified (penalties, temperature). history holds
 * the ids seen so far (prompt and generated), used by the repetition penalty. */
int32_t sampler_next(Sampler *s, float *logits, const int32_t *history, size_t n_history);

/* Index of the largest value (the first one on ties, as torch.argmax). */
int32_t argmax_f32(const float *x, int n);

#endif
