/* mel.h - log-mel spectrogram chunks, the model's input.
 *
 * A `mel` holds what is expensive and shared: the FFTW plan (made once,
 * FFTW_MEASURE), the window and a sparse mel filterbank. It is immutable after
 * mel_create() and may be used from many threads at once; each call of
 * mel_compute() brings its own scratch memory.
 *
 * Framing. The signal is cut into chunks of chunk_frames * hop_length samples
 * (128 * 375 = 48000 = 3.0 s at 16 kHz); chunk k covers samples
 * [k*L, (k+1)*L) and a trailing partial chunk is dropped. Frames are centred
 * (frame t is centred on sample t*hop_length) over the whole signal, with
 * reflect padding at the signal's two ends only, exactly like
 * torch.stft(center=True, pad_mode="reflect"), so a chunk's edge frames see
 * the neighbouring chunk's audio.
 *
 * Per frame: periodic Hann window of win_length (zero-padded to n_fft if
 * shorter, centred), |rfft|^power, mel filterbank (Slaney or HTK scale,
 * optional Slaney area normalisation), then 10*log10(max(x, amin)) and finally
 * (x - norm_mean) / norm_std. These are the parameters torchaudio's
 * MelSpectrogram + AmplitudeToDB use, which is what the tests compare with.
 *
 * What it does not do: decoding, resampling, trimming (see audio.h). */
#ifndef GENRED_MEL_H
#define GENRED_MEL_H

#include <stddef.h>

#include "genred/err.h"

typedef enum mel_scale { MEL_SCALE_SLANEY = 0, MEL_SCALE_HTK = 1 } mel_scale;

typedef struct mel_params {
    int sample_rate;    /* Hz, e.g. 16000 */
    int n_fft;          /* FFT size, e.g. 1024 */
    int win_length;     /* <= n_fft */
    int hop_length;     /* samples between frames, e.g. 375 */
    int n_mels;         /* mel bands, e.g. 128 */
    int chunk_frames;   /* frames per chunk, e.g. 128 */
    float fmin, fmax;   /* filterbank range in Hz; fmax <= sample_rate / 2 */
    mel_scale scale;
    int slaney_norm;    /* 1: divide each triangle by its bandwidth (norm="slaney") */
    float power;        /* 1 = magnitude, 2 = power */
    float amin;         /* floor before log10, e.g. 1e-10 */
    float norm_mean;    /* subtracted after the dB conversion */
    float norm_std;     /* divided by after subtracting the mean; > 0 */
} mel_params;

typedef struct mel mel;

/* Validates p and builds plans and filterbank. Caller owns the result and
 * frees it with mel_destroy(). Not thread-safe (FFTW planning); call once at
 * start-up. */
mel *mel_create(const mel_params *p, gr_err *err);
void mel_destroy(mel *m);

const mel_params *mel_get_params(const mel *m);

/* Samples in one chunk: chunk_frames * hop_length. */
size_t mel_chunk_samples(const mel *m);
/* Floats in one chunk: n_mels * chunk_frames. */
size_t mel_chunk_floats(const mel *m);
/* Whole chunks in a signal of n samples. */
size_t mel_chunk_count(const mel *m, size_t n_samples);

/* Computes the first n_chunks chunks of signal[0..n) (n_chunks <=
 * mel_chunk_count(n)) into out, which the caller allocates with
 * n_chunks * mel_chunk_floats() floats. Layout: [chunk][mel band][frame],
 * row-major, i.e. each chunk is a 1 x n_mels x chunk_frames image.
 * Thread-safe. Returns 0, or -1 on allocation failure. */
int mel_compute(const mel *m, const float *signal, size_t n, float *out,
                size_t n_chunks, gr_err *err);

#endif
