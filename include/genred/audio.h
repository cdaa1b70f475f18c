/* audio.h - decode an uploaded file from memory into mono float PCM.
 *
 * The bytes are read by libavformat through a custom AVIOContext over the
 * caller's buffer: no file, URL or network protocol is ever opened (empty
 * protocol whitelist), and only whitelisted demuxers (mp3, wav, flac, ogg)
 * and their audio decoders are accepted. The first audio stream is decoded,
 * downmixed and resampled with libswresample to mono float at the requested
 * rate, whatever the channel count, sample rate or sample format.
 *
 * What it does not do: trimming, feature extraction. */
#ifndef GENRED_AUDIO_H
#define GENRED_AUDIO_H

#include <stddef.h>

#include "genred/err.h"

typedef struct audio {
    float *samples;     /* mono, [-1, 1] nominal; owned, free with audio_free() */
    size_t n_samples;
    int sample_rate;    /* = the rate asked for */
    double duration_s;  /* n_samples / sample_rate */
    char format[32];    /* demuxer that recognised the input, e.g. "mp3" */
} audio;

typedef struct audio_limits {
    double max_duration_s;  /* decoded audio longer than this -> 422; 0 = none */
} audio_limits;

/* Decodes data[0..len) (borrowed, not modified, not kept). On success fills
 * *out, which the caller releases with audio_free(). Errors:
 *   GR_EUNSUPPORTED    not a recognised, whitelisted audio container;
 *   GR_EUNPROCESSABLE  recognised but no audio stream, undecodable, longer
 *                      than the limit, or no samples at all;
 *   GR_EINTERNAL       allocation or library failure.
 * Thread-safe. */
int audio_decode(const void *data, size_t len, int sample_rate,
                 const audio_limits *lim, audio *out, gr_err *err);

void audio_free(audio *a);

#endif
