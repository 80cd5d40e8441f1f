/* cmd_info.c — `llmint8 info`: what a checkpoint holds, and what it costs in memory.
 * Loading the model here (16-bit, used in place from the mapping: cheap) checks that every
 * tensor the architecture needs is present with the right shape. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "arch.h"
#include "cli.h"
#include "commands.h"
#include "json_out.h"

static const char HELP[] =
    "Usage: llmint8 info MODEL_DIR [--json]\n"
    "Prints the architecture, parameter count, stored dtype and the memory the weights take in\n"
    "16-bit and in int8. Every tensor is checked against the config; stored tensors the config\n"
    "does not use are listed (a layer beyond its layer count is an error).\n\n"
    "\n%s\nExample:\n"
    "  llmint8 info models/opt-gutenberg-7m\n";

enum { ARG_JSON = ARG_COMMAND_BASE };

/* Parameters in projections (quantized by int8) and in everything else (kept 16-bit), from
 * the architecture's tensor list (the lm_head is the tied embedding: not counted again);
 * bytes and dtypes as stored. */
static int count_params(const Checkpoint *ck, int64_t *proj, int64_t *other, int64_t *stored_bytes, unsigned *dtypes,
                        Error *err) {
    *proj = *other = *stored_bytes = 0;
    *dtypes = 0;
    for (size_t i = 0; i < checkpoint_count(ck); i++) {
        const StTensor *t = checkpoint_tensor(ck, i);
        *stored_bytes += (int64_t)t->nbytes;
        *dtypes |= DT_MASK(t->dtype);
    }
    ArchTensor *list;
    size_t n;
    if (arch_tensors(checkpoint_config(ck), &list, &n, err)) return -1;
    for (size_t i = 0; i < n; i++) {
        const ArchTensor *t = &list[i];
        switch (t->role) {
        case TENSOR_PROJECTION:
            *proj += t->rows * t->cols;
            if (t->bias) *other += t->rows;
            break;
        case TENSOR_EMBEDDING: *other += t->rows * t->cols; break;
        case TENSOR_NORM: *other += 2 * t->rows; break;
        case TENSOR_LM_HEAD: break;
        }
    }
    free(list);
    return 0;
}

/* In an 8-bit checkpoint, which projections are stored as int8 (I8 + SCB) and which as
 * float: those llm_int8_skip_modules keeps in 16-bit, and the rest, quantized on load
 * (docs/MODELS.md, "8-bit checkpoints"). One line each; at most a few names, then the count. */
static int print_int8_projections(const Checkpoint *ck, Error *err) {
    enum { NAMES_SHOWN = 6 };
    const ModelConfig *cfg = checkpoint_config(ck);
    ArchTensor *list;
    size_t n;
    if (arch_tensors(cfg, &list, &n, err)) return -1;
    size_t total = 0, int8 = 0, n_skipped = 0, n_onload = 0;
    char skipped[512] = "", onload[512] = "";
    for (size_t i = 0; i < n; i++) {
        if (list[i].role != TENSOR_PROJECTION) continue;
        total++;
        char key[128];
        snprintf(key, sizeof key, "%s.weight", list[i].name);
        const StTensor *w = checkpoint_find(ck, key);
        if (w && w->dtype == DT_I8) {
            int8++;
            continue;
        }
        bool skip = config_int8_skips(cfg, list[i].name); /* else quantized on load (model.c) */
        size_t *count = skip ? &n_skipped : &n_onload;
        char *names = skip ? skipped : onload;
        if ((*count)++ < NAMES_SHOWN) {
            size_t len = strlen(names);
            snprintf(names + len, 512 - len, "%s%s (%s)", len ? ", " : "", list[i].name,
                     w ? dtype_name(w->dtype) : "?");
        }
    }
    free(list);
    printf("int8:         %zu of %zu projections stored as int8\n", int8, total);
    if (n_skipped)
        printf("              16-bit, kept out of int8 by llm_int8_skip_modules: %s%s\n", skipped,
               n_skipped > NAMES_SHOWN ? ", ..." : "");
    if (n_onload)
        printf("              float, quantized on load (--quant): %s%s\n", onload,
               n_onload > NAMES_SHOWN ? ", ..." : "");
    return 0;
}

/* The stored tensors this config's model does not read (checkpoint_unused), one per line,
 * names escaped: they come from the file. */
static void print_unused(const Checkpoint *ck) {
    size_t n = checkpoint_unused_count(ck);
    if (n == 0) return;
    printf("unused:       %zu stored tensor%s not read with this config:\n", n, n == 1 ? "" : "s");
    for (size_t i = 0; i < n; i++) {
        const char *name = checkpoint_unused(ck, i)->name;
        fputs("              ", stdout);
        cli_write_escaped(stdout, name, strlen(name), 0);
        fputc('\n', stdout);
    }
}

int cmd_info(int argc, char **argv) {
    static const struct option longopts[] = {
        CLI_COMMON_OPTIONS,
        {"json", no_argument, NULL, ARG_JSON},
        {NULL, 0, NULL, 0},
    };
    CommonOptions co;
    cli_common_defaults(&co);
    bool json = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (c == 'h') { printf(HELP, CLI_COMMON_HELP); return 0; }
        if (c == ARG_JSON) { json = true; continue; }
        int r = cli_common_option(c, optarg, &co);
        if (r < 0) return 2;
        if (r == 0) return cli_usage_error("info", "unknown option");
    }
    if (optind < argc) co.model_dir = argv[optind++];
    if (optind < argc) return cli_usage_error("info", "unexpected argument '%s'", argv[optind]);
    if (!co.model_dir) return cli_usage_error("info", "no MODEL_DIR given");

    Error err;
    Session s;
    co.lists_unused = true; /* listed below instead of warned about */
    if (cli_session_open(&co, false, true, &s, &err)) return cli_fail(&err);
    co.quant.mode = QUANT_FP16;
    ModelOptions mo = {.ctx = 2, .batch_tokens = 1};
    if (cli_session_load_model(&s, &co, &mo, &err)) {
        cli_session_close(&s);
        return cli_fail(&err);
    }
    const ModelConfig *m = checkpoint_config(s.ck);
    int64_t proj, other, stored;
    unsigned dtypes;
    if (count_params(s.ck, &proj, &other, &stored, &dtypes, &err)) {
        cli_session_close(&s);
        return cli_fail(&err);
    }
    char dt[64] = "";
    for (int t = 0; t < DT_COUNT; t++)
        if (dtypes & DT_MASK(t)) {
            if (*dt) strcat(dt, "+");
            strcat(dt, dtype_name((DType)t));
        }
    /* fp16: 2 bytes per parameter; int8: 1 byte per projection weight plus a 4-byte scale per
     * output row (ignored here: < 0.1%), 16-bit for the rest. */
    double fp16_mb = 2.0 * (double)(proj + other) / 1e6, int8_mb = ((double)proj + 2.0 * (double)other) / 1e6;
    long native = arch_native_context(m);
    int rc = 0;
    if (json) {
        JsonOut j;
        json_out_begin(&j);
        json_add_string(&j, j.root, "architecture", arch_name(m->arch));
        json_add_int(&j, j.root, "layers", m->n_layers);
        json_add_int(&j, j.root, "hidden", m->hidden);
        json_add_int(&j, j.root, "heads", m->n_heads);
        json_add_int(&j, j.root, "ffn", m->ffn_dim);
        json_add_int(&j, j.root, "vocab", m->vocab_size);
        json_add_int(&j, j.root, "positions", native);
        json_add_int(&j, j.root, "parameters", proj + other);
        json_add_int(&j, j.root, "projection_parameters", proj);
        json_add_string(&j, j.root, "stored_dtype", dt);
        json_add_bool(&j, j.root, "int8_checkpoint", m->load_in_8bit);
        json_add_int(&j, j.root, "stored_bytes", stored);
        json_add_number(&j, j.root, "fp16_megabytes", round(fp16_mb * 10) / 10, NULL);
        json_add_number(&j, j.root, "int8_megabytes", round(int8_mb * 10) / 10, NULL);
        json_add_int(&j, j.root, "kv_cache_bytes_per_token", (int64_t)model_kv_bytes_per_token(s.model));
        json_add_string(&j, j.root, "kv_cache", s.model->kv_f16 ? "f16" : "f32");
        json_add_bool(&j, j.root, "tokenizer", s.tok != NULL);
        cJSON *unused = json_add_array(&j, j.root, "unused_tensors");
        for (size_t i = 0; i < checkpoint_unused_count(s.ck); i++)
            json_append_string(&j, unused, checkpoint_unused(s.ck, i)->name);
        rc = json_out_print(&j, stdout, false, &err);
    } else {
        printf("model:        %s\n", co.model_dir);
        printf("architecture: %s, %d layers, hidden %d, %d heads of %d, ffn %d, vocab %d\n", arch_name(m->arch),
               m->n_layers, m->hidden, m->n_heads, m->head_dim, m->ffn_dim, m->vocab_size);
        char summary[128];
        arch_of(m)->summary(m, summary, sizeof summary);
        printf("              %s\n", summary);
        printf("parameters:   %.2f M (%.2f M in projections, quantized by int8)\n", (double)(proj + other) / 1e6,
               (double)proj / 1e6);
        printf("stored:       %s, %.1f MB in %zu tensors%s\n", dt, (double)stored / 1e6, checkpoint_count(s.ck),
               m->load_in_8bit ? " (8-bit bitsandbytes checkpoint)" : "");
        if (m->load_in_8bit && print_int8_projections(s.ck, &err)) {
            cli_session_close(&s);
            return cli_fail(&err);
        }
        printf("memory:       fp16 %.1f MB, int8 %.1f MB (%.2fx)\n", fp16_mb, int8_mb, int8_mb / fp16_mb);
        printf("kv cache:     %zu bytes per token (%s; --kv-cache %s: %zu)\n", model_kv_bytes_per_token(s.model),
               s.model->kv_f16 ? "f16" : "f32", s.model->kv_f16 ? "f32" : "f16",
               s.model->kv_f16 ? 2 * model_kv_bytes_per_token(s.model) : model_kv_bytes_per_token(s.model) / 2);
        printf("tokenizer:    %s\n", s.tok ? "found" : "none in MODEL_DIR (use --tokenizer DIR for text)");
        print_unused(s.ck);
    }
    cli_session_close(&s);
    return rc ? cli_fail(&err) : 0;
}
