/* model.c - load, validate and run a .gmodel file (docs/model-format.md).
 *
 * Loading checks the container (magic, version, lengths, padding, CRC-32),
 * then every header field, then walks the layer list propagating the shape of
 * one item, so that a file which loads can be run without any further check.
 * While walking, the file's layers become a shorter list of ops: dropout and
 * flatten disappear (flatten is a no-op on NCHW memory), a batch-norm right
 * after conv2d/dense is folded into its weights (in double precision) and an
 * activation right after conv2d/dense is fused into its output pass.
 *
 * The JSON for model_describe() is built once at load time and kept as text:
 * each call parses a fresh copy, so threads never share jansson objects.
 *
 * What it does not do: feature extraction (mel.c), kernels (nn.c). */
#include "genred/model.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "genred/fileio.h"
#include "genred/nn.h"

#define FORMAT_VERSION 2           /* reads 1 and 2 */
#define PREFIX_BYTES 16            /* magic, version, header length */
#define DATA_ALIGN 64
#define MAX_FILE_BYTES (1ULL << 30)
#define MAX_HEADER_BYTES (16u << 20)
#define MAX_LAYERS 512
#define MAX_GENRES 1024
#define MAX_LABEL_BYTES 128
#define MAX_DIM 65536              /* channels, height, width, features */
#define MAX_WINDOW 1024            /* kernel, stride, padding */
#define MAX_ITEM_FLOATS (1ULL << 24)   /* one activation of one item */
#define MAX_COLUMN_FLOATS (1ULL << 28) /* one item's im2col matrix */
#define MAX_BATCH 4096
#define MAX_OP_INPUTS 8            /* add, concat */
#define MAX_NAME_BYTES 64          /* a layer's value name */
#define MAX_EXPORTS 8              /* values an output row carries besides genres */
#define MAX_TAGS 1024
#define MAX_GROUP_BYTES 32
#define MAX_LICENSE_BYTES (64u << 10)

static const unsigned char magic[8] = {'G', 'E', 'N', 'R', 'E', 'D', 'M', 0};

typedef struct shape {
    int c, h, w;   /* flat features: c = count, h = w = 1 */
    int flat;
} shape;

typedef enum op_kind {
    OP_CONV2D,
    OP_DEPTHWISE,     /* conv2d with groups = channels */
    OP_DENSE,
    OP_AFFINE,        /* a batch-norm that could not be folded */
    OP_ACTIVATION,
    OP_MAXPOOL,
    OP_AVGPOOL,
    OP_GLOBAL_AVGPOOL,
    OP_GLOBAL_MAXPOOL,
    OP_SOFTMAX,
    OP_SQUEEZE_EXCITE,
    OP_ADD,
    OP_CONCAT,
} op_kind;

/* Values are what ops read and write: value 0 is the model's input (the
 * caller's memory), value i + 1 is op i's output. */
typedef struct op {
    op_kind kind;
    shape in, out;              /* in: the shape of src[0] */
    int src[MAX_OP_INPUTS];     /* values read */
    int n_src;
    nn_conv2d conv;             /* OP_CONV2D, OP_DEPTHWISE: weight/bias point to w/b */
    nn_dense dense;             /* OP_DENSE: weight/bias point to w/b */
    nn_squeeze_excite se;       /* OP_SQUEEZE_EXCITE: fc1 = w/b, fc2 = w2/b2 */
    int kh, kw, sh, sw;         /* pools */
    nn_activation act;          /* OP_ACTIVATION */
    float alpha;
    float *w, *b, *w2, *b2;     /* owned: weights and biases, or affine scale
                                 * and shift */
} op;

typedef struct value {
    size_t floats;              /* per item */
    int last_use;               /* the last op that reads it; n_ops: kept to the
                                 * end (the model's outputs) */
    int buffer;                 /* workspace buffer it lives in; -1: the input */
} value;

struct model {
    char *name, *version;
    char **genres;              /* owned, n_genres strings */
    int n_genres;
    feature_params feat;
    shape input;
    op *ops;                    /* owned, n_ops */
    int n_ops;
    value *values;              /* owned, n_ops + 1 */
    size_t *buffer_floats;      /* owned, per item, n_buffers */
    int n_buffers;
    int result;                 /* the value holding the genre probabilities */
    struct named *names;        /* owned, n_names: the file's value names */
    int n_names;
    int exported[MAX_EXPORTS];  /* values copied into the output row after the
                                 * genres, in this order */
    size_t export_offset[MAX_EXPORTS];
    int n_exported;
    size_t row;                 /* floats per item in model_forward()'s output */
    size_t embedding_offset, embedding_dim;   /* dim 0: none */
    model_tag *tags;            /* owned, n_tags; labels in tag_text */
    char *tag_text;             /* owned */
    int n_tags;
    double tags_floor;
    model_music music;          /* n_music == 0: no verdict */
    size_t *music_offsets;      /* owned: music then other */
    double macs;
    size_t params;
    char *describe;             /* owned: model_describe()'s JSON as text */
};

struct model_workspace {
    const model *m;
    int max_batch;
    float **buf;                /* owned, n_buffers activations of max_batch items */
    float *scratch;             /* owned; NULL if no op needs it */
    double *profile;            /* borrowed, per op; NULL: not profiling */
};

/* ---- container ---------------------------------------------------------- */

static uint32_t crc32_ieee(const unsigned char *p, size_t n) {
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

static uint32_t le32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static float le_float(const unsigned char *p) {
    uint32_t u = le32(p);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- header field helpers ----------------------------------------------- */

/* A file that is not a valid model; the rest (memory) is GR_EINTERNAL. */
#define FAIL(...) gr_fail(err, GR_EFILE, __VA_ARGS__)
#define NO_MEMORY() gr_fail(err, GR_EINTERNAL, "out of memory")

/* Refuses keys outside allowed (NULL-terminated): a version-1 reader cannot
 * know what they mean, and a misspelt optional field must not be ignored. */
static int check_keys(const json_t *obj, const char *const *allowed,
                      const char *ctx, gr_err *err) {
    const char *key;
    json_t *v;
    /* jansson's iterator is not const-qualified; it does not modify obj. */
    json_object_foreach((json_t *)obj, key, v) {
        const char *const *a = allowed;
        while (*a && strcmp(*a, key) != 0) a++;
        if (!*a) return FAIL("%s: unknown field '%s'", ctx, key);
    }
    return 0;
}

static int field_int(const json_t *obj, const char *key, long long lo, long long hi,
                     int *out, const char *ctx, gr_err *err) {
    json_t *v = json_object_get(obj, key);
    if (!v) return FAIL("%s: missing '%s'", ctx, key);
    if (!json_is_integer(v)) return FAIL("%s: '%s' must be an integer", ctx, key);
    long long x = (long long)json_integer_value(v);
    if (x < lo || x > hi)
        return FAIL("%s: '%s' = %lld is out of range [%lld, %lld]", ctx, key, x,
                    lo, hi);
    *out = (int)x;
    return 0;
}

static int field_number(const json_t *obj, const char *key, double *out,
                        const char *ctx, gr_err *err) {
    json_t *v = json_object_get(obj, key);
    if (!v) return FAIL("%s: missing '%s'", ctx, key);
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return FAIL("%s: '%s' must be a finite number", ctx, key);
    *out = json_number_value(v);
    return 0;
}

static int field_string(const json_t *obj, const char *key, int required,
                        size_t max_len, const char **out, const char *ctx,
                        gr_err *err) {
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v) return required ? FAIL("%s: missing '%s'", ctx, key) : 0;
    if (!json_is_string(v)) return FAIL("%s: '%s' must be a string", ctx, key);
    size_t n = json_string_length(v);
    if (required && n == 0) return FAIL("%s: '%s' must not be empty", ctx, key);
    if (n > max_len) return FAIL("%s: '%s' is longer than %zu bytes", ctx, key, max_len);
    *out = json_string_value(v);
    return 0;
}

/* An array of exactly n integers, each in [lo, hi]. */
static int field_ints(const json_t *obj, const char *key, int n, long long lo,
                      long long hi, int *out, const char *ctx, gr_err *err) {
    json_t *v = json_object_get(obj, key);
    if (!v) return FAIL("%s: missing '%s'", ctx, key);
    if (!json_is_array(v) || json_array_size(v) != (size_t)n)
        return FAIL("%s: '%s' must be an array of %d integers", ctx, key, n);
    for (int i = 0; i < n; i++) {
        json_t *e = json_array_get(v, (size_t)i);
        if (!json_is_integer(e))
            return FAIL("%s: '%s' must be an array of %d integers", ctx, key, n);
        long long x = (long long)json_integer_value(e);
        if (x < lo || x > hi)
            return FAIL("%s: '%s'[%d] = %lld is out of range [%lld, %lld]", ctx,
                        key, i, x, lo, hi);
        out[i] = (int)x;
    }
    return 0;
}

static void format_dims(char *buf, size_t size, const long long *dims, int n) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && used < size; i++) {
        int w = snprintf(buf + used, size - used, "%s%lld", i ? "," : "", dims[i]);
        if (w < 0) return;
        used += (size_t)w;
    }
}

/* A tensor reference {"offset": O, "shape": [...]} whose shape must equal
 * want[0..n): *out points at its floats in data (n_data floats). */
static int field_tensor(const json_t *obj, const char *key, const long long *want,
                        int n, const float *data, size_t n_data,
                        const float **out, const char *ctx, gr_err *err) {
    static const char *const keys[] = {"offset", "shape", NULL};
    char sub[96];
    json_t *t = json_object_get(obj, key);
    if (!t) return FAIL("%s: missing '%s'", ctx, key);
    snprintf(sub, sizeof sub, "%s: tensor '%s'", ctx, key);
    if (!json_is_object(t))
        return FAIL("%s must be an object with offset and shape", sub);
    if (check_keys(t, keys, sub, err) < 0) return -1;
    json_t *off = json_object_get(t, "offset"), *shp = json_object_get(t, "shape");
    if (!off || !json_is_integer(off) || json_integer_value(off) < 0)
        return FAIL("%s: 'offset' must be a non-negative integer", sub);
    if (!shp || !json_is_array(shp) || json_array_size(shp) > 8)
        return FAIL("%s: 'shape' must be an array of up to 8 integers", sub);
    long long got[8];
    int got_n = (int)json_array_size(shp);
    for (int i = 0; i < got_n; i++) {
        json_t *e = json_array_get(shp, (size_t)i);
        if (!json_is_integer(e))
            return FAIL("%s: 'shape' must be an array of integers", sub);
        got[i] = (long long)json_integer_value(e);
    }
    int same = got_n == n;
    for (int i = 0; same && i < n; i++) same = got[i] == want[i];
    if (!same) {
        char g[64], w[64];
        format_dims(g, sizeof g, got, got_n);
        format_dims(w, sizeof w, want, n);
        return FAIL("%s has shape [%s], expected [%s]", sub, g, w);
    }
    /* want[] comes from validated, bounded dimensions, and every tensor must
     * fit in the data section, so the product cannot overflow before it is
     * compared with n_data. */
    unsigned long long count = 1, offset = (unsigned long long)json_integer_value(off);
    for (int i = 0; i < n; i++) {
        count *= (unsigned long long)want[i];
        if (count > n_data) break;
    }
    if (offset > n_data || count > n_data - offset)
        return FAIL("%s: floats [%llu, %llu) lie outside the data section "
                    "(%zu floats)", sub, offset, offset + count, n_data);
    *out = data + offset;
    return 0;
}

/* ---- header sections ---------------------------------------------------- */

/* The "waveform" kind: see waveform.h. */
static int parse_waveform_features(const json_t *f, waveform_params *p, gr_err *err) {
    static const char *const keys[] = {"kind", "sample_rate", "chunk_samples", "values",
                                       "norm_mean", "norm_std", NULL};
    const char *ctx = "features";
    double mean = 0, std = 0;
    if (check_keys(f, keys, ctx, err) < 0 ||
        field_int(f, "sample_rate", 1000, 384000, &p->sample_rate, ctx, err) < 0 ||
        field_int(f, "chunk_samples", 1, 1 << 24, &p->chunk_samples, ctx, err) < 0 ||
        field_int(f, "values", 1, MAX_DIM, &p->values, ctx, err) < 0 ||
        field_number(f, "norm_mean", &mean, ctx, err) < 0 ||
        field_number(f, "norm_std", &std, ctx, err) < 0)
        return -1;
    if (p->chunk_samples % p->values != 0)
        return FAIL("features: chunk_samples (%d) must be a multiple of values (%d)",
                    p->chunk_samples, p->values);
    if (!(std > 0 && std < 1e6) || !(fabs(mean) < 1e6))
        return FAIL("features: need 0 < norm_std < 1e6 and |norm_mean| < 1e6");
    p->norm_mean = (float)mean;
    p->norm_std = (float)std;
    return 0;
}

/* An optional string field that must be one of names[] (NULL-terminated);
 * absent: *out = 0, the first name. */
static int field_choice(const json_t *obj, const char *key, const char *const *names,
                        int *out, const char *ctx, gr_err *err) {
    const char *v = NULL;
    *out = 0;
    if (field_string(obj, key, 0, 32, &v, ctx, err) < 0) return -1;
    if (!v) return 0;
    for (int i = 0; names[i]; i++)
        if (strcmp(v, names[i]) == 0) return *out = i, 0;
    return FAIL("%s: %s '%s' is not one of the known values", ctx, key, v);
}

int model_parse_features(const json_t *f, feature_params *fp, gr_err *err) {
    static const char *const keys[] = {
        "kind", "sample_rate", "preemphasis", "n_fft", "win_length", "window",
        "hop_length", "n_mels", "chunk_frames", "fmin", "fmax", "mel_scale",
        "mel_norm", "power", "log", "amin", "log_offset", "norm_mean", "norm_std", NULL};
    /* In the order of mel.h's enums. */
    static const char *const windows[] = {"hann", "hann_symmetric", NULL};
    static const char *const scales[] = {"slaney", "htk", "kaldi", NULL};
    static const char *const logs[] = {"db", "ln", NULL};
    const char *ctx = "features", *kind = NULL, *norm = NULL;
    double fmin = 0, fmax = 0, power = 0, amin = 0, offset = 0, pre = 0, mean = 0, std = 0;
    int window = 0, scale = 0, log = 0;
    mel_params *p = &fp->mel;
    if (!json_is_object(f)) return FAIL("'features' must be an object");
    if (field_string(f, "kind", 1, 64, &kind, ctx, err) < 0) return -1;
    if (strcmp(kind, "waveform") == 0) {
        fp->kind = FEATURE_WAVEFORM;
        return parse_waveform_features(f, &fp->waveform, err);
    }
    if (strcmp(kind, "logmel") != 0)
        return FAIL("features: kind '%s' is not supported ('logmel' or 'waveform')", kind);
    fp->kind = FEATURE_LOGMEL;
    memset(p, 0, sizeof *p);
    if (check_keys(f, keys, ctx, err) < 0) return -1;
    if (field_int(f, "sample_rate", 1000, 384000, &p->sample_rate, ctx, err) < 0 ||
        field_int(f, "n_fft", 16, 65536, &p->n_fft, ctx, err) < 0 ||
        field_int(f, "win_length", 1, p->n_fft, &p->win_length, ctx, err) < 0 ||
        field_choice(f, "window", windows, &window, ctx, err) < 0 ||
        field_int(f, "hop_length", 1, 65536, &p->hop_length, ctx, err) < 0 ||
        field_int(f, "n_mels", 1, 1024, &p->n_mels, ctx, err) < 0 ||
        field_int(f, "chunk_frames", 1, 8192, &p->chunk_frames, ctx, err) < 0 ||
        field_number(f, "fmin", &fmin, ctx, err) < 0 ||
        field_number(f, "fmax", &fmax, ctx, err) < 0 ||
        field_choice(f, "mel_scale", scales, &scale, ctx, err) < 0 ||
        field_string(f, "mel_norm", 1, 16, &norm, ctx, err) < 0 ||
        field_number(f, "power", &power, ctx, err) < 0 ||
        field_choice(f, "log", logs, &log, ctx, err) < 0 ||
        field_number(f, "norm_mean", &mean, ctx, err) < 0 ||
        field_number(f, "norm_std", &std, ctx, err) < 0)
        return -1;
    if (!json_object_get(f, "mel_scale")) return FAIL("features: missing 'mel_scale'");
    if (json_object_get(f, "preemphasis") &&
        field_number(f, "preemphasis", &pre, ctx, err) < 0)
        return -1;
    if (!(pre >= 0 && pre < 1)) return FAIL("features: preemphasis must be in [0, 1)");
    /* The dB log floors at amin, the ln log adds log_offset: each needs its
     * own key and refuses the other's. */
    const char *need = log == MEL_LOG_DB ? "amin" : "log_offset";
    const char *refuse = log == MEL_LOG_DB ? "log_offset" : "amin";
    if (json_object_get(f, refuse))
        return FAIL("features: '%s' does not apply to log '%s'", refuse, logs[log]);
    if (field_number(f, need, log == MEL_LOG_DB ? &amin : &offset, ctx, err) < 0) return -1;
    if (!(fmin >= 0 && fmin < fmax && fmax <= p->sample_rate / 2.0))
        return FAIL("features: need 0 <= fmin < fmax <= sample_rate/2");
    if (strcmp(norm, "slaney") == 0) p->slaney_norm = 1;
    else if (strcmp(norm, "none") == 0) p->slaney_norm = 0;
    else return FAIL("features: mel_norm '%s' is not 'slaney' or 'none'", norm);
    if (p->slaney_norm && scale == MEL_SCALE_KALDI)
        return FAIL("features: the kaldi mel scale takes mel_norm 'none'");
    if (!(power > 0 && power <= 4)) return FAIL("features: power must be in (0, 4]");
    if (log == MEL_LOG_DB && !(amin > 0 && amin < 1))
        return FAIL("features: amin must be in (0, 1)");
    if (log == MEL_LOG_LN && !(offset > 0 && offset < 1))
        return FAIL("features: log_offset must be in (0, 1)");
    if (!(std > 0 && std < 1e6) || !(fabs(mean) < 1e6))
        return FAIL("features: need 0 < norm_std and |norm_mean| < 1e6");
    p->preemphasis = (float)pre;
    p->window = (mel_window)window;
    p->scale = (mel_scale)scale;
    p->log = (mel_log)log;
    p->fmin = (float)fmin;
    p->fmax = (float)fmax;
    p->power = (float)power;
    p->amin = (float)amin;
    p->log_offset = (float)offset;
    p->norm_mean = (float)mean;
    p->norm_std = (float)std;
    return 0;
}

/* strdup() is POSIX, not C11. */
static char *copy_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static int parse_genres(model *m, json_t *g, gr_err *err) {
    if (!json_is_array(g) || json_array_size(g) < 2 ||
        json_array_size(g) > MAX_GENRES)
        return FAIL("'genres' must be an array of 2 to %d labels", MAX_GENRES);
    size_t n = json_array_size(g);
    m->genres = calloc(n, sizeof *m->genres);
    if (!m->genres) return NO_MEMORY();
    m->n_genres = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(g, i);
        if (!json_is_string(e) || json_string_length(e) == 0 ||
            json_string_length(e) > MAX_LABEL_BYTES)
            return FAIL("genres[%zu] must be a non-empty string of at most %d "
                        "bytes", i, MAX_LABEL_BYTES);
        for (size_t j = 0; j < i; j++)
            if (strcmp(m->genres[j], json_string_value(e)) == 0)
                return FAIL("genre '%s' is listed twice", m->genres[j]);
        m->genres[i] = copy_string(json_string_value(e));
        if (!m->genres[i]) return NO_MEMORY();
    }
    return 0;
}

/* ---- layers ------------------------------------------------------------- */

typedef struct named {
    char name[MAX_NAME_BYTES + 1];
    int value;
    shape s;
} named;

/* State while walking the layer list. */
typedef struct walker {
    model *m;
    const float *data;          /* the decoded data section (borrowed) */
    size_t n_data;
    shape cur;                  /* shape of one item of the current value */
    int value;                  /* the current value: the last layer's output */
    int merge;                  /* index of the conv2d/dense op, still
                                 * without activation, that a following
                                 * batch-norm or activation may merge into
                                 * (nothing but dropout in between, and its
                                 * output not named), or -1 */
    named *names;               /* owned by build(), n_names */
    int n_names;
    json_t *desc;               /* describe()'s layer array (borrowed) */
    gr_err *err;
} walker;

static unsigned long long shape_floats(shape s) {
    return (unsigned long long)s.c * (unsigned long long)s.h * (unsigned long long)s.w;
}

static json_t *shape_json(shape s) {
    return s.flat ? json_pack("[i]", s.c) : json_pack("[iii]", s.c, s.h, s.w);
}

/* A new op reading the current value and writing a new one, which becomes
 * current (its shape is the caller's to set in W->cur and o->out). */
static op *push_op(walker *W, op_kind kind) {
    op *o = &W->m->ops[W->m->n_ops++];
    memset(o, 0, sizeof *o);
    o->kind = kind;
    o->in = W->cur;
    o->src[0] = W->value;
    o->n_src = 1;
    W->value = W->m->n_ops;   /* op i writes value i + 1 */
    return o;
}

/* Appends {"type", "output", "params", "mflops"} plus extra (stolen, may be
 * NULL) to the description. */
static int describe_layer(walker *W, const char *type, size_t params,
                          double macs, json_t *extra) {
    gr_err *err = W->err;
    json_t *d = json_pack("{s:s, s:o, s:I, s:f}", "type", type, "output",
                          shape_json(W->cur), "params", (json_int_t)params,
                          "mflops", 2.0 * macs / 1e6);
    if (d && extra && json_object_update(d, extra) < 0) {
        json_decref(d);
        d = NULL;
    }
    json_decref(extra);
    if (!d || json_array_append_new(W->desc, d) < 0) return NO_MEMORY();
    W->m->params += params;
    W->m->macs += macs;
    return 0;
}

static int check_item_size(walker *W, const char *ctx) {
    gr_err *err = W->err;
    if (shape_floats(W->cur) > MAX_ITEM_FLOATS)
        return FAIL("%s: output of %llu floats per item exceeds the limit of "
                    "%llu", ctx, shape_floats(W->cur), MAX_ITEM_FLOATS);
    return 0;
}

static float *copy_floats(const float *src, size_t n) {
    float *dst = malloc(n ? n * sizeof *dst : 1);
    if (dst && n) memcpy(dst, src, n * sizeof *dst);
    return dst;
}

/* An optional tensor: *out stays NULL when key is absent. */
static int field_tensor_opt(const json_t *obj, const char *key, const long long *want,
                            int n, walker *W, const float **out, const char *ctx) {
    *out = NULL;
    if (!json_object_get(obj, key)) return 0;
    return field_tensor(obj, key, want, n, W->data, W->n_data, out, ctx, W->err);
}

static int layer_conv2d(walker *W, json_t *L, const char *ctx) {
    static const char *const keys[] = {"type", "out_channels", "kernel", "stride",
                                       "padding", "groups", "weight", "bias", NULL};
    gr_err *err = W->err;
    int oc = 0, groups = 1, k[2] = {0, 0}, s[2] = {0, 0}, p[2] = {0, 0};
    const float *wt = NULL, *bias = NULL;
    if (W->cur.flat) return FAIL("%s: input must be [C,H,W], not flat", ctx);
    if (check_keys(L, keys, ctx, err) < 0 ||
        field_int(L, "out_channels", 1, MAX_DIM, &oc, ctx, err) < 0 ||
        field_ints(L, "kernel", 2, 1, MAX_WINDOW, k, ctx, err) < 0 ||
        field_ints(L, "stride", 2, 1, MAX_WINDOW, s, ctx, err) < 0 ||
        field_ints(L, "padding", 2, 0, MAX_WINDOW, p, ctx, err) < 0 ||
        (json_object_get(L, "groups") &&
         field_int(L, "groups", 1, MAX_DIM, &groups, ctx, err) < 0))
        return -1;
    shape in = W->cur;
    /* Grouped convolution is there for depthwise layers: one group per
     * input channel. Other groupings have no kernel. */
    if (groups > 1 && (groups != in.c || oc % in.c != 0))
        return FAIL("%s: groups = %d: only 1 or depthwise (groups = in channels = %d, "
                    "out_channels a multiple of it) is supported", ctx, groups, in.c);
    int oh = nn_window_out(in.h, k[0], s[0], p[0]);
    int ow = nn_window_out(in.w, k[1], s[1], p[1]);
    if (oh < 1 || ow < 1)
        return FAIL("%s: kernel %dx%d does not fit the padded %dx%d input", ctx,
                    k[0], k[1], in.h, in.w);
    unsigned long long cols = (unsigned long long)(in.c / groups) * (unsigned long long)k[0] *
                              (unsigned long long)k[1] * (unsigned long long)oh *
                              (unsigned long long)ow;
    if (cols > MAX_COLUMN_FLOATS)
        return FAIL("%s: im2col needs %llu floats per item (limit %llu)", ctx,
                    cols, MAX_COLUMN_FLOATS);
    nn_conv2d geometry = {in.c, in.h, in.w, oc, oh, ow, k[0], k[1], s[0], s[1], p[0], p[1],
                          NULL, NULL, NN_ACT_NONE, 0.0f};
    /* A convolution of one input channel is a depthwise one too, and the
     * direct kernel beats im2col + sgemm at it (docs/performance.md). */
    int depthwise = groups > 1 || (in.c == 1 && nn_depthwise_supported(&geometry));
    if (depthwise && !nn_depthwise_supported(&geometry))
        return FAIL("%s: a depthwise kernel must be at most %dx%d with equal strides of 1 or 2",
                    ctx, NN_DW_MAX_KERNEL, NN_DW_MAX_KERNEL);
    W->cur = (shape){oc, oh, ow, 0};
    if (check_item_size(W, ctx) < 0) return -1;
    long long wdims[4] = {oc, in.c / groups, k[0], k[1]}, bdims[1] = {oc};
    if (field_tensor(L, "weight", wdims, 4, W->data, W->n_data, &wt, ctx, err) < 0 ||
        field_tensor_opt(L, "bias", bdims, 1, W, &bias, ctx) < 0)
        return -1;
    size_t nw = (size_t)oc * (size_t)(in.c / groups) * (size_t)k[0] * (size_t)k[1];

    op *o = push_op(W, depthwise ? OP_DEPTHWISE : OP_CONV2D);
    o->out = W->cur;
    o->w = copy_floats(wt, nw);
    o->b = calloc((size_t)oc, sizeof *o->b);   /* zeros when absent: BN folds here */
    if (!o->w || !o->b) return NO_MEMORY();
    if (bias) memcpy(o->b, bias, (size_t)oc * sizeof *o->b);
    o->conv = geometry;
    o->conv.weight = o->w;
    o->conv.bias = o->b;
    W->merge = W->m->n_ops - 1;
    double macs = (double)nw * oh * ow;
    return describe_layer(W, "conv2d", nw + (bias ? (size_t)oc : 0), macs,
                          json_pack("{s:i, s:[ii], s:[ii], s:[ii], s:i, s:b}",
                                    "out_channels", oc, "kernel", k[0], k[1],
                                    "stride", s[0], s[1], "padding", p[0], p[1],
                                    "groups", groups, "bias", bias != NULL));
}

static int layer_dense(walker *W, json_t *L, const char *ctx) {
    static const char *const keys[] = {"type", "out_features", "weight", "bias", NULL};
    gr_err *err = W->err;
    int n_out = 0;
    const float *wt = NULL, *bias = NULL;
    if (!W->cur.flat)
        return FAIL("%s: input must be flat (add a flatten or global pool)", ctx);
    if (check_keys(L, keys, ctx, err) < 0 ||
        field_int(L, "out_features", 1, MAX_DIM, &n_out, ctx, err) < 0)
        return -1;
    int n_in = W->cur.c;
    long long wdims[2] = {n_out, n_in}, bdims[1] = {n_out};
    if (field_tensor(L, "weight", wdims, 2, W->data, W->n_data, &wt, ctx, err) < 0 ||
        field_tensor_opt(L, "bias", bdims, 1, W, &bias, ctx) < 0)
        return -1;
    size_t nw = (size_t)n_out * (size_t)n_in;
    W->cur = (shape){n_out, 1, 1, 1};

    op *o = push_op(W, OP_DENSE);
    o->out = W->cur;
    o->w = copy_floats(wt, nw);
    o->b = calloc((size_t)n_out, sizeof *o->b);
    if (!o->w || !o->b) return NO_MEMORY();
    if (bias) memcpy(o->b, bias, (size_t)n_out * sizeof *o->b);
    o->dense = (nn_dense){n_in, n_out, o->w, o->b, NN_ACT_NONE, 0.0f};
    W->merge = W->m->n_ops - 1;
    return describe_layer(W, "dense", nw + (bias ? (size_t)n_out : 0), (double)nw,
                          json_pack("{s:i, s:b}", "out_features", n_out, "bias",
                                    bias != NULL));
}

/* The merge target's weight row per output channel/feature. */
static size_t weight_row(const op *t) {
    switch (t->kind) {
    case OP_CONV2D: return (size_t)t->conv.in_c * t->conv.kh * t->conv.kw;
    case OP_DEPTHWISE: return (size_t)t->conv.kh * t->conv.kw;
    default: return (size_t)t->dense.in;
    }
}

static int layer_batchnorm(walker *W, json_t *L, const char *ctx) {
    static const char *const keys[] = {"type", "eps", "weight", "bias", "mean",
                                       "var", NULL};
    gr_err *err = W->err;
    double eps = 0;
    const float *gamma = NULL, *beta = NULL, *mean = NULL, *var = NULL;
    int c = W->cur.c;
    long long dims[1] = {c};
    if (check_keys(L, keys, ctx, err) < 0 ||
        field_number(L, "eps", &eps, ctx, err) < 0)
        return -1;
    if (!(eps > 0 && eps < 1)) return FAIL("%s: eps must be in (0, 1)", ctx);
    if (field_tensor(L, "weight", dims, 1, W->data, W->n_data, &gamma, ctx, err) < 0 ||
        field_tensor(L, "bias", dims, 1, W->data, W->n_data, &beta, ctx, err) < 0 ||
        field_tensor(L, "mean", dims, 1, W->data, W->n_data, &mean, ctx, err) < 0 ||
        field_tensor(L, "var", dims, 1, W->data, W->n_data, &var, ctx, err) < 0)
        return -1;

    /* y = (x - mean) / sqrt(var + eps) * gamma + beta = x * scale + shift */
    op *target = W->merge >= 0 ? &W->m->ops[W->merge] : NULL;
    float *scale = NULL, *shift = NULL;
    if (!target) {
        op *o = push_op(W, OP_AFFINE);
        o->out = W->cur;
        o->w = scale = malloc((size_t)c * sizeof *scale);
        o->b = shift = malloc((size_t)c * sizeof *shift);
        if (!scale || !shift) return NO_MEMORY();
    }
    for (int i = 0; i < c; i++) {
        if (!(var[i] >= 0)) return FAIL("%s: var[%d] is negative", ctx, i);
        double sc = gamma[i] / sqrt((double)var[i] + eps);
        double sh = beta[i] - mean[i] * sc;
        if (!isfinite(sc) || !isfinite(sh) || fabs(sc) > 1e30 || fabs(sh) > 1e30)
            return FAIL("%s: channel %d does not fold to finite floats", ctx, i);
        if (!target) {
            scale[i] = (float)sc;
            shift[i] = (float)sh;
            continue;
        }
        /* Fold into the preceding layer: its output channel/feature i is
         * row i of its weight matrix plus bias[i]. */
        size_t row = weight_row(target);
        float *w = target->w + (size_t)i * row;
        for (size_t j = 0; j < row; j++) w[j] = (float)(w[j] * sc);
        target->b[i] = (float)(target->b[i] * sc + sh);
    }
    return describe_layer(W, "batchnorm", 2 * (size_t)c, 0.0,
                          json_pack("{s:f, s:b}", "eps", eps, "folded",
                                    target != NULL));
}

static int layer_activation(walker *W, json_t *L, const char *type,
                            nn_activation act, const char *ctx) {
    static const char *const plain[] = {"type", NULL};
    static const char *const elu[] = {"type", "alpha", NULL};
    gr_err *err = W->err;
    double alpha = 0.0;
    if (check_keys(L, act == NN_ACT_ELU ? elu : plain, ctx, err) < 0) return -1;
    if (act == NN_ACT_ELU) {
        if (field_number(L, "alpha", &alpha, ctx, err) < 0) return -1;
        if (!(fabs(alpha) <= 1e6)) return FAIL("%s: |alpha| must be <= 1e6", ctx);
    }
    op *t = W->merge >= 0 ? &W->m->ops[W->merge] : NULL;
    if (t && (t->kind == OP_CONV2D || t->kind == OP_DEPTHWISE)) {
        t->conv.act = act;
        t->conv.alpha = (float)alpha;
    } else if (t && t->kind == OP_DENSE) {
        t->dense.act = act;
        t->dense.alpha = (float)alpha;
    } else {
        op *o = push_op(W, OP_ACTIVATION);
        o->out = W->cur;
        o->act = act;
        o->alpha = (float)alpha;
    }
    W->merge = -1;
    return describe_layer(W, type, 0, 0.0,
                          act == NN_ACT_ELU ? json_pack("{s:f}", "alpha", alpha) : NULL);
}

static int layer_pool(walker *W, json_t *L, const char *type, op_kind kind,
                      const char *ctx) {
    static const char *const keys[] = {"type", "kernel", "stride", NULL};
    gr_err *err = W->err;
    int k[2] = {0, 0}, s[2] = {0, 0};
    if (W->cur.flat) return FAIL("%s: input must be [C,H,W], not flat", ctx);
    if (check_keys(L, keys, ctx, err) < 0 ||
        field_ints(L, "kernel", 2, 1, MAX_WINDOW, k, ctx, err) < 0 ||
        field_ints(L, "stride", 2, 1, MAX_WINDOW, s, ctx, err) < 0)
        return -1;
    int oh = nn_window_out(W->cur.h, k[0], s[0], 0);
    int ow = nn_window_out(W->cur.w, k[1], s[1], 0);
    if (oh < 1 || ow < 1)
        return FAIL("%s: kernel %dx%d is larger than the %dx%d input", ctx, k[0],
                    k[1], W->cur.h, W->cur.w);
    op *o = push_op(W, kind);
    o->kh = k[0], o->kw = k[1], o->sh = s[0], o->sw = s[1];
    W->cur.h = oh;
    W->cur.w = ow;
    o->out = W->cur;
    W->merge = -1;
    return describe_layer(W, type, 0, 0.0,
                          json_pack("{s:[ii], s:[ii]}", "kernel", k[0], k[1],
                                    "stride", s[0], s[1]));
}

static int layer_squeeze_excite(walker *W, json_t *L, const char *ctx) {
    static const char *const keys[] = {"type", "squeeze", "fc1_weight", "fc1_bias",
                                       "fc2_weight", "fc2_bias", NULL};
    gr_err *err = W->err;
    int sq = 0;
    const float *w1, *b1, *w2, *b2;
    if (W->cur.flat) return FAIL("%s: input must be [C,H,W], not flat", ctx);
    if (check_keys(L, keys, ctx, err) < 0 ||
        field_int(L, "squeeze", 1, MAX_DIM, &sq, ctx, err) < 0)
        return -1;
    int c = W->cur.c;
    long long d1[2] = {sq, c}, d2[2] = {c, sq}, v1[1] = {sq}, v2[1] = {c};
    if (field_tensor(L, "fc1_weight", d1, 2, W->data, W->n_data, &w1, ctx, err) < 0 ||
        field_tensor(L, "fc1_bias", v1, 1, W->data, W->n_data, &b1, ctx, err) < 0 ||
        field_tensor(L, "fc2_weight", d2, 2, W->data, W->n_data, &w2, ctx, err) < 0 ||
        field_tensor(L, "fc2_bias", v2, 1, W->data, W->n_data, &b2, ctx, err) < 0)
        return -1;
    size_t nw = (size_t)c * (size_t)sq;
    op *o = push_op(W, OP_SQUEEZE_EXCITE);
    o->out = W->cur;
    o->w = copy_floats(w1, nw);
    o->b = copy_floats(b1, (size_t)sq);
    o->w2 = copy_floats(w2, nw);
    o->b2 = copy_floats(b2, (size_t)c);
    if (!o->w || !o->b || !o->w2 || !o->b2) return NO_MEMORY();
    o->se = (nn_squeeze_excite){c, sq, (size_t)W->cur.h * W->cur.w, o->w, o->b, o->w2, o->b2};
    W->merge = -1;
    double macs = 2.0 * (double)nw + (double)shape_floats(W->cur);
    return describe_layer(W, "squeeze_excite", 2 * nw + (size_t)sq + (size_t)c, macs,
                          json_pack("{s:i}", "squeeze", sq));
}

static const named *find_name(const walker *W, const char *name) {
    for (int i = 0; i < W->n_names; i++)
        if (strcmp(W->names[i].name, name) == 0) return &W->names[i];
    return NULL;
}

/* A name of an earlier layer's output: *out points into W->names. */
static int field_name(walker *W, const json_t *v, const named **out, const char *ctx) {
    gr_err *err = W->err;
    if (!json_is_string(v)) return FAIL("%s: a value name must be a string", ctx);
    *out = find_name(W, json_string_value(v));
    if (!*out)
        return FAIL("%s: no earlier layer is named '%.64s'", ctx, json_string_value(v));
    return 0;
}

/* add and concat: "inputs", 2 to MAX_OP_INPUTS names of earlier outputs. */
static int layer_join(walker *W, json_t *L, const char *type, const char *ctx) {
    static const char *const keys[] = {"type", "inputs", NULL};
    gr_err *err = W->err;
    json_t *in = json_object_get(L, "inputs");
    if (check_keys(L, keys, ctx, err) < 0) return -1;
    if (!json_is_array(in) || json_array_size(in) < 2 ||
        json_array_size(in) > MAX_OP_INPUTS)
        return FAIL("%s: 'inputs' must be an array of 2 to %d value names", ctx,
                    MAX_OP_INPUTS);
    int add = strcmp(type, "add") == 0, n = (int)json_array_size(in);
    const named *v[MAX_OP_INPUTS] = {NULL};
    unsigned long long total = 0;
    for (int i = 0; i < n; i++) {
        if (field_name(W, json_array_get(in, (size_t)i), &v[i], ctx) < 0) return -1;
        shape s = v[i]->s, s0 = v[0]->s;
        if (add && (s.c != s0.c || s.h != s0.h || s.w != s0.w || s.flat != s0.flat))
            return FAIL("%s: '%s' and '%s' differ in shape", ctx, v[0]->name, v[i]->name);
        if (!add && !s.flat) return FAIL("%s: '%s' is not flat", ctx, v[i]->name);
        total += shape_floats(s);
    }
    if (!add && total > MAX_DIM)
        return FAIL("%s: %llu features is more than %d", ctx, total, MAX_DIM);
    W->cur = v[0]->s;
    op *o = push_op(W, add ? OP_ADD : OP_CONCAT);
    o->n_src = n;
    for (int i = 0; i < n; i++) o->src[i] = v[i]->value;
    if (!add) W->cur = (shape){(int)total, 1, 1, 1};
    o->out = W->cur;
    W->merge = -1;
    return describe_layer(W, type, 0, add ? (double)(n - 1) * (double)(total / (unsigned)n) : 0.0,
                          json_pack("{s:O}", "inputs", in));
}

/* Validates a value name: 1 to MAX_NAME_BYTES of [A-Za-z0-9_.-]. */
static int check_name(const char *s, const char *ctx, gr_err *err) {
    size_t n = strlen(s);
    if (n == 0 || n > MAX_NAME_BYTES)
        return FAIL("%s: a name must be 1 to %d characters", ctx, MAX_NAME_BYTES);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-'))
            return FAIL("%s: name '%.64s' may hold only letters, digits, '_', '.', '-'",
                        ctx, s);
    }
    return 0;
}

static int layer_type(walker *W, json_t *L, const char *type, int last, const char *ctx) {
    static const char *const plain[] = {"type", NULL};
    static const char *const dropout[] = {"type", "p", NULL};
    gr_err *err = W->err;
    if (strcmp(type, "conv2d") == 0) return layer_conv2d(W, L, ctx);
    if (strcmp(type, "dense") == 0) return layer_dense(W, L, ctx);
    if (strcmp(type, "batchnorm") == 0) return layer_batchnorm(W, L, ctx);
    if (strcmp(type, "relu") == 0) return layer_activation(W, L, type, NN_ACT_RELU, ctx);
    if (strcmp(type, "elu") == 0) return layer_activation(W, L, type, NN_ACT_ELU, ctx);
    if (strcmp(type, "tanh") == 0) return layer_activation(W, L, type, NN_ACT_TANH, ctx);
    if (strcmp(type, "sigmoid") == 0)
        return layer_activation(W, L, type, NN_ACT_SIGMOID, ctx);
    if (strcmp(type, "hardswish") == 0)
        return layer_activation(W, L, type, NN_ACT_HARDSWISH, ctx);
    if (strcmp(type, "maxpool2d") == 0) return layer_pool(W, L, type, OP_MAXPOOL, ctx);
    if (strcmp(type, "avgpool2d") == 0) return layer_pool(W, L, type, OP_AVGPOOL, ctx);
    if (strcmp(type, "squeeze_excite") == 0) return layer_squeeze_excite(W, L, ctx);
    if (strcmp(type, "add") == 0 || strcmp(type, "concat") == 0)
        return layer_join(W, L, type, ctx);

    if (strcmp(type, "dropout") == 0) {
        double p = 0;
        if (check_keys(L, dropout, ctx, err) < 0 ||
            field_number(L, "p", &p, ctx, err) < 0)
            return -1;
        if (!(p >= 0 && p < 1)) return FAIL("%s: p must be in [0, 1)", ctx);
        /* Identity at inference: no op, and no barrier to merging. */
        return describe_layer(W, type, 0, 0.0, json_pack("{s:f}", "p", p));
    }

    if (check_keys(L, plain, ctx, err) < 0) return -1;
    if (strcmp(type, "flatten") == 0) {
        /* NCHW memory already is torch.flatten's C order; only the shape
         * changes. Flat input stays as it is. */
        W->cur = (shape){(int)shape_floats(W->cur), 1, 1, 1};
        W->merge = -1;
        return describe_layer(W, type, 0, 0.0, NULL);
    }
    if (strcmp(type, "global_avgpool") == 0 || strcmp(type, "global_maxpool") == 0) {
        if (W->cur.flat) return FAIL("%s: input must be [C,H,W], not flat", ctx);
        op *o = push_op(W, strcmp(type, "global_avgpool") == 0 ? OP_GLOBAL_AVGPOOL
                                                              : OP_GLOBAL_MAXPOOL);
        W->cur = (shape){W->cur.c, 1, 1, 1};
        o->out = W->cur;
        W->merge = -1;
        return describe_layer(W, type, 0, 0.0, NULL);
    }
    if (strcmp(type, "softmax") == 0) {
        if (!last) return FAIL("%s: softmax is only allowed as the last layer", ctx);
        if (!W->cur.flat) return FAIL("%s: input must be flat", ctx);
        op *o = push_op(W, OP_SOFTMAX);
        o->out = W->cur;
        W->merge = -1;
        return describe_layer(W, type, 0, 0.0, NULL);
    }
    return FAIL("%s: unknown type", ctx);
}

/* One layer: its optional "input" (a named earlier output to read instead
 * of the previous layer's) and "name" (for its own output) are handled
 * here, the rest by its type. */
static int layer_walk(walker *W, json_t *L, int index, int last) {
    gr_err *err = W->err;
    char ctx[96];
    if (!json_is_object(L)) return FAIL("layer %d must be an object", index);
    json_t *t = json_object_get(L, "type");
    if (!json_is_string(t)) return FAIL("layer %d: missing 'type'", index);
    const char *type = json_string_value(t);
    json_t *name = json_object_get(L, "name"), *input = json_object_get(L, "input");
    snprintf(ctx, sizeof ctx, "layer %d (%.24s%s%.40s)", index, type,
             json_is_string(name) ? " " : "", json_is_string(name) ? json_string_value(name) : "");

    if (name && !json_is_string(name)) return FAIL("%s: 'name' must be a string", ctx);
    if (name && check_name(json_string_value(name), ctx, err) < 0) return -1;
    if (name && find_name(W, json_string_value(name)))
        return FAIL("%s: the name is used twice", ctx);
    if (input) {
        const named *v;
        if (json_object_get(L, "inputs")) return FAIL("%s: both 'input' and 'inputs'", ctx);
        if (field_name(W, input, &v, ctx) < 0) return -1;
        W->value = v->value;
        W->cur = v->s;
        W->merge = -1;   /* the op that made it may be read elsewhere too */
    }
    /* The type's own keys are checked strictly: hand it a copy without
     * the two common ones. */
    json_t *own = json_copy(L);
    if (!own) return NO_MEMORY();
    json_object_del(own, "name");
    json_object_del(own, "input");
    int rc = layer_type(W, own, type, last, ctx);
    json_decref(own);
    if (rc < 0) return -1;
    if (name) {
        named *n = &W->names[W->n_names++];
        snprintf(n->name, sizeof n->name, "%s", json_string_value(name));
        n->value = W->value;
        n->s = W->cur;
        /* Its value may be read later: nothing may fold into its op now. */
        W->merge = -1;
        json_t *d = json_array_get(W->desc, json_array_size(W->desc) - 1);
        if (!d || json_object_set(d, "name", name) < 0) return NO_MEMORY();
    }
    if (input) {
        json_t *d = json_array_get(W->desc, json_array_size(W->desc) - 1);
        if (!d || json_object_set(d, "input", input) < 0) return NO_MEMORY();
    }
    return 0;
}

/* ---- model ------------------------------------------------------------- */

void model_free(model *m) {
    if (!m) return;
    free(m->name);
    free(m->version);
    if (m->genres)
        for (int i = 0; i < m->n_genres; i++) free(m->genres[i]);
    free(m->genres);
    if (m->ops)
        for (int i = 0; i < m->n_ops; i++) {
            free(m->ops[i].w);
            free(m->ops[i].b);
            free(m->ops[i].w2);
            free(m->ops[i].b2);
        }
    free(m->ops);
    free(m->values);
    free(m->names);
    free(m->buffer_floats);
    free(m->tags);
    free(m->tag_text);
    free(m->music_offsets);
    free(m->describe);
    free(m);
}

/* Adds value v to the output row (once) and returns its offset there. */
static size_t export_value(model *m, int v) {
    for (int i = 0; i < m->n_exported; i++)
        if (m->exported[i] == v) return m->export_offset[i];
    m->exported[m->n_exported] = v;
    m->export_offset[m->n_exported++] = m->row;
    m->row += m->values[v].floats;
    return m->row - m->values[v].floats;
}

/* An "outputs" entry's value: a flat named value, exported into the row. */
static int output_value(walker *W, const json_t *v, const char *ctx, size_t *offset,
                        int *width) {
    gr_err *err = W->err;
    const named *n;
    if (field_name(W, v, &n, ctx) < 0) return -1;
    if (!n->s.flat) return FAIL("%s: '%s' is not flat", ctx, n->name);
    *offset = export_value(W->m, n->value);
    *width = n->s.c;
    return 0;
}

/* "music": {"value": V, "music": [indices], "not_music": [indices]}. */
static int parse_music(walker *W, const json_t *o) {
    static const char *const keys[] = {"value", "music", "not_music", NULL};
    gr_err *err = W->err;
    model *m = W->m;
    const char *ctx = "outputs: music";
    size_t off;
    int width;
    if (!json_is_object(o)) return FAIL("%s must be an object", ctx);
    if (check_keys(o, keys, ctx, err) < 0 ||
        output_value(W, json_object_get(o, "value"), ctx, &off, &width) < 0)
        return -1;
    const json_t *lists[2] = {json_object_get(o, "music"), json_object_get(o, "not_music")};
    for (int k = 0; k < 2; k++)
        if (!json_is_array(lists[k]) || json_array_size(lists[k]) < 1 ||
            json_array_size(lists[k]) > MAX_TAGS)
            return FAIL("%s: '%s' must be an array of 1 to %d class indices", ctx,
                        k ? "not_music" : "music", MAX_TAGS);
    size_t n0 = json_array_size(lists[0]), n1 = json_array_size(lists[1]);
    m->music_offsets = malloc((n0 + n1) * sizeof *m->music_offsets);
    if (!m->music_offsets) return NO_MEMORY();
    for (size_t i = 0; i < n0 + n1; i++) {
        const json_t *e = json_array_get(lists[i >= n0], i >= n0 ? i - n0 : i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 ||
            json_integer_value(e) >= width)
            return FAIL("%s: class indices must be integers in [0, %d)", ctx, width);
        m->music_offsets[i] = off + (size_t)json_integer_value(e);
    }
    m->music = (model_music){m->music_offsets, m->music_offsets + n0, (int)n0, (int)n1};
    return 0;
}

/* "tags": {"value": V, "classes": [{"index", "label", "group"}, ...]}. */
static int parse_tags(walker *W, const json_t *o) {
    static const char *const keys[] = {"value", "classes", "min_probability", NULL};
    static const char *const ckeys[] = {"index", "label", "group", NULL};
    gr_err *err = W->err;
    model *m = W->m;
    const char *ctx = "outputs: tags";
    size_t off, text = 0;
    int width;
    if (!json_is_object(o)) return FAIL("%s must be an object", ctx);
    if (check_keys(o, keys, ctx, err) < 0 ||
        output_value(W, json_object_get(o, "value"), ctx, &off, &width) < 0)
        return -1;
    if (json_object_get(o, "min_probability") &&
        (field_number(o, "min_probability", &m->tags_floor, ctx, err) < 0 ||
         !(m->tags_floor >= 0 && m->tags_floor <= 1)))
        return FAIL("%s: 'min_probability' must be a number in [0, 1]", ctx);
    const json_t *classes = json_object_get(o, "classes");
    if (!json_is_array(classes) || json_array_size(classes) < 1 ||
        json_array_size(classes) > MAX_TAGS)
        return FAIL("%s: 'classes' must be an array of 1 to %d tags", ctx, MAX_TAGS);
    size_t n = json_array_size(classes);
    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(classes, i);
        const char *label, *group;
        int index;
        char sub[64];
        snprintf(sub, sizeof sub, "%s: class %zu", ctx, i);
        if (!json_is_object(c)) return FAIL("%s must be an object", sub);
        if (check_keys(c, ckeys, sub, err) < 0 ||
            field_int(c, "index", 0, width - 1, &index, sub, err) < 0 ||
            field_string(c, "label", 1, MAX_LABEL_BYTES, &label, sub, err) < 0 ||
            field_string(c, "group", 1, MAX_GROUP_BYTES, &group, sub, err) < 0)
            return -1;
        text += strlen(label) + strlen(group) + 2;
    }
    m->tags = calloc(n, sizeof *m->tags);
    char *t = m->tag_text = malloc(text);
    if (!m->tags || !t) return NO_MEMORY();
    for (size_t i = 0; i < n; i++) {
        const json_t *c = json_array_get(classes, i);
        const char *strs[2] = {json_string_value(json_object_get(c, "label")),
                               json_string_value(json_object_get(c, "group"))};
        for (int k = 0; k < 2; k++) {
            size_t len = strlen(strs[k]) + 1;
            memcpy(t, strs[k], len);
            if (k) m->tags[i].group = t;
            else m->tags[i].label = t;
            t += len;
        }
        m->tags[i].offset = off + (size_t)json_integer_value(json_object_get(c, "index"));
    }
    m->n_tags = (int)n;
    return 0;
}

static int parse_outputs(walker *W, const json_t *o) {
    static const char *const keys[] = {"embedding", "tags", "music", NULL};
    gr_err *err = W->err;
    model *m = W->m;
    m->row = (size_t)m->n_genres;
    if (!o) return 0;
    if (!json_is_object(o)) return FAIL("header: 'outputs' must be an object");
    if (check_keys(o, keys, "outputs", err) < 0) return -1;
    const json_t *e = json_object_get(o, "embedding");
    int width;
    if (e && output_value(W, e, "outputs: embedding", &m->embedding_offset, &width) < 0)
        return -1;
    if (e) m->embedding_dim = (size_t)width;
    if (json_object_get(o, "tags") && parse_tags(W, json_object_get(o, "tags")) < 0)
        return -1;
    if (json_object_get(o, "music") && parse_music(W, json_object_get(o, "music")) < 0)
        return -1;
    return 0;
}

/* Gives every value a workspace buffer: a value's buffer is free again
 * after the last op that reads it, and an elementwise op may write over an
 * input it is the last reader of. The model's input (value 0) is the
 * caller's and never written. */
static int plan_buffers(model *m, gr_err *err) {
    int n_values = m->n_ops + 1;
    int *in_use = calloc((size_t)n_values, sizeof *in_use);  /* per buffer: 1 if taken */
    m->buffer_floats = calloc((size_t)n_values, sizeof *m->buffer_floats);
    if (!in_use || !m->buffer_floats) {
        free(in_use);
        return NO_MEMORY();
    }
    for (int v = 0; v < n_values; v++) m->values[v].last_use = -1;
    for (int i = 0; i < m->n_ops; i++)
        for (int k = 0; k < m->ops[i].n_src; k++) m->values[m->ops[i].src[k]].last_use = i;
    m->values[m->result].last_use = m->n_ops;
    for (int i = 0; i < m->n_exported; i++) m->values[m->exported[i]].last_use = m->n_ops;
    m->values[0].buffer = -1;
    for (int i = 0; i < m->n_ops; i++) {
        const op *o = &m->ops[i];
        value *dst = &m->values[i + 1];
        int elementwise = o->kind == OP_ACTIVATION || o->kind == OP_AFFINE ||
                          o->kind == OP_SOFTMAX || o->kind == OP_SQUEEZE_EXCITE ||
                          o->kind == OP_ADD;
        dst->buffer = -1;
        for (int k = 0; elementwise && k < o->n_src && dst->buffer < 0; k++) {
            const value *s = &m->values[o->src[k]];
            if (o->src[k] != 0 && s->last_use == i) dst->buffer = s->buffer;
        }
        for (int b = 0; dst->buffer < 0; b++)
            if (!in_use[b]) {
                dst->buffer = b;
                if (b >= m->n_buffers) m->n_buffers = b + 1;
            }
        in_use[dst->buffer] = 1;
        if (dst->floats > m->buffer_floats[dst->buffer])
            m->buffer_floats[dst->buffer] = dst->floats;
        for (int k = 0; k < o->n_src; k++) {
            const value *s = &m->values[o->src[k]];
            if (o->src[k] != 0 && s->last_use == i && s->buffer != dst->buffer)
                in_use[s->buffer] = 0;
        }
        /* Nothing reads it: free at once (a side branch left unused). */
        if (dst->last_use < 0) in_use[dst->buffer] = 0;
    }
    free(in_use);
    return 0;
}

int model_export(model *m, const char *name, size_t *offset, size_t *width, gr_err *err) {
    const named *n = NULL;
    for (int i = 0; i < m->n_names && !n; i++)
        if (strcmp(m->names[i].name, name) == 0) n = &m->names[i];
    if (!n) return FAIL("no layer of the model is named '%.64s'", name);
    int known = 0;
    for (int i = 0; i < m->n_exported; i++) known |= m->exported[i] == n->value;
    if (!known && m->n_exported == MAX_EXPORTS)
        return FAIL("cannot export more than %d values", MAX_EXPORTS);
    *offset = export_value(m, n->value);
    *width = m->values[n->value].floats;
    if (known) return 0;
    free(m->buffer_floats);
    m->buffer_floats = NULL;
    m->n_buffers = 0;
    return plan_buffers(m, err);   /* it now lives to the end */
}

/* Validates the header object and builds the model from it and the decoded
 * data section. */
static int build(model *m, json_t *hdr, const float *data, size_t n_data,
                 gr_err *err) {
    static const char *const keys[] = {"name", "version", "description", "license",
                                       "genres", "features", "input", "layers",
                                       "outputs", "data", "training", NULL};
    const char *name = NULL, *version = NULL, *description = NULL, *license = NULL;
    if (check_keys(hdr, keys, "header", err) < 0 ||
        field_string(hdr, "name", 1, 128, &name, "header", err) < 0 ||
        field_string(hdr, "version", 1, 64, &version, "header", err) < 0 ||
        field_string(hdr, "description", 0, 4096, &description, "header", err) < 0 ||
        field_string(hdr, "license", 0, MAX_LICENSE_BYTES, &license, "header", err) < 0)
        return -1;
    m->name = copy_string(name);
    m->version = copy_string(version);
    if (!m->name || !m->version) return NO_MEMORY();
    if (parse_genres(m, json_object_get(hdr, "genres"), err) < 0) return -1;
    json_t *features = json_object_get(hdr, "features");
    if (!features) return FAIL("header: missing 'features'");
    if (model_parse_features(features, &m->feat, err) < 0) return -1;
    json_t *training = json_object_get(hdr, "training");
    if (!json_is_object(training)) return FAIL("header: 'training' must be an object");

    int in[3] = {0, 0, 0};
    if (field_ints(hdr, "input", 3, 1, MAX_DIM, in, "header", err) < 0) return -1;
    /* One chunk: a 1 x n_mels x chunk_frames image, or 1 x 1 x values. */
    int want_h = m->feat.kind == FEATURE_LOGMEL ? m->feat.mel.n_mels : 1;
    int want_w = m->feat.kind == FEATURE_LOGMEL ? m->feat.mel.chunk_frames
                                                : m->feat.waveform.values;
    if (in[0] != 1 || in[1] != want_h || in[2] != want_w)
        return FAIL("header: input [%d,%d,%d] does not match the %s features "
                    "[1,%d,%d]", in[0], in[1], in[2],
                    m->feat.kind == FEATURE_LOGMEL ? "logmel" : "waveform", want_h, want_w);
    m->input = (shape){in[0], in[1], in[2], 0};

    json_t *layers = json_object_get(hdr, "layers");
    if (!json_is_array(layers) || json_array_size(layers) == 0 ||
        json_array_size(layers) > MAX_LAYERS)
        return FAIL("header: 'layers' must be an array of 1 to %d layers", MAX_LAYERS);
    size_t n_layers = json_array_size(layers);
    m->ops = calloc(n_layers, sizeof *m->ops);
    m->values = calloc(n_layers + 1, sizeof *m->values);
    named *names = calloc(n_layers, sizeof *names);
    json_t *desc = json_array();
    walker W = {m, data, n_data, m->input, 0, -1, names, 0, desc, err};
    int rc = -1;
    if (!m->ops || !m->values || !names || !desc) {
        NO_MEMORY();
        goto done;
    }
    m->values[0].floats = (size_t)shape_floats(m->input);
    for (size_t i = 0; i < n_layers; i++) {
        int ops_before = m->n_ops;
        if (layer_walk(&W, json_array_get(layers, i), (int)i, i + 1 == n_layers) < 0) goto done;
        for (int k = ops_before; k < m->n_ops; k++)
            m->values[k + 1].floats = (size_t)shape_floats(m->ops[k].out);
    }
    if (!W.cur.flat || W.cur.c != m->n_genres) {
        FAIL("the last layer outputs %llu values, but there are %d genres",
             shape_floats(W.cur), m->n_genres);
        goto done;
    }
    m->result = W.value;
    if (parse_outputs(&W, json_object_get(hdr, "outputs")) < 0 || plan_buffers(m, err) < 0)
        goto done;
    m->names = names;   /* kept for model_export() */
    m->n_names = W.n_names;
    names = NULL;

    json_t *outputs = json_object_get(hdr, "outputs");
    json_t *d = json_pack(
        "{s:s, s:s, s:s, s:O, s:O, s:[iii], s:O, s:I, s:f, s:O}",
        "name", m->name, "version", m->version, "description",
        description ? description : "", "genres", json_object_get(hdr, "genres"),
        "features", features, "input", in[0], in[1], in[2], "layers", desc,
        "parameters", (json_int_t)m->params,
        "mflops_per_chunk", 2.0 * m->macs / 1e6, "training", training);
    if (d && outputs && json_object_set(d, "outputs", outputs) < 0) json_decref(d), d = NULL;
    if (d && license && json_object_set_new(d, "license", json_string(license)) < 0)
        json_decref(d), d = NULL;
    m->describe = d ? json_dumps(d, JSON_COMPACT) : NULL;
    json_decref(d);
    if (!m->describe) {
        NO_MEMORY();
        goto done;
    }
    rc = 0;
done:
    free(names);
    json_decref(desc);
    return rc;
}

/* Checks the container around data[0..len) and returns the parsed header
 * (caller owns it) with *data_off at the first float and *n_floats floats. */
static json_t *open_container(const unsigned char *p, size_t len,
                              size_t *data_off, size_t *n_floats, gr_err *err) {
    if (len < PREFIX_BYTES + 4) {
        FAIL("truncated: %zu bytes is too short for a model file", len);
        return NULL;
    }
    if (memcmp(p, magic, sizeof magic) != 0) {
        FAIL("bad magic: not a genred model file");
        return NULL;
    }
    uint32_t version = le32(p + 8), h = le32(p + 12);
    if (version < 1 || version > FORMAT_VERSION) {
        FAIL("unsupported format version %u (this build reads 1 to %d)", version,
             FORMAT_VERSION);
        return NULL;
    }
    if (h > MAX_HEADER_BYTES || h > len - PREFIX_BYTES - 4) {
        FAIL("header length %u does not fit in the %zu-byte file", h, len);
        return NULL;
    }
    size_t off = ((size_t)PREFIX_BYTES + h + DATA_ALIGN - 1) / DATA_ALIGN * DATA_ALIGN;
    int crc_ok = crc32_ieee(p, len - 4) == le32(p + len - 4);

    json_error_t jerr;
    json_t *hdr = json_loadb((const char *)p + PREFIX_BYTES, h, JSON_REJECT_DUPLICATES,
                             &jerr);
    if (!hdr) {
        if (!crc_ok) FAIL("CRC mismatch (file corrupted?)");
        else FAIL("header is not valid JSON: %s (line %d, column %d)", jerr.text,
                  jerr.line, jerr.column);
        return NULL;
    }
    if (!json_is_object(hdr)) {
        FAIL("header must be a JSON object");
        goto fail;
    }
    static const char *const dkeys[] = {"floats", NULL};
    json_t *dobj = json_object_get(hdr, "data");
    json_t *fv = json_is_object(dobj) ? json_object_get(dobj, "floats") : NULL;
    if (!json_is_integer(fv)) {
        FAIL("header: 'data' must be {\"floats\": N} with an integer N");
        goto fail;
    }
    if (check_keys(dobj, dkeys, "header: data", err) < 0) goto fail;
    if (json_integer_value(fv) < 0 ||
        (unsigned long long)json_integer_value(fv) > MAX_FILE_BYTES / 4) {
        FAIL("header: data.floats = %lld is out of range",
             (long long)json_integer_value(fv));
        goto fail;
    }
    size_t n = (size_t)json_integer_value(fv);
    unsigned long long want = (unsigned long long)off + 4ULL * n + 4ULL;
    if (len < want) {
        FAIL("truncated: %zu of %llu bytes", len, want);
        goto fail;
    }
    if (len > want) {
        FAIL("%llu unexpected bytes after the CRC", (unsigned long long)len - want);
        goto fail;
    }
    if (!crc_ok) {
        FAIL("CRC mismatch (file corrupted?)");
        goto fail;
    }
    for (size_t i = PREFIX_BYTES + h; i < off; i++)
        if (p[i] != 0) {
            FAIL("padding before the data section is not zero");
            goto fail;
        }
    *data_off = off;
    *n_floats = n;
    return hdr;
fail:
    json_decref(hdr);
    return NULL;
}

model *model_load_buffer(const void *buf, size_t len, gr_err *err) {
    const unsigned char *p = buf;
    size_t off, n;
    if (!buf) {
        gr_fail(err, GR_EINTERNAL, "no model data");
        return NULL;
    }
    json_t *hdr = open_container(p, len, &off, &n, err);
    if (!hdr) return NULL;
    float *data = malloc(n ? n * sizeof *data : 1);
    model *m = calloc(1, sizeof *m);
    if (!data || !m) {
        NO_MEMORY();
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        data[i] = le_float(p + off + 4 * i);
        if (!isfinite(data[i])) {
            FAIL("data float %zu is not finite", i);
            goto fail;
        }
    }
    if (build(m, hdr, data, n, err) < 0) goto fail;
    free(data);
    json_decref(hdr);
    return m;
fail:
    free(data);
    model_free(m);
    json_decref(hdr);
    return NULL;
}

model *model_load(const char *path, gr_err *err) {
    size_t len;
    unsigned char *buf = file_read(path, MAX_FILE_BYTES, GR_EFILE, &len, err);
    if (!buf) return NULL;
    gr_err inner = {GR_OK, ""};
    model *m = model_load_buffer(buf, len, &inner);
    free(buf);
    if (!m) gr_fail(err, inner.status, "%s: %s", path, inner.msg);
    return m;
}

const char *model_name(const model *m) { return m->name; }
const char *model_version(const model *m) { return m->version; }
int model_genre_count(const model *m) { return m->n_genres; }

const char *model_genre(const model *m, int i) {
    return i >= 0 && i < m->n_genres ? m->genres[i] : NULL;
}

const feature_params *model_features(const model *m) { return &m->feat; }

size_t model_input_floats(const model *m) { return (size_t)shape_floats(m->input); }

double model_macs(const model *m) { return m->macs; }
size_t model_param_count(const model *m) { return m->params; }

json_t *model_describe(const model *m) {
    return json_loads(m->describe, 0, NULL);
}

/* ---- inference --------------------------------------------------------- */

size_t model_output_floats(const model *m) { return m->row; }

size_t model_embedding(const model *m, size_t *offset) {
    if (offset) *offset = m->embedding_offset;
    return m->embedding_dim;
}

int model_tags(const model *m, const model_tag **tags) {
    *tags = m->tags;
    return m->n_tags;
}

double model_tags_floor(const model *m) { return m->tags_floor; }

const model_music *model_music_classes(const model *m) {
    return m->music.n_music > 0 ? &m->music : NULL;
}

model_workspace *model_workspace_create(const model *m, int max_batch,
                                        gr_err *err) {
    if (max_batch < 1 || max_batch > MAX_BATCH) {
        gr_fail(err, GR_EINTERNAL, "max_batch %d is out of range [1, %d]", max_batch,
                MAX_BATCH);
        return NULL;
    }
    unsigned long long act = 0, scratch = 0;
    for (int b = 0; b < m->n_buffers; b++)
        if (m->buffer_floats[b] > act) act = m->buffer_floats[b];
    for (int i = 0; i < m->n_ops; i++) {
        const op *o = &m->ops[i];
        size_t need = 0;
        if (o->kind == OP_CONV2D) {
            /* Sized for both ends: the kernel may pick its path by batch. */
            size_t one = nn_conv2d_scratch_floats(&o->conv, 1);
            size_t all = nn_conv2d_scratch_floats(&o->conv, max_batch);
            need = one > all ? one : all;
        } else if (o->kind == OP_DEPTHWISE) {
            need = nn_depthwise_scratch_floats(&o->conv);
        } else if (o->kind == OP_SQUEEZE_EXCITE) {
            need = nn_squeeze_excite_scratch_floats(&o->se, max_batch);
        }
        if (need > scratch) scratch = need;
    }
    act *= (unsigned long long)max_batch;
    /* sgemm takes int dimensions: a batched convolution's columns are at
     * most act floats wide, so bounding act bounds them too. */
    if (act > (unsigned long long)INT32_MAX || scratch > SIZE_MAX / sizeof(float) ||
        act > SIZE_MAX / sizeof(float)) {
        gr_fail(err, GR_EINTERNAL, "a workspace for %d items is too large for this model",
                max_batch);
        return NULL;
    }
    model_workspace *ws = calloc(1, sizeof *ws);
    if (!ws) {
        NO_MEMORY();
        return NULL;
    }
    ws->m = m;
    ws->max_batch = max_batch;
    ws->buf = calloc(m->n_buffers ? (size_t)m->n_buffers : 1, sizeof *ws->buf);
    int ok = ws->buf != NULL;
    for (int b = 0; ok && b < m->n_buffers; b++) {
        ws->buf[b] = malloc((size_t)m->buffer_floats[b] * (size_t)max_batch * sizeof(float));
        ok = ws->buf[b] != NULL;
    }
    ws->scratch = scratch ? malloc((size_t)scratch * sizeof(float)) : NULL;
    if (!ok || (scratch && !ws->scratch)) {
        model_workspace_free(ws);
        gr_fail(err, GR_EINTERNAL, "out of memory for a %d-item workspace", max_batch);
        return NULL;
    }
    return ws;
}

void model_workspace_free(model_workspace *ws) {
    if (!ws) return;
    if (ws->buf)
        for (int b = 0; b < ws->m->n_buffers; b++) free(ws->buf[b]);
    free(ws->buf);
    free(ws->scratch);
    free(ws);
}

static double thread_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int model_op_count(const model *m) { return m->n_ops; }

void model_workspace_profile(model_workspace *ws, double *seconds) { ws->profile = seconds; }

void model_op_label(const model *m, int i, char *buf, size_t size) {
    static const char *const kinds[] = {
        [OP_CONV2D] = "conv2d", [OP_DEPTHWISE] = "depthwise", [OP_DENSE] = "dense",
        [OP_AFFINE] = "affine", [OP_ACTIVATION] = "activation", [OP_MAXPOOL] = "maxpool",
        [OP_AVGPOOL] = "avgpool", [OP_GLOBAL_AVGPOOL] = "global_avgpool",
        [OP_GLOBAL_MAXPOOL] = "global_maxpool", [OP_SOFTMAX] = "softmax",
        [OP_SQUEEZE_EXCITE] = "squeeze_excite", [OP_ADD] = "add", [OP_CONCAT] = "concat"};
    if (i < 0 || i >= m->n_ops) {
        snprintf(buf, size, "?");
        return;
    }
    const op *o = &m->ops[i];
    if (o->kind == OP_CONV2D || o->kind == OP_DEPTHWISE)
        snprintf(buf, size, "%s %dx%d/%d %d->%d ch %dx%d -> %dx%d", kinds[o->kind], o->conv.kh,
                 o->conv.kw, o->conv.sh, o->conv.in_c, o->conv.out_c, o->conv.in_h,
                 o->conv.in_w, o->conv.out_h, o->conv.out_w);
    else
        snprintf(buf, size, "%s %dx%dx%d -> %dx%dx%d", kinds[o->kind], o->in.c, o->in.h,
                 o->in.w, o->out.c, o->out.h, o->out.w);
}

/* Where value v lives for this call. */
static float *value_at(const model_workspace *ws, const float *in, int v) {
    int b = ws->m->values[v].buffer;
    return b < 0 ? (float *)in : ws->buf[b];   /* the input is only ever read */
}

int model_forward(const model *m, model_workspace *ws, const float *in,
                  int batch, float *out, gr_err *err) {
    if (!m || !ws || ws->m != m)
        return gr_fail(err, GR_EINTERNAL, "model_forward: workspace of another model");
    if (batch < 1 || batch > ws->max_batch)
        return gr_fail(err, GR_EINTERNAL, "model_forward: batch of %d outside [1, %d]", batch,
                       ws->max_batch);
    for (int i = 0; i < m->n_ops; i++) {
        const op *o = &m->ops[i];
        const float *src = value_at(ws, in, o->src[0]);
        float *dst = value_at(ws, in, i + 1);
        double t0 = ws->profile ? thread_seconds() : 0.0;
        int planes = batch * o->in.c;
        size_t out_n = (size_t)batch * (size_t)shape_floats(o->out);
        switch (o->kind) {
        case OP_CONV2D:
            nn_conv2d_forward(&o->conv, batch, src, dst, ws->scratch);
            break;
        case OP_DEPTHWISE:
            nn_depthwise_forward(&o->conv, batch, src, dst, ws->scratch);
            break;
        case OP_DENSE:
            nn_dense_forward(&o->dense, batch, src, dst);
            break;
        case OP_MAXPOOL:
            nn_maxpool2d(src, planes, o->in.h, o->in.w, o->kh, o->kw, o->sh, o->sw, dst);
            break;
        case OP_AVGPOOL:
            nn_avgpool2d(src, planes, o->in.h, o->in.w, o->kh, o->kw, o->sh, o->sw, dst);
            break;
        case OP_GLOBAL_AVGPOOL:
            nn_global_avgpool(src, planes, (size_t)o->in.h * o->in.w, dst);
            break;
        case OP_GLOBAL_MAXPOOL:
            nn_global_maxpool(src, planes, (size_t)o->in.h * o->in.w, dst);
            break;
        case OP_SQUEEZE_EXCITE:
            nn_squeeze_excite_forward(&o->se, batch, src, dst, ws->scratch);
            break;
        case OP_ADD:
            nn_add(src, value_at(ws, in, o->src[1]), out_n, dst);
            for (int k = 2; k < o->n_src; k++)
                nn_add(dst, value_at(ws, in, o->src[k]), out_n, dst);
            break;
        case OP_CONCAT:
            for (int b = 0; b < batch; b++) {
                float *d = dst + (size_t)b * o->out.c;
                for (int k = 0; k < o->n_src; k++) {
                    size_t n = m->values[o->src[k]].floats;
                    memcpy(d, value_at(ws, in, o->src[k]) + (size_t)b * n, n * sizeof *d);
                    d += n;
                }
            }
            break;
        case OP_AFFINE:
        case OP_ACTIVATION:
        case OP_SOFTMAX:
            /* In place; the planner gave dst src's buffer unless src is
             * still needed (or is the caller's input). */
            if (dst != src) memcpy(dst, src, out_n * sizeof *dst);
            if (o->kind == OP_AFFINE)
                nn_channel_affine(dst, batch, o->in.c, (size_t)o->in.h * o->in.w, o->w, o->b);
            else if (o->kind == OP_ACTIVATION)
                nn_activate(dst, out_n, o->act, o->alpha);
            else
                nn_softmax(dst, batch, o->out.c);
            break;
        }
        if (ws->profile) ws->profile[i] += thread_seconds() - t0;
    }
    /* Each item's row: the genres, then every exported value. */
    const float *result = value_at(ws, in, m->result);
    for (int b = 0; b < batch; b++) {
        float *row = out + (size_t)b * m->row;
        memcpy(row, result + (size_t)b * m->n_genres, (size_t)m->n_genres * sizeof *row);
        for (int k = 0; k < m->n_exported; k++) {
            size_t n = m->values[m->exported[k]].floats;
            memcpy(row + m->export_offset[k],
                   value_at(ws, in, m->exported[k]) + (size_t)b * n, n * sizeof *row);
        }
    }
    return 0;
}
