/* tokenizer.c — byte-level BPE encoding and decoding, with the tables tokenizer_load.c
 * built (tokenizer_internal.h). docs/TOKENIZERS.md explains the algorithm.
 *
 * Text -> ids happens in four steps:
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
 * Invalid UTF-8 in the input (which HF never sees: Python strings are always valid) is
 * handled deterministically and losslessly: the text is split into maximal runs of valid
 * UTF-8 and the invalid stretches between them, each "maximal invalid subpart" (as
 * Python's errors="replace" counts them, usually one byte) becomes a piece of its own,
 * and BPE encodes its bytes like any other. So the tokens' bytes always give back x
 * exactly (and decode(encode(x)) == x whenever x is valid UTF-8).
 *
 * Also here: the UTF-8 classifier and the two hash maps both files use. */
#include "tokenizer_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- limits ------------------------------------------------------------------------ */

#define MAX_TEXT_BYTES ((size_t)1 << 31)    /* piece positions are 32-bit */
#define CACHE_MAX_PIECE 64                  /* longer pieces are rare; not cached */
#define CACHE_MAX_ENTRIES (1u << 20)

/* ---- the byte pool and hash maps -------------------------------------------------- */

static uint64_t hash_bytes(const void *p, size_t n) {
    const uint8_t *s = p;
    uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

int64_t bytepool_add(BytePool *p, const void *src, size_t n, size_t first_cap) {
    if (n >= UINT32_MAX - p->len) return -1;
    if (p->len + n > p->cap || !p->bytes) {
        size_t cap = p->cap ? p->cap : first_cap;
        while (cap < p->len + n) cap *= 2;
        uint8_t *q = realloc(p->bytes, cap);
        if (!q) return -1;
        p->bytes = q;
        p->cap = cap;
    }
    if (n) memcpy(p->bytes + p->len, src, n);
    p->len += n;
    return (int64_t)(p->len - n);
}

void strmap_free(StrMap *m) {
    free(m->slot);
    free(m->pool.bytes);
    memset(m, 0, sizeof *m);
}

void strmap_clear(StrMap *m) {
    for (size_t i = 0; i < m->cap; i++) m->slot[i].len = UINT32_MAX;
    m->count = 0;
    m->pool.len = 0;
}

const StrSlot *strmap_get(const StrMap *m, const void *key, size_t len) {
    if (!m->cap) return NULL;
    uint32_t h = (uint32_t)hash_bytes(key, len);
    for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
        const StrSlot *s = &m->slot[i];
        if (s->len == UINT32_MAX) return NULL;
        if (s->hash == h && s->len == len && memcmp(m->pool.bytes + s->off, key, len) == 0) return s;
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

int strmap_put(StrMap *m, const void *key, size_t len, int32_t a, int32_t b) {
    if (strmap_get(m, key, len)) return 1;
    if ((m->count + 1) * 2 > m->cap && strmap_grow(m)) return -1;
    int64_t off = bytepool_add(&m->pool, key, len, 4096);
    if (off < 0) return -1;
    uint32_t h = (uint32_t)hash_bytes(key, len);
    size_t i = h & (m->cap - 1);
    while (m->slot[i].len != UINT32_MAX) i = (i + 1) & (m->cap - 1);
    m->slot[i] = (StrSlot){(uint32_t)off, (uint32_t)len, h, a, b};
    m->count++;
    return 0;
}

static size_t pair_hash(uint64_t key, size_t cap) {
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & (cap - 1);
}

const PairSlot *pairmap_get(const PairMap *m, int32_t left, int32_t right) {
    if (!m->cap) return NULL;
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (size_t i = pair_hash(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->slot[i].key == key) return &m->slot[i];
        if (m->slot[i].key == EMPTY_PAIR) return NULL;
    }
}

int pairmap_put(PairMap *m, int32_t left, int32_t right, uint32_t rank, int32_t merged) {
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
            if (sp->len <= len - pos && memcmp(s + pos, t->pool.bytes + sp->off, sp->len) == 0) hit = sp;
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
    return t->pool.bytes + t->tok[id].off;   /* pool is non-NULL once any token exists */
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
