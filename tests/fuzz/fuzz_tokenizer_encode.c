/* fuzz_tokenizer_encode.c — tokenizer_encode() on arbitrary bytes with the real OPT
 * tokenizer (tests/data/tokenizers/opt-125m, loaded once).
 *
 * Beyond "no crash", byte-level BPE gives an exact property to check: every byte of the
 * input lands in exactly one token, so the tokens' bytes, concatenated, are the input
 * (special tokens written in the text give back their text). For ASCII input the full
 * decoder must give back the input too.
 *
 * The tokenizer directory: $LLMINT8_FUZZ_TOKENIZER, else tests/data/tokenizers/opt-125m
 * under the source root the harness was built from (LLMINT8_SOURCE_ROOT). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fuzz_util.h"
#include "tokenizer.h"

#ifndef LLMINT8_SOURCE_ROOT
#define LLMINT8_SOURCE_ROOT "."
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static Tokenizer *tok;
static uint8_t *joined;     /* the tokens' bytes, concatenated */
static size_t joined_cap;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *dir = getenv("LLMINT8_FUZZ_TOKENIZER");
    if (!dir) dir = LLMINT8_SOURCE_ROOT "/tests/data/tokenizers/opt-125m";
    Error err;
    if (tokenizer_load(dir, &tok, &err) != 0) {
        fprintf(stderr, "fuzz_tokenizer_encode: %s\n", err.msg);
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int32_t *ids = NULL;
    size_t n = 0;
    Error err;
    err.msg[0] = 0;
    if (tokenizer_encode(tok, (const char *)data, size, true, &ids, &n, &err) != 0) {
        /* Any bytes are valid input: an error here is a bug (unless memory ran out). */
        FUZZ_CHECK(0, "encode failed: %s", err.msg);
    }
    bool bos = tokenizer_uses_bos(tok);
    size_t first = 0;
    if (bos) {
        FUZZ_CHECK(n >= 1 && ids[0] == tokenizer_bos_id(tok), "no BOS first");
        first = 1;
    }
    int32_t vocab = tokenizer_vocab_size(tok);
    size_t len = 0;
    for (size_t i = first; i < n; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab, "id %d outside [0, %d)", ids[i], vocab);
        size_t blen;
        const uint8_t *b = tokenizer_token_bytes(tok, ids[i], &blen);
        FUZZ_CHECK(b && blen > 0, "token %d has no bytes", ids[i]);
        FUZZ_CHECK(len + blen <= size, "tokens hold more bytes than the input (%zu)", size);
        if (len + blen > joined_cap) {
            joined_cap = 2 * (len + blen);
            joined = realloc(joined, joined_cap);
            FUZZ_CHECK(joined, "realloc");
        }
        memcpy(joined + len, b, blen);
        len += blen;
    }
    FUZZ_CHECK(len == size && (size == 0 || memcmp(joined, data, size) == 0),
               "the tokens' bytes (%zu) are not the input (%zu)", len, size);

    bool ascii = true;
    for (size_t i = 0; i < size && ascii; i++) ascii = data[i] != 0 && data[i] < 0x80;
    char *text = tokenizer_decode(tok, ids + first, n - first);
    FUZZ_CHECK(text, "decode returned NULL");
    if (ascii) FUZZ_CHECK(strlen(text) == size && memcmp(text, data, size) == 0, "decode(encode(x)) != x");
    free(text);
    free(ids);
    return 0;
}
