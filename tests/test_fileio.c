/* test_fileio.c - whole files and lines (fileio.h): contents exact, limits
 * exact, every refusal with its kind and a message naming the file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "genred/fileio.h"

static void write_temp(char path[64], const void *data, size_t len) {
    const char *tmp = getenv("TMPDIR");
    snprintf(path, 64, "%s/genred-fileio-XXXXXX", tmp && strlen(tmp) < 32 ? tmp : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static void test_read_whole_file(void **state) {
    (void)state;
    static const char text[] = "abc\0def\n";
    char path[64];
    write_temp(path, text, sizeof text - 1);
    size_t len = 0;
    gr_err err = {GR_OK, ""};
    unsigned char *buf = file_read(path, 8, GR_ETOOBIG, &len, &err);
    assert_non_null(buf);
    assert_int_equal(len, 8);
    assert_memory_equal(buf, text, 8);
    assert_int_equal(buf[8], '\0'); /* usable as a string */
    free(buf);

    /* One byte over the limit: the caller's kind, the file and the limit. */
    assert_null(file_read(path, 7, GR_ETOOBIG, &len, &err));
    assert_int_equal(err.status, GR_ETOOBIG);
    assert_non_null(strstr(err.msg, path));
    assert_non_null(strstr(err.msg, "larger than 7 bytes"));
    assert_null(file_read(path, 0, GR_EFILE, &len, &err));
    assert_int_equal(err.status, GR_EFILE);
    unlink(path);

    write_temp(path, "", 0);
    buf = file_read(path, 0, GR_ETOOBIG, &len, &err);
    assert_non_null(buf);
    assert_int_equal(len, 0);
    free(buf);
    unlink(path);

    assert_null(file_read("/nonexistent/genred-file", 10, GR_ETOOBIG, &len, &err));
    assert_int_equal(err.status, GR_EFILE);
    assert_non_null(strstr(err.msg, "/nonexistent/genred-file: cannot open"));
    assert_null(file_read("/tmp", 10, GR_ETOOBIG, &len, &err));
    assert_int_equal(err.status, GR_EFILE);
    assert_non_null(strstr(err.msg, "/tmp: read error"));
}

typedef struct pipe_writer {
    int fd;
    size_t n;
} pipe_writer;

static void *write_pipe(void *arg) {
    pipe_writer *w = arg;
    unsigned char block[4096];
    for (size_t done = 0; done < w->n;) {
        size_t k = w->n - done < sizeof block ? w->n - done : sizeof block;
        for (size_t i = 0; i < k; i++) block[i] = (unsigned char)((done + i) * 7);
        ssize_t put = write(w->fd, block, k);
        if (put <= 0) break;
        done += (size_t)put;
    }
    close(w->fd);
    return NULL;
}

/* A file whose size is not known up front (a pipe) grows the buffer. */
static void test_read_pipe(void **state) {
    (void)state;
    for (size_t limit = 300000; limit >= 299999; limit--) {
        int p[2];
        assert_int_equal(pipe(p), 0);
        pipe_writer w = {p[1], 300000};
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, write_pipe, &w), 0);
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", p[0]);
        size_t len = 0;
        gr_err err = {GR_OK, ""};
        unsigned char *buf = file_read(path, limit, GR_ETOOBIG, &len, &err);
        close(p[0]); /* the writer may still be blocked on a full pipe */
        pthread_join(t, NULL);
        if (limit == 300000) {
            assert_non_null(buf);
            assert_int_equal(len, 300000);
            for (size_t i = 0; i < len; i++)
                if (buf[i] != (unsigned char)(i * 7)) fail_msg("byte %zu differs", i);
            free(buf);
        } else {
            assert_null(buf);
            assert_int_equal(err.status, GR_ETOOBIG);
        }
    }
}

/* A reader over a fresh temporary file holding text[0..len). */
static line_reader lines_of(char path[64], const char *text, size_t len, char *buf,
                            size_t cap) {
    write_temp(path, text, len);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    return (line_reader){.f = f, .path = path, .buf = buf, .cap = cap};
}

static void done_with(line_reader *r) {
    fclose(r->f);
    unlink(r->path);
}

static void test_lines(void **state) {
    (void)state;
    static const char text[] = "one\r\n\ntwo  \nlast";
    char path[64], buf[8];
    line_reader r = lines_of(path, text, sizeof text - 1, buf, sizeof buf);
    size_t len;
    gr_err err = {GR_OK, ""};
    assert_int_equal(line_next(&r, &len, &err), LINE_READ);
    assert_string_equal(buf, "one"); /* CRLF: the '\r' goes too */
    assert_int_equal(len, 3);
    assert_int_equal(line_next(&r, &len, &err), LINE_READ);
    assert_int_equal(len, 0);
    assert_int_equal(line_next(&r, &len, &err), LINE_READ);
    assert_string_equal(buf, "two  ");
    assert_int_equal(line_next(&r, &len, &err), LINE_READ);
    assert_string_equal(buf, "last"); /* no newline at the end */
    assert_int_equal(r.lineno, 4);
    assert_int_equal(line_next(&r, &len, &err), LINE_END);
    assert_int_equal(r.lineno, 4);
    done_with(&r);

    /* 7 bytes fit in 8; 8 do not, and a NUL is refused, not a cut. */
    static const char bad[] = "1234567\n12345678\n";
    r = lines_of(path, bad, sizeof bad - 1, buf, sizeof buf);
    assert_int_equal(line_next(&r, &len, &err), LINE_READ);
    assert_int_equal(len, 7);
    assert_int_equal(line_next(&r, &len, &err), LINE_FAILED);
    assert_int_equal(err.status, GR_EFILE);
    assert_non_null(strstr(err.msg, ":2: line longer than 7 bytes"));
    done_with(&r);

    static const char nul[] = "ok\nab\0c\n";
    r = lines_of(path, nul, sizeof nul - 1, buf, sizeof buf);
    assert_int_equal(line_next(&r, &len, &err), LINE_READ);
    assert_int_equal(line_next(&r, &len, &err), LINE_FAILED);
    assert_non_null(strstr(err.msg, ":2: NUL byte in line"));
    assert_true(strncmp(err.msg, path, strlen(path)) == 0);
    done_with(&r);

    r = lines_of(path, "", 0, buf, sizeof buf);
    assert_int_equal(line_next(&r, &len, &err), LINE_END);
    done_with(&r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_whole_file),
        cmocka_unit_test(test_read_pipe),
        cmocka_unit_test(test_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
