/* error.h — how every module reports a failure.
 *
 * Functions that can fail take an `Error *` and return 0 on success or -1 on
 * failure, after writing one human-readable sentence into err->msg that names
 * the file, tensor or option involved and what is wrong with it. The CLI prints
 * that sentence and exits 1; nothing below the CLI prints or exits. */
#ifndef LLMINT8_ERROR_H
#define LLMINT8_ERROR_H

typedef struct Error {
    char msg[1024];
} Error;

/* Formats the message into err (if err is not NULL) and returns -1, so that
 * callers can write `return err_set(err, "...", ...);`. */
int err_set(Error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prepends "context: " to an existing message (e.g. the file name). Returns -1. */
int err_prefix(Error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
