/* cli.h — what every `llmint8 COMMAND` shares: common options, opening a model,
 * reporting errors.
 *
 * Each command lives in cmd_NAME.c as `int cmd_NAME(int argc, char **argv)` and
 * parses its arguments with getopt_long. Its option table starts with
 * CLI_COMMON_OPTIONS, and its `switch` hands unknown codes to cli_common_option().
 * Exit codes: 0 success, 1 error (a message "llmint8: error: ..." on stderr),
 * 2 usage error. */
#ifndef LLMINT8_CLI_H
#define LLMINT8_CLI_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "checkpoint.h"
#include "model.h"
#include "quant.h"
#include "tokenizer.h"

/* getopt_long codes of the long-only options (ARG_, so as not to read like the OPT model). */
enum {
    ARG_PRECISION = 1000, ARG_QUANT, ARG_THRESHOLD, ARG_OUTLIERS, ARG_DEVICE, ARG_THREADS,
    ARG_TOKENIZER, ARG_HELP, ARG_KV_CACHE,
    ARG_IDS = 1050, ARG_CTX, ARG_MAX_TOKENS,   /* CLI_TEXT_OPTIONS */
    ARG_COMMAND_BASE = 1100 /* commands number their own long-only options from here */
};

/* getopt_long entries for the options every command takes. */
#define CLI_COMMON_OPTIONS                                         \
    {"precision", required_argument, NULL, ARG_PRECISION},         \
    {"quant", required_argument, NULL, ARG_QUANT},                 \
    {"threshold", required_argument, NULL, ARG_THRESHOLD},         \
    {"outliers", required_argument, NULL, ARG_OUTLIERS},           \
    {"device", required_argument, NULL, ARG_DEVICE},               \
    {"threads", required_argument, NULL, ARG_THREADS},             \
    {"tokenizer", required_argument, NULL, ARG_TOKENIZER},         \
    {"kv-cache", required_argument, NULL, ARG_KV_CACHE},           \
    {"help", no_argument, NULL, 'h'}

/* Help text for the common options, printed by every command's --help. */
extern const char CLI_COMMON_HELP[];

typedef struct CommonOptions {
    const char *model_dir;      /* first positional argument */
    const char *tokenizer_dir;  /* --tokenizer; default: model_dir */
    QuantConfig quant;          /* --precision / --quant / --threshold / --outliers */
    bool threshold_given;       /* else the checkpoint's llm_int8_threshold or 6.0 */
    bool quant_given;
    const char *device;         /* --device cpu|cuda|auto (default cpu) */
    int threads;                /* --threads, <= 0: one per core */
    bool kv_f16;                /* --kv-cache f16: keys and values cached as IEEE half */
    bool lists_unused;          /* the command prints the checkpoint's unused tensors itself
                                 * (info); others get one warning line from cli_session_open */
} CommonOptions;

void cli_common_defaults(CommonOptions *o);
/* Handles one common option code. Returns 1 if handled, 0 if `code` is not a common
 * option, -1 after printing an error about a bad value. */
int cli_common_option(int code, const char *arg, CommonOptions *o);

/* The text a scoring command (ppl, outliers) reads: -f FILE or --ids FILE, the first
 * --max-tokens of it, in windows of --ctx tokens. Its getopt_long entries are
 * CLI_TEXT_OPTIONS (with "f:" in the short options); its switch hands the codes to
 * cli_text_option() before cli_common_option(). */
typedef struct TextOptions {
    const char *text_file, *ids_file;
    long ctx;                   /* 0: not given */
    long max_tokens;            /* 0: the whole text */
} TextOptions;

#define CLI_TEXT_OPTIONS                                           \
    {"file", required_argument, NULL, 'f'},                        \
    {"ids", required_argument, NULL, ARG_IDS},                     \
    {"ctx", required_argument, NULL, ARG_CTX},                     \
    {"max-tokens", required_argument, NULL, ARG_MAX_TOKENS}

/* Handles one text option of command `cmd`. Returns 1 if handled, 0 if `code` is not a
 * text option, -1 after printing a usage error about a bad value. */
int cli_text_option(const char *cmd, int code, const char *arg, TextOptions *t);
/* A scoring command's `default:` case: a text option, else a common option. Returns 0
 * when handled, else 2 after printing the usage error (a bad value or an unknown option). */
int cli_text_or_common_option(const char *cmd, int code, const char *arg, TextOptions *t, CommonOptions *co);
/* After parsing: exactly one of -f and --ids. Returns 0, or the usage error's exit code. */
int cli_text_check(const char *cmd, const TextOptions *t);

/* ---- messages -------------------------------------------------------------------------
 * Every message llmint8 writes to stderr goes through these, and they make whatever could
 * act on a terminal visible (cli_write_escaped): messages quote strings from files (tensor
 * names, config values, tokens) and from the command line, and a tensor name holding an ESC
 * sequence must not rewrite the user's terminal. */

/* Writes s[0..len) to f with C0 control characters and DEL as \n, \r, \t or \xHH, C1
 * control characters (U+0080..U+009F) as \u0080..\u009f and bytes that are not valid UTF-8
 * as \xHH; everything else (printable ASCII, valid UTF-8) as it is. A nonzero `quote` is
 * written as \ + quote too (tokenize --show quotes tokens in '...'). */
void cli_write_escaped(FILE *f, const char *s, size_t len, char quote);

/* Prints "llmint8: error: <msg>" to stderr. Returns 1 (the exit code). */
int cli_fail(const Error *err);
/* Prints "llmint8: warning: <fmt...>" to stderr. */
void cli_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "llmint8: <fmt...>" to stderr (notes and progress reports). */
void cli_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Prints "llmint8 CMD: <fmt...>\nTry 'llmint8 CMD --help'." and returns 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- numbers on the command line ------------------------------------------------------ */

/* Parses a whole string as a whole number / float within [lo, hi]; returns 0 or -1. A whole
 * number is optional '-' and decimal digits (no spaces, no '+'); a float is what strtod
 * reads, NaN never being within range. */
int cli_parse_int(const char *s, long lo, long hi, long *out);
int cli_parse_float(const char *s, double lo, double hi, double *out);
/* Parses a whole string of decimal digits (no sign) as a number from 0 to 2^64 - 1. */
int cli_parse_u64(const char *s, uint64_t *out);
/* Option `name` of command `cmd` with value `arg` as a whole number in [lo, hi]: returns 0,
 * or 2 after the usage error "NAME 'ARG': expected a whole number from LO to HI". */
int cli_int_option(const char *cmd, const char *name, const char *arg, long lo, long hi, long *out);
/* The same for a number from 0 to 2^64 - 1 (seeds). */
int cli_u64_option(const char *cmd, const char *name, const char *arg, uint64_t *out);

/* ---- standard output ----------------------------------------------------------------- */

/* Registered with atexit() by main, so it runs however the program ends (main returns or a
 * command calls exit), like coreutils' close_stdout: flushes and closes standard output and
 * turns any write error — now or in an earlier write — into "llmint8: error: error writing
 * standard output: <reason>" and exit status 1, even after a command that succeeded. A
 * reader that went away (EPIPE, seen when SIGPIPE is ignored) ends the program quietly, as
 * SIGPIPE's default action would. This is the one place stdout is checked. */
void cli_close_stdout(void);
/* Flushes stdout, for commands that stream their output (generate): returns 0, or -1 when a
 * write failed, after which the command stops writing and returns as it otherwise would;
 * cli_close_stdout then reports the failure (with this write's reason). */
int cli_flush_stdout(void);

/* backend_create for a command: --device auto's fallback to the CPU is told on stderr. */
Backend *cli_backend_create(const char *device, int threads, Error *err);

/* Opened model and everything it needs, released in reverse order by cli_session_close. */
typedef struct Session {
    Checkpoint *ck;
    Backend *bk;
    Model *model;
    Tokenizer *tok;     /* NULL if not requested or not found (see cli_session_open) */
} Session;

/* Opens checkpoint and backend (and the tokenizer: if need_tokenizer a missing one is an
 * error, if want_tokenizer one is loaded when present). A tokenizer that knows ids beyond the
 * model's vocabulary (another model's, given with --tokenizer) is an error. The model is
 * loaded separately, because its context length may depend on the tokenized prompt. */
int cli_session_open(const CommonOptions *o, bool need_tokenizer, bool want_tokenizer, Session *s,
                     Error *err);
/* Loads (or reloads) s->model with the common options' quantization and KV cache (--kv-cache
 * f16 sets mo's kv_f16) and mo's ctx/batch/budget. */
int cli_session_load_model(Session *s, const CommonOptions *o, const ModelOptions *mo, Error *err);
void cli_session_close(Session *s);

/* Reads a whole file ("-" = stdin) into a malloc'ed NUL-terminated buffer. */
int cli_read_file(const char *path, char **data, size_t *len, Error *err);
/* Reads whitespace-separated token ids from a file, checking each is in [0, vocab). */
int cli_read_ids(const char *path, int vocab, int32_t **ids, size_t *n, Error *err);

/* The tokens a command scores: from a text file (tokenized without BOS; *bos = the BOS id
 * windows should start with, or -1) or from an ids file (used as given: *bos = -1). Every id
 * is checked against the model's vocabulary; t->max_tokens > 0 keeps only the first ones. */
int cli_load_tokens(const Session *s, const TextOptions *t, int32_t **ids, size_t *n, int32_t *bos, Error *err);

/* Progress bar on stderr, drawn only when stderr is a terminal. */
typedef struct Progress {
    const char *label;
    long total, done;
    double t_start;
    bool enabled;
} Progress;
void progress_begin(Progress *p, const char *label, long total);
void progress_update(Progress *p, long done);
void progress_end(Progress *p);

double cli_now(void);   /* monotonic seconds */

#endif
