/* audio.c - decode an uploaded file from memory into mono float PCM.
 *
 * Pipeline: memory AVIOContext -> our own format probe (whitelist check
 * before any demuxer runs) -> libavformat demuxer -> libavcodec decoder ->
 * libswresample (downmix + resample to mono float) -> growable buffer.
 * audio_open() also has the stream indexed once without decoding it; ranges
 * of an exactly indexed stream are decoded in audio_range.c, which falls
 * back to this file's sequential decode whenever the index cannot be
 * trusted. What the two share is audio_internal.h.
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
 * What it does not do: the index and range decoding (audio_range.c),
 * trimming, feature extraction, logging policy (libav's log level is the
 * caller's business). */
#include "genred/audio.h"
#include "genred/clock.h"

#include "audio_internal.h"

#include <errno.h>
#include <math.h>
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

/* "mov" is lavf's QuickTime/MP4 demuxer (M4A, MP4); "aiff" takes AIFF and
 * AIFF-C. */
#define FORMAT_WHITELIST "mp3,wav,flac,ogg,mov,aiff"
/* Decoder names (not codec ids): what the containers carry in practice. MP4
 * carries AAC or ALAC (and, rarely, MP3, FLAC, Opus or PCM); AIFF carries
 * big-endian PCM (AIFF-C also 8-bit, float, a-law, mu-law, little-endian). */
#define CODEC_WHITELIST                                                      \
    "mp3float,mp3,flac,vorbis,opus,aac,alac,"                                \
    "pcm_u8,pcm_s8,pcm_s16le,pcm_s16be,pcm_s24le,pcm_s24be,pcm_s32le,"      \
    "pcm_s32be,pcm_s64le,pcm_s64be,pcm_f32le,pcm_f32be,pcm_f64le,pcm_f64be," \
    "pcm_alaw,pcm_mulaw"
#define UNSUPPORTED_MSG                                                      \
    "not a supported audio container (mp3, wav, flac, ogg, m4a/mp4, aiff)"

enum {
    AVIO_BUFFER_SIZE = 32 * 1024,
    PROBE_MAX_BYTES = 1 << 20,     /* lavf's own PROBE_BUF_MAX: mp3's probe
                                      recognises huge ID3 tags only at it */
    ANALYZE_MAX_BYTES = 1 << 20,
};

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
int job_interrupted(void *opaque) {
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

void job_release(decode_job *job) {
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
int job_fail_av(gr_err *err, int averr, const char *what) {
    char msg[AV_ERROR_MAX_STRING_SIZE] = {0};
    av_strerror(averr, msg, sizeof msg);
    if (averr == AVERROR(ENOMEM))
        return gr_fail(err, GR_EUNPROCESSABLE,
                       "%s: malformed input (libav could not allocate what it describes)",
                       what);
    if (averr == AVERROR_EXIT) /* only job_interrupted() makes libav return it */
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

uint32_t job_u32(const uint8_t *p, int big_endian) {
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
                job_u32(hit + 4, big_endian) > (size_t)(end - hit - 8) + SLACK)
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

/* ---- MP4 (lavf's mov demuxer) --------------------------------------------
 *
 * The mov demuxer reads far more than music files need. Before it runs, the
 * file's top-level boxes (and the moov box's children) are walked here with
 * lavf's own rules for box sizes, and four kinds of file are refused:
 *   - fragmented MP4 (a top-level moof, sidx or mfra, or an mvex in moov):
 *     streaming segments, not music files, whose fragment index lavf grows
 *     one moof at a time; 415, with the remux that fixes it;
 *   - a compressed movie header (cmov): lavf inflates it into a buffer of
 *     the size the file claims, up to 2 GB from a few MB; 415. It needs the
 *     bytes "dcomzlib" (mov.c's mov_read_cmov()), so their absence anywhere
 *     in the upload proves no cmov can be inflated, wherever it is nested;
 *   - a top-level box other than mdat that claims more bytes than were
 *     uploaded, i.e. a moov cut short: 422. An mdat cut short decodes what
 *     is there, as a truncated MP3 or WAV does;
 *   - a track whose sample table claims more samples than the upload has
 *     bytes (mp4_samples_fit()): 422. Tables hidden elsewhere in the moov,
 *     where lavf reads them too, are bounded by audio_limit_libav().
 * After the header is read, job_open_container() refuses a video track (an
 * attached picture, i.e. cover art, is not one).
 *
 * External data references (a dref 'alis' record naming another file, which
 * lavf would open for the samples) are never followed: enable_drefs is set
 * to 0 explicitly (lavf's default), nested opens are refused
 * (refuse_nested_open()) and the protocol whitelist is empty. A track whose
 * data lies elsewhere has no packets: 422 (tests/test_hostile.py proves,
 * with inotify, that no open is even attempted). */

#define BOX(a, b, c, d) ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (uint32_t)(d))

/* The box at p[at..end): its type, where its body starts and where it ends
 * (size 0: at `end`; size 1: a 64-bit size follows). 1: a whole box; -1: it
 * claims to end past `end` (*next = end); 0: no box here, which ends lavf's
 * walk too (fewer than 8 bytes left, or a size below the header's). */
static int box_next(const uint8_t *p, size_t at, size_t end, uint32_t *type, size_t *body,
                    size_t *next) {
    if (end - at < 8) return 0;
    uint64_t size = job_u32(p + at, 1);
    size_t head = 8;
    *type = job_u32(p + at + 4, 1);
    if (size == 1) {
        if (end - at < 16) return 0;
        size = (uint64_t)job_u32(p + at + 8, 1) << 32 | job_u32(p + at + 12, 1);
        head = 16;
    } else if (size == 0) {
        size = end - at;
    }
    if (size < head) return 0;
    *body = at + head;
    if (size > end - at) {
        *next = end;
        return -1;
    }
    *next = at + (size_t)size;
    return 1;
}

#define FRAGMENTED_MSG                                                       \
    "fragmented MP4 (streaming segments) is not supported: remux it into "  \
    "one file first, e.g. ffmpeg -i in.mp4 -c copy out.m4a"

/* A box type as text, non-printable bytes as '?' (it goes into messages). */
static void box_name(uint32_t type, char out[5]) {
    for (int i = 0; i < 4; i++) {
        unsigned ch = type >> (24 - 8 * i) & 0xff;
        out[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    out[4] = '\0';
}

/* The first child of type `want` among the boxes of p[at..end), as box_next()
 * gives it; 0 if there is none. */
static int box_find(const uint8_t *p, size_t at, size_t end, uint32_t want, size_t *body,
                    size_t *next) {
    uint32_t type;
    for (; box_next(p, at, end, &type, body, next) > 0; at = *next)
        if (type == want) return 1;
    return 0;
}

/* n * k + *sum into *sum, saturating at UINT64_MAX. */
static void add_product(uint64_t *sum, uint64_t n, uint64_t k) {
    uint64_t prod;
    if (__builtin_mul_overflow(n, k, &prod) || __builtin_add_overflow(*sum, prod, sum))
        *sum = UINT64_MAX;
}

/* The samples an stbl (the box p[at..end)) describes must have bytes in the
 * upload: lavf allocates and fills one index entry (24 bytes) per sample
 * before reading any, so a constant-size stsz claiming 80 million samples
 * cost 1.9 GB and 5 s from a 0.5 MB file. A sample is at least one byte, or
 * the constant size stsz gives; the stsc's samples per chunk over the
 * chunks stco counts (lavf indexes raw PCM by chunk) are samples too. */
static int mp4_samples_fit(const uint8_t *p, size_t at, size_t end, size_t len) {
    size_t body, next;
    uint64_t claimed = 0, chunks = 0;
    if (box_find(p, at, end, BOX('s', 't', 's', 'z'), &body, &next) && next - body >= 12) {
        uint64_t size = job_u32(p + body + 4, 1);
        add_product(&claimed, job_u32(p + body + 8, 1), size ? size : 1);
        if (claimed > len) return 0;
    }
    if ((box_find(p, at, end, BOX('s', 't', 'c', 'o'), &body, &next) ||
         box_find(p, at, end, BOX('c', 'o', '6', '4'), &body, &next)) &&
        next - body >= 8)
        chunks = job_u32(p + body + 4, 1);
    if (!box_find(p, at, end, BOX('s', 't', 's', 'c'), &body, &next) || next - body < 8)
        return 1;
    /* Entries: first chunk (from 1), samples per chunk, description. */
    uint64_t entries = job_u32(p + body + 4, 1);
    claimed = 0;
    for (uint64_t i = 0; i < entries && (next - body - 8) / 12 > i; i++) {
        const uint8_t *e = p + body + 8 + 12 * i;
        uint64_t first = job_u32(e, 1), per_chunk = job_u32(e + 4, 1);
        uint64_t until = i + 1 < entries && (next - body - 8) / 12 > i + 1
                             ? job_u32(e + 12, 1) : chunks + 1;
        if (until > first) add_product(&claimed, until - first, per_chunk);
        if (claimed > len) return 0;
    }
    return 1;
}

/* moov's children (p[at..end)): no mvex (fragments), and every track's
 * samples fit. */
static int mp4_check_moov(const uint8_t *p, size_t at, size_t end, size_t len, gr_err *err) {
    size_t body, next, b, n;
    uint32_t type;
    for (; box_next(p, at, end, &type, &body, &next) > 0; at = next) {
        if (type == BOX('m', 'v', 'e', 'x')) return gr_fail(err, GR_EUNSUPPORTED, FRAGMENTED_MSG);
        if (type == BOX('t', 'r', 'a', 'k') &&
            box_find(p, body, next, BOX('m', 'd', 'i', 'a'), &b, &n) &&
            box_find(p, b, n, BOX('m', 'i', 'n', 'f'), &b, &n) &&
            box_find(p, b, n, BOX('s', 't', 'b', 'l'), &b, &n) && !mp4_samples_fit(p, b, n, len))
            return gr_fail(err, GR_EUNPROCESSABLE,
                           "malformed MP4: its sample table claims more samples than the "
                           "upload holds");
    }
    return 0;
}

/* The checks on the bytes, before lavf's mov demuxer runs. */
static int mp4_check_structure(const uint8_t *p, size_t len, gr_err *err) {
    if (memmem(p, len, "dcomzlib", 8))
        return gr_fail(err, GR_EUNSUPPORTED,
                       "MP4 with a compressed movie header (cmov) is not supported");
    size_t at = id3v2_prefix(p, len), body, next;
    uint32_t type;
    int got;
    for (; (got = box_next(p, at, len, &type, &body, &next)) != 0; at = next) {
        if (type == BOX('m', 'o', 'o', 'f') || type == BOX('s', 'i', 'd', 'x') ||
            type == BOX('m', 'f', 'r', 'a'))
            return gr_fail(err, GR_EUNSUPPORTED, FRAGMENTED_MSG);
        if (got < 0) {
            if (type == BOX('m', 'd', 'a', 't')) break;
            char name[5];
            box_name(type, name);
            return gr_fail(err, GR_EUNPROCESSABLE,
                           "malformed MP4: its '%s' box claims more bytes than uploaded "
                           "(a file cut short?)", name);
        }
        if (type == BOX('m', 'o', 'o', 'v') && mp4_check_moov(p, body, next, len, err) < 0)
            return -1;
    }
    return 0;
}

/* After lavf read the header: an MP4 must be audio only. */
static int mp4_check_streams(const AVFormatContext *fmt, gr_err *err) {
    for (unsigned i = 0; i < fmt->nb_streams; i++) {
        const AVStream *st = fmt->streams[i];
        if (st->codecpar->codec_type == AVMEDIA_TYPE_VIDEO &&
            !(st->disposition & AV_DISPOSITION_ATTACHED_PIC))
            return gr_fail(err, GR_EUNSUPPORTED,
                           "MP4 with a video track: only audio files are accepted "
                           "(extract the audio first, e.g. ffmpeg -i in.mp4 -vn -c:a copy "
                           "out.m4a)");
    }
    return 0;
}

int job_open_container(decode_job *job, gr_err *err) {
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
    const int is_mp4 = av_match_list(ifmt->name, "mov", ',') > 0;
    if (is_mp4 && mp4_check_structure(job->in.data, job->in.len, err) < 0) return -1;

    job->fmt = avformat_alloc_context();
    if (!job->fmt) return gr_fail(err, GR_EINTERNAL, "out of memory");
    job->fmt->pb = job->avio;
    job->fmt->probesize = ANALYZE_MAX_BYTES;
    job->fmt->max_analyze_duration = 5 * (int64_t)AV_TIME_BASE;
    job->fmt->interrupt_callback.callback = job_interrupted;
    job->fmt->interrupt_callback.opaque = job;
    job->fmt->io_open = refuse_nested_open;
    if (av_opt_set(job->fmt, "format_whitelist", FORMAT_WHITELIST, 0) < 0 ||
        av_opt_set(job->fmt, "codec_whitelist", CODEC_WHITELIST, 0) < 0 ||
        av_opt_set(job->fmt, "protocol_whitelist", "", 0) < 0)
        return gr_fail(err, GR_EINTERNAL, "out of memory");

    /* The mov demuxer's own doors, shut by name (see mp4_check_structure()):
     * a leftover entry means this lavf lacks the option, and then a door
     * might be open. Chapters are not read: they are not audio. */
    AVDictionary *opts = NULL;
    if (is_mp4 && (av_dict_set(&opts, "enable_drefs", "0", 0) < 0 ||
                   av_dict_set(&opts, "use_absolute_path", "0", 0) < 0 ||
                   av_dict_set(&opts, "ignore_chapters", "1", 0) < 0)) {
        av_dict_free(&opts);
        return gr_fail(err, GR_EINTERNAL, "out of memory");
    }
    /* Frees job->fmt (but not our avio) on failure. */
    ret = avformat_open_input(&job->fmt, NULL, ifmt, &opts);
    const AVDictionaryEntry *unknown = av_dict_get(opts, "", NULL, AV_DICT_IGNORE_SUFFIX);
    char lacking[32] = "";
    if (unknown) av_strlcpy(lacking, unknown->key, sizeof lacking);
    av_dict_free(&opts);
    if (ret < 0) return job_fail_av(err, ret, "reading container header");
    if (lacking[0])
        return gr_fail(err, GR_EINTERNAL, "libavformat's mov demuxer lacks the option %s",
                       lacking);
    if (is_mp4 && mp4_check_streams(job->fmt, err) < 0) return -1;
    ret = avformat_find_stream_info(job->fmt, NULL);
    if (ret == AVERROR(ENOMEM) || ret == AVERROR_EXIT)
        return job_fail_av(err, ret, "analysing streams");
    /* Other failures are not fatal: decoding below is the real test. */
    return 0;
}

/* Opens job->dec for a stream with parameters par and time base tb. */
int job_open_codec(decode_job *job, const AVCodec *codec, const AVCodecParameters *par,
                   AVRational tb, gr_err *err) {
    job->dec = avcodec_alloc_context3(codec);
    if (!job->dec) return gr_fail(err, GR_EINTERNAL, "out of memory");
    int ret = avcodec_parameters_to_context(job->dec, par);
    if (ret < 0) return job_fail_av(err, ret, "audio stream parameters");
    job->dec->pkt_timebase = tb;
    /* Parallelism comes from concurrent requests and from the spans of a
     * range (audio_range.c), not from the codec's own threads. */
    job->dec->thread_count = 1;
    if (av_opt_set(job->dec, "codec_whitelist", CODEC_WHITELIST, 0) < 0)
        return gr_fail(err, GR_EINTERNAL, "out of memory");
    ret = avcodec_open2(job->dec, codec, NULL);
    if (ret < 0) return job_fail_av(err, ret, "opening audio decoder");
    return 0;
}

/* Picks the audio stream to decode (the others are discarded by the
 * demuxer) and checks its codec against the whitelist. */
int job_pick_stream(decode_job *job, int *stream, const AVCodec **out, gr_err *err) {
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
int job_open_resampler(decode_job *job, const AVFrame *f, gr_err *err) {
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
    if (ret < 0) return job_fail_av(err, ret, "channel layout");

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
        return job_fail_av(err, ret, "setting up resampler");
    }
    /* Remember the frame's own layout (not the defaulted one) for compares. */
    av_channel_layout_uninit(&in);
    ret = av_channel_layout_copy(&job->swr_layout, &f->ch_layout);
    if (ret < 0) return job_fail_av(err, ret, "channel layout");
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
int job_convert(decode_job *job, const uint8_t **in, int in_count, gr_err *err) {
    for (;;) {
        int room = swr_get_out_samples(job->swr, in_count);
        if (room < 0) return job_fail_av(err, room, "resampling");
        if (room == 0) return 0;
        if (reserve(job, (size_t)room, err) < 0) return -1;
        uint8_t *dst = (uint8_t *)(job->samples + job->n);
        int got = swr_convert(job->swr, &dst, room, in, in_count);
        if (got < 0) return job_fail_av(err, got, "resampling");
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
        if (job->swr && job_convert(job, NULL, 0, err) < 0) return -1;
        if (job_open_resampler(job, f, err) < 0) return -1;
    }
    return job_convert(job, (const uint8_t **)f->extended_data, f->nb_samples, err);
}

/* Drains every frame the decoder has ready. Corrupt data is skipped and
 * counted, as ffmpeg does; only exhausted memory aborts. */
static int drain_decoder(decode_job *job, int *corrupt, gr_err *err) {
    for (;;) {
        int ret = avcodec_receive_frame(job->dec, job->frame);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return 0;
        if (ret == AVERROR(ENOMEM)) return job_fail_av(err, ret, "decoding");
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
 * Past a copy's end lie zeros only, as past the copies the indexed spans
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
        if (job_interrupted(job)) {
            av_packet_unref(job->pkt);
            return job_fail_av(err, AVERROR_EXIT, "decoding");
        }
        if (job->pkt->stream_index == stream) {
            ret = send_copy(job);
            if (ret == AVERROR(ENOMEM)) {
                av_packet_unref(job->pkt);
                return job_fail_av(err, ret, "decoding");
            }
            if (ret < 0) corrupt++;
        }
        av_packet_unref(job->pkt);
        if (drain_decoder(job, &corrupt, err) < 0) return -1;
    }
    /* Any other read error ends the input like EOF: a truncated upload
     * yields what decodes (ffmpeg does the same). */
    if (ret == AVERROR(ENOMEM) || ret == AVERROR_EXIT)
        return job_fail_av(err, ret, "reading container");

    ret = avcodec_send_packet(job->dec, NULL);
    if (ret < 0 && ret != AVERROR_EOF) return job_fail_av(err, ret, "flushing decoder");
    if (drain_decoder(job, &corrupt, err) < 0) return -1;
    if (job->swr && job_convert(job, NULL, 0, err) < 0) return -1;

    if (job->n == 0)
        return gr_fail(err, GR_EUNPROCESSABLE, corrupt ? "audio stream undecodable"
                                                       : "no audio samples");
    return 0;
}

/* ---- sources: the open once, the sequential decode ----------------------- */

int source_decode_whole(audio_source *s, audio *out, gr_err *err) {
    decode_job *job = &s->job;
    if (s->job_used) {
        decode_job fresh = {.in = {.data = job->in.data, .len = job->in.len},
                            .out_rate = job->out_rate,
                            .max_samples = job->max_samples,
                            .swr_format = -1,
                            .deadline = job->deadline};
        job_release(job);
        *job = fresh;
        s->job_used = 0;
        if (job_open_container(job, err) < 0 ||
            job_pick_stream(job, &s->stream, &s->codec, err) < 0)
            return -1;
    }
    const AVStream *st = job->fmt->streams[s->stream];
    s->job_used = 1;
    if (job_open_codec(job, s->codec, st->codecpar, st->time_base, err) < 0 ||
        decode_stream(job, s->stream, err) < 0)
        return -1;
    float *shrunk = realloc(job->samples, job->n * sizeof(float));
    memset(out, 0, sizeof *out);
    out->samples = shrunk ? shrunk : job->samples;
    job->samples = NULL;
    out->n_samples = out->total = job->n;
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
    if (job_open_container(&s->job, err) < 0 ||
        job_pick_stream(&s->job, &s->stream, &s->codec, err) < 0 || source_index(s, err) < 0) {
        audio_source_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

size_t audio_source_samples(const audio_source *s) {
    return s->index ? index_samples(s->index) : 0;
}

void audio_source_close(audio_source *s) {
    if (!s) return;
    job_release(&s->job);
    index_free(s->index);
    free(s);
}

int audio_decode(const void *data, size_t len, int sample_rate,
                 const audio_limits *lim, audio *out, gr_err *err) {
    if (!out) return gr_fail(err, GR_EINTERNAL, "audio_decode: no output");
    memset(out, 0, sizeof *out);
    audio_source *s;
    /* The index is built but not used: this is the reference decode, one
     * sequential pass, which audio_source_decode() must match; opening the
     * same way makes both accept and refuse the same inputs. */
    if (audio_open(data, len, sample_rate, lim, &s, err) != 0) return -1;
    int rc = source_decode_whole(s, out, err);
    audio_source_close(s);
    return rc;
}

void audio_limit_libav(void) { av_max_alloc(AUDIO_LIBAV_MAX_ALLOC); }

void audio_free(audio *a) {
    if (!a) return;
    free(a->samples);
    memset(a, 0, sizeof *a);
}
