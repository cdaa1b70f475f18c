/* test_model.c - model.c: loading, validation, batch-norm folding, forward.
 *
 * Model files are built here, byte by byte, from a header made with jansson
 * and a float array (the container code below follows docs/model-format.md
 * and computes its CRC bit by bit, independently of model.c's table). Two
 * small models cover every layer type; their outputs are compared with a
 * straightforward double-precision interpreter of the header's layer list
 * that applies batch-norm as written (unfolded), so folding is checked
 * numerically. Then valid files are corrupted in many ways and each must be
 * refused with a message naming the problem. Leaks are caught by running
 * this test under ASan or valgrind (see the module report). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "genred/model.h"

/* ---- building files ----------------------------------------------------- */

static uint32_t crc_bitwise(const unsigned char *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

typedef struct blob {
    unsigned char *p;
    size_t len;
    size_t header_len;   /* H */
    size_t data_off;     /* D */
} blob;

static void reseal(blob *b) {
    put32(b->p + b->len - 4, crc_bitwise(b->p, b->len - 4));
}

/* The container: magic, version, H, header, zero padding to 64, floats,
 * CRC. */
static blob container(const char *header, const float *data, size_t n) {
    blob b;
    b.header_len = strlen(header);
    b.data_off = (16 + b.header_len + 63) / 64 * 64;
    b.len = b.data_off + 4 * n + 4;
    b.p = calloc(1, b.len);
    assert_non_null(b.p);
    memcpy(b.p, "GENREDM\0", 8);
    put32(b.p + 8, 1);
    put32(b.p + 12, (uint32_t)b.header_len);
    memcpy(b.p + 16, header, b.header_len);
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &data[i], 4);
        put32(b.p + b.data_off + 4 * i, u);
    }
    reseal(&b);
    return b;
}

static blob container_json(json_t *hdr, const float *data, size_t n) {
    char *text = json_dumps(hdr, JSON_COMPACT);
    assert_non_null(text);
    blob b = container(text, data, n);
    free(text);
    return b;
}

/* ---- the test models ---------------------------------------------------- */

#define FEATURES                                                                 \
    "\"features\": {\"kind\": \"logmel\", \"sample_rate\": 16000, \"n_fft\": 512," \
    " \"win_length\": 400, \"hop_length\": 160, \"n_mels\": 8, \"chunk_frames\": 6," \
    " \"fmin\": 20.0, \"fmax\": 7600.0, \"mel_scale\": \"htk\", \"mel_norm\": \"none\"," \
    " \"power\": 1.0, \"amin\": 1e-05, \"norm_mean\": -20.0, \"norm_std\": 15.0}"

#define T(off, ...) "{\"offset\": " #off ", \"shape\": [" #__VA_ARGS__ "]}"

/* conv+BN(folded)+relu, maxpool, flatten, dense, softmax: 190 floats. */
static const char *tiny_header =
    "{\"name\": \"tiny\", \"version\": \"0.1\", \"description\": \"test model\","
    " \"genres\": [\"blues\", \"jazz\", \"metal\", \"pop\"], " FEATURES ","
    " \"input\": [1, 8, 6], \"layers\": ["
    " {\"type\": \"conv2d\", \"out_channels\": 3, \"kernel\": [3, 3], \"stride\": [1, 1],"
    "  \"padding\": [1, 1], \"weight\": " T(0, 3, 1, 3, 3) ", \"bias\": " T(27, 3) "},"
    " {\"type\": \"batchnorm\", \"eps\": 0.001, \"weight\": " T(30, 3) ", \"bias\": " T(33, 3)
    ", \"mean\": " T(36, 3) ", \"var\": " T(39, 3) "},"
    " {\"type\": \"relu\"},"
    " {\"type\": \"maxpool2d\", \"kernel\": [2, 2], \"stride\": [2, 2]},"
    " {\"type\": \"flatten\"},"
    " {\"type\": \"dense\", \"out_features\": 4, \"weight\": " T(42, 4, 36) ", \"bias\": " T(186, 4) "},"
    " {\"type\": \"softmax\"}],"
    " \"data\": {\"floats\": 190}, \"training\": {\"seed\": 7, \"note\": \"unit test\"}}";
#define TINY_FLOATS 190

/* BN on the input (runs on a copy of the caller's input), conv without bias
 * + ELU, standalone BN, avgpool, 1x1 conv + tanh, global max pool, dropout,
 * dense without bias + BN (folded), sigmoid: 96 floats. */
static const char *wide_header =
    "{\"name\": \"wide\", \"version\": \"2\","
    " \"genres\": [\"a\", \"b\", \"c\"], " FEATURES ","
    " \"input\": [1, 8, 6], \"layers\": ["
    " {\"type\": \"batchnorm\", \"eps\": 1e-05, \"weight\": " T(0, 1) ", \"bias\": " T(1, 1)
    ", \"mean\": " T(2, 1) ", \"var\": " T(3, 1) "},"
    " {\"type\": \"conv2d\", \"out_channels\": 4, \"kernel\": [2, 3], \"stride\": [2, 1],"
    "  \"padding\": [0, 1], \"weight\": " T(4, 4, 1, 2, 3) "},"
    " {\"type\": \"elu\", \"alpha\": 0.8},"
    " {\"type\": \"batchnorm\", \"eps\": 1e-05, \"weight\": " T(28, 4) ", \"bias\": " T(32, 4)
    ", \"mean\": " T(36, 4) ", \"var\": " T(40, 4) "},"
    " {\"type\": \"avgpool2d\", \"kernel\": [2, 2], \"stride\": [1, 2]},"
    " {\"type\": \"conv2d\", \"out_channels\": 5, \"kernel\": [1, 1], \"stride\": [1, 1],"
    "  \"padding\": [0, 0], \"weight\": " T(44, 5, 4, 1, 1) ", \"bias\": " T(64, 5) "},"
    " {\"type\": \"tanh\"},"
    " {\"type\": \"global_maxpool\"},"
    " {\"type\": \"dropout\", \"p\": 0.5},"
    " {\"type\": \"dense\", \"out_features\": 3, \"weight\": " T(69, 3, 5) "},"
    " {\"type\": \"batchnorm\", \"eps\": 0.01, \"weight\": " T(84, 3) ", \"bias\": " T(87, 3)
    ", \"mean\": " T(90, 3) ", \"var\": " T(93, 3) "},"
    " {\"type\": \"sigmoid\"}],"
    " \"data\": {\"floats\": 96}, \"training\": {}}";
#define WIDE_FLOATS 96

/* Nothing may merge across a pool or a flatten: avgpool then ReLU, maxpool
 * then a batch-norm (with negative scales, which do not commute with max),
 * a 1x1 conv then flatten then a per-feature batch-norm: 119 floats. */
static const char *pooled_header =
    "{\"name\": \"pooled\", \"version\": \"3\","
    " \"genres\": [\"a\", \"b\", \"c\"], " FEATURES ","
    " \"input\": [1, 8, 6], \"layers\": ["
    " {\"type\": \"conv2d\", \"out_channels\": 2, \"kernel\": [3, 3], \"stride\": [1, 1],"
    "  \"padding\": [1, 1], \"weight\": " T(0, 2, 1, 3, 3) ", \"bias\": " T(18, 2) "},"
    " {\"type\": \"avgpool2d\", \"kernel\": [2, 2], \"stride\": [2, 2]},"
    " {\"type\": \"relu\"},"
    " {\"type\": \"maxpool2d\", \"kernel\": [2, 1], \"stride\": [2, 1]},"
    " {\"type\": \"batchnorm\", \"eps\": 1e-05, \"weight\": " T(20, 2) ", \"bias\": " T(22, 2)
    ", \"mean\": " T(24, 2) ", \"var\": " T(26, 2) "},"
    " {\"type\": \"conv2d\", \"out_channels\": 2, \"kernel\": [1, 1], \"stride\": [1, 1],"
    "  \"padding\": [0, 0], \"weight\": " T(28, 2, 2, 1, 1) "},"
    " {\"type\": \"flatten\"},"
    " {\"type\": \"batchnorm\", \"eps\": 1e-05, \"weight\": " T(32, 12) ", \"bias\": " T(44, 12)
    ", \"mean\": " T(56, 12) ", \"var\": " T(68, 12) "},"
    " {\"type\": \"dense\", \"out_features\": 3, \"weight\": " T(80, 3, 12) ", \"bias\": " T(116, 3) "},"
    " {\"type\": \"softmax\"}],"
    " \"data\": {\"floats\": 119}, \"training\": {}}";
#define POOLED_FLOATS 119

/* A graph (format version 2): conv + BN + hardswish as the stem, named; an
 * inverted-residual block with its input named: 1x1 expand + BN + ReLU,
 * depthwise 3x3 + BN + hardswish, squeeze-excitation, 1x1 project + BN, then
 * add with the block's input; a depthwise stride-2 5x5 with an unfolded BN
 * (its output is named, so nothing may fold into it); global average pool
 * named "embedding"; a side head from it (dense + sigmoid, named "tags"); a
 * genre head over concat(embedding, tags) read through "input"; outputs for
 * the embedding, two tags and a music verdict. 437 floats. */
static const char *graph_header =
    "{\"name\": \"graph\", \"version\": \"4\", \"license\": \"test weights\","
    " \"genres\": [\"a\", \"b\", \"c\"], " FEATURES ","
    " \"input\": [1, 8, 6], \"layers\": ["
    " {\"type\": \"conv2d\", \"out_channels\": 4, \"kernel\": [3, 3], \"stride\": [1, 1],"
    "  \"padding\": [1, 1], \"weight\": " T(0, 4, 1, 3, 3) "},"
    " {\"type\": \"batchnorm\", \"eps\": 0.001, \"weight\": " T(36, 4) ", \"bias\": " T(40, 4)
    ", \"mean\": " T(44, 4) ", \"var\": " T(48, 4) "},"
    " {\"type\": \"hardswish\", \"name\": \"stem\"},"
    " {\"type\": \"conv2d\", \"out_channels\": 8, \"kernel\": [1, 1], \"stride\": [1, 1],"
    "  \"padding\": [0, 0], \"weight\": " T(52, 8, 4, 1, 1) "},"
    " {\"type\": \"batchnorm\", \"eps\": 0.001, \"weight\": " T(84, 8) ", \"bias\": " T(92, 8)
    ", \"mean\": " T(100, 8) ", \"var\": " T(108, 8) "},"
    " {\"type\": \"relu\"},"
    " {\"type\": \"conv2d\", \"out_channels\": 8, \"kernel\": [3, 3], \"stride\": [1, 1],"
    "  \"padding\": [1, 1], \"groups\": 8, \"weight\": " T(116, 8, 1, 3, 3) "},"
    " {\"type\": \"batchnorm\", \"eps\": 0.001, \"weight\": " T(188, 8) ", \"bias\": " T(196, 8)
    ", \"mean\": " T(204, 8) ", \"var\": " T(212, 8) "},"
    " {\"type\": \"hardswish\"},"
    " {\"type\": \"squeeze_excite\", \"squeeze\": 2, \"fc1_weight\": " T(220, 2, 8)
    ", \"fc1_bias\": " T(236, 2) ", \"fc2_weight\": " T(238, 8, 2) ", \"fc2_bias\": " T(254, 8) "},"
    " {\"type\": \"conv2d\", \"out_channels\": 4, \"kernel\": [1, 1], \"stride\": [1, 1],"
    "  \"padding\": [0, 0], \"weight\": " T(262, 4, 8, 1, 1) "},"
    " {\"type\": \"batchnorm\", \"eps\": 0.001, \"weight\": " T(294, 4) ", \"bias\": " T(298, 4)
    ", \"mean\": " T(302, 4) ", \"var\": " T(306, 4) ", \"name\": \"proj\"},"
    " {\"type\": \"add\", \"inputs\": [\"stem\", \"proj\"]},"
    " {\"type\": \"conv2d\", \"out_channels\": 4, \"kernel\": [5, 5], \"stride\": [2, 2],"
    "  \"padding\": [2, 2], \"groups\": 4, \"weight\": " T(310, 4, 1, 5, 5) ", \"bias\": " T(410, 4)
    ", \"name\": \"down\"},"
    " {\"type\": \"batchnorm\", \"eps\": 0.001, \"weight\": " T(414, 4) ", \"bias\": " T(418, 4)
    ", \"mean\": " T(422, 4) ", \"var\": " T(426, 4) "},"
    " {\"type\": \"global_avgpool\", \"name\": \"embedding\"},"
    " {\"type\": \"dense\", \"out_features\": 2, \"weight\": " T(0, 2, 4) ", \"bias\": " T(8, 2) "},"
    " {\"type\": \"sigmoid\", \"name\": \"tags\"},"
    " {\"type\": \"dropout\", \"p\": 0.1, \"input\": \"embedding\", \"name\": \"emb2\"},"
    " {\"type\": \"concat\", \"inputs\": [\"emb2\", \"tags\"]},"
    " {\"type\": \"dense\", \"out_features\": 3, \"weight\": " T(10, 3, 6) ", \"bias\": " T(430, 3) "},"
    " {\"type\": \"softmax\"}],"
    " \"outputs\": {\"embedding\": \"embedding\","
    "  \"tags\": {\"value\": \"tags\", \"min_probability\": 0.25, \"classes\": [{\"index\": 1, \"label\": \"Guitar\","
    "   \"group\": \"instrument\"}, {\"index\": 0, \"label\": \"Happy music\", \"group\": \"mood\"}]},"
    "  \"music\": {\"value\": \"tags\", \"music\": [0], \"not_music\": [1]}},"
    " \"data\": {\"floats\": 437}, \"training\": {}}";
#define GRAPH_FLOATS 437

static uint64_t rng_state;
static float frand(float lo, float hi) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((rng_state >> 40) / 16777216.0);
}

/* Random weights; every batch-norm variance (found through the header) is
 * made positive and away from zero, scales of either sign and away from
 * zero. */
static float *make_data(json_t *hdr, size_t n, uint64_t seed) {
    rng_state = seed;
    float *d = malloc(n * sizeof *d);
    assert_non_null(d);
    for (size_t i = 0; i < n; i++) d[i] = frand(-1, 1);
    json_t *layers = json_object_get(hdr, "layers"), *L;
    size_t i;
    json_array_foreach(layers, i, L) {
        if (strcmp(json_string_value(json_object_get(L, "type")), "batchnorm") != 0) continue;
        json_t *v = json_object_get(L, "var"), *w = json_object_get(L, "weight");
        size_t c = (size_t)json_integer_value(json_array_get(json_object_get(v, "shape"), 0));
        size_t vo = (size_t)json_integer_value(json_object_get(v, "offset"));
        size_t wo = (size_t)json_integer_value(json_object_get(w, "offset"));
        for (size_t k = 0; k < c; k++) {
            d[vo + k] = frand(0.2f, 3.0f);
            d[wo + k] = frand(0.5f, 2.0f) * (k % 2 ? -1.0f : 1.0f);
        }
    }
    return d;
}

static json_t *parse(const char *text) {
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (!j) print_error("test header: %s (line %d col %d)\n", e.text, e.line, e.column);
    assert_non_null(j);
    return j;
}

/* ---- reference interpreter (double, unfolded) --------------------------- */

typedef struct act {
    double *v;
    int c, h, w, flat;
} act;

static const float *tensor_at(json_t *L, const char *key, const float *data) {
    json_t *t = json_object_get(L, key);
    return t ? data + json_integer_value(json_object_get(t, "offset")) : NULL;
}

static void pair(json_t *L, const char *key, int out[2]) {
    json_t *a = json_object_get(L, key);
    out[0] = (int)json_integer_value(json_array_get(a, 0));
    out[1] = (int)json_integer_value(json_array_get(a, 1));
}

static act act_copy(act a) {
    size_t n = (size_t)a.c * a.h * a.w;
    act c = a;
    c.v = malloc(sizeof(double) * (n ? n : 1));
    assert_non_null(c.v);
    memcpy(c.v, a.v, sizeof(double) * n);
    return c;
}

/* Named values of one reference run. */
typedef struct ref_names {
    const char *name[32];
    act val[32];
    int n;
} ref_names;

static void ref_names_free(ref_names *r) {
    for (int i = 0; i < r->n; i++) free(r->val[i].v);
    r->n = 0;
}

static act *ref_find(ref_names *r, const char *name) {
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->name[i], name)) return &r->val[i];
    fail_msg("no value named %s", name);
    return NULL;
}

/* Runs the header's layers on x; out gets the last layer's output, and
 * names (if not NULL) every named value, which the caller frees. */
static void ref_forward_named(json_t *hdr, const float *data, const float *x, double *out,
                              ref_names *names) {
    ref_names local = {.n = 0};
    ref_names *r = names ? names : &local;
    r->n = 0;
    act a = {NULL, 1, 0, 0, 0};
    json_t *in = json_object_get(hdr, "input");
    a.h = (int)json_integer_value(json_array_get(in, 1));
    a.w = (int)json_integer_value(json_array_get(in, 2));
    a.v = malloc(sizeof(double) * a.h * a.w);
    assert_non_null(a.v);
    for (int i = 0; i < a.h * a.w; i++) a.v[i] = x[i];
    size_t li;
    json_t *L;
    json_array_foreach(json_object_get(hdr, "layers"), li, L) {
        const char *t = json_string_value(json_object_get(L, "type"));
        json_t *input = json_object_get(L, "input"), *name = json_object_get(L, "name");
        if (input) {
            free(a.v);
            a = act_copy(*ref_find(r, json_string_value(input)));
        }
        int n = a.c * a.h * a.w, k[2], s[2], p[2];
        if (!strcmp(t, "conv2d") || !strcmp(t, "maxpool2d") || !strcmp(t, "avgpool2d")) {
            int conv = !strcmp(t, "conv2d");
            json_t *gr = json_object_get(L, "groups");
            int dw = gr && json_integer_value(gr) > 1;
            pair(L, "kernel", k);
            pair(L, "stride", s);
            if (conv) pair(L, "padding", p);
            else p[0] = p[1] = 0;
            int oc = conv ? (int)json_integer_value(json_object_get(L, "out_channels")) : a.c;
            int oh = (a.h + 2 * p[0] - k[0]) / s[0] + 1, ow = (a.w + 2 * p[1] - k[1]) / s[1] + 1;
            const float *w = tensor_at(L, "weight", data), *b = tensor_at(L, "bias", data);
            double *o = malloc(sizeof(double) * oc * oh * ow);
            assert_non_null(o);
            for (int q = 0; q < oc; q++)
                for (int y = 0; y < oh; y++)
                    for (int xx = 0; xx < ow; xx++) {
                        double acc = conv ? (b ? b[q] : 0) : (t[0] == 'm' ? -INFINITY : 0);
                        for (int ch = conv && !dw ? 0 : q; ch < (conv && !dw ? a.c : q + 1); ch++)
                            for (int i = 0; i < k[0]; i++)
                                for (int j = 0; j < k[1]; j++) {
                                    int iy = y * s[0] - p[0] + i, ix = xx * s[1] - p[1] + j;
                                    if (iy < 0 || iy >= a.h || ix < 0 || ix >= a.w) continue;
                                    double v = a.v[(ch * a.h + iy) * a.w + ix];
                                    if (!conv && t[0] == 'm') acc = fmax(acc, v);
                                    else if (!conv) acc += v / (k[0] * k[1]);
                                    else if (dw) acc += v * w[(q * k[0] + i) * k[1] + j];
                                    else acc += v * w[((q * a.c + ch) * k[0] + i) * k[1] + j];
                                }
                        o[(q * oh + y) * ow + xx] = acc;
                    }
            free(a.v);
            a = (act){o, oc, oh, ow, 0};
        } else if (!strcmp(t, "batchnorm")) {
            const float *g = tensor_at(L, "weight", data), *b = tensor_at(L, "bias", data);
            const float *m = tensor_at(L, "mean", data), *v = tensor_at(L, "var", data);
            double eps = json_number_value(json_object_get(L, "eps"));
            for (int i = 0; i < n; i++) {
                int c = i / (a.h * a.w);
                a.v[i] = (a.v[i] - m[c]) / sqrt((double)v[c] + eps) * g[c] + b[c];
            }
        } else if (!strcmp(t, "relu")) {
            for (int i = 0; i < n; i++) a.v[i] = a.v[i] > 0 ? a.v[i] : 0;
        } else if (!strcmp(t, "elu")) {
            double al = json_number_value(json_object_get(L, "alpha"));
            for (int i = 0; i < n; i++) a.v[i] = a.v[i] > 0 ? a.v[i] : al * (exp(a.v[i]) - 1);
        } else if (!strcmp(t, "tanh")) {
            for (int i = 0; i < n; i++) a.v[i] = tanh(a.v[i]);
        } else if (!strcmp(t, "sigmoid")) {
            for (int i = 0; i < n; i++) a.v[i] = 1 / (1 + exp(-a.v[i]));
        } else if (!strcmp(t, "hardswish")) {
            for (int i = 0; i < n; i++) a.v[i] = a.v[i] * fmin(fmax(a.v[i] + 3, 0), 6) / 6;
        } else if (!strcmp(t, "squeeze_excite")) {
            int sq = (int)json_integer_value(json_object_get(L, "squeeze")), plane = a.h * a.w;
            const float *w1 = tensor_at(L, "fc1_weight", data), *b1 = tensor_at(L, "fc1_bias", data);
            const float *w2 = tensor_at(L, "fc2_weight", data), *b2 = tensor_at(L, "fc2_bias", data);
            double mean[64], hid[64];
            assert_true(a.c <= 64 && sq <= 64);
            for (int c = 0; c < a.c; c++) {
                mean[c] = 0;
                for (int i = 0; i < plane; i++) mean[c] += a.v[c * plane + i] / plane;
            }
            for (int q = 0; q < sq; q++) {
                hid[q] = b1[q];
                for (int c = 0; c < a.c; c++) hid[q] += w1[q * a.c + c] * mean[c];
                hid[q] = fmax(hid[q], 0);
            }
            for (int c = 0; c < a.c; c++) {
                double g = b2[c];
                for (int q = 0; q < sq; q++) g += w2[c * sq + q] * hid[q];
                g = 1 / (1 + exp(-g));
                for (int i = 0; i < plane; i++) a.v[c * plane + i] *= g;
            }
        } else if (!strcmp(t, "add") || !strcmp(t, "concat")) {
            json_t *ins = json_object_get(L, "inputs");
            int add = t[0] == 'a', total = 0;
            for (size_t i = 0; i < json_array_size(ins); i++)
                total += ref_find(r, json_string_value(json_array_get(ins, i)))->c;
            act first = *ref_find(r, json_string_value(json_array_get(ins, 0)));
            free(a.v);
            a = act_copy(first);
            if (!add) {
                free(a.v);
                a = (act){malloc(sizeof(double) * total), total, 1, 1, 1};
                assert_non_null(a.v);
            }
            int at = 0;
            for (size_t i = add; i < json_array_size(ins); i++) {
                act *v = ref_find(r, json_string_value(json_array_get(ins, i)));
                for (int j = 0; j < v->c * v->h * v->w; j++) {
                    if (add) a.v[j] += v->v[j];
                    else a.v[at + j] = v->v[j];
                }
                at += v->c;
            }
        } else if (!strcmp(t, "global_avgpool") || !strcmp(t, "global_maxpool")) {
            for (int c = 0; c < a.c; c++) {
                double acc = t[7] == 'm' ? -INFINITY : 0;
                for (int i = 0; i < a.h * a.w; i++) {
                    double v = a.v[c * a.h * a.w + i];
                    acc = t[7] == 'm' ? fmax(acc, v) : acc + v / (a.h * a.w);
                }
                a.v[c] = acc;
            }
            a.h = a.w = 1;
            a.flat = 1;
        } else if (!strcmp(t, "flatten")) {
            a = (act){a.v, n, 1, 1, 1};
        } else if (!strcmp(t, "dense")) {
            int no = (int)json_integer_value(json_object_get(L, "out_features"));
            const float *w = tensor_at(L, "weight", data), *b = tensor_at(L, "bias", data);
            double *o = malloc(sizeof(double) * no);
            assert_non_null(o);
            for (int q = 0; q < no; q++) {
                o[q] = b ? b[q] : 0;
                for (int i = 0; i < a.c; i++) o[q] += w[q * a.c + i] * a.v[i];
            }
            free(a.v);
            a = (act){o, no, 1, 1, 1};
        } else if (!strcmp(t, "softmax")) {
            double mx = -INFINITY, z = 0;
            for (int i = 0; i < n; i++) mx = fmax(mx, a.v[i]);
            for (int i = 0; i < n; i++) z += exp(a.v[i] - mx);
            for (int i = 0; i < n; i++) a.v[i] = exp(a.v[i] - mx) / z;
        } else {
            assert_string_equal(t, "dropout");
        }
        if (name) {
            assert_true(r->n < 32);
            r->name[r->n] = json_string_value(name);
            r->val[r->n++] = act_copy(a);
        }
    }
    memcpy(out, a.v, sizeof(double) * a.c);
    free(a.v);
    if (!names) ref_names_free(&local);
}


/* Loads header+data, runs batches of every size up to max_batch over random
 * inputs, and compares each output row with the reference to 1e-5 absolute:
 * the genres, and the exported embedding, tags and music classes at the
 * places the accessors name. */
static void check_against_reference(const char *header_text, size_t n_floats,
                                    uint64_t seed) {
    json_t *hdr = parse(header_text);
    float *data = make_data(hdr, n_floats, seed);
    blob b = container_json(hdr, data, n_floats);
    gr_err err = {GR_OK, ""};
    model *m = model_load_buffer(b.p, b.len, &err);
    if (!m) print_error("load: %s\n", err.msg);
    assert_non_null(m);

    int max_batch = 5, g = model_genre_count(m);
    size_t item = model_input_floats(m), row = model_output_floats(m);
    json_t *outputs = json_object_get(hdr, "outputs");
    model_workspace *ws = model_workspace_create(m, max_batch, &err);
    assert_non_null(ws);
    float *in = malloc(sizeof(float) * item * max_batch);
    float *out = malloc(sizeof(float) * row * max_batch);
    double *ref = malloc(sizeof(double) * g);
    assert_non_null(in);
    assert_non_null(out);
    assert_non_null(ref);
    for (int batch = 1; batch <= max_batch; batch++) {
        for (size_t i = 0; i < item * batch; i++) in[i] = frand(-3, 3);
        assert_int_equal(model_forward(m, ws, in, batch, out, &err), 0);
        for (int bi = 0; bi < batch; bi++) {
            ref_names names;
            ref_forward_named(hdr, data, in + item * bi, ref, &names);
            const float *o = out + row * bi;
            for (int j = 0; j < g; j++)
                if (!(fabs(o[j] - ref[j]) <= 1e-5)) {
                    print_error("%s item %d/%d genre %d: got %.8f want %.8f\n",
                                model_name(m), bi, batch, j, o[j], ref[j]);
                    fail();
                }
            size_t off, dim = model_embedding(m, &off);
            if (dim) {
                act *e = ref_find(&names, json_string_value(json_object_get(outputs, "embedding")));
                assert_int_equal(dim, e->c);
                for (size_t j = 0; j < dim; j++) assert_true(fabs(o[off + j] - e->v[j]) <= 1e-5);
            }
            const model_tag *tags;
            int n_tags = model_tags(m, &tags);
            json_t *tj = json_object_get(outputs, "tags");
            for (int k = 0; k < n_tags; k++) {
                act *v = ref_find(&names, json_string_value(json_object_get(tj, "value")));
                json_t *c = json_array_get(json_object_get(tj, "classes"), (size_t)k);
                assert_string_equal(tags[k].label, json_string_value(json_object_get(c, "label")));
                assert_string_equal(tags[k].group, json_string_value(json_object_get(c, "group")));
                double want = v->v[json_integer_value(json_object_get(c, "index"))];
                assert_true(fabs(o[tags[k].offset] - want) <= 1e-5);
            }
            const model_music *mu = model_music_classes(m);
            if (mu) {
                json_t *mj = json_object_get(outputs, "music");
                act *v = ref_find(&names, json_string_value(json_object_get(mj, "value")));
                for (int k = 0; k < mu->n_music + mu->n_other; k++) {
                    int other = k >= mu->n_music;
                    json_t *idx = json_array_get(json_object_get(mj, other ? "not_music" : "music"),
                                                 (size_t)(other ? k - mu->n_music : k));
                    size_t at = other ? mu->other[k - mu->n_music] : mu->music[k];
                    assert_true(fabs(o[at] - v->v[json_integer_value(idx)]) <= 1e-5);
                }
            }
            ref_names_free(&names);
        }
    }
    free(in);
    free(out);
    free(ref);
    free(data);
    free(b.p);
    json_decref(hdr);
    model_workspace_free(ws);
    model_free(m);
}

/* ---- valid models ------------------------------------------------------- */

static void test_load_tiny(void **state) {
    (void)state;
    json_t *hdr = parse(tiny_header);
    float *data = make_data(hdr, TINY_FLOATS, 1);
    blob b = container_json(hdr, data, TINY_FLOATS);
    gr_err err = {GR_OK, ""};
    model *m = model_load_buffer(b.p, b.len, &err);
    if (!m) print_error("load: %s\n", err.msg);
    assert_non_null(m);

    assert_string_equal(model_name(m), "tiny");
    assert_string_equal(model_version(m), "0.1");
    assert_int_equal(model_genre_count(m), 4);
    assert_string_equal(model_genre(m, 0), "blues");
    assert_string_equal(model_genre(m, 3), "pop");
    assert_null(model_genre(m, 4));
    assert_null(model_genre(m, -1));
    assert_int_equal(model_input_floats(m), 48);
    /* conv 27+3, batchnorm 3+3 (scale and shift, as torch counts), dense
     * 144+4. MACs: conv 3*1*3*3 per pixel * 48 pixels, dense 36*4. */
    assert_int_equal(model_param_count(m), 184);
    assert_true(model_macs(m) == 1296.0 + 144.0);

    assert_int_equal(model_features(m)->kind, FEATURE_LOGMEL);
    const mel_params *p = &model_features(m)->mel;
    assert_int_equal(p->sample_rate, 16000);
    assert_int_equal(p->n_fft, 512);
    assert_int_equal(p->win_length, 400);
    assert_int_equal(p->hop_length, 160);
    assert_int_equal(p->n_mels, 8);
    assert_int_equal(p->chunk_frames, 6);
    assert_true(p->fmin == 20.0f && p->fmax == 7600.0f);
    assert_int_equal(p->scale, MEL_SCALE_HTK);
    assert_int_equal(p->slaney_norm, 0);
    assert_true(p->power == 1.0f && p->amin == 1e-5f);
    assert_true(p->norm_mean == -20.0f && p->norm_std == 15.0f);

    json_t *d = model_describe(m);
    assert_non_null(d);
    assert_string_equal(json_string_value(json_object_get(d, "name")), "tiny");
    assert_string_equal(json_string_value(json_object_get(d, "description")), "test model");
    assert_int_equal(json_array_size(json_object_get(d, "genres")), 4);
    assert_int_equal(json_integer_value(json_object_get(d, "parameters")), 184);
    assert_true(fabs(json_real_value(json_object_get(d, "mflops_per_chunk")) - 2880e-6) < 1e-12);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(d, "features"), "kind")), "logmel");
    json_t *tr = json_object_get(d, "training");
    assert_int_equal(json_integer_value(json_object_get(tr, "seed")), 7);
    assert_string_equal(json_string_value(json_object_get(tr, "note")), "unit test");
    json_t *layers = json_object_get(d, "layers");
    assert_int_equal(json_array_size(layers), 7);   /* as in the file */
    json_t *l0 = json_array_get(layers, 0), *l1 = json_array_get(layers, 1);
    assert_string_equal(json_string_value(json_object_get(l0, "type")), "conv2d");
    json_t *o0 = json_object_get(l0, "output");
    assert_int_equal(json_array_size(o0), 3);
    assert_int_equal(json_integer_value(json_array_get(o0, 0)), 3);
    assert_int_equal(json_integer_value(json_array_get(o0, 1)), 8);
    assert_int_equal(json_integer_value(json_array_get(o0, 2)), 6);
    assert_int_equal(json_integer_value(json_object_get(l0, "params")), 30);
    assert_true(json_is_true(json_object_get(l1, "folded")));
    json_t *o3 = json_object_get(json_array_get(layers, 3), "output");
    assert_int_equal(json_integer_value(json_array_get(o3, 1)), 4);
    assert_int_equal(json_integer_value(json_array_get(o3, 2)), 3);
    json_t *o4 = json_object_get(json_array_get(layers, 4), "output");
    assert_int_equal(json_array_size(o4), 1);
    assert_int_equal(json_integer_value(json_array_get(o4, 0)), 36);
    /* Each call returns an independent object. */
    json_t *d2 = model_describe(m);
    assert_true(d2 != d && json_equal(d, d2));
    json_decref(d);
    json_decref(d2);

    free(data);
    free(b.p);
    json_decref(hdr);
    model_free(m);
}

static void patch(json_t *root, const char *path, const char *value);

/* Format version 2: names, inputs, add, concat, depthwise convolution,
 * squeeze-excitation, hardswish, and the exported outputs. */
static void test_graph(void **state) {
    (void)state;
    for (uint64_t seed = 1; seed <= 4; seed++)
        check_against_reference(graph_header, GRAPH_FLOATS, seed);
    json_t *hdr = parse(graph_header);
    float *data = make_data(hdr, GRAPH_FLOATS, 11);
    blob b = container_json(hdr, data, GRAPH_FLOATS);
    put32(b.p + 8, 2);
    reseal(&b);
    gr_err err = {GR_OK, ""};
    model *m = model_load_buffer(b.p, b.len, &err);
    assert_non_null(m);
    /* Row: 3 genres, the 4-wide embedding, the 2 tag probabilities (the
     * music verdict reads the same value: exported once). */
    assert_int_equal(model_output_floats(m), 3 + 4 + 2);
    size_t off;
    assert_int_equal(model_embedding(m, &off), 4);
    assert_int_equal(off, 3);
    const model_tag *tags;
    assert_int_equal(model_tags(m, &tags), 2);
    assert_string_equal(tags[0].label, "Guitar");
    assert_string_equal(tags[1].group, "mood");
    assert_int_equal(tags[0].offset, 3 + 4 + 1);
    assert_int_equal(tags[1].offset, 3 + 4 + 0);
    assert_true(model_tags_floor(m) == 0.25);
    const model_music *mu = model_music_classes(m);
    assert_non_null(mu);
    assert_int_equal(mu->n_music, 1);
    assert_int_equal(mu->n_other, 1);
    assert_int_equal(mu->music[0], 7);
    assert_int_equal(mu->other[0], 8);
    json_t *d = model_describe(m);
    assert_string_equal(json_string_value(json_object_get(d, "license")), "test weights");
    assert_non_null(json_object_get(json_object_get(d, "outputs"), "tags"));
    json_t *layers = json_object_get(d, "layers");
    assert_string_equal(json_string_value(json_object_get(json_array_get(layers, 2), "name")), "stem");
    assert_int_equal(json_integer_value(json_object_get(json_array_get(layers, 6), "groups")), 8);
    /* The BN after the named depthwise layer cannot fold into it. */
    assert_true(json_is_false(json_object_get(json_array_get(layers, 14), "folded")));
    assert_true(json_is_true(json_object_get(json_array_get(layers, 7), "folded")));
    json_decref(d);

    /* model_export(): a named inner value joins the row, after the others,
     * and is what the reference computes for it. */
    size_t eo, ew;
    gr_err xerr = {GR_OK, ""};
    assert_int_equal(model_export(m, "down", &eo, &ew, &xerr), 0);
    assert_int_equal(eo, 9);
    assert_int_equal(ew, 4 * 4 * 3);
    assert_int_equal(model_output_floats(m), 9 + 48);
    assert_int_equal(model_export(m, "embedding", &eo, &ew, &xerr), 0);
    assert_int_equal(eo, 3);   /* already there: not twice */
    assert_int_equal(model_output_floats(m), 9 + 48);
    assert_int_equal(model_export(m, "nope", &eo, &ew, &xerr), -1);
    assert_non_null(strstr(xerr.msg, "named 'nope'"));
    {
        model_workspace *ws = model_workspace_create(m, 2, &xerr);
        assert_non_null(ws);
        float x[2 * 48], row[2 * 57];
        for (int i = 0; i < 96; i++) x[i] = frand(-2, 2);
        assert_int_equal(model_forward(m, ws, x, 2, row, &xerr), 0);
        for (int bi = 0; bi < 2; bi++) {
            ref_names names;
            double ref[3];
            ref_forward_named(hdr, data, x + 48 * bi, ref, &names);
            act *down = ref_find(&names, "down");
            for (int k = 0; k < 48; k++)
                assert_true(fabs(row[57 * bi + 9 + k] - down->v[k]) <= 1e-5);
            for (int k = 0; k < 3; k++) assert_true(fabs(row[57 * bi + k] - ref[k]) <= 1e-5);
            ref_names_free(&names);
        }
        model_workspace_free(ws);
    }
    model_free(m);

    /* Models without outputs have none. */
    json_t *tiny = parse(tiny_header);
    float *td = make_data(tiny, TINY_FLOATS, 1);
    blob tb = container_json(tiny, td, TINY_FLOATS);
    m = model_load_buffer(tb.p, tb.len, &err);
    assert_non_null(m);
    assert_int_equal(model_output_floats(m), 4);
    assert_int_equal(model_embedding(m, &off), 0);
    assert_int_equal(model_tags(m, &tags), 0);
    assert_null(model_music_classes(m));
    model_free(m);
    free(tb.p);
    free(td);
    json_decref(tiny);
    free(b.p);
    free(data);
    json_decref(hdr);
}

/* Every refusal specific to graphs, each patched into graph_header. */
static void test_bad_graphs(void **state) {
    (void)state;
    static const struct {
        const char *path, *value, *expect;
    } cases[] = {
        {"layers/12/inputs", "[\"stem\", \"nope\"]", "no earlier layer is named 'nope'"},
        {"layers/12/inputs", "[\"stem\"]", "2 to 8 value names"},
        {"layers/19/type", "\"add\"", "differ in shape"},
        {"layers/12/inputs", "[\"stem\", \"proj\", \"proj\", \"proj\", \"proj\", \"proj\","
                             " \"proj\", \"proj\", \"proj\"]", "2 to 8 value names"},
        {"layers/19/inputs", "[\"emb2\", \"stem\"]", "'stem' is not flat"},
        {"layers/19/inputs", "[\"emb2\", 3]", "a value name must be a string"},
        {"layers/18/input", "\"tags2\"", "no earlier layer is named 'tags2'"},
        {"layers/18/input", "[1]", "a value name must be a string"},
        {"layers/2/name", "\"proj\"", "the name is used twice"},
        {"layers/3/name", "\"stem\"", "the name is used twice"},
        {"layers/2/name", "\"a b\"", "may hold only letters"},
        {"layers/2/name", "\"\"", "1 to 64 characters"},
        {"layers/2/name", "7", "'name' must be a string"},
        {"layers/6/groups", "4", "only 1 or depthwise"},
        {"layers/6/groups", "3", "only 1 or depthwise"},
        {"layers/6/groups", "0", "'groups' = 0 is out of range"},
        {"layers/6/stride", "[1, 2]", "equal strides of 1 or 2"},
        {"layers/6/weight/shape", "[8, 8, 3, 3]", "expected [8,1,3,3]"},
        {"layers/9/squeeze", "3", "expected [3,8]"},
        {"layers/9/fc2_bias", NULL, "missing 'fc2_bias'"},
        {"layers/9/gate", "\"hard\"", "unknown field 'gate'"},
        {"layers/16/type", "\"squeeze_excite\"", "input must be [C,H,W]"},
        {"layers/12/input", "\"stem\"", "both 'input' and 'inputs'"},
        {"outputs/embedding", "\"stem\"", "'stem' is not flat"},
        {"outputs/embedding", "\"none\"", "no earlier layer is named 'none'"},
        {"outputs/tags/classes/0/index", "2", "'index' = 2 is out of range"},
        {"outputs/tags/classes/0/group", NULL, "missing 'group'"},
        {"outputs/tags/classes", "[]", "1 to 1024 tags"},
        {"outputs/tags/colour", "1", "unknown field 'colour'"},
        {"outputs/tags/min_probability", "1.5", "'min_probability' must be a number in [0, 1]"},
        {"outputs/tags/min_probability", "\"high\"", "'min_probability' must be a"},
        {"outputs/music/music", "[2]", "class indices must be integers in [0, 2)"},
        {"outputs/music/not_music", "[]", "'not_music' must be an array"},
        {"outputs/extra", "1", "outputs: unknown field 'extra'"},
        {"outputs", "[]", "'outputs' must be an object"},
        {"license", "7", "'license' must be a string"},
    };
    json_t *base = parse(graph_header);
    float *data = make_data(base, GRAPH_FLOATS, 3);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *hdr = json_deep_copy(base);
        assert_non_null(hdr);
        patch(hdr, cases[i].path, cases[i].value);
        blob b = container_json(hdr, data, GRAPH_FLOATS);
        gr_err err = {GR_OK, ""};
        model *m = model_load_buffer(b.p, b.len, &err);
        if (m || !strstr(err.msg, cases[i].expect)) {
            print_error("case %zu (%s = %s): loaded=%d, message '%s', want '%s'\n", i,
                        cases[i].path, cases[i].value ? cases[i].value : "(deleted)", m != NULL,
                        err.msg, cases[i].expect);
            fail();
        }
        free(b.p);
        json_decref(hdr);
    }
    free(data);
    json_decref(base);
}

static void test_batchnorm_folding(void **state) {
    (void)state;
    /* tiny: BN folded into conv; wide: BN on the input and after ELU run
     * standalone, BN after a bias-less dense is folded (creating a bias). */
    for (uint64_t seed = 1; seed <= 3; seed++) {
        check_against_reference(tiny_header, TINY_FLOATS, seed);
        check_against_reference(wide_header, WIDE_FLOATS, seed);
        check_against_reference(pooled_header, POOLED_FLOATS, seed);
    }
    json_t *hdr = parse(wide_header);
    float *data = make_data(hdr, WIDE_FLOATS, 9);
    blob b = container_json(hdr, data, WIDE_FLOATS);
    model *m = model_load_buffer(b.p, b.len, NULL);
    assert_non_null(m);
    json_t *d = model_describe(m);
    json_t *layers = json_object_get(d, "layers");
    assert_true(json_is_false(json_object_get(json_array_get(layers, 0), "folded")));
    assert_true(json_is_false(json_object_get(json_array_get(layers, 3), "folded")));
    assert_true(json_is_true(json_object_get(json_array_get(layers, 10), "folded")));
    json_decref(d);
    model_free(m);
    free(b.p);
    free(data);
    json_decref(hdr);
}

static void test_global_avgpool_variant(void **state) {
    (void)state;
    char *text = strdup(wide_header);
    assert_non_null(text);
    char *at = strstr(text, "global_maxpool");
    assert_non_null(at);
    memcpy(at, "global_avgpool", 14);
    check_against_reference(text, WIDE_FLOATS, 5);
    free(text);
}

static void test_forward_arguments(void **state) {
    (void)state;
    json_t *hdr = parse(tiny_header);
    float *data = make_data(hdr, TINY_FLOATS, 2);
    blob b = container_json(hdr, data, TINY_FLOATS);
    gr_err err = {GR_OK, ""};
    model *m = model_load_buffer(b.p, b.len, &err), *m2 = model_load_buffer(b.p, b.len, &err);
    assert_non_null(m);
    assert_non_null(m2);
    model_workspace *ws = model_workspace_create(m, 3, &err);
    assert_non_null(ws);
    float in[48 * 4] = {0}, out[4 * 4];
    assert_int_equal(model_forward(m, ws, in, 0, out, &err), -1);
    assert_int_equal(err.status, GR_EINTERNAL);
    assert_non_null(strstr(err.msg, "batch of 0"));
    assert_int_equal(model_forward(m, ws, in, 4, out, &err), -1);
    assert_non_null(strstr(err.msg, "batch of 4 outside [1, 3]"));
    err = (gr_err){GR_OK, ""};
    assert_int_equal(model_forward(m2, ws, in, 1, out, &err), -1);   /* someone else's */
    assert_int_equal(err.status, GR_EINTERNAL);
    assert_non_null(strstr(err.msg, "another model"));
    assert_int_equal(model_forward(m, ws, in, 3, out, &err), 0);
    /* Same input, same answer, whatever else is in the batch. */
    for (int i = 0; i < 48; i++) in[i] = in[48 + i] = in[96 + i] = frand(-1, 1);
    for (int i = 0; i < 48; i++) in[48 + i] = 5.0f;
    float one[4];
    assert_int_equal(model_forward(m, ws, in, 3, out, &err), 0);
    assert_int_equal(model_forward(m, ws, in, 1, one, &err), 0);
    for (int j = 0; j < 4; j++) {
        assert_true(fabsf(one[j] - out[j]) <= 1e-6f);
        assert_true(fabsf(out[8 + j] - out[j]) <= 1e-6f);
    }
    assert_null(model_workspace_create(m, 0, &err));
    assert_non_null(strstr(err.msg, "max_batch"));
    assert_null(model_workspace_create(m, 1 << 20, &err));
    assert_non_null(strstr(err.msg, "max_batch"));
    model_workspace_free(ws);
    model_workspace_free(NULL);
    model_free(m);
    model_free(m2);
    model_free(NULL);
    free(data);
    free(b.p);
    json_decref(hdr);
}

/* ---- corrupt headers ---------------------------------------------------- */

/* Sets (or with value NULL deletes) the element at a '/'-separated path. */
static void patch(json_t *root, const char *path, const char *value) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *parent = root;
    char *key = buf, *slash;
    while ((slash = strchr(key, '/'))) {
        *slash = '\0';
        parent = json_is_array(parent) ? json_array_get(parent, strtoul(key, NULL, 10))
                                       : json_object_get(parent, key);
        assert_non_null(parent);
        key = slash + 1;
    }
    json_t *v = NULL;
    if (value) {
        json_error_t e;
        v = json_loads(value, JSON_DECODE_ANY, &e);
        assert_non_null(v);
    }
    if (json_is_array(parent)) {
        size_t i = strtoul(key, NULL, 10);
        assert_int_equal(v ? json_array_set_new(parent, i, v) : json_array_remove(parent, i), 0);
    } else {
        assert_int_equal(v ? json_object_set_new(parent, key, v) : json_object_del(parent, key), 0);
    }
}

typedef struct bad_header {
    const char *path[4], *value[4];   /* up to 4 patches to tiny_header */
    const char *expect;               /* substring of the error message */
} bad_header;

#define P1(p, v, e) {{p}, {v}, e}

static const bad_header bad_headers[] = {
    P1("layers/0/weight/shape", "[3,1,3,2]", "has shape [3,1,3,2], expected [3,1,3,3]"),
    P1("layers/0/weight/shape", "[3,1,3,3,1]", "expected [3,1,3,3]"),
    P1("layers/0/weight/shape", "[3,1,3,\"3\"]", "array of integers"),
    P1("layers/0/weight/offset", "170", "outside the data section"),
    P1("layers/5/bias/offset", "187", "outside the data section"),
    P1("layers/5/bias/offset", "18446744073709551615", "not valid JSON"),
    P1("layers/0/weight/offset", "-1", "non-negative"),
    P1("layers/0/weight", "[0, 27]", "must be an object"),
    P1("layers/0/weight/stride", "1", "unknown field 'stride'"),
    P1("genres", "[\"a\",\"b\",\"c\",\"d\",\"e\"]", "outputs 4 values, but there are 5 genres"),
    P1("genres", "[\"a\",\"b\",\"c\"]", "outputs 4 values, but there are 3 genres"),
    P1("genres", "[\"a\",\"b\",\"a\",\"d\"]", "genre 'a' is listed twice"),
    P1("genres", "[\"a\",\"\",\"c\",\"d\"]", "genres[1] must be a non-empty string"),
    P1("genres", "[\"a\",\"b\",3,\"d\"]", "genres[2] must be a non-empty string"),
    P1("genres", "[\"a\"]", "'genres' must be an array of 2"),
    P1("genres", NULL, "'genres' must be an array"),
    P1("layers/2/type", "\"conv3d\"", "layer 2 (conv3d): unknown type"),
    P1("layers/2/type", "7", "layer 2: missing 'type'"),
    P1("layers/2", "[]", "layer 2 must be an object"),
    P1("layers/0/type", NULL, "layer 0: missing 'type'"),
    P1("layers/0/out_channels", "3.5", "'out_channels' must be an integer"),
    P1("layers/0/out_channels", "-3", "'out_channels' = -3 is out of range"),
    P1("layers/0/out_channels", "1099511627776", "is out of range"),
    P1("layers/0/out_channels", "1e400", "not valid JSON"),
    P1("layers/0/out_channels", NULL, "missing 'out_channels'"),
    P1("layers/0/kernel", "[3]", "'kernel' must be an array of 2 integers"),
    P1("layers/0/stride", "[0,1]", "'stride'[0] = 0 is out of range"),
    P1("layers/0/padding", "[1,-1]", "'padding'[1] = -1 is out of range"),
    P1("layers/0/kernel", "[11,3]", "does not fit"),
    P1("layers/0/bogus", "1", "layer 0 (conv2d): unknown field 'bogus'"),
    P1("layers/1/eps", "0", "eps must be in (0, 1)"),
    P1("layers/1/eps", "\"small\"", "'eps' must be a finite number"),
    P1("layers/1/var", NULL, "missing 'var'"),
    P1("layers/3/kernel", "[9,2]", "larger than the 8x6 input"),
    P1("layers/2/type", "\"softmax\"", "only allowed as the last layer"),
    P1("layers/4", NULL, "input must be flat"),
    P1("layers/6/type", "\"dropout\"", "missing 'p'"),
    P1("layers", "[]", "1 to 512 layers"),
    P1("layers", "{}", "1 to 512 layers"),
    P1("name", NULL, "missing 'name'"),
    P1("name", "\"\"", "'name' must not be empty"),
    P1("version", "3", "'version' must be a string"),
    P1("training", "[1]", "'training' must be an object"),
    P1("training", NULL, "'training' must be an object"),
    P1("extra", "1", "header: unknown field 'extra'"),
    P1("features", NULL, "missing 'features'"),
    P1("features/kind", "\"mfcc\"", "kind 'mfcc' is not supported"),
    P1("features/n_mels", NULL, "missing 'n_mels'"),
    P1("features/fmax", "9000.0", "fmax <= sample_rate/2"),
    P1("features/mel_scale", "\"bark\"", "mel_scale 'bark'"),
    P1("features/mel_norm", "\"l2\"", "mel_norm 'l2'"),
    P1("features/norm_std", "0", "norm_std"),
    P1("features/win_length", "1024", "'win_length' = 1024 is out of range"),
    P1("features/color", "\"red\"", "features: unknown field 'color'"),
    P1("input", "[1,8,7]", "does not match the logmel features"),
    P1("input", "[1,8]", "'input' must be an array of 3 integers"),
    P1("data/floats", "189", "unexpected bytes after the CRC"),
    P1("data/floats", "191", "truncated"),
    P1("data/floats", "-1", "data.floats = -1 is out of range"),
    P1("data/floats", "1.5", "integer N"),
    P1("data/extra", "1", "unknown field 'extra'"),
    P1("data", NULL, "integer N"),
    /* Absurd sizes are refused by shape, before any tensor is looked at. */
    {{"features/n_mels", "features/chunk_frames", "input", "layers/0/out_channels"},
     {"512", "512", "[1,512,512]", "128"},
     "exceeds the limit"},
};

static void test_bad_headers(void **state) {
    (void)state;
    json_t *base = parse(tiny_header);
    float *data = make_data(base, TINY_FLOATS, 3);
    for (size_t i = 0; i < sizeof bad_headers / sizeof bad_headers[0]; i++) {
        const bad_header *t = &bad_headers[i];
        json_t *hdr = json_deep_copy(base);
        assert_non_null(hdr);
        int splice = strstr(t->expect, "not valid JSON") != NULL;
        for (int k = 0; !splice && k < 4 && t->path[k]; k++)
            patch(hdr, t->path[k], t->value[k]);
        blob b;
        if (splice) {
            /* jansson cannot hold the value; splice the text in instead. */
            char *text = json_dumps(base, JSON_COMPACT);
            const char *key = strrchr(t->path[0], '/') + 1;
            char needle[64], *at;
            snprintf(needle, sizeof needle, "\"%s\":", key);
            at = strstr(text, needle);
            assert_non_null(at);
            char *value_end = at + strlen(needle);
            while (*value_end != ',' && *value_end != '}') value_end++;
            char *bad = malloc(strlen(text) + 64);
            assert_non_null(bad);
            sprintf(bad, "%.*s%s%s", (int)(at + strlen(needle) - text), text,
                    t->value[0], value_end);
            b = container(bad, data, TINY_FLOATS);
            free(bad);
            free(text);
        } else {
            b = container_json(hdr, data, TINY_FLOATS);
        }
        gr_err err = {GR_OK, ""};
        model *m = model_load_buffer(b.p, b.len, &err);
        if (m || !strstr(err.msg, t->expect) || err.status != GR_EFILE) {
            print_error("case %zu (%s = %s): loaded=%d, message '%s', want '%s'\n", i,
                        t->path[0], t->value[0] ? t->value[0] : "(deleted)", m != NULL,
                        err.msg, t->expect);
            fail();
        }
        free(b.p);
        json_decref(hdr);
    }
    free(data);
    json_decref(base);
}

/* ---- corrupt containers ------------------------------------------------- */

static void expect_refused(const unsigned char *p, size_t len, const char *expect) {
    gr_err err = {GR_OK, ""};
    model *m = model_load_buffer(p, len, &err);
    if (m || !strstr(err.msg, expect)) {
        print_error("loaded=%d, message '%s', want '%s'\n", m != NULL, err.msg, expect);
        model_free(m);
        fail();
    }
}

static void test_bad_containers(void **state) {
    (void)state;
    json_t *hdr = parse(tiny_header);
    float *data = make_data(hdr, TINY_FLOATS, 4);
    blob good = container_json(hdr, data, TINY_FLOATS);
    blob b = {malloc(good.len + 8), good.len, good.header_len, good.data_off};
    assert_non_null(b.p);
    assert_true(good.data_off % 64 == 0 && good.data_off > 16 + good.header_len);
#define FRESH() memcpy(b.p, good.p, good.len)

    FRESH();
    b.p[0] = 'X';
    expect_refused(b.p, b.len, "bad magic");
    FRESH();
    put32(b.p + 8, 3);
    reseal(&b);
    expect_refused(b.p, b.len, "unsupported format version 3");
    FRESH();
    put32(b.p + 8, 0);
    reseal(&b);
    expect_refused(b.p, b.len, "unsupported format version 0");
    FRESH();
    put32(b.p + 12, 0xFFFFFFF0u);
    expect_refused(b.p, b.len, "header length");
    expect_refused(good.p, 0, "truncated");
    expect_refused(good.p, 19, "truncated");
    expect_refused(good.p, 100, "header length");            /* inside the header */
    expect_refused(good.p, good.len - 1, "truncated");       /* inside the CRC */
    expect_refused(good.p, good.data_off + 40, "truncated"); /* inside the data */
    FRESH();
    memset(b.p + good.len, 0, 4);
    expect_refused(b.p, good.len + 4, "4 unexpected bytes after the CRC");
    FRESH();
    b.p[good.data_off + 5] ^= 0x10;                          /* a weight bit */
    expect_refused(b.p, b.len, "CRC mismatch (file corrupted?)");
    FRESH();
    b.p[good.len - 1] ^= 0x01;                               /* the CRC itself */
    expect_refused(b.p, b.len, "CRC mismatch");
    FRESH();
    b.p[17] = '[';                                           /* header syntax */
    expect_refused(b.p, b.len, "CRC mismatch");
    FRESH();
    b.p[16 + good.header_len] = 1;                           /* padding */
    reseal(&b);
    expect_refused(b.p, b.len, "padding");

    /* Valid container, broken JSON. */
    blob j = container("{\"name\": ", data, TINY_FLOATS);
    expect_refused(j.p, j.len, "header is not valid JSON");
    free(j.p);
    j = container("[1, 2]", data, TINY_FLOATS);
    expect_refused(j.p, j.len, "must be a JSON object");
    free(j.p);
    j = container("{\"name\": \"a\", \"name\": \"b\"}", data, TINY_FLOATS);
    expect_refused(j.p, j.len, "duplicate");
    free(j.p);
    j = container("", data, 0);
    expect_refused(j.p, j.len, "not valid JSON");
    free(j.p);

    /* Data that cannot be used. */
    float saved = data[5];
    data[5] = NAN;
    j = container_json(hdr, data, TINY_FLOATS);
    expect_refused(j.p, j.len, "data float 5 is not finite");
    free(j.p);
    data[5] = INFINITY;
    j = container_json(hdr, data, TINY_FLOATS);
    expect_refused(j.p, j.len, "not finite");
    free(j.p);
    data[5] = saved;
    data[40] = -0.5f;                                        /* var[1] */
    j = container_json(hdr, data, TINY_FLOATS);
    expect_refused(j.p, j.len, "var[1] is negative");
    free(j.p);

    gr_err err = {GR_OK, ""};
    assert_null(model_load_buffer(NULL, 10, &err));
    assert_null(model_load_buffer(good.p, 5, NULL));         /* NULL err is fine */
    model *m = model_load_buffer(good.p, good.len, &err);
    assert_non_null(m);                                      /* the original is fine */
    model_free(m);
#undef FRESH
    free(b.p);
    free(good.p);
    free(data);
    json_decref(hdr);
}

/* ---- files -------------------------------------------------------------- */

static void test_load_from_path(void **state) {
    (void)state;
    json_t *hdr = parse(tiny_header);
    float *data = make_data(hdr, TINY_FLOATS, 5);
    blob b = container_json(hdr, data, TINY_FLOATS);
    char path[] = "/tmp/genred-test-model-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b.p, b.len), (ssize_t)b.len);
    gr_err err = {GR_OK, ""};
    model *m = model_load(path, &err);
    if (!m) print_error("%s\n", err.msg);
    assert_non_null(m);
    model_free(m);

    b.p[b.data_off + 100] ^= 0x40;
    assert_int_equal(pwrite(fd, b.p, b.len, 0), (ssize_t)b.len);
    assert_null(model_load(path, &err));
    assert_true(strncmp(err.msg, path, strlen(path)) == 0);
    assert_non_null(strstr(err.msg, ": CRC mismatch (file corrupted?)"));
    assert_int_equal(err.status, GR_EFILE);
    close(fd);
    unlink(path);

    assert_null(model_load(path, &err));
    assert_non_null(strstr(err.msg, "cannot open"));
    assert_null(model_load("/", &err));                      /* a directory */
    free(b.p);
    free(data);
    json_decref(hdr);
}

static void test_parse_features(void **state) {
    (void)state;
    json_t *hdr = parse(tiny_header);
    json_t *f = json_object_get(hdr, "features");
    feature_params p;
    gr_err err = {GR_OK, ""};
    assert_int_equal(model_parse_features(f, &p, &err), 0);
    assert_int_equal(p.kind, FEATURE_LOGMEL);
    assert_int_equal(p.mel.n_mels, 8);
    json_object_set_new(f, "mel_scale", json_string("slaney"));
    json_object_set_new(f, "mel_norm", json_string("slaney"));
    assert_int_equal(model_parse_features(f, &p, &err), 0);
    assert_int_equal(p.mel.scale, MEL_SCALE_SLANEY);
    assert_int_equal(p.mel.slaney_norm, 1);
    json_object_set_new(f, "amin", json_integer(0));
    assert_int_equal(model_parse_features(f, &p, &err), -1);
    assert_non_null(strstr(err.msg, "amin"));
    assert_int_equal(model_parse_features(NULL, &p, &err), -1);
    json_t *arr = json_array();
    assert_int_equal(model_parse_features(arr, &p, &err), -1);
    assert_non_null(strstr(err.msg, "must be an object"));
    json_decref(arr);
    json_decref(hdr);
}

/* The raw-waveform kind (waveform.h): its own keys, each validated. */
static void test_parse_waveform_features(void **state) {
    (void)state;
    json_t *f = parse("{\"kind\": \"waveform\", \"sample_rate\": 16000, "
                      "\"chunk_samples\": 48000, \"values\": 500, "
                      "\"norm_mean\": 0.1, \"norm_std\": 0.05}");
    feature_params p;
    gr_err err = {GR_OK, ""};
    assert_int_equal(model_parse_features(f, &p, &err), 0);
    assert_int_equal(p.kind, FEATURE_WAVEFORM);
    assert_int_equal(p.waveform.sample_rate, 16000);
    assert_int_equal(p.waveform.chunk_samples, 48000);
    assert_int_equal(p.waveform.values, 500);
    assert_true(p.waveform.norm_mean == 0.1f && p.waveform.norm_std == 0.05f);
    json_object_set_new(f, "values", json_integer(499)); /* 48000 % 499 != 0 */
    assert_int_equal(model_parse_features(f, &p, &err), -1);
    assert_non_null(strstr(err.msg, "multiple"));
    json_object_set_new(f, "values", json_integer(500));
    json_object_set_new(f, "norm_std", json_real(0.0));
    assert_int_equal(model_parse_features(f, &p, &err), -1);
    assert_non_null(strstr(err.msg, "norm_std"));
    json_object_set_new(f, "norm_std", json_real(0.05));
    json_object_set_new(f, "n_mels", json_integer(128)); /* a logmel key */
    assert_int_equal(model_parse_features(f, &p, &err), -1);
    assert_non_null(strstr(err.msg, "n_mels"));
    json_object_del(f, "n_mels");
    json_object_del(f, "chunk_samples");
    assert_int_equal(model_parse_features(f, &p, &err), -1);
    assert_non_null(strstr(err.msg, "chunk_samples"));
    json_object_set_new(f, "kind", json_string("mfcc"));
    assert_int_equal(model_parse_features(f, &p, &err), -1);
    assert_non_null(strstr(err.msg, "not supported"));
    json_decref(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_load_tiny),
        cmocka_unit_test(test_batchnorm_folding),
        cmocka_unit_test(test_graph),
        cmocka_unit_test(test_bad_graphs),
        cmocka_unit_test(test_global_avgpool_variant),
        cmocka_unit_test(test_forward_arguments),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_bad_containers),
        cmocka_unit_test(test_load_from_path),
        cmocka_unit_test(test_parse_features),
        cmocka_unit_test(test_parse_waveform_features),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
