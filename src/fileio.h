/* fileio.h — reading whole files: the one place that does it.
 *
 * Two kinds of file are read, with different rules:
 *
 *  - Files that belong to a model or a tokenizer (config.json, vocab.json, an index, ...):
 *    they must be regular files. read_small_file opens without blocking (a FIFO or device
 *    under such a name must not hang us), refuses anything but a regular file, and checks
 *    the size against a limit before allocating. file_present says whether an optional one
 *    is there.
 *  - What the user hands us (a prompt, a text to score, an ids file; "-" is standard input):
 *    anything readable, pipes and FIFOs included (`-f <(cmd)` is a pipe), read to its end by
 *    read_input_file.
 *
 * Every error names the file ("standard input" for "-") and says what failed, with the
 * system's reason (strerror) for the call that failed: a symlink loop is "too many levels of
 * symbolic links", not "not found". */
#ifndef LLMINT8_FILEIO_H
#define LLMINT8_FILEIO_H

#include <stddef.h>

#include "error.h"

/* A regular file of at most max_bytes. *out is malloc'ed, NUL-terminated, *len bytes long
 * (NUL excluded). */
int read_small_file(const char *path, size_t max_bytes, char **out, size_t *len, Error *err);

/* Whether an optional file is there: 1 if path is a regular file (symlinks followed), 0 if
 * nothing has that name (a dangling symlink is an error, not "absent"), -1 with err if the
 * name exists but is not a regular file (a directory, a FIFO, ...) or cannot be examined
 * (a symlink loop, no permission on the directory, ...). */
int file_present(const char *path, Error *err);

/* A whole input: path, or standard input if path is "-". *out is malloc'ed, NUL-terminated,
 * *len bytes long (NUL excluded; the data may contain NUL bytes). Running out of memory
 * part-way is an error, never a truncated success. */
int read_input_file(const char *path, char **out, size_t *len, Error *err);

#endif
