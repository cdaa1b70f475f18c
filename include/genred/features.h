/* features.h - upload bytes to model input: decode, trim rule, chunks.
 *
 * The one place that decides which part of a song is analysed, shared by the
 * daemon, `genred classify` and `genred features` (and so by training).
 *
 * A model's file says what its input is (docs/model-format.md "features"):
 * log-mel chunks (mel.h) for the CNNs, or raw-waveform envelopes
 * (waveform.h) for the autoencoder. A featurizer holds the one that applies,
 * built once from those parameters.
 *
 * Trim rule: trim_start_s and trim_end_s are cut only when at least
 * trim_min_keep_s of audio remains afterwards; shorter input (a 30 s excerpt,
 * say) is analysed on its full length. Input with less than one chunk (3 s)
 * to analyse is GR_EUNPROCESSABLE.
 *
 * max_chunks: the window holds n back-to-back chunks; with max_chunks = m
 * below n, only m of them are analysed, spread evenly over the window
 * (features_chunk_pick()), and only the audio those m chunks read is
 * decoded. Each is the very chunk the full analysis computes at its place,
 * bit for bit. For a catalogue: a song's genre rarely needs all of it.
 *
 * What it does not do: run the model. */
#ifndef GENRED_FEATURES_H
#define GENRED_FEATURES_H

#include <stddef.h>

#include "genred/err.h"
#include "genred/mel.h"
#include "genred/waveform.h"

typedef enum feature_kind { FEATURE_LOGMEL = 0, FEATURE_WAVEFORM = 1 } feature_kind;

/* A model's input, as its file's "features" object describes it. */
typedef struct feature_params {
    feature_kind kind;
    mel_params mel;             /* kind == FEATURE_LOGMEL */
    waveform_params waveform;   /* kind == FEATURE_WAVEFORM */
} feature_params;

/* Immutable after featurizer_create(); shared by any number of threads. */
typedef struct featurizer featurizer;

/* Validates p and builds what its kind needs once (FFTW plans for log-mel).
 * Not thread-safe (FFTW planning): call at start-up. Caller owns the result;
 * free with featurizer_destroy(). */
featurizer *featurizer_create(const feature_params *p, gr_err *err);
void featurizer_destroy(featurizer *fz);
const feature_params *featurizer_params(const featurizer *fz);
int featurizer_sample_rate(const featurizer *fz);
/* Samples per chunk (3 s) and floats per chunk (the model's input size). */
size_t featurizer_chunk_samples(const featurizer *fz);
size_t featurizer_chunk_floats(const featurizer *fz);
/* The log-mel plans, or NULL when the input is not log-mel. */
const mel *featurizer_mel(const featurizer *fz);

typedef struct features_opts {
    int trim;                 /* 1: apply the trim rule; 0: analyse everything */
    double trim_start_s, trim_end_s, trim_min_keep_s;
    double max_duration_s;    /* longer decoded audio: GR_EUNPROCESSABLE; 0 = none */
    double deadline;          /* monotonic_now() seconds by which decoding must be
                               * done, else GR_EDEADLINE (audio.h); 0 = none */
    double chunk_hop_s;       /* seconds between chunk starts (rounded to whole
                               * samples); 0 = one chunk, back to back, which is
                               * what the daemon analyses. Shorter hops give
                               * overlapping chunks, for training only. */
    int decode_threads;       /* threads decoding spans of the analysed window
                               * (audio_source_decode); <= 1: one */
    size_t max_chunks;        /* 0: every chunk of the window; else at most
                               * this many, spread evenly over it */
} features_opts;

/* The place in the window of the k-th of m chunks kept of n (m <= n): the
 * middle of the k-th of m equal parts, floor((2k + 1) n / 2m). Ascending,
 * no repeats; m = n keeps every chunk in order. */
size_t features_chunk_pick(size_t k, size_t m, size_t n);

/* One upload analysed: the features of its analysed window (the model's
 * input, one chunk per 3 s), where that window lies, and what it cost. */
typedef struct analysis {
    float *chunks;       /* n_chunks * featurizer_chunk_floats(); owned,
                          * analysis_free() */
    size_t n_chunks;     /* analysed: window_chunks, or max_chunks of them */
    size_t window_chunks; /* chunks the analysed window holds; chunk k of
                          * chunks[] is the window's chunk
                          * features_chunk_pick(k, n_chunks, window_chunks) */
    double duration_s;   /* of the whole decoded audio */
    double start_s;      /* where the first chunk begins */
    int trimmed;         /* 1 if the trim rule cut anything */
    double decode_ms;    /* opening, indexing and decoding */
    double features_ms;  /* computing the chunks from the samples (log-mel or
                          * envelope): the answer's timing_ms.features */
    int spans;           /* 0: the whole stream was decoded in one sequential
                          * pass; n: only the analysed window, in n spans
                          * decoded independently (audio.h) */
} analysis;

/* The options a config implies; trim as given. (Declared on the struct, so
 * that this header, and model.h with it, does not pull in the daemon's
 * settings.) */
struct config;
features_opts features_opts_from_config(const struct config *c, int trim);

/* Decodes data[0..len) (borrowed) at fz's sample rate and computes the
 * chunks of the analysed window. Thread-safe. */
int features_compute(const featurizer *fz, const features_opts *o, const void *data,
                     size_t len, analysis *out, gr_err *err);

void analysis_free(analysis *a);

#endif
