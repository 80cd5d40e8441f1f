/* test_pipeline_parts.c — model parts (ModelOptions.partial) and the local pipeline
 * (pipeline.h), on the fixtures (OPT, OPT post-LN, BLOOM):
 *   - a part holds only its layers: its weight bytes are its share (the parts of a split add up
 *     to the whole model plus the embedding read again by the last stage for its tied head);
 *   - a part refuses what it does not hold (the whole-model calls, embed, finish, other layers);
 *   - pipeline_score over 2 and 3 local stages gives every NLL of model_score bit for bit,
 *     with chunks smaller than the text (several chunks per window);
 *   - the engine's steps (pipeline_step_target) over 2 and 3 local stages: many sequences'
 *     last-token logits bit for bit those of the whole model's model_step;
 *   - pipeline_split: balanced by bytes, the user's counts, bad counts refused. */
#include "test_util.h"

#include "model_internal.h"
#include "pipeline.h"

static Model *load(const Checkpoint *ck, Backend *bk, bool partial, int first, int last, Error *err) {
    ModelOptions mo = {.quant = {.mode = QUANT_LLM_INT8, .threshold = 6.0f, .outliers = OUTLIERS_PER_CALL},
                       .ctx = 64, .batch_tokens = 24, .partial = partial, .layer_first = first, .layer_last = last};
    Model *m = NULL;
    return model_load(ck, bk, &mo, &m, err) ? NULL : m;
}

/* Runs steps on a StepTarget: three sequences' prompts (47 tokens: several chunks of 24, a
 * sequence cut between chunks), then two decode steps; every last-token logits row into out. */
static int run_target(const StepTarget *t, int V, float *out, Error *err) {
    int seq[3];
    int32_t prompt[3][30];
    const int len[3] = {30, 5, 12};
    for (int i = 0; i < 3; i++) {
        for (int k = 0; k < len[i]; k++) prompt[i][k] = (int32_t)((i * 131 + k * 7919 + 3) % V);
        if (t->seq_add(t->self, 40, &seq[i], err)) return -1;
    }
    /* a slot freed and taken again: the stages must agree on it */
    if (t->seq_remove(t->self, seq[1], err) || t->seq_add(t->self, 40, &seq[1], err)) return -1;
    SeqStep st[3];
    for (int i = 0; i < 3; i++) st[i] = (SeqStep){.seq = seq[i], .ids = prompt[i], .T = len[i]};
    int32_t next[3] = {5, 6, 7};
    for (int round = 0; round < 3; round++) {
        if (t->step(t->self, st, 3, err)) return -1;
        for (int i = 0; i < 3; i++) {
            memcpy(out + (size_t)(round * 3 + i) * (size_t)V, t->step_logits(t->self, i), (size_t)V * sizeof *out);
            st[i] = (SeqStep){.seq = seq[i], .ids = &next[i], .T = 1};
        }
    }
    for (int i = 0; i < 3; i++)
        if (t->seq_remove(t->self, seq[i], err)) return -1;
    return 0;
}

/* The engine's steps over 2 and 3 local stages: the last-token logits of every step bit for
 * bit those of the whole model's model_step, even with per-call outliers (every stage groups
 * the rows in the same chunks); a stage asked to embed without the embeddings refuses. */
static void check_steps(const char *name, const Checkpoint *ck, Backend *bk) {
    Error err;
    const int V = checkpoint_config(ck)->vocab_size;
    ModelOptions mo = {.quant = {.mode = QUANT_LLM_INT8, .threshold = 6.0f, .outliers = OUTLIERS_PER_CALL},
                       .ctx = 64, .cache_tokens = 192, .batch_tokens = 24};
    float *want = malloc(9 * (size_t)V * sizeof *want), *got = malloc(9 * (size_t)V * sizeof *got);
    Model *whole = NULL;
    StepTarget t;
    int rc = model_load(ck, bk, &mo, &whole, &err);
    if (rc == 0) {
        model_step_target(whole, &t);
        rc = run_target(&t, V, want, &err);
    }
    CHECK(rc == 0, "%s: steps on the whole model: %s", name, err.msg);
    model_free(whole);
    const char *devices[] = {"cpu,cpu", "cpu,cpu,cpu"};
    for (int d = 0; d < 2 && rc == 0; d++) {
        Pipeline *p = NULL;
        if (pipeline_open_local(ck, bk, devices[d], 1, NULL, &mo, &p, &err)) {
            CHECK(0, "%s %s: %s", name, devices[d], err.msg);
            continue;
        }
        pipeline_step_target(p, &t);
        int prc = run_target(&t, V, got, &err);
        CHECK(prc == 0, "%s %s: steps: %s", name, devices[d], err.msg);
        for (int r = 0; r < 9 && prc == 0; r++)
            CHECK(memcmp(got + (size_t)r * (size_t)V, want + (size_t)r * (size_t)V, (size_t)V * sizeof *got) == 0,
                  "%s %s: step %d, sequence %d: logits differ from the whole model's", name, devices[d], r / 3, r % 3);
        pipeline_free(p);
    }
    /* a later part asked to embed */
    ModelOptions part = mo;
    part.partial = true, part.layer_first = 1, part.layer_last = checkpoint_config(ck)->n_layers;
    Model *b = NULL;
    if (model_load(ck, bk, &part, &b, &err) == 0) {
        int32_t ids[2] = {1, 2};
        SeqStep st = {.seq = 0, .ids = ids, .T = 2};
        StageIO io = {0};
        CHECK(model_step_stage(b, &st, 1, &io, &err) != 0 && strstr(err.msg, "embeddings"),
              "%s: a part without embeddings embedded a step: %s", name, err.msg);
        model_free(b);
    }
    free(want), free(got);
}

static void check_model(const char *name) {
    char dir[256];
    snprintf(dir, sizeof dir, "tests/data/fixtures/%s", name);
    Error err;
    Checkpoint *ck = NULL;
    if (checkpoint_open(dir, &ck, &err)) {
        CHECK(0, "%s: %s", dir, err.msg);
        return;
    }
    Backend *bk = cpu_backend_create(1, &err);
    const ModelConfig *c = checkpoint_config(ck);
    const int L = c->n_layers, V = c->vocab_size;

    /* the parts' bytes */
    Model *whole = load(ck, bk, false, 0, 0, &err);
    Model *a = load(ck, bk, true, 0, 1, &err), *b = load(ck, bk, true, 1, L, &err);
    Model *mid = L > 2 ? load(ck, bk, true, 1, 2, &err) : load(ck, bk, true, 1, 1, &err);
    CHECK(whole && a && b && mid, "%s: loading parts: %s", name, err.msg);
    if (whole && a && b && mid) {
        size_t embed = bk->matrix_bytes(whole->w->embed);
        CHECK(a->weight_bytes + b->weight_bytes == whole->weight_bytes + embed,
              "%s: parts hold %zu + %zu bytes, the whole %zu (+ %zu embedding)", name, a->weight_bytes, b->weight_bytes,
              whole->weight_bytes, embed);
        CHECK(mid->w->embed == NULL && mid->w->lm_head == NULL && a->w->layers[L - 1].fc1.bk == NULL,
              "%s: a part holds what it should not", name);
        CHECK(model_kv_bytes(a) * (size_t)L == model_kv_bytes(whole), "%s: a one-layer part's KV cache is %zu of %zu",
              name, model_kv_bytes(a), model_kv_bytes(whole));
        int32_t ids[4] = {1, 2, 3, 4}, targets[4] = {2, 3, 4, -1};
        double nll[4];
        const float *hidden;
        CHECK(model_score(a, ids, 4, targets, nll, &err) != 0 && strstr(err.msg, "holds layers"),
              "%s: model_score on a part: %s", name, err.msg);
        CHECK(model_embed(b, ids, 4, &err) != 0, "%s: model_embed on a part without embeddings accepted", name);
        CHECK(model_finish(a, 4, &hidden, &err) != 0, "%s: model_finish on a part without the head accepted", name);
        CHECK(model_run_layers(a, 0, 2, 4, &err) != 0, "%s: a part ran a layer it does not hold", name);
    }
    model_free(whole), model_free(a), model_free(b), model_free(mid);

    /* bit for bit: 50 tokens in chunks of 24, through 2 and 3 stages */
    int32_t ids[50], targets[50];
    double want[50], got[50];
    for (int t = 0; t < 50; t++) ids[t] = (int32_t)((t * 7919 + 11) % V);
    for (int t = 0; t < 50; t++) targets[t] = t + 1 < 50 ? ids[t + 1] : -1;
    whole = load(ck, bk, false, 0, 0, &err);
    CHECK(whole && model_score(whole, ids, 50, targets, want, &err) == 0, "%s: model_score: %s", name, err.msg);
    ModelOptions mo = {.quant = {.mode = QUANT_LLM_INT8, .threshold = 6.0f, .outliers = OUTLIERS_PER_CALL},
                       .ctx = 64, .batch_tokens = 24};
    const char *devices[] = {"cpu,cpu", "cpu,cpu,cpu"};
    for (int d = 0; d < 2 && whole; d++) {
        Pipeline *p = NULL;
        int rc = pipeline_open_local(ck, bk, devices[d], 1, NULL, &mo, &p, &err);
        CHECK(rc == 0, "%s %s: %s", name, devices[d], err.msg);
        if (rc) continue;
        for (int t = 0; t < 50; t++) got[t] = -1;
        rc = pipeline_score(p, ids, 50, targets, got, &err);
        CHECK(rc == 0, "%s %s: pipeline_score: %s", name, devices[d], err.msg);
        for (int t = 0; t < 49 && rc == 0; t++)
            CHECK(memcmp(&got[t], &want[t], sizeof got[t]) == 0, "%s %s: token %d: NLL %.17g, whole model %.17g", name,
                  devices[d], t, got[t], want[t]);
        CHECK(rc != 0 || isnan(got[49]), "%s %s: an unscored position is %g", name, devices[d], got[49]);
        CHECK(pipeline_reset(p, &err) == 0 && pipeline_score(p, ids, 50, targets, got, &err) == 0 &&
                  memcmp(got, want, sizeof(double) * 49) == 0,
              "%s %s: after a reset the NLLs differ", name, devices[d]);
        pipeline_free(p);
    }
    model_free(whole);
    check_steps(name, ck, bk);
    bk->destroy(bk);
    checkpoint_close(ck);
}

static void check_split(void) {
    Error err;
    Checkpoint *ck = NULL;
    if (checkpoint_open("tests/data/fixtures/opt-tiny", &ck, &err)) return;
    ModelConfig c = *checkpoint_config(ck);
    int b[PIPELINE_MAX_STAGES + 1];
    c.n_layers = 24;
    CHECK(pipeline_split(&c, QUANT_LLM_INT8, 1, NULL, b, &err) == 0 && b[0] == 0 && b[1] == 24, "one stage: all");
    CHECK(pipeline_split(&c, QUANT_LLM_INT8, 4, NULL, b, &err) == 0 && b[4] == 24, "4 stages: %s", err.msg);
    for (int s = 0; s < 4; s++) CHECK(b[s] <= b[s + 1], "4 stages: bounds not increasing");
    CHECK(pipeline_split(&c, QUANT_LLM_INT8, 3, "10,4,10", b, &err) == 0 && b[1] == 10 && b[2] == 14 && b[3] == 24,
          "--split 10,4,10: %s", err.msg);
    CHECK(pipeline_split(&c, QUANT_LLM_INT8, 2, "0,24", b, &err) == 0 && b[1] == 0, "--split 0,24: %s", err.msg);
    const char *bad[] = {"10,10", "12,12,0", "12", "a,b", "12,,12", "-1,25", "12,12,", "99999999999999999999,1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(pipeline_split(&c, QUANT_LLM_INT8, 2, bad[i], b, &err) != 0, "--split %s accepted for 2 stages", bad[i]);
    char names[PIPELINE_MAX_STAGES][16];
    CHECK(pipeline_parse_devices("cpu,cuda:1,auto", names, PIPELINE_MAX_STAGES, &err) == 3, "device list");
    const char *bad_dev[] = {"cpu,", ",cpu", "cpu,,cpu", "cpu,gpu", "cuda:x", "cuda:", "cpu,cuda:12345"};
    for (size_t i = 0; i < sizeof bad_dev / sizeof bad_dev[0]; i++)
        CHECK(pipeline_parse_devices(bad_dev[i], names, PIPELINE_MAX_STAGES, &err) < 0, "--device %s accepted",
              bad_dev[i]);
    checkpoint_close(ck);
}

int main(void) {
    check_model("opt-tiny");
    check_model("opt-tiny-postln");
    check_model("bloom-tiny");
    check_split();
    return test_finish("test_pipeline_parts");
}
