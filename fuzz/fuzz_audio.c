/* fuzz_audio.c - libFuzzer harness: audio_decode() on arbitrary bytes.
 *
 * The bytes are an upload; whatever they are, audio_decode() must return
 * (no crash, leak or undefined behaviour: the sanitizers judge that) and:
 *   - never GR_EINTERNAL, which the daemon answers with 500: input must be
 *     refused as 415 or 422, not blamed on the server;
 *   - on success, only a whitelisted demuxer, at least one sample, the
 *     requested rate and no more samples than the duration limit allows.
 * The 30 s limit keeps every run short; a harness failure aborts.
 *
 * What it does not do: trimming or features (they run on decoded samples,
 * which the model-input tests cover), or the indexed range decode
 * (fuzz_audio_range.c). */
#include <libavutil/log.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "genred/audio.h"

enum { RATE = 16000 };
#define LIMIT_S 30.0

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    av_log_set_level(AV_LOG_QUIET); /* what the daemon does outside debug */
    audio_limit_libav();
    return 0;
}

static void fail(const char *what, const gr_err *err) {
    fprintf(stderr, "fuzz_audio: %s (%s)\n", what, err ? err->msg : "");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    audio_limits lim = {.max_duration_s = LIMIT_S};
    audio a;
    gr_err err = {0};
    if (audio_decode(data, size, RATE, &lim, &a, &err) != 0) {
        if (err.status == GR_EINTERNAL) fail("input blamed on the server (500)", &err);
        if (err.status != GR_EUNSUPPORTED && err.status != GR_EUNPROCESSABLE)
            fail("unexpected error status", &err);
        return 0;
    }
    if (a.n_samples == 0 || !a.samples) fail("success without samples", NULL);
    if (a.sample_rate != RATE) fail("wrong output rate", NULL);
    if (a.n_samples > (size_t)(LIMIT_S * RATE)) fail("duration limit not enforced", NULL);
    if (strcmp(a.format, "mp3") != 0 && strcmp(a.format, "wav") != 0 &&
        strcmp(a.format, "flac") != 0 && strcmp(a.format, "ogg") != 0 &&
        strcmp(a.format, "mov,mp4,m4a,3gp,3g2,mj2") != 0 && strcmp(a.format, "aiff") != 0)
        fail("demuxer outside the whitelist", NULL);
    /* Touch every sample, so a short buffer shows up under ASan/valgrind. */
    volatile float sink = 0;
    for (size_t i = 0; i < a.n_samples; i++) sink += a.samples[i];
    (void)sink;
    audio_free(&a);
    return 0;
}
