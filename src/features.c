/* features.c - upload bytes to model input: decode, trim rule, chunks
 * (log-mel or waveform envelope, whichever the model reads). */
#include "genred/features.h"

#include <math.h>
#include <pthread.h>
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
    /* One segment per core: a lone request decodes at the speed of all of
     * them; under load the segments just queue for the cores like any other
     * thread (docs/performance.md measures both). */
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

/* ---- the streamed path --------------------------------------------------
 *
 * Log-mel of back-to-back chunks when the container tells the length: the
 * window is cut into blocks of BLOCK_CHUNKS chunks and decode_threads
 * threads take blocks in turn, each decoding one block's samples (plus the
 * n_fft/2 its edge frames read beyond it, plus SEAM more) and computing its
 * chunks at once. So no thread holds more than one block of audio (1.5 MB
 * at 16 kHz, against 26 MB for the whole window of a 7-minute song), the
 * log-mel runs on every core too, and it reads samples still in cache.
 * Neighbouring blocks decode the samples around their common edge twice,
 * independently; they must agree bit for bit (the seam check audio.h does
 * for its own segments), else the window is decoded again another way. */
enum { BLOCK_CHUNKS = 8, SEAM = 64 };

typedef struct stream_job {
    const featurizer *fz;
    const audio_source *src;
    size_t start, win;        /* the window in the stream, in samples */
    size_t n_chunks, n_blocks;
    float *chunks;            /* the result, n_chunks chunks */
    float *seams;             /* per block: its first SEAM samples, then its own
                               * decode of the next block's first SEAM */
    pthread_mutex_t mu;
    size_t next;              /* next block to take (mu) */
    int failed;               /* -1 error (err), 1 departs from the index (mu) */
    gr_err err;
    double decode_ms, mel_ms; /* summed over threads (mu) */
} stream_job;

/* Samples [*lo, *hi) of the window that block b needs: from n_fft/2 before
 * its first frame's centre to n_fft/2 after its last, then SEAM more for the
 * check against the next block's start. */
static void block_range(const stream_job *j, size_t b, size_t *lo, size_t *hi) {
    const mel_params *p = &j->fz->p.mel;
    const size_t L = featurizer_chunk_samples(j->fz), pad = (size_t)p->n_fft / 2;
    size_t c0 = b * BLOCK_CHUNKS;
    size_t c1 = c0 + BLOCK_CHUNKS < j->n_chunks ? c0 + BLOCK_CHUNKS : j->n_chunks;
    size_t last_centre = (c1 - 1) * L + (size_t)(p->chunk_frames - 1) * (size_t)p->hop_length;
    size_t reach = last_centre + ((size_t)p->n_fft - pad), next_lo = c1 * L - pad;
    *lo = c0 * L > pad ? c0 * L - pad : 0;
    *hi = (reach > next_lo ? reach : next_lo) + SEAM;
    if (*hi > j->win) *hi = j->win;
}

static void *stream_worker(void *arg) {
    stream_job *j = arg;
    const size_t floats = featurizer_chunk_floats(j->fz), L = featurizer_chunk_samples(j->fz);
    float *buf = NULL;
    size_t cap = 0;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        size_t b = j->next;
        int stop = j->failed || b == j->n_blocks;
        if (!stop) j->next++;
        pthread_mutex_unlock(&j->mu);
        if (stop) break;

        size_t lo, hi;
        block_range(j, b, &lo, &hi);
        gr_err err = {0};
        int rc = 0;
        if (hi - lo > cap) {
            float *nb = realloc(buf, (hi - lo) * sizeof *buf);
            if (nb) buf = nb, cap = hi - lo;
            else rc = gr_fail(&err, GR_EINTERNAL, "out of memory for decoded audio");
        }
        double t0 = monotonic_now();
        if (rc == 0) rc = audio_source_decode_into(j->src, j->start + lo, hi - lo, buf, &err);
        double t1 = monotonic_now();
        size_t c0 = b * BLOCK_CHUNKS, nc = j->n_chunks - c0 < BLOCK_CHUNKS ? j->n_chunks - c0
                                                                           : BLOCK_CHUNKS;
        if (rc == 0)
            rc = mel_compute_part(j->fz->mel, buf, lo, hi - lo, j->win, L, c0, nc,
                                  j->chunks + c0 * floats, &err);
        if (rc == 0) {
            /* The first SEAM samples after the next block's start, and this
             * block's first SEAM samples (its own decode of them). */
            float *seam = j->seams + 2 * SEAM * b;
            memcpy(seam, buf, SEAM * sizeof *buf);
            if (b + 1 < j->n_blocks) {
                size_t next_lo = (c0 + nc) * L - (size_t)j->fz->p.mel.n_fft / 2;
                memcpy(seam + SEAM, buf + (next_lo - lo), SEAM * sizeof *buf);
            }
        }
        double t2 = monotonic_now();
        pthread_mutex_lock(&j->mu);
        j->decode_ms += (t1 - t0) * 1e3;
        j->mel_ms += (t2 - t1) * 1e3;
        if (rc != 0 && !j->failed) {
            j->failed = rc < 0 ? -1 : 1;
            j->err = err;
        }
        pthread_mutex_unlock(&j->mu);
    }
    free(buf);
    return NULL;
}

/* Returns 0 with out filled, 1 if the window must be decoded another way,
 * or -1 with err set. */
static int stream_features(const featurizer *fz, const audio_source *src, int threads,
                           size_t start, size_t end, features *out, gr_err *err) {
    stream_job j = {.fz = fz, .src = src, .start = start, .win = end - start};
    const size_t L = featurizer_chunk_samples(fz), pad = (size_t)fz->p.mel.n_fft / 2;
    j.n_chunks = mel_chunk_count(fz->mel, j.win);
    j.n_blocks = (j.n_chunks + BLOCK_CHUNKS - 1) / BLOCK_CHUNKS;
    /* Every block is longer than the seams it keeps, and blocks meet where
     * a chunk starts at least n_fft/2 into the window. */
    if (L < SEAM || L <= pad) return 1;
    j.chunks = malloc(j.n_chunks * featurizer_chunk_floats(fz) * sizeof(float));
    j.seams = calloc(j.n_blocks, 2 * SEAM * sizeof(float));
    if (!j.chunks || !j.seams || pthread_mutex_init(&j.mu, NULL) != 0) {
        free(j.chunks);
        free(j.seams);
        return gr_fail(err, GR_EINTERNAL, "out of memory for %zu feature chunks", j.n_chunks);
    }
    size_t n = threads < 1 ? 1 : (size_t)threads;
    if (n > j.n_blocks) n = j.n_blocks;
    pthread_t tid[64];
    int started[64] = {0};
    if (n > 64) n = 64;
    for (size_t i = 1; i < n; i++) started[i] = pthread_create(&tid[i], NULL, stream_worker, &j) == 0;
    stream_worker(&j); /* here too; a thread that did not start is not missed */
    for (size_t i = 1; i < n; i++)
        if (started[i]) pthread_join(tid[i], NULL);
    pthread_mutex_destroy(&j.mu);

    int rc = j.failed;
    for (size_t b = 0; rc == 0 && b + 1 < j.n_blocks; b++)
        if (memcmp(j.seams + 2 * SEAM * b + SEAM, j.seams + 2 * SEAM * (b + 1),
                   SEAM * sizeof(float)) != 0)
            rc = 1;
    free(j.seams);
    if (rc != 0) {
        free(j.chunks);
        if (rc < 0 && err) *err = j.err;
        return rc;
    }
    out->chunks = j.chunks;
    out->n_chunks = j.n_chunks;
    /* The stages overlap on several threads: report their shares of it. */
    out->decode_ms = j.decode_ms / (double)n;
    out->mel_ms = j.mel_ms / (double)n;
    out->segments = (int)j.n_blocks;
    return 0;
}

int features_compute(const featurizer *fz, const features_opts *o, const void *data,
                     size_t len, features *out, gr_err *err) {
    const int rate = featurizer_sample_rate(fz);
    size_t step = featurizer_chunk_samples(fz);
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
     * first and only the analysed window is decoded (in segments, on
     * several threads); otherwise everything is decoded and then trimmed. */
    audio_source *src;
    if (audio_open(data, len, rate, &lim, &src, err) != 0) return -1;
    size_t total = audio_source_samples(src), start = 0, end = 0;
    int trimmed = total ? trim_window(o, total, rate, &start, &end) : 0;
    if (total && chunk_count(fz, end - start, step) == 0) {
        audio_source_close(src);
        return too_short(fz, start, end, err);
    }
    if (total && fz->mel && step == featurizer_chunk_samples(fz)) {
        memset(out, 0, sizeof *out);
        int rc = stream_features(fz, src, o->decode_threads, start, end, out, err);
        if (rc <= 0) {
            audio_source_close(src);
            if (rc < 0) return -1;
            out->duration_s = (double)total / rate;
            out->start_s = (double)start / rate;
            out->trimmed = trimmed;
            return 0;
        }
    }
    audio a;
    int rc = audio_source_decode(src, start, total ? end - start : SIZE_MAX,
                                 o->decode_threads, &a, err);
    audio_source_close(src);
    if (rc != 0) return -1;
    double t1 = monotonic_now();
    if (a.total != total) /* the length was unknown: a holds everything */
        trimmed = trim_window(o, a.total, rate, &start, &end);
    const float *signal = a.samples + (start - a.first);

    size_t n = chunk_count(fz, end - start, step);
    if (n == 0) {
        too_short(fz, start, end, err);
        audio_free(&a);
        return -1;
    }
    float *chunks = malloc(n * featurizer_chunk_floats(fz) * sizeof(float));
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
    out->chunks = chunks;
    out->n_chunks = n;
    out->duration_s = a.duration_s;
    out->start_s = (double)start / rate;
    out->trimmed = trimmed;
    out->segments = a.segments;
    out->decode_ms = (t1 - t0) * 1e3;
    out->mel_ms = (monotonic_now() - t1) * 1e3;
    audio_free(&a);
    return 0;
}

void features_free(features *f) {
    if (!f) return;
    free(f->chunks);
    f->chunks = NULL;
    f->n_chunks = 0;
}
