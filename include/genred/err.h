/* err.h - errors as values.
 *
 * Every fallible function in genred returns -1 (or NULL, or its own named
 * result) and fills a gr_err: a kind that says what failed plus a message
 * for a person. The kinds name failures, not a protocol: those of a request
 * (an upload, a query, a route) and those of the server's own inputs (a
 * setting, a file it was told to read) are apart, so a malformed model file
 * is not "a bug" and a bad conf value is not "a malformed request". Only
 * the HTTP edge (http.c) turns a kind into a status code. Nothing in library
 * code exits or prints; the caller decides what to do with the error. */
#ifndef GENRED_ERR_H
#define GENRED_ERR_H

typedef enum gr_status {
    GR_OK = 0,
    /* What a request did or asked for (an HTTP request, or a file given to
     * `genred classify`): */
    GR_EBADREQ,        /* malformed request: bad query, bad multipart, no upload,
                        * framing two parsers could read differently */
    GR_EUNAUTHORIZED,  /* API keys are on and the request has no valid one */
    GR_ENOTFOUND,      /* no such route */
    GR_EMETHOD,        /* a route, but not with this method */
    GR_ETOOBIG,        /* upload larger than max_upload_bytes */
    GR_EUNSUPPORTED,   /* not an audio container genred accepts */
    GR_EUNPROCESSABLE, /* audio that decodes but cannot be classified */
    GR_EBUSY,          /* work queue full, too many connections, shutting down */
    GR_EDEADLINE,      /* request_timeout_s passed before the answer was ready */
    GR_ETOOSLOW,       /* the client sent its upload slower than min_upload_rate */
    GR_ETOOLONG,       /* a query string over the limits */
    GR_ENOTIMPL,       /* a Transfer-Encoding genred does not implement */
    /* The server's own inputs: */
    GR_ECONFIG,        /* a setting (conf file, GENRED_* variable, flag) or a
                        * command-line option is invalid */
    GR_EFILE,          /* a file genred was told to read (model, conf, API keys,
                        * TLS, FFTW wisdom, feature parameters, .npy, input
                        * audio offline) or write cannot be, or is not what it
                        * should be */
    /* Neither: */
    GR_EINTERNAL,      /* a bug or an exhausted resource, never input */
} gr_status;

typedef struct gr_err {
    gr_status status;
    char msg[256];
} gr_err;

/* Sets err (if not NULL) and returns -1, so callers can write
 * `return gr_fail(err, GR_EBADREQ, "bad %s", x);`. */
int gr_fail(gr_err *err, gr_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Stable machine-readable name of a kind, e.g. "payload_too_large": the
 * "code" of the API's JSON errors and of `genred classify`'s error lines. */
const char *gr_status_code(gr_status status);

#endif
