/* batcher.c - a bounded queue of requests and the workers that drain it.
 *
 * A request (job) is a run of n chunks. Workers take up to max_batch chunks
 * at a time from the head of the queue; a batch may span the tail of one job
 * and the head of the next, which is how concurrent requests share a
 * model_forward() call. A job leaves the queue when its last chunk has been
 * handed out; its submitter wakes when its last chunk has been computed.
 *
 * Giving up (a request's deadline, or batcher_cancel() at shutdown) withdraws
 * the chunks no worker has taken yet; the ones already taken are waited for,
 * since a worker is writing into the submitter's memory. So a request that
 * gives up costs at most the batches already running, and the queue sheds
 * exactly the work nobody will wait for.
 *
 * What it does not do: know about audio or HTTP. */
#include "genred/batcher.h"

#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "genred/clock.h"

typedef struct job {
    const float *in;
    float *out;
    size_t n;
    size_t handed;       /* chunks given to workers so far */
    size_t remaining;    /* chunks not yet computed */
    gr_err failed;       /* a batch holding some of its chunks failed: why */
    int withdrawn;       /* given up: the chunks not handed out are dropped */
    pthread_cond_t done;
    struct job *next;
} job;

/* A slice of one job inside a batch. */
typedef struct slice {
    job *j;
    size_t first, count;
} slice;

typedef struct worker {
    batcher *b;
    pthread_t thread;
    model_workspace *ws;
    float *in;       /* max_batch gathered inputs */
    float *out;      /* max_batch outputs */
    slice *slices;   /* at most max_batch */
} worker;

struct batcher {
    const model *m;
    metrics *met;
    int max_batch;
    size_t capacity;
    size_t in_floats, out_floats;

    pthread_mutex_t mu;
    pthread_cond_t work;
    job *head, *tail;
    size_t queued;
    int stopping;
    int cancelled;       /* batcher_cancel(): every wait gives up */

    unsigned long long batches, chunks;
    double busy_seconds;

    int nworkers;
    int started;
    worker *workers;
};

/* Takes up to max_batch chunks from the queue head. Called with mu held. */
static int take_batch(batcher *b, slice *sl, size_t *nslices) {
    size_t total = 0, ns = 0;
    while (b->head && total < (size_t)b->max_batch) {
        job *j = b->head;
        size_t want = (size_t)b->max_batch - total;
        size_t left = j->n - j->handed;
        size_t take = left < want ? left : want;
        sl[ns].j = j;
        sl[ns].first = j->handed;
        sl[ns].count = take;
        ns++;
        j->handed += take;
        total += take;
        if (j->handed == j->n) {
            b->head = j->next;
            if (!b->head) b->tail = NULL;
            b->queued--;
        }
    }
    *nslices = ns;
    return (int)total;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    batcher *b = w->b;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->head && !b->stopping) pthread_cond_wait(&b->work, &b->mu);
        if (!b->head) break; /* stopping and drained */
        size_t ns;
        int n = take_batch(b, w->slices, &ns);
        pthread_mutex_unlock(&b->mu);

        /* One slice is the common case: read the job's memory directly. */
        const float *in = w->slices[0].j->in + w->slices[0].first * b->in_floats;
        if (ns > 1) {
            size_t off = 0;
            for (size_t i = 0; i < ns; i++) {
                const slice *s = &w->slices[i];
                memcpy(w->in + off * b->in_floats, s->j->in + s->first * b->in_floats,
                       s->count * b->in_floats * sizeof(float));
                off += s->count;
            }
            in = w->in;
        }
        double t0 = monotonic_now();
        gr_err ferr = {GR_OK, ""};
        int rc = model_forward(b->m, w->ws, in, n, w->out, &ferr);
        double dt = monotonic_now() - t0;
        metrics_observe_batch(b->met, n);

        size_t off = 0;
        for (size_t i = 0; i < ns; i++) {
            const slice *s = &w->slices[i];
            memcpy(s->j->out + s->first * b->out_floats, w->out + off * b->out_floats,
                   s->count * b->out_floats * sizeof(float));
            off += s->count;
        }

        pthread_mutex_lock(&b->mu);
        b->batches++;
        b->chunks += (unsigned long long)n;
        b->busy_seconds += dt;
        for (size_t i = 0; i < ns; i++) {
            job *j = w->slices[i].j;
            if (rc != 0) j->failed = ferr;
            j->remaining -= w->slices[i].count;
            if (j->remaining == 0) pthread_cond_signal(&j->done);
        }
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

static void worker_free_buffers(worker *w) {
    model_workspace_free(w->ws);
    free(w->in);
    free(w->out);
    free(w->slices);
}

batcher *batcher_create(const model *m, int workers, int max_batch,
                        size_t queue_capacity, metrics *met, gr_err *err) {
    if (!m || workers < 1 || workers > 1024 || max_batch < 1 || queue_capacity < 1) {
        gr_fail(err, GR_EINTERNAL, "batcher: invalid arguments");
        return NULL;
    }
    batcher *b = calloc(1, sizeof *b);
    if (!b) {
        gr_fail(err, GR_EINTERNAL, "batcher: out of memory");
        return NULL;
    }
    b->m = m;
    b->met = met;
    b->max_batch = max_batch;
    b->capacity = queue_capacity;
    b->in_floats = model_input_floats(m);
    b->out_floats = model_output_floats(m);
    b->nworkers = workers;
    if (pthread_mutex_init(&b->mu, NULL) != 0) {
        free(b);
        gr_fail(err, GR_EINTERNAL, "batcher: mutex init failed");
        return NULL;
    }
    if (pthread_cond_init(&b->work, NULL) != 0) {
        pthread_mutex_destroy(&b->mu);
        free(b);
        gr_fail(err, GR_EINTERNAL, "batcher: condvar init failed");
        return NULL;
    }
    b->workers = calloc((size_t)workers, sizeof *b->workers);
    if (!b->workers) {
        batcher_destroy(b);
        gr_fail(err, GR_EINTERNAL, "batcher: out of memory");
        return NULL;
    }
    for (int i = 0; i < workers; i++) {
        worker *w = &b->workers[i];
        w->b = b;
        w->ws = model_workspace_create(m, max_batch, err);
        if (!w->ws) {
            batcher_destroy(b);
            return NULL;
        }
        w->in = malloc((size_t)max_batch * b->in_floats * sizeof(float));
        w->out = malloc((size_t)max_batch * b->out_floats * sizeof(float));
        w->slices = malloc((size_t)max_batch * sizeof *w->slices);
        if (!w->in || !w->out || !w->slices) {
            batcher_destroy(b);
            gr_fail(err, GR_EINTERNAL, "batcher: out of memory");
            return NULL;
        }
    }

    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int blas_threads = cores > workers ? (int)(cores / workers) : 1;
    openblas_set_num_threads(blas_threads);

    for (int i = 0; i < workers; i++) {
        if (pthread_create(&b->workers[i].thread, NULL, worker_main, &b->workers[i]) != 0) {
            batcher_destroy(b);
            gr_fail(err, GR_EINTERNAL, "batcher: cannot start worker thread");
            return NULL;
        }
        b->started++;
    }
    return b;
}

/* Takes j out of the queue if it is still there and drops its chunks that no
 * worker has taken. Returns how many were dropped. Called with mu held. */
static size_t withdraw(batcher *b, job *j) {
    j->withdrawn = 1;
    if (j->handed == j->n) return 0;
    job **p = &b->head, *prev = NULL;
    while (*p && *p != j) prev = *p, p = &(*p)->next;
    if (*p) {
        *p = j->next;
        if (b->tail == j) b->tail = prev;
        b->queued--;
    }
    size_t dropped = j->n - j->handed;
    j->n = j->handed;
    j->remaining -= dropped;
    return dropped;
}

int batcher_submit(batcher *b, const float *in, size_t n, float *out, double deadline,
                   gr_err *err) {
    if (n == 0) return 0;
    job j = {.in = in, .out = out, .n = n, .remaining = n};
    /* The deadline is monotonic_now() time, so the wait must be too. */
    if (monotonic_cond_init(&j.done) != 0)
        return gr_fail(err, GR_EINTERNAL, "batcher: condvar init failed");

    pthread_mutex_lock(&b->mu);
    if (b->stopping || b->cancelled || b->queued >= b->capacity) {
        int stopping = b->stopping || b->cancelled;
        pthread_mutex_unlock(&b->mu);
        pthread_cond_destroy(&j.done);
        return gr_fail(err, GR_EBUSY, stopping ? "server is shutting down"
                                               : "inference queue is full, retry later");
    }
    if (b->tail) b->tail->next = &j;
    else b->head = &j;
    b->tail = &j;
    b->queued++;
    /* Wake enough workers for this job's batches, not just one. */
    if (n > (size_t)b->max_batch) pthread_cond_broadcast(&b->work);
    else pthread_cond_signal(&b->work);

    gr_status why = GR_OK;
    size_t dropped = 0;
    struct timespec until = monotonic_timespec(deadline);
    while (j.remaining > 0) {
        if (!j.withdrawn) {
            if (b->cancelled) why = GR_EBUSY;
            else if (deadline > 0 && monotonic_now() >= deadline) why = GR_EDEADLINE;
            if (why != GR_OK) {
                dropped = withdraw(b, &j);
                continue;
            }
        }
        if (deadline > 0 && !j.withdrawn) pthread_cond_timedwait(&j.done, &b->mu, &until);
        else pthread_cond_wait(&j.done, &b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    pthread_cond_destroy(&j.done);
    if (j.failed.status != GR_OK)
        return gr_fail(err, j.failed.status, "batcher: %s", j.failed.msg);
    /* Every chunk computed (the give-up came too late to save anything):
     * the answer is worth more than the error. */
    if (dropped == 0) return 0;
    if (why == GR_EBUSY) return gr_fail(err, GR_EBUSY, "server is shutting down");
    return gr_fail(err, GR_EDEADLINE, "request deadline passed while waiting for inference "
                   "(%zu of %zu chunks not run)", dropped, n);
}

void batcher_cancel(batcher *b) {
    pthread_mutex_lock(&b->mu);
    b->cancelled = 1;
    /* Jobs still queued have a submitter waiting to withdraw them; jobs
     * wholly handed out finish with the batches already running. */
    for (job *j = b->head; j; j = j->next) pthread_cond_signal(&j->done);
    pthread_mutex_unlock(&b->mu);
}

void batcher_get_stats(batcher *b, batcher_stats *st) {
    pthread_mutex_lock(&b->mu);
    st->queued_requests = b->queued;
    st->queue_capacity = b->capacity;
    st->batches = b->batches;
    st->chunks = b->chunks;
    st->busy_seconds = b->busy_seconds;
    st->workers = b->nworkers;
    st->max_batch = b->max_batch;
    pthread_mutex_unlock(&b->mu);
}

int batcher_ready(batcher *b) {
    pthread_mutex_lock(&b->mu);
    int ready = !b->stopping && !b->cancelled && b->queued < b->capacity;
    pthread_mutex_unlock(&b->mu);
    return ready;
}

void batcher_destroy(batcher *b) {
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->stopping = 1;
    pthread_cond_broadcast(&b->work);
    pthread_mutex_unlock(&b->mu);
    for (int i = 0; i < b->started; i++) pthread_join(b->workers[i].thread, NULL);
    if (b->workers)
        for (int i = 0; i < b->nworkers; i++) worker_free_buffers(&b->workers[i]);
    free(b->workers);
    pthread_cond_destroy(&b->work);
    pthread_mutex_destroy(&b->mu);
    free(b);
}
