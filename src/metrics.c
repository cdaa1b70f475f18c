/* metrics.c - request, stage and batch statistics as Prometheus text.
 *
 * Fixed arrays under one mutex: requests by (route, status), a duration
 * histogram per route, one per pipeline stage, and histograms of batch sizes
 * and chunks per request. Routes form a closed set, the labels of routes.h's
 * table plus "other", so a client probing random URLs cannot grow the label
 * space; the same holds for status codes, which are bounded to 100..599
 * plus "other".
 *
 * What it does not do: read batcher or model state on its own (both are
 * passed to metrics_render()), or serve HTTP. */
#include "genred/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "genred/batcher.h"
#include "genred/clock.h"
#include "genred/model.h"
#include "genred/routes.h"
#include "genred/version.h"

/* Slots 0..499 are statuses 100..599; the last slot is anything else. */
#define STATUS_SLOTS 501

static const char *const stage_names[STAGE_COUNT_] = {
    [STAGE_DECODE] = "decode",
    [STAGE_FEATURES] = "features",
    [STAGE_INFERENCE] = "inference",
    [STAGE_TOTAL] = "total",
};

/* 1 ms (a health check) to 60 s (a long song on a loaded server). */
static const double seconds_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025,
                                        0.05,  0.1,    0.25,  0.5,  1,
                                        2.5,   5,      10,    30,   60};
static const double batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128};
/* 3-second chunks: one chunk up to the 400 of a 20-minute upload. */
static const double chunk_bounds[] = {1, 2, 5, 10, 20, 50, 100, 200, 400};

#define MAX_BOUNDS 15

typedef struct histogram {
    const double *bounds;
    size_t n_bounds;
    unsigned long long buckets[MAX_BOUNDS + 1]; /* per bucket; last is +Inf */
    unsigned long long count;
    double sum;
} histogram;

/* Per-route counters sit in slots: slot i for the label of routes[i] (rows
 * sharing a label use the first one's slot), slot route_count for "other". */
struct metrics {
    pthread_mutex_t mu;
    double started;          /* monotonic_now() */
    unsigned long long (*requests)[STATUS_SLOTS]; /* [route_count + 1], owned */
    unsigned long long upload_bytes;
    histogram *request_seconds;                    /* [route_count + 1], owned */
    histogram stage_seconds[STAGE_COUNT_];
    histogram batch_size;
    histogram chunks_per_request;
};

#define BOUNDS(a) (a), (sizeof(a) / sizeof((a)[0]))

static void histogram_init(histogram *h, const double *bounds, size_t n) {
    memset(h, 0, sizeof *h);
    h->bounds = bounds;
    h->n_bounds = n;
}

/* NaN is dropped rather than poisoning the sum; a negative duration can only
 * be clock trouble, so it counts as zero. */
static void histogram_observe(histogram *h, double v) {
    if (isnan(v)) return;
    if (v < 0) v = 0;
    size_t i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    h->buckets[i]++;
    h->count++;
    h->sum += v;
}

/* Frees m and its arrays; the mutex is the caller's business. */
static void free_memory(metrics *m) {
    free(m->requests);
    free(m->request_seconds);
    free(m);
}

metrics *metrics_create(gr_err *err) {
    metrics *m = calloc(1, sizeof *m);
    if (!m) {
        gr_fail(err, GR_EINTERNAL, "metrics: out of memory");
        return NULL;
    }
    m->requests = calloc(route_count + 1, sizeof *m->requests);
    m->request_seconds = calloc(route_count + 1, sizeof *m->request_seconds);
    if (!m->requests || !m->request_seconds) {
        free_memory(m);
        gr_fail(err, GR_EINTERNAL, "metrics: out of memory");
        return NULL;
    }
    if (pthread_mutex_init(&m->mu, NULL) != 0) {
        free_memory(m);
        gr_fail(err, GR_EINTERNAL, "metrics: mutex init failed");
        return NULL;
    }
    m->started = monotonic_now();
    for (size_t r = 0; r <= route_count; r++)
        histogram_init(&m->request_seconds[r], BOUNDS(seconds_bounds));
    for (size_t s = 0; s < STAGE_COUNT_; s++)
        histogram_init(&m->stage_seconds[s], BOUNDS(seconds_bounds));
    histogram_init(&m->batch_size, BOUNDS(batch_bounds));
    histogram_init(&m->chunks_per_request, BOUNDS(chunk_bounds));
    return m;
}

void metrics_free(metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free_memory(m);
}

/* The slot of a label: the first route that has it, or "other". */
static size_t route_slot(const char *label) {
    for (size_t r = 0; label && r < route_count; r++)
        if (strcmp(label, routes[r].label) == 0) return r;
    return route_count;
}

/* The label a slot renders as, or NULL for a row whose label an earlier
 * row has (its slot is never used). */
static const char *slot_label(size_t slot) {
    if (slot == route_count) return ROUTE_LABEL_OTHER;
    return route_slot(routes[slot].label) == slot ? routes[slot].label : NULL;
}

void metrics_observe_request(metrics *m, const char *route, int status,
                             double seconds, size_t bytes_in) {
    if (!m) return;
    size_t r = route_slot(route);
    size_t slot = (status >= 100 && status <= 599) ? (size_t)(status - 100)
                                                   : STATUS_SLOTS - 1;
    pthread_mutex_lock(&m->mu);
    m->requests[r][slot]++;
    m->upload_bytes += bytes_in;
    histogram_observe(&m->request_seconds[r], seconds);
    pthread_mutex_unlock(&m->mu);
}

void metrics_observe_stage(metrics *m, metrics_stage stage, double seconds) {
    if (!m || (int)stage < 0 || stage >= STAGE_COUNT_) return;
    pthread_mutex_lock(&m->mu);
    histogram_observe(&m->stage_seconds[stage], seconds);
    pthread_mutex_unlock(&m->mu);
}

void metrics_observe_batch(metrics *m, int batch_size) {
    if (!m || batch_size < 1) return;
    pthread_mutex_lock(&m->mu);
    histogram_observe(&m->batch_size, batch_size);
    pthread_mutex_unlock(&m->mu);
}

void metrics_observe_chunks(metrics *m, size_t chunks_per_request) {
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    histogram_observe(&m->chunks_per_request, (double)chunks_per_request);
    pthread_mutex_unlock(&m->mu);
}

/* A growable string. The first failed allocation sticks, so rendering can
 * go on unchecked and the result is tested once at the end. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    int failed;
} sbuf;

static int sb_reserve(sbuf *b, size_t extra) {
    if (b->failed) return -1;
    if (extra < b->cap - b->len) return 0;
    if (extra > SIZE_MAX / 2 - b->len) return b->failed = 1, -1;
    size_t cap = b->cap * 2 > b->len + extra + 1 ? b->cap * 2 : b->len + extra + 1;
    char *p = realloc(b->p, cap);
    if (!p) return b->failed = 1, -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static void sb_append(sbuf *b, const char *s, size_t n) {
    if (sb_reserve(b, n) < 0) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_append(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3)))
static void sb_printf(sbuf *b, const char *fmt, ...) {
    if (b->failed) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if ((size_t)n >= b->cap - b->len) {
        if (sb_reserve(b, (size_t)n) < 0) return;
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

/* Label values escape backslash, double quote and newline (format 0.0.4). */
static void sb_label_value(sbuf *b, const char *s) {
    for (; s && *s; s++) {
        if (*s == '\\') sb_puts(b, "\\\\");
        else if (*s == '"') sb_puts(b, "\\\"");
        else if (*s == '\n') sb_puts(b, "\\n");
        else sb_append(b, s, 1);
    }
}

/* The shortest form that parses back to the same double. */
static void sb_double(sbuf *b, double v) {
    char buf[40];
    if (isinf(v)) {
        sb_puts(b, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    sb_puts(b, buf);
}

static void sb_family(sbuf *b, const char *name, const char *type,
                      const char *help) {
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* label is "" or `key="value"` (already escaped). */
static void sb_histogram(sbuf *b, const char *name, const char *label,
                         const histogram *h) {
    const char *sep = label[0] ? "," : "";
    unsigned long long cumulative = 0;
    for (size_t i = 0; i <= h->n_bounds; i++) {
        cumulative += h->buckets[i];
        sb_printf(b, "%s_bucket{%s%sle=\"", name, label, sep);
        if (i < h->n_bounds) sb_double(b, h->bounds[i]);
        else sb_puts(b, "+Inf");
        sb_printf(b, "\"} %llu\n", cumulative);
    }
    sb_printf(b, "%s_sum%s%s%s ", name, label[0] ? "{" : "", label, label[0] ? "}" : "");
    sb_double(b, h->sum);
    sb_printf(b, "\n%s_count%s%s%s %llu\n", name, label[0] ? "{" : "", label,
              label[0] ? "}" : "", h->count);
}

static void render_locked(const metrics *m, sbuf *b) {
    sb_family(b, "genred_build_info", "gauge", "Build of the running daemon; always 1.");
    sb_puts(b, "genred_build_info{version=\"");
    sb_label_value(b, GENRED_VERSION);
    sb_puts(b, "\"} 1\n");

    sb_family(b, "genred_uptime_seconds", "gauge", "Seconds since the metrics were created.");
    sb_puts(b, "genred_uptime_seconds ");
    sb_double(b, monotonic_now() - m->started);
    sb_puts(b, "\n");

    sb_family(b, "genred_requests_total", "counter", "HTTP requests answered, by route and status.");
    for (size_t r = 0; r <= route_count; r++) {
        for (size_t s = 0; s < STATUS_SLOTS; s++) {
            if (!m->requests[r][s]) continue;
            sb_printf(b, "genred_requests_total{route=\"%s\",status=\"", slot_label(r));
            if (s == STATUS_SLOTS - 1) sb_puts(b, "other");
            else sb_printf(b, "%zu", s + 100);
            sb_printf(b, "\"} %llu\n", m->requests[r][s]);
        }
    }

    sb_family(b, "genred_request_duration_seconds", "histogram",
              "Time from request start to the last byte of the answer, by route.");
    for (size_t r = 0; r <= route_count; r++) {
        char label[64];
        if (!slot_label(r)) continue;
        snprintf(label, sizeof label, "route=\"%s\"", slot_label(r));
        sb_histogram(b, "genred_request_duration_seconds", label, &m->request_seconds[r]);
    }

    sb_family(b, "genred_upload_bytes_total", "counter", "Request body bytes received.");
    sb_printf(b, "genred_upload_bytes_total %llu\n", m->upload_bytes);

    sb_family(b, "genred_stage_duration_seconds", "histogram",
              "Time per classify request spent in each pipeline stage.");
    for (size_t s = 0; s < STAGE_COUNT_; s++) {
        char label[32];
        snprintf(label, sizeof label, "stage=\"%s\"", stage_names[s]);
        sb_histogram(b, "genred_stage_duration_seconds", label, &m->stage_seconds[s]);
    }

    sb_family(b, "genred_batch_size", "histogram", "Chunks per model forward pass.");
    sb_histogram(b, "genred_batch_size", "", &m->batch_size);

    sb_family(b, "genred_chunks_per_request", "histogram",
              "3-second chunks per classify request.");
    sb_histogram(b, "genred_chunks_per_request", "", &m->chunks_per_request);
}

/* One sample of a family without labels, with its HELP and TYPE. */
static void sb_single(sbuf *b, const char *name, const char *type, const char *help,
                      unsigned long long value) {
    sb_family(b, name, type, help);
    sb_printf(b, "%s %llu\n", name, value);
}

static void render_load(const metrics_load *l, sbuf *b) {
    const struct {
        const char *name, *type, *help;
        unsigned long long value;
    } rows[] = {
        {"genred_connections", "gauge", "Connections open on the API port.",
         (unsigned long long)l->connections},
        {"genred_max_connections", "gauge",
         "Connections the API port serves; more get 503 or are closed.",
         (unsigned long long)l->max_connections},
        {"genred_queue_depth", "gauge", "Whole uploads waiting for a classification slot.",
         l->queue_depth},
        {"genred_queue_capacity", "gauge",
         "Most uploads that may wait; more get 503, and /readyz is 503 when full.",
         l->queue_capacity},
        {"genred_active_requests", "gauge", "Classifications running.",
         (unsigned long long)l->active_requests},
        {"genred_max_active_requests", "gauge", "Most classifications running at once.",
         (unsigned long long)l->max_active_requests},
        {"genred_upload_memory_bytes", "gauge",
         "Bytes of uploads held (received, waiting or classifying).", l->upload_memory},
        {"genred_max_upload_memory_bytes", "gauge",
         "Most bytes of uploads held at once; more get 503, and /readyz is 503 at it.",
         l->max_upload_memory},
        {"genred_header_timeouts_total", "counter",
         "Connections closed for not completing a request's header block within "
         "header_timeout_s (slow clients, and keep-alive connections idle that long).",
         l->header_timeouts},
        {"genred_slow_uploads_total", "counter",
         "Uploads cut with 408 for falling under min_upload_rate.", l->slow_uploads},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        sb_single(b, rows[i].name, rows[i].type, rows[i].help, rows[i].value);
}

static void render_batcher(const batcher_stats *st, sbuf *b) {
    sb_family(b, "genred_inference_queue_depth", "gauge",
              "Classifications waiting for the model (at most max_active_requests).");
    sb_printf(b, "genred_inference_queue_depth %zu\n", st->queued_requests);
    sb_family(b, "genred_workers", "gauge", "Inference worker threads.");
    sb_printf(b, "genred_workers %d\n", st->workers);
    sb_family(b, "genred_max_batch", "gauge", "Most chunks per model forward pass.");
    sb_printf(b, "genred_max_batch %d\n", st->max_batch);
    sb_family(b, "genred_worker_busy_seconds_total", "counter",
              "Seconds spent inside model forward passes, summed over workers.");
    sb_puts(b, "genred_worker_busy_seconds_total ");
    sb_double(b, st->busy_seconds);
    sb_puts(b, "\n");
    sb_family(b, "genred_chunks_total", "counter", "Chunks run through the model.");
    sb_printf(b, "genred_chunks_total %llu\n", st->chunks);
    sb_family(b, "genred_batches_total", "counter", "Model forward passes.");
    sb_printf(b, "genred_batches_total %llu\n", st->batches);
}

static void render_model(const model *mod, sbuf *b) {
    sb_family(b, "genred_model_info", "gauge", "The loaded model; always 1.");
    sb_puts(b, "genred_model_info{name=\"");
    sb_label_value(b, model_name(mod));
    sb_puts(b, "\",version=\"");
    sb_label_value(b, model_version(mod));
    sb_puts(b, "\",genres=\"");
    int n = model_genre_count(mod);
    for (int i = 0; i < n; i++) {
        if (i) sb_puts(b, ",");
        sb_label_value(b, model_genre(mod, i));
    }
    sb_puts(b, "\"} 1\n");
}

char *metrics_render(metrics *m, const struct batcher_stats *st, const metrics_load *load,
                     const struct model *model) {
    sbuf b = {malloc(16384), 0, 16384, 0};
    if (!b.p) return NULL;
    b.p[0] = '\0';
    if (m) {
        pthread_mutex_lock(&m->mu);
        render_locked(m, &b);
        pthread_mutex_unlock(&m->mu);
    }
    if (load) render_load(load, &b);
    if (st) render_batcher(st, &b);
    if (model) render_model(model, &b);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    return b.p;
}
