/* cli.c — the pieces every command shares (see cli.h). */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fileio.h"
#include "utf8.h"

const char CLI_COMMON_HELP[] =
    "Common options:\n"
    "  --precision fp16|int8  int8 (default): LLM.int8() projections; fp16: 16-bit weights as stored\n"
    "  --quant MODE           quantization of every projection (overrides --precision):\n"
    "                         llm.int8, vectorwise, rowwise, rowwise+decomp, absmax, zeropoint,\n"
    "                         vectorwise-zeropoint, llm.int8-zeropoint, fp16 (see docs/QUANT.md)\n"
    "  --threshold T          outlier threshold for the decomposition (default: the checkpoint's\n"
    "                         llm_int8_threshold, else 6.0; 0 turns the decomposition off)\n"
    "  --outliers per-call|per-token  outlier columns chosen over the whole call (bitsandbytes,\n"
    "                         default) or per token (results independent of the rest of the batch)\n"
    "  --device cpu|cuda|auto where to run (default cpu); a list such as cpu,cpu runs the layers as a\n"
    "                         pipeline, one stage per device (generate, ppl, serve; docs/PIPELINE.md)\n"
    "  --split N,N,...        layers per pipeline stage (default: balanced by bytes of weights)\n"
    "  --threads N            CPU threads (default: one per core)\n"
    "  --tokenizer DIR        tokenizer files from DIR instead of MODEL_DIR\n"
    "  --kv-cache f32|f16     how the KV cache stores keys and values: f32 (default; what the\n"
    "                         goldens were computed with) or f16 (IEEE half: half the memory)\n"
    "  -h, --help             this help\n";

void cli_common_defaults(CommonOptions *o) {
    memset(o, 0, sizeof *o);
    o->quant.mode = QUANT_LLM_INT8;
    o->quant.threshold = 6.0f;
    o->quant.outliers = OUTLIERS_PER_CALL;
    o->device = "cpu";
    o->threads = 0;
}

int cli_parse_int(const char *s, long lo, long hi, long *out) {
    const char *digits = s[0] == '-' ? s + 1 : s;
    if (!(*digits >= '0' && *digits <= '9')) return -1; /* strtol would skip spaces, take '+' */
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int cli_parse_float(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return -1;
    *out = v;
    return 0;
}

int cli_parse_u64(const char *s, uint64_t *out) {
    if (!(*s >= '0' && *s <= '9')) return -1; /* strtoull would take "-1" as 2^64 - 1 */
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1; /* ERANGE: 2^64 and beyond */
    *out = v;
    return 0;
}

int cli_int_option(const char *cmd, const char *name, const char *arg, long lo, long hi, long *out) {
    if (cli_parse_int(arg, lo, hi, out) == 0) return 0;
    return cli_usage_error(cmd, "%s '%s': expected a whole number from %ld to %ld", name, arg, lo, hi);
}

int cli_u64_option(const char *cmd, const char *name, const char *arg, uint64_t *out) {
    if (cli_parse_u64(arg, out) == 0) return 0;
    return cli_usage_error(cmd, "%s '%s': expected a whole number from 0 to %llu", name, arg,
                           (unsigned long long)UINT64_MAX);
}

/* A bad value of a common option: "llmint8: error: <fmt...>". */
static void option_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int cli_common_option(int code, const char *arg, CommonOptions *o) {
    double d;
    long l;
    switch (code) {
    case ARG_PRECISION:
        if (strcmp(arg, "fp16") == 0) o->quant.mode = QUANT_FP16;
        else if (strcmp(arg, "int8") == 0) o->quant.mode = QUANT_LLM_INT8;
        else {
            option_error("--precision '%s': expected fp16 or int8", arg);
            return -1;
        }
        o->quant_given = true;
        return 1;
    case ARG_QUANT:
        if (quant_mode_parse(arg, &o->quant.mode) != 0) {
            option_error("--quant '%s' is not a quantization mode (see --help)", arg);
            return -1;
        }
        o->quant_given = true;
        return 1;
    case ARG_THRESHOLD:
        if (cli_parse_float(arg, 0.0, 65504.0, &d) != 0) {
            option_error("--threshold '%s': expected a number from 0 to 65504", arg);
            return -1;
        }
        o->quant.threshold = (float)d;
        o->threshold_given = true;
        return 1;
    case ARG_OUTLIERS:
        if (strcmp(arg, "per-call") == 0) o->quant.outliers = OUTLIERS_PER_CALL;
        else if (strcmp(arg, "per-token") == 0) o->quant.outliers = OUTLIERS_PER_TOKEN;
        else {
            option_error("--outliers '%s': expected per-call or per-token", arg);
            return -1;
        }
        return 1;
    case ARG_DEVICE:
        if (strchr(arg, ',')) {
            char names[PIPELINE_MAX_STAGES][16];
            Error derr;
            if (pipeline_parse_devices(arg, names, PIPELINE_MAX_STAGES, &derr) < 0) {
                option_error("%s", derr.msg);
                return -1;
            }
        } else if (strcmp(arg, "cpu") && strcmp(arg, "cuda") && strcmp(arg, "auto")) {
            option_error("--device '%s': expected cpu, cuda or auto", arg);
            return -1;
        }
        o->device = arg;
        return 1;
    case ARG_SPLIT:
        if (!*arg || strspn(arg, "0123456789,") != strlen(arg)) {
            option_error("--split '%s': expected layer counts separated by commas, such as 12,12", arg);
            return -1;
        }
        o->split = arg;
        return 1;
    case ARG_THREADS:
        if (cli_parse_int(arg, 1, 1024, &l) != 0) {
            option_error("--threads '%s': expected a whole number from 1 to 1024", arg);
            return -1;
        }
        o->threads = (int)l;
        return 1;
    case ARG_TOKENIZER:
        o->tokenizer_dir = arg;
        return 1;
    case ARG_KV_CACHE:
        if (strcmp(arg, "f16") == 0) o->kv_f16 = true;
        else if (strcmp(arg, "f32") == 0) o->kv_f16 = false;
        else {
            option_error("--kv-cache '%s': expected f32 or f16", arg);
            return -1;
        }
        return 1;
    default:
        return 0;
    }
}

void cli_write_escaped(FILE *f, const char *s, size_t len, char quote) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        unsigned c = p[i];
        size_t k = utf8_valid_length(p + i, len - i);
        if (c == '\n') fputs("\\n", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c == '\t') fputs("\\t", f);
        else if (quote && c == (unsigned char)quote) fprintf(f, "\\%c", quote);
        else if (c < 0x20 || c == 0x7f || k == 0) fprintf(f, "\\x%02x", c);
        else if (k == 2 && c == 0xC2 && p[i + 1] < 0xA0) fprintf(f, "\\u%04x", p[i + 1]); /* C1: U+0080..U+009F */
        else fwrite(p + i, 1, k, f);
        i += k ? k : 1;
    }
}

/* prefix + the escaped message + newline, on stderr. */
static void print_message(const char *prefix, const char *msg) {
    fputs(prefix, stderr);
    cli_write_escaped(stderr, msg, strlen(msg), 0);
    fputc('\n', stderr);
}

static void print_formatted(const char *prefix, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
static void print_formatted(const char *prefix, const char *fmt, va_list ap) {
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    print_message(prefix, msg);
}

int cli_fail(const Error *err) {
    print_message("llmint8: error: ", err->msg);
    return 1;
}

static void option_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    print_formatted("llmint8: error: ", fmt, ap);
    va_end(ap);
}

void cli_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    print_formatted("llmint8: warning: ", fmt, ap);
    va_end(ap);
}

void cli_note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    print_formatted("llmint8: ", fmt, ap);
    va_end(ap);
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    char prefix[64];
    snprintf(prefix, sizeof prefix, "llmint8 %s: ", cmd);
    va_list ap;
    va_start(ap, fmt);
    print_formatted(prefix, fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try 'llmint8 %s --help'.\n", cmd);
    return 2;
}

/* errno of the first failed write cli_flush_stdout saw: stdio keeps only the error flag. */
static int g_stdout_errno;

int cli_flush_stdout(void) {
    errno = 0;
    if (fflush(stdout) == 0 && !ferror(stdout)) return 0;
    if (!g_stdout_errno) g_stdout_errno = errno;
    return -1;
}

void cli_close_stdout(void) {
    errno = 0;
    bool failed = fflush(stdout) != 0;
    int why = errno;
    if (ferror(stdout)) failed = true;
    if (fclose(stdout) != 0 && !failed) {
        failed = true;
        why = errno;
    }
    if (!failed) return;
    if (g_stdout_errno) why = g_stdout_errno;
    if (why == EPIPE) return;
    if (why) fprintf(stderr, "llmint8: error: error writing standard output: %s\n", strerror(why));
    else fprintf(stderr, "llmint8: error: error writing standard output\n");
    _exit(1);
}

/* MODEL_DIR must be a directory (symlinks followed). What it is otherwise is said as it is:
 * absent, a dangling symlink, a symlink loop ("too many levels of symbolic links"), a file. */
static int check_model_dir(const char *path, Error *err) {
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) return 0;
        return err_set(err, "%s: not a directory (expected a checkpoint directory)", path);
    }
    int e = errno;
    if (e == ENOENT && lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
        return err_set(err, "%s: a symbolic link to nothing (its target does not exist)", path);
    if (e == ENOENT) return err_set(err, "%s: no such directory (expected a checkpoint directory)", path);
    return err_set(err, "%s: %s", path, strerror(e));
}

Backend *cli_backend_create(const char *device, int threads, Error *err) {
    Error fallback;
    Backend *bk = backend_create(device, threads, &fallback, err);
    if (bk && fallback.msg[0]) cli_note("%s", fallback.msg);
    return bk;
}

/* One line for the tensors the config does not use (checkpoint_unused): the first few by
 * name and the count. */
static void warn_unused(const Checkpoint *ck) {
    enum { NAMES_SHOWN = 3 };
    size_t n = checkpoint_unused_count(ck);
    if (n == 0) return;
    char names[512] = "";
    for (size_t i = 0; i < n && i < NAMES_SHOWN; i++) {
        size_t len = strlen(names);
        snprintf(names + len, sizeof names - len, "%s'%s'", i ? ", " : "", checkpoint_unused(ck, i)->name);
    }
    cli_warn("%s: %zu stored tensor%s not used by this config, ignored: %s%s (llmint8 info lists them)",
             checkpoint_dir(ck), n, n == 1 ? " is" : "s are", names, n > NAMES_SHOWN ? ", ..." : "");
}

/* The first device of a --device list, as backend_create takes it. */
static const char *first_device(const char *device, char *buf, size_t cap) {
    size_t len = strcspn(device, ",");
    snprintf(buf, cap, "%.*s", (int)len, device);
    if (strcmp(buf, "cuda:0") == 0) snprintf(buf, cap, "cuda");
    return buf;
}

static int session_open(const CommonOptions *o, bool need_tokenizer, bool want_tokenizer, Session *s, Error *err);

int cli_session_open(const CommonOptions *o, bool need_tokenizer, bool want_tokenizer, Session *s,
                     Error *err) {
    int rc = session_open(o, need_tokenizer, want_tokenizer, s, err);
    /* under mpirun, a message from another rank than 0 says which */
    if (rc && o->pipelined && pipeline_mpi_rank() > 0) err_prefix(err, "rank %d", pipeline_mpi_rank());
    return rc;
}

static int session_open(const CommonOptions *o, bool need_tokenizer, bool want_tokenizer, Session *s, Error *err) {
    memset(s, 0, sizeof *s);
    const bool mpi = o->pipelined && pipeline_mpi_active();
    const char *model_dir = o->model_dir;
    if (mpi && getenv("LLMINT8_MODEL_DIR") && *getenv("LLMINT8_MODEL_DIR")) model_dir = getenv("LLMINT8_MODEL_DIR");
    if (mpi && strchr(o->device, ','))
        return err_set(err, "--device %s: under mpirun each rank is one stage on one device", o->device);
    if (!o->pipelined && strchr(o->device, ','))
        return err_set(err, "--device %s: a list of devices (a pipeline) is for generate, ppl and serve", o->device);
    if (check_model_dir(model_dir, err)) return -1;
    if (checkpoint_open(model_dir, &s->ck, err)) return -1;
    if (!o->lists_unused) warn_unused(s->ck);

    if (need_tokenizer || want_tokenizer) {
        const char *dir = o->tokenizer_dir ? o->tokenizer_dir : o->model_dir;
        Error terr;
        if (tokenizer_load(dir, &s->tok, &terr)) {
            s->tok = NULL;
            if (need_tokenizer || o->tokenizer_dir) {
                *err = terr;
                cli_session_close(s);
                return -1;
            }
        }
    }
    /* Ids the model has no embedding for would be read out of bounds, or (after a check
     * in the model) stop a run half-way: refuse such a tokenizer before any work. */
    const int vocab = checkpoint_config(s->ck)->vocab_size;
    if (s->tok && tokenizer_vocab_size(s->tok) > vocab) {
        err_set(err, "%s: the tokenizer has ids up to %d but the model's vocabulary has %d (the tokenizer of another "
                "model?)", o->tokenizer_dir ? o->tokenizer_dir : o->model_dir, tokenizer_vocab_size(s->tok) - 1, vocab);
        cli_session_close(s);
        return -1;
    }
    char dev[16];
    if (!(s->bk = cli_backend_create(first_device(o->device, dev, sizeof dev), o->threads, err))) {
        cli_session_close(s);
        return -1;
    }
    if (mpi && pipeline_mpi_rank() > 0) {
        /* this rank serves its stage of rank 0's pipeline, and never comes back */
        if (s->tok) tokenizer_free(s->tok);
        pipeline_mpi_worker(s->ck, s->bk);
    }
    return 0;
}

int cli_session_load_model(Session *s, const CommonOptions *o, const ModelOptions *mo, Error *err) {
    const ModelConfig *cfg = checkpoint_config(s->ck);
    if (s->pipe) {
        pipeline_report(s->pipe);
        pipeline_free(s->pipe);
    } else if (s->model) {
        model_free(s->model);
    }
    s->model = NULL, s->pipe = NULL;
    /* The threshold: --threshold, else the 8-bit checkpoint's own, else 6.0. */
    ModelOptions opts = *mo;
    opts.quant = o->quant;
    opts.kv_f16 = mo->kv_f16 || o->kv_f16;
    if (!o->threshold_given && cfg->load_in_8bit) opts.quant.threshold = cfg->int8_threshold;
    if (!quant_mode_uses_decomposition(opts.quant.mode)) opts.quant.threshold = 0.0f;
    int rc;
    if (o->pipelined && pipeline_mpi_active())
        rc = pipeline_open_mpi(s->ck, s->bk, o->split, &opts, &s->pipe, err);
    else if (o->pipelined && strchr(o->device, ','))
        rc = pipeline_open_local(s->ck, s->bk, o->device, o->threads, o->split, &opts, &s->pipe, err);
    else if (o->split)
        return err_set(err, "--split is for a pipeline: give a list of devices (--device cpu,cpu) or run under mpirun");
    else
        return model_load(s->ck, s->bk, &opts, &s->model, err);
    if (rc == 0) s->model = pipeline_first_model(s->pipe);
    return rc;
}

float *cli_forward_last(Session *s, const int32_t *ids, int T, Backend **bk, Error *err) {
    if (s->pipe) return pipeline_forward_last(s->pipe, ids, T, bk, err);
    *bk = s->bk;
    return model_forward_last(s->model, ids, T, err);
}

void cli_session_close(Session *s) {
    if (s->pipe) {
        pipeline_report(s->pipe);
        pipeline_free(s->pipe);
    } else if (s->model) {
        model_free(s->model);
    }
    if (s->bk) s->bk->destroy(s->bk);
    if (s->tok) tokenizer_free(s->tok);
    if (s->ck) checkpoint_close(s->ck);
    memset(s, 0, sizeof *s);
}

int cli_read_file(const char *path, char **data, size_t *len, Error *err) {
    return read_input_file(path, data, len, err);
}

int cli_read_ids(const char *path, int vocab, int32_t **ids, size_t *n, Error *err) {
    char *text;
    size_t len;
    if (cli_read_file(path, &text, &len, err)) return -1;
    const char *name = strcmp(path, "-") == 0 ? "standard input" : path; /* for messages */
    size_t cap = 1024, count = 0;
    int32_t *out = malloc(cap * sizeof *out);
    const char *p = text, *end = text + len;
    while (out) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ',')) p++;
        if (p >= end) break;
        const char *start = p;
        long v = 0;
        while (p < end && *p >= '0' && *p <= '9' && v <= vocab) v = v * 10 + (*p++ - '0');
        while (p < end && *p >= '0' && *p <= '9') p++;
        bool sep = p >= end || *p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ',';
        if (p == start || !sep || v >= vocab) {
            /* The message quotes the text, so it is written before the text is freed. */
            if (p == start || !sep)
                err_set(err, "%s: token %zu is not a whole number (ids are separated by whitespace)", name,
                        count + 1);
            else
                err_set(err, "%s: token %zu (%.*s) is outside the vocabulary (0..%d)", name, count + 1,
                        (int)(p - start > 20 ? 20 : p - start), start, vocab - 1);
            free(out);
            free(text);
            return -1;
        }
        if (count == cap) {
            int32_t *bigger = realloc(out, 2 * cap * sizeof *out);
            if (!bigger) { /* an error, never a truncated list */
                free(out);
                out = NULL;
                break;
            }
            out = bigger;
            cap *= 2;
        }
        out[count++] = (int32_t)v;
    }
    free(text);
    if (!out) return err_set(err, "%s: out of memory", name);
    if (count == 0) {
        free(out);
        return err_set(err, "%s: no token ids in the file", name);
    }
    *ids = out;
    *n = count;
    return 0;
}

int cli_text_option(const char *cmd, int code, const char *arg, TextOptions *t) {
    switch (code) {
    case 'f': t->text_file = arg; return 1;
    case ARG_IDS: t->ids_file = arg; return 1;
    case ARG_CTX:
        return cli_int_option(cmd, "--ctx", arg, 2, 1 << 20, &t->ctx) ? -1 : 1;
    case ARG_MAX_TOKENS:
        if (cli_parse_int(arg, 0, 1L << 40, &t->max_tokens) || t->max_tokens == 1) {
            cli_usage_error(cmd, "--max-tokens '%s': expected 0 (the whole text) or a whole number from 2 to %ld", arg,
                            1L << 40);
            return -1;
        }
        return 1;
    default: return 0;
    }
}

int cli_text_or_common_option(const char *cmd, int code, const char *arg, TextOptions *t, CommonOptions *co) {
    int r = cli_text_option(cmd, code, arg, t);
    if (r == 0) r = cli_common_option(code, arg, co);
    if (r < 0) return 2;
    if (r == 0) return cli_usage_error(cmd, "unknown option");
    return 0;
}

int cli_text_check(const char *cmd, const TextOptions *t) {
    if (!t->text_file == !t->ids_file) return cli_usage_error(cmd, "give exactly one of -f FILE and --ids FILE");
    return 0;
}

int cli_load_tokens(const Session *s, const TextOptions *t, int32_t **ids, size_t *n, int32_t *bos, Error *err) {
    const char *text_file = t->text_file, *ids_file = t->ids_file;
    const long max_tokens = t->max_tokens;
    const int vocab = checkpoint_config(s->ck)->vocab_size;
    *bos = -1;
    if (ids_file) {
        if (cli_read_ids(ids_file, vocab, ids, n, err)) return -1;
    } else {
        char *text;
        size_t len;
        if (cli_read_file(text_file, &text, &len, err)) return -1;
        int rc = tokenizer_encode(s->tok, text, len, false, ids, n, err);
        free(text);
        if (rc) return -1;
        if (tokenizer_uses_bos(s->tok)) *bos = tokenizer_bos_id(s->tok);
        /* A tokenizer from elsewhere (--tokenizer) may know ids the model does not. */
        for (size_t i = 0; i < *n; i++)
            if ((*ids)[i] >= vocab) {
                err_set(err, "%s: token id %d from the tokenizer is outside the model's vocabulary of %d",
                        text_file, (*ids)[i], vocab);
                free(*ids);
                return -1;
            }
        if (*bos >= vocab) {
            free(*ids);
            return err_set(err, "the tokenizer's BOS id %d is outside the model's vocabulary of %d", *bos, vocab);
        }
    }
    if (max_tokens > 0 && (long)*n > max_tokens) *n = (size_t)max_tokens;
    return 0;
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void progress_begin(Progress *p, const char *label, long total) {
    p->label = label;
    p->total = total > 0 ? total : 1;
    p->done = 0;
    p->t_start = cli_now();
    p->enabled = isatty(STDERR_FILENO);
    progress_update(p, 0);
}

void progress_update(Progress *p, long done) {
    p->done = done;
    if (!p->enabled) return;
    const int width = 30;
    int filled = (int)((double)width * (double)done / (double)p->total);
    if (filled > width) filled = width;
    double el = cli_now() - p->t_start;
    double eta = done > 0 ? el * (double)(p->total - done) / (double)done : 0;
    fprintf(stderr, "\r%s [", p->label);
    for (int i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %ld/%ld  %.0fs elapsed, %.0fs left ", done, p->total, el, eta);
    fflush(stderr);
}

void progress_end(Progress *p) {
    if (!p->enabled) return;
    progress_update(p, p->total);
    fputc('\n', stderr);
}
