/* bloom.c — BigScience BLOOM (Hugging Face BloomForCausalLM), SPEC §3.2.
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
 * after the softmax equals penalising distance linearly. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "model.h"

#define TRY(call) do { if ((call) != 0) return -1; } while (0)

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

static int load_layernorm(Model *m, const Checkpoint *ck, const char *name, float **w, float **b,
                          Error *err) {
    char key[200];
    snprintf(key, sizeof key, "%s.weight", name);
    TRY(model_load_vector(m, ck, key, m->cfg.hidden, w, err));
    snprintf(key, sizeof key, "%s.bias", name);
    return model_load_vector(m, ck, key, m->cfg.hidden, b, err);
}

int bloom_load(Model *m, const Checkpoint *ck, Error *err) {
    const ModelConfig *c = &m->cfg;
    int64_t D = c->hidden, F = c->ffn_dim;
    char name[200];

    TRY(model_load_matrix(m, ck, "word_embeddings.weight", c->vocab_size, D, &m->embed, err));
    TRY(load_layernorm(m, ck, "word_embeddings_layernorm", &m->emb_ln_w, &m->emb_ln_b, err));
    TRY(load_layernorm(m, ck, "ln_f", &m->final_ln_w, &m->final_ln_b, err));

    for (int l = 0; l < c->n_layers; l++) {
        Layer *L = &m->layers[l];
        snprintf(name, sizeof name, "h.%d.self_attention.query_key_value", l);
        TRY(model_load_linear(m, ck, name, 3 * D, D, true, &L->qkv, err));
        snprintf(name, sizeof name, "h.%d.self_attention.dense", l);
        TRY(model_load_linear(m, ck, name, D, D, true, &L->out, err));
        snprintf(name, sizeof name, "h.%d.mlp.dense_h_to_4h", l);
        TRY(model_load_linear(m, ck, name, F, D, true, &L->fc1, err));
        snprintf(name, sizeof name, "h.%d.mlp.dense_4h_to_h", l);
        TRY(model_load_linear(m, ck, name, D, F, true, &L->fc2, err));
        snprintf(name, sizeof name, "h.%d.input_layernorm", l);
        TRY(load_layernorm(m, ck, name, &L->ln_attn_w, &L->ln_attn_b, err));
        snprintf(name, sizeof name, "h.%d.post_attention_layernorm", l);
        TRY(load_layernorm(m, ck, name, &L->ln_ffn_w, &L->ln_ffn_b, err));
    }

    float *slopes = malloc((size_t)c->n_heads * sizeof *slopes);
    m->alibi = m->bk->alloc(m->bk, (size_t)c->n_heads);
    if (!slopes || !m->alibi) {
        free(slopes);
        return err_set(err, "out of memory");
    }
    alibi_slopes(c->n_heads, slopes);
    m->bk->upload(m->bk, m->alibi, slopes, (size_t)c->n_heads);
    free(slopes);
    return 0;
}

const float *bloom_forward(Model *m, const int32_t *ids, int T) {
    const ModelConfig *c = &m->cfg;
    Backend *bk = m->bk;
    RunState *s = &m->rs;
    const int D = c->hidden;
    const size_t n = (size_t)T * (size_t)D;
    const float eps = c->ln_eps;

    bk->embed(bk, m->embed, ids, T, s->x, false);
    bk->layernorm(bk, s->x, m->emb_ln_w, m->emb_ln_b, eps, T, D, s->h);

    for (int l = 0; l < c->n_layers; l++) {
        const Layer *L = &m->layers[l];
        float *k_new = m->k_cache[l] + (size_t)m->n_past * D;
        float *v_new = m->v_cache[l] + (size_t)m->n_past * D;

        /* --- self-attention block --- */
        bk->layernorm(bk, s->h, L->ln_attn_w, L->ln_attn_b, eps, T, D, s->x);
        model_linear(m, l, PROJ_QKV, &L->qkv, s->x, T, s->qkv);
        bk->split_qkv(bk, s->qkv, T, c->n_heads, c->head_dim, s->q, k_new, v_new);
        AttentionArgs a = {
            .q = s->q, .k = m->k_cache[l], .v = m->v_cache[l], .out = s->attn,
            .T = T, .n_past = m->n_past, .heads = c->n_heads, .head_dim = c->head_dim,
            .scale = 1.0f / sqrtf((float)c->head_dim), .alibi = m->alibi,
        };
        bk->attention(bk, &a);
        model_linear(m, l, PROJ_OUT, &L->out, s->attn, T, s->q);
        if (c->residual_post_ln) bk->copy(bk, s->h, s->x, n);
        bk->add(bk, s->h, s->q, n);

        /* --- MLP block --- */
        bk->layernorm(bk, s->h, L->ln_ffn_w, L->ln_ffn_b, eps, T, D, s->x);
        model_linear(m, l, PROJ_FC1, &L->fc1, s->x, T, s->ffn);
        bk->gelu_tanh(bk, s->ffn, (size_t)T * (size_t)c->ffn_dim);
        model_linear(m, l, PROJ_FC2, &L->fc2, s->ffn, T, s->q);
        if (c->residual_post_ln) bk->copy(bk, s->h, s->x, n);
        bk->add(bk, s->h, s->q, n);
    }
    bk->layernorm(bk, s->h, m->final_ln_w, m->final_ln_b, eps, T, D, s->x);
    return s->x;
}
