/* genred_bench.c - in-process timings of genred's stages, for bench/run.
 *
 *   genred-bench stages MODEL FILE NATIVE_RATE REPS
 *
 * Loads MODEL, reads FILE (a song) and measures, REPS times round-robin so
 * that every stage sees the same background load, each stage of the data
 * path on its own, then prints one JSON object of medians (milliseconds,
 * GFLOP/s) on stdout. bench/run.py turns it into tables; nothing here
 * judges a number.
 *
 * Stages: the whole file decoded at its own rate (decode and downmix: the
 * in-process floor), at the model's rate (plus resampling), the packet index
 * alone, the trimmed window decoded on one thread and on one per core, the
 * log-mel of the window on one thread and on one per core, inference on one
 * thread (one chunk per call, and max_batch per call) and through the batcher
 * (its workers and OpenBLAS threads as the daemon sets them), the JSON
 * answer, engine_classify() end to end, and OpenBLAS sgemm's own speed on
 * one and on every core as the peak the CNN is compared with.
 *
 *   genred-bench fftw MODEL SECONDS REPS
 *
 * The FFT plan: making it estimated, measured, or from wisdom, and the log-mel
 * of SECONDS of noise with the estimated and with the measured plan.
 *
 *   genred-bench layers MODEL FILE BATCH REPS
 *
 * Each op's CPU time per chunk in model_forward() on one thread (the
 * per-layer cost table of docs/performance.md).
 *
 * What it does not do: HTTP, other processes (bench/run.py does those). */
#include <cblas.h>
#include <fftw3.h>
#include <jansson.h>
#include <libavutil/log.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "genred/audio.h"
#include "genred/batcher.h"
#include "genred/config.h"
#include "genred/engine.h"
#include "genred/features.h"
#include "genred/mel.h"
#include "genred/model.h"

enum { MAX_REPS = 200 };

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* CPU time of the whole process (every thread), for stages timed under a
 * background load that stretches wall time but not CPU time. */
static double cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void die(const char *what, const gr_err *err) {
    fprintf(stderr, "genred-bench: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path, NULL);
    if (fseek(f, 0, SEEK_END) != 0) die(path, NULL);
    long n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) die(path, NULL);
    unsigned char *buf = malloc(n ? (size_t)n : 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) die(path, NULL);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* GFLOP/s of sgemm on n x n matrices, best of a few calls: by wall time,
 * and by CPU time (*per_cpu: what one busy core does, load or not). */
static double sgemm_gflops(int n, double *per_cpu) {
    size_t nn = (size_t)n * (size_t)n;
    float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b), *c = malloc(nn * sizeof *c);
    if (!a || !b || !c) die("sgemm", NULL);
    for (size_t i = 0; i < nn; i++) {
        a[i] = (float)(i % 7) * 0.25f;
        b[i] = (float)(i % 5) * 0.5f;
    }
    double best = 1e30, best_cpu = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = now_ms(), c0 = cpu_ms();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n,
                    0.0f, c, n);
        double dt = now_ms() - t0, dc = cpu_ms() - c0;
        if (dt < best) best = dt;
        if (dc < best_cpu) best_cpu = dc;
    }
    free(a);
    free(b);
    free(c);
    const double flop = 2.0 * n * (double)n * n;
    *per_cpu = flop / (best_cpu * 1e6);
    return flop / (best * 1e6);
}

/* The log-mel on every core, as features_compute() runs it when serving:
 * each thread computes a contiguous run of the chunks with
 * mel_compute_part() from the one decoded window. */
typedef struct mel_part {
    const mel *m;
    const float *signal;
    size_t n, first, count;
    float *out;
    int rc;
    pthread_t thread;
} mel_part;

static void *mel_part_main(void *arg) {
    mel_part *p = arg;
    gr_err err = {0};
    size_t step = mel_chunk_samples(p->m);
    p->rc = mel_compute_part(p->m, p->signal, 0, p->n, p->n, step, p->first, p->count,
                             p->out + p->first * mel_chunk_floats(p->m), &err);
    return NULL;
}

static void mel_all_cores(const mel *m, const float *signal, size_t n, float *out,
                          size_t n_chunks, int threads) {
    mel_part parts[64];
    if (threads > 64) threads = 64;
    size_t first = 0;
    for (int t = 0; t < threads; t++) {
        size_t count = n_chunks / (size_t)threads + ((size_t)t < n_chunks % (size_t)threads);
        parts[t] = (mel_part){.m = m, .signal = signal, .n = n, .first = first,
                              .count = count, .out = out};
        first += count;
        if (t > 0 && pthread_create(&parts[t].thread, NULL, mel_part_main, &parts[t]) != 0)
            die("pthread_create", NULL);
    }
    mel_part_main(&parts[0]);
    for (int t = 1; t < threads; t++) pthread_join(parts[t].thread, NULL);
    for (int t = 0; t < threads; t++)
        if (parts[t].rc != 0) die("mel_compute_part", NULL);
}

/* Stage ids: one array of samples each. */
enum {
    S_FLOOR, S_DECODE, S_INDEX, S_WIN1, S_WINN, S_FEATURES, S_MEL, S_MELN, S_INFER_B1,
    S_INFER1, S_INFER, S_CLASSIFY, S_JSON, S_ANSWER, S_SGEMM1, S_SGEMM, S_COUNT
};
static const char *const NAMES[S_COUNT] = {
    "decode_native_ms", "decode_ms", "index_ms", "window_decode_1t_ms",
    "window_decode_ms", "features_ms", "mel_ms", "mel_all_cores_ms",
    "inference_batch1_ms", "inference_1t_ms", "inference_ms", "classify_ms",
    "json_ms", "answer_ms", "sgemm_1t_gflops", "sgemm_gflops"};

static int cmd_stages(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: genred-bench stages MODEL FILE NATIVE_RATE REPS\n");
        return 2;
    }
    const char *model_path = argv[2], *file = argv[3];
    int native_rate = atoi(argv[4]), reps = atoi(argv[5]);
    if (native_rate <= 0 || reps < 1 || reps > MAX_REPS) {
        fprintf(stderr, "genred-bench: bad NATIVE_RATE or REPS\n");
        return 2;
    }
    av_log_set_level(AV_LOG_QUIET);
    audio_limit_libav();
    gr_err err = {0};
    size_t len;
    unsigned char *data = read_file(file, &len);

    config cfg;
    config_defaults(&cfg);
    /* GENRED_* variables apply, as in the daemon (GENRED_MAX_BATCH=8 ...). */
    if (config_load_env(&cfg, &err) != 0 || config_set(&cfg, "model", model_path, &err) != 0)
        die("config", &err);
    /* The FFT plan the daemon has on every start after its first (wisdom,
     * mel.h), before any plan is made. */
    model *m = model_load(model_path, &err);
    if (!m) die("model", &err);
    if (model_features(m)->kind == FEATURE_LOGMEL &&
        mel_wisdom_learn(&model_features(m)->mel, &err) == MEL_WISDOM_FAILED)
        die("wisdom", &err);
    engine *e = engine_create(&cfg, NULL, &err);
    if (!e) die("engine", &err);
    featurizer *fz = featurizer_create(model_features(m), &err);
    if (!fz) die("featurizer", &err);
    const int rate = featurizer_sample_rate(fz);
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const int workers = config_workers(&cfg), max_batch = cfg.max_batch;
    batcher *b = batcher_create(m, workers, max_batch, 4, NULL, &err);
    if (!b) die("batcher", &err);
    model_workspace *ws = model_workspace_create(m, max_batch, &err);
    if (!ws) die("workspace", &err);
    /* What batcher_create() set; restored after each one-thread stage. */
    const int blas_threads = openblas_get_num_threads();

    features_opts fo = features_opts_from_config(&cfg, 1);
    analysis f;
    if (features_compute(fz, &fo, data, len, &f, &err) != 0) die("features", &err);
    const size_t n_chunks = f.n_chunks, in_floats = model_input_floats(m);
    float *probs = malloc(n_chunks * model_output_floats(m) * sizeof *probs);
    float *one_out = malloc((size_t)max_batch * model_output_floats(m) * sizeof *one_out);
    if (!probs || !one_out) die("out of memory", NULL);

    /* The window the trim rule keeps, as features_compute() computes it. */
    audio_source *src;
    if (audio_open(data, len, rate, NULL, &src, &err) != 0) die("audio_open", &err);
    const size_t total = audio_source_samples(src);
    audio_source_close(src);
    const size_t w_first = (size_t)(f.start_s * rate + 0.5);
    const size_t w_count = n_chunks * featurizer_chunk_samples(fz);
    const mel *mp = featurizer_mel(fz);

    static double s[S_COUNT][MAX_REPS], c[S_COUNT][MAX_REPS];
    const classify_opts co = {.trim = 1};
    for (int r = 0; r < reps; r++) {
        audio a;
        double t0 = now_ms(), c0 = cpu_ms();
        if (audio_decode(data, len, native_rate, NULL, &a, &err) != 0) die("decode", &err);
        s[S_FLOOR][r] = now_ms() - t0;
        c[S_FLOOR][r] = cpu_ms() - c0;
        audio_free(&a);

        t0 = now_ms();

        c0 = cpu_ms();
        if (audio_decode(data, len, rate, NULL, &a, &err) != 0) die("decode", &err);
        s[S_DECODE][r] = now_ms() - t0;
        c[S_DECODE][r] = cpu_ms() - c0;
        /* The mel of the window, from this decode. */
        float *chunks = malloc(n_chunks * in_floats * sizeof *chunks);
        if (!chunks) die("out of memory", NULL);
        if (mp) {
            t0 = now_ms();
            c0 = cpu_ms();
            if (mel_compute(mp, a.samples + w_first, a.n_samples - w_first, chunks, n_chunks,
                            &err) != 0)
                die("mel", &err);
            s[S_MEL][r] = now_ms() - t0;
            c[S_MEL][r] = cpu_ms() - c0;
            t0 = now_ms();
            c0 = cpu_ms();
            mel_all_cores(mp, a.samples + w_first, a.n_samples - w_first, chunks, n_chunks,
                          (int)cores);
            s[S_MELN][r] = now_ms() - t0;
            c[S_MELN][r] = cpu_ms() - c0;
        }
        free(chunks);
        audio_free(&a);

        t0 = now_ms();

        c0 = cpu_ms();
        if (audio_open(data, len, rate, NULL, &src, &err) != 0) die("audio_open", &err);
        s[S_INDEX][r] = now_ms() - t0;
        c[S_INDEX][r] = cpu_ms() - c0;
        audio_source_close(src);

        for (int k = 0; k < 2; k++) {
            t0 = now_ms();
            c0 = cpu_ms();
            if (audio_open(data, len, rate, NULL, &src, &err) != 0 ||
                audio_source_decode(src, total ? w_first : 0, total ? w_count : SIZE_MAX,
                                    k ? (int)cores : 1, NULL, &a, &err) != 0)
                die("window decode", &err);
            s[k ? S_WINN : S_WIN1][r] = now_ms() - t0;
            c[k ? S_WINN : S_WIN1][r] = cpu_ms() - c0;
            audio_source_close(src);
            audio_free(&a);
        }

        analysis f2;
        t0 = now_ms();
        c0 = cpu_ms();
        if (features_compute(fz, &fo, data, len, &f2, &err) != 0) die("features", &err);
        s[S_FEATURES][r] = now_ms() - t0;
        c[S_FEATURES][r] = cpu_ms() - c0;
        analysis_free(&f2);

        openblas_set_num_threads(1);
        /* One chunk per model_forward(): what every chunk would cost if no
         * batch ever held more than one (cross-request batching's baseline). */
        t0 = now_ms();
        c0 = cpu_ms();
        for (size_t c = 0; c < n_chunks; c++)
            if (model_forward(m, ws, f.chunks + c * in_floats, 1, one_out, &err) != 0)
                die("model_forward", &err);
        s[S_INFER_B1][r] = now_ms() - t0;
        c[S_INFER_B1][r] = cpu_ms() - c0;
        t0 = now_ms();
        c0 = cpu_ms();
        for (size_t c = 0; c < n_chunks; c += (size_t)max_batch) {
            int nb = n_chunks - c < (size_t)max_batch ? (int)(n_chunks - c) : max_batch;
            if (model_forward(m, ws, f.chunks + c * in_floats, nb, one_out, &err) != 0)
                die("model_forward", &err);
        }
        s[S_INFER1][r] = now_ms() - t0;
        c[S_INFER1][r] = cpu_ms() - c0;
        openblas_set_num_threads(blas_threads);

        t0 = now_ms();

        c0 = cpu_ms();
        if (batcher_submit(b, f.chunks, n_chunks, probs, 0, &err) != 0) die("batcher", &err);
        s[S_INFER][r] = now_ms() - t0;
        c[S_INFER][r] = cpu_ms() - c0;

        t0 = now_ms();

        c0 = cpu_ms();
        json_t *ans = engine_classify(e, data, len, &co, &err);
        s[S_CLASSIFY][r] = now_ms() - t0;
        c[S_CLASSIFY][r] = cpu_ms() - c0;
        if (!ans) die("classify", &err);
        json_t *tm = json_object_get(ans, "timing_ms");
        s[S_ANSWER][r] = json_real_value(json_object_get(tm, "total")) -
                         json_real_value(json_object_get(tm, "decode")) -
                         json_real_value(json_object_get(tm, "features")) -
                         json_real_value(json_object_get(tm, "inference"));
        t0 = now_ms();
        c0 = cpu_ms();
        char *text = json_dumps(ans, JSON_COMPACT | JSON_REAL_PRECISION(7));
        s[S_JSON][r] = now_ms() - t0;
        c[S_JSON][r] = cpu_ms() - c0;
        free(text);
        json_decref(ans);
    }
    /* Peak last: after a multi-threaded sgemm OpenBLAS's pool threads spin
     * for a while, and their CPU time would be billed to whatever stage came
     * next. */
    openblas_set_num_threads(1);
    for (int r = 0; r < reps; r++) s[S_SGEMM1][r] = sgemm_gflops(1024, &c[S_SGEMM1][r]);
    openblas_set_num_threads((int)cores);
    for (int r = 0; r < reps; r++) s[S_SGEMM][r] = sgemm_gflops(1024, &c[S_SGEMM][r]);
    openblas_set_num_threads(blas_threads);

    json_t *out = json_object();
    /* <stage>: median wall time; <stage>_cpu: median CPU time of the
     * process over the stage (all its threads). For sgemm: GFLOP/s by wall
     * time, and by CPU time (per busy core). */
    for (int k = 0; k < S_COUNT; k++) {
        char key[64];
        snprintf(key, sizeof key, "%s_cpu", NAMES[k]);
        json_object_set_new(out, NAMES[k], json_real(median(s[k], reps)));
        json_object_set_new(out, key, json_real(median(c[k], reps)));
    }
    const double gflop = 2.0 * model_macs(m) * (double)n_chunks / 1e9;
    json_object_set_new(out, "cnn_gflop_per_song", json_real(gflop));
    json_object_set_new(out, "cnn_1t_gflops",
                        json_real(gflop / (median(s[S_INFER1], reps) / 1e3)));
    json_object_set_new(out, "cnn_1t_gflops_cpu",
                        json_real(gflop / (median(c[S_INFER1], reps) / 1e3)));
    json_object_set_new(out, "cnn_gflops", json_real(gflop / (median(s[S_INFER], reps) / 1e3)));
    json_object_set_new(out, "chunks", json_integer((json_int_t)n_chunks));
    json_object_set_new(out, "duration_s", json_real(f.duration_s));
    json_object_set_new(out, "cores", json_integer(cores));
    json_object_set_new(out, "workers", json_integer(workers));
    json_object_set_new(out, "blas_threads", json_integer(blas_threads));
    json_object_set_new(out, "max_batch", json_integer(max_batch));
    json_object_set_new(out, "model", json_string(model_name(m)));
    json_object_set_new(out, "reps", json_integer(reps));
    char *text = json_dumps(out, JSON_COMPACT | JSON_REAL_PRECISION(6));
    if (!text) die("out of memory", NULL);
    printf("%s\n", text);
    free(text);
    json_decref(out);

    free(probs);
    free(one_out);
    analysis_free(&f);
    model_workspace_free(ws);
    batcher_destroy(b);
    featurizer_destroy(fz);
    model_free(m);
    engine_destroy(e);
    free(data);
    return 0;
}

/* FFTW planning: the cost of each way to get the plan, and what each plan
 * costs per song in mel_compute(). Works on FFTW's process-wide wisdom
 * directly, which only a benchmark may forget. */
static int cmd_fftw(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: genred-bench fftw MODEL SECONDS REPS\n");
        return 2;
    }
    gr_err err = {0};
    model *m = model_load(argv[2], &err);
    if (!m) die("model", &err);
    const feature_params *fp = model_features(m);
    if (fp->kind != FEATURE_LOGMEL) {
        printf("{}\n");
        model_free(m);
        return 0;
    }
    const mel_params *p = &fp->mel;
    double seconds = atof(argv[3]);
    int reps = atoi(argv[4]);
    if (!(seconds >= 3) || reps < 1 || reps > MAX_REPS) die("bad SECONDS or REPS", NULL);
    size_t n = (size_t)(seconds * p->sample_rate);
    float *x = malloc(n * sizeof *x);
    if (!x) die("out of memory", NULL);
    uint32_t r = 12345;
    for (size_t i = 0; i < n; i++) {
        r = r * 1664525u + 1013904223u;
        x[i] = (float)(r >> 8) / (float)(1u << 24) - 0.5f;
    }

    fftwf_forget_wisdom();
    double t0 = now_ms();
    mel *est = mel_create(p, &err); /* no wisdom: estimated */
    double est_create = now_ms() - t0;
    if (!est || mel_plan_is_measured(est)) die("estimated plan", &err);
    t0 = now_ms();
    if (mel_wisdom_learn(p, &err) != MEL_WISDOM_LEARNED) die("learn", &err);
    double learn = now_ms() - t0;
    char *wisdom = fftwf_export_wisdom_to_string();
    fftwf_forget_wisdom();
    t0 = now_ms();
    if (!wisdom || !fftwf_import_wisdom_from_string(wisdom)) die("wisdom", NULL);
    mel *meas = mel_create(p, &err);
    double meas_create = now_ms() - t0;
    if (!meas || !mel_plan_is_measured(meas)) die("measured plan", &err);
    free(wisdom);

    size_t chunks = mel_chunk_count(meas, n);
    float *out = malloc(chunks * mel_chunk_floats(meas) * sizeof *out);
    if (!out) die("out of memory", NULL);
    static double te[MAX_REPS], tm[MAX_REPS];
    /* One thread: CPU time is the stage's own cost, whatever the load. */
    for (int k = 0; k < reps; k++) {
        t0 = cpu_ms();
        if (mel_compute(est, x, n, out, chunks, &err) != 0) die("mel", &err);
        te[k] = cpu_ms() - t0;
        t0 = cpu_ms();
        if (mel_compute(meas, x, n, out, chunks, &err) != 0) die("mel", &err);
        tm[k] = cpu_ms() - t0;
    }
    printf("{\"estimate_create_ms\":%.3f,\"measure_learn_ms\":%.3f,"
           "\"wisdom_create_ms\":%.3f,\"mel_estimated_ms\":%.3f,\"mel_measured_ms\":%.3f,"
           "\"chunks\":%zu}\n",
           est_create, learn, meas_create, median(te, reps), median(tm, reps), chunks);
    free(out);
    free(x);
    mel_destroy(est);
    mel_destroy(meas);
    model_free(m);
    return 0;
}

/* Per-op CPU time of model_forward() on one thread: each op's share of a
 * chunk, from REPS batches of BATCH chunks of FILE's log-mel (the first
 * chunks of the song, repeated if it has fewer). */
static int cmd_layers(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: genred-bench layers MODEL FILE BATCH REPS\n");
        return 2;
    }
    int batch = atoi(argv[4]), reps = atoi(argv[5]);
    if (batch < 1 || batch > 256 || reps < 1 || reps > 10000) die("BATCH or REPS", NULL);
    gr_err err = {0};
    model *m = model_load(argv[2], &err);
    if (!m) die("model", &err);
    featurizer *fz = featurizer_create(model_features(m), &err);
    if (!fz) die("features", &err);
    config cfg;
    config_defaults(&cfg);
    size_t len;
    unsigned char *data = read_file(argv[3], &len);
    features_opts fo = features_opts_from_config(&cfg, 1);
    analysis f;
    if (features_compute(fz, &fo, data, len, &f, &err) != 0) die("features", &err);
    const size_t item = model_input_floats(m);
    float *in = malloc((size_t)batch * item * sizeof *in);
    float *out = malloc((size_t)batch * model_output_floats(m) * sizeof *out);
    int n_ops = model_op_count(m);
    double *sec = calloc((size_t)n_ops, sizeof *sec);
    if (!in || !out || !sec) die("out of memory", NULL);
    for (int b = 0; b < batch; b++)
        memcpy(in + (size_t)b * item, f.chunks + (size_t)b % f.n_chunks * item, item * sizeof *in);
    openblas_set_num_threads(1);
    model_workspace *ws = model_workspace_create(m, batch, &err);
    if (!ws) die("workspace", &err);
    if (model_forward(m, ws, in, batch, out, &err) != 0) die("forward", &err); /* warm-up */
    model_workspace_profile(ws, sec);
    double c0 = cpu_ms();
    for (int r = 0; r < reps; r++)
        if (model_forward(m, ws, in, batch, out, &err) != 0) die("forward", &err);
    double total = (cpu_ms() - c0) / ((double)reps * batch);
    json_t *ops = json_array();
    for (int i = 0; i < n_ops; i++) {
        char label[160];
        model_op_label(m, i, label, sizeof label);
        json_array_append_new(ops, json_pack("{s:s, s:f}", "op", label, "ms_per_chunk",
                                             sec[i] * 1e3 / ((double)reps * batch)));
    }
    json_t *o = json_pack("{s:i, s:f, s:f, s:o}", "batch", batch, "ms_per_chunk", total,
                          "mflops_per_chunk", 2.0 * model_macs(m) / 1e6, "ops", ops);
    char *text = json_dumps(o, JSON_INDENT(1));
    printf("%s\n", text);
    free(text);
    json_decref(o);
    model_workspace_free(ws);
    free(sec);
    free(in);
    free(out);
    analysis_free(&f);
    free(data);
    featurizer_destroy(fz);
    model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "stages") == 0) return cmd_stages(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "fftw") == 0) return cmd_fftw(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "layers") == 0) return cmd_layers(argc, argv);
    fprintf(stderr, "usage: genred-bench stages MODEL FILE NATIVE_RATE REPS\n"
                    "       genred-bench fftw MODEL SECONDS REPS\n"
                    "       genred-bench layers MODEL FILE BATCH REPS\n");
    return 2;
}
