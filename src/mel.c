/* mel.c - log-mel spectrogram chunks with FFTW3 (single precision).
 *
 * mel_create() does everything expensive once: validates the parameters,
 * plans the real-to-complex FFT (FFTW_MEASURE), builds the zero-padded
 * periodic Hann window and a sparse mel filterbank that reproduces
 * torchaudio.functional.melscale_fbanks(). mel_compute() only frames, windows,
 * transforms and applies the filterbank; it runs the shared plan on its own
 * buffers with fftwf_execute_dft_r2c(), which FFTW guarantees is thread-safe.
 *
 * What it does not do: decoding, resampling, trimming, batching. */
#include "genred/mel.h"

#include <fftw3.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct mel {
    mel_params p;
    int n_bins;          /* n_fft / 2 + 1 */
    fftwf_plan plan;     /* owned; executed only with per-call arrays */
    float *window;       /* owned, n_fft: Hann of win_length centred, zeros around */
    /* Sparse filterbank: band m weighs bins band_first[m] .. + band_len[m]
     * with weights[band_off[m] ...]. Each triangle spans a few bins, so this
     * is ~2 multiply-adds per bin instead of n_mels per bin. */
    int *band_first, *band_len; /* owned, n_mels */
    size_t *band_off;           /* owned, n_mels */
    float *weights;             /* owned */
};

/* torchaudio's _hz_to_mel / _mel_to_hz. */
static double hz_to_mel(double hz, mel_scale scale) {
    if (scale == MEL_SCALE_HTK) return 2595.0 * log10(1.0 + hz / 700.0);
    const double f_sp = 200.0 / 3, min_log_hz = 1000.0;
    const double min_log_mel = min_log_hz / f_sp, logstep = log(6.4) / 27.0;
    if (hz >= min_log_hz) return min_log_mel + log(hz / min_log_hz) / logstep;
    return hz / f_sp;
}

static double mel_to_hz(double mel, mel_scale scale) {
    if (scale == MEL_SCALE_HTK) return 700.0 * (pow(10.0, mel / 2595.0) - 1.0);
    const double f_sp = 200.0 / 3, min_log_hz = 1000.0;
    const double min_log_mel = min_log_hz / f_sp, logstep = log(6.4) / 27.0;
    if (mel >= min_log_mel) return min_log_hz * exp(logstep * (mel - min_log_mel));
    return f_sp * mel;
}

static int validate(const mel_params *p, gr_err *err) {
#define REQUIRE(cond, what) \
    if (!(cond)) return gr_fail(err, GR_EINTERNAL, "mel: invalid parameters: %s", what)
    REQUIRE(p->sample_rate > 0, "sample_rate must be > 0");
    REQUIRE(p->n_fft > 0, "n_fft must be > 0");
    REQUIRE(p->win_length > 0 && p->win_length <= p->n_fft,
            "win_length must be in 1..n_fft");
    REQUIRE(p->hop_length > 0, "hop_length must be > 0");
    REQUIRE(p->n_mels > 0, "n_mels must be > 0");
    REQUIRE(p->chunk_frames > 0, "chunk_frames must be > 0");
    REQUIRE(p->scale == MEL_SCALE_SLANEY || p->scale == MEL_SCALE_HTK,
            "mel_scale must be slaney or htk");
    REQUIRE(p->slaney_norm == 0 || p->slaney_norm == 1, "slaney_norm must be 0 or 1");
    REQUIRE(isfinite(p->fmin) && p->fmin >= 0, "fmin must be >= 0");
    REQUIRE(isfinite(p->fmax) && p->fmax <= p->sample_rate / 2.0,
            "fmax must be <= sample_rate / 2");
    REQUIRE(p->fmin < p->fmax, "fmin must be < fmax");
    REQUIRE(isfinite(p->power) && p->power > 0, "power must be > 0");
    REQUIRE(isfinite(p->amin) && p->amin > 0, "amin must be > 0");
    REQUIRE(isfinite(p->norm_mean), "norm_mean must be finite");
    REQUIRE(isfinite(p->norm_std) && p->norm_std > 0, "norm_std must be > 0");
    REQUIRE((long long)p->chunk_frames * p->hop_length <= INT_MAX,
            "chunk_frames * hop_length too large");
    REQUIRE((long long)p->chunk_frames * p->n_mels <= INT_MAX,
            "chunk_frames * n_mels too large");
    /* A chunk must be longer than the reflect padding, so that any signal
     * with at least one chunk can be reflected at both ends (as torch.stft
     * requires pad < length). */
    REQUIRE((long long)p->chunk_frames * p->hop_length > p->n_fft / 2,
            "chunk_frames * hop_length must exceed n_fft / 2");
#undef REQUIRE
    return 0;
}

/* Weight at frequency f of the triangle rising from lo to mid, falling to hi. */
static double triangle(double f, double lo, double mid, double hi) {
    return fmax(0.0, fmin((f - lo) / (mid - lo), (hi - f) / (hi - mid)));
}

/* Builds the sparse filterbank exactly as torchaudio's melscale_fbanks():
 * bin frequencies are linspace(0, sample_rate // 2, n_bins) (integer
 * division included), triangles between n_mels + 2 points evenly spaced in
 * mel, optionally scaled by 2 / (f[m+2] - f[m]). Two passes: find each
 * triangle's bins, then allocate exactly that many weights and fill them. */
static int build_filterbank(mel *m, gr_err *err) {
    const mel_params *p = &m->p;
    const int n_bins = m->n_bins, n_mels = p->n_mels;
    double *f_pts = malloc((size_t)(n_mels + 2) * sizeof *f_pts);
    m->band_first = malloc((size_t)n_mels * sizeof *m->band_first);
    m->band_len = malloc((size_t)n_mels * sizeof *m->band_len);
    m->band_off = malloc((size_t)n_mels * sizeof *m->band_off);
    if (!f_pts || !m->band_first || !m->band_len || !m->band_off) {
        free(f_pts);
        return gr_fail(err, GR_EINTERNAL, "mel: out of memory");
    }
    double m_min = hz_to_mel(p->fmin, p->scale), m_max = hz_to_mel(p->fmax, p->scale);
    for (int i = 0; i < n_mels + 2; i++)
        f_pts[i] = mel_to_hz(m_min + (m_max - m_min) * i / (n_mels + 1), p->scale);
    const double bin_hz = n_bins > 1 ? (double)(p->sample_rate / 2) / (n_bins - 1) : 0.0;

    size_t total = 0;
    for (int b = 0; b < n_mels; b++) {
        int first = -1, last = -1;
        for (int k = 0; k < n_bins; k++) {
            if (triangle(bin_hz * k, f_pts[b], f_pts[b + 1], f_pts[b + 2]) > 0) {
                if (first < 0) first = k;
                last = k;
            }
        }
        /* An empty band (n_mels too high for n_fft) stays at the amin floor,
         * as in torchaudio, which only warns about it. */
        m->band_first[b] = first < 0 ? 0 : first;
        m->band_len[b] = first < 0 ? 0 : last - first + 1;
        m->band_off[b] = total;
        total += (size_t)m->band_len[b];
    }
    m->weights = malloc((total ? total : 1) * sizeof *m->weights);
    if (!m->weights) {
        free(f_pts);
        return gr_fail(err, GR_EINTERNAL, "mel: out of memory");
    }
    for (int b = 0; b < n_mels; b++) {
        double lo = f_pts[b], mid = f_pts[b + 1], hi = f_pts[b + 2];
        double scale = p->slaney_norm ? 2.0 / (hi - lo) : 1.0;
        for (int k = 0; k < m->band_len[b]; k++) {
            double f = bin_hz * (m->band_first[b] + k);
            m->weights[m->band_off[b] + (size_t)k] = (float)(triangle(f, lo, mid, hi) * scale);
        }
    }
    free(f_pts);
    return 0;
}

mel *mel_create(const mel_params *p, gr_err *err) {
    if (!p) {
        gr_fail(err, GR_EINTERNAL, "mel: no parameters");
        return NULL;
    }
    if (validate(p, err) != 0) return NULL;
    mel *m = calloc(1, sizeof *m);
    if (!m) {
        gr_fail(err, GR_EINTERNAL, "mel: out of memory");
        return NULL;
    }
    m->p = *p;
    m->n_bins = p->n_fft / 2 + 1;
    if (build_filterbank(m, err) != 0) goto fail;

    /* The window lives in an n_fft array so that framing is one multiply per
     * sample; torch.stft centres a shorter window with the left pad
     * (n_fft - win_length) / 2. */
    m->window = calloc((size_t)p->n_fft, sizeof *m->window);
    if (!m->window) {
        gr_fail(err, GR_EINTERNAL, "mel: out of memory");
        goto fail;
    }
    int left = (p->n_fft - p->win_length) / 2;
    const double two_pi = 6.283185307179586476925287;
    for (int i = 0; i < p->win_length; i++)
        m->window[left + i] = (float)(0.5 - 0.5 * cos(two_pi * i / p->win_length));

    /* FFTW_MEASURE scribbles over the arrays while planning; they are only
     * needed to fix the plan's size and alignment (fftwf_malloc's, which is
     * what mel_compute's own buffers will have too). */
    float *in = fftwf_malloc((size_t)p->n_fft * sizeof *in);
    fftwf_complex *out = fftwf_malloc((size_t)m->n_bins * sizeof *out);
    if (in && out)
        m->plan = fftwf_plan_dft_r2c_1d(p->n_fft, in, out, FFTW_MEASURE);
    fftwf_free(in);
    fftwf_free(out);
    if (!m->plan) {
        gr_fail(err, GR_EINTERNAL, "mel: cannot plan a %d-point FFT", p->n_fft);
        goto fail;
    }
    return m;
fail:
    mel_destroy(m);
    return NULL;
}

void mel_destroy(mel *m) {
    if (!m) return;
    if (m->plan) fftwf_destroy_plan(m->plan);
    free(m->window);
    free(m->band_first);
    free(m->band_len);
    free(m->band_off);
    free(m->weights);
    free(m);
}

const mel_params *mel_get_params(const mel *m) { return &m->p; }

size_t mel_chunk_samples(const mel *m) {
    return (size_t)m->p.chunk_frames * (size_t)m->p.hop_length;
}

size_t mel_chunk_floats(const mel *m) {
    return (size_t)m->p.n_mels * (size_t)m->p.chunk_frames;
}

size_t mel_chunk_count(const mel *m, size_t n_samples) {
    return n_samples / mel_chunk_samples(m);
}

int mel_compute(const mel *m, const float *signal, size_t n, float *out,
                size_t n_chunks, gr_err *err) {
    const mel_params *p = &m->p;
    if (n_chunks == 0) return 0;
    if (n_chunks > mel_chunk_count(m, n))
        return gr_fail(err, GR_EINTERNAL, "mel: %zu chunks asked of a %zu-sample signal",
                       n_chunks, n);
    if (!signal || !out) return gr_fail(err, GR_EINTERNAL, "mel: no signal or output");

    /* n >= one chunk > n_fft / 2 (checked in mel_create), so every index a
     * frame touches is in [-(n-1), 2(n-1)] and one reflection lands inside. */
    const size_t n_fft = (size_t)p->n_fft, pad = n_fft / 2;
    const size_t hop = (size_t)p->hop_length, frames = (size_t)p->chunk_frames;
    const size_t n_frames = n_chunks * frames;
    float *in = fftwf_malloc(n_fft * sizeof *in);
    fftwf_complex *spec = fftwf_malloc((size_t)m->n_bins * sizeof *spec);
    float *pow_spec = malloc((size_t)m->n_bins * sizeof *pow_spec);
    if (!in || !spec || !pow_spec) {
        fftwf_free(in);
        fftwf_free(spec);
        free(pow_spec);
        return gr_fail(err, GR_EINTERNAL, "mel: out of memory");
    }

    /* Locals, not p->...: stores through out could alias them otherwise,
     * which would keep the compiler from hoisting them out of the loops. */
    const float *w = m->window;
    const int n_bins = m->n_bins, n_mels = p->n_mels;
    const float power = p->power, half_power = power / 2, amin = p->amin;
    const float mean = p->norm_mean, std = p->norm_std;
    const size_t chunk_floats = mel_chunk_floats(m);
    for (size_t t = 0; t < n_frames; t++) {
        size_t centre = t * hop;
        if (centre >= pad && centre - pad + n_fft <= n) {
            const float *x = signal + (centre - pad);
            for (size_t j = 0; j < n_fft; j++) in[j] = w[j] * x[j];
        } else {
            for (size_t j = 0; j < n_fft; j++) {
                /* Signed index into the signal; reflect (no edge repeat). */
                long long i = (long long)(centre + j) - (long long)pad;
                if (i < 0) i = -i;
                else if (i >= (long long)n) i = 2 * ((long long)n - 1) - i;
                in[j] = w[j] * signal[i];
            }
        }
        fftwf_execute_dft_r2c(m->plan, in, spec);

        for (int k = 0; k < n_bins; k++) {
            float p2 = spec[k][0] * spec[k][0] + spec[k][1] * spec[k][1];
            pow_spec[k] = power == 2.0f ? p2
                        : power == 1.0f ? sqrtf(p2)
                                        : powf(p2, half_power);
        }

        float *dst = out + (t / frames) * chunk_floats + t % frames;
        for (int b = 0; b < n_mels; b++) {
            const float *bw = m->weights + m->band_off[b];
            const float *bp = pow_spec + m->band_first[b];
            float acc = 0;
            for (int k = 0; k < m->band_len[b]; k++) acc += bw[k] * bp[k];
            float db = 10.0f * log10f(acc > amin ? acc : amin);
            dst[(size_t)b * frames] = (db - mean) / std;
        }
    }
    fftwf_free(in);
    fftwf_free(spec);
    free(pow_spec);
    return 0;
}
