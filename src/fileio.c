/* fileio.c — reading whole files (see fileio.h). */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* What kind of file st_mode names, for "not a regular file" messages. */
static const char *file_kind(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

int read_small_file(const char *path, size_t max_bytes, char **out, size_t *len, Error *err) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return err_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return err_set(err, "%s: cannot examine the file: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(err, "%s: not a regular file (%s)", path, file_kind(st.st_mode));
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        close(fd);
        return err_set(err, "%s: %lld bytes is more than the %zu such a file may have", path,
                       (long long)st.st_size, max_bytes);
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        return err_set(err, "%s: out of memory for %zu bytes", path, size);
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            free(buf);
            return err_set(err, "%s: read failed: %s", path, strerror(e));
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got != size) {
        free(buf);
        return err_set(err, "%s: the file shrank while it was read (%zu of %zu bytes)", path, got, size);
    }
    buf[size] = 0;
    *out = buf;
    *len = size;
    return 0;
}

int file_present(const char *path, Error *err) {
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISREG(st.st_mode)) return 1;
        return err_set(err, "%s: not a regular file (%s)", path, file_kind(st.st_mode));
    }
    int e = errno;
    if (e == ENOENT && lstat(path, &st) == 0 && S_ISLNK(st.st_mode))
        return err_set(err, "%s: a symbolic link to nothing (its target does not exist)", path);
    if (e == ENOENT) return 0;
    return err_set(err, "%s: %s", path, strerror(e));
}

int read_input_file(const char *path, char **out, size_t *len, Error *err) {
    const bool is_stdin = strcmp(path, "-") == 0;
    const char *name = is_stdin ? "standard input" : path;
    int fd = is_stdin ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_set(err, "%s: cannot open: %s", name, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        if (!is_stdin) close(fd);
        if (e == EBADF) return err_set(err, "%s: cannot read: it is closed", name);
        return err_set(err, "%s: cannot examine the file: %s", name, strerror(e));
    }
    /* A regular file's size is a good first guess (+ the NUL + one byte to see the end
     * without growing); pipes start at 64 KiB and double. */
    size_t cap = S_ISREG(st.st_mode) && st.st_size > 0 && (unsigned long long)st.st_size < SIZE_MAX / 2
                     ? (size_t)st.st_size + 2
                     : (size_t)1 << 16;
    size_t n = 0;
    char *buf = malloc(cap);
    int rc = buf ? 0 : err_set(err, "%s: out of memory", name);
    while (rc == 0) {
        if (n + 1 >= cap) {
            char *bigger = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
            if (!bigger) {
                rc = err_set(err, "%s: out of memory after reading %zu bytes", name, n);
                break;
            }
            buf = bigger;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = err_set(err, "%s: read failed: %s", name, strerror(errno));
            break;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    if (!is_stdin) close(fd);
    if (rc) {
        free(buf);
        return -1;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}
