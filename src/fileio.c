/* fileio.c - whole files and lines (fileio.h). */
#include "genred/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A new buffer of cap bytes holding old's n; old is wiped and freed, so a
 * secret is never left behind in freed memory (realloc could). */
static unsigned char *regrow(unsigned char *old, size_t n, size_t cap) {
    unsigned char *p = malloc(cap);
    if (p && n) memcpy(p, old, n);
    if (old) {
        explicit_bzero(old, n);
        free(old);
    }
    return p;
}

unsigned char *file_read(const char *path, size_t max, gr_status too_big, size_t *len,
                         gr_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        gr_fail(err, GR_EFILE, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    /* One byte more than max tells "larger than max" apart from "max", and
     * one more again holds the terminating NUL. */
    const size_t most = max < SIZE_MAX - 2 ? max + 1 : SIZE_MAX - 1;
    struct stat st;
    size_t cap = 64 * 1024;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 0)
        cap = (uintmax_t)st.st_size < most ? (size_t)st.st_size + 1 : most;
    if (cap > most) cap = most;
    unsigned char *buf = malloc(cap + 1);
    size_t n = 0;
    int failed = !buf;
    while (!failed) {
        if (n == cap) {
            if (cap == most) break; /* over the limit */
            size_t grown = cap <= most / 2 ? 2 * cap : most;
            unsigned char *nb = regrow(buf, n, grown + 1);
            buf = nb;
            cap = grown;
            if (!nb) failed = 1;
            continue;
        }
        ssize_t got = read(fd, buf + n, cap - n);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            int e = errno;
            close(fd);
            explicit_bzero(buf, n);
            free(buf);
            gr_fail(err, GR_EFILE, "%s: read error: %s", path, strerror(e));
            return NULL;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    close(fd);
    if (failed) {
        gr_fail(err, GR_EINTERNAL, "%s: out of memory", path);
        return NULL;
    }
    if (n > max) {
        explicit_bzero(buf, n);
        free(buf);
        gr_fail(err, too_big, "%s: larger than %zu bytes", path, max);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

line_result line_next(line_reader *r, size_t *len, gr_err *err) {
    size_t n = 0;
    int ch;
    r->lineno++;
    while ((ch = getc(r->f)) != EOF && ch != '\n') {
        if (ch == '\0') {
            gr_fail(err, GR_EFILE, "%s:%u: NUL byte in line", r->path, r->lineno);
            return LINE_FAILED;
        }
        if (n + 1 >= r->cap) {
            gr_fail(err, GR_EFILE, "%s:%u: line longer than %zu bytes", r->path, r->lineno,
                    r->cap - 1);
            return LINE_FAILED;
        }
        r->buf[n++] = (char)ch;
    }
    if (ch == EOF && ferror(r->f)) {
        gr_fail(err, GR_EFILE, "%s: read error: %s", r->path, strerror(errno));
        return LINE_FAILED;
    }
    if (ch == EOF && n == 0) {
        r->lineno--;
        return LINE_END;
    }
    if (n > 0 && r->buf[n - 1] == '\r') n--;
    r->buf[n] = '\0';
    *len = n;
    return LINE_READ;
}
