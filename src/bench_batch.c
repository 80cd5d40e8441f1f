/* bench_batch.c — many sequences decoding together (bench_batch.h). */
#include "bench_batch.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "model.h"
#include "rng.h"

static double cpu_seconds(void) {
    struct timespec ts;
    return clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0 ? (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec : 0.0;
}

/* One batch size: prompt all B sequences in one step, then `decode` greedy steps. */
static int run_one(Model *m, int B, int context, int decode, int32_t *ids, BenchBatchCell *cell, Error *err) {
    Backend *bk = m->bk;
    const int V = m->cfg.vocab_size;
    int seq[BENCH_MAX_BATCH], added = 0, rc = 0;
    SeqStep st[BENCH_MAX_BATCH];
    int32_t next[BENCH_MAX_BATCH];
    uint64_t rng = 1000u + (uint64_t)B;
    for (int i = 0; i < B && rc == 0; i++) {
        rc = model_seq_add(m, context + decode, &seq[i], err);
        if (rc == 0) added++;
    }
    for (int i = 0; i < B * context; i++) ids[i] = (int32_t)(splitmix64_next(&rng) % (uint64_t)V);
    for (int i = 0; i < B; i++) st[i] = (SeqStep){.seq = seq[i], .ids = ids + (size_t)i * context, .T = context};
    cell->batch = B;
    double t0 = cli_now();
    if (rc == 0) rc = model_step(m, st, B, err);
    cell->prompt_s = cli_now() - t0;
    t0 = cli_now();
    double c0 = cpu_seconds();
    for (int d = 0; d < decode && rc == 0; d++) {
        for (int i = 0; i < B; i++) {
            next[i] = bk->argmax(bk, model_step_logits(m, i), V);
            st[i] = (SeqStep){.seq = seq[i], .ids = &next[i], .T = 1};
        }
        rc = model_step(m, st, B, err);
    }
    cell->decode_s = cli_now() - t0;
    cell->decode_cpu_s = cpu_seconds() - c0;
    for (int i = 0; i < added; i++) {
        Error ignored;
        model_seq_remove(m, seq[i], &ignored);
    }
    return rc;
}

int bench_batch_run(const Checkpoint *ck, Backend *bk, const QuantConfig *q, const int *batches, int n, int context,
                    int decode, BenchBatchReport *r, Error *err) {
    memset(r, 0, sizeof *r);
    int max_b = 1;
    for (int i = 0; i < n; i++) {
        if (batches[i] < 1 || batches[i] > BENCH_MAX_BATCH)
            return err_set(err, "batch size %d: from 1 to %d", batches[i], BENCH_MAX_BATCH);
        if (batches[i] > max_b) max_b = batches[i];
    }
    if (n > BENCH_MAX_BATCHES) return err_set(err, "at most %d batch sizes", BENCH_MAX_BATCHES);
    ModelOptions mo = {.quant = *q, .ctx = context + decode, .cache_tokens = (max_b + 1) * (context + decode),
                       .batch_tokens = 512, .kv_f16 = true};
    Model *m = NULL;
    if (model_load(ck, bk, &mo, &m, err)) return -1;
    r->kv_bytes_per_token = (long long)model_kv_bytes_per_token(m);
    r->weight_bytes = (long long)m->weight_bytes;
    int32_t *ids = malloc((size_t)max_b * (size_t)context * sizeof *ids);
    int rc = ids ? 0 : err_set(err, "out of memory");
    /* warm-up: faults the weights in and starts the threads */
    BenchBatchCell warm;
    if (rc == 0) rc = run_one(m, 1, context < 4 ? context : 4, 1, ids, &warm, err);
    for (int i = 0; i < n && rc == 0; i++) {
        rc = run_one(m, batches[i], context, decode, ids, &r->cells[i], err);
        r->n = i + 1;
    }
    free(ids);
    model_free(m);
    return rc;
}
