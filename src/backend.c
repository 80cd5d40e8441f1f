/* backend.c — choosing a backend by name. */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
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
    if (strncmp(name, "cuda:", 5) == 0 && name[5] >= '0' && name[5] <= '9' && strlen(name + 5) <= 3 &&
        strspn(name + 5, "0123456789") == strlen(name + 5)) { /* one GPU of several */
#ifdef LLMINT8_HAVE_CUDA
        Error why;
        Backend *bk = cuda_backend_create_on(atoi(name + 5), &why);
        if (!bk) err_set(err, "--device %s: %s", name, why.msg);
        return bk;
#else
        err_set(err, "--device %s: this llmint8 was built without the CUDA backend (compiled backends: %s)", name,
                backend_compiled_list());
        return NULL;
#endif
    }
    err_set(err, "--device '%s' is not one of cpu, cuda, cuda:N, auto", name);
    return NULL;
}
