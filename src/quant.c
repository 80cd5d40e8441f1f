/* quant.c — the scalar reference of LLM.int8() (docs/QUANT.md).
 *
 * Nothing here is fast: these loops are the definition that the CPU backend's
 * kernels (src/cpu/cpu_int8.c) and the CUDA kernels must reproduce, and that the
 * tests compare against. The formulas are in quant.h. */
#include "quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const MODE_NAMES[QUANT_MODE_COUNT] = {
    [QUANT_FP16] = "fp16",
    [QUANT_LLM_INT8] = "llm.int8",
    [QUANT_VECTORWISE] = "vectorwise",
    [QUANT_ROWWISE] = "rowwise",
    [QUANT_ROWWISE_DECOMP] = "rowwise+decomp",
    [QUANT_ABSMAX] = "absmax",
    [QUANT_ZEROPOINT] = "zeropoint",
    [QUANT_VECTORWISE_ZEROPOINT] = "vectorwise-zeropoint",
    [QUANT_LLM_INT8_ZEROPOINT] = "llm.int8-zeropoint",
};

const char *quant_mode_name(QuantMode m) {
    return (unsigned)m < QUANT_MODE_COUNT ? MODE_NAMES[m] : "?";
}

int quant_mode_parse(const char *s, QuantMode *out) {
    if (!s) return -1;
    for (int m = 0; m < QUANT_MODE_COUNT; m++) {
        if (strcmp(s, MODE_NAMES[m]) == 0) {
            *out = (QuantMode)m;
            return 0;
        }
    }
    return -1;
}

bool quant_mode_is_rowwise_int8(QuantMode m) {
    switch (m) {
    case QUANT_LLM_INT8:
    case QUANT_VECTORWISE:
    case QUANT_ROWWISE:
    case QUANT_ROWWISE_DECOMP:
    case QUANT_VECTORWISE_ZEROPOINT:
    case QUANT_LLM_INT8_ZEROPOINT: return true;
    default: return false;
    }
}

bool quant_mode_uses_decomposition(QuantMode m) {
    return m == QUANT_LLM_INT8 || m == QUANT_ROWWISE_DECOMP || m == QUANT_LLM_INT8_ZEROPOINT;
}

/* rne(v) saturated to [-127, 127], NaN -> 0. For values computed as x * (127/absmax)
 * with |x| <= absmax the saturation never changes the result (the product is at most
 * a rounding error above 127); it only keeps garbage inputs (inf, NaN) defined. */
static int8_t sat_rne127(float v) {
    if (v != v) return 0;
    if (v > 127.0f) v = 127.0f;
    if (v < -127.0f) v = -127.0f;
    return (int8_t)quant_rne(v);
}

/* Element i of a float-typed weight as bnb quantizes it: rounded to fp16 (a no-op for
 * F16 data, which is by far the common case, so skip the conversion there). */
static inline float weight_f16(DType dt, const void *w, size_t i) {
    if (dt == DT_F16) return f16_to_f32(((const uint16_t *)w)[i]);
    return f16_to_f32(f32_to_f16(dtype_load_f32(dt, w, i)));
}

void quant_weight_rowwise(DType dt, const void *w, int64_t rows, int64_t cols, int8_t *cb, float *scb) {
    for (int64_t r = 0; r < rows; r++) {
        size_t base = (size_t)r * (size_t)cols;
        /* bnb casts the weight to fp16 before anything else (Int8Params._quantize). */
        float absmax = 0.0f;
        for (int64_t c = 0; c < cols; c++) {
            float a = fabsf(weight_f16(dt, w, base + (size_t)c));
            if (a > absmax) absmax = a;
        }
        float scale = quant_scale127(absmax);
        for (int64_t c = 0; c < cols; c++)
            cb[base + (size_t)c] = sat_rne127(weight_f16(dt, w, base + (size_t)c) * scale);
        scb[r] = absmax;
    }
}

int quant_check_int8_source(DType dt, const void *data, const float *scb, int64_t rows, int64_t cols,
                            Error *err) {
    if (cols > QUANT_MAX_EXACT_K)
        return err_set(err, "int8 projection: in_features %lld is above %d, where int32 accumulation of the "
                            "int8 product could overflow", (long long)cols, QUANT_MAX_EXACT_K);
    if (dt != DT_I8) return 0;
    if (!scb)
        return err_set(err, "int8 weight [%lld x %lld] comes without its SCB scales", (long long)rows,
                       (long long)cols);
    for (int64_t n = 0; n < rows; n++) {
        float s;
        memcpy(&s, scb + n, sizeof s);
        if (!(s >= 0.0f && s <= QUANT_MAX_SCB))
            return err_set(err, "int8 weight: SCB[%lld] = %g is not a scale in [0, 65504] (the absmax of a row "
                                "of fp16 weights)", (long long)n, (double)s);
    }
    /* One pass over all the codes; a row-by-row loop would stop earlier but is no cheaper
     * for a valid weight, which is the common case. */
    const int8_t *cb = data;
    const size_t n_codes = (size_t)rows * (size_t)cols;
    unsigned char any = 0;
    for (size_t i = 0; i < n_codes; i++) any |= (unsigned char)(cb[i] == -128);
    if (any)
        for (size_t i = 0; i < n_codes; i++)
            if (cb[i] == -128)
                return err_set(err, "int8 weight: row %lld holds the code -128, which bitsandbytes never writes "
                                    "(its codes are in [-127, 127])", (long long)(i / (size_t)cols));
    return 0;
}

void quant_ref_linear(const float *x, int64_t T, int64_t K, const int8_t *cb, const float *scb,
                      int64_t N, const float *bias, float threshold, OutlierScope scope, float *y,
                      int32_t *acc32, float *sca, int64_t *outlier_cols, int64_t *n_outliers) {
    /* tau = 0 (or a NaN / negative threshold) turns the decomposition off. */
    const float tau = threshold > 0.0f ? threshold : 0.0f;
    const bool per_call = scope == OUTLIERS_PER_CALL;
    bool *is_outlier_col = calloc((size_t)(K > 0 ? K : 1), sizeof *is_outlier_col);
    int8_t *ca = malloc((size_t)(K > 0 ? K : 1));
    if (!is_outlier_col || !ca) { /* no way to report it: make the failure impossible to miss */
        for (int64_t i = 0; i < T * N; i++) y[i] = NAN;
        free(is_outlier_col);
        free(ca);
        if (n_outliers) *n_outliers = 0;
        return;
    }

    /* Outlier columns: any row of the call with |x| >= tau (docs/QUANT.md, "Outlier decomposition"). Under the
     * per-token scope the same set is "columns where some row has an outlier entry". */
    int64_t n_out = 0;
    if (tau > 0.0f) {
        for (int64_t t = 0; t < T; t++)
            for (int64_t k = 0; k < K; k++)
                if (fabsf(x[t * K + k]) >= tau) is_outlier_col[k] = true;
        for (int64_t k = 0; k < K; k++) {
            if (!is_outlier_col[k]) continue;
            if (outlier_cols) outlier_cols[n_out] = k;
            n_out++;
        }
    }
    if (n_outliers) *n_outliers = n_out;

    for (int64_t t = 0; t < T; t++) {
        const float *xr = x + t * K;
        /* Row absmax over the entries below tau: entries >= tau are left out, but the
         * other entries of outlier columns still count (as bnb does; docs/QUANT.md). */
        float absmax = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float a = fabsf(xr[k]);
            if ((tau == 0.0f || a < tau) && a > absmax) absmax = a;
        }
        if (sca) sca[t] = absmax;
        float scale = quant_scale127(absmax);
        for (int64_t k = 0; k < K; k++) {
            bool excluded = tau > 0.0f && (per_call ? is_outlier_col[k] : fabsf(xr[k]) >= tau);
            ca[k] = excluded ? 0 : sat_rne127(xr[k] * scale);
        }

        for (int64_t n = 0; n < N; n++) {
            const int8_t *wr = cb + n * K;
            /* Exact: |sum| <= K * 127 * 127 fits int32 for K <= 133143 (checked by callers
             * that take K from files); uint32 arithmetic keeps overflow defined anyway. */
            uint32_t acc = 0;
            for (int64_t k = 0; k < K; k++) acc += (uint32_t)((int32_t)ca[k] * (int32_t)wr[k]);
            int32_t c32 = (int32_t)acc;
            if (acc32) acc32[t * N + n] = c32;

            float v = (float)c32 * absmax * scb[n] * QUANT_DEQUANT_SCALE;
            if (bias) v += bias[n];
            if (n_out > 0) {
                /* 16-bit part: the outlier entries times the dequantized weights, summed in
                 * ascending column order (per call: every row's values in the outlier
                 * columns; per token: this row's own entries >= tau). */
                float s = 0.0f;
                for (int64_t k = 0; k < K; k++) {
                    if (!is_outlier_col[k]) continue;
                    if (!per_call && !(fabsf(xr[k]) >= tau)) continue;
                    s += xr[k] * quant_dequant_weight(wr[k], scb[n]);
                }
                v += s;
            }
            y[t * N + n] = v;
        }
    }
    free(is_outlier_col);
    free(ca);
}
