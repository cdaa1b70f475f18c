/* test_batcher.c - the worker pool gives exactly what model_forward gives,
 * whatever the batching, under concurrent submitters, and refuses work when
 * its queue is full; a submit that gives up (deadline, cancel) withdraws
 * exactly its own unstarted chunks. Runs the bundled model
 * ($GENRED_SOURCE/models). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "genred/batcher.h"
#include "genred/model.h"

static model *load_bundled(void) {
    const char *src = getenv("GENRED_SOURCE");
    if (!src) fail_msg("GENRED_SOURCE is not set (the repository root)");
    char path[4096];
    snprintf(path, sizeof path, "%s/models/gtzan-cnn.gmodel", src);
    gr_err err = {0};
    model *m = model_load(path, &err);
    if (!m) fail_msg("cannot load %s: %s", path, err.msg);
    return m;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Deterministic pseudo-features in the range of normalised log-mels. */
static float *make_inputs(const model *m, size_t n, uint32_t seed) {
    size_t k = model_input_floats(m);
    float *x = malloc(n * k * sizeof *x);
    assert_non_null(x);
    uint32_t s = seed;
    for (size_t i = 0; i < n * k; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)((s >> 8) & 0xffff) / 32768.0f - 1.0f;
    }
    return x;
}

/* What a single-threaded caller gets, one chunk at a time. */
static float *reference(const model *m, const float *x, size_t n) {
    size_t k = model_input_floats(m), g = (size_t)model_genre_count(m);
    float *out = malloc(n * g * sizeof *out);
    assert_non_null(out);
    gr_err err;
    model_workspace *ws = model_workspace_create(m, 1, &err);
    assert_non_null(ws);
    for (size_t i = 0; i < n; i++) assert_int_equal(model_forward(m, ws, x + i * k, 1, out + i * g, NULL), 0);
    model_workspace_free(ws);
    return out;
}

static void assert_close(const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(a[i] - b[i] < 1e-5f && b[i] - a[i] < 1e-5f))
            fail_msg("output %zu differs: %g vs %g", i, (double)a[i], (double)b[i]);
}

static void test_single_submit_matches_model(void **state) {
    model *m = *state;
    size_t n = 37, g = (size_t)model_genre_count(m);
    float *x = make_inputs(m, n, 1), *ref = reference(m, x, n);
    float *out = calloc(n * g, sizeof *out);
    gr_err err = {0};
    batcher *b = batcher_create(m, 2, 8, 4, NULL, &err);
    assert_non_null(b);
    assert_int_equal(batcher_submit(b, x, n, out, 0, &err), 0);
    assert_close(out, ref, n * g);
    batcher_stats st;
    batcher_get_stats(b, &st);
    assert_int_equal(st.chunks, n);
    assert_true(st.batches >= (n + 7) / 8);
    assert_int_equal(st.queued_requests, 0);
    assert_int_equal(batcher_submit(b, x, 0, out, 0, &err), 0); /* nothing to do */
    batcher_destroy(b);
    free(x);
    free(ref);
    free(out);
}

typedef struct submitter {
    batcher *b;
    const model *m;
    size_t n;
    uint32_t seed;
    double deadline;
    int ok;
} submitter;

static void *submit_and_check(void *arg) {
    submitter *s = arg;
    size_t g = (size_t)model_genre_count(s->m);
    float *x = make_inputs(s->m, s->n, s->seed), *ref = reference(s->m, x, s->n);
    float *out = calloc(s->n * g, sizeof *out);
    gr_err err = {0};
    s->ok = out && batcher_submit(s->b, x, s->n, out, s->deadline, &err) == 0;
    for (size_t i = 0; s->ok && i < s->n * g; i++)
        s->ok = out[i] - ref[i] < 1e-5f && ref[i] - out[i] < 1e-5f;
    free(x);
    free(ref);
    free(out);
    return NULL;
}

/* Many requests of odd sizes at once: batches mix requests, and every chunk
 * must still land in its own request's output slot. */
static void test_concurrent_requests_share_batches(void **state) {
    model *m = *state;
    enum { N = 8 };
    gr_err err = {0};
    batcher *b = batcher_create(m, 2, 16, N, NULL, &err);
    assert_non_null(b);
    pthread_t th[N];
    submitter s[N];
    size_t total = 0;
    for (int i = 0; i < N; i++) {
        /* Half carry a deadline far away: it must change nothing. */
        s[i] = (submitter){.b = b, .m = m, .n = (size_t)(1 + 5 * i), .seed = (uint32_t)(100 + i),
                           .deadline = i % 2 ? now_s() + 600 : 0};
        total += s[i].n;
        assert_int_equal(pthread_create(&th[i], NULL, submit_and_check, &s[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        assert_true(s[i].ok);
    }
    batcher_stats st;
    batcher_get_stats(b, &st);
    assert_int_equal(st.chunks, total);
    batcher_destroy(b);
}

typedef struct long_job {
    batcher *b;
    const float *x;
    float *out;
    size_t n;
    double deadline;
    int rc;
    gr_err err;
    double seconds;
} long_job;

static void *run_long_job(void *arg) {
    long_job *j = arg;
    double t0 = now_s();
    j->rc = batcher_submit(j->b, j->x, j->n, j->out, j->deadline, &j->err);
    j->seconds = now_s() - t0;
    return NULL;
}

/* A queue of capacity 1 holding a request that is still being handed out
 * must refuse the next request at once with GR_EBUSY, not queue it. */
static void test_full_queue_is_refused(void **state) {
    model *m = *state;
    gr_err err = {0};
    batcher *b = batcher_create(m, 1, 1, 1, NULL, &err);
    assert_non_null(b);
    size_t n = 400, g = (size_t)model_genre_count(m);
    float *x = make_inputs(m, n, 7), *out = calloc(n * g, sizeof *out);
    long_job j = {.b = b, .x = x, .out = out, .n = n};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_long_job, &j), 0);

    /* Wait (bounded) until the job is in the queue and far from done. */
    batcher_stats st = {0};
    for (int i = 0; i < 5000; i++) {
        batcher_get_stats(b, &st);
        if (st.queued_requests == 1) break;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    assert_int_equal(st.queued_requests, 1);
    assert_true(st.chunks < n / 2);
    assert_false(batcher_ready(b));
    float one[64];
    err.status = GR_OK;
    assert_int_equal(batcher_submit(b, x, 1, one, 0, &err), -1);
    assert_int_equal(err.status, GR_EBUSY);

    pthread_join(th, NULL);
    assert_int_equal(j.rc, 0);
    assert_true(batcher_ready(b));
    batcher_destroy(b);
    free(x);
    free(out);
}

/* Waits (bounded) until the batcher holds `queued` requests. */
static void wait_queued(batcher *b, size_t queued) {
    batcher_stats st = {0};
    for (int i = 0; i < 5000; i++) {
        batcher_get_stats(b, &st);
        if (st.queued_requests == queued) return;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    fail_msg("queue never reached %zu requests (%zu)", queued, st.queued_requests);
}

/* One worker busy with A (no deadline); B waits behind it with a short
 * deadline. B must give up at its deadline, not when A ends, and none of
 * its chunks may run; A must finish untouched. */
static void test_deadline_withdraws_queued_request(void **state) {
    model *m = *state;
    gr_err err = {0};
    batcher *b = batcher_create(m, 1, 1, 4, NULL, &err);
    assert_non_null(b);
    size_t na = 200, nb = 50, g = (size_t)model_genre_count(m);
    float *xa = make_inputs(m, na, 11), *xb = make_inputs(m, nb, 12);
    float *oa = calloc(na * g, sizeof *oa), *ob = calloc(nb * g, sizeof *ob);
    long_job a = {.b = b, .x = xa, .out = oa, .n = na};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, run_long_job, &a), 0);
    wait_queued(b, 1);

    long_job jb = {.b = b, .x = xb, .out = ob, .n = nb, .deadline = now_s() + 0.1};
    run_long_job(&jb);
    assert_int_equal(jb.rc, -1);
    assert_int_equal(jb.err.status, GR_EDEADLINE);
    batcher_stats st;
    batcher_get_stats(b, &st);
    assert_true(st.chunks < na); /* A was still running: B did not wait for it */
    assert_true(jb.seconds < 2.0);
    assert_int_equal(st.queued_requests, 1);

    pthread_join(th, NULL);
    assert_int_equal(a.rc, 0);
    batcher_get_stats(b, &st);
    assert_int_equal(st.chunks, na); /* not one chunk of B ran */
    float *ref = reference(m, xa, na);
    assert_close(oa, ref, na * g);
    batcher_destroy(b);
    free(ref);
    free(xa);
    free(xb);
    free(oa);
    free(ob);
}

/* A request whose deadline passes while its own chunks run stops after the
 * batch in progress; the batcher goes on serving. */
static void test_deadline_stops_running_request(void **state) {
    model *m = *state;
    gr_err err = {0};
    batcher *b = batcher_create(m, 1, 1, 4, NULL, &err);
    assert_non_null(b);
    size_t n = 400, g = (size_t)model_genre_count(m);
    float *x = make_inputs(m, n, 13), *out = calloc(n * g, sizeof *out);
    long_job j = {.b = b, .x = x, .out = out, .n = n, .deadline = now_s() + 0.2};
    run_long_job(&j);
    assert_int_equal(j.rc, -1);
    assert_int_equal(j.err.status, GR_EDEADLINE);
    batcher_stats st;
    batcher_get_stats(b, &st);
    assert_true(st.chunks > 0 && st.chunks < n);
    assert_int_equal(st.queued_requests, 0);
    assert_true(batcher_ready(b));
    /* A deadline that passed already: the submitter looks before any worker
     * can take the job (it holds the lock from enqueue to the first check),
     * so none of its chunks runs; then a plain submit works. */
    unsigned long long before = st.chunks;
    err.status = GR_OK;
    assert_int_equal(batcher_submit(b, x, 3, out, now_s() - 1, &err), -1);
    assert_int_equal(err.status, GR_EDEADLINE);
    assert_int_equal(batcher_submit(b, x, 5, out, 0, &err), 0);
    batcher_get_stats(b, &st);
    assert_int_equal(st.chunks, before + 5);
    float *ref = reference(m, x, 5);
    assert_close(out, ref, 5 * g);
    batcher_destroy(b);
    free(ref);
    free(x);
    free(out);
}

/* batcher_cancel(): the running request and the queued one both give up
 * with GR_EBUSY at once, and nothing is admitted afterwards. */
static void test_cancel(void **state) {
    model *m = *state;
    gr_err err = {0};
    batcher *b = batcher_create(m, 1, 1, 4, NULL, &err);
    assert_non_null(b);
    size_t n = 400, g = (size_t)model_genre_count(m);
    float *x = make_inputs(m, n, 14);
    float *o1 = calloc(n * g, sizeof *o1), *o2 = calloc(n * g, sizeof *o2);
    long_job j1 = {.b = b, .x = x, .out = o1, .n = n};
    long_job j2 = {.b = b, .x = x, .out = o2, .n = n};
    pthread_t t1, t2;
    assert_int_equal(pthread_create(&t1, NULL, run_long_job, &j1), 0);
    wait_queued(b, 1);
    assert_int_equal(pthread_create(&t2, NULL, run_long_job, &j2), 0);
    wait_queued(b, 2);
    double t0 = now_s();
    batcher_cancel(b);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    double dt = now_s() - t0;
    assert_int_equal(j1.rc, -1);
    assert_int_equal(j1.err.status, GR_EBUSY);
    assert_int_equal(j2.rc, -1);
    assert_int_equal(j2.err.status, GR_EBUSY);
    assert_true(dt < 1.0);
    batcher_stats st;
    batcher_get_stats(b, &st);
    assert_true(st.chunks < n);
    assert_int_equal(st.queued_requests, 0);
    assert_false(batcher_ready(b));
    err.status = GR_OK;
    assert_int_equal(batcher_submit(b, x, 1, o1, 0, &err), -1);
    assert_int_equal(err.status, GR_EBUSY);
    batcher_destroy(b);
    free(x);
    free(o1);
    free(o2);
}

static void test_bad_arguments(void **state) {
    model *m = *state;
    gr_err err = {0};
    assert_null(batcher_create(m, 0, 8, 4, NULL, &err));
    assert_null(batcher_create(m, 1, 0, 4, NULL, &err));
    assert_null(batcher_create(m, 1, 8, 0, NULL, &err));
    assert_null(batcher_create(NULL, 1, 8, 4, NULL, &err));
}

static int setup(void **state) {
    *state = load_bundled();
    return *state ? 0 : -1;
}

static int teardown(void **state) {
    model_free(*state);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_submit_matches_model),
        cmocka_unit_test(test_concurrent_requests_share_batches),
        cmocka_unit_test(test_full_queue_is_refused),
        cmocka_unit_test(test_deadline_withdraws_queued_request),
        cmocka_unit_test(test_deadline_stops_running_request),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
