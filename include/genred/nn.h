/* nn.h - the CNN layer kernels: float32, NCHW batches, OpenBLAS underneath.
 *
 * Each kernel runs one layer over a whole batch. Shapes and weights come in
 * small descriptor structs whose pointers are borrowed; outputs and scratch
 * are the caller's memory, so no kernel ever allocates (model.c sizes one
 * workspace up front and reuses it for every batch).
 *
 * Convolution is im2col + cblas_sgemm. Large output planes are done per item
 * in bands of output rows (im2col of a band, one sgemm writing the band of
 * every output channel in place, then bias + activation while it is in
 * cache); small planes (deep layers, <= 64 pixels) go through ONE sgemm for
 * the whole batch and are scattered back to NCHW. nn.c says what was
 * measured. Bias (with batch-norm already folded in by the caller) and the
 * activation are applied in the pass that finalises the output.
 *
 * Depthwise convolution has a direct kernel of its own, squeeze-excitation
 * runs its two small dense layers through sgemm.
 *
 * What it does not do: validate shapes (model.c does that once at load time),
 * allocate, or pick thread counts (OpenBLAS's own setting applies). */
#ifndef GENRED_NN_H
#define GENRED_NN_H

#include <stddef.h>

typedef enum nn_activation {
    NN_ACT_NONE = 0,
    NN_ACT_RELU,
    NN_ACT_ELU,     /* x > 0 ? x : alpha * (exp(x) - 1) */
    NN_ACT_TANH,
    NN_ACT_SIGMOID,
    NN_ACT_HARDSWISH, /* x * min(max(x + 3, 0), 6) / 6 */
} nn_activation;

/* Output size of a convolution or pooling window along one axis:
 * (in + 2*pad - kernel) / stride + 1, or 0 when the window does not fit
 * (or an argument is out of range). */
int nn_window_out(int in, int kernel, int stride, int pad);

typedef struct nn_conv2d {
    int in_c, in_h, in_w;
    int out_c, out_h, out_w;   /* out_h = nn_window_out(in_h, kh, sh, ph) */
    int kh, kw;                /* kernel */
    int sh, sw;                /* stride */
    int ph, pw;                /* zero padding, both sides */
    const float *weight;       /* [out_c][in_c][kh][kw], borrowed */
    const float *bias;         /* [out_c] or NULL, borrowed */
    nn_activation act;         /* applied after the bias */
    float alpha;               /* ELU alpha */
} nn_conv2d;

/* Scratch floats nn_conv2d_forward() needs for batch items (0 is possible:
 * a pointwise convolution of one item reads its input directly). */
size_t nn_conv2d_scratch_floats(const nn_conv2d *c, int batch);

/* in: [batch][in_c][in_h][in_w]; out: [batch][out_c][out_h][out_w]; scratch
 * holds nn_conv2d_scratch_floats(c, batch) floats. in and out must not
 * overlap. */
void nn_conv2d_forward(const nn_conv2d *c, int batch, const float *in,
                       float *out, float *scratch);

/* Depthwise convolution (groups = in_c, out_c a multiple of in_c, weight
 * [out_c][1][kh][kw]): output channel o convolves input channel
 * o / (out_c / in_c) with its own kernel, computed directly. im2col + sgemm
 * would build kh*kw columns per output to multiply a 1 x (kh*kw) matrix: a
 * matrix product of width one, all memory traffic (nn.c has the numbers). A
 * convolution of a single input channel is one too (model.c runs the
 * backbone's first layer so). Kernels up to NN_DW_MAX_KERNEL wide, equal
 * strides of 1 or 2: nn_depthwise_supported() says (model.c refuses the rest
 * at load). in: [batch][in_c][in_h][in_w]; out: [batch][out_c][out_h][out_w];
 * no overlap; scratch: nn_depthwise_scratch_floats(c) floats. */
enum { NN_DW_MAX_KERNEL = 7 };
int nn_depthwise_supported(const nn_conv2d *c);
size_t nn_depthwise_scratch_floats(const nn_conv2d *c);
void nn_depthwise_forward(const nn_conv2d *c, int batch, const float *in, float *out,
                          float *scratch);

typedef struct nn_dense {
    int in, out;
    const float *weight;       /* [out][in] (PyTorch layout), borrowed */
    const float *bias;         /* [out] or NULL, borrowed */
    nn_activation act;
    float alpha;
} nn_dense;

/* in: [batch][in]; out: [batch][out]; no overlap. */
void nn_dense_forward(const nn_dense *d, int batch, const float *in,
                      float *out);

/* Pooling over `planes` independent h x w planes (batch * channels),
 * floor mode, no padding: out is planes x nn_window_out(h,kh,sh,0) x
 * nn_window_out(w,kw,sw,0). */
void nn_maxpool2d(const float *in, int planes, int h, int w, int kh, int kw,
                  int sh, int sw, float *out);
void nn_avgpool2d(const float *in, int planes, int h, int w, int kh, int kw,
                  int sh, int sw, float *out);

/* One value per plane of `plane` floats: its mean or its maximum. */
void nn_global_avgpool(const float *in, int planes, size_t plane, float *out);
void nn_global_maxpool(const float *in, int planes, size_t plane, float *out);

/* Elementwise, in place. */
void nn_activate(float *x, size_t n, nn_activation act, float alpha);

/* Squeeze-excitation: each channel of an item scaled by a gate made from
 * the item's channel means: g = sigmoid(fc2(relu(fc1(mean)))). */
typedef struct nn_squeeze_excite {
    int channels, squeeze;
    size_t plane;              /* H * W */
    const float *w1, *b1;      /* [squeeze][channels], [squeeze]; borrowed */
    const float *w2, *b2;      /* [channels][squeeze], [channels]; borrowed */
} nn_squeeze_excite;

size_t nn_squeeze_excite_scratch_floats(const nn_squeeze_excite *s, int batch);
/* in, out: [batch][channels][plane]; out may be in. */
void nn_squeeze_excite_forward(const nn_squeeze_excite *s, int batch, const float *in,
                               float *out, float *scratch);

/* out[i] = a[i] + b[i]; out may be a or b. */
void nn_add(const float *a, const float *b, size_t n, float *out);

/* x[b][c][i] = x[b][c][i] * scale[c] + shift[c], in place: a batch-norm that
 * could not be folded into a preceding layer. plane is 1 for flat features. */
void nn_channel_affine(float *x, int batch, int channels, size_t plane,
                       const float *scale, const float *shift);

/* Softmax over each of `rows` rows of `cols` floats, in place. Subtracts the
 * row maximum first, so large logits neither overflow nor lose the sum. */
void nn_softmax(float *x, int rows, int cols);

#endif
