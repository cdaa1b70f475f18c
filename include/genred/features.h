/* features.h - upload bytes to model input: decode, trim rule, log-mel chunks.
 *
 * The one place that decides which part of a song is analysed, shared by the
 * daemon, `genred classify` and `genred features` (and so by training).
 *
 * Trim rule: trim_start_s and trim_end_s are cut only when at least
 * trim_min_keep_s of audio remains afterwards; shorter input (a 30 s excerpt,
 * say) is analysed on its full length. Input with less than one chunk (3 s)
 * to analyse is GR_EUNPROCESSABLE.
 *
 * What it does not do: run the model. */
#ifndef GENRED_FEATURES_H
#define GENRED_FEATURES_H

#include <stddef.h>

#include "genred/config.h"
#include "genred/err.h"
#include "genred/mel.h"

typedef struct features_opts {
    int trim;                 /* 1: apply the trim rule; 0: analyse everything */
    double trim_start_s, trim_end_s, trim_min_keep_s;
    double max_duration_s;    /* decoded audio longer than this: 422; 0 = none */
} features_opts;

typedef struct features {
    float *chunks;       /* n_chunks * mel_chunk_floats(); owned, features_free() */
    size_t n_chunks;
    double duration_s;   /* of the whole decoded audio */
    double start_s;      /* where the first chunk begins */
    int trimmed;         /* 1 if the trim rule cut anything */
    double decode_ms, mel_ms;
} features;

/* The options a config implies; trim as given. */
features_opts features_opts_from_config(const config *c, int trim);

/* Decodes data[0..len) (borrowed) at m's sample rate and computes the chunks
 * of the analysed window. Thread-safe. */
int features_compute(const mel *m, const features_opts *o, const void *data, size_t len,
                     features *out, gr_err *err);

void features_free(features *f);

#endif
