/* test_metrics.c - /metrics output: valid exposition format 0.0.4, counters
 * that count, cumulative histograms whose +Inf bucket equals _count. The
 * text is parsed back line by line, so the checks see what a scraper sees. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "genred/batcher.h"
#include "genred/metrics.h"

/* One parsed sample. labels holds the decoded labels except le, as
 * `k=v,k=v` in output order; le is the decoded le label or "". */
typedef struct sample {
    char name[128];
    char labels[256];
    char le[32];
    double value;
} sample;

typedef struct exposition {
    sample *samples;
    size_t n;
    char types[64][2][64]; /* family name, type */
    size_t n_types;
} exposition;

/* Copies src into dst[cap], failing the test if it does not fit. */
static void copy_str(char *dst, size_t cap, const char *src) {
    size_t n = strlen(src);
    assert_true(n < cap);
    memcpy(dst, src, n + 1);
}

static int is_name_char(char ch, int first) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
           ch == ':' || (!first && ch >= '0' && ch <= '9');
}

static const char *type_of(const exposition *e, const char *family) {
    for (size_t i = 0; i < e->n_types; i++)
        if (strcmp(e->types[i][0], family) == 0) return e->types[i][1];
    return NULL;
}

/* The family a sample belongs to: its own name, or for histograms the name
 * without _bucket, _sum or _count. */
static int belongs_to(const char *name, const char *family, const char *type) {
    size_t n = strlen(family);
    if (strcmp(name, family) == 0) return strcmp(type, "histogram") != 0;
    if (strcmp(type, "histogram") != 0 || strncmp(name, family, n) != 0) return 0;
    return strcmp(name + n, "_bucket") == 0 || strcmp(name + n, "_sum") == 0 ||
           strcmp(name + n, "_count") == 0;
}

/* Parses text, failing the test on the first line that is not valid
 * exposition format. Every sample must follow the # TYPE of its family,
 * and every family must have # HELP. */
static void parse(const char *text, exposition *e) {
    memset(e, 0, sizeof *e);
    size_t cap = 0;
    const char *family = NULL;
    char last_help[64] = "";
    int line_no = 0;
    assert_true(strlen(text) > 0 && text[strlen(text) - 1] == '\n');
    for (const char *p = text; *p; line_no++) {
        const char *end = strchr(p, '\n');
        assert_non_null(end);
        char line[1024];
        size_t len = (size_t)(end - p);
        assert_true(len > 0 && len < sizeof line);
        memcpy(line, p, len);
        line[len] = '\0';
        p = end + 1;

        if (line[0] == '#') {
            char kw[8], name[64], rest[512];
            /* genred writes no plain comments: only "# HELP " and "# TYPE ". */
            if ((strncmp(line, "# HELP ", 7) != 0 && strncmp(line, "# TYPE ", 7) != 0) ||
                sscanf(line, "# %7s %63s %511[^\n]", kw, name, rest) != 3)
                fail_msg("line %d: bad comment '%s'", line_no, line);
            if (strcmp(kw, "HELP") == 0) {
                assert_null(type_of(e, name)); /* HELP comes first */
                copy_str(last_help, sizeof last_help, name);
                continue;
            }
            assert_string_equal(kw, "TYPE");
            assert_true(strcmp(rest, "counter") == 0 || strcmp(rest, "gauge") == 0 ||
                        strcmp(rest, "histogram") == 0);
            if (type_of(e, name)) fail_msg("family %s typed twice", name);
            /* Every family is documented. */
            if (strcmp(last_help, name) != 0) fail_msg("line %d: %s has no # HELP", line_no, name);
            assert_true(e->n_types < 64);
            copy_str(e->types[e->n_types][0], 64, name);
            copy_str(e->types[e->n_types][1], 64, rest);
            family = e->types[e->n_types][0];
            e->n_types++;
            assert_true(strncmp(name, "genred_", 7) == 0);
            continue;
        }

        if (e->n == cap) {
            cap = cap ? cap * 2 : 64;
            e->samples = realloc(e->samples, cap * sizeof *e->samples);
            assert_non_null(e->samples);
        }
        sample *s = &e->samples[e->n++];
        memset(s, 0, sizeof *s);
        const char *q = line;
        size_t nn = 0;
        if (!is_name_char(*q, 1)) fail_msg("line %d: bad name '%s'", line_no, line);
        while (is_name_char(*q, nn == 0)) {
            assert_true(nn + 1 < sizeof s->name);
            s->name[nn++] = *q++;
        }
        if (*q == '{') {
            q++;
            size_t ln = 0;
            while (*q != '}') {
                char lname[64], lvalue[256];
                size_t k = 0, v = 0;
                while (is_name_char(*q, k == 0)) {
                    assert_true(k + 1 < sizeof lname);
                    lname[k++] = *q++;
                }
                lname[k] = '\0';
                if (k == 0 || q[0] != '=' || q[1] != '"')
                    fail_msg("line %d: bad label in '%s'", line_no, line);
                q += 2;
                while (*q != '"') {
                    if (*q == '\0') fail_msg("line %d: unterminated label value", line_no);
                    char ch = *q++;
                    if (ch == '\\') {
                        ch = *q++;
                        if (ch == 'n') ch = '\n';
                        else if (ch != '\\' && ch != '"')
                            fail_msg("line %d: bad escape in '%s'", line_no, line);
                    }
                    assert_true(v + 1 < sizeof lvalue);
                    lvalue[v++] = ch;
                }
                lvalue[v] = '\0';
                q++;
                if (strcmp(lname, "le") == 0) {
                    copy_str(s->le, sizeof s->le, lvalue);
                } else {
                    int w = snprintf(s->labels + ln, sizeof s->labels - ln, "%s%s=%s",
                                     ln ? "," : "", lname, lvalue);
                    assert_true(w > 0 && (size_t)w < sizeof s->labels - ln);
                    ln += (size_t)w;
                }
                if (*q == ',') q++;
                else if (*q != '}') fail_msg("line %d: bad label list '%s'", line_no, line);
            }
            q++;
        }
        if (*q != ' ') fail_msg("line %d: no space before value '%s'", line_no, line);
        q++;
        char *vend;
        s->value = strtod(q, &vend);
        if (vend == q || *vend != '\0') fail_msg("line %d: bad value '%s'", line_no, line);
        if (!family || !belongs_to(s->name, family, type_of(e, family)))
            fail_msg("line %d: sample %s outside its family's block", line_no, s->name);
    }
}

/* The value of the sample name{labels} (le excluded); fails if absent. */
static double value_of(const exposition *e, const char *name, const char *labels) {
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->samples[i].name, name) == 0 &&
            strcmp(e->samples[i].labels, labels) == 0 && e->samples[i].le[0] == '\0')
            return e->samples[i].value;
    fail_msg("no sample %s{%s}", name, labels);
    return NAN;
}

static int has_sample(const exposition *e, const char *name) {
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->samples[i].name, name) == 0) return 1;
    return 0;
}

/* The cumulative count of bucket le of histogram family{labels}. */
static double bucket_of(const exposition *e, const char *family, const char *labels,
                        const char *le) {
    char name[160];
    snprintf(name, sizeof name, "%s_bucket", family);
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->samples[i].name, name) == 0 &&
            strcmp(e->samples[i].labels, labels) == 0 && strcmp(e->samples[i].le, le) == 0)
            return e->samples[i].value;
    fail_msg("no bucket %s{%s,le=%s}", family, labels, le);
    return NAN;
}

/* Every histogram series: le strictly ascending, counts non-decreasing,
 * ending in +Inf equal to _count. Returns the number of series checked. */
static size_t check_histograms(const exposition *e) {
    size_t series = 0;
    for (size_t t = 0; t < e->n_types; t++) {
        if (strcmp(e->types[t][1], "histogram") != 0) continue;
        const char *family = e->types[t][0];
        char bucket[160], count[160];
        snprintf(bucket, sizeof bucket, "%s_bucket", family);
        snprintf(count, sizeof count, "%s_count", family);
        for (size_t i = 0; i < e->n; i++) {
            /* Start of a series: its first bucket. */
            if (strcmp(e->samples[i].name, bucket) != 0) continue;
            if (i > 0 && strcmp(e->samples[i - 1].name, bucket) == 0 &&
                strcmp(e->samples[i - 1].labels, e->samples[i].labels) == 0)
                continue;
            const char *labels = e->samples[i].labels;
            double prev_le = -INFINITY, prev = 0;
            size_t j = i;
            for (; j < e->n && strcmp(e->samples[j].name, bucket) == 0 &&
                   strcmp(e->samples[j].labels, labels) == 0;
                 j++) {
                double le = strtod(e->samples[j].le, NULL);
                assert_true(le > prev_le);
                assert_true(e->samples[j].value >= prev);
                prev_le = le;
                prev = e->samples[j].value;
            }
            assert_string_equal(e->samples[j - 1].le, "+Inf");
            assert_true(prev == value_of(e, count, labels));
            series++;
        }
    }
    return series;
}

static char *render_parse(metrics *m, const batcher_stats *st, const metrics_load *load,
                          exposition *e) {
    char *text = metrics_render(m, st, load, NULL);
    assert_non_null(text);
    parse(text, e);
    return text;
}

static void test_fresh_render_is_valid(void **state) {
    (void)state;
    metrics *m = metrics_create(NULL);
    assert_non_null(m);
    exposition e;
    char *text = render_parse(m, NULL, NULL, &e);
    assert_true(has_sample(&e, "genred_build_info"));
    assert_string_equal(e.samples[0].name, "genred_build_info");
    assert_int_equal(strncmp(e.samples[0].labels, "version=", 8), 0);
    assert_true(value_of(&e, "genred_build_info", e.samples[0].labels) == 1);
    assert_true(value_of(&e, "genred_uptime_seconds", "") >= 0);
    assert_true(value_of(&e, "genred_upload_bytes_total", "") == 0);
    assert_string_equal(type_of(&e, "genred_requests_total"), "counter");
    assert_string_equal(type_of(&e, "genred_request_duration_seconds"), "histogram");
    assert_string_equal(type_of(&e, "genred_stage_duration_seconds"), "histogram");
    assert_string_equal(type_of(&e, "genred_batch_size"), "histogram");
    /* Nothing about a batcher or a model that was not given. */
    assert_false(has_sample(&e, "genred_queue_depth"));
    assert_false(has_sample(&e, "genred_model_info"));
    /* 8 routes + 4 stages + batch size + chunks per request. */
    assert_int_equal(check_histograms(&e), 14);
    assert_true(bucket_of(&e, "genred_stage_duration_seconds", "stage=decode", "0.001") == 0);
    assert_true(bucket_of(&e, "genred_stage_duration_seconds", "stage=total", "60") == 0);
    assert_true(bucket_of(&e, "genred_batch_size", "", "128") == 0);
    free(e.samples);
    free(text);
    metrics_free(m);
}

static void test_requests_counted(void **state) {
    (void)state;
    metrics *m = metrics_create(NULL);
    assert_non_null(m);
    for (int i = 0; i < 3; i++) metrics_observe_request(m, "/v1/classify", 200, 0.2, 1000);
    metrics_observe_request(m, "/v1/classify", 413, 0.001, 5);
    metrics_observe_request(m, "/healthz", 200, 0.0001, 0);
    metrics_observe_request(m, "/no/such/route", 404, 0.0001, 0);
    metrics_observe_request(m, NULL, 404, 0.0001, 0);
    metrics_observe_request(m, "/", 999, 0.0001, 0);

    exposition e;
    char *text = render_parse(m, NULL, NULL, &e);
    assert_true(value_of(&e, "genred_requests_total", "route=/v1/classify,status=200") == 3);
    assert_true(value_of(&e, "genred_requests_total", "route=/v1/classify,status=413") == 1);
    assert_true(value_of(&e, "genred_requests_total", "route=/healthz,status=200") == 1);
    assert_true(value_of(&e, "genred_requests_total", "route=other,status=404") == 2);
    assert_true(value_of(&e, "genred_requests_total", "route=/,status=other") == 1);
    assert_true(value_of(&e, "genred_upload_bytes_total", "") == 3005);
    assert_true(value_of(&e, "genred_request_duration_seconds_count", "route=/v1/classify") == 4);
    assert_true(fabs(value_of(&e, "genred_request_duration_seconds_sum", "route=/v1/classify") -
                     0.601) < 1e-12);
    assert_true(bucket_of(&e, "genred_request_duration_seconds", "route=/v1/classify", "0.1") == 1);
    assert_true(bucket_of(&e, "genred_request_duration_seconds", "route=/v1/classify", "0.25") == 4);
    check_histograms(&e);
    free(e.samples);
    free(text);

    /* Counters only go up. */
    metrics_observe_request(m, "/v1/classify", 200, 0.3, 7);
    text = render_parse(m, NULL, NULL, &e);
    assert_true(value_of(&e, "genred_requests_total", "route=/v1/classify,status=200") == 4);
    assert_true(value_of(&e, "genred_upload_bytes_total", "") == 3012);
    assert_true(bucket_of(&e, "genred_request_duration_seconds", "route=/v1/classify", "+Inf") == 5);
    check_histograms(&e);
    free(e.samples);
    free(text);
    metrics_free(m);
}

static void test_histogram_buckets(void **state) {
    (void)state;
    metrics *m = metrics_create(NULL);
    assert_non_null(m);
    metrics_observe_stage(m, STAGE_DECODE, 0.003);
    metrics_observe_stage(m, STAGE_DECODE, 0.005); /* le is inclusive */
    metrics_observe_stage(m, STAGE_DECODE, 120);   /* past the last bound */
    metrics_observe_stage(m, STAGE_DECODE, NAN);   /* dropped */
    metrics_observe_stage(m, STAGE_DECODE, -1);    /* counted as 0 */
    metrics_observe_stage(m, STAGE_COUNT_, 1);     /* not a stage: ignored */
    metrics_observe_stage(m, STAGE_INFERENCE, 0.5);
    metrics_observe_batch(m, 1);
    metrics_observe_batch(m, 3);
    metrics_observe_batch(m, 200);
    metrics_observe_batch(m, 0); /* not a batch: ignored */
    metrics_observe_chunks(m, 10);
    metrics_observe_chunks(m, 400);

    exposition e;
    char *text = render_parse(m, NULL, NULL, &e);
    const char *d = "stage=decode";
    const char *f = "genred_stage_duration_seconds";
    assert_true(bucket_of(&e, f, d, "0.001") == 1);
    assert_true(bucket_of(&e, f, d, "0.0025") == 1);
    assert_true(bucket_of(&e, f, d, "0.005") == 3);
    assert_true(bucket_of(&e, f, d, "60") == 3);
    assert_true(bucket_of(&e, f, d, "+Inf") == 4);
    assert_true(value_of(&e, "genred_stage_duration_seconds_count", d) == 4);
    assert_true(fabs(value_of(&e, "genred_stage_duration_seconds_sum", d) - 120.008) < 1e-9);
    assert_true(bucket_of(&e, f, "stage=inference", "0.25") == 0);
    assert_true(bucket_of(&e, f, "stage=inference", "0.5") == 1);
    assert_true(value_of(&e, "genred_stage_duration_seconds_count", "stage=features") == 0);
    assert_true(value_of(&e, "genred_stage_duration_seconds_count", "stage=total") == 0);

    assert_true(bucket_of(&e, "genred_batch_size", "", "1") == 1);
    assert_true(bucket_of(&e, "genred_batch_size", "", "2") == 1);
    assert_true(bucket_of(&e, "genred_batch_size", "", "4") == 2);
    assert_true(bucket_of(&e, "genred_batch_size", "", "128") == 2);
    assert_true(bucket_of(&e, "genred_batch_size", "", "+Inf") == 3);
    assert_true(value_of(&e, "genred_batch_size_sum", "") == 204);
    assert_true(bucket_of(&e, "genred_chunks_per_request", "", "5") == 0);
    assert_true(bucket_of(&e, "genred_chunks_per_request", "", "10") == 1);
    assert_true(bucket_of(&e, "genred_chunks_per_request", "", "400") == 2);
    assert_int_equal(check_histograms(&e), 14);
    free(e.samples);
    free(text);
    metrics_free(m);
}

static void test_batcher_stats(void **state) {
    (void)state;
    metrics *m = metrics_create(NULL);
    assert_non_null(m);
    batcher_stats st = {.queued_requests = 3, .queue_capacity = 64, .batches = 10,
                        .chunks = 250, .busy_seconds = 1.25, .workers = 2,
                        .max_batch = 32};
    exposition e;
    char *text = render_parse(m, &st, NULL, &e);
    assert_string_equal(type_of(&e, "genred_inference_queue_depth"), "gauge");
    assert_true(value_of(&e, "genred_inference_queue_depth", "") == 3);
    /* The queue an operator sizes is the HTTP side's (test_load). */
    assert_false(has_sample(&e, "genred_queue_capacity"));
    assert_true(value_of(&e, "genred_workers", "") == 2);
    assert_string_equal(type_of(&e, "genred_worker_busy_seconds_total"), "counter");
    assert_true(value_of(&e, "genred_worker_busy_seconds_total", "") == 1.25);
    assert_true(value_of(&e, "genred_chunks_total", "") == 250);
    assert_true(value_of(&e, "genred_batches_total", "") == 10);
    free(e.samples);
    free(text);
    metrics_free(m);
}

/* The HTTP side's load: what /readyz judges by, each under its name. */
static void test_load(void **state) {
    (void)state;
    metrics_load load = {.connections = 7, .max_connections = 256, .queue_depth = 5,
                         .queue_capacity = 64, .active_requests = 4,
                         .max_active_requests = 4, .upload_memory = 123456,
                         .max_upload_memory = 268435456, .header_timeouts = 9,
                         .slow_uploads = 2};
    exposition e;
    char *text = render_parse(NULL, NULL, &load, &e);
    struct { const char *name, *type; double value; } want[] = {
        {"genred_connections", "gauge", 7}, {"genred_max_connections", "gauge", 256},
        {"genred_queue_depth", "gauge", 5}, {"genred_queue_capacity", "gauge", 64},
        {"genred_active_requests", "gauge", 4}, {"genred_max_active_requests", "gauge", 4},
        {"genred_upload_memory_bytes", "gauge", 123456},
        {"genred_max_upload_memory_bytes", "gauge", 268435456},
        {"genred_header_timeouts_total", "counter", 9},
        {"genred_slow_uploads_total", "counter", 2},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_string_equal(type_of(&e, want[i].name), want[i].type);
        assert_true(value_of(&e, want[i].name, "") == want[i].value);
    }
    free(e.samples);
    free(text);
}

static void test_null_metrics(void **state) {
    (void)state;
    metrics_observe_request(NULL, "/healthz", 200, 0.1, 1);
    metrics_observe_stage(NULL, STAGE_TOTAL, 0.1);
    metrics_observe_batch(NULL, 4);
    metrics_observe_chunks(NULL, 4);
    metrics_free(NULL);
    char *text = metrics_render(NULL, NULL, NULL, NULL);
    assert_non_null(text);
    assert_string_equal(text, "");
    free(text);
}

static void *hammer(void *arg) {
    metrics *m = arg;
    for (int i = 0; i < 20000; i++) {
        metrics_observe_request(m, "/v1/classify", 200, 0.01, 2);
        metrics_observe_batch(m, 8);
    }
    return NULL;
}

static void test_concurrent_observers(void **state) {
    (void)state;
    metrics *m = metrics_create(NULL);
    assert_non_null(m);
    pthread_t t[4];
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&t[i], NULL, hammer, m), 0);
    for (int i = 0; i < 4; i++) assert_int_equal(pthread_join(t[i], NULL), 0);
    exposition e;
    char *text = render_parse(m, NULL, NULL, &e);
    assert_true(value_of(&e, "genred_requests_total", "route=/v1/classify,status=200") == 80000);
    assert_true(value_of(&e, "genred_upload_bytes_total", "") == 160000);
    assert_true(value_of(&e, "genred_batch_size_count", "") == 80000);
    assert_true(bucket_of(&e, "genred_batch_size", "", "4") == 0);
    assert_true(bucket_of(&e, "genred_batch_size", "", "8") == 80000);
    free(e.samples);
    free(text);
    metrics_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fresh_render_is_valid),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_requests_counted),
        cmocka_unit_test(test_histogram_buckets),
        cmocka_unit_test(test_batcher_stats),
        cmocka_unit_test(test_null_metrics),
        cmocka_unit_test(test_concurrent_observers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
