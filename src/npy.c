/* npy.c - float32 arrays as NumPy .npy files, format 1.0.
 *
 * Writes exactly what numpy.save writes for a C-order little-endian float32
 * array: magic, version 1.0, a dict header padded with spaces to a 64-byte
 * boundary and ended by '\n', then the raw data. Reads only that: the header
 * is parsed as a strict dict of 'descr', 'fortran_order' and 'shape' and the
 * file length must match the shape exactly. Anything else (other dtypes,
 * Fortran order, format 2.0/3.0, >4 dims, 0-d arrays) is refused.
 *
 * What it does not do: memory mapping, other dtypes, big-endian hosts. */
#include "genred/npy.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.c writes host floats as '<f4'; big-endian hosts need byte swapping"
#endif

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6
#define NPY_PREFIX_LEN 10 /* magic, 2 version bytes, uint16 header length */
#define NPY_ALIGN 64
#define NPY_MAX_DIMS 4

/* Product of shape[0..ndim) times sizeof(float) into *bytes; -1 on overflow. */
static int array_bytes(const size_t *shape, int ndim, size_t *bytes) {
    size_t n = sizeof(float);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] != 0 && n > SIZE_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    *bytes = n;
    return 0;
}

int npy_write(const char *path, const float *data, const size_t *shape,
              int ndim, gr_err *err) {
    if (ndim < 1 || ndim > NPY_MAX_DIMS)
        return gr_fail(err, GR_EINTERNAL, "npy: %d dims, want 1..%d", ndim,
                       NPY_MAX_DIMS);
    size_t bytes;
    if (array_bytes(shape, ndim, &bytes) != 0)
        return gr_fail(err, GR_EINTERNAL, "npy: shape too large");
    if (bytes > 0 && !data)
        return gr_fail(err, GR_EINTERNAL, "npy: no data");

    /* The dict, then room for padding: prefix + dict + pad + '\n' is a
     * multiple of 64, as numpy >= 1.14 writes it. */
    char hdr[256];
    int len = snprintf(hdr, sizeof hdr,
                       "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    for (int i = 0; i < ndim; i++)
        len += snprintf(hdr + len, sizeof hdr - (size_t)len, "%s%zu",
                        i ? ", " : "", shape[i]);
    len += snprintf(hdr + len, sizeof hdr - (size_t)len, "%s), }",
                    ndim == 1 ? "," : "");
    size_t total = NPY_PREFIX_LEN + (size_t)len + 1;
    size_t padded = (total + NPY_ALIGN - 1) / NPY_ALIGN * NPY_ALIGN;
    if (padded - NPY_PREFIX_LEN >= sizeof hdr)
        return gr_fail(err, GR_EINTERNAL, "npy: header too long");
    memset(hdr + len, ' ', padded - total);
    hdr[padded - NPY_PREFIX_LEN - 1] = '\n';
    size_t hdr_len = padded - NPY_PREFIX_LEN;

    unsigned char prefix[NPY_PREFIX_LEN];
    memcpy(prefix, NPY_MAGIC, NPY_MAGIC_LEN);
    prefix[6] = 1;
    prefix[7] = 0;
    prefix[8] = (unsigned char)(hdr_len & 0xff);
    prefix[9] = (unsigned char)(hdr_len >> 8);

    FILE *f = fopen(path, "wb");
    if (!f)
        return gr_fail(err, GR_EFILE, "npy: cannot create %s: %s", path,
                       strerror(errno));
    int ok = fwrite(prefix, 1, sizeof prefix, f) == sizeof prefix &&
             fwrite(hdr, 1, hdr_len, f) == hdr_len &&
             (bytes == 0 || fwrite(data, 1, bytes, f) == bytes);
    int saved_errno = errno;
    if (fclose(f) != 0 && ok) {
        ok = 0;
        saved_errno = errno;
    }
    if (!ok) {
        remove(path); /* a truncated array would read back as corrupt anyway */
        return gr_fail(err, GR_EFILE, "npy: cannot write %s: %s", path,
                       strerror(saved_errno));
    }
    return 0;
}

/* A cursor over the header text. Every parse step returns 0 or -1. */
typedef struct cursor {
    const char *p, *end;
} cursor;

static void skip_spaces(cursor *c) {
    while (c->p < c->end && *c->p == ' ') c->p++;
}

static int expect_char(cursor *c, char ch) {
    skip_spaces(c);
    if (c->p >= c->end || *c->p != ch) return -1;
    c->p++;
    return 0;
}

/* A quoted string ('...' or "...") without escapes into buf. */
static int parse_string(cursor *c, char *buf, size_t cap) {
    skip_spaces(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return -1;
    char quote = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != quote) {
        if (*c->p == '\\' || n + 1 >= cap) return -1;
        buf[n++] = *c->p++;
    }
    if (c->p >= c->end) return -1;
    c->p++;
    buf[n] = '\0';
    return 0;
}

static int parse_word(cursor *c, const char *word) {
    skip_spaces(c);
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return -1;
    c->p += n;
    return 0;
}

/* A Python tuple of non-negative ints: "()", "(3,)", "(3, 4)", "(3, 4,)".
 * "(3)" is an int in Python, not a tuple, so it is refused like numpy does. */
static int parse_shape(cursor *c, size_t shape[NPY_MAX_DIMS], int *ndim) {
    if (expect_char(c, '(') != 0) return -1;
    int n = 0, trailing_comma = 0;
    for (;;) {
        skip_spaces(c);
        if (c->p < c->end && *c->p == ')') {
            c->p++;
            break;
        }
        if (c->p >= c->end || *c->p < '0' || *c->p > '9') return -1;
        if (n == NPY_MAX_DIMS) return -1;
        size_t v = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            size_t d = (size_t)(*c->p++ - '0');
            if (v > (SIZE_MAX - d) / 10) return -1;
            v = v * 10 + d;
        }
        shape[n++] = v;
        skip_spaces(c);
        trailing_comma = c->p < c->end && *c->p == ',';
        if (trailing_comma) c->p++;
        else if (c->p >= c->end || *c->p != ')') return -1;
    }
    if (n == 1 && !trailing_comma) return -1;
    *ndim = n;
    return 0;
}

/* The header dict: each of the three keys exactly once, in any order. */
static int parse_header(const char *text, size_t len, size_t shape[NPY_MAX_DIMS],
                        int *ndim, gr_err *err) {
    cursor c = {text, text + len};
    int seen_descr = 0, seen_order = 0, seen_shape = 0;
    if (expect_char(&c, '{') != 0) goto bad;
    for (;;) {
        skip_spaces(&c);
        if (c.p < c.end && *c.p == '}') {
            c.p++;
            break;
        }
        char key[32], val[32];
        if (parse_string(&c, key, sizeof key) != 0 || expect_char(&c, ':') != 0)
            goto bad;
        if (strcmp(key, "descr") == 0 && !seen_descr) {
            seen_descr = 1;
            if (parse_string(&c, val, sizeof val) != 0) goto bad;
            if (strcmp(val, "<f4") != 0)
                return gr_fail(err, GR_EFILE, "npy: dtype %s, want <f4", val);
        } else if (strcmp(key, "fortran_order") == 0 && !seen_order) {
            seen_order = 1;
            if (parse_word(&c, "True") == 0)
                return gr_fail(err, GR_EFILE, "npy: Fortran order unsupported");
            if (parse_word(&c, "False") != 0) goto bad;
        } else if (strcmp(key, "shape") == 0 && !seen_shape) {
            seen_shape = 1;
            if (parse_shape(&c, shape, ndim) != 0) goto bad;
        } else {
            goto bad;
        }
        skip_spaces(&c);
        if (c.p < c.end && *c.p == ',') c.p++;
        else if (c.p >= c.end || *c.p != '}') goto bad;
    }
    if (!seen_descr || !seen_order || !seen_shape) goto bad;
    /* Padding: spaces, then the final newline and nothing after it. */
    skip_spaces(&c);
    if (c.p + 1 != c.end || *c.p != '\n') goto bad;
    if (*ndim < 1)
        return gr_fail(err, GR_EFILE, "npy: 0-d arrays unsupported");
    return 0;
bad:
    return gr_fail(err, GR_EFILE, "npy: malformed header");
}

int npy_read(const char *path, float **data, size_t shape[4], int *ndim,
             gr_err *err) {
    *data = NULL;
    *ndim = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return gr_fail(err, GR_EFILE, "npy: cannot open %s: %s", path,
                       strerror(errno));
    char *hdr = NULL;
    float *buf = NULL;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        gr_fail(err, GR_EFILE, "npy: %s is not a regular file", path);
        goto fail;
    }
    unsigned char prefix[NPY_PREFIX_LEN];
    if (fread(prefix, 1, sizeof prefix, f) != sizeof prefix ||
        memcmp(prefix, NPY_MAGIC, NPY_MAGIC_LEN) != 0) {
        gr_fail(err, GR_EFILE, "npy: %s is not a .npy file", path);
        goto fail;
    }
    if (prefix[6] != 1 || prefix[7] != 0) {
        gr_fail(err, GR_EFILE, "npy: format %d.%d, want 1.0", prefix[6],
                prefix[7]);
        goto fail;
    }
    size_t hdr_len = (size_t)prefix[8] | (size_t)prefix[9] << 8;
    if (hdr_len == 0 || (uint64_t)st.st_size < NPY_PREFIX_LEN + hdr_len) {
        gr_fail(err, GR_EFILE, "npy: truncated header");
        goto fail;
    }
    hdr = malloc(hdr_len);
    if (!hdr) {
        gr_fail(err, GR_EINTERNAL, "npy: out of memory");
        goto fail;
    }
    if (fread(hdr, 1, hdr_len, f) != hdr_len) {
        gr_fail(err, GR_EFILE, "npy: truncated header");
        goto fail;
    }
    size_t dims[NPY_MAX_DIMS];
    int nd = 0;
    if (parse_header(hdr, hdr_len, dims, &nd, err) != 0) goto fail;
    size_t bytes;
    if (array_bytes(dims, nd, &bytes) != 0 ||
        (uint64_t)st.st_size - NPY_PREFIX_LEN - hdr_len != (uint64_t)bytes) {
        gr_fail(err, GR_EFILE, "npy: data size does not match the shape");
        goto fail;
    }
    buf = malloc(bytes ? bytes : 1); /* a 0-size array still gets a pointer */
    if (!buf) {
        gr_fail(err, GR_EINTERNAL, "npy: out of memory");
        goto fail;
    }
    if (fread(buf, 1, bytes, f) != bytes) {
        gr_fail(err, GR_EFILE, "npy: truncated data");
        goto fail;
    }
    free(hdr);
    fclose(f);
    for (int i = 0; i < nd; i++) shape[i] = dims[i];
    *ndim = nd;
    *data = buf;
    return 0;
fail:
    free(buf);
    free(hdr);
    fclose(f);
    return -1;
}
