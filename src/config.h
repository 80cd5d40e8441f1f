/* config.h — the numbers that define a network, read from config.json.
 *
 * config_load() finds the architecture by "model_type" in the registry (arch.h), lets
 * its table read the family's fields (names, aliases and defaults: docs/MODELS.md), and
 * reads what every family shares: special token ids, torch_dtype, and the bitsandbytes
 * "quantization_config" block of an 8-bit checkpoint (docs/MODELS.md). Every dimension is
 * checked to be positive, not absurdly large (so that later size computations cannot
 * overflow) and consistent (heads divide hidden), and every error names the field. */
#ifndef LLMINT8_CONFIG_H
#define LLMINT8_CONFIG_H

#include <stdbool.h>

#include "error.h"

/* An architecture's place in arch.c's registry; the table itself is arch_of(cfg). The
 * first two are named for tests and bench; a new architecture needs no name here. */
typedef enum Arch { ARCH_OPT, ARCH_BLOOM } Arch;

typedef enum Activation { ACT_RELU, ACT_GELU_TANH } Activation;

/* llm_int8_skip_modules: at most this many entries of at most this many bytes (each a
 * module name: real configs list a handful). */
#define CONFIG_MAX_INT8_SKIP 64
#define CONFIG_MAX_INT8_SKIP_LEN 128

typedef struct ModelConfig {
    Arch arch;             /* which table of arch.h describes the network */
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
    /* llm_int8_skip_modules: the modules transformers left as float nn.Linear (matched by
     * config_int8_skips(), docs/MODELS.md "8-bit checkpoints"); none when absent or null. */
    int n_int8_skip;
    /* llm_int8_has_fp16_weight, llm_int8_enable_fp32_cpu_offload: either one explains float
     * weights of projections that are not skipped (quantized on load). */
    bool int8_has_fp16_weight, int8_fp32_cpu_offload;
    char int8_skip[CONFIG_MAX_INT8_SKIP][CONFIG_MAX_INT8_SKIP_LEN];

    char torch_dtype[32];          /* as written, or "" */
} ModelConfig;

/* Whether the projection with this short module name ("decoder.layers.0.fc1") is one that
 * llm_int8_skip_modules kept out of 8-bit: an entry equal to the full name (the arch's
 * prefix + short name), to its last dotted components, or to a leading or inner run of
 * whole components ("decoder.layers.0" skips every projection of layer 0). */
bool config_int8_skips(const ModelConfig *cfg, const char *short_name);

/* Parses MODEL_DIR/config.json (path given in full). */
int config_load(const char *path, ModelConfig *cfg, Error *err);

/* The model_type of an architecture: "opt" or "bloom". */
const char *arch_name(Arch a);

/* ---- readers for the architectures' parse_config (arch_*.c) ------------------------
 * Each reports errors naming the file and the field. A field given as a NAMES list takes
 * the first spelling present and non-null; two present with different values is an error. */

struct cJSON;
typedef struct ConfigReader {
    const char *path;          /* for messages */
    const struct cJSON *root;  /* the object read */
    Error *err;
} ConfigReader;

#define CONFIG_NAMES(...) ((const char *const[]){__VA_ARGS__, NULL})

/* An integer in [lo, hi]; absent: an error when required, else dflt. */
int config_get_int(const ConfigReader *r, const char *const *names, bool required, long dflt, long lo, long hi,
                   int *out);
/* true/false; absent or null: dflt. */
int config_get_bool(const ConfigReader *r, const char *name, bool dflt, bool *out);
/* A string, or NULL when absent or null (pointing into r->root). */
int config_get_string(const ConfigReader *r, const char *name, const char **out);
/* A number strictly between lo and hi; absent or null: dflt. */
int config_get_float(const ConfigReader *r, const char *name, float dflt, double lo, double hi, float *out);
/* That cfg->n_heads divides cfg->hidden (the fields named as in this config). */
int config_check_heads(const ConfigReader *r, const ModelConfig *cfg, const char *heads_name,
                       const char *hidden_name);

#endif
