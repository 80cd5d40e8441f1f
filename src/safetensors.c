/* safetensors.c — reading (mmap + full validation) and writing safetensors files.
 *
 * Layout of a file (https://github.com/huggingface/safetensors):
 *
 *   [ u64 little-endian N ][ N bytes of JSON header ][ data section ... ]
 *
 * The header is untrusted input: st_open() checks every number in it against the
 * real size of the file before any tensor pointer is handed out, so the rest of the
 * program can read StTensor.data[0 .. nbytes) without further checks. */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json_in.h"

/* A single dimension may not exceed 2^40 elements: far above any real tensor, and small
 * enough that a product of checked dimensions is easy to keep from overflowing. */
#define ST_MAX_DIM ((int64_t)1 << 40)

struct StFile {
    char *path;
    void *map;              /* whole file, read-only; NULL for an empty mapping */
    size_t map_size;
    StTensor *tensors;      /* in header order */
    size_t n;
    const StTensor **by_name; /* the same tensors sorted by name, for binary search */
    char **meta;            /* __metadata__ as key, value, key, value, ... */
    size_t n_meta;
    void **copies;          /* aligned copies of tensors whose bytes are misaligned in the file */
    size_t n_copies;
};

/* ---- small helpers ------------------------------------------------------------- */

static char *dup_str(const char *s) {
    size_t len = strlen(s) + 1;
    char *d = malloc(len);
    if (d) memcpy(d, s, len);
    return d;
}

static uint64_t read_u64_le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* A JSON number that is a whole number in [0, max]. cJSON keeps numbers as doubles,
 * which are exact for integers up to 2^53 — every bound used here is below that. */
static int json_uint(const cJSON *item, int64_t max, int64_t *out) {
    if (!cJSON_IsNumber(item)) return -1;
    double d = item->valuedouble;
    if (!isfinite(d) || d < 0.0 || d > (double)max || d != floor(d)) return -1;
    *out = (int64_t)d;
    return 0;
}

static int cmp_by_name(const void *a, const void *b) {
    return strcmp((*(const StTensor *const *)a)->name, (*(const StTensor *const *)b)->name);
}

/* Byte ranges, for the overlap check. */
typedef struct Range { uint64_t begin, end; size_t tensor; } Range;

static int cmp_range(const void *a, const void *b) {
    const Range *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* ---- reading ---------------------------------------------------------------------- */

void st_close(StFile *f) {
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) free((char *)f->tensors[i].name);
    for (size_t i = 0; i < 2 * f->n_meta; i++) free(f->meta[i]);
    for (size_t i = 0; i < f->n_copies; i++) free(f->copies[i]);
    free(f->copies);
    free(f->meta);
    free(f->tensors);
    free(f->by_name);
    if (f->map) munmap(f->map, f->map_size);
    free(f->path);
    free(f);
}

/* Formats a shape as "[a, b, c]" for messages. */
static const char *shape_str(const int64_t *shape, int ndim, char *buf, size_t cap) {
    size_t len = 0;
    len += (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && len < cap; d++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

/* Validates one header entry `item` (named item->string) and fills t. `data_size` is the
 * length of the data section. */
static int parse_entry(const StFile *f, const cJSON *item, uint64_t data_size, StTensor *t, uint64_t *begin,
                       Error *err) {
    const char *name = item->string;
    if (!cJSON_IsObject(item))
        return err_set(err, "%s: tensor '%s': header entry is not a JSON object", f->path, name);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    if (!cJSON_IsString(dt))
        return err_set(err, "%s: tensor '%s': \"dtype\" is missing or not a string", f->path, name);
    if (dtype_parse(dt->valuestring, &t->dtype) != 0)
        return err_set(err, "%s: tensor '%s': unsupported dtype %s (supported: F16, BF16, F32, I8, U8)", f->path,
                       name, dt->valuestring);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
    if (!cJSON_IsArray(shape))
        return err_set(err, "%s: tensor '%s': \"shape\" is missing or not an array", f->path, name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS)
        return err_set(err, "%s: tensor '%s': shape has %d dimensions, at most %d are supported", f->path, name,
                       ndim, ST_MAX_DIMS);
    t->ndim = ndim;
    int d = 0;
    bool has_zero = false;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape) {
        int64_t v;
        if (json_uint(dim, ST_MAX_DIM, &v) != 0)
            return err_set(err,
                           "%s: tensor '%s': shape dimension %d is not a whole number from 0 to 2^40 "
                           "(negative, fractional, too large or not a number)",
                           f->path, name, d);
        if (v == 0) has_zero = true;
        t->shape[d++] = v;
    }
    /* The element count, overflow-checked (a product of several 2^40 dims does not fit). */
    bool overflow = false;
    t->numel = has_zero ? 0 : 1;
    for (int i = 0; i < ndim && !has_zero; i++) {
        if (t->numel > INT64_MAX / t->shape[i]) {
            overflow = true;
            break;
        }
        t->numel *= t->shape[i];
    }

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    int64_t b, e;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        json_uint(cJSON_GetArrayItem(offs, 0), INT64_MAX / 2, &b) != 0 ||
        json_uint(cJSON_GetArrayItem(offs, 1), INT64_MAX / 2, &e) != 0)
        return err_set(err, "%s: tensor '%s': \"data_offsets\" must be two whole numbers [begin, end]", f->path,
                       name);
    if (b > e || (uint64_t)e > data_size)
        return err_set(err, "%s: tensor '%s': data_offsets [%lld, %lld] do not fit the data section of %llu bytes",
                       f->path, name, (long long)b, (long long)e, (unsigned long long)data_size);

    char sbuf[160];
    uint64_t esize = dtype_size(t->dtype);
    if (overflow || (uint64_t)t->numel > UINT64_MAX / esize || (uint64_t)t->numel * esize != (uint64_t)(e - b))
        return err_set(err,
                       "%s: tensor '%s': data_offsets [%lld, %lld] hold %lld bytes, but shape %s of %s needs "
                       "%s%llu bytes",
                       f->path, name, (long long)b, (long long)e, (long long)(e - b),
                       shape_str(t->shape, ndim, sbuf, sizeof sbuf), dtype_name(t->dtype),
                       overflow ? "more than " : "",
                       overflow ? (unsigned long long)INT64_MAX : (unsigned long long)t->numel * esize);
    t->nbytes = (size_t)(e - b);
    *begin = (uint64_t)b;
    return 0;
}

static int parse_metadata(StFile *f, const cJSON *meta, Error *err) {
    if (!cJSON_IsObject(meta)) return err_set(err, "%s: \"__metadata__\" is not a JSON object", f->path);
    size_t n = (size_t)cJSON_GetArraySize(meta);
    f->meta = calloc(2 * n + 1, sizeof *f->meta);
    if (!f->meta) return err_set(err, "%s: out of memory reading the header", f->path);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta) {
        if (!cJSON_IsString(kv))
            return err_set(err, "%s: \"__metadata__\" value for '%s' is not a string", f->path, kv->string);
        char *k = dup_str(kv->string), *v = dup_str(kv->valuestring);
        if (!k || !v) {
            free(k), free(v);
            return err_set(err, "%s: out of memory reading the header", f->path);
        }
        f->meta[2 * f->n_meta] = k;
        f->meta[2 * f->n_meta + 1] = v;
        f->n_meta++;
    }
    return 0;
}

int st_check_values(const StTensor *t, bool fit_f16, Error *err) {
    size_t n = (size_t)t->numel;
    int64_t i = fit_f16 ? dtype_first_beyond_f16(t->dtype, t->data, n) : dtype_first_nonfinite(t->dtype, t->data, n);
    if (i < 0) return 0;
    float v = dtype_load_f32(t->dtype, t->data, (size_t)i);
    char where[64] = "";
    if (t->ndim == 2 && t->shape[1] > 0)
        snprintf(where, sizeof where, " (row %lld, column %lld)", (long long)(i / t->shape[1]),
                 (long long)(i % t->shape[1]));
    return err_set(err, "%s: tensor '%s': element %lld%s is %g, %s", t->file, t->name, (long long)i, where, (double)v,
                   isfinite(v) ? "beyond float16's largest value 65504"
                               : "not a finite number; the checkpoint is damaged");
}

/* Everything after mapping: parse the header and validate each tensor. */
static int parse_header(StFile *f, Error *err) {
    const unsigned char *base = f->map;
    uint64_t hlen = read_u64_le(base);
    uint64_t size = f->map_size;
    if (hlen > ST_MAX_HEADER)
        return err_set(err, "%s: header length %llu is larger than the %u-byte limit (corrupt or not a safetensors file)",
                       f->path, (unsigned long long)hlen, ST_MAX_HEADER);
    if (hlen > size - 8)
        return err_set(err, "%s: header length %llu runs past the end of the file (%llu bytes): truncated or "
                       "not a safetensors file", f->path, (unsigned long long)hlen, (unsigned long long)size);

    /* json_parse refuses a NUL in the header, raw or as \u0000: cJSON's C strings would end
     * there, so "x\u0000evil" would name a tensor "x". */
    char source[PATH_MAX + 16];
    snprintf(source, sizeof source, "%s: header", f->path);
    Error jerr;
    cJSON *root = json_parse(source, (const char *)base + 8, (size_t)hlen, &jerr);
    if (!root) return err_set(err, "%s; corrupt or not a safetensors file", jerr.msg);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return err_set(err, "%s: header is not a JSON object", f->path);
    }

    uint64_t data_off = 8 + hlen, data_size = size - data_off;
    const unsigned char *data = base + data_off;
    size_t count = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, root) count++;

    int rc = -1;
    Range *ranges = NULL;
    f->tensors = calloc(count + 1, sizeof *f->tensors);
    f->by_name = calloc(count + 1, sizeof *f->by_name);
    ranges = calloc(count + 1, sizeof *ranges);
    f->copies = calloc(count + 1, sizeof *f->copies);
    if (!f->tensors || !f->by_name || !ranges || !f->copies) {
        err_set(err, "%s: out of memory reading the header", f->path);
        goto done;
    }

    bool have_meta = false;
    size_t n_ranges = 0;
    cJSON_ArrayForEach(item, root) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (have_meta) {
                err_set(err, "%s: \"__metadata__\" appears twice in the header", f->path);
                goto done;
            }
            have_meta = true;
            if (parse_metadata(f, item, err)) goto done;
            continue;
        }
        StTensor *t = &f->tensors[f->n];
        uint64_t begin = 0;
        if (parse_entry(f, item, data_size, t, &begin, err)) goto done;
        if (!(t->name = dup_str(item->string))) {
            err_set(err, "%s: out of memory reading the header", f->path);
            goto done;
        }
        t->file = f->path;
        t->data = data + begin;
        /* Kernels read elements through typed pointers, so the bytes must be aligned to the
         * element size. Files written by the safetensors library always are (8-byte padded
         * header, tensors sorted by alignment); for the rare odd file, copy the tensor. */
        size_t esize = dtype_size(t->dtype);
        if (((data_off + begin) % esize) != 0 && t->nbytes) {
            void *copy = malloc(t->nbytes);
            if (!copy) {
                err_set(err, "%s: tensor '%s': out of memory", f->path, t->name);
                goto done;
            }
            memcpy(copy, t->data, t->nbytes);
            f->copies[f->n_copies++] = copy;
            t->data = copy;
        }
        if (t->nbytes) ranges[n_ranges++] = (Range){begin, begin + t->nbytes, f->n};
        f->by_name[f->n] = t;
        f->n++;
    }

    /* No duplicate names: cJSON keeps both copies of a repeated key. */
    qsort(f->by_name, f->n, sizeof *f->by_name, cmp_by_name);
    for (size_t i = 1; i < f->n; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0) {
            err_set(err, "%s: tensor '%s' appears twice in the header", f->path, f->by_name[i]->name);
            goto done;
        }

    /* No two tensors share bytes: sorted by offset, each must end before the next begins. */
    qsort(ranges, n_ranges, sizeof *ranges, cmp_range);
    for (size_t i = 1; i < n_ranges; i++)
        if (ranges[i].begin < ranges[i - 1].end) {
            const StTensor *a = &f->tensors[ranges[i - 1].tensor], *b = &f->tensors[ranges[i].tensor];
            err_set(err, "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap in the data section",
                    f->path, a->name, (unsigned long long)ranges[i - 1].begin,
                    (unsigned long long)ranges[i - 1].end, b->name, (unsigned long long)ranges[i].begin,
                    (unsigned long long)ranges[i].end);
            goto done;
        }
    rc = 0;
done:
    free(ranges);
    cJSON_Delete(root);
    return rc;
}

int st_open(const char *path, StFile **out, Error *err) {
    *out = NULL;
    StFile *f = calloc(1, sizeof *f);
    if (!f || !(f->path = dup_str(path))) {
        free(f);
        return err_set(err, "%s: out of memory", path);
    }
    /* O_NONBLOCK: a FIFO must not hang us before fstat shows it is not a regular file. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        err_set(err, "%s: cannot open: %s", path, strerror(errno));
        st_close(f);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        err_set(err, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        err_set(err, "%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size < 8) {
        err_set(err, "%s: file is %lld bytes, too short for a safetensors file (8-byte header length first)",
                path, (long long)st.st_size);
        goto fail;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        err_set(err, "%s: file too large to map", path);
        goto fail;
    }
    f->map_size = (size_t)st.st_size;
    void *map = mmap(NULL, f->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        err_set(err, "%s: cannot map the file: %s", path, strerror(errno));
        goto fail;
    }
    f->map = map;
    close(fd);
    fd = -1;
    if (parse_header(f, err)) goto fail;
    *out = f;
    return 0;
fail:
    if (fd >= 0) close(fd);
    st_close(f);
    return -1;
}

int st_adopt(const char *path, StTensor *tensors, size_t n, void *map, size_t map_size, void **buffers,
             size_t n_buffers, StFile **out, Error *err) {
    *out = NULL;
    StFile *f = calloc(1, sizeof *f);
    if (f) {
        f->tensors = tensors, f->n = n, f->map = map, f->map_size = map_size;
        f->copies = buffers, f->n_copies = n_buffers;
    }
    if (!f || !(f->path = dup_str(path)) || !(f->by_name = calloc(n + 1, sizeof *f->by_name))) {
        if (f) st_close(f);
        else {
            for (size_t i = 0; i < n; i++) free((char *)tensors[i].name);
            for (size_t i = 0; i < n_buffers; i++) free(buffers[i]);
            free(tensors), free(buffers);
            if (map) munmap(map, map_size);
        }
        return err_set(err, "%s: out of memory", path);
    }
    for (size_t i = 0; i < n; i++) {
        f->tensors[i].file = f->path;
        f->by_name[i] = &f->tensors[i];
    }
    qsort(f->by_name, f->n, sizeof *f->by_name, cmp_by_name);
    for (size_t i = 1; i < f->n; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0) {
            err_set(err, "%s: tensor '%s' appears twice", path, f->by_name[i]->name);
            st_close(f);
            return -1;
        }
    *out = f;
    return 0;
}

size_t st_count(const StFile *f) { return f->n; }

const StTensor *st_tensor(const StFile *f, size_t i) { return i < f->n ? &f->tensors[i] : NULL; }

const StTensor *st_find(const StFile *f, const char *name) {
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const StTensor *t = f->by_name[mid];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

const char *st_path(const StFile *f) { return f->path; }

const char *st_metadata(const StFile *f, const char *key) {
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
    return NULL;
}

/* ---- writing ---------------------------------------------------------------------- */

typedef struct WEntry {
    char *name;
    DType dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    uint64_t nbytes;
} WEntry;

struct StWriter {
    char *path;
    int fd;
    WEntry *entries;
    size_t n, cap;
    uint64_t total;        /* bytes of the data section, as declared */
    uint64_t written;      /* data bytes written so far */
    bool header_written;
};

int st_writer_begin(const char *path, StWriter **out, Error *err) {
    *out = NULL;
    StWriter *w = calloc(1, sizeof *w);
    if (!w || !(w->path = dup_str(path))) {
        free(w);
        return err_set(err, "%s: out of memory", path);
    }
    w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        err_set(err, "%s: cannot create: %s", path, strerror(errno));
        free(w->path);
        free(w);
        return -1;
    }
    *out = w;
    return 0;
}

int st_writer_declare(StWriter *w, const char *name, DType dtype, int ndim, const int64_t *shape, Error *err) {
    if (w->header_written)
        return err_set(err, "%s: tensor '%s' declared after the header was written", w->path, name);
    if ((unsigned)dtype >= DT_COUNT) return err_set(err, "%s: tensor '%s': invalid dtype", w->path, name);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return err_set(err, "%s: tensor '%s': %d dimensions (at most %d)", w->path, name, ndim, ST_MAX_DIMS);
    if (strcmp(name, "__metadata__") == 0) return err_set(err, "%s: '__metadata__' is not a tensor name", w->path);
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->entries[i].name, name) == 0)
            return err_set(err, "%s: tensor '%s' declared twice", w->path, name);
    uint64_t bytes = dtype_size(dtype);
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || shape[d] > ST_MAX_DIM)
            return err_set(err, "%s: tensor '%s': invalid dimension %lld", w->path, name, (long long)shape[d]);
        if (shape[d] && bytes > (UINT64_MAX / 4) / (uint64_t)shape[d])
            return err_set(err, "%s: tensor '%s' is too large", w->path, name);
        bytes *= (uint64_t)shape[d];
    }
    if (w->total > UINT64_MAX / 4 - bytes) return err_set(err, "%s: tensors are too large in total", w->path);
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        WEntry *e = realloc(w->entries, cap * sizeof *e);
        if (!e) return err_set(err, "%s: out of memory", w->path);
        w->entries = e;
        w->cap = cap;
    }
    WEntry *e = &w->entries[w->n];
    memset(e, 0, sizeof *e);
    if (!(e->name = dup_str(name))) return err_set(err, "%s: out of memory", w->path);
    e->dtype = dtype;
    e->ndim = ndim;
    for (int d = 0; d < ndim; d++) e->shape[d] = shape[d];
    e->nbytes = bytes;
    w->total += bytes;
    w->n++;
    return 0;
}

/* A growable string for building the header. */
typedef struct Buf { char *p; size_t len, cap; bool oom; } Buf;

static void buf_add(Buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void buf_str(Buf *b, const char *s) { buf_add(b, s, strlen(s)); }

static void buf_printf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(Buf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) buf_add(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A JSON string literal: quotes, backslashes and control bytes escaped; UTF-8 as is. */
static void buf_json_string(Buf *b, const char *s) {
    buf_add(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            buf_add(b, esc, 2);
        } else if (*p < 0x20) {
            buf_printf(b, "\\u%04x", *p);
        } else {
            buf_add(b, (const char *)p, 1);
        }
    }
    buf_add(b, "\"", 1);
}

/* write() until everything is out, retrying on EINTR and short writes. */
static int write_all(StWriter *w, const void *data, size_t n, Error *err) {
    const char *p = data;
    while (n > 0) {
        ssize_t k = write(w->fd, p, n > (1u << 30) ? (1u << 30) : n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return err_set(err, "%s: write failed: %s", w->path, strerror(errno));
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int st_writer_write_header(StWriter *w, Error *err) {
    if (w->header_written) return err_set(err, "%s: header written twice", w->path);
    Buf b = {0};
    buf_str(&b, "{\"__metadata__\":{\"format\":\"pt\"}");
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        const WEntry *e = &w->entries[i];
        buf_add(&b, ",", 1);
        buf_json_string(&b, e->name);
        buf_printf(&b, ":{\"dtype\":\"%s\",\"shape\":[", dtype_name(e->dtype));
        for (int d = 0; d < e->ndim; d++) buf_printf(&b, "%s%lld", d ? "," : "", (long long)e->shape[d]);
        buf_printf(&b, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                   (unsigned long long)(off + e->nbytes));
        off += e->nbytes;
    }
    buf_add(&b, "}", 1);
    /* Pad with spaces so that the data section starts 8-byte aligned, as the
     * safetensors library does. */
    while (!b.oom && b.len % 8) buf_add(&b, " ", 1);
    if (b.oom) {
        free(b.p);
        return err_set(err, "%s: out of memory building the header", w->path);
    }
    if (b.len > ST_MAX_HEADER) {
        free(b.p);
        return err_set(err, "%s: header of %zu bytes exceeds the safetensors limit", w->path, b.len);
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)b.len >> (8 * i));
    int rc = write_all(w, len8, 8, err);
    if (rc == 0) rc = write_all(w, b.p, b.len, err);
    free(b.p);
    if (rc == 0) w->header_written = true;
    return rc;
}

int st_writer_write_data(StWriter *w, const void *data, size_t nbytes, Error *err) {
    if (!w->header_written) return err_set(err, "%s: tensor data written before the header", w->path);
    if (nbytes > w->total - w->written)
        return err_set(err, "%s: more tensor data written than declared (%llu bytes)", w->path,
                       (unsigned long long)w->total);
    if (write_all(w, data, nbytes, err)) return -1;
    w->written += nbytes;
    return 0;
}

static void writer_free(StWriter *w) {
    for (size_t i = 0; i < w->n; i++) free(w->entries[i].name);
    free(w->entries);
    free(w->path);
    free(w);
}

int st_writer_finish(StWriter *w, Error *err) {
    int rc = 0;
    if (!w->header_written) rc = err_set(err, "%s: finished without writing the header", w->path);
    else if (w->written != w->total)
        rc = err_set(err, "%s: %llu of %llu declared data bytes were written", w->path,
                     (unsigned long long)w->written, (unsigned long long)w->total);
    /* Delayed write errors (ENOSPC on network or quota file systems) surface here. */
    if (rc == 0 && fsync(w->fd) != 0 && errno != EINVAL && errno != EROFS)
        rc = err_set(err, "%s: fsync failed: %s", w->path, strerror(errno));
    if (close(w->fd) != 0 && rc == 0) rc = err_set(err, "%s: close failed: %s", w->path, strerror(errno));
    writer_free(w);
    return rc;
}

void st_writer_abort(StWriter *w) {
    if (!w) return;
    close(w->fd);
    writer_free(w);
}
