/* http.h - the REST API over libmicrohttpd.
 *
 * Routes: POST /v1/classify, GET /healthz, /readyz, /v1/model, /metrics,
 * /openapi.yaml. Uploads (multipart field `file`, or a raw audio body) are
 * streamed into memory up to max_upload_bytes. Every error is a JSON body
 * {"error": {"code", "message"}} with the status gr_status_http() gives.
 *
 * What it does not do: audio, models (engine.h). */
#ifndef GENRED_HTTP_H
#define GENRED_HTTP_H

#include "genred/config.h"
#include "genred/engine.h"
#include "genred/err.h"
#include "genred/metrics.h"

typedef struct server server;

/* Binds cfg->listen:cfg->port and starts serving. e and met are borrowed and
 * must outlive the server. openapi_path names the spec served at
 * /openapi.yaml (read once at start). Caller stops it with server_stop(). */
server *server_start(const config *cfg, engine *e, metrics *met,
                     const char *openapi_path, gr_err *err);

/* The port actually bound (useful with port 0). */
int server_port(const server *s);

/* Stops accepting, waits for in-flight requests, frees s. */
void server_stop(server *s);

#endif
