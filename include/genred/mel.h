/* mel.h - log-mel spectrogram chunks, the model's input.
 *
 * A `mel` holds what is expensive and shared: the FFTW plan (made once),
 * the window and a sparse mel filterbank. It is immutable after mel_create()
 * and may be used from many threads at once; each call of mel_compute()
 * brings its own scratch memory.
 *
 * Plans and wisdom. FFTW_MEASURE times candidate FFTs and keeps the fastest:
 * for n_fft = 1024 that planning costs 150-270 ms, a plan ~40% faster than
 * FFTW_ESTIMATE's (0.8 ms to make). FFTW "wisdom" keeps what was measured;
 * from it the measured plan takes 0.2 ms. So mel_create() uses the measured
 * plan when the wisdom has it and the estimated one otherwise, never
 * measuring itself; mel_wisdom_learn() measures (and mel_wisdom_save()
 * keeps) what is missing, which main() does after the daemon is ready, so
 * only one start on a machine pays and never before answering
 * (docs/performance.md has the numbers). The wisdom functions touch FFTW's
 * process-wide state: call them from one thread at start-up, never while
 * another thread runs mel_create().
 *
 * Framing. The signal is cut into chunks of chunk_frames * hop_length samples
 * (128 * 375 = 48000 = 3.0 s at 16 kHz); chunk k covers samples
 * [k*L, (k+1)*L) and a trailing partial chunk is dropped. Frames are centred
 * (frame t is centred on sample t*hop_length) over the whole signal, with
 * reflect padding at the signal's two ends only, exactly like
 * torch.stft(center=True, pad_mode="reflect"), so a chunk's edge frames see
 * the neighbouring chunk's audio.
 *
 * Pre-emphasis (preemphasis = c > 0) first filters the signal,
 * y[i] = x[i+1] - c * x[i], a 2-tap convolution that leaves one sample fewer;
 * frames are then centred on y's samples as above, and a chunk still covers
 * [k*L, (k+1)*L) of x. With c = 0 there is no filter and y = x.
 *
 * Per frame: a Hann window of win_length (periodic or symmetric; zero-padded
 * to n_fft if shorter, centred), |rfft|^power, a mel filterbank, a log, and
 * finally (x - norm_mean) / norm_std. Filterbanks: Slaney or HTK scale
 * (triangles in Hz, as torchaudio's melscale_fbanks(), with optional Slaney
 * area normalisation), or Kaldi (mel = 1127 ln(1 + f/700), triangles in the
 * mel domain over the n_fft/2 bins below Nyquist, the Nyquist bin weighted 0,
 * as torchaudio.compliance.kaldi.get_mel_banks()). Logs: 10*log10(max(x,
 * amin)) (torchaudio's AmplitudeToDB), or ln(x + log_offset). The tests
 * compare both front ends with torchaudio: the CNN's (Slaney, dB) and the
 * pretrained backbone's (pre-emphasis, symmetric window, Kaldi, ln).
 *
 * What it does not do: decoding, resampling, trimming (see audio.h). */
#ifndef GENRED_MEL_H
#define GENRED_MEL_H

#include <stddef.h>

#include "genred/err.h"

typedef enum mel_scale { MEL_SCALE_SLANEY = 0, MEL_SCALE_HTK, MEL_SCALE_KALDI } mel_scale;
typedef enum mel_window {
    MEL_WINDOW_HANN = 0,        /* periodic, torch.hann_window's default */
    MEL_WINDOW_HANN_SYMMETRIC,  /* periodic=False */
} mel_window;
typedef enum mel_log { MEL_LOG_DB = 0, MEL_LOG_LN } mel_log;

typedef struct mel_params {
    int sample_rate;    /* Hz, e.g. 16000 */
    float preemphasis;  /* c in [0, 1): y[i] = x[i+1] - c x[i]; 0 = no filter */
    int n_fft;          /* FFT size, e.g. 1024 */
    int win_length;     /* <= n_fft */
    mel_window window;
    int hop_length;     /* samples between frames, e.g. 375 */
    int n_mels;         /* mel bands, e.g. 128 */
    int chunk_frames;   /* frames per chunk, e.g. 128 */
    float fmin, fmax;   /* filterbank range in Hz; fmax <= sample_rate / 2 */
    mel_scale scale;
    int slaney_norm;    /* 1: divide each triangle by its bandwidth (norm="slaney");
                         * Slaney and HTK scales only */
    float power;        /* 1 = magnitude, 2 = power */
    mel_log log;
    float amin;         /* MEL_LOG_DB: floor before log10, e.g. 1e-10 */
    float log_offset;   /* MEL_LOG_LN: added before ln, e.g. 1e-5 */
    float norm_mean;    /* subtracted after the dB conversion */
    float norm_std;     /* divided by after subtracting the mean; > 0 */
} mel_params;

typedef struct mel mel;

/* Validates p and builds plans and filterbank. Caller owns the result and
 * frees it with mel_destroy(). Not thread-safe (FFTW planning); call once at
 * start-up. */
mel *mel_create(const mel_params *p, gr_err *err);
void mel_destroy(mel *m);
/* 1 if m's plan came from wisdom (measured), 0 if estimated. */
int mel_plan_is_measured(const mel *m);

/* What a wisdom function did. Each value but the failure belongs to one
 * function, so a result says the same wherever it is read. */
typedef enum mel_wisdom_result {
    MEL_WISDOM_FAILED = -1, /* err says why (GR_EFILE for the file's faults) */
    MEL_WISDOM_LOADED,      /* load: the file's wisdom was added */
    MEL_WISDOM_NO_FILE,     /* load: no such file, or nothing in it (/dev/null) */
    MEL_WISDOM_LEARNED,     /* learn: the plan was measured; the wisdom grew */
    MEL_WISDOM_KNOWN,       /* learn: the wisdom had the plan already */
    MEL_WISDOM_SAVED,       /* save: the wisdom was written */
    MEL_WISDOM_NOT_KEPT,    /* save: path is not a regular file (/dev/null):
                             * nothing written, as asked */
} mel_wisdom_result;

/* Adds the wisdom in the file at path: LOADED, NO_FILE, or FAILED if it
 * cannot be read or is not wisdom. */
mel_wisdom_result mel_wisdom_load(const char *path, gr_err *err);
/* 1 if the wisdom has the measured plan p needs (cheap), else 0. */
int mel_wisdom_has(const mel_params *p);
/* Measures the plan p needs unless the wisdom has it already (~0.2 s):
 * LEARNED, KNOWN, or FAILED. */
mel_wisdom_result mel_wisdom_learn(const mel_params *p, gr_err *err);
/* Writes all wisdom to path atomically (a temporary file renamed over it),
 * creating its directory: SAVED, NOT_KEPT where path exists and is not a
 * regular file (/dev/null: keep nothing), or FAILED. */
mel_wisdom_result mel_wisdom_save(const char *path, gr_err *err);

const mel_params *mel_get_params(const mel *m);

/* Samples in one chunk: chunk_frames * hop_length. */
size_t mel_chunk_samples(const mel *m);
/* Samples of the signal a frame reads after its centre (n_fft - n_fft/2,
 * one more with pre-emphasis); before it, it reads n_fft/2. */
size_t mel_frame_reach(const mel *m);
/* Floats in one chunk: n_mels * chunk_frames. */
size_t mel_chunk_floats(const mel *m);
/* Whole chunks in a signal of n samples. */
size_t mel_chunk_count(const mel *m, size_t n_samples);
/* Whole chunks in a signal of n samples when a chunk starts every step
 * samples (step >= 1): 1 + (n - chunk) / step, or 0 if n < one chunk. */
size_t mel_chunk_count_step(const mel *m, size_t n_samples, size_t step);

/* Computes the first n_chunks chunks of signal[0..n) (n_chunks <=
 * mel_chunk_count(n)) into out, which the caller allocates with
 * n_chunks * mel_chunk_floats() floats. Layout: [chunk][mel band][frame],
 * row-major, i.e. each chunk is a 1 x n_mels x chunk_frames image.
 * Thread-safe. Returns 0, or -1 on allocation failure. */
int mel_compute(const mel *m, const float *signal, size_t n, float *out,
                size_t n_chunks, gr_err *err);

/* Same, with chunk k covering [k*step, k*step + mel_chunk_samples()) and its
 * frames centred on k*step + t*hop_length; n_chunks <=
 * mel_chunk_count_step(n, step). step = mel_chunk_samples() is mel_compute();
 * a shorter step gives overlapping chunks, which only training asks for
 * (`genred features --chunk-hop`): the daemon analyses back-to-back chunks. */
int mel_compute_step(const mel *m, const float *signal, size_t n, size_t step,
                     float *out, size_t n_chunks, gr_err *err);

/* Chunks [first_chunk, first_chunk + n_chunks) of a signal of n samples
 * (chunk k at k*step, as mel_compute_step()) when only its samples
 * [buf_first, buf_first + buf_len) are at hand, in buf: for computing a
 * long signal piece by piece, in parallel, without holding all of it. The
 * part must hold every sample those chunks' frames read, i.e. from
 * first_chunk*step - n_fft/2 to the last frame's centre + mel_frame_reach()
 * (clipped to the signal, and reflected at its two ends); GR_EINTERNAL
 * otherwise.
 * The result is bit-identical to mel_compute_step() on the whole signal. */
int mel_compute_part(const mel *m, const float *buf, size_t buf_first, size_t buf_len,
                     size_t n, size_t step, size_t first_chunk, size_t n_chunks,
                     float *out, gr_err *err);

#endif
