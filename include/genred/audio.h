/* audio.h - decode an uploaded file from memory into mono float PCM.
 *
 * The bytes are read by libavformat through a custom AVIOContext over the
 * caller's buffer: no file, URL or network protocol is ever opened (empty
 * protocol whitelist), and only whitelisted demuxers (mp3, wav, flac, ogg)
 * and their audio decoders are accepted. The first audio stream is decoded,
 * downmixed and resampled with libswresample to mono float at the requested
 * rate, whatever the channel count, sample rate or sample format.
 *
 * Two ways in. audio_decode() decodes a whole file. audio_open() +
 * audio_source_decode() decode only a range of it, on several threads: the
 * open reads the container once without decoding (an index of its packets),
 * which for MP3, WAV and FLAC tells the exact length before any decoding, so
 * that the caller can apply the trim rule first and never decode what it
 * cuts. The range is then cut into segments decoded independently, each
 * starting a few packets early (a pre-roll that refills the decoder's and
 * the resampler's history) and stitched at sample positions the timestamps
 * give. The result is the same samples a whole decode gives, bit for bit
 * (tests/test_perf_decode.c); every seam is checked against the samples the
 * neighbouring segment decoded past it, and anything unexpected inside the
 * range (decoder errors, parameters changing mid-stream, a seam that does
 * not match, a length other than the index promised) falls back to one
 * sequential decode. The index itself refuses MP3 packets that are not
 * MPEG audio frames (junk the demuxer hands out, which a decoder drops).
 * One difference remains, for damaged files only: frames that still fail
 * to decode OUTSIDE the range are dropped by a sequential decode, which
 * moves everything after them earlier and shortens it, while a range keeps
 * the positions the timestamps give and reports the index's length.
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
    int segments;       /* segments decoded independently and stitched; 0 =
                         * one sequential decode of the whole stream */
} audio;

typedef struct audio_limits {
    double max_duration_s;  /* decoded audio longer than this -> 422; 0 = none */
    double deadline;        /* CLOCK_MONOTONIC time in seconds by which decoding
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

/* An opened upload: container checked, packets indexed, nothing decoded. */
typedef struct audio_source audio_source;

/* Opens data[0..len), which is borrowed and must stay unchanged until
 * audio_source_close(). Errors as audio_decode(); when the length is known
 * here, the duration limit is applied here too. Caller owns *out. */
int audio_open(const void *data, size_t len, int sample_rate,
               const audio_limits *lim, audio_source **out, gr_err *err);

/* Samples a whole decode yields, when the container tells it exactly before
 * decoding (MP3, WAV, FLAC with consistent timestamps); 0 = unknown. */
size_t audio_source_samples(const audio_source *s);

/* Decodes samples [first, first + count) of the stream (count is clipped to
 * the end; SIZE_MAX = to the end) with up to `threads` threads, into *out.
 * When the length is unknown or a segment departs from the index, this
 * decodes the whole stream sequentially instead: out->first is then 0,
 * out->n_samples = out->total, and out->total is the true length, which the
 * caller must use in place of audio_source_samples(). Errors as
 * audio_decode(); first beyond the end is GR_EINTERNAL. One call at a time
 * per source. */
int audio_source_decode(audio_source *s, size_t first, size_t count, int threads,
                        audio *out, gr_err *err);

/* Decodes samples [first, first + count) of a stream whose length the
 * index knows (audio_source_samples() > 0) into dst (count floats, the
 * caller's), as one segment on the calling thread, for callers that cut
 * and schedule the work themselves (features.c streams a song block by
 * block). Never falls back: returns 1 when the stream departs from its
 * index inside the range (the caller must then decode another way), 0 when
 * done, -1 on errors as audio_decode(). Any number of calls may run at once
 * on one source, but not beside audio_source_decode(). */
int audio_source_decode_into(const audio_source *s, size_t first, size_t count, float *dst,
                             gr_err *err);

void audio_source_close(audio_source *s);

#endif
