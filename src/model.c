/* model.c — what every architecture shares: loading the tensors of its table into
 * backend objects, the KV cache and scratch buffers, the blocks layers are built of
 * (attention, MLP, LayerNorm, residual add), and the forward loop that runs an
 * architecture's stages and turns final hidden states into logits. The networks
 * themselves are in arch_*.c. */
#include "model_internal.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- loading ---------------------------------------------------------------------- */

/* Reads a float-typed tensor (F16/BF16/F32) of exactly n elements into a new float array. */
static float *read_floats(const StTensor *t, int64_t n) {
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) return NULL;
    for (int64_t i = 0; i < n; i++) v[i] = dtype_load_f32(t->dtype, t->data, (size_t)i);
    return v;
}

/* Every float tensor is checked as it is loaded, with the rule `convert` uses
 * (st_check_values): no NaN or infinity anywhere, and for a weight that becomes int8 also no
 * value beyond float16's range. The error names the tensor, the element and the value. One
 * scan of the stored bytes per tensor; int8 codes pass (their scales are checked with them). */
static int check_values(const StTensor *t, bool becomes_int8, Error *err) {
    return st_check_values(t, becomes_int8, err);
}

/* A float vector [dim] (LayerNorm weight or bias) as a backend buffer. */
static int load_vector(Model *m, const Checkpoint *ck, const char *name, int64_t dim, float **out, Error *err) {
    const StTensor *t;
    int64_t shape[1] = {dim};
    if (checkpoint_require(ck, name, 1, shape, DT_FLOAT_MASK, &t, err) || check_values(t, false, err)) return -1;
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

/* A LayerNorm module's NAME.weight and NAME.bias [dim]. */
static int load_norm(Model *m, const Checkpoint *ck, const char *module, int64_t dim, Norm *n, Error *err) {
    char key[128];
    snprintf(key, sizeof key, "%s.weight", module);
    if (load_vector(m, ck, key, dim, &n->w, err)) return -1;
    snprintf(key, sizeof key, "%s.bias", module);
    return load_vector(m, ck, key, dim, &n->b, err);
}

/* A 16-bit matrix [rows, cols] kept as stored. */
static int load_matrix(Model *m, const Checkpoint *ck, const char *name, int64_t rows, int64_t cols, BkMatrix **out,
                       Error *err) {
    const StTensor *t;
    int64_t shape[2] = {rows, cols};
    if (checkpoint_require(ck, name, 2, shape, DT_FLOAT_MASK, &t, err) || check_values(t, false, err)) return -1;
    HostMatrix hm = {.dtype = t->dtype, .rows = rows, .cols = cols, .data = t->data, .scb = NULL};
    *out = m->bk->matrix_create(m->bk, &hm, err);
    if (!*out) return err_prefix(err, "%s", name);
    m->weight_bytes += m->bk->matrix_bytes(*out);
    return 0;
}

/* In an 8-bit checkpoint (docs/MODELS.md) a projection is `weight` I8 [out,in] + `SCB` F32 [out]
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
    /* Scales in [0, 65504] (they multiply every output of their row), codes in [-127, 127]. */
    if (quant_check_int8_source(DT_I8, w->data, scb->data, out, in, err))
        return err_prefix(err, "%s: '%s.weight' / '%s.SCB'", w->file, name, name);
    *hm = (HostMatrix){.dtype = DT_I8, .rows = out, .cols = in, .data = w->data, .scb = scb->data};
    return 0;
}

/* How one projection of the checkpoint is stored and will run (docs/MODELS.md, "8-bit
 * checkpoints"): in an 8-bit checkpoint each projection decides by its stored weight, as in
 * transformers: I8 + SCB is a bitsandbytes int8 weight; a float weight is a module that
 * llm_int8_skip_modules kept as a float nn.Linear (it runs unquantized), or one saved with
 * llm_int8_has_fp16_weight or kept in float32 by llm_int8_enable_fp32_cpu_offload
 * (quantized on load with the user's --quant, as bitsandbytes quantizes it when it loads).
 * A float weight that none of the three explains is read as int8, which refuses its dtype. */
static int linear_source(const Model *m, const Checkpoint *ck, const char *name, LinearSource *src, Error *err) {
    char key[256];
    snprintf(key, sizeof key, "%s.weight", name);
    const StTensor *w = checkpoint_find(ck, key);
    const ModelConfig *c = &m->cfg;
    bool skipped = c->load_in_8bit && config_int8_skips(c, name);
    bool float_allowed = skipped || c->int8_has_fp16_weight || c->int8_fp32_cpu_offload;
    if (!c->load_in_8bit || (w && w->dtype != DT_I8 && float_allowed)) {
        snprintf(key, sizeof key, "%s.SCB", name);
        const StTensor *scb = c->load_in_8bit ? checkpoint_find(ck, key) : NULL;
        if (scb)
            return err_set(err, "%s: '%s.weight' is %s but '%s' (int8 row scales) is stored too: an int8 weight "
                           "belongs with it", scb->file, name, dtype_name(w->dtype), key);
        *src = skipped ? LINEAR_SKIPPED : LINEAR_FLOAT;
        return 0;
    }
    if (w && skipped)
        return err_set(err, "%s: '%s.weight' is int8, but llm_int8_skip_modules in config.json keeps '%s' in "
                       "16-bit", w->file, name, name);
    *src = LINEAR_INT8;
    return 0;
}

static int load_linear(Model *m, const Checkpoint *ck, const char *name, int64_t out, int64_t in,
                      bool has_bias, Linear *l, Error *err) {
    char key[256];
    HostMatrix hm;
    LinearSource src;
    if (linear_source(m, ck, name, &src, err)) return -1;
    if (src == LINEAR_INT8) {
        if (read_int8_weight(ck, name, out, in, &hm, err)) return -1;
    } else {
        const StTensor *w;
        int64_t shape[2] = {out, in};
        snprintf(key, sizeof key, "%s.weight", name);
        /* Quantized on load: bitsandbytes quantizes the float16 copy, so it must fit float16. */
        bool quantized = src == LINEAR_FLOAT && m->quant.mode != QUANT_FP16;
        if (checkpoint_require(ck, key, 2, shape, DT_FLOAT_MASK, &w, err) || check_values(w, quantized, err))
            return -1;
        hm = (HostMatrix){.dtype = w->dtype, .rows = out, .cols = in, .data = w->data, .scb = NULL};
    }
    float *bias = NULL;
    if (has_bias) {
        const StTensor *b;
        int64_t shape[1] = {out};
        snprintf(key, sizeof key, "%s.bias", name);
        if (checkpoint_require(ck, key, 1, shape, DT_FLOAT_MASK, &b, err) || check_values(b, false, err)) return -1;
        if (!(bias = read_floats(b, out))) return err_set(err, "out of memory loading '%s'", key);
    }
    /* A skipped module is a float nn.Linear in transformers: no quantization, whatever --quant. */
    QuantConfig unquantized = {.mode = QUANT_FP16};
    l->bk = m->bk->linear_create(m->bk, &hm, bias, src == LINEAR_SKIPPED ? &unquantized : &m->quant, err);
    free(bias);
    if (!l->bk) return err_prefix(err, "%s", name);
    l->in = in;
    l->out = out;
    l->source = src;
    m->weight_bytes += m->bk->linear_bytes(l->bk);
    return 0;
}

/* The lm_head (docs/MODELS.md): normally absent, and then tied to the token embedding; if
 * stored, it must have the embedding's shape, and is used as its own matrix only when its
 * bytes differ from the embedding's. */
static int load_lm_head(Model *m, const Checkpoint *ck, const ArchTensor *t, const char *embed_name, Error *err) {
    ModelWeights *w = m->w;
    char key[128];
    snprintf(key, sizeof key, "%s.weight", t->name);
    const StTensor *lm = checkpoint_find(ck, key);
    const StTensor *emb = embed_name ? checkpoint_find(ck, embed_name) : NULL;
    w->lm_head = w->embed;
    if (!lm) return 0;
    int64_t shape[2] = {t->rows, t->cols};
    const StTensor *st;
    if (checkpoint_require(ck, key, 2, shape, DT_FLOAT_MASK, &st, err)) return -1;
    if (emb && emb->dtype == st->dtype && emb->nbytes == st->nbytes && memcmp(emb->data, st->data, st->nbytes) == 0)
        return 0;
    if (check_values(st, false, err)) return -1;
    HostMatrix hm = {.dtype = st->dtype, .rows = shape[0], .cols = shape[1], .data = st->data};
    w->lm_head = m->bk->matrix_create(m->bk, &hm, err);
    if (!w->lm_head) {
        w->lm_head = w->embed;
        return err_prefix(err, "%s", key);
    }
    m->weight_bytes += m->bk->matrix_bytes(w->lm_head);
    return 0;
}

bool model_has_embed(const Model *m) { return m->layer_first == 0; }
bool model_has_head(const Model *m) { return m->layer_last == m->cfg.n_layers; }

/* Whether a model part reads tensor t (model.h, ModelOptions.partial): its layers; the
 * embeddings, positions and what runs on them before the first layer in the first stage;
 * the final norm, projection and head after the last layer in the last stage, with the
 * token embedding there too (the head is tied to it unless stored apart). */
static bool part_reads(const Model *m, const ArchTensor *t) {
    if (t->layer >= 0) return t->layer >= m->layer_first && t->layer < m->layer_last;
    const size_t f = t->field;
    if (f == offsetof(ModelWeights, embed)) return model_has_embed(m) || model_has_head(m);
    if (f == offsetof(ModelWeights, positions) || f == offsetof(ModelWeights, project_in) ||
        f == offsetof(ModelWeights, embed_norm))
        return model_has_embed(m);
    if (f == offsetof(ModelWeights, project_out) || f == offsetof(ModelWeights, final_norm) ||
        f == offsetof(ModelWeights, lm_head))
        return model_has_head(m);
    return true;
}

int model_load_tensors(Model *m, const Checkpoint *ck, Error *err) {
    ArchTensor *list;
    size_t n;
    if (arch_tensors(&m->cfg, &list, &n, err)) return -1;
    char token_embed[128] = ""; /* NAME.weight of the first embedding: the one the lm_head ties to */
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const ArchTensor *t = &list[i];
        if (!part_reads(m, t)) continue;
        char *base = t->layer >= 0 ? (char *)&m->w->layers[t->layer] : (char *)m->w;
        void *dest = base + t->field;
        char key[128];
        switch (t->role) {
        case TENSOR_PROJECTION: rc = load_linear(m, ck, t->name, t->rows, t->cols, t->bias, dest, err); break;
        case TENSOR_NORM: rc = load_norm(m, ck, t->name, t->rows, dest, err); break;
        case TENSOR_EMBEDDING:
            snprintf(key, sizeof key, "%s.weight", t->name);
            if (!token_embed[0]) snprintf(token_embed, sizeof token_embed, "%s", key);
            rc = load_matrix(m, ck, key, t->rows, t->cols, dest, err);
            break;
        case TENSOR_LM_HEAD: rc = load_lm_head(m, ck, t, token_embed[0] ? token_embed : NULL, err); break;
        }
    }
    free(list);
    return rc;
}

/* ---- the blocks --------------------------------------------------------------------- */

void model_linear(Model *m, int layer, ProjKind kind, const Linear *l, const float *x, int T, float *y) {
    if (m->observer) {
        Backend *bk = m->bk;
        size_t n = (size_t)T * (size_t)l->in;
        if (bk->host_memory) {
            /* Host buffers: the observer sees (and may edit) x in place. */
            m->observer(m->observer_ctx, layer, kind, (float *)x, T, (int)l->in);
        } else {
            bk->download(bk, m->rs->observe, x, n);
            m->observer(m->observer_ctx, layer, kind, m->rs->observe, T, (int)l->in);
            bk->upload(bk, (float *)x, m->rs->observe, n);
        }
    }
    m->bk->linear(m->bk, l->bk, x, T, y);
}

void model_norm(Model *m, const Norm *n, const float *x, int T, float *y) {
    m->bk->layernorm(m->bk, x, n->w, n->b, m->cfg.ln_eps, T, m->cfg.hidden, y);
}

void model_add(Model *m, float *h, const float *x, int T) {
    m->bk->add(m->bk, h, x, (size_t)T * (size_t)m->cfg.hidden);
}

void model_attention(Model *m, int l, const float *x, int T, float *out) {
    const ModelConfig *c = &m->cfg;
    const Layer *L = &m->w->layers[l];
    RunState *s = m->rs;
    Backend *bk = m->bk;
    if (L->qkv.bk) {
        model_linear(m, l, PROJ_QKV, &L->qkv, x, T, s->qkv);
        bk->split_qkv(bk, s->qkv, T, c->n_heads, c->head_dim, s->q, s->k, s->v);
    } else {
        model_linear(m, l, PROJ_Q, &L->q, x, T, s->q);
        model_linear(m, l, PROJ_K, &L->k, x, T, s->k);
        model_linear(m, l, PROJ_V, &L->v, x, T, s->v);
    }
    /* Per sequence: its rows' keys and values go into its cache after its n_past cached
     * ones, then its queries attend over that cache. */
    const size_t D = (size_t)c->hidden;
    for (int p = 0; p < s->n_parts; p++) {
        const ChunkPart *part = &s->parts[p];
        const SeqSlot *seq = &m->seqs[part->seq];
        size_t base = (size_t)seq->first * D, at = base + (size_t)seq->n_past * D;
        size_t row = (size_t)part->row0 * D, n = (size_t)part->T * D;
        const void *kc, *vc;
        if (m->kv_f16) {
            uint16_t *k = (uint16_t *)s->k_cache[l], *v = (uint16_t *)s->v_cache[l];
            bk->store_f16(bk, s->k + row, n, k + at);
            bk->store_f16(bk, s->v + row, n, v + at);
            kc = k + base, vc = v + base;
        } else {
            float *k = (float *)s->k_cache[l], *v = (float *)s->v_cache[l];
            bk->copy(bk, k + at, s->k + row, n);
            bk->copy(bk, v + at, s->v + row, n);
            kc = k + base, vc = v + base;
        }
        AttentionArgs a = {
            .q = s->q + row, .k = kc, .v = vc, .kv_f16 = m->kv_f16, .out = s->attn + row,
            .T = part->T, .n_past = seq->n_past, .heads = c->n_heads, .head_dim = c->head_dim,
            .scale = 1.0f / sqrtf((float)c->head_dim), .alibi = m->w->alibi,
        };
        bk->attention(bk, &a);
    }
    model_linear(m, l, PROJ_OUT, &L->out, s->attn, T, out);
}

void model_mlp(Model *m, int l, const float *x, int T, float *out) {
    const Layer *L = &m->w->layers[l];
    RunState *s = m->rs;
    size_t n = (size_t)T * (size_t)m->cfg.ffn_dim;
    model_linear(m, l, PROJ_FC1, &L->fc1, x, T, s->ffn);
    if (m->cfg.activation == ACT_RELU) m->bk->relu(m->bk, s->ffn, n);
    else m->bk->gelu_tanh(m->bk, s->ffn, n);
    model_linear(m, l, PROJ_FC2, &L->fc2, s->ffn, T, out);
}

/* ---- buffers ------------------------------------------------------------------------ */

static float *alloc_or_fail(Model *m, size_t n, bool *ok) {
    float *p = m->bk->alloc(m->bk, n ? n : 1);
    if (!p) *ok = false;
    return p;
}

/* A cache buffer of n values: float32, or IEEE half in a float buffer of half the count
 * (backend.h). */
static void *alloc_cache(Model *m, size_t n, bool *ok) {
    return alloc_or_fail(m, m->kv_f16 ? (n + 1) / 2 : n, ok);
}

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

static int alloc_state(Model *m, Error *err) {
    const ModelConfig *c = &m->cfg;
    RunState *s = m->rs;
    size_t cap = (size_t)s->capacity, D = (size_t)c->hidden;
    size_t E = (size_t)c->word_embed_proj_dim, F = (size_t)c->ffn_dim;
    bool fused_qkv = m->layer_first < m->layer_last && m->w->layers[m->layer_first].qkv.bk;
    bool ok = true;
    s->residual = alloc_or_fail(m, cap * D, &ok);
    s->normed = alloc_or_fail(m, cap * max_size(D, E), &ok);
    s->q = alloc_or_fail(m, cap * D, &ok);
    s->k = alloc_or_fail(m, cap * D, &ok);
    s->v = alloc_or_fail(m, cap * D, &ok);
    s->qkv = fused_qkv ? alloc_or_fail(m, cap * 3 * D, &ok) : NULL;
    s->attn = alloc_or_fail(m, cap * D, &ok);
    s->ffn = alloc_or_fail(m, cap * F, &ok);
    s->block_out = alloc_or_fail(m, cap * D, &ok);
    s->embed = alloc_or_fail(m, cap * E, &ok);
    s->logits = alloc_or_fail(m, model_has_head(m) ? (size_t)MODEL_LOGIT_ROWS * (size_t)c->vocab_size : 1, &ok);
    s->last_hidden = alloc_or_fail(m, (size_t)MODEL_LOGIT_ROWS * E, &ok);
    s->pos = malloc(cap * sizeof *s->pos);
    s->row_pos = malloc(cap * sizeof *s->row_pos);
    s->parts = malloc(cap * sizeof *s->parts);
    if (!s->row_pos || !s->parts) ok = false;
    size_t widest = max_size(max_size(F, 3 * D), E); /* the widest projection input */
    s->observe = malloc(cap * widest * sizeof *s->observe);
    if (!s->pos || !s->observe) ok = false;

    s->k_cache = calloc((size_t)c->n_layers, sizeof *s->k_cache);
    s->v_cache = calloc((size_t)c->n_layers, sizeof *s->v_cache);
    if (!s->k_cache || !s->v_cache) ok = false;
    for (int l = m->layer_first; ok && l < m->layer_last; l++) {
        s->k_cache[l] = alloc_cache(m, (size_t)m->cache_tokens * D, &ok);
        s->v_cache[l] = alloc_cache(m, (size_t)m->cache_tokens * D, &ok);
    }
    if (!ok)
        return err_set(err, "out of memory allocating activations and the KV cache (%d tokens x %d layers)",
                       m->cache_tokens, m->layer_last - m->layer_first);
    return 0;
}

static void release(Model *m, float *p) {
    if (p) m->bk->release(m->bk, p);
}

static void linear_free(Model *m, Linear *l) {
    if (l->bk) m->bk->linear_free(m->bk, l->bk);
    l->bk = NULL;
}

static void norm_free(Model *m, Norm *n) { release(m, n->w), release(m, n->b); }

void model_free(Model *m) {
    if (!m) return;
    Backend *bk = m->bk;
    const ModelConfig *c = &m->cfg;
    ModelWeights *w = m->w;
    if (w) {
        for (int l = 0; w->layers && l < c->n_layers; l++) {
            Layer *L = &w->layers[l];
            norm_free(m, &L->attn_norm), norm_free(m, &L->ffn_norm);
            linear_free(m, &L->q), linear_free(m, &L->k), linear_free(m, &L->v);
            linear_free(m, &L->qkv), linear_free(m, &L->out);
            linear_free(m, &L->fc1), linear_free(m, &L->fc2);
        }
        free(w->layers);
        if (w->lm_head && w->lm_head != w->embed) bk->matrix_free(bk, w->lm_head);
        if (w->embed) bk->matrix_free(bk, w->embed);
        if (w->positions) bk->matrix_free(bk, w->positions);
        linear_free(m, &w->project_in), linear_free(m, &w->project_out);
        norm_free(m, &w->embed_norm), norm_free(m, &w->final_norm);
        release(m, w->alibi);
        free(w);
    }
    RunState *s = m->rs;
    if (s) {
        for (int l = 0; l < c->n_layers; l++) {
            if (s->k_cache) release(m, (float *)s->k_cache[l]);
            if (s->v_cache) release(m, (float *)s->v_cache[l]);
        }
        free(s->k_cache), free(s->v_cache);
        release(m, s->residual), release(m, s->normed), release(m, s->q), release(m, s->qkv);
        release(m, s->k), release(m, s->v);
        release(m, s->attn), release(m, s->ffn), release(m, s->block_out), release(m, s->embed);
        release(m, s->logits), release(m, s->last_hidden);
        free(s->pos), free(s->row_pos), free(s->parts), free(s->observe);
        free(s);
    }
    free(m->seqs);
    free(m);
}

int model_load(const Checkpoint *ck, Backend *bk, const ModelOptions *opt, Model **out, Error *err) {
    Model *m = calloc(1, sizeof *m);
    if (!m) return err_set(err, "out of memory");
    m->cfg = *checkpoint_config(ck);
    m->bk = bk;
    m->quant = opt->quant;
    m->kv_f16 = opt->kv_f16;
    const ModelConfig *c = &m->cfg;
    m->layer_first = 0, m->layer_last = c->n_layers;
    if (opt->partial) {
        if (opt->layer_first < 0 || opt->layer_first > opt->layer_last || opt->layer_last > c->n_layers) {
            err_set(err, "layers %d..%d: the model has layers 0..%d", opt->layer_first, opt->layer_last - 1,
                    c->n_layers - 1);
            free(m);
            return -1;
        }
        m->layer_first = opt->layer_first, m->layer_last = opt->layer_last;
    }

    m->ctx = opt->ctx > 0 ? opt->ctx : arch_native_context(c);
    int max_ctx = arch_max_context(c);
    if (max_ctx > 0 && m->ctx > max_ctx) {
        err_set(err, "context of %d tokens exceeds the model's %d positions (max_position_embeddings)", m->ctx,
                max_ctx);
        free(m);
        return -1;
    }
    m->w = calloc(1, sizeof *m->w);
    m->rs = calloc(1, sizeof *m->rs);
    if (m->w) m->w->layers = calloc((size_t)c->n_layers, sizeof *m->w->layers);
    if (!m->w || !m->rs || !m->w->layers) {
        model_free(m);
        return err_set(err, "out of memory");
    }
    int cap = opt->batch_tokens > 0 ? opt->batch_tokens : 512;
    m->rs->capacity = cap < m->ctx ? cap : m->ctx;
    m->cache_tokens = opt->cache_tokens > 0 ? opt->cache_tokens : m->ctx;
    if (m->cache_tokens < m->ctx) {
        model_free(m);
        return err_set(err, "a KV cache of %d tokens cannot hold one sequence of %d", opt->cache_tokens, m->ctx);
    }
    /* a slot per sequence that can be live at once: each takes at least one token */
    m->max_seqs = 1 + (m->cache_tokens < 4096 ? m->cache_tokens : 4096);
    m->seqs = calloc((size_t)m->max_seqs, sizeof *m->seqs);
    if (!m->seqs) {
        model_free(m);
        return err_set(err, "out of memory");
    }
    m->seqs[0] = (SeqSlot){.live = true, .first = 0, .len = m->ctx, .n_past = 0};

    int rc = arch_of(c)->load(m, ck, err);
    if (rc == 0) rc = alloc_state(m, err);
    if (rc == 0) rc = bk->sync(bk, err);
    if (rc) {
        model_free(m);
        return -1;
    }
    *out = m;
    return 0;
}

void model_reset(Model *m) { m->seqs[0].n_past = 0; }

/* ---- sequences ----------------------------------------------------------------------- */

/* The first start of a free range of len cache rows, or -1 (live sequences' ranges are
 * taken; a candidate start is 0 or the end of a live range). */
static int find_free_range(const Model *m, int len) {
    for (int c = -1; c < m->max_seqs; c++) {
        if (c >= 0 && !m->seqs[c].live) continue;
        int start = c < 0 ? 0 : m->seqs[c].first + m->seqs[c].len;
        if (start + len > m->cache_tokens) continue;
        bool clash = false;
        for (int i = 0; i < m->max_seqs && !clash; i++) {
            const SeqSlot *q = &m->seqs[i];
            clash = q->live && q->first < start + len && start < q->first + q->len;
        }
        if (!clash) return start;
    }
    return -1;
}

int model_seq_add(Model *m, int max_tokens, int *seq, Error *err) {
    if (max_tokens < 1 || max_tokens > m->ctx)
        return err_set(err, "a sequence of %d tokens: from 1 to the context's %d", max_tokens, m->ctx);
    int slot = -1, used = 0;
    for (int i = 0; i < m->max_seqs; i++) {
        if (m->seqs[i].live) used += m->seqs[i].len;
        else if (slot < 0 && i > 0) slot = i; /* 0 stays the default sequence's, even removed */
    }
    int first = slot < 0 ? -1 : find_free_range(m, max_tokens);
    if (first < 0)
        return err_set(err,
                       "KV cache full: a sequence of %d tokens does not fit (%d of the %d-token budget in use by "
                       "live sequences, no free range that long); remove a sequence or load with a larger cache",
                       max_tokens, used, m->cache_tokens);
    m->seqs[slot] = (SeqSlot){.live = true, .first = first, .len = max_tokens, .n_past = 0};
    *seq = slot;
    return 0;
}

static int check_seq(const Model *m, int seq, Error *err) {
    if (seq < 0 || seq >= m->max_seqs || !m->seqs[seq].live)
        return err_set(err, "sequence %d is not live%s", seq, seq == 0 ? " (the default sequence was removed)" : "");
    return 0;
}

int model_seq_remove(Model *m, int seq, Error *err) {
    if (check_seq(m, seq, err)) return -1;
    m->seqs[seq].live = false;
    return 0;
}

int model_seq_len(const Model *m, int seq) {
    return seq >= 0 && seq < m->max_seqs && m->seqs[seq].live ? m->seqs[seq].n_past : -1;
}

size_t model_kv_bytes_per_token(const Model *m) {
    const size_t layers = (size_t)(m->layer_last - m->layer_first);
    return 2 * layers * (size_t)m->cfg.hidden * (m->kv_f16 ? sizeof(uint16_t) : sizeof(float));
}

size_t model_kv_bytes(const Model *m) { return (size_t)m->cache_tokens * model_kv_bytes_per_token(m); }

/* ---- forward ----------------------------------------------------------------------- */

/* Sets up a chunk: `n` parts (sequence, rows) covering rows 0..T-1, and each row's position. */
static void set_chunk(Model *m, const ChunkPart *parts, int n) {
    RunState *s = m->rs;
    s->n_parts = n;
    for (int p = 0; p < n; p++) {
        s->parts[p] = parts[p];
        for (int t = 0; t < parts[p].T; t++) s->row_pos[parts[p].row0 + t] = m->seqs[parts[p].seq].n_past + t;
    }
}

/* The chunk's T rows through the architecture's stages: the final hidden states [T, E]. */
static const float *run_chunk(Model *m, const int32_t *ids, int T) {
    const Architecture *a = arch_of(&m->cfg);
    a->embed(m, ids, T);
    for (int l = 0; l < m->cfg.n_layers; l++) a->layer(m, l, T);
    return a->finish(m, T);
}

/* The chunk's rows through a part (model_step_stage): *hidden = the final hidden states when
 * it holds the head, else NULL after handing the residual stream on. */
static int run_part(Model *m, const int32_t *ids, int r0, int T, const StageIO *io, const float **hidden,
                    Error *err) {
    const Architecture *a = arch_of(&m->cfg);
    *hidden = NULL;
    if (!io->residual_in) a->embed(m, ids, T);
    else if (io->residual_in(io->ctx, m, r0, T, err)) return -1;
    for (int l = m->layer_first; l < m->layer_last; l++) a->layer(m, l, T);
    if (!io->residual_out) {
        *hidden = a->finish(m, T);
        return 0;
    }
    return io->residual_out(io->ctx, m, r0, T, err);
}

/* What a step hands back for one sequence. */
typedef enum {
    OUT_LAST,           /* the last token's logits, left in rs->logits (row = step index) */
    OUT_ALL_HOST,       /* every token's logits, downloaded (model_forward) */
    OUT_NLL,            /* every token's -log p(target), only those numbers downloaded */
    OUT_ROWS,           /* every token's logits handed to a callback, and the last kept */
} Readout;

typedef struct StepOut {
    Readout kind;
    float *logits;            /* OUT_ALL_HOST: host [T, vocab] */
    const int32_t *targets;   /* OUT_NLL: host [T], -1 = not scored */
    double *nll;              /* OUT_NLL: host [T] */
    void (*on_logits)(void *ctx, int t, float *row);   /* OUT_ROWS */
    void *logits_ctx;
} StepOut;

/* Rows first..first+n-1 of the chunk's hidden states are tokens t0.. of a sequence: their
 * logits (MODEL_LOGIT_ROWS rows at a time) downloaded or scored. */
static void read_rows(Model *m, const float *hidden, int first, int n, int t0, const StepOut *o) {
    Backend *bk = m->bk;
    float *logits = m->rs->logits;
    size_t E = (size_t)m->cfg.word_embed_proj_dim, V = (size_t)m->cfg.vocab_size;
    for (int r = 0; r < n; r += MODEL_LOGIT_ROWS) {
        int rows = n - r < MODEL_LOGIT_ROWS ? n - r : MODEL_LOGIT_ROWS;
        bk->matmul(bk, m->w->lm_head, hidden + (size_t)(first + r) * E, rows, logits);
        size_t t = (size_t)t0 + (size_t)r;
        if (o->kind == OUT_ALL_HOST) bk->download(bk, o->logits + t * V, logits, (size_t)rows * V);
        else if (o->kind == OUT_ROWS)
            for (int k = 0; k < rows; k++) o->on_logits(o->logits_ctx, (int)t + k, logits + (size_t)k * V);
        else bk->token_nll(bk, logits, rows, (int)V, o->targets + t, o->nll + t);
    }
}

static int check_ids(const Model *m, const int32_t *ids, int T, Error *err) {
    const int V = m->cfg.vocab_size;
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= V)
            return err_set(err, "token id %d is outside the vocabulary (0..%d)", ids[t], V - 1);
    return 0;
}

static int check_room(const Model *m, int seq, int T, Error *err) {
    if (check_seq(m, seq, err)) return -1;
    const SeqSlot *q = &m->seqs[seq];
    if (T <= 0) return err_set(err, "nothing to run: no tokens");
    if (T > q->len - q->n_past)
        return err_set(err, "%d tokens do not fit: %d of the %d positions are used", T, q->n_past, q->len);
    return 0;
}

/* Runs n steps (checked) whose readouts are outs[i]: all their tokens in chunks of up to
 * capacity rows, a sequence's tokens split across chunks where the chunk is full. */
static int run_steps(Model *m, const SeqStep *steps, const StepOut *outs, int n, const StageIO *io, Error *err) {
    RunState *s = m->rs;
    const int cap = s->capacity;
    const size_t E = (size_t)m->cfg.word_embed_proj_dim;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    ChunkPart *parts = malloc((size_t)cap * sizeof *parts);
    if (!ids || !parts) {
        free(ids), free(parts);
        return err_set(err, "out of memory");
    }
    int n_last = 0, r0 = 0;
    const bool head = !io || !io->residual_out;
    int i = 0, done = 0; /* the step being filled in, and how many of its tokens are done */
    while (i < n) {
        int rows = 0, np = 0;
        int first_i = i, first_done = done;
        while (i < n && rows < cap) {
            int take = steps[i].T - done < cap - rows ? steps[i].T - done : cap - rows;
            if (steps[i].ids) memcpy(ids + rows, steps[i].ids + done, (size_t)take * sizeof *ids);
            parts[np++] = (ChunkPart){.seq = steps[i].seq, .row0 = rows, .T = take};
            rows += take, done += take;
            if (done == steps[i].T) i++, done = 0;
        }
        set_chunk(m, parts, np);
        const float *hidden;
        if (!io) {
            hidden = run_chunk(m, ids, rows);
        } else if (run_part(m, ids, r0, rows, io, &hidden, err)) {
            free(ids), free(parts);
            return -1;
        }
        r0 += rows;
        if (!hidden) { /* a part before the head: its tokens now count as past */
            for (int p = 0; p < np; p++) m->seqs[parts[p].seq].n_past += parts[p].T;
            continue;
        }
        /* read out each part, then count its tokens as past */
        int si = first_i, sdone = first_done;
        for (int p = 0; p < np; p++, si++, sdone = 0) {
            const ChunkPart *part = &parts[p];
            const StepOut *o = &outs[si];
            if (o->kind == OUT_ROWS) read_rows(m, hidden, part->row0, part->T, sdone, o);
            if (o->kind == OUT_LAST || o->kind == OUT_ROWS) {
                if (sdone + part->T == steps[si].T)
                    m->bk->copy(m->bk, s->last_hidden + (size_t)si * E,
                                hidden + (size_t)(part->row0 + part->T - 1) * E, E);
            } else {
                read_rows(m, hidden, part->row0, part->T, sdone, o);
            }
            m->seqs[part->seq].n_past += part->T;
        }
    }
    for (int k = 0; k < n; k++) n_last += outs[k].kind == OUT_LAST || outs[k].kind == OUT_ROWS;
    /* The last-token logits of every step at once: row k of rs->logits is steps[k]'s
     * (rows of steps scored instead hold nothing of use). */
    if (n_last && head) m->bk->matmul(m->bk, m->w->lm_head, s->last_hidden, n, s->logits);
    free(ids), free(parts);
    return m->bk->sync(m->bk, err);
}

/* The calls that run the whole network need all of it. */
static int check_whole(const Model *m, Error *err) {
    if (m->layer_first != 0 || m->layer_last != m->cfg.n_layers)
        return err_set(err, "this model holds layers %d..%d only: it runs the staged forward of a pipeline",
                       m->layer_first, m->layer_last - 1);
    return 0;
}

static int check_step(const Model *m, const SeqStep *st, Error *err) {
    if (check_whole(m, err)) return -1;
    if (check_room(m, st->seq, st->T, err) || check_ids(m, st->ids, st->T, err)) return -1;
    if (st->nll)
        for (int t = 0; t < st->T; t++)
            if (st->targets[t] < -1 || st->targets[t] >= m->cfg.vocab_size)
                return err_set(err, "target id %d is outside the vocabulary (0..%d)", st->targets[t],
                               m->cfg.vocab_size - 1);
    return 0;
}

/* The checks of a step on a whole model (whole) or a part: the sequences, their room, and
 * the ids and targets the model reads; each step's readout in outs[]. */
static int check_steps(const Model *m, const SeqStep *steps, int n, const StageIO *io, StepOut *outs, Error *err) {
    if (n < 1 || n > MODEL_LOGIT_ROWS)
        return err_set(err, "%d sequences in one step: from 1 to %d", n, MODEL_LOGIT_ROWS);
    /* a part embeds unless its residual stream comes in, and reads out unless it goes on */
    const bool embeds = !io || !io->residual_in, heads = !io || !io->residual_out;
    if (!io && check_whole(m, err)) return -1;
    if (embeds && !model_has_embed(m)) return err_set(err, "this model part does not hold the embeddings");
    if (heads && !model_has_head(m)) return err_set(err, "this model part does not hold the final norm and head");
    for (int i = 0; i < n; i++) {
        const SeqStep *st = &steps[i];
        int rc = check_room(m, st->seq, st->T, err);
        if (rc == 0 && embeds) rc = !st->ids ? err_set(err, "no token ids") : check_ids(m, st->ids, st->T, err);
        if (rc == 0 && st->nll && heads)
            for (int t = 0; t < st->T && rc == 0; t++)
                if (st->targets[t] < -1 || st->targets[t] >= m->cfg.vocab_size)
                    rc = err_set(err, "target id %d is outside the vocabulary (0..%d)", st->targets[t],
                                 m->cfg.vocab_size - 1);
        if (rc) return err_prefix(err, "sequence %d", st->seq);
        for (int j = 0; j < i; j++)
            if (steps[j].seq == st->seq) return err_set(err, "sequence %d appears twice in one step", st->seq);
        outs[i] = st->nll         ? (StepOut){.kind = OUT_NLL, .targets = st->targets, .nll = st->nll}
                  : st->on_logits ? (StepOut){.kind = OUT_ROWS, .on_logits = st->on_logits, .logits_ctx = st->logits_ctx}
                                  : (StepOut){.kind = OUT_LAST};
    }
    return 0;
}

int model_step(Model *m, const SeqStep *steps, int n, Error *err) {
    StepOut outs[MODEL_LOGIT_ROWS];
    if (check_steps(m, steps, n, NULL, outs, err)) return -1;
    return run_steps(m, steps, outs, n, NULL, err);
}

int model_step_check(const Model *m, const SeqStep *steps, int n, const StageIO *io, Error *err) {
    StepOut outs[MODEL_LOGIT_ROWS];
    return check_steps(m, steps, n, io, outs, err);
}

int model_step_stage(Model *m, const SeqStep *steps, int n, const StageIO *io, Error *err) {
    StepOut outs[MODEL_LOGIT_ROWS];
    if (check_steps(m, steps, n, io, outs, err)) return -1;
    return run_steps(m, steps, outs, n, io, err);
}

static int target_seq_add(void *self, int max_tokens, int *seq, Error *err) {
    return model_seq_add(self, max_tokens, seq, err);
}
static int target_seq_remove(void *self, int seq, Error *err) { return model_seq_remove(self, seq, err); }
static int target_seq_len(void *self, int seq) { return model_seq_len(self, seq); }
static int target_step(void *self, const SeqStep *steps, int n, Error *err) { return model_step(self, steps, n, err); }
static float *target_step_logits(void *self, int i) { return model_step_logits(self, i); }

void model_step_target(Model *m, StepTarget *t) {
    *t = (StepTarget){.self = m, .vocab = m->cfg.vocab_size, .ctx = m->ctx, .cache_tokens = m->cache_tokens,
                      .capacity = model_capacity(m), .bk = m->bk, .prompt_logits = true,
                      .seq_add = target_seq_add, .seq_remove = target_seq_remove, .seq_len = target_seq_len,
                      .step = target_step, .step_logits = target_step_logits};
}

float *model_step_logits(Model *m, int i) {
    return m->rs->logits + (size_t)i * (size_t)m->cfg.vocab_size;
}

/* The single-sequence calls: one step of the default sequence. */
static int forward_default(Model *m, const int32_t *ids, int T, const StepOut *o, Error *err) {
    SeqStep st = {.seq = 0, .ids = ids, .T = T, .targets = o->targets, .nll = o->nll};
    if (check_step(m, &st, err)) return -1;
    return run_steps(m, &st, o, 1, NULL, err);
}

int model_forward(Model *m, const int32_t *ids, int T, bool all_logits, float *logits, Error *err) {
    StepOut o = {.kind = all_logits ? OUT_ALL_HOST : OUT_LAST};
    if (all_logits) o.logits = logits;
    if (forward_default(m, ids, T, &o, err)) return -1;
    if (!all_logits) {
        m->bk->download(m->bk, logits, m->rs->logits, (size_t)m->cfg.vocab_size);
        return m->bk->sync(m->bk, err);
    }
    return 0;
}

float *model_forward_last(Model *m, const int32_t *ids, int T, Error *err) {
    StepOut o = {.kind = OUT_LAST};
    return forward_default(m, ids, T, &o, err) ? NULL : m->rs->logits;
}

int model_score(Model *m, const int32_t *ids, int T, const int32_t *targets, double *nll, Error *err) {
    StepOut o = {.kind = OUT_NLL, .targets = targets, .nll = nll};
    return forward_default(m, ids, T, &o, err);
}

/* ---- the stages, one at a time (the default sequence) ---------------------------------- */

int model_capacity(const Model *m) { return m->rs->capacity; }

float *model_residual(Model *m) { return m->rs->residual; }

static int check_chunk(Model *m, int T, Error *err) {
    if (check_room(m, 0, T, err)) return -1;
    if (T > m->rs->capacity)
        return err_set(err, "%d tokens exceed the %d a stage takes at a time", T, m->rs->capacity);
    ChunkPart part = {.seq = 0, .row0 = 0, .T = T};
    set_chunk(m, &part, 1);
    return 0;
}

int model_embed(Model *m, const int32_t *ids, int T, Error *err) {
    if (!model_has_embed(m)) return err_set(err, "this model part does not hold the embeddings");
    if (check_chunk(m, T, err) || check_ids(m, ids, T, err)) return -1;
    arch_of(&m->cfg)->embed(m, ids, T);
    return m->bk->sync(m->bk, err);
}

int model_run_layers(Model *m, int first, int last, int T, Error *err) {
    if (check_chunk(m, T, err)) return -1;
    if (first < m->layer_first || first > last || last > m->layer_last)
        return err_set(err, "layers %d..%d: the model holds layers %d..%d", first, last - 1, m->layer_first,
                       m->layer_last - 1);
    const Architecture *a = arch_of(&m->cfg);
    for (int l = first; l < last; l++) a->layer(m, l, T);
    return m->bk->sync(m->bk, err);
}

int model_finish(Model *m, int T, const float **hidden, Error *err) {
    if (!model_has_head(m)) return err_set(err, "this model part does not hold the final norm and head");
    if (check_chunk(m, T, err)) return -1;
    *hidden = arch_of(&m->cfg)->finish(m, T);
    return m->bk->sync(m->bk, err);
}

int model_logits(Model *m, const float *hidden, int rows, float **logits, Error *err) {
    if (!model_has_head(m)) return err_set(err, "this model part does not hold the head");
    if (rows <= 0 || rows > MODEL_LOGIT_ROWS)
        return err_set(err, "%d rows of logits: from 1 to %d at a time", rows, MODEL_LOGIT_ROWS);
    m->bk->matmul(m->bk, m->w->lm_head, hidden, rows, m->rs->logits);
    *logits = m->rs->logits;
    return m->bk->sync(m->bk, err);
}

int model_advance(Model *m, int T, Error *err) {
    if (check_room(m, 0, T, err)) return -1;
    m->seqs[0].n_past += T;
    return m->bk->sync(m->bk, err);
}
