#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int read_small_file(const char *path, size_t max_bytes, char **out, size_t *len, Error *err) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return err_set(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(err, "%s: not a regular file", path);
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
        return err_set(err, "%s: out of memory", path);
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break; /* error, or the file shrank under us */
        got += (size_t)r;
    }
    close(fd);
    if (got != size) {
        free(buf);
        return err_set(err, "%s: cannot read the file", path);
    }
    buf[size] = 0;
    *out = buf;
    *len = size;
    return 0;
}
