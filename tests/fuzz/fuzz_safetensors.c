/* fuzz_safetensors.c — st_open() on arbitrary bytes.
 *
 * The input is the whole .safetensors file. Whatever st_open accepts must keep the
 * promises of safetensors.h: every tensor's bytes lie inside the mapping, nbytes equals
 * numel x dtype size, numel is the product of the shape, names are unique and findable.
 * We read the first and last byte of every tensor so that ASan sees any pointer that
 * escapes the file. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fuzz_util.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_memfile(data, size);
    StFile *f = NULL;
    Error err;
    err.msg[0] = 0;
    if (st_open(path, &f, &err) != 0) {
        FUZZ_CHECK(err.msg[0] != 0, "st_open failed without a message");
        return 0;
    }
    volatile uint8_t sink = 0;
    size_t n = st_count(f);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const StTensor *t = st_tensor(f, i);
        FUZZ_CHECK(t && t->name, "tensor %zu missing", i);
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS, "%s: ndim %d", t->name, t->ndim);
        FUZZ_CHECK((unsigned)t->dtype < DT_COUNT, "%s: dtype %d", t->name, (int)t->dtype);
        /* numel = product of the shape; a zero dim makes it 0 whatever the others are. */
        int64_t numel = 1;
        bool overflow = false, zero = false;
        for (int d = 0; d < t->ndim; d++) {
            FUZZ_CHECK(t->shape[d] >= 0, "%s: negative dim", t->name);
            if (t->shape[d] == 0) zero = true;
            else if (!overflow) overflow = __builtin_mul_overflow(numel, t->shape[d], &numel);
        }
        if (zero) numel = 0;
        FUZZ_CHECK(!overflow || zero, "%s: accepted a shape whose product overflows", t->name);
        FUZZ_CHECK(numel == t->numel, "%s: numel %lld, shape says %lld", t->name, (long long)t->numel,
                   (long long)numel);
        FUZZ_CHECK(t->nbytes == (size_t)t->numel * dtype_size(t->dtype), "%s: nbytes %zu for numel %lld",
                   t->name, t->nbytes, (long long)t->numel);
        FUZZ_CHECK(t->nbytes <= size, "%s: nbytes %zu > file size %zu", t->name, t->nbytes, size);
        total += t->nbytes;
        FUZZ_CHECK(total <= size, "tensors overlap: %zu bytes in a %zu-byte file", total, size);
        if (t->nbytes) {
            const uint8_t *b = t->data;
            sink ^= b[0];
            sink ^= b[t->nbytes - 1];
        }
        FUZZ_CHECK(st_find(f, t->name) == t, "%s: st_find gives another tensor (duplicate name?)", t->name);
    }
    (void)sink;
    st_find(f, "");
    st_find(f, "__metadata__");
    st_metadata(f, "format");
    st_metadata(f, "");
    FUZZ_CHECK(st_path(f) != NULL, "no path");
    st_close(f);
    return 0;
}
