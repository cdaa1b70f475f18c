/* catalogue.c - many files through one engine, several songs at once, into
 * JSON lines in the list's order; resumable, shardable (catalogue.h).
 *
 * The work list is settled before any classification starts: the list
 * less repeated names, other shards' files and those the output already
 * holds. Worker threads then take files in order; each result goes into a
 * window slot, and whoever fills the slot of the first file not yet written
 * writes every line that is ready from there on, under the lock, so lines
 * leave in order and one write(2) each.
 *
 * What it does not do: classify (engine.c), find files (classify-folder). */
#include "genred/catalogue.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "genred/clock.h"
#include "genred/fileio.h"
#include "genred/jsontext.h"

/* Files a song may run ahead of the first line not yet written, per job. */
enum { WINDOW_PER_JOB = 16 };
/* The progress line is redrawn at most this often, in seconds. */
#define PROGRESS_PERIOD_S 0.1

int catalogue_default_jobs(void) {
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    return cores > 255 ? 256 : (int)cores + 1;
}

/* ---- lists and names --------------------------------------------------- */

void catalogue_list_free(char **files, size_t n) {
    if (!files) return;
    for (size_t i = 0; i < n; i++) free(files[i]);
    free(files);
}

int catalogue_read_list(const char *path, char ***files, size_t *n, gr_err *err) {
    *files = NULL;
    *n = 0;
    size_t len;
    /* file_read() reads /dev/stdin like any file (a pipe grows its buffer). */
    const char *from = strcmp(path, "-") == 0 ? "/dev/stdin" : path;
    char *text = (char *)file_read(from, SIZE_MAX / 2, GR_EFILE, &len, err);
    if (!text) return -1;
    char sep = memchr(text, '\0', len) ? '\0' : '\n';
    size_t cap = 0;
    char **out = NULL;
    for (size_t at = 0; at < len;) {
        const char *p = text + at;
        const char *e = memchr(p, sep, len - at);
        size_t k = e ? (size_t)(e - p) : len - at;
        at += k + 1;
        if (sep == '\n' && k > 0 && p[k - 1] == '\r') k--;
        if (k == 0) continue;
        if (*n == cap) {
            size_t nc = cap ? 2 * cap : 256;
            char **grown = realloc(out, nc * sizeof *out);
            if (!grown) goto oom;
            out = grown;
            cap = nc;
        }
        if (!(out[*n] = strndup(p, k))) goto oom;
        (*n)++;
    }
    free(text);
    *files = out;
    return 0;
oom:
    free(text);
    catalogue_list_free(out, *n);
    *n = 0;
    return gr_fail(err, GR_EINTERNAL, "%s: out of memory reading the list", path);
}

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 14695981039346656037u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

int catalogue_in_shard(const char *name, unsigned k, unsigned n) {
    return n <= 1 || fnv1a64(name) % n == k;
}

/* The name a file's line carries, as text: what resuming compares. */
static char *line_name(const char *file) {
    json_t *j = jsontext_lossy(file);
    char *s = j ? strdup(json_string_value(j)) : NULL;
    json_decref(j);
    return s;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- the output, resumed ------------------------------------------------- */

/* Reads the names an existing output holds into *names (sorted), removes a
 * last line cut short, and leaves fd at its end. */
static int read_done(int fd, const char *path, char ***names, size_t *n, gr_err *err) {
    *names = NULL;
    *n = 0;
    int dup_fd = dup(fd);
    FILE *f = dup_fd >= 0 ? fdopen(dup_fd, "r") : NULL;
    if (!f) {
        if (dup_fd >= 0) close(dup_fd);
        return gr_fail(err, GR_EFILE, "%s: cannot read: %s", path, strerror(errno));
    }
    char *line = NULL;
    size_t cap = 0, have = 0, lineno = 0;
    off_t good = 0; /* the end of the last complete line */
    ssize_t got;
    int rc = 0;
    while ((got = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (line[got - 1] != '\n') break; /* cut short: dropped below */
        json_error_t jerr;
        json_t *j = json_loadb(line, (size_t)got, 0, &jerr);
        const char *name = json_string_value(json_object_get(j, "file"));
        if (!name) {
            json_decref(j);
            rc = gr_fail(err, GR_EFILE, "%s:%zu: not a line of genred classify (a JSON object "
                         "with \"file\"); remove it or choose another output", path, lineno);
            break;
        }
        if (*n == have) {
            size_t nc = have ? 2 * have : 1024;
            char **grown = realloc(*names, nc * sizeof **names);
            if (!grown) {
                json_decref(j);
                rc = gr_fail(err, GR_EINTERNAL, "%s: out of memory", path);
                break;
            }
            *names = grown;
            have = nc;
        }
        (*names)[*n] = strdup(name);
        json_decref(j);
        if (!(*names)[*n]) {
            rc = gr_fail(err, GR_EINTERNAL, "%s: out of memory", path);
            break;
        }
        (*n)++;
        good += got;
    }
    if (rc == 0 && ferror(f)) rc = gr_fail(err, GR_EFILE, "%s: cannot read: %s", path, strerror(errno));
    free(line);
    fclose(f);
    if (rc == 0) {
        struct stat st;
        if (fstat(fd, &st) != 0 || (st.st_size > good && ftruncate(fd, good) != 0))
            rc = gr_fail(err, GR_EFILE, "%s: cannot remove its last, unfinished line: %s", path,
                         strerror(errno));
    }
    if (rc == 0 && lseek(fd, 0, SEEK_END) < 0)
        rc = gr_fail(err, GR_EFILE, "%s: %s", path, strerror(errno));
    if (rc != 0) {
        catalogue_list_free(*names, *n);
        *names = NULL;
        *n = 0;
        return -1;
    }
    if (*n > 1) qsort(*names, *n, sizeof **names, cmp_str);
    return 0;
}

/* ---- one file ------------------------------------------------------------ */

/* The line (with its newline) for one file; *failed set for an error line.
 * NULL only when memory ran out. */
static char *classify_line(engine *e, const char *file, const catalogue_opts *o, int *failed) {
    gr_err err = {0};
    size_t len;
    json_t *ans = NULL;
    unsigned char *data = file_read(file, o->max_upload_bytes, GR_ETOOBIG, &len, &err);
    if (data) {
        ans = engine_classify(e, data, len, &o->classify, &err);
        free(data);
    }
    *failed = ans == NULL;
    if (!ans) ans = jsontext_error(gr_status_code(err.status), err.msg);
    /* "file" first, as a person reads the line; set_new takes the name
     * whatever it returns. */
    json_t *line = json_object();
    if (!line || !ans || json_object_set_new(line, "file", jsontext_lossy(file)) != 0 ||
        json_object_update(line, ans) != 0) {
        json_decref(line);
        json_decref(ans);
        return NULL;
    }
    json_decref(ans);
    char *text = json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(7));
    json_decref(line);
    if (!text) return NULL;
    size_t n = strlen(text);
    char *with_nl = realloc(text, n + 2);
    if (!with_nl) {
        free(text);
        return NULL;
    }
    with_nl[n] = '\n';
    with_nl[n + 1] = '\0';
    return with_nl;
}

/* ---- the run --------------------------------------------------------------- */

typedef struct run {
    engine *e;
    const catalogue_opts *o;
    const char *const *todo;   /* the files to do, in order */
    size_t n_todo;
    size_t window;
    char **ready;              /* window slots: file i's line at i % window */
    unsigned char *ready_failed;
    int fd;
    const char *out_name;
    pthread_mutex_t mu;        /* guards what follows */
    pthread_cond_t room;       /* a line was written: the window moved */
    size_t next;               /* the next file to take */
    size_t written;            /* lines written: files [0, written) */
    int stop;                  /* a failure: take no more files */
    gr_err err;
    catalogue_counts *counts;
    size_t before;             /* lines the output held already */
    double t0, drawn;          /* start, last progress line */
} run;

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* "1:02:03", "4:05" or "7s". */
static void format_duration(double s, char *buf, size_t n) {
    long t = s < 0 ? 0 : s > 359999 ? 359999 : (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else if (t >= 60) snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
    else snprintf(buf, n, "%lds", t);
}

/* The progress line, under the lock: a bar, files done of all, the rate of
 * this run and what is left at that rate. */
static void draw_progress(run *r, int final) {
    double now = monotonic_now();
    if (!r->o->progress || (!final && now - r->drawn < PROGRESS_PERIOD_S)) return;
    r->drawn = now;
    size_t total = r->before + r->n_todo, done = r->before + r->written;
    double frac = total ? (double)done / (double)total : 1.0, dt = now - r->t0;
    double rate = dt > 0 ? (double)r->written / dt : 0;
    char bar[21], eta[32];
    int fill = (int)(frac * 20);
    for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
    bar[20] = '\0';
    if (final) format_duration(dt, eta, sizeof eta);
    else if (rate > 0) format_duration((double)(r->n_todo - r->written) / rate, eta, sizeof eta);
    else snprintf(eta, sizeof eta, "?");
    char errs[48] = "";
    if (r->counts->failed)
        snprintf(errs, sizeof errs, ", %zu error%s", r->counts->failed,
                 r->counts->failed == 1 ? "" : "s");
    fprintf(stderr, "\r\033[Kgenred: [%s] %zu/%zu files %3.0f%%, %.1f files/s, %s %s%s%s", bar,
            done, total, 100 * frac, rate, final ? "took" : "ETA", eta, errs,
            final ? "\n" : "");
    fflush(stderr);
}

/* Under the lock: writes every ready line from the first one not written. */
static void flush_ready(run *r) {
    while (!r->stop && r->written < r->n_todo && r->ready[r->written % r->window]) {
        size_t slot = r->written % r->window;
        char *line = r->ready[slot];
        if (write_all(r->fd, line, strlen(line)) != 0) {
            gr_fail(&r->err, GR_EFILE, "%s: cannot write: %s", r->out_name, strerror(errno));
            r->stop = 1;
        } else if (r->ready_failed[slot]) {
            r->counts->failed++;
        } else {
            r->counts->answered++;
        }
        free(line);
        r->ready[slot] = NULL;
        if (!r->stop) r->written++;
    }
    pthread_cond_broadcast(&r->room);
    draw_progress(r, 0);
}

static void *worker(void *arg) {
    run *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stop && r->next < r->n_todo && r->next >= r->written + r->window)
            pthread_cond_wait(&r->room, &r->mu);
        if (r->stop || r->next >= r->n_todo) break;
        size_t i = r->next++;
        pthread_mutex_unlock(&r->mu);
        int failed = 0;
        char *line = classify_line(r->e, r->todo[i], r->o, &failed);
        pthread_mutex_lock(&r->mu);
        if (!line) {
            if (!r->stop) gr_fail(&r->err, GR_EINTERNAL, "out of memory writing a line");
            r->stop = 1;
            pthread_cond_broadcast(&r->room);
            break;
        }
        r->ready[i % r->window] = line;
        r->ready_failed[i % r->window] = (unsigned char)failed;
        flush_ready(r);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* The files to do: in list order, each name once, this shard's, and not in
 * done (sorted). */
static const char **work_list(char *const *files, size_t n, const catalogue_opts *o,
                              char **done, size_t n_done, catalogue_counts *c, size_t *n_todo) {
    const char **todo = malloc((n ? n : 1) * sizeof *todo);
    char **sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!todo || !sorted) {
        free(todo);
        free(sorted);
        return NULL;
    }
    /* Repeats: a name sorted next to an equal one is listed twice; keep the
     * first place by remembering which names were taken. */
    memcpy(sorted, files, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, cmp_str);
    unsigned char *taken = calloc(n ? n : 1, 1);
    if (!taken) {
        free(todo);
        free(sorted);
        return NULL;
    }
    *n_todo = 0;
    int oom = 0;
    for (size_t i = 0; i < n && !oom; i++) {
        char *const *at = bsearch(&files[i], sorted, n, sizeof *sorted, cmp_str);
        size_t k = (size_t)(at - sorted);
        while (k > 0 && strcmp(sorted[k - 1], files[i]) == 0) k--; /* the first equal one */
        if (taken[k]) continue;
        taken[k] = 1;
        c->listed++;
        if (!catalogue_in_shard(files[i], o->shard, o->shards)) {
            c->other_shards++;
            continue;
        }
        if (n_done) {
            char *name = line_name(files[i]);
            if (!name) {
                oom = 1;
                break;
            }
            int seen = bsearch(&name, done, n_done, sizeof *done, cmp_str) != NULL;
            free(name);
            if (seen) {
                c->resumed++;
                continue;
            }
        }
        todo[(*n_todo)++] = files[i];
    }
    free(taken);
    free(sorted);
    if (oom) {
        free(todo);
        return NULL;
    }
    return todo;
}

int catalogue_run(engine *e, char *const *files, size_t n, const catalogue_opts *o,
                  catalogue_counts *counts, gr_err *err) {
    memset(counts, 0, sizeof *counts);
    if (o->shards > 1 && o->shard >= o->shards)
        return gr_fail(err, GR_ECONFIG, "shard %u of %u does not exist", o->shard, o->shards);
    run r = {.e = e, .o = o, .counts = counts, .fd = 1, .out_name = "standard output"};
    char **done = NULL;
    size_t n_done = 0;
    if (o->output) {
        r.out_name = o->output;
        r.fd = open(o->output, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (r.fd < 0)
            return gr_fail(err, GR_EFILE, "%s: cannot open: %s", o->output, strerror(errno));
        if (read_done(r.fd, o->output, &done, &n_done, err) != 0) {
            close(r.fd);
            return -1;
        }
    }
    int jobs = o->jobs > 0 ? o->jobs : catalogue_default_jobs();
    r.todo = work_list(files, n, o, done, n_done, counts, &r.n_todo);
    catalogue_list_free(done, n_done);
    r.before = counts->resumed;
    r.window = (size_t)jobs * WINDOW_PER_JOB;
    r.ready = calloc(r.window, sizeof *r.ready);
    r.ready_failed = calloc(r.window, 1);
    int rc = 0;
    if (!r.todo || !r.ready || !r.ready_failed) {
        rc = gr_fail(err, GR_EINTERNAL, "out of memory for the list of %zu files", n);
        goto done;
    }
    if ((size_t)jobs > r.n_todo) jobs = r.n_todo ? (int)r.n_todo : 1;
    if (pthread_mutex_init(&r.mu, NULL) != 0) {
        rc = gr_fail(err, GR_EINTERNAL, "mutex init failed");
        goto done;
    }
    if (pthread_cond_init(&r.room, NULL) != 0) {
        pthread_mutex_destroy(&r.mu);
        rc = gr_fail(err, GR_EINTERNAL, "condition init failed");
        goto done;
    }
    r.t0 = monotonic_now();
    pthread_t *tid = calloc((size_t)jobs, sizeof *tid);
    int started = 0;
    for (; tid && started < jobs - 1; started++)
        if (pthread_create(&tid[started], NULL, worker, &r) != 0) break;
    worker(&r); /* this thread is a job too; one that did not start is not missed */
    for (int i = 0; i < started; i++) pthread_join(tid[i], NULL);
    free(tid);
    draw_progress(&r, 1);
    pthread_cond_destroy(&r.room);
    pthread_mutex_destroy(&r.mu);
    if (r.stop) {
        *err = r.err;
        rc = -1;
    } else if (o->output && fsync(r.fd) != 0 && errno != EINVAL) {
        rc = gr_fail(err, GR_EFILE, "%s: cannot write: %s", o->output, strerror(errno));
    }
done:
    for (size_t i = 0; r.ready && i < r.window; i++) free(r.ready[i]);
    free(r.ready);
    free(r.ready_failed);
    free((void *)r.todo);
    if (o->output && close(r.fd) != 0 && rc == 0)
        rc = gr_fail(err, GR_EFILE, "%s: cannot write: %s", o->output, strerror(errno));
    return rc;
}
