/* tokenizer.h — byte-level BPE, as OPT (GPT-2 files) and BLOOM (tokenizer.json) use it.
 *
 * Loading looks in a directory for either
 *   vocab.json + merges.txt (GPT2Tokenizer, OPT; tokenizer_config.json read if present
 *   for add_bos_token / bos_token), or
 *   tokenizer.json (HF `tokenizers` BPE with the BLOOM Split + ByteLevel pre-tokenizer).
 * Encoding: special tokens written literally in the text (e.g. "</s>") are split out
 * first and map to their ids; the rest goes through the pre-tokenizer regex
 * (GPT-2's pattern for OPT, BLOOM's Split pattern; Unicode classes via PCRE2), the
 * byte->unicode map, and BPE merges by rank. OPT prepends BOS (</s> = 2) when asked;
 * BLOOM adds nothing.
 * docs/TOKENIZERS.md describes the formats and the algorithm.
 * Decoding is streaming-safe: TokenStream holds back the bytes of a UTF-8 character
 * split across tokens until it is complete; invalid bytes become U+FFFD. */
#ifndef LLMINT8_TOKENIZER_H
#define LLMINT8_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef struct Tokenizer Tokenizer;

/* Returns 0 and *out, or -1 with a message naming the file and problem.
 * A directory with none of the files is an error that says which files were looked for.
 * Each file name is either absent or a regular file: anything else under that name (a
 * directory, a FIFO, a symlink loop or a dangling symlink) is an error, never skipped. */
int tokenizer_load(const char *dir, Tokenizer **out, Error *err);
void tokenizer_free(Tokenizer *t);

/* Encodes `len` bytes of text (need not be NUL-terminated, may contain NUL bytes and
 * invalid UTF-8, which is encoded byte-wise like HF does). If add_bos and the tokenizer
 * uses a BOS (OPT), ids start with it. *ids is malloc'ed; caller frees. */
int tokenizer_encode(const Tokenizer *t, const char *text, size_t len, bool add_bos,
                     int32_t **ids, size_t *n_ids, Error *err);

/* Whether encode(add_bos = true) prepends a BOS, and its id (-1 if none). */
bool tokenizer_uses_bos(const Tokenizer *t);
int32_t tokenizer_bos_id(const Tokenizer *t);
int32_t tokenizer_eos_id(const Tokenizer *t);   /* -1 if none */
/* Number of ids the tokenizer knows (largest id + 1). */
int32_t tokenizer_vocab_size(const Tokenizer *t);

/* The raw bytes a token stands for (byte-level map undone). Special tokens give their
 * text. Unknown ids give NULL with *len = 0. Pointer valid while t lives. */
const uint8_t *tokenizer_token_bytes(const Tokenizer *t, int32_t id, size_t *len);

/* Streaming decoder: push token ids, get back complete UTF-8 text. */
typedef struct TokenStream {
    const Tokenizer *tok;
    uint8_t pending[8];   /* start of a UTF-8 character not yet complete */
    int n_pending;
} TokenStream;

void token_stream_init(TokenStream *s, const Tokenizer *t);
/* Appends the text that token `id` completes to out (capacity out_cap, NUL-terminated);
 * returns the number of bytes written (excluding NUL). out_cap >= 4 * (token length + 8)
 * is always enough; tokenizer_max_token_bytes() gives the bound. */
size_t token_stream_push(TokenStream *s, int32_t id, char *out, size_t out_cap);
/* Flushes whatever is pending (as U+FFFD for an incomplete character). */
size_t token_stream_flush(TokenStream *s, char *out, size_t out_cap);
size_t tokenizer_max_token_bytes(const Tokenizer *t);

/* Decodes a whole id sequence into a malloc'ed NUL-terminated string. */
char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, size_t n);

#endif
