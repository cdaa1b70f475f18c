/* http.h - the REST API over libmicrohttpd.
 *
 * Routes: the table of routes.h (the API, the probes, /metrics, the
 * contract, and the web page compiled in from web/, served under a
 * same-origin-only Content-Security-Policy). Uploads (multipart field
 * `file`, or a raw audio body) are streamed into memory up to
 * max_upload_bytes, all of them together up to max_upload_memory, and
 * classified, max_active_requests at a time, once whole. Every error is a JSON body {"error": {"code",
 * "message"}}; which status each kind of error (err.h) gets is decided
 * here, at the HTTP edge, and nowhere else. Every route answers OPTIONS;
 * pages of the origins cors_origins lists may call the API from a browser
 * (CORS headers on every answer to them, preflights answered).
 *
 * What it does not do: audio, models (engine.h). */
#ifndef GENRED_HTTP_H
#define GENRED_HTTP_H

#include "genred/config.h"
#include "genred/engine.h"
#include "genred/err.h"
#include "genred/metrics.h"

typedef struct server server;

/* Binds cfg->listen:cfg->port, and cfg->ops_port when set (the probes and
 * /metrics only, on connections of their own), and starts serving. e and
 * met are borrowed and must outlive the server. With tls_cert_file and
 * tls_key_file set it serves HTTPS; with api_keys_file set, every route but
 * /healthz and /readyz needs `Authorization: Bearer <key>` (401 otherwise).
 * Those files are read here, and one that does not load refuses the start,
 * as does a max_upload_memory below max_upload_bytes. Caller stops it with
 * server_stop(). */
server *server_start(const config *cfg, engine *e, metrics *met, gr_err *err);

/* The port actually bound (useful with port 0). */
int server_port(const server *s);

/* The ops listener's port as bound, or -1 without ops_port. */
int server_ops_port(const server *s);

/* Reads api_keys_file again (SIGHUP) and swaps the keys in atomically. A
 * file that does not load leaves the old keys in place and fails with its
 * error. Nothing to do (0) without API keys. Thread-safe. */
int server_reload_keys(server *s, gr_err *err);

/* Stops accepting on cfg->port at once (new connections are refused; the
 * ops listener goes on answering, /readyz 503), waits up to
 * cfg->shutdown_timeout_s for requests in flight to finish (uploads waiting
 * for a classification slot included), cancels those still waiting or
 * running (they get 503), then closes every connection and frees s.
 * Returns how many requests had to be cancelled. */
int server_stop(server *s);

#endif
