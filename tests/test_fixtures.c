/* test_fixtures.c — the whole model against Hugging Face transformers' own outputs.
 *
 * Usage: test_fixtures [cpu|cuda]. On cuda it exits 77 (skipped) when no GPU is usable, and
 * uses the tolerances of the CUDA issue for the fp16 path (fp16 activations on the tensor
 * cores): argmax equal, ppl within 1e-3 relative, logits within 2e-2.
 *
 * For every fixture in tests/data/fixtures (golden.json written by transformers 4.36.2, see
 * the fixtures' README):
 *   fp16 path:  logits within 1e-3 of logits.f32, identical argmax, ppl within 1e-4 relative,
 *               greedy tokens equal to greedy.new_ids, each KV-cache decode step's logits
 *               within 1e-3 of gen_logits.f32, and our own KV-cache steps equal to our own
 *               full forward over the same tokens.
 *   int8 path (where golden.json has "int8"): LLM.int8() with threshold 6 — ppl within 2% of
 *               int8.nll.ppl, argmax agreement with the int8 golden, greedy tokens reported.
 * Whole-model int8 logits are chaotic at the 1e-6 level (the fixtures' README), so int8 is
 * compared loosely, as the README advises.
 * 16-bit KV cache (run_kv16_case): half the bytes per token, ppl within 1e-3 of the golden,
 *               argmax on >= 30/32 positions, decode steps equal to the full forward.
 * Both paths: the forward run stage by stage (model.h's staged API, split between two
 * "processes" that hand the residual stream on) gives bit for bit the logits of
 * model_forward. And per fixture, the architecture's table (arch.h): every tensor it lists
 * is in the checkpoint with its shape, and write_config() writes a config.json that
 * config_load() reads back to the same numbers. */
#include <cJSON.h>
#include <math.h>

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "arch.h"
#include "backend.h"
#include "checkpoint.h"
#include "model.h"
#include "sampler.h"
#include "test_util.h"

static const char *const FIXTURES[] = {
    "opt-tiny", "opt-tiny-postln", "opt-tiny-sharded", "opt-tiny-v50272", "bloom-tiny", "bloom-tiny-bf16",
    /* PyTorch .bin twins (tests/data/fixtures-bin/README.md): the same models, the same goldens. */
    "../fixtures-bin/opt-tiny-bin", "../fixtures-bin/opt-tiny-postln-bin", "../fixtures-bin/opt-tiny-sharded-bin",
    "../fixtures-bin/opt-tiny-noprefix-bin", "../fixtures-bin/opt-tiny-views-bin", "../fixtures-bin/bloom-tiny-bin",
    "../fixtures-bin/bloom-tiny-bf16-bin",
};

static double worst_logit_err, worst_ppl_rel;

/* How close the fp16 path must come: to the goldens, and KV-cache steps to a full forward. */
typedef struct Tolerance {
    double logit, ppl, kv_vs_full;
} Tolerance;
static const Tolerance CPU_TOL = {1e-3, 1e-4, 1e-4}, CUDA_TOL = {2e-2, 1e-3, 1e-2};
static Tolerance tol;

static int json_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        if (n < cap) out[n] = (int32_t)it->valuedouble;
        n++;
    }
    return n;
}

static const cJSON *path(const cJSON *j, const char *a, const char *b, const char *c) {
    j = cJSON_GetObjectItemCaseSensitive(j, a);
    if (j && b) j = cJSON_GetObjectItemCaseSensitive(j, b);
    if (j && c) j = cJSON_GetObjectItemCaseSensitive(j, c);
    return j;
}

static double ppl_of(const float *logits, const int32_t *ids, int T, int V) {
    double sum = 0;
    for (int t = 0; t + 1 < T; t++) {
        const float *l = logits + (size_t)t * V;
        float mx = l[argmax_f32(l, V)];
        double z = 0;
        for (int v = 0; v < V; v++) z += exp((double)l[v] - mx);
        sum += log(z) + mx - l[ids[t + 1]];
    }
    return exp(sum / (T - 1));
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as a failure */
    }
    return m;
}

typedef struct Golden {
    int32_t ids[64];
    int T;
    int32_t prompt[16], new_ids[32];
    int n_prompt, n_new;
} Golden;

/* The 32 ids again, stage by stage: layers [0, split) in one "process", the residual
 * stream downloaded and uploaded, layers [split, n) in the next; the logits must be those
 * of model_forward bit for bit (the same operations on the same numbers). */
static void check_staged(const char *name, const char *tag, Model *m, const int32_t *ids, const float *want) {
    const int V = m->cfg.vocab_size, D = m->cfg.hidden, L = m->cfg.n_layers, split = L / 2;
    float *host = malloc((size_t)32 * D * sizeof *host), *got = malloc((size_t)32 * V * sizeof *got);
    const float *hidden = NULL;
    float *logits = NULL;
    Error err;
    model_reset(m);
    int rc = model_embed(m, ids, 32, &err);
    if (rc == 0) rc = model_run_layers(m, 0, split, 32, &err);
    if (rc == 0) {
        m->bk->download(m->bk, host, model_residual(m), (size_t)32 * D);
        m->bk->upload(m->bk, model_residual(m), host, (size_t)32 * D);
        rc = model_run_layers(m, split, L, 32, &err);
    }
    if (rc == 0) rc = model_finish(m, 32, &hidden, &err);
    if (rc == 0) rc = model_logits(m, hidden, 32, &logits, &err);
    if (rc == 0) {
        m->bk->download(m->bk, got, logits, (size_t)32 * V);
        rc = model_advance(m, 32, &err);
    }
    CHECK(rc == 0, "%s %s: staged forward: %s", name, tag, err.msg);
    CHECK(rc != 0 || memcmp(got, want, (size_t)32 * V * sizeof *got) == 0,
          "%s %s: the staged forward's logits differ from model_forward's", name, tag);
    CHECK(model_seq_len(m, 0) == 32, "%s %s: model_advance leaves n_past %d", name, tag, model_seq_len(m, 0));
    CHECK(model_run_layers(m, 0, L + 1, 1, &err) != 0, "%s: model_run_layers past the last layer accepted", name);
    model_reset(m);
    free(host), free(got);
}

/* write_config() writes a config.json that config_load() reads back to the same numbers. */
static void check_config_roundtrip(const char *name, const ModelConfig *cfg) {
    const Architecture *a = arch_of(cfg);
    Error err;
    char path[] = "/tmp/llmint8-test-config-XXXXXX";
    int fd = mkstemp(path);
    cJSON *o = cJSON_CreateObject();
    char *text = NULL;
    CHECK(fd >= 0 && o && a->write_config(cfg, o) == 0 && (text = cJSON_Print(o)), "%s: write_config", name);
    if (fd >= 0 && text) {
        FILE *f = fdopen(fd, "w");
        CHECK(f && fputs(text, f) >= 0 && fclose(f) == 0, "%s: writing %s", name, path);
        ModelConfig back;
        CHECK(config_load(path, &back, &err) == 0, "%s: config_load of write_config's JSON: %s", name, err.msg);
        CHECK(back.arch == cfg->arch && back.vocab_size == cfg->vocab_size && back.hidden == cfg->hidden &&
                  back.n_layers == cfg->n_layers && back.n_heads == cfg->n_heads && back.ffn_dim == cfg->ffn_dim &&
                  back.max_positions == cfg->max_positions && back.word_embed_proj_dim == cfg->word_embed_proj_dim &&
                  back.do_layer_norm_before == cfg->do_layer_norm_before && back.ln_eps == cfg->ln_eps &&
                  back.activation == cfg->activation && back.enable_bias == cfg->enable_bias &&
                  back.residual_post_ln == cfg->residual_post_ln && back.bos_id == cfg->bos_id &&
                  back.eos_id == cfg->eos_id && back.pad_id == cfg->pad_id,
              "%s: write_config then config_load changes the config", name);
    } else if (fd >= 0) {
        close(fd);
    }
    unlink(path);
    free(text);
    cJSON_Delete(o);
}


/* The table's tensors are all in the checkpoint (checkpoint_require checks the shapes), and
 * write_config() round-trips through config_load(). */
static void check_table(const char *name, const Checkpoint *ck) {
    const ModelConfig *cfg = checkpoint_config(ck);
    Error err;
    ArchTensor *list;
    size_t n;
    CHECK(arch_tensors(cfg, &list, &n, &err) == 0 && n > 0, "%s: arch_tensors", name);
    for (size_t i = 0; i < n; i++) {
        const ArchTensor *t = &list[i];
        if (t->optional) continue;
        char key[128];
        const StTensor *st;
        int64_t shape[2] = {t->rows, t->cols};
        snprintf(key, sizeof key, "%s.weight", t->name);
        CHECK(checkpoint_require(ck, key, t->role == TENSOR_NORM ? 1 : 2, shape, ~0u, &st, &err) == 0, "%s: %s",
              name, err.msg);
    }
    free(list);

    check_config_roundtrip(name, cfg);
}

/* Runs one precision of one fixture against its golden block (root for fp16, "int8" for int8). */
static void run_case(const char *name, const Checkpoint *ck, Backend *bk, const cJSON *g, bool int8) {
    const ModelConfig *cfg = checkpoint_config(ck);
    const int V = cfg->vocab_size;
    const cJSON *blk = int8 ? cJSON_GetObjectItemCaseSensitive(g, "int8") : g;
    char file[512];
    Error err;

    Golden gd;
    gd.T = json_ids(cJSON_GetObjectItemCaseSensitive(g, "input_ids"), gd.ids, 64);
    gd.n_prompt = json_ids(path(blk, "greedy", "prompt_ids", NULL), gd.prompt, 16);
    gd.n_new = json_ids(path(blk, "greedy", "new_ids", NULL), gd.new_ids, 32);
    CHECK(gd.T == 32 && gd.n_prompt == 8 && gd.n_new == 16, "%s: golden.json shapes", name);
    if (gd.T != 32 || gd.n_prompt != 8 || gd.n_new != 16) return;

    ModelOptions mo = {.quant = {.mode = int8 ? QUANT_LLM_INT8 : QUANT_FP16, .threshold = int8 ? 6.0f : 0.0f,
                                 .outliers = OUTLIERS_PER_CALL},
                       .ctx = 64, .batch_tokens = 64};
    Model *m;
    if (model_load(ck, bk, &mo, &m, &err)) {
        CHECK(0, "%s: model_load: %s", name, err.msg);
        return;
    }
    const char *tag = int8 ? "int8" : "fp16";

    /* Full forward over the 32 golden ids. */
    float *logits = malloc((size_t)32 * V * sizeof *logits);
    CHECK(model_forward(m, gd.ids, 32, true, logits, &err) == 0, "%s %s: forward: %s", name, tag, err.msg);
    snprintf(file, sizeof file, TEST_FIXTURES "/%s/%s", name, int8 ? "logits_int8.f32" : "logits.f32");
    float *gold = test_read_f32(file, (size_t)32 * V);
    double ppl = ppl_of(logits, gd.ids, 32, V);
    double gold_ppl = path(blk, "nll", "ppl", NULL)->valuedouble;
    double rel = fabs(ppl / gold_ppl - 1.0);
    check_staged(name, tag, m, gd.ids, logits);

    /* The same perplexity scored on the backend (model_score: only the NLLs come back). */
    int32_t targets[32];
    double nll[32], nll_sum = 0;
    for (int t = 0; t < 32; t++) targets[t] = t + 1 < 32 ? gd.ids[t + 1] : -1;
    model_reset(m);
    CHECK(model_score(m, gd.ids, 32, targets, nll, &err) == 0, "%s %s: model_score: %s", name, tag, err.msg);
    for (int t = 0; t < 31; t++) nll_sum += nll[t];
    double scored_ppl = exp(nll_sum / 31);
    CHECK(isnan(nll[31]), "%s %s: model_score gives NaN for the unscored last position", name, tag);
    CHECK(fabs(scored_ppl / ppl - 1.0) <= 1e-6, "%s %s: ppl from model_score %.10g, from the logits %.10g", name,
          tag, scored_ppl, ppl);
    if (gold) {
        double d = max_abs_diff(logits, gold, (size_t)32 * V);
        int agree = 0;
        for (int t = 0; t < 32; t++)
            agree += argmax_f32(logits + (size_t)t * V, V) == argmax_f32(gold + (size_t)t * V, V);
        if (!int8) {
            CHECK(d <= tol.logit, "%s fp16: max |logit error| %.3g > %.3g", name, d, tol.logit);
            CHECK(agree == 32, "%s fp16: argmax agrees on %d/32 positions", name, agree);
            CHECK(rel <= tol.ppl, "%s fp16: ppl %.8g vs golden %.8g (rel %.2g)", name, ppl, gold_ppl, rel);
            if (d > worst_logit_err) worst_logit_err = d;
            if (rel > worst_ppl_rel) worst_ppl_rel = rel;
        } else {
            /* The README: int8 whole-model logits flip roundings; argmax "mostly equal". */
            CHECK(rel <= 0.02, "%s int8: ppl %.6g vs golden %.6g (rel %.3g > 2%%)", name, ppl, gold_ppl, rel);
            CHECK(agree >= 28, "%s int8: argmax agrees on only %d/32 positions", name, agree);
            fprintf(stderr, "%s int8: ppl %.4f (golden %.4f, rel %.2e), max |logit diff| %.3f, argmax %d/32\n",
                    name, ppl, gold_ppl, rel, d, agree);
        }
        fprintf(stderr, "%s %s: max |logit error| %.3g, ppl rel error %.2g\n", name, tag, d, rel);
    }

    /* Greedy generation with the KV cache: prefill 8 tokens, then one at a time. */
    model_reset(m);
    snprintf(file, sizeof file, TEST_FIXTURES "/%s/%s", name, int8 ? "gen_logits_int8.f32" : "gen_logits.f32");
    float *gold_steps = test_read_f32(file, (size_t)16 * V);
    float *steps = malloc((size_t)16 * V * sizeof *steps);
    int32_t seq[24];
    memcpy(seq, gd.prompt, sizeof(int32_t) * 8);
    int ok = model_forward(m, seq, 8, false, steps, &err) == 0;
    for (int i = 0; ok && i < 16; i++) {
        int32_t next = argmax_f32(steps + (size_t)i * V, V);
        seq[8 + i] = next;
        if (i + 1 < 16) ok = model_forward(m, &next, 1, false, steps + (size_t)(i + 1) * V, &err) == 0;
    }
    CHECK(ok, "%s %s: generation failed: %s", name, tag, err.msg);
    int same = 0;
    for (int i = 0; i < 16; i++) same += seq[8 + i] == gd.new_ids[i];
    if (!int8) {
        CHECK(same == 16, "%s fp16: greedy tokens equal on %d/16", name, same);
        if (gold_steps) {
            double d = max_abs_diff(steps, gold_steps, (size_t)16 * V);
            CHECK(d <= tol.logit, "%s fp16: KV-cache step logits differ from golden by %.3g", name, d);
            if (d > worst_logit_err) worst_logit_err = d;
        }
        /* Our KV-cache steps must equal our own full forward over the same 24 tokens. */
        model_reset(m);
        float *full = malloc((size_t)24 * V * sizeof *full);
        CHECK(model_forward(m, seq, 24, true, full, &err) == 0, "%s: full forward: %s", name, err.msg);
        double d = max_abs_diff(steps, full + (size_t)7 * V, (size_t)16 * V);
        CHECK(d <= tol.kv_vs_full, "%s fp16: KV-cache decode differs from the full forward by %.3g", name, d);
        free(full);
    } else {
        /* int8 greedy may legitimately diverge once a rounding flips a close call; the first
         * step uses the prompt only, so it must agree. */
        CHECK(seq[8] == gd.new_ids[0], "%s int8: first greedy token %d != golden %d", name, seq[8], gd.new_ids[0]);
        fprintf(stderr, "%s int8: greedy tokens equal on %d/16\n", name, same);
    }

    /* Greedy with the logits left on the backend (model_forward_last + the backend's argmax,
     * as `generate` runs): the same tokens as the argmax of the downloaded rows above. */
    model_reset(m);
    int32_t dev_seq[24];
    memcpy(dev_seq, gd.prompt, sizeof(int32_t) * 8);
    float *row = model_forward_last(m, dev_seq, 8, &err);
    for (int i = 0; row && i < 16; i++) {
        dev_seq[8 + i] = bk->argmax(bk, row, V);
        if (i + 1 < 16) row = model_forward_last(m, &dev_seq[8 + i], 1, &err);
    }
    CHECK(row != NULL, "%s %s: model_forward_last: %s", name, tag, err.msg);
    CHECK(memcmp(dev_seq, seq, sizeof seq) == 0, "%s %s: greedy on the backend differs from greedy on the host",
          name, tag);

    free(steps), free(gold_steps), free(logits), free(gold);
    model_free(m);
}

/* The 16-bit KV cache (ModelOptions.kv_f16) on the fp16 path. The goldens were computed with
 * a float32 cache (transformers in float32), and rounding keys and values to half moves
 * these fixtures' logits by up to ~0.06 (their LayerNorms plant +-7 channels, so keys and
 * values are large): the goldens' 1e-3 logit tolerance is for the float32 cache, checked in
 * run_case. Here: the cache takes half the bytes per token; ppl within 1e-3 of the golden
 * (fp16's 2^-11 relative rounding of every key and value); argmax on at least 30/32
 * positions; KV-cache decode steps equal to the full forward over the same tokens, as for
 * the float32 cache. */
static double worst_kv16_logit_err, worst_kv16_ppl_rel;

static void run_kv16_case(const char *name, const Checkpoint *ck, Backend *bk, const cJSON *g) {
    const int V = checkpoint_config(ck)->vocab_size;
    int32_t ids[64];
    if (json_ids(cJSON_GetObjectItemCaseSensitive(g, "input_ids"), ids, 64) != 32) return;
    Error err;
    Model *m16, *m32;
    ModelOptions mo = {.quant = {.mode = QUANT_FP16}, .ctx = 64, .batch_tokens = 64, .kv_f16 = true};
    if (model_load(ck, bk, &mo, &m16, &err)) {
        CHECK(0, "%s kv16: model_load: %s", name, err.msg);
        return;
    }
    mo.kv_f16 = false;
    if (model_load(ck, bk, &mo, &m32, &err)) {
        CHECK(0, "%s kv32: model_load: %s", name, err.msg);
        model_free(m16);
        return;
    }
    CHECK(2 * model_kv_bytes_per_token(m16) == model_kv_bytes_per_token(m32) &&
              model_kv_bytes_per_token(m16) == (size_t)4 * m16->cfg.n_layers * m16->cfg.hidden,
          "%s: KV bytes per token %zu (half) vs %zu (float32)", name, model_kv_bytes_per_token(m16),
          model_kv_bytes_per_token(m32));
    model_free(m32);

    char file[512];
    snprintf(file, sizeof file, TEST_FIXTURES "/%s/logits.f32", name);
    float *gold = test_read_f32(file, (size_t)32 * V), *logits = malloc((size_t)32 * V * sizeof *logits);
    CHECK(model_forward(m16, ids, 32, true, logits, &err) == 0, "%s kv16: forward: %s", name, err.msg);
    if (gold) {
        double d = max_abs_diff(logits, gold, (size_t)32 * V);
        double rel = fabs(ppl_of(logits, ids, 32, V) / path(g, "nll", "ppl", NULL)->valuedouble - 1.0);
        int agree = 0;
        for (int t = 0; t < 32; t++) agree += argmax_f32(logits + (size_t)t * V, V) == argmax_f32(gold + (size_t)t * V, V);
        CHECK(rel <= 1e-3, "%s kv16: ppl rel error %.2g > 1e-3", name, rel);
        CHECK(agree >= 30, "%s kv16: argmax agrees on only %d/32 positions", name, agree);
        fprintf(stderr, "%s fp16, 16-bit KV cache: max |logit error| %.3g, ppl rel error %.2g, argmax %d/32\n", name,
                d, rel, agree);
        if (d > worst_kv16_logit_err) worst_kv16_logit_err = d;
        if (rel > worst_kv16_ppl_rel) worst_kv16_ppl_rel = rel;
    }
    /* decode steps with the half cache against the full forward over the same tokens */
    model_reset(m16);
    float *steps = malloc((size_t)8 * V * sizeof *steps);
    int ok = model_forward(m16, ids, 24, false, steps, &err) == 0;
    for (int i = 1; ok && i < 8; i++) ok = model_forward(m16, &ids[23 + i], 1, false, steps + (size_t)i * V, &err) == 0;
    CHECK(ok, "%s kv16: decode: %s", name, err.msg);
    double d = max_abs_diff(steps, logits + (size_t)23 * V, (size_t)8 * V);
    CHECK(d <= tol.kv_vs_full, "%s kv16: KV-cache decode differs from the full forward by %.3g", name, d);
    free(steps), free(logits), free(gold);
    model_free(m16);
}

int main(int argc, char **argv) {
    const char *device = argc > 1 ? argv[1] : "cpu";
    Error err;
    Backend *bk = backend_create(device, 2, NULL, &err);
    if (!bk) {
        if (strcmp(device, "cuda") == 0) {
            printf("test_fixtures cuda: skipped: no usable GPU (%s)\n", err.msg);
            return 77;
        }
        fprintf(stderr, "%s backend: %s\n", device, err.msg);
        return 1;
    }
    const bool on_cuda = strcmp(bk->name, "cuda") == 0;
    tol = on_cuda ? CUDA_TOL : CPU_TOL;
    fprintf(stderr, "test_fixtures on %s\n", bk->name);
    /* A synthetic config as bench makes one: the defaults with other dimensions. */
    const char *const TYPES[] = {"opt", "bloom"};
    for (int i = 0; i < 2; i++) {
        ModelConfig c;
        const Architecture *a = arch_find(TYPES[i]);
        CHECK(a && strcmp(arch_name(arch_id(a)), TYPES[i]) == 0, "arch_find(\"%s\")", TYPES[i]);
        if (!a) continue;
        arch_config_defaults(a, &c);
        c.hidden = 96, c.n_heads = 6, c.n_layers = 3, c.vocab_size = 500;
        c.ffn_dim = i == 0 ? 200 : 0;
        arch_config_finish(&c);
        CHECK(c.head_dim == 16 && c.word_embed_proj_dim == 96 && c.ffn_dim == (i == 0 ? 200 : 384),
              "%s: arch_config_finish", TYPES[i]);
        check_config_roundtrip(TYPES[i], &c);
    }
    for (size_t i = 0; i < sizeof FIXTURES / sizeof FIXTURES[0]; i++) {
        const char *name = FIXTURES[i];
        char dir[256], gpath[300];
        snprintf(dir, sizeof dir, TEST_FIXTURES "/%s", name);
        snprintf(gpath, sizeof gpath, "%s/golden.json", dir);
        char *text = test_read_file(gpath, NULL);
        cJSON *g = text ? cJSON_Parse(text) : NULL;
        free(text);
        CHECK(g != NULL, "%s: cannot read golden.json", name);
        if (!g) continue;
        Checkpoint *ck;
        if (checkpoint_open(dir, &ck, &err)) {
            CHECK(0, "%s: checkpoint_open: %s", name, err.msg);
            cJSON_Delete(g);
            continue;
        }
        check_table(name, ck);
        run_case(name, ck, bk, g, false);
        run_kv16_case(name, ck, bk, g);
        if (cJSON_GetObjectItemCaseSensitive(g, "int8")) run_case(name, ck, bk, g, true);
        checkpoint_close(ck);
        cJSON_Delete(g);
    }
    /* The pre-1.6 (non-zip) format is refused, with a message that says so. */
    Checkpoint *legacy = NULL;
    CHECK(checkpoint_open("tests/data/fixtures-bin/opt-tiny-legacy-bin", &legacy, &err) != 0 &&
              strstr(err.msg, "legacy (pre-1.6)") && strstr(err.msg, "pytorch_model.bin"),
          "legacy .bin: expected a clear refusal, got %s", legacy ? "a checkpoint" : err.msg);
    checkpoint_close(legacy);
    bk->destroy(bk);
    fprintf(stderr, "worst fp16 logit error %.3g, worst fp16 ppl relative error %.3g\n", worst_logit_err,
            worst_ppl_rel);
    fprintf(stderr, "16-bit KV cache: worst fp16 logit error %.3g, worst ppl relative error %.3g\n",
            worst_kv16_logit_err, worst_kv16_ppl_rel);
    return test_finish(on_cuda ? "fixtures (cuda)" : "fixtures");
}
