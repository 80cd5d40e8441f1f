/* fuzz_tokenizer_load.c — tokenizer_load() on arbitrary tokenizer files, then a few
 * encodes and decodes with whatever it accepted.
 *
 * Input layout: the first byte picks the files; the rest is split on FUZZ_SEP.
 *   even first byte: vocab.json SEP merges.txt [SEP tokenizer_config.json]  (OPT / GPT-2)
 *   odd first byte:  tokenizer.json                                           (BLOOM)
 * The files go into a per-process scratch directory (under /dev/shm). A tokenizer that
 * loads must then encode text to ids inside [0, vocab_size), give token bytes for them,
 * and decode without overrunning the buffers token_stream_push promises are enough. */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_util.h"
#include "tokenizer.h"

#define FUZZ_SEP "\n==FILE==\n"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static const char *const FILES[] = {"vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json", NULL};
static const char *dir;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    dir = fuzz_scratch_dir(FILES);
    return 0;
}

/* Encodes text and checks the ids and the decoders. */
static void exercise(const Tokenizer *t, const char *text, size_t len) {
    int32_t *ids = NULL;
    size_t n = 0;
    Error err;
    if (tokenizer_encode(t, text, len, true, &ids, &n, &err) != 0) return;
    int32_t vocab = tokenizer_vocab_size(t);
    size_t max_bytes = tokenizer_max_token_bytes(t);
    size_t cap = 4 * (max_bytes + 8);
    char *out = malloc(cap);
    FUZZ_CHECK(out, "malloc");
    TokenStream s;
    token_stream_init(&s, t);
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab, "id %d outside [0, %d)", ids[i], vocab);
        size_t blen;
        const uint8_t *b = tokenizer_token_bytes(t, ids[i], &blen);
        FUZZ_CHECK(blen <= max_bytes, "token %d has %zu bytes > max %zu", ids[i], blen, max_bytes);
        volatile uint8_t sink = blen ? b[blen - 1] : 0;
        (void)sink;
        size_t w = token_stream_push(&s, ids[i], out, cap);
        FUZZ_CHECK(w < cap && out[w] == 0, "token_stream_push wrote %zu of %zu", w, cap);
    }
    size_t w = token_stream_flush(&s, out, cap);
    FUZZ_CHECK(w < cap, "token_stream_flush wrote %zu of %zu", w, cap);
    free(out);
    free(tokenizer_decode(t, ids, n));
    /* Ids the vocabulary does not have must be harmless too. */
    int32_t odd[] = {-1, vocab, vocab < INT32_MAX ? vocab + 1 : 0, INT32_MAX, INT32_MIN};
    size_t blen;
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) tokenizer_token_bytes(t, odd[i], &blen);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const uint8_t *p = data + 1, *end = data + size;
    for (const char *const *f = FILES; *f; f++) fuzz_put_file(dir, *f, NULL, 0);
    if ((data[0] & 1) == 0) {
        const char *names[] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
        for (int i = 0; i < 3 && p <= end; i++) {
            const uint8_t *q = fuzz_find(p, end, FUZZ_SEP);
            fuzz_put_file(dir, names[i], p, (size_t)(q - p));
            if (q == end) break;
            p = q + strlen(FUZZ_SEP);
        }
    } else {
        fuzz_put_file(dir, "tokenizer.json", p, (size_t)(end - p));
    }
    Tokenizer *t = NULL;
    Error err;
    err.msg[0] = 0;
    if (tokenizer_load(dir, &t, &err) != 0) {
        FUZZ_CHECK(err.msg[0] != 0, "tokenizer_load failed without a message");
        return 0;
    }
    static const char sample[] = "Hello world! It's  1999 -- caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 </s><s> \xff\xfe\n\t x";
    exercise(t, sample, sizeof sample - 1);
    exercise(t, "", 0);
    exercise(t, (const char *)data, size < 256 ? size : 256);
    tokenizer_uses_bos(t);
    tokenizer_bos_id(t);
    tokenizer_eos_id(t);
    tokenizer_free(t);
    return 0;
}
