/* model_internal.h — what the architecture files (arch_*.c) share with model.c: the
 * weights, the KV cache and scratch buffers, loading, and the blocks a layer is built of.
 *
 * An architecture's forward stages (arch.h) read like its equations by calling these:
 *     model_norm(m, &L->attn_norm, s->residual, T, s->normed);     x = LayerNorm(h)
 *     model_attention(m, l, s->normed, T, s->block_out);           a = out(Attn(x))
 *     model_add(m, s->residual, s->block_out, T);                  h = h + a
 * Activation buffers belong to the backend (backend.h): pointer arithmetic only. */
#ifndef LLMINT8_MODEL_INTERNAL_H
#define LLMINT8_MODEL_INTERNAL_H

#include <stddef.h>

#include "arch.h"
#include "model.h"

/* Where a projection's weight came from (model.c: linear_source). */
typedef enum LinearSource {
    LINEAR_FLOAT,            /* a float weight, run with the model's quantization */
    LINEAR_INT8,             /* an 8-bit checkpoint's I8 weight + SCB */
    LINEAR_SKIPPED,          /* a float weight that llm_int8_skip_modules keeps unquantized */
} LinearSource;

/* A projection y = x W^T + b. */
typedef struct Linear {
    BkLinear *bk;            /* NULL when the model has no such projection */
    int64_t in, out;
    LinearSource source;
} Linear;

/* A LayerNorm's affine parameters, backend buffers [hidden]; both NULL when the model's
 * LayerNorms have none (y = (x - mean) / sqrt(var + eps)). */
typedef struct Norm {
    float *w, *b;
} Norm;

/* One decoder layer. Names follow the roles; each table says which checkpoint tensor
 * fills which field. */
typedef struct Layer {
    Norm attn_norm;          /* before (pre-LN) or after (post-LN) the attention block */
    Linear q, k, v;          /* separate query, key, value projections ... */
    Linear qkv;              /* ... or one fused projection, [head][q|k|v][head_dim] */
    Linear out;              /* attention output projection */
    Norm ffn_norm;           /* before or after the MLP block */
    Linear fc1, fc2;         /* MLP: up to ffn_dim, back to hidden */
} Layer;

typedef struct ModelWeights {
    BkMatrix *embed;         /* token embeddings [vocab, word_embed_proj_dim] */
    BkMatrix *lm_head;       /* == embed unless the checkpoint stores a different lm_head */
    BkMatrix *positions;     /* learned positions [max_positions + offset, hidden], or NULL */
    Linear project_in;       /* embedding width -> hidden, or none */
    Linear project_out;      /* hidden -> embedding width, or none */
    Norm embed_norm;         /* LayerNorm of the embeddings, or none */
    Norm final_norm;         /* LayerNorm after the last layer, or none */
    float *alibi;            /* ALiBi slopes [heads] (backend buffer), or NULL */
    Layer *layers;           /* [n_layers] */
} ModelWeights;

/* A sequence's place in the KV cache: it owns cache rows [first, first + len) of every
 * layer, of which the first n_past hold its tokens so far. */
typedef struct SeqSlot {
    bool live;
    int first, len, n_past;
} SeqSlot;

/* One sequence's part of the chunk now running: scratch rows [row0, row0 + T) are its tokens
 * at positions seqs[seq].n_past ... */
typedef struct ChunkPart {
    int seq, row0, T;
} ChunkPart;

/* Scratch buffers for one chunk of up to `capacity` tokens, each named for what it holds
 * (backend buffers, [capacity, width] row-major), and the KV cache. */
typedef struct RunState {
    int capacity;
    float *residual;         /* h, the residual stream [hidden] */
    float *normed;           /* a block's normalised input [max(hidden, embed)] */
    float *q;                /* queries [hidden] */
    float *k, *v;            /* the new tokens' keys and values [hidden], before the cache */
    float *qkv;              /* fused query/key/value [3 * hidden]; NULL without qkv */
    float *attn;             /* attention output, heads merged [hidden] */
    float *ffn;              /* MLP inner activations [ffn_dim] */
    float *block_out;        /* a block's output projection, before the residual add [hidden] */
    float *embed;            /* token embeddings / final hidden states [word_embed_proj_dim] */
    float *logits;           /* [MODEL_LOGIT_ROWS, vocab] */
    int32_t *pos;            /* host [capacity]: position ids of the current chunk (arch scratch) */
    int32_t *row_pos;        /* host [capacity]: each row's position in its sequence */
    ChunkPart *parts;        /* host [capacity]: the sequences of the current chunk ... */
    int n_parts;             /* ... and how many */
    float *last_hidden;      /* [MODEL_LOGIT_ROWS, word_embed_proj_dim]: last tokens of a step */
    float *observe;          /* host copy for observers on non-host backends */
    void **k_cache, **v_cache;   /* per layer [cache_tokens, hidden]: IEEE half (uint16_t, backend.h)
                                  * when m->kv_f16, else float32 */
} RunState;

/* ---- loading -------------------------------------------------------------------- */

/* Loads every tensor of arch_tensors() into the field its table names: projections as
 * BkLinear with m->quant (16-bit, or I8 + SCB in an 8-bit checkpoint), embeddings as
 * BkMatrix, norms as float vectors, and the lm_head (or the tie to the embedding). */
int model_load_tensors(Model *m, const Checkpoint *ck, Error *err);

/* ---- the blocks a layer is built of --------------------------------------------- */

/* y[T, hidden] = LayerNorm(x) with n's affine (or none) and cfg.ln_eps; y may be x. */
void model_norm(Model *m, const Norm *n, const float *x, int T, float *y);
/* h[T, hidden] += x. */
void model_add(Model *m, float *h, const float *x, int T);
/* Runs a projection, first showing its input to the observer if there is one. */
void model_linear(Model *m, int layer, ProjKind kind, const Linear *l, const float *x, int T, float *y);
/* Self-attention of layer l on its input x [T, hidden] (all rows of the chunk's sequences):
 *   q, k, v = q_proj(x), k_proj(x), v_proj(x)   (one GEMM each over all T rows, or split
 *                                                from the fused qkv(x))
 *   per sequence of the chunk (rs->parts): its rows of k, v are appended to its own cache
 *   at its n_past (rounded to half in a 16-bit cache), and its queries attend over it
 *   out[T, hidden] = out_proj(softmax(q k^T / sqrt(head_dim) + alibi, causal) v)
 * with the ALiBi term only when the model has slopes. */
void model_attention(Model *m, int l, const float *x, int T, float *out);
/* MLP of layer l: out[T, hidden] = fc2(act(fc1(x))), act = cfg.activation. */
void model_mlp(Model *m, int l, const float *x, int T, float *out);

#endif
