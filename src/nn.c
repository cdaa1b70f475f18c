/* nn.c - the CNN layer kernels (see nn.h): im2col + sgemm convolution,
 * dense, pooling, activations, per-channel affine and softmax.
 *
 * Nothing here allocates or validates; model.c checks every shape once at
 * load time and hands in scratch sized by nn_conv2d_scratch_floats(). */
#include "genred/nn.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* Convolution layout, measured single-threaded at batch 16 on the reference
 * networks (5 x conv5x5 8..128 channels; 4 x conv3x3 64..512):
 *
 * - Per item, the output is computed in bands of rows: im2col of one band,
 *   one sgemm writing that band of every output channel in place, then bias
 *   and activation while it is still in cache. Bands of about NN_BAND_BYTES
 *   (columns + outputs) ran the 5 x conv5x5 net ~35% faster than whole-plane
 *   im2col (600 vs 445 chunks/s); 64..256 KiB were equally good.
 * - Planes of at most NN_BATCHED_MAX_PLANE pixels instead go through ONE
 *   sgemm for the whole batch ([C*kh*kw, batch*Ho*Wo] columns) and a scatter
 *   back to NCHW: an 8x8 or 4x4 plane makes a skinny per-item sgemm, and
 *   batching it won ~5% on the 3x3 net. Batching planes up to 32x32 too
 *   lost ~17% on the 5x5 net: the column matrix leaves the cache and the
 *   scatter is one more pass over the output. */
#ifndef NN_BAND_BYTES
#define NN_BAND_BYTES (128 * 1024)
#endif
#ifndef NN_BATCHED_MAX_PLANE
#define NN_BATCHED_MAX_PLANE 64
#endif


/* The hot loops of layers that OpenBLAS does not run, compiled for each x86-64
 * level and chosen by the CPU when the program loads (an ifunc): a portable
 * binary that still uses AVX-512 or AVX2 + FMA where they exist. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NN_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define NN_HOT
#endif

/* The direct kernels work on blocks of NN_BLOCK floats with GCC/clang vector
 * types: one AVX-512 register, two AVX2 ones, four SSE ones. The pointwise
 * kernel keeps NN_PW_OUT output channels' blocks in registers at once. */
#define NN_BLOCK 16
#define NN_PW_OUT 8
typedef float nn_vec __attribute__((vector_size(NN_BLOCK * sizeof(float))));

int nn_window_out(int in, int kernel, int stride, int pad) {
    if (in < 1 || kernel < 1 || stride < 1 || pad < 0) return 0;
    long long span = (long long)in + 2LL * pad - kernel;
    if (span < 0) return 0;
    return (int)(span / stride + 1);
}

/* dst[i] = act(src[i] + bias) for one output plane; dst may equal src. */
NN_HOT static void finish_plane(float *dst, const float *src, size_t n, float bias,
                         nn_activation act, float alpha) {
    size_t i;
    switch (act) {
    case NN_ACT_NONE:
        for (i = 0; i < n; i++) dst[i] = src[i] + bias;
        break;
    case NN_ACT_RELU:
        for (i = 0; i < n; i++) {
            float v = src[i] + bias;
            dst[i] = v > 0.0f ? v : 0.0f;
        }
        break;
    case NN_ACT_ELU:
        for (i = 0; i < n; i++) {
            float v = src[i] + bias;
            dst[i] = v > 0.0f ? v : alpha * expm1f(v);
        }
        break;
    case NN_ACT_TANH:
        for (i = 0; i < n; i++) dst[i] = tanhf(src[i] + bias);
        break;
    case NN_ACT_SIGMOID:
        for (i = 0; i < n; i++) dst[i] = 1.0f / (1.0f + expf(-(src[i] + bias)));
        break;
    case NN_ACT_HARDSWISH:
        for (i = 0; i < n; i++) {
            float v = src[i] + bias, r = v + 3.0f;
            r = r < 0.0f ? 0.0f : r > 6.0f ? 6.0f : r;
            dst[i] = v * r * (1.0f / 6.0f);
        }
        break;
    }
}

void nn_activate(float *x, size_t n, nn_activation act, float alpha) {
    if (act != NN_ACT_NONE) finish_plane(x, x, n, 0.0f, act, alpha);
}

/* A 1x1, stride-1, unpadded convolution needs no im2col: each item's input
 * already is its [in_c, H*W] column matrix. */
static int conv_is_pointwise(const nn_conv2d *c) {
    return c->kh == 1 && c->kw == 1 && c->sh == 1 && c->sw == 1 &&
           c->ph == 0 && c->pw == 0;
}

/* Output rows per band: as many as keep the band's columns and outputs
 * within NN_BAND_BYTES, at least one. */
static int conv_band_rows(const nn_conv2d *c) {
    size_t k = (size_t)c->in_c * (size_t)c->kh * (size_t)c->kw;
    size_t row_bytes = (k + (size_t)c->out_c) * (size_t)c->out_w * sizeof(float);
    size_t rows = NN_BAND_BYTES / row_bytes;
    if (rows < 1) rows = 1;
    return rows > (size_t)c->out_h ? c->out_h : (int)rows;
}

static int conv_is_batched(const nn_conv2d *c, int batch) {
    return batch > 1 && (size_t)c->out_h * (size_t)c->out_w <= NN_BATCHED_MAX_PLANE;
}

static void pointwise_forward(const nn_conv2d *c, int batch, const float *in, float *out,
                              float *scratch);

size_t nn_conv2d_scratch_floats(const nn_conv2d *c, int batch) {
    if (conv_is_pointwise(c)) return (size_t)c->in_c * NN_PW_OUT;
    if (conv_is_batched(c, batch))
        return ((size_t)c->in_c * c->kh * c->kw + (size_t)c->out_c) *
               (size_t)c->out_h * c->out_w * (size_t)batch;
    return (size_t)c->in_c * (size_t)c->kh * (size_t)c->kw *
           (size_t)conv_band_rows(c) * (size_t)c->out_w;
}

/* Writes the columns of output rows [y0, y1) of one item: row
 * (ch*kh + i)*kw + j, column (y - y0)*out_w + x of col (rows ldc floats
 * apart) is img[ch][y*sh - ph + i][x*sw - pw + j], or 0 in the padding. */
static void im2col(const nn_conv2d *c, const float *img, int y0, int y1,
                   float *col, size_t ldc) {
    for (int ch = 0; ch < c->in_c; ch++) {
        const float *plane = img + (size_t)ch * c->in_h * c->in_w;
        for (int i = 0; i < c->kh; i++) {
            for (int j = 0; j < c->kw; j++) {
                float *row = col + ((size_t)(ch * c->kh + i) * c->kw + j) * ldc;
                /* Columns x whose source pixel lies inside the image:
                 * 0 <= x*sw - pw + j <= in_w - 1. */
                int lo = c->pw - j, hi = c->in_w - 1 + c->pw - j;
                int x0 = lo <= 0 ? 0 : (lo + c->sw - 1) / c->sw;
                int x1 = hi < 0 ? 0 : hi / c->sw + 1;
                if (x1 > c->out_w) x1 = c->out_w;
                if (x0 > x1) x0 = x1;
                for (int y = y0; y < y1; y++) {
                    float *dst = row + (size_t)(y - y0) * c->out_w;
                    int iy = y * c->sh - c->ph + i;
                    if (iy < 0 || iy >= c->in_h) {
                        memset(dst, 0, sizeof *dst * (size_t)c->out_w);
                        continue;
                    }
                    /* Index from the row start: src + (j - pw) could point
                     * before the array, which C does not allow. */
                    const float *src = plane + (size_t)iy * c->in_w;
                    /* The padded edges are a few floats: loops beat memset. */
                    for (int x = 0; x < x0; x++) dst[x] = 0.0f;
                    if (x1 > x0 && c->sw == 1) {
                        memcpy(dst + x0, src + (x0 + j - c->pw),
                               sizeof *dst * (size_t)(x1 - x0));
                    } else {
                        for (int x = x0; x < x1; x++)
                            dst[x] = src[x * c->sw + j - c->pw];
                    }
                    for (int x = x1; x < c->out_w; x++) dst[x] = 0.0f;
                }
            }
        }
    }
}

void nn_conv2d_forward(const nn_conv2d *c, int batch, const float *in,
                       float *out, float *scratch) {
    if (conv_is_pointwise(c)) {
        pointwise_forward(c, batch, in, out, scratch);
        return;
    }
    int k = c->in_c * c->kh * c->kw;
    int band = conv_band_rows(c), pointwise = conv_is_pointwise(c);
    size_t plane = (size_t)c->out_h * (size_t)c->out_w;
    size_t in_item = (size_t)c->in_c * c->in_h * c->in_w;
    size_t out_item = (size_t)c->out_c * plane;
    if (conv_is_batched(c, batch)) {
        size_t ldc = plane * (size_t)batch;
        float *col = scratch, *prod = scratch + (size_t)k * ldc;
        for (int b = 0; b < batch; b++)
            im2col(c, in + (size_t)b * in_item, 0, c->out_h, col + (size_t)b * plane, ldc);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->out_c,
                    (int)ldc, k, 1.0f, c->weight, k, col, (int)ldc, 0.0f,
                    prod, (int)ldc);
        for (int b = 0; b < batch; b++)
            for (int o = 0; o < c->out_c; o++)
                finish_plane(out + (size_t)b * out_item + (size_t)o * plane,
                             prod + (size_t)o * ldc + (size_t)b * plane, plane,
                             c->bias ? c->bias[o] : 0.0f, c->act, c->alpha);
        return;
    }
    for (int b = 0; b < batch; b++) {
        const float *item = in + (size_t)b * in_item;
        float *dst = out + (size_t)b * out_item;
        for (int y0 = 0; y0 < c->out_h; y0 += band) {
            int y1 = y0 + band < c->out_h ? y0 + band : c->out_h;
            size_t first = (size_t)y0 * c->out_w, n = (size_t)(y1 - y0) * c->out_w;
            const float *col = item + first;
            size_t ldb = plane;
            if (!pointwise) {
                im2col(c, item, y0, y1, scratch, n);
                col = scratch;
                ldb = n;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->out_c,
                        (int)n, k, 1.0f, c->weight, k, col, (int)ldb, 0.0f,
                        dst + first, (int)plane);
            for (int o = 0; o < c->out_c; o++) {
                float *p = dst + (size_t)o * plane + first;
                finish_plane(p, p, n, c->bias ? c->bias[o] : 0.0f, c->act, c->alpha);
            }
        }
    }
}

/* Depthwise convolution, one channel plane at a time, as one long 1-D loop:
 *
 * 1. The plane is copied into scratch with its zero padding around it, so
 *    that no tap needs a bounds check. For stride 2 it is split by the parity
 *    of rows and columns into four phase planes; output (y, x) of tap (i, j)
 *    then reads phase (i & 1, j & 1) at row y + i/2, column x + j/2.
 * 2. Flattened, with phase rows W floats apart, output y*W + x of tap (i, j)
 *    reads its phase plane at y*W + x + (i/s)*W + j/s: every tap is a fixed
 *    offset, and the whole plane is one loop over y*W + x, NN_BLOCK
 *    outputs at a time with their sums in registers (W - out_w columns per
 *    row are computed for nothing and dropped), instead of a short loop per
 *    output row (10 to 150 columns here) with its set-up each time.
 * 3. The valid columns are copied out with bias and activation.
 *
 * docs/performance.md has the measurements. NN_HOT compiles it for
 * AVX-512, AVX2 + FMA and baseline x86-64, picked when the program loads. */
#define NN_DW_MAX_TAPS (NN_DW_MAX_KERNEL * NN_DW_MAX_KERNEL)

typedef struct dw_layout {
    int phases;        /* 1 (stride 1) or 4 (stride 2) */
    int w, h;          /* of one phase plane */
    size_t plane;      /* floats of one phase plane, with slack for the last block */
    size_t sums;       /* floats of the flattened output, with slack */
} dw_layout;

static dw_layout dw_layout_of(const nn_conv2d *c) {
    dw_layout l;
    int s = c->sw, wp = c->in_w + 2 * c->pw, hp = c->in_h + 2 * c->ph;
    l.phases = s * s;
    l.w = (wp + s - 1) / s;
    l.h = (hp + s - 1) / s;
    /* The last block of the loop reads up to NN_BLOCK floats past the
     * last output of a plane at the largest tap offset: keep them inside. */
    l.plane = (size_t)l.h * l.w + NN_BLOCK;
    l.sums = (size_t)c->out_h * l.w + NN_BLOCK;
    return l;
}

int nn_depthwise_supported(const nn_conv2d *c) {
    return c->kh <= NN_DW_MAX_KERNEL && c->kw <= NN_DW_MAX_KERNEL && c->sh == c->sw &&
           (c->sw == 1 || c->sw == 2) && c->in_c > 0 && c->out_c % c->in_c == 0;
}

size_t nn_depthwise_scratch_floats(const nn_conv2d *c) {
    dw_layout l = dw_layout_of(c);
    return (size_t)l.phases * l.plane + l.sums;
}

/* The padded plane, split into phases (zeros where the padding is). */
static void dw_phases(const nn_conv2d *c, const dw_layout *l, const float *plane, float *ph) {
    const int s = c->sw;
    memset(ph, 0, sizeof *ph * (size_t)l->phases * l->plane);
    for (int y = 0; y < c->in_h; y++) {
        const float *src = plane + (size_t)y * c->in_w;
        int py = y + c->ph;
        if (s == 1) {
            memcpy(ph + (size_t)py * l->w + c->pw, src, sizeof *ph * (size_t)c->in_w);
            continue;
        }
        /* Source column x lands in phase column (x + pw) & 1, at (x + pw) / 2:
         * two strided copies, which compilers vectorise. */
        for (int px = 0; px < 2; px++) {
            float *row = ph + (size_t)((py & 1) * 2 + px) * l->plane + (size_t)(py >> 1) * l->w;
            int x0 = ((px - c->pw) % 2 + 2) % 2;   /* first x with (x + pw) & 1 == px */
            float *d = row + (x0 + c->pw) / 2;
            for (int k = 0; x0 + 2 * k < c->in_w; k++) d[k] = src[x0 + 2 * k];
        }
    }
}

/* sums[q] = sum over taps t of w[t] * src[t][q], q in [0, n) rounded up to
 * whole blocks. */
NN_HOT static void dw_sums(float *sums, size_t n, const float *const *src, const float *w,
                           int taps) {
    for (size_t q = 0; q < n; q += NN_BLOCK) {
        nn_vec acc = {0};
        for (int t = 0; t < taps; t++) {
            nn_vec v;
            memcpy(&v, src[t] + q, sizeof v);
            acc += w[t] * v;
        }
        memcpy(sums + q, &acc, sizeof acc);
    }
}

void nn_depthwise_forward(const nn_conv2d *c, int batch, const float *in, float *out,
                          float *scratch) {
    const dw_layout l = dw_layout_of(c);
    const size_t in_plane = (size_t)c->in_h * c->in_w, out_plane = (size_t)c->out_h * c->out_w;
    const int s = c->sw, taps = c->kh * c->kw;
    float *ph = scratch, *sums = scratch + (size_t)l.phases * l.plane;
    const float *src[NN_DW_MAX_TAPS];
    for (int i = 0; i < c->kh; i++)
        for (int j = 0; j < c->kw; j++)
            src[i * c->kw + j] = ph + (size_t)((i % s) * s + j % s) * l.plane +
                                 (size_t)(i / s) * l.w + (size_t)(j / s);
    const size_t n = (size_t)c->out_h * l.w;
    const int mult = c->out_c / c->in_c;
    for (int b = 0; b < batch; b++) {
        for (int ch = 0; ch < c->out_c; ch++) {
            float *dst = out + ((size_t)b * c->out_c + ch) * out_plane;
            if (ch % mult == 0)   /* the next input channel */
                dw_phases(c, &l, in + ((size_t)b * c->in_c + ch / mult) * in_plane, ph);
            dw_sums(sums, n, src, c->weight + (size_t)ch * taps, taps);
            float bias = c->bias ? c->bias[ch] : 0.0f;
            for (int y = 0; y < c->out_h; y++)
                finish_plane(dst + (size_t)y * c->out_w, sums + (size_t)y * l.w,
                             (size_t)c->out_w, bias, c->act, c->alpha);
        }
    }
}

/* A pointwise convolution (1x1, stride 1, no padding) computed directly:
 * per item, NN_PW_OUT output channels at a time over NN_BLOCK pixels,
 * their sums in registers; each input vector is loaded once and multiplied
 * into all of them. No packing and no copies, which for the backbone's
 * shapes (8 to 384 channels, 40 to 9600 pixels) is most of what sgemm
 * spends; docs/performance.md has the numbers. */

/* out[j][p..p+n) = bias[j] + sum over k of wt[k][j] * in[k][p..p+n), for
 * j < no, with V a vector type of n floats: blocks of NN_BLOCK, then one of
 * NN_BLOCK / 2 for the pixels left (the backbone's planes are all multiples
 * of 8), then single floats. */
#define PW_BLOCK(V, in, plane, p, wt, k_in, bias, no, out)                            \
    do {                                                                              \
        V acc_[NN_PW_OUT];                                                            \
        for (int j_ = 0; j_ < NN_PW_OUT; j_++) acc_[j_] = (V){0} + (bias)[j_];        \
        for (int k_ = 0; k_ < (k_in); k_++) {                                         \
            V v_;                                                                     \
            memcpy(&v_, (in) + (size_t)k_ * (plane) + (p), sizeof v_);                \
            const float *w_ = (wt) + (size_t)k_ * NN_PW_OUT;                          \
            for (int j_ = 0; j_ < NN_PW_OUT; j_++) acc_[j_] += w_[j_] * v_;           \
        }                                                                             \
        for (int j_ = 0; j_ < (no); j_++)                                             \
            memcpy((out) + (size_t)j_ * (plane) + (p), &acc_[j_], sizeof acc_[j_]);   \
    } while (0)

typedef float nn_half_vec __attribute__((vector_size(NN_BLOCK / 2 * sizeof(float))));

NN_HOT static void pointwise_item(const nn_conv2d *c, const float *in, float *out, float *wt) {
    const size_t plane = (size_t)c->in_h * c->in_w;
    const int k_in = c->in_c;
    for (int o0 = 0; o0 < c->out_c; o0 += NN_PW_OUT) {
        const int no = c->out_c - o0 < NN_PW_OUT ? c->out_c - o0 : NN_PW_OUT;
        float bias[NN_PW_OUT] = {0};
        /* The group's weights transposed, [k][j], zeros past the last
         * channel: one row of NN_PW_OUT multipliers per input vector. */
        for (int k = 0; k < k_in; k++)
            for (int j = 0; j < NN_PW_OUT; j++)
                wt[(size_t)k * NN_PW_OUT + j] =
                    j < no ? c->weight[(size_t)(o0 + j) * k_in + k] : 0.0f;
        for (int j = 0; j < no && c->bias; j++) bias[j] = c->bias[o0 + j];
        float *dst = out + (size_t)o0 * plane;
        size_t p = 0;
        for (; p + NN_BLOCK <= plane; p += NN_BLOCK)
            PW_BLOCK(nn_vec, in, plane, p, wt, k_in, bias, no, dst);
        for (; p + NN_BLOCK / 2 <= plane; p += NN_BLOCK / 2)
            PW_BLOCK(nn_half_vec, in, plane, p, wt, k_in, bias, no, dst);
        for (; p < plane; p++)
            for (int j = 0; j < no; j++) {
                float acc = bias[j];
                for (int k = 0; k < k_in; k++)
                    acc += wt[(size_t)k * NN_PW_OUT + j] * in[(size_t)k * plane + p];
                dst[(size_t)j * plane + p] = acc;
            }
    }
}

static void pointwise_forward(const nn_conv2d *c, int batch, const float *in, float *out,
                              float *scratch) {
    const size_t plane = (size_t)c->in_h * c->in_w;
    for (int b = 0; b < batch; b++) {
        float *dst = out + (size_t)b * c->out_c * plane;
        pointwise_item(c, in + (size_t)b * c->in_c * plane, dst, scratch);
        if (c->act != NN_ACT_NONE)
            finish_plane(dst, dst, (size_t)c->out_c * plane, 0.0f, c->act, c->alpha);
    }
}

void nn_dense_forward(const nn_dense *d, int batch, const float *in,
                      float *out) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, d->out, d->in,
                1.0f, in, d->in, d->weight, d->in, 0.0f, out, d->out);
    for (int b = 0; b < batch; b++) {
        float *row = out + (size_t)b * d->out;
        if (d->bias)
            for (int j = 0; j < d->out; j++) row[j] += d->bias[j];
        nn_activate(row, (size_t)d->out, d->act, d->alpha);
    }
}

static inline float max2(float a, float b) { return a > b ? a : b; }

/* Both pools walk the window taps in the outer loops and output columns in
 * the inner one, so the inner loop is a plain (or strided) vector loop. */
void nn_maxpool2d(const float *in, int planes, int h, int w, int kh, int kw,
                  int sh, int sw, float *out) {
    int oh = nn_window_out(h, kh, sh, 0), ow = nn_window_out(w, kw, sw, 0);
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * h * w;
        float *dst = out + (size_t)p * oh * ow;
        for (int y = 0; y < oh; y++) {
            const float *row = src + (size_t)y * sh * w;
            float *d = dst + (size_t)y * ow;
            if (kh == 2 && kw == 2 && sw == 2) {   /* the common case */
                const float *next = row + w;
                for (int x = 0; x < ow; x++)
                    d[x] = max2(max2(row[2 * x], row[2 * x + 1]),
                                max2(next[2 * x], next[2 * x + 1]));
                continue;
            }
            for (int x = 0; x < ow; x++) d[x] = row[(size_t)x * sw];
            for (int i = 0; i < kh; i++)
                for (int j = 0; j < kw; j++) {
                    const float *r = row + (size_t)i * w + j;
                    for (int x = 0; x < ow; x++) d[x] = max2(d[x], r[(size_t)x * sw]);
                }
        }
    }
}

void nn_avgpool2d(const float *in, int planes, int h, int w, int kh, int kw,
                  int sh, int sw, float *out) {
    int oh = nn_window_out(h, kh, sh, 0), ow = nn_window_out(w, kw, sw, 0);
    float inv = 1.0f / (float)(kh * kw);
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * h * w;
        float *dst = out + (size_t)p * oh * ow;
        for (int y = 0; y < oh; y++) {
            const float *row = src + (size_t)y * sh * w;
            float *d = dst + (size_t)y * ow;
            for (int x = 0; x < ow; x++) d[x] = 0.0f;
            for (int i = 0; i < kh; i++)
                for (int j = 0; j < kw; j++) {
                    const float *r = row + (size_t)i * w + j;
                    for (int x = 0; x < ow; x++) d[x] += r[(size_t)x * sw];
                }
            for (int x = 0; x < ow; x++) d[x] *= inv;
        }
    }
}

void nn_global_avgpool(const float *in, int planes, size_t plane, float *out) {
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * plane;
        double s = 0.0;
        for (size_t i = 0; i < plane; i++) s += src[i];
        out[p] = (float)(s / (double)plane);
    }
}

void nn_global_maxpool(const float *in, int planes, size_t plane, float *out) {
    for (int p = 0; p < planes; p++) {
        const float *src = in + (size_t)p * plane;
        float m = src[0];
        for (size_t i = 1; i < plane; i++) m = max2(m, src[i]);
        out[p] = m;
    }
}

void nn_channel_affine(float *x, int batch, int channels, size_t plane,
                       const float *scale, const float *shift) {
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < channels; c++) {
            float *p = x + ((size_t)b * channels + c) * plane;
            for (size_t i = 0; i < plane; i++) p[i] = p[i] * scale[c] + shift[c];
        }
}

void nn_softmax(float *x, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        float *row = x + (size_t)r * cols;
        float m = row[0];
        for (int j = 1; j < cols; j++)
            if (row[j] > m) m = row[j];
        double sum = 0.0;
        for (int j = 0; j < cols; j++) {
            row[j] = expf(row[j] - m);
            sum += row[j];
        }
        /* sum >= 1: the maximum contributes exp(0). */
        float inv = (float)(1.0 / sum);
        for (int j = 0; j < cols; j++) row[j] *= inv;
    }
}

size_t nn_squeeze_excite_scratch_floats(const nn_squeeze_excite *s, int batch) {
    return (size_t)batch * (2 * (size_t)s->channels + (size_t)s->squeeze);
}

void nn_squeeze_excite_forward(const nn_squeeze_excite *s, int batch, const float *in,
                               float *out, float *scratch) {
    const int c = s->channels;
    float *mean = scratch, *hidden = mean + (size_t)batch * c;
    float *gate = hidden + (size_t)batch * s->squeeze;
    nn_global_avgpool(in, batch * c, s->plane, mean);
    nn_dense fc1 = {c, s->squeeze, s->w1, s->b1, NN_ACT_RELU, 0.0f};
    nn_dense fc2 = {s->squeeze, c, s->w2, s->b2, NN_ACT_SIGMOID, 0.0f};
    nn_dense_forward(&fc1, batch, mean, hidden);
    nn_dense_forward(&fc2, batch, hidden, gate);
    for (size_t p = 0; p < (size_t)batch * c; p++) {
        const float g = gate[p], *x = in + p * s->plane;
        float *y = out + p * s->plane;
        for (size_t i = 0; i < s->plane; i++) y[i] = x[i] * g;
    }
}

void nn_add(const float *a, const float *b, size_t n, float *out) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}
