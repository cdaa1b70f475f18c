/* http.c - the REST API over libmicrohttpd.
 *
 * Threading: one thread per connection (bounded by max_connections), so a
 * slow client holds only its own thread and never an inference worker; the
 * CPU-heavy work of a request (decode, features) runs on that thread and the
 * model runs on the batcher's workers.
 *
 * Request life: the first callback sees only the headers; there we route
 * (routes.h: one table of paths, methods, access and handlers), refuse early
 * what we can (404, 405, 401, 413 by Content-Length, 415 by Content-Type)
 * and set up the upload sink. Body callbacks append to one
 * growable buffer (multipart via MHD's post processor, raw bodies directly).
 * The last callback dispatches to the route's handler (for a classify, the
 * engine) and queues the answer. The completion
 * callback logs the request and counts it in the metrics.
 *
 * Access: with api_keys_file set, every ROUTE_KEYED route needs
 * `Authorization: Bearer <key>`; the probes (/healthz, /readyz) and the
 * public documents (the web page's three files and /openapi.yaml) do not
 * (routes.h). The check is the first thing
 * done after routing, before any body is read, and its failure is a 401
 * with WWW-Authenticate. Headers are never logged, so keys never reach the
 * logs.
 *
 * Connections: beyond max_connections open at once, requests get 503 busy
 * (Retry-After, Connection: close) at once, except /healthz and /readyz,
 * which PROBE_HEADROOM more connections keep answerable under overload; past
 * that, new connections are closed as soon as they are accepted. Nothing
 * waits in the kernel's backlog for a slot, so an overloaded daemon answers
 * fast, if only to refuse.
 *
 * Shutdown (server_stop): MHD_quiesce_daemon() and shutdown() of the listen
 * socket make the kernel refuse new connections at once; requests in flight
 * (counted from their first callback to their completion) get up to
 * shutdown_timeout_s to finish, and answers sent meanwhile carry
 * `Connection: close` so keep-alive clients go elsewhere. Requests still
 * running then are cancelled through the engine (503) before the daemon is
 * stopped. Once quiesced, /healthz cannot answer new connections either.
 *
 * What it does not do: audio or models (engine.h). */
#include "genred/http.h"

#include <microhttpd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "genred/apikeys.h"
#include "genred/assets.h"
#include "genred/clock.h"
#include "genred/fileio.h"
#include "genred/routes.h"

#define RETRY_AFTER_S "1"

/* Requests still running this long after engine_cancel() are cut off by
 * MHD_stop_daemon(); the wait lets the cancelled ones send their 503. */
#define CANCEL_GRACE_S 2.0
/* Connections kept above max_connections so that health probes still get
 * through when ordinary traffic fills the server. */
#define PROBE_HEADROOM 8
/* PEM files larger than this are not a certificate or a key. */
#define TLS_FILE_MAX (1 << 20)

struct server {
    config cfg;
    engine *engine;
    metrics *met;
    struct MHD_Daemon *daemon;
    int port;
    char *tls_cert, *tls_key;  /* PEM text while serving HTTPS; owned, key wiped */
    atomic_int stopping;       /* server_stop() began: answers close connections */
    atomic_int connections;    /* open right now (MHD's connection notices) */

    pthread_mutex_t mu;        /* guards what follows */
    pthread_cond_t idle;       /* signalled when active drops to 0; CLOCK_MONOTONIC */
    int active;                /* requests from first callback to completion */
    apikeys *keys;             /* NULL: no API keys; swapped by server_reload_keys() */
    pthread_cond_t admit;      /* signalled when a classify slot frees; CLOCK_MONOTONIC */
    int classifying;           /* classify requests admitted, upload to answer */
    int max_classifying;       /* max_active_requests, resolved */
};

typedef enum body_kind { BODY_NONE = 0, BODY_RAW, BODY_MULTIPART } body_kind;

typedef struct request {
    server *srv;
    const route *route;          /* routes.h; NULL: no such route (404) */
    char id[65];
    double t_start;
    body_kind kind;
    struct MHD_PostProcessor *pp;
    unsigned char *buf;          /* the upload */
    size_t len, cap;
    size_t bytes_in;             /* body bytes received, whatever became of them */
    size_t expect;               /* Content-Length (<= max_upload_bytes), 0 if none */
    int admitted;                /* holds one of the server's classify slots */
    int file_parts;              /* multipart parts named "file" */
    gr_err err;                  /* first failure while receiving the body */
    int status;                  /* HTTP status queued */
    size_t bytes_out;            /* response body bytes queued */
    int close;                   /* answer with Connection: close */
    apikeys_verdict auth;        /* why a 401 was sent (WWW-Authenticate) */
    char top[64];                /* top genre, for the log line */
} request;

/* ---- responses ---------------------------------------------------------- */

/* Headers every answer carries: the request id, and, while stopping or when
 * refused for too many connections, the request to close the connection (a
 * keep-alive client would otherwise send its next request to a server that
 * is going away, or keep holding a slot it was refused). */
static void add_common_headers(struct MHD_Response *resp, const request *r) {
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    if (r->close || atomic_load(&r->srv->stopping))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
}

static enum MHD_Result respond(struct MHD_Connection *c, request *r, int status,
                               const char *content_type, char *body, size_t len) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    add_common_headers(resp, r);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == 503) MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, RETRY_AFTER_S);
    if (status == 401) /* RFC 6750 section 3 */
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                r->auth == APIKEYS_INVALID
                                    ? "Bearer realm=\"genred\", error=\"invalid_token\""
                                    : "Bearer realm=\"genred\"");
    if (status == 405 && r->route)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, route_allow_header(r->route));
    r->status = status;
    r->bytes_out = len;
    enum MHD_Result ret = MHD_queue_response(c, (unsigned int)status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result respond_json(struct MHD_Connection *c, request *r, int status,
                                    json_t *body) {
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(7)) : NULL;
    json_decref(body);
    if (!text) {
        /* Out of memory while rendering: answer with a static body. */
        static const char oom[] =
            "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        text = strdup(oom);
        if (!text) return MHD_NO;
        status = 500;
    }
    return respond(c, r, status, "application/json", text, strlen(text));
}

/* The HTTP edge of err.h: the status a client gets for each kind of error.
 * A deadline overrun is a 503 like a full queue, not a 4xx: inputs too big
 * are refused earlier by the size and duration limits, so a request within
 * them that misses its deadline met a server too busy for it, and a retry
 * later or on another replica may succeed. The server's own kinds (a
 * setting, a file) are never a client's doing: one that reaches a client is
 * a bug, answered as one (500, code "internal"). */
static int http_status(gr_status status) {
    switch (status) {
    case GR_OK: return 200;
    case GR_EBADREQ: return 400;
    case GR_EUNAUTHORIZED: return 401;
    case GR_ENOTFOUND: return 404;
    case GR_EMETHOD: return 405;
    case GR_ETOOBIG: return 413;
    case GR_EUNSUPPORTED: return 415;
    case GR_EUNPROCESSABLE: return 422;
    case GR_EBUSY: return 503;
    case GR_EDEADLINE: return 503;
    case GR_EINTERNAL: return 500;
    case GR_ECONFIG: return 500;
    case GR_EFILE: return 500;
    }
    return 500;
}

static enum MHD_Result respond_error(struct MHD_Connection *c, request *r,
                                     const gr_err *err) {
    int status = http_status(err->status);
    const char *code = gr_status_code(status == 500 ? GR_EINTERNAL : err->status);
    json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", err->msg);
    return respond_json(c, r, status, body);
}

static enum MHD_Result fail(struct MHD_Connection *c, request *r, gr_status st,
                            const char *msg) {
    gr_err err;
    gr_fail(&err, st, "%s", msg);
    return respond_error(c, r, &err);
}

/* ---- uploads ------------------------------------------------------------ */

/* Appends to the upload buffer; refuses to grow past max_upload_bytes. */
static int body_append(server *s, request *r, const char *data, size_t size) {
    if (size > s->cfg.max_upload_bytes - r->len)
        return gr_fail(&r->err, GR_ETOOBIG, "upload larger than the limit of %zu bytes",
                       s->cfg.max_upload_bytes);
    if (r->len + size > r->cap) {
        /* Content-Length known: one allocation of that size, no regrowth
         * (whose realloc copies would touch the upload twice). */
        size_t cap = r->cap ? r->cap : r->expect >= size ? r->expect : 1 << 16;
        while (cap < r->len + size) cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
        if (cap > s->cfg.max_upload_bytes) cap = s->cfg.max_upload_bytes;
        unsigned char *nb = realloc(r->buf, cap);
        if (!nb) return gr_fail(&r->err, GR_EINTERNAL, "out of memory receiving the upload");
        r->buf = nb;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, data, size);
    r->len += size;
    return 0;
}

static enum MHD_Result post_iterator(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *filename, const char *content_type,
                                     const char *transfer_encoding, const char *data,
                                     uint64_t off, size_t size) {
    (void)kind, (void)filename, (void)content_type, (void)transfer_encoding;
    request *r = cls;
    server *s = r->srv;
    if (!key || strcmp(key, "file") != 0) return MHD_YES; /* other fields are ignored */
    if (off == 0 && ++r->file_parts > 1) {
        gr_fail(&r->err, GR_EBADREQ, "multipart body has more than one 'file' field");
        return MHD_NO;
    }
    if (size && body_append(s, r, data, size) != 0) return MHD_NO;
    return MHD_YES;
}

/* ---- routing ------------------------------------------------------------ */

/* A file compiled into the binary (src/embed.py): the web page (web/) and
 * the API contract, served from the binary's own memory, never from disk. */
typedef struct asset {
    const unsigned char *data;
    const size_t *len;
    const char *type;
} asset;

static const asset WEB_PAGE = {asset_web_index_html, &asset_web_index_html_len,
                               "text/html; charset=utf-8"};
static const asset WEB_SCRIPT = {asset_web_app_js, &asset_web_app_js_len,
                                 "text/javascript; charset=utf-8"};
static const asset WEB_STYLE = {asset_web_style_css, &asset_web_style_css_len,
                                "text/css; charset=utf-8"};

/* Client-chosen ids are echoed only when they are short and plain, so they
 * cannot inject anything into logs or headers. */
static void request_id_init(struct MHD_Connection *c, char id[65]) {
    const char *given = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (given) {
        size_t n = strlen(given);
        int sane = n > 0 && n <= 64;
        for (size_t i = 0; sane && i < n; i++)
            sane = (given[i] >= 'a' && given[i] <= 'z') || (given[i] >= 'A' && given[i] <= 'Z') ||
                   (given[i] >= '0' && given[i] <= '9') || given[i] == '-' || given[i] == '_' ||
                   given[i] == '.';
        if (sane) {
            memcpy(id, given, n + 1);
            return;
        }
    }
    unsigned char rnd[8];
    if (getrandom(rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd) {
        /* No entropy yet (early boot): fall back to the clock; ids need only
         * be unique enough to find a request in the logs. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        memcpy(rnd, &x, sizeof rnd);
    }
    for (size_t i = 0; i < sizeof rnd; i++) snprintf(id + 2 * i, 3, "%02x", rnd[i]);
}

/* Query flags are 0 or 1; anything else is a client error, not a default. */
static int query_flag(struct MHD_Connection *c, const char *name, int dflt, int *out,
                      gr_err *err) {
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
    if (!v) {
        *out = dflt;
        return 0;
    }
    if (strcmp(v, "0") == 0) *out = 0;
    else if (strcmp(v, "1") == 0) *out = 1;
    else return gr_fail(err, GR_EBADREQ, "query parameter '%s' must be 0 or 1", name);
    return 0;
}

/* A count parameter: plain decimal digits, 0..max; absent, dflt. */
static int query_count(struct MHD_Connection *c, const char *name, int dflt, int max, int *out,
                       gr_err *err) {
    const char *v = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
    if (!v) {
        *out = dflt;
        return 0;
    }
    long n = 0;
    const char *p = v;
    for (; *p >= '0' && *p <= '9' && n <= max; p++) n = n * 10 + (*p - '0');
    if (p == v || *p || n > max)
        return gr_fail(err, GR_EBADREQ, "query parameter '%s' must be an integer in 0..%d",
                       name, max);
    *out = (int)n;
    return 0;
}

static int media_type_is(const char *ct, const char *type) {
    size_t n = strlen(type);
    return strncasecmp(ct, type, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

static body_kind body_kind_of(const char *ct) {
    static const char *const raw[] = {"audio/mpeg", "audio/mp3", "audio/wav", "audio/x-wav",
                                      "audio/wave", "audio/vnd.wave", "audio/flac",
                                      "audio/x-flac", "audio/ogg", "application/ogg",
                                      "application/octet-stream"};
    if (!ct) return BODY_RAW; /* no type given: the bytes decide (415 if not audio) */
    if (media_type_is(ct, "multipart/form-data")) return BODY_MULTIPART;
    for (size_t i = 0; i < sizeof raw / sizeof *raw; i++)
        if (media_type_is(ct, raw[i])) return BODY_RAW;
    return BODY_NONE;
}

/* ---- handlers ----------------------------------------------------------- */

static enum MHD_Result handle_classify(server *s, struct MHD_Connection *c, request *r) {
    if (r->err.status != GR_OK) return respond_error(c, r, &r->err);
    if (r->kind == BODY_MULTIPART) {
        if (r->file_parts == 0)
            return fail(c, r, GR_EBADREQ, "multipart body has no 'file' field");
        /* MHD hands over part data as it streams, so a body cut off before
         * its closing boundary would otherwise be classified as if whole;
         * destroying the post processor is how MHD tells it ended cleanly. */
        int complete = MHD_destroy_post_processor(r->pp) == MHD_YES;
        r->pp = NULL;
        if (!complete)
            return fail(c, r, GR_EBADREQ, "multipart body ends without its closing boundary");
    }
    if (r->len == 0) return fail(c, r, GR_EBADREQ, "empty upload: send the audio file");

    classify_opts o = {0};
    gr_err err = {0};
    if (query_flag(c, "trim", 1, &o.trim, &err) != 0 ||
        query_flag(c, "segments", 0, &o.segments, &err) != 0 ||
        query_flag(c, "mel", 0, &o.mel, &err) != 0 ||
        query_count(c, "max_chunks", s->cfg.max_chunks, MAX_CHUNKS_LIMIT, &o.max_chunks, &err) != 0)
        return respond_error(c, r, &err);

    json_t *ans = engine_classify(s->engine, r->buf, r->len, &o, &err);
    /* The upload is no longer needed; free it before sending the answer. */
    free(r->buf);
    r->buf = NULL;
    r->len = r->cap = 0;
    if (!ans) return respond_error(c, r, &err);
    const char *top = json_string_value(json_object_get(ans, "top"));
    if (top) snprintf(r->top, sizeof r->top, "%s", top);
    return respond_json(c, r, 200, ans);
}

/* The page talks only to its own origin: the policy forbids inline script
 * and style, every other host, plugins, <base> and framing, so injected
 * markup could neither run nor load anything. */
#define WEB_CSP                                                                        \
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "  \
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

static enum MHD_Result respond_web(struct MHD_Connection *c, request *r, const asset *f) {
    /* PERSISTENT: MHD sends the embedded bytes in place and never frees
     * them; it does not write to them either, so casting away const is safe. */
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(*f->len, (void *)f->data, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, f->type);
    MHD_add_response_header(resp, "Content-Security-Policy", WEB_CSP);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    add_common_headers(resp, r);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    r->status = 200;
    r->bytes_out = *f->len;
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result handle_ready(server *s, struct MHD_Connection *c, request *r) {
    if (atomic_load(&s->stopping)) return fail(c, r, GR_EBUSY, "not ready: shutting down");
    if (engine_ready(s->engine))
        return respond_json(c, r, 200, json_pack("{s:s}", "status", "ready"));
    return fail(c, r, GR_EBUSY, "not ready: inference queue is full");
}

static enum MHD_Result handle_metrics(server *s, struct MHD_Connection *c, request *r) {
    char *text = engine_render_metrics(s->engine);
    if (!text) return fail(c, r, GR_EINTERNAL, "out of memory rendering metrics");
    return respond(c, r, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
}

static enum MHD_Result handle_openapi(struct MHD_Connection *c, request *r) {
    char *copy = malloc(asset_openapi_yaml_len + 1);
    if (!copy) return fail(c, r, GR_EINTERNAL, "out of memory");
    memcpy(copy, asset_openapi_yaml, asset_openapi_yaml_len + 1);
    return respond(c, r, 200, "application/yaml", copy, asset_openapi_yaml_len);
}

/* The last callback of a request that was not refused early: the handler
 * its route names. No default: a handler added to routes.h and not here is
 * a compile error (-Wswitch), never a route that answers something else. */
static enum MHD_Result dispatch(server *s, struct MHD_Connection *c, request *r) {
    switch (r->route->handler) {
    case HANDLE_CLASSIFY: return handle_classify(s, c, r);
    case HANDLE_HEALTH: return respond_json(c, r, 200, json_pack("{s:s}", "status", "ok"));
    case HANDLE_READY: return handle_ready(s, c, r);
    case HANDLE_MODEL: return respond_json(c, r, 200, engine_describe_model(s->engine));
    case HANDLE_METRICS: return handle_metrics(s, c, r);
    case HANDLE_OPENAPI: return handle_openapi(c, r);
    case HANDLE_WEB_PAGE: return respond_web(c, r, &WEB_PAGE);
    case HANDLE_WEB_SCRIPT: return respond_web(c, r, &WEB_SCRIPT);
    case HANDLE_WEB_STYLE: return respond_web(c, r, &WEB_STYLE);
    }
    return fail(c, r, GR_EINTERNAL, "route without a handler");
}

/* 1 when API keys are off or the request carries a valid one; else records
 * why in r->auth. The key set is checked under the lock so that
 * server_reload_keys() can swap it. */
static int authorized(server *s, struct MHD_Connection *c, request *r) {
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_AUTHORIZATION);
    pthread_mutex_lock(&s->mu);
    r->auth = s->keys ? apikeys_check_header(s->keys, h) : APIKEYS_OK;
    pthread_mutex_unlock(&s->mu);
    return r->auth == APIKEYS_OK;
}

/* Admission of a classify request, before MHD reads its body: at most
 * max_classifying hold memory at once (upload, decoded audio, features);
 * later ones wait here, so their uploads wait in the socket (TCP flow
 * control) rather than in this process. Without it, 16 concurrent 10 MB
 * uploads kept ~420 MB resident; see docs/performance.md. Waits at most
 * request_timeout_s (idle_timeout_s when that is 0), then 503. */
static int admit(server *s, request *r) {
    double wait = s->cfg.request_timeout_s > 0 ? s->cfg.request_timeout_s
                                                : (double)s->cfg.idle_timeout_s;
    double end = monotonic_now() + wait;
    struct timespec until = monotonic_timespec(end);
    pthread_mutex_lock(&s->mu);
    while (s->classifying >= s->max_classifying && !atomic_load(&s->stopping) &&
           monotonic_now() < end)
        pthread_cond_timedwait(&s->admit, &s->mu, &until);
    r->admitted = s->classifying < s->max_classifying && !atomic_load(&s->stopping);
    if (r->admitted) s->classifying++;
    pthread_mutex_unlock(&s->mu);
    return r->admitted ? 0 : -1;
}

/* First callback of a request: headers only. Returns 1 if a response was
 * queued already (early refusal). */
static int request_begin(server *s, struct MHD_Connection *c, request *r, const char *url,
                         const char *method, enum MHD_Result *ret) {
    r->route = route_find(url);
    if (!r->route) {
        *ret = fail(c, r, GR_ENOTFOUND, "no such endpoint");
        return 1;
    }
    if (r->route->access != ROUTE_PROBE &&
        atomic_load(&s->connections) > s->cfg.max_connections) {
        r->close = 1;
        *ret = fail(c, r, GR_EBUSY, "too many connections, retry later");
        return 1;
    }
    if (r->route->access == ROUTE_KEYED && !authorized(s, c, r)) {
        *ret = fail(c, r, GR_EUNAUTHORIZED,
                    r->auth == APIKEYS_INVALID
                        ? "the API key is not valid"
                        : "this server needs an API key: send 'Authorization: Bearer <key>'");
        return 1;
    }
    if (!route_allows(r->route, method)) {
        *ret = fail(c, r, GR_EMETHOD, "method not allowed on this endpoint");
        return 1;
    }
    if (strcmp(method, MHD_HTTP_METHOD_POST) != 0) return 0; /* no upload */

    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        unsigned long long n = strtoull(cl, &end, 10);
        if (*end == '\0' && n > s->cfg.max_upload_bytes) {
            gr_fail(&r->err, GR_ETOOBIG, "upload of %llu bytes is larger than the limit of %zu",
                    n, s->cfg.max_upload_bytes);
            *ret = respond_error(c, r, &r->err);
            return 1;
        }
        if (*end == '\0') r->expect = (size_t)n;
    }
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    r->kind = body_kind_of(ct);
    if (r->kind == BODY_NONE) {
        *ret = fail(c, r, GR_EUNSUPPORTED,
                    "unsupported Content-Type: send multipart/form-data (field 'file') "
                    "or audio/mpeg, audio/wav, audio/flac, audio/ogg, "
                    "application/octet-stream");
        return 1;
    }
    if (r->kind == BODY_MULTIPART) {
        r->pp = MHD_create_post_processor(c, 64 * 1024, post_iterator, r);
        if (!r->pp) {
            *ret = fail(c, r, GR_EBADREQ, "malformed multipart/form-data (missing boundary?)");
            return 1;
        }
    }
    if (admit(s, r) != 0) {
        *ret = fail(c, r, GR_EBUSY, "too many classifications in flight, retry later");
        return 1;
    }
    /* The wait was not idleness: restart MHD's idle clock, which it does
     * when the timeout is set while 0, so that a wait longer than
     * idle_timeout_s does not close the connection under the upload. */
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT,
                              (unsigned int)s->cfg.idle_timeout_s);
    return 0;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version,
                              const char *upload_data, size_t *upload_data_size,
                              void **con_cls) {
    (void)version;
    server *s = cls;
    request *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->srv = s;
        r->t_start = monotonic_now();
        request_id_init(c, r->id);
        *con_cls = r;
        pthread_mutex_lock(&s->mu);
        s->active++;
        pthread_mutex_unlock(&s->mu);
        enum MHD_Result ret;
        if (request_begin(s, c, r, url, method, &ret)) return ret;
        return MHD_YES;
    }
    if (r->status) { /* answered early; MHD drains or closes */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t size = *upload_data_size;
        r->bytes_in += size;
        *upload_data_size = 0;
        if (r->err.status != GR_OK || r->kind == BODY_NONE) return MHD_YES; /* discard */
        if (r->kind == BODY_RAW) {
            body_append(s, r, upload_data, size);
        } else if (MHD_post_process(r->pp, upload_data, size) != MHD_YES &&
                   r->err.status == GR_OK) {
            gr_fail(&r->err, GR_EBADREQ, "malformed multipart/form-data body");
        }
        return MHD_YES;
    }
    return dispatch(s, c, r);
}

/* What a request is counted and logged under (routes.h). */
static const char *route_label(const request *r) {
    return r->route ? r->route->label : ROUTE_LABEL_OTHER;
}

static void log_request(const server *s, const request *r, double seconds) {
    if (s->cfg.log_level < LOG_LEVEL_INFO) return;
    json_t *line = json_pack("{s:s,s:s,s:s,s:i,s:I,s:I,s:f}", "event", "request",
                             "request_id", r->id, "route", route_label(r), "status", r->status,
                             "bytes_in", (json_int_t)r->bytes_in, "bytes_out",
                             (json_int_t)r->bytes_out, "duration_ms", seconds * 1e3);
    if (!line) return;
    if (r->top[0]) json_object_set_new(line, "top", json_string(r->top));
    char *text = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(6));
    if (text) {
        fprintf(stderr, "%s\n", text);
        free(text);
    }
    json_decref(line);
}

static void request_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                              enum MHD_RequestTerminationCode toe) {
    (void)c, (void)toe;
    server *s = cls;
    request *r = *con_cls;
    if (!r) return;
    double dt = monotonic_now() - r->t_start;
    /* status 0: the client went away before an answer was queued. */
    metrics_observe_request(s->met, route_label(r), r->status, dt, r->bytes_in);
    log_request(s, r, dt);
    if (r->pp) MHD_destroy_post_processor(r->pp);
    int admitted = r->admitted;
    free(r->buf);
    free(r);
    *con_cls = NULL;
    pthread_mutex_lock(&s->mu);
    if (admitted) {
        s->classifying--;
        pthread_cond_signal(&s->admit);
    }
    if (--s->active == 0) pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->mu);
}

/* ---- lifecycle ---------------------------------------------------------- */

/* Runs on MHD's accepting thread before a connection is set up; the count
 * it reads changes on that same thread when one is set up, so no two
 * accepts can both take the last slot. */
static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr, socklen_t len) {
    (void)addr, (void)len;
    const server *s = cls;
    return atomic_load(&s->connections) < s->cfg.max_connections + PROBE_HEADROOM ? MHD_YES
                                                                                   : MHD_NO;
}

static void connection_notice(void *cls, struct MHD_Connection *c, void **socket_context,
                              enum MHD_ConnectionNotificationCode code) {
    (void)c, (void)socket_context;
    server *s = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) atomic_fetch_add(&s->connections, 1);
    else if (code == MHD_CONNECTION_NOTIFY_CLOSED) atomic_fetch_sub(&s->connections, 1);
}

/* A PEM file as one NUL-terminated string (what MHD wants), checked for the
 * block it must hold so a swapped or wrong file gets a clear message. */
static char *read_pem(const char *key, const char *path, const char *want, gr_err *err) {
    size_t n;
    gr_err why;
    char *text = (char *)file_read(path, TLS_FILE_MAX, GR_EFILE, &n, &why);
    if (!text) {
        gr_fail(err, why.status, "%s %s", key, why.msg);
        return NULL;
    }
    const char *bad = strlen(text) != n     ? "holds a NUL byte: not a PEM file"
                      : !strstr(text, want) ? "has no PEM block of the expected kind"
                                            : NULL;
    if (bad) {
        explicit_bzero(text, n);
        free(text);
        gr_fail(err, GR_EFILE, "%s %s: %s", key, path, bad);
        return NULL;
    }
    return text;
}

static void free_secret(char *text) {
    if (!text) return;
    explicit_bzero(text, strlen(text));
    free(text);
}

static void server_free(server *s) {
    free_secret(s->tls_cert);
    free_secret(s->tls_key);
    apikeys_free(s->keys);
    pthread_cond_destroy(&s->idle);
    pthread_cond_destroy(&s->admit);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int server_init_sync(server *s, gr_err *err) {
    if (pthread_mutex_init(&s->mu, NULL) != 0)
        return gr_fail(err, GR_EINTERNAL, "server: mutex init failed");
    int ok = monotonic_cond_init(&s->idle) == 0;
    if (ok && monotonic_cond_init(&s->admit) != 0) {
        pthread_cond_destroy(&s->idle);
        ok = 0;
    }
    if (!ok) {
        pthread_mutex_destroy(&s->mu);
        return gr_fail(err, GR_EINTERNAL, "server: condvar init failed");
    }
    return 0;
}

/* Reads the TLS files and the key file: any failure refuses the start. */
static int server_load_files(server *s, gr_err *err) {
    const config *cfg = &s->cfg;
    if (cfg->tls_cert_file[0] || cfg->tls_key_file[0]) {
        if (config_validate(cfg, err) != 0) return -1;
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
            return gr_fail(err, GR_ECONFIG, "tls_cert_file is set, but this libmicrohttpd "
                           "was built without TLS support");
        s->tls_cert = read_pem("tls_cert_file", cfg->tls_cert_file, "-----BEGIN CERTIFICATE-----",
                               err);
        if (!s->tls_cert) return -1;
        s->tls_key = read_pem("tls_key_file", cfg->tls_key_file, "PRIVATE KEY-----", err);
        if (!s->tls_key) return -1;
    }
    if (cfg->api_keys_file[0]) {
        s->keys = apikeys_load(cfg->api_keys_file, err);
        if (!s->keys) return -1;
    }
    return 0;
}

server *server_start(const config *cfg, engine *e, metrics *met, gr_err *err) {
    server *s = calloc(1, sizeof *s);
    if (!s) {
        gr_fail(err, GR_EINTERNAL, "server: out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->engine = e;
    s->met = met;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    s->max_classifying = cfg->max_active_requests > 0 ? cfg->max_active_requests
                         : cores > 1 ? 2 * (int)(cores < 4096 ? cores : 4096) : 2;
    atomic_init(&s->stopping, 0);
    atomic_init(&s->connections, 0);
    if (server_init_sync(s, err) != 0) {
        free(s);
        return NULL;
    }
    if (server_load_files(s, err) != 0) {
        server_free(s);
        return NULL;
    }

    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    /* MHD_USE_ITC: MHD_quiesce_daemon() needs it in this threading mode. */
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                         MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (s->tls_cert) flags |= MHD_USE_TLS;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, cfg->listen, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)cfg->port);
    } else if (inet_pton(AF_INET6, cfg->listen, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)cfg->port);
        flags |= MHD_USE_IPv6;
    } else {
        server_free(s);
        gr_fail(err, GR_ECONFIG, "listen: '%s' is not an IP address", cfg->listen);
        return NULL;
    }

    /* MHD copies the PEM text into GnuTLS at start; ours stays until stop. */
    struct MHD_OptionItem tls[] = {
        {MHD_OPTION_HTTPS_MEM_CERT, 0, s->tls_cert},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, s->tls_key},
        {MHD_OPTION_END, 0, NULL},
    };
    /* MHD's own limit is never the one reached: at it MHD would stop
     * accepting and leave clients hanging in the backlog. */
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->port, accept_policy, s, handle, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)cfg->max_connections + PROBE_HEADROOM + 1,
        MHD_OPTION_NOTIFY_CONNECTION, connection_notice, s,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)cfg->idle_timeout_s,
        MHD_OPTION_NOTIFY_COMPLETED, request_completed, s,
        MHD_OPTION_ARRAY, s->tls_cert ? tls : tls + 2,
        MHD_OPTION_END);
    if (!s->daemon) {
        int tls_on = s->tls_cert != NULL;
        server_free(s);
        gr_fail(err, GR_EINTERNAL,
                tls_on ? "cannot serve HTTPS on %s port %d (address in use, or the "
                         "certificate and key do not match or do not load?)"
                       : "cannot listen on %s port %d (address in use?)",
                cfg->listen, cfg->port);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : cfg->port;
    return s;
}

int server_port(const server *s) { return s->port; }

int server_reload_keys(server *s, gr_err *err) {
    if (!s->cfg.api_keys_file[0]) return 0;
    apikeys *fresh = apikeys_load(s->cfg.api_keys_file, err);
    if (!fresh) return -1;
    pthread_mutex_lock(&s->mu);
    apikeys *old = s->keys;
    s->keys = fresh;
    pthread_mutex_unlock(&s->mu);
    apikeys_free(old); /* checks run under the lock: nobody holds it now */
    return 0;
}

/* Waits, with s->mu held, until no request is active or `seconds` pass. */
static void wait_idle(server *s, double seconds) {
    double end = monotonic_now() + seconds;
    struct timespec until = monotonic_timespec(end);
    while (s->active > 0 && monotonic_now() < end)
        pthread_cond_timedwait(&s->idle, &s->mu, &until);
}

int server_stop(server *s) {
    if (!s) return 0;
    atomic_store(&s->stopping, 1);
    /* Quiesce hands the listening socket back to us. shutdown() on it makes
     * the kernel refuse new connections and reset the ones not yet
     * accepted; closing it must wait until MHD_stop_daemon(), as MHD's
     * threads may still hold its number. */
    MHD_socket listen_fd = MHD_quiesce_daemon(s->daemon);
    if (listen_fd != MHD_INVALID_SOCKET) shutdown(listen_fd, SHUT_RDWR);

    pthread_mutex_lock(&s->mu);
    pthread_cond_broadcast(&s->admit); /* waiting admissions give up: 503 */
    wait_idle(s, s->cfg.shutdown_timeout_s);
    int cut = s->active;
    if (cut > 0) {
        /* Out of time: make the engine give up on them, and give the 503s a
         * moment to reach their clients before the connections close. */
        engine_cancel(s->engine);
        wait_idle(s, CANCEL_GRACE_S);
    }
    pthread_mutex_unlock(&s->mu);

    /* Closes every connection left and joins its thread. */
    MHD_stop_daemon(s->daemon);
    if (listen_fd != MHD_INVALID_SOCKET) close(listen_fd);
    server_free(s);
    return cut;
}
