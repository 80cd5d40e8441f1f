/* server_openai.c — OpenAI completions request parsing and response building (server_openai.h). */
#include "server_openai.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "json_in.h"
#include "json_out.h"
#include "utf8.h"

int api_error(ApiError *e, int status, const char *type, const char *param, const char *fmt, ...) {
    e->status = status;
    e->type = type;
    e->param = param;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- building ------------------------------------------------------------------------ */


/* Builder state: every add checks, a failure is remembered once. */
typedef struct B { bool failed; } B;

static cJSON *add(B *b, cJSON *parent, const char *name, cJSON *item) {
    bool ok = parent && item && (name ? cJSON_AddItemToObject(parent, name, item) : cJSON_AddItemToArray(parent, item));
    if (!ok) {
        cJSON_Delete(item);
        b->failed = true;
        return NULL;
    }
    return item;
}
static cJSON *num_or_null(double v) { return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull(); }

static char *finish(B *b, cJSON *root) {
    char *s = b->failed ? NULL : cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

char *openai_error_json(const ApiError *e) {
    B b = {0};
    cJSON *root = cJSON_CreateObject();
    cJSON *err = add(&b, root, "error", cJSON_CreateObject());
    add(&b, err, "message", json_bytes_string(e->message, strlen(e->message)));
    add(&b, err, "type", cJSON_CreateString(e->type ? e->type : "invalid_request_error"));
    add(&b, err, "param", e->param ? cJSON_CreateString(e->param) : cJSON_CreateNull());
    add(&b, err, "code", cJSON_CreateNull());
    if (!root) b.failed = true;
    return finish(&b, root);
}

static cJSON *token_string(const Tokenizer *tok, int32_t id) {
    size_t n = 0;
    const uint8_t *p = tokenizer_token_bytes(tok, id, &n);
    return json_bytes_string(p ? (const char *)p : "", p ? n : 0);
}

/* OpenAI's legacy logprobs object: tokens, token_logprobs, top_logprobs, text_offset. */
static void add_logprobs(B *b, cJSON *choice, const ResponseMeta *m, const TokenLog *logs, int n) {
    if (!m->logprobs) {
        add(b, choice, "logprobs", cJSON_CreateNull());
        return;
    }
    cJSON *lp = add(b, choice, "logprobs", cJSON_CreateObject());
    cJSON *tokens = add(b, lp, "tokens", cJSON_CreateArray());
    cJSON *tlp = add(b, lp, "token_logprobs", cJSON_CreateArray());
    cJSON *top = add(b, lp, "top_logprobs", cJSON_CreateArray());
    cJSON *off = add(b, lp, "text_offset", cJSON_CreateArray());
    for (int i = 0; i < n && !b->failed; i++) {
        const TokenLog *t = &logs[i];
        add(b, tokens, NULL, token_string(m->tok, t->id));
        add(b, tlp, NULL, num_or_null(t->logprob));
        if (!isfinite(t->logprob) && t->n_top == 0) {
            add(b, top, NULL, cJSON_CreateNull());
        } else {
            cJSON *d = add(b, top, NULL, cJSON_CreateObject());
            for (int k = 0; k < t->n_top && !b->failed; k++) {
                size_t len = 0;
                const uint8_t *p = tokenizer_token_bytes(m->tok, t->top_ids[k], &len);
                cJSON *key = json_bytes_string(p ? (const char *)p : "", p ? len : 0);
                if (!key) {
                    b->failed = true;
                    break;
                }
                add(b, d, cJSON_GetStringValue(key), num_or_null(t->top_logprobs[k]));
                cJSON_Delete(key);
            }
        }
        add(b, off, NULL, cJSON_CreateNumber((double)t->text_offset));
    }
}

static cJSON *begin_response(B *b, const ResponseMeta *m) {
    cJSON *root = cJSON_CreateObject();
    if (!root) b->failed = true;
    add(b, root, "id", cJSON_CreateString(m->id));
    add(b, root, "object", cJSON_CreateString("text_completion"));
    add(b, root, "created", cJSON_CreateNumber((double)m->created));
    add(b, root, "model", json_bytes_string(m->model, strlen(m->model)));
    return root;
}

static void add_usage(B *b, cJSON *root, int prompt, int completion) {
    cJSON *u = add(b, root, "usage", cJSON_CreateObject());
    add(b, u, "prompt_tokens", cJSON_CreateNumber(prompt));
    add(b, u, "completion_tokens", cJSON_CreateNumber(completion));
    add(b, u, "total_tokens", cJSON_CreateNumber((double)prompt + completion));
}

char *openai_completion_json(const ResponseMeta *m, const Choice *choices, int n) {
    B b = {0};
    cJSON *root = begin_response(&b, m);
    cJSON *arr = add(&b, root, "choices", cJSON_CreateArray());
    int prompt = 0, completion = 0;
    for (int i = 0; i < n; i++) {
        const Choice *c = &choices[i];
        cJSON *o = add(&b, arr, NULL, cJSON_CreateObject());
        add(&b, o, "text", json_bytes_string(c->text ? c->text : "", c->len));
        add(&b, o, "index", cJSON_CreateNumber(i));
        add_logprobs(&b, o, m, c->logs, c->n_logs);
        add(&b, o, "finish_reason", c->finish_reason ? cJSON_CreateString(c->finish_reason) : cJSON_CreateNull());
        prompt += c->prompt_tokens;
        completion += c->completion_tokens;
    }
    add_usage(&b, root, prompt, completion);
    return finish(&b, root);
}

char *openai_chunk_json(const ResponseMeta *m, int index, const char *text, size_t len, const TokenLog *logs,
                        int n_logs, const char *finish_reason) {
    B b = {0};
    cJSON *root = begin_response(&b, m);
    cJSON *arr = add(&b, root, "choices", cJSON_CreateArray());
    cJSON *o = add(&b, arr, NULL, cJSON_CreateObject());
    add(&b, o, "text", json_bytes_string(text ? text : "", len));
    add(&b, o, "index", cJSON_CreateNumber(index));
    add_logprobs(&b, o, m, logs, n_logs);
    add(&b, o, "finish_reason", finish_reason ? cJSON_CreateString(finish_reason) : cJSON_CreateNull());
    return finish(&b, root);
}

char *openai_usage_chunk_json(const ResponseMeta *m, int prompt_tokens, int completion_tokens) {
    B b = {0};
    cJSON *root = begin_response(&b, m);
    add(&b, root, "choices", cJSON_CreateArray());
    add_usage(&b, root, prompt_tokens, completion_tokens);
    return finish(&b, root);
}

char *openai_models_json(const char *model, long created, int max_model_len) {
    B b = {0};
    cJSON *root = cJSON_CreateObject();
    if (!root) b.failed = true;
    add(&b, root, "object", cJSON_CreateString("list"));
    cJSON *data = add(&b, root, "data", cJSON_CreateArray());
    cJSON *o = add(&b, data, NULL, cJSON_CreateObject());
    add(&b, o, "id", json_bytes_string(model, strlen(model)));
    add(&b, o, "object", cJSON_CreateString("model"));
    add(&b, o, "created", cJSON_CreateNumber((double)created));
    add(&b, o, "owned_by", cJSON_CreateString("llmint8"));
    add(&b, o, "max_model_len", cJSON_CreateNumber(max_model_len));
    return finish(&b, root);
}

int choice_add_token(Choice *c, const EngineToken *t, bool want_logs, int max_top) {
    if (t->text_len) {
        if (c->len + t->text_len + 1 > c->cap) {
            size_t cap = c->cap ? c->cap : 256;
            while (cap < c->len + t->text_len + 1) cap *= 2;
            char *p = realloc(c->text, cap);
            if (!p) return -1;
            c->text = p;
            c->cap = cap;
        }
        memcpy(c->text + c->len, t->text, t->text_len);
        c->len += t->text_len;
        c->text[c->len] = 0;
    }
    if (want_logs) {
        if (c->n_logs == c->cap_logs) {
            int cap = c->cap_logs ? 2 * c->cap_logs : 16;
            TokenLog *p = realloc(c->logs, (size_t)cap * sizeof *p);
            if (!p) return -1;
            c->logs = p;
            c->cap_logs = cap;
        }
        TokenLog *l = &c->logs[c->n_logs++];
        l->id = t->id;
        l->logprob = t->logprob;
        l->text_offset = t->text_offset;
        l->n_top = t->n_top < max_top ? t->n_top : max_top;
        if (l->n_top > OPENAI_MAX_LOGPROBS) l->n_top = OPENAI_MAX_LOGPROBS;
        for (int k = 0; k < l->n_top; k++) {
            l->top_ids[k] = t->top_ids[k];
            l->top_logprobs[k] = t->top_logprobs[k];
        }
    }
    return 0;
}

void choice_free(Choice *c) {
    free(c->text);
    free(c->logs);
    memset(c, 0, sizeof *c);
}

/* ---- parsing ------------------------------------------------------------------------- */

/* The body as a JSON object, or -1 with a 400. */
static cJSON *parse_object(const char *body, size_t len, ApiError *e) {
    for (size_t i = 0; i < len;) {   /* JSON text is UTF-8 (RFC 8259) */
        size_t k = utf8_valid_length((const unsigned char *)body + i, len - i);
        if (k == 0) {
            api_error(e, 400, "invalid_request_error", NULL, "the request body is not valid UTF-8 (byte %zu)", i);
            return NULL;
        }
        i += k;
    }
    Error err;
    cJSON *root = json_parse("request body", body, len, &err);
    if (!root) {
        api_error(e, 400, "invalid_request_error", NULL, "%s", err.msg);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        api_error(e, 400, "invalid_request_error", NULL, "the request body must be a JSON object");
        return NULL;
    }
    return root;
}

/* A present, non-null field (NULL when absent or null, which mean "the default"). */
static const cJSON *field(const cJSON *o, const char *name) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, name);
    return (f && !cJSON_IsNull(f)) ? f : NULL;
}

static int get_int(const cJSON *o, const char *name, long lo, long hi, long *out, ApiError *e) {
    const cJSON *f = field(o, name);
    if (!f) return 0;
    double v = f->valuedouble;
    if (!cJSON_IsNumber(f) || !isfinite(v) || v != floor(v))
        return api_error(e, 400, "invalid_request_error", name, "'%s' must be an integer", name);
    if (v < (double)lo || v > (double)hi)
        return api_error(e, 400, "invalid_request_error", name, "'%s' must be from %ld to %ld", name, lo, hi);
    *out = (long)v;
    return 0;
}

static int get_float(const cJSON *o, const char *name, double lo, double hi, bool lo_open, double *out, ApiError *e) {
    const cJSON *f = field(o, name);
    if (!f) return 0;
    double v = f->valuedouble;
    if (!cJSON_IsNumber(f) || !isfinite(v)) return api_error(e, 400, "invalid_request_error", name, "'%s' must be a number", name);
    if (v < lo || v > hi || (lo_open && v == lo))
        return api_error(e, 400, "invalid_request_error", name, "'%s' must be in %c%g, %g]", name, lo_open ? '(' : '[', lo, hi);
    *out = v;
    return 0;
}

static int get_bool(const cJSON *o, const char *name, bool *out, ApiError *e) {
    const cJSON *f = field(o, name);
    if (!f) return 0;
    if (!cJSON_IsBool(f)) return api_error(e, 400, "invalid_request_error", name, "'%s' must be true or false", name);
    *out = cJSON_IsTrue(f);
    return 0;
}

static bool is_id_list(const cJSON *a) {
    if (!cJSON_IsArray(a) || !a->child) return false;
    for (const cJSON *x = a->child; x; x = x->next)
        if (!cJSON_IsNumber(x)) return false;
    return true;
}

/* One prompt: a string (tokenized with BOS) or a list of ids (used as given). */
static int add_prompt(CompletionParams *p, const cJSON *x, const Tokenizer *tok, int vocab, ApiError *e) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (cJSON_IsString(x)) {
        Error err;
        const char *s = x->valuestring;
        if (tokenizer_encode(tok, s, strlen(s), true, &ids, &n, &err))
            return api_error(e, 400, "invalid_request_error", "prompt", "%s", err.msg);
    } else if (is_id_list(x)) {
        n = (size_t)cJSON_GetArraySize(x);
        if (!(ids = malloc(n * sizeof *ids))) return api_error(e, 503, "server_error", NULL, "out of memory");
        size_t i = 0;
        for (const cJSON *v = x->child; v; v = v->next, i++) {
            double d = v->valuedouble;
            if (!isfinite(d) || d != floor(d) || d < 0 || d >= vocab) {
                free(ids);
                return api_error(e, 400, "invalid_request_error", "prompt",
                                 "token id at position %zu is not an integer from 0 to %d", i, vocab - 1);
            }
            ids[i] = (int32_t)d;
        }
    } else {
        return api_error(e, 400, "invalid_request_error", "prompt",
                         "'prompt' must be a string, a list of strings, a list of token ids or a list of such lists");
    }
    if (n == 0 || n > INT32_MAX / 2) {
        free(ids);
        return api_error(e, 400, "invalid_request_error", "prompt", "a prompt is empty (and this model has no BOS token)");
    }
    p->prompts[p->n_prompts] = ids;
    p->n_prompt[p->n_prompts++] = (int)n;
    return 0;
}

static int parse_prompts(CompletionParams *p, const cJSON *root, const Tokenizer *tok, int vocab, ApiError *e) {
    const cJSON *pr = field(root, "prompt");
    if (!pr) return api_error(e, 400, "invalid_request_error", "prompt", "'prompt' is required");
    int count = 1;
    bool many = cJSON_IsArray(pr) && !is_id_list(pr);   /* a list of strings or of id lists */
    if (many) {
        count = cJSON_GetArraySize(pr);
        if (count == 0) return api_error(e, 400, "invalid_request_error", "prompt", "'prompt' is an empty list");
        if (count > OPENAI_MAX_PROMPTS)
            return api_error(e, 400, "invalid_request_error", "prompt", "at most %d prompts per request", OPENAI_MAX_PROMPTS);
    }
    p->prompts = calloc((size_t)count, sizeof *p->prompts);
    p->n_prompt = calloc((size_t)count, sizeof *p->n_prompt);
    if (!p->prompts || !p->n_prompt) return api_error(e, 503, "server_error", NULL, "out of memory");
    if (!many) return add_prompt(p, pr, tok, vocab, e);
    for (const cJSON *x = pr->child; x; x = x->next)
        if (add_prompt(p, x, tok, vocab, e)) return -1;
    return 0;
}

static int parse_stop(CompletionParams *p, const cJSON *root, ApiError *e) {
    const cJSON *st = field(root, "stop");
    if (!st) return 0;
    int count = cJSON_IsString(st) ? 1 : cJSON_IsArray(st) ? cJSON_GetArraySize(st) : -1;
    if (count < 0) return api_error(e, 400, "invalid_request_error", "stop", "'stop' must be a string or a list of strings");
    if (count > OPENAI_MAX_STOP)
        return api_error(e, 400, "invalid_request_error", "stop", "at most %d stop strings", OPENAI_MAX_STOP);
    if (!(p->stop = calloc((size_t)count + 1, sizeof *p->stop))) return api_error(e, 503, "server_error", NULL, "out of memory");
    const cJSON *x = cJSON_IsString(st) ? st : st->child;
    for (; x && p->n_stop < count; x = x->next) {
        if (!cJSON_IsString(x)) return api_error(e, 400, "invalid_request_error", "stop", "'stop' must hold strings");
        if (!x->valuestring[0]) continue;   /* an empty stop string stops nothing */
        if (!(p->stop[p->n_stop] = strdup(x->valuestring))) return api_error(e, 503, "server_error", NULL, "out of memory");
        p->n_stop++;
    }
    return 0;
}

int openai_parse_completion(const char *body, size_t len, const Tokenizer *tok, int vocab, uint64_t default_seed,
                            CompletionParams *p, ApiError *e) {
    memset(p, 0, sizeof *p);
    p->max_tokens = 16;
    p->sampling = (SamplerConfig){.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .repetition_penalty = 1.0f,
                                  .seed = default_seed};
    cJSON *root = parse_object(body, len, e);
    if (!root) return -1;
    long l;
    double d;
    int rc = -1;
    if (parse_prompts(p, root, tok, vocab, e)) goto out;
    l = p->max_tokens;
    if (get_int(root, "max_tokens", 0, 1L << 24, &l, e)) goto out;
    p->max_tokens = (int)l;
    d = p->sampling.temperature;
    if (get_float(root, "temperature", 0, 100, false, &d, e)) goto out;
    p->sampling.temperature = (float)d;
    p->sampling.greedy = d == 0;
    d = p->sampling.top_p;
    if (get_float(root, "top_p", 0, 1, true, &d, e)) goto out;
    p->sampling.top_p = (float)d;
    d = p->sampling.repetition_penalty;
    if (get_float(root, "repetition_penalty", 0, 100, true, &d, e)) goto out;
    p->sampling.repetition_penalty = (float)d;
    l = 0;
    if (get_int(root, "top_k", 0, 1L << 30, &l, e)) goto out;
    p->sampling.top_k = (int)l;
    const cJSON *seed = field(root, "seed");
    if (seed) {
        double v = seed->valuedouble;
        /* doubles hold integers exactly up to 2^53; beyond that a seed would not be what was sent */
        if (!cJSON_IsNumber(seed) || !isfinite(v) || v != floor(v) || fabs(v) > 9007199254740992.0) {
            api_error(e, 400, "invalid_request_error", "seed", "'seed' must be an integer of at most 2^53 in size");
            goto out;
        }
        p->sampling.seed = v < 0 ? (uint64_t)(int64_t)v : (uint64_t)v;
    }
    l = 1;
    if (get_int(root, "n", 1, 1, &l, e)) goto out;
    l = 1;
    if (get_int(root, "best_of", 1, 1, &l, e)) goto out;
    const cJSON *lp = field(root, "logprobs");
    if (lp) {
        if (cJSON_IsBool(lp)) {   /* the chat API's boolean form */
            p->logprobs_given = cJSON_IsTrue(lp);
        } else {
            l = 0;
            if (get_int(root, "logprobs", 0, OPENAI_MAX_LOGPROBS, &l, e)) goto out;
            p->logprobs = (int)l;
            p->logprobs_given = true;
        }
    }
    if (get_bool(root, "stream", &p->stream, e) || get_bool(root, "echo", &p->echo, e) ||
        get_bool(root, "ignore_eos", &p->ignore_eos, e))
        goto out;
    const cJSON *so = field(root, "stream_options");
    if (so) {
        if (!cJSON_IsObject(so)) {
            api_error(e, 400, "invalid_request_error", "stream_options", "'stream_options' must be an object");
            goto out;
        }
        if (get_bool(so, "include_usage", &p->include_usage, e)) goto out;
    }
    if (parse_stop(p, root, e)) goto out;
    if (p->max_tokens == 0 && !p->echo) {
        /* nothing to return; OpenAI answers with empty texts, and so do we */
    }
    rc = 0;
out:
    cJSON_Delete(root);
    if (rc) openai_completion_free(p);
    return rc;
}

void openai_completion_free(CompletionParams *p) {
    for (int i = 0; p->prompts && i < p->n_prompts; i++) free(p->prompts[i]);
    free(p->prompts);
    free(p->n_prompt);
    for (int i = 0; p->stop && i < p->n_stop; i++) free(p->stop[i]);
    free(p->stop);
    memset(p, 0, sizeof *p);
}

char *openai_tokenize(const char *body, size_t len, const Tokenizer *tok, int max_model_len, ApiError *e) {
    cJSON *root = parse_object(body, len, e);
    if (!root) return NULL;
    char *out = NULL;
    const cJSON *text = field(root, "prompt");
    if (!text) text = field(root, "text");
    bool special = true;
    if (!cJSON_IsString(text)) {
        api_error(e, 400, "invalid_request_error", "prompt", "'prompt' must be a string");
    } else if (!get_bool(root, "add_special_tokens", &special, e)) {
        Error err;
        int32_t *ids = NULL;
        size_t n = 0;
        if (tokenizer_encode(tok, text->valuestring, strlen(text->valuestring), special, &ids, &n, &err)) {
            api_error(e, 400, "invalid_request_error", "prompt", "%s", err.msg);
        } else {
            B b = {0};
            cJSON *o = cJSON_CreateObject();
            if (!o) b.failed = true;
            cJSON *arr = add(&b, o, "tokens", cJSON_CreateArray());
            for (size_t i = 0; i < n && !b.failed; i++) add(&b, arr, NULL, cJSON_CreateNumber(ids[i]));
            add(&b, o, "count", cJSON_CreateNumber((double)n));
            add(&b, o, "max_model_len", cJSON_CreateNumber(max_model_len));
            out = finish(&b, o);
            if (!out) api_error(e, 503, "server_error", NULL, "out of memory");
            free(ids);
        }
    }
    cJSON_Delete(root);
    return out;
}

char *openai_detokenize(const char *body, size_t len, const Tokenizer *tok, int vocab, ApiError *e) {
    cJSON *root = parse_object(body, len, e);
    if (!root) return NULL;
    char *out = NULL;
    const cJSON *arr = field(root, "tokens");
    if (!cJSON_IsArray(arr) || (arr->child && !is_id_list(arr))) {
        api_error(e, 400, "invalid_request_error", "tokens", "'tokens' must be a list of token ids");
        goto done;
    }
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) {
        api_error(e, 503, "server_error", NULL, "out of memory");
        goto done;
    }
    for (const cJSON *v = arr->child; v; v = v->next, i++) {
        double d = v->valuedouble;
        if (!isfinite(d) || d != floor(d) || d < 0 || d >= vocab) {
            api_error(e, 400, "invalid_request_error", "tokens", "token id at position %zu is not an integer from 0 to %d",
                      i, vocab - 1);
            free(ids);
            goto done;
        }
        ids[i] = (int32_t)d;
    }
    char *text = tokenizer_decode(tok, ids, n);
    free(ids);
    if (!text) {
        api_error(e, 503, "server_error", NULL, "out of memory");
        goto done;
    }
    B b = {0};
    cJSON *o = cJSON_CreateObject();
    if (!o) b.failed = true;
    add(&b, o, "prompt", json_bytes_string(text, strlen(text)));
    free(text);
    out = finish(&b, o);
    if (!out) api_error(e, 503, "server_error", NULL, "out of memory");
done:
    cJSON_Delete(root);
    return out;
}
