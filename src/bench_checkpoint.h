/* bench_checkpoint.h — the synthetic model `llmint8 bench` runs: random F16 weights of a real
 * model's shape, written as a checkpoint (config.json + model.safetensors) that the normal
 * loader opens, so the benchmark measures the same code path as a real model.
 *
 * The weights are N(0, BENCH_WEIGHT_STD) like the real initialisation, biases 0, LayerNorm
 * weights 1 and biases 0, except that every LayerNorm feeding projections has weight
 * BENCH_LN_OUTLIER_GAIN in a few chosen hidden dimensions: the normalised activations there
 * are ~N(0, gain^2), mostly above tau = 6, as the emergent outlier features of real models
 * are. The stream of random numbers is fixed, so every run writes the same checkpoint. */
#ifndef LLMINT8_BENCH_CHECKPOINT_H
#define LLMINT8_BENCH_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "checkpoint.h"
#include "config.h"
#include "error.h"

#define BENCH_OPT_POSITIONS 2048      /* max_position_embeddings of every OPT */
#define BENCH_WEIGHT_STD 0.02         /* std of the random weights */
#define BENCH_LN_OUTLIER_GAIN 30.0f   /* LayerNorm weight in the outlier dimensions */

/* A model's dimensions, as its config.json states them. */
typedef struct BenchShape {
    const char *name;
    Arch arch;
    int hidden, layers, heads, ffn, vocab;
    int proj_dim;        /* OPT word_embed_proj_dim when it differs from hidden (opt-350m), else 0 */
    bool post_ln;        /* OPT do_layer_norm_before = false (opt-350m) */
} BenchShape;

/* Writing billions of normal F16 values one Box-Muller at a time would take longer than the
 * benchmark; instead each value is one of 65536 pre-drawn N(0, std) halves, picked by 16
 * random bits of splitmix64 (rng.h; *rng is its state). */
typedef struct NormalTable {
    uint16_t v[65536];
} NormalTable;

void normal_table_init(NormalTable *t, double std, uint64_t *rng);
void fill_normal_f16(const NormalTable *t, uint64_t *rng, uint16_t *out, size_t n);

/* Writes the synthetic checkpoint of shape s, with the LayerNorm gain in the n_gain_dims
 * hidden dimensions gain_dims[], to a new directory under tmpdir (NULL: $TMPDIR, else /tmp),
 * opens it as *ck and deletes the files at once: the mapping keeps the data, and nothing is
 * left behind (an interrupt while writing removes the files too). Refuses, before writing,
 * a model whose F16 bytes exceed 80% of the memory or the free space of tmpdir.
 * verbose: progress lines on stderr. */
int bench_checkpoint_create(const BenchShape *s, const int32_t *gain_dims, int n_gain_dims, const char *tmpdir,
                            bool verbose, Checkpoint **ck, Error *err);

#endif
