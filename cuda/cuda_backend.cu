/* cuda_backend.cu — the CUDA Backend table: device and stream, device memory for
 * activations, weight objects, and the dispatch of every operation to its kernel
 * (cuda_kernels.cu, cuda_int8.cu) or cuBLASLt product (cuda_gemm.cu).
 *
 * Weights live on the GPU in two forms:
 *   fp16  [rows, kp]        QUANT_FP16 projections and the 16-bit tables (embeddings, the
 *                           tied lm_head); F16 is uploaded as is, BF16/F32 rounded to fp16
 *                           on the host (round to nearest even);
 *   int8  [np, kp] + SCB    QUANT_LLM_INT8 / QUANT_VECTORWISE projections, quantized on the
 *                           host with quant_weight_rowwise() (bitsandbytes' Int8Params), or
 *                           taken as is from an int8 checkpoint (I8 + SCB).
 * kp, np: K and N padded with zeros (cuda_internal.h). Uploads go through a host staging
 * buffer (pinned when the system allows) one chunk of rows at a time, so that no second
 * full-size host copy of a weight is ever made. */
#include "cuda_internal.h"
#include "cuda_backend.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKSPACE_BYTES ((size_t)32 << 20) /* cuBLASLt's recommendation for Hopper */
#define STAGING_BYTES ((size_t)64 << 20)

/* Every entry point goes through cuda_of, which makes the backend's GPU the calling thread's
 * current device: several CUDA backends, each on its own GPU, can then serve the stages of one
 * pipeline in one process (--device cuda:0,cuda:1). The thread remembers its device, so with
 * one GPU this costs a comparison. */
static thread_local int current_device = -1;

void cuda_make_current(CudaBackend *cb) {
    if (current_device != cb->device && cudaSetDevice(cb->device) == cudaSuccess) current_device = cb->device;
}

static CudaBackend *cuda_of(Backend *bk) {
    CudaBackend *cb = (CudaBackend *)bk;
    cuda_make_current(cb);
    return cb;
}

/* ---- the sticky error (backend.h: sync) ------------------------------------------------- */
int cuda_fail(CudaBackend *cb, const char *fmt, ...) {
    if (cb->failed) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cb->error, sizeof cb->error, fmt, ap);
    va_end(ap);
    cb->failed = true;
    return -1;
}

int cuda_check(CudaBackend *cb, cudaError_t e, const char *what) {
    if (e == cudaSuccess) return 0;
    return cuda_fail(cb, "%s: %s", what, cudaGetErrorString(e));
}

int cuda_check_launch(CudaBackend *cb, const char *kernel) {
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return 0;
    return cuda_fail(cb, "launching kernel %s: %s", kernel, cudaGetErrorString(e));
}

/* Waits for everything queued; then the first failure since the last sync, if any, is
 * returned and cleared. A failure inside a kernel (an illegal address, ...) only shows
 * here, as the error of the wait. */
static int cu_sync(Backend *bk, Error *err) {
    CudaBackend *cb = cuda_of(bk);
    cuda_check(cb, cudaStreamSynchronize(cb->stream), "waiting for the GPU");
    cuda_check(cb, cudaGetLastError(), "a queued GPU operation");
    if (!cb->failed) return 0;
    cb->failed = false;
    return err_set(err, "CUDA backend: %s", cb->error);
}

static const char *cu_describe(Backend *bk) { return cuda_of(bk)->description; }

/* ---- scratch ------------------------------------------------------------------------------ */
int cuda_scratch_reserve(CudaBackend *cb, CudaScratch *s, size_t bytes, const char *what) {
    if (cb->failed) return -1;
    if (bytes <= s->bytes) return 0;
    size_t want = bytes + bytes / 4; /* some headroom: T grows a little at a time in generation */
    /* the old buffer may still be in use by queued work */
    if (s->ptr) {
        if (cuda_check(cb, cudaStreamSynchronize(cb->stream), "growing a scratch buffer")) return -1;
        cudaFree(s->ptr);
        s->ptr = NULL;
        s->bytes = 0;
    }
    cudaError_t e = cudaMalloc(&s->ptr, want);
    if (e != cudaSuccess) {
        s->ptr = NULL;
        return cuda_fail(cb, "cannot allocate %zu bytes of GPU memory for %s: %s", want, what, cudaGetErrorString(e));
    }
    s->bytes = want;
    return cuda_check(cb, cudaMemsetAsync(s->ptr, 0, want, cb->stream), "clearing a scratch buffer");
}

static void scratch_free(CudaScratch *s) {
    if (s->ptr) cudaFree(s->ptr);
    s->ptr = NULL;
    s->bytes = 0;
}

/* ---- activation memory ------------------------------------------------------------------- */
static float *cu_alloc(Backend *bk, size_t n) {
    CudaBackend *cb = cuda_of(bk);
    if (cb->failed || n > SIZE_MAX / sizeof(float)) return NULL;
    size_t bytes = (n ? n : 1) * sizeof(float);
    float *p = NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError(); /* out of memory is reported by returning NULL */
        return NULL;
    }
    if (cuda_check(cb, cudaMemsetAsync(p, 0, bytes, cb->stream), "clearing new GPU memory")) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cu_release(Backend *bk, float *p) {
    CudaBackend *cb = cuda_of(bk);
    if (!p) return;
    cudaStreamSynchronize(cb->stream); /* queued work may still use p */
    cudaFree(p);
}

static void cu_upload(Backend *bk, float *dst, const float *src, size_t n) {
    CudaBackend *cb = cuda_of(bk);
    if (cb->failed || n == 0) return;
    /* The caller may free or reuse src as soon as this returns. An asynchronous copy from
     * pageable memory is only *usually* staged before it returns (the runtime documents it
     * as "might be synchronous"), so wait for it: uploads happen at load time and for
     * observers, never inside a layer. */
    if (!cuda_check(cb, cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, cb->stream), "upload"))
        cuda_check(cb, cudaStreamSynchronize(cb->stream), "upload (waiting for the copy)");
}

static void fill_nan(float *dst, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = NAN;
}

static void cu_download(Backend *bk, float *dst, const float *src, size_t n) {
    CudaBackend *cb = cuda_of(bk);
    if (n == 0) return;
    if (!cb->failed) {
        cuda_check(cb, cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, cb->stream), "download");
        if (!cb->failed) cuda_check(cb, cudaStreamSynchronize(cb->stream), "download (waiting for the GPU)");
    }
    if (cb->failed) fill_nan(dst, n); /* make the failure impossible to miss downstream */
}

static void cu_copy(Backend *bk, float *dst, const float *src, size_t n) {
    CudaBackend *cb = cuda_of(bk);
    if (cb->failed || n == 0) return;
    cuda_check(cb, cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, cb->stream), "copy");
}

/* ---- weight upload ------------------------------------------------------------------------ */
static int staging_reserve(CudaBackend *cb, size_t bytes, Error *err) {
    if (bytes <= cb->staging_bytes) return 0;
    /* a single row larger than the pinned buffer: fall back to ordinary memory */
    void *p = malloc(bytes);
    if (!p) return err_set(err, "CUDA backend: out of host memory (%zu bytes of upload staging)", bytes);
    if (cb->staging_pinned) cudaFreeHost(cb->staging);
    else free(cb->staging);
    cb->staging = p;
    cb->staging_bytes = bytes;
    cb->staging_pinned = false;
    return 0;
}

/* Host -> device copy that has completed when it returns (weights, biases, scales: the
 * host side may be freed right after). In stream order, so that later kernels see it. */
static int upload_now(CudaBackend *cb, void *dst, const void *src, size_t bytes, const char *what, Error *err) {
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cb->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(cb->stream);
    if (e != cudaSuccess) {
        cudaGetLastError(); /* reported here: it must not resurface at the next kernel launch */
        return err_set(err, "CUDA backend: uploading %s: %s", what, cudaGetErrorString(e));
    }
    return 0;
}

static int device_alloc(void **p, size_t bytes, const char *what, Error *err) {
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        return err_set(err, "CUDA backend: cannot allocate %zu bytes of GPU memory for %s: %s", bytes, what,
                       cudaGetErrorString(e));
    }
    return 0;
}

/* Checks a host matrix's shape; the padded sizes must fit the kernels' int indices. */
static int check_shape(const HostMatrix *m, const char *what, Error *err) {
    if (!m || !m->data) return err_set(err, "CUDA backend: %s has no data", what);
    if (m->rows < 1 || m->cols < 1 || m->rows > INT32_MAX - 1024 || m->cols > INT32_MAX - 1024)
        return err_set(err, "CUDA backend: %s has unsupported shape [%lld, %lld]", what, (long long)m->rows,
                       (long long)m->cols);
    return 0;
}

/* fp16 weights [rows, kp], padding columns 0. An I8 weight (an 8-bit checkpoint run with
 * --quant fp16) is dequantized first, W = CB * SCB / 127 as quant_dequant_weight(). */
static int fp16_weight_create(CudaBackend *cb, const HostMatrix *m, const float *bias_dev, Fp16Weight *fw,
                              Error *err) {
    if (m->dtype == DT_I8 && !m->scb)
        return err_set(err, "CUDA backend: an int8 (I8) weight needs its SCB row scales");
    if (m->dtype != DT_F16 && m->dtype != DT_BF16 && m->dtype != DT_F32 && m->dtype != DT_I8)
        return err_set(err, "CUDA backend: weight dtype %s is not usable (F16, BF16, F32 or I8 expected)",
                       dtype_name(m->dtype));
    memset(fw, 0, sizeof *fw);
    fw->rows = m->rows;
    fw->cols = m->cols;
    fw->kp = cuda_round_up(m->cols, CUDA_PAD_K);
    size_t row_bytes = (size_t)fw->kp * sizeof(__half);
    if (device_alloc((void **)&fw->w, (size_t)fw->rows * row_bytes, "a 16-bit weight", err)) return -1;
    if (staging_reserve(cb, row_bytes, err)) goto fail;
    {
        size_t es = dtype_size(m->dtype);
        int64_t chunk = (int64_t)(cb->staging_bytes / row_bytes);
        for (int64_t r0 = 0; r0 < fw->rows; r0 += chunk) {
            int64_t nr = fw->rows - r0 < chunk ? fw->rows - r0 : chunk;
            for (int64_t r = 0; r < nr; r++) {
                const char *src = (const char *)m->data + (size_t)(r0 + r) * (size_t)m->cols * es;
                uint16_t *dst = (uint16_t *)cb->staging + (size_t)r * (size_t)fw->kp;
                if (m->dtype == DT_F16) memcpy(dst, src, (size_t)m->cols * 2);
                else if (m->dtype == DT_I8) {
                    float scb;
                    memcpy(&scb, m->scb + r0 + r, sizeof scb); /* may be unaligned in the checkpoint */
                    for (int64_t c = 0; c < m->cols; c++)
                        dst[c] = f32_to_f16(quant_dequant_weight(((const int8_t *)src)[c], scb));
                } else
                    for (int64_t c = 0; c < m->cols; c++) {
                        /* the tensor cores take fp16: a BF16/F32 value beyond its range would
                         * silently become inf (the CPU backend keeps such weights as stored) */
                        float v = dtype_load_f32(m->dtype, src, (size_t)c);
                        if (fabsf(v) > 65504.0f && isfinite(v)) {
                            err_set(err, "CUDA backend: a %s weight value %g (row %lld, column %lld) is outside "
                                    "fp16's range (|x| <= 65504); run it with --device cpu", dtype_name(m->dtype),
                                    (double)v, (long long)(r0 + r), (long long)c);
                            goto fail;
                        }
                        dst[c] = f32_to_f16(v);
                    }
                memset(dst + m->cols, 0, (size_t)(fw->kp - m->cols) * 2);
            }
            if (upload_now(cb, (char *)fw->w + (size_t)r0 * row_bytes, cb->staging, (size_t)nr * row_bytes,
                           "a 16-bit weight", err))
                goto fail;
        }
    }
    if (lt_plan_init(cb, &fw->plan, false, fw->rows, fw->kp, bias_dev, err)) goto fail;
    return 0;
fail:
    cudaFree(fw->w);
    fw->w = NULL;
    return -1;
}

static void fp16_weight_free(Fp16Weight *fw) {
    lt_plan_free(&fw->plan);
    if (fw->w) cudaFree(fw->w);
    fw->w = NULL;
}

/* int8 weights [np, kp] + SCB [np]: quantized here from F16/BF16/F32, or I8 + SCB as is. */
static int int8_weight_create(CudaBackend *cb, const HostMatrix *m, const QuantConfig *q, Int8Weight *iw,
                              Error *err) {
    bool prequantized = m->dtype == DT_I8;
    if (!prequantized && m->dtype != DT_F16 && m->dtype != DT_BF16 && m->dtype != DT_F32)
        return err_set(err, "CUDA backend: cannot quantize a %s weight to int8", dtype_name(m->dtype));
    if (!(q->threshold >= 0.0f))
        return err_set(err, "int8 projection: outlier threshold %g must be >= 0", (double)q->threshold);
    /* K within the exact range; an int8 checkpoint's SCB sane and its codes in [-127, 127] */
    if (quant_check_int8_source(m->dtype, m->data, m->scb, m->rows, m->cols, err)) return -1;
    memset(iw, 0, sizeof *iw);
    iw->rows = m->rows;
    iw->cols = m->cols;
    iw->np = cuda_round_up(m->rows, CUDA_PAD_N);
    iw->kp = cuda_round_up(m->cols, CUDA_PAD_K);
    iw->tau = q->mode == QUANT_LLM_INT8 ? q->threshold : 0.0f;
    iw->scope = q->outliers;
    size_t row_bytes = (size_t)iw->kp;
    float *scb_host = (float *)calloc((size_t)iw->np, sizeof(float));
    if (!scb_host) return err_set(err, "CUDA backend: out of host memory for %lld row scales", (long long)iw->np);
    if (device_alloc((void **)&iw->cb, (size_t)iw->np * row_bytes, "an int8 weight", err) ||
        device_alloc((void **)&iw->scb, (size_t)iw->np * sizeof(float), "int8 row scales", err))
        goto fail;
    if (staging_reserve(cb, row_bytes, err)) goto fail;
    {
        cudaError_t e = cudaMemsetAsync(iw->cb, 0, (size_t)iw->np * row_bytes, cb->stream); /* padding rows */
        if (e != cudaSuccess) {
            err_set(err, "CUDA backend: clearing an int8 weight: %s", cudaGetErrorString(e));
            goto fail;
        }
        size_t es = dtype_size(m->dtype);
        int64_t chunk = (int64_t)(cb->staging_bytes / row_bytes);
        for (int64_t r0 = 0; r0 < iw->rows; r0 += chunk) {
            int64_t nr = iw->rows - r0 < chunk ? iw->rows - r0 : chunk;
            for (int64_t r = 0; r < nr; r++) {
                const char *src = (const char *)m->data + (size_t)(r0 + r) * (size_t)m->cols * es;
                int8_t *dst = (int8_t *)cb->staging + (size_t)r * row_bytes;
                if (prequantized) {
                    memcpy(dst, src, (size_t)m->cols);
                    memcpy(&scb_host[r0 + r], m->scb + r0 + r, sizeof(float)); /* may be unaligned */
                } else {
                    /* row-wise: one row at a time gives the same CB and SCB as the whole matrix */
                    quant_weight_rowwise(m->dtype, src, 1, m->cols, dst, &scb_host[r0 + r]);
                }
                memset(dst + m->cols, 0, (size_t)(iw->kp - m->cols));
            }
            if (upload_now(cb, iw->cb + (size_t)r0 * row_bytes, cb->staging, (size_t)nr * row_bytes, "an int8 weight",
                           err))
                goto fail;
        }
        if (upload_now(cb, iw->scb, scb_host, (size_t)iw->np * sizeof(float), "int8 row scales", err)) goto fail;
    }
    if (lt_plan_init(cb, &iw->plan, true, iw->np, iw->kp, NULL, err)) goto fail;
    free(scb_host);
    return 0;
fail:
    free(scb_host);
    cudaFree(iw->cb);
    cudaFree(iw->scb);
    iw->cb = NULL;
    iw->scb = NULL;
    return -1;
}

static void int8_weight_free(Int8Weight *iw) {
    lt_plan_free(&iw->plan);
    if (iw->cb) cudaFree(iw->cb);
    if (iw->scb) cudaFree(iw->scb);
    iw->cb = NULL;
    iw->scb = NULL;
}

/* ---- BkLinear / BkMatrix ------------------------------------------------------------------ */
static void cu_linear_free(Backend *bk, BkLinear *l) {
    if (!l) return;
    cudaStreamSynchronize(cuda_of(bk)->stream); /* queued work may still read the weights */
    if (l->is_int8) int8_weight_free(&l->i8);
    else fp16_weight_free(&l->f16);
    if (l->bias) cudaFree(l->bias);
    free(l);
}

static BkLinear *cu_linear_create(Backend *bk, const HostMatrix *w, const float *bias, const QuantConfig *q,
                                  Error *err) {
    CudaBackend *cb = cuda_of(bk);
    if (cb->failed) {
        err_set(err, "CUDA backend: %s", cb->error);
        return NULL;
    }
    if (check_shape(w, "projection weight", err)) return NULL;
    QuantMode mode = q ? q->mode : QUANT_FP16;
    if (mode != QUANT_FP16 && mode != QUANT_LLM_INT8 && mode != QUANT_VECTORWISE) {
        err_set(err, "quant mode %s is not supported on CUDA (supported: fp16, %s, %s)", quant_mode_name(mode),
                quant_mode_name(QUANT_LLM_INT8), quant_mode_name(QUANT_VECTORWISE));
        return NULL;
    }
    BkLinear *l = (BkLinear *)calloc(1, sizeof *l);
    if (!l) {
        err_set(err, "CUDA backend: out of host memory");
        return NULL;
    }
    l->is_int8 = mode != QUANT_FP16;
    if (bias) {
        size_t bb = (size_t)w->rows * sizeof(float);
        if (device_alloc((void **)&l->bias, bb, "a bias", err)) goto fail;
        if (upload_now(cb, l->bias, bias, bb, "a bias", err)) goto fail;
        l->bytes += bb;
    }
    if (l->is_int8) {
        if (int8_weight_create(cb, w, q, &l->i8, err)) goto fail;
        l->bytes += (size_t)l->i8.np * (size_t)l->i8.kp + (size_t)l->i8.np * sizeof(float);
    } else {
        if (fp16_weight_create(cb, w, l->bias, &l->f16, err)) goto fail;
        l->bytes += (size_t)l->f16.rows * (size_t)l->f16.kp * sizeof(__half);
    }
    return l;
fail:
    if (l->bias) cudaFree(l->bias);
    free(l);
    return NULL;
}

static BkMatrix *cu_matrix_create(Backend *bk, const HostMatrix *m, Error *err) {
    CudaBackend *cb = cuda_of(bk);
    if (cb->failed) {
        err_set(err, "CUDA backend: %s", cb->error);
        return NULL;
    }
    if (check_shape(m, "matrix", err)) return NULL;
    if (m->dtype != DT_F16 && m->dtype != DT_BF16 && m->dtype != DT_F32) {
        err_set(err, "matrix: dtype %s is not supported for embeddings (F16, BF16 or F32 expected)",
                dtype_name(m->dtype));
        return NULL;
    }
    BkMatrix *mat = (BkMatrix *)calloc(1, sizeof *mat);
    if (!mat) {
        err_set(err, "CUDA backend: out of host memory");
        return NULL;
    }
    if (fp16_weight_create(cb, m, NULL, &mat->f16, err)) {
        free(mat);
        return NULL;
    }
    mat->bytes = (size_t)mat->f16.rows * (size_t)mat->f16.kp * sizeof(__half);
    return mat;
}

static void cu_matrix_free(Backend *bk, BkMatrix *m) {
    if (!m) return;
    cudaStreamSynchronize(cuda_of(bk)->stream); /* queued work may still read the table */
    fp16_weight_free(&m->f16);
    free(m);
}

static size_t cu_linear_bytes(const BkLinear *l) { return l ? l->bytes : 0; }
static size_t cu_matrix_bytes(const BkMatrix *m) { return m ? m->bytes : 0; }

/* total - free of the device: ours, the CUDA context's and cuBLASLt's, and other processes'. */
static size_t cu_device_memory_in_use(Backend *bk) {
    CudaBackend *cb = cuda_of(bk);
    size_t free_b = 0, total_b = 0;
    if (cb->failed || cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return total_b - free_b;
}

/* ---- operations ------------------------------------------------------------------------------ */
/* y[T, rows] = x[T, cols] W^T (+ bias) with fp16 W: x is rounded to fp16 (as bitsandbytes'
 * fp16 models see it), the product accumulates in float32 and is written as float32. */
static void fp16_forward(CudaBackend *cb, const Fp16Weight *fw, const float *bias, const float *x, int T, float *y) {
    if (cuda_scratch_reserve(cb, &cb->x16, (size_t)T * (size_t)fw->kp * sizeof(__half), "fp16 activations")) return;
    __half *x16 = (__half *)cb->x16.ptr;
    cuda_f32_to_f16_rows(cb, x, T, fw->cols, fw->kp, x16);
    LtPlan *plan = (LtPlan *)&fw->plan; /* the plan's per-T cache is mutable state */
    if (lt_plan_run(cb, plan, fw->w, x16, T, y)) return;
    if (bias && !plan->bias_fused) cuda_add_bias(cb, y, bias, T, fw->rows);
}

static void cu_linear(Backend *bk, const BkLinear *l, const float *x, int T, float *y) {
    CudaBackend *cb = cuda_of(bk);
    if (cb->failed || T <= 0) return;
    if (l->is_int8) cuda_int8_forward(cb, &l->i8, l->bias, x, T, y, NULL);
    else fp16_forward(cb, &l->f16, l->bias, x, T, y);
}

static void cu_matmul(Backend *bk, const BkMatrix *m, const float *x, int T, float *y) {
    CudaBackend *cb = cuda_of(bk);
    if (cb->failed || T <= 0) return;
    fp16_forward(cb, &m->f16, NULL, x, T, y);
}

static void cu_embed(Backend *bk, const BkMatrix *m, const int32_t *ids, int T, float *out, bool accumulate) {
    CudaBackend *cb = cuda_of(bk);
    if (cb->failed || T <= 0) return;
    if (cuda_scratch_reserve(cb, &cb->ids, (size_t)T * sizeof(int32_t), "token ids")) return;
    /* Waits for the copy (see cu_upload): the ids array is the caller's. This is the first
     * op of a forward pass, and the previous one already ended in a wait (a read-out), so
     * the GPU has nothing queued that this holds up. */
    if (cuda_check(cb, cudaMemcpyAsync(cb->ids.ptr, ids, (size_t)T * sizeof(int32_t), cudaMemcpyHostToDevice,
                                       cb->stream), "uploading token ids") ||
        cuda_check(cb, cudaStreamSynchronize(cb->stream), "uploading token ids (waiting for the copy)"))
        return;
    cuda_embed(cb, m->f16.w, m->f16.rows, m->f16.cols, m->f16.kp, (const int32_t *)cb->ids.ptr, T, out, accumulate);
}

static void cu_layernorm(Backend *bk, const float *x, const float *w, const float *b, float eps, int T, int dim,
                         float *y) {
    CudaBackend *cb = cuda_of(bk);
    if (!cb->failed) cuda_layernorm(cb, x, w, b, eps, T, dim, y);
}

static void cu_add(Backend *bk, float *y, const float *x, size_t n) {
    CudaBackend *cb = cuda_of(bk);
    if (!cb->failed) cuda_add(cb, y, x, n);
}

static void cu_relu(Backend *bk, float *x, size_t n) {
    CudaBackend *cb = cuda_of(bk);
    if (!cb->failed) cuda_relu(cb, x, n);
}

static void cu_gelu_tanh(Backend *bk, float *x, size_t n) {
    CudaBackend *cb = cuda_of(bk);
    if (!cb->failed) cuda_gelu_tanh(cb, x, n);
}

static void cu_split_qkv(Backend *bk, const float *qkv, int T, int heads, int head_dim, float *q, float *k,
                         float *v) {
    CudaBackend *cb = cuda_of(bk);
    if (!cb->failed) cuda_split_qkv(cb, qkv, T, heads, head_dim, q, k, v);
}

static void cu_store_f16(Backend *bk, const float *x, size_t n, uint16_t *dst) {
    CudaBackend *cb = cuda_of(bk);
    if (!cb->failed) cuda_store_f16(cb, x, n, dst);
}

static void cu_attention(Backend *bk, const AttentionArgs *a) {
    CudaBackend *cb = cuda_of(bk);
    if (!cb->failed) cuda_attention(cb, a);
}

static void cu_token_nll(Backend *bk, const float *x, int rows, int n, const int32_t *targets, double *nll) {
    cuda_token_nll(cuda_of(bk), x, rows, n, targets, nll);
}

static int32_t cu_argmax(Backend *bk, const float *x, int n) { return cuda_argmax(cuda_of(bk), x, n); }

static void cu_penalize(Backend *bk, float *x, const int32_t *ids, int n_ids, float penalty) {
    cuda_penalize(cuda_of(bk), x, ids, n_ids, penalty);
}

static void cu_top_candidates(Backend *bk, const float *x, int n, float temperature, int k, int32_t *ids,
                              float *probs) {
    cuda_top_candidates(cuda_of(bk), x, n, temperature, k, ids, probs);
}

/* ---- create / destroy ------------------------------------------------------------------------- */
static void cu_destroy(Backend *bk) {
    CudaBackend *cb = cuda_of(bk);
    if (!cb) return;
    if (cb->stream) cudaStreamSynchronize(cb->stream);
    CudaScratch *scratch[] = {&cb->x16,  &cb->ca,   &cb->sca, &cb->c32, &cb->colflags,
                              &cb->cols, &cb->rows, &cb->ids, &cb->readout};
    for (size_t i = 0; i < sizeof scratch / sizeof scratch[0]; i++) scratch_free(scratch[i]);
    if (cb->workspace) cudaFree(cb->workspace);
    if (cb->lt) LT.Destroy(cb->lt);
    if (cb->stream) cudaStreamDestroy(cb->stream);
    if (cb->staging) {
        if (cb->staging_pinned) cudaFreeHost(cb->staging);
        else free(cb->staging);
    }
    free(cb);
}

extern "C" Backend *cuda_backend_create_on(int device, Error *err) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        /* Without the driver library the runtime only says the driver is "insufficient";
         * tell the two cases apart. */
        const char *why = "";
        if (e == cudaErrorInsufficientDriver) {
            void *drv = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
            if (drv) dlclose(drv);
            else why = "; no NVIDIA driver is installed (libcuda.so.1 cannot be loaded)";
        }
        err_set(err, "CUDA backend: no CUDA device available (cudaGetDeviceCount: %s%s)", cudaGetErrorString(e), why);
        cudaGetLastError();
        return NULL;
    }
    if (count <= 0) {
        err_set(err, "CUDA backend: no CUDA device available (cudaGetDeviceCount: 0 devices)");
        return NULL;
    }
    if (device < 0 || device >= count) {
        err_set(err, "CUDA backend: no GPU %d: %d GPU%s visible (numbered from 0; CUDA_VISIBLE_DEVICES chooses them)",
                device, count, count == 1 ? "" : "s");
        return NULL;
    }
    CudaBackend *cb = (CudaBackend *)calloc(1, sizeof *cb);
    if (!cb) {
        err_set(err, "CUDA backend: out of host memory");
        return NULL;
    }
    cb->device = device; /* counted among the GPUs CUDA_VISIBLE_DEVICES lets us see */
    cudaDeviceProp prop;
    e = cudaSetDevice(cb->device);
    current_device = e == cudaSuccess ? cb->device : -1;
    if (e == cudaSuccess) e = cudaGetDeviceProperties(&prop, cb->device);
    if (e == cudaSuccess) e = cudaFree(0); /* creates the context now, so that its errors show here */
    if (e != cudaSuccess) {
        err_set(err, "CUDA backend: cannot use GPU %d: %s", device, cudaGetErrorString(e));
        free(cb);
        return NULL;
    }
    cb->cc_major = prop.major;
    cb->cc_minor = prop.minor;
    snprintf(cb->device_name, sizeof cb->device_name, "%s", prop.name);
    snprintf(cb->description, sizeof cb->description,
             "cuda: %s (compute capability %d.%d); int8 matmul: cuBLASLt int8 (COMPUTE_32I); "
             "fp16 matmul: cuBLASLt fp16 (COMPUTE_32F)",
             cb->device_name, prop.major, prop.minor);

    e = cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        err_set(err, "CUDA backend: cudaStreamCreate: %s", cudaGetErrorString(e));
        goto fail;
    }
    if (cuda_attention_setup(cb, &cb->attn_max_smem, err)) goto fail;
    if (cuda_lt_load(err)) goto fail;
    {
        cublasStatus_t st = LT.Create(&cb->lt);
        if (st != CUBLAS_STATUS_SUCCESS) {
            cb->lt = NULL;
            err_set(err, "CUDA backend: cublasLtCreate: %s (%d)", cuda_lt_status_name(st), (int)st);
            goto fail;
        }
    }
    cb->workspace_bytes = WORKSPACE_BYTES;
    if (device_alloc(&cb->workspace, cb->workspace_bytes, "the cuBLASLt workspace", err)) goto fail;
    if (cudaHostAlloc(&cb->staging, STAGING_BYTES, cudaHostAllocPortable) == cudaSuccess) {
        cb->staging_pinned = true;
    } else {
        cudaGetLastError();
        cb->staging = malloc(STAGING_BYTES);
        if (!cb->staging) {
            err_set(err, "CUDA backend: out of host memory (upload staging)");
            goto fail;
        }
    }
    cb->staging_bytes = STAGING_BYTES;

    {
        Backend *b = &cb->base;
        b->name = "cuda";
        b->host_memory = false;
        b->destroy = cu_destroy;
        b->describe = cu_describe;
        b->sync = cu_sync;
        b->alloc = cu_alloc;
        b->release = cu_release;
        b->upload = cu_upload;
        b->download = cu_download;
        b->copy = cu_copy;
        b->linear_create = cu_linear_create;
        b->linear_free = cu_linear_free;
        b->matrix_create = cu_matrix_create;
        b->matrix_free = cu_matrix_free;
        b->linear_bytes = cu_linear_bytes;
        b->matrix_bytes = cu_matrix_bytes;
        b->device_memory_in_use = cu_device_memory_in_use;
        b->linear = cu_linear;
        b->matmul = cu_matmul;
        b->embed = cu_embed;
        b->layernorm = cu_layernorm;
        b->add = cu_add;
        b->relu = cu_relu;
        b->gelu_tanh = cu_gelu_tanh;
        b->split_qkv = cu_split_qkv;
        b->store_f16 = cu_store_f16;
        b->attention = cu_attention;
        b->token_nll = cu_token_nll;
        b->argmax = cu_argmax;
        b->penalize = cu_penalize;
        b->top_candidates = cu_top_candidates;
    }
    return &cb->base;
fail:
    cu_destroy(&cb->base);
    return NULL;
}

extern "C" Backend *cuda_backend_create(Error *err) { return cuda_backend_create_on(0, err); }
