/* pipeline.c — stages of layers (pipeline.h): the split, the local pipeline (one process,
 * one backend a stage), and the calls that run chunks through either kind. */
#include "pipeline_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double pipeline_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the split ------------------------------------------------------------------------ */

StageCosts pipeline_costs(const ModelConfig *cfg, QuantMode mode) {
    StageCosts c = {0};
    ArchTensor *list;
    size_t n;
    Error err;
    if (arch_tensors(cfg, &list, &n, &err)) return c;
    const double proj = mode == QUANT_FP16 ? 2.0 : 1.0;
    for (size_t i = 0; i < n; i++) {
        const ArchTensor *t = &list[i];
        double bytes = 0;
        switch (t->role) {
        case TENSOR_PROJECTION:
            bytes = (double)t->rows * (double)t->cols * proj + (t->bias ? 4.0 * (double)t->rows : 0);
            break;
        case TENSOR_NORM: bytes = 8.0 * (double)t->rows; break;
        case TENSOR_EMBEDDING: bytes = 2.0 * (double)t->rows * (double)t->cols; break;
        case TENSOR_LM_HEAD: bytes = 0; break; /* tied: the embedding, counted below */
        }
        if (t->layer == 0) c.layer += bytes;
        else if (t->layer < 0) {
            /* the token embedding (the first EMBEDDING) serves both ends; the rest one end */
            bool is_embed = t->role == TENSOR_EMBEDDING && t->rows == arch_dim(cfg, DIM_VOCAB);
            bool after = strstr(t->name, "final") || strstr(t->name, "ln_f") || strstr(t->name, "project_out");
            if (is_embed) c.first_extra += bytes, c.last_extra += bytes;
            else if (after) c.last_extra += bytes;
            else c.first_extra += bytes;
        }
    }
    free(list);
    return c;
}

/* Whether n stages can each stay within `limit` bytes, filling each with as many layers as
 * fit: the bounds when they can. */
static bool fits(const StageCosts *c, int layers, int n, double limit, int *bounds) {
    int l = 0;
    bounds[0] = 0;
    for (int s = 0; s < n; s++) {
        double used = (s == 0 ? c->first_extra : 0) + (s == n - 1 ? c->last_extra : 0);
        if (used > limit) return false;
        while (l < layers && used + c->layer <= limit) used += c->layer, l++;
        if (s == n - 1 && l < layers) return false;
        bounds[s + 1] = l;
    }
    return true;
}

int pipeline_split(const ModelConfig *cfg, QuantMode mode, int n, const char *split, int *bounds, Error *err) {
    const int L = cfg->n_layers;
    if (n < 1 || n > PIPELINE_MAX_STAGES) return err_set(err, "%d stages: from 1 to %d", n, PIPELINE_MAX_STAGES);
    if (split) {
        const char *p = split;
        bounds[0] = 0;
        for (int s = 0; s < n; s++) {
            char *end;
            long v = (*p >= '0' && *p <= '9') ? strtol(p, &end, 10) : -1;
            if (v < 0 || v > L || end == p || (s < n - 1 ? *end != ',' : *end != 0))
                return err_set(err, "--split '%s': expected %d whole numbers separated by commas, one layer count per "
                               "stage", split, n);
            bounds[s + 1] = bounds[s] + (int)v;
            if (bounds[s + 1] > L) break;
            p = end + 1;
        }
        if (bounds[n] != L)
            return err_set(err, "--split '%s': the layer counts must add up to the model's %d layers", split, L);
        return 0;
    }
    StageCosts c = pipeline_costs(cfg, mode);
    if (c.layer <= 0) c.layer = 1;
    /* The smallest largest stage: bisection over the limit (fits is monotone in it). */
    double lo = 0, hi = c.first_extra + c.last_extra + c.layer * (double)L + 1;
    for (int it = 0; it < 100 && hi - lo > 0.5; it++) {
        double mid = 0.5 * (lo + hi);
        if (fits(&c, L, n, mid, bounds)) hi = mid;
        else lo = mid;
    }
    if (!fits(&c, L, n, hi, bounds)) return err_set(err, "no split of %d layers into %d stages", L, n);
    return 0;
}

int pipeline_parse_devices(const char *list, char names[][16], int max, Error *err) {
    int n = 0;
    const char *p = list;
    for (;;) {
        size_t len = strcspn(p, ",");
        if (n == max) return err_set(err, "--device '%s': more than %d devices", list, max);
        bool ok = len > 0 && len < 16;
        if (ok) {
            memcpy(names[n], p, len);
            names[n][len] = 0;
            const char *d = names[n];
            if (strncmp(d, "cuda:", 5) == 0) {
                ok = d[5] >= '0' && d[5] <= '9' && strspn(d + 5, "0123456789") == strlen(d + 5) && strlen(d + 5) <= 3;
            } else {
                ok = strcmp(d, "cpu") == 0 || strcmp(d, "cuda") == 0 || strcmp(d, "auto") == 0;
            }
        }
        if (!ok)
            return err_set(err, "--device '%s': expected cpu, cuda, cuda:N or auto, or a list of them separated by "
                           "commas (one per pipeline stage)", list);
        n++;
        if (!p[len]) return n;
        p += len + 1;
    }
}

/* ---- building ---------------------------------------------------------------------- */

static Pipeline *pipeline_new(int n) {
    Pipeline *p = calloc(1, sizeof *p);
    if (p) p->n = n, p->t_start = pipeline_now();
    return p;
}

/* A stage's backend: "cuda:N" is GPU N (backend_create); "cuda:0" and "cuda" are the same GPU. */
static Backend *stage_backend(const char *name, int threads, Error *err) {
    Error fallback;
    return backend_create(name, threads, &fallback, err);
}

int pipeline_open_local(const Checkpoint *ck, Backend *bk0, const char *devices, int threads, const char *split,
                        const ModelOptions *mo, Pipeline **out, Error *err) {
    char names[PIPELINE_MAX_STAGES][16];
    int n = pipeline_parse_devices(devices, names, PIPELINE_MAX_STAGES, err);
    if (n < 0) return -1;
    const ModelConfig *cfg = checkpoint_config(ck);
    int bounds[PIPELINE_MAX_STAGES + 1];
    if (pipeline_split(cfg, mo->quant.mode, n, split, bounds, err)) return -1;
    Pipeline *p = pipeline_new(n);
    if (!p) return err_set(err, "out of memory");
    int rc = 0;
    for (int s = 0; s < n && rc == 0; s++) {
        Stage *st = &p->stages[s];
        st->first = bounds[s], st->last = bounds[s + 1];
        st->bk = s == 0 ? bk0 : stage_backend(names[s], threads, err);
        st->own_bk = s > 0;
        if (!st->bk) {
            rc = -1;
            break;
        }
        ModelOptions o = *mo;
        o.partial = true, o.layer_first = st->first, o.layer_last = st->last;
        rc = model_load(ck, st->bk, &o, &st->m, err);
        if (rc) err_prefix(err, "pipeline stage %d (%s, layers %d..%d)", s, names[s], st->first, st->last - 1);
    }
    if (rc == 0) {
        p->capacity = model_capacity(p->stages[0].m);
        p->host = malloc((size_t)p->capacity * (size_t)cfg->hidden * sizeof *p->host);
        if (!p->host) rc = err_set(err, "out of memory");
    }
    if (rc) {
        pipeline_free(p);
        return -1;
    }
    *out = p;
    return 0;
}

Model *pipeline_first_model(Pipeline *p) { return p->stages[0].m; }
int pipeline_stages(const Pipeline *p) { return p->n; }

void pipeline_free(Pipeline *p) {
    if (!p) return;
    if (p->mpi) pipeline_mpi_close(p);
    if (p->logits && p->stages[0].bk) p->stages[0].bk->release(p->stages[0].bk, p->logits);
    for (int s = 0; s < p->n; s++) {
        Stage *st = &p->stages[s];
        if (st->m) model_free(st->m);
        if (st->own_bk && st->bk) st->bk->destroy(st->bk);
    }
    if (p->step_logits && p->stages[0].bk) p->stages[0].bk->release(p->stages[0].bk, p->step_logits);
    free(p->host), free(p->landing), free(p->step_host), free(p->step_landing);
    free(p);
}

/* ---- running ----------------------------------------------------------------------- */

int pipeline_head(Model *m, int T, const int32_t *targets, double *nll, float **logits, Error *err) {
    const float *hidden;
    const size_t E = (size_t)m->cfg.word_embed_proj_dim;
    if (model_finish(m, T, &hidden, err)) return -1;
    if (!nll) return model_logits(m, hidden + (size_t)(T - 1) * E, 1, logits, err);
    /* as model_score reads out: MODEL_LOGIT_ROWS rows of logits at a time */
    for (int r = 0; r < T; r += MODEL_LOGIT_ROWS) {
        int rows = T - r < MODEL_LOGIT_ROWS ? T - r : MODEL_LOGIT_ROWS;
        float *lg;
        if (model_logits(m, hidden + (size_t)r * E, rows, &lg, err)) return -1;
        m->bk->token_nll(m->bk, lg, rows, m->cfg.vocab_size, targets + r, nll + r);
    }
    return m->bk->sync(m->bk, err);
}

/* One chunk through the local stages; the head reads out only when `head` (targets and nll
 * for scores, else *logits). */
static int local_chunk(Pipeline *p, const int32_t *ids, int T, bool head, const int32_t *targets, double *nll,
                       float **logits, Error *err) {
    for (int s = 0; s < p->n; s++) {
        Stage *st = &p->stages[s];
        double t0 = pipeline_now();
        if (s == 0) {
            if (model_embed(st->m, ids, T, err)) return -1;
        } else {
            /* the residual stream from the stage before, through the host */
            Stage *prev = &p->stages[s - 1];
            size_t n = (size_t)T * (size_t)st->m->cfg.hidden;
            prev->bk->download(prev->bk, p->host, model_residual(prev->m), n);
            if (prev->bk->sync(prev->bk, err)) return -1;
            st->bk->upload(st->bk, model_residual(st->m), p->host, n);
            double t1 = pipeline_now();
            prev->stats.move_s += t1 - t0, prev->stats.bytes_moved += (double)(n * sizeof(float));
            t0 = t1;
        }
        if (model_run_layers(st->m, st->first, st->last, T, err)) return -1;
        if (s == p->n - 1 && head && pipeline_head(st->m, T, targets, nll, logits, err)) return -1;
        st->stats.busy_s += pipeline_now() - t0;
        st->stats.chunks++;
    }
    for (int s = 0; s < p->n; s++)
        if (model_advance(p->stages[s].m, T, err)) return -1;
    return 0;
}

int pipeline_reset(Pipeline *p, Error *err) {
    for (int s = 0; s < p->n; s++)
        if (p->stages[s].m) model_reset(p->stages[s].m);
    return p->mpi ? pipeline_mpi_reset(p, err) : 0;
}

int pipeline_score(Pipeline *p, const int32_t *ids, int T, const int32_t *targets, double *nll, Error *err) {
    const int V = p->stages[0].m->cfg.vocab_size;
    if (T <= 0) return err_set(err, "nothing to run: no tokens");
    for (int t = 0; t < T; t++)
        if (targets[t] < -1 || targets[t] >= V)
            return err_set(err, "target id %d is outside the vocabulary", targets[t]);
    for (int start = 0; start < T; start += p->capacity) {
        int n = T - start < p->capacity ? T - start : p->capacity;
        int rc = p->mpi ? pipeline_mpi_chunk(p, ids + start, n, true, targets + start, nll + start, err)
                        : local_chunk(p, ids + start, n, true, targets + start, nll + start, NULL, err);
        if (rc) return -1;
    }
    return 0;
}

int pipeline_score_windows(Pipeline *p, int n, const int32_t *const *ids, const int *T, const int32_t *const *targets,
                           double *const *nll, Error *err) {
    const int V = p->stages[0].m->cfg.vocab_size;
    for (int i = 0; i < n; i++) {
        if (T[i] <= 0) return err_set(err, "nothing to run: no tokens");
        for (int t = 0; t < T[i]; t++)
            if (targets[i][t] < -1 || targets[i][t] >= V)
                return err_set(err, "target id %d is outside the vocabulary", targets[i][t]);
    }
    if (p->mpi) return pipeline_mpi_windows(p, n, ids, T, targets, nll, err);
    for (int i = 0; i < n; i++)
        if (pipeline_reset(p, err) || pipeline_score(p, ids[i], T[i], targets[i], nll[i], err)) return -1;
    return 0;
}

float *pipeline_forward_last(Pipeline *p, const int32_t *ids, int T, Backend **bk, Error *err) {
    if (T <= 0) {
        err_set(err, "nothing to run: no tokens");
        return NULL;
    }
    float *logits = NULL;
    for (int start = 0; start < T; start += p->capacity) {
        int n = T - start < p->capacity ? T - start : p->capacity;
        bool last = start + n == T;
        int rc;
        if (p->mpi) {
            /* no targets: the last rank sends the last row's logits, into p->logits */
            rc = pipeline_mpi_chunk(p, ids + start, n, last, NULL, NULL, err);
            logits = p->logits;
        } else {
            rc = local_chunk(p, ids + start, n, last, NULL, NULL, &logits, err);
        }
        if (rc) return NULL;
    }
    *bk = p->mpi ? p->stages[0].bk : p->stages[p->n - 1].bk;
    return logits;
}

/* ---- steps of many sequences (the engine's StepTarget) -------------------------------- */

static int step_seq_add(void *self, int max_tokens, int *seq, Error *err) {
    Pipeline *p = self;
    int first = -1;
    for (int s = 0; s < p->n; s++) {
        Model *m = p->stages[s].m;
        if (!m) continue; /* another rank's: mirrored below */
        int id;
        int rc = model_seq_add(m, max_tokens, &id, err);
        if (rc == 0 && first >= 0 && id != first) {
            model_seq_remove(m, id, NULL);
            rc = err_set(err, "pipeline stage %d gave sequence slot %d, stage 0 slot %d: the stages are out of step", s,
                         id, first);
        }
        if (rc) {
            for (int k = 0; k < s && first >= 0; k++)
                if (p->stages[k].m) model_seq_remove(p->stages[k].m, first, NULL);
            return -1;
        }
        first = id;
    }
    if (p->mpi) pipeline_mpi_seq_add(p, max_tokens, first);
    *seq = first;
    return 0;
}

static int step_seq_remove(void *self, int seq, Error *err) {
    Pipeline *p = self;
    int rc = 0;
    for (int s = 0; s < p->n; s++)
        if (p->stages[s].m && model_seq_remove(p->stages[s].m, seq, err)) rc = -1;
    if (rc == 0 && p->mpi) pipeline_mpi_seq_remove(p, seq);
    return rc;
}

static int step_seq_len(void *self, int seq) { return model_seq_len(((Pipeline *)self)->stages[0].m, seq); }

/* The local stages hand the residual stream on through p->step_host, a whole step's rows. */
static int local_in(void *ctx, Model *m, int r0, int rows, Error *err) {
    Pipeline *p = ctx;
    const size_t H = (size_t)m->cfg.hidden;
    (void)err;
    m->bk->upload(m->bk, model_residual(m), p->step_host + (size_t)r0 * H, (size_t)rows * H);
    return 0;
}

static int local_out(void *ctx, Model *m, int r0, int rows, Error *err) {
    Pipeline *p = ctx;
    const size_t H = (size_t)m->cfg.hidden;
    m->bk->download(m->bk, p->step_host + (size_t)r0 * H, model_residual(m), (size_t)rows * H);
    return m->bk->sync(m->bk, err);
}

static int step_run(void *self, const SeqStep *steps, int n, Error *err) {
    Pipeline *p = self;
    if (p->mpi) return pipeline_mpi_step(p, steps, n, err);
    /* every stage checks first, so that none runs a step another refuses */
    size_t rows = 0;
    StageIO io[PIPELINE_MAX_STAGES];
    for (int s = 0; s < p->n; s++) {
        io[s] = (StageIO){.residual_in = s > 0 ? local_in : NULL, .residual_out = s < p->n - 1 ? local_out : NULL,
                          .ctx = p};
        if (model_step_check(p->stages[s].m, steps, n, &io[s], err)) return err_prefix(err, "pipeline stage %d", s);
    }
    for (int i = 0; i < n; i++) rows += (size_t)steps[i].T;
    const size_t need = rows * (size_t)p->stages[0].m->cfg.hidden;
    if (need > p->step_host_cap) {
        float *h = realloc(p->step_host, need * sizeof *h);
        if (!h) return err_set(err, "out of memory");
        p->step_host = h, p->step_host_cap = need;
    }
    for (int s = 0; s < p->n; s++) {
        Stage *st = &p->stages[s];
        double t0 = pipeline_now();
        if (model_step_stage(st->m, steps, n, &io[s], err)) return err_prefix(err, "pipeline stage %d", s);
        st->stats.busy_s += pipeline_now() - t0;
        st->stats.chunks++;
        if (s < p->n - 1) st->stats.bytes_moved += (double)(need * sizeof(float));
    }
    return 0;
}

static float *step_logits(void *self, int i) {
    Pipeline *p = self;
    if (p->mpi) return p->step_logits + (size_t)i * (size_t)p->stages[0].m->cfg.vocab_size;
    return model_step_logits(p->stages[p->n - 1].m, i);
}

void pipeline_step_target(Pipeline *p, StepTarget *t) {
    Model *m = p->stages[0].m;
    *t = (StepTarget){.self = p, .vocab = m->cfg.vocab_size, .ctx = m->ctx, .cache_tokens = m->cache_tokens,
                      .capacity = p->capacity, .bk = p->mpi ? p->stages[0].bk : p->stages[p->n - 1].bk,
                      .prompt_logits = !p->mpi, .seq_add = step_seq_add, .seq_remove = step_seq_remove,
                      .seq_len = step_seq_len, .step = step_run, .step_logits = step_logits};
}

void pipeline_report_stage(int s, const char *device, int first, int last, const StageStats *st, double wall) {
    char layers[48];
    if (first < last) snprintf(layers, sizeof layers, "layers %d..%d", first, last - 1);
    else snprintf(layers, sizeof layers, "no layers");
    double per = st->chunks ? 1.0 / (double)st->chunks : 0.0;
    fprintf(stderr,
            "llmint8: stage %d (%s, %s): busy %.3f s (%.0f%% of %.3f s), %ld chunks; sent on %.0f bytes in %.4f s "
            "(%.0f bytes, %.3f ms a chunk)\n",
            s, device, layers, st->busy_s, wall > 0 ? 100.0 * st->busy_s / wall : 0.0, wall, st->chunks,
            st->bytes_moved, st->move_s, st->bytes_moved * per, 1e3 * st->move_s * per);
}

void pipeline_report(Pipeline *p) {
    double wall = pipeline_now() - p->t_start;
    for (int s = 0; s < p->n; s++) {
        const Stage *st = &p->stages[s];
        /* another rank's stage reports itself */
        if (st->m) pipeline_report_stage(s, st->bk->name, st->first, st->last, &st->stats, wall);
    }
}

#ifndef LLMINT8_HAVE_MPI
/* Without MPI: one process, and a launcher that started several is told so. */
bool pipeline_mpi_active(void) {
    static bool warned;
    const char *size = getenv("OMPI_COMM_WORLD_SIZE");
    if (!size) size = getenv("PMI_SIZE");
    if (size && atoi(size) > 1 && !warned) {
        warned = true;
        fprintf(stderr, "llmint8: warning: started as one of %s MPI ranks, but this llmint8 was built without MPI: "
                "every rank runs the whole command alone\n", size);
    }
    return false;
}
int pipeline_mpi_rank(void) { return 0; }
int pipeline_mpi_size(void) { return 1; }
int pipeline_open_mpi(const Checkpoint *ck, Backend *bk, const char *split, const ModelOptions *mo, Pipeline **out,
                      Error *err) {
    (void)ck, (void)bk, (void)split, (void)mo, (void)out;
    return err_set(err, "this llmint8 was built without MPI (meson -Dmpi=enabled)");
}
_Noreturn void pipeline_mpi_worker(Checkpoint *ck, Backend *bk) {
    (void)ck, (void)bk;
    exit(1);
}
int pipeline_mpi_chunk(Pipeline *p, const int32_t *ids, int T, bool head, const int32_t *targets, double *nll,
                       Error *err) {
    (void)p, (void)ids, (void)T, (void)head, (void)targets, (void)nll;
    return err_set(err, "no MPI");
}
int pipeline_mpi_reset(Pipeline *p, Error *err) {
    (void)p;
    return err_set(err, "no MPI");
}
int pipeline_mpi_windows(Pipeline *p, int n, const int32_t *const *ids, const int *T, const int32_t *const *targets,
                         double *const *nll, Error *err) {
    (void)p, (void)n, (void)ids, (void)T, (void)targets, (void)nll;
    return err_set(err, "no MPI");
}
void pipeline_mpi_close(Pipeline *p) { (void)p; }
void pipeline_mpi_seq_add(Pipeline *p, int max_tokens, int seq) { (void)p, (void)max_tokens, (void)seq; }
void pipeline_mpi_seq_remove(Pipeline *p, int seq) { (void)p, (void)seq; }
int pipeline_mpi_step(Pipeline *p, const SeqStep *steps, int n, Error *err) {
    (void)p, (void)steps, (void)n;
    return err_set(err, "no MPI");
}
#endif
