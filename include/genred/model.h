/* model.h - the network: load a .gmodel file, run batches of chunks through it.
 *
 * A model file is self-describing (docs/model-format.md): genre labels,
 * feature parameters, layer list, float32 weights, training metadata, with a
 * magic, a format version and a CRC-32. model_load() validates all of it
 * (shapes are propagated through the layer list and must end in one value
 * per genre) and refuses a bad file with a message naming the problem.
 * Batch-norm layers that follow a conv2d or dense layer are folded into its
 * weights at load time; dropout is dropped.
 *
 * The layers form a graph in file order: a layer reads the previous layer's
 * output or a named earlier one, and add/concat join several. Besides the
 * genre probabilities, a model may export an embedding (the song's "sounds
 * like" vector), curated tag probabilities and the classes of a music
 * verdict; model_forward() writes them all in one row per item.
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

/* Floats per item that model_forward() writes: the model_genre_count()
 * genre probabilities first, then the exported values, which the accessors
 * below locate in the row. */
size_t model_output_floats(const model *m);

/* The embedding's width, with *offset its place in the row; 0 when the
 * model exports none. */
size_t model_embedding(const model *m, size_t *offset);

typedef struct model_tag {
    const char *label;   /* e.g. "Electric guitar" */
    const char *group;   /* e.g. "instrument", "vocal", "mood" */
    size_t offset;       /* of its probability in the row */
} model_tag;

/* The curated tags (*tags points into m, which owns them); 0 when none. */
int model_tags(const model *m, const model_tag **tags);
/* The probability below which a song's tag means nothing, for this model's
 * calibration (the file's tags.min_probability; 0 when not given). */
double model_tags_floor(const model *m);

/* A chunk is music when the largest probability among `music` is at least
 * the largest among `other` (e.g. Speech, Silence). Offsets in the row. */
typedef struct model_music {
    const size_t *music, *other;
    int n_music, n_other;
} model_music;

/* NULL when the model gives no music verdict; else a view into m. */
const model_music *model_music_classes(const model *m);

/* Adds the layer output named `name` in the file to what model_forward()
 * writes, after what is there already (once, however often it is asked
 * for); *offset and *width say where it lies in the row. For tools that
 * read a network's inner values (`genred features --values`: what training
 * a head on the backbone reads). Call before any workspace is created for
 * m. Fails (GR_EFILE... see err) when no layer has that name. */
int model_export(model *m, const char *name, size_t *offset, size_t *width, gr_err *err);
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
 * floats, out receives batch rows of model_output_floats(): the genre
 * probabilities (the last layer's output, softmax or sigmoid) and the
 * exported values. Never allocates. Returns 0, or -1 (GR_EINTERNAL) if batch
 * is out of range or ws was made for another model. */
int model_forward(const model *m, model_workspace *ws, const float *in,
                  int batch, float *out, gr_err *err);

/* Profiling, for bench/: the ops model_forward() runs (layers after
 * folding), a label for each ("depthwise 5x5/2 384ch 10x38 -> 5x19"), and a
 * way to have every model_forward() on ws add each op's thread CPU seconds
 * to seconds[op] (model_op_count() entries, the caller's; NULL stops). */
int model_op_count(const model *m);
void model_op_label(const model *m, int op, char *buf, size_t size);
void model_workspace_profile(model_workspace *ws, double *seconds);

#endif
