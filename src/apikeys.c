/* apikeys.c - API keys: parse the key file, compare in constant time.
 *
 * Each key sits in a fixed slot of APIKEY_MAX_LEN bytes, zero-padded, with
 * its length beside it. A presented token is padded the same way and XORed
 * against every slot in full; the differences are ORed together and turned
 * into a match bit without a branch. No loop exits early, so the time is a
 * function of the number of keys alone.
 *
 * What it does not do: HTTP, or know which routes are exempt. */
#include "genred/apikeys.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "genred/fileio.h"

enum {
    MAX_KEYS = 10000,           /* a file beyond this is a mistake, not a key set */
    MAX_LINE = 4096,            /* longer lines are refused, never split */
};

typedef struct slot {
    unsigned char bytes[APIKEY_MAX_LEN]; /* zero-padded */
    size_t len;
} slot;

struct apikeys {
    slot *slots;  /* owned; wiped before free */
    size_t n, cap;
};

static int is_blank(int ch) { return ch == ' ' || ch == '\t' || ch == '\r'; }

/* Room for one more slot. Grown by hand rather than realloc() so that the
 * old copy of the keys can be wiped before it is freed. */
static int grow(apikeys *k) {
    if (k->n < k->cap) return 0;
    size_t cap = k->cap ? 2 * k->cap : 4;
    slot *s = calloc(cap, sizeof *s);
    if (!s) return -1;
    if (k->n) memcpy(s, k->slots, k->n * sizeof *s);
    if (k->slots) {
        explicit_bzero(k->slots, k->cap * sizeof *k->slots);
        free(k->slots);
    }
    k->slots = s;
    k->cap = cap;
    return 0;
}

/* Stores one trimmed key, or fails naming only the line. */
static int add_key(apikeys *k, const char *path, unsigned lineno, const char *s, size_t n,
                   gr_err *err) {
    if (n < APIKEY_MIN_LEN || n > APIKEY_MAX_LEN)
        return gr_fail(err, GR_EFILE, "%s:%u: a key must be %d to %d characters long",
                       path, lineno, APIKEY_MIN_LEN, APIKEY_MAX_LEN);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x21 || ch > 0x7e)
            return gr_fail(err, GR_EFILE, "%s:%u: a key may hold only printable ASCII "
                           "characters without spaces", path, lineno);
    }
    if (k->n == MAX_KEYS)
        return gr_fail(err, GR_EFILE, "%s: more than %d keys", path, MAX_KEYS);
    if (grow(k) != 0) return gr_fail(err, GR_EINTERNAL, "api keys: out of memory");
    slot *sl = &k->slots[k->n++];
    memcpy(sl->bytes, s, n);
    sl->len = n;
    return 0;
}

static int parse(apikeys *k, FILE *f, const char *path, char line[MAX_LINE + 1],
                 gr_err *err) {
    line_reader lines = {.f = f, .path = path, .buf = line, .cap = MAX_LINE + 1};
    size_t n;
    line_result got;
    while ((got = line_next(&lines, &n, err)) == LINE_READ) {
        size_t a = 0;
        while (a < n && is_blank(line[a])) a++;
        while (n > a && is_blank(line[n - 1])) n--;
        if (a == n || line[a] == '#') continue;
        if (add_key(k, path, lines.lineno, line + a, n - a, err) != 0) return -1;
    }
    if (got == LINE_FAILED) return -1;
    if (k->n == 0)
        return gr_fail(err, GR_EFILE, "%s: no keys (one per line; '#' starts a comment)",
                       path);
    return 0;
}

apikeys *apikeys_load(const char *path, gr_err *err) {
    apikeys *k = calloc(1, sizeof *k);
    if (!k) {
        gr_fail(err, GR_EINTERNAL, "api keys: out of memory");
        return NULL;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        gr_fail(err, GR_EFILE, "%s: cannot open: %s", path, strerror(errno));
        free(k);
        return NULL;
    }
    /* Our own stdio buffer and line buffer, so both can be wiped: the keys
     * pass through them. */
    char iobuf[BUFSIZ], line[MAX_LINE + 1];
    int rc = setvbuf(f, iobuf, _IOFBF, sizeof iobuf) == 0
                 ? parse(k, f, path, line, err)
                 : gr_fail(err, GR_EINTERNAL, "api keys: cannot set up reading %s", path);
    fclose(f);
    explicit_bzero(iobuf, sizeof iobuf);
    explicit_bzero(line, sizeof line);
    if (rc != 0) {
        apikeys_free(k);
        return NULL;
    }
    return k;
}

void apikeys_free(apikeys *k) {
    if (!k) return;
    if (k->slots) {
        /* explicit_bzero: a plain memset before free may be optimised away. */
        explicit_bzero(k->slots, k->cap * sizeof *k->slots);
        free(k->slots);
    }
    free(k);
}

size_t apikeys_count(const apikeys *k) { return k ? k->n : 0; }

int apikeys_match(const apikeys *k, const char *token, size_t len) {
    if (!k || !token || len == 0 || len > APIKEY_MAX_LEN) return 0;
    unsigned char t[APIKEY_MAX_LEN] = {0};
    memcpy(t, token, len);
    uint32_t found = 0;
    for (size_t i = 0; i < k->n; i++) {
        const slot *s = &k->slots[i];
        uint32_t diff = (uint32_t)(s->len ^ len);
        for (size_t j = 0; j < APIKEY_MAX_LEN; j++) diff |= (uint32_t)(s->bytes[j] ^ t[j]);
        /* diff < 2^31: (diff | -diff) has its top bit set iff diff != 0. */
        found |= 1u ^ ((diff | (0u - diff)) >> 31);
    }
    explicit_bzero(t, sizeof t);
    return (int)found;
}

apikeys_verdict apikeys_check_header(const apikeys *k, const char *authorization) {
    static const char scheme[] = "Bearer";
    const size_t sn = sizeof scheme - 1;
    if (!authorization || strncasecmp(authorization, scheme, sn) != 0 ||
        authorization[sn] != ' ')
        return APIKEYS_MISSING;
    const char *tok = authorization + sn;
    while (*tok == ' ') tok++;
    return apikeys_match(k, tok, strlen(tok)) ? APIKEYS_OK : APIKEYS_INVALID;
}
