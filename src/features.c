/* features.c - upload bytes to model input: decode, trim rule, chunks
 * (log-mel or waveform envelope, whichever the model reads). */
#include "genred/features.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "genred/audio.h"
#include "genred/clock.h"
#include "genred/config.h"

struct featurizer {
    feature_params p;
    mel *mel;                   /* owned; FEATURE_LOGMEL only */
};

featurizer *featurizer_create(const feature_params *p, gr_err *err) {
    if (!p || (p->kind != FEATURE_LOGMEL && p->kind != FEATURE_WAVEFORM)) {
        gr_fail(err, GR_EINTERNAL, "features: unknown feature kind");
        return NULL;
    }
    if (p->kind == FEATURE_WAVEFORM && waveform_check(&p->waveform, err) != 0) return NULL;
    featurizer *fz = calloc(1, sizeof *fz);
    if (!fz) {
        gr_fail(err, GR_EINTERNAL, "features: out of memory");
        return NULL;
    }
    fz->p = *p;
    if (p->kind == FEATURE_LOGMEL && !(fz->mel = mel_create(&p->mel, err))) {
        free(fz);
        return NULL;
    }
    return fz;
}

void featurizer_destroy(featurizer *fz) {
    if (!fz) return;
    mel_destroy(fz->mel);
    free(fz);
}

const feature_params *featurizer_params(const featurizer *fz) { return &fz->p; }
const mel *featurizer_mel(const featurizer *fz) { return fz->mel; }

int featurizer_sample_rate(const featurizer *fz) {
    return fz->mel ? fz->p.mel.sample_rate : fz->p.waveform.sample_rate;
}

size_t featurizer_chunk_samples(const featurizer *fz) {
    return fz->mel ? mel_chunk_samples(fz->mel) : (size_t)fz->p.waveform.chunk_samples;
}

size_t featurizer_chunk_floats(const featurizer *fz) {
    return fz->mel ? mel_chunk_floats(fz->mel) : (size_t)fz->p.waveform.values;
}

static size_t chunk_count(const featurizer *fz, size_t n, size_t step) {
    return fz->mel ? mel_chunk_count_step(fz->mel, n, step)
                   : waveform_chunk_count(&fz->p.waveform, n, step);
}

features_opts features_opts_from_config(const struct config *c, int trim) {
    features_opts o = {.trim = trim,
                       .trim_start_s = c->trim_start_s,
                       .trim_end_s = c->trim_end_s,
                       .trim_min_keep_s = c->trim_min_keep_s,
                       .max_duration_s = c->max_duration_s};
    /* One decoding thread per core: a lone request decodes at the speed of
     * all of them; under load the threads just queue for the cores like any
     * other thread (docs/performance.md measures both). */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    o.decode_threads = cores > 1 ? (int)(cores < 64 ? cores : 64) : 1;
    return o;
}

/* The part of a signal of `total` samples to analyse: [*start, *end).
 * Returns 1 if the trim rule cut anything. */
static int trim_window(const features_opts *o, size_t total, int rate, size_t *start,
                       size_t *end) {
    *start = 0;
    *end = total;
    if (!o->trim) return 0;
    double keep = (double)total / rate - o->trim_start_s - o->trim_end_s;
    if (keep <= 0 || keep < o->trim_min_keep_s) return 0;
    *start = (size_t)(o->trim_start_s * rate);
    *end = total - (size_t)(o->trim_end_s * rate);
    return *start > 0 || *end < total;
}

static int too_short(const featurizer *fz, size_t start, size_t end, gr_err *err) {
    const int rate = featurizer_sample_rate(fz);
    return gr_fail(err, GR_EUNPROCESSABLE,
                   "audio too short: %.2f s to analyse, at least %.1f s (one chunk) needed",
                   (double)(end - start) / rate, (double)featurizer_chunk_samples(fz) / rate);
}

/* ---- log-mel span by span -------------------------------------------------
 *
 * Back-to-back log-mel chunks of a window whose length the container tells
 * are computed as it is decoded: audio_source_decode() cuts the window into
 * spans of SPAN_CHUNKS chunks, each with the samples its edge frames read
 * beyond it (the sink's margin: mel_frame_reach(), n_fft/2 or one more with
 * pre-emphasis), decodes them on decode_threads
 * threads, and hands each to mel_of_span(), which computes its chunks at
 * once. So no thread holds more than one span of audio (1.5 MB at 16 kHz,
 * against 26 MB for the whole window of a 7-minute song), the log-mel runs
 * on every core too, and it reads samples still in cache. */
enum { SPAN_CHUNKS = 8 };

typedef struct mel_sink {
    const featurizer *fz;
    size_t win;            /* the window's samples: the signal mel sees */
    size_t n_window;       /* chunks the window holds */
    size_t span_chunks;    /* chunks per span */
    const size_t *picks;   /* the sink's picked spans, or NULL */
    float *chunks;         /* span_chunks per span decoded, in that order */
} mel_sink;

static int mel_of_span(void *ctx, size_t index, const float *samples, size_t at, size_t n,
                     gr_err *err) {
    const mel_sink *ms = ctx;
    size_t c0 = (ms->picks ? ms->picks[index] : index) * ms->span_chunks;
    size_t nc = ms->n_window - c0 < ms->span_chunks ? ms->n_window - c0 : ms->span_chunks;
    size_t L = featurizer_chunk_samples(ms->fz);
    return mel_compute_part(ms->fz->mel, samples, at, n, ms->win, L, c0, nc,
                            ms->chunks + index * ms->span_chunks * featurizer_chunk_floats(ms->fz),
                            err);
}

size_t features_chunk_pick(size_t k, size_t m, size_t n) { return (2 * k + 1) * n / (2 * m); }

/* Of n chunks, the m max_chunks keeps, moved to the front in order. */
static void keep_picked(float *chunks, size_t floats, size_t n, size_t m) {
    for (size_t k = 0; k < m; k++) {
        size_t from = features_chunk_pick(k, m, n);
        if (from != k) memmove(chunks + k * floats, chunks + from * floats, floats * sizeof *chunks);
    }
}

/* How many of n chunks to analyse. */
static size_t kept(const features_opts *o, size_t n) {
    return o->max_chunks && o->max_chunks < n ? o->max_chunks : n;
}

int features_compute(const featurizer *fz, const features_opts *o, const void *data,
                     size_t len, analysis *out, gr_err *err) {
    memset(out, 0, sizeof *out);
    const int rate = featurizer_sample_rate(fz);
    const size_t L = featurizer_chunk_samples(fz), floats = featurizer_chunk_floats(fz);
    size_t step = L;
    if (o->chunk_hop_s != 0) {
        double hop = round(o->chunk_hop_s * rate);
        if (!(hop >= 1 && hop <= (double)step))
            return gr_fail(err, GR_ECONFIG, "chunk hop %g s is not between one sample "
                           "and one chunk (%.1f s)", o->chunk_hop_s, (double)step / rate);
        step = (size_t)hop;
    }
    audio_limits lim = {.max_duration_s = o->max_duration_s, .deadline = o->deadline};
    double t0 = monotonic_now();
    /* When the container tells the length up front, the trim rule runs
     * first and only the analysed window is decoded (in spans, on several
     * threads); otherwise everything is decoded and then trimmed. */
    audio_source *src;
    if (audio_open(data, len, rate, &lim, &src, err) != 0) return -1;
    size_t total = audio_source_samples(src), start = 0, end = 0;
    int trimmed = total ? trim_window(o, total, rate, &start, &end) : 0;
    if (total && chunk_count(fz, end - start, step) == 0) {
        audio_source_close(src);
        return too_short(fz, start, end, err);
    }
    /* Log-mel of back-to-back chunks goes span by span to mel_of_span(),
     * decoding only what the chunks' frames read: every chunk in spans of
     * SPAN_CHUNKS, or, when max_chunks keeps few, only the kept ones, one
     * span each. A span costs a pre-roll and a start check beyond its own
     * audio, 20-25% of a 3 s chunk of MP3 (audio_range.c: 8 + 16 packets of
     * 26 ms), against ~2% for a span of 8; so picking pays up to about 3/4
     * of the window's chunks, and beyond that everything is decoded and the
     * kept chunks chosen afterwards. */
    mel_sink ms = {.fz = fz, .win = end - start, .span_chunks = SPAN_CHUNKS};
    audio_sink sink = {.span = SPAN_CHUNKS * L, .margin = fz->mel ? mel_frame_reach(fz->mel) : 0,
                       .take = mel_of_span, .ctx = &ms};
    int by_span = total && fz->mel && step == L;
    size_t count = total ? end - start : SIZE_MAX;
    size_t *picks = NULL, n_keep = 0;
    int pick = 0;
    if (by_span) {
        ms.n_window = chunk_count(fz, ms.win, L);
        n_keep = kept(o, ms.n_window);
        if (ms.n_window * L + sink.margin < count) count = ms.n_window * L + sink.margin;
        pick = 4 * n_keep < 3 * ms.n_window;
        ms.chunks = malloc((pick ? n_keep : ms.n_window) * floats * sizeof(float));
        if (pick) picks = malloc(n_keep * sizeof *picks);
        if (!ms.chunks || (pick && !picks)) {
            free(picks);
            free(ms.chunks);
            audio_source_close(src);
            return gr_fail(err, GR_EINTERNAL, "out of memory for %zu feature chunks",
                           ms.n_window);
        }
        if (pick) {
            for (size_t k = 0; k < n_keep; k++) picks[k] = features_chunk_pick(k, n_keep, ms.n_window);
            ms.picks = sink.picks = picks;
            sink.n_picks = n_keep;
            ms.span_chunks = 1;
            sink.span = L;
        }
    }
    audio a;
    int rc = audio_source_decode(src, start, count, o->decode_threads, by_span ? &sink : NULL,
                                 &a, err);
    audio_source_close(src);
    free(picks);
    double t1 = monotonic_now();
    out->duration_s = a.duration_s;
    out->spans = a.spans;
    if (rc == 0 && by_span && a.spans > 0) {
        if (!pick) keep_picked(ms.chunks, floats, ms.n_window, n_keep);
        out->chunks = ms.chunks;
        out->n_chunks = n_keep;
        out->window_chunks = ms.n_window;
        out->start_s = (double)start / rate;
        out->trimmed = trimmed;
        /* Decoding and log-mel overlap on every thread: the log-mel's share
         * of the time is the sink's, the rest is decoding's. */
        out->features_ms = a.sink_ms;
        out->decode_ms = (t1 - t0) * 1e3 - a.sink_ms;
        return 0;
    }
    free(ms.chunks);
    if (rc != 0) return -1;
    if (a.total != total) /* the length was unknown: a holds everything */
        trimmed = trim_window(o, a.total, rate, &start, &end);
    const float *signal = a.samples + (start - a.first);

    size_t n = chunk_count(fz, end - start, step);
    if (n == 0) {
        too_short(fz, start, end, err);
        audio_free(&a);
        return -1;
    }
    float *chunks = malloc(n * floats * sizeof(float));
    if (!chunks) {
        audio_free(&a);
        return gr_fail(err, GR_EINTERNAL, "out of memory for %zu feature chunks", n);
    }
    rc = fz->mel ? mel_compute_step(fz->mel, signal, end - start, step, chunks, n, err)
                 : waveform_compute(&fz->p.waveform, signal, end - start, step, chunks, n,
                                    err);
    if (rc != 0) {
        free(chunks);
        audio_free(&a);
        return -1;
    }
    /* The whole stream was decoded anyway: computing every chunk and
     * keeping max_chunks of them costs a few ms against its decode. */
    keep_picked(chunks, floats, n, kept(o, n));
    out->chunks = chunks;
    out->n_chunks = kept(o, n);
    out->window_chunks = n;
    out->start_s = (double)start / rate;
    out->trimmed = trimmed;
    out->decode_ms = (t1 - t0) * 1e3;
    out->features_ms = (monotonic_now() - t1) * 1e3;
    audio_free(&a);
    return 0;
}

void analysis_free(analysis *a) {
    if (!a) return;
    free(a->chunks);
    a->chunks = NULL;
    a->n_chunks = 0;
}
