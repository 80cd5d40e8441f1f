/* tokenizer_internal.h — what the tokenizer's two files share: the tables that loading
 * (tokenizer_load.c) builds from the files and encoding and decoding (tokenizer.c) read,
 * and the UTF-8 and hash-map helpers both use. Not part of the public contract
 * (tokenizer.h); include it only from src/tokenizer*.c. See docs/TOKENIZERS.md. */
#ifndef LLMINT8_TOKENIZER_INTERNAL_H
#define LLMINT8_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"
#include "utf8.h"

/* ---- a growing byte array ------------------------------------------------------------ */

/* Bytes appended one string after another, addressed by 32-bit offsets. */
typedef struct {
    uint8_t *bytes;
    size_t len, cap;
} BytePool;

/* Appends n bytes (n may be 0: the array is allocated anyway, first_cap bytes at first) and
 * returns their offset, or -1 when out of memory or when the pool would reach UINT32_MAX
 * bytes. */
int64_t bytepool_add(BytePool *p, const void *src, size_t n, size_t first_cap);

/* ---- hash maps (open addressing, linear probing) --------------------------------------- */

/* Byte string -> two int32 values. Keys are copied into the map's own pool. */
typedef struct {
    uint32_t off, len, hash;   /* len == UINT32_MAX marks an empty slot */
    int32_t a, b;
} StrSlot;

typedef struct {
    StrSlot *slot;
    size_t cap, count;   /* cap is a power of two, kept at least twice count */
    BytePool pool;       /* the keys */
} StrMap;

void strmap_free(StrMap *m);
void strmap_clear(StrMap *m);   /* empties the map, keeping its memory */
const StrSlot *strmap_get(const StrMap *m, const void *key, size_t len);
/* Inserts key -> (a, b). Returns 1 if the key was already there (left unchanged),
 * 0 when inserted, -1 when out of memory. */
int strmap_put(StrMap *m, const void *key, size_t len, int32_t a, int32_t b);

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

const PairSlot *pairmap_get(const PairMap *m, int32_t left, int32_t right);
/* Adds a merge unless the pair already has one (the first, lowest rank, wins); -1 when out
 * of memory. */
int pairmap_put(PairMap *m, int32_t left, int32_t right, uint32_t rank, int32_t merged);

/* ---- the tables -------------------------------------------------------------------------- */

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
    BytePool pool;        /* raw bytes of all tokens */
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

#endif
