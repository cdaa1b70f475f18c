/* jsontext.c - outside text as JSON strings, invalid UTF-8 replaced (see
 * jsontext.h). */
#include "genred/jsontext.h"

#include <stdlib.h>
#include <string.h>

/* The length of the valid UTF-8 sequence at s (1..4), or 0. */
static size_t utf8_char(const unsigned char *s) {
    if (s[0] < 0x80) return 1;
    size_t n = s[0] < 0xC2 ? 0 : s[0] < 0xE0 ? 2 : s[0] < 0xF0 ? 3 : s[0] < 0xF5 ? 4 : 0;
    if (n == 0) return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    /* Overlong forms, surrogates and code points above U+10FFFF. */
    if ((s[0] == 0xE0 && s[1] < 0xA0) || (s[0] == 0xED && s[1] >= 0xA0) ||
        (s[0] == 0xF0 && s[1] < 0x90) || (s[0] == 0xF4 && s[1] >= 0x90))
        return 0;
    return n;
}

json_t *jsontext_lossy(const char *s) {
    size_t n = strlen(s);
    char *out = malloc(3 * n + 1), *o = out;
    if (!out) return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        size_t k = utf8_char(p);
        if (k) {
            memcpy(o, p, k);
            o += k;
            p += k;
        } else {
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
            p++;
        }
    }
    *o = '\0';
    json_t *j = json_string(out);
    free(out);
    return j;
}

json_t *jsontext_error(const char *code, const char *msg) {
    return json_pack("{s:{s:s,s:o}}", "error", "code", code, "message", jsontext_lossy(msg));
}
