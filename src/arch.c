/* arch.c — the registry of architectures, and what callers compute from a table:
 * dimensions, the expanded tensor list, the context rules. */
#include "arch.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the registry -----------------------------------------------------------------
 * One line per architecture (its table is defined in arch_NAME.c). The order gives the
 * Arch values: opt first, bloom second. */
#define ARCHITECTURES(X) \
    X(arch_opt)          \
    X(arch_bloom)

#define DECLARE(table) extern const Architecture table;
ARCHITECTURES(DECLARE)
#define ENTRY(table) &table,
static const Architecture *const REGISTRY[] = {ARCHITECTURES(ENTRY)};
#define N_ARCH (sizeof REGISTRY / sizeof REGISTRY[0])

const Architecture *arch_find(const char *model_type) {
    for (size_t i = 0; i < N_ARCH; i++)
        if (strcmp(REGISTRY[i]->model_type, model_type) == 0) return REGISTRY[i];
    return NULL;
}

const Architecture *arch_of(const ModelConfig *cfg) {
    return (size_t)cfg->arch < N_ARCH ? REGISTRY[cfg->arch] : REGISTRY[0];
}

Arch arch_id(const Architecture *a) {
    for (size_t i = 0; i < N_ARCH; i++)
        if (REGISTRY[i] == a) return (Arch)i;
    return (Arch)0;
}

const char *arch_name(Arch a) { return (size_t)a < N_ARCH ? REGISTRY[a]->model_type : "unknown"; }

const char *arch_supported(void) {
    static char list[256];
    if (!list[0])
        for (size_t i = 0; i < N_ARCH; i++) {
            size_t len = strlen(list);
            snprintf(list + len, sizeof list - len, "%s\"%s\"", i ? ", " : "", REGISTRY[i]->model_type);
        }
    return list;
}

/* ---- dimensions and the tensor list ----------------------------------------------- */

int64_t arch_dim(const ModelConfig *c, ArchDim d) {
    switch (d) {
    case DIM_VOCAB: return c->vocab_size;
    case DIM_HIDDEN: return c->hidden;
    case DIM_FFN: return c->ffn_dim;
    case DIM_QKV: return 3 * (int64_t)c->hidden;
    case DIM_EMBED: return c->word_embed_proj_dim;
    case DIM_POSITIONS: return (int64_t)c->max_positions + arch_of(c)->position_offset;
    case DIM_NONE:
    case DIM_COUNT: break;
    }
    return 0;
}

static bool listed(const ModelConfig *c, const TensorTemplate *t) {
    if (t->role == TENSOR_NORM && !c->ln_elementwise_affine) return false;
    return !t->present || t->present(c);
}

static void expand(const ModelConfig *c, const TensorTemplate *t, int layer, ArchTensor *out) {
    memset(out, 0, sizeof *out);
    const char *at = t->per_layer ? strstr(t->name, "%d") : NULL; /* where the layer index goes */
    if (at) snprintf(out->name, sizeof out->name, "%.*s%d%s", (int)(at - t->name), t->name, layer, at + 2);
    else snprintf(out->name, sizeof out->name, "%s", t->name);
    out->role = t->role;
    out->layer = t->per_layer ? layer : -1;
    out->rows = arch_dim(c, t->rows);
    out->cols = arch_dim(c, t->cols);
    out->bias = t->role == TENSOR_PROJECTION && t->bias && c->enable_bias;
    out->optional = t->role == TENSOR_LM_HEAD;
    out->field = t->field;
}

int arch_tensors(const ModelConfig *c, ArchTensor **out, size_t *n, Error *err) {
    const Architecture *a = arch_of(c);
    size_t per_layer = 0, cap = 0;
    for (size_t i = 0; i < a->n_tensors; i++) per_layer += a->tensors[i].per_layer;
    cap = a->n_tensors - per_layer + per_layer * (size_t)c->n_layers;
    ArchTensor *list = calloc(cap ? cap : 1, sizeof *list);
    if (!list) return err_set(err, "out of memory listing the tensors of %d layers", c->n_layers);
    size_t k = 0;
    for (size_t i = 0; i < a->n_tensors;) {
        if (!a->tensors[i].per_layer) {
            if (listed(c, &a->tensors[i])) expand(c, &a->tensors[i], -1, &list[k++]);
            i++;
            continue;
        }
        /* A block of per-layer entries: all of layer 0, then all of layer 1, ... */
        size_t end = i;
        while (end < a->n_tensors && a->tensors[end].per_layer) end++;
        for (int l = 0; l < c->n_layers; l++)
            for (size_t j = i; j < end; j++)
                if (listed(c, &a->tensors[j])) expand(c, &a->tensors[j], l, &list[k++]);
        i = end;
    }
    *out = list;
    *n = k;
    return 0;
}

/* ---- context and synthetic configs ------------------------------------------------ */

int arch_native_context(const ModelConfig *c) {
    return c->max_positions > 0 ? c->max_positions : arch_of(c)->trained_context;
}

int arch_max_context(const ModelConfig *c) { return c->max_positions; }

void arch_config_defaults(const Architecture *a, ModelConfig *c) {
    memset(c, 0, sizeof *c);
    c->arch = arch_id(a);
    c->bos_id = c->eos_id = c->pad_id = -1;
    c->int8_threshold = 6.0f;
    a->config_defaults(c);
}

void arch_config_finish(ModelConfig *c) {
    if (c->word_embed_proj_dim <= 0) c->word_embed_proj_dim = c->hidden;
    if (c->ffn_dim <= 0) c->ffn_dim = 4 * c->hidden;
    c->head_dim = c->n_heads > 0 ? c->hidden / c->n_heads : 0;
}

/* ---- config.json fields every family writes --------------------------------------- */

int arch_write_config_head(cJSON *o, const char *class_name, const char *model_type, const ModelConfig *c) {
    cJSON *classes = cJSON_CreateStringArray((const char *const[]){class_name}, 1);
    if (!classes || !cJSON_AddItemToObject(o, "architectures", classes)) {
        cJSON_Delete(classes);
        return -1;
    }
    bool ok = cJSON_AddStringToObject(o, "model_type", model_type) &&
              cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size) &&
              cJSON_AddNumberToObject(o, "hidden_size", c->hidden);
    return ok ? 0 : -1;
}

int arch_write_token_ids(cJSON *o, const ModelConfig *c) {
    const struct {
        const char *key;
        int id;
    } ids[] = {{"bos_token_id", c->bos_id}, {"eos_token_id", c->eos_id}, {"pad_token_id", c->pad_id}};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (ids[i].id >= 0 && !cJSON_AddNumberToObject(o, ids[i].key, ids[i].id)) return -1;
    return 0;
}
