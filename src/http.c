/* http.c - the REST API over libmicrohttpd.
 *
 * Threading: one thread per connection (bounded by max_connections), so a
 * slow client holds only its own thread and never an inference worker; the
 * CPU-heavy work of a request (decode, features) runs on that thread and the
 * model runs on the batcher's workers.
 *
 * Request life: request_open() sees the request line (MHD's URI log
 * callback) and refuses a target with control bytes or an oversized query.
 * The first call of handle() sees the headers; there we check the framing
 * (one way to read the body's length, or 400/501 and close), route
 * (routes.h: one table of paths, methods, access and handlers), refuse early
 * what we can (404, 405, 401, 413 by Content-Length, 503 when uploads fill
 * max_upload_memory, 415 by Content-Type) and set up the upload sink. Body
 * callbacks append to one growable buffer (multipart via MHD's post
 * processor, raw bodies directly), counted against max_upload_memory as it
 * grows, and hold the upload to min_upload_rate. The last callback
 * dispatches to the route's handler; a classify is admitted to one of
 * max_active_requests slots only then, with its whole upload in hand
 * (waiting, FIFO, up to queue_capacity of them), so a slow upload never
 * holds a slot. The completion callback logs the request and counts it.
 *
 * Slow clients: a connection must deliver each request's header block
 * within header_timeout_s of its start or its last answer (sockwatch.h cuts
 * it otherwise; MHD's idle timeout restarts with every byte), and an upload
 * must keep min_upload_rate (else 408). Where MHD 0.9.75 cannot queue an
 * answer (at the request line, in mid-body) respond_now() writes it to the
 * socket itself and the connection is closed.
 *
 * Access: with api_keys_file set, every ROUTE_KEYED route needs
 * `Authorization: Bearer <key>`; the probes (/healthz, /readyz) and the
 * public documents (the web page's three files and /openapi.yaml) do not
 * (routes.h). The check is the first thing
 * done after routing, before any body is read, and its failure is a 401
 * with WWW-Authenticate. Headers are never logged, so keys never reach the
 * logs.
 *
 * Browsers (CORS): a page of an origin cors_origins lists may call the API;
 * every answer to it carries Access-Control-Allow-Origin, errors included,
 * and OPTIONS, which every route answers without a key, tells its preflight
 * the route's methods and the headers it may send. An origin not listed
 * gets no CORS headers, and the browser keeps the answer from its page.
 *
 * Connections: beyond max_connections open at once, requests get 503 busy
 * (Retry-After, Connection: close) at once, except /healthz and /readyz,
 * which PROBE_HEADROOM more connections keep answerable under overload; past
 * that, new connections are closed as soon as they are accepted, as are
 * those past max_connections_per_client from one address. Nothing waits in
 * the kernel's backlog for a slot, so an overloaded daemon answers fast, if
 * only to refuse. With ops_port set, a second listener with connections of
 * its own serves only the probes and /metrics, so they answer whatever
 * clients do to the first.
 *
 * Shutdown (server_stop): MHD_quiesce_daemon() and shutdown() of the listen
 * socket make the kernel refuse new connections at once; requests in flight
 * (counted from their headers to their completion, uploads waiting for a
 * slot included) get up to shutdown_timeout_s to finish, and answers sent
 * meanwhile carry `Connection: close` so keep-alive clients go elsewhere.
 * Requests still waiting or running then give up (503 "server is shutting
 * down") before the daemon is stopped. Once quiesced, `port` cannot answer
 * /healthz either; the ops listener answers until the end (/readyz 503).
 *
 * What it does not do: audio or models (engine.h). */
#include "genred/http.h"

#include <microhttpd.h>
#include <arpa/inet.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
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
#include "genred/jsontext.h"
#include "genred/routes.h"
#include "genred/sockwatch.h"

#define RETRY_AFTER_S "1"

/* Requests still running this long after engine_cancel() are cut off by
 * MHD_stop_daemon(); the wait lets the cancelled ones send their 503. */
#define CANCEL_GRACE_S 2.0
/* Connections kept above max_connections so that health probes still get
 * through when ordinary traffic fills the server. */
#define PROBE_HEADROOM 8
/* Connections of the ops listener: probes and scrapes, a few at a time. */
#define OPS_CONNECTIONS 32
/* PEM files larger than this are not a certificate or a key. */
#define TLS_FILE_MAX (1 << 20)
/* min_upload_rate is judged over spans of at least this long. */
#define UPLOAD_RATE_WINDOW_S 10.0
/* A query string longer than this, or with more parameters, is refused
 * (414) at the request line: at ~450 parameters MHD runs out of its
 * connection memory while parsing them and closes without an answer.
 * genred's own queries have three flags. */
#define QUERY_MAX_BYTES 1024
#define QUERY_MAX_PARAMS 32
/* An answer respond_now() writes gets this long to leave. */
#define RAW_SEND_S 1.0
/* The first buffer of an upload; it doubles as bytes arrive, so memory
 * follows what was received, not what a Content-Length claims. */
#define UPLOAD_FIRST_BYTES (64 * 1024)

/* One of the server's listening sockets, with its own connections. */
typedef struct listener {
    server *srv;
    struct MHD_Daemon *daemon; /* NULL: not listening (no ops_port) */
    int port;                  /* bound */
    int ops;                   /* the ops listener: ROUTE_ALSO_OPS routes only */
    int accept_max;            /* connections open at once; more are closed */
    atomic_int connections;    /* open right now (MHD's connection notices) */
} listener;

/* What genred keeps per connection: MHD's socket context for it. */
typedef struct conn {
    sockwatch_entry *watch;    /* its header deadline */
    struct request *open;      /* made by request_open(), not yet completed */
} conn;

/* A whole upload waiting for a classification slot (admit()). */
typedef struct waiter {
    pthread_cond_t wake;       /* CLOCK_MONOTONIC */
    int admitted;              /* handed a slot by admission_release() */
    struct waiter *next;
} waiter;

struct server {
    config cfg;
    engine *engine;
    metrics *met;
    listener api, ops;
    sockwatch *watch;          /* header deadlines, one entry per connection */
    char *tls_cert, *tls_key;  /* PEM text while serving HTTPS; owned, key wiped */
    atomic_int stopping;       /* server_stop() began: answers close connections */
    atomic_ullong header_timeouts, slow_uploads; /* for /metrics */

    pthread_mutex_t mu;        /* guards what follows */
    pthread_cond_t idle;       /* signalled when active drops to 0; CLOCK_MONOTONIC */
    int active;                /* requests from their headers to completion */
    apikeys *keys;             /* NULL: no API keys; swapped by server_reload_keys() */
    int classifying;           /* classification slots taken */
    int max_classifying;       /* max_active_requests, resolved */
    waiter *queue, *queue_tail; /* uploads waiting for a slot, oldest first */
    size_t waiting;            /* their number, at most queue_capacity */
    size_t upload_bytes;       /* upload buffers allocated, <= max_upload_memory */
    int cancelled;             /* shutdown out of time: waiters and newcomers give up */
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
    double window_start;         /* min_upload_rate: the span being judged */
    size_t window_bytes;         /* bytes_in when it began */
    int begun;                   /* headers seen: counted in server.active */
    int bad_target;              /* control bytes in the request target */
    int answered;                /* respond_now() wrote the answer: close */
    int file_parts;              /* multipart parts named "file" */
    gr_err err;                  /* first failure while receiving the body */
    int status;                  /* HTTP status queued */
    size_t bytes_out;            /* response body bytes queued */
    int close;                   /* answer with Connection: close */
    apikeys_verdict auth;        /* why a 401 was sent (WWW-Authenticate) */
    const char *origin;          /* Origin, when cors_origins allows it (MHD's copy) */
    int options;                 /* an OPTIONS request: respond_options() answers */
    char top[64];                /* top genre, for the log line */
} request;

/* ---- CORS ----------------------------------------------------------------- */

/* What a page of an allowed origin may send besides what CORS always lets
 * it (Authorization too when keys are on), and read of an answer besides
 * the CORS-safelisted headers. */
#define CORS_REQUEST_HEADERS "Content-Type, X-Request-Id"
#define CORS_EXPOSED_HEADERS "X-Request-Id, Retry-After, WWW-Authenticate, Allow"
#define CORS_MAX_AGE_S "600" /* how long a browser may keep a preflight's answer */

/* The request's Origin when cors_origins allows that origin, else NULL. */
static const char *cors_origin(const server *s, struct MHD_Connection *c) {
    if (!s->cfg.cors_origins[0]) return NULL;
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    return config_origin_allowed(&s->cfg, origin) ? origin : NULL;
}

/* On every answer: whom it is for. With "*" any origin may read it, so the
 * header says "*" rather than echo what the client sent; otherwise the
 * origin, which matched a listed one byte for byte. Vary keeps caches from
 * handing one origin's answer to another. */
static void add_cors_headers(struct MHD_Response *resp, const request *r) {
    const config *cfg = &r->srv->cfg;
    if (!cfg->cors_origins[0]) return;
    MHD_add_response_header(resp, "Vary", "Origin");
    if (!r->origin) return;
    MHD_add_response_header(resp, "Access-Control-Allow-Origin",
                            strcmp(cfg->cors_origins, "*") == 0 ? "*" : r->origin);
    MHD_add_response_header(resp, "Access-Control-Expose-Headers", CORS_EXPOSED_HEADERS);
}

/* ---- responses ---------------------------------------------------------- */

/* Headers every answer carries: the request id, CORS's, and, while stopping
 * or when refused for too many connections, the request to close the
 * connection (a keep-alive client would otherwise send its next request to
 * a server that is going away, or keep holding a slot it was refused). */
static void add_common_headers(struct MHD_Response *resp, const request *r) {
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    add_cors_headers(resp, r);
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
    case GR_ETOOSLOW: return 408;
    case GR_ETOOLONG: return 414;
    case GR_ENOTIMPL: return 501;
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
    return respond_json(c, r, status, jsontext_error(code, err->msg));
}

static enum MHD_Result fail(struct MHD_Connection *c, request *r, gr_status st,
                            const char *msg) {
    gr_err err;
    gr_fail(&err, st, "%s", msg);
    return respond_error(c, r, &err);
}

/* Sends all of data on c within RAW_SEND_S, through TLS when the connection
 * has it. Returns 0, or -1 when it could not. */
static int send_raw(struct MHD_Connection *c, const char *data, size_t len) {
    const union MHD_ConnectionInfo *fdi =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!fdi) return -1;
    const union MHD_ConnectionInfo *tls =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    gnutls_session_t session = tls ? (gnutls_session_t)tls->tls_session : NULL;
    double end = monotonic_now() + RAW_SEND_S;
    size_t off = 0;
    while (off < len) {
        ssize_t n = session ? gnutls_record_send(session, data + off, len - off)
                            : send(fdi->connect_fd, data + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        int again = session ? n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED
                            : n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
        double left = end - monotonic_now();
        if (!again || left <= 0) return -1;
        struct pollfd p = {.fd = fdi->connect_fd, .events = POLLOUT};
        poll(&p, 1, (int)(left * 1000) + 1);
    }
    return 0;
}

/* Answers with a JSON error written straight to the connection, then shuts
 * our sending side, for the two moments MHD 0.9.75 cannot queue an answer:
 * at the request line (a query it would run out of memory parsing, after
 * which it closes without a word) and in the middle of a body (it queues an
 * answer only before the body or after its end). MHD writes nothing at
 * either moment, and the caller has MHD close the connection (MHD_NO) at
 * its next callback, so nothing else is ever written or read there. */
static void respond_now(struct MHD_Connection *c, request *r, gr_status kind, const char *msg) {
    int status = http_status(kind);
    json_t *body = jsontext_error(gr_status_code(kind), msg);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    r->status = status;
    r->answered = 1;
    if (!text) return; /* out of memory: the connection just closes */
    const char *reason = MHD_get_reason_phrase_for((unsigned)status);
    size_t len = strlen(text);
    char *wire = malloc(len + 512);
    int n = wire ? snprintf(wire, 512,
                            "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                            "Content-Length: %zu\r\nConnection: close\r\n"
                            "Cache-Control: no-store\r\nX-Request-Id: %s\r\n%s\r\n",
                            status, reason && *reason ? reason : "Error", len, r->id,
                            status == 503 ? "Retry-After: " RETRY_AFTER_S "\r\n" : "")
                 : -1;
    if (n > 0 && n < 512) {
        memcpy(wire + n, text, len);
        if (send_raw(c, wire, (size_t)n + len) == 0) r->bytes_out = len;
    }
    const union MHD_ConnectionInfo *fdi =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (fdi) shutdown(fdi->connect_fd, SHUT_WR);
    free(wire);
    free(text);
}

/* ---- uploads ------------------------------------------------------------ */

/* Takes n bytes of max_upload_memory for an upload buffer; -1 if they are
 * not free. */
static int upload_memory_take(server *s, size_t n) {
    pthread_mutex_lock(&s->mu);
    int ok = n <= s->cfg.max_upload_memory - s->upload_bytes;
    if (ok) s->upload_bytes += n;
    pthread_mutex_unlock(&s->mu);
    return ok ? 0 : -1;
}

/* Frees r's upload buffer and gives its bytes back to max_upload_memory. */
static void upload_free(server *s, request *r) {
    if (!r->buf) return;
    free(r->buf);
    pthread_mutex_lock(&s->mu);
    s->upload_bytes -= r->cap;
    pthread_mutex_unlock(&s->mu);
    r->buf = NULL;
    r->len = r->cap = 0;
}

/* Appends to the upload buffer; refuses to grow past max_upload_bytes, or
 * past what max_upload_memory has left. The buffer doubles from
 * UPLOAD_FIRST_BYTES (glibc moves large blocks with mremap, main.c), up to
 * the Content-Length, so it holds what arrived, not what was promised: a
 * slow upload that claims 64 MB holds its few bytes. */
static int body_append(server *s, request *r, const char *data, size_t size) {
    if (size > s->cfg.max_upload_bytes - r->len)
        return gr_fail(&r->err, GR_ETOOBIG, "upload larger than the limit of %zu bytes",
                       s->cfg.max_upload_bytes);
    if (r->len + size > r->cap) {
        size_t cap = r->cap ? r->cap : UPLOAD_FIRST_BYTES;
        while (cap < r->len + size) cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
        if (r->expect >= r->len + size && cap > r->expect) cap = r->expect;
        if (cap > s->cfg.max_upload_bytes) cap = s->cfg.max_upload_bytes;
        if (upload_memory_take(s, cap - r->cap) != 0)
            return gr_fail(&r->err, GR_EBUSY, "uploads in progress fill max_upload_memory "
                           "(%zu bytes), retry later", s->cfg.max_upload_memory);
        unsigned char *nb = realloc(r->buf, cap);
        if (!nb) {
            pthread_mutex_lock(&s->mu);
            s->upload_bytes -= cap - r->cap;
            pthread_mutex_unlock(&s->mu);
            return gr_fail(&r->err, GR_EINTERNAL, "out of memory receiving the upload");
        }
        r->buf = nb;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, data, size);
    r->len += size;
    return 0;
}

/* 1 when an upload has fallen under min_upload_rate: judged as bytes
 * arrive, over the bytes of the last UPLOAD_RATE_WINDOW_S or more. (One
 * that stops altogether is MHD's idle timeout's.) */
static int upload_too_slow(const server *s, request *r) {
    if (s->cfg.min_upload_rate == 0) return 0;
    double now = monotonic_now(), span = now - r->window_start;
    if (span < UPLOAD_RATE_WINDOW_S) return 0;
    if ((double)(r->bytes_in - r->window_bytes) < (double)s->cfg.min_upload_rate * span)
        return 1;
    r->window_start = now;
    r->window_bytes = r->bytes_in;
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

/* ---- admission ---------------------------------------------------------- */

/* Admission of a classification, with its whole upload in hand: at most
 * max_classifying run at once (decode, features, inference: the CPU).
 * Later ones wait in line, oldest first, up to queue_capacity of them (more
 * get 503 at once), each for at most request_timeout_s (idle_timeout_s when
 * that is 0). A shutdown out of time makes them give up. The caller gives
 * the slot back with admission_release(). */
static int admit(server *s, gr_err *err) {
    pthread_mutex_lock(&s->mu);
    if (!s->cancelled && s->classifying < s->max_classifying && !s->queue) {
        s->classifying++;
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    if (s->cancelled || s->waiting >= s->cfg.queue_capacity) {
        int cancelled = s->cancelled;
        pthread_mutex_unlock(&s->mu);
        if (cancelled) return gr_fail(err, GR_EBUSY, "server is shutting down");
        if (s->cfg.queue_capacity == 0)
            return gr_fail(err, GR_EBUSY, "every classification slot is busy, retry later");
        return gr_fail(err, GR_EBUSY, "every classification slot is busy and %zu uploads "
                       "wait already, retry later", s->cfg.queue_capacity);
    }
    waiter w = {.admitted = 0};
    if (monotonic_cond_init(&w.wake) != 0) {
        pthread_mutex_unlock(&s->mu);
        return gr_fail(err, GR_EINTERNAL, "server: condvar init failed");
    }
    if (s->queue_tail) s->queue_tail->next = &w;
    else s->queue = &w;
    s->queue_tail = &w;
    s->waiting++;
    double wait = s->cfg.request_timeout_s > 0 ? s->cfg.request_timeout_s
                                                : (double)s->cfg.idle_timeout_s;
    double end = monotonic_now() + wait;
    struct timespec until = monotonic_timespec(end);
    while (!w.admitted && !s->cancelled && monotonic_now() < end)
        pthread_cond_timedwait(&w.wake, &s->mu, &until);
    if (!w.admitted) { /* still in line: leave it */
        waiter **p = &s->queue, *prev = NULL;
        while (*p != &w) prev = *p, p = &(*p)->next;
        *p = w.next;
        if (s->queue_tail == &w) s->queue_tail = prev;
        s->waiting--;
    }
    int cancelled = s->cancelled;
    pthread_mutex_unlock(&s->mu);
    pthread_cond_destroy(&w.wake);
    if (w.admitted) return 0;
    if (cancelled) return gr_fail(err, GR_EBUSY, "server is shutting down");
    return gr_fail(err, GR_EBUSY, "no classification slot freed within %g s, retry later",
                   wait);
}

/* Gives a slot back: to the oldest waiter, if any. */
static void admission_release(server *s) {
    pthread_mutex_lock(&s->mu);
    waiter *w = s->cancelled ? NULL : s->queue;
    if (w) {
        s->queue = w->next;
        if (!s->queue) s->queue_tail = NULL;
        s->waiting--;
        w->admitted = 1;
        pthread_cond_signal(&w->wake);
    } else {
        s->classifying--;
    }
    pthread_mutex_unlock(&s->mu);
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

/* A fresh id: 16 hex digits. */
static void request_id_random(char id[65]) {
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

/* The client's X-Request-Id replaces the fresh one, but only when it is
 * short and plain, so it cannot inject anything into logs or headers. */
static void request_id_take_clients(struct MHD_Connection *c, char id[65]) {
    const char *given = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (!given) return;
    size_t n = strlen(given);
    int sane = n > 0 && n <= 64;
    for (size_t i = 0; sane && i < n; i++)
        sane = (given[i] >= 'a' && given[i] <= 'z') || (given[i] >= 'A' && given[i] <= 'Z') ||
               (given[i] >= '0' && given[i] <= '9') || given[i] == '-' || given[i] == '_' ||
               given[i] == '.';
    if (sane) memcpy(id, given, n + 1);
}

static int hex_value(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* 1 when a request target, as sent, holds a control byte, raw or
 * percent-encoded (%00..%1F, %7F): decoded, a NUL would end the path early
 * (MHD served /metrics%00 as /metrics) and others could forge log lines.
 * (A raw NUL byte cuts the string MHD hands over before it is seen here.) */
static int has_control_byte(const char *uri) {
    for (const char *p = uri; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch < 0x20 || ch == 0x7f) return 1;
        if (ch == '%' && hex_value(p[1]) >= 0 && hex_value(p[2]) >= 0) {
            int v = hex_value(p[1]) * 16 + hex_value(p[2]);
            if (v < 0x20 || v == 0x7f) return 1;
        }
    }
    return 0;
}

/* 1 when a target's query string is over QUERY_MAX_BYTES or
 * QUERY_MAX_PARAMS. */
static int query_too_long(const char *uri) {
    const char *q = strchr(uri, '?');
    if (!q || !*++q) return 0;
    size_t params = 1;
    for (const char *p = q; *p; p++) params += *p == '&';
    return strlen(q) > QUERY_MAX_BYTES || params > QUERY_MAX_PARAMS;
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
                                      "audio/mp4", "audio/x-m4a", "audio/aiff",
                                      "audio/x-aiff", "application/octet-stream"};
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
        query_flag(c, "embedding", 0, &o.embedding, &err) != 0 ||
        query_count(c, "max_chunks", s->cfg.max_chunks, MAX_CHUNKS_LIMIT, &o.max_chunks, &err) != 0)
        return respond_error(c, r, &err);

    if (admit(s, &err) != 0) {
        upload_free(s, r);
        return respond_error(c, r, &err);
    }
    json_t *ans = engine_classify(s->engine, r->buf, r->len, &o, &err);
    admission_release(s);
    /* The upload is no longer needed; free it before sending the answer. */
    upload_free(s, r);
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

/* Ready means a new upload would be taken on now: not shutting down, and
 * neither every classification slot and the whole queue taken nor
 * max_upload_memory used up. */
static enum MHD_Result handle_ready(server *s, struct MHD_Connection *c, request *r) {
    if (atomic_load(&s->stopping) || !engine_ready(s->engine))
        return fail(c, r, GR_EBUSY, "not ready: shutting down");
    pthread_mutex_lock(&s->mu);
    int queue_full = s->classifying >= s->max_classifying && s->waiting >= s->cfg.queue_capacity;
    int memory_full = s->upload_bytes >= s->cfg.max_upload_memory;
    pthread_mutex_unlock(&s->mu);
    if (queue_full)
        return fail(c, r, GR_EBUSY, "not ready: every classification slot and the queue are taken");
    if (memory_full)
        return fail(c, r, GR_EBUSY, "not ready: uploads fill max_upload_memory");
    return respond_json(c, r, 200, json_pack("{s:s}", "status", "ready"));
}

static enum MHD_Result handle_metrics(server *s, struct MHD_Connection *c, request *r) {
    metrics_load load = {
        .connections = atomic_load(&s->api.connections),
        .max_connections = s->cfg.max_connections,
        .queue_capacity = s->cfg.queue_capacity,
        .max_active_requests = s->max_classifying,
        .max_upload_memory = s->cfg.max_upload_memory,
        .header_timeouts = atomic_load(&s->header_timeouts),
        .slow_uploads = atomic_load(&s->slow_uploads),
    };
    pthread_mutex_lock(&s->mu);
    load.queue_depth = s->waiting;
    load.active_requests = s->classifying;
    load.upload_memory = s->upload_bytes;
    pthread_mutex_unlock(&s->mu);
    char *text = engine_render_metrics(s->engine, &load);
    if (!text) return fail(c, r, GR_EINTERNAL, "out of memory rendering metrics");
    return respond(c, r, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
}

static enum MHD_Result handle_openapi(struct MHD_Connection *c, request *r) {
    char *copy = malloc(asset_openapi_yaml_len + 1);
    if (!copy) return fail(c, r, GR_EINTERNAL, "out of memory");
    memcpy(copy, asset_openapi_yaml, asset_openapi_yaml_len + 1);
    return respond(c, r, 200, "application/yaml", copy, asset_openapi_yaml_len);
}

/* OPTIONS, on any route: the methods it answers (Allow), and, for a CORS
 * preflight of an allowed origin, what its page may then send: the route's
 * methods, the headers (Authorization among them when keys are on) and for
 * how long the browser may keep this answer. A browser sends no key with a
 * preflight, so none is asked. Chromium's Private Network Access asks the
 * same of a public page calling genred on a private address. */
static enum MHD_Result respond_options(server *s, struct MHD_Connection *c, request *r) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    add_common_headers(resp, r);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, route_allow_header(r->route));
    if (r->origin &&
        MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Access-Control-Request-Method")) {
        MHD_add_response_header(resp, "Access-Control-Allow-Methods",
                                route_allow_header(r->route));
        MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                s->cfg.api_keys_file[0] ? CORS_REQUEST_HEADERS ", Authorization"
                                                        : CORS_REQUEST_HEADERS);
        MHD_add_response_header(resp, "Access-Control-Max-Age", CORS_MAX_AGE_S);
        const char *pna = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                      "Access-Control-Request-Private-Network");
        if (pna && strcmp(pna, "true") == 0)
            MHD_add_response_header(resp, "Access-Control-Allow-Private-Network", "true");
    }
    r->status = MHD_HTTP_NO_CONTENT;
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_NO_CONTENT, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* The last callback of a request that was not refused early: the handler
 * its route names. No default: a handler added to routes.h and not here is
 * a compile error (-Wswitch), never a route that answers something else. */
static enum MHD_Result dispatch(server *s, struct MHD_Connection *c, request *r) {
    if (r->options) return respond_options(s, c, r);
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

/* Counts the framing fields of a request (MHD_get_connection_values()). */
typedef struct framing {
    int content_length, transfer_encoding;
    const char *coding;          /* the last Transfer-Encoding value */
} framing;

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value) {
    (void)kind;
    framing *f = cls;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
        f->content_length++;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->transfer_encoding++;
        f->coding = value ? value : "";
    }
    return MHD_YES;
}

/* RFC 9112 section 6: a body whose length two parsers could read
 * differently is refused before any of it is read, and the connection
 * closed, so no byte of it is ever taken for a request (request
 * smuggling). MHD 0.9.75 takes the first of two Content-Length fields,
 * reads chunked framing despite a Content-Length, and waits forever on a
 * coding it does not know; a proxy in front may read each otherwise.
 * Malformed Content-Length values MHD refuses itself (400, HTML). */
static int framing_check(struct MHD_Connection *c, const char *version, gr_err *err) {
    framing f = {0, 0, NULL};
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_framing, &f);
    if (f.content_length > 1)
        return gr_fail(err, GR_EBADREQ, "more than one Content-Length field");
    if (f.transfer_encoding == 0) return 0;
    if (f.content_length)
        return gr_fail(err, GR_EBADREQ, "both Content-Length and Transfer-Encoding: send one");
    if (f.transfer_encoding > 1)
        return gr_fail(err, GR_EBADREQ, "more than one Transfer-Encoding field");
    if (strcmp(version, MHD_HTTP_VERSION_1_0) == 0)
        return gr_fail(err, GR_EBADREQ, "Transfer-Encoding in an HTTP/1.0 request");
    if (strcasecmp(f.coding, "chunked") != 0)
        return gr_fail(err, GR_ENOTIMPL, "Transfer-Encoding '%.64s' is not supported: send "
                       "the body with a Content-Length or chunked", f.coding);
    return 0;
}

/* The listener a connection came in on. */
static const listener *listener_of(const server *s, struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *d = MHD_get_connection_info(c, MHD_CONNECTION_INFO_DAEMON);
    return d && s->ops.daemon && d->daemon == s->ops.daemon ? &s->ops : &s->api;
}

/* First callback of a request: headers only. Returns 1 if a response was
 * queued already (early refusal). */
static int request_begin(server *s, struct MHD_Connection *c, request *r, const char *url,
                         const char *method, const char *version, enum MHD_Result *ret) {
    r->origin = cors_origin(s, c);
    if (framing_check(c, version, &r->err) != 0 || r->bad_target) {
        if (r->bad_target)
            gr_fail(&r->err, GR_EBADREQ, "the request target holds a control character "
                    "(raw or percent-encoded, e.g. %%00)");
        r->close = 1;
        *ret = respond_error(c, r, &r->err);
        return 1;
    }
    const listener *l = listener_of(s, c);
    r->route = route_find(url);
    if (r->route && l->ops && r->route->listeners != ROUTE_ALSO_OPS) r->route = NULL;
    if (!r->route) {
        *ret = fail(c, r, GR_ENOTFOUND, l->ops ? "no such endpoint on the ops port (it serves "
                                                 "/healthz, /readyz and /metrics)"
                                               : "no such endpoint");
        return 1;
    }
    if (!l->ops && r->route->access != ROUTE_PROBE &&
        atomic_load(&s->api.connections) > s->cfg.max_connections) {
        r->close = 1;
        *ret = fail(c, r, GR_EBUSY, "too many connections, retry later");
        return 1;
    }
    if (strcmp(method, MHD_HTTP_METHOD_OPTIONS) == 0) {
        r->options = 1; /* answered once the request is read: keep-alive */
        return 0;
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
    /* The memory left is checked again as the body arrives; this refuses,
     * before a byte is sent, what cannot fit now. */
    pthread_mutex_lock(&s->mu);
    int fits = r->expect <= s->cfg.max_upload_memory - s->upload_bytes;
    pthread_mutex_unlock(&s->mu);
    if (!fits) {
        r->close = 1;
        *ret = fail(c, r, GR_EBUSY, "uploads in progress fill max_upload_memory, retry later");
        return 1;
    }
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_TYPE);
    r->kind = body_kind_of(ct);
    if (r->kind == BODY_NONE) {
        *ret = fail(c, r, GR_EUNSUPPORTED,
                    "unsupported Content-Type: send multipart/form-data (field 'file') "
                    "or audio/mpeg, audio/wav, audio/flac, audio/ogg, audio/mp4, "
                    "audio/aiff, application/octet-stream");
        return 1;
    }
    if (r->kind == BODY_MULTIPART) {
        r->pp = MHD_create_post_processor(c, 64 * 1024, post_iterator, r);
        if (!r->pp) {
            *ret = fail(c, r, GR_EBADREQ, "malformed multipart/form-data (missing boundary?)");
            return 1;
        }
    }
    return 0;
}

/* What genred keeps for a connection (connection_notice()), or NULL. */
static conn *conn_of(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *i =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return i ? i->socket_context : NULL;
}

/* MHD's URI log callback: a request line has arrived, its headers not yet.
 * The request starts here, so that a target MHD would mishandle is refused
 * before MHD parses it; what it returns is the request's *con_cls. */
static void *request_open(void *cls, const char *uri, struct MHD_Connection *c) {
    server *s = cls;
    request *r = calloc(1, sizeof *r);
    if (!r) return NULL; /* handle() then closes the connection */
    r->srv = s;
    r->t_start = monotonic_now();
    request_id_random(r->id);
    r->bad_target = has_control_byte(uri);
    if (query_too_long(uri)) {
        char msg[128];
        snprintf(msg, sizeof msg, "query string too long: at most %d bytes and %d parameters",
                 QUERY_MAX_BYTES, QUERY_MAX_PARAMS);
        respond_now(c, r, GR_ETOOLONG, msg);
    }
    /* MHD drops a request it fails to parse without completing it (a
     * query that exhausts its memory is one): the connection's end
     * finishes it then (connection_notice()). */
    conn *k = conn_of(c);
    if (k) k->open = r;
    return r;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version,
                              const char *upload_data, size_t *upload_data_size,
                              void **con_cls) {
    server *s = cls;
    request *r = *con_cls;
    if (!r || r->answered) return MHD_NO; /* out of memory, or answered: close */
    if (!r->begun) { /* the header block is complete */
        conn *k = conn_of(c);
        if (k && sockwatch_disarm(s->watch, k->watch)) return MHD_NO; /* cut already */
        r->begun = 1;
        r->window_start = monotonic_now();
        request_id_take_clients(c, r->id);
        pthread_mutex_lock(&s->mu);
        s->active++;
        pthread_mutex_unlock(&s->mu);
        enum MHD_Result ret;
        if (request_begin(s, c, r, url, method, version, &ret)) return ret;
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
        if (upload_too_slow(s, r)) {
            char msg[160];
            snprintf(msg, sizeof msg, "upload slower than %zu bytes per second over %.0f s: "
                     "send faster", s->cfg.min_upload_rate, UPLOAD_RATE_WINDOW_S);
            respond_now(c, r, GR_ETOOSLOW, msg);
            atomic_fetch_add(&s->slow_uploads, 1);
            return MHD_NO;
        }
        if (r->err.status != GR_OK || r->kind == BODY_NONE) return MHD_YES; /* discard */
        if (r->kind == BODY_RAW) {
            body_append(s, r, upload_data, size);
        } else if (MHD_post_process(r->pp, upload_data, size) != MHD_YES &&
                   r->err.status == GR_OK) {
            gr_fail(&r->err, GR_EBADREQ, "malformed multipart/form-data body");
        }
        /* Refused: the rest is discarded, and what arrived goes back to
         * max_upload_memory now, not when the client is done sending. */
        if (r->err.status != GR_OK) upload_free(s, r);
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

/* Logs and counts a request that has ended, and frees it. */
static void request_finish(server *s, request *r) {
    double dt = monotonic_now() - r->t_start;
    /* status 0: the client went away (or was cut) before an answer. */
    metrics_observe_request(s->met, route_label(r), r->status, dt, r->bytes_in);
    log_request(s, r, dt);
    if (r->pp) MHD_destroy_post_processor(r->pp);
    upload_free(s, r);
    int begun = r->begun;
    free(r);
    if (begun) {
        pthread_mutex_lock(&s->mu);
        if (--s->active == 0) pthread_cond_broadcast(&s->idle);
        pthread_mutex_unlock(&s->mu);
    }
}

static void request_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                              enum MHD_RequestTerminationCode toe) {
    (void)toe;
    server *s = cls;
    request *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    conn *k = conn_of(c);
    if (k && k->open == r) k->open = NULL;
    request_finish(s, r);
    /* Kept alive, the connection owes its next request's header block
     * within header_timeout_s from now. */
    if (k) sockwatch_arm(s->watch, k->watch, monotonic_now() + s->cfg.header_timeout_s);
}

/* ---- lifecycle ---------------------------------------------------------- */

/* MHD's own messages (a TLS handshake that failed, a connection closed
 * because a callback said so), as JSON log lines like genred's, at debug
 * level: under attack they come once per refused connection. */
static void log_mhd(void *cls, const char *fmt, va_list ap) {
    const server *s = cls;
    if (s->cfg.log_level < LOG_LEVEL_DEBUG) return;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) msg[--n] = '\0';
    json_t *line = json_pack("{s:s,s:o}", "event", "libmicrohttpd", "message",
                             jsontext_lossy(msg));
    char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
    if (text) fprintf(stderr, "%s\n", text);
    free(text);
    json_decref(line);
}

/* Runs on a listener's accepting thread before a connection is set up; the
 * count it reads changes on that same thread when one is set up, so no two
 * accepts can both take the last slot. */
static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr, socklen_t len) {
    (void)addr, (void)len;
    listener *l = cls;
    return atomic_load(&l->connections) < l->accept_max ? MHD_YES : MHD_NO;
}

/* A connection starts: counted, and watched with its first header
 * deadline (one genred cannot keep track of is refused); it ends: counted,
 * a cut by the deadline counted too, and a request MHD dropped without
 * completing it finished. Both notices run on the connection's own thread
 * (its completions run between them), and the socket stays open until
 * after the CLOSED one, as sockwatch.h requires. */
static void connection_notice(void *cls, struct MHD_Connection *c, void **socket_context,
                              enum MHD_ConnectionNotificationCode code) {
    listener *l = cls;
    server *s = l->srv;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        atomic_fetch_add(&l->connections, 1);
        const union MHD_ConnectionInfo *fdi =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        conn *k = fdi ? calloc(1, sizeof *k) : NULL;
        if (k) k->watch = sockwatch_add(s->watch, fdi->connect_fd);
        if (k && k->watch) {
            sockwatch_arm(s->watch, k->watch, monotonic_now() + s->cfg.header_timeout_s);
        } else {
            free(k);
            k = NULL;
            if (fdi) shutdown(fdi->connect_fd, SHUT_RDWR);
        }
        *socket_context = k;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        atomic_fetch_sub(&l->connections, 1);
        conn *k = *socket_context;
        if (!k) return;
        if (k->open) request_finish(s, k->open);
        if (sockwatch_remove(s->watch, k->watch)) atomic_fetch_add(&s->header_timeouts, 1);
        free(k);
        *socket_context = NULL;
    }
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
    sockwatch_destroy(s->watch);
    free_secret(s->tls_cert);
    free_secret(s->tls_key);
    apikeys_free(s->keys);
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int server_init_sync(server *s, gr_err *err) {
    if (pthread_mutex_init(&s->mu, NULL) != 0)
        return gr_fail(err, GR_EINTERNAL, "server: mutex init failed");
    if (monotonic_cond_init(&s->idle) != 0) {
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

/* The settings only a serving daemon needs to agree. */
static int server_check_limits(const config *cfg, gr_err *err) {
    if (cfg->max_upload_memory < cfg->max_upload_bytes)
        return gr_fail(err, GR_ECONFIG, "max_upload_memory (%zu bytes) is less than "
                       "max_upload_bytes (%zu): the largest upload allowed could never be held",
                       cfg->max_upload_memory, cfg->max_upload_bytes);
    if (cfg->ops_port == cfg->port && cfg->port != 0)
        return gr_fail(err, GR_ECONFIG, "ops_port and port are both %d: the ops listener "
                       "needs a port of its own", cfg->port);
    return 0;
}

/* Starts one listener: l->port's socket on cfg->listen, served by its own
 * MHD daemon (one thread per connection). */
static int listener_start(server *s, listener *l, int port, gr_err *err) {
    const config *cfg = &s->cfg;
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
        a4->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, cfg->listen, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
    } else {
        return gr_fail(err, GR_ECONFIG, "listen: '%s' is not an IP address", cfg->listen);
    }

    /* MHD copies the PEM text into GnuTLS at start; ours stays until stop. */
    struct MHD_OptionItem tls[] = {
        {MHD_OPTION_HTTPS_MEM_CERT, 0, s->tls_cert},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, s->tls_key},
        {MHD_OPTION_END, 0, NULL},
    };
    l->srv = s;
    l->accept_max = l->ops ? OPS_CONNECTIONS : cfg->max_connections + PROBE_HEADROOM;
    atomic_init(&l->connections, 0);
    /* MHD's own limit is never the one reached: at it MHD would stop
     * accepting and leave clients hanging in the backlog. */
    l->daemon = MHD_start_daemon(
        flags, (uint16_t)port, accept_policy, l, handle, s,
        MHD_OPTION_EXTERNAL_LOGGER, log_mhd, s, /* first, or MHD says so on stderr */
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)l->accept_max + 1,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned int)(l->ops ? 0 : cfg->max_connections_per_client),
        MHD_OPTION_NOTIFY_CONNECTION, connection_notice, l,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)cfg->idle_timeout_s,
        MHD_OPTION_URI_LOG_CALLBACK, request_open, s,
        MHD_OPTION_NOTIFY_COMPLETED, request_completed, s,
        MHD_OPTION_ARRAY, s->tls_cert ? tls : tls + 2,
        MHD_OPTION_END);
    if (!l->daemon)
        return gr_fail(err, GR_EINTERNAL,
                       s->tls_cert ? "cannot serve HTTPS on %s port %d (address in use, or the "
                                     "certificate and key do not match or do not load?)"
                                   : "cannot listen on %s port %d (address in use?)",
                       cfg->listen, port);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_BIND_PORT);
    l->port = info ? info->port : port;
    return 0;
}

server *server_start(const config *cfg, engine *e, metrics *met, gr_err *err) {
    if (server_check_limits(cfg, err) != 0) return NULL;
    server *s = calloc(1, sizeof *s);
    if (!s) {
        gr_fail(err, GR_EINTERNAL, "server: out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->engine = e;
    s->met = met;
    s->max_classifying = config_max_active_requests(cfg);
    s->ops.ops = 1;
    atomic_init(&s->stopping, 0);
    atomic_init(&s->header_timeouts, 0);
    atomic_init(&s->slow_uploads, 0);
    if (server_init_sync(s, err) != 0) {
        free(s);
        return NULL;
    }
    s->watch = sockwatch_create(err);
    if (!s->watch || server_load_files(s, err) != 0 ||
        listener_start(s, &s->api, cfg->port, err) != 0) {
        server_free(s);
        return NULL;
    }
    if (cfg->ops_port >= 0 && listener_start(s, &s->ops, cfg->ops_port, err) != 0) {
        MHD_stop_daemon(s->api.daemon);
        server_free(s);
        return NULL;
    }
    return s;
}

int server_port(const server *s) { return s->api.port; }

int server_ops_port(const server *s) { return s->ops.daemon ? s->ops.port : -1; }

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
     * threads may still hold its number. The ops listener stays open: its
     * /readyz says 503 and /healthz 200 until the end. */
    MHD_socket listen_fd = MHD_quiesce_daemon(s->api.daemon);
    if (listen_fd != MHD_INVALID_SOCKET) shutdown(listen_fd, SHUT_RDWR);

    pthread_mutex_lock(&s->mu);
    wait_idle(s, s->cfg.shutdown_timeout_s);
    int cut = s->active;
    if (cut > 0) {
        /* Out of time: uploads waiting for a slot give up, and so does the
         * engine; give the 503s a moment to reach their clients before the
         * connections close. */
        s->cancelled = 1;
        for (waiter *w = s->queue; w; w = w->next) pthread_cond_signal(&w->wake);
        engine_cancel(s->engine);
        wait_idle(s, CANCEL_GRACE_S);
    }
    pthread_mutex_unlock(&s->mu);

    /* Closes every connection left and joins its thread. */
    MHD_stop_daemon(s->api.daemon);
    if (s->ops.daemon) MHD_stop_daemon(s->ops.daemon);
    if (listen_fd != MHD_INVALID_SOCKET) close(listen_fd);
    server_free(s);
    return cut;
}
