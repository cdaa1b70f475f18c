/* waveform.c - raw-audio chunks as amplitude envelopes (see waveform.h).
 *
 * Sums run in double: a block is tens to thousands of samples, and the
 * Python side (train/) computes the same envelope in float64 for its tests.
 *
 * What it does not do: decoding, resampling, trimming. */
#include "genred/waveform.h"

#include <math.h>

int waveform_check(const waveform_params *p, gr_err *err) {
    if (!p) return gr_fail(err, GR_EINTERNAL, "waveform: no parameters");
    if (p->sample_rate < 1000 || p->sample_rate > 384000)
        return gr_fail(err, GR_EINTERNAL, "waveform: sample_rate must be in [1000, 384000]");
    if (p->values < 1 || p->values > 65536)
        return gr_fail(err, GR_EINTERNAL, "waveform: values must be in [1, 65536]");
    if (p->chunk_samples < 1 || p->chunk_samples > (1 << 24) ||
        p->chunk_samples % p->values != 0)
        return gr_fail(err, GR_EINTERNAL, "waveform: chunk_samples must be in [1, 2^24] "
                       "and a multiple of values");
    if (!(isfinite(p->norm_mean) && fabsf(p->norm_mean) < 1e6f) ||
        !(isfinite(p->norm_std) && p->norm_std > 0 && p->norm_std < 1e6f))
        return gr_fail(err, GR_EINTERNAL, "waveform: need 0 < norm_std < 1e6 and "
                       "|norm_mean| < 1e6");
    return 0;
}

size_t waveform_chunk_count(const waveform_params *p, size_t n_samples, size_t step) {
    size_t L = (size_t)p->chunk_samples;
    if (step == 0 || L == 0 || n_samples < L) return 0;
    return 1 + (n_samples - L) / step;
}

int waveform_compute(const waveform_params *p, const float *signal, size_t n,
                     size_t step, float *out, size_t n_chunks, gr_err *err) {
    if (waveform_check(p, err) != 0) return -1;
    if (n_chunks == 0) return 0;
    if (!signal || !out) return gr_fail(err, GR_EINTERNAL, "waveform: no signal or output");
    if (n_chunks > waveform_chunk_count(p, n, step))
        return gr_fail(err, GR_EINTERNAL, "waveform: %zu chunks asked of a %zu-sample "
                       "signal", n_chunks, n);
    const size_t values = (size_t)p->values;
    const size_t block = (size_t)p->chunk_samples / values;
    const double mean = p->norm_mean, std = p->norm_std;
    for (size_t c = 0; c < n_chunks; c++) {
        const float *x = signal + c * step;
        float *dst = out + c * values;
        for (size_t v = 0; v < values; v++) {
            double sum = 0;
            for (size_t i = 0; i < block; i++) sum += fabs((double)x[v * block + i]);
            dst[v] = (float)((sum / (double)block - mean) / std);
        }
    }
    return 0;
}
