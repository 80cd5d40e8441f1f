/* backend.c — choosing a backend by name. */
#include "backend.h"

#include <string.h>

const char *backend_compiled_list(void) {
#ifdef LLMINT8_HAVE_CUDA
    return "cpu, cuda";
#else
    return "cpu";
#endif
}

Backend *backend_create(const char *name, int threads, Error *fallback, Error *err) {
    if (fallback) fallback->msg[0] = 0;
    if (strcmp(name, "cpu") == 0) return cpu_backend_create(threads, err);
    if (strcmp(name, "cuda") == 0 || strcmp(name, "auto") == 0) {
#ifdef LLMINT8_HAVE_CUDA
        Backend *bk = cuda_backend_create(err);
        if (bk || strcmp(name, "cuda") == 0) return bk;
        if (fallback) err_set(fallback, "no usable GPU (%s); running on the CPU", err->msg);
        return cpu_backend_create(threads, err);
#else
        if (strcmp(name, "auto") == 0) return cpu_backend_create(threads, err);
        err_set(err, "--device cuda: this llmint8 was built without the CUDA backend (compiled backends: %s)",
                backend_compiled_list());
        return NULL;
#endif
    }
    err_set(err, "--device '%s' is not one of cpu, cuda, auto", name);
    return NULL;
}
