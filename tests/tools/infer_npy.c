/* infer_npy.c - run a .gmodel over a .npy batch: the C half of the parity
 * tests (tests/test_parity.py).
 *
 *   infer_npy MODEL.gmodel IN.npy OUT.npy [max_batch]
 *
 * IN is float32 [N, C, H, W], or [N, H, W] when the model takes one channel;
 * OUT receives float32 [N, model_output_floats()]: the genre probabilities
 * (whatever the last layer outputs), then the exported values (model.h).
 * Items go through model_forward() in batches of max_batch (default 16), the
 * last one partial, exactly as the daemon's workers call it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "genred/model.h"
#include "genred/npy.h"

static int fail(const char *what, const gr_err *err) {
    fprintf(stderr, "infer_npy: %s: %s\n", what, err->msg);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 5) {
        fprintf(stderr, "usage: infer_npy MODEL.gmodel IN.npy OUT.npy [max_batch]\n");
        return 2;
    }
    int max_batch = 16;
    if (argc == 5) {
        char *end;
        errno = 0;
        long v = strtol(argv[4], &end, 10);
        if (errno || *end || end == argv[4] || v < 1 || v > 4096) {
            fprintf(stderr, "infer_npy: max_batch must be an integer in [1, 4096]\n");
            return 2;
        }
        max_batch = (int)v;
    }

    gr_err err = {GR_OK, ""};
    int rc = 1;
    model *m = model_load(argv[1], &err);
    if (!m) return fail("model", &err);
    float *in = NULL, *out = NULL;
    model_workspace *ws = NULL;
    size_t shape[4];
    int ndim;
    if (npy_read(argv[2], &in, shape, &ndim, &err) < 0) {
        fail("input", &err);
        goto done;
    }
    /* A logmel model's input is [1, n_mels, chunk_frames], a waveform
     * model's [1, 1, values] (model.c checks). */
    const feature_params *fp = model_features(m);
    size_t c = 1, h = 1, w = (size_t)fp->waveform.values;
    if (fp->kind == FEATURE_LOGMEL) {
        h = (size_t)fp->mel.n_mels;
        w = (size_t)fp->mel.chunk_frames;
    }
    int ok = (ndim == 4 && shape[1] == c && shape[2] == h && shape[3] == w) ||
             (ndim == 3 && shape[1] == h && shape[2] == w);
    if (!ok) {
        fprintf(stderr, "infer_npy: input must be [N,%zu,%zu,%zu] or [N,%zu,%zu]\n",
                c, h, w, h, w);
        goto done;
    }
    size_t n = shape[0], g = model_output_floats(m);
    size_t item = model_input_floats(m);
    out = malloc((n ? n : 1) * g * sizeof *out);
    if (!out) {
        fprintf(stderr, "infer_npy: out of memory\n");
        goto done;
    }
    ws = model_workspace_create(m, max_batch, &err);
    if (!ws) {
        fail("workspace", &err);
        goto done;
    }
    for (size_t i = 0; i < n; i += (size_t)max_batch) {
        int b = n - i < (size_t)max_batch ? (int)(n - i) : max_batch;
        if (model_forward(m, ws, in + i * item, b, out + i * g, &err) < 0) {
            fail("model_forward", &err);
            goto done;
        }
    }
    size_t oshape[2] = {n, g};
    if (npy_write(argv[3], out, oshape, 2, &err) < 0) {
        fail("output", &err);
        goto done;
    }
    rc = 0;
done:
    model_workspace_free(ws);
    free(out);
    free(in);
    model_free(m);
    return rc;
}
