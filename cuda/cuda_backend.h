/* cuda_backend.h — what the CUDA backend offers beyond the Backend table (C-callable):
 * a test hook. cuda_backend_create() itself is declared in src/backend.h; failures of
 * operations come back through the table's sync(), the device's name through describe(). */
#ifndef LLMINT8_CUDA_BACKEND_H
#define LLMINT8_CUDA_BACKEND_H

#include <stdint.h>

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

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
