/* fuzz_torchbin.c — torchbin_open() on arbitrary bytes.
 *
 * The input is a whole pytorch_model.bin. Whatever torchbin_open accepts must keep the
 * promises of torchbin.h / safetensors.h: numel is the product of the shape, nbytes equals
 * numel x dtype size, data is aligned to the element size, names are unique and findable.
 * The first and last byte of every tensor are read so that ASan sees any pointer outside the
 * mapping or the copies. A refusal must carry a message. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fuzz_util.h"
#include "torchbin.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_memfile(data, size);
    StFile *f = NULL;
    Error err;
    err.msg[0] = 0;
    if (torchbin_open(path, &f, &err) != 0) {
        FUZZ_CHECK(f == NULL && err.msg[0] != 0, "torchbin_open failed without a message");
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
    return 0;
}
