/* checkpoint.c — a checkpoint directory: config.json plus one safetensors file or an
 * index and its shards, with tensors looked up by their short name (docs/MODELS.md).
 *
 * Hub checkpoints disagree on prefixes: OPT-125m stores "model.decoder.…", OPT-350m
 * "decoder.…"; BLOOM shards store "h.0.…" while HF-saved copies store
 * "transformer.h.0.…". Every tensor is indexed under its name without the prefix its
 * architecture's table gives, so the model code asks for one spelling only. */
#include "checkpoint.h"

#include "arch.h"

#include "fileio.h"
#include "json_in.h"
#include "torchbin.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"
#define BIN_INDEX_NAME "pytorch_model.bin.index.json"
#define BIN_SINGLE_NAME "pytorch_model.bin"
#define INDEX_MAX_BYTES (100u * 1000u * 1000u)

typedef struct Entry {
    const char *short_name;   /* points into tensor->name */
    const StTensor *tensor;
} Entry;

struct Checkpoint {
    char *dir;
    ModelConfig cfg;
    StFile **files;           /* model.safetensors, or the shards in index order */
    size_t n_files;
    const StTensor **all;     /* every tensor, file by file */
    size_t n_all;
    Entry *by_short;          /* sorted by short name */
};

const ModelConfig *checkpoint_config(const Checkpoint *c) { return &c->cfg; }
const char *checkpoint_dir(const Checkpoint *c) { return c->dir; }
size_t checkpoint_count(const Checkpoint *c) { return c->n_all; }
const StTensor *checkpoint_tensor(const Checkpoint *c, size_t i) { return i < c->n_all ? c->all[i] : NULL; }

const char *checkpoint_short_name(const Checkpoint *c, const char *name) {
    const char *prefix = arch_of(&c->cfg)->prefix;
    size_t len = strlen(prefix);
    return strncmp(name, prefix, len) == 0 && name[len] ? name + len : name;
}

void checkpoint_close(Checkpoint *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_files; i++) st_close(c->files[i]);
    free(c->files);
    free(c->all);
    free(c->by_short);
    free(c->dir);
    free(c);
}

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static int add_file(Checkpoint *c, const char *name, Error *err) {
    char *path = join(c->dir, name);
    if (!path) return err_set(err, "out of memory");
    StFile **files = realloc(c->files, (c->n_files + 1) * sizeof *files);
    if (!files) {
        free(path);
        return err_set(err, "out of memory");
    }
    c->files = files;
    size_t len = strlen(name);
    bool torch_bin = len >= 4 && strcmp(name + len - 4, ".bin") == 0; /* PyTorch's format */
    int rc = (torch_bin ? torchbin_open : st_open)(path, &c->files[c->n_files], err);
    free(path);
    if (rc == 0) c->n_files++;
    return rc;
}

/* A shard name from the index must be a plain file name in the checkpoint directory. */
static bool plain_file_name(const char *s) {
    return s[0] && strcmp(s, ".") != 0 && strcmp(s, "..") != 0 && !strchr(s, '/') && !strchr(s, '\\');
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Reads the index, opens each shard once (in name order), and checks that
 * every tensor the index names is in the shard it names. */
static int open_sharded(Checkpoint *c, const char *index_path, Error *err) {
    char *text;
    size_t len;
    if (read_small_file(index_path, INDEX_MAX_BYTES, &text, &len, err)) return -1;
    const char *index_name = strrchr(index_path, '/') ? strrchr(index_path, '/') + 1 : index_path;
    cJSON *root = json_parse(index_path, text, len, err);   /* refuses \u0000 and trailing text */
    free(text);
    if (!root) return -1;
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(root) || !cJSON_IsObject(map)) {
        cJSON_Delete(root);
        return err_set(err, "%s: not valid JSON with a \"weight_map\" object", index_path);
    }

    int rc = -1;
    size_t n = (size_t)cJSON_GetArraySize(map), n_shards = 0;
    const char **shards = calloc(n + 1, sizeof *shards); /* distinct shard names, sorted */
    if (!shards) {
        err_set(err, "out of memory");
        goto done;
    }
    if (n == 0) {
        err_set(err, "%s: \"weight_map\" lists no tensors", index_path);
        goto done;
    }
    const cJSON *item;
    cJSON_ArrayForEach(item, map) {
        if (!cJSON_IsString(item)) {
            err_set(err, "%s: weight_map entry for '%s' is not a file name", index_path, item->string);
            goto done;
        }
        if (!plain_file_name(item->valuestring)) {
            err_set(err, "%s: shard '%s' (for tensor '%s') is not a plain file name in the checkpoint directory",
                    index_path, item->valuestring, item->string);
            goto done;
        }
        shards[n_shards++] = item->valuestring;
    }
    qsort(shards, n_shards, sizeof *shards, cmp_str);
    size_t uniq = 0;
    for (size_t i = 0; i < n_shards; i++)
        if (uniq == 0 || strcmp(shards[uniq - 1], shards[i]) != 0) shards[uniq++] = shards[i];
    n_shards = uniq;

    /* Open each shard once; c->files[i] is shards[i]. */
    for (size_t i = 0; i < n_shards; i++) {
        char *p = join(c->dir, shards[i]);
        bool exists = p && file_exists(p);
        free(p);
        if (!exists) {
            err_set(err, "%s: shard '%s' named in %s does not exist", c->dir, shards[i], index_name);
            goto done;
        }
        if (add_file(c, shards[i], err)) goto done;
    }
    cJSON_ArrayForEach(item, map) {
        const char **hit = bsearch(&item->valuestring, shards, n_shards, sizeof *shards, cmp_str);
        const StFile *f = c->files[hit - shards];
        if (!st_find(f, item->string)) {
            err_set(err, "%s: tensor '%s' is listed in %s but the shard does not contain it", st_path(f),
                    item->string, index_name);
            goto done;
        }
    }
    rc = 0;
done:
    free(shards);
    cJSON_Delete(root);
    return rc;
}

/* PyTorch's own format, for repositories without safetensors: pytorch_model.bin, or the
 * shards listed in pytorch_model.bin.index.json (the same "weight_map" layout; add_file picks
 * the reader by the .bin suffix). *found is false when the directory has neither. */
static int open_torch_bin(Checkpoint *c, bool *found, Error *err) {
    char *single = join(c->dir, BIN_SINGLE_NAME), *index = join(c->dir, BIN_INDEX_NAME);
    int rc = 0;
    *found = true;
    if (!single || !index) rc = err_set(err, "out of memory");
    else if (file_exists(single)) rc = add_file(c, BIN_SINGLE_NAME, err);
    else if (file_exists(index)) rc = open_sharded(c, index, err);
    else *found = false;
    free(single);
    free(index);
    return rc;
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const Entry *)a)->short_name, ((const Entry *)b)->short_name);
}

/* Collects every tensor of every file and sorts them by short name. The same short name
 * twice (e.g. "model.decoder.x" and "decoder.x") is ambiguous and refused. */
static int build_index(Checkpoint *c, Error *err) {
    size_t total = 0;
    for (size_t i = 0; i < c->n_files; i++) total += st_count(c->files[i]);
    c->all = calloc(total + 1, sizeof *c->all);
    c->by_short = calloc(total + 1, sizeof *c->by_short);
    if (!c->all || !c->by_short) return err_set(err, "out of memory");
    for (size_t i = 0; i < c->n_files; i++)
        for (size_t j = 0; j < st_count(c->files[i]); j++) {
            const StTensor *t = st_tensor(c->files[i], j);
            c->by_short[c->n_all] = (Entry){checkpoint_short_name(c, t->name), t};
            c->all[c->n_all++] = t;
        }
    qsort(c->by_short, c->n_all, sizeof *c->by_short, cmp_entry);
    for (size_t i = 1; i < c->n_all; i++) {
        const Entry *a = &c->by_short[i - 1], *b = &c->by_short[i];
        if (strcmp(a->short_name, b->short_name) == 0)
            return err_set(err, "%s: tensor '%s' is stored twice: as '%s' in %s and as '%s' in %s", c->dir,
                           a->short_name, a->tensor->name, a->tensor->file, b->tensor->name, b->tensor->file);
    }
    return 0;
}

int checkpoint_open(const char *dir, Checkpoint **out, Error *err) {
    *out = NULL;
    Checkpoint *c = calloc(1, sizeof *c);
    if (!c || !(c->dir = malloc(strlen(dir) + 1))) {
        free(c);
        return err_set(err, "out of memory");
    }
    strcpy(c->dir, dir);
    /* "dir/" and "dir" name the same directory; keep messages tidy. */
    size_t dl = strlen(c->dir);
    while (dl > 1 && c->dir[dl - 1] == '/') c->dir[--dl] = 0;

    char *cfg_path = join(c->dir, "config.json");
    char *single = join(c->dir, SINGLE_NAME);
    char *index = join(c->dir, INDEX_NAME);
    int rc = -1;
    if (!cfg_path || !single || !index) {
        err_set(err, "out of memory");
        goto done;
    }
    if (!file_exists(cfg_path)) {
        err_set(err, "%s: config.json not found (not a Hugging Face checkpoint directory?)", c->dir);
        goto done;
    }
    if (config_load(cfg_path, &c->cfg, err)) goto done;
    /* Like transformers: a single file wins over an index when both are present. */
    if (file_exists(single)) {
        if (add_file(c, SINGLE_NAME, err)) goto done;
    } else if (file_exists(index)) {
        if (open_sharded(c, index, err)) goto done;
    } else {
        bool found;
        if (open_torch_bin(c, &found, err)) goto done;
        if (!found) {
            err_set(err, "%s: no weights found (looked for %s, %s, %s and %s)", c->dir, SINGLE_NAME, INDEX_NAME,
                    BIN_SINGLE_NAME, BIN_INDEX_NAME);
            goto done;
        }
    }
    if (build_index(c, err)) goto done;
    rc = 0;
done:
    free(cfg_path);
    free(single);
    free(index);
    if (rc) checkpoint_close(c);
    else *out = c;
    return rc;
}

const StTensor *checkpoint_find(const Checkpoint *c, const char *short_name) {
    Entry key = {short_name, NULL};
    const Entry *e = bsearch(&key, c->by_short, c->n_all, sizeof key, cmp_entry);
    return e ? e->tensor : NULL;
}

/* ---- checkpoint_require and its messages ------------------------------------------- */

static void append(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append(char *buf, size_t cap, const char *fmt, ...) {
    size_t len = strlen(buf);
    if (len + 1 >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

static void shape_str(const int64_t *shape, int ndim, char *buf, size_t cap) {
    buf[0] = 0;
    append(buf, cap, "[");
    for (int d = 0; d < ndim; d++) append(buf, cap, "%s%lld", d ? ", " : "", (long long)shape[d]);
    append(buf, cap, "]");
}

/* Says which config fields an expected shape came from, e.g. "ffn_dim 256, hidden_size 64",
 * by matching each dimension against the sizes the architecture's table labels. */
static void shape_origin(const ModelConfig *m, const int64_t *shape, int ndim, char *buf, size_t cap) {
    const Architecture *a = arch_of(m);
    buf[0] = 0;
    for (int d = 0; d < ndim; d++) {
        for (int k = 0; k < DIM_COUNT; k++) {
            if (!a->dim_labels[k] || arch_dim(m, (ArchDim)k) != shape[d]) continue;
            bool dup = false; /* don't repeat a field already named */
            for (int e = 0; e < d; e++) dup |= shape[e] == shape[d];
            if (!dup) append(buf, cap, "%s%s %lld", buf[0] ? ", " : "", a->dim_labels[k], (long long)shape[d]);
            break;
        }
    }
}

int checkpoint_require(const Checkpoint *c, const char *short_name, int ndim, const int64_t *shape,
                       unsigned allowed_dtypes, const StTensor **out, Error *err) {
    *out = NULL;
    const StTensor *t = checkpoint_find(c, short_name);
    if (!t) {
        if (c->n_files == 1)
            return err_set(err, "%s: tensor '%s' is missing (looked in %s)", c->dir, short_name, st_path(c->files[0]));
        return err_set(err, "%s: tensor '%s' is missing (looked in the %zu shards listed in the index)", c->dir,
                       short_name, c->n_files);
    }
    bool same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char found[200], want[200], origin[300];
        shape_str(t->shape, t->ndim, found, sizeof found);
        shape_str(shape, ndim, want, sizeof want);
        shape_origin(&c->cfg, shape, ndim, origin, sizeof origin);
        return err_set(err, "%s: tensor '%s' has shape %s, expected %s%s%s%s", t->file, t->name, found, want,
                       origin[0] ? " (from config.json: " : "", origin, origin[0] ? ")" : "");
    }
    if (!(allowed_dtypes & DT_MASK(t->dtype))) {
        char allowed[100] = "";
        for (int d = 0; d < DT_COUNT; d++)
            if (allowed_dtypes & DT_MASK(d)) append(allowed, sizeof allowed, "%s%s", allowed[0] ? ", " : "", dtype_name((DType)d));
        /* The usual way to get here: a quantization_config saying 8-bit over 16-bit weights. */
        bool int8_cfg = c->cfg.load_in_8bit && allowed_dtypes == DT_MASK(DT_I8);
        return err_set(err, "%s: tensor '%s' has dtype %s, expected %s%s%s", t->file, t->name, dtype_name(t->dtype),
                       strchr(allowed, ',') ? "one of " : "", allowed,
                       int8_cfg ? " (config.json has a bitsandbytes 8-bit quantization_config)" : "");
    }
    *out = t;
    return 0;
}
