/* model.h - the CNN: load a .gmodel file, run batches of chunks through it.
 *
 * A model file is self-describing (docs/model-format.md): genre labels,
 * feature parameters, layer list, float32 weights, training metadata, with a
 * magic, a format version and a CRC-32. model_load() validates all of it
 * (shapes are propagated through the layer list and must end in one value
 * per genre) and refuses a bad file with a message naming the problem.
 * Batch-norm layers that follow a conv2d or dense layer are folded into its
 * weights at load time; dropout is dropped.
 *
 * A loaded model is immutable and may be shared by any number of threads.
 * Everything that changes during inference lives in a model_workspace, one per
 * thread, sized once for a maximum batch so the hot path never allocates.
 *
 * What it does not do: feature extraction (mel.h), scheduling (batcher.h). */
#ifndef GENRED_MODEL_H
#define GENRED_MODEL_H

#include <jansson.h>
#include <stddef.h>

#include "genred/err.h"
#include "genred/features.h"

typedef struct model model;
typedef struct model_workspace model_workspace;

/* Reads and validates path. Caller owns the model; free with model_free(). */
model *model_load(const char *path, gr_err *err);
/* Same, from a buffer (borrowed; the model copies what it keeps). */
model *model_load_buffer(const void *data, size_t len, gr_err *err);
void model_free(model *m);

/* Parses a "features" object (docs/model-format.md), of either kind, into
 * *out, validating every field. Used by the loader and by
 * `genred features --params`. */
int model_parse_features(const json_t *features, feature_params *out, gr_err *err);

const char *model_name(const model *m);
const char *model_version(const model *m);
int model_genre_count(const model *m);
const char *model_genre(const model *m, int i);
/* Feature parameters the model was trained with (a view into m). */
const feature_params *model_features(const model *m);
/* Floats per input item (C*H*W, e.g. 1*128*128 for log-mel, 1*1*500 for a
 * waveform envelope). */
size_t model_input_floats(const model *m);
/* Multiply-accumulates per input item, and the parameter count. */
double model_macs(const model *m);
size_t model_param_count(const model *m);

/* A JSON description for GET /v1/model: name, version, genres, features,
 * layers with their output shapes, parameter count, MFLOPs per chunk, and
 * the file's training metadata. New reference, owned by the caller. */
json_t *model_describe(const model *m);

/* Scratch for batches of up to max_batch items. Caller owns it; it must not
 * outlive m. One workspace per thread. */
model_workspace *model_workspace_create(const model *m, int max_batch,
                                        gr_err *err);
void model_workspace_free(model_workspace *ws);

/* Runs batch (<= ws's max_batch) items: in holds batch * model_input_floats()
 * floats, out receives batch * model_genre_count() probabilities (the model's
 * final activation, softmax or sigmoid). Never allocates. Returns 0, or -1
 * (GR_EINTERNAL) if batch is out of range or ws was made for another model. */
int model_forward(const model *m, model_workspace *ws, const float *in,
                  int batch, float *out, gr_err *err);

#endif
