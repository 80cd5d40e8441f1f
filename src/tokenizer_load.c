/* tokenizer_load.c — tokenizer_load(): the tokenizer files of a model directory into the
 * tables of tokenizer_internal.h. Two formats (docs/TOKENIZERS.md):
 *   vocab.json + merges.txt (GPT2Tokenizer, OPT), with tokenizer_config.json and
 *     special_tokens_map.json when present for the special tokens and add_bos_token;
 *   tokenizer.json (HF `tokenizers`, BLOOM): vocabulary, merges, added tokens and the
 *     pre-tokenizer in one file.
 *
 * The files spell tokens as strings of byte-level characters; those strings are needed
 * only while loading, to turn every merge "a b" into a pair of ids and the id it makes.
 * After loading, a token is an id and its raw bytes.
 *
 * Every file must be a regular file (fileio.h), and everything read from it is checked
 * against the limits below. */
#include "tokenizer_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fileio.h"
#include "json_in.h"

/* ---- limits: everything read from files is checked against these -------------- */

#define MAX_FILE_BYTES ((size_t)1 << 30)   /* BLOOM's tokenizer.json is 14.5 MB */
#define MAX_TOKEN_ID ((1 << 24) - 1)        /* BLOOM has 250,680 ids */

/* ---- UTF-8 of the byte-level alphabet ----------------------------------------------- */

/* Code point of a valid character of len bytes. */
static uint32_t utf8_codepoint(const uint8_t *p, size_t len) {
    if (len == 1) return p[0];
    uint32_t cp = p[0] & (0x7F >> len);
    for (size_t k = 1; k < len; k++) cp = cp << 6 | (p[k] & 0x3F);
    return cp;
}

static size_t utf8_put(uint32_t cp, uint8_t out[4]) {
    if (cp < 0x80) return out[0] = (uint8_t)cp, 1;
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    out[0] = (uint8_t)(0xE0 | cp >> 12);   /* the byte-level alphabet needs no more */
    out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
    out[2] = (uint8_t)(0x80 | (cp & 0x3F));
    return 3;
}

/* ---- the byte-level alphabet (GPT-2's bytes_to_unicode; docs/TOKENIZERS.md) ------- */

/* Printable bytes stand for themselves; the other 68 bytes, in increasing order, are
 * written U+0100, U+0101, ... so that every token string is printable text. */
#define N_BYTE_CPS (256 + 68)
static void bytes_to_unicode(uint16_t byte_cp[256]) {
    uint16_t next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        byte_cp[b] = printable ? (uint16_t)b : next++;
    }
}

/* ---- the token pool ------------------------------------------------------------ */

/* Appends raw bytes to the pool; returns the offset or -1. */
static int64_t pool_add(Tokenizer *t, const void *p, size_t n) {
    return bytepool_add(&t->pool, p, n, 1 << 16);
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    free(t->tok);
    free(t->pool.bytes);
    free(t->merges.slot);
    free(t->special);
    pcre2_code_free(t->re);
    free(t);
}

/* ---- loading: files and JSON helpers --------------------------------------------- */

static int read_json(const char *path, cJSON **out, Error *err) {
    char *buf;
    size_t len;
    if (read_small_file(path, MAX_FILE_BYTES, &buf, &len, err)) return -1;
    cJSON *j = json_parse(path, buf, len, err);   /* refuses \u0000 and trailing text */
    free(buf);
    if (!j) return -1;
    *out = j;
    return 0;
}

static const cJSON *jget(const cJSON *obj, const char *key) {
    return cJSON_IsObject(obj) ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
}

/* A token named in a config: either "</s>" or {"content": "</s>", ...}. */
static const char *json_token_text(const cJSON *v) {
    if (cJSON_IsString(v)) return v->valuestring;
    const cJSON *c = jget(v, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

/* An id from JSON: an integer in [0, MAX_TOKEN_ID]. */
static bool json_id(const cJSON *v, int32_t *id) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= MAX_TOKEN_ID) || d != (double)(int32_t)d) return false;
    *id = (int32_t)d;
    return true;
}

/* ---- loading: the vocabulary as the files write it --------------------------------- */

/* What the files say, gathered before the Tokenizer's tables are built from it. */
typedef struct {
    char *content;
    int32_t id;
} Added;

enum { NAME_BOS, NAME_EOS, NAME_UNK, NAME_PAD, NAME_MASK, NAME_SEP, NAME_CLS, N_NAMES };
static const char *const name_keys[N_NAMES] = {
    "bos_token", "eos_token", "unk_token", "pad_token", "mask_token", "sep_token", "cls_token"};

typedef struct {
    Tokenizer *t;
    const char *file;    /* the file being read, for messages */
    const char *vocab_file;   /* vocab.json or tokenizer.json, for messages about ids */
    StrMap vocab;        /* token string as written in the file -> id */
    int32_t max_id;
    uint16_t byte_cp[256];         /* byte -> its character in the files */
    int16_t cp_byte[N_BYTE_CPS];   /* and back; -1 for other characters */
    Added *added;        /* added / special tokens with their ids */
    size_t n_added, cap_added;
    char *name[N_NAMES]; /* special-token names from the configs (NULL: not given) */
    char **extra;        /* additional_special_tokens */
    size_t n_extra;
    int add_bos;         /* -1: not given */
} Loader;

static void loader_free(Loader *L) {
    strmap_free(&L->vocab);
    for (size_t i = 0; i < L->n_added; i++) free(L->added[i].content);
    free(L->added);
    for (int i = 0; i < N_NAMES; i++) free(L->name[i]);
    for (size_t i = 0; i < L->n_extra; i++) free(L->extra[i]);
    free(L->extra);
}

/* Adds one vocabulary entry: string s (as written in the file) with id idv. */
static int loader_add_vocab(Loader *L, const char *s, const cJSON *idv, Error *err) {
    int32_t id;
    if (!json_id(idv, &id))
        return err_set(err, "%s: token '%.80s' has an id that is not an integer in 0..%d", L->file, s,
                       MAX_TOKEN_ID);
    int r = strmap_put(&L->vocab, s, strlen(s), id, 0);
    if (r < 0) return err_set(err, "%s: out of memory", L->file);
    if (r > 0) return err_set(err, "%s: token '%.80s' appears twice in the vocabulary", L->file, s);
    if (id > L->max_id) L->max_id = id;
    return 0;
}

static int loader_add_added(Loader *L, const char *content, int32_t id, Error *err) {
    if (!content[0]) return err_set(err, "%s: added token %d has empty content", L->file, id);
    for (size_t i = 0; i < L->n_added; i++) {
        if (strcmp(L->added[i].content, content) != 0) continue;
        if (L->added[i].id == id) return 0;
        return err_set(err, "%s: added token '%.80s' is given two ids, %d and %d", L->file, content,
                       L->added[i].id, id);
    }
    if (L->n_added == L->cap_added) {
        size_t cap = L->cap_added ? L->cap_added * 2 : 16;
        Added *a = realloc(L->added, cap * sizeof *a);
        if (!a) return err_set(err, "%s: out of memory", L->file);
        L->added = a;
        L->cap_added = cap;
    }
    char *c = strdup(content);
    if (!c) return err_set(err, "%s: out of memory", L->file);
    L->added[L->n_added++] = (Added){c, id};
    if (id > L->max_id) L->max_id = id;
    return 0;
}

/* The id of a token named in a config: an added token first, else the vocabulary. */
static int32_t loader_lookup(const Loader *L, const char *name) {
    for (size_t i = 0; i < L->n_added; i++)
        if (strcmp(L->added[i].content, name) == 0) return L->added[i].id;
    const StrSlot *s = strmap_get(&L->vocab, name, strlen(name));
    return s ? s->a : -1;
}

static int32_t vocab_id(const Loader *L, const char *s, size_t n) {
    const StrSlot *slot = strmap_get(&L->vocab, s, n);
    return slot ? slot->a : -1;
}

/* Records merge number `rank`, "a b": both sides and their concatenation must be tokens. */
static int loader_add_merge(Loader *L, const char *a, size_t na, const char *b, size_t nb,
                            uint32_t rank, char **scratch, size_t *scratch_cap, Error *err) {
    int32_t ia = vocab_id(L, a, na), ib = vocab_id(L, b, nb);
    const char *missing = ia < 0 ? a : ib < 0 ? b : NULL;
    size_t nmissing = ia < 0 ? na : nb;
    if (missing)
        return err_set(err, "%s: merge %u ('%.*s' '%.*s') uses '%.*s', which is not in the vocabulary",
                       L->file, rank, (int)(na > 80 ? 80 : na), a, (int)(nb > 80 ? 80 : nb), b,
                       (int)(nmissing > 80 ? 80 : nmissing), missing);
    if (na + nb > *scratch_cap) {
        size_t cap = (na + nb) * 2;
        char *p = realloc(*scratch, cap);
        if (!p) return err_set(err, "%s: out of memory", L->file);
        *scratch = p;
        *scratch_cap = cap;
    }
    memcpy(*scratch, a, na);
    memcpy(*scratch + na, b, nb);
    int32_t im = vocab_id(L, *scratch, na + nb);
    if (im < 0)
        return err_set(err, "%s: merge %u makes '%.*s%.*s', which is not in the vocabulary", L->file,
                       rank, (int)(na > 80 ? 80 : na), a, (int)(nb > 80 ? 80 : nb), b);
    if (pairmap_put(&L->t->merges, ia, ib, rank, im)) return err_set(err, "%s: out of memory", L->file);
    return 0;
}

/* Splits "a b" at its single space. */
static bool split_merge(const char *s, size_t n, size_t *na, const char **b, size_t *nb) {
    const char *sp = memchr(s, ' ', n);
    if (!sp || sp == s || sp == s + n - 1 || memchr(sp + 1, ' ', (size_t)(s + n - sp - 1))) return false;
    *na = (size_t)(sp - s);
    *b = sp + 1;
    *nb = n - *na - 1;
    return true;
}

static int loader_read_vocab_object(Loader *L, const cJSON *vocab, Error *err) {
    if (!cJSON_IsObject(vocab)) return err_set(err, "%s: the vocabulary is not a JSON object", L->file);
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        if (loader_add_vocab(L, e->string, e, err)) return -1;
    }
    if (L->vocab.count == 0) return err_set(err, "%s: the vocabulary is empty", L->file);
    return 0;
}

/* ---- loading: vocab.json + merges.txt (GPT2Tokenizer, OPT) ------------------------- */

static int load_merges_txt(Loader *L, const char *path, Error *err) {
    char *buf;
    size_t len;
    if (read_small_file(path, MAX_FILE_BYTES, &buf, &len, err)) return -1;
    L->file = path;
    char *scratch = NULL;
    size_t scratch_cap = 0;
    uint32_t rank = 0;
    size_t line_no = 0;
    int rc = 0;
    for (size_t pos = 0; pos < len && rc == 0;) {
        const char *line = buf + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + 1;
        line_no++;
        if (n && line[n - 1] == '\r') n--;
        if (line_no == 1 && n >= 8 && memcmp(line, "#version", 8) == 0) continue;
        if (n == 0) continue;
        size_t na, nb;
        const char *b;
        if (!split_merge(line, n, &na, &b, &nb))
            rc = err_set(err, "%s: line %zu is not of the form 'left right'", path, line_no);
        else
            rc = loader_add_merge(L, line, na, b, nb, rank++, &scratch, &scratch_cap, err);
    }
    free(scratch);
    free(buf);
    return rc;
}

/* tokenizer_config.json / special_tokens_map.json: which tokens are special, and BOS. */
static int load_config(Loader *L, const char *path, Error *err) {
    cJSON *j;
    if (read_json(path, &j, err)) return -1;
    int rc = 0;
    if (!cJSON_IsObject(j)) {
        rc = err_set(err, "%s: not a JSON object", path);
        goto done;
    }
    for (int k = 0; k < N_NAMES; k++) {
        const cJSON *v = jget(j, name_keys[k]);
        if (!v || cJSON_IsNull(v)) continue;
        const char *s = json_token_text(v);
        if (!s) {
            rc = err_set(err, "%s: %s is neither a string nor {\"content\": ...}", path, name_keys[k]);
            goto done;
        }
        free(L->name[k]);
        if (!(L->name[k] = strdup(s))) {
            rc = err_set(err, "%s: out of memory", path);
            goto done;
        }
    }
    const cJSON *add_bos = jget(j, "add_bos_token");
    if (cJSON_IsBool(add_bos)) L->add_bos = cJSON_IsTrue(add_bos);
    const cJSON *extra = jget(j, "additional_special_tokens"), *e;
    cJSON_ArrayForEach(e, (cJSON_IsArray(extra) ? extra : NULL)) {
        const char *s = json_token_text(e);
        if (!s || !s[0]) continue;
        char **x = realloc(L->extra, (L->n_extra + 1) * sizeof *x);
        if (!x || !(x[L->n_extra] = strdup(s))) {
            if (x) L->extra = x;
            rc = err_set(err, "%s: out of memory", path);
            goto done;
        }
        L->extra = x;
        L->n_extra++;
    }
    /* Newer configs list every added token by id: {"2": {"content": "</s>", ...}}. */
    const cJSON *dec = jget(j, "added_tokens_decoder");
    L->file = path;
    cJSON_ArrayForEach(e, (cJSON_IsObject(dec) ? dec : NULL)) {
        const char *s = json_token_text(e);
        char *end;
        long id = strtol(e->string, &end, 10);
        if (!s || *end || end == e->string || id < 0 || id > MAX_TOKEN_ID) {
            rc = err_set(err, "%s: added_tokens_decoder entry '%.40s' needs an id in 0..%d and a content",
                         path, e->string, MAX_TOKEN_ID);
            goto done;
        }
        if ((rc = loader_add_added(L, s, (int32_t)id, err))) goto done;
    }
done:
    cJSON_Delete(j);
    return rc;
}

static int load_gpt2_files(Loader *L, const char *vocab_path, const char *merges_path, Error *err) {
    cJSON *j;
    if (read_json(vocab_path, &j, err)) return -1;
    L->file = L->vocab_file = vocab_path;
    int rc = loader_read_vocab_object(L, j, err);
    cJSON_Delete(j);
    if (rc) return -1;
    L->t->pre = PRE_GPT2;
    return load_merges_txt(L, merges_path, err);
}

/* ---- loading: tokenizer.json (HF tokenizers) ----------------------------------------- */

/* BLOOM's Split pattern, as tokenizer.json writes it, and llama.cpp's flattened copy. */
static const char *const bloom_split_patterns[] = {
    " ?[^(\\s|[.,!?\xE2\x80\xA6\xE3\x80\x82\xEF\xBC\x8C\xE3\x80\x81\xE0\xA5\xA4\xDB\x94\xD8\x8C])]+",
    " ?[^(\\s|.,!?\xE2\x80\xA6\xE3\x80\x82\xEF\xBC\x8C\xE3\x80\x81\xE0\xA5\xA4\xDB\x94\xD8\x8C)]+",
};

static int read_bytelevel(Loader *L, const cJSON *p, bool want_regex, Error *err) {
    const cJSON *use_regex = jget(p, "use_regex");
    bool regex = use_regex ? cJSON_IsTrue(use_regex) : true;   /* the tokenizers default */
    if (regex != want_regex)
        return err_set(err, "%s: pre_tokenizer ByteLevel with use_regex=%s is not supported here", L->file,
                       regex ? "true" : "false");
    L->t->add_prefix_space = cJSON_IsTrue(jget(p, "add_prefix_space"));
    return 0;
}

static const char *json_type(const cJSON *o) {
    const cJSON *ty = jget(o, "type");
    return cJSON_IsString(ty) ? ty->valuestring : "(no type)";
}

/* Accepted: ByteLevel(use_regex=true) = GPT-2, and Sequence[Split(BLOOM), ByteLevel(use_regex=false)]. */
static int read_pre_tokenizer(Loader *L, const cJSON *p, Error *err) {
    const char *type = json_type(p);
    if (strcmp(type, "ByteLevel") == 0) {
        L->t->pre = PRE_GPT2;
        return read_bytelevel(L, p, true, err);
    }
    const cJSON *seq = jget(p, "pretokenizers");
    if (strcmp(type, "Sequence") != 0 || !cJSON_IsArray(seq))
        return err_set(err, "%s: pre_tokenizer type %s is not supported (only ByteLevel, or BLOOM's "
                            "Sequence of Split and ByteLevel)", L->file, type);
    int n = cJSON_GetArraySize(seq);
    const cJSON *first = cJSON_GetArrayItem(seq, 0), *second = cJSON_GetArrayItem(seq, 1);
    if (n == 1 && strcmp(json_type(first), "ByteLevel") == 0) {
        L->t->pre = PRE_GPT2;
        return read_bytelevel(L, first, true, err);
    }
    if (n != 2 || strcmp(json_type(first), "Split") != 0 || strcmp(json_type(second), "ByteLevel") != 0)
        return err_set(err, "%s: pre_tokenizer Sequence of %d steps is not supported (only BLOOM's "
                            "[Split, ByteLevel])", L->file, n);
    const cJSON *regex = jget(jget(first, "pattern"), "Regex");
    const cJSON *behavior = jget(first, "behavior");
    bool known = false;
    for (size_t i = 0; i < sizeof bloom_split_patterns / sizeof *bloom_split_patterns; i++)
        known |= cJSON_IsString(regex) && strcmp(regex->valuestring, bloom_split_patterns[i]) == 0;
    if (!known)
        return err_set(err, "%s: pre_tokenizer Split pattern %.100s is not supported (only BLOOM's)", L->file,
                       cJSON_IsString(regex) ? regex->valuestring : "(not a Regex)");
    if (!cJSON_IsString(behavior) || strcmp(behavior->valuestring, "Isolated") != 0 ||
        cJSON_IsTrue(jget(first, "invert")))
        return err_set(err, "%s: pre_tokenizer Split must have behavior Isolated and invert false", L->file);
    L->t->pre = PRE_BLOOM;
    return read_bytelevel(L, second, false, err);
}

static int read_bpe_model(Loader *L, const cJSON *model, Error *err) {
    const char *type = json_type(model);
    if (!cJSON_IsObject(model)) return err_set(err, "%s: model is missing or not an object", L->file);
    if (jget(model, "type") && strcmp(type, "BPE") != 0)
        return err_set(err, "%s: model type %s is not supported (only BPE)", L->file, type);
    static const char *const off_options[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const cJSON *v = jget(model, off_options[i]);
        if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && !v->valuestring[0]))
            return err_set(err, "%s: BPE option %s is not supported", L->file, off_options[i]);
    }
    if (cJSON_IsTrue(jget(model, "byte_fallback")) || cJSON_IsTrue(jget(model, "ignore_merges")))
        return err_set(err, "%s: BPE options byte_fallback and ignore_merges are not supported", L->file);
    const cJSON *vocab = jget(model, "vocab");
    if (!vocab) return err_set(err, "%s: model.vocab is missing", L->file);
    if (loader_read_vocab_object(L, vocab, err)) return -1;
    const cJSON *unk = jget(model, "unk_token");
    if (cJSON_IsString(unk)) {   /* the model's own unk wins over the configs' */
        free(L->name[NAME_UNK]);
        if (!(L->name[NAME_UNK] = strdup(unk->valuestring))) return err_set(err, "%s: out of memory", L->file);
    }

    const cJSON *merges = jget(model, "merges"), *m;
    if (!cJSON_IsArray(merges)) return err_set(err, "%s: model.merges is missing or not a list", L->file);
    char *scratch = NULL;
    size_t scratch_cap = 0;
    uint32_t rank = 0;
    int rc = 0;
    cJSON_ArrayForEach(m, merges) {
        /* "a b" (older files) or ["a", "b"] (newer). */
        const char *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        if (cJSON_IsString(m)) {
            if (split_merge(m->valuestring, strlen(m->valuestring), &na, &b, &nb)) a = m->valuestring;
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
                   cJSON_IsString(m->child->next)) {
            a = m->child->valuestring, na = strlen(a);
            b = m->child->next->valuestring, nb = strlen(b);
        }
        if (!a) {
            rc = err_set(err, "%s: model.merges[%u] is neither \"left right\" nor [\"left\", \"right\"]",
                         L->file, rank);
            break;
        }
        if ((rc = loader_add_merge(L, a, na, b, nb, rank++, &scratch, &scratch_cap, err))) break;
    }
    free(scratch);
    return rc;
}

static int load_tokenizer_json(Loader *L, const char *path, Error *err) {
    cJSON *j;
    if (read_json(path, &j, err)) return -1;
    L->file = L->vocab_file = path;
    int rc = -1;
    const cJSON *norm = jget(j, "normalizer"), *added = jget(j, "added_tokens"), *a;
    if (!cJSON_IsObject(j)) {
        err_set(err, "%s: not a JSON object", path);
    } else if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added)) {
        err_set(err, "%s: added_tokens is not a list", path);
    } else if (norm && !cJSON_IsNull(norm)) {
        err_set(err, "%s: normalizer %s is not supported (BLOOM has none)", path, json_type(norm));
    } else if (read_pre_tokenizer(L, jget(j, "pre_tokenizer"), err) == 0 &&
               read_bpe_model(L, jget(j, "model"), err) == 0) {
        rc = 0;
        cJSON_ArrayForEach(a, (cJSON_IsArray(added) ? added : NULL)) {
            const cJSON *content = jget(a, "content");
            int32_t id;
            if (!cJSON_IsString(content) || !json_id(jget(a, "id"), &id)) {
                rc = err_set(err, "%s: an added_tokens entry lacks a string content or an id in 0..%d",
                             path, MAX_TOKEN_ID);
                break;
            }
            if ((rc = loader_add_added(L, content->valuestring, id, err))) break;
        }
    }
    cJSON_Delete(j);
    return rc;
}

/* ---- loading: building the tables --------------------------------------------------- */

/* Undoes the byte-level map of a token string. A string with a character outside the
 * alphabet is kept as its own UTF-8 bytes (what HF's ByteLevel decoder does). */
static int64_t add_token_bytes(Tokenizer *t, const int16_t cp_byte[N_BYTE_CPS], const char *s, size_t n) {
    uint8_t small[256], *out = n <= sizeof small ? small : malloc(n);
    if (!out) return -1;
    size_t k = 0;
    bool mapped = true;
    for (size_t i = 0; i < n && mapped;) {
        size_t len;
        if (utf8_class((const uint8_t *)s + i, n - i, &len) != U8_VALID) {
            mapped = false;
            break;
        }
        uint32_t cp = utf8_codepoint((const uint8_t *)s + i, len);
        if (cp >= N_BYTE_CPS || cp_byte[cp] < 0) mapped = false;
        else out[k++] = (uint8_t)cp_byte[cp];
        i += len;
    }
    int64_t off = mapped ? pool_add(t, out, k) : pool_add(t, s, n);
    if (out != small) free(out);
    return off;
}

static int cmp_special(const void *pa, const void *pb) {
    const Special *a = pa, *b = pb;
    if (a->first != b->first) return (int)a->first - (int)b->first;
    return a->len < b->len ? 1 : a->len > b->len ? -1 : 0;
}

/* Marks id as special with text `content` and adds it to the split list (once). */
static int add_special(Tokenizer *t, const char *content, int32_t id) {
    size_t n = strlen(content);
    for (int i = 0; i < t->n_special; i++)
        if (t->special[i].len == n && memcmp(t->pool.bytes + t->special[i].off, content, n) == 0) return 0;
    int64_t off = pool_add(t, content, n);
    if (off < 0) return -1;
    Special *s = realloc(t->special, (size_t)(t->n_special + 1) * sizeof *s);
    if (!s) return -1;
    t->special = s;
    t->special[t->n_special++] = (Special){(uint32_t)off, (uint32_t)n, id, (uint8_t)content[0]};
    t->tok[id] = (TokenInfo){(uint32_t)off, (uint32_t)n, TOK_SPECIAL};
    return 0;
}

/* Sorts the specials by first byte, longest first, so that the split tries the
 * longest match at each position, and indexes them by first byte. */
static void build_specials_index(Tokenizer *t) {
    if (t->n_special > 1) qsort(t->special, (size_t)t->n_special, sizeof *t->special, cmp_special);
    memset(t->sp_count, 0, sizeof t->sp_count);
    for (int i = t->n_special - 1; i >= 0; i--) {
        t->sp_start[t->special[i].first] = i;
        t->sp_count[t->special[i].first]++;
    }
}

/* The pre-tokenizer regexes (docs/TOKENIZERS.md). Whitespace in them is Unicode White_Space
 * spelled out, not PCRE2's \s: with PCRE2_UCP, \s also matches U+180E, which Python's
 * `regex` and Oniguruma do not. */
#define WS "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* GPT-2's pattern:
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

/* BLOOM's Split pattern: an optional space, then a run of chars that are neither
 * White_Space nor ( ) | . , ! ? … 。 ， 、 । ۔ ، (the meaning of BLOOM's nested Oniguruma
 * class). */
static const char bloom_pattern[] =
    " ?[^" WS "()|.,!?\\x{2026}\\x{3002}\\x{FF0C}\\x{3001}\\x{964}\\x{6D4}\\x{60C}]+";

static int compile_regex(Tokenizer *t, Error *err) {
    const char *pat = t->pre == PRE_BLOOM ? bloom_pattern : gpt2_pattern;
    int code;
    PCRE2_SIZE at;
    t->re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code, &at, NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return err_set(err, "tokenizer: cannot compile the pre-tokenizer regex: %s", (char *)msg);
    }
    pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE);   /* optional: the interpreter is the fallback */
    return 0;
}

static int build_tables(Loader *L, bool gpt2_files, Error *err) {
    Tokenizer *t = L->t;
    size_t entries = L->vocab.count + L->n_added;
    if ((size_t)L->max_id + 1 > 2 * entries + 65536)
        return err_set(err, "%s: the largest id, %d, is far beyond the %zu tokens listed", L->vocab_file, L->max_id,
                       entries);
    t->n_vocab = L->max_id + 1;
    t->tok = calloc((size_t)t->n_vocab, sizeof *t->tok);
    if (!t->tok) return err_set(err, "%s: out of memory", L->vocab_file);

    for (size_t i = 0; i < L->vocab.cap; i++) {
        const StrSlot *s = &L->vocab.slot[i];
        if (s->len == UINT32_MAX) continue;
        const char *str = (const char *)L->vocab.pool.bytes + s->off;
        TokenInfo *ti = &t->tok[s->a];
        if (ti->kind != TOK_NONE)
            return err_set(err, "%s: id %d is given to two tokens, '%.*s' and another", L->vocab_file, s->a,
                           (int)(s->len > 80 ? 80 : s->len), str);
        int64_t off = add_token_bytes(t, L->cp_byte, str, s->len);
        if (off < 0) return err_set(err, "%s: out of memory", L->vocab_file);
        *ti = (TokenInfo){(uint32_t)off, (uint32_t)(t->pool.len - (size_t)off), TOK_NORMAL};
    }

    /* Added tokens may repeat a vocabulary entry (same text, same id) or take a free id. */
    for (size_t i = 0; i < L->n_added; i++) {
        const Added *a = &L->added[i];
        TokenInfo *ti = &t->tok[a->id];
        if (ti->kind == TOK_NORMAL && vocab_id(L, a->content, strlen(a->content)) != a->id)
            return err_set(err, "%s: added token '%.80s' has id %d, which the vocabulary gives to another token",
                           L->vocab_file, a->content, a->id);
        if (ti->kind == TOK_SPECIAL)
            return err_set(err, "%s: id %d is given to two added tokens", L->vocab_file, a->id);
        if (add_special(t, a->content, a->id)) return err_set(err, "%s: out of memory", L->vocab_file);
    }

    /* Tokens the configs name are special too (split out of the text), if the vocab has them.
     * OPT's defaults (its tokenizer_config): bos = eos = unk = "</s>", pad = "<pad>". */
    static const char *const opt_default[N_NAMES] = {"</s>", "</s>", "</s>", "<pad>", NULL, NULL, NULL};
    int32_t name_id[N_NAMES];
    for (int k = 0; k < N_NAMES; k++) {
        const char *name = L->name[k] ? L->name[k] : gpt2_files ? opt_default[k] : NULL;
        if (!name && k == NAME_EOS) name = "</s>";
        name_id[k] = name && name[0] ? loader_lookup(L, name) : -1;
        if (name_id[k] >= 0 && add_special(t, name, name_id[k])) return err_set(err, "%s: out of memory", L->vocab_file);
    }
    for (size_t i = 0; i < L->n_extra; i++) {
        int32_t id = loader_lookup(L, L->extra[i]);
        if (id >= 0 && add_special(t, L->extra[i], id)) return err_set(err, "%s: out of memory", L->vocab_file);
    }
    /* A BOS the configs name and the encoder would prepend must exist: dropping it silently
     * would change every sequence the model sees. */
    if (gpt2_files && L->add_bos != 0 && L->name[NAME_BOS] && L->name[NAME_BOS][0] && name_id[NAME_BOS] < 0)
        return err_set(err, "%s: the BOS token '%.80s' named in the tokenizer config is not in the vocabulary",
                       L->vocab_file, L->name[NAME_BOS]);
    t->bos_id = name_id[NAME_BOS];
    t->eos_id = name_id[NAME_EOS];
    t->unk_id = name_id[NAME_UNK];
    /* GPT2Tokenizer as OPT configures it prepends BOS; BLOOM's tokenizer.json adds nothing. */
    t->uses_bos = gpt2_files && L->add_bos != 0 && t->bos_id >= 0;
    if (!t->uses_bos) t->bos_id = -1;

    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        size_t n = utf8_put(L->byte_cp[b], u);
        t->byte_id[b] = vocab_id(L, (const char *)u, n);
    }
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (t->tok[id].len > t->max_token_bytes) t->max_token_bytes = t->tok[id].len;
    build_specials_index(t);
    return compile_regex(t, err);
}

int tokenizer_load(const char *dir, Tokenizer **out, Error *err) {
    *out = NULL;
    if (!dir) return err_set(err, "tokenizer: no directory given");
    struct stat st;
    if (stat(dir, &st) != 0) return err_set(err, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return err_set(err, "%s: not a directory", dir);
    char tj[4096], vj[4096], mt[4096], tc[4096], sm[4096];
    if ((size_t)snprintf(tj, sizeof tj, "%s/tokenizer.json", dir) >= sizeof tj ||
        (size_t)snprintf(vj, sizeof vj, "%s/vocab.json", dir) >= sizeof vj ||
        (size_t)snprintf(mt, sizeof mt, "%s/merges.txt", dir) >= sizeof mt ||
        (size_t)snprintf(tc, sizeof tc, "%s/tokenizer_config.json", dir) >= sizeof tc ||
        (size_t)snprintf(sm, sizeof sm, "%s/special_tokens_map.json", dir) >= sizeof sm)
        return err_set(err, "tokenizer: directory path is too long");
    /* Each name is either absent or a regular file: anything else there is an error. */
    int has_tj = file_present(tj, err), has_vj = 0, has_mt = 0, has_tc, has_sm;
    if (has_tj < 0) return -1;
    if (!has_tj && ((has_vj = file_present(vj, err)) < 0 || (has_vj && (has_mt = file_present(mt, err)) < 0)))
        return -1;
    if (!has_tj && !has_vj)
        return err_set(err, "%s: no tokenizer found (looked for tokenizer.json, or vocab.json + merges.txt)", dir);
    if (!has_tj && !has_mt) return err_set(err, "%s: has vocab.json but no merges.txt", dir);
    if ((has_tc = file_present(tc, err)) < 0 || (has_sm = file_present(sm, err)) < 0) return -1;
    const bool use_json = has_tj;

    Tokenizer *t = calloc(1, sizeof *t);
    if (!t) return err_set(err, "tokenizer: out of memory");
    Loader L = {.t = t, .max_id = -1, .add_bos = -1};
    bytes_to_unicode(L.byte_cp);
    for (int i = 0; i < N_BYTE_CPS; i++) L.cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) L.cp_byte[L.byte_cp[b]] = (int16_t)b;
    int rc = 0;
    /* Configs first: the tokenizer file may add names (unk from tokenizer.json). The
     * special-tokens map overrides tokenizer_config, as in transformers. */
    if (has_tc) rc = load_config(&L, tc, err);
    if (rc == 0 && has_sm) rc = load_config(&L, sm, err);
    if (rc == 0) rc = use_json ? load_tokenizer_json(&L, tj, err) : load_gpt2_files(&L, vj, mt, err);
    if (rc == 0) rc = build_tables(&L, !use_json, err);
    loader_free(&L);
    if (rc) {
        tokenizer_free(t);
        return -1;
    }
    *out = t;
    return 0;
}
