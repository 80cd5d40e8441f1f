/* cuda_backend.h — what the CUDA backend offers beyond the Backend table (C-callable).
 *
 * cuda_backend_create() itself is declared in src/backend.h. Backend operations cannot
 * return errors; a CUDA failure inside one is recorded as a sticky error (printed once to
 * stderr, later operations skipped, downloads filled with NaN). cuda_backend_check()
 * turns it into an Error for callers that want to stop cleanly. */
#ifndef LLMINT8_CUDA_BACKEND_H
#define LLMINT8_CUDA_BACKEND_H

#include <stdint.h>

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Waits for the GPU; returns 0, or -1 with the sticky error's message in err. */
int cuda_backend_check(Backend *bk, Error *err);

/* "NVIDIA H100 80GB HBM3 (compute capability 9.0)" */
const char *cuda_backend_device(const Backend *bk);

/* For tests: runs the int8 projection l on T rows of host activations x [T, cols] and
 * returns y [T, rows], the exact int32 accumulators C32 [T, rows] as quant_ref_linear
 * defines them (outlier columns excluded), SCA [T], and (per-call outlier scope) the sorted
 * outlier columns (capacity cols) and their count (0 otherwise). Any output may be NULL
 * except y. */
int cuda_backend_debug_int8(Backend *bk, const BkLinear *l, const float *x, int T, float *y, int32_t *acc,
                            float *sca, int64_t *outlier_cols, int64_t *n_outliers, Error *err);

#ifdef __cplusplus
}
#endif

#endif
