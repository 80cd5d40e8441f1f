/* fuzz_torchbin.c — torchbin_open() on arbitrary bytes.
 *
 * An input whose first byte is even is a whole pytorch_model.bin (the zip reader, libzip's
 * and ours). An odd first byte means: 2 bytes little-endian length N, N bytes of data.pkl,
 * and the rest R storage bytes; the harness writes a valid archive around them with libzip
 * (archive/data.pkl; archive/data/0 = R, data/1 = the first half of R, data/2 = its last
 * 7 bytes, data/3 = empty), so that mutations reach the pickle and the views instead of
 * failing the zip CRC. Either way, Whatever torchbin_open accepts must keep the
 * promises of torchbin.h / safetensors.h: numel is the product of the shape, nbytes equals
 * numel x dtype size, data is aligned to the element size, names are unique and findable.
 * The first and last byte of every tensor are read so that ASan sees any pointer outside the
 * mapping or the copies. A refusal must carry a message. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zip.h>

#include "fuzz_util.h"
#include "torchbin.h"

/* A stored zip of data.pkl and the four storages, in memory (malloc'ed, *len bytes). */
static uint8_t *make_archive(const uint8_t *pkl, size_t n_pkl, const uint8_t *rest, size_t n_rest, size_t *len) {
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *buf = zip_source_buffer_create(NULL, 0, 0, &ze);
    FUZZ_CHECK(buf, "buffer source");
    zip_source_keep(buf);
    zip_t *za = zip_open_from_source(buf, ZIP_TRUNCATE, &ze);
    FUZZ_CHECK(za, "zip_open_from_source");
    struct { const char *name; const uint8_t *p; size_t n; } m[] = {
        {"archive/data.pkl", pkl, n_pkl},       {"archive/data/0", rest, n_rest},
        {"archive/data/1", rest, n_rest / 2},   {"archive/data/2", rest + (n_rest > 7 ? n_rest - 7 : 0), n_rest > 7 ? 7 : n_rest},
        {"archive/data/3", rest, 0},
    };
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        zip_source_t *s = zip_source_buffer(za, m[i].p, m[i].n, 0);
        zip_int64_t idx = s ? zip_file_add(za, m[i].name, s, ZIP_FL_ENC_UTF_8) : -1;
        FUZZ_CHECK(idx >= 0 && zip_set_file_compression(za, (zip_uint64_t)idx, ZIP_CM_STORE, 0) == 0, "add %s",
                   m[i].name);
    }
    FUZZ_CHECK(zip_close(za) == 0, "zip_close");
    zip_stat_t st;
    FUZZ_CHECK(zip_source_stat(buf, &st) == 0 && zip_source_open(buf) == 0, "reopen");
    uint8_t *out = malloc(st.size ? st.size : 1);
    FUZZ_CHECK(out && zip_source_read(buf, out, st.size) == (zip_int64_t)st.size, "read back");
    zip_source_close(buf);
    zip_source_free(buf);
    zip_error_fini(&ze);
    *len = (size_t)st.size;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *built = NULL;
    if (size >= 3 && (data[0] & 1)) {
        size_t n_pkl = (size_t)data[1] | (size_t)data[2] << 8;
        if (n_pkl > size - 3) n_pkl = size - 3;
        built = make_archive(data + 3, n_pkl, data + 3 + n_pkl, size - 3 - n_pkl, &size);
        data = built;
    }
    const char *path = fuzz_memfile(data, size);
    StFile *f = NULL;
    Error err;
    err.msg[0] = 0;
    if (torchbin_open(path, &f, &err) != 0) {
        FUZZ_CHECK(f == NULL && err.msg[0] != 0, "torchbin_open failed without a message");
        free(built);
        return 0;
    }
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < st_count(f); i++) {
        const StTensor *t = st_tensor(f, i);
        FUZZ_CHECK(t && t->name && t->name[0], "tensor %zu without a name", i);
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS, "%s: ndim %d", t->name, t->ndim);
        FUZZ_CHECK((unsigned)t->dtype < DT_COUNT, "%s: dtype %d", t->name, (int)t->dtype);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            FUZZ_CHECK(t->shape[d] >= 0, "%s: negative dim", t->name);
            FUZZ_CHECK(!__builtin_mul_overflow(numel, t->shape[d], &numel), "%s: shape overflows", t->name);
        }
        FUZZ_CHECK(numel == t->numel, "%s: numel %lld, shape says %lld", t->name, (long long)t->numel,
                   (long long)numel);
        FUZZ_CHECK(t->nbytes == (size_t)t->numel * dtype_size(t->dtype), "%s: nbytes %zu", t->name, t->nbytes);
        FUZZ_CHECK(t->nbytes <= size, "%s: %zu bytes from a %zu-byte file", t->name, t->nbytes, size);
        FUZZ_CHECK((uintptr_t)t->data % dtype_size(t->dtype) == 0, "%s: misaligned", t->name);
        if (t->nbytes) {
            const uint8_t *b = t->data;
            sink ^= b[0];
            sink ^= b[t->nbytes - 1];
        }
        FUZZ_CHECK(st_find(f, t->name) == t, "%s: st_find gives another tensor", t->name);
        FUZZ_CHECK(t->file && strcmp(t->file, path) == 0, "%s: file is not the path", t->name);
    }
    (void)sink;
    st_close(f);
    free(built);
    return 0;
}
