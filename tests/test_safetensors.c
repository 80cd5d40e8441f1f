/* test_safetensors.c — the safetensors reader and writer, config.json parsing and
 * checkpoint directories, on hand-written good and hostile files.
 *
 * Every hostile file must be refused with -1 and a message that names the file and,
 * where there is one, the tensor or field; none may crash (run this under ASan). */
#include <ftw.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "config.h"
#include "safetensors.h"
#include "test_util.h"

static char tmpdir[64];
static bool verbose; /* VERBOSE=1 prints every expected error message, to review them */

/* ---- helpers ------------------------------------------------------------------------ */

static const char *tmp_path(const char *name) {
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    if (n && fwrite(data, 1, n, f) != n) { perror(path); exit(1); }
    fclose(f);
}

static void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

/* A safetensors file from a header string and `data_len` data bytes (0, 1, 2, ...). */
static void write_st_len(const char *path, uint64_t header_len, const char *header, size_t data_len) {
    size_t hl = strlen(header);
    size_t total = 8 + hl + data_len;
    unsigned char *buf = malloc(total);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(header_len >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) buf[8 + hl + i] = (unsigned char)i;
    write_bytes(path, buf, total);
    free(buf);
}

static void write_st(const char *path, const char *header, size_t data_len) {
    write_st_len(path, strlen(header), header, data_len);
}

/* st_open must fail, with the path and each of the words in the message. */
static void expect_st_error(const char *what, const char *path, const char *w1, const char *w2) {
    StFile *f = NULL;
    Error err = {{0}};
    int rc = st_open(path, &f, &err);
    CHECK(rc == -1 && f == NULL, "%s: st_open accepted a bad file", what);
    if (rc != -1) { st_close(f); return; }
    if (verbose) fprintf(stderr, "  [%s] %s\n", what, err.msg);
    CHECK(strstr(err.msg, path) != NULL, "%s: message does not name the file: %s", what, err.msg);
    CHECK(!w1 || strstr(err.msg, w1), "%s: message lacks '%s': %s", what, w1, err.msg);
    CHECK(!w2 || strstr(err.msg, w2), "%s: message lacks '%s': %s", what, w2, err.msg);
}

/* A one-tensor header "T" with the given dtype, shape and offsets. */
static void bad_case(const char *what, const char *entry, size_t data_len, const char *w1, const char *w2) {
    char header[1024];
    snprintf(header, sizeof header, "{%s}", entry);
    const char *path = tmp_path("bad.safetensors");
    write_st(path, header, data_len);
    expect_st_error(what, path, w1, w2);
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

/* ---- reader: good files ---------------------------------------------------------------- */

static void test_good_file(void) {
    /* 12 bytes F16 [2,3] + 4 bytes I8 [4] + 1 byte U8 scalar + empty F32 [0, 5] */
    const char *header =
        "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"x\"},"
        "\"a.weight\":{\"dtype\":\"F16\",\"shape\":[2,3],\"data_offsets\":[0,12]},"
        "\"b\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[12,16]},"
        "\"c.weight_format\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[16,17]},"
        "\"empty\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[17,17]}}   ";
    const char *path = tmp_path("good.safetensors");
    write_st(path, header, 17);
    StFile *f;
    Error err;
    if (st_open(path, &f, &err)) { CHECK(0, "good file refused: %s", err.msg); return; }
    CHECK(st_count(f) == 4, "count %zu", st_count(f));
    CHECK(strcmp(st_tensor(f, 0)->name, "a.weight") == 0, "file order: %s", st_tensor(f, 0)->name);
    CHECK(strcmp(st_tensor(f, 3)->name, "empty") == 0, "file order: %s", st_tensor(f, 3)->name);
    CHECK(st_tensor(f, 4) == NULL, "out-of-range index");
    const StTensor *a = st_find(f, "a.weight");
    CHECK(a && a->dtype == DT_F16 && a->ndim == 2 && a->shape[0] == 2 && a->shape[1] == 3 && a->numel == 6 &&
              a->nbytes == 12, "a.weight fields");
    CHECK(a && ((const unsigned char *)a->data)[0] == 0 && ((const unsigned char *)a->data)[11] == 11, "a data");
    CHECK(a && strcmp(a->file, path) == 0, "a file");
    const StTensor *b = st_find(f, "b");
    CHECK(b && b->dtype == DT_I8 && b->numel == 4 && ((const unsigned char *)b->data)[0] == 12, "b");
    const StTensor *c = st_find(f, "c.weight_format");
    CHECK(c && c->ndim == 0 && c->numel == 1 && c->nbytes == 1 && *(const unsigned char *)c->data == 16, "scalar");
    const StTensor *e = st_find(f, "empty");
    CHECK(e && e->numel == 0 && e->nbytes == 0 && e->ndim == 2, "empty tensor");
    CHECK(st_find(f, "nope") == NULL && st_find(f, "") == NULL, "absent names");
    CHECK(st_metadata(f, "format") && strcmp(st_metadata(f, "format"), "pt") == 0, "metadata format");
    CHECK(st_metadata(f, "note") && strcmp(st_metadata(f, "note"), "x") == 0, "metadata note");
    CHECK(st_metadata(f, "other") == NULL, "absent metadata");
    CHECK(strcmp(st_path(f), path) == 0, "path");
    st_close(f);

    /* An empty header object is a valid file with no tensors. */
    write_st(path, "{}", 0);
    if (st_open(path, &f, &err) == 0) {
        CHECK(st_count(f) == 0, "empty header count");
        st_close(f);
    } else {
        CHECK(0, "empty header refused: %s", err.msg);
    }

    /* A header of odd length leaves the F32 data misaligned: the reader must hand out
     * an aligned pointer with the same bytes. */
    const char *odd = "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    CHECK(strlen(odd) % 4 != 0, "test header should be misaligned");
    write_st(path, odd, 8);
    if (st_open(path, &f, &err) == 0) {
        const StTensor *x = st_find(f, "x");
        CHECK(x && ((uintptr_t)x->data % 4) == 0, "F32 data is not aligned");
        CHECK(x && ((const unsigned char *)x->data)[7] == 7, "aligned copy has the bytes");
        st_close(f);
    } else {
        CHECK(0, "misaligned file refused: %s", err.msg);
    }
}

/* ---- reader: hostile files -------------------------------------------------------------- */

static void test_hostile_files(void) {
    const char *path = tmp_path("hostile.safetensors");
    write_bytes(path, "", 0);
    expect_st_error("zero-byte file", path, "too short", NULL);
    write_bytes(path, "\x10\0\0\0\0", 5);
    expect_st_error("5-byte file", path, "too short", NULL);

    write_st_len(path, 1000, "{}", 0);
    expect_st_error("header length past EOF", path, "past the end", NULL);
    write_st_len(path, UINT64_MAX, "{}", 0);
    expect_st_error("header length 2^64-1", path, "header length", "limit");
    write_st_len(path, (uint64_t)ST_MAX_HEADER + 1, "{}", 0);
    expect_st_error("header length over 100 MB", path, "limit", NULL);

    write_st(path, "{\"a\":", 0);
    expect_st_error("truncated JSON", path, "JSON", NULL);
    write_st(path, "not json at all", 0);
    expect_st_error("bad JSON", path, "JSON", NULL);
    write_st(path, "{} trailing", 0);
    expect_st_error("garbage after the JSON", path, "JSON", NULL);
    write_st(path, "[1, 2]", 0);
    expect_st_error("header is an array", path, "object", NULL);
    {   /* a NUL inside the header */
        unsigned char raw[12] = {4, 0, 0, 0, 0, 0, 0, 0, '{', '}', 0, ' '};
        write_bytes(path, raw, sizeof raw);
        expect_st_error("NUL in header", path, "NUL", NULL);
    }
    {   /* 100k nested arrays: the parser must refuse, not overflow the stack */
        static char nest[200001];
        for (int i = 0; i < 100000; i++) nest[i] = '[', nest[200000 - 1 - i] = ']';
        write_st(path, nest, 0);
        expect_st_error("deeply nested JSON", path, "JSON", NULL);
    }

    bad_case("entry is not an object", "\"T\":5", 0, "'T'", "object");
    bad_case("missing dtype", "\"T\":{\"shape\":[1],\"data_offsets\":[0,2]}", 2, "'T'", "dtype");
    bad_case("unsupported dtype F64", "\"T\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}", 8,
             "unsupported dtype F64", "'T'");
    bad_case("unsupported dtype BOOL", "\"T\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]}", 1,
             "unsupported dtype BOOL", "'T'");
    bad_case("missing shape", "\"T\":{\"dtype\":\"F16\",\"data_offsets\":[0,2]}", 2, "'T'", "shape");
    bad_case("negative dim", "\"T\":{\"dtype\":\"F16\",\"shape\":[-1],\"data_offsets\":[0,2]}", 2, "'T'", "dimension");
    bad_case("fractional dim", "\"T\":{\"dtype\":\"F16\",\"shape\":[1.5],\"data_offsets\":[0,3]}", 3, "'T'",
             "dimension");
    bad_case("string dim", "\"T\":{\"dtype\":\"F16\",\"shape\":[\"1\"],\"data_offsets\":[0,2]}", 2, "'T'",
             "dimension");
    bad_case("dim above 2^40", "\"T\":{\"dtype\":\"U8\",\"shape\":[2199023255553],\"data_offsets\":[0,2]}", 2,
             "'T'", "dimension");
    bad_case("too many dims", "\"T\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}", 1,
             "'T'", "dimensions");
    bad_case("numel overflow",
             "\"T\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,4]}", 4, "'T'",
             "needs");
    bad_case("numel x size overflow",
             "\"T\":{\"dtype\":\"F32\",\"shape\":[1099511627776,4194304,2],\"data_offsets\":[0,4]}", 4, "'T'",
             "needs");
    bad_case("offsets past the data", "\"T\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}", 2, "'T'",
             "do not fit the data section of 2 bytes");
    bad_case("begin > end", "\"T\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,2]}", 8, "'T'",
             "do not fit");
    bad_case("negative offset", "\"T\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[-2,0]}", 8, "'T'",
             "data_offsets");
    bad_case("huge offset", "\"T\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[1e300,1e300]}", 8, "'T'",
             "data_offsets");
    bad_case("one offset", "\"T\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0]}", 8, "'T'", "data_offsets");
    bad_case("byte length != shape x dtype", "\"T\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,4]}", 4,
             "'T'", "needs 6 bytes");
    bad_case("overlapping tensors",
             "\"A\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,8]},"
             "\"B\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[6,10]}", 10, "overlap", "'A'");
    bad_case("identical ranges",
             "\"A\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
             "\"B\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}", 4, "overlap", "'B'");
    bad_case("duplicate names",
             "\"A\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
             "\"A\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}", 4, "'A'", "twice");
    bad_case("metadata not strings", "\"__metadata__\":{\"format\":1}", 0, "__metadata__", "format");
    bad_case("metadata not an object", "\"__metadata__\":[]", 0, "__metadata__", NULL);

    expect_st_error("a directory", tmpdir, "not a regular file", NULL);
    expect_st_error("no such file", tmp_path("does-not-exist.safetensors"), "cannot open", NULL);
}

/* ---- writer ---------------------------------------------------------------------------- */

static void test_writer(void) {
    const char *path = tmp_path("written.safetensors");
    StWriter *w;
    Error err;
    int64_t s23[2] = {2, 3}, s4[1] = {4}, s0[1] = {0};
    uint16_t f16[6] = {0x3c00, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600};
    int8_t i8[4] = {-127, -1, 0, 127};
    uint8_t fmt = 0;
    CHECK(st_writer_begin(path, &w, &err) == 0, "begin: %s", err.msg);
    CHECK(st_writer_declare(w, "model.decoder.w", DT_F16, 2, s23, &err) == 0, "declare: %s", err.msg);
    CHECK(st_writer_declare(w, "odd \"name\"\\x", DT_I8, 1, s4, &err) == 0, "declare: %s", err.msg);
    CHECK(st_writer_declare(w, "fmt", DT_U8, 0, NULL, &err) == 0, "declare scalar: %s", err.msg);
    CHECK(st_writer_declare(w, "nothing", DT_F32, 1, s0, &err) == 0, "declare empty: %s", err.msg);
    CHECK(st_writer_declare(w, "fmt", DT_U8, 0, NULL, &err) == -1 && strstr(err.msg, "twice"), "duplicate");
    CHECK(st_writer_write_data(w, f16, 2, &err) == -1, "data before header");
    CHECK(st_writer_write_header(w, &err) == 0, "header: %s", err.msg);
    CHECK(st_writer_declare(w, "late", DT_U8, 0, NULL, &err) == -1, "declare after header");
    /* the F16 tensor in two pieces */
    CHECK(st_writer_write_data(w, f16, 4, &err) == 0, "data: %s", err.msg);
    CHECK(st_writer_write_data(w, (const char *)f16 + 4, 8, &err) == 0, "data: %s", err.msg);
    CHECK(st_writer_write_data(w, i8, 4, &err) == 0, "data: %s", err.msg);
    CHECK(st_writer_write_data(w, &fmt, 1, &err) == 0, "data: %s", err.msg);
    CHECK(st_writer_write_data(w, &fmt, 1, &err) == -1 && strstr(err.msg, "more"), "too much data");
    CHECK(st_writer_finish(w, &err) == 0, "finish: %s", err.msg);

    size_t len;
    unsigned char *raw = test_read_file(path, &len);
    uint64_t hl = 0;
    for (int i = 7; raw && i >= 0; i--) hl = (hl << 8) | raw[i];
    CHECK(raw && hl % 8 == 0, "header length %llu not a multiple of 8", (unsigned long long)hl);
    CHECK(raw && len == 8 + hl + 12 + 4 + 1, "file length %zu", len);
    CHECK(raw && raw[8] == '{' && (raw[8 + hl - 1] == ' ' || raw[8 + hl - 1] == '}'), "header framing");
    CHECK(raw && strstr((char *)raw + 8, "\"__metadata__\":{\"format\":\"pt\"}"), "metadata");
    free(raw);

    StFile *f;
    if (st_open(path, &f, &err)) { CHECK(0, "written file refused: %s", err.msg); return; }
    CHECK(st_count(f) == 4, "count");
    CHECK(strcmp(st_tensor(f, 0)->name, "model.decoder.w") == 0, "order 0");
    CHECK(strcmp(st_tensor(f, 1)->name, "odd \"name\"\\x") == 0, "escaped name: %s", st_tensor(f, 1)->name);
    CHECK(strcmp(st_tensor(f, 2)->name, "fmt") == 0 && st_tensor(f, 2)->ndim == 0, "scalar");
    const StTensor *t = st_find(f, "model.decoder.w");
    CHECK(t && t->dtype == DT_F16 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 &&
              memcmp(t->data, f16, 12) == 0, "F16 round trip");
    t = st_find(f, "odd \"name\"\\x");
    CHECK(t && t->dtype == DT_I8 && memcmp(t->data, i8, 4) == 0, "I8 round trip");
    t = st_find(f, "nothing");
    CHECK(t && t->numel == 0 && t->dtype == DT_F32, "empty round trip");
    CHECK(st_metadata(f, "format") && strcmp(st_metadata(f, "format"), "pt") == 0, "format pt");
    st_close(f);

    /* Too little data is an error at finish. */
    CHECK(st_writer_begin(path, &w, &err) == 0, "begin");
    st_writer_declare(w, "a", DT_F32, 1, s4, &err);
    st_writer_write_header(w, &err);
    st_writer_write_data(w, i8, 4, &err);
    CHECK(st_writer_finish(w, &err) == -1 && strstr(err.msg, path), "short data accepted");

    /* abort after a header */
    CHECK(st_writer_begin(path, &w, &err) == 0, "begin");
    st_writer_declare(w, "a", DT_F32, 1, s4, &err);
    st_writer_abort(w);

    /* bad declarations */
    CHECK(st_writer_begin(path, &w, &err) == 0, "begin");
    int64_t neg[1] = {-1}, huge[3] = {(int64_t)1 << 40, (int64_t)1 << 40, 4};
    CHECK(st_writer_declare(w, "n", DT_F32, 1, neg, &err) == -1, "negative dim declared");
    CHECK(st_writer_declare(w, "h", DT_F32, 3, huge, &err) == -1, "huge tensor declared");
    CHECK(st_writer_declare(w, "d", DT_F32, 9, huge, &err) == -1, "9 dims declared");
    st_writer_abort(w);

    CHECK(st_writer_begin(tmp_path("no/such/dir.safetensors"), &w, &err) == -1 && strstr(err.msg, "no/such/dir"),
          "begin in a missing directory: %s", err.msg);

    /* A full disk: /dev/full fails every write with ENOSPC. */
    if (access("/dev/full", W_OK) == 0) {
        if (st_writer_begin("/dev/full", &w, &err) == 0) {
            st_writer_declare(w, "a", DT_F32, 1, s4, &err);
            int rc = st_writer_write_header(w, &err);
            CHECK(rc == -1 && strstr(err.msg, "/dev/full") && strstr(err.msg, "space"),
                  "ENOSPC not reported: %s", rc ? err.msg : "(no error)");
            st_writer_abort(w);
        }
    }
}

/* ---- config.json ----------------------------------------------------------------------- */

static const char *OPT_CFG =
    "{\"model_type\":\"opt\",\"vocab_size\":1000,\"hidden_size\":64,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":4,\"ffn_dim\":256,\"max_position_embeddings\":128%s}";
static const char *BLOOM_CFG = "{\"model_type\":\"bloom\",\"vocab_size\":1024%s}";

/* Writes a config from `tmpl` with `extra` put in place of its "%s" and loads it. */
static int load_cfg(const char *tmpl, const char *extra, ModelConfig *cfg, Error *err) {
    char text[2048];
    const char *at = strstr(tmpl, "%s");
    size_t head = at ? (size_t)(at - tmpl) : strlen(tmpl);
    snprintf(text, sizeof text, "%.*s%s%s", (int)head, tmpl, at ? extra : "", at ? at + 2 : "");
    const char *path = tmp_path("config.json");
    write_text(path, text);
    return config_load(path, cfg, err);
}

static void expect_cfg_error(const char *what, const char *tmpl, const char *extra, const char *w1, const char *w2) {
    ModelConfig cfg;
    Error err = {{0}};
    int rc = load_cfg(tmpl, extra, &cfg, &err);
    CHECK(rc == -1, "%s: accepted", what);
    if (rc != -1) return;
    if (verbose) fprintf(stderr, "  [%s] %s\n", what, err.msg);
    CHECK(strstr(err.msg, "config.json") != NULL, "%s: message does not name the file: %s", what, err.msg);
    CHECK(!w1 || strstr(err.msg, w1), "%s: message lacks '%s': %s", what, w1, err.msg);
    CHECK(!w2 || strstr(err.msg, w2), "%s: message lacks '%s': %s", what, w2, err.msg);
}

/* The OPT config above with one required field set to `value` (a JSON literal). */
static void expect_opt_field_error(const char *field, const char *value) {
    static const char *const fields[][2] = {
        {"vocab_size", "1000"}, {"hidden_size", "64"}, {"num_hidden_layers", "2"},
        {"num_attention_heads", "4"}, {"ffn_dim", "256"}, {"max_position_embeddings", "128"},
    };
    char tmpl[1024] = "{\"model_type\":\"opt\"";
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        size_t len = strlen(tmpl);
        bool mine = strcmp(fields[i][0], field) == 0;
        snprintf(tmpl + len, sizeof tmpl - len, ",\"%s\":%s", fields[i][0], mine ? "%s" : fields[i][1]);
    }
    strcat(tmpl, "}");
    char what[128];
    snprintf(what, sizeof what, "%s = %s", field, value);
    expect_cfg_error(what, tmpl, value, field, NULL);
}

static void test_config(void) {
    ModelConfig c;
    Error err;
    /* OPT with every optional field absent: transformers' defaults */
    if (load_cfg(OPT_CFG, "", &c, &err) == 0) {
        CHECK(c.arch == ARCH_OPT && c.vocab_size == 1000 && c.hidden == 64 && c.n_layers == 2 && c.n_heads == 4 &&
                  c.head_dim == 16 && c.ffn_dim == 256 && c.max_positions == 128, "OPT dims");
        CHECK(c.word_embed_proj_dim == 64 && c.activation == ACT_RELU && c.do_layer_norm_before &&
                  !c.remove_final_layer_norm && c.enable_bias && c.ln_elementwise_affine, "OPT defaults");
        CHECK(fabsf(c.ln_eps - 1e-5f) < 1e-12f, "OPT eps");
        CHECK(c.bos_id == -1 && c.eos_id == -1 && c.pad_id == -1, "absent token ids");
        CHECK(!c.load_in_8bit && c.int8_threshold == 6.0f && c.torch_dtype[0] == 0, "no quantization");
    } else {
        CHECK(0, "minimal OPT config refused: %s", err.msg);
    }
    if (load_cfg(OPT_CFG,
                 ",\"do_layer_norm_before\":false,\"_remove_final_layer_norm\":true,\"enable_bias\":false,"
                 "\"layer_norm_elementwise_affine\":false,\"word_embed_proj_dim\":32,\"activation_function\":\"gelu\","
                 "\"bos_token_id\":2,\"eos_token_id\":2,\"pad_token_id\":1,\"torch_dtype\":\"bfloat16\"",
                 &c, &err) == 0) {
        CHECK(!c.do_layer_norm_before && c.remove_final_layer_norm && !c.enable_bias && !c.ln_elementwise_affine,
              "OPT booleans");
        CHECK(c.word_embed_proj_dim == 32 && c.activation == ACT_GELU_TANH, "OPT proj dim / gelu");
        CHECK(c.bos_id == 2 && c.eos_id == 2 && c.pad_id == 1, "token ids");
        CHECK(strcmp(c.torch_dtype, "bfloat16") == 0, "torch_dtype");
    } else {
        CHECK(0, "full OPT config refused: %s", err.msg);
    }
    CHECK(load_cfg(OPT_CFG, ",\"word_embed_proj_dim\":null,\"dtype\":\"float32\"", &c, &err) == 0 &&
              c.word_embed_proj_dim == 64 && strcmp(c.torch_dtype, "float32") == 0, "null proj dim / dtype");
    CHECK(load_cfg("{\"model_type\":\"opt\",\"vocab_size\":10,\"d_model\":8,\"num_hidden_layers\":1,"
                   "\"num_attention_heads\":2,\"ffn_dim\":16,\"max_position_embeddings\":4%s}",
                   "", &c, &err) == 0 && c.hidden == 8, "d_model alias: %s", err.msg);

    /* BLOOM, with the modern and the legacy spellings */
    if (load_cfg(BLOOM_CFG, ",\"hidden_size\":64,\"n_layer\":2,\"n_head\":4,\"layer_norm_epsilon\":1e-6,"
                            "\"bos_token_id\":1,\"eos_token_id\":2,\"pad_token_id\":3",
                 &c, &err) == 0) {
        CHECK(c.arch == ARCH_BLOOM && c.hidden == 64 && c.n_layers == 2 && c.n_heads == 4 && c.ffn_dim == 256 &&
                  c.max_positions == 0 && c.word_embed_proj_dim == 64 && c.activation == ACT_GELU_TANH &&
                  !c.residual_post_ln, "BLOOM dims");
        CHECK(fabsf(c.ln_eps - 1e-6f) < 1e-12f, "BLOOM eps");
        CHECK(c.bos_id == 1 && c.eos_id == 2 && c.pad_id == 3, "BLOOM ids");
    } else {
        CHECK(0, "BLOOM config refused: %s", err.msg);
    }
    CHECK(load_cfg(BLOOM_CFG, ",\"n_embed\":32,\"num_hidden_layers\":3,\"num_attention_heads\":8,"
                              "\"apply_residual_connection_post_layernorm\":true",
                   &c, &err) == 0 && c.hidden == 32 && c.n_layers == 3 && c.n_heads == 8 && c.residual_post_ln,
          "BLOOM legacy aliases: %s", err.msg);
    CHECK(load_cfg(BLOOM_CFG, ",\"n_embed\":32,\"hidden_size\":32,\"n_layer\":3,\"n_head\":8", &c, &err) == 0,
          "agreeing aliases: %s", err.msg);
    expect_cfg_error("conflicting aliases", BLOOM_CFG, ",\"n_embed\":32,\"hidden_size\":64,\"n_layer\":3,\"n_head\":8",
                     "hidden_size", "n_embed");

    /* required fields, values and types */
    expect_cfg_error("missing ffn_dim",
                     "{\"model_type\":\"opt\",\"vocab_size\":1000,\"hidden_size\":64,\"num_hidden_layers\":2,"
                     "\"num_attention_heads\":4,\"max_position_embeddings\":128%s}",
                     "", "ffn_dim", "missing");
    expect_cfg_error("missing vocab_size", "{\"model_type\":\"bloom\",\"hidden_size\":64,\"n_layer\":2,\"n_head\":4%s}",
                     "", "vocab_size", "missing");
    expect_cfg_error("missing n_layer", BLOOM_CFG, ",\"hidden_size\":64,\"n_head\":4", "n_layer", "missing");
    expect_cfg_error("null hidden", BLOOM_CFG, ",\"hidden_size\":null,\"n_layer\":2,\"n_head\":4", "hidden_size",
                     "missing");
    const char *bad_values[] = {"-5", "0", "1e12", "2147483648", "64.5", "\"64\"", "true", "[64]", "{}"};
    const char *dims[] = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim",
                          "max_position_embeddings"};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        for (size_t j = 0; j < sizeof bad_values / sizeof bad_values[0]; j++) expect_opt_field_error(dims[i], bad_values[j]);
    expect_opt_field_error("num_hidden_layers", "5000");
    expect_opt_field_error("ffn_dim", "2000000");
    expect_opt_field_error("vocab_size", "20000000");
    expect_opt_field_error("hidden_size", "1000000");
    expect_cfg_error("duplicate key", OPT_CFG, ",\"vocab_size\":5", "vocab_size", "twice");
    expect_cfg_error("heads not dividing hidden", BLOOM_CFG, ",\"hidden_size\":64,\"n_layer\":2,\"n_head\":5",
                     "n_head", "divide");
    expect_cfg_error("more heads than hidden", BLOOM_CFG, ",\"hidden_size\":64,\"n_layer\":2,\"n_head\":128",
                     "n_head", NULL);
    expect_cfg_error("bool as string", OPT_CFG, ",\"enable_bias\":\"yes\"", "enable_bias", NULL);
    expect_cfg_error("unknown activation", OPT_CFG, ",\"activation_function\":\"silu\"", "silu", NULL);
    expect_cfg_error("token id as string", OPT_CFG, ",\"eos_token_id\":\"2\"", "eos_token_id", NULL);
    CHECK(load_cfg(OPT_CFG, ",\"pad_token_id\":5000", &c, &err) == 0 && c.pad_id == -1, "out-of-vocab id ignored");
    expect_cfg_error("bad epsilon", BLOOM_CFG, ",\"hidden_size\":64,\"n_layer\":2,\"n_head\":4,\"layer_norm_epsilon\":-1",
                     "layer_norm_epsilon", NULL);

    expect_cfg_error("unknown model_type", "{\"model_type\":\"llama\"%s}", "", "llama", "\"opt\", \"bloom\"");
    expect_cfg_error("missing model_type", "{\"vocab_size\":5%s}", "", "model_type", NULL);
    expect_cfg_error("model_type not a string", "{\"model_type\":7%s}", "", "model_type", NULL);
    expect_cfg_error("invalid JSON", "{\"model_type\":\"opt\",%s", "", "JSON", NULL);
    expect_cfg_error("trailing garbage", "{\"model_type\":\"opt\"}%s", "xx", "JSON", NULL);
    expect_cfg_error("not an object", "[1,2]%s", "", "JSON", NULL);
    expect_cfg_error("empty file", "%s", "", "JSON", NULL);

    /* quantization_config (SPEC §2.3) */
    CHECK(load_cfg(OPT_CFG, ",\"quantization_config\":{\"quant_method\":\"bitsandbytes\",\"load_in_8bit\":true,"
                            "\"load_in_4bit\":false,\"llm_int8_threshold\":4.5}",
                   &c, &err) == 0 && c.load_in_8bit && c.int8_threshold == 4.5f, "8-bit config: %s", err.msg);
    CHECK(load_cfg(OPT_CFG, ",\"quantization_config\":{\"quant_method\":\"bitsandbytes\",\"_load_in_8bit\":true}",
                   &c, &err) == 0 && c.load_in_8bit && c.int8_threshold == 6.0f, "_load_in_8bit, default threshold");
    CHECK(load_cfg(OPT_CFG, ",\"quantization_config\":{\"load_in_8bit\":true,\"llm_int8_threshold\":0.0}", &c,
                   &err) == 0 && c.load_in_8bit && c.int8_threshold == 0.0f, "no quant_method, threshold 0");
    CHECK(load_cfg(OPT_CFG, ",\"quantization_config\":{\"quant_method\":\"bitsandbytes\",\"load_in_8bit\":false}",
                   &c, &err) == 0 && !c.load_in_8bit, "bitsandbytes without 8-bit");
    CHECK(load_cfg(OPT_CFG, ",\"quantization_config\":null", &c, &err) == 0 && !c.load_in_8bit, "null block");
    expect_cfg_error("4-bit", OPT_CFG, ",\"quantization_config\":{\"quant_method\":\"bitsandbytes\",\"load_in_4bit\":true}",
                     "4-bit checkpoints are not supported", NULL);
    expect_cfg_error("gptq", OPT_CFG, ",\"quantization_config\":{\"quant_method\":\"gptq\"}", "gptq", NULL);
    expect_cfg_error("bad threshold", OPT_CFG,
                     ",\"quantization_config\":{\"quant_method\":\"bitsandbytes\",\"load_in_8bit\":true,"
                     "\"llm_int8_threshold\":-1}",
                     "llm_int8_threshold", NULL);
    expect_cfg_error("load_in_8bit not a bool", OPT_CFG, ",\"quantization_config\":{\"load_in_8bit\":1}",
                     "load_in_8bit", NULL);

    CHECK(config_load(tmp_path("missing.json"), &c, &err) == -1 && strstr(err.msg, "missing.json"), "missing file");
    CHECK(strcmp(arch_name(ARCH_OPT), "opt") == 0 && strcmp(arch_name(ARCH_BLOOM), "bloom") == 0, "arch_name");
}

/* ---- checkpoint directories -------------------------------------------------------------- */

static void test_fixtures(void) {
    const char *names[] = {"opt-tiny", "opt-tiny-postln", "opt-tiny-sharded", "opt-tiny-v50272",
                           "bloom-tiny", "bloom-tiny-bf16"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        char dir[256];
        snprintf(dir, sizeof dir, "%s/%s", TEST_FIXTURES, names[k]);
        Checkpoint *ck;
        Error err;
        if (checkpoint_open(dir, &ck, &err)) { CHECK(0, "%s: %s", names[k], err.msg); continue; }
        const ModelConfig *c = checkpoint_config(ck);
        const StTensor *t;
        CHECK(strcmp(checkpoint_dir(ck), dir) == 0, "dir");
        CHECK(checkpoint_count(ck) > 0 && checkpoint_tensor(ck, checkpoint_count(ck)) == NULL, "count");
        unsigned mask = strstr(names[k], "bf16") ? DT_MASK(DT_BF16) : DT_MASK(DT_F16);
        if (c->arch == ARCH_OPT) {
            int64_t emb[2] = {c->vocab_size, c->word_embed_proj_dim}, pos[2] = {c->max_positions + 2, c->hidden};
            int64_t fc1[2] = {c->ffn_dim, c->hidden}, fc2[2] = {c->hidden, c->ffn_dim}, q[2] = {c->hidden, c->hidden};
            CHECK(checkpoint_require(ck, "decoder.embed_tokens.weight", 2, emb, mask, &t, &err) == 0, "%s: %s",
                  names[k], err.msg);
            CHECK(checkpoint_require(ck, "decoder.embed_positions.weight", 2, pos, mask, &t, &err) == 0, "%s: %s",
                  names[k], err.msg);
            for (int l = 0; l < c->n_layers; l++) {
                char n[128];
                snprintf(n, sizeof n, "decoder.layers.%d.fc1.weight", l);
                CHECK(checkpoint_require(ck, n, 2, fc1, mask, &t, &err) == 0, "%s: %s", names[k], err.msg);
                snprintf(n, sizeof n, "decoder.layers.%d.fc2.weight", l);
                CHECK(checkpoint_require(ck, n, 2, fc2, mask, &t, &err) == 0, "%s: %s", names[k], err.msg);
                snprintf(n, sizeof n, "decoder.layers.%d.self_attn.v_proj.weight", l);
                CHECK(checkpoint_require(ck, n, 2, q, mask, &t, &err) == 0, "%s: %s", names[k], err.msg);
            }
            if (c->word_embed_proj_dim != c->hidden) {
                int64_t pin[2] = {c->hidden, c->word_embed_proj_dim};
                CHECK(checkpoint_require(ck, "decoder.project_in.weight", 2, pin, mask, &t, &err) == 0, "%s: %s",
                      names[k], err.msg);
            }
            /* with the prefix too */
            CHECK(checkpoint_find(ck, "model.decoder.embed_tokens.weight") == NULL,
                  "lookup is by short name only");
            t = checkpoint_find(ck, "decoder.embed_tokens.weight");
            CHECK(t && strcmp(checkpoint_short_name(ck, t->name), "decoder.embed_tokens.weight") == 0, "short name");
        } else {
            int64_t emb[2] = {c->vocab_size, c->hidden}, qkv[2] = {3 * c->hidden, c->hidden};
            int64_t up[2] = {4 * c->hidden, c->hidden}, ln[1] = {c->hidden};
            CHECK(checkpoint_require(ck, "word_embeddings.weight", 2, emb, mask, &t, &err) == 0, "%s: %s", names[k],
                  err.msg);
            CHECK(checkpoint_require(ck, "h.1.self_attention.query_key_value.weight", 2, qkv, mask, &t, &err) == 0,
                  "%s: %s", names[k], err.msg);
            CHECK(checkpoint_require(ck, "h.0.mlp.dense_h_to_4h.weight", 2, up, mask, &t, &err) == 0, "%s: %s",
                  names[k], err.msg);
            CHECK(checkpoint_require(ck, "ln_f.weight", 1, ln, mask, &t, &err) == 0, "%s: %s", names[k], err.msg);
            CHECK(strcmp(checkpoint_short_name(ck, "transformer.h.0.x"), "h.0.x") == 0, "bloom short name");
        }
        if (strcmp(names[k], "opt-tiny-sharded") == 0) {
            /* tensors of both shards are visible, each from its own file */
            const StTensor *a = checkpoint_find(ck, "decoder.embed_tokens.weight");
            const StTensor *b = checkpoint_find(ck, "decoder.layers.1.fc2.weight");
            CHECK(a && b && strstr(a->file, "model-00001-of-00002") && strstr(b->file, "model-00002-of-00002"),
                  "shard files");
            CHECK(checkpoint_count(ck) == 36, "sharded count %zu", checkpoint_count(ck));
        }
        if (strcmp(names[k], "opt-tiny") == 0) {
            int64_t bad[2] = {256, 32};
            CHECK(checkpoint_require(ck, "decoder.layers.0.fc1.weight", 2, bad, DT_FLOAT_MASK, &t, &err) == -1 &&
                      strstr(err.msg, "model.safetensors") && strstr(err.msg, "decoder.layers.0.fc1.weight") &&
                      strstr(err.msg, "[256, 64]") && strstr(err.msg, "[256, 32]"),
                  "shape message: %s", err.msg);
            int64_t fc1[2] = {256, 64};
            CHECK(checkpoint_require(ck, "decoder.layers.0.fc1.weight", 2, fc1, DT_MASK(DT_I8), &t, &err) == -1 &&
                      strstr(err.msg, "F16") && strstr(err.msg, "I8"), "dtype message: %s", err.msg);
            CHECK(checkpoint_require(ck, "decoder.layers.9.fc1.weight", 2, fc1, DT_FLOAT_MASK, &t, &err) == -1 &&
                      strstr(err.msg, "missing") && strstr(err.msg, "decoder.layers.9.fc1.weight") &&
                      strstr(err.msg, "model.safetensors"), "missing message: %s", err.msg);
            CHECK(t == NULL, "out on failure");
        }
        checkpoint_close(ck);
    }
}

/* Copies a fixture file into the temp checkpoint directory `dir`. */
static void copy_file(const char *from, const char *to) {
    size_t len;
    void *data = test_read_file(from, &len);
    if (!data) { perror(from); exit(1); }
    write_bytes(to, data, len);
    free(data);
}

static void expect_ck_error(const char *what, const char *dir, const char *w1, const char *w2) {
    Checkpoint *ck = NULL;
    Error err = {{0}};
    int rc = checkpoint_open(dir, &ck, &err);
    CHECK(rc == -1 && !ck, "%s: accepted", what);
    if (rc != -1) { checkpoint_close(ck); return; }
    if (verbose) fprintf(stderr, "  [%s] %s\n", what, err.msg);
    CHECK(!w1 || strstr(err.msg, w1), "%s: message lacks '%s': %s", what, w1, err.msg);
    CHECK(!w2 || strstr(err.msg, w2), "%s: message lacks '%s': %s", what, w2, err.msg);
}

static void test_checkpoint_dirs(void) {
    char dir[128];
    snprintf(dir, sizeof dir, "%s/ck", tmpdir);
    mkdir(dir, 0755);
    char cfg[256], single[256], index[256];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);

    expect_ck_error("no config", dir, "config.json", dir);
    copy_file(TEST_FIXTURES "/opt-tiny/config.json", cfg);
    expect_ck_error("no weights", dir, "model.safetensors", "model.safetensors.index.json");

    /* unprefixed and prefixed names mixed; lm_head kept as its own name */
    const char *mixed = "{\"decoder.a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]},"
                        "\"model.decoder.b\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]},"
                        "\"lm_head.weight\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[4,6]}}";
    write_st(single, mixed, 6);
    Checkpoint *ck;
    Error err;
    if (checkpoint_open(dir, &ck, &err) == 0) {
        CHECK(checkpoint_find(ck, "decoder.a") && checkpoint_find(ck, "decoder.b") &&
                  checkpoint_find(ck, "lm_head.weight"), "mixed prefixes");
        checkpoint_close(ck);
    } else {
        CHECK(0, "mixed prefixes refused: %s", err.msg);
    }
    write_st(single, "{\"decoder.a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]},"
                     "\"model.decoder.a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]}}", 4);
    expect_ck_error("same short name twice", dir, "decoder.a", "twice");
    write_st(single, "{\"a\":", 0);
    expect_ck_error("bad model file", dir, single, "JSON");
    write_text(cfg, "{\"model_type\":\"opt\"");
    expect_ck_error("bad config", dir, "config.json", "JSON");
    copy_file(TEST_FIXTURES "/opt-tiny/config.json", cfg);

    /* sharded: index + two shards */
    remove(single);
    write_st(tmp_path("ck/s1.safetensors"), "{\"model.decoder.a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2);
    write_st(tmp_path("ck/s2.safetensors"), "{\"model.decoder.b\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]}}", 2);
    write_text(index, "{\"metadata\":{\"total_size\":4},\"weight_map\":{\"model.decoder.a\":\"s1.safetensors\","
                      "\"model.decoder.b\":\"s2.safetensors\"}}");
    if (checkpoint_open(dir, &ck, &err) == 0) {
        CHECK(checkpoint_count(ck) == 2 && checkpoint_find(ck, "decoder.a") && checkpoint_find(ck, "decoder.b"),
              "sharded lookup");
        int64_t s[1] = {1};
        const StTensor *t;
        CHECK(checkpoint_require(ck, "decoder.c", 1, s, DT_FLOAT_MASK, &t, &err) == -1 && strstr(err.msg, "shards"),
              "sharded missing message: %s", err.msg);
        checkpoint_close(ck);
    } else {
        CHECK(0, "sharded refused: %s", err.msg);
    }
    write_text(index, "{\"weight_map\":{\"model.decoder.a\":\"s1.safetensors\",\"model.decoder.b\":\"s3.safetensors\"}}");
    expect_ck_error("missing shard", dir, "s3.safetensors", "does not exist");
    write_text(index, "{\"weight_map\":{\"model.decoder.a\":\"../s1.safetensors\"}}");
    expect_ck_error("shard with ..", dir, "../s1.safetensors", "plain file name");
    write_text(index, "{\"weight_map\":{\"model.decoder.a\":\"..\"}}");
    expect_ck_error("shard ..", dir, "..", "plain file name");
    write_text(index, "{\"weight_map\":{\"model.decoder.a\":\"/etc/passwd\"}}");
    expect_ck_error("absolute shard", dir, "/etc/passwd", "plain file name");
    write_text(index, "{\"weight_map\":{\"model.decoder.a\":\"s2.safetensors\"}}");
    expect_ck_error("tensor not in its shard", dir, "model.decoder.a", "s2.safetensors");
    write_text(index, "{\"weight_map\":{\"model.decoder.a\":5}}");
    expect_ck_error("shard not a string", dir, "model.decoder.a", NULL);
    write_text(index, "{\"weight_map\":{}}");
    expect_ck_error("empty weight map", dir, "weight_map", NULL);
    write_text(index, "{\"weight_map\":");
    expect_ck_error("bad index JSON", dir, "model.safetensors.index.json", "JSON");
    write_text(index, "{\"weight_map\":{\"model.decoder.a\":\"s1.safetensors\",\"decoder.a\":\"s1.safetensors\"}}");
    write_st(tmp_path("ck/s1.safetensors"), "{\"model.decoder.a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,2]},"
                                            "\"decoder.a\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]}}", 4);
    expect_ck_error("duplicate across prefixes in shards", dir, "decoder.a", "twice");
}

/* ---- st_check_values: the rule for values a model must not use ----------------------- */

static void test_check_values(void) {
    uint16_t h[6] = {0x3c00, 0x7bff, 0xfbff, 0x0001, 0x0000, 0x8000}; /* 1, +-65504, tiny, +-0 */
    float f[4] = {1.0f, -65519.0f, 2.0f, 3.0f};
    StTensor th = {.name = "w.weight", .dtype = DT_F16, .ndim = 2, .shape = {2, 3}, .numel = 6, .data = h,
                   .nbytes = sizeof h, .file = "m.safetensors"};
    StTensor tf = {.name = "b", .dtype = DT_F32, .ndim = 1, .shape = {4}, .numel = 4, .data = f, .nbytes = sizeof f,
                   .file = "m.safetensors"};
    Error err;
    CHECK(st_check_values(&th, true, &err) == 0 && st_check_values(&tf, true, &err) == 0, "finite values pass");
    h[4] = 0x7e00; /* NaN at row 1, column 1 */
    CHECK(st_check_values(&th, false, &err) != 0 && strstr(err.msg, "m.safetensors") && strstr(err.msg, "'w.weight'") &&
              strstr(err.msg, "element 4 (row 1, column 1)") && strstr(err.msg, "nan") && strstr(err.msg, "not a finite"),
          "F16 NaN: %s", err.msg);
    f[2] = 65520.0f; /* finite, but infinity in float16 */
    CHECK(st_check_values(&tf, false, &err) == 0, "65520 is finite");
    CHECK(st_check_values(&tf, true, &err) != 0 && strstr(err.msg, "element 2 is 65520") && strstr(err.msg, "65504"),
          "F32 65520 does not fit float16: %s", err.msg);
    int8_t q[2] = {-128, 127};
    StTensor ti = {.name = "q", .dtype = DT_I8, .ndim = 1, .shape = {2}, .numel = 2, .data = q, .nbytes = 2, .file = "m"};
    CHECK(st_check_values(&ti, true, &err) == 0, "integers pass");
}

int main(void) {
    verbose = getenv("VERBOSE") != NULL;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/llmint8-st-XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_good_file();
    test_hostile_files();
    test_writer();
    test_config();
    test_fixtures();
    test_checkpoint_dirs();
    test_check_values();
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_finish("safetensors");
}
