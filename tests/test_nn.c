/* test_nn.c - every kernel of nn.c against naive reference loops in double.
 *
 * Tolerance: a result r with reference x (computed in double) passes when
 * |r - x| <= 1e-5 * (1 + S), where S is the sum of the absolute values of the
 * terms that were added up to make x (so long float32 dot products get the
 * slack their rounding needs, short ones almost none). Activations and pools
 * that do no summation are compared to 1e-6 relative. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "genred/nn.h"

/* Deterministic uniform floats in [lo, hi). */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float frand(float lo, float hi) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((rng_state >> 40) / 16777216.0);
}

static float *rand_array(size_t n, float lo, float hi) {
    float *a = malloc((n ? n : 1) * sizeof *a);
    assert_non_null(a);
    for (size_t i = 0; i < n; i++) a[i] = frand(lo, hi);
    return a;
}

static double ref_act(double v, nn_activation act, double alpha) {
    switch (act) {
    case NN_ACT_NONE: return v;
    case NN_ACT_RELU: return v > 0 ? v : 0;
    case NN_ACT_ELU: return v > 0 ? v : alpha * (exp(v) - 1);
    case NN_ACT_TANH: return tanh(v);
    case NN_ACT_SIGMOID: return 1 / (1 + exp(-v));
    case NN_ACT_HARDSWISH: return v * fmin(fmax(v + 3, 0), 6) / 6;
    }
    return NAN;
}

static void assert_close(double got, double want, double scale, const char *what,
                         size_t i) {
    double tol = 1e-5 * (1 + scale);
    if (!(fabs(got - want) <= tol)) {
        print_error("%s[%zu]: got %.9g, want %.9g (tol %.3g)\n", what, i, got, want, tol);
        fail();
    }
}

/* ---- convolution -------------------------------------------------------- */

typedef struct conv_case {
    int batch, in_c, in_h, in_w, out_c, kh, kw, sh, sw, ph, pw;
    nn_activation act;
    int with_bias;
} conv_case;

/* One reference for both kernels: a dense convolution reads every input
 * channel; a depthwise one (out_c a multiple m of in_c) reads input o / m
 * alone for output o. */
static void check_kernel(const conv_case *t, int depthwise) {
    int oh = nn_window_out(t->in_h, t->kh, t->sh, t->ph);
    int ow = nn_window_out(t->in_w, t->kw, t->sw, t->pw);
    assert_true(oh > 0 && ow > 0);
    assert_true(!depthwise || t->out_c % t->in_c == 0);
    const int reads = depthwise ? 1 : t->in_c;   /* input channels per output */
    const int mult = depthwise ? t->out_c / t->in_c : 1;
    size_t n_in = (size_t)t->batch * t->in_c * t->in_h * t->in_w;
    size_t n_w = (size_t)t->out_c * reads * t->kh * t->kw;
    size_t n_out = (size_t)t->batch * t->out_c * oh * ow;
    float *in = rand_array(n_in, -1, 1), *w = rand_array(n_w, -1, 1);
    float *bias = t->with_bias ? rand_array((size_t)t->out_c, -1, 1) : NULL;
    nn_conv2d c = {t->in_c, t->in_h, t->in_w, t->out_c, oh, ow, t->kh, t->kw,
                   t->sh, t->sw, t->ph, t->pw, w, bias, t->act, 0.7f};
    if (depthwise) assert_true(nn_depthwise_supported(&c));
    size_t n_scratch = depthwise ? nn_depthwise_scratch_floats(&c)
                                 : nn_conv2d_scratch_floats(&c, t->batch);
    /* Guard floats after both buffers catch writes past the sizes nn.h
     * promises. */
    float *out = malloc((n_out + 16) * sizeof *out);
    float *scratch = malloc((n_scratch + 16) * sizeof *scratch);
    assert_non_null(out);
    assert_non_null(scratch);
    for (int i = 0; i < 16; i++) out[n_out + i] = scratch[n_scratch + i] = 12345.0f;

    if (depthwise)
        nn_depthwise_forward(&c, t->batch, in, out, scratch);
    else
        nn_conv2d_forward(&c, t->batch, in, out, scratch);

    for (int i = 0; i < 16; i++) {
        assert_true(out[n_out + i] == 12345.0f);
        assert_true(scratch[n_scratch + i] == 12345.0f);
    }
    for (int b = 0; b < t->batch; b++)
        for (int o = 0; o < t->out_c; o++)
            for (int y = 0; y < oh; y++)
                for (int x = 0; x < ow; x++) {
                    double s = bias ? bias[o] : 0, mag = fabs(s);
                    for (int k = 0; k < reads; k++) {
                        int ch = depthwise ? o / mult : k;
                        for (int i = 0; i < t->kh; i++)
                            for (int j = 0; j < t->kw; j++) {
                                int iy = y * t->sh - t->ph + i, ix = x * t->sw - t->pw + j;
                                if (iy < 0 || iy >= t->in_h || ix < 0 || ix >= t->in_w)
                                    continue;
                                double term =
                                    (double)w[((o * reads + k) * t->kh + i) * t->kw + j] *
                                    in[(((size_t)b * t->in_c + ch) * t->in_h + iy) * t->in_w + ix];
                                s += term;
                                mag += fabs(term);
                            }
                    }
                    size_t at = (((size_t)b * t->out_c + o) * oh + y) * ow + x;
                    assert_close(out[at], ref_act(s, t->act, 0.7), mag,
                                 depthwise ? "depthwise" : "conv", at);
                }
    free(in);
    free(w);
    free(bias);
    free(out);
    free(scratch);
}

static void test_conv_small_cases(void **state) {
    (void)state;
    static const conv_case cases[] = {
        /* b  ic  h   w  oc kh kw sh sw ph pw act            bias */
        {3, 1, 7, 9, 3, 3, 3, 1, 1, 1, 1, NN_ACT_NONE, 1},
        {2, 2, 10, 13, 4, 5, 3, 2, 1, 2, 1, NN_ACT_RELU, 1},    /* non-square */
        {1, 3, 6, 5, 2, 1, 4, 3, 2, 0, 3, NN_ACT_ELU, 0},       /* pad > kernel */
        {4, 5, 4, 6, 3, 1, 1, 1, 1, 0, 0, NN_ACT_SIGMOID, 1},   /* 1x1, batched */
        {2, 2, 3, 3, 5, 5, 5, 1, 1, 1, 1, NN_ACT_TANH, 1},      /* window = input */
        {2, 1, 4, 4, 2, 2, 2, 1, 1, 3, 3, NN_ACT_NONE, 1},      /* rows all padding */
        {3, 2, 9, 11, 3, 2, 2, 3, 3, 0, 0, NN_ACT_RELU, 1},     /* stride > kernel */
        {5, 8, 4, 4, 16, 3, 3, 1, 1, 1, 1, NN_ACT_RELU, 1},     /* tiny plane */
        {1, 8, 4, 4, 16, 3, 3, 1, 1, 1, 1, NN_ACT_RELU, 1},     /* ... alone */
        {2, 3, 9, 10, 4, 1, 1, 1, 1, 0, 0, NN_ACT_NONE, 0},     /* pointwise, no im2col */
        {2, 3, 5, 1, 2, 3, 1, 1, 1, 1, 0, NN_ACT_NONE, 1},      /* width 1 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_kernel(&cases[i], 0);
}

static void test_conv_many_bands(void **state) {
    (void)state;
    /* Large enough that the kernel splits the output into several bands of
     * rows: every band boundary is checked against the reference. */
    static const conv_case big[] = {
        {2, 4, 40, 200, 16, 3, 3, 1, 1, 1, 1, NN_ACT_RELU, 1},
        {2, 3, 64, 129, 8, 5, 4, 2, 3, 2, 1, NN_ACT_ELU, 1},
        {3, 1, 128, 128, 8, 5, 5, 1, 1, 2, 2, NN_ACT_RELU, 1},
    };
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) check_kernel(&big[i], 0);
}

static void test_depthwise(void **state) {
    (void)state;
    static const conv_case cases[] = {
        /* b  ic  h   w  oc kh kw sh sw ph pw act                bias */
        {2, 3, 7, 9, 3, 3, 3, 1, 1, 1, 1, NN_ACT_RELU, 1},
        {3, 4, 10, 13, 4, 5, 5, 2, 2, 2, 2, NN_ACT_HARDSWISH, 1},   /* 5x5 stride 2 */
        {1, 2, 6, 5, 2, 3, 3, 2, 2, 1, 1, NN_ACT_NONE, 0},          /* odd sizes /2 */
        {2, 5, 4, 4, 5, 5, 5, 1, 1, 2, 2, NN_ACT_ELU, 1},            /* window > plane */
        {1, 2, 3, 1, 2, 3, 3, 1, 1, 1, 1, NN_ACT_NONE, 1},          /* width 1 */
        {1, 3, 9, 11, 3, 2, 3, 2, 2, 0, 4, NN_ACT_SIGMOID, 1},      /* pad > kernel */
        {2, 8, 64, 150, 8, 3, 3, 2, 2, 1, 1, NN_ACT_RELU, 1},       /* a backbone plane */
        {1, 4, 19, 37, 4, 5, 5, 2, 2, 2, 2, NN_ACT_NONE, 1},        /* odd plane, /2 */
        {1, 2, 33, 40, 2, 7, 7, 1, 1, 3, 3, NN_ACT_TANH, 1},        /* 7x7, 16-wide blocks */
        {1, 2, 8, 34, 2, 4, 2, 2, 2, 0, 1, NN_ACT_NONE, 1},         /* even kernel, /2 */
        {2, 1, 30, 41, 8, 3, 3, 2, 2, 1, 1, NN_ACT_HARDSWISH, 0},   /* one input, 8 out */
        {1, 3, 9, 10, 6, 3, 3, 1, 1, 1, 1, NN_ACT_RELU, 1},         /* multiplier 2 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_kernel(&cases[i], 1);
    /* Outside what the direct kernel does: the loader refuses these. */
    nn_conv2d wide = {1, 9, 9, 1, 1, 1, 9, 9, 1, 1, 0, 0, NULL, NULL, NN_ACT_NONE, 0};
    nn_conv2d s3 = {1, 9, 9, 1, 3, 3, 3, 3, 3, 3, 0, 0, NULL, NULL, NN_ACT_NONE, 0};
    nn_conv2d mixed = {1, 9, 9, 1, 9, 5, 3, 3, 1, 2, 1, 1, NULL, NULL, NN_ACT_NONE, 0};
    assert_false(nn_depthwise_supported(&wide));
    assert_false(nn_depthwise_supported(&s3));
    assert_false(nn_depthwise_supported(&mixed));
}

static void test_squeeze_excite(void **state) {
    (void)state;
    int batch = 3, c = 6, sq = 4;
    size_t plane = 15, n = (size_t)batch * c * plane;
    float *x = rand_array(n, -2, 2), *y = malloc(n * sizeof *y);
    float *w1 = rand_array((size_t)sq * c, -1, 1), *b1 = rand_array((size_t)sq, -1, 1);
    float *w2 = rand_array((size_t)c * sq, -1, 1), *b2 = rand_array((size_t)c, -1, 1);
    assert_non_null(y);
    nn_squeeze_excite se = {c, sq, plane, w1, b1, w2, b2};
    size_t ns = nn_squeeze_excite_scratch_floats(&se, batch);
    float *scratch = malloc((ns + 16) * sizeof *scratch);
    assert_non_null(scratch);
    for (int i = 0; i < 16; i++) scratch[ns + i] = 12345.0f;
    nn_squeeze_excite_forward(&se, batch, x, y, scratch);
    for (int i = 0; i < 16; i++) assert_true(scratch[ns + i] == 12345.0f);
    for (int b = 0; b < batch; b++) {
        double mean[6], hid[4];
        for (int ch = 0; ch < c; ch++) {
            mean[ch] = 0;
            for (size_t i = 0; i < plane; i++) mean[ch] += x[((size_t)b * c + ch) * plane + i];
            mean[ch] /= (double)plane;
        }
        for (int k = 0; k < sq; k++) {
            hid[k] = b1[k];
            for (int ch = 0; ch < c; ch++) hid[k] += (double)w1[k * c + ch] * mean[ch];
            hid[k] = fmax(hid[k], 0);
        }
        for (int ch = 0; ch < c; ch++) {
            double g = b2[ch];
            for (int k = 0; k < sq; k++) g += (double)w2[ch * sq + k] * hid[k];
            g = 1 / (1 + exp(-g));
            for (size_t i = 0; i < plane; i++) {
                size_t at = ((size_t)b * c + ch) * plane + i;
                assert_close(y[at], x[at] * g, fabs(x[at]), "squeeze_excite", at);
            }
        }
    }
    /* In place gives the same. */
    nn_squeeze_excite_forward(&se, batch, x, x, scratch);
    for (size_t i = 0; i < n; i++) assert_true(x[i] == y[i]);
    free(x);
    free(y);
    free(w1);
    free(b1);
    free(w2);
    free(b2);
    free(scratch);
}

static void test_add(void **state) {
    (void)state;
    float a[5] = {1, -2, 3, 0.5f, -0.25f}, b[5] = {4, 2, -1, 0.25f, 0};
    float out[5];
    nn_add(a, b, 5, out);
    for (int i = 0; i < 5; i++) assert_true(out[i] == a[i] + b[i]);
    nn_add(a, b, 5, a);   /* in place */
    for (int i = 0; i < 5; i++) assert_true(a[i] == out[i]);
}

static void test_window_out(void **state) {
    (void)state;
    assert_int_equal(nn_window_out(128, 5, 1, 2), 128);
    assert_int_equal(nn_window_out(128, 2, 2, 0), 64);
    assert_int_equal(nn_window_out(7, 2, 2, 0), 3);    /* floor mode */
    assert_int_equal(nn_window_out(3, 5, 1, 1), 1);
    assert_int_equal(nn_window_out(3, 6, 1, 1), 0);    /* does not fit */
    assert_int_equal(nn_window_out(0, 1, 1, 0), 0);
    assert_int_equal(nn_window_out(5, 1, 0, 0), 0);
    assert_int_equal(nn_window_out(5, 1, 1, -1), 0);
}

/* ---- dense -------------------------------------------------------------- */

static void check_dense(int batch, int n_in, int n_out, int with_bias,
                        nn_activation act) {
    float *in = rand_array((size_t)batch * n_in, -2, 2);
    float *w = rand_array((size_t)n_out * n_in, -1, 1);
    float *bias = with_bias ? rand_array((size_t)n_out, -1, 1) : NULL;
    float *out = malloc((size_t)batch * n_out * sizeof *out);
    assert_non_null(out);
    nn_dense d = {n_in, n_out, w, bias, act, 0.7f};
    nn_dense_forward(&d, batch, in, out);
    for (int b = 0; b < batch; b++)
        for (int o = 0; o < n_out; o++) {
            double s = bias ? bias[o] : 0, mag = fabs(s);
            for (int i = 0; i < n_in; i++) {
                double term = (double)w[(size_t)o * n_in + i] * in[(size_t)b * n_in + i];
                s += term;
                mag += fabs(term);
            }
            assert_close(out[(size_t)b * n_out + o], ref_act(s, act, 0.7), mag,
                         "dense", (size_t)b * n_out + o);
        }
    free(in);
    free(w);
    free(bias);
    free(out);
}

static void test_dense(void **state) {
    (void)state;
    check_dense(3, 37, 11, 1, NN_ACT_TANH);
    check_dense(1, 5, 2, 0, NN_ACT_NONE);
    check_dense(7, 300, 64, 1, NN_ACT_RELU);
    check_dense(2, 16, 9, 1, NN_ACT_ELU);
}

/* ---- pools -------------------------------------------------------------- */

static void check_pool(int is_max, int planes, int h, int w, int kh, int kw,
                       int sh, int sw) {
    int oh = nn_window_out(h, kh, sh, 0), ow = nn_window_out(w, kw, sw, 0);
    float *in = rand_array((size_t)planes * h * w, -3, -1);   /* all negative */
    float *out = malloc((size_t)planes * oh * ow * sizeof *out);
    assert_non_null(out);
    (is_max ? nn_maxpool2d : nn_avgpool2d)(in, planes, h, w, kh, kw, sh, sw, out);
    for (int p = 0; p < planes; p++)
        for (int y = 0; y < oh; y++)
            for (int x = 0; x < ow; x++) {
                double acc = is_max ? -INFINITY : 0, mag = 0;
                for (int i = 0; i < kh; i++)
                    for (int j = 0; j < kw; j++) {
                        double v = in[((size_t)p * h + y * sh + i) * w + x * sw + j];
                        acc = is_max ? fmax(acc, v) : acc + v / (kh * kw);
                        mag += fabs(v) / (kh * kw);
                    }
                size_t at = ((size_t)p * oh + y) * ow + x;
                if (is_max) assert_true(out[at] == (float)acc);
                else assert_close(out[at], acc, mag, "avgpool", at);
            }
    free(in);
    free(out);
}

static void test_pools(void **state) {
    (void)state;
    for (int is_max = 0; is_max < 2; is_max++) {
        check_pool(is_max, 6, 7, 9, 2, 3, 2, 2);   /* floor on both axes */
        check_pool(is_max, 2, 8, 8, 3, 3, 1, 1);   /* overlapping windows */
        check_pool(is_max, 3, 5, 4, 5, 4, 1, 1);   /* window = plane */
        check_pool(is_max, 4, 16, 16, 2, 2, 2, 2);
        check_pool(is_max, 1, 10, 7, 1, 2, 3, 1);
    }
}

static void test_global_pools(void **state) {
    (void)state;
    int planes = 5;
    size_t plane = 37;
    float *in = rand_array(planes * plane, -4, 4);
    float avg[5], max[5];
    nn_global_avgpool(in, planes, plane, avg);
    nn_global_maxpool(in, planes, plane, max);
    for (int p = 0; p < planes; p++) {
        double s = 0, mag = 0, m = -INFINITY;
        for (size_t i = 0; i < plane; i++) {
            s += in[p * plane + i];
            mag += fabs(in[p * plane + i]);
            m = fmax(m, in[p * plane + i]);
        }
        assert_close(avg[p], s / plane, mag / plane, "global_avgpool", (size_t)p);
        assert_true(max[p] == (float)m);
    }
    float one = 3.5f, r;
    nn_global_maxpool(&one, 1, 1, &r);
    assert_true(r == 3.5f);
    nn_global_avgpool(&one, 1, 1, &r);
    assert_true(r == 3.5f);
    free(in);
}

/* ---- elementwise -------------------------------------------------------- */

static void test_activations(void **state) {
    (void)state;
    static const nn_activation acts[] = {NN_ACT_NONE, NN_ACT_RELU, NN_ACT_ELU,
                                         NN_ACT_TANH, NN_ACT_SIGMOID, NN_ACT_HARDSWISH};
    size_t n = 1001;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    assert_non_null(x);
    assert_non_null(y);
    for (size_t i = 0; i < n; i++) x[i] = -50.0f + 0.1f * (float)i;   /* -50..50 */
    for (size_t a = 0; a < sizeof acts / sizeof acts[0]; a++) {
        memcpy(y, x, n * sizeof *y);
        nn_activate(y, n, acts[a], 1.3f);
        for (size_t i = 0; i < n; i++) {
            double want = ref_act(x[i], acts[a], 1.3);
            if (!(fabs(y[i] - want) <= 1e-6 * (1 + fabs(want)))) {
                print_error("act %d at x=%g: got %.9g want %.9g\n", (int)acts[a], x[i],
                            y[i], want);
                fail();
            }
        }
    }
    /* Saturation must not produce NaN or values outside the range. */
    float ext[4] = {-1e30f, -100.0f, 100.0f, 1e30f};
    nn_activate(ext, 4, NN_ACT_SIGMOID, 0);
    assert_true(ext[0] == 0.0f && ext[1] >= 0.0f && ext[2] == 1.0f && ext[3] == 1.0f);
    float ext2[2] = {-1e30f, 1e30f};
    nn_activate(ext2, 2, NN_ACT_ELU, 0.5f);
    assert_true(ext2[0] == -0.5f && ext2[1] == 1e30f);
    free(x);
    free(y);
}

static void test_channel_affine(void **state) {
    (void)state;
    int batch = 3, ch = 4;
    size_t plane = 10;
    float *x = rand_array(batch * ch * plane, -1, 1);
    float *orig = malloc(batch * ch * plane * sizeof *orig);
    assert_non_null(orig);
    memcpy(orig, x, batch * ch * plane * sizeof *orig);
    float scale[4] = {2.0f, -0.5f, 0.0f, 1.25f}, shift[4] = {1.0f, 0.0f, -3.0f, 0.5f};
    nn_channel_affine(x, batch, ch, plane, scale, shift);
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < ch; c++)
            for (size_t i = 0; i < plane; i++) {
                size_t at = ((size_t)b * ch + c) * plane + i;
                assert_close(x[at], (double)orig[at] * scale[c] + shift[c],
                             fabs(orig[at] * scale[c]) + fabs(shift[c]), "affine", at);
            }
    free(x);
    free(orig);
}

static void test_softmax(void **state) {
    (void)state;
    int rows = 4, cols = 10;
    float *x = rand_array((size_t)rows * cols, -5, 5);
    float *orig = malloc((size_t)rows * cols * sizeof *orig);
    assert_non_null(orig);
    memcpy(orig, x, (size_t)rows * cols * sizeof *x);
    nn_softmax(x, rows, cols);
    for (int r = 0; r < rows; r++) {
        double z = 0, sum = 0;
        for (int j = 0; j < cols; j++) z += exp(orig[r * cols + j]);
        for (int j = 0; j < cols; j++) {
            assert_close(x[r * cols + j], exp(orig[r * cols + j]) / z, 0, "softmax",
                         (size_t)(r * cols + j));
            sum += x[r * cols + j];
        }
        assert_true(fabs(sum - 1.0) < 1e-6);
    }

    /* Large logits: exp() of them would overflow float without the max
     * subtraction. */
    float big[3] = {1000.0f, 999.0f, -1000.0f};
    nn_softmax(big, 1, 3);
    double e = exp(-1.0);
    assert_true(fabs(big[0] - 1 / (1 + e)) < 1e-6);
    assert_true(fabs(big[1] - e / (1 + e)) < 1e-6);
    assert_true(big[2] == 0.0f);
    float low[2] = {-1e4f, -1e4f};   /* would underflow to 0/0 without it */
    nn_softmax(low, 1, 2);
    assert_true(low[0] == 0.5f && low[1] == 0.5f);
    float flat[7] = {3, 3, 3, 3, 3, 3, 3};
    nn_softmax(flat, 1, 7);
    for (int j = 0; j < 7; j++) assert_true(fabs(flat[j] - 1.0 / 7) < 1e-7);
    free(x);
    free(orig);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_window_out),
        cmocka_unit_test(test_conv_small_cases),
        cmocka_unit_test(test_conv_many_bands),
        cmocka_unit_test(test_depthwise),
        cmocka_unit_test(test_squeeze_excite),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_dense),
        cmocka_unit_test(test_pools),
        cmocka_unit_test(test_global_pools),
        cmocka_unit_test(test_activations),
        cmocka_unit_test(test_channel_affine),
        cmocka_unit_test(test_softmax),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
