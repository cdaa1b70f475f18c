/* jsontext.h - outside text (a file name, a client's header value quoted in
 * an error message) as a JSON string, and the error object that carries
 * such a message. jansson refuses a string that is not valid UTF-8, and a
 * refused string would lose the whole answer or line; here each byte that
 * is not part of a valid UTF-8 sequence becomes U+FFFD instead.
 *
 * What it does not do: escape (jansson does when it writes), or judge the
 * text in any other way. */
#ifndef GENRED_JSONTEXT_H
#define GENRED_JSONTEXT_H

#include <jansson.h>

/* A new JSON string of s (never NULL), lossy as above; the caller owns the
 * reference. NULL only when out of memory. */
json_t *jsontext_lossy(const char *s);

/* {"error": {"code": code, "message": msg}}, the error of every answer and
 * catalogue line, msg lossy as above; the caller owns the reference. NULL
 * only when out of memory. */
json_t *jsontext_error(const char *code, const char *msg);

#endif
