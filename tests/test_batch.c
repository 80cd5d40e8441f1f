/* test_batch.c — the step API (model.h): many sequences in one forward, each over its own
 * range of the KV cache, against the same sequences run alone.
 *
 * For fixtures of both architectures, with fp16 and with LLM.int8() per-token outliers,
 * and with the 16-bit and the float32 KV cache:
 *   - three sequences (different windows of the golden ids, different lengths) scored in
 *     random batches, random orders and random chunkings (prompt pieces, single decode
 *     tokens, all through scratch of only 16 rows, so sequences are cut between chunks):
 *     every NLL bit for bit what model_score gives for that sequence alone;
 *   - last-token logits (model_step_logits) bit for bit model_forward_last's alone;
 *   - the budget: sequences that do not fit are refused with a message, a removed
 *     sequence's range is used by the next one, bad steps (a dead sequence, twice the same
 *     sequence, too many tokens) are refused without running. */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "checkpoint.h"
#include "model.h"
#include "test_util.h"

enum { NSEQ = 3, CTX = 40 };

static const int START[NSEQ] = {0, 5, 11}, LEN[NSEQ] = {32, 20, 9};

static unsigned rng_state = 12345;
static int rnd(int n) {
    rng_state = rng_state * 1103515245u + 12345u;
    return (int)((rng_state >> 8) % (unsigned)n);
}

static Model *load(const Checkpoint *ck, Backend *bk, bool int8, bool kv16, int cache_tokens) {
    ModelOptions mo = {.quant = {.mode = int8 ? QUANT_LLM_INT8 : QUANT_FP16, .threshold = int8 ? 6.0f : 0.0f,
                                 .outliers = OUTLIERS_PER_TOKEN},
                       .ctx = CTX, .batch_tokens = 16, .kv_f16 = kv16, .cache_tokens = cache_tokens};
    Model *m = NULL;
    Error err;
    CHECK(model_load(ck, bk, &mo, &m, &err) == 0, "model_load: %s", err.msg);
    return m;
}

static void run(const char *name, const Checkpoint *ck, Backend *bk, const int32_t *ids, bool int8, bool kv16) {
    const int V = checkpoint_config(ck)->vocab_size;
    const char *tag = int8 ? "int8 per-token" : "fp16";
    const char *kv = kv16 ? "kv16" : "kv32";
    Error err;
    double solo_nll[NSEQ][32];
    float *solo_last = malloc((size_t)NSEQ * V * sizeof *solo_last);
    int32_t targets[NSEQ][32];

    /* alone: each sequence scored, then its last-token logits */
    Model *m = load(ck, bk, int8, kv16, 0);
    if (!m) return;
    for (int s = 0; s < NSEQ; s++) {
        const int32_t *x = ids + START[s];
        for (int t = 0; t < LEN[s]; t++) targets[s][t] = t + 1 < LEN[s] ? x[t + 1] : -1;
        model_reset(m);
        CHECK(model_score(m, x, LEN[s], targets[s], solo_nll[s], &err) == 0, "%s: score: %s", name, err.msg);
        model_reset(m);
        float *row = model_forward_last(m, x, LEN[s], &err);
        CHECK(row != NULL, "%s: forward_last: %s", name, err.msg);
        if (row) bk->download(bk, solo_last + (size_t)s * V, row, (size_t)V);
    }
    model_free(m);

    /* together: the default sequence removed, three added, then random steps */
    m = load(ck, bk, int8, kv16, NSEQ * CTX);
    if (!m) return;
    int seq[NSEQ];
    CHECK(model_seq_remove(m, 0, &err) == 0, "remove the default sequence: %s", err.msg);
    for (int s = 0; s < NSEQ; s++) CHECK(model_seq_add(m, CTX, &seq[s], &err) == 0, "seq_add: %s", err.msg);
    double nll[NSEQ][32];
    for (int s = 0; s < NSEQ; s++)
        for (int t = 0; t < 32; t++) nll[s][t] = -1;
    int done[NSEQ] = {0};
    int nll_bad = 0, steps_run = 0;
    while (done[0] < LEN[0] || done[1] < LEN[1] || done[2] < LEN[2]) {
        SeqStep st[NSEQ];
        int n = 0, order[NSEQ] = {0, 1, 2};
        for (int i = NSEQ - 1; i > 0; i--) {
            int j = rnd(i + 1), tmp = order[i];
            order[i] = order[j], order[j] = tmp;
        }
        for (int k = 0; k < NSEQ; k++) {
            int s = order[k], left = LEN[s] - done[s];
            if (left == 0 || rnd(4) == 0) continue;
            int T = rnd(3) == 0 ? 1 : 1 + rnd(left); /* a decode token or a prompt piece */
            if (T > left) T = left;
            st[n++] = (SeqStep){.seq = seq[s], .ids = ids + START[s] + done[s], .T = T,
                                .targets = targets[s] + done[s], .nll = nll[s] + done[s]};
            done[s] += T;
        }
        if (n == 0) continue;
        CHECK(model_step(m, st, n, &err) == 0, "%s: step: %s", name, err.msg);
        steps_run++;
    }
    for (int s = 0; s < NSEQ; s++)
        for (int t = 0; t < LEN[s]; t++) {
            bool same = isnan(solo_nll[s][t]) ? isnan(nll[s][t]) : memcmp(&nll[s][t], &solo_nll[s][t], sizeof(double)) == 0;
            if (!same && nll_bad++ < 3)
                fprintf(stderr, "  %s %s %s: seq %d token %d: nll %.17g batched, %.17g alone\n", name, tag, kv, s, t,
                        nll[s][t], solo_nll[s][t]);
        }
    CHECK(nll_bad == 0, "%s %s %s: %d NLLs differ between batched (%d steps) and alone", name, tag, kv, nll_bad,
          steps_run);

    /* last-token logits: all three again, from scratch, in one step, in reverse order */
    for (int s = 0; s < NSEQ; s++) {
        CHECK(model_seq_remove(m, seq[s], &err) == 0, "seq_remove: %s", err.msg);
        CHECK(model_seq_add(m, CTX, &seq[s], &err) == 0, "seq_add after remove: %s", err.msg);
    }
    SeqStep st[NSEQ];
    for (int k = 0; k < NSEQ; k++) {
        int s = NSEQ - 1 - k;
        st[k] = (SeqStep){.seq = seq[s], .ids = ids + START[s], .T = LEN[s]};
    }
    CHECK(model_step(m, st, NSEQ, &err) == 0, "%s: last-logit step: %s", name, err.msg);
    float *row = malloc((size_t)V * sizeof *row);
    for (int k = 0; k < NSEQ; k++) {
        int s = NSEQ - 1 - k;
        bk->download(bk, row, model_step_logits(m, k), (size_t)V);
        CHECK(memcmp(row, solo_last + (size_t)s * V, (size_t)V * sizeof *row) == 0,
              "%s %s %s: seq %d's last logits differ batched vs alone", name, tag, kv, s);
    }
    CHECK(model_seq_len(m, seq[0]) == LEN[0], "model_seq_len %d", model_seq_len(m, seq[0]));
    fprintf(stderr, "%s %s %s: %d random steps, NLLs and last logits bitwise equal to solo runs\n", name, tag, kv,
            steps_run);
    free(row), free(solo_last);
    model_free(m);
}

/* The budget and the refusals. */
static void test_budget(const Checkpoint *ck, Backend *bk) {
    Error err;
    Model *m = load(ck, bk, false, true, 2 * CTX + 10);
    if (!m) return;
    int a, b, c;
    CHECK(model_seq_add(m, CTX, &a, &err) == 0, "second sequence fits: %s", err.msg);
    err.msg[0] = 0;
    CHECK(model_seq_add(m, 11, &b, &err) != 0 && strstr(err.msg, "KV cache full"), "refused: '%s'", err.msg);
    CHECK(model_seq_add(m, 10, &b, &err) == 0, "10 tokens still fit: %s", err.msg);
    CHECK(model_seq_add(m, CTX + 1, &c, &err) != 0, "longer than ctx accepted");
    CHECK(model_seq_remove(m, a, &err) == 0, "remove: %s", err.msg);
    CHECK(model_seq_add(m, CTX, &c, &err) == 0, "the freed range is reused: %s", err.msg);
    int32_t ids[CTX + 1] = {2, 5, 7};
    SeqStep st[2] = {{.seq = c, .ids = ids, .T = 3}, {.seq = c, .ids = ids, .T = 1}};
    CHECK(model_step(m, st, 2, &err) != 0 && strstr(err.msg, "twice"), "same sequence twice: '%s'", err.msg);
    CHECK(model_seq_remove(m, c, &err) == 0, "remove: %s", err.msg);
    CHECK(model_step(m, st, 1, &err) != 0 && strstr(err.msg, "not live"), "removed sequence: '%s'", err.msg);
    CHECK(model_seq_remove(m, c, &err) != 0, "removed twice");
    st[0] = (SeqStep){.seq = b, .ids = ids, .T = 11};
    CHECK(model_step(m, st, 1, &err) != 0 && strstr(err.msg, "do not fit"), "overflow: '%s'", err.msg);
    CHECK(model_seq_len(m, b) == 0, "a refused step ran");
    CHECK(model_seq_remove(m, 0, &err) == 0 && model_forward_last(m, ids, 1, &err) == NULL &&
              strstr(err.msg, "default sequence"),
          "single-sequence call without the default sequence: '%s'", err.msg);
    CHECK(model_seq_add(m, CTX, &c, &err) == 0 && c != 0, "a new sequence took the default's id %d: %s", c, err.msg);
    model_free(m);
}

int main(void) {
    Error err;
    Backend *bk = backend_create("cpu", 2, NULL, &err);
    if (!bk) {
        fprintf(stderr, "cpu backend: %s\n", err.msg);
        return 1;
    }
    const char *const FIXTURES[] = {"opt-tiny", "opt-tiny-postln", "bloom-tiny"};
    for (size_t f = 0; f < sizeof FIXTURES / sizeof *FIXTURES; f++) {
        char dir[256], gpath[300];
        snprintf(dir, sizeof dir, TEST_FIXTURES "/%s", FIXTURES[f]);
        snprintf(gpath, sizeof gpath, "%s/golden.json", dir);
        char *text = test_read_file(gpath, NULL);
        cJSON *g = text ? cJSON_Parse(text) : NULL;
        free(text);
        Checkpoint *ck;
        if (!g || checkpoint_open(dir, &ck, &err)) {
            CHECK(0, "%s: cannot open", FIXTURES[f]);
            cJSON_Delete(g);
            continue;
        }
        int32_t ids[32];
        int n = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(g, "input_ids")) if (n < 32) ids[n++] = (int32_t)it->valuedouble;
        CHECK(n == 32, "%s: 32 golden ids", FIXTURES[f]);
        for (int int8 = 0; int8 < 2 && n == 32; int8++)
            for (int kv16 = 1; kv16 >= 0; kv16--) run(FIXTURES[f], ck, bk, ids, int8, kv16);
        if (f == 0) test_budget(ck, bk);
        checkpoint_close(ck);
        cJSON_Delete(g);
    }
    bk->destroy(bk);
    return test_finish("batch");
}
