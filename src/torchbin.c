/* torchbin.c — a PyTorch zip checkpoint as an StFile (see torchbin.h for the contract).
 *
 * What torch.save writes (PyTorch >= 1.6) is a zip archive whose members all sit in one
 * folder, ARCHIVE/ (named after the file):
 *
 *   ARCHIVE/data.pkl      a pickle (protocol 2) of the saved object: for a checkpoint, a dict
 *                         or collections.OrderedDict mapping tensor names to tensors
 *   ARCHIVE/data/KEY      the raw bytes of one storage (a flat, typed array), little-endian,
 *                         stored without compression and aligned to 64 bytes in the file
 *   ARCHIVE/byteorder     "little" or "big" (PyTorch >= 2.1; older files are little-endian);
 *                         only "little" is read, since the kernels read elements natively
 *   ARCHIVE/version, ...  small text members, not needed here
 *
 * In the pickle a tensor is the call
 *
 *   torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
 *                                   backward_hooks[, metadata])
 *
 * where `storage` is a persistent id, the tuple ('storage', torch.HalfStorage, KEY, location,
 * numel): element type, member name and element count of the storage. The tensor is the
 * strided view of that storage: element (i0, i1, ...) lives at storage element
 * storage_offset + i0 x stride[0] + i1 x stride[1] + ... . Several tensors may view one
 * storage (fused q/k/v slices, a transposed copy, a tied weight), and a tensor object may be
 * stored once and named twice (the pickle memo). Parameters wrap the tensor once more:
 * torch._utils._rebuild_parameter(tensor, requires_grad, backward_hooks).
 *
 * Reading, step by step:
 *   1. Map the file read-only. A pickle at byte 0 (0x80) is the legacy pre-1.6 format: refused.
 *   2. libzip opens the archive from the mapping (ZIP_CHECKCONS: central directory and local
 *      headers must agree) and lists the members; exactly one ARCHIVE/data.pkl must exist.
 *   3. data.pkl is read through libzip (which checks its CRC) and handed to pickle.c with the
 *      allow-list below; the result is walked to a fixed depth (no recursion on file data).
 *   4. Each storage is found by name, must be stored uncompressed, and its byte count must
 *      equal numel x element size. Its bytes are used in place in the mapping: libzip has no
 *      call that returns a member's data offset, so we read the first bytes of the member
 *      through libzip from a zip source of our own that records where libzip read them, and
 *      check that the mapping holds the same bytes there. This keeps the 2.6 GB of an opt-1.3b
 *      in the page cache, shared and paged in on demand, instead of a second copy on the heap;
 *      the price is that the CRC of tensor data is not checked (safetensors has none either).
 *   5. Each view is checked against its storage with overflow-safe arithmetic (every element it
 *      can reach lies inside the storage); a contiguous view points into the mapping, any other
 *      is copied out in row-major order. */
#include "torchbin.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include "pickle.h"

#define MAX_DIM ((int64_t)1 << 40)   /* a dimension, a stride or an offset, in elements */
#define PROBE_BYTES 4096            /* bytes read through libzip to locate a member's data */

/* The only globals a checkpoint's pickle may name. */
static const char *const ALLOWED_GLOBALS[] = {
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.HalfStorage", "torch.BFloat16Storage", "torch.FloatStorage", "torch.CharStorage", "torch.ByteStorage",
    /* Storage types we cannot use: allowed in the pickle so the error can name the dtype. */
    "torch.DoubleStorage", "torch.LongStorage", "torch.IntStorage", "torch.ShortStorage", "torch.BoolStorage",
    "torch.ComplexFloatStorage", "torch.ComplexDoubleStorage",
    NULL,
};

static const struct {
    const char *global, *torch_dtype;
    int dtype;                       /* a DType, or -1: not supported */
} STORAGE_TYPES[] = {
    {"torch.HalfStorage", "float16", DT_F16},     {"torch.BFloat16Storage", "bfloat16", DT_BF16},
    {"torch.FloatStorage", "float32", DT_F32},    {"torch.CharStorage", "int8", DT_I8},
    {"torch.ByteStorage", "uint8", DT_U8},        {"torch.DoubleStorage", "float64", -1},
    {"torch.LongStorage", "int64", -1},           {"torch.IntStorage", "int32", -1},
    {"torch.ShortStorage", "int16", -1},          {"torch.BoolStorage", "bool", -1},
    {"torch.ComplexFloatStorage", "complex64", -1}, {"torch.ComplexDoubleStorage", "complex128", -1},
};

/* ---- a zip source over the mapping that remembers where libzip read ---------------------- */

typedef struct MapSource {
    const unsigned char *data;
    uint64_t size, pos;
    int64_t first_read;     /* offset of the first read since it was set to -1 */
    zip_error_t error;
} MapSource;

static zip_int64_t map_source(void *user, void *data, zip_uint64_t len, zip_source_cmd_t cmd) {
    MapSource *s = user;
    switch (cmd) {
    case ZIP_SOURCE_OPEN: s->pos = 0; return 0;
    case ZIP_SOURCE_READ: {
        uint64_t n = s->pos < s->size ? s->size - s->pos : 0;
        if (n > len) n = len;
        if (s->first_read < 0) s->first_read = (int64_t)s->pos;
        if (n) memcpy(data, s->data + s->pos, (size_t)n);
        s->pos += n;
        return (zip_int64_t)n;
    }
    case ZIP_SOURCE_CLOSE: return 0;
    case ZIP_SOURCE_STAT: {
        zip_stat_t *st = data;
        if (len < sizeof *st) return -1;
        zip_stat_init(st);
        st->size = st->comp_size = s->size;
        st->comp_method = ZIP_CM_STORE;
        st->encryption_method = ZIP_EM_NONE;
        st->valid = ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE | ZIP_STAT_COMP_METHOD | ZIP_STAT_ENCRYPTION_METHOD;
        return sizeof *st;
    }
    case ZIP_SOURCE_ERROR: return zip_error_to_data(&s->error, data, len);
    case ZIP_SOURCE_FREE: return 0;
    case ZIP_SOURCE_SEEK: {
        zip_int64_t p = zip_source_seek_compute_offset(s->pos, s->size, data, len, &s->error);
        if (p < 0) return -1;
        s->pos = (uint64_t)p;
        return 0;
    }
    case ZIP_SOURCE_TELL: return (zip_int64_t)s->pos;
    case ZIP_SOURCE_SUPPORTS:
        return zip_source_make_command_bitmap(ZIP_SOURCE_OPEN, ZIP_SOURCE_READ, ZIP_SOURCE_CLOSE, ZIP_SOURCE_STAT,
                                              ZIP_SOURCE_ERROR, ZIP_SOURCE_FREE, ZIP_SOURCE_SEEK, ZIP_SOURCE_TELL,
                                              ZIP_SOURCE_SUPPORTS, -1);
    default: zip_error_set(&s->error, ZIP_ER_OPNOTSUPP, 0); return -1;
    }
}

/* ---- the reader's state ------------------------------------------------------------------ */

/* One storage (zip member), resolved on first use. */
typedef struct Storage {
    bool resolved;
    DType dtype;
    const unsigned char *data;  /* in the mapping */
    uint64_t numel;
} Storage;

typedef struct Reader {
    const char *path;
    unsigned char *map;
    size_t map_size;
    MapSource src;
    zip_t *zip;
    zip_int64_t n_members;
    char prefix[256];           /* ARCHIVE, the folder all members are in */
    Storage *storages;          /* indexed by zip member */
    StTensor *tensors;
    size_t n, cap;
    void **buffers;             /* copies of non-contiguous or misaligned views */
    size_t n_buffers;
    Error *err;
} Reader;

static const char *zip_message(zip_t *z) { return zip_error_strerror(zip_get_error(z)); }

/* ---- steps 1-3: the archive and its pickle ------------------------------------------------- */

static int map_file(Reader *r) {
    int fd = open(r->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return err_set(r->err, "%s: cannot open: %s", r->path, strerror(errno));
    struct stat st;
    int rc = -1;
    if (fstat(fd, &st) != 0) err_set(r->err, "%s: cannot stat: %s", r->path, strerror(errno));
    else if (!S_ISREG(st.st_mode)) err_set(r->err, "%s: not a regular file", r->path);
    else if (st.st_size < 22) err_set(r->err, "%s: %lld bytes is too short for a PyTorch checkpoint", r->path,
                                      (long long)st.st_size);
    else if ((uint64_t)st.st_size > SIZE_MAX) err_set(r->err, "%s: file too large to map", r->path);
    else {
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) err_set(r->err, "%s: cannot map the file: %s", r->path, strerror(errno));
        else r->map = m, r->map_size = (size_t)st.st_size, rc = 0;
    }
    close(fd);
    return rc;
}

static int open_archive(Reader *r) {
    if (r->map[0] == 0x80)
        return err_set(r->err,
                       "%s: this is PyTorch's legacy (pre-1.6) checkpoint format, which llmint8 does not read; "
                       "re-save it with torch.save from PyTorch 1.6 or later, or as safetensors",
                       r->path);
    if (memcmp(r->map, "PK\x03\x04", 4) != 0)
        return err_set(r->err, "%s: not a PyTorch checkpoint (neither a zip archive nor a legacy pickle)", r->path);
    r->src = (MapSource){.data = r->map, .size = r->map_size, .first_read = -1};
    zip_error_init(&r->src.error);
    zip_error_t ze;
    zip_error_init(&ze);
    zip_source_t *src = zip_source_function_create(map_source, &r->src, &ze);
    if (src) {
        r->zip = zip_open_from_source(src, ZIP_RDONLY | ZIP_CHECKCONS, &ze);
        if (!r->zip) zip_source_free(src);
    }
    if (!r->zip) {
        err_set(r->err, "%s: not a valid zip archive (%s)", r->path, zip_error_strerror(&ze));
        zip_error_fini(&ze);
        return -1;
    }
    zip_error_fini(&ze);
    r->n_members = zip_get_num_entries(r->zip, 0);
    if (r->n_members <= 0 || r->n_members > (zip_int64_t)TORCHBIN_MAX_MEMBERS)
        return err_set(r->err, "%s: the archive has %lld members (1 to %u expected)", r->path,
                       (long long)r->n_members, TORCHBIN_MAX_MEMBERS);
    if (!(r->storages = calloc((size_t)r->n_members, sizeof *r->storages)))
        return err_set(r->err, "%s: out of memory", r->path);
    return 0;
}

/* Finds ARCHIVE/data.pkl (exactly one member named so, one folder deep) and sets r->prefix. */
static int find_pickle(Reader *r, zip_uint64_t *index) {
    int found = 0;
    for (zip_int64_t i = 0; i < r->n_members; i++) {
        const char *name = zip_get_name(r->zip, (zip_uint64_t)i, ZIP_FL_ENC_RAW);
        if (!name) continue;
        const char *slash = strchr(name, '/');
        if (!slash || strcmp(slash, "/data.pkl") != 0) continue;
        size_t plen = (size_t)(slash - name);
        if (plen == 0 || plen >= sizeof r->prefix)
            return err_set(r->err, "%s: member '%.*s' has an empty or overlong folder name", r->path, 300, name);
        if (found++) return err_set(r->err, "%s: the archive holds more than one data.pkl", r->path);
        memcpy(r->prefix, name, plen);
        r->prefix[plen] = 0;
        *index = (zip_uint64_t)i;
    }
    if (!found)
        return err_set(r->err, "%s: a zip archive without ARCHIVE/data.pkl: not written by torch.save", r->path);
    return 0;
}

/* Reads data.pkl through libzip (decompressing it if need be, checking its CRC). */
static int read_pickle(Reader *r, zip_uint64_t index, unsigned char **out, size_t *len) {
    zip_stat_t st;
    if (zip_stat_index(r->zip, index, 0, &st) != 0 || !(st.valid & ZIP_STAT_SIZE))
        return err_set(r->err, "%s: cannot read %s/data.pkl: %s", r->path, r->prefix, zip_message(r->zip));
    if (st.size > TORCHBIN_MAX_PICKLE)
        return err_set(r->err, "%s: %s/data.pkl is %llu bytes, more than the %u-byte limit", r->path, r->prefix,
                       (unsigned long long)st.size, TORCHBIN_MAX_PICKLE);
    unsigned char *buf = malloc((size_t)st.size + 1);
    zip_file_t *zf = buf ? zip_fopen_index(r->zip, index, 0) : NULL;
    if (!zf) {
        free(buf);
        return err_set(r->err, "%s: cannot read %s/data.pkl: %s", r->path, r->prefix,
                       buf ? zip_message(r->zip) : "out of memory");
    }
    /* One byte more than the size: reading to the end is what makes libzip check the CRC. */
    zip_uint64_t got = 0;
    zip_int64_t k = 1;
    while (got <= st.size && (k = zip_fread(zf, buf + got, st.size + 1 - got)) > 0) got += (zip_uint64_t)k;
    int rc = 0;
    if (k < 0 || got != st.size)
        rc = err_set(r->err, "%s: cannot read %s/data.pkl: %s", r->path, r->prefix,
                     k < 0 ? zip_error_strerror(zip_file_get_error(zf)) : "wrong length");
    zip_fclose(zf);
    if (rc) {
        free(buf);
        return -1;
    }
    *out = buf;
    *len = (size_t)st.size;
    return 0;
}

/* A "byteorder" member, where present, must say "little". */
static int check_byteorder(Reader *r) {
    char name[300];
    snprintf(name, sizeof name, "%s/byteorder", r->prefix);
    zip_int64_t idx = zip_name_locate(r->zip, name, ZIP_FL_ENC_RAW);
    if (idx < 0) return 0;
    char text[16] = {0};
    zip_file_t *zf = zip_fopen_index(r->zip, (zip_uint64_t)idx, 0);
    zip_int64_t got = zf ? zip_fread(zf, text, sizeof text - 1) : -1;
    if (zf) zip_fclose(zf);
    if (got == 6 && memcmp(text, "little", 6) == 0) return 0;
    return err_set(r->err, "%s: %s does not say \"little\": only little-endian checkpoints are read", r->path,
                   name);
}

/* ---- step 4: storages ------------------------------------------------------------------------ */

/* Where a stored member's bytes start in the mapping (see the top of the file). */
static int locate_member(Reader *r, zip_uint64_t index, uint64_t size, const char *member, const unsigned char **out) {
    if (size == 0) {
        *out = r->map;
        return 0;
    }
    zip_file_t *zf = zip_fopen_index(r->zip, index, 0);
    if (!zf) return err_set(r->err, "%s: cannot read member %s: %s", r->path, member, zip_message(r->zip));
    unsigned char probe[PROBE_BYTES];
    size_t want = size < PROBE_BYTES ? (size_t)size : PROBE_BYTES;
    r->src.first_read = -1;
    zip_int64_t got = zip_fread(zf, probe, want);
    int64_t at = r->src.first_read;
    zip_fclose(zf);
    if (got != (zip_int64_t)want || at < 0 || (uint64_t)at > r->map_size || size > r->map_size - (uint64_t)at ||
        memcmp(r->map + at, probe, want) != 0)
        return err_set(r->err, "%s: cannot locate the bytes of member %s in the file (corrupt archive)", r->path,
                       member);
    *out = r->map + at;
    return 0;
}

/* The persistent id ('storage', TYPE, KEY, location, numel) → a resolved Storage. */
static int resolve_storage(Reader *r, const PickleValue *pid, const char *tensor, Storage **out) {
    const PickleValue *t = pid->args;
    if (t->kind != PK_TUPLE || t->n != 5 || t->items[0]->kind != PK_STR || strcmp(t->items[0]->str, "storage") != 0 ||
        t->items[1]->kind != PK_GLOBAL || t->items[2]->kind != PK_STR || t->items[4]->kind != PK_INT)
        return err_set(r->err, "%s: tensor '%s': its storage reference is not ('storage', type, key, location, numel)",
                       r->path, tensor);
    const char *type = t->items[1]->str, *key = t->items[2]->str;
    int dtype = -2;
    const char *torch_dtype = "?";
    for (size_t i = 0; i < sizeof STORAGE_TYPES / sizeof STORAGE_TYPES[0]; i++)
        if (strcmp(type, STORAGE_TYPES[i].global) == 0) dtype = STORAGE_TYPES[i].dtype, torch_dtype = STORAGE_TYPES[i].torch_dtype;
    if (dtype == -2) return err_set(r->err, "%s: tensor '%s': %s is not a storage type", r->path, tensor, type);
    if (dtype < 0)
        return err_set(r->err, "%s: tensor '%s' is stored as %s (%s); llmint8 reads float16, bfloat16 and float32 "
                       "tensors (and int8/uint8)", r->path, tensor, torch_dtype, type);
    size_t klen = t->items[2]->len;
    bool plain = klen > 0 && klen <= 64;
    for (size_t i = 0; plain && i < klen; i++) {
        char ch = key[i];
        plain = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
    }
    if (!plain) return err_set(r->err, "%s: tensor '%s': storage key is not a short plain name", r->path, tensor);
    int64_t numel = t->items[4]->i;
    if (numel < 0 || numel > MAX_DIM)
        return err_set(r->err, "%s: tensor '%s': storage element count %lld out of range", r->path, tensor,
                       (long long)numel);

    char member[400];
    snprintf(member, sizeof member, "%s/data/%s", r->prefix, key);
    zip_int64_t idx = zip_name_locate(r->zip, member, ZIP_FL_ENC_RAW);
    if (idx < 0 || idx >= r->n_members)
        return err_set(r->err, "%s: tensor '%s': its storage %s is not in the archive", r->path, tensor, member);
    Storage *s = &r->storages[idx];
    if (s->resolved) {
        if ((int)s->dtype != dtype || s->numel != (uint64_t)numel)
            return err_set(r->err, "%s: storage %s is referenced with two different types or sizes", r->path, member);
        *out = s;
        return 0;
    }
    zip_stat_t st;
    if (zip_stat_index(r->zip, (zip_uint64_t)idx, 0, &st) != 0)
        return err_set(r->err, "%s: cannot read member %s: %s", r->path, member, zip_message(r->zip));
    if ((st.valid & ZIP_STAT_COMP_METHOD) && st.comp_method != ZIP_CM_STORE)
        return err_set(r->err, "%s: member %s is compressed (zip method %d); torch.save stores tensors uncompressed "
                       "and llmint8 maps them in place", r->path, member, (int)st.comp_method);
    if ((st.valid & ZIP_STAT_ENCRYPTION_METHOD) && st.encryption_method != ZIP_EM_NONE)
        return err_set(r->err, "%s: member %s is encrypted", r->path, member);
    uint64_t esize = dtype_size((DType)dtype);
    if (!(st.valid & ZIP_STAT_SIZE) || st.size != (uint64_t)numel * esize)
        return err_set(r->err, "%s: tensor '%s': storage %s holds %llu bytes, but %lld %s elements need %llu", r->path,
                       tensor, member, (unsigned long long)st.size, (long long)numel, torch_dtype,
                       (unsigned long long)numel * esize);
    if (locate_member(r, (zip_uint64_t)idx, st.size, member, &s->data)) return -1;
    s->dtype = (DType)dtype;
    s->numel = (uint64_t)numel;
    s->resolved = true;
    *out = s;
    return 0;
}

/* ---- step 5: views --------------------------------------------------------------------------- */

/* A tuple of whole numbers in [0, MAX_DIM], at most ST_MAX_DIMS of them. */
static bool dims_tuple(const PickleValue *v, int64_t *out, int *n) {
    if (v->kind != PK_TUPLE || v->n > ST_MAX_DIMS) return false;
    for (size_t i = 0; i < v->n; i++) {
        if (v->items[i]->kind != PK_INT || v->items[i]->i < 0 || v->items[i]->i > MAX_DIM) return false;
        out[i] = v->items[i]->i;
    }
    *n = (int)v->n;
    return true;
}

/* Copies a strided view out in row-major order; rows are memcpy'd when the last stride is 1. */
static void gather(unsigned char *dst, const unsigned char *base, size_t esize, int ndim, const int64_t *shape,
                   const int64_t *stride) {
    int64_t idx[ST_MAX_DIMS] = {0};
    int last = ndim - 1;
    int64_t row = ndim ? shape[last] : 1;
    bool rows = ndim && stride[last] == 1;
    for (;;) {
        int64_t off = 0;
        for (int d = 0; d < last; d++) off += idx[d] * stride[d];
        if (rows) {
            memcpy(dst, base + (size_t)off * esize, (size_t)row * esize);
            dst += (size_t)row * esize;
        } else if (ndim == 0) {
            memcpy(dst, base, esize);
            return;
        } else {
            for (int64_t i = 0; i < row; i++, dst += esize) memcpy(dst, base + (size_t)(off + i * stride[last]) * esize, esize);
        }
        int d = last - 1;
        while (d >= 0 && ++idx[d] == shape[d]) idx[d--] = 0;
        if (d < 0) return;
    }
}

static int add_buffer(Reader *r, void *buf) {
    void **b = realloc(r->buffers, (r->n_buffers + 1) * sizeof *b);
    if (!b) {
        free(buf);
        return err_set(r->err, "%s: out of memory", r->path);
    }
    r->buffers = b;
    r->buffers[r->n_buffers++] = buf;
    return 0;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) → t. */
static int build_tensor(Reader *r, const char *name, const PickleValue *args, StTensor *t) {
    int64_t stride[ST_MAX_DIMS];
    int nstride = -1;
    if (args->n < 6 || args->n > 7 || args->items[0]->kind != PK_PERSID || args->items[1]->kind != PK_INT ||
        !dims_tuple(args->items[2], t->shape, &t->ndim) || !dims_tuple(args->items[3], stride, &nstride) ||
        nstride != t->ndim || args->items[1]->i < 0 || args->items[1]->i > MAX_DIM)
        return err_set(r->err, "%s: tensor '%s': malformed tensor record (storage, offset, size, stride: at most %d "
                       "dimensions, whole numbers from 0 to 2^40)", r->path, name, ST_MAX_DIMS);
    Storage *s = NULL;
    if (resolve_storage(r, args->items[0], name, &s)) return -1;
    t->dtype = s->dtype;
    uint64_t offset = (uint64_t)args->items[1]->i, esize = dtype_size(s->dtype);

    /* numel, and the last storage element the view reaches: offset + sum (size-1) x stride.
     * Each term is below 2^80 before the overflow check, so the builtins catch everything. */
    uint64_t numel = 1, last = offset;
    bool overflow = false, contiguous = true;
    uint64_t expect = 1; /* row-major stride of dimension d */
    for (int d = t->ndim - 1; d >= 0; d--) {
        uint64_t n = (uint64_t)t->shape[d], st = (uint64_t)stride[d], reach;
        overflow |= __builtin_mul_overflow(numel, n, &numel);
        if (n > 1 && st != expect) contiguous = false;
        overflow |= __builtin_mul_overflow(expect, n ? n : 1, &expect);
        if (n == 0) continue;
        overflow |= __builtin_mul_overflow(n - 1, st, &reach) || __builtin_add_overflow(last, reach, &last);
    }
    if (overflow || numel > (uint64_t)MAX_DIM)
        return err_set(r->err, "%s: tensor '%s': shape or strides too large", r->path, name);
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)(numel * esize);
    if (numel == 0) {
        t->data = r->map;
        return 0;
    }
    if (last >= s->numel)
        return err_set(r->err, "%s: tensor '%s': the view reaches storage element %llu, but the storage has %llu",
                       r->path, name, (unsigned long long)last, (unsigned long long)s->numel);
    const unsigned char *base = s->data + offset * esize;
    if (contiguous && (uintptr_t)base % esize == 0) {
        t->data = base;
        return 0;
    }
    /* A view whose elements do not overlap has at most as many elements as its storage; more
     * means an expanded or self-overlapping view, which a state_dict does not hold. This also
     * bounds the copy by the file size. */
    if (numel > s->numel)
        return err_set(r->err, "%s: tensor '%s' has %llu elements viewing a storage of %llu (an expanded view), "
                       "which llmint8 does not read", r->path, name, (unsigned long long)numel,
                       (unsigned long long)s->numel);
    unsigned char *copy = malloc(t->nbytes);
    if (!copy) return err_set(r->err, "%s: tensor '%s': out of memory", r->path, name);
    if (contiguous) memcpy(copy, base, t->nbytes);
    else gather(copy, base, esize, t->ndim, t->shape, stride);
    t->data = copy;
    return add_buffer(r, copy);
}

static bool is_call(const PickleValue *v, const char *global) {
    return v->kind == PK_OBJECT && strcmp(v->callable->str, global) == 0;
}

/* One state_dict entry: name → tensor (a Parameter is unwrapped first). */
static int add_entry(Reader *r, const PickleValue *key, const PickleValue *value) {
    if (key->kind != PK_STR)
        return err_set(r->err, "%s: a state_dict key is not a string (found: %s)", r->path, pickle_kind_name(key->kind));
    if (key->len == 0 || key->len > TORCHBIN_MAX_NAME || strlen(key->str) != key->len)
        return err_set(r->err, "%s: a tensor name is empty, longer than %d bytes or contains a NUL byte", r->path,
                       TORCHBIN_MAX_NAME);
    const char *name = key->str;
    for (int wraps = 0; wraps < 4 && (is_call(value, "torch._utils._rebuild_parameter") ||
                                      is_call(value, "torch._utils._rebuild_parameter_with_state"));
         wraps++)
        if (value->args->n < 1 || !(value = value->args->items[0])) break;
    if (!is_call(value, "torch._utils._rebuild_tensor_v2"))
        return err_set(r->err, "%s: state_dict entry '%s' is not a tensor (found: %s%s%s)", r->path, name,
                       pickle_kind_name(value->kind), value->kind == PK_OBJECT ? " built by " : "",
                       value->kind == PK_OBJECT ? value->callable->str : "");
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 64;
        StTensor *ts = realloc(r->tensors, cap * sizeof *ts);
        if (!ts) return err_set(r->err, "%s: out of memory", r->path);
        r->tensors = ts;
        r->cap = cap;
    }
    StTensor *t = &r->tensors[r->n];
    memset(t, 0, sizeof *t);
    if (build_tensor(r, name, value->args, t)) return -1;
    char *copy = malloc(key->len + 1);
    if (!copy) return err_set(r->err, "%s: out of memory", r->path);
    memcpy(copy, name, key->len + 1);
    t->name = copy;
    r->n++;
    return 0;
}

/* The pickle's value: a dict, or OrderedDict() with items set on it. */
static int add_state_dict(Reader *r, const PickleValue *root) {
    if (!(root->kind == PK_DICT || (is_call(root, "collections.OrderedDict") && root->args->n == 0)))
        return err_set(r->err, "%s: data.pkl holds no state_dict, i.e. no dict of tensors (found: %s)", r->path,
                       root->kind == PK_OBJECT ? root->callable->str : pickle_kind_name(root->kind));
    if (root->n == 0) return err_set(r->err, "%s: the state_dict holds no tensors", r->path);
    for (size_t i = 0; i + 1 < root->n; i += 2)
        if (add_entry(r, root->items[i], root->items[i + 1])) return -1;
    return 0;
}

int torchbin_open(const char *path, StFile **out, Error *err) {
    *out = NULL;
    Reader r = {.path = path, .err = err};
    unsigned char *pkl = NULL;
    size_t pkl_len = 0;
    PickleDoc *doc = NULL;
    zip_uint64_t pkl_index = 0;
    int rc = -1;
    if (map_file(&r) || open_archive(&r) || find_pickle(&r, &pkl_index) || check_byteorder(&r) ||
        read_pickle(&r, pkl_index, &pkl, &pkl_len))
        goto done;
    if (pickle_load(pkl, pkl_len, ALLOWED_GLOBALS, &doc, err)) {
        err_prefix(err, "%s: %s/data.pkl", path, r.prefix);
        goto done;
    }
    if (add_state_dict(&r, pickle_root(doc))) goto done;
    rc = 0;
done:
    pickle_free(doc);
    free(pkl);
    if (r.zip) zip_discard(r.zip);
    free(r.storages);
    if (rc == 0) {
        rc = st_adopt(path, r.tensors, r.n, r.map, r.map_size, r.buffers, r.n_buffers, out, err);
    } else {
        for (size_t i = 0; i < r.n; i++) free((char *)r.tensors[i].name);
        for (size_t i = 0; i < r.n_buffers; i++) free(r.buffers[i]);
        free(r.tensors);
        free(r.buffers);
        if (r.map) munmap(r.map, r.map_size);
    }
    return rc;
}
