/* cmd_convert.c — `llmint8 convert`: a 16/32-bit Hugging Face checkpoint → the 8-bit
 * layout that transformers + bitsandbytes save and load (docs/MODELS.md, "8-bit checkpoints").
 *
 * Per projection P (every TENSOR_PROJECTION of the architecture's table, arch.h: OPT
 * q/k/v/out_proj, fc1, fc2, project_in/out; BLOOM query_key_value, dense, dense_h_to_4h,
 * dense_4h_to_h):
 *   P.weight         I8  [out, in]   CB = rne(fp16(W) * 127 / SCB)   (quant_weight_rowwise)
 *   P.SCB            F32 [out]       per-row fp16 absmax
 *   P.weight_format  U8  []          0 = row-major
 *   P.bias           F16 [out]
 * Everything else (embeddings, positions, LayerNorms) is written as F16; the tied
 * lm_head is omitted. Names get the *ForCausalLM prefix ("model." OPT, "transformer."
 * BLOOM). config.json is the source's text with the dtype set to "float16" and the
 * quantization_config block transformers writes (docs/MODELS.md); every other value keeps
 * its bytes (see write_config).
 *
 * The output appears atomically: everything is written into OUT_DIR.tmp-XXXXXX next to
 * OUT_DIR and renamed at the end; an error or SIGINT/SIGTERM removes the temporary
 * directory. Tensors are streamed in chunks, so memory stays small whatever the model.
 * --force replaces an existing OUT_DIR only if it is a checkpoint directory by its contents,
 * and of the old copy deletes only the checkpoint files (see check_replaceable). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "commands.h"
#include "json_in.h"

static const char HELP[] =
    "Usage: llmint8 convert MODEL_DIR -o OUT_DIR [options]\n"
    "Writes an 8-bit copy of a 16- or 32-bit OPT/BLOOM checkpoint in the layout transformers and\n"
    "bitsandbytes use (int8 weights + per-row scales), loadable by llmint8 and by\n"
    "AutoModelForCausalLM.from_pretrained(OUT_DIR).\n\n"
    "  -o, --output DIR       where to write (must not exist, unless --force)\n"
    "      --threshold T      llm_int8_threshold stored in config.json (default 6.0)\n"
    "      --shard-size SIZE  largest shard, e.g. 500MB, 2GB, 1GiB (default 2GB)\n"
    "      --force            replace OUT_DIR if it exists and holds nothing but checkpoint files\n"
    "                         (config.json, weights, tokenizer files); never MODEL_DIR, a directory\n"
    "                         above it, or the current directory. Only once the new copy is complete.\n"
    "  -h, --help             this help\n\n"
    "Example:\n"
    "  llmint8 convert models/opt-gutenberg-7m -o /tmp/opt-gutenberg-7m-int8\n"
    "  llmint8 ppl /tmp/opt-gutenberg-7m-int8 -f tests/data/eval/wiki.test.raw\n";

enum { ARG_SHARD_SIZE = ARG_COMMAND_BASE, ARG_FORCE };

/* Tokenizer and generation files copied as they are, when present. */
static const char *const COPIED_FILES[] = {
    "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "generation_config.json",
};

#define CHUNK_BYTES ((size_t)16 << 20) /* work buffer: tensors are converted this much at a time */

/* ---- signals: stop between chunks, then clean up ---------------------------------------- */

static volatile sig_atomic_t g_signal;

static void on_signal(int sig) { g_signal = sig; }

static int check_signal(Error *err) {
    return g_signal ? err_set(err, "interrupted by signal %d", (int)g_signal) : 0;
}

/* dir + "/" + name into buf[PATH_MAX]; a path too long is an error, not a truncation. */
static int path_join(char *buf, const char *dir, const char *name, Error *err) {
    int n = snprintf(buf, PATH_MAX, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_MAX) return err_set(err, "%s/%s: path too long", dir, name);
    return 0;
}

/* ---- the conversion plan ---------------------------------------------------------------- */

typedef enum OutKind { OUT_F16, OUT_CB, OUT_SCB, OUT_FORMAT } OutKind;

typedef struct Proj {
    const StTensor *w;     /* the 16/32-bit weight [out, in] */
    int64_t out, in;
    float *scb;            /* filled while CB is written, written (and freed) as SCB */
} Proj;

typedef struct OutTensor {
    char name[256];        /* output name, with the *ForCausalLM prefix */
    OutKind kind;
    const StTensor *src;   /* OUT_F16: the tensor to convert */
    int proj;              /* OUT_CB / OUT_SCB / OUT_FORMAT: index into Plan.proj */
    DType dtype;
    int ndim;
    int64_t shape[2];
    uint64_t nbytes;
    int shard;
} OutTensor;

typedef struct Plan {
    const Checkpoint *ck;
    const char *prefix;
    OutTensor *t;
    size_t n, cap;
    Proj *proj;
    size_t n_proj, cap_proj;
    const StTensor *tied_lm_head; /* read (to compare) but not written */
    int n_shards;
} Plan;

static OutTensor *plan_add(Plan *p, const char *name, OutKind kind, DType dt, int ndim, int64_t d0, int64_t d1,
                           Error *err) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 256;
        OutTensor *t = realloc(p->t, cap * sizeof *t);
        if (!t) {
            err_set(err, "out of memory");
            return NULL;
        }
        p->t = t;
        p->cap = cap;
    }
    OutTensor *o = &p->t[p->n++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    o->kind = kind;
    o->dtype = dt;
    o->ndim = ndim;
    o->shape[0] = d0;
    o->shape[1] = d1;
    o->nbytes = dtype_size(dt);
    for (int i = 0; i < ndim; i++) o->nbytes *= (uint64_t)o->shape[i];
    o->proj = -1;
    return o;
}

/* A tensor copied as F16: `short_name` must exist with this shape in a float dtype. */
static int plan_f16(Plan *p, const char *short_name, int ndim, int64_t d0, int64_t d1, Error *err) {
    const StTensor *t;
    int64_t shape[2] = {d0, d1};
    if (checkpoint_require(p->ck, short_name, ndim, shape, DT_FLOAT_MASK, &t, err)) return -1;
    char name[256];
    snprintf(name, sizeof name, "%s%s", p->prefix, short_name);
    OutTensor *o = plan_add(p, name, OUT_F16, DT_F16, ndim, d0, d1, err);
    if (!o) return -1;
    o->src = t;
    return 0;
}

static int plan_layernorm(Plan *p, const char *module, int64_t dim, Error *err) {
    char key[256];
    snprintf(key, sizeof key, "%s.weight", module);
    if (plan_f16(p, key, 1, dim, 0, err)) return -1;
    snprintf(key, sizeof key, "%s.bias", module);
    return plan_f16(p, key, 1, dim, 0, err);
}

/* A projection: weight → CB + SCB + weight_format (docs/MODELS.md), bias as F16. */
static int plan_linear(Plan *p, const char *module, int64_t out, int64_t in, bool bias, Error *err) {
    char key[256], name[256];
    const StTensor *w;
    int64_t shape[2] = {out, in};
    snprintf(key, sizeof key, "%s.weight", module);
    if (checkpoint_require(p->ck, key, 2, shape, DT_FLOAT_MASK, &w, err)) return -1;
    if (p->n_proj == p->cap_proj) {
        size_t cap = p->cap_proj ? 2 * p->cap_proj : 64;
        Proj *pr = realloc(p->proj, cap * sizeof *pr);
        if (!pr) return err_set(err, "out of memory");
        p->proj = pr;
        p->cap_proj = cap;
    }
    int k = (int)p->n_proj++;
    p->proj[k] = (Proj){.w = w, .out = out, .in = in, .scb = NULL};
    static const struct { const char *suffix; OutKind kind; DType dt; int ndim; } parts[] = {
        {"weight", OUT_CB, DT_I8, 2},                  /* [out, in] */
        {"SCB", OUT_SCB, DT_F32, 1},                   /* [out] */
        {"weight_format", OUT_FORMAT, DT_U8, 0},       /* [] */
    };
    for (size_t i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s%s.%s", p->prefix, module, parts[i].suffix);
        OutTensor *o = plan_add(p, name, parts[i].kind, parts[i].dt, parts[i].ndim, out, in, err);
        if (!o) return -1;
        o->proj = k;
    }
    if (!bias) return 0;
    snprintf(key, sizeof key, "%s.bias", module);
    return plan_f16(p, key, 1, out, 0, err);
}

/* lm_head.weight is normally not stored (tied to the embedding, docs/MODELS.md). A stored
 * copy equal to the token embedding is dropped; a different one is kept, as F16, under its
 * own name (outside the prefix, as transformers saves it). */
static int plan_lm_head(Plan *p, const ArchTensor *t, const StTensor *emb, Error *err) {
    char key[256];
    snprintf(key, sizeof key, "%s.weight", t->name);
    const StTensor *lm = checkpoint_find(p->ck, key);
    if (!lm) return 0;
    int64_t shape[2] = {t->rows, t->cols};
    if (checkpoint_require(p->ck, key, 2, shape, DT_FLOAT_MASK, &lm, err)) return -1;
    if (emb && lm->dtype == emb->dtype && lm->nbytes == emb->nbytes && memcmp(lm->data, emb->data, lm->nbytes) == 0) {
        p->tied_lm_head = lm;
        return 0;
    }
    OutTensor *o = plan_add(p, key, OUT_F16, DT_F16, 2, shape[0], shape[1], err);
    if (!o) return -1;
    o->src = lm;
    return 0;
}

/* Every module of the architecture's tensor list, in its order: projections to int8,
 * the rest to F16. */
static int plan_tensors(Plan *p, const ModelConfig *c, Error *err) {
    ArchTensor *list;
    size_t n;
    if (arch_tensors(c, &list, &n, err)) return -1;
    const StTensor *token_embed = NULL; /* the first embedding, which a stored lm_head may repeat */
    char key[256];
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const ArchTensor *t = &list[i];
        switch (t->role) {
        case TENSOR_PROJECTION: rc = plan_linear(p, t->name, t->rows, t->cols, t->bias, err); break;
        case TENSOR_NORM: rc = plan_layernorm(p, t->name, t->rows, err); break;
        case TENSOR_EMBEDDING:
            snprintf(key, sizeof key, "%s.weight", t->name);
            rc = plan_f16(p, key, 2, t->rows, t->cols, err);
            if (rc == 0 && !token_embed) token_embed = p->t[p->n - 1].src;
            break;
        case TENSOR_LM_HEAD: rc = plan_lm_head(p, t, token_embed, err); break;
        }
    }
    free(list);
    return rc;
}

static int cmp_ptr(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)*(const StTensor *const *)a, y = (uintptr_t)*(const StTensor *const *)b;
    return x < y ? -1 : x > y;
}

/* Input tensors the plan does not read are left out, with a warning. */
static int warn_unused(const Plan *p, Error *err) {
    const StTensor **used = malloc((p->n + 1) * sizeof *used);
    if (!used) return err_set(err, "out of memory");
    size_t n = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (p->t[i].kind == OUT_F16) used[n++] = p->t[i].src;
        if (p->t[i].kind == OUT_CB) used[n++] = p->proj[p->t[i].proj].w;
    }
    if (p->tied_lm_head) used[n++] = p->tied_lm_head;
    qsort(used, n, sizeof *used, cmp_ptr);
    for (size_t i = 0; i < checkpoint_count(p->ck); i++) {
        const StTensor *t = checkpoint_tensor(p->ck, i);
        if (!bsearch(&t, used, n, sizeof *used, cmp_ptr))
            cli_warn("%s: tensor '%s' is not part of the %s model; not copied", t->file, t->name,
                     arch_name(checkpoint_config(p->ck)->arch));
    }
    free(used);
    return 0;
}

/* Greedy sharding like transformers' save_pretrained: start a new shard when the next
 * tensor would push the current one past the limit (a bigger tensor gets its own). */
static void assign_shards(Plan *p, uint64_t max_bytes) {
    uint64_t cur = 0;
    int shard = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (cur > 0 && cur + p->t[i].nbytes > max_bytes) {
            shard++;
            cur = 0;
        }
        p->t[i].shard = shard;
        cur += p->t[i].nbytes;
    }
    p->n_shards = shard + 1;
}

static void plan_free(Plan *p) {
    for (size_t i = 0; i < p->n_proj; i++) free(p->proj[i].scb);
    free(p->proj);
    free(p->t);
}

/* ---- writing tensors ------------------------------------------------------------------- */

typedef struct Writer {
    StWriter *w;
    void *buf;             /* CHUNK_BYTES of scratch */
    Progress progress;
    uint64_t done;
} Writer;

/* Every float tensor convert reads becomes float16 (or int8 of its float16 copy, as
 * bitsandbytes quantizes it), so each must hold only values float16 can: a NaN or infinity,
 * or a finite value beyond 65504 (it would become infinity), is an error naming the tensor,
 * the element and the value. (A NaN would otherwise be written as int8 0, an infinity make
 * its row's scale infinite.) Loading in an int8 mode applies the same rule. */
static int check_values(const StTensor *t, Error *err) { return st_check_values(t, true, err); }

/* Any float tensor → F16, chunk by chunk. */
static int write_f16(Writer *wr, const OutTensor *o, Error *err) {
    const StTensor *t = o->src;
    if (check_values(t, err)) return -1;
    if (t->dtype == DT_F16) return st_writer_write_data(wr->w, t->data, t->nbytes, err);
    uint16_t *h = wr->buf;
    size_t per = CHUNK_BYTES / sizeof *h;
    for (int64_t i0 = 0; i0 < t->numel; i0 += (int64_t)per) {
        size_t n = (size_t)(t->numel - i0 < (int64_t)per ? t->numel - i0 : (int64_t)per);
        for (size_t i = 0; i < n; i++) h[i] = f32_to_f16(dtype_load_f32(t->dtype, t->data, (size_t)i0 + i));
        if (st_writer_write_data(wr->w, h, n * sizeof *h, err) || check_signal(err)) return -1;
    }
    return 0;
}

/* CB, a block of rows at a time; the rows' SCB go to pr->scb for the SCB tensor later. */
static int write_cb(Writer *wr, Proj *pr, Error *err) {
    if (check_values(pr->w, err)) return -1;
    if (!(pr->scb = malloc((size_t)(pr->out ? pr->out : 1) * sizeof *pr->scb))) return err_set(err, "out of memory");
    int64_t rows = (int64_t)(CHUNK_BYTES / (size_t)(pr->in ? pr->in : 1));
    if (rows < 1) rows = 1;
    size_t esize = dtype_size(pr->w->dtype);
    for (int64_t r0 = 0; r0 < pr->out; r0 += rows) {
        int64_t n = pr->out - r0 < rows ? pr->out - r0 : rows;
        const char *src = (const char *)pr->w->data + (size_t)r0 * (size_t)pr->in * esize;
        quant_weight_rowwise(pr->w->dtype, src, n, pr->in, wr->buf, pr->scb + r0);
        if (st_writer_write_data(wr->w, wr->buf, (size_t)(n * pr->in), err) || check_signal(err)) return -1;
    }
    return 0;
}

static int write_tensor(Writer *wr, Plan *p, const OutTensor *o, Error *err) {
    int rc = 0;
    switch (o->kind) {
    case OUT_F16: rc = write_f16(wr, o, err); break;
    case OUT_CB: rc = write_cb(wr, &p->proj[o->proj], err); break;
    case OUT_SCB: {
        Proj *pr = &p->proj[o->proj];
        if (!pr->scb) return err_set(err, "internal error: '%s' written before its weight", o->name);
        rc = st_writer_write_data(wr->w, pr->scb, (size_t)pr->out * sizeof *pr->scb, err);
        free(pr->scb);
        pr->scb = NULL;
        break;
    }
    case OUT_FORMAT: {
        uint8_t row_major = 0; /* bitsandbytes' LINEAR_8BIT_WEIGHTS_FORMAT_MAPPING["row"] */
        rc = st_writer_write_data(wr->w, &row_major, 1, err);
        break;
    }
    }
    wr->done += o->nbytes;
    progress_update(&wr->progress, (long)(wr->done >> 10));
    return rc ? rc : check_signal(err);
}

/* Declaration order inside a shard: I8 weights, F32 scales, F16 tensors, U8 scalars.
 * Larger alignments first keep every tensor aligned in the file without padding (int8
 * weights are multiples of 4 bytes whenever the dimensions are even, as in every real
 * model), and a weight is always quantized before its SCB is written. */
static int kind_rank(OutKind k) { return k == OUT_CB ? 0 : k == OUT_SCB ? 1 : k == OUT_F16 ? 2 : 3; }

static void shard_name(const Plan *p, int s, char *buf, size_t cap) {
    if (p->n_shards == 1) snprintf(buf, cap, "model.safetensors");
    else snprintf(buf, cap, "model-%05d-of-%05d.safetensors", s + 1, p->n_shards);
}

static int write_shard(Writer *wr, Plan *p, const char *dir, int s, Error *err) {
    char name[64], path[PATH_MAX];
    shard_name(p, s, name, sizeof name);
    if (path_join(path, dir, name, err)) return -1;
    size_t *order = malloc((p->n + 1) * sizeof *order), n = 0;
    if (!order) return err_set(err, "out of memory");
    for (int rank = 0; rank < 4; rank++)
        for (size_t i = 0; i < p->n; i++)
            if (p->t[i].shard == s && kind_rank(p->t[i].kind) == rank) order[n++] = i;
    int rc = st_writer_begin(path, &wr->w, err);
    for (size_t k = 0; rc == 0 && k < n; k++) {
        const OutTensor *o = &p->t[order[k]];
        rc = st_writer_declare(wr->w, o->name, o->dtype, o->ndim, o->shape, err);
    }
    if (rc == 0) rc = st_writer_write_header(wr->w, err);
    for (size_t k = 0; rc == 0 && k < n; k++) rc = write_tensor(wr, p, &p->t[order[k]], err);
    free(order);
    if (wr->w) {
        if (rc == 0) rc = st_writer_finish(wr->w, err);
        else st_writer_abort(wr->w);
        wr->w = NULL;
    }
    return rc;
}

/* ---- the small files ------------------------------------------------------------------- */

static int write_file(const char *path, const char *data, size_t len, Error *err) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return err_set(err, "%s: cannot create: %s", path, strerror(errno));
    while (len > 0) {
        ssize_t k = write(fd, data, len);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            err_set(err, "%s: write failed: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        data += k;
        len -= (size_t)k;
    }
    if (fsync(fd) != 0 && errno != EINVAL) {
        err_set(err, "%s: fsync failed: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (close(fd) != 0) return err_set(err, "%s: close failed: %s", path, strerror(errno));
    return 0;
}

static int copy_file(const char *from, const char *to, Error *err) {
    char *data;
    size_t len;
    if (cli_read_file(from, &data, &len, err)) return -1;
    int rc = write_file(to, data, len, err);
    free(data);
    return rc;
}

/* The shortest decimal that reads back as the same float, always with a '.' or an
 * exponent so that Python reads a float (transformers type-checks llm_int8_threshold). */
static void float_literal(float v, char *buf, size_t cap) {
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, cap, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".eEn")) strncat(buf, ".0", cap - strlen(buf) - 1);
}

/* ---- config.json ------------------------------------------------------------------------
 * The source's text with as few changes as an 8-bit save makes: every value keeps the bytes
 * it was written with (re-printing through cJSON would turn "dropout": 0.0 into 0, which
 * transformers 5 can refuse for a float field), and only these change:
 *   - the dtype key: "torch_dtype" (transformers < 4.56) and/or "dtype" (4.56 and later,
 *     transformers 5) get the value "float16" where present; with neither, "torch_dtype" is
 *     added (every transformers version reads it);
 *   - "quantization_config": its value is replaced by the 8-bit block (docs/MODELS.md), or
 *     the member is added.
 * The text is checked by json_parse first; the scanner below then only finds where each
 * top-level member's key and value begin and end. */

/* Where a top-level member sits in the text: key = text[key_begin, key_end) including the
 * quotes, value = text[value_begin, value_end). */
typedef struct ConfigMember {
    size_t key_begin, key_end, value_begin, value_end;
} ConfigMember;

static size_t skip_space(const char *t, size_t i, size_t n) {
    while (i < n && (t[i] == ' ' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r')) i++;
    return i;
}

/* t[i] is the opening quote; returns the index after the closing one (n if there is none). */
static size_t skip_string(const char *t, size_t i, size_t n) {
    for (i++; i < n; i++) {
        if (t[i] == '\\') i++;
        else if (t[i] == '"') return i + 1;
    }
    return n;
}

/* Returns the index after the JSON value starting at t[i]. */
static size_t skip_value(const char *t, size_t i, size_t n) {
    if (i < n && t[i] == '"') return skip_string(t, i, n);
    if (i < n && (t[i] == '{' || t[i] == '[')) {
        int depth = 0;
        while (i < n) {
            char c = t[i];
            if (c == '"') {
                i = skip_string(t, i, n);
                continue;
            }
            if (c == '{' || c == '[') depth++;
            if ((c == '}' || c == ']') && --depth == 0) return i + 1;
            i++;
        }
        return n;
    }
    while (i < n && !strchr(",}] \t\r\n", t[i])) i++; /* a number, true, false or null */
    return i;
}

/* Finds the top-level members of the object in t[0..n) (already checked to be one). Returns
 * their count (members[] gets the first `cap`), or -1 when the text does not have the
 * expected shape. */
static long scan_members(const char *t, size_t n, ConfigMember *members, size_t cap) {
    size_t i = skip_space(t, 0, n);
    if (i >= n || t[i] != '{') return -1;
    i = skip_space(t, i + 1, n);
    long count = 0;
    while (i < n && t[i] != '}') {
        ConfigMember m;
        if (t[i] != '"') return -1;
        m.key_begin = i;
        m.key_end = i = skip_string(t, i, n);
        i = skip_space(t, i, n);
        if (i >= n || t[i] != ':') return -1;
        m.value_begin = i = skip_space(t, i + 1, n);
        m.value_end = i = skip_value(t, i, n);
        if (m.value_end == m.value_begin) return -1;
        if ((size_t)count < cap) members[count] = m;
        count++;
        i = skip_space(t, i, n);
        if (i < n && t[i] == ',') i = skip_space(t, i + 1, n);
    }
    return i < n ? count : -1;
}

/* Whether the key text (with its quotes and any escapes) names `name`. */
static bool key_is(const char *t, const ConfigMember *m, const char *name) {
    cJSON *k = cJSON_ParseWithLength(t + m->key_begin, m->key_end - m->key_begin);
    bool same = cJSON_IsString(k) && strcmp(k->valuestring, name) == 0;
    cJSON_Delete(k);
    return same;
}

/* The quantization_config block of an 8-bit model, as transformers writes it (keys sorted,
 * two-space indentation at the top level's depth). */
static void quant_block(char *buf, size_t cap, const char *threshold) {
    snprintf(buf, cap,
             "{\n"
             "    \"_load_in_4bit\": false,\n"
             "    \"_load_in_8bit\": true,\n"
             "    \"bnb_4bit_compute_dtype\": \"float32\",\n"
             "    \"bnb_4bit_quant_storage\": \"uint8\",\n"
             "    \"bnb_4bit_quant_type\": \"fp4\",\n"
             "    \"bnb_4bit_use_double_quant\": false,\n"
             "    \"llm_int8_enable_fp32_cpu_offload\": false,\n"
             "    \"llm_int8_has_fp16_weight\": false,\n"
             "    \"llm_int8_skip_modules\": null,\n"
             "    \"llm_int8_threshold\": %s,\n"
             "    \"load_in_4bit\": false,\n"
             "    \"load_in_8bit\": true,\n"
             "    \"quant_method\": \"bitsandbytes\"\n"
             "  }",
             threshold);
}

/* A growing output text; a failed allocation is remembered and checked once at the end. */
typedef struct TextOut {
    char *p;
    size_t len, cap;
    bool failed;
} TextOut;

static void text_add(TextOut *o, const char *s, size_t n) {
    if (o->failed) return;
    if (o->len + n + 1 > o->cap) {
        size_t cap = (o->len + n + 1) * 2;
        char *p = realloc(o->p, cap);
        if (!p) {
            o->failed = true;
            return;
        }
        o->p = p, o->cap = cap;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
    o->p[o->len] = 0;
}

static void text_add_str(TextOut *o, const char *s) { text_add(o, s, strlen(s)); }

/* The converted config.json's text from the source's t[0..n) (see the section comment). */
static int config_text(const char *src, const char *t, size_t n, const char *threshold, TextOut *o, Error *err) {
    long count = scan_members(t, n, NULL, 0);
    ConfigMember *members = count > 0 ? malloc((size_t)count * sizeof *members) : NULL;
    if (count > 0 && !members) return err_set(err, "out of memory writing config.json");
    if (count < 0 || scan_members(t, n, members, (size_t)count) != count) {
        free(members);
        return err_set(err, "%s: not a JSON object", src);
    }
    char block[1024];
    quant_block(block, sizeof block, threshold);
    bool has_dtype = false, has_quant = false;
    size_t done = 0; /* t[0..done) is in the output */
    for (long i = 0; i < count; i++) {
        const ConfigMember *m = &members[i];
        const char *value = NULL;
        if (key_is(t, m, "torch_dtype") || key_is(t, m, "dtype")) {
            value = "\"float16\"";
            has_dtype = true;
        } else if (key_is(t, m, "quantization_config")) {
            value = block;
            has_quant = true;
        }
        if (!value) continue;
        text_add(o, t + done, m->value_begin - done);
        text_add_str(o, value);
        done = m->value_end;
    }
    /* New members go right after the last value (or the opening brace), before the text
     * that closes the object. */
    size_t at = count > 0 ? members[count - 1].value_end : skip_space(t, 0, n) + 1;
    text_add(o, t + done, at - done);
    const char *sep = count > 0 ? ",\n  " : "\n  ";
    if (!has_dtype) {
        text_add_str(o, sep);
        text_add_str(o, "\"torch_dtype\": \"float16\"");
        sep = ",\n  ";
    }
    if (!has_quant) {
        text_add_str(o, sep);
        text_add_str(o, "\"quantization_config\": ");
        text_add_str(o, block);
    }
    if (count == 0) text_add_str(o, "\n");
    text_add(o, t + at, n - at);
    free(members);
    return o->failed ? err_set(err, "out of memory writing config.json") : 0;
}

/* config.json of the 8-bit checkpoint in dir, from the source checkpoint's. */
static int write_config(const Checkpoint *ck, const char *dir, float threshold, Error *err) {
    char src[PATH_MAX], dst[PATH_MAX], thr[32];
    if (path_join(src, checkpoint_dir(ck), "config.json", err) || path_join(dst, dir, "config.json", err))
        return -1;
    char *text;
    size_t len;
    if (cli_read_file(src, &text, &len, err)) return -1;
    cJSON *root = json_parse(src, text, len, err);
    bool parsed = root != NULL, is_object = cJSON_IsObject(root);
    cJSON_Delete(root);
    if (!is_object) {
        free(text);
        return parsed ? err_set(err, "%s: not a JSON object", src) : -1;
    }
    float_literal(threshold, thr, sizeof thr);
    TextOut out = {0};
    int rc = config_text(src, text, len, thr, &out, err);
    free(text);
    if (rc == 0) rc = write_file(dst, out.p, out.len, err);
    free(out.p);
    return rc;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const OutTensor *const *)a)[0]->name, ((const OutTensor *const *)b)[0]->name);
}

/* model.safetensors.index.json: {"metadata": {"total_size": N}, "weight_map": {name: shard}}. */
static int write_index(const Plan *p, const char *dir, Error *err) {
    const OutTensor **sorted = malloc((p->n + 1) * sizeof *sorted);
    if (!sorted) return err_set(err, "out of memory");
    uint64_t total = 0;
    for (size_t i = 0; i < p->n; i++) sorted[i] = &p->t[i], total += p->t[i].nbytes;
    qsort(sorted, p->n, sizeof *sorted, cmp_name);
    cJSON *root = cJSON_CreateObject(), *meta = cJSON_CreateObject(), *map = cJSON_CreateObject();
    bool ok = root && meta && map;
    if (ok) {
        cJSON_AddItemToObject(root, "metadata", meta);
        cJSON_AddItemToObject(root, "weight_map", map);
        meta = map = NULL;
        char total_s[32];
        snprintf(total_s, sizeof total_s, "%llu", (unsigned long long)total);
        ok = cJSON_AddRawToObject(cJSON_GetObjectItemCaseSensitive(root, "metadata"), "total_size", total_s) != NULL;
        cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
        for (size_t i = 0; ok && i < p->n; i++) {
            char shard[64];
            shard_name(p, sorted[i]->shard, shard, sizeof shard);
            ok = cJSON_AddStringToObject(wm, sorted[i]->name, shard) != NULL;
        }
    }
    free(sorted);
    cJSON_Delete(meta);
    cJSON_Delete(map);
    char *text = ok ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return err_set(err, "out of memory writing the index");
    char path[PATH_MAX];
    int rc = path_join(path, dir, "model.safetensors.index.json", err);
    if (rc == 0) rc = write_file(path, text, strlen(text), err);
    free(text);
    return rc;
}

/* ---- directories ------------------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Deletes a directory that convert itself created (its temporary output) and all in it. */
static void remove_tree(const char *path) { nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

/* ---- what --force may replace ------------------------------------------------------------
 * Only a directory that is, by its contents, a checkpoint: every entry one of the files a
 * checkpoint consists of (a regular file, or a symbolic link, whose deletion leaves its
 * target alone). These are what convert writes, and what a Hugging Face checkpoint holds
 * next to them: PyTorch .bin weights and their index, the model card and .gitattributes of
 * a hub download. Never MODEL_DIR, a directory that contains it, or the current directory,
 * compared by device and inode, so that no spelling of the path (symbolic links, "..",
 * "/") gets past. */
static const char *const CHECKPOINT_FILES[] = {
    "config.json", "generation_config.json",
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
    "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "README.md", ".gitattributes",
};
#define CHECKPOINT_FILES_TEXT                                                                          \
    "config.json, generation_config.json, model.safetensors, model-NNNNN-of-NNNNN.safetensors, "      \
    "pytorch_model.bin, pytorch_model-NNNNN-of-NNNNN.bin, the .index.json of either, the tokenizer " \
    "files, README.md and .gitattributes"

/* Skips one or more decimal digits at *p; false if there is none. */
static bool skip_digits(const char **p) {
    const char *start = *p;
    while (**p >= '0' && **p <= '9') (*p)++;
    return *p > start;
}

/* PREFIX-N-of-N.EXT, the name of one shard (model-00001-of-00002.safetensors). */
static bool is_shard_name(const char *name, const char *prefix, const char *ext) {
    size_t lp = strlen(prefix);
    if (strncmp(name, prefix, lp) != 0 || name[lp] != '-') return false;
    const char *p = name + lp + 1;
    if (!skip_digits(&p) || strncmp(p, "-of-", 4) != 0) return false;
    p += 4;
    return skip_digits(&p) && strcmp(p, ext) == 0;
}

static bool is_checkpoint_file(const char *name) {
    for (size_t i = 0; i < sizeof CHECKPOINT_FILES / sizeof CHECKPOINT_FILES[0]; i++)
        if (strcmp(name, CHECKPOINT_FILES[i]) == 0) return true;
    return is_shard_name(name, "model", ".safetensors") || is_shard_name(name, "pytorch_model", ".bin");
}

/* The entry of `dir` that is not a checkpoint file (the first in name order, so the message
 * does not depend on the file system's order) into first[cap]; "" if there is none. */
static int first_foreign_entry(const char *dir, char *first, size_t cap, Error *err) {
    first[0] = 0;
    DIR *d = opendir(dir);
    if (!d) return err_set(err, "%s: cannot read the directory: %s", dir, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        struct stat st;
        bool plain = fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                     (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode));
        if (plain && is_checkpoint_file(e->d_name)) continue;
        if (!first[0] || strcmp(e->d_name, first) < 0) snprintf(first, cap, "%s", e->d_name);
    }
    closedir(d);
    return 0;
}

static bool same_file(const struct stat *a, const struct stat *b) { return a->st_dev == b->st_dev && a->st_ino == b->st_ino; }

/* Whether --force may replace the existing directory `out` (see above); an error says why not. */
static int check_replaceable(const char *out, const char *model_dir, Error *err) {
    struct stat o, st;
    if (stat(out, &o) != 0) return err_set(err, "%s: %s", out, strerror(errno));
    /* MODEL_DIR, then each directory above it up to "/" */
    char up[PATH_MAX];
    if (realpath(model_dir, up)) {
        for (bool first = true;; first = false) {
            if (stat(up, &st) == 0 && same_file(&st, &o)) {
                if (first) return err_set(err, "%s: the output directory is the input directory", out);
                return err_set(err, "%s: the output directory contains the input directory %s (it is %s); --force "
                               "replaces only a directory of checkpoint files", out, model_dir, up);
            }
            char *slash = strrchr(up, '/');
            if (!slash || strcmp(up, "/") == 0) break;
            if (slash == up) slash[1] = 0; /* "/a" -> "/" */
            else *slash = 0;
        }
    }
    if (stat(".", &st) == 0 && same_file(&st, &o))
        return err_set(err, "%s: the output directory is the current directory; not replacing it", out);
    char foreign[256];
    if (first_foreign_entry(out, foreign, sizeof foreign, err)) return -1;
    if (foreign[0])
        return err_set(err, "%s: not replacing it: it holds '%s', which is not a checkpoint file (--force replaces "
                       "only a directory holding nothing but " CHECKPOINT_FILES_TEXT ")", out, foreign);
    return 0;
}

/* Deletes the previous output, moved to `dir` by move_into_place: its checkpoint files, then
 * the directory. Anything else (put there since the check) is left, with a warning. */
static void remove_old_copy(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        struct stat st;
        if (is_checkpoint_file(e->d_name) && fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
            (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)))
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
    if (rmdir(dir) != 0 && errno != ENOENT)
        cli_warn("%s: the previous output was left there: it holds files that are not a checkpoint's", dir);
}

static bool path_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Replaces (or creates) `out` with the finished `tmp`. With an existing `out` (--force),
 * the old copy is moved aside first and deleted only once the new one is in place. */
static int move_into_place(const char *tmp, const char *out, Error *err) {
    if (!path_exists(out)) {
        if (rename(tmp, out) != 0) return err_set(err, "%s: cannot rename %s into place: %s", out, tmp, strerror(errno));
        return 0;
    }
    /* Swap the new and the old directory in one atomic step, so that a crash at any moment
     * leaves OUT_DIR complete (old or new); then delete the old copy, now at tmp. */
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, out, RENAME_EXCHANGE) == 0) {
        remove_old_copy(tmp);
        return 0;
    }
    if (errno != EINVAL && errno != ENOSYS)
        return err_set(err, "%s: cannot swap in the new copy: %s", out, strerror(errno));
    /* File systems without RENAME_EXCHANGE: move the old copy aside, then rename. */
    char old[PATH_MAX];
    int n = snprintf(old, sizeof old, "%s.old-XXXXXX", out);
    if (n < 0 || n >= (int)sizeof old || !mkdtemp(old)) return err_set(err, "%s: cannot create a directory next to it: %s", out, strerror(errno));
    if (rename(out, old) != 0) { /* an empty directory may be replaced by rename */
        int e = errno;
        rmdir(old);
        return err_set(err, "%s: cannot move the old copy aside: %s", out, strerror(e));
    }
    if (rename(tmp, out) != 0) {
        int e = errno;
        rename(old, out); /* put the old one back */
        return err_set(err, "%s: cannot rename %s into place: %s", out, tmp, strerror(e));
    }
    remove_old_copy(old);
    return 0;
}

/* Parses "2GB", "500MB", "1.5GiB", "4096" into bytes (decimal KB/MB/GB/TB, binary KiB...). */
static int parse_size(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v > 0)) return -1;
    static const struct { const char *suffix; double mult; } units[] = {
        {"", 1}, {"B", 1}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
        {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
        {"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0}, {"TiB", 1099511627776.0},
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].suffix) != 0) continue;
        double bytes = v * units[i].mult;
        if (bytes < 1 || bytes > 1e18) return -1;
        *out = (uint64_t)bytes;
        return 0;
    }
    return -1;
}

/* ---- the command ------------------------------------------------------------------------- */

typedef struct ConvertOptions {
    const char *model_dir, *out_dir;
    float threshold;
    uint64_t shard_bytes;
    bool force;
} ConvertOptions;

/* Refuses inputs that are already int8 (they would be quantized twice). */
static int check_not_int8(const Checkpoint *ck, Error *err) {
    if (checkpoint_config(ck)->load_in_8bit)
        return err_set(err, "%s: already an 8-bit checkpoint (config.json has a bitsandbytes quantization_config); "
                       "convert reads 16- or 32-bit checkpoints", checkpoint_dir(ck));
    for (size_t i = 0; i < checkpoint_count(ck); i++) {
        const StTensor *t = checkpoint_tensor(ck, i);
        size_t len = strlen(t->name);
        if (t->dtype == DT_I8 || (len > 4 && strcmp(t->name + len - 4, ".SCB") == 0))
            return err_set(err, "%s: tensor '%s' is already int8 (%s): the checkpoint is already quantized", t->file,
                           t->name, dtype_name(t->dtype));
    }
    return 0;
}

/* Everything between the checks and the rename: fills `tmp`. */
static int convert_into(const ConvertOptions *o, const Checkpoint *ck, const char *tmp, Error *err) {
    const ModelConfig *c = checkpoint_config(ck);
    Plan p = {.ck = ck, .prefix = arch_of(c)->prefix};
    Writer wr = {0};
    int rc = -1;
    if (plan_tensors(&p, c, err)) goto done;
    if (warn_unused(&p, err)) goto done;
    assign_shards(&p, o->shard_bytes);

    uint64_t in_bytes = 0, out_bytes = 0;
    for (size_t i = 0; i < checkpoint_count(ck); i++) in_bytes += checkpoint_tensor(ck, i)->nbytes;
    for (size_t i = 0; i < p.n; i++) out_bytes += p.t[i].nbytes;
    cli_note("converting %s (%s, %zu projections to int8): %.1f MB -> %.1f MB in %d shard%s", o->model_dir,
             arch_name(c->arch), p.n_proj, (double)in_bytes / 1e6, (double)out_bytes / 1e6, p.n_shards,
             p.n_shards == 1 ? "" : "s");

    if (!(wr.buf = malloc(CHUNK_BYTES))) {
        err_set(err, "out of memory");
        goto done;
    }
    progress_begin(&wr.progress, "writing (KB)", (long)(out_bytes >> 10));
    for (int s = 0; s < p.n_shards; s++)
        if (write_shard(&wr, &p, tmp, s, err)) {
            if (wr.progress.enabled) fputc('\n', stderr); /* end the progress line before the error */
            goto done;
        }
    progress_end(&wr.progress);
    if (p.n_shards > 1 && write_index(&p, tmp, err)) goto done;
    if (write_config(ck, tmp, o->threshold, err)) goto done;
    for (size_t i = 0; i < sizeof COPIED_FILES / sizeof COPIED_FILES[0]; i++) {
        char from[PATH_MAX], to[PATH_MAX];
        if (path_join(from, checkpoint_dir(ck), COPIED_FILES[i], err) || path_join(to, tmp, COPIED_FILES[i], err))
            goto done;
        if (path_exists(from) && copy_file(from, to, err)) goto done;
    }
    rc = check_signal(err);
done:
    free(wr.buf);
    plan_free(&p);
    return rc;
}

static int parse_args(int argc, char **argv, ConvertOptions *o) {
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'},
        {"threshold", required_argument, NULL, ARG_THRESHOLD},
        {"shard-size", required_argument, NULL, ARG_SHARD_SIZE},
        {"force", no_argument, NULL, ARG_FORCE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    CommonOptions co;
    cli_common_defaults(&co);
    *o = (ConvertOptions){.threshold = 6.0f, .shard_bytes = 2000000000ull};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "ho:", longopts, NULL)) != -1) {
        switch (c) {
        case 'h': printf("%s", HELP); return -1;
        case 'o': o->out_dir = optarg; break;
        case ARG_THRESHOLD:
            if (cli_common_option(c, optarg, &co) < 0) return 2;
            o->threshold = co.quant.threshold;
            break;
        case ARG_SHARD_SIZE:
            if (parse_size(optarg, &o->shard_bytes) != 0)
                return cli_usage_error("convert", "--shard-size '%s': expected a size from 1 byte to 1EB, like 500MB, "
                                       "2GB or 1GiB", optarg);
            break;
        case ARG_FORCE: o->force = true; break;
        default: return cli_usage_error("convert", "unknown option");
        }
    }
    if (optind < argc) o->model_dir = argv[optind++];
    if (optind < argc) return cli_usage_error("convert", "unexpected argument '%s'", argv[optind]);
    if (!o->model_dir) return cli_usage_error("convert", "no MODEL_DIR given");
    if (!o->out_dir || !*o->out_dir) return cli_usage_error("convert", "no output directory given (-o OUT_DIR)");
    return 0;
}

int cmd_convert(int argc, char **argv) {
    ConvertOptions o;
    int urc = parse_args(argc, argv, &o);
    if (urc) return urc < 0 ? 0 : urc; /* -1: --help was printed */

    /* OUT_DIR without trailing slashes, so that OUT_DIR.tmp-XXXXXX sits next to it. */
    char out[PATH_MAX];
    Error err;
    if (strlen(o.out_dir) >= sizeof out - 32) {
        err_set(&err, "%s: path too long", o.out_dir);
        return cli_fail(&err);
    }
    snprintf(out, sizeof out, "%s", o.out_dir);
    for (size_t n = strlen(out); n > 1 && out[n - 1] == '/'; n--) out[n - 1] = 0;
    o.out_dir = out;

    struct stat st;
    if (lstat(out, &st) == 0) {
        if (!o.force) {
            err_set(&err, "%s already exists (use --force to replace it)", out);
            return cli_fail(&err);
        }
        if (!S_ISDIR(st.st_mode)) {
            err_set(&err, "%s exists and is not a directory; not replacing it", out);
            return cli_fail(&err);
        }
    }
    bool replacing = lstat(out, &st) == 0;
    if (replacing && check_replaceable(out, o.model_dir, &err)) return cli_fail(&err);

    Checkpoint *ck = NULL;
    if (checkpoint_open(o.model_dir, &ck, &err) || check_not_int8(ck, &err)) {
        checkpoint_close(ck);
        return cli_fail(&err);
    }

    /* From here on, a signal only sets a flag; the work stops at the next chunk and the
     * temporary directory is removed. Signals the caller ignores (nohup) stay ignored. */
    static const int SIGNALS[3] = {SIGINT, SIGTERM, SIGHUP};
    struct sigaction sa, old[3];
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++) {
        sigaction(SIGNALS[i], NULL, &old[i]);
        if (old[i].sa_handler != SIG_IGN) sigaction(SIGNALS[i], &sa, NULL);
    }

    char tmp[PATH_MAX];
    int rc = 0;
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", out) >= sizeof tmp || !mkdtemp(tmp)) {
        err_set(&err, "%s: cannot create a temporary directory next to it: %s", out, strerror(errno));
        rc = -1;
        tmp[0] = 0;
    }
    double t0 = cli_now();
    if (rc == 0) rc = convert_into(&o, ck, tmp, &err);
    if (rc == 0) {
        mode_t mask = umask(0); /* mkdtemp made it 0700; give it the usual permissions */
        umask(mask);
        chmod(tmp, 0777 & ~mask);
        rc = check_signal(&err);
    }
    /* The directory being replaced is checked again, in case it changed during the work. */
    if (rc == 0 && replacing) rc = check_replaceable(out, o.model_dir, &err);
    if (rc == 0) rc = move_into_place(tmp, out, &err);
    if (rc != 0 && tmp[0]) remove_tree(tmp);
    checkpoint_close(ck);

    for (int i = 0; i < 3; i++) sigaction(SIGNALS[i], &old[i], NULL);
    /* A signal that came in time to stop the work: die of it, as the caller expects, now that
     * the mess is gone. (One that came after the rename is moot: the output is complete.) */
    if (g_signal && rc != 0) {
        err_set(&err, "interrupted; %s was not written", out);
        cli_fail(&err);
        signal(g_signal, SIG_DFL);
        raise(g_signal);
    }
    if (rc != 0) return cli_fail(&err);
    cli_note("wrote %s in %.1f s", out, cli_now() - t0);
    return 0;
}
