/* test_tokenizer.c — the tokenizer against published ids, hand-made BLOOM files and
 * hostile input.
 *
 * - tests/data/tokenizers/testvectors: llama.cpp's 46 cases, OPT ids (opt-roberta.*) and
 *   GPT-2 ids (gpt2.*). We have no GPT-2 encoder.json, but it is determined by merges.txt:
 *   ids 0..255 are the byte-level characters in bytes_to_unicode order, id 256 + r is the
 *   token merge r makes, 50256 is <|endoftext|>. The test writes that vocab.json into a
 *   temporary directory and checks the gpt2 vectors id for id.
 * - bloom-mini*, bytelevel-mini: tokenizer.json files with all 256 byte tokens and a few
 *   merges chosen so that the ids show where the pre-tokenizer cut (a merge across a cut
 *   never happens).
 * - hostile tokenizer files give errors; odd text (invalid UTF-8, NUL) round-trips. */
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"
#include "tokenizer.h"

#define OPT_DIR TEST_TOKENIZERS "/opt-125m"
#define VEC_DIR TEST_TOKENIZERS "/testvectors"
#define BLOOM_DIR TEST_TOKENIZERS "/bloom-mini"

static Tokenizer *load(const char *dir) {
    Error err = {{0}};
    Tokenizer *t = NULL;
    int rc = tokenizer_load(dir, &t, &err);
    CHECK(rc == 0 && t, "loading %s: %s", dir, err.msg);
    return rc == 0 ? t : NULL;
}

static int32_t *encode(const Tokenizer *t, const char *s, size_t n, bool bos, size_t *n_ids) {
    Error err = {{0}};
    int32_t *ids = NULL;
    *n_ids = 0;
    int rc = tokenizer_encode(t, s, n, bos, &ids, n_ids, &err);
    CHECK(rc == 0, "encoding %zu bytes: %s", n, err.msg);
    return rc == 0 ? ids : NULL;
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

/* Checks encode(s) == the `n_want` ids in want. */
static void check_ids(const Tokenizer *t, const char *s, bool bos, const int32_t *want, size_t n_want) {
    size_t n;
    int32_t *ids = encode(t, s, strlen(s), bos, &n);
    if (!ids) return;
    bool same = n == n_want && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    CHECK(same, "ids of \"%s\"", s);
    if (!same) print_ids("got", ids, n), print_ids("want", want, n_want);
    free(ids);
}

#define IDS(...) ((const int32_t[]){__VA_ARGS__}), sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t)

/* The tokens of encode(s) joined by '|', e.g. "hello| world": shows where BPE cut. */
static char *shape(const Tokenizer *t, const char *s) {
    size_t n;
    int32_t *ids = encode(t, s, strlen(s), false, &n);
    static char buf[1024];
    size_t w = 0;
    buf[0] = 0;
    for (size_t i = 0; ids && i < n; i++) {
        size_t len;
        const uint8_t *b = tokenizer_token_bytes(t, ids[i], &len);
        if (w + len + 2 >= sizeof buf) break;
        if (i) buf[w++] = '|';
        memcpy(buf + w, b, len);
        w += len;
        buf[w] = 0;
    }
    free(ids);
    return buf;
}

static void check_shape(const Tokenizer *t, const char *s, const char *want) {
    const char *got = shape(t, s);
    CHECK(strcmp(got, want) == 0, "pieces of \"%s\": got \"%s\", want \"%s\"", s, got, want);
}

/* Strict UTF-8: no overlong forms, surrogates, or code points above U+10FFFF. */
static bool valid_utf8(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], need, lo = 0x80, hi = 0xBF;   /* continuation bytes, and the 2nd's range */
        if (c < 0x80) need = 0;
        else if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) need = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4) need = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        else return false;
        if (need >= n - i) return false;
        for (unsigned k = 1; k <= need; k++, lo = 0x80, hi = 0xBF)
            if (s[i + k] < lo || s[i + k] > hi) return false;
        i += need + 1;
    }
    return true;
}

/* The tokens' bytes give back s exactly, whatever the bytes; and decode(encode(s)) == s
 * when s is valid UTF-8 (decoding replaces invalid bytes by U+FFFD). */
static void check_roundtrip(const Tokenizer *t, const char *s, size_t n, const char *what) {
    size_t n_ids;
    int32_t *ids = encode(t, s, n, false, &n_ids);
    if (!ids) return;
    size_t at = 0;
    bool same = true;
    for (size_t i = 0; i < n_ids && same; i++) {
        size_t len;
        const uint8_t *b = tokenizer_token_bytes(t, ids[i], &len);
        same = b && at + len <= n && memcmp(b, s + at, len) == 0;
        at += len;
    }
    CHECK(same && at == n, "the tokens of %s give back its bytes", what);
    if (valid_utf8(s, n)) {
        char *back = tokenizer_decode(t, ids, n_ids);
        CHECK(back && memcmp(back, s, n) == 0 && back[n] == 0, "decode(encode(%s))", what);
        free(back);
    }
    free(ids);
}

/* ---- llama.cpp's test vectors ------------------------------------------------------ */

/* Checks every case of NAME.inp against NAME.out; returns the number of cases. */
static int check_vectors(const Tokenizer *t, const char *name) {
    char path[256];
    snprintf(path, sizeof path, VEC_DIR "/%s.inp", name);
    size_t in_len, out_len;
    char *in = test_read_file(path, &in_len);
    snprintf(path, sizeof path, VEC_DIR "/%s.out", name);
    char *out = test_read_file(path, &out_len);
    CHECK(in && out, "reading the %s vectors", name);
    if (!in || !out) return free(in), free(out), 0;

    /* Each input is followed by "\n__ggml_vocab_test__\n"; each .out line holds its ids. */
    static const char sep[] = "\n__ggml_vocab_test__\n";
    const char *p = in, *end = in + in_len, *line = out;
    int cases = 0;
    while (p < end) {
        const char *q = memmem(p, (size_t)(end - p), sep, sizeof sep - 1);
        if (!q) break;
        size_t n = (size_t)(q - p);
        const char *nl = strchr(line, '\n');
        CHECK(nl != NULL, "%s: more inputs than output lines", name);
        if (!nl) break;
        int32_t want[256];
        size_t n_want = 0;
        for (const char *e = line; n_want < 256;) {
            while (e < nl && *e == ' ') e++;
            if (e >= nl) break;
            char *after;
            long v = strtol(e, &after, 10);
            if (after == e) break;
            want[n_want++] = (int32_t)v;
            e = after;
        }
        size_t n_ids;
        int32_t *ids = encode(t, p, n, false, &n_ids);
        bool same = ids && n_ids == n_want && (n_ids == 0 || memcmp(ids, want, n_ids * sizeof *ids) == 0);
        CHECK(same, "%s case %d (\"%.*s\")", name, cases, (int)(n > 60 ? 60 : n), p);
        if (!same && ids) print_ids("got", ids, n_ids), print_ids("want", want, n_want);
        if (ids) {
            char *back = tokenizer_decode(t, ids, n_ids);
            CHECK(back && strlen(back) == n && memcmp(back, p, n) == 0, "%s case %d decodes back", name, cases);
            free(back);
        }
        free(ids);
        cases++;
        p = q + sizeof sep - 1;
        line = nl + 1;
    }
    CHECK(p == end && *line == 0, "%s: inputs and output lines pair up", name);
    free(in);
    free(out);
    return cases;
}

/* GPT-2's encoder.json, rebuilt from merges.txt (see the top of the file). */
static void write_json_string(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\') fputc('\\', f);
        fputc(s[i], f);
    }
    fputc('"', f);
}

static bool write_gpt2_vocab(const char *dir) {
    size_t len;
    char *merges = test_read_file(OPT_DIR "/merges.txt", &len);
    char path[512];
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    FILE *f = fopen(path, "wb");
    if (!merges || !f) return free(merges), f ? fclose(f) : 0, false;
    /* bytes_to_unicode lists the printable bytes first, then the rest, each in order. */
    int order[256], n = 0;
    uint16_t cp[256], next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        cp[b] = printable ? (uint16_t)b : next++;
        if (printable) order[n++] = b;
    }
    for (int b = 0; b < 256; b++)
        if (cp[b] >= 256) order[n++] = b;
    fputc('{', f);
    for (int i = 0; i < 256; i++) {
        char u[3];
        uint16_t c = cp[order[i]];
        size_t k = c < 0x80 ? (u[0] = (char)c, 1) : (u[0] = (char)(0xC0 | c >> 6), u[1] = (char)(0x80 | (c & 0x3F)), 2);
        write_json_string(f, u, k);
        fprintf(f, ":%d,", i);
    }
    int id = 256;
    char *line = merges, *end = merges + len;
    line = strchr(line, '\n') + 1;   /* #version */
    while (line < end) {
        char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl) nl = end;
        char *sp = memchr(line, ' ', (size_t)(nl - line));
        if (sp) {
            /* "a b" -> "ab": the token string without the space. */
            fputc('"', f);
            for (char *c = line; c < nl; c++) {
                if (c == sp) continue;
                if (*c == '"' || *c == '\\') fputc('\\', f);
                fputc(*c, f);
            }
            fprintf(f, "\":%d,", id++);
        }
        line = nl + 1;
    }
    fprintf(f, "\"<|endoftext|>\":%d}", id);
    fclose(f);
    free(merges);
    CHECK(id == 50256, "GPT-2 vocab has %d merges, want 50000", id - 256);

    /* merges.txt: the same file. */
    merges = test_read_file(OPT_DIR "/merges.txt", &len);
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    f = fopen(path, "wb");
    bool ok = merges && f && fwrite(merges, 1, len, f) == len;
    if (f) fclose(f);
    free(merges);
    if (!ok) return false;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    f = fopen(path, "wb");
    if (!f) return false;
    fputs("{\"add_bos_token\": false, \"bos_token\": \"<|endoftext|>\", \"eos_token\": \"<|endoftext|>\","
          " \"unk_token\": \"<|endoftext|>\", \"tokenizer_class\": \"GPT2Tokenizer\"}", f);
    fclose(f);
    return true;
}

static void remove_dir_files(const char *dir, const char *const *names, int n) {
    char path[512];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void test_vectors(void) {
    Tokenizer *opt = load(OPT_DIR);
    if (opt) {
        CHECK(check_vectors(opt, "opt-roberta") == 46, "46 OPT cases");
        tokenizer_free(opt);
    }
    char dir[] = "/tmp/test_tokenizer_gpt2_XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    if (write_gpt2_vocab(dir)) {
        Tokenizer *gpt2 = load(dir);
        if (gpt2) {
            CHECK(!tokenizer_uses_bos(gpt2) && tokenizer_eos_id(gpt2) == 50256, "GPT-2 config read");
            check_ids(gpt2, "Hello world", true, IDS(15496, 995));   /* the docstring's ids */
            CHECK(check_vectors(gpt2, "gpt2") == 46, "46 GPT-2 cases");
            tokenizer_free(gpt2);
        }
    } else {
        CHECK(0, "could not write the GPT-2 vocab into %s", dir);
    }
    static const char *const files[] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
    remove_dir_files(dir, files, 3);
}

/* ---- OPT ------------------------------------------------------------------------ */

static void test_opt(void) {
    Tokenizer *t = load(OPT_DIR);
    if (!t) return;
    CHECK(tokenizer_vocab_size(t) == 50265, "vocab size %d", tokenizer_vocab_size(t));
    CHECK(tokenizer_uses_bos(t) && tokenizer_bos_id(t) == 2 && tokenizer_eos_id(t) == 2, "OPT BOS/EOS = 2");
    check_ids(t, "Today is a beautiful day and I want", true, IDS(2, 5625, 16, 10, 2721, 183, 8, 38, 236));
    check_ids(t, "Hello world", false, IDS(31414, 232));
    check_ids(t, "Hello world!", true, IDS(2, 31414, 232, 328));
    check_ids(t, "", true, IDS(2));
    size_t n;
    int32_t *ids = encode(t, "", 0, false, &n);
    CHECK(ids && n == 0, "empty text without BOS gives no ids");
    free(ids);

    /* Special tokens written in the text map to their ids; OPT's configs name </s> and <pad>
     * ("<s>" is an ordinary string to GPT2Tokenizer as OPT configures it). */
    check_ids(t, "</s>", false, IDS(2));
    check_ids(t, "Hello</s> world<pad>", false, IDS(31414, 2, 232, 1));
    check_ids(t, "</s></s>", true, IDS(2, 2, 2));
    size_t n_lt;
    int32_t *lt = encode(t, "<s><unk>", 8, false, &n_lt);
    CHECK(lt && n_lt > 2 && lt[0] != 0 && lt[n_lt - 1] != 3, "\"<s><unk>\" is ordinary text for OPT");
    free(lt);

    size_t len;
    const uint8_t *b = tokenizer_token_bytes(t, 232, &len);
    CHECK(b && len == 6 && memcmp(b, " world", 6) == 0, "token 232 is \" world\"");
    b = tokenizer_token_bytes(t, 2, &len);
    CHECK(b && len == 4 && memcmp(b, "</s>", 4) == 0, "token 2 is \"</s>\"");
    CHECK(!tokenizer_token_bytes(t, -1, &len) && len == 0, "id -1 has no bytes");
    CHECK(!tokenizer_token_bytes(t, 50265, &len) && len == 0, "id 50265 has no bytes");
    CHECK(tokenizer_max_token_bytes(t) >= 16 && tokenizer_max_token_bytes(t) < 256, "max token bytes %zu",
          tokenizer_max_token_bytes(t));

    /* NUL bytes, invalid UTF-8, lone continuation bytes, truncated characters: no crash,
     * and every byte comes back. */
    static const char nul[] = "a\0b\0\0 c";
    check_roundtrip(t, nul, sizeof nul - 1, "text with NUL bytes");
    static const char bad[] = "\xff\xfe abc \xc3(\xe2\x82 \xf0\x9f\x98 \xed\xa0\x80 \xc0\xaf\x80\xbf end\xf4";
    check_roundtrip(t, bad, sizeof bad - 1, "invalid UTF-8");
    ids = encode(t, "\xff", 1, false, &n);
    CHECK(ids && n == 1, "one invalid byte is one token");
    if (ids) {
        char *s = tokenizer_decode(t, ids, n);
        CHECK(s && strcmp(s, "\xEF\xBF\xBD") == 0, "a lone 0xFF decodes to U+FFFD");
        free(s);
    }
    free(ids);
    /* Pseudo-random bytes: encode, and decode back exactly. */
    static const char pool[] = " a\xc3\xa9\xe2\x80\x99\xf0\x9f\n<s>/</s>";   /* bits of UTF-8 */
    char rnd[4096];
    uint32_t x = 12345;
    for (int round = 0; round < 20; round++) {
        for (size_t i = 0; i < sizeof rnd; i++) {
            x = x * 1664525u + 1013904223u;
            rnd[i] = round & 1 ? (char)(x >> 24) : pool[(x >> 24) % (sizeof pool - 1)];
        }
        check_roundtrip(t, rnd, sizeof rnd, "random bytes");
    }

    /* Very long pieces (one word, one run of spaces) go through BPE in O(n log n). */
    size_t big_n = 100000;
    char *big = malloc(2 * big_n);
    if (big) {
        memset(big, 'a', big_n);
        memset(big + big_n, ' ', big_n);
        check_roundtrip(t, big, 2 * big_n, "100000 'a' then 100000 spaces");
        free(big);
    }
    tokenizer_free(t);
}

static void test_gutenberg(void) {
    Tokenizer *t = load("models/opt-gutenberg-7m");
    if (!t) return;
    CHECK(tokenizer_vocab_size(t) == 8192, "gutenberg vocab size %d", tokenizer_vocab_size(t));
    check_ids(t, "It was a dark and stormy night", true, IDS(2, 1030, 377, 261, 3227, 294, 6392, 92, 1759));
    check_ids(t, "The old man", true, IDS(2, 468, 1472, 586));
    check_ids(t, "In the beginning", true, IDS(2, 822, 266, 3730));
    tokenizer_free(t);
}

/* ---- decoding ------------------------------------------------------------------------ */

static int32_t one_id(const Tokenizer *t, const char *s) {
    size_t n;
    int32_t *ids = encode(t, s, strlen(s), false, &n);
    int32_t id = ids && n == 1 ? ids[0] : -1;
    CHECK(id >= 0, "\"%s\" is one token", s);
    free(ids);
    return id;
}

static void test_decode(void) {
    Tokenizer *t = load(OPT_DIR);
    if (!t) return;
    /* Python's errors="replace": one U+FFFD per maximal invalid subpart. */
    int32_t e0 = one_id(t, "\xe0"), c80 = one_id(t, "\x80"), a = one_id(t, "A");
    int32_t f0 = one_id(t, "\xf0"), c9f = one_id(t, "\x9f"), c98 = one_id(t, "\x98");
    struct {
        int32_t ids[4];
        size_t n;
        const char *want;
    } cases[] = {
        {{e0, c80, a}, 3, "\xEF\xBF\xBD\xEF\xBF\xBD" "A"},   /* E0 80: 80 cannot follow E0 */
        {{f0, c9f, c98, a}, 4, "\xEF\xBF\xBD" "A"},          /* a truncated 4-byte char: one */
        {{f0, c9f, c98}, 3, "\xEF\xBF\xBD"},                  /* cut off at the end: one */
        {{c80, c80}, 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *s = tokenizer_decode(t, cases[i].ids, cases[i].n);
        CHECK(s && strcmp(s, cases[i].want) == 0, "replacement case %zu", i);
        free(s);
    }
    int32_t unknown[] = {-5, 999999, a};
    char *s = tokenizer_decode(t, unknown, 3);
    CHECK(s && strcmp(s, "A") == 0, "unknown ids decode to nothing");
    free(s);

    /* Streaming: an emoji whose bytes span several tokens comes out whole, once complete. */
    const char *text = "I \xf0\x9f\xa6\x99 llamas \xe2\x9c\x85 and \xe4\xbd\xa0\xe5\xa5\xbd!";
    size_t n;
    int32_t *ids = encode(t, text, strlen(text), false, &n);
    size_t cap = 4 * (tokenizer_max_token_bytes(t) + 8);
    char *buf = malloc(cap), all[256] = "";
    TokenStream ts;
    token_stream_init(&ts, t);
    int held = 0;
    for (size_t i = 0; ids && buf && i < n; i++) {
        size_t w = token_stream_push(&ts, ids[i], buf, cap);
        CHECK(w == strlen(buf), "push returns the length written");
        held += ts.n_pending > 0;
        strncat(all, buf, sizeof all - strlen(all) - 1);
    }
    if (buf) token_stream_flush(&ts, buf, cap), strncat(all, buf, sizeof all - strlen(all) - 1);
    CHECK(held > 0, "some token ended inside a character (the emoji is split across byte tokens)");
    CHECK(strcmp(all, text) == 0, "streamed text \"%s\"", all);

    /* Flush emits U+FFFD for a held incomplete character; a tiny buffer is never overrun. */
    token_stream_init(&ts, t);
    CHECK(token_stream_push(&ts, f0, buf, cap) == 0 && ts.n_pending == 1, "F0 is held");
    CHECK(token_stream_flush(&ts, buf, cap) == 3 && strcmp(buf, "\xEF\xBF\xBD") == 0, "flush gives U+FFFD");
    CHECK(token_stream_flush(&ts, buf, cap) == 0 && buf[0] == 0, "second flush gives nothing");
    char tiny[4] = "xyz";
    token_stream_init(&ts, t);
    size_t w = token_stream_push(&ts, one_id(t, " world"), tiny, 4);
    CHECK(w < 4 && tiny[w] == 0, "a short buffer is not overrun and stays NUL-terminated");
    CHECK(token_stream_push(&ts, a, tiny, 0) == 0, "a zero-capacity buffer is left alone");
    free(buf);
    free(ids);
    tokenizer_free(t);
}

/* ---- BLOOM -------------------------------------------------------------------------- */

static void test_bloom(const char *dir) {
    Tokenizer *t = load(dir);
    if (!t) return;
    CHECK(!tokenizer_uses_bos(t) && tokenizer_bos_id(t) == -1, "%s: BLOOM adds no BOS", dir);
    CHECK(tokenizer_eos_id(t) == 2, "%s: eos id %d", dir, tokenizer_eos_id(t));
    CHECK(tokenizer_vocab_size(t) == 294, "%s: vocab size %d", dir, tokenizer_vocab_size(t));
    size_t n;
    int32_t *ids = encode(t, "", 0, true, &n);
    CHECK(ids && n == 0, "%s: empty text gives no ids, even with add_bos", dir);
    free(ids);

    check_shape(t, "hello world", "hello| world");
    check_shape(t, " hello", " hello");               /* a space before a word is attached */
    check_shape(t, "(hello)", "(|hello|)");           /* the merge "( h" never applies */
    check_shape(t, "hello) (world", "hello|)| (|world"); /* the gap ") (" is one piece */
    check_shape(t, "a:b", "a:b");                     /* ':' belongs to words */
    check_shape(t, "a|b", "a|||b");                   /* '|' is a delimiter: "a" "|" "b" */
    check_shape(t, "hello .", "hello| .");            /* the space before '.' stays in the gap */
    check_shape(t, "hello  world", "hello| | world"); /* two spaces: one in the gap, one attached */
    check_shape(t, "hello   .", "hello|  | .");       /* the gap "   ." is one piece: "  " + " ." */
    check_shape(t, "hello\nhello", "hello|\n|hello"); /* newline is a delimiter; "\nh" never merges */
    check_shape(t, "\xe4\xbd\xa0\xe5\xa5\xbd\xe3\x80\x82\xe4\xb8\x96\xe7\x95\x8c",
                "\xe4\xbd\xa0|\xe5\xa5\xbd|\xe3\x80\x82|\xe4\xb8\x96|\xe7\x95\x8c");   /* 你好。世界 */
    check_shape(t, "\xe5\xa5\xbd\xef\xbc\x9a", "\xe5\xa5\xbd\xef\xbc\x9a");     /* 好： one word */
    check_shape(t, " \xe4\xbd\xa0", " \xe4\xbd\xa0");                          /* " 你" */
    check_shape(t, "a</s>b<pad>", "a|</s>|b|<pad>");  /* added tokens split out */
    check_ids(t, "<unk><s></s><pad>", true, IDS(0, 1, 2, 3));

    static const char *const texts[] = {
        "Hello, world! (a|b) a:b ...  \t\n\n x",
        "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xe3\x80\x82 \xe0\xa4\xb9\xe0\xa5\xa4",
        "\xf0\x9f\x98\x80 emoji \xe2\x80\xa6 \xc2\xa0nbsp\xe3\x80\x80ideographic space",
        "\xff\xfe invalid \xc3",
    };
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) check_roundtrip(t, texts[i], strlen(texts[i]), texts[i]);

    /* An emoji is four byte tokens here; the stream holds the first three. */
    ids = encode(t, "\xf0\x9f\x98\x80", 4, false, &n);
    CHECK(ids && n == 4, "%s: the emoji is 4 byte tokens", dir);
    char buf[64];
    TokenStream ts;
    token_stream_init(&ts, t);
    for (size_t i = 0; ids && i < n; i++) {
        size_t w = token_stream_push(&ts, ids[i], buf, sizeof buf);
        CHECK(i < 3 ? w == 0 : (w == 4 && memcmp(buf, "\xf0\x9f\x98\x80", 4) == 0), "emoji push %zu", i);
    }
    free(ids);
    tokenizer_free(t);
}

static void test_bytelevel_regex(void) {
    /* tokenizer.json with ByteLevel(use_regex = true): the GPT-2 pattern. */
    Tokenizer *t = load(TEST_TOKENIZERS "/bytelevel-mini");
    if (!t) return;
    check_shape(t, "a:b", "a|:|b");
    check_shape(t, "hello world", "hello| world");
    check_shape(t, "hello  world", "hello| | world");
    check_shape(t, "\xe5\xa5\xbd\xe3\x80\x82", "\xe5\xa5\xbd|\xe3\x80\x82");
    check_shape(t, "(hello", "(|hello");
    check_roundtrip(t, "it's (a|b) \xf0\x9f\x98\x80!", strlen("it's (a|b) \xf0\x9f\x98\x80!"), "bytelevel text");
    tokenizer_free(t);
}

/* ---- hostile files ------------------------------------------------------------------------ */

static char hostile_dir[] = "/tmp/test_tokenizer_bad_XXXXXX";

static void write_text(const char *name, const char *text, size_t len) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", hostile_dir, name);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL, "writing %s", path);
    if (f) fwrite(text, 1, len, f), fclose(f);
}

static void write_str(const char *name, const char *text) { write_text(name, text, strlen(text)); }

static void remove_file(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", hostile_dir, name);
    unlink(path);
}

/* Loading must fail with a message that contains `want`. */
static void expect_error(const char *what, const char *want) {
    Error err = {{0}};
    Tokenizer *t = NULL;
    int rc = tokenizer_load(hostile_dir, &t, &err);
    CHECK(rc == -1 && t == NULL, "%s: loading should fail", what);
    CHECK(strstr(err.msg, want) != NULL, "%s: message \"%s\" should mention \"%s\"", what, err.msg, want);
    tokenizer_free(t);
}

#define TJ_HEAD "{\"normalizer\": null, \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"use_regex\": true}, "

static void bad_json(const char *what, const char *json, const char *want) {
    write_text("tokenizer.json", json, strlen(json));
    expect_error(what, want);
}

static void test_hostile(void) {
    CHECK(mkdtemp(hostile_dir) != NULL, "mkdtemp");
    expect_error("empty directory", "looked for tokenizer.json, or vocab.json + merges.txt");
    Error err = {{0}};
    Tokenizer *t = NULL;
    CHECK(tokenizer_load("/nonexistent/dir", &t, &err) == -1 && strstr(err.msg, "/nonexistent/dir"),
          "missing directory: %s", err.msg);

    /* vocab.json + merges.txt */
    write_str("vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
    expect_error("vocab.json alone", "no merges.txt");
    write_str("merges.txt", "#version: 0.2\na b\n");
    t = load(hostile_dir);   /* a minimal valid pair */
    if (t) {
        check_ids(t, "abba", true, IDS(2, 1, 0));   /* no "</s>": no BOS; "ab" "b" "a" */
        tokenizer_free(t);
    }
    write_str("merges.txt", "#version: 0.2\na c\n");
    expect_error("merge with an unknown token", "'c', which is not in the vocabulary");
    write_str("merges.txt", "b a\n");
    expect_error("merge making an unknown token", "makes 'ba'");
    write_str("merges.txt", "a  b\n");
    expect_error("malformed merge line", "line 1");
    write_str("merges.txt", "a b\n");
    write_str("vocab.json", "{\"a\": 0, \"b\": 0, \"ab\": 2}");
    expect_error("duplicate ids in vocab.json", "vocab.json: id 0 is given to two tokens");
    write_str("vocab.json", "{\"a\": 0, \"a\": 1, \"ab\": 2}");
    expect_error("duplicate token in vocab.json", "appears twice");
    write_str("vocab.json", "[\"a\", \"b\"]");
    expect_error("vocab.json as a list", "not a JSON object");
    write_str("vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": ");
    expect_error("truncated vocab.json", "vocab.json: not valid JSON");
    write_str("vocab.json", "{\"a\": 0, \"b\": 1, \"ab\": 2}");
    write_str("tokenizer_config.json", "{\"bos_token\": 5");
    expect_error("broken tokenizer_config.json", "tokenizer_config.json");
    write_str("tokenizer_config.json", "{\"bos_token\": 5}");
    expect_error("bos_token of the wrong type", "bos_token");
    remove_file("tokenizer_config.json");

    /* tokenizer.json: preferred over vocab.json, so its errors show. */
    bad_json("bad JSON", "{\"model\": {", "tokenizer.json: not valid JSON");
    bad_json("not an object", "[1, 2]", "tokenizer.json");
    bad_json("missing model", TJ_HEAD "\"x\": 1}", "model is missing");
    bad_json("missing vocab", TJ_HEAD "\"model\": {\"type\": \"BPE\", \"merges\": []}}", "model.vocab is missing");
    bad_json("empty vocab", TJ_HEAD "\"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}", "empty");
    bad_json("WordPiece", TJ_HEAD "\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "model type WordPiece");
    bad_json("Unigram", TJ_HEAD "\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}", "Unigram");
    bad_json("unknown pre-tokenizer",
             "{\"pre_tokenizer\": {\"type\": \"Whitespace\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
             "\"merges\": []}}", "pre_tokenizer type Whitespace");
    bad_json("no pre-tokenizer", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
             "pre_tokenizer type (no type)");
    bad_json("other Split pattern",
             "{\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
             "{\"Regex\": \"\\\\w+\"}, \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", "
             "\"use_regex\": false}]}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
             "Split pattern \\w+");
    bad_json("normalizer", "{\"normalizer\": {\"type\": \"NFC\"}, \"model\": {}}", "normalizer NFC");
    bad_json("id out of range", TJ_HEAD "\"model\": {\"vocab\": {\"a\": -1}, \"merges\": []}}", "token 'a' has an id");
    bad_json("huge id", TJ_HEAD "\"model\": {\"vocab\": {\"a\": 1e300}, \"merges\": []}}", "token 'a' has an id");
    bad_json("fractional id", TJ_HEAD "\"model\": {\"vocab\": {\"a\": 1.5}, \"merges\": []}}", "token 'a' has an id");
    bad_json("string id", TJ_HEAD "\"model\": {\"vocab\": {\"a\": \"1\"}, \"merges\": []}}", "token 'a' has an id");
    bad_json("sparse huge id", TJ_HEAD "\"model\": {\"vocab\": {\"a\": 0, \"b\": 16000000}, \"merges\": []}}",
             "far beyond");
    bad_json("duplicate id", TJ_HEAD "\"model\": {\"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}",
             "id 0 is given to two tokens");
    bad_json("merges not a list", TJ_HEAD "\"model\": {\"vocab\": {\"a\": 0}, \"merges\": \"a a\"}}",
             "model.merges is missing or not a list");
    bad_json("merge of a bad shape", TJ_HEAD "\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [[\"a\"]]}}",
             "model.merges[0]");
    bad_json("merge with an unknown token",
             TJ_HEAD "\"model\": {\"vocab\": {\"a\": 0, \"aa\": 1}, \"merges\": [\"a a\", [\"a\", \"q\"]]}}",
             "merge 1 ('a' 'q') uses 'q'");
    bad_json("merge making an unknown token", TJ_HEAD "\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [\"a a\"]}}",
             "makes 'aa'");
    bad_json("continuing_subword_prefix",
             TJ_HEAD "\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [], \"continuing_subword_prefix\": \"##\"}}",
             "continuing_subword_prefix");
    bad_json("added token without id", TJ_HEAD "\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, "
             "\"added_tokens\": [{\"content\": \"<s>\"}]}", "added_tokens entry");
    bad_json("empty added token", TJ_HEAD "\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, "
             "\"added_tokens\": [{\"id\": 1, \"content\": \"\"}]}", "empty content");
    bad_json("added token clashing with the vocab", TJ_HEAD "\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, "
             "\"added_tokens\": [{\"id\": 0, \"content\": \"<s>\"}]}", "gives to another token");
    static char deep[20001];
    memset(deep, '[', sizeof deep - 1);
    bad_json("deep nesting", deep, "not valid JSON");

    /* A small valid tokenizer.json whose only byte tokens are "a" and "b": other bytes
     * become the unk token. */
    static const char ok[] = TJ_HEAD "\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"vocab\": {\"<unk>\": 0, "
                             "\"a\": 1, \"b\": 2, \"ab\": 3}, \"merges\": [\"a b\"]}, \"added_tokens\": [{\"id\": 0, "
                             "\"content\": \"<unk>\", \"special\": true}, {\"id\": 7, \"content\": \"[X]\"}]}";
    write_text("tokenizer.json", ok, sizeof ok - 1);
    t = load(hostile_dir);
    if (t) {
        CHECK(tokenizer_vocab_size(t) == 8, "vocab size with an added id 7: %d", tokenizer_vocab_size(t));
        check_ids(t, "abzab[X]a", false, IDS(3, 0, 3, 7, 1));
        size_t len;
        CHECK(!tokenizer_token_bytes(t, 5, &len), "id 5 is a hole");
        int32_t holes[] = {5, 6, 3, 7};
        char *s = tokenizer_decode(t, holes, 4);
        CHECK(s && strcmp(s, "ab[X]") == 0, "holes decode to nothing");
        free(s);
        tokenizer_free(t);
    }

    /* Damaged copies of a real file: each loads or fails, never crashes. Odd rounds change
     * one digit (ids collide or move), even rounds drop in JSON punctuation or stray bytes;
     * every seventh round also cuts the file short. */
    static const char junk[] = "\"{}[]:,0 9-\\a\x80\xff";
    size_t len;
    char *good = test_read_file(BLOOM_DIR "/tokenizer.json", &len);
    char *copy = good ? malloc(len) : NULL;
    uint32_t x = 777;
    int loaded = 0;
    for (int round = 0; copy && round < 200; round++) {
        memcpy(copy, good, len);
        for (int k = 0; k < 1 + round % 3; k++) {
            x = x * 1664525u + 1013904223u;
            size_t at = (x >> 8) % len;
            x = x * 1664525u + 1013904223u;
            if (round & 1) {
                while (at < len && (copy[at] < '0' || copy[at] > '9')) at++;
                if (at < len) copy[at] = (char)('0' + (x >> 24) % 10);
            } else {
                copy[at] = junk[(x >> 24) % (sizeof junk - 1)];
            }
        }
        write_text("tokenizer.json", copy, round % 7 == 0 ? len / 2 : len);
        t = NULL;
        if (tokenizer_load(hostile_dir, &t, &err) == 0) {
            /* It may now lack byte tokens: encoding may fail, but cleanly. */
            static const char text[] = "hello (world) \xe4\xbd\xa0\xe5\xa5\xbd\xff";
            int32_t *ids = NULL;
            size_t n = 0;
            if (tokenizer_encode(t, text, sizeof text - 1, true, &ids, &n, &err) == 0) {
                char *back = tokenizer_decode(t, ids, n);
                CHECK(back != NULL, "decoding with a damaged tokenizer");
                free(back);
            }
            free(ids);
            loaded++;
            tokenizer_free(t);
        } else {
            CHECK(strstr(err.msg, "tokenizer.json") != NULL, "the error names the file: %s", err.msg);
        }
    }
    free(copy);
    free(good);
    fprintf(stderr, "damaged tokenizer.json: %d of 200 still loaded\n", loaded);

    static const char *const files[] = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"};
    remove_dir_files(hostile_dir, files, 4);
}

/* ---- speed ------------------------------------------------------------------------------- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_wiki_speed(void) {
    size_t len;
    char *text = test_read_file("tests/data/eval/wiki.test.raw", &len);
    Tokenizer *t = load(OPT_DIR);
    CHECK(text != NULL, "reading wiki.test.raw");
    if (text && t) {
        double t0 = now();
        size_t n;
        int32_t *ids = encode(t, text, len, false, &n);
        double dt = now() - t0;
        fprintf(stderr, "wiki.test.raw: %zu bytes -> %zu tokens in %.3f s (%.1f MB/s)\n", len, n, dt,
                (double)len / dt / 1e6);
        CHECK(n > 250000 && n < 350000, "token count %zu", n);
        CHECK(dt < 20.0, "encoding took %.1f s", dt);   /* ~0.2 s optimized; sanitizers are slower */
        char *back = ids ? tokenizer_decode(t, ids, n) : NULL;
        CHECK(back && strlen(back) == len && memcmp(back, text, len) == 0, "wiki.test.raw round trip");
        free(back);
        free(ids);
    }
    tokenizer_free(t);
    free(text);
}

int main(void) {
    test_vectors();
    test_opt();
    test_gutenberg();
    test_decode();
    test_bloom(BLOOM_DIR);
    test_bloom(TEST_TOKENIZERS "/bloom-mini-pairs");
    test_bytelevel_regex();
    test_hostile();
    test_wiki_speed();
    return test_finish("test_tokenizer");
}
