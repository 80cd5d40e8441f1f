/* config.h — the numbers that define a network, read from config.json.
 *
 * Covers OPT (model_type "opt") and BLOOM ("bloom") with the field names and
 * aliases of docs/SPEC.md §3, the defaults for fields older configs lack, and the
 * bitsandbytes "quantization_config" block of an 8-bit checkpoint (§2.3).
 * config_load() checks that every dimension is positive, not absurdly large
 * (so that later size computations cannot overflow) and consistent (heads
 * divide hidden), and names the field in every error. */
#ifndef LLMINT8_CONFIG_H
#define LLMINT8_CONFIG_H

#include <stdbool.h>

#include "error.h"

typedef enum Arch { ARCH_OPT, ARCH_BLOOM } Arch;

typedef enum Activation { ACT_RELU, ACT_GELU_TANH } Activation;

typedef struct ModelConfig {
    Arch arch;
    int vocab_size;
    int hidden;            /* hidden_size (OPT d_model, BLOOM n_embed) */
    int n_layers;
    int n_heads;
    int head_dim;          /* hidden / n_heads */
    int ffn_dim;           /* OPT ffn_dim, BLOOM 4*hidden */
    int max_positions;     /* OPT max_position_embeddings; BLOOM: 0 (ALiBi, no table) */
    int word_embed_proj_dim; /* OPT: equals hidden unless project_in/out exist; BLOOM: hidden */
    Activation activation; /* OPT: relu (also accepts "gelu" variants); BLOOM: gelu_tanh */
    float ln_eps;          /* 1e-5 for both */

    /* OPT */
    bool do_layer_norm_before;     /* false = post-LN (opt-350m) */
    bool remove_final_layer_norm;
    bool enable_bias;
    bool ln_elementwise_affine;

    /* BLOOM */
    bool residual_post_ln;         /* apply_residual_connection_post_layernorm */

    int bos_id, eos_id, pad_id;    /* -1 when absent */

    /* 8-bit checkpoint (quantization_config with quant_method "bitsandbytes" and load_in_8bit) */
    bool load_in_8bit;
    float int8_threshold;          /* llm_int8_threshold, default 6.0 */

    char torch_dtype[32];          /* as written, or "" */
} ModelConfig;

/* Parses MODEL_DIR/config.json (path given in full). */
int config_load(const char *path, ModelConfig *cfg, Error *err);

/* "opt" or "bloom". */
const char *arch_name(Arch a);

#endif
