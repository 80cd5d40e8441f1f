/* tokenizer.c — byte-level BPE as OPT (GPT-2 files) and BLOOM (tokenizer.json) use it.
 *
 * Text -> ids happens in four steps (SPEC §4):
 *   1. special tokens written literally in the text ("</s>") are cut out, longest match
 *      first, and map straight to their ids;
 *   2. the text between them is cut into pieces by the pre-tokenizer regex (GPT-2's
 *      pattern for OPT, the Split pattern for BLOOM);
 *   3. each byte of a piece becomes the vocabulary's one-character token for that byte
 *      (bytes_to_unicode: byte 0x20 is written 'Ġ' in the files);
 *   4. BPE: the adjacent pair with the lowest merge rank is merged, again and again,
 *      until no adjacent pair has a rank.
 * Ids -> text maps each token back to its raw bytes and decodes UTF-8 with replacement.
 *
 * The files spell tokens as strings of byte-level characters; those strings are needed
 * only while loading, to turn every merge "a b" into a pair of ids and the id it makes.
 * After loading, a token is an id and its raw bytes.
 *
 * Invalid UTF-8 in the input (which HF never sees: Python strings are always valid) is
 * handled deterministically and losslessly: the text is split into maximal runs of valid
 * UTF-8 and the invalid stretches between them, each "maximal invalid subpart" (as
 * Python's errors="replace" counts them, usually one byte) becomes a piece of its own,
 * and BPE encodes its bytes like any other. So the tokens' bytes always give back x
 * exactly (and decode(encode(x)) == x whenever x is valid UTF-8).
 *
 * Whitespace in the regexes is Unicode White_Space spelled out, not PCRE2's \s: with
 * PCRE2_UCP, \s also matches U+180E, which Python's `regex` and Oniguruma do not. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- limits: everything read from files is checked against these -------------- */

#define MAX_FILE_BYTES ((size_t)1 << 30)   /* BLOOM's tokenizer.json is 14.5 MB */
#define MAX_TOKEN_ID ((1 << 24) - 1)        /* BLOOM has 250,680 ids */
#define MAX_TEXT_BYTES ((size_t)1 << 31)    /* piece positions are 32-bit */
#define CACHE_MAX_PIECE 64                  /* longer pieces are rare; not cached */
#define CACHE_MAX_ENTRIES (1u << 20)

/* ---- UTF-8 --------------------------------------------------------------------- */

enum { U8_VALID, U8_INVALID, U8_INCOMPLETE };

/* Classifies the character at p[0..n) (n >= 1): a valid character of *len bytes, an
 * invalid "maximal subpart" of *len bytes (what Python's decoder replaces by one
 * U+FFFD), or a valid start cut off by the end of the data. */
static int utf8_class(const uint8_t *p, size_t n, size_t *len) {
    uint8_t c = p[0];
    if (c < 0x80) {
        *len = 1;
        return U8_VALID;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;   /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c == 0xE0) need = 2, lo = 0xA0;    /* no overlong forms */
    else if (c == 0xED) need = 2, hi = 0x9F;    /* no surrogates */
    else if (c >= 0xE1 && c <= 0xEF) need = 2;
    else if (c == 0xF0) need = 3, lo = 0x90;    /* no overlong forms */
    else if (c == 0xF4) need = 3, hi = 0x8F;    /* nothing above U+10FFFF */
    else if (c >= 0xF1 && c <= 0xF3) need = 3;
    else {
        *len = 1;
        return U8_INVALID;
    }
    for (size_t k = 1; k <= need; k++) {
        if (k >= n) {
            *len = k;
            return U8_INCOMPLETE;
        }
        if (p[k] < lo || p[k] > hi) {
            *len = k;
            return U8_INVALID;
        }
        lo = 0x80, hi = 0xBF;
    }
    *len = need + 1;
    return U8_VALID;
}

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

/* ---- the byte-level alphabet (SPEC §4.1 bytes_to_unicode) ------------------------ */

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

/* ---- hash maps ------------------------------------------------------------------- */

static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

/* Byte string -> two int32 values. Keys are copied into the map's own pool. */
typedef struct {
    uint32_t off, len, hash;   /* len == UINT32_MAX marks an empty slot */
    int32_t a, b;
} StrSlot;

typedef struct {
    StrSlot *slot;
    size_t cap, count;   /* cap is a power of two, kept at least twice count */
    char *pool;
    size_t pool_len, pool_cap;
} StrMap;

static void strmap_free(StrMap *m) {
    free(m->slot);
    free(m->pool);
    memset(m, 0, sizeof *m);
}

static void strmap_clear(StrMap *m) {
    for (size_t i = 0; i < m->cap; i++) m->slot[i].len = UINT32_MAX;
    m->count = 0;
    m->pool_len = 0;
}

static const StrSlot *strmap_get(const StrMap *m, const void *key, size_t len) {
    if (!m->cap) return NULL;
    uint32_t h = (uint32_t)hash_bytes(key, len);
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        const StrSlot *s = &m->slot[i];
        if (s->len == UINT32_MAX) return NULL;
        if (s->hash == h && s->len == len && memcmp(m->pool + s->off, key, len) == 0) return s;
    }
}

static int strmap_grow(StrMap *m) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    StrSlot *slot = malloc(cap * sizeof *slot);
    if (!slot) return -1;
    for (size_t i = 0; i < cap; i++) slot[i].len = UINT32_MAX;
    for (size_t i = 0; i < m->cap; i++) {
        StrSlot s = m->slot[i];
        if (s.len == UINT32_MAX) continue;
        size_t j = s.hash & (cap - 1);
        while (slot[j].len != UINT32_MAX) j = (j + 1) & (cap - 1);
        slot[j] = s;
    }
    free(m->slot);
    m->slot = slot;
    m->cap = cap;
    return 0;
}

/* Inserts key -> (a, b). Returns 1 if the key was already there (left unchanged),
 * 0 when inserted, -1 when out of memory. */
static int strmap_put(StrMap *m, const void *key, size_t len, int32_t a, int32_t b) {
    if (strmap_get(m, key, len)) return 1;
    if (len >= UINT32_MAX || m->pool_len + len >= UINT32_MAX) return -1;
    if ((m->count + 1) * 2 > m->cap && strmap_grow(m)) return -1;
    if (m->pool_len + len > m->pool_cap || !m->pool) {   /* allocated even for "" keys */
        size_t cap = m->pool_cap ? m->pool_cap : 4096;
        while (cap < m->pool_len + len) cap *= 2;
        char *p = realloc(m->pool, cap);
        if (!p) return -1;
        m->pool = p;
        m->pool_cap = cap;
    }
    if (len) memcpy(m->pool + m->pool_len, key, len);
    uint32_t h = (uint32_t)hash_bytes(key, len);
    size_t i = h & (m->cap - 1);
    while (m->slot[i].len != UINT32_MAX) i = (i + 1) & (m->cap - 1);
    m->slot[i] = (StrSlot){(uint32_t)m->pool_len, (uint32_t)len, h, a, b};
    m->pool_len += len;
    m->count++;
    return 0;
}

/* Merge table: (left id, right id) -> (rank, id of the merged token). */
typedef struct {
    uint64_t key;   /* left << 32 | right; EMPTY_PAIR marks a free slot */
    uint32_t rank;
    int32_t merged;
} PairSlot;

#define EMPTY_PAIR UINT64_MAX

typedef struct {
    PairSlot *slot;
    size_t cap, count;
} PairMap;

static size_t pair_hash(uint64_t key, size_t cap) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & (cap - 1);
}

static const PairSlot *pairmap_get(const PairMap *m, int32_t left, int32_t right) {
    if (!m->cap) return NULL;
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = pair_hash(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->slot[i].key == key) return &m->slot[i];
        if (m->slot[i].key == EMPTY_PAIR) return NULL;
    }
}

/* Adds a merge unless the pair already has one (the first, lowest rank, wins). */
static int pairmap_put(PairMap *m, int32_t left, int32_t right, uint32_t rank, int32_t merged) {
    if (pairmap_get(m, left, right)) return 0;
    if ((m->count + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 1024;
        PairSlot *slot = malloc(cap * sizeof *slot);
        if (!slot) return -1;
        for (size_t i = 0; i < cap; i++) slot[i].key = EMPTY_PAIR;
        for (size_t i = 0; i < m->cap; i++) {
            if (m->slot[i].key == EMPTY_PAIR) continue;
            size_t j = pair_hash(m->slot[i].key, cap);
            while (slot[j].key != EMPTY_PAIR) j = (j + 1) & (cap - 1);
            slot[j] = m->slot[i];
        }
        free(m->slot);
        m->slot = slot;
        m->cap = cap;
    }
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t i = pair_hash(key, m->cap);
    while (m->slot[i].key != EMPTY_PAIR) i = (i + 1) & (m->cap - 1);
    m->slot[i] = (PairSlot){key, rank, merged};
    m->count++;
    return 0;
}

/* ---- the tokenizer ---------------------------------------------------------------- */

enum { TOK_NONE, TOK_NORMAL, TOK_SPECIAL };   /* TOK_NONE: an unused id */

typedef struct {
    uint32_t off, len;   /* raw bytes in Tokenizer.pool */
    uint8_t kind;
} TokenInfo;

typedef struct {
    uint32_t off, len;   /* the text that stands for this token in the input */
    int32_t id;
    uint8_t first;       /* its first byte, the split's index key */
} Special;

typedef enum { PRE_GPT2, PRE_BLOOM } PreKind;

struct Tokenizer {
    int32_t n_vocab;      /* largest id + 1 */
    TokenInfo *tok;       /* [n_vocab] */
    uint8_t *pool;        /* raw bytes of all tokens */
    size_t pool_len, pool_cap;
    size_t max_token_bytes;

    int32_t byte_id[256];   /* the one-byte token of each byte, -1 if the vocab lacks it */
    PairMap merges;

    Special *special;       /* sorted by first byte, then longest first */
    int n_special;
    int sp_start[256], sp_count[256];   /* the specials that begin with each byte */

    PreKind pre;
    bool add_prefix_space;  /* ByteLevel(add_prefix_space): " " before each text segment */
    pcre2_code *re;

    bool uses_bos;
    int32_t bos_id, eos_id, unk_id;
};

/* Appends raw bytes to the pool; returns the offset or -1. */
static int64_t pool_add(Tokenizer *t, const void *p, size_t n) {
    if (t->pool_len + n >= UINT32_MAX) return -1;
    if (t->pool_len + n > t->pool_cap || !t->pool) {   /* allocated even for "" tokens */
        size_t cap = t->pool_cap ? t->pool_cap : 1 << 16;
        while (cap < t->pool_len + n) cap *= 2;
        uint8_t *q = realloc(t->pool, cap);
        if (!q) return -1;
        t->pool = q;
        t->pool_cap = cap;
    }
    if (n) memcpy(t->pool + t->pool_len, p, n);
    t->pool_len += n;
    return (int64_t)(t->pool_len - n);
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    free(t->tok);
    free(t->pool);
    free(t->merges.slot);
    free(t->special);
    pcre2_code_free(t->re);
    free(t);
}

/* ---- loading: files and JSON helpers --------------------------------------------- */

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int read_file(const char *path, char **buf, size_t *len, Error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return err_set(err, "%s: cannot open the file", path);
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return err_set(err, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > MAX_FILE_BYTES) {
        fclose(f);
        return err_set(err, "%s: the file is %lld bytes, more than a tokenizer file can be (%zu)",
                       path, (long long)st.st_size, MAX_FILE_BYTES);
    }
    size_t n = (size_t)st.st_size;
    char *p = malloc(n + 1);
    if (!p) {
        fclose(f);
        return err_set(err, "%s: out of memory reading %zu bytes", path, n);
    }
    size_t got = fread(p, 1, n, f);
    fclose(f);
    if (got != n) {
        free(p);
        return err_set(err, "%s: read %zu of %zu bytes", path, got, n);
    }
    p[n] = 0;
    *buf = p;
    *len = n;
    return 0;
}

static int read_json(const char *path, cJSON **out, Error *err) {
    char *buf;
    size_t len;
    if (read_file(path, &buf, &len, err)) return -1;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, len, &end, false);
    size_t at = end && end >= buf && end <= buf + len ? (size_t)(end - buf) : 0;
    free(buf);
    if (!j) return err_set(err, "%s: not valid JSON (error near byte %zu)", path, at);
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
    if (read_file(path, &buf, &len, err)) return -1;
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
        if (t->special[i].len == n && memcmp(t->pool + t->special[i].off, content, n) == 0) return 0;
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

#define WS "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* SPEC §4.1: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

/* SPEC §4.2: an optional space, then a run of chars that are neither White_Space nor
 * ( ) | . , ! ? … 。 ， 、 । ۔ ، (the meaning of BLOOM's nested Oniguruma class). */
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
        const char *str = L->vocab.pool + s->off;
        TokenInfo *ti = &t->tok[s->a];
        if (ti->kind != TOK_NONE)
            return err_set(err, "%s: id %d is given to two tokens, '%.*s' and another", L->vocab_file, s->a,
                           (int)(s->len > 80 ? 80 : s->len), str);
        int64_t off = add_token_bytes(t, L->cp_byte, str, s->len);
        if (off < 0) return err_set(err, "%s: out of memory", L->vocab_file);
        *ti = (TokenInfo){(uint32_t)off, (uint32_t)(t->pool_len - (size_t)off), TOK_NORMAL};
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
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) return err_set(err, "%s: not a directory", dir);
    char tj[4096], vj[4096], mt[4096], tc[4096], sm[4096];
    if ((size_t)snprintf(tj, sizeof tj, "%s/tokenizer.json", dir) >= sizeof tj ||
        (size_t)snprintf(vj, sizeof vj, "%s/vocab.json", dir) >= sizeof vj ||
        (size_t)snprintf(mt, sizeof mt, "%s/merges.txt", dir) >= sizeof mt ||
        (size_t)snprintf(tc, sizeof tc, "%s/tokenizer_config.json", dir) >= sizeof tc ||
        (size_t)snprintf(sm, sizeof sm, "%s/special_tokens_map.json", dir) >= sizeof sm)
        return err_set(err, "tokenizer: directory path is too long");
    bool use_json = file_exists(tj);
    if (!use_json && !file_exists(vj))
        return err_set(err, "%s: no tokenizer found (looked for tokenizer.json, or vocab.json + merges.txt)", dir);
    if (!use_json && !file_exists(mt)) return err_set(err, "%s: has vocab.json but no merges.txt", dir);

    Tokenizer *t = calloc(1, sizeof *t);
    if (!t) return err_set(err, "tokenizer: out of memory");
    Loader L = {.t = t, .max_id = -1, .add_bos = -1};
    bytes_to_unicode(L.byte_cp);
    for (int i = 0; i < N_BYTE_CPS; i++) L.cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) L.cp_byte[L.byte_cp[b]] = (int16_t)b;
    int rc = 0;
    /* Configs first: the tokenizer file may add names (unk from tokenizer.json). The
     * special-tokens map overrides tokenizer_config, as in transformers. */
    if (file_exists(tc)) rc = load_config(&L, tc, err);
    if (rc == 0 && file_exists(sm)) rc = load_config(&L, sm, err);
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

/* ---- encoding: BPE on one piece ------------------------------------------------------ */

/* A piece's tokens live in a linked list over its byte positions; a merge folds the
 * right token into the left one. Candidate merges wait in a min-heap ordered by
 * (rank, position), so the lowest-ranked pair is merged first and, among equal ranks,
 * the leftmost: the same result as merging all occurrences left to right (a merge can
 * only create pairs of higher rank in trained merge lists), in O(n log n). */
typedef struct {
    int32_t id;          /* -1: a byte the vocabulary lacks; DEAD: folded into its left */
    int32_t prev, next;  /* -1 at the ends */
} Sym;

#define DEAD INT32_MIN

typedef struct {
    uint32_t rank, left, right;
    int32_t left_id, right_id, merged;   /* the pair as it was when pushed */
} Cand;

/* Everything one encode call needs; nothing in the Tokenizer changes, so several
 * threads may encode with one tokenizer. */
typedef struct {
    const Tokenizer *t;
    Error *err;
    int32_t *ids;
    size_t n_ids, cap_ids;
    Sym *sym;
    size_t cap_sym;
    Cand *heap;
    size_t n_heap, cap_heap;
    StrMap cache;          /* piece bytes -> (offset, count) in cache_ids */
    int32_t *cache_ids;
    size_t n_cache_ids, cap_cache_ids;
    pcre2_match_data *md;
    uint8_t *tmp;          /* a segment with its prefix space */
    size_t cap_tmp;
} Encoder;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need) {
        if (cap2 > SIZE_MAX / 2 / elem) return -1;
        cap2 *= 2;
    }
    void *q = realloc(*p, cap2 * elem);
    if (!q) return -1;
    *p = q;
    *cap = cap2;
    return 0;
}

static int push_id(Encoder *E, int32_t id) {
    if (grow((void **)&E->ids, &E->cap_ids, E->n_ids + 1, sizeof *E->ids))
        return err_set(E->err, "tokenizer: out of memory for %zu token ids", E->n_ids + 1);
    E->ids[E->n_ids++] = id;
    return 0;
}

static bool cand_less(const Cand *a, const Cand *b) {
    return a->rank != b->rank ? a->rank < b->rank : a->left < b->left;
}

static int heap_push(Encoder *E, Cand c) {
    if (grow((void **)&E->heap, &E->cap_heap, E->n_heap + 1, sizeof *E->heap))
        return err_set(E->err, "tokenizer: out of memory for BPE candidates");
    size_t i = E->n_heap++;
    while (i > 0 && cand_less(&c, &E->heap[(i - 1) / 2])) {
        E->heap[i] = E->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    E->heap[i] = c;
    return 0;
}

static Cand heap_pop(Encoder *E) {
    Cand top = E->heap[0], last = E->heap[--E->n_heap];
    size_t i = 0, n = E->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && cand_less(&E->heap[c + 1], &E->heap[c])) c++;
        if (!cand_less(&E->heap[c], &last)) break;
        E->heap[i] = E->heap[c];
        i = c;
    }
    if (n) E->heap[i] = last;
    return top;
}

static int try_pair(Encoder *E, int32_t left, int32_t right) {
    int32_t a = E->sym[left].id, b = E->sym[right].id;
    if (a < 0 || b < 0) return 0;
    const PairSlot *m = pairmap_get(&E->t->merges, a, b);
    return m ? heap_push(E, (Cand){m->rank, (uint32_t)left, (uint32_t)right, a, b, m->merged}) : 0;
}

static int emit_id(Encoder *E, int32_t id, uint8_t byte) {
    if (id >= 0) return push_id(E, id);
    if (E->t->unk_id >= 0) return push_id(E, E->t->unk_id);
    return err_set(E->err, "tokenizer: byte 0x%02x has no token in the vocabulary, and there is no unk token",
                   byte);
}

static int bpe(Encoder *E, const uint8_t *p, size_t n) {
    const Tokenizer *t = E->t;
    if (n == 1) return emit_id(E, t->byte_id[p[0]], p[0]);
    if (grow((void **)&E->sym, &E->cap_sym, n, sizeof *E->sym))
        return err_set(E->err, "tokenizer: out of memory for a piece of %zu bytes", n);
    Sym *s = E->sym;
    for (size_t i = 0; i < n; i++)
        s[i] = (Sym){t->byte_id[p[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1};
    E->n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (try_pair(E, (int32_t)i, (int32_t)i + 1)) return -1;
    while (E->n_heap) {
        Cand c = heap_pop(E);
        /* Stale if either side has merged with something else since the push. */
        if (s[c.left].id != c.left_id || s[c.left].next != (int32_t)c.right || s[c.right].id != c.right_id)
            continue;
        int32_t next = s[c.right].next;
        s[c.left].id = c.merged;
        s[c.left].next = next;
        if (next >= 0) s[next].prev = (int32_t)c.left;
        s[c.right].id = DEAD;
        if (s[c.left].prev >= 0 && try_pair(E, s[c.left].prev, (int32_t)c.left)) return -1;
        if (next >= 0 && try_pair(E, (int32_t)c.left, next)) return -1;
    }
    for (int32_t i = 0; i >= 0; i = s[i].next)
        if (emit_id(E, s[i].id, p[i])) return -1;
    return 0;
}

/* A piece through the cache: text repeats (" the" is a piece thousands of times). */
static int encode_piece(Encoder *E, const uint8_t *p, size_t n) {
    if (n == 0) return 0;
    if (n > CACHE_MAX_PIECE) return bpe(E, p, n);
    const StrSlot *hit = strmap_get(&E->cache, p, n);
    if (hit) {
        if (grow((void **)&E->ids, &E->cap_ids, E->n_ids + (size_t)hit->b, sizeof *E->ids))
            return err_set(E->err, "tokenizer: out of memory for token ids");
        memcpy(E->ids + E->n_ids, E->cache_ids + hit->a, (size_t)hit->b * sizeof *E->ids);
        E->n_ids += (size_t)hit->b;
        return 0;
    }
    size_t start = E->n_ids;
    if (bpe(E, p, n)) return -1;
    size_t count = E->n_ids - start;
    if (E->cache.count >= CACHE_MAX_ENTRIES) {   /* bound the memory: start afresh */
        strmap_clear(&E->cache);
        E->n_cache_ids = 0;
    }
    if (E->n_cache_ids + count > INT32_MAX ||
        grow((void **)&E->cache_ids, &E->cap_cache_ids, E->n_cache_ids + count, sizeof *E->cache_ids))
        return 0;   /* the cache is an optimisation; going without it is fine */
    if (strmap_put(&E->cache, p, n, (int32_t)E->n_cache_ids, (int32_t)count) != 0) return 0;
    memcpy(E->cache_ids + E->n_cache_ids, E->ids + start, count * sizeof *E->ids);
    E->n_cache_ids += count;
    return 0;
}

/* ---- encoding: pre-tokenization ------------------------------------------------------- */

/* Cuts a run of valid UTF-8 into the regex's matches; any text between matches (none
 * for the GPT-2 pattern, the delimiters for BLOOM's) is a piece too ("Isolated"). */
static int pretokenize_run(Encoder *E, const uint8_t *s, size_t n) {
    size_t off = 0;
    while (off < n) {
        int rc = pcre2_match(E->t->re, s, n, off, PCRE2_NO_UTF_CHECK, E->md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH) return encode_piece(E, s + off, n - off);
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return err_set(E->err, "tokenizer: pre-tokenizer regex failed: %s", (char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(E->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {   /* our patterns never match empty; step over a char to be safe */
            utf8_class(s + ms, n - ms, &me);
            me += ms;
        }
        if (ms > off && encode_piece(E, s + off, ms - off)) return -1;
        if (encode_piece(E, s + ms, me - ms)) return -1;
        off = me;
    }
    return 0;
}

/* Text between special tokens: valid UTF-8 goes through the regex; each invalid
 * stretch (one maximal invalid subpart) is a piece of its own, encoded byte-wise. */
static int encode_segment(Encoder *E, const uint8_t *s, size_t n) {
    if (n == 0) return 0;
    if (E->t->add_prefix_space && s[0] != ' ') {
        if (grow((void **)&E->tmp, &E->cap_tmp, n + 1, 1)) return err_set(E->err, "tokenizer: out of memory");
        E->tmp[0] = ' ';
        memcpy(E->tmp + 1, s, n);
        s = E->tmp, n++;
    }
    size_t i = 0;
    while (i < n) {
        size_t j = i, len = 0;
        int kind = U8_VALID;
        while (j < n) {
            if (s[j] < 0x80) {
                j++;
                continue;
            }
            kind = utf8_class(s + j, n - j, &len);
            if (kind != U8_VALID) break;
            j += len;
        }
        if (j > i && pretokenize_run(E, s + i, j - i)) return -1;
        if (j < n) {
            if (encode_piece(E, s + j, len)) return -1;
            j += len;
        }
        i = j;
    }
    return 0;
}

int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, bool add_bos,
                     int32_t **ids, size_t *n_ids, Error *err) {
    *ids = NULL;
    *n_ids = 0;
    if (len && !text) return err_set(err, "tokenizer: no text given");
    if (len >= MAX_TEXT_BYTES) return err_set(err, "tokenizer: the text is %zu bytes, more than 2 GiB", len);
    Encoder E = {.t = t, .err = err};
    E.md = pcre2_match_data_create_from_pattern(t->re, NULL);
    int rc = E.md ? 0 : err_set(err, "tokenizer: out of memory");
    if (rc == 0 && add_bos && t->uses_bos) rc = push_id(&E, t->bos_id);

    /* Split out special tokens, leftmost first and longest first at each position. */
    const uint8_t *s = (const uint8_t *)text;
    size_t seg = 0, pos = 0;
    while (rc == 0 && pos < len) {
        int k = t->sp_count[s[pos]] ? t->sp_start[s[pos]] : 0, end = k + t->sp_count[s[pos]];
        const Special *hit = NULL;
        for (; k < end && !hit; k++) {
            const Special *sp = &t->special[k];
            if (sp->len <= len - pos && memcmp(s + pos, t->pool + sp->off, sp->len) == 0) hit = sp;
        }
        if (!hit) {
            pos++;
            continue;
        }
        rc = encode_segment(&E, s + seg, pos - seg);
        if (rc == 0) rc = push_id(&E, hit->id);
        pos += hit->len;
        seg = pos;
    }
    if (rc == 0) rc = encode_segment(&E, s + seg, len - seg);

    pcre2_match_data_free(E.md);
    free(E.sym);
    free(E.heap);
    strmap_free(&E.cache);
    free(E.cache_ids);
    free(E.tmp);
    if (rc) {
        free(E.ids);
        return -1;
    }
    if (!E.ids) E.ids = malloc(sizeof *E.ids);   /* empty result: still a pointer to free */
    if (!E.ids) return err_set(err, "tokenizer: out of memory");
    *ids = E.ids;
    *n_ids = E.n_ids;
    return 0;
}

/* ---- queries -------------------------------------------------------------------------- */

bool tokenizer_uses_bos(const Tokenizer *t) { return t->uses_bos; }
int32_t tokenizer_bos_id(const Tokenizer *t) { return t->bos_id; }
int32_t tokenizer_eos_id(const Tokenizer *t) { return t->eos_id; }
int32_t tokenizer_vocab_size(const Tokenizer *t) { return t->n_vocab; }
size_t tokenizer_max_token_bytes(const Tokenizer *t) { return t->max_token_bytes; }

const uint8_t *tokenizer_token_bytes(const Tokenizer *t, int32_t id, size_t *len) {
    *len = 0;
    if (!t || id < 0 || id >= t->n_vocab || t->tok[id].kind == TOK_NONE) return NULL;
    *len = t->tok[id].len;
    return t->pool + t->tok[id].off;   /* pool is non-NULL once any token exists */
}

/* ---- decoding ------------------------------------------------------------------------- */

/* Output with a capacity: a character is written whole or not at all, and a NUL always
 * follows what was written. */
typedef struct {
    char *out;
    size_t cap, n;
} Sink;

static void sink_put(Sink *k, const void *p, size_t n) {
    if (k->cap == 0 || k->n + n + 1 > k->cap) return;
    memcpy(k->out + k->n, p, n);
    k->n += n;
    k->out[k->n] = 0;
}

static void sink_char(Sink *k, int kind, const uint8_t *p, size_t len) {
    if (kind == U8_VALID) sink_put(k, p, len);
    else sink_put(k, "\xEF\xBF\xBD", 3);   /* U+FFFD, one per maximal invalid subpart */
}

/* Emits the complete characters of pending bytes + p[0..n); keeps an incomplete tail. */
static void stream_feed(TokenStream *s, const uint8_t *p, size_t n, Sink *k) {
    size_t i = 0, len;
    if (s->n_pending > 0) {
        /* The pending start (<= 3 bytes) plus up to 4 new bytes settle every character
         * that begins in the pending part. */
        uint8_t local[8];
        size_t m = (size_t)s->n_pending, extra = n < 4 ? n : 4, L = m + extra, q = 0;
        memcpy(local, s->pending, m);
        memcpy(local + m, p, extra);
        while (q < m) {
            int kind = utf8_class(local + q, L - q, &len);
            if (kind == U8_INCOMPLETE) {   /* only possible when all of p fit in local */
                memmove(s->pending, local + q, L - q);
                s->n_pending = (int)(L - q);
                return;
            }
            sink_char(k, kind, local + q, len);
            q += len;
        }
        i = q - m;
        s->n_pending = 0;
    }
    while (i < n) {
        if (p[i] < 0x80) {   /* ASCII runs go straight through */
            size_t j = i;
            while (j < n && p[j] < 0x80) j++;
            sink_put(k, p + i, j - i);
            i = j;
            continue;
        }
        int kind = utf8_class(p + i, n - i, &len);
        if (kind == U8_INCOMPLETE) {
            memcpy(s->pending, p + i, n - i);
            s->n_pending = (int)(n - i);
            return;
        }
        sink_char(k, kind, p + i, len);
        i += len;
    }
}

void token_stream_init(TokenStream *s, const Tokenizer *t) {
    memset(s, 0, sizeof *s);
    s->tok = t;
}

size_t token_stream_push(TokenStream *s, int32_t id, char *out, size_t out_cap) {
    Sink k = {out, out_cap, 0};
    if (out_cap) out[0] = 0;
    size_t n;
    const uint8_t *p = tokenizer_token_bytes(s->tok, id, &n);
    if (p) stream_feed(s, p, n, &k);
    return k.n;
}

size_t token_stream_flush(TokenStream *s, char *out, size_t out_cap) {
    Sink k = {out, out_cap, 0};
    if (out_cap) out[0] = 0;
    if (s->n_pending > 0) sink_put(&k, "\xEF\xBF\xBD", 3);   /* one subpart, one U+FFFD */
    s->n_pending = 0;
    return k.n;
}

char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n) {
    size_t total = 0, len;
    for (size_t i = 0; i < n; i++) {
        tokenizer_token_bytes(t, ids[i], &len);
        total += len;
    }
    /* Worst case every byte becomes U+FFFD (3 bytes). */
    if (total > (SIZE_MAX - 16) / 3) return NULL;
    Sink k = {malloc(3 * total + 16), 3 * total + 16, 0};
    if (!k.out) return NULL;
    k.out[0] = 0;
    TokenStream s;
    token_stream_init(&s, t);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = tokenizer_token_bytes(t, ids[i], &len);
        if (p) stream_feed(&s, p, len, &k);
    }
    if (s.n_pending > 0) sink_put(&k, "\xEF\xBF\xBD", 3);
    return k.out;
}
