/* pipeline.h — a model split by layers into stages, each on its own backend or process.
 *
 * A stage is a (Backend, Model part) pair: the part holds a contiguous range of layers
 * [first, last) (model.h, ModelOptions.partial), the first stage also the embeddings, the
 * last the final norm and head. A chunk of tokens runs through the stages in order:
 *
 *     stage 0: model_embed, model_run_layers      → residual stream [T, hidden]
 *     stage s: residual in, model_run_layers      → residual out
 *     last:    model_run_layers, model_finish, model_logits → NLLs or last-token logits
 *
 * The residual stream is float32 and is handed on as it is (download from one backend,
 * upload to the next, or an MPI message between processes), and every stage runs its layers
 * on the same rows as one process would, so a pipeline's results are bit for bit those of
 * the whole model in one process (docs/PIPELINE.md).
 *
 * Two kinds of pipeline, the same calls:
 *   local  all stages in this process, one per device of a list ("cpu,cpu"); activations
 *          copied between backends through a host buffer;
 *   MPI    one stage per rank of `mpirun -np N` (pipeline_mpi.c, compiled with -Dmpi):
 *          rank 0 runs the command and stage 0; the other ranks serve their stage in
 *          pipeline_mpi_worker() until rank 0 ends.
 * The calls below run the default sequence (sequence 0) of every stage. */
#ifndef LLMINT8_PIPELINE_H
#define LLMINT8_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "checkpoint.h"
#include "model.h"

#define PIPELINE_MAX_STAGES 64

typedef struct Pipeline Pipeline;

/* ---- the split ------------------------------------------------------------------------ */

/* Bytes of weights each layer, and what the first and last stage hold besides layers, in
 * the precision `mode` (int8 projections: 1 byte a weight, else 2; embeddings 2). */
typedef struct StageCosts {
    double layer, first_extra, last_extra;
} StageCosts;
StageCosts pipeline_costs(const ModelConfig *cfg, QuantMode mode);

/* The layer ranges of n stages: stage s holds layers [bounds[s], bounds[s + 1]), with
 * bounds[0] = 0 and bounds[n] = n_layers. `split` is NULL for a split balanced by bytes of
 * weights (pipeline_costs), or the user's "--split 12,12": n whole numbers >= 0 that add
 * up to n_layers. A stage may hold no layers (more stages than layers). -1 with a message
 * naming the option. */
int pipeline_split(const ModelConfig *cfg, QuantMode mode, int n, const char *split, int *bounds, Error *err);

/* Parses a device list "cpu,cpu" / "cuda:0,cuda:1" into at most PIPELINE_MAX_STAGES names
 * (each "cpu", "cuda", "cuda:N" or "auto"), copied into names[i] (cap bytes each). Returns
 * the count, or -1 with a message. */
int pipeline_parse_devices(const char *list, char names[][16], int max, Error *err);

/* ---- building one ------------------------------------------------------------------- */

/* A local pipeline: one stage per device of `devices` ("cpu,cpu"), stage 0 on `bk0` (the
 * caller's backend, which stays the caller's), the others on backends created here with
 * `threads`. Every stage is loaded from `ck` with `mo` and its layer range. */
int pipeline_open_local(const Checkpoint *ck, Backend *bk0, const char *devices, int threads, const char *split,
                        const ModelOptions *mo, Pipeline **out, Error *err);

/* The model part of stage 0 (this process's, under MPI), owned by the pipeline. */
Model *pipeline_first_model(Pipeline *p);
int pipeline_stages(const Pipeline *p);
void pipeline_free(Pipeline *p);

/* ---- running ---------------------------------------------------------------------- */

/* Forgets the default sequence in every stage (the next call starts at position 0). */
int pipeline_reset(Pipeline *p, Error *err);
/* model_score's contract: nll[t] = -log softmax(logits_t)[targets[t]], NaN where targets[t]
 * is -1, for ids[0..T) at the next positions. */
int pipeline_score(Pipeline *p, const int32_t *ids, int T, const int32_t *targets, double *nll, Error *err);
/* Scores n independent windows, each from position 0 (the default sequence is reset before
 * each): window i is ids[i][0..T[i]) with targets[i], NLLs into nll[i], as pipeline_score.
 * Under MPI the windows are micro-batches in flight together: rank 0 starts window i + 1 as
 * soon as its stage has handed window i on, so that every rank works at the same time; the
 * results are those of one window at a time, bit for bit. A local pipeline runs them in turn. */
int pipeline_score_windows(Pipeline *p, int n, const int32_t *const *ids, const int *T, const int32_t *const *targets,
                           double *const *nll, Error *err);
/* model_forward_last's contract: the last token's logits [vocab] in memory of the backend
 * returned in *bk (for sampler_pick), valid until the next call; NULL with a message. */
float *pipeline_forward_last(Pipeline *p, const int32_t *ids, int T, Backend **bk, Error *err);

/* The engine's view of the pipeline (model.h, StepTarget): sequences added and removed on
 * every stage (each part keeps the KV cache of its layers for the same slots), and steps of
 * many sequences whose chunks flow through the stages as model_step's would through the
 * whole model, so a request's tokens are bit for bit those of one process. Under MPI the
 * other ranks mirror every call (pipeline_mpi_worker); prompt logprobs (SeqStep.on_logits)
 * are then refused: only the last-token logits come back to rank 0. */
void pipeline_step_target(Pipeline *p, StepTarget *t);

/* Per stage: seconds busy (running its layers), and what it sent on (the residual stream, or
 * from the last rank the NLLs or logits): bytes and seconds spent moving them. Printed by
 * pipeline_report() as one line a stage. */
typedef struct StageStats {
    double busy_s, move_s;
    double bytes_moved;
    long chunks;
} StageStats;
/* Writes one line per stage to stderr: layers, busy seconds and share of the wall time since
 * the pipeline was built, bytes and seconds sent on, in all and a chunk. */
void pipeline_report(Pipeline *p);

/* ---- MPI (pipeline_mpi.c; stubs that say so when built without MPI) --------------------- */

/* Whether this process was started by mpirun with more than one rank (from the launcher's
 * environment; MPI is initialised here on the first call). Without MPI compiled in: false,
 * with a warning when the environment says there are several ranks. */
bool pipeline_mpi_active(void);
int pipeline_mpi_rank(void);
int pipeline_mpi_size(void);
/* Rank 0: the MPI pipeline for the checkpoint `ck` (stage 0 on bk), after a handshake in which
 * every rank loads its part with `mo` and shows the digest of its checkpoint (config and tensor
 * index) and of its command line; any difference is an error on every rank. */
int pipeline_open_mpi(const Checkpoint *ck, Backend *bk, const char *split, const ModelOptions *mo, Pipeline **out,
                      Error *err);
/* Ranks > 0: serves this rank's stage of every pipeline rank 0 builds, until rank 0 ends.
 * Never returns: exits 0 when rank 0 ends normally, 1 after printing an error. */
_Noreturn void pipeline_mpi_worker(Checkpoint *ck, Backend *bk);

#endif
