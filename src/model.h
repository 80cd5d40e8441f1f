/* model.h — a loaded network (OPT or BLOOM) and its forward pass.
 *
 * model_load() reads the checkpoint's tensors into backend objects: every projection
 * becomes a BkLinear (quantized on load for int8 modes), embeddings and the tied lm_head
 * stay 16-bit as stored, LayerNorm weights and biases become float32 vectors.
 * model_forward() runs T new tokens through the network at positions n_past.., appending
 * their keys and values to the KV cache, and returns logits. The per-architecture code
 * lives in opt.c and bloom.c; this file's implementation (model.c) holds what they share. */
#ifndef LLMINT8_MODEL_H
#define LLMINT8_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "checkpoint.h"
#include "config.h"
#include "quant.h"

/* Which projection of a layer, for observers and reports. */
typedef enum ProjKind {
    PROJ_Q, PROJ_K, PROJ_V, PROJ_QKV, PROJ_OUT, PROJ_FC1, PROJ_FC2, PROJ_IN_EMBED, PROJ_OUT_EMBED,
} ProjKind;

/* Optional hook called with the input of every projection before it runs (for
 * `llmint8 outliers`). x[T, dim] is a host array the hook may read and modify. */
typedef void (*ProjObserver)(void *ctx, int layer, ProjKind kind, float *x, int T, int dim);

typedef struct Linear {
    BkLinear *bk;
    int64_t in, out;
} Linear;

typedef struct Layer {
    /* LayerNorms (backend buffers [hidden]; NULL weight/bias when not affine) */
    float *ln_attn_w, *ln_attn_b;     /* OPT self_attn_layer_norm, BLOOM input_layernorm */
    float *ln_ffn_w, *ln_ffn_b;       /* OPT final_layer_norm, BLOOM post_attention_layernorm */
    /* attention: OPT q,k,v,out; BLOOM qkv (fused) and out (dense) */
    Linear q, k, v, qkv, out;
    /* MLP: OPT fc1/fc2, BLOOM dense_h_to_4h/dense_4h_to_h */
    Linear fc1, fc2;
} Layer;

typedef struct RunState {
    int capacity;            /* max tokens per forward call (rows of the scratch buffers) */
    float *h;                /* residual stream [cap, hidden] */
    float *x;                /* normalised input of a block [cap, hidden] */
    float *q, *attn;         /* [cap, hidden] */
    float *qkv;              /* BLOOM fused output [cap, 3*hidden] */
    float *ffn;              /* [cap, ffn_dim] */
    float *emb;              /* [cap, word_embed_proj_dim] (OPT project_in/out) */
    float *logits;           /* [MODEL_LOGIT_ROWS, vocab] */
    int32_t *pos;            /* host [cap]: position ids of the current call */
    float *observe;          /* host [cap, max dim] copy for observers on non-CPU backends */
} RunState;

/* Logits are computed this many rows at a time to bound memory for big vocabularies. */
#define MODEL_LOGIT_ROWS 64

typedef struct Model {
    ModelConfig cfg;
    Backend *bk;
    QuantConfig quant;

    BkMatrix *embed;         /* token embeddings [vocab, word_embed_proj_dim]; also the tied lm_head */
    BkMatrix *lm_head;       /* == embed unless the checkpoint stores a different lm_head */
    BkMatrix *positions;     /* OPT learned positions [max_pos + 2, hidden]; NULL for BLOOM */
    Linear project_in, project_out;   /* OPT-350m style; bk == NULL when absent */
    float *emb_ln_w, *emb_ln_b;       /* BLOOM word_embeddings_layernorm */
    float *final_ln_w, *final_ln_b;   /* OPT decoder.final_layer_norm / BLOOM ln_f; NULL if none */
    float *alibi;                     /* BLOOM slopes [heads] (backend buffer) */
    Layer *layers;

    /* KV cache: per layer [ctx, hidden] */
    int ctx;                 /* positions the cache holds */
    float **k_cache, **v_cache;
    int n_past;              /* tokens already in the cache */

    RunState rs;

    ProjObserver observer;
    void *observer_ctx;

    size_t weight_bytes;     /* backend memory held by weights */
} Model;

typedef struct ModelOptions {
    QuantConfig quant;
    int ctx;                 /* KV-cache length; <= 0: the model's max positions (2048 for ALiBi) */
    int batch_tokens;        /* max tokens per forward call (scratch rows); <= 0: 512 */
} ModelOptions;

int model_load(const Checkpoint *ck, Backend *bk, const ModelOptions *opt, Model **out, Error *err);
void model_free(Model *m);

/* Forgets the KV cache (next forward starts at position 0). */
void model_reset(Model *m);

/* Runs ids[0..T) at positions n_past..n_past+T-1 (T may exceed batch_tokens: it is split).
 * Writes logits to `logits` (host, float32): only the last token's [vocab] when
 * all_logits is false, else [T, vocab]. Ids must be < vocab_size and the cache must have
 * room (checked: returns -1 with a message). */
int model_forward(Model *m, const int32_t *ids, int T, bool all_logits, float *logits, Error *err);

/* The same run, leaving the last token's logits [vocab] in backend memory: returns that
 * buffer (valid until the next call), or NULL with a message. For sampling on the
 * backend (sampler_pick), so that only the chosen id comes back. */
float *model_forward_last(Model *m, const int32_t *ids, int T, Error *err);

/* The same run, scoring each position against a target instead of returning logits:
 *   nll[t] = -log softmax(logits_t)[targets[t]]
 * for every t with targets[t] >= 0, NaN where targets[t] is -1 (typically targets[t] =
 * ids[t + 1]). Logits stay on the backend; only these T numbers come back. */
int model_score(Model *m, const int32_t *ids, int T, const int32_t *targets, double *nll, Error *err);

/* ---- for the architecture files (opt.c, bloom.c) ---------------------------------- */

/* Per-architecture parts, called by model.c. *_load fills the Model's weights;
 * *_forward runs T <= rs.capacity tokens at positions n_past.. and returns the final
 * hidden states [T, word_embed_proj_dim] (a RunState buffer), ready for the lm_head. */
int opt_load(Model *m, const Checkpoint *ck, Error *err);
const float *opt_forward(Model *m, const int32_t *ids, int T);
int bloom_load(Model *m, const Checkpoint *ck, Error *err);
const float *bloom_forward(Model *m, const int32_t *ids, int T);

/* Loading helpers shared by the architectures. `name` is the short tensor name without
 * ".weight"/".bias" (e.g. "decoder.layers.0.fc1"). A projection is read as 16-bit, or as
 * int8 weight + SCB when the checkpoint is an 8-bit one, and created with m->quant. */
int model_load_linear(Model *m, const Checkpoint *ck, const char *name, int64_t out, int64_t in,
                      bool has_bias, Linear *l, Error *err);
/* A 16-bit matrix [rows, cols] kept as stored. */
int model_load_matrix(Model *m, const Checkpoint *ck, const char *name, int64_t rows, int64_t cols,
                      BkMatrix **out, Error *err);
/* A float vector [dim] (LayerNorm weight or bias) as a backend buffer. */
int model_load_vector(Model *m, const Checkpoint *ck, const char *name, int64_t dim, float **out,
                      Error *err);

/* Runs a projection, first showing its input to the observer if there is one. */
void model_linear(Model *m, int layer, ProjKind kind, const Linear *l, const float *x, int T, float *y);

#endif
