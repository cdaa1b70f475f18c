/* engine.h - one upload in, one genre answer out: the whole data path.
 *
 *   bytes -> features_compute (decode, trim, mel) -> batcher_submit -> JSON
 *
 * An engine owns the loaded model, the mel plans built from the model's own
 * feature parameters, and the batcher. It is shared by every HTTP connection
 * thread and by the offline `genred classify` command, so both give the same
 * answer for the same bytes.
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
} classify_opts;

/* Loads cfg->model, builds mel plans and starts the batcher. cfg is copied.
 * met (borrowed, may be NULL) receives per-stage timings. Caller owns the
 * engine; free with engine_destroy(). */
engine *engine_create(const config *cfg, metrics *met, gr_err *err);
void engine_destroy(engine *e);

const model *engine_model(const engine *e);
/* 1 when a classify would be admitted now (model loaded, queue not full). */
int engine_ready(engine *e);
batcher *engine_batcher(engine *e);

/* Classifies data[0..len) (borrowed). Returns the API's answer as a new JSON
 * object owned by the caller, or NULL with err set. Thread-safe. */
json_t *engine_classify(engine *e, const void *data, size_t len,
                        const classify_opts *o, gr_err *err);

#endif
