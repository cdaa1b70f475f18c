/* engine.c - the data path, top to bottom:
 *
 *   features_compute (decode, trim, mel) -> batcher_submit -> answer JSON
 *
 * The answer follows the research genred grew from: a song's genre shares
 * are chunk votes (the share of 3 s chunks whose top genre it is), reported
 * beside the mean chunk probability, which is smoother for songs that sit
 * between genres.
 *
 * Reload: a generation is one loaded model with its featurizer and batcher.
 * engine_reload() builds a new one off to the side and swaps it in under the
 * lock; each request holds a reference to the generation it started on, so
 * requests in flight finish on the old model, and the last one out destroys
 * it. A model that does not load never replaces the current one.
 *
 * Deadlines and shutdown: a request's deadline (request_timeout_s) reaches
 * the decoder (interrupt callback) and the batcher (withdrawal of queued
 * chunks), and is checked between the stages. engine_cancel() (a shutdown
 * out of time) makes every request give up at its next check between stages
 * or at once if it waits for inference; a decode in progress runs on to its
 * end or its deadline.
 *
 * What it does not do: HTTP, parsing uploads, logging. */
#include "genred/engine.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "genred/batcher.h"
#include "genred/clock.h"
#include "genred/features.h"
#include "genred/mel.h"

typedef struct generation {
    model *model;
    featurizer *fz;             /* the model's input: log-mel or waveform */
    batcher *batcher;
    int refs;                   /* requests on it, + 1 while it is current */
    struct generation *next;    /* engine.live: every generation not destroyed */
} generation;

struct engine {
    config cfg;
    metrics *met;
    pthread_mutex_t mu;         /* guards current, live, refs, retired, cancelled */
    pthread_mutex_t plan_mu;    /* FFTW planning and plan destruction must not
                                 * run in two threads at once (reload vs. the
                                 * last request of an old generation) */
    generation *current;
    generation *live;
    batcher_stats retired;      /* counters of destroyed generations, so
                                 * /metrics counters never go backwards */
    int cancelled;
};

static void generation_destroy(engine *e, generation *g) {
    if (!g) return;
    batcher_destroy(g->batcher); /* first: its workers use the model */
    pthread_mutex_lock(&e->plan_mu);
    featurizer_destroy(g->fz);
    pthread_mutex_unlock(&e->plan_mu);
    model_free(g->model);
    free(g);
}

/* Loads cfg.model and builds what serves it. Slow (file, FFTW planning,
 * threads); called without e->mu. */
static generation *generation_create(engine *e, gr_err *err) {
    const config *cfg = &e->cfg;
    generation *g = calloc(1, sizeof *g);
    if (!g) {
        gr_fail(err, GR_EINTERNAL, "engine: out of memory");
        return NULL;
    }
    g->model = model_load(cfg->model, err);
    if (!g->model) goto fail;
    pthread_mutex_lock(&e->plan_mu);
    g->fz = featurizer_create(model_features(g->model), err);
    pthread_mutex_unlock(&e->plan_mu);
    if (!g->fz) goto fail;
    if (featurizer_chunk_floats(g->fz) != model_input_floats(g->model)) {
        gr_fail(err, GR_EFILE, "%s: model input (%zu floats) does not match its own "
                "feature parameters (%zu floats per chunk)", cfg->model,
                model_input_floats(g->model), featurizer_chunk_floats(g->fz));
        goto fail;
    }
    /* Callers admit at most max_active_requests classifications at once
     * (http.c), so a queue of that many never refuses one of them. */
    g->batcher = batcher_create(g->model, config_workers(cfg), cfg->max_batch,
                                (size_t)config_max_active_requests(cfg), e->met, err);
    if (!g->batcher) goto fail;
    g->refs = 1;
    return g;
fail:
    generation_destroy(e, g);
    return NULL;
}

engine *engine_create(const config *cfg, metrics *met, gr_err *err) {
    engine *e = calloc(1, sizeof *e);
    if (!e) {
        gr_fail(err, GR_EINTERNAL, "engine: out of memory");
        return NULL;
    }
    e->cfg = *cfg;
    e->met = met;
    if (pthread_mutex_init(&e->mu, NULL) != 0) {
        free(e);
        gr_fail(err, GR_EINTERNAL, "engine: mutex init failed");
        return NULL;
    }
    if (pthread_mutex_init(&e->plan_mu, NULL) != 0) {
        pthread_mutex_destroy(&e->mu);
        free(e);
        gr_fail(err, GR_EINTERNAL, "engine: mutex init failed");
        return NULL;
    }
    e->current = e->live = generation_create(e, err);
    if (!e->current) {
        engine_destroy(e);
        return NULL;
    }
    return e;
}

void engine_destroy(engine *e) {
    if (!e) return;
    /* No request may be running: every generation left is unused. */
    for (generation *g = e->live, *next; g; g = next) {
        next = g->next;
        generation_destroy(e, g);
    }
    pthread_mutex_destroy(&e->plan_mu);
    pthread_mutex_destroy(&e->mu);
    free(e);
}

/* The current generation, with a reference for the caller; NULL (GR_EBUSY)
 * once engine_cancel() was called. */
static generation *acquire(engine *e, gr_err *err) {
    pthread_mutex_lock(&e->mu);
    generation *g = e->cancelled ? NULL : e->current;
    if (g) g->refs++;
    pthread_mutex_unlock(&e->mu);
    if (!g) gr_fail(err, GR_EBUSY, "server is shutting down");
    return g;
}

static void add_stats(batcher_stats *sum, const batcher_stats *st) {
    sum->queued_requests += st->queued_requests;
    sum->batches += st->batches;
    sum->chunks += st->chunks;
    sum->busy_seconds += st->busy_seconds;
}

/* Drops a reference; the last one out of a replaced generation destroys it
 * (outside the lock: joining the workers takes a moment). */
static void release(engine *e, generation *g) {
    pthread_mutex_lock(&e->mu);
    int last = --g->refs == 0;
    if (last) {
        generation **p = &e->live;
        while (*p != g) p = &(*p)->next;
        *p = g->next;
        batcher_stats st;
        batcher_get_stats(g->batcher, &st);
        add_stats(&e->retired, &st);
    }
    pthread_mutex_unlock(&e->mu);
    if (last) generation_destroy(e, g);
}

int engine_reload(engine *e, gr_err *err) {
    generation *g = generation_create(e, err);
    if (!g) return -1;
    pthread_mutex_lock(&e->mu);
    generation *old = e->current;
    g->next = e->live;
    e->live = g;
    e->current = g;
    /* Reloading while shutting down: the new batcher refuses work too. */
    if (e->cancelled) batcher_cancel(g->batcher);
    pthread_mutex_unlock(&e->mu);
    release(e, old); /* the reference "current" held */
    return 0;
}

void engine_cancel(engine *e) {
    pthread_mutex_lock(&e->mu);
    e->cancelled = 1;
    for (generation *g = e->live; g; g = g->next) batcher_cancel(g->batcher);
    pthread_mutex_unlock(&e->mu);
}

int engine_ready(engine *e) {
    pthread_mutex_lock(&e->mu);
    int ready = !e->cancelled && batcher_ready(e->current->batcher);
    pthread_mutex_unlock(&e->mu);
    return ready;
}

json_t *engine_describe_model(engine *e) {
    gr_err err;
    generation *g = acquire(e, &err);
    if (!g) {
        /* Shutting down: the model is still loaded, describe it anyway. */
        pthread_mutex_lock(&e->mu);
        g = e->current;
        g->refs++;
        pthread_mutex_unlock(&e->mu);
    }
    json_t *d = model_describe(g->model);
    release(e, g);
    return d;
}

char *engine_render_metrics(engine *e, const metrics_load *load) {
    pthread_mutex_lock(&e->mu);
    generation *cur = e->current;
    cur->refs++;
    /* Counters add up over every generation, alive or gone; the settings
     * (capacity, workers, max_batch) are the current one's. */
    batcher_stats sum, st;
    batcher_get_stats(cur->batcher, &sum);
    sum.queued_requests = sum.batches = sum.chunks = 0;
    sum.busy_seconds = 0;
    add_stats(&sum, &e->retired);
    for (generation *g = e->live; g; g = g->next) {
        batcher_get_stats(g->batcher, &st);
        add_stats(&sum, &st);
    }
    pthread_mutex_unlock(&e->mu);
    char *text = metrics_render(e->met, &sum, load, cur->model);
    release(e, cur);
    return text;
}

typedef struct genre_score {
    int index;
    size_t votes;
    double mean_prob;
} genre_score;

static int score_cmp(const void *pa, const void *pb) {
    const genre_score *a = pa, *b = pb;
    if (a->votes != b->votes) return a->votes < b->votes ? 1 : -1;
    if (a->mean_prob != b->mean_prob) return a->mean_prob < b->mean_prob ? 1 : -1;
    return a->index - b->index;
}

static int argmax(const float *p, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (p[i] > p[best]) best = i;
    return best;
}

/* json_object_set_new and friends return -1 on allocation failure; collect
 * those instead of checking each of the dozens of calls separately. */
#define SET(obj, key, val) (ok &= json_object_set_new((obj), (key), (val)) == 0)
#define APPEND(arr, val) (ok &= json_array_append_new((arr), (val)) == 0)

static json_t *genre_entry(const model *m, const genre_score *s, size_t n_chunks) {
    int ok = 1;
    json_t *o = json_object();
    if (!o) return NULL;
    SET(o, "genre", json_string(model_genre(m, s->index)));
    SET(o, "percent", json_real(100.0 * (double)s->votes / (double)n_chunks));
    SET(o, "probability", json_real(s->mean_prob));
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* ---- what a model with a backbone adds ------------------------------------
 *
 * The music verdict: a chunk is music when the model's strongest "music"
 * class is at least as likely as its strongest "not music" one (Speech,
 * Silence for the AudioSet backbone). The share of music chunks decides:
 * from MUSIC_SHARE_MUSIC up it is music, up to MUSIC_SHARE_NOT_MUSIC it is
 * not, in between mixed (a podcast with a jingle, a song with a long spoken
 * intro). Genre shares then count only the music chunks, so speech never
 * votes for a genre, and a file that is not music gets no top genre at all.
 *
 * Tags: each curated tag's mean probability over the music chunks; per
 * group the TAGS_PER_GROUP strongest that reach the model's floor.
 * AudioSet probabilities are small on real songs (on GTZAN: Rapping 0.29 on
 * hip-hop, Violin 0.27 on classical, most tags under 0.05), so the floor
 * comes from the model file, which knows its own calibration. */
#define MUSIC_SHARE_MUSIC 0.75
#define MUSIC_SHARE_NOT_MUSIC 0.25
#define TAGS_PER_GROUP 3

static int chunk_is_music(const model_music *mu, const float *p) {
    float best_music = -1.0f, best_other = -1.0f;
    for (int i = 0; i < mu->n_music; i++)
        if (p[mu->music[i]] > best_music) best_music = p[mu->music[i]];
    for (int i = 0; i < mu->n_other; i++)
        if (p[mu->other[i]] > best_other) best_other = p[mu->other[i]];
    return best_music >= best_other;
}

static const char *music_verdict(double share) {
    return share >= MUSIC_SHARE_MUSIC       ? "music"
           : share <= MUSIC_SHARE_NOT_MUSIC ? "not_music"
                                            : "mixed";
}

typedef struct tag_score {
    const model_tag *tag;
    double mean;
} tag_score;

static int tag_cmp(const void *pa, const void *pb) {
    const tag_score *a = pa, *b = pb;
    int g = strcmp(a->tag->group, b->tag->group);
    if (g) return g;
    if (a->mean != b->mean) return a->mean < b->mean ? 1 : -1;
    return strcmp(a->tag->label, b->tag->label);
}

/* The song's tags from the chunks marked in use (all when use is NULL). */
static json_t *tags_json(const model *m, const float *probs, size_t n_chunks,
                         const unsigned char *use, size_t used) {
    const model_tag *tags;
    int n = model_tags(m, &tags);
    size_t row = model_output_floats(m);
    tag_score *sc = calloc((size_t)n, sizeof *sc);
    json_t *arr = json_array();
    int ok = sc && arr;
    for (int t = 0; ok && t < n; t++) {
        sc[t].tag = &tags[t];
        for (size_t c = 0; c < n_chunks; c++)
            if (!use || use[c]) sc[t].mean += probs[c * row + tags[t].offset];
        sc[t].mean /= (double)used;
    }
    if (ok) qsort(sc, (size_t)n, sizeof *sc, tag_cmp);
    for (int t = 0, in_group = 0; ok && t < n; t++) {
        in_group = t > 0 && strcmp(sc[t].tag->group, sc[t - 1].tag->group) == 0 ? in_group + 1 : 0;
        if (in_group >= TAGS_PER_GROUP || sc[t].mean < model_tags_floor(m)) continue;
        APPEND(arr, json_pack("{s:s, s:s, s:f}", "tag", sc[t].tag->label, "group",
                              sc[t].tag->group, "probability", sc[t].mean));
    }
    free(sc);
    if (!ok) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

/* The mean of the chunks' embeddings. */
static json_t *embedding_json(const model *m, const float *probs, size_t n_chunks) {
    size_t off, dim = model_embedding(m, &off), row = model_output_floats(m);
    json_t *arr = json_array();
    int ok = arr != NULL;
    for (size_t j = 0; ok && j < dim; j++) {
        double sum = 0.0;
        for (size_t c = 0; c < n_chunks; c++) sum += probs[c * row + off + j];
        APPEND(arr, json_real(sum / (double)n_chunks));
    }
    if (!ok) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

static json_t *build_answer(const generation *gen, const float *probs, size_t n_chunks,
                            const analysis *an, const classify_opts *o, double inference_ms,
                            double total_ms) {
    double start_s = an->start_s;
    const model *m = gen->model;
    int g = model_genre_count(m);
    size_t row = model_output_floats(m);
    double chunk_s =
        (double)featurizer_chunk_samples(gen->fz) / featurizer_sample_rate(gen->fz);
    const model_music *mu = model_music_classes(m);
    genre_score *sc = calloc((size_t)g, sizeof *sc);
    unsigned char *music = mu ? malloc(n_chunks) : NULL;
    if (!sc || (mu && !music)) {
        free(sc);
        free(music);
        return NULL;
    }
    /* Chunks that vote: the music ones, or all when none is (or the model
     * has no verdict), so that the shares stay defined. */
    size_t n_music = 0;
    for (size_t c = 0; mu && c < n_chunks; c++)
        n_music += music[c] = (unsigned char)chunk_is_music(mu, probs + c * row);
    const unsigned char *use = mu && n_music > 0 ? music : NULL;
    size_t used = use ? n_music : n_chunks;
    const char *verdict = mu ? music_verdict((double)n_music / (double)n_chunks) : NULL;

    for (int i = 0; i < g; i++) sc[i].index = i;
    for (size_t c = 0; c < n_chunks; c++) {
        if (use && !use[c]) continue;
        const float *p = probs + c * row;
        sc[argmax(p, g)].votes++;
        for (int i = 0; i < g; i++) sc[i].mean_prob += p[i];
    }
    for (int i = 0; i < g; i++) sc[i].mean_prob /= (double)used;
    qsort(sc, (size_t)g, sizeof *sc, score_cmp);
    int no_top = verdict && strcmp(verdict, "not_music") == 0;

    int ok = 1;
    json_t *ans = json_object(), *genres = json_array(), *top3 = json_array();
    json_t *analyzed = json_object(), *mod = json_object(), *tim = json_object();
    ok = ans && genres && top3 && analyzed && mod && tim;
    for (int i = 0; ok && i < g; i++) {
        APPEND(genres, genre_entry(m, &sc[i], used));
        if (i < 3 && !no_top) APPEND(top3, genre_entry(m, &sc[i], used));
    }
    if (ok) {
        SET(ans, "top", no_top ? json_null() : json_string(model_genre(m, sc[0].index)));
        SET(ans, "top3", top3);
        SET(ans, "genres", genres);
        top3 = genres = NULL;
        SET(ans, "chunks", json_integer((json_int_t)n_chunks));
        SET(ans, "duration_s", json_real(an->duration_s));
        SET(analyzed, "start_s", json_real(start_s));
        SET(analyzed, "end_s", json_real(start_s + (double)an->window_chunks * chunk_s));
        SET(analyzed, "trimmed", json_boolean(an->trimmed));
        SET(ans, "analyzed", analyzed);
        SET(mod, "name", json_string(model_name(m)));
        SET(mod, "version", json_string(model_version(m)));
        SET(ans, "model", mod);
        SET(tim, "decode", json_real(an->decode_ms));
        SET(tim, "features", json_real(an->features_ms));
        SET(tim, "inference", json_real(inference_ms));
        SET(tim, "total", json_real(total_ms));
        SET(ans, "timing_ms", tim);
        analyzed = mod = tim = NULL;
    }
    if (ok && verdict)
        SET(ans, "music", json_pack("{s:f, s:s, s:I}", "share",
                                    (double)n_music / (double)n_chunks, "verdict", verdict,
                                    "chunks", (json_int_t)n_music));
    const model_tag *tags;
    if (ok && model_tags(m, &tags) > 0) SET(ans, "tags", tags_json(m, probs, n_chunks, use, used));
    if (ok && o->embedding && model_embedding(m, NULL) > 0)
        SET(ans, "embedding", embedding_json(m, probs, n_chunks));
    if (ok && o->segments) {
        json_t *segs = json_array();
        ok = segs && json_object_set_new(ans, "segments", segs) == 0;
        for (size_t c = 0; ok && c < n_chunks; c++) {
            const float *p = probs + c * row;
            json_t *seg = json_object(), *pr = json_object();
            ok = seg && pr;
            for (int i = 0; ok && i < g; i++) SET(pr, model_genre(m, i), json_real(p[i]));
            size_t at = features_chunk_pick(c, n_chunks, an->window_chunks);
            if (ok) {
                SET(seg, "start_s", json_real(start_s + (double)at * chunk_s));
                SET(seg, "end_s", json_real(start_s + (double)(at + 1) * chunk_s));
                SET(seg, "top", json_string(model_genre(m, argmax(p, g))));
                SET(seg, "probabilities", pr);
                if (music) SET(seg, "music", json_boolean(music[c]));
                pr = NULL;
            }
            json_decref(pr);
            APPEND(segs, seg);
        }
    }
    free(sc);
    free(music);
    json_decref(genres);
    json_decref(top3);
    json_decref(analyzed);
    json_decref(mod);
    json_decref(tim);
    if (!ok) {
        json_decref(ans);
        return NULL;
    }
    return ans;
}

/* ---- the mel picture (?mel=1) ------------------------------------------
 *
 * A picture of the analysed audio for a person to look at (the web page draws
 * it), not a feature to compute with. Made from the chunks the model saw: the
 * normalisation is undone (x * norm_std + norm_mean, then ln to dB where the
 * model's log is ln), blocks of
 * bands x frames are averaged down to at most MEL_PICTURE_BANDS rows and
 * MEL_PICTURE_COLUMNS columns, and the result is quantised to uint8 over the
 * MEL_PICTURE_RANGE_DB below its loudest cell (quieter cells are 0), like a
 * spectrogram plot's colour scale. Rows go from the lowest band up, columns
 * in time order; the bytes are base64 so a 3-minute song costs ~51 KB of
 * JSON instead of ~150 KB as numbers. */
#define MEL_PICTURE_BANDS 64
#define MEL_PICTURE_COLUMNS 600
#define MEL_PICTURE_RANGE_DB 80.0

static char *base64_encode(const unsigned char *in, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n) v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        *o++ = tab[v >> 18 & 63];
        *o++ = tab[v >> 12 & 63];
        *o++ = i + 1 < n ? tab[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* chunks: n_chunks * n_mels * chunk_frames floats, [chunk][band][frame]. */
static json_t *mel_picture(const mel_params *p, const float *chunks, size_t n_chunks) {
    size_t bands = (size_t)p->n_mels, cf = (size_t)p->chunk_frames;
    size_t frames = n_chunks * cf;
    size_t bstep = (bands + MEL_PICTURE_BANDS - 1) / MEL_PICTURE_BANDS;
    size_t fstep = (frames + MEL_PICTURE_COLUMNS - 1) / MEL_PICTURE_COLUMNS;
    size_t rows = (bands + bstep - 1) / bstep, cols = (frames + fstep - 1) / fstep;
    float *db = malloc(rows * cols * sizeof *db);
    unsigned char *q = malloc(rows * cols);
    char *b64 = NULL;
    json_t *pic = NULL;
    if (!db || !q) goto done;

    double lo = INFINITY, hi = -INFINITY;
    for (size_t r = 0; r < rows; r++) {
        size_t b0 = r * bstep, b1 = b0 + bstep < bands ? b0 + bstep : bands;
        for (size_t c = 0; c < cols; c++) {
            size_t f0 = c * fstep, f1 = f0 + fstep < frames ? f0 + fstep : frames;
            double sum = 0.0;
            for (size_t b = b0; b < b1; b++)
                for (size_t f = f0; f < f1; f++)
                    sum += chunks[(f / cf * bands + b) * cf + f % cf];
            double v = sum / (double)((b1 - b0) * (f1 - f0)) * p->norm_std + p->norm_mean;
            if (p->log == MEL_LOG_LN) v *= 10.0 / 2.302585092994045684;   /* ln -> dB */
            db[r * cols + c] = (float)v;
            if (isfinite(v)) {
                if (v < lo) lo = v;
                if (v > hi) hi = v;
            }
        }
    }
    if (!(hi >= lo)) lo = hi = 0.0; /* nothing finite at all */
    if (lo < hi - MEL_PICTURE_RANGE_DB) lo = hi - MEL_PICTURE_RANGE_DB;
    for (size_t i = 0; i < rows * cols; i++) {
        double v = hi > lo && isfinite(db[i]) ? (db[i] - lo) / (hi - lo) * 255.0 : 0.0;
        q[i] = (unsigned char)(v < 0.0 ? 0.0 : v > 255.0 ? 255.0 : v + 0.5);
    }
    b64 = base64_encode(q, rows * cols);
    if (!b64) goto done;
    pic = json_pack("{s:I,s:I,s:f,s:f,s:s}", "bands", (json_int_t)rows, "frames",
                    (json_int_t)cols, "min_db", lo, "max_db", hi, "data", b64);
done:
    free(db);
    free(q);
    free(b64);
    return pic;
}

/* Between stages: has the request run out of time, or the server? */
static int may_go_on(engine *e, double deadline, const char *after, gr_err *err) {
    pthread_mutex_lock(&e->mu);
    int cancelled = e->cancelled;
    pthread_mutex_unlock(&e->mu);
    if (cancelled) return gr_fail(err, GR_EBUSY, "server is shutting down");
    if (deadline > 0 && monotonic_now() > deadline)
        return gr_fail(err, GR_EDEADLINE, "request deadline (%g s) passed after %s",
                       e->cfg.request_timeout_s, after);
    return 0;
}

static json_t *classify_on(engine *e, const generation *g, const void *data, size_t len,
                           const classify_opts *o, gr_err *err) {
    double t0 = monotonic_now();
    double deadline = e->cfg.request_timeout_s > 0 ? t0 + e->cfg.request_timeout_s : 0;
    features_opts fo = features_opts_from_config(&e->cfg, o->trim);
    fo.deadline = deadline;
    fo.max_chunks = o->max_chunks > 0 ? (size_t)o->max_chunks : 0;
    analysis an;
    if (features_compute(g->fz, &fo, data, len, &an, err) != 0) return NULL;
    if (may_go_on(e, deadline, "computing features", err) != 0) {
        analysis_free(&an);
        return NULL;
    }
    size_t n = an.n_chunks;
    float *probs = malloc(n * model_output_floats(g->model) * sizeof(float));
    if (!probs) {
        analysis_free(&an);
        gr_fail(err, GR_EINTERNAL, "out of memory for %zu chunk results", n);
        return NULL;
    }
    double t1 = monotonic_now();
    int rc = batcher_submit(g->batcher, an.chunks, n, probs, deadline, err);
    double inference_ms = (monotonic_now() - t1) * 1e3;
    json_t *picture = NULL;
    /* A model that reads the waveform has no log-mel chunks to draw. */
    const mel *pm = featurizer_mel(g->fz);
    if (rc == 0 && o->mel && pm && !(picture = mel_picture(mel_get_params(pm), an.chunks, n)))
        rc = gr_fail(err, GR_EINTERNAL, "out of memory drawing the mel picture");
    analysis_free(&an);
    if (rc != 0) {
        free(probs);
        return NULL;
    }
    double total_ms = (monotonic_now() - t0) * 1e3;

    metrics_observe_stage(e->met, STAGE_DECODE, an.decode_ms / 1e3);
    metrics_observe_stage(e->met, STAGE_FEATURES, an.features_ms / 1e3);
    metrics_observe_stage(e->met, STAGE_INFERENCE, inference_ms / 1e3);
    metrics_observe_stage(e->met, STAGE_TOTAL, total_ms / 1e3);
    metrics_observe_chunks(e->met, n);

    json_t *ans = build_answer(g, probs, n, &an, o, inference_ms, total_ms);
    free(probs);
    if (picture && (!ans || json_object_set_new(ans, "mel", picture) != 0)) {
        if (!ans) json_decref(picture); /* set_new took it even when it failed */
        json_decref(ans);
        ans = NULL;
    }
    if (!ans) gr_fail(err, GR_EINTERNAL, "out of memory building the answer");
    return ans;
}

json_t *engine_classify(engine *e, const void *data, size_t len,
                        const classify_opts *o, gr_err *err) {
    generation *g = acquire(e, err);
    if (!g) return NULL;
    json_t *ans = classify_on(e, g, data, len, o, err);
    release(e, g);
    return ans;
}
