/* mel_npy.c - test tool: log-mel chunks of a .npy signal, written as .npy.
 *
 *   mel_npy IN.npy OUT.npy [key=value ...]
 *
 * IN is a 1-D float32 signal; OUT is [n_chunks, n_mels, chunk_frames].
 * Keys are those of the model format's "features" object, parsed by the
 * model loader's own model_parse_features() (key=- removes one), over
 * genred's CNN features with norm_mean 0 and norm_std 1.
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
#include "genred/model.h"
#include "genred/npy.h"

/* genred's own features (models/gtzan-cnn.gmodel) with norm_mean 0 and
 * norm_std 1, as a model file's "features" object. */
static const char *defaults =
    "{\"kind\": \"logmel\", \"sample_rate\": 16000, \"n_fft\": 1024, \"win_length\": 1024,"
    " \"hop_length\": 375, \"n_mels\": 128, \"chunk_frames\": 128, \"fmin\": 0.0,"
    " \"fmax\": 8000.0, \"mel_scale\": \"slaney\", \"mel_norm\": \"slaney\", \"power\": 2.0,"
    " \"amin\": 1e-10, \"norm_mean\": 0.0, \"norm_std\": 1.0}";

/* Applies key=value to the features object f: a value that reads as JSON
 * (a number) is one, anything else a string; "-" deletes the key. Then the
 * model file's own parser judges the result. */
static int apply_option(json_t *f, const char *arg, int *threads) {
    const char *eq = strchr(arg, '=');
    char key[64];
    if (!eq || (size_t)(eq - arg) >= sizeof key) return -1;
    memcpy(key, arg, (size_t)(eq - arg));
    key[eq - arg] = '\0';
    const char *v = eq + 1;
    if (strcmp(key, "threads") == 0) {
        char *end;
        long n = strtol(v, &end, 10);
        if (*v == '\0' || *end || n < 1 || n > 64) return -1;
        *threads = (int)n;
        return 0;
    }
    if (strcmp(v, "-") == 0) return json_object_del(f, key) == 0 ? 0 : -1;
    json_t *val = json_loads(v, JSON_DECODE_ANY, NULL);
    if (!val || !(json_is_number(val))) {
        json_decref(val);
        val = json_string(v);
    }
    return val && json_object_set_new(f, key, val) == 0 ? 0 : -1;
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
    int threads = 1;
    json_t *f = json_loads(defaults, 0, NULL);
    if (!f) return 1;
    for (int i = 3; i < argc; i++) {
        if (apply_option(f, argv[i], &threads) != 0) {
            fprintf(stderr, "mel_npy: bad option '%s'\n", argv[i]);
            json_decref(f);
            return 1;
        }
    }
    gr_err err = {0};
    feature_params fp;
    int parsed = model_parse_features(f, &fp, &err);
    json_decref(f);
    if (parsed != 0) {
        fprintf(stderr, "mel_npy: %s\n", err.msg);
        return 1;
    }
    const mel_params p = fp.mel;

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
