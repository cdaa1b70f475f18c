/* metrics.h - counters and histograms for GET /metrics (Prometheus text).
 *
 * One metrics object per process, created in main() and handed to the
 * server and the engine. Observations take a mutex; they happen a handful of
 * times per request, never per chunk.
 *
 * What it does not do: collect batcher or model facts itself; those are
 * passed in when rendering. */
#ifndef GENRED_METRICS_H
#define GENRED_METRICS_H

#include <stddef.h>

#include "genred/err.h"

typedef struct metrics metrics;
struct batcher_stats;
struct model;

typedef enum metrics_stage {
    STAGE_DECODE = 0,
    STAGE_FEATURES,
    STAGE_INFERENCE,
    STAGE_TOTAL,
    STAGE_COUNT_
} metrics_stage;

/* Caller owns the result; free with metrics_free(). NULL (GR_EINTERNAL)
 * when out of memory. */
metrics *metrics_create(gr_err *err);
void metrics_free(metrics *m);

/* route: a route's label (routes.h), e.g. "/v1/classify"; anything else
 * counts as "other". All functions accept m == NULL and do nothing. */
void metrics_observe_request(metrics *m, const char *route, int status,
                             double seconds, size_t bytes_in);
void metrics_observe_stage(metrics *m, metrics_stage stage, double seconds);
void metrics_observe_batch(metrics *m, int batch_size);
void metrics_observe_chunks(metrics *m, size_t chunks_per_request);

/* The HTTP side's load and limits at the moment of a scrape (http.c): what
 * /readyz judges saturation by, and the slow clients cut so far. */
typedef struct metrics_load {
    int connections, max_connections;       /* open on `port` */
    size_t queue_depth, queue_capacity;     /* whole uploads waiting for a slot */
    int active_requests, max_active_requests; /* classifications running */
    size_t upload_memory, max_upload_memory; /* bytes of uploads held */
    unsigned long long header_timeouts;     /* closed: no header block within
                                             * header_timeout_s */
    unsigned long long slow_uploads;        /* 408: upload under min_upload_rate */
} metrics_load;

/* Renders everything in Prometheus text exposition format 0.0.4. st, load
 * and model may be NULL. Returns a malloc'd string the caller frees, or
 * NULL. */
char *metrics_render(metrics *m, const struct batcher_stats *st, const metrics_load *load,
                     const struct model *model);

#endif
