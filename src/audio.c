/* audio.c - decode an uploaded file from memory into mono float PCM.
 *
 * Pipeline: memory AVIOContext -> our own format probe (whitelist check
 * before any demuxer runs) -> libavformat demuxer -> libavcodec decoder ->
 * libswresample (downmix + resample to mono float) -> growable buffer.
 * audio_open() also demuxes the stream once without decoding it, into an
 * index of packets; ranges of an exactly indexed stream are then decoded
 * as independent segments fed from that index (see "sources" below).
 *
 * The bytes come from strangers, so every libav door to the outside is shut:
 * the only I/O is the caller's buffer (custom AVIOContext), nested opens are
 * refused (io_open callback + empty protocol whitelist), and the demuxer and
 * decoder must be on fixed whitelists. Output memory is bounded by the
 * caller's duration limit: decoding stops as soon as it is crossed.
 *
 * Downmix policy: mono = arithmetic mean of all input channels (LFE
 * included), set as an explicit swr matrix. swr's own default matrix would
 * give stereo -> 0.707 (L + R), i.e. up to +3 dB gain and values beyond
 * [-1, 1] on float output, and a layout-dependent mix for surround; the mean
 * never leaves the input's range and does not depend on the layout, which
 * also covers inputs whose layout is unknown.
 *
 * What it does not do: trimming, feature extraction, logging policy (libav's
 * log level is the caller's business). */
#include "genred/audio.h"
#include "genred/clock.h"
#include "genred/mp3frame.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avstring.h>
#include <libavutil/channel_layout.h>
#include <libavutil/mem.h>
#include <libavutil/opt.h>
#include <libswresample/swresample.h>

#define FORMAT_WHITELIST "mp3,wav,flac,ogg"
/* Decoder names (not codec ids): what the four containers carry in practice. */
#define CODEC_WHITELIST                                                      \
    "mp3float,mp3,flac,vorbis,opus,"                                         \
    "pcm_u8,pcm_s16le,pcm_s16be,pcm_s24le,pcm_s24be,pcm_s32le,pcm_s32be,"   \
    "pcm_s64le,pcm_s64be,pcm_f32le,pcm_f32be,pcm_f64le,pcm_f64be,"          \
    "pcm_alaw,pcm_mulaw"
#define UNSUPPORTED_MSG "not a supported audio container (mp3, wav, flac, ogg)"

enum {
    AVIO_BUFFER_SIZE = 32 * 1024,
    PROBE_MAX_BYTES = 1 << 20,     /* lavf's own PROBE_BUF_MAX: mp3's probe
                                      recognises huge ID3 tags only at it */
    ANALYZE_MAX_BYTES = 1 << 20,
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

/* Everything one decode owns; released by release_job() on every path. */
typedef struct decode_job {
    memory_reader in;
    double deadline;       /* CLOCK_MONOTONIC seconds; 0 = none */
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

static int read_memory(void *opaque, uint8_t *buf, int size) {
    memory_reader *r = opaque;
    size_t left = r->len - r->pos;
    if (left == 0) return AVERROR_EOF;
    size_t n = size < 0 ? 0 : (size_t)size;
    if (n > left) n = left;
    memcpy(buf, r->data + r->pos, n);
    r->pos += n;
    return (int)n;
}

static int64_t seek_memory(void *opaque, int64_t offset, int whence) {
    memory_reader *r = opaque;
    int64_t base;
    switch (whence & ~AVSEEK_FORCE) {
    case AVSEEK_SIZE: return (int64_t)r->len;
    case SEEK_SET: base = 0; break;
    case SEEK_CUR: base = (int64_t)r->pos; break;
    case SEEK_END: base = (int64_t)r->len; break;
    default: return AVERROR(EINVAL);
    }
    /* base is in [0, len] and len <= INT64_MAX, so neither side overflows. */
    if (offset < -base || offset > (int64_t)r->len - base)
        return AVERROR(EINVAL);
    r->pos = (size_t)(base + offset);
    return (int64_t)r->pos;
}

/* The hook for a per-request deadline: polled by libav inside its own long
 * loops (header reading, stream analysis) and by decode_stream() once per
 * packet, so a decode stops within a packet of the deadline. */
static int interrupted(void *opaque) {
    const decode_job *job = opaque;
    return job->deadline > 0 && monotonic_now() > job->deadline;
}

/* Playlist-style demuxers open other files or URLs through this; none of the
 * whitelisted ones should, so refusing keeps a container from ever making
 * genred touch the filesystem or network even if a whitelist were wrong. */
static int refuse_nested_open(AVFormatContext *s, AVIOContext **pb,
                              const char *url, int flags,
                              AVDictionary **options) {
    (void)s; (void)url; (void)flags; (void)options;
    *pb = NULL;
    return AVERROR(EPERM);
}

static void release_job(decode_job *job) {
    av_frame_free(&job->frame);
    av_packet_free(&job->pkt);
    av_packet_free(&job->view);
    swr_free(&job->swr);
    av_channel_layout_uninit(&job->swr_layout);
    avcodec_free_context(&job->dec);
    avformat_close_input(&job->fmt); /* custom IO: leaves job->avio to us */
    if (job->avio) {
        /* lavf may have swapped the buffer (probe rewind), so free its. */
        av_freep(&job->avio->buffer);
        avio_context_free(&job->avio);
    }
    free(job->samples);
    job->samples = NULL;
}

/* Maps a libav failure to the input: even ENOMEM. libav says ENOMEM for
 * malformed files too (lavf 5.1's WAV demuxer returns it for an extradata
 * read cut short by the end of the file; allocations sized by a header field
 * over av_max_alloc fail the same way), so from libav it proves nothing
 * about the server. Our own allocations still report GR_EINTERNAL. */
static int fail_av(gr_err *err, int averr, const char *what) {
    char msg[AV_ERROR_MAX_STRING_SIZE] = {0};
    av_strerror(averr, msg, sizeof msg);
    if (averr == AVERROR(ENOMEM))
        return gr_fail(err, GR_EUNPROCESSABLE,
                       "%s: malformed input (libav could not allocate what it describes)",
                       what);
    if (averr == AVERROR_EXIT) /* only interrupted() makes libav return it */
        return gr_fail(err, GR_EDEADLINE, "%s: request deadline passed while decoding",
                       what);
    return gr_fail(err, GR_EUNPROCESSABLE, "%s: %s", what, msg);
}

/* Length of the ID3v2 tags at p, which lavf skips before any demuxer sees
 * the stream (same test as lavf's ff_id3v2_match/ff_id3v2_tag_len). */
static size_t id3v2_prefix(const uint8_t *p, size_t len) {
    size_t off = 0;
    while (len - off >= 10 && memcmp(p + off, "ID3", 3) == 0 &&
           p[off + 3] != 0xff && p[off + 4] != 0xff &&
           ((p[off + 6] | p[off + 7] | p[off + 8] | p[off + 9]) & 0x80) == 0) {
        size_t n = 10 + ((size_t)p[off + 6] << 21 | (size_t)p[off + 7] << 14 |
                         (size_t)p[off + 8] << 7 | p[off + 9]);
        if (p[off + 5] & 0x10) n += 10; /* footer */
        if (n >= len - off) return len;
        off += n;
    }
    return off;
}

static uint32_t read_u32(const uint8_t *p, int big_endian) {
    return big_endian ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
                      : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

/* lavf 5.1 zero-allocates some header structures at their declared size
 * before reading them: a WAV LIST/INFO entry (up to 4 GB) and a FLAC
 * metadata block (up to 16 MB). A few hundred hostile bytes would cost that
 * much RAM per request, so such claims must fit in the upload (with slack
 * for a missing pad byte or a file cut short inside a trailer). */
static int header_claims_fit(const char *format, const uint8_t *p, size_t len) {
    enum { SLACK = 64 * 1024 };
    size_t at = id3v2_prefix(p, len);
    if (strcmp(format, "wav") == 0) {
        /* Every "LIST....INFO" anywhere, so no chunk walk can be fooled
         * into disagreeing with lavf's; RIFX sizes are big-endian. */
        int big_endian = len - at >= 4 && memcmp(p + at, "RIFX", 4) == 0;
        const uint8_t *end = p + len, *hit = p + at;
        while ((hit = memmem(hit, (size_t)(end - hit), "LIST", 4)) != NULL) {
            if (end - hit < 12) break;
            if (memcmp(hit + 8, "INFO", 4) == 0 &&
                read_u32(hit + 4, big_endian) > (size_t)(end - hit - 8) + SLACK)
                return -1;
            hit += 4;
        }
    } else if (strcmp(format, "flac") == 0 && len - at >= 4 &&
               memcmp(p + at, "fLaC", 4) == 0) {
        /* Metadata blocks: 1 byte last-flag|type, 24-bit big-endian size. */
        for (at += 4; len - at >= 4; ) {
            size_t size = (size_t)p[at + 1] << 16 | (size_t)p[at + 2] << 8 | p[at + 3];
            int last = p[at] & 0x80;
            at += 4;
            if (size > len - at + SLACK) return -1;
            if (last || size >= len - at) break;
            at += size;
        }
    }
    return 0;
}

static int open_container(decode_job *job, gr_err *err) {
    uint8_t *buf = av_malloc(AVIO_BUFFER_SIZE);
    if (!buf) return gr_fail(err, GR_EINTERNAL, "out of memory");
    job->avio = avio_alloc_context(buf, AVIO_BUFFER_SIZE, 0, &job->in,
                                   read_memory, NULL, seek_memory);
    if (!job->avio) {
        av_free(buf);
        return gr_fail(err, GR_EINTERNAL, "out of memory");
    }

    /* Decide the format ourselves, before any demuxer parses a header, so a
     * non-whitelisted demuxer (hls, concat, ...) never runs at all. */
    const AVInputFormat *ifmt = NULL;
    int ret = av_probe_input_buffer2(job->avio, &ifmt, NULL, NULL, 0,
                                     PROBE_MAX_BYTES);
    if (ret == AVERROR(ENOMEM))
        return gr_fail(err, GR_EINTERNAL, "probing input: out of memory");
    if (ret < 0 || !ifmt || av_match_list(ifmt->name, FORMAT_WHITELIST, ',') <= 0)
        return gr_fail(err, GR_EUNSUPPORTED, UNSUPPORTED_MSG);
    if (header_claims_fit(ifmt->name, job->in.data, job->in.len) < 0)
        return gr_fail(err, GR_EUNPROCESSABLE,
                       "malformed %s: header claims more bytes than uploaded",
                       ifmt->name);

    job->fmt = avformat_alloc_context();
    if (!job->fmt) return gr_fail(err, GR_EINTERNAL, "out of memory");
    job->fmt->pb = job->avio;
    job->fmt->probesize = ANALYZE_MAX_BYTES;
    job->fmt->max_analyze_duration = 5 * (int64_t)AV_TIME_BASE;
    job->fmt->interrupt_callback.callback = interrupted;
    job->fmt->interrupt_callback.opaque = job;
    job->fmt->io_open = refuse_nested_open;
    if (av_opt_set(job->fmt, "format_whitelist", FORMAT_WHITELIST, 0) < 0 ||
        av_opt_set(job->fmt, "codec_whitelist", CODEC_WHITELIST, 0) < 0 ||
        av_opt_set(job->fmt, "protocol_whitelist", "", 0) < 0)
        return gr_fail(err, GR_EINTERNAL, "out of memory");

    /* Frees job->fmt (but not our avio) on failure. */
    ret = avformat_open_input(&job->fmt, NULL, ifmt, NULL);
    if (ret < 0) return fail_av(err, ret, "reading container header");
    ret = avformat_find_stream_info(job->fmt, NULL);
    if (ret == AVERROR(ENOMEM) || ret == AVERROR_EXIT)
        return fail_av(err, ret, "analysing streams");
    /* Other failures are not fatal: decoding below is the real test. */
    return 0;
}

/* Opens job->dec for a stream with parameters par and time base tb. */
static int open_codec(decode_job *job, const AVCodec *codec, const AVCodecParameters *par,
                      AVRational tb, gr_err *err) {
    job->dec = avcodec_alloc_context3(codec);
    if (!job->dec) return gr_fail(err, GR_EINTERNAL, "out of memory");
    int ret = avcodec_parameters_to_context(job->dec, par);
    if (ret < 0) return fail_av(err, ret, "audio stream parameters");
    job->dec->pkt_timebase = tb;
    /* Parallelism comes from concurrent requests and from segments
     * (audio_source_decode), not from the codec's own threads. */
    job->dec->thread_count = 1;
    if (av_opt_set(job->dec, "codec_whitelist", CODEC_WHITELIST, 0) < 0)
        return gr_fail(err, GR_EINTERNAL, "out of memory");
    ret = avcodec_open2(job->dec, codec, NULL);
    if (ret < 0) return fail_av(err, ret, "opening audio decoder");
    return 0;
}

/* Picks the audio stream to decode (the others are discarded by the
 * demuxer) and checks its codec against the whitelist. */
static int pick_stream(decode_job *job, int *stream, const AVCodec **out, gr_err *err) {
    const AVCodec *codec = NULL;
    int idx = av_find_best_stream(job->fmt, AVMEDIA_TYPE_AUDIO, -1, -1, &codec, 0);
    if (idx == AVERROR(ENOMEM)) return gr_fail(err, GR_EINTERNAL, "out of memory");
    if (idx < 0 || !codec)
        return gr_fail(err, GR_EUNPROCESSABLE, "no decodable audio stream");
    if (av_match_list(codec->name, CODEC_WHITELIST, ',') <= 0)
        return gr_fail(err, GR_EUNPROCESSABLE, "audio codec '%s' not supported",
                       codec->name);
    for (unsigned i = 0; i < job->fmt->nb_streams; i++)
        if ((int)i != idx) job->fmt->streams[i]->discard = AVDISCARD_ALL;
    *stream = idx;
    *out = codec;
    return 0;
}

/* (Re)builds swr for the frame's input parameters, flushing nothing: the
 * caller drains the old context first. */
static int open_resampler(decode_job *job, const AVFrame *f, gr_err *err) {
    int channels = f->ch_layout.nb_channels;
    if (channels <= 0 || f->sample_rate <= 0 || f->format < 0)
        return gr_fail(err, GR_EUNPROCESSABLE,
                       "invalid audio parameters (%d channels, %d Hz)",
                       channels, f->sample_rate);
    if (channels > MAX_INPUT_CHANNELS)
        return gr_fail(err, GR_EUNPROCESSABLE, "too many channels (%d, max %d)",
                       channels, MAX_INPUT_CHANNELS);
    if (f->sample_rate > MAX_RATE)
        return gr_fail(err, GR_EUNPROCESSABLE, "sample rate %d Hz above %d Hz",
                       f->sample_rate, MAX_RATE);

    swr_free(&job->swr);
    av_channel_layout_uninit(&job->swr_layout);
    AVChannelLayout in = {0};
    int ret = 0;
    if (f->ch_layout.order == AV_CHANNEL_ORDER_UNSPEC)
        av_channel_layout_default(&in, channels);
    else
        ret = av_channel_layout_copy(&in, &f->ch_layout);
    if (ret < 0) return fail_av(err, ret, "channel layout");

    AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
    ret = swr_alloc_set_opts2(&job->swr, &mono, AV_SAMPLE_FMT_FLT, job->out_rate,
                              &in, f->format, f->sample_rate, 0, NULL);
    if (ret >= 0) {
        double mean[MAX_INPUT_CHANNELS];
        for (int i = 0; i < channels; i++) mean[i] = 1.0 / channels;
        ret = swr_set_matrix(job->swr, mean, channels);
    }
    if (ret >= 0) ret = swr_init(job->swr);
    if (ret < 0) {
        av_channel_layout_uninit(&in);
        return fail_av(err, ret, "setting up resampler");
    }
    /* Remember the frame's own layout (not the defaulted one) for compares. */
    av_channel_layout_uninit(&in);
    ret = av_channel_layout_copy(&job->swr_layout, &f->ch_layout);
    if (ret < 0) return fail_av(err, ret, "channel layout");
    job->swr_format = f->format;
    job->swr_rate = f->sample_rate;
    return 0;
}

/* Makes room for `more` samples by doubling, but never reserves beyond the
 * point where the limit check fires (max_samples + one frame). */
static int reserve(decode_job *job, size_t more, gr_err *err) {
    const size_t most = SIZE_MAX / sizeof(float);
    if (more > most - job->n) return gr_fail(err, GR_EINTERNAL, "output size overflow");
    size_t need = job->n + more;
    if (need <= job->cap) return 0;
    size_t cap = job->cap < 16384 ? 16384 : job->cap;
    while (cap < need) cap = cap > most / 2 ? most : cap * 2;
    /* n <= max_samples < SIZE_MAX / 2 here, so this neither wraps nor
     * drops below need. */
    if (job->max_samples != SIZE_MAX && cap > job->max_samples + more)
        cap = job->max_samples + more;
    float *p = realloc(job->samples, cap * sizeof(float));
    if (!p) return gr_fail(err, GR_EINTERNAL, "out of memory for decoded audio");
    job->samples = p;
    job->cap = cap;
    return 0;
}

/* Pushes in_count samples into the output; in == NULL drains swr's delay
 * line. room is swr's upper bound, so one call takes all of the input. */
static int convert(decode_job *job, const uint8_t **in, int in_count, gr_err *err) {
    for (;;) {
        int room = swr_get_out_samples(job->swr, in_count);
        if (room < 0) return fail_av(err, room, "resampling");
        if (room == 0) return 0;
        if (reserve(job, (size_t)room, err) < 0) return -1;
        uint8_t *dst = (uint8_t *)(job->samples + job->n);
        int got = swr_convert(job->swr, &dst, room, in, in_count);
        if (got < 0) return fail_av(err, got, "resampling");
        job->n += (size_t)got;
        if (job->n > job->max_samples)
            return gr_fail(err, GR_EUNPROCESSABLE,
                           "audio longer than the %.0f s limit",
                           (double)job->max_samples / job->out_rate);
        if (in || got == 0) return 0;
    }
}

static int take_frame(decode_job *job, const AVFrame *f, gr_err *err) {
    if (f->nb_samples <= 0) return 0;
    if (!job->swr || f->format != job->swr_format ||
        f->sample_rate != job->swr_rate ||
        av_channel_layout_compare(&f->ch_layout, &job->swr_layout) != 0) {
        /* Mid-stream change: drain what the old parameters still hold. */
        if (job->swr && convert(job, NULL, 0, err) < 0) return -1;
        if (open_resampler(job, f, err) < 0) return -1;
    }
    return convert(job, (const uint8_t **)f->extended_data, f->nb_samples, err);
}

/* Drains every frame the decoder has ready. Corrupt data is skipped and
 * counted, as ffmpeg does; only exhausted memory aborts. */
static int drain_decoder(decode_job *job, int *corrupt, gr_err *err) {
    for (;;) {
        int ret = avcodec_receive_frame(job->dec, job->frame);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return 0;
        if (ret == AVERROR(ENOMEM)) return fail_av(err, ret, "decoding");
        if (ret < 0) {
            (*corrupt)++;
            return 0;
        }
        ret = take_frame(job, job->frame, err);
        av_frame_unref(job->frame);
        if (ret < 0) return -1;
    }
}

/* Sends the demuxer's packet as a copy whose padding is zeros. A damaged
 * frame can make a decoder read past its end (mp3's "invalid new
 * backstep"). Past a demuxer packet's end lies whatever shares its read
 * buffer: the file's next bytes or zeros, as lavf's reads happen to fall.
 * Past a copy's end lie zeros only, as past the copies the indexed segments
 * send, so both decodes depend on the packet's bytes alone
 * (fuzz/corpus/audio/regress-range-overread-*.mp3). */
static int send_copy(decode_job *job) {
    int ret = av_packet_copy_props(job->view, job->pkt);
    if (ret < 0) return ret;
    job->view->data = job->pkt->data;
    job->view->size = job->pkt->size;
    ret = avcodec_send_packet(job->dec, job->view); /* not refcounted: copied */
    av_packet_unref(job->view);
    return ret;
}

static int decode_stream(decode_job *job, int stream, gr_err *err) {
    int corrupt = 0, ret;
    job->pkt = av_packet_alloc();
    job->view = av_packet_alloc();
    job->frame = av_frame_alloc();
    if (!job->pkt || !job->view || !job->frame)
        return gr_fail(err, GR_EINTERNAL, "out of memory");

    while ((ret = av_read_frame(job->fmt, job->pkt)) >= 0) {
        if (interrupted(job)) {
            av_packet_unref(job->pkt);
            return fail_av(err, AVERROR_EXIT, "decoding");
        }
        if (job->pkt->stream_index == stream) {
            ret = send_copy(job);
            if (ret == AVERROR(ENOMEM)) {
                av_packet_unref(job->pkt);
                return fail_av(err, ret, "decoding");
            }
            if (ret < 0) corrupt++;
        }
        av_packet_unref(job->pkt);
        if (drain_decoder(job, &corrupt, err) < 0) return -1;
    }
    /* Any other read error ends the input like EOF: a truncated upload
     * yields what decodes (ffmpeg does the same). */
    if (ret == AVERROR(ENOMEM) || ret == AVERROR_EXIT)
        return fail_av(err, ret, "reading container");

    ret = avcodec_send_packet(job->dec, NULL);
    if (ret < 0 && ret != AVERROR_EOF) return fail_av(err, ret, "flushing decoder");
    if (drain_decoder(job, &corrupt, err) < 0) return -1;
    if (job->swr && convert(job, NULL, 0, err) < 0) return -1;

    if (job->n == 0)
        return gr_fail(err, GR_EUNPROCESSABLE, corrupt ? "audio stream undecodable"
                                                       : "no audio samples");
    return 0;
}

/* ---- sources: index once, decode ranges in segments ----------------------
 *
 * The index records, for every packet, where its bytes lie in the upload and
 * where its first sample lies on the timeline. Only when the timeline is
 * exact does it tell the length up front: the demuxer is mp3, wav or flac,
 * every packet has a timestamp and a duration, each packet starts where the
 * previous one ended, its bytes are a plain slice of the upload, and the
 * only sample skipping is the encoder delay on the first packet and the
 * padding on the last (LAME/Xing gapless info), which the timeline leaves
 * out exactly as the decoder does; and an MP3's frames read only the
 * stream's bytes (mp3frame.h), so that its decoder's state depends on the
 * last few frames only. Anything else is decoded sequentially.
 *
 * A segment decodes output samples [first, end): it feeds the resampler from
 * a native sample `a` a little before `first`, rounded down to a multiple of
 * in_rate / gcd(in_rate, out_rate) so that output sample j of this fresh
 * resampler is output sample a * out_rate / in_rate + j of a whole decode
 * (same phase, same filter, and the few samples it needs to fill its history
 * are discarded), and it starts the decoder PREROLL_PACKETS packets before
 * the one holding `a`, whose output is discarded too. Measured on MP3, WAV
 * and FLAC, the stitched samples are bit-identical to a whole decode (see
 * tests/test_perf_decode.c); each seam is checked at run time anyway, and so
 * is each segment's start (check_segment_start()): a damaged stream can
 * keep a decoder from converging within the pre-roll. */

enum {
    /* MP3's bit reservoir reaches back up to 511 bytes: 5 frames at
     * 32 kbit/s. One more frame refills the MDCT overlap and the synthesis
     * filterbank; the rest is margin. Costs 8 x 1152 samples per seam. */
    PREROLL_PACKETS = 8,
    SEAM_CHECK = 32,       /* output samples compared at each seam */
    MIN_SEGMENT_S = 4,     /* a shorter segment is not worth a thread */
    MAX_SEGMENTS = 64,
};

typedef struct packet_ref {
    int64_t pos;     /* its bytes: upload[pos, pos + size) */
    int size;
    int64_t pts;     /* in the stream's time base */
    int64_t start;   /* its first sample on the timeline, at the native rate
                      * (negative for the encoder delay the decoder drops) */
} packet_ref;

struct audio_source {
    decode_job job;        /* the opened container, for a sequential decode */
    int job_used;          /* the index read packets from job.fmt: reopen first */
    int stream;
    const AVCodec *codec;
    /* The index; meaningful only when n_out > 0. */
    AVCodecParameters *par; /* owned copy of the stream's parameters */
    AVRational tb;
    int in_rate;
    packet_ref *pkts;       /* owned */
    size_t n_pkts, cap_pkts;
    int64_t pts0;           /* the first packet's pts */
    int64_t skip;           /* samples the decoder drops from the first packet */
    size_t n_native;        /* timeline length at in_rate */
    size_t n_out;           /* timeline length at out_rate; 0 = not exact */
    int is_mp3;
    uint32_t mp3_header;    /* the first packet's mp3_frame_header() (mp3frame.h) */
    mp3_reservoir reservoir; /* the decoder's, frame by frame (mp3frame.h) */
};

static int64_t gcd64(int64_t a, int64_t b) {
    while (b) {
        int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

/* Timeline position (native samples) of a timestamp, if it is a whole number
 * of samples and nothing overflows. */
static int pts_to_native(const audio_source *s, int64_t pts, int64_t *out) {
    int64_t d, num;
    if (pts == AV_NOPTS_VALUE || __builtin_sub_overflow(pts, s->pts0, &d) ||
        __builtin_mul_overflow(d, (int64_t)s->tb.num * s->in_rate, &num) ||
        num % s->tb.den != 0)
        return -1;
    *out = num / s->tb.den - s->skip;
    return 0;
}

/* Output samples a fresh resampler (the rates of s, any channels) yields for
 * n input samples once flushed; -1 on failure. Only the rates matter, so a
 * mono float one fed silence stands for the real thing. */
static long long resampled_count(int in_rate, int out_rate, size_t n) {
    SwrContext *swr = NULL;
    AVChannelLayout mono = AV_CHANNEL_LAYOUT_MONO;
    if (swr_alloc_set_opts2(&swr, &mono, AV_SAMPLE_FMT_FLT, out_rate, &mono,
                            AV_SAMPLE_FMT_FLT, in_rate, 0, NULL) < 0 ||
        swr_init(swr) < 0) {
        swr_free(&swr);
        return -1;
    }
    static const float zeros[4096];
    float sink[8192];
    long long total = 0;
    for (;;) {
        /* A full sink leaves the rest buffered in swr for the next call;
         * after the input, NULL calls drain it until nothing comes. */
        int in = n > 4096 ? 4096 : (int)n;
        n -= (size_t)in;
        const uint8_t *ip = (const uint8_t *)zeros;
        uint8_t *op = (uint8_t *)sink;
        int got = swr_convert(swr, &op, 8192, in ? &ip : NULL, in);
        if (got < 0) {
            swr_free(&swr);
            return -1;
        }
        total += got;
        if (in == 0 && got == 0) break;
    }
    swr_free(&swr);
    return total;
}

/* Records one packet of the stream. Returns 1 if the timeline is still
 * exact, 0 if not (the index is then abandoned), -1 on ENOMEM. */
static int index_packet(audio_source *s, const AVPacket *pkt, int64_t *next_pts,
                        int64_t *end_discard, gr_err *err) {
    const memory_reader *in = &s->job.in;
    if (pkt->size <= 0 || pkt->pos < 0 || (uint64_t)pkt->pos > in->len ||
        (size_t)pkt->size > in->len - (size_t)pkt->pos ||
        memcmp(in->data + pkt->pos, pkt->data, (size_t)pkt->size) != 0)
        return 0;
    /* The mp3 demuxer also hands out junk between frames as packets, which
     * the decoder refuses, dropping their samples from a whole decode: such
     * a stream's timeline is not what its index says. */
    uint32_t mp3 = s->is_mp3 ? mp3_frame_header(pkt->data, pkt->size) : 0;
    if (s->is_mp3 && (mp3 == 0 || (s->n_pkts > 0 && mp3 != s->mp3_header) ||
                      !mp3_reservoir_add(&s->reservoir, pkt->data, pkt->size)))
        return 0;
    if (s->n_pkts == 0) s->mp3_header = mp3;
    if (pkt->pts == AV_NOPTS_VALUE || pkt->duration <= 0 || *end_discard != 0 ||
        av_packet_get_side_data(pkt, AV_PKT_DATA_PARAM_CHANGE, NULL) ||
        av_packet_get_side_data(pkt, AV_PKT_DATA_NEW_EXTRADATA, NULL))
        return 0;
    size_t sd_size = 0;
    const uint8_t *sd = av_packet_get_side_data(pkt, AV_PKT_DATA_SKIP_SAMPLES, &sd_size);
    uint32_t skip = sd && sd_size >= 8 ? read_u32(sd, 0) : 0;
    *end_discard = sd && sd_size >= 8 ? read_u32(sd + 4, 0) : 0;
    if (s->n_pkts == 0) {
        s->pts0 = pkt->pts;
        s->skip = skip;
    } else if (pkt->pts != *next_pts || skip != 0) {
        return 0;
    }
    int64_t start, end;
    if (__builtin_add_overflow(pkt->pts, pkt->duration, next_pts) ||
        pts_to_native(s, pkt->pts, &start) < 0 || pts_to_native(s, *next_pts, &end) < 0)
        return 0;
    if (s->n_pkts == s->cap_pkts) {
        size_t cap = s->cap_pkts ? 2 * s->cap_pkts : 1024;
        packet_ref *p = realloc(s->pkts, cap * sizeof *p);
        if (!p) return gr_fail(err, GR_EINTERNAL, "out of memory indexing packets");
        s->pkts = p;
        s->cap_pkts = cap;
    }
    s->pkts[s->n_pkts++] = (packet_ref){pkt->pos, pkt->size, pkt->pts, start};
    return 1;
}

/* Reads the stream once without decoding it and, if its timeline is exact,
 * sets s->n_native and s->n_out. */
static int index_stream(audio_source *s, gr_err *err) {
    decode_job *job = &s->job;
    const AVStream *st = job->fmt->streams[s->stream];
    s->in_rate = st->codecpar->sample_rate;
    s->tb = st->time_base;
    if (av_match_list(job->fmt->iformat->name, "mp3,wav,flac", ',') <= 0 ||
        s->in_rate <= 0 || s->in_rate > MAX_RATE || s->tb.num <= 0 || s->tb.den <= 0)
        return 0;
    AVPacket *pkt = av_packet_alloc();
    if (!pkt) return gr_fail(err, GR_EINTERNAL, "out of memory");
    s->job_used = 1;
    s->is_mp3 = strcmp(job->fmt->iformat->name, "mp3") == 0;
    int64_t next_pts = 0, end_discard = 0;
    int exact = 1, ret;
    while (exact == 1 && (ret = av_read_frame(job->fmt, pkt)) >= 0) {
        if (pkt->stream_index == s->stream)
            exact = index_packet(s, pkt, &next_pts, &end_discard, err);
        av_packet_unref(pkt);
        if (exact == 1 && interrupted(job)) ret = AVERROR_EXIT, exact = -2;
    }
    av_packet_free(&pkt);
    if (exact == -1) return -1;
    /* As in decode_stream(): any other read error ends the input like EOF. */
    if (exact == -2 || (exact == 1 && (ret == AVERROR(ENOMEM) || ret == AVERROR_EXIT)))
        return fail_av(err, ret, "reading container");
    int64_t end;
    if (exact != 1 || s->n_pkts == 0 || pts_to_native(s, next_pts, &end) < 0 ||
        end - end_discard <= 0)
        return 0;
    s->n_native = (size_t)(end - end_discard);

    /* The resampler's output length grows by exactly Q for every L more
     * input samples (the same phase repeats), once the input is longer than
     * its start-up: measure it on a tail of at least TAIL samples only.
     * (Measured: tails of 1024 samples already agree for 8..768 kHz.) */
    enum { TAIL = 32768 };
    int64_t g = gcd64(s->in_rate, job->out_rate);
    size_t L = (size_t)(s->in_rate / g), Q = (size_t)(job->out_rate / g);
    size_t whole = s->n_native > TAIL + L ? (s->n_native - TAIL) / L * L : 0;
    long long tail = resampled_count(s->in_rate, job->out_rate, s->n_native - whole);
    if (tail < 0) return gr_fail(err, GR_EINTERNAL, "setting up resampler");
    size_t n_out = whole / L * Q + (size_t)tail;
    if (n_out > job->max_samples)
        return gr_fail(err, GR_EUNPROCESSABLE, "audio longer than the %.0f s limit",
                       (double)job->max_samples / job->out_rate);
    s->par = avcodec_parameters_alloc();
    if (!s->par || avcodec_parameters_copy(s->par, st->codecpar) < 0)
        return gr_fail(err, GR_EINTERNAL, "out of memory");
    s->n_out = n_out;
    return 0;
}

typedef struct segment {
    const audio_source *src;
    size_t first, end;       /* output samples [first, end) of the timeline */
    float *dst;              /* end - first floats */
    size_t n_seam;           /* samples wanted after end, for the seam check */
    float seam[SEAM_CHECK];
    size_t preroll;          /* packets decoded and discarded before `a`'s */
    size_t k0;               /* out: the packet the decoder started at */
    size_t out_pos;          /* timeline position of the resampler's next output */
    pthread_t thread;
    int joinable;            /* set by the starting thread only */
    int rc;                  /* 0; -1 failed (err); 1 departs from the index */
    gr_err err;
} segment;

/* Moves the resampler's output in job->samples to where it belongs. */
static void collect(segment *g, decode_job *job) {
    /* job->samples are positions [out_pos, out_pos + n): copy what falls in
     * [first, end) to dst and what falls in [end, end + n_seam) to seam. */
    size_t lo = g->out_pos, hi = g->out_pos + job->n;
    size_t a = lo > g->first ? lo : g->first, b = hi < g->end ? hi : g->end;
    if (a < b) memcpy(g->dst + (a - g->first), job->samples + (a - lo), (b - a) * sizeof(float));
    size_t seam_end = g->end + g->n_seam;
    a = lo > g->end ? lo : g->end;
    b = hi < seam_end ? hi : seam_end;
    if (a < b) memcpy(g->seam + (a - g->end), job->samples + (a - lo), (b - a) * sizeof(float));
    g->out_pos = hi;
    job->n = 0;
}

/* Feeds the part of frame f at or after native sample *expect to the
 * resampler. Returns 0, 1 (departs from the index) or -1. */
static int feed_frame(segment *g, decode_job *job, const AVFrame *f, int64_t a,
                      int64_t *expect, gr_err *err) {
    const audio_source *s = g->src;
    int64_t fs;
    if (f->nb_samples <= 0) return 0;
    if (f->sample_rate != s->in_rate || pts_to_native(s, f->pts, &fs) < 0) return 1;
    int64_t fe = fs + f->nb_samples;
    if (fe <= a) return 0; /* pre-roll */
    if (fs > *expect || (*expect > a && fs != *expect)) return 1; /* a gap or overlap */
    if (!job->swr) {
        if (open_resampler(job, f, err) < 0) return -1;
    } else if (f->format != job->swr_format ||
               av_channel_layout_compare(&f->ch_layout, &job->swr_layout) != 0) {
        return 1;
    }
    int64_t lo = *expect, hi = fe < (int64_t)s->n_native ? fe : (int64_t)s->n_native;
    *expect = fe;
    if (hi <= lo) return 0; /* the padding the whole decode drops */
    const uint8_t *planes[MAX_INPUT_CHANNELS];
    int channels = f->ch_layout.nb_channels, bps = av_get_bytes_per_sample(f->format);
    size_t off = (size_t)(lo - fs);
    if (av_sample_fmt_is_planar(f->format)) {
        for (int c = 0; c < channels; c++) planes[c] = f->extended_data[c] + off * (size_t)bps;
    } else {
        planes[0] = f->extended_data[0] + off * (size_t)bps * (size_t)channels;
    }
    if (convert(job, planes, (int)(hi - lo), err) < 0) return -1;
    collect(g, job);
    return 0;
}

static int drain_segment(segment *g, decode_job *job, int64_t a, int64_t *expect,
                         int preroll, gr_err *err) {
    for (;;) {
        int ret = avcodec_receive_frame(job->dec, job->frame);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return 0;
        if (ret == AVERROR(ENOMEM)) return fail_av(err, ret, "decoding");
        if (ret < 0) {
            if (preroll) continue;
            return 1;
        }
        ret = feed_frame(g, job, job->frame, a, expect, err);
        av_frame_unref(job->frame);
        if (ret != 0) return ret;
    }
}

static int decode_segment_job(segment *g, decode_job *job) {
    const audio_source *s = g->src;
    gr_err *err = &g->err;
    const int64_t in_rate = s->in_rate, out_rate = job->out_rate;
    const int64_t gg = gcd64(in_rate, out_rate), L = in_rate / gg, Q = out_rate / gg;
    /* The native sample under output `first`, less the resampler's history
     * (its filter spans about 32 output samples), down to a multiple of L. */
    int64_t need = (int64_t)g->first * in_rate / out_rate;
    int64_t margin = 128 * in_rate / out_rate + 256;
    int64_t a = need > margin ? (need - margin) / L * L : 0;
    g->out_pos = (size_t)(a / L * Q);
    /* The packet holding sample a (binary search on starts), less pre-roll. */
    size_t lo = 0, hi = s->n_pkts;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->pkts[mid].start <= a) lo = mid;
        else hi = mid;
    }
    size_t k = lo, k0 = k > g->preroll ? k - g->preroll : 0;
    g->k0 = k0;
    size_t want = g->end + g->n_seam;

    if (open_codec(job, s->codec, s->par, s->tb, err) < 0) return -1;
    job->pkt = av_packet_alloc();
    job->frame = av_frame_alloc();
    if (!job->pkt || !job->frame) return gr_fail(err, GR_EINTERNAL, "out of memory");
    int64_t expect = a;
    size_t i = k0;
    for (; i < s->n_pkts && g->out_pos < want; i++) {
        if (interrupted(job)) return fail_av(err, AVERROR_EXIT, "decoding");
        const packet_ref *p = &s->pkts[i];
        AVPacket *pkt = job->pkt;
        /* Not reference-counted: avcodec_send_packet() copies the bytes (with
         * the padding decoders may read past the end). */
        pkt->data = (uint8_t *)s->job.in.data + p->pos;
        pkt->size = p->size;
        pkt->pts = pkt->dts = p->pts;
        pkt->duration = i + 1 < s->n_pkts ? s->pkts[i + 1].pts - p->pts : 0;
        int ret = avcodec_send_packet(job->dec, pkt);
        pkt->data = NULL;
        pkt->size = 0;
        if (ret == AVERROR(ENOMEM)) return fail_av(err, ret, "decoding");
        if (ret < 0 && i >= k) return 1;
        ret = drain_segment(g, job, a, &expect, i < k, err);
        if (ret != 0) return ret;
    }
    if (g->out_pos < want && i == s->n_pkts) {
        /* The end of the stream: flush the decoder and the resampler, as the
         * whole decode does, which must land exactly on the predicted end. */
        int ret = avcodec_send_packet(job->dec, NULL);
        if (ret < 0 && ret != AVERROR_EOF) return 1;
        ret = drain_segment(g, job, a, &expect, 0, err);
        if (ret != 0) return ret;
        if (!job->swr) return 1;
        if (convert(job, NULL, 0, err) < 0) return -1;
        collect(g, job);
        if (g->out_pos != s->n_out || expect < (int64_t)s->n_native) return 1;
    }
    return g->out_pos >= want ? 0 : 1;
}

/* Decodes segment g with a decode_job of its own; returns g's rc. */
static int run_segment(segment *g) {
    const decode_job *parent = &g->src->job;
    decode_job job = {
        .out_rate = parent->out_rate,
        .max_samples = SIZE_MAX,
        .swr_format = -1,
        .deadline = parent->deadline,
    };
    int rc = decode_segment_job(g, &job);
    release_job(&job);
    return rc;
}

/* A segment whose decoder started mid-stream is trusted only if a second
 * decoder, started PREROLL_PACKETS packets earlier still, gives the same
 * first samples: both have then reached the whole decode's state. The seam
 * check does the same between neighbours; this also covers a range's first
 * segment, which has none before it (a damaged MP3 whose decoder needed 11
 * frames: fuzz/corpus/audio/regress-range-first-segment-preroll.mp3).
 * Returns 0, 1 (they differ) or -1 (g->err). */
static int check_segment_start(segment *g) {
    if (g->k0 == 0) return 0; /* started with the stream, as the whole decode does */
    float head[SEAM_CHECK];
    size_t n = g->end - g->first < SEAM_CHECK ? g->end - g->first : SEAM_CHECK;
    segment probe = {.src = g->src, .first = g->first, .end = g->first + n, .dst = head,
                     .preroll = g->preroll + PREROLL_PACKETS};
    int rc = run_segment(&probe);
    if (rc < 0) g->err = probe.err;
    if (rc != 0) return rc;
    return memcmp(head, g->dst, n * sizeof(float)) != 0;
}

static void *decode_segment(void *arg) {
    segment *g = arg;
    g->rc = run_segment(g);
    if (g->rc == 0) g->rc = check_segment_start(g);
    return NULL;
}

/* The sequential decode of everything: audio_decode()'s path, and the
 * fallback whenever the index cannot be trusted. */
static int decode_whole(audio_source *s, audio *out, gr_err *err) {
    decode_job *job = &s->job;
    if (s->job_used) {
        decode_job fresh = {.in = {.data = job->in.data, .len = job->in.len},
                            .out_rate = job->out_rate,
                            .max_samples = job->max_samples,
                            .swr_format = -1,
                            .deadline = job->deadline};
        release_job(job);
        *job = fresh;
        s->job_used = 0;
        if (open_container(job, err) < 0 || pick_stream(job, &s->stream, &s->codec, err) < 0)
            return -1;
    }
    const AVStream *st = job->fmt->streams[s->stream];
    s->job_used = 1;
    if (open_codec(job, s->codec, st->codecpar, st->time_base, err) < 0 ||
        decode_stream(job, s->stream, err) < 0)
        return -1;
    float *shrunk = realloc(job->samples, job->n * sizeof(float));
    out->samples = shrunk ? shrunk : job->samples;
    job->samples = NULL;
    out->n_samples = out->total = job->n;
    out->first = 0;
    out->sample_rate = job->out_rate;
    out->duration_s = (double)job->n / job->out_rate;
    av_strlcpy(out->format, job->fmt->iformat->name, sizeof out->format);
    return 0;
}

int audio_open(const void *data, size_t len, int sample_rate, const audio_limits *lim,
               audio_source **out, gr_err *err) {
    if (!out) return gr_fail(err, GR_EINTERNAL, "audio_open: no output");
    *out = NULL;
    if ((!data && len > 0) || (uint64_t)len > (uint64_t)INT64_MAX)
        return gr_fail(err, GR_EINTERNAL, "audio_decode: invalid buffer");
    if (sample_rate <= 0 || sample_rate > MAX_RATE)
        return gr_fail(err, GR_EINTERNAL, "audio_decode: invalid sample rate %d",
                       sample_rate);
    if (len == 0) return gr_fail(err, GR_EUNSUPPORTED, UNSUPPORTED_MSG);

    audio_source *s = calloc(1, sizeof *s);
    if (!s) return gr_fail(err, GR_EINTERNAL, "out of memory");
    s->job = (decode_job){
        .in = {.data = data, .len = len},
        .out_rate = sample_rate,
        .max_samples = SIZE_MAX,
        .swr_format = -1,
        .deadline = lim && lim->deadline > 0 ? lim->deadline : 0,
    };
    /* !(x > 0) also maps NaN to "no limit", as 0 does. */
    double max_s = lim ? lim->max_duration_s : 0;
    if (max_s > 0 && max_s * sample_rate < (double)(SIZE_MAX / 2))
        s->job.max_samples = (size_t)floor(max_s * sample_rate);
    if (open_container(&s->job, err) < 0 ||
        pick_stream(&s->job, &s->stream, &s->codec, err) < 0 || index_stream(s, err) < 0) {
        audio_source_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

size_t audio_source_samples(const audio_source *s) { return s->n_out; }

int audio_source_decode(audio_source *s, size_t first, size_t count, int threads,
                        audio *out, gr_err *err) {
    if (!out) return gr_fail(err, GR_EINTERNAL, "audio_source_decode: no output");
    memset(out, 0, sizeof *out);
    if (!s) return gr_fail(err, GR_EINTERNAL, "audio_source_decode: no source");
    if (s->n_out == 0) return decode_whole(s, out, err);
    if (first >= s->n_out || count == 0)
        return gr_fail(err, GR_EINTERNAL, "audio: range [%zu, +%zu) outside %zu samples",
                       first, count, s->n_out);
    if (count > s->n_out - first) count = s->n_out - first;

    size_t min_seg = (size_t)MIN_SEGMENT_S * (size_t)s->job.out_rate;
    size_t n = threads < 1 ? 1 : threads > MAX_SEGMENTS ? MAX_SEGMENTS : (size_t)threads;
    if (count / n < min_seg) n = count / min_seg ? count / min_seg : 1;
    float *dst = malloc(count * sizeof *dst);
    segment *g = calloc(n, sizeof *g);
    if (!dst || !g) {
        free(dst);
        free(g);
        return gr_fail(err, GR_EINTERNAL, "out of memory for decoded audio");
    }
    for (size_t i = 0; i < n; i++) {
        g[i].src = s;
        g[i].first = first + count / n * i;
        g[i].end = i + 1 < n ? first + count / n * (i + 1) : first + count;
        g[i].dst = dst + (g[i].first - first);
        g[i].n_seam = i + 1 < n ? SEAM_CHECK : 0;
        g[i].preroll = PREROLL_PACKETS;
    }
    /* Segment 0 runs here; a thread that cannot start runs here too. */
    for (size_t i = 1; i < n; i++)
        g[i].joinable = pthread_create(&g[i].thread, NULL, decode_segment, &g[i]) == 0;
    decode_segment(&g[0]);
    for (size_t i = 1; i < n; i++) {
        if (g[i].joinable) pthread_join(g[i].thread, NULL);
        else decode_segment(&g[i]);
    }

    int fall_back = 0;
    for (size_t i = 0; i < n; i++) {
        if (g[i].rc < 0) {
            if (err) *err = g[i].err;
            free(dst);
            free(g);
            return -1;
        }
        if (g[i].rc > 0) fall_back = 1;
        if (i + 1 < n && memcmp(g[i].seam, g[i + 1].dst, SEAM_CHECK * sizeof(float)) != 0)
            fall_back = 1;
    }
    free(g);
    if (fall_back) {
        free(dst);
        return decode_whole(s, out, err);
    }
    out->samples = dst;
    out->segments = (int)n;
    out->n_samples = count;
    out->first = first;
    out->total = s->n_out;
    out->sample_rate = s->job.out_rate;
    out->duration_s = (double)s->n_out / s->job.out_rate;
    av_strlcpy(out->format, s->job.fmt->iformat->name, sizeof out->format);
    return 0;
}

int audio_source_decode_into(const audio_source *s, size_t first, size_t count, float *dst,
                             gr_err *err) {
    if (!s || !dst || s->n_out == 0 || first >= s->n_out || count == 0 ||
        count > s->n_out - first)
        return gr_fail(err, GR_EINTERNAL, "audio: range [%zu, +%zu) outside the index",
                       first, count);
    segment g = {.src = s, .first = first, .end = first + count, .dst = dst,
                 .preroll = PREROLL_PACKETS};
    decode_segment(&g);
    if (g.rc < 0 && err) *err = g.err;
    return g.rc;
}

void audio_source_close(audio_source *s) {
    if (!s) return;
    release_job(&s->job);
    avcodec_parameters_free(&s->par);
    free(s->pkts);
    free(s);
}

int audio_decode(const void *data, size_t len, int sample_rate,
                 const audio_limits *lim, audio *out, gr_err *err) {
    if (!out) return gr_fail(err, GR_EINTERNAL, "audio_decode: no output");
    memset(out, 0, sizeof *out);
    audio_source *s;
    /* The index is built but not used: this is the reference decode, one
     * sequential pass, which audio_source_decode() must match. */
    if (audio_open(data, len, sample_rate, lim, &s, err) != 0) return -1;
    int rc = decode_whole(s, out, err);
    audio_source_close(s);
    return rc;
}

void audio_free(audio *a) {
    if (!a) return;
    free(a->samples);
    memset(a, 0, sizeof *a);
}
