/* routes.h - every route genred serves, in one table.
 *
 * A route is an exact path, the methods it answers, who may ask (a key, or
 * anyone), the handler that answers it, the label its requests are
 * counted under in /metrics, and whether the ops listener serves it too. http.c routes, refuses (404, 405 with Allow,
 * 401) and dispatches from this table; its dispatch is a switch over
 * route_handler without a default, so a handler named here and not
 * answered there does not compile. metrics.c takes its closed set of route
 * labels from the table, and tests/test_routes.c checks openapi.yaml
 * against it, path by path, method by method, key or no key.
 *
 * Adding a route: a row here, a case in http.c's dispatch(), and its
 * operation in openapi.yaml (test_routes fails until all three agree).
 *
 * What it does not do: serve anything (http.c) or count anything
 * (metrics.c). */
#ifndef GENRED_ROUTES_H
#define GENRED_ROUTES_H

#include <stddef.h>

/* What answers a route (http.c's dispatch()). */
typedef enum route_handler {
    HANDLE_CLASSIFY,    /* POST /v1/classify: an upload in, a genre answer out */
    HANDLE_HEALTH,      /* the process is alive */
    HANDLE_READY,       /* the model is loaded and the queue not full */
    HANDLE_MODEL,       /* the model's description */
    HANDLE_METRICS,     /* Prometheus text */
    HANDLE_OPENAPI,     /* the API contract, compiled in */
    HANDLE_WEB_PAGE,    /* the web page and its script and style, compiled in */
    HANDLE_WEB_SCRIPT,
    HANDLE_WEB_STYLE,
} route_handler;

/* Who may ask, when api_keys_file is set (without it, anyone may). */
typedef enum route_access {
    ROUTE_KEYED,        /* `Authorization: Bearer <key>`, else 401 */
    ROUTE_PUBLIC,       /* no key: documents that hold no data (the web page,
                         * which a browser loads before it can ask its user
                         * for a key; the API contract) */
    ROUTE_PROBE,        /* no key (the orchestrator holds none), and answered
                         * on the connections kept past max_connections for
                         * health probes */
} route_access;

/* Which listeners serve a route: every route is on `port`; the probes and
 * /metrics are on `ops_port` too (http.c), which answers nothing else. */
typedef enum route_listeners {
    ROUTE_PORT_ONLY = 0,
    ROUTE_ALSO_OPS,
} route_listeners;

/* Methods, as bits. GET includes HEAD. A POST is an upload (http.c reads
 * its body within max_upload_bytes). Every route also answers OPTIONS
 * (its Allow, and CORS preflights: http.c), which needs no bit. */
enum { ROUTE_GET = 1u << 0, ROUTE_POST = 1u << 1 };

typedef struct route {
    const char *path;       /* exact: no prefixes, no trailing slash games */
    unsigned methods;       /* ROUTE_GET and/or ROUTE_POST */
    route_access access;
    route_handler handler;
    const char *label;      /* metrics label; routes may share one (the web
                             * page's three files count as "/") */
    route_listeners listeners;
} route;

/* The table, immutable; route_count rows. */
extern const route routes[];
extern const size_t route_count;

/* The label of requests that matched no route. */
#define ROUTE_LABEL_OTHER "other"

/* The route of a request path (no query string), or NULL. */
const route *route_find(const char *path);

/* 1 if method (as the request line spells it) may be asked of r. */
int route_allows(const route *r, const char *method);

/* The methods r answers, OPTIONS included, e.g. "GET, HEAD, OPTIONS": the
 * Allow header of a 405 and of OPTIONS, and a preflight's
 * Access-Control-Allow-Methods. */
const char *route_allow_header(const route *r);

#endif
