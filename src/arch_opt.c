/* arch_opt.c — Meta's OPT (Hugging Face OPTForCausalLM); docs/MODELS.md.
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
 * Attention: q = q_proj(x) * head_dim^-0.5, causal softmax(q k^T) v per head.
 *
 * Below: the tensor table, config.json, then the forward stages. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "model_internal.h"

#define MODEL_TYPE "opt" /* config.json's model_type */

#define POSITION_OFFSET 2 /* OPTLearnedPositionalEmbedding.offset */

/* ---- tensors ------------------------------------------------------------------------ */

static bool projected(const ModelConfig *c) { return c->word_embed_proj_dim != c->hidden; }
static bool has_final_norm(const ModelConfig *c) { return c->do_layer_norm_before && !c->remove_final_layer_norm; }

#define MODEL(f) offsetof(ModelWeights, f)
#define LAYER(f) offsetof(Layer, f)

static const TensorTemplate TENSORS[] = {
    {"decoder.embed_tokens", TENSOR_EMBEDDING, false, DIM_VOCAB, DIM_EMBED, false, NULL, MODEL(embed)},
    {"decoder.embed_positions", TENSOR_EMBEDDING, false, DIM_POSITIONS, DIM_HIDDEN, false, NULL, MODEL(positions)},
    {"decoder.project_in", TENSOR_PROJECTION, false, DIM_HIDDEN, DIM_EMBED, false, projected, MODEL(project_in)},
    {"decoder.project_out", TENSOR_PROJECTION, false, DIM_EMBED, DIM_HIDDEN, false, projected, MODEL(project_out)},
    {"decoder.final_layer_norm", TENSOR_NORM, false, DIM_HIDDEN, DIM_NONE, false, has_final_norm, MODEL(final_norm)},
    {"decoder.layers.%d.self_attn.q_proj", TENSOR_PROJECTION, true, DIM_HIDDEN, DIM_HIDDEN, true, NULL, LAYER(q)},
    {"decoder.layers.%d.self_attn.k_proj", TENSOR_PROJECTION, true, DIM_HIDDEN, DIM_HIDDEN, true, NULL, LAYER(k)},
    {"decoder.layers.%d.self_attn.v_proj", TENSOR_PROJECTION, true, DIM_HIDDEN, DIM_HIDDEN, true, NULL, LAYER(v)},
    {"decoder.layers.%d.self_attn.out_proj", TENSOR_PROJECTION, true, DIM_HIDDEN, DIM_HIDDEN, true, NULL, LAYER(out)},
    {"decoder.layers.%d.fc1", TENSOR_PROJECTION, true, DIM_FFN, DIM_HIDDEN, true, NULL, LAYER(fc1)},
    {"decoder.layers.%d.fc2", TENSOR_PROJECTION, true, DIM_HIDDEN, DIM_FFN, true, NULL, LAYER(fc2)},
    {"decoder.layers.%d.self_attn_layer_norm", TENSOR_NORM, true, DIM_HIDDEN, DIM_NONE, false, NULL, LAYER(attn_norm)},
    {"decoder.layers.%d.final_layer_norm", TENSOR_NORM, true, DIM_HIDDEN, DIM_NONE, false, NULL, LAYER(ffn_norm)},
    {"lm_head", TENSOR_LM_HEAD, false, DIM_VOCAB, DIM_EMBED, false, NULL, MODEL(lm_head)},
};

/* ---- config.json (OPTConfig) ---------------------------------------------------------- */

static int parse_config(const ConfigReader *r, ModelConfig *cfg) {
    if (config_get_int(r, CONFIG_NAMES("vocab_size"), true, 0, 1, 1 << 24, &cfg->vocab_size) ||
        config_get_int(r, CONFIG_NAMES("hidden_size", "d_model"), true, 0, 1, 1 << 17, &cfg->hidden) ||
        config_get_int(r, CONFIG_NAMES("num_hidden_layers"), true, 0, 1, 1 << 12, &cfg->n_layers) ||
        config_get_int(r, CONFIG_NAMES("num_attention_heads"), true, 0, 1, 1 << 17, &cfg->n_heads) ||
        config_get_int(r, CONFIG_NAMES("ffn_dim"), true, 0, 1, 1 << 20, &cfg->ffn_dim) ||
        config_get_int(r, CONFIG_NAMES("max_position_embeddings"), true, 0, 1, 1 << 20, &cfg->max_positions) ||
        config_get_int(r, CONFIG_NAMES("word_embed_proj_dim"), false, cfg->hidden, 1, 1 << 17,
                       &cfg->word_embed_proj_dim))
        return -1;
    if (config_check_heads(r, cfg, "num_attention_heads", "hidden_size")) return -1;

    if (config_get_bool(r, "do_layer_norm_before", true, &cfg->do_layer_norm_before) ||
        config_get_bool(r, "_remove_final_layer_norm", false, &cfg->remove_final_layer_norm) ||
        config_get_bool(r, "enable_bias", true, &cfg->enable_bias) ||
        config_get_bool(r, "layer_norm_elementwise_affine", true, &cfg->ln_elementwise_affine))
        return -1;

    const char *act;
    if (config_get_string(r, "activation_function", &act)) return -1;
    if (!act || strcmp(act, "relu") == 0) cfg->activation = ACT_RELU;
    else if (strcmp(act, "gelu") == 0 || strcmp(act, "gelu_new") == 0 || strcmp(act, "gelu_pytorch_tanh") == 0)
        cfg->activation = ACT_GELU_TANH;
    else
        return err_set(r->err, "%s: activation_function '%s' is not supported (relu, gelu, gelu_new, gelu_pytorch_tanh)",
                       r->path, act);
    cfg->ln_eps = 1e-5f; /* OPT's LayerNorms always use torch's default */
    return 0;
}

/* OPTConfig's defaults (the opt-125m shape). */
static void config_defaults(ModelConfig *cfg) {
    cfg->vocab_size = 50272, cfg->hidden = 768, cfg->n_layers = 12, cfg->n_heads = 12, cfg->ffn_dim = 3072;
    cfg->max_positions = 2048;
    cfg->word_embed_proj_dim = 0; /* = hidden */
    cfg->activation = ACT_RELU;
    cfg->ln_eps = 1e-5f;
    cfg->do_layer_norm_before = true, cfg->remove_final_layer_norm = false;
    cfg->enable_bias = true, cfg->ln_elementwise_affine = true;
    cfg->bos_id = 2, cfg->eos_id = 2, cfg->pad_id = 1;
}

static int write_config(const ModelConfig *c, cJSON *o) {
    bool ok = arch_write_config_head(o, "OPTForCausalLM", MODEL_TYPE, c) == 0 &&
              cJSON_AddNumberToObject(o, "num_hidden_layers", c->n_layers) &&
              cJSON_AddNumberToObject(o, "num_attention_heads", c->n_heads) &&
              cJSON_AddNumberToObject(o, "ffn_dim", c->ffn_dim) &&
              cJSON_AddNumberToObject(o, "word_embed_proj_dim", c->word_embed_proj_dim) &&
              cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_positions) &&
              cJSON_AddBoolToObject(o, "do_layer_norm_before", c->do_layer_norm_before) &&
              cJSON_AddBoolToObject(o, "_remove_final_layer_norm", c->remove_final_layer_norm) &&
              cJSON_AddStringToObject(o, "activation_function", c->activation == ACT_RELU ? "relu" : "gelu_new") &&
              cJSON_AddBoolToObject(o, "enable_bias", c->enable_bias) &&
              cJSON_AddBoolToObject(o, "layer_norm_elementwise_affine", c->ln_elementwise_affine);
    return ok ? arch_write_token_ids(o, c) : -1;
}

static void summary(const ModelConfig *c, char *buf, size_t cap) {
    snprintf(buf, cap, "%s-LayerNorm, %d positions%s", c->do_layer_norm_before ? "pre" : "post", c->max_positions,
             projected(c) ? ", project_in/out" : "");
}

/* ---- forward ------------------------------------------------------------------------ */

static int load(Model *m, const Checkpoint *ck, Error *err) { return model_load_tensors(m, ck, err); }

static void embed(Model *m, const int32_t *ids, int T) {
    ModelWeights *w = m->w;
    RunState *s = m->rs;
    Backend *bk = m->bk;
    /* x = embed_tokens[ids]; x = project_in(x) */
    if (w->project_in.bk) {
        bk->embed(bk, w->embed, ids, T, s->embed, false);
        model_linear(m, -1, PROJ_IN_EMBED, &w->project_in, s->embed, T, s->residual);
    } else {
        bk->embed(bk, w->embed, ids, T, s->residual, false);
    }
    /* h = x + embed_positions[pos + 2], pos each row's position in its sequence */
    for (int t = 0; t < T; t++) s->pos[t] = s->row_pos[t] + POSITION_OFFSET;
    bk->embed(bk, w->positions, s->pos, T, s->residual, true);
}

static void layer(Model *m, int l, int T) {
    const Layer *L = &m->w->layers[l];
    RunState *s = m->rs;
    float *h = s->residual, *x = s->normed, *a = s->block_out;
    if (m->cfg.do_layer_norm_before) {
        /* h = h + out_proj(Attn(self_attn_layer_norm(h))) */
        model_norm(m, &L->attn_norm, h, T, x);
        model_attention(m, l, x, T, a);
        model_add(m, h, a, T);
        /* h = h + fc2(relu(fc1(final_layer_norm(h)))) */
        model_norm(m, &L->ffn_norm, h, T, x);
        model_mlp(m, l, x, T, a);
        model_add(m, h, a, T);
    } else {
        /* h = self_attn_layer_norm(h + out_proj(Attn(h))) */
        model_attention(m, l, h, T, a);
        model_add(m, h, a, T);
        model_norm(m, &L->attn_norm, h, T, h);
        /* h = final_layer_norm(h + fc2(relu(fc1(h)))) */
        model_mlp(m, l, h, T, a);
        model_add(m, h, a, T);
        model_norm(m, &L->ffn_norm, h, T, h);
    }
}

static const float *finish(Model *m, int T) {
    ModelWeights *w = m->w;
    RunState *s = m->rs;
    const float *h = s->residual;
    /* h = decoder.final_layer_norm(h) */
    if (has_final_norm(&m->cfg)) {
        model_norm(m, &w->final_norm, h, T, s->normed);
        h = s->normed;
    }
    /* h = project_out(h) */
    if (w->project_out.bk) {
        model_linear(m, m->cfg.n_layers, PROJ_OUT_EMBED, &w->project_out, h, T, s->embed);
        h = s->embed;
    }
    return h;
}

const Architecture arch_opt = {
    .model_type = MODEL_TYPE,
    .prefix = "model.",
    .dim_labels = {
        [DIM_VOCAB] = "vocab_size", [DIM_HIDDEN] = "hidden_size", [DIM_FFN] = "ffn_dim",
        [DIM_QKV] = "3*hidden_size", [DIM_EMBED] = "word_embed_proj_dim",
        [DIM_POSITIONS] = "max_position_embeddings+2",
    },
    .position_offset = POSITION_OFFSET,
    .trained_context = 0,
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
