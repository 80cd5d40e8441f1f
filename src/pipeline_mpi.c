/* pipeline_mpi.c — the pipeline across MPI ranks (pipeline.h): rank 0 runs the command and
 * stage 0, rank r > 0 serves stage r in pipeline_mpi_worker().
 *
 * Messages (point to point on MPI_COMM_WORLD, tags below), every one checked on arrival:
 *   CMD      rank 0 → every rank: a header of HDR_WORDS int32 (magic, op, fields)
 *              LOAD  quant, ctx, cache, batch, kv_f16, this rank's layers: load the part,
 *                    answer HELLO (status, checkpoint digest, command-line digest, message),
 *                    then wait for VERDICT (go on, or print the message and exit 1)
 *              RESET forget the default sequence
 *              CHUNK T, n_past, readout: residual in from rank r-1, layers, residual out to
 *                    r+1; the last rank reads out (NLLs of the TARGETS, or the last logits)
 *                    and sends RESULT to rank 0
 *              QUIT  rank 0 ends: finalize and exit 0
 *              SEQ_ADD max_tokens, slot / SEQ_REMOVE slot: the engine's sequences, mirrored
 *                    (the rank's own model_seq_add must give the same slot)
 *              STEP  n sequences, rows: then STEP [n x (slot, T, n_past)]; the step's
 *                    chunks as model_step cuts them, residual in from r-1 and out to r+1;
 *                    the last rank sends RESULT float [n, vocab], the last-token logits
 *   RESID    [T, hidden] float32 from rank r to r + 1
 *   TARGETS  int32 [T] from rank 0 to the last rank, RESULT back: double [T] or float [vocab]
 * A message of another size, a header with a bad magic or out-of-range fields, or a chunk at
 * other positions than the receiver's own is an error. Every wait polls with a deadline
 * (LLMINT8_MPI_TIMEOUT seconds, default 60, times 1 + T/64 for a chunk of T tokens; rank 0's
 * commands are awaited without one): a rank that died or hangs ends the run with a message
 * naming it, through MPI_Abort, never a hang. */
#include <mpi.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pipeline_internal.h"

enum { TAG_CMD = 1, TAG_RESID, TAG_TARGETS, TAG_RESULT, TAG_HELLO, TAG_VERDICT, TAG_STEP };
enum { OP_LOAD = 1, OP_RESET, OP_CHUNK, OP_QUIT, OP_SEQ_ADD, OP_SEQ_REMOVE, OP_STEP };
enum { READ_NONE = 0, READ_NLL, READ_LAST };
enum { HDR_WORDS = 16 };
#define MAGIC 0x4c4d3870 /* "LM8p" */
#define PROTOCOL 2

typedef struct Hello {
    int32_t magic, protocol, rank, status;   /* status 0: loaded; else msg says why not */
    uint64_t ck_digest, cmd_digest;
    char msg[400];
} Hello;

typedef struct Verdict {
    int32_t magic, ok;
    char msg[1200];
} Verdict;

static struct {
    bool init, active;
    int rank, size;
    bool peers_gone;         /* a failed handshake sent them home: no QUIT */
    double timeout;
} g;

/* ---- plumbing ---------------------------------------------------------------------- */

/* A failure of the transport or of a peer: no way to go on together. */
_Noreturn static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die(const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "llmint8: error: rank %d: %s\n", g.rank, msg);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

/* Between polls: a few quick ones first (a message is often just arriving), then yielding the
 * core to whatever else runs (another rank on the same cores), then short sleeps, so that a
 * rank waiting for its turn leaves the cores to the ranks computing. */
static void nap(int *polls) {
    int n = (*polls)++;
    if (n < 64) return;
    if (n < 2000) {
        sched_yield();
        return;
    }
    struct timespec ts = {0, 100 * 1000};
    nanosleep(&ts, NULL);
}

/* Waits for a message from `src` with `tag` of exactly `bytes` bytes into buf; `what` names
 * it in messages. deadline <= 0: wait as long as it takes. */
static void recv_exact(int src, int tag, void *buf, size_t bytes, const char *what, double timeout) {
    double end = pipeline_now() + timeout;
    MPI_Status st;
    int polls = 0;
    for (;;) {
        int flag = 0;
        int rc = MPI_Iprobe(src, tag, MPI_COMM_WORLD, &flag, &st);
        if (rc != MPI_SUCCESS) die("waiting for %s from rank %d: MPI error %d", what, src, rc);
        if (flag) break;
        if (timeout > 0 && pipeline_now() > end && tag == TAG_RESULT)
            die("waited %.0f s for %s from the last rank (%d): a rank of the pipeline (1..%d) died or hangs "
                "(LLMINT8_MPI_TIMEOUT sets the limit)", timeout, what, src, src);
        if (timeout > 0 && pipeline_now() > end)
            die("waited %.0f s for %s from rank %d: rank %d died or hangs (LLMINT8_MPI_TIMEOUT sets the limit)",
                timeout, what, src, src);
        nap(&polls);
    }
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    if (count < 0 || (size_t)count != bytes) {
        die("rank %d sent %d bytes for %s, expected %zu: not the same llmint8, or a corrupt message", src, count,
            what, bytes);
    }
    int rc = MPI_Recv(buf, count, MPI_BYTE, src, tag, MPI_COMM_WORLD, &st);
    if (rc != MPI_SUCCESS) die("receiving %s from rank %d: MPI error %d", what, src, rc);
}

/* Sends bytes to dst and waits until the buffer is free again, within the deadline. */
static void send_wait(int dst, int tag, const void *buf, size_t bytes, const char *what, double timeout) {
    if (bytes > (size_t)1 << 30) die("%s of %zu bytes is too large for one message", what, bytes);
    MPI_Request req;
    int rc = MPI_Isend(buf, (int)bytes, MPI_BYTE, dst, tag, MPI_COMM_WORLD, &req);
    if (rc != MPI_SUCCESS) die("sending %s to rank %d: MPI error %d", what, dst, rc);
    double end = pipeline_now() + timeout;
    int polls = 0;
    for (;;) {
        int done = 0;
        rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) die("sending %s to rank %d: MPI error %d", what, dst, rc);
        if (done) return;
        if (pipeline_now() > end)
            die("rank %d did not take %s within %.0f s: it died or hangs (LLMINT8_MPI_TIMEOUT sets the limit)", dst,
                what, timeout);
        nap(&polls);
    }
}

static void send_header(int dst, const int32_t *h) {
    send_wait(dst, TAG_CMD, h, HDR_WORDS * sizeof *h, "a command", g.timeout);
}

/* How long a stage may take over a chunk of T tokens before its neighbours give up on it: the
 * base limit for a decoding step, more for a long prompt (a big model's prefill on a CPU takes
 * minutes). */
static double chunk_timeout(int T) { return g.timeout * (1.0 + (double)T / 64.0); }

/* FNV-1a, 64 bits. */
static uint64_t fnv(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}
#define FNV_START 0xcbf29ce484222325ULL

/* The checkpoint as every rank must see it: config.json's bytes and the tensor index (names,
 * dtypes, shapes, sizes, in order). */
static uint64_t checkpoint_digest(const Checkpoint *ck) {
    uint64_t h = FNV_START;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", checkpoint_dir(ck));
    FILE *f = fopen(path, "rb");
    if (f) {
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) h = fnv(h, buf, n);
        fclose(f);
    }
    for (size_t i = 0; i < checkpoint_count(ck); i++) {
        const StTensor *t = checkpoint_tensor(ck, i);
        const char *name = checkpoint_short_name(ck, t->name);
        int64_t meta[2 + ST_MAX_DIMS] = {t->dtype, t->ndim};
        for (int d = 0; d < t->ndim && d < ST_MAX_DIMS; d++) meta[2 + d] = t->shape[d];
        h = fnv(h, name, strlen(name) + 1);
        h = fnv(h, meta, sizeof meta);
        h = fnv(h, &t->nbytes, sizeof t->nbytes);
    }
    return h;
}

/* The command line after the program's name (/proc/self/cmdline): every rank runs the same. */
static uint64_t command_digest(void) {
    uint64_t h = FNV_START;
    FILE *f = fopen("/proc/self/cmdline", "rb");
    if (!f) return h;
    int c;
    bool past_argv0 = false;
    while ((c = fgetc(f)) != EOF) {
        if (past_argv0) {
            unsigned char b = (unsigned char)c;
            h = fnv(h, &b, 1);
        }
        if (c == 0) past_argv0 = true;
    }
    fclose(f);
    return h;
}

static double timeout_seconds(void) {
    const char *s = getenv("LLMINT8_MPI_TIMEOUT");
    double v = s ? atof(s) : 0;
    return v > 0 ? v : 60.0;
}

static void at_exit_rank0(void) {
    if (!g.active) return;
    if (!g.peers_gone) {
        int32_t h[HDR_WORDS] = {MAGIC, OP_QUIT};
        for (int r = 1; r < g.size; r++) send_header(r, h);
    }
    MPI_Finalize();
}

bool pipeline_mpi_active(void) {
    if (g.init) return g.active;
    g.init = true;
    g.size = 1;
    const char *size = getenv("OMPI_COMM_WORLD_SIZE");
    if (!size) size = getenv("PMI_SIZE");
    if (!size || atoi(size) < 2) return false;
    int provided;
    /* serialized: `serve` runs its steps on the engine's thread, never two MPI calls at once */
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "llmint8: error: MPI_Init failed\n");
        exit(1);
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g.size);
    g.timeout = timeout_seconds();
    g.active = g.size > 1;
    if (!g.active) {
        MPI_Finalize();
        return false;
    }
    if (g.size > PIPELINE_MAX_STAGES) die("%d ranks: at most %d pipeline stages", g.size, PIPELINE_MAX_STAGES);
    if (g.rank == 0) atexit(at_exit_rank0);
    return true;
}

int pipeline_mpi_rank(void) { return pipeline_mpi_active() ? g.rank : 0; }
int pipeline_mpi_size(void) { return pipeline_mpi_active() ? g.size : 1; }

/* ---- the load header ------------------------------------------------------------------ */

static void load_header(int32_t *h, const ModelOptions *mo, int first, int last) {
    memset(h, 0, HDR_WORDS * sizeof *h);
    h[0] = MAGIC, h[1] = OP_LOAD, h[2] = PROTOCOL;
    h[3] = (int32_t)mo->quant.mode;
    memcpy(&h[4], &mo->quant.threshold, sizeof(float));
    h[5] = (int32_t)mo->quant.outliers;
    h[6] = mo->ctx, h[7] = mo->cache_tokens, h[8] = mo->batch_tokens, h[9] = mo->kv_f16;
    h[10] = first, h[11] = last;
}

/* The ModelOptions of a load header, checked as a command-line option would be. */
static int read_load_header(const int32_t *h, const ModelConfig *cfg, ModelOptions *mo, Error *err) {
    memset(mo, 0, sizeof *mo);
    if (h[2] != PROTOCOL)
        return err_set(err, "rank 0 speaks protocol %d, this rank %d (different llmint8 builds)", h[2], PROTOCOL);
    if (h[3] < 0 || h[3] >= QUANT_MODE_COUNT) return err_set(err, "bad quantization mode %d from rank 0", h[3]);
    mo->quant.mode = (QuantMode)h[3];
    memcpy(&mo->quant.threshold, &h[4], sizeof(float));
    if (!(mo->quant.threshold >= 0 && mo->quant.threshold <= 65504)) return err_set(err, "bad threshold from rank 0");
    if (h[5] != OUTLIERS_PER_CALL && h[5] != OUTLIERS_PER_TOKEN) return err_set(err, "bad outlier mode from rank 0");
    mo->quant.outliers = (OutlierScope)h[5];
    if (h[6] < 0 || h[7] < 0 || h[8] < 0 || h[6] > (1 << 24) || h[7] > (1 << 28) || h[8] > (1 << 20) ||
        (h[9] != 0 && h[9] != 1))
        return err_set(err, "bad context or cache sizes from rank 0");
    mo->ctx = h[6], mo->cache_tokens = h[7], mo->batch_tokens = h[8], mo->kv_f16 = h[9];
    if (h[10] < 0 || h[10] > h[11] || h[11] > cfg->n_layers)
        return err_set(err, "layers %d..%d from rank 0: this rank's model has %d", h[10], h[11] - 1, cfg->n_layers);
    mo->partial = true, mo->layer_first = h[10], mo->layer_last = h[11];
    return 0;
}

/* ---- rank 0 ------------------------------------------------------------------------ */

int pipeline_open_mpi(const Checkpoint *ck, Backend *bk, const char *split, const ModelOptions *mo, Pipeline **out,
                      Error *err) {
    if (!pipeline_mpi_active() || g.rank != 0) return err_set(err, "not rank 0 of an MPI run");
    const ModelConfig *cfg = checkpoint_config(ck);
    int bounds[PIPELINE_MAX_STAGES + 1];
    int rc = pipeline_split(cfg, mo->quant.mode, g.size, split, bounds, err);
    /* A bad split is the user's error on every rank: the workers are sent home with it. */
    int32_t h[HDR_WORDS];
    if (rc == 0) {
        for (int r = 1; r < g.size; r++) {
            load_header(h, mo, bounds[r], bounds[r + 1]);
            send_header(r, h);
        }
    }
    Pipeline *p = rc == 0 ? calloc(1, sizeof *p) : NULL;
    if (rc == 0 && !p) rc = err_set(err, "out of memory");
    Error load_err = {{0}};
    int load_rc = -1;
    if (p) {
        p->mpi = true, p->n = g.size, p->t_start = pipeline_now();
        for (int s = 0; s < g.size; s++) p->stages[s].first = bounds[s], p->stages[s].last = bounds[s + 1];
        ModelOptions o = *mo;
        o.partial = true, o.layer_first = bounds[0], o.layer_last = bounds[1];
        p->stages[0].bk = bk;
        load_rc = model_load(ck, bk, &o, &p->stages[0].m, &load_err);
        if (load_rc == 0) {
            p->capacity = model_capacity(p->stages[0].m);
            size_t n = (size_t)p->capacity * (size_t)cfg->hidden;
            if ((size_t)cfg->vocab_size > n) n = (size_t)cfg->vocab_size;
            p->host = malloc(n * sizeof *p->host);
            p->landing = malloc((size_t)cfg->vocab_size * sizeof *p->landing);
            p->logits = bk->alloc(bk, (size_t)cfg->vocab_size);
            if (!p->host || !p->landing || !p->logits) load_rc = err_set(&load_err, "out of memory");
        }
    }
    if (rc) {
        /* nothing was sent: the workers wait for a LOAD that will not come; send them home */
        Verdict v = {.magic = MAGIC, .ok = 0};
        snprintf(v.msg, sizeof v.msg, "rank 0 failed before loading: %s", err->msg);
        int32_t q[HDR_WORDS] = {MAGIC, OP_LOAD, -1};
        for (int r = 1; r < g.size; r++) {
            send_header(r, q);
            send_wait(r, TAG_VERDICT, &v, sizeof v, "the verdict", g.timeout);
        }
        g.peers_gone = true;
        free(p);
        return -1;
    }
    /* The handshake: every rank's load status, checkpoint and command line against rank 0's. */
    uint64_t ck0 = checkpoint_digest(ck), cmd0 = command_digest();
    Verdict v = {.magic = MAGIC, .ok = 1};
    if (load_rc) snprintf(v.msg, sizeof v.msg, "rank 0: %s", load_err.msg), v.ok = 0;
    for (int r = 1; r < g.size; r++) {
        Hello hi;
        recv_exact(r, TAG_HELLO, &hi, sizeof hi, "the handshake", 10 * g.timeout);
        hi.msg[sizeof hi.msg - 1] = 0;
        char why[600] = "";
        if (hi.magic != MAGIC || hi.protocol != PROTOCOL || hi.rank != r)
            snprintf(why, sizeof why, "rank %d answered the handshake with a bad header (not the same llmint8?)", r);
        else if (hi.status)
            snprintf(why, sizeof why, "rank %d: %s", r, hi.msg);
        else if (hi.ck_digest != ck0)
            snprintf(why, sizeof why,
                     "rank %d sees a different checkpoint than rank 0 (config.json or the tensor index differ): "
                     "every rank must load the same model", r);
        else if (hi.cmd_digest != cmd0)
            snprintf(why, sizeof why, "rank %d was started with other options than rank 0: every rank must run "
                     "the same command line", r);
        if (why[0] && v.ok) v.ok = 0, snprintf(v.msg, sizeof v.msg, "%s", why);
    }
    for (int r = 1; r < g.size; r++) send_wait(r, TAG_VERDICT, &v, sizeof v, "the verdict", g.timeout);
    if (!v.ok) {
        g.peers_gone = true;
        pipeline_free(p);
        return err_set(err, "%s", v.msg);
    }
    *out = p;
    return 0;
}

int pipeline_mpi_reset(Pipeline *p, Error *err) {
    (void)err;
    int32_t h[HDR_WORDS] = {MAGIC, OP_RESET};
    for (int r = 1; r < p->n; r++) send_header(r, h);
    return 0;
}

void pipeline_mpi_close(Pipeline *p) { (void)p; }

/* Rank 0's part of a chunk: the command to every rank (and the targets to the last), stage 0,
 * and the residual stream on to rank 1. */
static int issue_chunk(Pipeline *p, const int32_t *ids, int T, int readout, const int32_t *targets, Error *err) {
    Stage *st = &p->stages[0];
    Model *m = st->m;
    const int last = p->n - 1;
    int32_t h[HDR_WORDS] = {MAGIC, OP_CHUNK, T, model_seq_len(m, 0), readout};
    for (int r = 1; r < p->n; r++) send_header(r, h);
    if (readout == READ_NLL)
        send_wait(last, TAG_TARGETS, targets, (size_t)T * sizeof *targets, "the targets", chunk_timeout(T));
    double t0 = pipeline_now();
    if (model_embed(m, ids, T, err) || model_run_layers(m, st->first, st->last, T, err)) die("%s", err->msg);
    size_t n = (size_t)T * (size_t)m->cfg.hidden;
    double t1 = pipeline_now();
    st->bk->download(st->bk, p->host, model_residual(m), n);
    if (st->bk->sync(st->bk, err)) die("%s", err->msg);
    send_wait(1, TAG_RESID, p->host, n * sizeof *p->host, "the residual stream", chunk_timeout(T));
    double t2 = pipeline_now();
    st->stats.busy_s += t1 - t0, st->stats.move_s += t2 - t1, st->stats.bytes_moved += (double)(n * sizeof(float));
    st->stats.chunks++;
    return model_advance(m, T, err);
}

/* Posts the receive of a chunk's result from the last rank before the chunk goes out, so that
 * the last rank's send completes the moment it is made. */
static void post_result(void *buf, size_t bytes, int last, MPI_Request *req) {
    if (MPI_Irecv(buf, (int)bytes, MPI_BYTE, last, TAG_RESULT, MPI_COMM_WORLD, req) != MPI_SUCCESS)
        die("posting a receive for the results: MPI error");
}

static void wait_recv(MPI_Request *req, int src, size_t bytes, const char *what, double timeout);

int pipeline_mpi_chunk(Pipeline *p, const int32_t *ids, int T, bool head, const int32_t *targets, double *nll,
                       Error *err) {
    Stage *st = &p->stages[0];
    const int last = p->n - 1;
    const int readout = !head ? READ_NONE : nll ? READ_NLL : READ_LAST;
    const size_t V = (size_t)st->m->cfg.vocab_size;
    MPI_Request req;
    if (readout == READ_NLL) post_result(nll, (size_t)T * sizeof *nll, last, &req);
    if (readout == READ_LAST) post_result(p->landing, V * sizeof *p->landing, last, &req);
    if (issue_chunk(p, ids, T, readout, targets, err)) return -1;
    if (readout == READ_NLL) {
        wait_recv(&req, last, (size_t)T * sizeof *nll, "the NLLs", chunk_timeout(T));
    } else if (readout == READ_LAST) {
        wait_recv(&req, last, V * sizeof *p->landing, "the logits", chunk_timeout(T));
        st->bk->upload(st->bk, p->logits, p->landing, V);
        return st->bk->sync(st->bk, err);
    }
    return 0;
}

/* Waits for a posted receive of exactly `bytes` bytes from `src`, within the deadline. */
static void wait_recv(MPI_Request *req, int src, size_t bytes, const char *what, double timeout) {
    double end = pipeline_now() + timeout;
    int polls = 0;
    for (;;) {
        int done = 0;
        MPI_Status st;
        int rc = MPI_Test(req, &done, &st);
        if (rc != MPI_SUCCESS)
            die("receiving %s from rank %d: MPI error %d (a message larger than expected?)", what, src, rc);
        if (done) {
            int count = 0;
            MPI_Get_count(&st, MPI_BYTE, &count);
            if (count < 0 || (size_t)count != bytes)
                die("rank %d sent %d bytes for %s, expected %zu: not the same llmint8, or a corrupt message", src,
                    count, what, bytes);
            return;
        }
        if (pipeline_now() > end)
            die("waited %.0f s for %s from the last rank (%d): a rank of the pipeline (1..%d) died or hangs "
                "(LLMINT8_MPI_TIMEOUT sets the limit)", timeout, what, src, src);
        nap(&polls);
    }
}

int pipeline_mpi_windows(Pipeline *p, int n, const int32_t *const *ids, const int *T, const int32_t *const *targets,
                         double *const *nll, Error *err) {
    const int last = p->n - 1, cap = p->capacity;
    int n_req = 0;
    for (int i = 0; i < n; i++) n_req += (T[i] + cap - 1) / cap;
    MPI_Request *req = malloc((size_t)n_req * sizeof *req);
    size_t *bytes = malloc((size_t)n_req * sizeof *bytes);
    if (!req || !bytes) {
        free(req), free(bytes);
        return err_set(err, "out of memory");
    }
    /* Every window's chunks go out without waiting for results: the last rank's NLLs land in
     * receives posted in order beforehand (MPI keeps the order of one sender's messages). */
    int k = 0, rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        if ((rc = pipeline_reset(p, err))) break;
        for (int start = 0; start < T[i] && rc == 0; start += cap) {
            int c = T[i] - start < cap ? T[i] - start : cap;
            bytes[k] = (size_t)c * sizeof(double);
            if (MPI_Irecv(nll[i] + start, (int)bytes[k], MPI_BYTE, last, TAG_RESULT, MPI_COMM_WORLD, &req[k]) !=
                MPI_SUCCESS)
                die("posting a receive for the NLLs: MPI error");
            k++;
            rc = issue_chunk(p, ids[i] + start, c, READ_NLL, targets[i] + start, err);
        }
    }
    if (rc) die("%s", err->msg); /* receives are posted: no way back but out */
    for (int j = 0; j < k; j++)
        wait_recv(&req[j], last, bytes[j], "the NLLs", chunk_timeout((int)(bytes[j] / sizeof(double))));
    free(req), free(bytes);
    return 0;
}

/* ---- the engine's steps, rank 0 ------------------------------------------------------- */

void pipeline_mpi_seq_add(Pipeline *p, int max_tokens, int seq) {
    int32_t h[HDR_WORDS] = {MAGIC, OP_SEQ_ADD, max_tokens, seq};
    for (int r = 1; r < p->n; r++) send_header(r, h);
}

void pipeline_mpi_seq_remove(Pipeline *p, int seq) {
    int32_t h[HDR_WORDS] = {MAGIC, OP_SEQ_REMOVE, seq};
    for (int r = 1; r < p->n; r++) send_header(r, h);
}

/* Stage 0's chunk of a step goes on to rank 1. */
static int step_out(void *ctx, Model *m, int r0, int rows, Error *err) {
    Pipeline *p = ctx;
    Stage *st = &p->stages[0];
    (void)r0;
    size_t n = (size_t)rows * (size_t)m->cfg.hidden;
    double t1 = pipeline_now();
    st->bk->download(st->bk, p->host, model_residual(m), n);
    if (st->bk->sync(st->bk, err)) return -1;
    send_wait(1, TAG_RESID, p->host, n * sizeof *p->host, "the residual stream", chunk_timeout(rows));
    st->stats.move_s += pipeline_now() - t1, st->stats.bytes_moved += (double)(n * sizeof(float));
    return 0;
}

int pipeline_mpi_step(Pipeline *p, const SeqStep *steps, int n, Error *err) {
    Stage *st = &p->stages[0];
    Model *m = st->m;
    const int last = p->n - 1;
    const size_t V = (size_t)m->cfg.vocab_size;
    for (int i = 0; i < n && i < MODEL_LOGIT_ROWS; i++)
        if (steps[i].nll || steps[i].on_logits)
            return err_set(err, "under mpirun a step hands back only the last-token logits (no scores, no prompt "
                           "logprobs)");
    StageIO io = {.residual_out = step_out, .ctx = p};
    if (model_step_check(m, steps, n, &io, err)) return -1;
    if (!p->step_logits) {
        p->step_landing = malloc(MODEL_LOGIT_ROWS * V * sizeof *p->step_landing);
        p->step_logits = st->bk->alloc(st->bk, MODEL_LOGIT_ROWS * V);
        if (!p->step_landing || !p->step_logits) return err_set(err, "out of memory");
    }
    int32_t table[3 * MODEL_LOGIT_ROWS];
    int rows = 0;
    for (int i = 0; i < n; i++) {
        table[3 * i] = steps[i].seq, table[3 * i + 1] = steps[i].T, table[3 * i + 2] = model_seq_len(m, steps[i].seq);
        rows += steps[i].T;
    }
    int32_t h[HDR_WORDS] = {MAGIC, OP_STEP, n, rows};
    for (int r = 1; r < p->n; r++) {
        send_header(r, h);
        send_wait(r, TAG_STEP, table, (size_t)n * 3 * sizeof *table, "a step's sequences", g.timeout);
    }
    MPI_Request req;
    post_result(p->step_landing, (size_t)n * V * sizeof *p->step_landing, last, &req);
    double t0 = pipeline_now(), move0 = st->stats.move_s;
    /* the other ranks are in the step now: a failure here cannot be undone */
    if (model_step_stage(m, steps, n, &io, err)) die("%s", err->msg);
    st->stats.busy_s += pipeline_now() - t0 - (st->stats.move_s - move0);
    st->stats.chunks++;
    wait_recv(&req, last, (size_t)n * V * sizeof *p->step_landing, "the logits", chunk_timeout(rows));
    st->bk->upload(st->bk, p->step_logits, p->step_landing, (size_t)n * V);
    return st->bk->sync(st->bk, err);
}

/* ---- ranks > 0 ------------------------------------------------------------------------ */

typedef struct Worker {
    const Checkpoint *ck;
    Backend *bk;
    Model *m;
    int first, last;
    float *host;             /* [max(capacity * hidden, vocab)] */
    int32_t *targets;        /* [capacity] */
    double *nll;             /* [capacity] */
    float *step_host;        /* [MODEL_LOGIT_ROWS, vocab]: a step's logits (last rank), lazily */
    StageStats stats;
    double t_start;
} Worker;

static void worker_report(const Worker *w) {
    if (!w->m || !w->stats.chunks) return;
    pipeline_report_stage(g.rank, w->bk->name, w->first, w->last, &w->stats, pipeline_now() - w->t_start);
}

static void worker_unload(Worker *w) {
    worker_report(w);
    if (w->m) model_free(w->m);
    free(w->host), free(w->targets), free(w->nll), free(w->step_host);
    w->m = NULL, w->host = NULL, w->targets = NULL, w->nll = NULL, w->step_host = NULL;
    memset(&w->stats, 0, sizeof w->stats);
}

static void worker_load(Worker *w, const int32_t *h) {
    worker_unload(w);
    Hello hi = {.magic = MAGIC, .protocol = PROTOCOL, .rank = g.rank};
    Error err = {{0}};
    ModelOptions mo;
    const ModelConfig *cfg = checkpoint_config(w->ck);
    int rc = read_load_header(h, cfg, &mo, &err);
    if (rc == 0) rc = model_load(w->ck, w->bk, &mo, &w->m, &err);
    if (rc == 0) {
        int cap = model_capacity(w->m);
        size_t n = (size_t)cap * (size_t)cfg->hidden;
        if ((size_t)cfg->vocab_size > n) n = (size_t)cfg->vocab_size;
        w->host = malloc(n * sizeof *w->host);
        w->targets = malloc((size_t)cap * sizeof *w->targets);
        w->nll = malloc((size_t)cap * sizeof *w->nll);
        if (!w->host || !w->targets || !w->nll) rc = err_set(&err, "out of memory");
        w->first = mo.layer_first, w->last = mo.layer_last;
        w->t_start = pipeline_now();
    }
    hi.status = rc ? 1 : 0;
    snprintf(hi.msg, sizeof hi.msg, "%s", rc ? err.msg : "");
    hi.ck_digest = checkpoint_digest(w->ck);
    hi.cmd_digest = command_digest();
    send_wait(0, TAG_HELLO, &hi, sizeof hi, "the handshake", g.timeout);
    Verdict v;
    recv_exact(0, TAG_VERDICT, &v, sizeof v, "the verdict", 10 * g.timeout);
    v.msg[sizeof v.msg - 1] = 0;
    if (v.magic != MAGIC || !v.ok) {
        fprintf(stderr, "llmint8: error: rank %d: %s\n", g.rank, v.magic == MAGIC ? v.msg : "bad verdict from rank 0");
        worker_unload(w);
        MPI_Finalize();
        exit(1);
    }
}

static void worker_chunk(Worker *w, const int32_t *h) {
    Error err = {{0}};
    if (!w->m) die("a chunk before the model was loaded");
    Model *m = w->m;
    const int T = h[2], n_past = h[3], readout = h[4];
    const int V = m->cfg.vocab_size;
    if (T < 1 || T > model_capacity(m) || readout < READ_NONE || readout > READ_LAST)
        die("bad chunk header from rank 0 (T %d, readout %d)", T, readout);
    if (n_past != model_seq_len(m, 0))
        die("rank 0 runs positions from %d, this rank is at %d: out of step", n_past, model_seq_len(m, 0));
    const bool is_last = g.rank == g.size - 1;
    if (readout == READ_NLL && is_last) {
        recv_exact(0, TAG_TARGETS, w->targets, (size_t)T * sizeof *w->targets, "the targets", chunk_timeout(T));
        for (int t = 0; t < T; t++)
            if (w->targets[t] < -1 || w->targets[t] >= V)
                die("target id %d from rank 0 is outside the vocabulary", w->targets[t]);
    }
    size_t n = (size_t)T * (size_t)m->cfg.hidden;
    recv_exact(g.rank - 1, TAG_RESID, w->host, n * sizeof *w->host, "the residual stream", chunk_timeout(T));
    double t0 = pipeline_now();
    w->bk->upload(w->bk, model_residual(m), w->host, n);
    if (model_run_layers(m, w->first, w->last, T, &err)) die("%s", err.msg);
    if (!is_last) {
        double t1 = pipeline_now();
        w->bk->download(w->bk, w->host, model_residual(m), n);
        if (w->bk->sync(w->bk, &err)) die("%s", err.msg);
        send_wait(g.rank + 1, TAG_RESID, w->host, n * sizeof *w->host, "the residual stream", chunk_timeout(T));
        w->stats.busy_s += t1 - t0, w->stats.move_s += pipeline_now() - t1;
        w->stats.bytes_moved += (double)(n * sizeof(float));
    } else if (readout == READ_NLL) {
        if (pipeline_head(m, T, w->targets, w->nll, NULL, &err)) die("%s", err.msg);
        double t1 = pipeline_now();
        send_wait(0, TAG_RESULT, w->nll, (size_t)T * sizeof *w->nll, "the NLLs", chunk_timeout(T));
        w->stats.busy_s += t1 - t0, w->stats.move_s += pipeline_now() - t1;
        w->stats.bytes_moved += (double)((size_t)T * sizeof *w->nll);
    } else if (readout == READ_LAST) {
        float *logits;
        if (pipeline_head(m, T, NULL, NULL, &logits, &err)) die("%s", err.msg);
        double t1 = pipeline_now();
        w->bk->download(w->bk, w->host, logits, (size_t)V);
        if (w->bk->sync(w->bk, &err)) die("%s", err.msg);
        send_wait(0, TAG_RESULT, w->host, (size_t)V * sizeof *w->host, "the logits", chunk_timeout(T));
        w->stats.busy_s += t1 - t0, w->stats.move_s += pipeline_now() - t1;
        w->stats.bytes_moved += (double)((size_t)V * sizeof *w->host);
    } else {
        w->stats.busy_s += pipeline_now() - t0;
    }
    w->stats.chunks++;
    if (model_advance(m, T, &err)) die("%s", err.msg);
}

static void worker_seq(Worker *w, const int32_t *h) {
    Error err = {{0}};
    if (!w->m) die("a sequence command before the model was loaded");
    if (h[1] == OP_SEQ_ADD) {
        int seq = -1;
        if (model_seq_add(w->m, h[2], &seq, &err)) die("rank 0 added a sequence this rank cannot: %s", err.msg);
        if (seq != h[3]) die("rank 0 added sequence slot %d, this rank slot %d: out of step", h[3], seq);
    } else if (model_seq_remove(w->m, h[2], &err)) {
        die("rank 0 removed a sequence this rank does not have: %s", err.msg);
    }
}

/* A chunk of a step arrives from the rank before. */
static int worker_in(void *ctx, Model *m, int r0, int rows, Error *err) {
    Worker *w = ctx;
    (void)r0, (void)err;
    size_t n = (size_t)rows * (size_t)m->cfg.hidden;
    recv_exact(g.rank - 1, TAG_RESID, w->host, n * sizeof *w->host, "the residual stream", chunk_timeout(rows));
    w->bk->upload(w->bk, model_residual(m), w->host, n);
    return 0;
}

/* ... and goes on to the next. */
static int worker_out(void *ctx, Model *m, int r0, int rows, Error *err) {
    Worker *w = ctx;
    (void)r0;
    size_t n = (size_t)rows * (size_t)m->cfg.hidden;
    double t1 = pipeline_now();
    w->bk->download(w->bk, w->host, model_residual(m), n);
    if (w->bk->sync(w->bk, err)) return -1;
    send_wait(g.rank + 1, TAG_RESID, w->host, n * sizeof *w->host, "the residual stream", chunk_timeout(rows));
    w->stats.move_s += pipeline_now() - t1, w->stats.bytes_moved += (double)(n * sizeof(float));
    return 0;
}

static void worker_step(Worker *w, const int32_t *h) {
    Error err = {{0}};
    if (!w->m) die("a step before the model was loaded");
    Model *m = w->m;
    const int n = h[2], rows = h[3];
    if (n < 1 || n > MODEL_LOGIT_ROWS || rows < n || rows > n * m->ctx)
        die("bad step header from rank 0 (%d sequences, %d tokens)", n, rows);
    int32_t table[3 * MODEL_LOGIT_ROWS];
    recv_exact(0, TAG_STEP, table, (size_t)n * 3 * sizeof *table, "a step's sequences", g.timeout);
    SeqStep steps[MODEL_LOGIT_ROWS];
    long sum = 0;
    for (int i = 0; i < n; i++) {
        int seq = table[3 * i], T = table[3 * i + 1], n_past = table[3 * i + 2];
        if (model_seq_len(m, seq) < 0 || model_seq_len(m, seq) != n_past)
            die("rank 0 runs sequence %d from position %d, this rank has it at %d: out of step", seq, n_past,
                model_seq_len(m, seq));
        steps[i] = (SeqStep){.seq = seq, .T = T};
        sum += T;
    }
    if (sum != rows) die("a step of %d tokens from rank 0 whose sequences hold %ld", rows, sum);
    const bool is_last = g.rank == g.size - 1;
    StageIO io = {.residual_in = worker_in, .residual_out = is_last ? NULL : worker_out, .ctx = w};
    if (model_step_check(m, steps, n, &io, &err)) die("a step from rank 0: %s", err.msg);
    double t0 = pipeline_now(), move0 = w->stats.move_s;
    if (model_step_stage(m, steps, n, &io, &err)) die("%s", err.msg);
    if (is_last) {
        const size_t V = (size_t)m->cfg.vocab_size;
        if (!w->step_host && !(w->step_host = malloc(MODEL_LOGIT_ROWS * V * sizeof *w->step_host)))
            die("out of memory");
        double t1 = pipeline_now();
        w->bk->download(w->bk, w->step_host, model_step_logits(m, 0), (size_t)n * V);
        if (w->bk->sync(w->bk, &err)) die("%s", err.msg);
        send_wait(0, TAG_RESULT, w->step_host, (size_t)n * V * sizeof *w->step_host, "the logits", chunk_timeout(rows));
        w->stats.move_s += pipeline_now() - t1, w->stats.bytes_moved += (double)((size_t)n * V * sizeof(float));
    }
    w->stats.busy_s += pipeline_now() - t0 - (w->stats.move_s - move0);
    w->stats.chunks++;
}

_Noreturn void pipeline_mpi_worker(Checkpoint *ck, Backend *bk) {
    Worker w = {.ck = ck, .bk = bk};
    for (;;) {
        int32_t h[HDR_WORDS];
        recv_exact(0, TAG_CMD, h, sizeof h, "a command", 0);
        if (h[0] != MAGIC) die("a command from rank 0 with a bad magic number (not the same llmint8?)");
        switch (h[1]) {
        case OP_LOAD:
            if (h[2] == -1) { /* rank 0 failed first: its verdict says why */
                Verdict v;
                recv_exact(0, TAG_VERDICT, &v, sizeof v, "the verdict", g.timeout);
                v.msg[sizeof v.msg - 1] = 0;
                fprintf(stderr, "llmint8: error: rank %d: %s\n", g.rank, v.msg);
                MPI_Finalize();
                exit(1);
            }
            worker_load(&w, h);
            break;
        case OP_RESET:
            if (w.m) model_reset(w.m);
            break;
        case OP_CHUNK: worker_chunk(&w, h); break;
        case OP_SEQ_ADD:
        case OP_SEQ_REMOVE: worker_seq(&w, h); break;
        case OP_STEP: worker_step(&w, h); break;
        case OP_QUIT:
            worker_unload(&w);
            bk->destroy(bk);
            checkpoint_close(ck);
            MPI_Finalize();
            exit(0);
        default: die("unknown command %d from rank 0", h[1]);
        }
    }
}
