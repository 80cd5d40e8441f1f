/* dump_logits.c — llmint8's logits for given token ids, as raw float32, for the interop
 * comparison with transformers + bitsandbytes (tools/interop/interop.py).
 *
 * Usage: dump_logits MODEL_DIR IDS_FILE OUT_FILE [int8|fp16] [THREADS]
 *
 *   IDS_FILE  token ids as decimal numbers separated by white space or commas (at most 4096)
 *   OUT_FILE  receives float32 little-endian logits [T, vocab] row-major: row t is the
 *             next-token distribution after ids[0..t], from one full forward pass over all T
 *             ids (as transformers' model(input_ids).logits[0]); vocab is config.json's
 *             vocab_size.
 *   int8      (default) LLM.int8(): threshold 6, outlier columns per call, as bitsandbytes.
 *             A checkpoint that is already 8-bit (from `llmint8 convert` or
 *             transformers' save_pretrained) is used as stored.
 *   fp16      the 16-bit weights as stored, no quantization.
 *   THREADS   CPU threads (default one per core).
 *
 * Prints "T V" on stdout on success. Built by interop.py from the library of a meson build
 * directory (libllmint8.a); it uses only the public headers of src/. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "checkpoint.h"
#include "model.h"

#define MAX_IDS 4096

/* Reads up to MAX_IDS non-negative decimal ids; returns the count, or -1 with a message. */
static int read_ids(const char *path, int32_t *ids, Error *err) {
    FILE *f = fopen(path, "r");
    if (!f) return err_set(err, "%s: %s", path, strerror(errno));
    int n = 0, c;
    long v = -1;
    while ((c = fgetc(f)) != EOF) {
        if (c >= '0' && c <= '9') {
            v = (v < 0 ? 0 : v * 10) + (c - '0');
            if (v > 100000000L) break;
        } else if (c == ',' || c == ' ' || c == '\n' || c == '\t' || c == '\r') {
            if (v >= 0) {
                if (n == MAX_IDS) break;
                ids[n++] = (int32_t)v;
            }
            v = -1;
        } else {
            break;
        }
    }
    bool bad = c != EOF;
    fclose(f);
    if (bad) return err_set(err, "%s: expected at most %d decimal token ids separated by spaces or commas", path, MAX_IDS);
    if (v >= 0) {
        if (n == MAX_IDS) return err_set(err, "%s: more than %d ids", path, MAX_IDS);
        ids[n++] = (int32_t)v;
    }
    if (n == 0) return err_set(err, "%s: no token ids", path);
    return n;
}

static int write_all(const char *path, const float *x, size_t n, Error *err) {
    FILE *f = fopen(path, "wb");
    if (!f) return err_set(err, "%s: %s", path, strerror(errno));
    bool ok = fwrite(x, sizeof *x, n, f) == n;
    if (fclose(f) != 0) ok = false;
    if (!ok) return err_set(err, "%s: write error", path);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 6) {
        fprintf(stderr, "usage: %s MODEL_DIR IDS_FILE OUT_FILE [int8|fp16] [THREADS]\n", argv[0]);
        return 2;
    }
    const char *mode = argc > 4 ? argv[4] : "int8";
    if (strcmp(mode, "int8") != 0 && strcmp(mode, "fp16") != 0) {
        fprintf(stderr, "dump_logits: precision '%s': expected int8 or fp16\n", mode);
        return 2;
    }
    int threads = argc > 5 ? atoi(argv[5]) : 0;
    bool int8 = strcmp(mode, "int8") == 0;

    Error err;
    static int32_t ids[MAX_IDS];
    int T = read_ids(argv[2], ids, &err);
    Checkpoint *ck = NULL;
    Backend *bk = NULL;
    Model *m = NULL;
    float *logits = NULL;
    int rc = T < 0 ? -1 : checkpoint_open(argv[1], &ck, &err);
    if (rc == 0 && !(bk = cpu_backend_create(threads, &err))) rc = -1;
    if (rc == 0) {
        ModelOptions mo = {.quant = {.mode = int8 ? QUANT_LLM_INT8 : QUANT_FP16,
                                     .threshold = int8 ? 6.0f : 0.0f,
                                     .outliers = OUTLIERS_PER_CALL},
                           .ctx = T, .batch_tokens = T};
        rc = model_load(ck, bk, &mo, &m, &err);
    }
    const int V = m ? m->cfg.vocab_size : 0;
    if (rc == 0 && !(logits = malloc((size_t)T * (size_t)V * sizeof *logits))) rc = err_set(&err, "out of memory");
    if (rc == 0) rc = model_forward(m, ids, T, true, logits, &err);
    if (rc == 0) rc = write_all(argv[3], logits, (size_t)T * (size_t)V, &err);
    if (rc == 0) printf("%d %d\n", T, V);
    else fprintf(stderr, "dump_logits: %s\n", err.msg);
    free(logits);
    if (m) model_free(m);
    if (bk) bk->destroy(bk);
    if (ck) checkpoint_close(ck);
    return rc == 0 ? 0 : 1;
}
