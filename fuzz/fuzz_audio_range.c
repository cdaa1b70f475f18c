/* fuzz_audio_range.c - libFuzzer harness: the indexed range decode against
 * the whole decode, on arbitrary bytes.
 *
 * audio.h promises that audio_open() + audio_source_decode() (the container
 * indexed once, a range cut into spans decoded on threads and stitched at
 * timestamp positions) gives the samples audio_decode() gives for the same
 * range. For every input audio_decode() accepts, this decodes a range the
 * input's own bytes choose (so a saved input replays the same) on 3 threads,
 * once into one buffer and once span by span to a sink (short spans with
 * margins, as features.c asks for them; for half the inputs only some of
 * the spans, as max_chunks asks), and requires, besides no crash,
 * leak or UB:
 *   - audio_open() accepts what audio_decode() accepted;
 *   - the range decode succeeds where the whole decode did;
 *   - for a stream whose whole decode is as long as its index says (every
 *     clean file): bit-identical samples at the same positions, in the
 *     buffer and in every span the sink is handed, and the stream's true
 *     length (out->total);
 *   - for a damaged stream, where frames that fail to decode make the whole
 *     decode shorter than the index: what audio.h promises there, a total
 *     that is the true length (after a fallback) or the index's count, and
 *     samples within it.
 *
 * What it does not do: check the decode itself (fuzz_audio.c). */
#include <libavutil/log.h>
#include <stdatomic.h>
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
    av_log_set_level(AV_LOG_QUIET);
    audio_limit_libav();
    return 0;
}

static void fail(const char *what, const gr_err *err) {
    fprintf(stderr, "fuzz_audio_range: %s (%s)\n", what, err ? err->msg : "");
    abort();
}

/* FNV-1a of the input: picks the range, so a saved input replays the same. */
static uint64_t input_hash(const uint8_t *data, size_t size) {
    uint64_t h = 1469598103934665603u;
    for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * 1099511628211u;
    return h;
}

/* A sink that compares every span it is handed with the whole decode. The
 * verdict waits for the decode's end: spans handed before a departure was
 * found are void (audio.h), so a mismatch counts only if no fallback came. */
typedef struct span_check {
    const audio *whole;
    size_t first;              /* the range's first sample */
    atomic_size_t mismatches;
    atomic_size_t where;       /* a stream position that differed */
} span_check;

static int check_span(void *ctx, size_t index, const float *samples, size_t at, size_t n,
                      gr_err *err) {
    (void)index, (void)err;
    span_check *c = ctx;
    for (size_t i = 0; i < n; i++) {
        size_t p = c->first + at + i;
        if (p >= c->whole->n_samples ||
            memcmp(&samples[i], &c->whole->samples[p], sizeof(float)) != 0) {
            atomic_fetch_add(&c->mismatches, 1);
            atomic_store(&c->where, p);
            break;
        }
    }
    return 0;
}

/* The same range span by span, to check_span(), as features.c decodes:
 * spans the input chooses (1 to 6 of them), with margins up to 600. */
static void check_sink_decode(audio_source *src, size_t first, size_t count, uint64_t h,
                              const audio *whole) {
    span_check c = {.whole = whole, .first = first};
    atomic_init(&c.mismatches, 0);
    atomic_init(&c.where, 0);
    audio_sink sink = {.span = count / (1 + (h >> 40) % 6) + 1, .margin = (h >> 48) % 600,
                       .take = check_span, .ctx = &c};
    /* Half the inputs decode only some spans (as max_chunks asks): those
     * whose bit of the hash is set, or the last one. */
    size_t picks[64], n_all = ((count > sink.margin ? count - sink.margin : 1) + sink.span - 1) /
                              sink.span;
    if (h >> 63 && n_all <= 64) {
        for (size_t s = 0; s < n_all; s++)
            if ((h >> (s % 32)) & 1 || (sink.n_picks == 0 && s + 1 == n_all))
                picks[sink.n_picks++] = s;
        sink.picks = picks;
    }
    audio part;
    gr_err err = {0};
    if (audio_source_decode(src, first, count, 3, &sink, &part, &err) != 0)
        fail("span decode failed where the whole decode succeeded", &err);
    if (part.spans > 0 && atomic_load(&c.mismatches) != 0) {
        fprintf(stderr, "fuzz_audio_range: range [%zu, +%zu) in spans of %zu (margin %zu): "
                "%zu spans differ from the whole decode, e.g. at sample %zu\n", first, count,
                sink.span, sink.margin, atomic_load(&c.mismatches), atomic_load(&c.where));
        abort();
    }
    if (part.spans == 0 && part.total != whole->n_samples) {
        fprintf(stderr, "fuzz_audio_range: span decode fell back to %zu samples; the whole "
                "decode has %zu\n", part.total, whole->n_samples);
        abort();
    }
    audio_free(&part);
}

/* whole: the successful audio_decode() of the same bytes. */
static void check_range_decode(const uint8_t *data, size_t size, const audio_limits *lim,
                               const audio *whole) {
    audio_source *src;
    gr_err err = {0};
    if (audio_open(data, size, RATE, lim, &src, &err) != 0)
        fail("audio_open refused what audio_decode decoded", &err);
    /* The range must lie within the index (audio.h); the index's length is
     * only a claim, which the answer's total must not repeat if untrue. */
    size_t indexed = audio_source_samples(src);
    uint64_t h = input_hash(data, size);
    size_t n = indexed ? indexed : whole->n_samples;
    size_t first = indexed ? (size_t)(h % n) : 0;
    size_t count = 1 + (size_t)((h >> 32) % (n - first));
    audio part;
    if (audio_source_decode(src, first, count, 3, NULL, &part, &err) != 0)
        fail("range decode failed where the whole decode succeeded", &err);
    /* Damaged: the sequential decode dropped frames the index counts. */
    int damaged = indexed && indexed != whole->n_samples;
    if (damaged) {
        if ((part.total != whole->n_samples && part.total != indexed) ||
            part.first + part.n_samples > part.total) {
            fprintf(stderr, "fuzz_audio_range: damaged stream: range [%zu, +%zu) of total %zu; "
                    "whole decode %zu, index %zu\n", part.first, part.n_samples, part.total,
                    whole->n_samples, indexed);
            abort();
        }
        audio_free(&part);
        audio_source_close(src);
        return;
    }
    if (part.first + part.n_samples > whole->n_samples) {
        fprintf(stderr, "fuzz_audio_range: range decode of [%zu, +%zu) gave [%zu, +%zu) of %zu "
                "samples in %d spans; the whole decode has %zu (index: %zu)\n", first, count,
                part.first, part.n_samples, part.total, part.spans, whole->n_samples, indexed);
        abort();
    }
    for (size_t i = 0; i < part.n_samples; i++)
        if (memcmp(&part.samples[i], &whole->samples[part.first + i], sizeof(float)) != 0) {
            fprintf(stderr, "fuzz_audio_range: range [%zu, +%zu) in %zu spans differs from the "
                    "whole decode at sample %zu: %.9g vs %.9g\n", part.first, part.n_samples,
                    (size_t)part.spans, part.first + i, part.samples[i],
                    whole->samples[part.first + i]);
            abort();
        }
    /* audio.h: total is the samples of the whole decoded stream, whatever
     * the index claimed (fuzz/corpus/audio/regress-range-junk-packet-total.mp3). */
    if (part.total != whole->n_samples) {
        fprintf(stderr, "fuzz_audio_range: range decode of [%zu, +%zu) says the stream has %zu "
                "samples; the whole decode has %zu (index: %zu)\n", first, count, part.total,
                whole->n_samples, indexed);
        abort();
    }
    audio_free(&part);
    check_sink_decode(src, first, count, h, whole);
    audio_source_close(src);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    audio_limits lim = {.max_duration_s = LIMIT_S};
    audio whole;
    gr_err err = {0};
    if (audio_decode(data, size, RATE, &lim, &whole, &err) != 0) return 0;
    check_range_decode(data, size, &lim, &whole);
    audio_free(&whole);
    return 0;
}
