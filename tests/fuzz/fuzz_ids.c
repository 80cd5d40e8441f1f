/* fuzz_ids.c — cli_read_ids(), the `--ids FILE` reader, on arbitrary bytes.
 *
 * The first byte picks the vocabulary size (0-6: 1, 2, 10, 1000, the real 50272 and
 * 250880, INT32_MAX; 7-255: itself); the rest is the file. Whatever
 * the reader accepts must be at least one id, each inside [0, vocab). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cli.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const int vocabs[] = {1, 2, 10, 1000, 50272, 250880, INT32_MAX};
    int vocab = data[0] < 7 ? vocabs[data[0]] : data[0];
    const char *path = fuzz_memfile(data + 1, size - 1);
    int32_t *ids = NULL;
    size_t n = 0;
    Error err;
    err.msg[0] = 0;
    if (cli_read_ids(path, vocab, &ids, &n, &err) != 0) {
        FUZZ_CHECK(err.msg[0] != 0, "cli_read_ids failed without a message");
        /* The message quotes the offending token: "(1000)". An empty quote means it was read
         * from freed memory (ASan does not see reads made inside vsnprintf). */
        const char *q = strstr(err.msg, " is outside the vocabulary");
        if (q) FUZZ_CHECK(q[-1] == ')' && q[-2] >= '0' && q[-2] <= '9', "bad quote in: %s", err.msg);
        return 0;
    }
    FUZZ_CHECK(n >= 1 && n <= size, "%zu ids from %zu bytes", n, size);
    for (size_t i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab, "id %d outside [0, %d)", ids[i], vocab);
    free(ids);
    return 0;
}
