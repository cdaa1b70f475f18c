/* audio.h - decode an uploaded file from memory into mono float PCM.
 *
 * The bytes are read by libavformat through a custom AVIOContext over the
 * caller's buffer: no file, URL or network protocol is ever opened (empty
 * protocol whitelist), and only whitelisted demuxers (mp3, wav, flac, ogg,
 * mp4/m4a, aiff) and their audio decoders are accepted; an MP4 must hold
 * audio only, in one file (not fragmented, no external data references). The first audio stream is decoded,
 * downmixed and resampled with libswresample to mono float at the requested
 * rate, whatever the channel count, sample rate or sample format.
 *
 * Two ways in. audio_decode() decodes a whole file. audio_open() +
 * audio_source_decode() decode only a range of it, on several threads: the
 * open reads the container once without decoding (an index of its packets),
 * which for MP3, WAV, FLAC and AIFF tells the exact length before any
 * decoding (MP4 and Ogg are decoded sequentially: audio_range.c says why), so
 * that the caller can apply the trim rule first and never decode what it
 * cuts. The range is then cut into spans decoded independently, each
 * starting a few packets early (a pre-roll that refills the decoder's and
 * the resampler's history) and stitched at sample positions the timestamps
 * give. The result is the same samples a whole decode gives, bit for bit
 * (tests/test_range_identity.c); every span is checked against the samples
 * its neighbour decoded where they meet, and anything unexpected inside the
 * range (decoder errors, parameters changing mid-stream, a check that does
 * not match, a length other than the index promised) falls back to one
 * sequential decode. The index itself refuses MP3 packets that are not
 * MPEG audio frames (junk the demuxer hands out, which a decoder drops).
 * One difference remains, for damaged files only: frames that still fail
 * to decode OUTSIDE the range are dropped by a sequential decode, which
 * moves everything after them earlier and shortens it, while a range keeps
 * the positions the timestamps give and reports the index's length.
 *
 * audio.c holds the hardened open and the sequential decode, audio_range.c
 * the index and the spans.
 *
 * What it does not do: trimming, feature extraction. */
#ifndef GENRED_AUDIO_H
#define GENRED_AUDIO_H

#include <stddef.h>

#include "genred/err.h"

typedef struct audio {
    float *samples;     /* mono, [-1, 1] nominal; owned, free with audio_free() */
    size_t n_samples;   /* samples held */
    size_t first;       /* position of samples[0] in the whole decoded stream */
    size_t total;       /* samples of the whole decoded stream (for a range
                         * of a damaged stream: as the index counts them) */
    int sample_rate;    /* = the rate asked for */
    double duration_s;  /* total / sample_rate: the whole stream's duration */
    char format[32];    /* demuxer that recognised the input, e.g. "mp3" */
    int spans;          /* spans decoded independently and stitched; 0 = one
                         * sequential decode of the whole stream */
    double sink_ms;     /* with a sink (audio_source_decode()): its time,
                         * summed over the decoding threads and divided by
                         * their number, i.e. its share of the wall time */
} audio;

typedef struct audio_limits {
    double max_duration_s;  /* longer decoded audio: GR_EUNPROCESSABLE; 0 = none */
    double deadline;        /* monotonic_now() time (clock.h) by which decoding
                             * must be done, else GR_EDEADLINE; 0 = none */
} audio_limits;

/* Decodes the whole of data[0..len) (borrowed, not modified, not kept). On
 * success fills *out (first = 0, n_samples = total), which the caller
 * releases with audio_free(). Errors:
 *   GR_EUNSUPPORTED    not a recognised, whitelisted audio container;
 *   GR_EUNPROCESSABLE  recognised but no audio stream, undecodable, longer
 *                      than the limit, or no samples at all;
 *   GR_EDEADLINE       lim->deadline passed (checked once per packet and
 *                      inside libav's own loops);
 *   GR_EINTERNAL       allocation or library failure.
 * Thread-safe. */
int audio_decode(const void *data, size_t len, int sample_rate,
                 const audio_limits *lim, audio *out, gr_err *err);

void audio_free(audio *a);

/* The most one allocation inside libav may take, once audio_limit_libav()
 * has run. libav sizes some allocations by what a header claims before
 * reading what it describes: an MP4 sample table naming 80 million samples
 * that are not there made the mov demuxer fill 1.9 GB from a 0.5 MB upload.
 * audio.c refuses such claims where files keep their tables, and this cap
 * bounds them wherever a hostile file hides them. Nothing an accepted file
 * needs comes near it: the largest are cover-art pictures (a few MB) and
 * sample indexes (24 bytes a packet: 1.3 MB for 20 minutes of AAC). */
#define AUDIO_LIBAV_MAX_ALLOC ((size_t)64 << 20)

/* Caps libav's allocations at AUDIO_LIBAV_MAX_ALLOC (av_max_alloc(), which
 * is process-wide): call once at start, before any decoding. Whoever runs
 * decodes of untrusted bytes calls it (main.c, the fuzz harnesses, the
 * audio tests). */
void audio_limit_libav(void);

/* An opened upload: container checked, packets indexed, nothing decoded. */
typedef struct audio_source audio_source;

/* Opens data[0..len), which is borrowed and must stay unchanged until
 * audio_source_close(). Errors as audio_decode(); when the length is known
 * here, the duration limit is applied here too. Caller owns *out. */
int audio_open(const void *data, size_t len, int sample_rate,
               const audio_limits *lim, audio_source **out, gr_err *err);

/* Samples a whole decode yields, when the container tells it exactly before
 * decoding (MP3, WAV, FLAC, AIFF with consistent timestamps); 0 = unknown. */
size_t audio_source_samples(const audio_source *s);

/* Where audio_source_decode() hands a range's samples, span by span, for
 * a caller that works on them as they come (features.c computes log-mel
 * span by span, so no thread holds more than a span of audio). */
typedef struct audio_sink {
    size_t span;        /* samples per span: a range of count samples holds
                         * ceil((count - margin) / span) spans, at least
                         * one, the last one taking the rest */
    size_t margin;      /* samples a span also gets before its start and
                         * past its end, within the range: for work on a
                         * span that reads its neighbours' samples */
    /* The spans to decode, by span number, ascending, no repeats (borrowed
     * for the call); NULL: every span of the range. Nothing between picked
     * spans is decoded but the few packets each span's decoder starts
     * early, so picking a few spans of a long range costs a few spans. */
    const size_t *picks;
    size_t n_picks;
    /* Called once per decoded span, on any decoding thread, several at
     * once: samples[0..n) (borrowed for the call) are samples [at, at + n)
     * of the range, the span with its margins; `index` is its place among
     * the spans decoded (its span number is picks[index], or index without
     * picks). Returns 0, or -1 with err set, which fails the decode. */
    int (*take)(void *ctx, size_t index, const float *samples, size_t at, size_t n,
                gr_err *err);
    void *ctx;
} audio_sink;

/* Decodes samples [first, first + count) of the stream (count is clipped to
 * the end; SIZE_MAX = to the end) in spans on up to `threads` threads.
 * Without a sink, into out->samples (first, n_samples = count). With one,
 * to the sink: out->samples stays NULL. Either way out->spans > 0.
 *
 * When the length is unknown or a span departs from the index, this decodes
 * the whole stream sequentially instead, into out whatever the sink:
 * out->spans is then 0, out->first 0, out->n_samples = out->total, and
 * out->total is the true length, which the caller must use in place of
 * audio_source_samples(); what a sink was handed before is void. Errors as
 * audio_decode(); first beyond the end is GR_EINTERNAL. One call at a time
 * per source. */
int audio_source_decode(audio_source *s, size_t first, size_t count, int threads,
                        const audio_sink *sink, audio *out, gr_err *err);

void audio_source_close(audio_source *s);

#endif
