/* main.c - the genred binary: serve, classify, features.
 *
 *   genred serve [--config FILE] [--KEY VALUE ...]
 *   genred classify [--config FILE] [--trim 0|1] [--segments 0|1] [--embedding 0|1]
 *                   [--jobs N] [--output FILE] [--files-from LIST] [--shard K/N] FILE...
 *   genred features [--config FILE] [--trim 0|1] [--params FILE]
 *                   [--chunk-hop SECONDS] [--values NAME,...] FILE -o OUT.npy
 *   genred --check-config FILE
 *
 * Settings come in layers: defaults, the conf file (--config or
 * $GENRED_CONFIG; for the binary run from its build folder, the checkout's),
 * GENRED_* environment variables, then flags. This is the only file with
 * process-wide concerns: signals, exit codes, stdout, libav's globals. */
#include <errno.h>
#include <libavutil/log.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "genred/audio.h"
#include "genred/catalogue.h"
#include "genred/clock.h"
#include "genred/config.h"
#include "genred/engine.h"
#include "genred/features.h"
#include "genred/fileio.h"
#include "genred/http.h"
#include "genred/metrics.h"
#include "genred/npy.h"
#include "genred/version.h"

#ifdef HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

/* Tells the service manager what the daemon is doing (genred.service is
 * Type=notify): READY=1, STOPPING=1, RELOADING=1. Without libsystemd at build
 * time, or outside a notify service ($NOTIFY_SOCKET unset), it does nothing. */
static void notify_service(const char *state) {
#ifdef HAVE_LIBSYSTEMD
    sd_notify(0, state);
#else
    (void)state;
#endif
}

static void usage(FILE *f) {
    fprintf(f,
            "genred %s - music genre classification daemon\n\n"
            "usage:\n"
            "  genred serve [--config FILE] [--KEY VALUE ...]   run the HTTP daemon\n"
            "  genred classify [OPTIONS] FILE...                 classify files, one JSON line each\n"
            "  genred features [OPTIONS] FILE -o OUT.npy         write the model input chunks\n"
            "  genred --check-config FILE                        validate and print a config\n"
            "  genred --version | --help\n\n"
            "options:\n"
            "  --config FILE      conf file (default: $GENRED_CONFIG, else none; run from\n"
            "                     its build folder, the checkout's conf/genred.conf)\n"
            "  --trim 0|1         classify/features: apply the trim rule (default 1)\n"
            "  --segments 0|1     classify: add the per-chunk timeline (default 0)\n"
            "  --embedding 0|1    classify: add the song's embedding, with a model that has\n"
            "                     one (default 0)\n"
            "  --max-chunks N     classify: analyse at most N chunks per song, spread\n"
            "                     evenly (a conf key; default 0 = all)\n"
            "  --jobs N           classify: songs in flight (default: cores + 1)\n"
            "  -o, --output FILE  classify: append the lines to FILE, skipping the files\n"
            "                     it has lines for (resume); features: the .npy to write\n"
            "  --files-from LIST  classify: also the files named in LIST ('-': stdin),\n"
            "                     NUL-separated if it holds a NUL, else one per line\n"
            "  --shard K/N        classify: only shard K of N (0 <= K < N), by name\n"
            "  --params FILE      features: feature parameters (JSON) instead of the model's\n"
            "  --chunk-hop S      features: start a chunk every S seconds (default: one\n"
            "                     chunk length, as the daemon does); for training data\n"
            "  --values A,B       features: run the model and write these named layer\n"
            "                     outputs per chunk instead (e.g. embedding,audioset_logits)\n"

            "  --KEY VALUE        any key of conf/genred.conf, e.g. --port 8080 --workers 2\n",
            GENRED_VERSION);
}

typedef struct cli {
    const char *config_path;
    const char *config_from;   /* how config_path was chosen, for messages */
    const char *model_from;    /* which layer set cfg->model, for messages */
    int checkout;              /* this genred runs from its build folder */
    const char *out_path;      /* -o/--output */
    const char *params_path;
    const char *files_from;  /* classify: --files-from */
    const char *values;   /* features only: named layer outputs to write */
    double chunk_hop_s;   /* features only; 0 = back-to-back chunks */
    int trim, segments, embedding;
    int jobs;             /* classify: 0 = catalogue_default_jobs() */
    unsigned shard, shards; /* classify: --shard K/N; shards 0 = all */
    int nfiles;
    char **files;
} cli;

/* A whole decimal number in [lo, hi]. */
static int parse_uint_in(const char *v, unsigned long lo, unsigned long hi, unsigned long *out) {
    char *end;
    if (*v < '0' || *v > '9') return -1;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (errno || *end || n < lo || n > hi) return -1;
    *out = n;
    return 0;
}

static int parse_flag01(const char *name, const char *v, int *out) {
    if (strcmp(v, "0") == 0) *out = 0;
    else if (strcmp(v, "1") == 0) *out = 1;
    else {
        fprintf(stderr, "genred: %s expects 0 or 1, got '%s'\n", name, v);
        return -1;
    }
    return 0;
}

/* 1 when this binary is the one meson built, run from its build folder
 * (meson.build passes the folder): then it is a checkout's, which reads
 * the checkout's conf file and model by default. An installed copy (or any
 * other) lives elsewhere and keeps to its prefix. */
static int runs_from_build_folder(void) {
#ifdef GENRED_BUILD_ROOT
    char exe[PATH_MAX], here[PATH_MAX], build[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return 0;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) return 0;
    *slash = '\0';
    return realpath(exe[0] ? exe : "/", here) && realpath(GENRED_BUILD_ROOT, build) &&
           strcmp(here, build) == 0;
#else
    return 0;
#endif
}

/* Loads config layers and parses the command's arguments. Flags may be
 * --key=value or --key value. */
static int load_settings(int argc, char **argv, config *cfg, cli *o) {
    memset(o, 0, sizeof *o);
    o->trim = 1;
    o->files = calloc((size_t)argc + 1, sizeof *o->files);
    if (!o->files) {
        fprintf(stderr, "genred: out of memory\n");
        return -1;
    }
    config_defaults(cfg);
    gr_err err = {0};
    o->model_from = "is the built-in default of a genred installed under its prefix";
#ifdef GENRED_CHECKOUT_MODEL
    o->checkout = runs_from_build_folder();
    if (o->checkout) {
        if (config_set(cfg, "model", GENRED_CHECKOUT_MODEL, &err) != 0) goto bad;
        o->model_from = "is the default of a genred run from its build folder";
    }
#endif

    /* The conf file comes first whatever its position among the flags, so
     * that flags override it. */
    o->config_path = getenv("GENRED_CONFIG");
    o->config_from = "$GENRED_CONFIG";
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            o->config_path = argv[i + 1], o->config_from = "--config";
        else if (strncmp(argv[i], "--config=", 9) == 0)
            o->config_path = argv[i] + 9, o->config_from = "--config";
    }
#ifdef GENRED_CHECKOUT_CONF
    if (!o->config_path && o->checkout && access(GENRED_CHECKOUT_CONF, F_OK) == 0) {
        o->config_path = GENRED_CHECKOUT_CONF;
        o->config_from = "the checkout's, read by a genred run from its build folder";
    }
#endif
    char model[sizeof cfg->model];
    memcpy(model, cfg->model, sizeof model);
    if (o->config_path && config_load_file(cfg, o->config_path, &err) != 0) goto bad;
    if (strcmp(model, cfg->model) != 0) o->model_from = "comes from the conf file's model line";
    memcpy(model, cfg->model, sizeof model);
    if (config_load_env(cfg, &err) != 0) goto bad;
    if (strcmp(model, cfg->model) != 0) o->model_from = "comes from GENRED_MODEL";
    memcpy(model, cfg->model, sizeof model);

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || strcmp(a, "-") == 0) {
            if (strcmp(a, "-o") == 0) {
                if (++i >= argc) {
                    fprintf(stderr, "genred: -o needs a file name\n");
                    return -1;
                }
                o->out_path = argv[i];
            } else {
                o->files[o->nfiles++] = argv[i];
            }
            continue;
        }
        char key[128];
        const char *value;
        const char *eq = strchr(a + 2, '=');
        size_t klen = eq ? (size_t)(eq - (a + 2)) : strlen(a + 2);
        if (klen >= sizeof key) {
            fprintf(stderr, "genred: option too long: %s\n", a);
            return -1;
        }
        memcpy(key, a + 2, klen);
        key[klen] = '\0';
        if (eq) {
            value = eq + 1;
        } else {
            if (i + 1 >= argc) {
                fprintf(stderr, "genred: option --%s needs a value\n", key);
                return -1;
            }
            value = argv[++i];
        }
        if (strcmp(key, "config") == 0) continue; /* applied above */
        unsigned long n, k;
        char *slash;
        if (strcmp(key, "params") == 0) o->params_path = value;
        else if (strcmp(key, "output") == 0) o->out_path = value;
        else if (strcmp(key, "values") == 0) o->values = value;
        else if (strcmp(key, "files-from") == 0) o->files_from = value;
        else if (strcmp(key, "jobs") == 0) {
            if (parse_uint_in(value, 1, 1024, &n) != 0) {
                fprintf(stderr, "genred: --jobs expects 1..1024, got '%s'\n", value);
                return -1;
            }
            o->jobs = (int)n;
        } else if (strcmp(key, "shard") == 0) {
            char kbuf[32];
            slash = strchr(value, '/');
            if (!slash || (size_t)(slash - value) >= sizeof kbuf) slash = NULL;
            else {
                memcpy(kbuf, value, (size_t)(slash - value));
                kbuf[slash - value] = '\0';
            }
            if (!slash || parse_uint_in(slash + 1, 1, 1000000, &n) != 0 ||
                parse_uint_in(kbuf, 0, n - 1, &k) != 0) {
                fprintf(stderr, "genred: --shard expects K/N with 0 <= K < N, got '%s'\n",
                        value);
                return -1;
            }
            o->shard = (unsigned)k;
            o->shards = (unsigned)n;
        }
        else if (strcmp(key, "chunk-hop") == 0) {
            char *end;
            o->chunk_hop_s = strtod(value, &end);
            if (end == value || *end || !(o->chunk_hop_s > 0 && o->chunk_hop_s <= 3600)) {
                fprintf(stderr, "genred: --chunk-hop expects seconds > 0, got '%s'\n", value);
                return -1;
            }
        }
        else if (strcmp(key, "trim") == 0) {
            if (parse_flag01("--trim", value, &o->trim) != 0) return -1;
        } else if (strcmp(key, "segments") == 0) {
            if (parse_flag01("--segments", value, &o->segments) != 0) return -1;
        } else if (strcmp(key, "embedding") == 0) {
            if (parse_flag01("--embedding", value, &o->embedding) != 0) return -1;
        } else if (config_set(cfg, key, value, &err) != 0) {
            goto bad;
        }
    }
    if (strcmp(model, cfg->model) != 0) o->model_from = "comes from --model";
    if (config_validate(cfg, &err) != 0) goto bad;
    return 0;
bad:
    fprintf(stderr, "genred: %s\n", err.msg);
    return -1;
}

/* Before anything loads it: the model must open, or the error says where
 * its path came from and what was looked at, since a wrong default is the
 * first thing a new user meets. */
static int model_opens(const config *cfg, const cli *o) {
    FILE *f = fopen(cfg->model, "rb");
    if (f) {
        fclose(f);
        return 1;
    }
    int e = errno;
    fprintf(stderr, "genred: cannot open the model %s: %s\n", cfg->model, strerror(e));
    if (o->config_path)
        fprintf(stderr, "genred: tried the conf file %s (%s); the model path %s\n",
                o->config_path, o->config_from, o->model_from);
    else
        fprintf(stderr, "genred: tried no conf file (none named by --config or "
                        "$GENRED_CONFIG%s); the model path %s\n",
#ifdef GENRED_CHECKOUT_CONF
                o->checkout ? ", and the checkout's " GENRED_CHECKOUT_CONF " is missing" : "",
#else
                "",
#endif
                o->model_from);
    fprintf(stderr, "genred: name the model with --model PATH, GENRED_MODEL=PATH or "
                    "`model = PATH` in a conf file\n");
    return 0;
}

/* Reads a file for classify/features, enforcing the upload limit so the
 * offline path refuses what the daemon would refuse. */
static unsigned char *load_input(const char *path, const config *cfg, size_t *len,
                                 gr_err *err) {
    return file_read(path, cfg->max_upload_bytes, GR_ETOOBIG, len, err);
}

/* Every file named on the command line and in --files-from, through the
 * catalogue (catalogue.h): one line each, several songs at once. Exit
 * status: 0 every file answered, 1 some error lines, 3 the run stopped (the
 * list or the output could not be read or written). */
static int cmd_classify(engine *e, const config *cfg, const cli *o) {
    gr_err err = {0};
    char **listed = NULL;
    size_t n_listed = 0;
    if (o->files_from && catalogue_read_list(o->files_from, &listed, &n_listed, &err) != 0) {
        fprintf(stderr, "genred: %s\n", err.msg);
        return 3;
    }
    char **files = malloc(((size_t)o->nfiles + n_listed + 1) * sizeof *files);
    if (!files) {
        catalogue_list_free(listed, n_listed);
        fprintf(stderr, "genred: out of memory\n");
        return 3;
    }
    memcpy(files, o->files, (size_t)o->nfiles * sizeof *files);
    if (n_listed) memcpy(files + o->nfiles, listed, n_listed * sizeof *files);
    catalogue_opts co = {
        .classify = {.trim = o->trim, .segments = o->segments, .embedding = o->embedding,
                     .max_chunks = cfg->max_chunks},
        .max_upload_bytes = cfg->max_upload_bytes,
        .jobs = o->jobs,
        .output = o->out_path,
        .shard = o->shard,
        .shards = o->shards,
        .progress = isatty(STDERR_FILENO),
    };
    catalogue_counts c;
    int rc = catalogue_run(e, files, (size_t)o->nfiles + n_listed, &co, &c, &err);
    free(files);
    catalogue_list_free(listed, n_listed);
    if (rc != 0) {
        fprintf(stderr, "genred: %s\n", err.msg);
        return 3;
    }
    return c.failed ? 1 : 0;
}

/* ---- FFTW wisdom (mel.h) ------------------------------------------------ */

/* The wisdom file: fftw_wisdom, or the user's cache directory. */
static int wisdom_path(const config *cfg, char *out, size_t n) {
    const char *d;
    int w;
    if (cfg->fftw_wisdom[0])
        w = snprintf(out, n, "%s", cfg->fftw_wisdom);
    else if ((d = getenv("CACHE_DIRECTORY")) && *d == '/') /* systemd: a ':' list */
        w = snprintf(out, n, "%.*s/fftw-wisdom", (int)strcspn(d, ":"), d);
    else if ((d = getenv("XDG_CACHE_HOME")) && *d == '/')
        w = snprintf(out, n, "%s/genred/fftw-wisdom", d);
    else if ((d = getenv("HOME")) && *d == '/')
        w = snprintf(out, n, "%s/.cache/genred/fftw-wisdom", d);
    else
        return -1;
    return w > 0 && (size_t)w < n ? 0 : -1;
}

static void wisdom_log(const config *cfg, const char *status, const char *path,
                       const char *error) {
    if (!error && cfg->log_level < LOG_LEVEL_INFO) return;
    json_t *line = json_pack("{s:s,s:s,s:s}", "event", "fftw_wisdom", "status", status,
                             "path", path);
    if (line && error) json_object_set_new(line, "error", json_string(error));
    char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
    if (text) fprintf(stderr, "%s\n", text);
    free(text);
    json_decref(line);
}

/* Before any plan is made: what earlier runs measured. A missing file is
 * the normal first start; an unreadable one is reported and ignored. */
static void wisdom_load(const config *cfg) {
    char path[4200];
    gr_err err = {0};
    if (wisdom_path(cfg, path, sizeof path) == 0 &&
        mel_wisdom_load(path, &err) == MEL_WISDOM_FAILED)
        wisdom_log(cfg, "ignored", path, err.msg);
}

/* Measures the plan p needs if the wisdom lacks it, and keeps it for the
 * next start, but only where it can be kept: measuring costs ~0.2 s, which
 * a start that cannot save would pay again every time. */
static void wisdom_learn(const config *cfg, const feature_params *fp) {
    char path[4200];
    gr_err err = {0};
    if (fp->kind != FEATURE_LOGMEL || wisdom_path(cfg, path, sizeof path) != 0 ||
        mel_wisdom_has(&fp->mel))
        return;
    mel_wisdom_result kept = mel_wisdom_save(path, &err); /* can it be kept at all? */
    if (kept == MEL_WISDOM_SAVED && mel_wisdom_learn(&fp->mel, &err) == MEL_WISDOM_LEARNED &&
        mel_wisdom_save(path, &err) == MEL_WISDOM_SAVED)
        wisdom_log(cfg, "saved", path, NULL);
    else if (kept != MEL_WISDOM_NOT_KEPT)
        wisdom_log(cfg, "not saved", path, err.msg);
}

/* The current model's features, from its description. */
static void wisdom_learn_model(const config *cfg, engine *e) {
    json_t *d = engine_describe_model(e);
    feature_params fp;
    if (d && model_parse_features(json_object_get(d, "features"), &fp, NULL) == 0)
        wisdom_learn(cfg, &fp);
    json_decref(d);
}

/* Feature parameters for `genred features`: a params file (training uses
 * this before any model exists) or the model's own. */
static featurizer *features_featurizer(const config *cfg, const cli *o, gr_err *err) {
    feature_params p;
    if (o->params_path) {
        json_error_t jerr;
        json_t *j = json_load_file(o->params_path, 0, &jerr);
        if (!j) {
            gr_fail(err, GR_EFILE, "%s:%d: %s", o->params_path, jerr.line, jerr.text);
            return NULL;
        }
        int rc = model_parse_features(j, &p, err);
        json_decref(j);
        if (rc != 0) return NULL;
    } else {
        if (!model_opens(cfg, o)) {
            gr_fail(err, GR_EFILE, "no model to take the feature parameters from "
                                   "(--params FILE gives them without one)");
            return NULL;
        }
        model *m = model_load(cfg->model, err);
        if (!m) return NULL;
        p = *model_features(m);
        model_free(m);
    }
    return featurizer_create(&p, err);
}

/* `features --values`: runs the model over the chunks and writes the named
 * values side by side, [chunks, width], into *out (malloc'd, the caller's). */
static int model_values(const config *cfg, const char *names, const analysis *f, float **out,
                        size_t *width, gr_err *err) {
    model *m = model_load(cfg->model, err);
    if (!m) return -1;
    size_t off[16], w[16], n = 0, total = 0;
    char list[1024];
    int rc = -1;
    model_workspace *ws = NULL;
    float *rows = NULL;
    *out = NULL;
    if (snprintf(list, sizeof list, "%s", names) >= (int)sizeof list) {
        gr_fail(err, GR_ECONFIG, "--values: list too long");
        goto done;
    }
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == 16 || model_export(m, tok, &off[n], &w[n], err) != 0) {
            if (n == 16) gr_fail(err, GR_ECONFIG, "--values: at most 16 names");
            goto done;
        }
        total += w[n++];
    }
    if (n == 0) {
        gr_fail(err, GR_ECONFIG, "--values: no name given");
        goto done;
    }
    int batch = cfg->max_batch;
    size_t row = model_output_floats(m), item = model_input_floats(m);
    ws = model_workspace_create(m, batch, err);
    rows = malloc((size_t)batch * row * sizeof *rows);
    *out = malloc((f->n_chunks ? f->n_chunks : 1) * total * sizeof **out);
    if (!ws || !rows || !*out) {
        if (ws) gr_fail(err, GR_EINTERNAL, "out of memory");
        goto done;
    }
    for (size_t c = 0; c < f->n_chunks; c += (size_t)batch) {
        int b = f->n_chunks - c < (size_t)batch ? (int)(f->n_chunks - c) : batch;
        if (model_forward(m, ws, f->chunks + c * item, b, rows, err) != 0) goto done;
        for (int i = 0; i < b; i++) {
            float *dst = *out + (c + (size_t)i) * total;
            for (size_t k = 0; k < n; k++, dst += w[k - 1])
                memcpy(dst, rows + (size_t)i * row + off[k], w[k] * sizeof *dst);
        }
    }
    *width = total;
    rc = 0;
done:
    if (rc != 0) {
        free(*out);
        *out = NULL;
    }
    free(rows);
    model_workspace_free(ws);
    model_free(m);
    return rc;
}

static int cmd_features(const config *cfg, const cli *o) {
    if (o->nfiles != 1 || !o->out_path) {
        fprintf(stderr, "genred: usage: genred features [--trim 0|1] [--params FILE.json] "
                        "[--chunk-hop SECONDS] [--values NAME,...] FILE -o OUT.npy\n");
        return 2;
    }
    gr_err err = {0};
    analysis f = {0};
    size_t len;
    unsigned char *data = NULL;
    featurizer *fz = features_featurizer(cfg, o, &err);
    if (!fz) goto bad;
    wisdom_learn(cfg, featurizer_params(fz));
    data = load_input(o->files[0], cfg, &len, &err);
    if (!data) goto bad;
    features_opts fo = features_opts_from_config(cfg, o->trim);
    fo.chunk_hop_s = o->chunk_hop_s;
    if (features_compute(fz, &fo, data, len, &f, &err) != 0) goto bad;
    if (o->values) {
        float *v;
        size_t width, vshape[2] = {f.n_chunks, 0};
        if (o->params_path) {
            gr_fail(&err, GR_ECONFIG, "--values runs the model: it takes no --params");
            goto bad;
        }
        if (model_values(cfg, o->values, &f, &v, &width, &err) != 0) goto bad;
        vshape[1] = width;
        int rc = npy_write(o->out_path, v, vshape, 2, &err);
        free(v);
        if (rc != 0) goto bad;
        analysis_free(&f);
        free(data);
        featurizer_destroy(fz);
        return 0;
    }
    /* [chunks, n_mels, frames] for log-mel, [chunks, values] for waveform. */
    const feature_params *fp = featurizer_params(fz);
    size_t shape[3] = {f.n_chunks, 0, 0};
    int ndim = 2;
    if (fp->kind == FEATURE_LOGMEL) {
        shape[1] = (size_t)fp->mel.n_mels;
        shape[2] = (size_t)fp->mel.chunk_frames;
        ndim = 3;
    } else {
        shape[1] = (size_t)fp->waveform.values;
    }
    if (npy_write(o->out_path, f.chunks, shape, ndim, &err) != 0) goto bad;
    analysis_free(&f);
    free(data);
    featurizer_destroy(fz);
    return 0;
bad:
    fprintf(stderr, "genred: %s\n", err.msg);
    analysis_free(&f);
    free(data);
    featurizer_destroy(fz);
    return 1;
}

/* The signals serve waits for. They are blocked in main() before genred
 * starts a thread (the batcher, the server), so every such thread inherits
 * the mask and only the sigwait() in cmd_serve() sees them. */
static void serve_signals(sigset_t *set) {
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

/* The thread that sigwait()s in cmd_serve(). */
static pthread_t signal_thread;

/* Threads started before main() (OpenBLAS starts its pool in a library
 * constructor) do not block the serve signals, so while the main thread is
 * outside sigwait() (reloading, or between two signals) the kernel may hand
 * a SIGTERM or SIGHUP to one of them, whose default action kills the
 * process. This handler, run there, passes the signal on to the main thread,
 * where it stays pending until sigwait() takes it. */
static void forward_signal(int sig) {
    int saved = errno;
    pthread_kill(signal_thread, sig);
    errno = saved;
}

static void forward_serve_signals(void) {
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    sigfillset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    signal_thread = pthread_self();
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
}

/* Writes one JSON log line to stderr and frees it. */
static void log_event(json_t *line) {
    char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
    if (text) fprintf(stderr, "%s\n", text);
    else fprintf(stderr, "{\"event\":\"log\",\"error\":\"out of memory\"}\n");
    free(text);
    json_decref(line);
}

/* SIGHUP: the model file and the API key file, each at its configured path.
 * Each is swapped in only if it loads; otherwise the old one keeps serving
 * and the refusal is logged (its message names the file, never a key). */
static void reload(engine *e, server *s, const config *cfg) {
    notify_service("RELOADING=1");
    gr_err err = {0};
    double t0 = monotonic_now();
    if (engine_reload(e, &err) == 0) {
        json_t *d = engine_describe_model(e);
        log_event(json_pack("{s:s,s:s,s:s,s:s?,s:s?,s:f}", "event", "reload", "what", "model",
                            "status", "ok", "name",
                            json_string_value(json_object_get(d, "name")), "version",
                            json_string_value(json_object_get(d, "version")), "duration_ms",
                            (monotonic_now() - t0) * 1e3));
        json_decref(d);
    } else {
        log_event(json_pack("{s:s,s:s,s:s,s:s,s:s}", "event", "reload", "what", "model",
                            "status", "refused", "path", cfg->model, "error", err.msg));
    }
    if (cfg->api_keys_file[0]) {
        if (server_reload_keys(s, &err) == 0)
            log_event(json_pack("{s:s,s:s,s:s}", "event", "reload", "what", "api_keys",
                                "status", "ok"));
        else
            log_event(json_pack("{s:s,s:s,s:s,s:s}", "event", "reload", "what", "api_keys",
                                "status", "refused", "error", err.msg));
    }
    notify_service("READY=1");
}

static int cmd_serve(engine *e, metrics *met, const config *cfg) {
    sigset_t set;
    serve_signals(&set);
    gr_err err = {0};
    server *s = server_start(cfg, e, met, &err);
    if (!s) {
        fprintf(stderr, "genred: %s\n", err.msg);
        return 1;
    }
    /* The ops line first: whoever waits for "listening on" has both. */
    const char *scheme = cfg->tls_cert_file[0] ? "https" : "http";
    const char *lb = strchr(cfg->listen, ':') ? "[" : "", *rb = *lb ? "]" : "";
    if (server_ops_port(s) >= 0)
        printf("genred: ops listening on %s://%s%s%s:%d\n", scheme, lb, cfg->listen, rb,
               server_ops_port(s));
    printf("genred: listening on %s://%s%s%s:%d\n", scheme, lb, cfg->listen, rb, server_port(s));
    fflush(stdout);
    /* The model is loaded (engine_create) and the port bound: ready. */
    notify_service("READY=1");
    /* Requests are answered already; a missing FFT plan is measured now,
     * for the next start (mel.h). */
    wisdom_learn_model(cfg, e);

    int sig = 0;
    for (;;) {
        if (sigwait(&set, &sig) != 0) continue;
        if (sig != SIGHUP) break;
        reload(e, s, cfg);
    }
    log_event(json_pack("{s:s,s:i,s:f}", "event", "shutdown", "signal", sig,
                        "timeout_s", cfg->shutdown_timeout_s));
    notify_service("STOPPING=1");
    int cut = server_stop(s);
    log_event(json_pack("{s:s,s:i}", "event", "stopped", "requests_cancelled", cut));
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("genred %s\n", GENRED_VERSION);
        return 0;
    }

    config cfg;
    cli o;
    if (strcmp(cmd, "--check-config") == 0) {
        if (argc != 3) {
            fprintf(stderr, "genred: usage: genred --check-config FILE\n");
            return 2;
        }
        char *args[] = {"--config", argv[2]};
        if (load_settings(2, args, &cfg, &o) != 0) return 1;
        free(o.files);
        config_print(&cfg, stdout);
        return 0;
    }
    int is_serve = strcmp(cmd, "serve") == 0;
    int is_classify = strcmp(cmd, "classify") == 0;
    int is_features = strcmp(cmd, "features") == 0;
    if (!is_serve && !is_classify && !is_features) {
        fprintf(stderr, "genred: unknown command '%s'\n\n", cmd);
        usage(stderr);
        return 2;
    }
    /* `genred classify --help` is what a user types first; it must not be
     * read as the option "help" missing its value. The scan steps over
     * option values the way load_settings reads them, so `-o -h` names a
     * file and does not ask for help. */
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "-o") == 0 || (strncmp(a, "--", 2) == 0 && !strchr(a, '=')))
            i++;
    }
    if (load_settings(argc - 2, argv + 2, &cfg, &o) != 0) {
        free(o.files);
        return 2;
    }
    if (is_serve && o.nfiles) {
        fprintf(stderr, "genred: serve takes no file arguments\n");
        free(o.files);
        return 2;
    }
    if (is_classify && o.nfiles == 0 && !o.files_from) {
        fprintf(stderr, "genred: classify needs at least one file (or --files-from)\n");
        free(o.files);
        return 2;
    }

    av_log_set_level(cfg.log_level >= LOG_LEVEL_DEBUG ? AV_LOG_WARNING : AV_LOG_QUIET);
    audio_limit_libav();
    wisdom_load(&cfg);
    if (is_features) {
        int rc = cmd_features(&cfg, &o);
        free(o.files);
        return rc;
    }
    if (!is_serve) { /* offline: never refuse, never give up */
        cfg.max_active_requests = 65536; /* the batcher's queue: never full */
        cfg.request_timeout_s = 0;
    }

    if (is_serve) {
        sigset_t set;
        serve_signals(&set);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        forward_serve_signals();
        signal(SIGPIPE, SIG_IGN);
        /* Uploads, decoded audio and features (MBs each) are malloc'd and
         * freed on connection threads, which glibc spreads over up to 8
         * arenas per core. Its default mmap threshold rises to the size of
         * the largest such buffer freed (up to 32 MB), after which they come
         * from the arenas, and each arena keeps what was freed: under load
         * VmRSS grew from 120 to 190 MB with nothing in use (tests/soak.py).
         * A fixed threshold keeps big buffers mmap'd, so free() returns them.
         * Fixing it also freezes the trim threshold at 128 KB, and then every
         * request gave its heap top back and faulted it in again: 5.4-5.7 ms
         * of CPU per 3.5 s clip against 4.7-4.9 with 2 MB, for an idle RSS
         * ~10 MB higher and no drift in the soak (docs/performance.md). */
        mallopt(M_MMAP_THRESHOLD, 256 * 1024);
        mallopt(M_TRIM_THRESHOLD, 2 * 1024 * 1024);
    }
    if (!model_opens(&cfg, &o)) {
        free(o.files);
        return 1;
    }
    gr_err err = {0};
    metrics *met = is_serve ? metrics_create(&err) : NULL;
    if (is_serve && !met) {
        fprintf(stderr, "genred: %s\n", err.msg);
        free(o.files);
        return 1;
    }
    engine *e = engine_create(&cfg, met, &err);
    if (!e) {
        fprintf(stderr, "genred: %s\n", err.msg);
        metrics_free(met);
        free(o.files);
        return is_classify ? 3 : 1; /* classify: 1 means some files failed */
    }
    if (!is_serve) wisdom_learn_model(&cfg, e); /* serve: once it is ready */
    int rc = is_serve ? cmd_serve(e, met, &cfg) : cmd_classify(e, &cfg, &o);
    engine_destroy(e);
    metrics_free(met);
    free(o.files);
    return rc;
}
