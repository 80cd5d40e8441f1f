/* arch_bloom.c — BigScience BLOOM (Hugging Face BloomForCausalLM); docs/MODELS.md.
 *
 *   h = word_embeddings_layernorm(word_embeddings[ids])      (no position embeddings)
 *   per layer:
 *     x    = input_layernorm(h)
 *     q,k,v = query_key_value(x)      (fused; features ordered [head][q|k|v][head_dim])
 *     a    = softmax(q k^T / sqrt(head_dim) + alibi_slope[head] * key_pos, causal) v
 *     h    = (x if residual_post_ln else h) + dense(a)
 *     x    = post_attention_layernorm(h)
 *     h    = (x if residual_post_ln else h) + dense_4h_to_h(gelu_tanh(dense_h_to_4h(x)))
 *   h = ln_f(h);  logits = h word_embeddings^T  (tied lm_head; model.c)
 * ALiBi replaces positions: each head adds slope * (key position) to its scores, which
 * after the softmax equals penalising distance linearly.
 *
 * Below: the tensor table, config.json, then loading (the slopes) and the forward stages. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "model_internal.h"

#define MODEL_TYPE "bloom" /* config.json's model_type */

#define TRAINED_CONTEXT 2048 /* sequence length BLOOM was trained with; ALiBi sets no limit */

/* ---- tensors ------------------------------------------------------------------------ */

#define MODEL(f) offsetof(ModelWeights, f)
#define LAYER(f) offsetof(Layer, f)

static const TensorTemplate TENSORS[] = {
    {"word_embeddings", TENSOR_EMBEDDING, false, DIM_VOCAB, DIM_HIDDEN, false, NULL, MODEL(embed)},
    {"word_embeddings_layernorm", TENSOR_NORM, false, DIM_HIDDEN, DIM_NONE, false, NULL, MODEL(embed_norm)},
    {"h.%d.input_layernorm", TENSOR_NORM, true, DIM_HIDDEN, DIM_NONE, false, NULL, LAYER(attn_norm)},
    {"h.%d.self_attention.query_key_value", TENSOR_PROJECTION, true, DIM_QKV, DIM_HIDDEN, true, NULL, LAYER(qkv)},
    {"h.%d.self_attention.dense", TENSOR_PROJECTION, true, DIM_HIDDEN, DIM_HIDDEN, true, NULL, LAYER(out)},
    {"h.%d.post_attention_layernorm", TENSOR_NORM, true, DIM_HIDDEN, DIM_NONE, false, NULL, LAYER(ffn_norm)},
    {"h.%d.mlp.dense_h_to_4h", TENSOR_PROJECTION, true, DIM_FFN, DIM_HIDDEN, true, NULL, LAYER(fc1)},
    {"h.%d.mlp.dense_4h_to_h", TENSOR_PROJECTION, true, DIM_HIDDEN, DIM_FFN, true, NULL, LAYER(fc2)},
    {"ln_f", TENSOR_NORM, false, DIM_HIDDEN, DIM_NONE, false, NULL, MODEL(final_norm)},
    {"lm_head", TENSOR_LM_HEAD, false, DIM_VOCAB, DIM_HIDDEN, false, NULL, MODEL(lm_head)},
};

/* ---- config.json (BloomConfig) -------------------------------------------------------- */

/* What BloomConfig does not make configurable. */
static void fixed_fields(ModelConfig *cfg) {
    cfg->ffn_dim = 4 * cfg->hidden; /* hard-coded in BloomMLP */
    cfg->max_positions = 0;         /* ALiBi: no position table */
    cfg->word_embed_proj_dim = cfg->hidden;
    cfg->activation = ACT_GELU_TANH;
    cfg->do_layer_norm_before = true;
    cfg->enable_bias = true;
    cfg->ln_elementwise_affine = true;
}

static int parse_config(const ConfigReader *r, ModelConfig *cfg) {
    if (config_get_int(r, CONFIG_NAMES("vocab_size"), true, 0, 1, 1 << 24, &cfg->vocab_size) ||
        config_get_int(r, CONFIG_NAMES("hidden_size", "n_embed"), true, 0, 1, 1 << 17, &cfg->hidden) ||
        config_get_int(r, CONFIG_NAMES("n_layer", "num_hidden_layers"), true, 0, 1, 1 << 12, &cfg->n_layers) ||
        config_get_int(r, CONFIG_NAMES("n_head", "num_attention_heads"), true, 0, 1, 1 << 17, &cfg->n_heads))
        return -1;
    if (config_check_heads(r, cfg, "n_head", "hidden_size")) return -1;
    fixed_fields(cfg);
    if (config_get_bool(r, "apply_residual_connection_post_layernorm", false, &cfg->residual_post_ln)) return -1;
    return config_get_float(r, "layer_norm_epsilon", 1e-5f, 0.0, 1.0, &cfg->ln_eps);
}

/* BloomConfig's defaults. ffn_dim and word_embed_proj_dim follow hidden (arch_config_finish). */
static void config_defaults(ModelConfig *cfg) {
    cfg->vocab_size = 250880, cfg->hidden = 64, cfg->n_layers = 2, cfg->n_heads = 8;
    fixed_fields(cfg);
    cfg->ffn_dim = 0, cfg->word_embed_proj_dim = 0;
    cfg->residual_post_ln = false;
    cfg->ln_eps = 1e-5f;
    cfg->bos_id = 1, cfg->eos_id = 2, cfg->pad_id = 3;
}

/* The shortest decimal that reads back as the same float (1e-05, not 9.99999974737875e-06). */
static double shortest(float v) {
    char buf[32];
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
        if (strtof(buf, NULL) == v) break;
    }
    return strtod(buf, NULL);
}

/* ffn_dim (4 * hidden) is implied, not written. */
static int write_config(const ModelConfig *c, cJSON *o) {
    bool ok = arch_write_config_head(o, "BloomForCausalLM", MODEL_TYPE, c) == 0 &&
              cJSON_AddNumberToObject(o, "n_layer", c->n_layers) &&
              cJSON_AddNumberToObject(o, "n_head", c->n_heads) &&
              cJSON_AddNumberToObject(o, "layer_norm_epsilon", shortest(c->ln_eps)) &&
              cJSON_AddBoolToObject(o, "apply_residual_connection_post_layernorm", c->residual_post_ln);
    return ok ? arch_write_token_ids(o, c) : -1;
}

static void summary(const ModelConfig *c, char *buf, size_t cap) {
    (void)c;
    snprintf(buf, cap, "ALiBi positions (%d by default)", TRAINED_CONTEXT);
}

/* ---- loading ------------------------------------------------------------------------ */

/* ALiBi slopes for n heads (HF build_alibi_tensor): with p = the largest power of two <= n,
 * slopes base^1..base^p for base = 2^(-8/p); if n > p, the remaining n - p heads take the odd
 * powers extra^1, extra^3, ... of extra = 2^(-4/p). */
static void alibi_slopes(int n, float *slopes) {
    int p = 1;
    while (p * 2 <= n) p *= 2;
    double base = pow(2.0, -8.0 / p);
    for (int i = 0; i < p; i++) slopes[i] = (float)pow(base, i + 1);
    double extra = pow(2.0, -4.0 / p);
    for (int i = 0; i < n - p; i++) slopes[p + i] = (float)pow(extra, 2 * i + 1);
}

static int load(Model *m, const Checkpoint *ck, Error *err) {
    if (model_load_tensors(m, ck, err)) return -1;
    int heads = m->cfg.n_heads;
    float *slopes = malloc((size_t)heads * sizeof *slopes);
    m->w->alibi = m->bk->alloc(m->bk, (size_t)heads);
    if (!slopes || !m->w->alibi) {
        free(slopes);
        return err_set(err, "out of memory");
    }
    alibi_slopes(heads, slopes);
    m->bk->upload(m->bk, m->w->alibi, slopes, (size_t)heads);
    free(slopes);
    return 0;
}

/* ---- forward ------------------------------------------------------------------------ */

static void embed(Model *m, const int32_t *ids, int T) {
    RunState *s = m->rs;
    /* h = word_embeddings_layernorm(word_embeddings[ids]) */
    m->bk->embed(m->bk, m->w->embed, ids, T, s->embed, false);
    model_norm(m, &m->w->embed_norm, s->embed, T, s->residual);
}

static void layer(Model *m, int l, int T) {
    const Layer *L = &m->w->layers[l];
    RunState *s = m->rs;
    float *h = s->residual, *x = s->normed, *a = s->block_out;
    const bool post = m->cfg.residual_post_ln;
    const size_t n = (size_t)T * (size_t)m->cfg.hidden;
    /* x = input_layernorm(h);  h = (x if post else h) + dense(Attn(x)) */
    model_norm(m, &L->attn_norm, h, T, x);
    model_attention(m, l, x, T, a);
    if (post) m->bk->copy(m->bk, h, x, n);
    model_add(m, h, a, T);
    /* x = post_attention_layernorm(h);  h = (x if post else h) + dense_4h_to_h(gelu(dense_h_to_4h(x))) */
    model_norm(m, &L->ffn_norm, h, T, x);
    model_mlp(m, l, x, T, a);
    if (post) m->bk->copy(m->bk, h, x, n);
    model_add(m, h, a, T);
}

static const float *finish(Model *m, int T) {
    /* h = ln_f(h) */
    model_norm(m, &m->w->final_norm, m->rs->residual, T, m->rs->normed);
    return m->rs->normed;
}

const Architecture arch_bloom = {
    .model_type = MODEL_TYPE,
    .prefix = "transformer.",
    .dim_labels = {
        [DIM_VOCAB] = "vocab_size", [DIM_HIDDEN] = "hidden_size", [DIM_FFN] = "4*hidden_size",
        [DIM_QKV] = "3*hidden_size",
    },
    .position_offset = 0,
    .trained_context = TRAINED_CONTEXT,
    .tensors = TENSORS,
    .n_tensors = sizeof TENSORS / sizeof TENSORS[0],
    .parse_config = parse_config,
    .config_defaults = config_defaults,
    .write_config = write_config,
    .summary = summary,
    .load = load,
    .embed = embed,
    .layer = layer,
    .finish = finish,
};
