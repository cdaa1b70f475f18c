/* waveform.h - raw-audio model input: each chunk of the waveform reduced to
 * a short amplitude envelope.
 *
 * For models that read the waveform instead of a spectrogram, such as the
 * deep softmax autoencoder, design (d) in train/. Its research feeds the net
 * "x, the downsampled input": 500 values per 3-second chunk. How to get from
 * 48000 samples to 500 matters. Plain decimation (every 96th sample) would
 * fold everything above 83 Hz onto the few samples kept, i.e. alias the
 * music into noise. Here each chunk is cut into `values` equal blocks and
 * each block becomes the mean of |x| over it: the amplitude envelope at
 * 6 ms resolution, which keeps what a rate that low can carry at all,
 * loudness over time (beats, rhythm, dynamics). Then (v - norm_mean) /
 * norm_std, with constants the training set measured.
 *
 * Chunking is mel.h's: chunk k covers samples [k*step, k*step + chunk_samples),
 * step = chunk_samples (back to back) for the daemon.
 *
 * What it does not do: decoding, resampling, trimming (audio.h, features.h). */
#ifndef GENRED_WAVEFORM_H
#define GENRED_WAVEFORM_H

#include <stddef.h>

#include "genred/err.h"

typedef struct waveform_params {
    int sample_rate;     /* Hz, e.g. 16000 */
    int chunk_samples;   /* samples per chunk, e.g. 48000 = 3 s */
    int values;          /* envelope values per chunk, e.g. 500; divides chunk_samples */
    float norm_mean;     /* subtracted from each block's mean |x| */
    float norm_std;      /* divided by after subtracting the mean; > 0 */
} waveform_params;

/* 0 if p is usable, else -1 with err naming the problem. */
int waveform_check(const waveform_params *p, gr_err *err);

/* Whole chunks in n samples, one starting every step samples (step >= 1). */
size_t waveform_chunk_count(const waveform_params *p, size_t n_samples, size_t step);

/* Computes the first n_chunks chunks (<= waveform_chunk_count(n, step)) of
 * signal[0..n) into out, n_chunks * values floats allocated by the caller.
 * Pure function of its arguments; thread-safe. Returns 0 or -1. */
int waveform_compute(const waveform_params *p, const float *signal, size_t n,
                     size_t step, float *out, size_t n_chunks, gr_err *err);

#endif
