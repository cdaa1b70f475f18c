/* mel_npy.c - test tool: log-mel chunks of a .npy signal, written as .npy.
 *
 *   mel_npy IN.npy OUT.npy [key=value ...]
 *
 * IN is a 1-D float32 signal; OUT is [n_chunks, n_mels, chunk_frames].
 * Keys are those of the model format's "features" section (sample_rate,
 * n_fft, win_length, hop_length, n_mels, chunk_frames, fmin, fmax,
 * mel_scale=slaney|htk, mel_norm=slaney|none, power, amin, norm_mean,
 * norm_std), defaulting to genred's features with norm_mean 0, norm_std 1.
 * threads=N (default 1) also computes the chunks on N threads at once from
 * one shared mel and fails unless every copy is bit-identical to the first,
 * to check that mel_compute() really is thread-safe.
 * Exits 0 on success, 1 with a message on stderr otherwise. */
#include <errno.h>
#include <fftw3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "genred/mel.h"
#include "genred/npy.h"

static int parse_int(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < -2147483647L - 1 || v > 2147483647L)
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end) return -1;
    *out = v;
    return 0;
}

/* Applies one key=value to p (or *threads); -1 on an unknown key or value. */
static int apply_option(const char *arg, mel_params *p, int *threads) {
    const char *eq = strchr(arg, '=');
    if (!eq) return -1;
    size_t klen = (size_t)(eq - arg);
    const char *v = eq + 1;
#define KEY(name) (klen == strlen(name) && strncmp(arg, name, klen) == 0)
    if (KEY("sample_rate")) return parse_int(v, &p->sample_rate);
    if (KEY("n_fft")) return parse_int(v, &p->n_fft);
    if (KEY("win_length")) return parse_int(v, &p->win_length);
    if (KEY("hop_length")) return parse_int(v, &p->hop_length);
    if (KEY("n_mels")) return parse_int(v, &p->n_mels);
    if (KEY("chunk_frames")) return parse_int(v, &p->chunk_frames);
    if (KEY("fmin")) return parse_float(v, &p->fmin);
    if (KEY("fmax")) return parse_float(v, &p->fmax);
    if (KEY("power")) return parse_float(v, &p->power);
    if (KEY("amin")) return parse_float(v, &p->amin);
    if (KEY("norm_mean")) return parse_float(v, &p->norm_mean);
    if (KEY("norm_std")) return parse_float(v, &p->norm_std);
    if (KEY("threads")) return parse_int(v, threads) || *threads < 1 ? -1 : 0;
    if (KEY("mel_scale")) {
        if (strcmp(v, "slaney") == 0) p->scale = MEL_SCALE_SLANEY;
        else if (strcmp(v, "htk") == 0) p->scale = MEL_SCALE_HTK;
        else return -1;
        return 0;
    }
    if (KEY("mel_norm")) {
        if (strcmp(v, "slaney") == 0) p->slaney_norm = 1;
        else if (strcmp(v, "none") == 0) p->slaney_norm = 0;
        else return -1;
        return 0;
    }
#undef KEY
    return -1;
}

typedef struct job {
    const mel *m;
    const float *signal;
    size_t n, n_chunks;
    float *out;   /* owned by main */
    int rc;
    gr_err err;
} job;

static void *run_job(void *arg) {
    job *j = arg;
    j->rc = mel_compute(j->m, j->signal, j->n, j->out, j->n_chunks, &j->err);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s IN.npy OUT.npy [key=value ...]\n", argv[0]);
        return 1;
    }
    mel_params p = {
        .sample_rate = 16000, .n_fft = 1024, .win_length = 1024,
        .hop_length = 375, .n_mels = 128, .chunk_frames = 128,
        .fmin = 0.0f, .fmax = 8000.0f, .scale = MEL_SCALE_SLANEY,
        .slaney_norm = 1, .power = 2.0f, .amin = 1e-10f,
        .norm_mean = 0.0f, .norm_std = 1.0f,
    };
    int threads = 1;
    for (int i = 3; i < argc; i++) {
        if (apply_option(argv[i], &p, &threads) != 0) {
            fprintf(stderr, "mel_npy: bad option '%s'\n", argv[i]);
            return 1;
        }
    }

    gr_err err = {0};
    float *signal = NULL;
    size_t shape[4];
    int ndim;
    if (npy_read(argv[1], &signal, shape, &ndim, &err) != 0) {
        fprintf(stderr, "mel_npy: %s\n", err.msg);
        return 1;
    }
    int status = 1;
    mel *m = NULL;
    job *jobs = calloc((size_t)threads, sizeof *jobs);
    pthread_t *tids = calloc((size_t)threads, sizeof *tids);
    if (!jobs || !tids) {
        fprintf(stderr, "mel_npy: out of memory\n");
        goto done;
    }
    if (ndim != 1) {
        fprintf(stderr, "mel_npy: input has %d dims, want 1\n", ndim);
        goto done;
    }
    m = mel_create(&p, &err);
    if (!m) {
        fprintf(stderr, "mel_npy: %s\n", err.msg);
        goto done;
    }
    size_t n_chunks = mel_chunk_count(m, shape[0]);
    size_t floats = n_chunks * mel_chunk_floats(m);
    for (int i = 0; i < threads; i++) {
        jobs[i] = (job){.m = m, .signal = signal, .n = shape[0],
                        .n_chunks = n_chunks, .out = malloc(floats ? floats * sizeof(float) : 1)};
        if (!jobs[i].out) {
            fprintf(stderr, "mel_npy: out of memory\n");
            goto done;
        }
    }
    int started = 0;
    if (threads == 1) {
        run_job(&jobs[0]);
    } else {
        for (; started < threads; started++)
            if (pthread_create(&tids[started], NULL, run_job, &jobs[started]) != 0) break;
        for (int i = 0; i < started; i++) pthread_join(tids[i], NULL);
        if (started < threads) {
            fprintf(stderr, "mel_npy: cannot start thread %d\n", started);
            goto done;
        }
    }
    for (int i = 0; i < threads; i++) {
        if (jobs[i].rc != 0) {
            fprintf(stderr, "mel_npy: %s\n", jobs[i].err.msg);
            goto done;
        }
        if (floats && memcmp(jobs[i].out, jobs[0].out, floats * sizeof(float)) != 0) {
            fprintf(stderr, "mel_npy: thread %d computed different chunks\n", i);
            goto done;
        }
    }
    size_t out_shape[3] = {n_chunks, (size_t)p.n_mels, (size_t)p.chunk_frames};
    if (npy_write(argv[2], jobs[0].out, out_shape, 3, &err) != 0) {
        fprintf(stderr, "mel_npy: %s\n", err.msg);
        goto done;
    }
    status = 0;
done:
    if (jobs)
        for (int i = 0; i < threads; i++) free(jobs[i].out);
    free(jobs);
    free(tids);
    mel_destroy(m);
    fftwf_cleanup(); /* FFTW's planner memory, so valgrind sees nothing left */
    free(signal);
    return status;
}
