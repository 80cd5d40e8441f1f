/* fileio.h — reading a small file that may be hostile.
 *
 * Opens without blocking (a FIFO or device named config.json must not hang us), accepts only
 * regular files, checks the size against a limit before allocating, and reads it whole. */
#ifndef LLMINT8_FILEIO_H
#define LLMINT8_FILEIO_H

#include <stddef.h>

#include "error.h"

/* *out is malloc'ed, NUL-terminated, *len bytes long (NUL excluded). Errors name the path. */
int read_small_file(const char *path, size_t max_bytes, char **out, size_t *len, Error *err);

#endif
