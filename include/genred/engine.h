/* engine.h - one upload in, one genre answer out: the whole data path.
 *
 *   bytes -> features_compute (decode, trim, mel) -> batcher_submit -> JSON
 *
 * An engine owns the loaded model, the mel plans built from the model's own
 * feature parameters, and the batcher. It is shared by every HTTP connection
 * thread and by the offline `genred classify` command, so both give the same
 * answer for the same bytes. engine_reload() swaps in a freshly loaded
 * model (SIGHUP) without disturbing the requests in flight.
 *
 * Which part of a song is analysed (the trim rule) is features.h's business.
 *
 * What it does not do: HTTP, upload parsing, logging. */
#ifndef GENRED_ENGINE_H
#define GENRED_ENGINE_H

#include <jansson.h>
#include <stddef.h>

#include "genred/batcher.h"
#include "genred/config.h"
#include "genred/err.h"
#include "genred/metrics.h"
#include "genred/model.h"

typedef struct engine engine;

typedef struct classify_opts {
    int trim;      /* 1: apply the trim rule; 0: analyse everything */
    int segments;  /* 1: add the per-chunk timeline to the answer */
    int mel;       /* 1: add "mel", a small picture of the analysed log-mel
                    * (at most 64 bands x 600 columns, uint8, base64), for
                    * drawing; see openapi.yaml MelPicture. Absent when the
                    * model's input is not log-mel (a waveform model). */
    int embedding; /* 1: add "embedding", the mean of the chunks' embeddings,
                    * when the model exports one */
    int max_chunks; /* 0: analyse every chunk of the window; else at most
                     * this many, spread evenly (features.h) */
} classify_opts;

/* Loads cfg->model, builds mel plans and starts the batcher. cfg is copied.
 * met (borrowed, may be NULL) receives per-stage timings. Caller owns the
 * engine; free with engine_destroy() once no call into it is running. */
engine *engine_create(const config *cfg, metrics *met, gr_err *err);
void engine_destroy(engine *e);

/* Loads cfg->model again (the file at the same path) and swaps it in
 * atomically: classifications that started before finish on the old model,
 * later ones get the new one. A file that does not load changes nothing and
 * fails with its error. Call from one thread at a time (the SIGHUP handler);
 * safe while classifications run. */
int engine_reload(engine *e, gr_err *err);

/* For a shutdown that cannot wait any longer: every classification running
 * gives up at its next check (decode is not interrupted; the wait for
 * inference is) with GR_EBUSY, and later ones fail at once. Thread-safe. */
void engine_cancel(engine *e);

/* 1 until engine_cancel(): a classify would be taken on now. Load is the
 * HTTP side's to judge (http.c admits at most max_active_requests
 * classifications, so the batcher's queue, sized to that, never fills). */
int engine_ready(engine *e);

/* The current model's description (model_describe()), a new reference. */
json_t *engine_describe_model(engine *e);

/* GET /metrics: metrics_render() over the current model, the batcher
 * counters summed over every model served so far, and load (borrowed, may
 * be NULL). Caller frees. */
char *engine_render_metrics(engine *e, const metrics_load *load);

/* Classifies data[0..len) (borrowed). Returns the API's answer as a new JSON
 * object owned by the caller, or NULL with err set. A model that gives a
 * music verdict (model_music_classes()) also gets "music" in the answer;
 * its genre shares then count only the chunks that are music, and "top" is
 * null for audio that is not music. A model with tags gets "tags". Fails with GR_EDEADLINE
 * when cfg->request_timeout_s (counted from the call) passes first, and
 * GR_EBUSY when the engine is cancelled, or when more than max_active_requests
 * classifications are in it at once (the batcher's queue is full: the
 * caller admits no more than that). Thread-safe. */
json_t *engine_classify(engine *e, const void *data, size_t len,
                        const classify_opts *o, gr_err *err);

#endif
