/* err.h - errors as values.
 *
 * Every fallible function in genred returns -1 (or NULL) and fills a gr_err:
 * a status that says what kind of failure it is (and so which HTTP code a
 * client sees) plus a human-readable message. Nothing in library code exits
 * or prints; the caller decides what to do with the error. */
#ifndef GENRED_ERR_H
#define GENRED_ERR_H

typedef enum gr_status {
    GR_OK = 0,
    GR_EBADREQ,        /* 400: malformed request (bad query, bad multipart) */
    GR_EUNAUTHORIZED,  /* 401: API keys are on and the request has no valid one */
    GR_ENOTFOUND,      /* 404: unknown route */
    GR_EMETHOD,        /* 405: known route, wrong method */
    GR_ETOOBIG,        /* 413: upload larger than the configured maximum */
    GR_EUNSUPPORTED,   /* 415: not an audio container genred accepts */
    GR_EUNPROCESSABLE, /* 422: decodes, but cannot be classified */
    GR_EBUSY,          /* 503: work queue full or shutting down */
    GR_EDEADLINE,      /* 503: request_timeout_s passed before the answer was
                        * ready; the server is too slow right now, not the
                        * input too big (the limits refuse those earlier) */
    GR_EINTERNAL,      /* 500: a bug or an exhausted resource, never input */
} gr_status;

typedef struct gr_err {
    gr_status status;
    char msg[256];
} gr_err;

/* Sets err (if not NULL) and returns -1, so callers can write
 * `return gr_fail(err, GR_EBADREQ, "bad %s", x);`. */
int gr_fail(gr_err *err, gr_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Stable machine-readable code for the JSON error body, e.g. "too_large". */
const char *gr_status_code(gr_status status);

/* HTTP status code for a gr_status (GR_OK -> 200). */
int gr_status_http(gr_status status);

#endif
