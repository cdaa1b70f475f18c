/* test_npy.c - .npy writer and strict reader: round trips, the exact bytes
 * numpy writes, and hand-made files that must be accepted or refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "genred/npy.h"

typedef struct fixture {
    char dir[64];
    char path[128];
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/test_npy.XXXXXX",
             tmp && strlen(tmp) < 40 ? tmp : "/tmp");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof f->path, "%s/a.npy", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void write_bytes(const char *path, const void *bytes, size_t len) {
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(bytes, 1, len, fp), len);
    assert_int_equal(fclose(fp), 0);
}

static size_t read_bytes(const char *path, unsigned char *buf, size_t cap) {
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    size_t n = fread(buf, 1, cap, fp);
    fclose(fp);
    return n;
}

/* Writes a version-1.0 file with the given header text (padded with spaces
 * to `pad_to` bytes in all, plus '\n' unless the text has its own) followed
 * by data_len bytes of data. */
static void write_npy(const char *path, unsigned char major, const char *header,
                      size_t pad_to, size_t data_len) {
    unsigned char buf[1024];
    size_t hlen = strlen(header);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = major;
    buf[7] = 0;
    memcpy(buf + 10, header, hlen);
    size_t total = 10 + hlen;
    if (pad_to) {
        while (total < pad_to - 1) buf[total++] = ' ';
        buf[total++] = '\n';
    }
    buf[8] = (unsigned char)((total - 10) & 0xff);
    buf[9] = (unsigned char)((total - 10) >> 8);
    assert_true(total + data_len <= sizeof buf);
    for (size_t i = 0; i < data_len; i++) buf[total + i] = (unsigned char)i;
    write_bytes(path, buf, total + data_len);
}

static void assert_refused(const char *path) {
    float *data = (float *)&data; /* must be reset to NULL on failure */
    size_t shape[4];
    int ndim = -1;
    gr_err err = {0};
    assert_int_equal(npy_read(path, &data, shape, &ndim, &err), -1);
    assert_null(data);
    assert_int_equal(ndim, 0);
    assert_int_equal(err.status, GR_EFILE);
    assert_true(err.msg[0] != '\0');
}

static void roundtrip(const char *path, const size_t *shape, int ndim) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    float *in = malloc((n ? n : 1) * sizeof *in);
    assert_non_null(in);
    for (size_t i = 0; i < n; i++) in[i] = (float)i * 0.25f - 3.0f;
    gr_err err = {0};
    assert_int_equal(npy_write(path, in, shape, ndim, &err), 0);

    /* numpy >= 1.14 aligns the data to 64 bytes; the header ends in '\n'. */
    unsigned char head[256];
    size_t got = read_bytes(path, head, sizeof head);
    assert_true(got >= 10);
    size_t hlen = (size_t)head[8] | (size_t)head[9] << 8;
    assert_int_equal((10 + hlen) % 64, 0);
    assert_int_equal(head[10 + hlen - 1], '\n');

    float *out = NULL;
    size_t shape_out[4];
    int ndim_out = 0;
    assert_int_equal(npy_read(path, &out, shape_out, &ndim_out, &err), 0);
    assert_non_null(out);
    assert_int_equal(ndim_out, ndim);
    for (int i = 0; i < ndim; i++) assert_int_equal(shape_out[i], shape[i]);
    if (n) assert_memory_equal(in, out, n * sizeof *in);
    free(in);
    free(out);
}

static void test_roundtrip_1d_to_4d(void **state) {
    fixture *f = *state;
    const size_t s1[] = {7}, s2[] = {3, 5}, s3[] = {2, 128, 128},
                 s4[] = {2, 3, 4, 5}, s0[] = {0, 128}, big[] = {100000};
    roundtrip(f->path, s1, 1);
    roundtrip(f->path, s2, 2);
    roundtrip(f->path, s3, 3);
    roundtrip(f->path, s4, 4);
    roundtrip(f->path, s0, 2);
    roundtrip(f->path, big, 1);
}

/* Byte for byte what numpy.save(np.zeros((2, 3), np.float32)) writes. */
static void test_header_matches_numpy(void **state) {
    fixture *f = *state;
    const float zeros[6] = {0};
    const size_t shape[] = {2, 3};
    gr_err err = {0};
    assert_int_equal(npy_write(f->path, zeros, shape, 2, &err), 0);
    const char *dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    unsigned char want[128 + 24];
    memcpy(want, "\x93NUMPY\x01\x00\x76\x00", 10);
    memcpy(want + 10, dict, strlen(dict));
    memset(want + 10 + strlen(dict), ' ', 128 - 10 - strlen(dict) - 1);
    want[127] = '\n';
    memset(want + 128, 0, 24);
    unsigned char got[256];
    assert_int_equal(read_bytes(f->path, got, sizeof got), sizeof want);
    assert_memory_equal(got, want, sizeof want);

    const size_t one[] = {5};
    const float five[5] = {0};
    assert_int_equal(npy_write(f->path, five, one, 1, &err), 0);
    assert_int_equal(read_bytes(f->path, got, sizeof got), 128 + 20);
    const char *dict1 = "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }";
    assert_memory_equal(got + 10, dict1, strlen(dict1));
}

/* Valid Python dicts that other writers (or older numpy) produce. */
static void test_accepts_other_valid_headers(void **state) {
    fixture *f = *state;
    const char *ok[] = {
        "{'shape': (3, 2), 'fortran_order': False, 'descr': '<f4'}",
        "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (3, 2,)}",
        "{'descr':'<f4','fortran_order':False,'shape':(3,2),}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        write_npy(f->path, 1, ok[i], 80 /* 16-byte aligned, as numpy < 1.14 */, 24);
        float *data = NULL;
        size_t shape[4];
        int ndim = 0;
        gr_err err = {0};
        assert_int_equal(npy_read(f->path, &data, shape, &ndim, &err), 0);
        assert_int_equal(ndim, 2);
        assert_int_equal(shape[0], 3);
        assert_int_equal(shape[1], 2);
        free(data);
    }
}

static void test_refuses_bad_headers(void **state) {
    fixture *f = *state;
    const char *bad[] = {
        "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }",
        "{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }",
        "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }",
        "{'descr': '<f4', 'fortran_order': True, 'shape': (3,), }",
        "{'descr': '<f4', 'fortran_order': 0, 'shape': (3,), }",
        "{'descr': '<f4', 'shape': (3,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}",
        "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (3,)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 3), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3,,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': [3], }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3,) x}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), } x",
        "('descr', '<f4')",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        write_npy(f->path, 1, bad[i], 128, 12);
        assert_refused(f->path);
    }
    /* No newline at the end of the header. */
    write_npy(f->path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 0, 12);
    assert_refused(f->path);
    /* Format 2.0 (4-byte header length) is not read. */
    write_npy(f->path, 2, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 128, 12);
    assert_refused(f->path);
}

static void test_refuses_wrong_sizes(void **state) {
    fixture *f = *state;
    const char *h3 = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
    write_npy(f->path, 1, h3, 128, 11); /* one byte short */
    assert_refused(f->path);
    write_npy(f->path, 1, h3, 128, 13); /* one byte extra */
    assert_refused(f->path);
    write_npy(f->path, 1, h3, 128, 0);
    assert_refused(f->path);
    /* Dimensions whose product overflows size_t must not wrap around to a
     * size that happens to match. */
    write_npy(f->path, 1,
              "{'descr': '<f4', 'fortran_order': False, "
              "'shape': (4611686018427387904, 4), }", 128, 0);
    assert_refused(f->path);
    write_npy(f->path, 1,
              "{'descr': '<f4', 'fortran_order': False, "
              "'shape': (99999999999999999999999, 1), }", 128, 0);
    assert_refused(f->path);
}

static void test_refuses_truncated_and_foreign_files(void **state) {
    fixture *f = *state;
    /* Every proper prefix of a valid file is refused. */
    const size_t shape[] = {2, 5};
    const float data[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    gr_err err = {0};
    assert_int_equal(npy_write(f->path, data, shape, 2, &err), 0);
    unsigned char whole[256];
    size_t len = read_bytes(f->path, whole, sizeof whole);
    assert_int_equal(len, 128 + 40);
    for (size_t cut = 0; cut < len; cut++) {
        write_bytes(f->path, whole, cut);
        assert_refused(f->path);
    }
    /* Header length pointing past the end of the file. */
    whole[8] = 0xff;
    write_bytes(f->path, whole, len);
    assert_refused(f->path);
    /* Not .npy at all. */
    write_bytes(f->path, "RIFF\0\0\0\0WAVEfmt ", 16);
    assert_refused(f->path);
    /* Missing file and a directory. */
    assert_refused("/nonexistent/genred/a.npy");
    assert_refused(f->dir);
}

static void test_write_refuses_bad_arguments(void **state) {
    fixture *f = *state;
    const float x[1] = {0};
    const size_t five[] = {1, 1, 1, 1, 1}, huge[] = {SIZE_MAX / 2, 3};
    gr_err err = {0};
    assert_int_equal(npy_write(f->path, x, five, 0, &err), -1);
    assert_int_equal(npy_write(f->path, x, five, 5, &err), -1);
    assert_int_equal(npy_write(f->path, x, huge, 2, &err), -1);
    err.msg[0] = '\0';
    assert_int_equal(npy_write("/nonexistent/genred/a.npy", x, five, 1, &err), -1);
    assert_true(err.msg[0] != '\0');
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_1d_to_4d, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_matches_numpy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_accepts_other_valid_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_bad_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_wrong_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refuses_truncated_and_foreign_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_refuses_bad_arguments, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
