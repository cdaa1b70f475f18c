/* routes.c - every route genred serves, in one table (routes.h). */
#include "genred/routes.h"

#include <string.h>

const route routes[] = {
    {"/v1/classify", ROUTE_POST, ROUTE_KEYED, HANDLE_CLASSIFY, "/v1/classify", ROUTE_PORT_ONLY},
    {"/healthz", ROUTE_GET, ROUTE_PROBE, HANDLE_HEALTH, "/healthz", ROUTE_ALSO_OPS},
    {"/readyz", ROUTE_GET, ROUTE_PROBE, HANDLE_READY, "/readyz", ROUTE_ALSO_OPS},
    {"/v1/model", ROUTE_GET, ROUTE_KEYED, HANDLE_MODEL, "/v1/model", ROUTE_PORT_ONLY},
    {"/metrics", ROUTE_GET, ROUTE_KEYED, HANDLE_METRICS, "/metrics", ROUTE_ALSO_OPS},
    {"/openapi.yaml", ROUTE_GET, ROUTE_PUBLIC, HANDLE_OPENAPI, "/openapi.yaml", ROUTE_PORT_ONLY},
    {"/", ROUTE_GET, ROUTE_PUBLIC, HANDLE_WEB_PAGE, "/", ROUTE_PORT_ONLY},
    {"/app.js", ROUTE_GET, ROUTE_PUBLIC, HANDLE_WEB_SCRIPT, "/", ROUTE_PORT_ONLY},
    {"/style.css", ROUTE_GET, ROUTE_PUBLIC, HANDLE_WEB_STYLE, "/", ROUTE_PORT_ONLY},
};
const size_t route_count = sizeof routes / sizeof routes[0];

const route *route_find(const char *path) {
    for (size_t i = 0; path && i < route_count; i++)
        if (strcmp(path, routes[i].path) == 0) return &routes[i];
    return NULL;
}

int route_allows(const route *r, const char *method) {
    if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)
        return (r->methods & ROUTE_GET) != 0;
    if (strcmp(method, "POST") == 0) return (r->methods & ROUTE_POST) != 0;
    return strcmp(method, "OPTIONS") == 0;
}

const char *route_allow_header(const route *r) {
    switch (r->methods & (ROUTE_GET | ROUTE_POST)) {
    case ROUTE_GET: return "GET, HEAD, OPTIONS";
    case ROUTE_POST: return "POST, OPTIONS";
    default: return "GET, HEAD, POST, OPTIONS";
    }
}
