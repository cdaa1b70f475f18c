/* err.c - errors as values: formatting, and each kind's stable name.
 *
 * What it does not do: HTTP statuses (http.c maps kinds to them). */
#include "genred/err.h"

#include <stdarg.h>
#include <stdio.h>

int gr_fail(gr_err *err, gr_status status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->status = status;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

const char *gr_status_code(gr_status status) {
    switch (status) {
    case GR_OK: return "ok";
    case GR_EBADREQ: return "bad_request";
    case GR_EUNAUTHORIZED: return "unauthorized";
    case GR_ENOTFOUND: return "not_found";
    case GR_EMETHOD: return "method_not_allowed";
    case GR_ETOOBIG: return "payload_too_large";
    case GR_EUNSUPPORTED: return "unsupported_media";
    case GR_EUNPROCESSABLE: return "unprocessable_audio";
    case GR_EBUSY: return "busy";
    case GR_EDEADLINE: return "deadline_exceeded";
    case GR_ETOOSLOW: return "request_timeout";
    case GR_ETOOLONG: return "uri_too_long";
    case GR_ENOTIMPL: return "not_implemented";
    case GR_ECONFIG: return "bad_config";
    case GR_EFILE: return "bad_file";
    case GR_EINTERNAL: return "internal";
    }
    return "internal";
}
