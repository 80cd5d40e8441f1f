/* cuda_gemm.cu — matrix products through cuBLASLt.
 *
 * Every product in the model is y[T, rows] = x[T, k] W^T with W[rows, k] row-major, both
 * padded to k (cuda_internal.h). cuBLAS thinks in column-major, where a row-major [R, C]
 * matrix is a column-major [C, R] one, so we ask for
 *
 *     D (rows x T, ld rows) = op(A) B,   A = W seen as (k x rows, ld k) with TRANSA = T,
 *                                        B = x seen as (k x T,    ld k) with TRANSB = N,
 *
 * the "TN" form, which is the one cuBLASLt's int8 tensor-core kernels accept. Two kinds:
 *   fp16:  A, B fp16, D float32, compute and scale float32 (fp32 accumulation); the bias
 *          is fused as CUBLASLT_EPILOGUE_BIAS when an algorithm for it exists;
 *   int8:  A, B int8, D int32, CUBLAS_COMPUTE_32I with int32 alpha = 1, beta = 0: exact.
 *          cuBLASLt wants rows and k multiples of 4 and 4-byte aligned pointers.
 *
 * The layouts of B and D and the chosen algorithm depend on T (and on the alignment of D,
 * which the heuristic must be told), so a plan keeps those of the last call: a decode
 * loop (T = 1 every call) asks the heuristic once. */
#include "cuda_internal.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

/* ---- cuBLASLt, loaded at run time (see cuda_internal.h) ---------------------------------- */
LtApi LT;

int cuda_lt_load(Error *err) {
    if (LT.Create) return 0;
    char name[64], path[600], first_error[512] = "";
    snprintf(name, sizeof name, "libcublasLt.so.%d", CUBLAS_VER_MAJOR);
    const char *dirs[] = {
        NULL, /* the library path: LD_LIBRARY_PATH, ld.so.conf */
#ifdef CUDA_LIB_DIR
        CUDA_LIB_DIR,
#endif
        "/usr/local/cuda/lib64",
    };
    void *lib = NULL;
    for (size_t i = 0; !lib && i < sizeof dirs / sizeof dirs[0]; i++) {
        if (dirs[i]) snprintf(path, sizeof path, "%s/%s", dirs[i], name);
        else snprintf(path, sizeof path, "%s", name);
        lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!lib && !first_error[0]) snprintf(first_error, sizeof first_error, "%s", dlerror());
    }
    if (!lib)
        return err_set(err, "CUDA backend: cannot load cuBLASLt (%s); install CUDA %d's cuBLAS or put its "
                       "lib64 folder in LD_LIBRARY_PATH", first_error, CUBLAS_VER_MAJOR);
    LtApi api;
    memset(&api, 0, sizeof api);
    /* dlsym returns void *; the member's own type says what the symbol is */
#define LT_SYM(member, symbol)                                                                     \
    do {                                                                                           \
        void *p_ = dlsym(lib, #symbol);                                                            \
        if (!p_) {                                                                                 \
            dlclose(lib);                                                                          \
            return err_set(err, "CUDA backend: %s lacks %s", path, #symbol);                       \
        }                                                                                          \
        memcpy(&api.member, &p_, sizeof p_);                                                       \
    } while (0)
    LT_SYM(Create, cublasLtCreate);
    LT_SYM(Destroy, cublasLtDestroy);
    LT_SYM(Matmul, cublasLtMatmul);
    LT_SYM(MatmulAlgoGetHeuristic, cublasLtMatmulAlgoGetHeuristic);
    LT_SYM(MatmulDescCreate, cublasLtMatmulDescCreate);
    LT_SYM(MatmulDescDestroy, cublasLtMatmulDescDestroy);
    LT_SYM(MatmulDescSetAttribute, cublasLtMatmulDescSetAttribute);
    LT_SYM(MatmulPreferenceCreate, cublasLtMatmulPreferenceCreate);
    LT_SYM(MatmulPreferenceDestroy, cublasLtMatmulPreferenceDestroy);
    LT_SYM(MatmulPreferenceSetAttribute, cublasLtMatmulPreferenceSetAttribute);
    LT_SYM(MatrixLayoutCreate, cublasLtMatrixLayoutCreate);
    LT_SYM(MatrixLayoutDestroy, cublasLtMatrixLayoutDestroy);
#undef LT_SYM
    LT = api; /* the library stays loaded for the life of the process */
    return 0;
}

const char *cuda_lt_status_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "invalid value";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "architecture mismatch";
    case CUBLAS_STATUS_MAPPING_ERROR: return "mapping error";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "execution failed";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "internal error";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "not supported";
    case CUBLAS_STATUS_LICENSE_ERROR: return "license error";
    default: return "unknown status";
    }
}

/* LT_INIT(Fn, (args)) calls cublasLt<Fn>(args) during plan set-up: on failure it fills err
 * and jumps to the clean-up. */
#define LT_INIT(fn, args)                                                                           \
    do {                                                                                            \
        cublasStatus_t st_ = LT.fn args;                                                            \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            err_set(err, "CUDA backend: cublasLt%s failed: %s (%d)", #fn, cuda_lt_status_name(st_), (int)st_); \
            goto fail;                                                                              \
        }                                                                                           \
    } while (0)

int lt_plan_init(CudaBackend *cb, LtPlan *p, bool int8, int64_t rows, int64_t k, const float *bias,
                 Error *err) {
    (void)cb;
    memset(p, 0, sizeof *p);
    p->int8 = int8;
    p->rows = rows;
    p->k = k;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LT_INIT(MatmulDescCreate, (&p->desc, int8 ? CUBLAS_COMPUTE_32I : CUBLAS_COMPUTE_32F,
                               int8 ? CUDA_R_32I : CUDA_R_32F));
    LT_INIT(MatmulDescSetAttribute, (p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LT_INIT(MatmulDescSetAttribute, (p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    if (!int8 && bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        LT_INIT(MatmulDescSetAttribute, (p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        LT_INIT(MatmulDescSetAttribute, (p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
        p->bias = bias;
        p->bias_fused = true;
    }
    LT_INIT(MatrixLayoutCreate, (&p->la, int8 ? CUDA_R_8I : CUDA_R_16F, (uint64_t)k, (uint64_t)rows, k));
    return 0;
fail:
    lt_plan_free(p);
    return -1;
}

void lt_plan_free(LtPlan *p) {
    if (p->lc) LT.MatrixLayoutDestroy(p->lc);
    if (p->lb) LT.MatrixLayoutDestroy(p->lb);
    if (p->la) LT.MatrixLayoutDestroy(p->la);
    if (p->desc) LT.MatmulDescDestroy(p->desc);
    memset(p, 0, sizeof *p);
}

/* The largest power of two (at most 256) that divides the address. */
static uint32_t ptr_alignment(const void *ptr) {
    uintptr_t a = (uintptr_t)ptr;
    uint32_t al = 256;
    while (al > 1 && (a % al) != 0) al >>= 1;
    return al;
}

/* LT_RUN(Fn, (args)) calls cublasLt<Fn>(args) inside an operation: on failure it records
 * the sticky error and returns -1. */
#define LT_RUN(fn, args)                                                                            \
    do {                                                                                            \
        cublasStatus_t st_ = LT.fn args;                                                            \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                           \
            return cuda_fail(cb, "cublasLt%s failed: %s (%d)", #fn, cuda_lt_status_name(st_), (int)st_); \
    } while (0)

/* Makes the layouts of B and D and the algorithm for T rows and D's alignment. */
static int lt_plan_prepare(CudaBackend *cb, LtPlan *p, int T, uint32_t align_d) {
    if (p->lb) LT.MatrixLayoutDestroy(p->lb);
    if (p->lc) LT.MatrixLayoutDestroy(p->lc);
    p->lb = p->lc = NULL;
    p->T = 0;
    LT_RUN(MatrixLayoutCreate, (&p->lb, p->int8 ? CUDA_R_8I : CUDA_R_16F, (uint64_t)p->k, (uint64_t)T, p->k));
    LT_RUN(MatrixLayoutCreate, (&p->lc, p->int8 ? CUDA_R_32I : CUDA_R_32F, (uint64_t)p->rows, (uint64_t)T,
                                p->rows));

    cublasLtMatmulPreference_t pref = NULL;
    LT_RUN(MatmulPreferenceCreate, (&pref));
    uint64_t ws = cb->workspace_bytes;
    uint32_t al256 = 256;
    cublasStatus_t st = LT.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    /* A and B are our own cudaMalloc'ed buffers; C = D is the caller's, maybe offset */
    if (st == CUBLAS_STATUS_SUCCESS)
        st = LT.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al256, sizeof al256);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = LT.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al256, sizeof al256);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = LT.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                             sizeof align_d);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = LT.MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                             sizeof align_d);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = LT.MatmulAlgoGetHeuristic(cb->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &found);
    if ((st != CUBLAS_STATUS_SUCCESS || found == 0) && p->bias_fused) {
        /* no algorithm with the fused bias: drop it, the caller adds the bias itself */
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
        st = LT.MatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
        p->bias_fused = false;
        if (st == CUBLAS_STATUS_SUCCESS)
            st = LT.MatmulAlgoGetHeuristic(cb->lt, p->desc, p->la, p->lb, p->lc, p->lc, pref, 1, &res, &found);
    }
    LT.MatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS)
        return cuda_fail(cb, "cublasLtMatmulAlgoGetHeuristic (%s, %lld x %lld x %d) failed: %s (%d)",
                         p->int8 ? "int8" : "fp16", (long long)p->rows, (long long)p->k, T,
                         cuda_lt_status_name(st), (int)st);
    if (found == 0)
        return cuda_fail(cb, "cuBLASLt has no %s algorithm for a %lld x %lld weight and %d rows on this GPU",
                         p->int8 ? "int8" : "fp16", (long long)p->rows, (long long)p->k, T);
    p->algo = res.algo;
    p->T = T;
    return 0;
}

int lt_plan_run(CudaBackend *cb, LtPlan *p, const void *w, const void *x, int T, void *d) {
    if (cb->failed) return -1;
    if (T <= 0) return 0;
    uint32_t align_d = ptr_alignment(d);
    if (p->T != T || p->align_d != align_d) {
        if (lt_plan_prepare(cb, p, T, align_d) != 0) return -1;
        p->align_d = align_d;
    }
    if (p->int8) {
        int32_t alpha = 1, beta = 0;
        LT_RUN(Matmul, (cb->lt, p->desc, &alpha, w, p->la, x, p->lb, &beta, d, p->lc, d, p->lc, &p->algo,
                        cb->workspace, cb->workspace_bytes, cb->stream));
    } else {
        float alpha = 1.0f, beta = 0.0f;
        LT_RUN(Matmul, (cb->lt, p->desc, &alpha, w, p->la, x, p->lb, &beta, d, p->lc, d, p->lc, &p->algo,
                        cb->workspace, cb->workspace_bytes, cb->stream));
    }
    return 0;
}
