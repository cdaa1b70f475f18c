/* fuzz_model.c - libFuzzer harness: the model loader on arbitrary bytes.
 *
 * model_load_buffer() reads files an operator supplies, so it must refuse
 * any malformed one with an error, never crash, leak or read out of bounds.
 * A random mutation would almost always fail the file's CRC-32 and never
 * reach the parser; so the harness rewrites the last four bytes with the
 * correct CRC before loading (the CRC check itself is test_model.c's), and
 * the mutations land in the container fields, the JSON header and the
 * weights. A model that loads is then described and run on a batch of two
 * zero inputs, when it is small enough for that to be quick, so a shape the
 * validation let through that the kernels cannot run shows up here.
 *
 * What it does not do: check the probabilities (test_parity.py does). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "genred/model.h"

/* Forward passes only below these, so one input costs milliseconds. */
#define RUN_MAX_MACS 2e7
#define RUN_MAX_INPUT_FLOATS (1u << 18)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int verbose; /* $GENRED_FUZZ_VERBOSE: say what became of each input */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    verbose = getenv("GENRED_FUZZ_VERBOSE") != NULL;
    return 0;
}

static uint32_t crc32_ieee(const uint8_t *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static void fail(const char *what) {
    fprintf(stderr, "fuzz_model: %s\n", what);
    abort();
}

static void run(const model *m) {
    gr_err err = {0};
    json_t *desc = model_describe(m);
    if (!desc) fail("model_describe failed on a loaded model");
    json_decref(desc);
    int genres = model_genre_count(m);
    if (genres < 2 || !model_genre(m, 0) || !model_genre(m, genres - 1) || !model_name(m))
        fail("loaded model without its labels");

    size_t in_floats = model_input_floats(m);
    if (in_floats == 0 || in_floats > RUN_MAX_INPUT_FLOATS || !(model_macs(m) <= RUN_MAX_MACS))
        return;
    model_workspace *ws = model_workspace_create(m, 2, &err);
    if (!ws) fail("no workspace for a small model");
    float *in = calloc(2 * in_floats, sizeof *in);
    float *out = malloc(2 * model_output_floats(m) * sizeof *out);
    if (!in || !out) fail("out of memory");
    if (model_forward(m, ws, in, 2, out, &err) != 0) fail("forward refused a batch of 2");
    if (model_forward(m, ws, in, 1, out, &err) != 0) fail("forward refused a batch of 1");
    if (model_forward(m, ws, in, 3, out, &err) == 0) fail("forward accepted a batch over the workspace");
    free(in);
    free(out);
    model_workspace_free(ws);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    if (size >= 4) {
        uint32_t crc = crc32_ieee(buf, size - 4);
        for (int i = 0; i < 4; i++) buf[size - 4 + i] = (uint8_t)(crc >> (8 * i));
    }
    gr_err err = {0};
    model *m = model_load_buffer(buf, size, &err);
    free(buf); /* the model keeps copies of what it needs */
    if (!m) {
        if (err.msg[0] == '\0') fail("refused without a message");
        if (verbose) fprintf(stderr, "fuzz_model: refused: %s\n", err.msg);
        return 0;
    }
    if (verbose)
        fprintf(stderr, "fuzz_model: loaded, %zu input floats, %.0f MACs\n",
                model_input_floats(m), model_macs(m));
    run(m);
    model_free(m);
    return 0;
}
