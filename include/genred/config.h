/* config.h - the daemon's settings: defaults, conf file, GENRED_* env, flags.
 *
 * One flat struct filled in layers: config_defaults(), then the conf file
 * (`key = value` lines, `#` comments), then GENRED_<KEY> environment
 * variables, then command-line flags (--key=value or --key value). Every
 * layer goes through config_set(), so a key means the same everywhere and is
 * validated once. The keys are documented in conf/genred.conf. */
#ifndef GENRED_CONFIG_H
#define GENRED_CONFIG_H

#include <stdio.h>
#include <stddef.h>

#include "genred/err.h"

/* How much genred logs: each level adds to the one before. */
typedef enum log_level {
    LOG_LEVEL_ERROR = 0,  /* failures only */
    LOG_LEVEL_WARN,       /* and what was refused or ignored */
    LOG_LEVEL_INFO,       /* and one line per request, reloads, start and stop */
    LOG_LEVEL_DEBUG,      /* and libav's own warnings */
} log_level;

/* The largest max_chunks, in the conf file and in a request's query. */
enum { MAX_CHUNKS_LIMIT = 100000 };

typedef struct config {
    char listen[64];           /* address to bind, default 127.0.0.1 */
    int port;                  /* 0 = ephemeral (printed at start) */
    int ops_port;              /* the probes and /metrics on a listener of
                                * their own; -1 = off ("off" in the conf),
                                * 0 = ephemeral (printed at start) */
    char model[4096];          /* path of the .gmodel file */
    int workers;               /* inference threads; 0 = one per core */
    int max_batch;             /* chunks per model_forward() call */
    size_t queue_capacity;     /* whole uploads waiting for a classify slot;
                                * beyond, 503 and /readyz 503 */
    size_t max_upload_bytes;   /* larger uploads get 413 */
    size_t max_upload_memory;  /* bytes of uploads held at once (received,
                                * waiting or classifying); beyond, 503 */
    double max_duration_s;     /* longer decoded audio gets 422 */
    double trim_start_s;       /* cut from the start of a song */
    double trim_end_s;         /* cut from the end of a song */
    double trim_min_keep_s;    /* trim only if at least this much remains */
    int max_chunks;            /* 0 = analyse every chunk of the window; else at
                                * most this many (up to MAX_CHUNKS_LIMIT),
                                * spread evenly (features.h) */
    int max_connections;       /* concurrent HTTP connections (threads) */
    int max_connections_per_client; /* from one client address; 0 = no limit */
    int max_active_requests;   /* classifications running at once (decode,
                                * features, inference); 0 = 2 x cores */
    int idle_timeout_s;        /* close connections idle this long */
    double header_timeout_s;   /* a request's header block must arrive within
                                * this long of the connection's last answer
                                * (or its start); else it is closed */
    size_t min_upload_rate;    /* bytes/s an upload must keep, measured over
                                * 10 s; slower gets 408; 0 = no minimum */
    double request_timeout_s;  /* decode + features + inference deadline; 0 = none */
    double shutdown_timeout_s; /* SIGTERM: wait this long for requests in flight */
    char api_keys_file[4096];  /* "" = no API keys; else every route but the
                                * health checks needs a Bearer key from it */
    char cors_origins[2048];   /* "" = none; else the web origins (scheme://host[:port],
                                * comma or space separated) whose pages may call
                                * the API from a browser, or "*" for any */
    char tls_cert_file[4096];  /* "" = plain HTTP; else PEM certificate chain */
    char tls_key_file[4096];   /* PEM private key; set exactly when the cert is */
    log_level log_level;       /* conf: error, warn, info, debug */
    char fftw_wisdom[4096];    /* FFTW wisdom file (mel.h); "" = the user's
                                * cache directory, see genred.conf */
} config;

void config_defaults(config *c);

/* Sets one key from its text value. Unknown key or bad value -> -1. */
int config_set(config *c, const char *key, const char *value, gr_err *err);

/* Applies a conf file; errors name the file and line. A relative path in
 * it (model, api_keys_file, tls_*_file, fftw_wisdom) is relative to the
 * folder holding the file; in the environment or a flag, to the working
 * directory. */
int config_load_file(config *c, const char *path, gr_err *err);

/* Applies every GENRED_<KEY> variable of the environment (key upper-cased,
 * '-' as '_'); GENRED_CONFIG is not a key and is skipped. Any other GENRED_
 * variable that is not a key is refused (GR_ECONFIG): the prefix belongs to
 * genred's settings, so whatever starts genred with other GENRED_ variables
 * of its own (the test harness) removes them from its environment. */
int config_load_env(config *c, gr_err *err);

/* Writes the effective configuration as a conf file to f. */
void config_print(const config *c, FILE *f);

/* Rules that tie keys together, which config_set() cannot check one key at
 * a time: tls_cert_file and tls_key_file are set together or not at all. */
int config_validate(const config *c, gr_err *err);

/* 1 if cors_origins lets a page of `origin` (an Origin header's value) call
 * the API: it is listed exactly, or the list is "*". */
int config_origin_allowed(const config *c, const char *origin);

/* The conf-file name of a level: "error", "warn", "info" or "debug". */
const char *log_level_name(log_level level);

/* Resolved max_active_requests (0 -> two per online core). */
int config_max_active_requests(const config *c);

/* Resolved worker count (workers == 0 -> number of online cores). */
int config_workers(const config *c);

#endif
