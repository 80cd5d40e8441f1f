/* model.c — what OPT and BLOOM share: loading weights into backend objects, the KV
 * cache and scratch buffers, and the outer forward loop that turns final hidden states
 * into logits. The networks themselves are in opt.c and bloom.c. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- loading helpers ------------------------------------------------------------ */

/* Reads a float-typed tensor (F16/BF16/F32) of exactly n elements into a new float array. */
static float *read_floats(const StTensor *t, int64_t n) {
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) return NULL;
    for (int64_t i = 0; i < n; i++) v[i] = dtype_load_f32(t->dtype, t->data, (size_t)i);
    return v;
}

int model_load_vector(Model *m, const Checkpoint *ck, const char *name, int64_t dim, float **out,
                      Error *err) {
    const StTensor *t;
    int64_t shape[1] = {dim};
    if (checkpoint_require(ck, name, 1, shape, DT_FLOAT_MASK, &t, err)) return -1;
    float *host = read_floats(t, dim);
    float *dev = m->bk->alloc(m->bk, (size_t)dim);
    if (!host || !dev) {
        free(host);
        if (dev) m->bk->release(m->bk, dev);
        return err_set(err, "out of memory loading '%s'", name);
    }
    m->bk->upload(m->bk, dev, host, (size_t)dim);
    free(host);
    *out = dev;
    return 0;
}

int model_load_matrix(Model *m, const Checkpoint *ck, const char *name, int64_t rows, int64_t cols,
                      BkMatrix **out, Error *err) {
    const StTensor *t;
    int64_t shape[2] = {rows, cols};
    if (checkpoint_require(ck, name, 2, shape, DT_FLOAT_MASK, &t, err)) return -1;
    HostMatrix hm = {.dtype = t->dtype, .rows = rows, .cols = cols, .data = t->data, .scb = NULL};
    *out = m->bk->matrix_create(m->bk, &hm, err);
    if (!*out) return err_prefix(err, "%s", name);
    m->weight_bytes += m->bk->matrix_bytes(*out);
    return 0;
}

/* In an 8-bit checkpoint (SPEC §2.1) a projection is `weight` I8 [out,in] + `SCB` F32 [out]
 * + an optional `weight_format` U8 scalar that must be 0 ("row"); 1-3 were tiled layouts of
 * bitsandbytes < 0.45 that we do not read. */
static int read_int8_weight(const Checkpoint *ck, const char *name, int64_t out, int64_t in,
                            HostMatrix *hm, Error *err) {
    char key[256];
    const StTensor *w, *scb;
    int64_t wshape[2] = {out, in}, sshape[1] = {out};
    snprintf(key, sizeof key, "%s.weight", name);
    if (checkpoint_require(ck, key, 2, wshape, DT_MASK(DT_I8), &w, err)) return -1;
    snprintf(key, sizeof key, "%s.SCB", name);
    if (!checkpoint_find(ck, key))
        return err_set(err, "%s: 8-bit checkpoint: tensor '%s' (the per-row scales) is missing",
                       checkpoint_dir(ck), key);
    if (checkpoint_require(ck, key, 1, sshape, DT_MASK(DT_F32), &scb, err)) return -1;
    snprintf(key, sizeof key, "%s.weight_format", name);
    const StTensor *fmt = checkpoint_find(ck, key);
    if (fmt) {
        if (fmt->numel != 1 || (fmt->dtype != DT_U8 && fmt->dtype != DT_I8))
            return err_set(err, "%s: tensor '%s' must be a U8 scalar", fmt->file, key);
        uint8_t v = *(const uint8_t *)fmt->data;
        if (v != 0)
            return err_set(err,
                           "%s: tensor '%s' is %u (%s): only the row-major format 0 is supported; "
                           "re-save the model with bitsandbytes >= 0.45",
                           fmt->file, key, v,
                           v == 1 ? "col32" : v == 2 ? "col_turing" : v == 3 ? "col_ampere" : "unknown");
    }
    /* Scales must be finite and non-negative: they multiply every output. */
    const float *s = scb->data;
    for (int64_t i = 0; i < out; i++) {
        float v;
        memcpy(&v, s + i, sizeof v);
        if (!(v >= 0.0f && v <= 65504.0f))
            return err_set(err, "%s: tensor '%s.SCB' has an invalid scale %g at row %lld", scb->file,
                           name, (double)v, (long long)i);
    }
    *hm = (HostMatrix){.dtype = DT_I8, .rows = out, .cols = in, .data = w->data, .scb = scb->data};
    return 0;
}

int model_load_linear(Model *m, const Checkpoint *ck, const char *name, int64_t out, int64_t in,
                      bool has_bias, Linear *l, Error *err) {
    char key[256];
    HostMatrix hm;
    if (m->cfg.load_in_8bit) {
        if (read_int8_weight(ck, name, out, in, &hm, err)) return -1;
    } else {
        const StTensor *w;
        int64_t shape[2] = {out, in};
        snprintf(key, sizeof key, "%s.weight", name);
        if (checkpoint_require(ck, key, 2, shape, DT_FLOAT_MASK, &w, err)) return -1;
        hm = (HostMatrix){.dtype = w->dtype, .rows = out, .cols = in, .data = w->data, .scb = NULL};
    }
    float *bias = NULL;
    if (has_bias) {
        const StTensor *b;
        int64_t shape[1] = {out};
        snprintf(key, sizeof key, "%s.bias", name);
        if (checkpoint_require(ck, key, 1, shape, DT_FLOAT_MASK, &b, err)) return -1;
        if (!(bias = read_floats(b, out))) return err_set(err, "out of memory loading '%s'", key);
    }
    l->bk = m->bk->linear_create(m->bk, &hm, bias, &m->quant, err);
    free(bias);
    if (!l->bk) return err_prefix(err, "%s", name);
    l->in = in;
    l->out = out;
    m->weight_bytes += m->bk->linear_bytes(l->bk);
    return 0;
}

void model_linear(Model *m, int layer, ProjKind kind, const Linear *l, const float *x, int T, float *y) {
    if (m->observer) {
        Backend *bk = m->bk;
        size_t n = (size_t)T * (size_t)l->in;
        if (strcmp(bk->name, "cpu") == 0) {
            /* CPU buffers are host memory: the observer sees (and may edit) x in place. */
            m->observer(m->observer_ctx, layer, kind, (float *)x, T, (int)l->in);
        } else {
            bk->download(bk, m->rs.observe, x, n);
            m->observer(m->observer_ctx, layer, kind, m->rs.observe, T, (int)l->in);
            bk->upload(bk, (float *)x, m->rs.observe, n);
        }
    }
    m->bk->linear(m->bk, l->bk, x, T, y);
}

/* ---- buffers ------------------------------------------------------------------------ */

static float *alloc_or_fail(Model *m, size_t n, bool *ok) {
    float *p = m->bk->alloc(m->bk, n ? n : 1);
    if (!p) *ok = false;
    return p;
}

static int alloc_state(Model *m, Error *err) {
    const ModelConfig *c = &m->cfg;
    RunState *s = &m->rs;
    size_t cap = (size_t)s->capacity, D = (size_t)c->hidden;
    size_t E = (size_t)c->word_embed_proj_dim, F = (size_t)c->ffn_dim;
    bool ok = true;
    s->h = alloc_or_fail(m, cap * D, &ok);
    s->x = alloc_or_fail(m, cap * (D > E ? D : E), &ok);
    s->q = alloc_or_fail(m, cap * D, &ok);
    s->attn = alloc_or_fail(m, cap * D, &ok);
    s->qkv = c->arch == ARCH_BLOOM ? alloc_or_fail(m, cap * 3 * D, &ok) : NULL;
    s->ffn = alloc_or_fail(m, cap * F, &ok);
    s->emb = alloc_or_fail(m, cap * E, &ok);
    s->logits = alloc_or_fail(m, (size_t)MODEL_LOGIT_ROWS * (size_t)c->vocab_size, &ok);
    s->pos = malloc(cap * sizeof *s->pos);
    size_t widest = F > 3 * D ? F : 3 * D;
    s->observe = malloc(cap * widest * sizeof *s->observe);
    if (!s->pos || !s->observe) ok = false;

    m->k_cache = calloc((size_t)c->n_layers, sizeof *m->k_cache);
    m->v_cache = calloc((size_t)c->n_layers, sizeof *m->v_cache);
    if (!m->k_cache || !m->v_cache) ok = false;
    for (int l = 0; ok && l < c->n_layers; l++) {
        m->k_cache[l] = alloc_or_fail(m, (size_t)m->ctx * D, &ok);
        m->v_cache[l] = alloc_or_fail(m, (size_t)m->ctx * D, &ok);
    }
    if (!ok)
        return err_set(err, "out of memory allocating activations and the KV cache (%d positions x %d layers)",
                       m->ctx, c->n_layers);
    return 0;
}

static void release(Model *m, float *p) {
    if (p) m->bk->release(m->bk, p);
}

static void linear_free(Model *m, Linear *l) {
    if (l->bk) m->bk->linear_free(m->bk, l->bk);
    l->bk = NULL;
}

void model_free(Model *m) {
    if (!m) return;
    Backend *bk = m->bk;
    const ModelConfig *c = &m->cfg;
    if (m->layers) {
        for (int l = 0; l < c->n_layers; l++) {
            Layer *L = &m->layers[l];
            release(m, L->ln_attn_w), release(m, L->ln_attn_b);
            release(m, L->ln_ffn_w), release(m, L->ln_ffn_b);
            linear_free(m, &L->q), linear_free(m, &L->k), linear_free(m, &L->v);
            linear_free(m, &L->qkv), linear_free(m, &L->out);
            linear_free(m, &L->fc1), linear_free(m, &L->fc2);
        }
        free(m->layers);
    }
    if (m->lm_head && m->lm_head != m->embed) bk->matrix_free(bk, m->lm_head);
    if (m->embed) bk->matrix_free(bk, m->embed);
    if (m->positions) bk->matrix_free(bk, m->positions);
    linear_free(m, &m->project_in), linear_free(m, &m->project_out);
    release(m, m->emb_ln_w), release(m, m->emb_ln_b);
    release(m, m->final_ln_w), release(m, m->final_ln_b);
    release(m, m->alibi);
    for (int l = 0; l < c->n_layers; l++) {
        if (m->k_cache) release(m, m->k_cache[l]);
        if (m->v_cache) release(m, m->v_cache[l]);
    }
    free(m->k_cache), free(m->v_cache);
    RunState *s = &m->rs;
    release(m, s->h), release(m, s->x), release(m, s->q), release(m, s->attn);
    release(m, s->qkv), release(m, s->ffn), release(m, s->emb), release(m, s->logits);
    free(s->pos), free(s->observe);
    free(m);
}

/* ---- loading ---------------------------------------------------------------------- */

/* The tied lm_head (SPEC §2.2): normally absent; if stored, it must have the embedding's
 * shape, and is used as its own matrix only when its bytes differ from the embedding. */
static int load_lm_head(Model *m, const Checkpoint *ck, Error *err) {
    const StTensor *lm = checkpoint_find(ck, "lm_head.weight");
    const char *emb_name = m->cfg.arch == ARCH_OPT ? "decoder.embed_tokens.weight" : "word_embeddings.weight";
    const StTensor *emb = checkpoint_find(ck, emb_name);
    m->lm_head = m->embed;
    if (!lm) return 0;
    int64_t shape[2] = {m->cfg.vocab_size, m->cfg.word_embed_proj_dim};
    const StTensor *t;
    if (checkpoint_require(ck, "lm_head.weight", 2, shape, DT_FLOAT_MASK, &t, err)) return -1;
    if (emb && emb->dtype == t->dtype && emb->nbytes == t->nbytes && memcmp(emb->data, t->data, t->nbytes) == 0)
        return 0;
    HostMatrix hm = {.dtype = t->dtype, .rows = shape[0], .cols = shape[1], .data = t->data};
    m->lm_head = m->bk->matrix_create(m->bk, &hm, err);
    if (!m->lm_head) {
        m->lm_head = m->embed;
        return err_prefix(err, "lm_head.weight");
    }
    m->weight_bytes += m->bk->matrix_bytes(m->lm_head);
    return 0;
}

int model_load(const Checkpoint *ck, Backend *bk, const ModelOptions *opt, Model **out, Error *err) {
    Model *m = calloc(1, sizeof *m);
    if (!m) return err_set(err, "out of memory");
    m->cfg = *checkpoint_config(ck);
    m->bk = bk;
    m->quant = opt->quant;
    const ModelConfig *c = &m->cfg;

    /* OPT's learned position table bounds the context; BLOOM's ALiBi does not, and 2048 is
     * the length it was trained on. */
    int native = c->arch == ARCH_OPT ? c->max_positions : 2048;
    m->ctx = opt->ctx > 0 ? opt->ctx : native;
    if (c->arch == ARCH_OPT && m->ctx > c->max_positions) {
        err_set(err, "context of %d tokens exceeds the model's %d positions (max_position_embeddings)", m->ctx,
                c->max_positions);
        free(m);
        return -1;
    }
    int cap = opt->batch_tokens > 0 ? opt->batch_tokens : 512;
    m->rs.capacity = cap < m->ctx ? cap : m->ctx;

    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) {
        free(m);
        return err_set(err, "out of memory");
    }
    int rc = c->arch == ARCH_OPT ? opt_load(m, ck, err) : bloom_load(m, ck, err);
    if (rc == 0) rc = load_lm_head(m, ck, err);
    if (rc == 0) rc = alloc_state(m, err);
    if (rc) {
        model_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

void model_reset(Model *m) { m->n_past = 0; }

/* ---- forward ----------------------------------------------------------------------- */

/* What a forward pass hands back. */
typedef enum {
    OUT_LAST_HOST,      /* the last token's logits, downloaded */
    OUT_ALL_HOST,       /* every token's logits, downloaded */
    OUT_LAST_BACKEND,   /* the last token's logits, left in rs.logits */
    OUT_NLL,            /* every token's -log p(target), only those numbers downloaded */
} Readout;

typedef struct ForwardOut {
    Readout kind;
    float *logits;            /* OUT_*_HOST: host [T or 1, vocab] */
    const int32_t *targets;   /* OUT_NLL: host [T], -1 = not scored */
    double *nll;              /* OUT_NLL: host [T] */
} ForwardOut;

/* Reads out rows first..first+n-1 of this call's final hidden states (token `start` of the
 * whole forward is row 0): logits = hidden x lm_head^T, MODEL_LOGIT_ROWS rows at a time. */
static void read_out(Model *m, const float *hidden, int first, int n, int start, const ForwardOut *o) {
    Backend *bk = m->bk;
    size_t E = (size_t)m->cfg.word_embed_proj_dim, V = (size_t)m->cfg.vocab_size;
    for (int r = 0; r < n; r += MODEL_LOGIT_ROWS) {
        int rows = n - r < MODEL_LOGIT_ROWS ? n - r : MODEL_LOGIT_ROWS;
        bk->matmul(bk, m->lm_head, hidden + (size_t)(first + r) * E, rows, m->rs.logits);
        size_t t = (size_t)start + (size_t)first + (size_t)r; /* token index in the whole call */
        switch (o->kind) {
        case OUT_LAST_HOST: bk->download(bk, o->logits, m->rs.logits, V); break;
        case OUT_ALL_HOST: bk->download(bk, o->logits + t * V, m->rs.logits, (size_t)rows * V); break;
        case OUT_LAST_BACKEND: break;
        case OUT_NLL: bk->token_nll(bk, m->rs.logits, rows, (int)V, o->targets + t, o->nll + t); break;
        }
    }
}

static int forward(Model *m, const int32_t *ids, int T, const ForwardOut *o, Error *err) {
    const ModelConfig *c = &m->cfg;
    if (T <= 0) return err_set(err, "nothing to run: no tokens");
    if (T > m->ctx - m->n_past)
        return err_set(err, "%d tokens do not fit: %d of the %d positions are used", T, m->n_past, m->ctx);
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= c->vocab_size)
            return err_set(err, "token id %d is outside the vocabulary (0..%d)", ids[t], c->vocab_size - 1);
    if (o->kind == OUT_NLL)
        for (int t = 0; t < T; t++)
            if (o->targets[t] < -1 || o->targets[t] >= c->vocab_size)
                return err_set(err, "target id %d is outside the vocabulary (0..%d)", o->targets[t],
                               c->vocab_size - 1);

    bool all = o->kind == OUT_ALL_HOST || o->kind == OUT_NLL;
    for (int start = 0; start < T; start += m->rs.capacity) {
        int n = T - start < m->rs.capacity ? T - start : m->rs.capacity;
        const float *hidden = c->arch == ARCH_OPT ? opt_forward(m, ids + start, n)
                                                  : bloom_forward(m, ids + start, n);
        m->n_past += n;
        if (all)
            read_out(m, hidden, 0, n, start, o);
        else if (start + n == T)
            read_out(m, hidden, n - 1, 1, start, o);
    }
    return 0;
}

int model_forward(Model *m, const int32_t *ids, int T, bool all_logits, float *logits, Error *err) {
    ForwardOut o = {.kind = all_logits ? OUT_ALL_HOST : OUT_LAST_HOST, .logits = logits};
    return forward(m, ids, T, &o, err);
}

float *model_forward_last(Model *m, const int32_t *ids, int T, Error *err) {
    ForwardOut o = {.kind = OUT_LAST_BACKEND};
    return forward(m, ids, T, &o, err) ? NULL : m->rs.logits;
}

int model_score(Model *m, const int32_t *ids, int T, const int32_t *targets, double *nll, Error *err) {
    ForwardOut o = {.kind = OUT_NLL, .targets = targets, .nll = nll};
    return forward(m, ids, T, &o, err);
}
