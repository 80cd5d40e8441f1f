/* safetensors.h — reading and writing the safetensors container.
 *
 * A safetensors file is: 8 bytes little-endian header length N, N bytes of JSON
 * header, then the data section. The header maps tensor names to
 * {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
 * section) plus an optional "__metadata__" object of strings.
 *
 * st_open() maps the file read-only and validates *everything* before returning:
 * header length (<= 100 MB and inside the file), JSON syntax, every entry's
 * dtype (F16, BF16, F32, I8, U8), shape (non-negative dims, product without
 * overflow), offsets (begin <= end, inside the data section), byte length equal to
 * shape x dtype size, no two tensors overlapping, no duplicate names. After that,
 * callers may trust StTensor.data / nbytes without re-checking. Every error
 * message names the file and, where there is one, the tensor. */
#ifndef LLMINT8_SAFETENSORS_H
#define LLMINT8_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "error.h"

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER (100u * 1000u * 1000u)

typedef struct StTensor {
    const char *name;           /* full name as stored, e.g. "model.decoder.fc1.weight" */
    DType dtype;
    int ndim;                   /* 0 for a scalar */
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;              /* product of shape (1 for a scalar) */
    const void *data;           /* points into the read-only mapping */
    size_t nbytes;
    const char *file;           /* path of the file that holds it (for messages) */
} StTensor;

typedef struct StFile StFile;

/* Maps and validates one .safetensors file. */
int st_open(const char *path, StFile **out, Error *err);
void st_close(StFile *f);

size_t st_count(const StFile *f);
const StTensor *st_tensor(const StFile *f, size_t i);          /* in file order */
const StTensor *st_find(const StFile *f, const char *name);    /* NULL if absent */
const char *st_path(const StFile *f);
/* Value of __metadata__[key] or NULL. */
const char *st_metadata(const StFile *f, const char *key);

/* An StFile over tensors another reader has already validated (torchbin.c, for PyTorch
 * .bin files), so that the rest of the program sees one kind of file. Takes ownership of
 * `tensors` (n entries; each name malloc'ed, each data pointer inside map[0 .. map_size) or
 * inside one of `buffers`), of the read-only mapping (munmap'ed by st_close; NULL for none)
 * and of the n_buffers malloc'ed buffers. Sets every tensor's `file` to `path`. Unlike
 * st_open, tensors may share bytes (a tied weight); names must be unique. On failure
 * everything passed in is freed. */
int st_adopt(const char *path, StTensor *tensors, size_t n, void *map, size_t map_size, void **buffers,
             size_t n_buffers, StFile **out, Error *err);

/* Refuses a float tensor holding a value a model must not use: a NaN or an infinity, and with
 * fit_f16 also a finite value beyond float16's range (|x| >= 65520, which float16 rounds to
 * infinity). fit_f16 is the rule for every tensor that becomes float16 or int8 — all of them
 * in `convert`, and in an int8 mode when loading (bitsandbytes quantizes the float16 copy);
 * without it, the rule for a tensor used as stored. One scan at memory speed (dtype.h).
 * Returns 0, or -1 with "FILE: tensor 'NAME': element I (row R, column C) is V, <why>".
 * Integer tensors always pass. */
int st_check_values(const StTensor *t, bool fit_f16, Error *err);

/* ---- writing -------------------------------------------------------------
 * The writer needs the whole header before the data, so callers first declare
 * every tensor (name, dtype, shape), then stream each tensor's bytes in the same
 * order. The file is written to `path` directly: atomicity (temporary directory,
 * rename at the end) is the caller's job. */
typedef struct StWriter StWriter;

int st_writer_begin(const char *path, StWriter **out, Error *err);
int st_writer_declare(StWriter *w, const char *name, DType dtype, int ndim, const int64_t *shape, Error *err);
/* Writes the header (with __metadata__ {"format":"pt"}); call once after all declares. */
int st_writer_write_header(StWriter *w, Error *err);
/* Appends bytes of the next declared tensor; may be called several times per tensor. */
int st_writer_write_data(StWriter *w, const void *data, size_t nbytes, Error *err);
/* Checks every declared byte was written, fsyncs and closes. Frees w. */
int st_writer_finish(StWriter *w, Error *err);
/* Closes and frees w without finishing (after an error). Does not delete the file. */
void st_writer_abort(StWriter *w);

#endif
