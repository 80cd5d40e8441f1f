/* bench_checkpoint.c — the synthetic checkpoint of `llmint8 bench` (see bench_checkpoint.h):
 * the tensors and config.json from the architecture's table (arch.h), and the safetensors
 * data streamed a chunk at a time. */
#include "bench_checkpoint.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "arch.h"
#include "cli.h"
#include "dtype.h"
#include "rng.h"
#include "safetensors.h"

/* ---- random F16 weights ------------------------------------------------------------ */

void normal_table_init(NormalTable *t, double std, uint64_t *rng) {
    for (int i = 0; i < 65536; i++) t->v[i] = f32_to_f16((float)(std * splitmix64_normal(rng)));
}

/* Four values from each 64-bit draw. */
void fill_normal_f16(const NormalTable *t, uint64_t *rng, uint16_t *out, size_t n) {
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        uint64_t b = splitmix64_next(rng);
        out[i] = t->v[b & 0xffff], out[i + 1] = t->v[(b >> 16) & 0xffff];
        out[i + 2] = t->v[(b >> 32) & 0xffff], out[i + 3] = t->v[b >> 48];
    }
    for (; i < n; i++) out[i] = t->v[splitmix64_next(rng) & 0xffff];
}

/* ---- the tensors --------------------------------------------------------------------- */

typedef enum Fill { FILL_NORMAL, FILL_ZERO, FILL_ONE, FILL_LN_GAIN } Fill;

/* One stored tensor: NAME.weight or NAME.bias of a module of the architecture's table. */
typedef struct TensorSpec {
    char name[104];
    int ndim;
    int64_t shape[2];
    Fill fill;
} TensorSpec;

typedef struct TensorList {
    TensorSpec *t;
    int n, cap;
} TensorList;

static void add_tensor(TensorList *l, const ArchTensor *m, const char *suffix, int ndim, Fill fill) {
    TensorSpec *s = &l->t[l->n++]; /* cap: two per module, counted by list_tensors */
    snprintf(s->name, sizeof s->name, "%s.%s", m->name, suffix);
    s->ndim = ndim;
    s->shape[0] = m->rows, s->shape[1] = ndim == 2 ? m->cols : 0;
    s->fill = fill;
}

/* The synthetic model's config: the family's defaults (arch.h) with the shape's dimensions. */
static void shape_config(const BenchShape *s, ModelConfig *c) {
    ModelConfig family = {.arch = s->arch};
    arch_config_defaults(arch_of(&family), c);
    c->hidden = s->hidden, c->n_layers = s->layers, c->n_heads = s->heads, c->vocab_size = s->vocab;
    c->ffn_dim = s->ffn;
    if (s->arch == ARCH_OPT) {
        c->max_positions = BENCH_OPT_POSITIONS;
        c->word_embed_proj_dim = s->proj_dim; /* 0: = hidden */
        c->do_layer_norm_before = !s->post_ln;
    }
    arch_config_finish(c);
}

/* Every stored tensor of the architecture's table (arch_tensors), in table order, filled by
 * role: projection weights and embeddings N(0, BENCH_WEIGHT_STD), biases 0; LayerNorm
 * weights 1, or the planted gain for the norms inside the layers (those feeding
 * projections), LayerNorm biases 0. The lm_head is tied (not stored). */
static int list_tensors(const ModelConfig *c, TensorList *l, Error *err) {
    ArchTensor *modules;
    size_t n;
    if (arch_tensors(c, &modules, &n, err)) return -1;
    l->cap = 2 * (int)n, l->n = 0;
    if (!(l->t = calloc((size_t)l->cap + 1, sizeof *l->t))) {
        free(modules);
        return err_set(err, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        const ArchTensor *m = &modules[i];
        switch (m->role) {
        case TENSOR_PROJECTION:
            add_tensor(l, m, "weight", 2, FILL_NORMAL);
            if (m->bias) add_tensor(l, m, "bias", 1, FILL_ZERO);
            break;
        case TENSOR_EMBEDDING: add_tensor(l, m, "weight", 2, FILL_NORMAL); break;
        case TENSOR_NORM:
            add_tensor(l, m, "weight", 1, m->layer >= 0 ? FILL_LN_GAIN : FILL_ONE);
            add_tensor(l, m, "bias", 1, FILL_ZERO);
            break;
        case TENSOR_LM_HEAD: break;
        }
    }
    free(modules);
    return 0;
}

static int64_t tensor_numel(const TensorSpec *t) { return t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1); }

/* config.json: the architecture's own writer (arch.h) and "torch_dtype": "float16". */
static int write_config(const char *path, const ModelConfig *c, Error *err) {
    cJSON *root = cJSON_CreateObject();
    bool ok = root && arch_of(c)->write_config(c, root) == 0 &&
              cJSON_AddStringToObject(root, "torch_dtype", "float16") != NULL;
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return err_set(err, "out of memory writing %s", path);
    FILE *f = fopen(path, "w");
    if (!f) {
        free(text);
        return err_set(err, "%s: %s", path, strerror(errno));
    }
    bool failed = fputs(text, f) == EOF || fputc('\n', f) == EOF;
    free(text);
    if (fclose(f) != 0) failed = true;
    if (failed) return err_set(err, "%s: write error", path);
    return 0;
}

/* Streams every tensor's F16 data into the writer, a chunk at a time. */
static int write_tensors(StWriter *w, const TensorList *l, const int32_t *gain_dims, int n_gain_dims, uint64_t *rng,
                         Error *err) {
    enum { CHUNK = 1 << 20 };
    uint16_t *buf = malloc(CHUNK * sizeof *buf);
    NormalTable *table = malloc(sizeof *table);
    if (!buf || !table) {
        free(buf), free(table);
        return err_set(err, "out of memory");
    }
    normal_table_init(table, BENCH_WEIGHT_STD, rng);
    const uint16_t one = f32_to_f16(1.0f), gain = f32_to_f16(BENCH_LN_OUTLIER_GAIN);
    int rc = 0;
    for (int i = 0; i < l->n && rc == 0; i++) {
        const TensorSpec *t = &l->t[i];
        int64_t n = tensor_numel(t);
        for (int64_t done = 0; done < n && rc == 0;) {
            size_t k = n - done < CHUNK ? (size_t)(n - done) : CHUNK;
            switch (t->fill) {
            case FILL_NORMAL: fill_normal_f16(table, rng, buf, k); break;
            case FILL_ZERO: memset(buf, 0, k * sizeof *buf); break;
            case FILL_ONE:
            case FILL_LN_GAIN:
                for (size_t j = 0; j < k; j++) buf[j] = one;
                if (t->fill == FILL_LN_GAIN)
                    for (int d = 0; d < n_gain_dims; d++)
                        if (gain_dims[d] >= done && gain_dims[d] < done + (int64_t)k) buf[gain_dims[d] - done] = gain;
                break;
            }
            rc = st_writer_write_data(w, buf, k * sizeof *buf, err);
            done += (int64_t)k;
        }
    }
    free(buf), free(table);
    return rc;
}

/* The temporary checkpoint's paths, removed by the signal handler if the user interrupts
 * the (long) writing; after checkpoint_open they are removed at once. */
static char tmp_dir[4000], tmp_files[2][4096]; /* the directory; config.json, model.safetensors */
static volatile sig_atomic_t tmp_armed;

static void remove_tmp_checkpoint(void) {
    unlink(tmp_files[0]);
    unlink(tmp_files[1]);
    rmdir(tmp_dir);
}

static void on_signal(int sig) {
    if (tmp_armed) remove_tmp_checkpoint();
    signal(sig, SIG_DFL);
    raise(sig);
}

static int64_t checkpoint_bytes(const TensorList *l) {
    int64_t b = 0;
    for (int i = 0; i < l->n; i++) b += 2 * tensor_numel(&l->t[i]);
    return b;
}

/* ---- the checkpoint ---------------------------------------------------------------- */

int bench_checkpoint_create(const BenchShape *s, const int32_t *gain_dims, int n_gain_dims, const char *tmpdir,
                            bool verbose, Checkpoint **ck, Error *err) {
    ModelConfig cfg;
    shape_config(s, &cfg);
    TensorList l = {0};
    if (list_tensors(&cfg, &l, err)) return -1;
    int64_t bytes = checkpoint_bytes(&l);

    /* The page cache holds the whole file and fp16 runs from it: it must fit in memory. */
    double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (ram > 0 && (double)bytes > 0.8 * ram) {
        free(l.t);
        return err_set(err, "the synthetic %s weights take %.1f GB in fp16 but this machine has %.1f GB of memory; "
                            "use --layers N for a smaller model of the same width, or --gemm-only",
                       s->name, (double)bytes / 1e9, ram / 1e9);
    }
    const char *base = tmpdir ? tmpdir : getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    struct statvfs vfs;
    if (statvfs(base, &vfs) != 0) {
        free(l.t);
        return err_set(err, "--tmpdir %s: %s", base, strerror(errno));
    }
    double avail = (double)vfs.f_bavail * (double)vfs.f_frsize;
    if (avail < (double)bytes + 64e6) {
        free(l.t);
        return err_set(err, "%s has %.1f GB free but the synthetic checkpoint needs %.1f GB; choose another --tmpdir",
                       base, avail / 1e9, (double)bytes / 1e9);
    }
    if (snprintf(tmp_dir, sizeof tmp_dir, "%s/llmint8-bench-XXXXXX", base) >= (int)sizeof tmp_dir) {
        free(l.t);
        return err_set(err, "--tmpdir %.100s...: the path is too long", base);
    }
    if (!mkdtemp(tmp_dir)) {
        free(l.t);
        return err_set(err, "--tmpdir %s: cannot create a directory there (%s)", base, strerror(errno));
    }
    snprintf(tmp_files[0], sizeof tmp_files[0], "%s/config.json", tmp_dir);
    snprintf(tmp_files[1], sizeof tmp_files[1], "%s/model.safetensors", tmp_dir);
    struct sigaction sa = {0}, old[3];
    const int sigs[3] = {SIGINT, SIGTERM, SIGHUP};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++) sigaction(sigs[i], &sa, &old[i]);
    tmp_armed = 1;

    if (verbose)
        fprintf(stderr, "llmint8 bench: writing a synthetic %s checkpoint (%.2f GB of F16) to %s\n", s->name,
                (double)bytes / 1e9, tmp_dir);
    double t0 = cli_now();
    uint64_t rng = 2024;
    int rc = write_config(tmp_files[0], &cfg, err);
    StWriter *w = NULL;
    if (rc == 0) rc = st_writer_begin(tmp_files[1], &w, err);
    for (int i = 0; i < l.n && rc == 0; i++)
        rc = st_writer_declare(w, l.t[i].name, DT_F16, l.t[i].ndim, l.t[i].shape, err);
    if (rc == 0) rc = st_writer_write_header(w, err);
    if (rc == 0) rc = write_tensors(w, &l, gain_dims, n_gain_dims, &rng, err);
    if (w) {
        if (rc == 0) rc = st_writer_finish(w, err);
        else st_writer_abort(w);
    }
    if (rc == 0) rc = checkpoint_open(tmp_dir, ck, err);
    if (rc == 0 && verbose)
        fprintf(stderr, "llmint8 bench: written in %.1f s\n", cli_now() - t0);

    remove_tmp_checkpoint();
    tmp_armed = 0;
    for (int i = 0; i < 3; i++) sigaction(sigs[i], &old[i], NULL);
    free(l.t);
    return rc;
}
