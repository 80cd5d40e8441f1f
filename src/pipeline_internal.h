/* pipeline_internal.h — what pipeline.c shares with pipeline_mpi.c: the stages and the
 * chunk a stage runs. */
#ifndef LLMINT8_PIPELINE_INTERNAL_H
#define LLMINT8_PIPELINE_INTERNAL_H

#include "pipeline.h"

typedef struct Stage {
    Backend *bk;             /* NULL for a stage on another rank */
    bool own_bk;             /* created by the pipeline (freed with it) */
    Model *m;                /* this process's part, or NULL (another rank's) */
    int first, last;         /* its layers */
    StageStats stats;        /* this process's stages only (rank 0 under MPI) */
} Stage;

struct Pipeline {
    bool mpi;                /* stages 1.. are ranks 1.. (pipeline_mpi.c) */
    int n;
    Stage stages[PIPELINE_MAX_STAGES];
    int capacity;            /* tokens per chunk: every stage's model_capacity */
    float *host;             /* [capacity, hidden]: the residual stream between backends */
    float *logits;           /* MPI: [vocab] on stage 0's backend, the last rank's logits */
    float *landing;          /* MPI: host [vocab], where those logits arrive */
    double t_start;          /* when built, for the busy share */
    /* steps of many sequences (pipeline_step_target) */
    float *step_host;        /* local: host [rows of a step, hidden], the residual stream */
    size_t step_host_cap;    /* its floats */
    float *step_logits;      /* MPI: [MODEL_LOGIT_ROWS, vocab] on stage 0's backend */
    float *step_landing;     /* MPI: host [MODEL_LOGIT_ROWS, vocab], where they arrive */
};

/* The head's part of a chunk, on the stage that holds it: after model_finish, score rows
 * against targets (nll != NULL) or leave the last row's logits in *logits. Shared by the
 * local pipeline and the last MPI rank, so that both read out as model_score does. */
int pipeline_head(Model *m, int T, const int32_t *targets, double *nll, float **logits, Error *err);

/* pipeline_mpi.c: one chunk of T <= capacity tokens through every rank (rank 0's side); the
 * last rank reads out only when `head`: NLLs into nll (targets given), else the last row's
 * logits into p->logits. */
int pipeline_mpi_chunk(Pipeline *p, const int32_t *ids, int T, bool head, const int32_t *targets, double *nll,
                       Error *err);
int pipeline_mpi_reset(Pipeline *p, Error *err);
/* pipeline_score_windows under MPI (checked arguments). */
int pipeline_mpi_windows(Pipeline *p, int n, const int32_t *const *ids, const int *T, const int32_t *const *targets,
                         double *const *nll, Error *err);
void pipeline_mpi_close(Pipeline *p);
/* Sequence slots mirrored on every rank (after rank 0's own model_seq_add / _remove
 * succeeded: the other ranks must get the same slot). */
void pipeline_mpi_seq_add(Pipeline *p, int max_tokens, int seq);
void pipeline_mpi_seq_remove(Pipeline *p, int seq);
/* A step of many sequences through every rank: the last rank's last-token logits land in
 * p->step_logits. Checked on rank 0 before anything is sent (-1 with a message). */
int pipeline_mpi_step(Pipeline *p, const SeqStep *steps, int n, Error *err);

double pipeline_now(void);
/* One stage's busy line for pipeline_report (stage s of a rank or of this process). */
void pipeline_report_stage(int s, const char *device, int first, int last, const StageStats *st, double wall);

#endif
