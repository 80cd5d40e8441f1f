/* arch.h — what an architecture is: one table per network family (OPT, BLOOM, ...).
 *
 * Everything llmint8 knows about a family lives in its file, arch_NAME.c, as one
 * `Architecture` table: its config.json fields, the checkpoint's tensor names and shapes
 * with the role of each tensor, its native context, and its forward pass in stages.
 * The rest of the program walks these tables and never names a family:
 *   config.c      finds the table by config.json's "model_type" (arch_find) and lets it
 *                 read its own fields (parse_config);
 *   checkpoint.c  strips the table's prefix from stored names and labels shapes with its
 *                 dim_labels in error messages;
 *   model.c       loads the tensors of arch_tensors() and runs embed → layer × N → finish;
 *   convert, info read arch_tensors() to know what to quantize and what to count;
 *   bench         writes a synthetic checkpoint: arch_config_defaults() + its dimensions,
 *                 write_config() for config.json, arch_tensors() for the tensors.
 * docs/MODELS.md describes the two families we have and lists the files a new one touches. */
#ifndef LLMINT8_ARCH_H
#define LLMINT8_ARCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "error.h"

struct cJSON;
struct Checkpoint;
struct Model;

/* ---- tensors ------------------------------------------------------------------------ */

/* What a tensor is for. Every entry of a table is a module; the stored tensors are its
 * NAME.weight (and NAME.bias) as below. */
typedef enum TensorRole {
    /* nn.Linear: NAME.weight [rows = out, cols = in], plus NAME.bias [rows] when `bias`.
     * Quantized to int8 under LLM.int8(). In an 8-bit checkpoint NAME.weight is I8 and
     * comes with NAME.SCB F32 [rows] and an optional NAME.weight_format U8 scalar. */
    TENSOR_PROJECTION,
    /* A 16-bit table NAME.weight [rows, cols] kept as stored: token embeddings (the first
     * such entry, also the tied lm_head) and learned positions. */
    TENSOR_EMBEDDING,
    /* LayerNorm: NAME.weight and NAME.bias, both [rows], float32 on the backend. Absent
     * (and not listed) when config.json says layer_norm_elementwise_affine = false. */
    TENSOR_NORM,
    /* The output matrix NAME.weight [rows = vocab, cols]: optional. Absent, or stored with
     * the same bytes as the token embedding, means tied (the embedding is used). It sits
     * outside the base model, so its stored name never carries the prefix. */
    TENSOR_LM_HEAD,
} TensorRole;

/* Sizes a shape can be made of, computed from a ModelConfig by arch_dim(). */
typedef enum ArchDim {
    DIM_NONE,        /* 0: the second dimension of a vector */
    DIM_VOCAB,       /* vocab_size */
    DIM_HIDDEN,      /* hidden */
    DIM_FFN,         /* ffn_dim */
    DIM_QKV,         /* 3 * hidden (a fused query/key/value projection) */
    DIM_EMBED,       /* word_embed_proj_dim (the embedding width; = hidden unless projected) */
    DIM_POSITIONS,   /* max_positions + position_offset (a learned position table's rows) */
    DIM_COUNT
} ArchDim;

/* One entry of an architecture's tensor table, as written in arch_NAME.c. */
typedef struct TensorTemplate {
    const char *name;       /* short module name, without prefix and ".weight"; per-layer
                             * entries contain one "%d" for the layer index */
    TensorRole role;
    bool per_layer;         /* repeated for layers 0..n_layers-1 (entries contiguous) */
    ArchDim rows, cols;     /* NORM: rows only */
    bool bias;              /* PROJECTION: has NAME.bias when the config's enable_bias */
    bool (*present)(const ModelConfig *c);  /* NULL: always; else whether the config has it */
    size_t field;           /* for model.c: offsetof the destination in Layer (per_layer) or
                             * ModelWeights (model_internal.h) */
} TensorTemplate;

/* One module of a checkpoint for a given config: a template with the layer, the shape
 * and the config's conditions applied. */
typedef struct ArchTensor {
    char name[96];          /* short module name, e.g. "decoder.layers.3.fc1" */
    TensorRole role;
    int layer;              /* 0..n_layers-1, or -1 outside the layers */
    int64_t rows, cols;     /* NAME.weight [rows, cols]; NORM: [rows] and cols = 0 */
    bool bias;              /* PROJECTION: NAME.bias [rows] is stored too */
    bool optional;          /* may be absent from the checkpoint (TENSOR_LM_HEAD) */
    size_t field;           /* the template's */
} ArchTensor;

/* ---- the table -------------------------------------------------------------------- */

typedef struct Architecture {
    const char *model_type;     /* config.json "model_type": "opt" */
    /* The base model's attribute in *ForCausalLM, "model." or "transformer.": some
     * checkpoints store it in front of every name and some do not (lm_head aside). */
    const char *prefix;
    /* The config.json field each ArchDim comes from, for error messages ("ffn_dim",
     * "4*hidden_size"); NULL for dimensions the family does not use. */
    const char *dim_labels[DIM_COUNT];
    int position_offset;        /* token at position p reads row p + offset of the positions
                                 * table (OPT: 2); 0 without learned positions */
    int trained_context;        /* context when config.json gives none (ALiBi: 2048); unused
                                 * when max_positions > 0 */

    /* The checkpoint's modules, in the order convert writes them. */
    const TensorTemplate *tensors;
    size_t n_tensors;

    /* config.json: reads the family's fields into cfg (the dimensions, flags, ln_eps,
     * activation; ffn_dim, max_positions and word_embed_proj_dim even where implied),
     * with config.c's readers; returns -1 with the error in r->err. */
    int (*parse_config)(const ConfigReader *r, ModelConfig *cfg);
    /* HF's defaults for every field parse_config sets (the config class's __init__). */
    void (*config_defaults)(ModelConfig *cfg);
    /* The inverse of parse_config: adds model_type, architectures, the dimensions, the
     * flags and the special token ids (those >= 0) of cfg to the JSON object `obj`.
     * Returns -1 when out of memory. (torch_dtype and quantization_config are the
     * caller's.) */
    int (*write_config)(const ModelConfig *cfg, struct cJSON *obj);
    /* One line for `info`: "pre-LayerNorm, 2048 positions". */
    void (*summary)(const ModelConfig *cfg, char *buf, size_t cap);

    /* Reads the weights into m (model_load_tensors(), then anything derived, such as
     * ALiBi slopes). */
    int (*load)(struct Model *m, const struct Checkpoint *ck, Error *err);
    /* The forward pass in stages, for T <= capacity tokens at positions n_past..: embed
     * writes the residual stream; layer runs one layer on it (and appends to that layer's
     * KV cache); finish returns the final hidden states [T, word_embed_proj_dim] (a backend
     * buffer), ready for the lm_head. model.c runs embed, layer for every layer, finish. */
    void (*embed)(struct Model *m, const int32_t *ids, int T);
    void (*layer)(struct Model *m, int layer, int T);
    const float *(*finish)(struct Model *m, int T);
} Architecture;

/* ---- the registry (arch.c) -------------------------------------------------------- */

/* The table for a config.json model_type, or NULL. */
const Architecture *arch_find(const char *model_type);
/* The table of a parsed config (cfg->arch). */
const Architecture *arch_of(const ModelConfig *cfg);
/* The Arch value of a table (its place in the registry). */
Arch arch_id(const Architecture *a);
/* The accepted model_types for messages: "\"opt\", \"bloom\"". */
const char *arch_supported(void);

/* ---- what every caller needs from a table ----------------------------------------- */

/* The value of a dimension for this config. */
int64_t arch_dim(const ModelConfig *cfg, ArchDim d);

/* The checkpoint's modules for this config, in table order (model-level entries before
 * the layers, each layer's entries together, then the rest): a new array in *out (free()
 * it) of *n entries. Entries whose `present` is false and norms of a non-affine model are
 * left out. Returns -1 only when out of memory. */
int arch_tensors(const ModelConfig *cfg, ArchTensor **out, size_t *n, Error *err);

/* The context a command uses when none is given: max_position_embeddings, or the
 * trained length for families without a position table (BLOOM: 2048). */
int arch_native_context(const ModelConfig *cfg);
/* The longest context the model can run: its position table's length, or 0 when nothing
 * bounds it (ALiBi). */
int arch_max_context(const ModelConfig *cfg);

/* A config with every field at the family's defaults, for writing a synthetic checkpoint
 * (bench):
 *     ModelConfig c;
 *     arch_config_defaults(arch_find("opt"), &c);
 *     c.hidden = 1024, c.n_layers = 4, c.n_heads = 16, c.ffn_dim = 4096;  (and vocab_size ...)
 *     arch_config_finish(&c);
 *     arch_of(&c)->write_config(&c, json_object);       → config.json
 *     arch_tensors(&c, &list, &n, err);                 → the tensors to write
 * word_embed_proj_dim and ffn_dim are left 0 by the defaults where they follow from
 * hidden (OPT's projection width, BLOOM's MLP): arch_config_finish() fills them. */
void arch_config_defaults(const Architecture *a, ModelConfig *cfg);
/* Fills what follows from the dimensions: head_dim = hidden / n_heads, and
 * word_embed_proj_dim = hidden, ffn_dim = 4 * hidden where they are 0. */
void arch_config_finish(ModelConfig *cfg);

/* For a family's write_config: what every family writes the same way. The head is
 * "architectures": [class_name], "model_type", "vocab_size" and "hidden_size"; the token
 * ids are "bos_token_id", "eos_token_id" and "pad_token_id", each only when >= 0.
 * Return -1 when out of memory. */
int arch_write_config_head(struct cJSON *obj, const char *class_name, const char *model_type,
                           const ModelConfig *cfg);
int arch_write_token_ids(struct cJSON *obj, const ModelConfig *cfg);

#endif
