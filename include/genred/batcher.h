/* batcher.h - the worker pool that runs chunks through the model in batches.
 *
 * Requests submit all their chunks at once and block until every chunk has
 * probabilities. Workers take up to max_batch chunks from the head of the
 * queue, across request boundaries, so concurrent requests share batches.
 * Each worker owns a model_workspace: the hot path never allocates.
 *
 * The queue is bounded in requests: a submit that finds it full fails at once
 * with GR_EBUSY (the HTTP layer turns it into 503 + Retry-After) instead of
 * queueing unbounded work.
 *
 * What it does not do: features, JSON, HTTP. */
#ifndef GENRED_BATCHER_H
#define GENRED_BATCHER_H

#include <stddef.h>

#include "genred/err.h"
#include "genred/metrics.h"
#include "genred/model.h"

typedef struct batcher batcher;

typedef struct batcher_stats {
    size_t queued_requests;   /* waiting or partly taken */
    size_t queue_capacity;
    unsigned long long batches;       /* model_forward() calls so far */
    unsigned long long chunks;        /* chunks run so far */
    double busy_seconds;      /* summed over workers, time inside model_forward */
    int workers;
    int max_batch;
} batcher_stats;

/* Starts `workers` threads over m (borrowed: must outlive the batcher).
 * met (borrowed, may be NULL) receives batch sizes. Caller owns the batcher;
 * stop it with batcher_destroy(). Also sets OpenBLAS's (process-wide) thread
 * count to cores / workers, so workers and BLAS threads together never
 * oversubscribe the cores. */
batcher *batcher_create(const model *m, int workers, int max_batch,
                        size_t queue_capacity, metrics *met, gr_err *err);

/* Runs n chunks (in: n * model_input_floats() floats, borrowed until return)
 * and writes n rows of model_output_floats() to out. Blocks until done.
 * Fails with GR_EBUSY when the queue is full or the batcher is stopping.
 *
 * deadline: CLOCK_MONOTONIC time in seconds (0 = none). When it passes, or
 * batcher_cancel() is called, the chunks no worker has taken yet are
 * withdrawn, the ones being computed are waited for (at most one batch per
 * worker), and the call fails with GR_EDEADLINE, or GR_EBUSY for a cancel.
 * If every chunk was computed by then, it succeeds after all.
 * Thread-safe. */
int batcher_submit(batcher *b, const float *in, size_t n, float *out,
                   double deadline, gr_err *err);

/* Makes every waiting submit give up as above and every later one fail
 * with GR_EBUSY: for a shutdown that cannot wait for the queue any longer.
 * Thread-safe; the batcher must still be destroyed. */
void batcher_cancel(batcher *b);

void batcher_get_stats(batcher *b, batcher_stats *st);
/* 1 while a submit would be accepted (queue not full, not stopping or
 * cancelled). */
int batcher_ready(batcher *b);

/* Finishes queued work, joins the workers and frees b. */
void batcher_destroy(batcher *b);

#endif
