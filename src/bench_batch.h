/* bench_batch.h — `llmint8 bench --batch LIST`: many sequences decoding together through the
 * step API (model.h: model_seq_add, model_step), the way a server would run them.
 *
 * For each batch size B of the list, on a model loaded once with a 16-bit KV cache:
 *   1. prompt   B new sequences, each given `context` random tokens, all in ONE model_step
 *               (every projection sees up to batch_tokens rows at a time): prompt tokens/s =
 *               B * context / seconds;
 *   2. decode   `decode` steps in which each of the B sequences takes one greedy token (the
 *               argmax of its own logits): aggregate decode tokens/s = B * decode / seconds;
 *   3. the B sequences are removed, so that every batch size starts from the same empty cache.
 * So each decoding sequence sees a context of `context` .. `context + decode - 1` tokens.
 * Besides the wall-clock seconds, the decode steps' CPU time is recorded: on a shared machine
 * tokens per CPU-second compare the work done per token when wall-clock ratios are noise. */
#ifndef LLMINT8_BENCH_BATCH_H
#define LLMINT8_BENCH_BATCH_H

#include "backend.h"
#include "checkpoint.h"
#include "error.h"
#include "quant.h"

#define BENCH_MAX_BATCHES 8
#define BENCH_MAX_BATCH 64   /* most sequences in one model_step (MODEL_LOGIT_ROWS) */

typedef struct BenchBatchCell {
    int batch;
    double prompt_s;         /* seconds for the B x context prompt tokens */
    double decode_s;         /* seconds for the B x decode generated tokens */
    double decode_cpu_s;     /* CPU seconds of the process (all threads) during the decode steps:
                              * the work, which other processes' load does not change much */
} BenchBatchCell;

typedef struct BenchBatchReport {
    int n;
    BenchBatchCell cells[BENCH_MAX_BATCHES];
    long long kv_bytes_per_token;   /* of the cache used (16-bit) */
    long long weight_bytes;
} BenchBatchReport;

/* Runs the batch sizes batches[0..n) (each 1..BENCH_MAX_BATCH) on checkpoint ck with
 * quantization q on backend bk. 0, or -1 with err. */
int bench_batch_run(const Checkpoint *ck, Backend *bk, const QuantConfig *q, const int *batches, int n, int context,
                    int decode, BenchBatchReport *r, Error *err);

#endif
