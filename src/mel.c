/* mel.c - log-mel spectrogram chunks with FFTW3 (single precision).
 *
 * mel_create() does everything expensive once: validates the parameters,
 * plans the real-to-complex FFT (measured if FFTW's wisdom has it, else
 * estimated; the wisdom functions load, learn and save it), builds the
 * zero-padded Hann window and a sparse mel filterbank that reproduces
 * torchaudio's (melscale_fbanks(), or the Kaldi get_mel_banks()).
 * mel_compute() only filters, frames, windows, transforms and applies the
 * filterbank; it runs the shared plan on its own buffers with
 * fftwf_execute_dft_r2c(), which FFTW guarantees is thread-safe.
 *
 * What it does not do: decoding, resampling, trimming, batching. */
#include "genred/mel.h"

#include <errno.h>
#include <fftw3.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct mel {
    mel_params p;
    int n_bins;          /* n_fft / 2 + 1 */
    fftwf_plan plan;     /* owned; executed only with per-call arrays */
    int measured;        /* plan came from wisdom (FFTW_MEASURE) */
    float *window;       /* owned, n_fft: Hann of win_length centred, zeros around */
    /* Sparse filterbank: band m weighs bins band_first[m] .. + band_len[m]
     * with weights[band_off[m] ...]. Each triangle spans a few bins, so this
     * is ~2 multiply-adds per bin instead of n_mels per bin. */
    int *band_first, *band_len; /* owned, n_mels */
    size_t *band_off;           /* owned, n_mels */
    float *weights;             /* owned */
};

/* torchaudio's _hz_to_mel / _mel_to_hz, and Kaldi's mel_scale(). */
static double hz_to_mel(double hz, mel_scale scale) {
    if (scale == MEL_SCALE_KALDI) return 1127.0 * log(1.0 + hz / 700.0);
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
    REQUIRE(isfinite(p->preemphasis) && p->preemphasis >= 0 && p->preemphasis < 1,
            "preemphasis must be in [0, 1)");
    REQUIRE(p->n_fft > 0, "n_fft must be > 0");
    REQUIRE(p->win_length > 0 && p->win_length <= p->n_fft,
            "win_length must be in 1..n_fft");
    REQUIRE(p->window == MEL_WINDOW_HANN || p->window == MEL_WINDOW_HANN_SYMMETRIC,
            "window must be hann or hann_symmetric");
    REQUIRE(p->hop_length > 0, "hop_length must be > 0");
    REQUIRE(p->n_mels > 0, "n_mels must be > 0");
    REQUIRE(p->chunk_frames > 0, "chunk_frames must be > 0");
    REQUIRE(p->scale == MEL_SCALE_SLANEY || p->scale == MEL_SCALE_HTK ||
            p->scale == MEL_SCALE_KALDI, "mel_scale must be slaney, htk or kaldi");
    REQUIRE(p->slaney_norm == 0 || (p->slaney_norm == 1 && p->scale != MEL_SCALE_KALDI),
            "slaney_norm must be 0, or 1 with the slaney or htk scale");
    REQUIRE(isfinite(p->fmin) && p->fmin >= 0, "fmin must be >= 0");
    REQUIRE(isfinite(p->fmax) && p->fmax <= p->sample_rate / 2.0,
            "fmax must be <= sample_rate / 2");
    REQUIRE(p->fmin < p->fmax, "fmin must be < fmax");
    REQUIRE(isfinite(p->power) && p->power > 0, "power must be > 0");
    REQUIRE(p->log == MEL_LOG_DB || p->log == MEL_LOG_LN, "log must be db or ln");
    REQUIRE(p->log != MEL_LOG_DB || (isfinite(p->amin) && p->amin > 0), "amin must be > 0");
    REQUIRE(p->log != MEL_LOG_LN || (isfinite(p->log_offset) && p->log_offset > 0),
            "log_offset must be > 0");
    REQUIRE(isfinite(p->norm_mean), "norm_mean must be finite");
    REQUIRE(isfinite(p->norm_std) && p->norm_std > 0, "norm_std must be > 0");
    REQUIRE((long long)p->chunk_frames * p->hop_length <= INT_MAX,
            "chunk_frames * hop_length too large");
    REQUIRE((long long)p->chunk_frames * p->n_mels <= INT_MAX,
            "chunk_frames * n_mels too large");
    /* A chunk (less the sample pre-emphasis takes) must be longer than the
     * reflect padding, so that any signal with at least one chunk can be
     * reflected at both ends (as torch.stft requires pad < length). */
    REQUIRE((long long)p->chunk_frames * p->hop_length - (p->preemphasis > 0) > p->n_fft / 2,
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
    /* Slaney and HTK: triangles between points in Hz, over bins at
     * linspace(0, sample_rate // 2, n_bins). Kaldi: triangles between points
     * in mel, over the n_fft/2 bins below Nyquist at k * sample_rate / n_fft
     * (the Nyquist bin stays out, weighted 0). */
    const int kaldi = p->scale == MEL_SCALE_KALDI;
    const int fb_bins = kaldi ? n_bins - 1 : n_bins;
    double m_min = hz_to_mel(p->fmin, p->scale), m_max = hz_to_mel(p->fmax, p->scale);
    for (int i = 0; i < n_mels + 2; i++) {
        double mel_pt = m_min + (m_max - m_min) * i / (n_mels + 1);
        f_pts[i] = kaldi ? mel_pt : mel_to_hz(mel_pt, p->scale);
    }
    const double bin_hz = kaldi ? (double)p->sample_rate / p->n_fft
                          : n_bins > 1 ? (double)(p->sample_rate / 2) / (n_bins - 1) : 0.0;
#define BIN_POINT(k) (kaldi ? hz_to_mel(bin_hz * (k), MEL_SCALE_KALDI) : bin_hz * (k))

    size_t total = 0;
    for (int b = 0; b < n_mels; b++) {
        int first = -1, last = -1;
        for (int k = 0; k < fb_bins; k++) {
            if (triangle(BIN_POINT(k), f_pts[b], f_pts[b + 1], f_pts[b + 2]) > 0) {
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
            double f = BIN_POINT(m->band_first[b] + k);
            m->weights[m->band_off[b] + (size_t)k] = (float)(triangle(f, lo, mid, hi) * scale);
        }
    }
#undef BIN_POINT
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
    /* torch.hann_window: the periodic one divides by N, the symmetric one by
     * N - 1 (and is [1] for N = 1). */
    int period = p->window == MEL_WINDOW_HANN ? p->win_length : p->win_length - 1;
    for (int i = 0; i < p->win_length; i++)
        m->window[left + i] =
            period > 0 ? (float)(0.5 - 0.5 * cos(two_pi * i / period)) : 1.0f;

    /* The arrays only fix the plan's size and alignment (fftwf_malloc's,
     * which is what mel_compute's own buffers will have too). A measured
     * plan from wisdom, else an estimated one: see mel.h. */
    float *in = fftwf_malloc((size_t)p->n_fft * sizeof *in);
    fftwf_complex *out = fftwf_malloc((size_t)m->n_bins * sizeof *out);
    if (in && out) {
        m->plan = fftwf_plan_dft_r2c_1d(p->n_fft, in, out, FFTW_MEASURE | FFTW_WISDOM_ONLY);
        m->measured = m->plan != NULL;
        if (!m->plan) m->plan = fftwf_plan_dft_r2c_1d(p->n_fft, in, out, FFTW_ESTIMATE);
    }
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
int mel_plan_is_measured(const mel *m) { return m->measured; }

/* ---- wisdom ------------------------------------------------------------- */

/* gr_fail() for the functions that return a mel_wisdom_result. */
#define wisdom_failed(err, status, ...) (gr_fail((err), (status), __VA_ARGS__), MEL_WISDOM_FAILED)

mel_wisdom_result mel_wisdom_load(const char *path, gr_err *err) {
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return MEL_WISDOM_NO_FILE;
        return wisdom_failed(err, GR_EFILE, "%s: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
        fclose(f); /* /dev/null, or an empty file: nothing to add */
        return MEL_WISDOM_NO_FILE;
    }
    int ok = fftwf_import_wisdom_from_file(f);
    fclose(f);
    return ok ? MEL_WISDOM_LOADED : wisdom_failed(err, GR_EFILE, "%s: not FFTW wisdom", path);
}

int mel_wisdom_has(const mel_params *p) {
    if (!p || p->n_fft <= 0) return 0;
    float *in = fftwf_malloc((size_t)p->n_fft * sizeof *in);
    fftwf_complex *out = fftwf_malloc((size_t)(p->n_fft / 2 + 1) * sizeof *out);
    fftwf_plan plan = NULL;
    if (in && out)
        plan = fftwf_plan_dft_r2c_1d(p->n_fft, in, out, FFTW_MEASURE | FFTW_WISDOM_ONLY);
    if (plan) fftwf_destroy_plan(plan);
    fftwf_free(in);
    fftwf_free(out);
    return plan != NULL;
}

mel_wisdom_result mel_wisdom_learn(const mel_params *p, gr_err *err) {
    if (!p || p->n_fft <= 0) return wisdom_failed(err, GR_EINTERNAL, "mel: invalid n_fft");
    float *in = fftwf_malloc((size_t)p->n_fft * sizeof *in);
    fftwf_complex *out = fftwf_malloc((size_t)(p->n_fft / 2 + 1) * sizeof *out);
    mel_wisdom_result rc = MEL_WISDOM_FAILED;
    if (in && out) {
        fftwf_plan plan =
            fftwf_plan_dft_r2c_1d(p->n_fft, in, out, FFTW_MEASURE | FFTW_WISDOM_ONLY);
        rc = MEL_WISDOM_KNOWN;
        if (!plan) {
            plan = fftwf_plan_dft_r2c_1d(p->n_fft, in, out, FFTW_MEASURE);
            rc = plan ? MEL_WISDOM_LEARNED : MEL_WISDOM_FAILED;
        }
        if (plan) fftwf_destroy_plan(plan);
    }
    fftwf_free(in);
    fftwf_free(out);
    if (rc == MEL_WISDOM_FAILED)
        gr_fail(err, GR_EINTERNAL, "mel: cannot plan a %d-point FFT", p->n_fft);
    return rc;
}

/* mkdir -p of path's directory. */
static int make_parent_dirs(const char *path) {
    char dir[4096];
    size_t n = strlen(path);
    if (n >= sizeof dir) return -1;
    memcpy(dir, path, n + 1);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = '\0';
    for (char *q = dir + 1; *q; q++) {
        if (*q != '/') continue;
        *q = '\0';
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) return -1;
        *q = '/';
    }
    return mkdir(dir, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

mel_wisdom_result mel_wisdom_save(const char *path, gr_err *err) {
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) return MEL_WISDOM_NOT_KEPT;
    char tmp[4096 + 16];
    if (snprintf(tmp, sizeof tmp, "%s.XXXXXX", path) >= (int)sizeof tmp)
        return wisdom_failed(err, GR_EFILE, "%s: path too long", path);
    if (make_parent_dirs(path) != 0)
        return wisdom_failed(err, GR_EFILE, "%s: cannot create its directory: %s", path,
                             strerror(errno));
    char *text = fftwf_export_wisdom_to_string();
    if (!text) return wisdom_failed(err, GR_EINTERNAL, "mel: out of memory");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(text);
        return wisdom_failed(err, GR_EFILE, "%s: %s", tmp, strerror(e));
    }
    size_t len = strlen(text), done = 0;
    while (done < len) {
        ssize_t w = write(fd, text + done, len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        done += (size_t)w;
    }
    free(text);
    int bad = done != len;
    if (close(fd) != 0) bad = 1;
    if (!bad && rename(tmp, path) == 0) return MEL_WISDOM_SAVED;
    int e = errno;
    unlink(tmp);
    return wisdom_failed(err, GR_EFILE, "%s: cannot write: %s", path, strerror(e));
}

size_t mel_chunk_samples(const mel *m) {
    return (size_t)m->p.chunk_frames * (size_t)m->p.hop_length;
}

size_t mel_frame_reach(const mel *m) {
    return (size_t)m->p.n_fft - (size_t)m->p.n_fft / 2 + (m->p.preemphasis > 0);
}

size_t mel_chunk_floats(const mel *m) {
    return (size_t)m->p.n_mels * (size_t)m->p.chunk_frames;
}

size_t mel_chunk_count(const mel *m, size_t n_samples) {
    return n_samples / mel_chunk_samples(m);
}

size_t mel_chunk_count_step(const mel *m, size_t n_samples, size_t step) {
    size_t L = mel_chunk_samples(m);
    if (step == 0 || n_samples < L) return 0;
    return 1 + (n_samples - L) / step;
}

int mel_compute(const mel *m, const float *signal, size_t n, float *out,
                size_t n_chunks, gr_err *err) {
    return mel_compute_step(m, signal, n, mel_chunk_samples(m), out, n_chunks, err);
}

int mel_compute_step(const mel *m, const float *signal, size_t n, size_t step,
                     float *out, size_t n_chunks, gr_err *err) {
    return mel_compute_part(m, signal, 0, n, n, step, 0, n_chunks, out, err);
}

/* Frames are done FRAME_BLOCK at a time: their band energies go to a small
 * [frame][band] buffer first, then each band's FRAME_BLOCK values are
 * written to the chunk's [band][frame] row side by side. Writing one frame
 * straight into the chunk's layout touches n_mels cache lines per frame
 * (64 KB apart over a chunk), which measured 35% of mel_compute's time. */
enum { FRAME_BLOCK = 16 };

int mel_compute_part(const mel *m, const float *buf, size_t buf_first, size_t buf_len,
                     size_t n, size_t step, size_t first_chunk, size_t n_chunks,
                     float *out, gr_err *err) {
    const mel_params *p = &m->p;
    if (n_chunks == 0) return 0;
    if (step == 0) return gr_fail(err, GR_EINTERNAL, "mel: chunk step must be >= 1");
    if (first_chunk > mel_chunk_count_step(m, n, step) ||
        n_chunks > mel_chunk_count_step(m, n, step) - first_chunk)
        return gr_fail(err, GR_EINTERNAL, "mel: chunks [%zu, +%zu) asked of a %zu-sample "
                       "signal", first_chunk, n_chunks, n);
    if (!buf || !out) return gr_fail(err, GR_EINTERNAL, "mel: no signal or output");

    /* Frames read y, the signal after pre-emphasis: ny = n - 1 samples,
     * y[i] = x[i+1] - c x[i] (or y = x without it). ny >= one chunk less
     * that sample > n_fft / 2 (checked in mel_create), so every index a frame
     * touches is in [-(ny-1), 2(ny-1)] and one reflection lands inside; the
     * x samples it needs must then lie in the part at hand, [buf_first,
     * buf_end). */
    const size_t n_fft = (size_t)p->n_fft, pad = n_fft / 2;
    const float c = p->preemphasis;
    const size_t extra = c > 0, ny = n - extra;
    const size_t hop = (size_t)p->hop_length, frames = (size_t)p->chunk_frames;
    const size_t buf_end = buf_first + buf_len;
    if (buf_first > n || buf_len > n - buf_first)
        return gr_fail(err, GR_EINTERNAL, "mel: part [%zu, +%zu) outside the signal",
                       buf_first, buf_len);
    float *in = fftwf_malloc(n_fft * sizeof *in);
    fftwf_complex *spec = fftwf_malloc((size_t)m->n_bins * sizeof *spec);
    float *pow_spec = malloc((size_t)m->n_bins * sizeof *pow_spec);
    float *energy = malloc((size_t)FRAME_BLOCK * (size_t)p->n_mels * sizeof *energy);
    if (!in || !spec || !pow_spec || !energy) {
        fftwf_free(in);
        fftwf_free(spec);
        free(pow_spec);
        free(energy);
        return gr_fail(err, GR_EINTERNAL, "mel: out of memory");
    }

    /* Locals, not p->...: stores through out could alias them otherwise,
     * which would keep the compiler from hoisting them out of the loops. */
    const float *w = m->window;
    const int n_bins = m->n_bins, n_mels = p->n_mels;
    const float power = p->power, half_power = power / 2;
    /* The dB log floors at amin, the ln log adds log_offset: one of the two
     * is 0. (10 log10(x) - mean) / std is one multiply-add on ln(x): logf is
     * cheaper than log10f, and the two agree to a few ulp. */
    const int db = p->log == MEL_LOG_DB;
    const float amin = db ? p->amin : 0.0f, offset = db ? 0.0f : p->log_offset;
    const float ln_scale = (db ? (float)(10.0 / 2.302585092994045684) : 1.0f) / p->norm_std;
    const float shift = -p->norm_mean / p->norm_std;
    const size_t chunk_floats = mel_chunk_floats(m);
    int rc = 0;
    for (size_t ch = first_chunk; ch < first_chunk + n_chunks && rc == 0; ch++) {
        float *chunk_out = out + (ch - first_chunk) * chunk_floats;
        for (size_t t0 = 0; t0 < frames && rc == 0; t0 += FRAME_BLOCK) {
            size_t nb = frames - t0 < FRAME_BLOCK ? frames - t0 : FRAME_BLOCK;
            for (size_t f = 0; f < nb; f++) {
                size_t centre = ch * step + (t0 + f) * hop;
                if (centre >= pad && centre - pad >= buf_first &&
                    centre - pad + n_fft + extra <= buf_end) {
                    const float *x = buf + (centre - pad - buf_first);
                    if (extra)
                        for (size_t j = 0; j < n_fft; j++) in[j] = w[j] * (x[j + 1] - c * x[j]);
                    else
                        for (size_t j = 0; j < n_fft; j++) in[j] = w[j] * x[j];
                } else {
                    for (size_t j = 0; j < n_fft; j++) {
                        /* Signed index into y; reflect (no edge repeat). */
                        long long i = (long long)(centre + j) - (long long)pad;
                        if (i < 0) i = -i;
                        else if (i >= (long long)ny) i = 2 * ((long long)ny - 1) - i;
                        if (i < (long long)buf_first || i + (long long)extra >= (long long)buf_end) {
                            rc = gr_fail(err, GR_EINTERNAL, "mel: chunk %zu needs sample "
                                         "%lld, outside the part [%zu, %zu)", ch, i,
                                         buf_first, buf_end);
                            break;
                        }
                        const float *x = buf + (i - (long long)buf_first);
                        in[j] = w[j] * (extra ? x[1] - c * x[0] : x[0]);
                    }
                    if (rc != 0) break;
                }
                fftwf_execute_dft_r2c(m->plan, in, spec);

                for (int k = 0; k < n_bins; k++) {
                    float p2 = spec[k][0] * spec[k][0] + spec[k][1] * spec[k][1];
                    pow_spec[k] = power == 2.0f ? p2
                                : power == 1.0f ? sqrtf(p2)
                                                : powf(p2, half_power);
                }
                float *e = energy + f * (size_t)n_mels;
                for (int b = 0; b < n_mels; b++) {
                    const float *bw = m->weights + m->band_off[b];
                    const float *bp = pow_spec + m->band_first[b];
                    float acc = 0;
                    for (int k = 0; k < m->band_len[b]; k++) acc += bw[k] * bp[k];
                    e[b] = logf((acc > amin ? acc : amin) + offset) * ln_scale + shift;
                }
            }
            if (rc != 0) break;
            for (int b = 0; b < n_mels; b++) {
                float *row = chunk_out + (size_t)b * frames + t0;
                for (size_t f = 0; f < nb; f++) row[f] = energy[f * (size_t)n_mels + (size_t)b];
            }
        }
    }
    fftwf_free(in);
    fftwf_free(spec);
    free(pow_spec);
    free(energy);
    return rc;
}
