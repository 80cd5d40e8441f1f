/* model.h — a loaded network and its forward pass, for the commands.
 *
 * model_load() reads the checkpoint's tensors (the list of its architecture's table,
 * arch.h) into backend objects: every projection becomes a BkLinear (quantized on load
 * for int8 modes), embeddings and the tied lm_head stay 16-bit as stored, LayerNorm
 * weights and biases become float32 vectors. model_forward() runs T new tokens of the
 * default sequence through the network at its next positions, appending their keys and
 * values to its part of the KV cache, and returns logits; model_step() does the same for
 * many sequences at once (docs/ENGINE.md). Every call that runs the network ends by waiting for the backend
 * (bk->sync), so a backend failure comes back here as an Error.
 *
 * What the architecture files share (weights, scratch buffers, the attention and MLP
 * blocks) is in model_internal.h; no command needs it. */
#ifndef LLMINT8_MODEL_H
#define LLMINT8_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "arch.h"
#include "backend.h"
#include "checkpoint.h"
#include "config.h"
#include "quant.h"

/* Which projection of a layer, for observers and reports. */
typedef enum ProjKind {
    PROJ_Q, PROJ_K, PROJ_V, PROJ_QKV, PROJ_OUT, PROJ_FC1, PROJ_FC2, PROJ_IN_EMBED, PROJ_OUT_EMBED,
} ProjKind;

/* Optional hook called with the input of every projection before it runs (for
 * `llmint8 outliers`). x[T, dim] is a host array the hook may read and modify. Layer is
 * -1 for a projection before the layers (project_in), n_layers for one after them. */
typedef void (*ProjObserver)(void *ctx, int layer, ProjKind kind, float *x, int T, int dim);

/* The weights, KV cache and scratch buffers (model_internal.h). */
struct ModelWeights;
struct RunState;

typedef struct Model {
    ModelConfig cfg;
    Backend *bk;
    QuantConfig quant;

    int ctx;                 /* most positions one sequence may reach */
    int cache_tokens;        /* the KV cache's budget: tokens of all sequences together */
    bool kv_f16;             /* the KV cache holds IEEE half values (else float32) */
    int max_seqs;            /* sequence slots (live or free) */
    struct SeqSlot *seqs;    /* [max_seqs]; slot 0 is the default sequence (below) */

    ProjObserver observer;   /* set and cleared by the caller; NULL: none */
    void *observer_ctx;

    size_t weight_bytes;     /* backend memory held by weights */
    /* The layers this model holds, [layer_first, layer_last): 0 and n_layers unless it was
     * loaded as a part (ModelOptions.partial). */
    int layer_first, layer_last;

    struct ModelWeights *w;
    struct RunState *rs;
} Model;

typedef struct ModelOptions {
    QuantConfig quant;
    int ctx;                 /* longest sequence, in positions; <= 0: arch_native_context() */
    /* KV-cache budget in tokens, shared by all sequences; <= 0: ctx (one full sequence).
     * The default sequence 0 takes ctx of it at load. */
    int cache_tokens;
    int batch_tokens;        /* max tokens per forward call (scratch rows); <= 0: 512 */
    /* Keys and values cached in IEEE half (round to nearest even), as transformers keeps
     * them in a 16-bit model: half the memory per token. False: float32, as transformers
     * keeps them in a float32 model (what the fixtures' goldens were computed with). */
    bool kv_f16;
    /* A part of the network, for one stage of a pipeline (pipeline.h): when `partial`, only
     * layers [layer_first, layer_last) are read from the checkpoint and get a KV cache, plus
     * the embeddings when layer_first == 0 and the final norm, projection and head when
     * layer_last == n_layers (both ends may be absent: a stage of layers only). A part runs
     * only the staged forward below, and only the stages it holds. */
    bool partial;
    int layer_first, layer_last;
} ModelOptions;

int model_load(const Checkpoint *ck, Backend *bk, const ModelOptions *opt, Model **out, Error *err);
void model_free(Model *m);

/* Bytes of KV cache one token takes: keys and values of every layer,
 * 2 * n_layers * hidden * (2 for a half cache, 4 for float32), and the bytes the whole
 * cache holds (ctx tokens). */
size_t model_kv_bytes_per_token(const Model *m);
size_t model_kv_bytes(const Model *m);

/* Forgets the default sequence's cache (next forward starts at position 0). */
void model_reset(Model *m);

/* ---- many sequences at once (the step API) ------------------------------------------
 * A sequence owns max_tokens rows of the KV cache, reserved when it is added (a contiguous
 * range of the budget, first fit) and freed at once when it is removed. Sequence 0, the
 * default sequence, is added at load with ctx tokens and is what model_forward,
 * model_score, model_forward_last and the staged forward run; it may be removed to give
 * its tokens to others (those calls then fail with a message). model_step runs new tokens
 * of any set of live sequences in one pass: every projection sees all their tokens as one
 * [T_total x K] GEMM (batch_tokens rows at a time), and attention runs per sequence over
 * its own cache. */

/* Adds a sequence that may grow to max_tokens (<= ctx) tokens: its id in *seq. Refused with
 * a message when the budget has no free range that large. */
int model_seq_add(Model *m, int max_tokens, int *seq, Error *err);
/* Removes a sequence; its cache rows are free for the next model_seq_add. */
int model_seq_remove(Model *m, int seq, Error *err);
/* Tokens a live sequence has run so far (its next position), or -1 for no such sequence. */
int model_seq_len(const Model *m, int seq);

/* One sequence's part of a step: its new tokens, and what to hand back. With nll NULL, the
 * last token's logits stay on the backend (model_step_logits); with nll, each token is
 * scored against targets[t] as model_score does (nll and targets host arrays [T]). */
typedef struct SeqStep {
    int seq;
    const int32_t *ids;
    int T;
    const int32_t *targets;
    double *nll;
    /* Optional (with nll NULL): also called with every token's logits row [vocab] in order,
     * t counting this step's tokens from 0; row is a backend buffer valid during the call
     * (read-outs may run on it; it may not call the model). For prompt logprobs (echo). */
    void (*on_logits)(void *ctx, int t, float *row);
    void *logits_ctx;
} SeqStep;

/* Runs steps[0..n) (distinct live sequences, at most MODEL_LOGIT_ROWS of them): each
 * sequence's tokens at its own next positions. Checks everything first (ids, room in each
 * sequence, the count) and then runs; -1 with a message. */
int model_step(Model *m, const SeqStep *steps, int n, Error *err);
/* After model_step: the last-token logits [vocab] of steps[i] (one with nll NULL), a
 * backend buffer valid until the next call. */
float *model_step_logits(Model *m, int i);

/* ---- a step in stages (a pipeline, pipeline.h) ----------------------------------------
 * model_step for a part of the network: the same checks, the same chunks of capacity rows
 * (so every stage of a pipeline groups the rows as one whole model would), and per chunk:
 *     io->residual_in fills model_residual(m) (a later stage), or without it the part
 *       embeds the ids (the first stage: it must hold the embeddings);
 *     the part's layers;
 *     io->residual_out hands model_residual(m) on (an earlier stage), or without it the
 *       final norm and readout run (the last stage: it must hold the head), after which
 *       model_step_logits holds the last-token logits.
 * r0 counts the step's rows before the chunk (its rows are r0..r0+rows-1 of all the steps'
 * tokens in order). Ids are read only by the first stage (else they may be NULL); targets,
 * nll and on_logits only by the last. Every stage advances its sequences alike. A hook
 * returns 0, or -1 with a message that ends the step. */
typedef struct StageIO {
    int (*residual_in)(void *ctx, Model *m, int r0, int rows, Error *err);
    int (*residual_out)(void *ctx, Model *m, int r0, int rows, Error *err);
    void *ctx;
} StageIO;
int model_step_stage(Model *m, const SeqStep *steps, int n, const StageIO *io, Error *err);
/* The checks model_step_stage makes with `io` before it runs anything: -1 with a message. */
int model_step_check(const Model *m, const SeqStep *steps, int n, const StageIO *io, Error *err);

/* ---- what runs steps: a whole model or a pipeline --------------------------------------
 * The engine (engine.h) drives its sequences through this table, which a whole model
 * (model_step_target) and a pipeline of parts (pipeline_step_target, pipeline.h) both
 * fill in: the model_seq_* and model_step calls above, with the sizes they are checked
 * against. */
typedef struct StepTarget {
    void *self;
    int vocab, ctx, cache_tokens, capacity;
    Backend *bk;             /* the backend holding step_logits' rows (for sampler_pick) */
    bool prompt_logits;      /* whether SeqStep.on_logits is supported */
    int (*seq_add)(void *self, int max_tokens, int *seq, Error *err);
    int (*seq_remove)(void *self, int seq, Error *err);
    int (*seq_len)(void *self, int seq);
    int (*step)(void *self, const SeqStep *steps, int n, Error *err);
    float *(*step_logits)(void *self, int i);
} StepTarget;
void model_step_target(Model *m, StepTarget *t);

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

/* ---- the forward pass in stages ----------------------------------------------------
 * What model_forward does for one chunk of T <= model_capacity() tokens, exposed so that
 * a pipeline in which a process (or device) holds only layers [first, last) can run its
 * part and hand the residual stream on:
 *     model_embed(m, ids, T)                    → residual [T, hidden]
 *     model_run_layers(m, first, last, T)       residual → residual, KV of those layers
 *     model_finish(m, T) then model_logits(...) → logits
 *     model_advance(m, T)                       the tokens now count as past
 * Every stage works at positions n_past..n_past+T-1 and checks its arguments (-1 with a
 * message), and ends with the backend's sync. Between processes, the residual stream is
 * model_residual(m) (a backend buffer [capacity, hidden]): download it after the last
 * layer a process runs, upload it before the first. */

/* Whether the model holds the embeddings (the first stage) / the final norm and head (the
 * last stage). Both for a whole model. */
bool model_has_embed(const Model *m);
bool model_has_head(const Model *m);

/* Most tokens one stage call takes (the scratch rows). */
int model_capacity(const Model *m);
/* The residual stream, [capacity, hidden], a backend buffer. */
float *model_residual(Model *m);
/* Token (and position) embeddings of ids[0..T) into the residual stream. */
int model_embed(Model *m, const int32_t *ids, int T, Error *err);
/* Layers first..last-1 on the residual stream's first T rows. */
int model_run_layers(Model *m, int first, int last, int T, Error *err);
/* The final norm (and projection) of the residual stream: the hidden states the lm_head
 * reads, [T, word_embed_proj_dim], a backend buffer, in *hidden. */
int model_finish(Model *m, int T, const float **hidden, Error *err);
/* logits = hidden[0..rows) lm_head^T for rows <= MODEL_LOGIT_ROWS: a backend buffer
 * [rows, vocab] valid until the next call, in *logits. */
int model_logits(Model *m, const float *hidden, int rows, float **logits, Error *err);
/* Marks the T tokens just run as cached (n_past += T). */
int model_advance(Model *m, int T, Error *err);

/* Logits are computed this many rows at a time to bound memory for big vocabularies. */
#define MODEL_LOGIT_ROWS 64

#endif
