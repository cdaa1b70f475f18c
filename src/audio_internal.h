/* audio_internal.h - what audio.c (the hardened open and the sequential
 * decode) and audio_range.c (the index and range decoding) share. Private
 * to those two files: the contract is audio.h.
 *
 * A decode_job is one libav pipeline over the caller's bytes: a container
 * opened through our memory reader, a decoder, a resampler to mono float,
 * and the samples it has produced. The job_* functions are its steps, each
 * failing with a gr_err as audio.h describes. */
#ifndef GENRED_AUDIO_INTERNAL_H
#define GENRED_AUDIO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libswresample/swresample.h>

#include "genred/audio.h"

enum {
    MAX_INPUT_CHANNELS = 64,       /* SWR_CH_MAX */
    MAX_RATE = 768000,             /* swr's filter grows with in/out ratio:
                                      ~6 MB at 768k -> 16k, 140 MB at 16 MHz */
};

/* The caller's bytes as seen by the AVIOContext callbacks. */
typedef struct memory_reader {
    const uint8_t *data; /* borrowed */
    size_t len;
    size_t pos;
} memory_reader;

/* Everything one decode owns; released by job_release() on every path. */
typedef struct decode_job {
    memory_reader in;
    double deadline;       /* monotonic_now() seconds; 0 = none */
    int out_rate;
    size_t max_samples;    /* SIZE_MAX = no limit */
    AVIOContext *avio;
    AVFormatContext *fmt;
    AVCodecContext *dec;
    SwrContext *swr;
    AVChannelLayout swr_layout; /* input parameters swr was built for */
    int swr_format;
    int swr_rate;
    AVPacket *pkt;
    AVPacket *view;        /* pkt's bytes without its buffer: send_copy() */
    AVFrame *frame;
    float *samples;        /* malloc'ed, handed to the caller on success */
    size_t n;
    size_t cap;
} decode_job;

/* The index of a stream whose timeline is exact (audio_range.c). */
typedef struct stream_index stream_index;

struct audio_source {
    decode_job job;        /* the opened container, for a sequential decode */
    int job_used;          /* the index read packets from job.fmt: reopen first */
    int stream;
    const AVCodec *codec;
    stream_index *index;   /* NULL: the length is not known up front */
};

/* ---- audio.c ------------------------------------------------------------ */

/* libav's interrupt callback (opaque: the job): 1 once job->deadline passed. */
int job_interrupted(void *opaque);
/* Maps a libav error code to the input's fault (audio.h's kinds). -1. */
int job_fail_av(gr_err *err, int averr, const char *what);
/* The 32-bit integer at p. */
uint32_t job_u32(const uint8_t *p, int big_endian);
/* Probes, checks the whitelists and opens job->in as a container. */
int job_open_container(decode_job *job, gr_err *err);
/* Picks the audio stream and checks its codec against the whitelist. */
int job_pick_stream(decode_job *job, int *stream, const AVCodec **out, gr_err *err);
/* Opens job->dec for a stream with parameters par and time base tb. */
int job_open_codec(decode_job *job, const AVCodec *codec, const AVCodecParameters *par,
                   AVRational tb, gr_err *err);
/* (Re)builds the resampler for frame f's parameters. */
int job_open_resampler(decode_job *job, const AVFrame *f, gr_err *err);
/* Resamples in_count samples into job->samples; in == NULL drains. */
int job_convert(decode_job *job, const uint8_t **in, int in_count, gr_err *err);
/* Frees everything the job holds; it may be set up again. */
void job_release(decode_job *job);

/* The sequential decode of the whole stream: audio_decode()'s path, and
 * range decoding's fallback. Fills *out (first = 0, n_samples = total). */
int source_decode_whole(audio_source *s, audio *out, gr_err *err);

/* ---- audio_range.c ------------------------------------------------------ */

/* Reads the stream once without decoding it and, if its timeline is exact,
 * sets s->index. Applies the duration limit when the length is known. */
int source_index(audio_source *s, gr_err *err);
/* Output samples the index promises (> 0). */
size_t index_samples(const stream_index *ix);
void index_free(stream_index *ix);

#endif
