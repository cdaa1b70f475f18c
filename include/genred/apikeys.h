/* apikeys.h - API keys: a set read from a file, checked in constant time.
 *
 * The file holds one key per line. Blank lines and lines whose first
 * non-blank character is '#' are ignored; spaces and tabs around a key are
 * trimmed. A key is 16 to 256 printable ASCII characters without spaces
 * (what fits in `Authorization: Bearer <key>`). A file with no key at all is
 * refused: it would lock every client out, which is never what was meant.
 *
 * Checking a presented key compares it with every key of the set over the
 * full key width, so the time taken says nothing about which key was close
 * or how many of its characters matched.
 *
 * What it does not do: decide which routes need a key, or answer 401
 * (http.c); keep keys anywhere but its own memory, which it wipes on free.
 * Error messages name the file and line, never a key. */
#ifndef GENRED_APIKEYS_H
#define GENRED_APIKEYS_H

#include <stddef.h>

#include "genred/err.h"

enum { APIKEY_MIN_LEN = 16, APIKEY_MAX_LEN = 256 };

/* Immutable once loaded; any number of threads may check against it. */
typedef struct apikeys apikeys;

/* Reads path. Caller owns the set; free with apikeys_free(). */
apikeys *apikeys_load(const char *path, gr_err *err);
void apikeys_free(apikeys *k);
size_t apikeys_count(const apikeys *k);

/* 1 when token[0..len) is one of the keys, else 0. */
int apikeys_match(const apikeys *k, const char *token, size_t len);

typedef enum apikeys_verdict {
    APIKEYS_OK = 0,       /* a valid key */
    APIKEYS_MISSING,      /* no Authorization header, or not a Bearer one */
    APIKEYS_INVALID,      /* a Bearer token that is not a key */
} apikeys_verdict;

/* Judges an Authorization header value (NULL when absent): "Bearer" (any
 * case), one or more spaces, the key, nothing after it. */
apikeys_verdict apikeys_check_header(const apikeys *k, const char *authorization);

#endif
