/* opt.c — Meta's OPT (Hugging Face OPTForCausalLM), SPEC §3.1.
 *
 *   x   = embed_tokens[ids]                      (word_embed_proj_dim wide)
 *   x   = project_in(x)                          (only when that width != hidden: opt-350m)
 *   h   = x + embed_positions[n_past + t + 2]    (learned positions, fixed offset 2)
 *   per layer, pre-LN (all sizes but 350m):
 *     h = h + out_proj(Attn(self_attn_layer_norm(h)))
 *     h = h + fc2(relu(fc1(final_layer_norm(h))))
 *   per layer, post-LN (opt-350m):
 *     h = self_attn_layer_norm(h + out_proj(Attn(h)))
 *     h = final_layer_norm(h + fc2(relu(fc1(h))))
 *   h   = decoder.final_layer_norm(h)            (pre-LN models only)
 *   h   = project_out(h)                         (when project_in exists)
 *   logits = h embed_tokens^T                    (tied lm_head; model.c)
 * Attention: q = q_proj(x) * head_dim^-0.5, causal softmax(q k^T) v per head. */
#include <math.h>
#include <stdio.h>

#include "model.h"

#define TRY(call) do { if ((call) != 0) return -1; } while (0)

/* Loads one LayerNorm "name.weight"/"name.bias", or nothing when the model has no affine. */
static int load_layernorm(Model *m, const Checkpoint *ck, const char *name, float **w, float **b,
                          Error *err) {
    if (!m->cfg.ln_elementwise_affine) return 0;
    char key[200];
    snprintf(key, sizeof key, "%s.weight", name);
    TRY(model_load_vector(m, ck, key, m->cfg.hidden, w, err));
    snprintf(key, sizeof key, "%s.bias", name);
    return model_load_vector(m, ck, key, m->cfg.hidden, b, err);
}

int opt_load(Model *m, const Checkpoint *ck, Error *err) {
    const ModelConfig *c = &m->cfg;
    int64_t D = c->hidden, E = c->word_embed_proj_dim, F = c->ffn_dim;
    bool bias = c->enable_bias;
    char name[200];

    TRY(model_load_matrix(m, ck, "decoder.embed_tokens.weight", c->vocab_size, E, &m->embed, err));
    TRY(model_load_matrix(m, ck, "decoder.embed_positions.weight", (int64_t)c->max_positions + 2, D,
                          &m->positions, err));
    if (E != D) {
        TRY(model_load_linear(m, ck, "decoder.project_in", D, E, false, &m->project_in, err));
        TRY(model_load_linear(m, ck, "decoder.project_out", E, D, false, &m->project_out, err));
    }
    if (c->do_layer_norm_before && !c->remove_final_layer_norm)
        TRY(load_layernorm(m, ck, "decoder.final_layer_norm", &m->final_ln_w, &m->final_ln_b, err));

    for (int l = 0; l < c->n_layers; l++) {
        Layer *L = &m->layers[l];
        const char *proj[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        Linear *dst[4] = {&L->q, &L->k, &L->v, &L->out};
        for (int i = 0; i < 4; i++) {
            snprintf(name, sizeof name, "decoder.layers.%d.self_attn.%s", l, proj[i]);
            TRY(model_load_linear(m, ck, name, D, D, bias, dst[i], err));
        }
        snprintf(name, sizeof name, "decoder.layers.%d.fc1", l);
        TRY(model_load_linear(m, ck, name, F, D, bias, &L->fc1, err));
        snprintf(name, sizeof name, "decoder.layers.%d.fc2", l);
        TRY(model_load_linear(m, ck, name, D, F, bias, &L->fc2, err));
        snprintf(name, sizeof name, "decoder.layers.%d.self_attn_layer_norm", l);
        TRY(load_layernorm(m, ck, name, &L->ln_attn_w, &L->ln_attn_b, err));
        snprintf(name, sizeof name, "decoder.layers.%d.final_layer_norm", l);
        TRY(load_layernorm(m, ck, name, &L->ln_ffn_w, &L->ln_ffn_b, err));
    }
    return 0;
}

const float *opt_forward(Model *m, const int32_t *ids, int T) {
    const ModelConfig *c = &m->cfg;
    Backend *bk = m->bk;
    RunState *s = &m->rs;
    const int D = c->hidden;
    const size_t n = (size_t)T * (size_t)D;
    const float eps = c->ln_eps;
    const bool pre_ln = c->do_layer_norm_before;

    /* Token embeddings (projected up to the hidden width on opt-350m), then positions. */
    if (m->project_in.bk) {
        bk->embed(bk, m->embed, ids, T, s->emb, false);
        model_linear(m, -1, PROJ_IN_EMBED, &m->project_in, s->emb, T, s->h);
    } else {
        bk->embed(bk, m->embed, ids, T, s->h, false);
    }
    for (int t = 0; t < T; t++) s->pos[t] = m->n_past + t + 2;
    bk->embed(bk, m->positions, s->pos, T, s->h, true);

    for (int l = 0; l < c->n_layers; l++) {
        const Layer *L = &m->layers[l];
        /* This call's keys and values go straight into the cache after the n_past cached ones. */
        float *k_new = m->k_cache[l] + (size_t)m->n_past * D;
        float *v_new = m->v_cache[l] + (size_t)m->n_past * D;

        /* --- self-attention block --- */
        const float *attn_in = s->h;
        if (pre_ln) {
            bk->layernorm(bk, s->h, L->ln_attn_w, L->ln_attn_b, eps, T, D, s->x);
            attn_in = s->x;
        }
        model_linear(m, l, PROJ_Q, &L->q, attn_in, T, s->q);
        model_linear(m, l, PROJ_K, &L->k, attn_in, T, k_new);
        model_linear(m, l, PROJ_V, &L->v, attn_in, T, v_new);
        AttentionArgs a = {
            .q = s->q, .k = m->k_cache[l], .v = m->v_cache[l], .out = s->attn,
            .T = T, .n_past = m->n_past, .heads = c->n_heads, .head_dim = c->head_dim,
            .scale = 1.0f / sqrtf((float)c->head_dim), .alibi = NULL,
        };
        bk->attention(bk, &a);
        model_linear(m, l, PROJ_OUT, &L->out, s->attn, T, s->x);
        bk->add(bk, s->h, s->x, n);
        if (!pre_ln) bk->layernorm(bk, s->h, L->ln_attn_w, L->ln_attn_b, eps, T, D, s->h);

        /* --- feed-forward block --- */
        const float *ffn_in = s->h;
        if (pre_ln) {
            bk->layernorm(bk, s->h, L->ln_ffn_w, L->ln_ffn_b, eps, T, D, s->x);
            ffn_in = s->x;
        }
        model_linear(m, l, PROJ_FC1, &L->fc1, ffn_in, T, s->ffn);
        if (c->activation == ACT_RELU)
            bk->relu(bk, s->ffn, (size_t)T * (size_t)c->ffn_dim);
        else
            bk->gelu_tanh(bk, s->ffn, (size_t)T * (size_t)c->ffn_dim);
        model_linear(m, l, PROJ_FC2, &L->fc2, s->ffn, T, s->attn);
        bk->add(bk, s->h, s->attn, n);
        if (!pre_ln) bk->layernorm(bk, s->h, L->ln_ffn_w, L->ln_ffn_b, eps, T, D, s->h);
    }

    const float *out = s->h;
    if (m->final_ln_w || (pre_ln && !c->remove_final_layer_norm)) {
        bk->layernorm(bk, s->h, m->final_ln_w, m->final_ln_b, eps, T, D, s->x);
        out = s->x;
    }
    if (m->project_out.bk) {
        model_linear(m, c->n_layers, PROJ_OUT_EMBED, &m->project_out, out, T, s->emb);
        out = s->emb;
    }
    return out;
}
