/* config.c — config.json → ModelConfig: the readers every architecture's parse_config
 * uses, the fields all families share, and quantization_config (docs/MODELS.md).
 *
 * The dimensions are required and range-checked by the readers so that every later size
 * computation (vocab * hidden, layers * ctx * hidden, ...) fits comfortably in 64 bits;
 * booleans and the rest fall back to the defaults of the transformers config classes
 * when absent. */
#include "config.h"

#include "arch.h"

#include "fileio.h"
#include "json_in.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* config.json files are a few KB; anything much larger is not a config. */
#define CONFIG_MAX_BYTES (16u * 1000u * 1000u)

/* ---- field readers ----------------------------------------------------------------
 * Each takes the list of accepted spellings of a field (aliases), uses the first one
 * present and non-null, and reports errors naming that spelling and the file. */

typedef ConfigReader Ctx;

/* The first alias present with a non-null value (its name in *which), or NULL. If two
 * aliases are both present with different values, that is an error (*conflict set). */
static const cJSON *find_field(const Ctx *c, const char *const *names, const char **which, bool *conflict) {
    const cJSON *found = NULL;
    *conflict = false;
    for (int i = 0; names[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, names[i]);
        if (!v || cJSON_IsNull(v)) continue;
        if (!found) {
            found = v;
            *which = names[i];
        } else if (!cJSON_Compare(found, v, 1)) {
            err_set(c->err, "%s: fields '%s' and '%s' are aliases but have different values", c->path, *which,
                    names[i]);
            *conflict = true;
            return NULL;
        }
    }
    return found;
}

/* An integer field in [lo, hi]. Absent: *out = dflt if !required, else an error. */
int config_get_int(const Ctx *c, const char *const *names, bool required, long dflt, long lo, long hi, int *out) {
    const char *which = names[0];
    bool conflict;
    const cJSON *v = find_field(c, names, &which, &conflict);
    if (conflict) return -1;
    if (!v) {
        if (required) {
            if (names[1])
                return err_set(c->err, "%s: required field '%s' (or '%s') is missing", c->path, names[0], names[1]);
            return err_set(c->err, "%s: required field '%s' is missing", c->path, names[0]);
        }
        *out = (int)dflt;
        return 0;
    }
    if (!cJSON_IsNumber(v))
        return err_set(c->err, "%s: field '%s' must be a number, not %s", c->path, which,
                       cJSON_IsString(v) ? "a string" : cJSON_IsBool(v) ? "true/false" : "a list or object");
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || d < (double)lo || d > (double)hi)
        return err_set(c->err, "%s: field '%s' is %.15g, expected a whole number from %ld to %ld", c->path, which, d,
                       lo, hi);
    *out = (int)d;
    return 0;
}

int config_get_bool(const Ctx *c, const char *name, bool dflt, bool *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, name);
    if (!v || cJSON_IsNull(v)) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(v)) return err_set(c->err, "%s: field '%s' must be true or false", c->path, name);
    *out = cJSON_IsTrue(v);
    return 0;
}

int config_get_string(const Ctx *c, const char *name, const char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, name);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) return err_set(c->err, "%s: field '%s' must be a string", c->path, name);
    *out = v->valuestring;
    return 0;
}

int config_get_float(const Ctx *c, const char *name, float dflt, double lo, double hi, float *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, name);
    *out = dflt;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || !(v->valuedouble > lo && v->valuedouble < hi))
        return err_set(c->err, "%s: field '%s' must be a number between %g and %g", c->path, name, lo, hi);
    *out = (float)v->valuedouble;
    return 0;
}

/* Special-token ids: absent or null is -1. An id outside the vocabulary is ignored (-1)
 * rather than refused: fine-tuned configs sometimes carry stale ids, and nothing here
 * may index a table with one. */
static int get_token_id(const Ctx *c, const char *name, int vocab, int *out) {
    const char *names[] = {name, NULL};
    int id;
    if (config_get_int(c, names, false, -1, -((long)1 << 30), (long)1 << 30, &id)) return -1;
    *out = id >= 0 && id < vocab ? id : -1;
    return 0;
}

static int cmp_key(const void *a, const void *b) {
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* cJSON keeps both copies of a repeated key (and finds the first) while Python's json,
 * which wrote the file, would use the last: refuse the ambiguity. */
static int check_unique_keys(const cJSON *obj, const char *where, Error *err) {
    size_t n = (size_t)cJSON_GetArraySize(obj), i = 0;
    const cJSON **keys = malloc((n + 1) * sizeof *keys);
    if (!keys) return err_set(err, "%s: out of memory", where);
    const cJSON *item;
    cJSON_ArrayForEach(item, obj) keys[i++] = item;
    qsort(keys, n, sizeof *keys, cmp_key);
    int rc = 0;
    for (i = 1; i < n && rc == 0; i++)
        if (strcmp(keys[i - 1]->string, keys[i]->string) == 0)
            rc = err_set(err, "%s: field '%s' appears twice", where, keys[i]->string);
    free(keys);
    return rc;
}

int config_check_heads(const Ctx *c, const ModelConfig *cfg, const char *heads_name, const char *hidden_name) {
    if (cfg->n_heads > cfg->hidden || cfg->hidden % cfg->n_heads != 0)
        return err_set(c->err, "%s: field '%s' (%d) must divide '%s' (%d)", c->path, heads_name, cfg->n_heads,
                       hidden_name, cfg->hidden);
    return 0;
}

/* quantization_config (docs/MODELS.md): only bitsandbytes 8-bit is understood. Configs from
 * before quant_method existed carry just load_in_8bit; transformers treats those as
 * bitsandbytes too. */
static int load_quantization(const Ctx *outer, ModelConfig *cfg) {
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(outer->root, "quantization_config");
    cfg->int8_threshold = 6.0f;
    if (!q || cJSON_IsNull(q)) return 0;
    if (!cJSON_IsObject(q)) return err_set(outer->err, "%s: 'quantization_config' must be an object", outer->path);
    char where[512];
    snprintf(where, sizeof where, "%s: quantization_config", outer->path);
    Ctx c = {where, q, outer->err};
    if (check_unique_keys(q, where, c.err)) return -1;
    const char *method;
    bool b8 = false, b8_ = false, b4 = false, b4_ = false;
    if (config_get_string(&c, "quant_method", &method) || config_get_bool(&c, "load_in_8bit", false, &b8) ||
        config_get_bool(&c, "_load_in_8bit", false, &b8_) || config_get_bool(&c, "load_in_4bit", false, &b4) ||
        config_get_bool(&c, "_load_in_4bit", false, &b4_))
        return -1;
    if (method && strcmp(method, "bitsandbytes") != 0)
        return err_set(c.err, "%s: quant_method '%s' is not supported (only bitsandbytes 8-bit)", where, method);
    if (b4 || b4_) return err_set(c.err, "%s: 4-bit checkpoints are not supported (only 8-bit)", where);
    if (!(b8 || b8_)) return 0; /* e.g. a bitsandbytes block that quantizes nothing */
    cfg->load_in_8bit = true;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(q, "llm_int8_threshold");
    if (t && !cJSON_IsNull(t)) {
        if (!cJSON_IsNumber(t) || !(t->valuedouble >= 0.0 && t->valuedouble <= 65504.0))
            return err_set(c.err, "%s: 'llm_int8_threshold' must be a number from 0 to 65504", where);
        cfg->int8_threshold = (float)t->valuedouble;
    }
    return 0;
}

/* ---- entry point ------------------------------------------------------------------ */

int config_load(const char *path, ModelConfig *cfg, Error *err) {
    memset(cfg, 0, sizeof *cfg);
    char *text = NULL;
    size_t len = 0;
    if (read_small_file(path, CONFIG_MAX_BYTES, &text, &len, err)) return -1;
    cJSON *root = json_parse(path, text, len, err);   /* refuses \u0000 and trailing text */
    free(text);
    if (!root) return -1;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return err_set(err, "%s: not a JSON object", path);
    }

    Ctx c = {path, root, err};
    int rc = -1;
    if (check_unique_keys(root, path, err)) goto done;
    const char *type;
    if (config_get_string(&c, "model_type", &type)) goto done;
    if (!type) {
        err_set(err, "%s: field 'model_type' is missing (supported: %s)", path, arch_supported());
        goto done;
    }
    const Architecture *arch = arch_find(type);
    if (!arch) {
        err_set(err, "%s: model_type '%s' is not supported (supported: %s)", path, type, arch_supported());
        goto done;
    }
    cfg->arch = arch_id(arch);
    if (arch->parse_config(&c, cfg)) goto done;
    cfg->head_dim = cfg->hidden / cfg->n_heads;

    if (get_token_id(&c, "bos_token_id", cfg->vocab_size, &cfg->bos_id) ||
        get_token_id(&c, "eos_token_id", cfg->vocab_size, &cfg->eos_id) ||
        get_token_id(&c, "pad_token_id", cfg->vocab_size, &cfg->pad_id))
        goto done;
    if (load_quantization(&c, cfg)) goto done;

    const char *dt;
    if (config_get_string(&c, "torch_dtype", &dt)) goto done;
    if (!dt && config_get_string(&c, "dtype", &dt)) goto done;
    if (dt) snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "%s", dt);
    rc = 0;
done:
    cJSON_Delete(root);
    return rc;
}
