/* audio_range.c - index a stream once, then decode ranges of it in spans.
 *
 * The index records, for every packet, where its bytes lie in the upload and
 * where its first sample lies on the timeline. Only when the timeline is
 * exact does it tell the length up front: the demuxer is mp3, wav, flac or
 * aiff, every packet has a timestamp and a duration, each packet starts
 * where the previous one ended, its bytes are a plain slice of the upload,
 * and the only sample skipping is the encoder delay on the first packet and
 * the padding on the last (LAME/Xing gapless info), which the timeline
 * leaves out exactly as the decoder does; and an MP3's frames read only the
 * stream's bytes (mp3frame.h), so that its decoder's state depends on the
 * last few frames only. Anything else is decoded sequentially (audio.c).
 *
 * MP4 is among the rest, by decision. Its timeline is the sample table's,
 * not the decoder's: lavf 5.1 marks AAC's priming packet as discarded and
 * drops no end padding, so the AAC decoder yields a whole 1024-sample frame
 * for a last packet that lasts 565 (a 30 s file: 1324032 samples decoded,
 * 1323573 in the table); AAC Main and SBR decoders also carry state across
 * more frames than a pre-roll would refill. An index would need per-codec
 * rules for each; the sequential decode is exact by definition and, for a
 * 3-minute AAC song, takes about what an MP3's takes (0.32 s against 0.35 s
 * for `ffmpeg -threads 1 -f null` here), on one thread.
 *
 * A range is cut into spans, each decoded on its own by whichever thread
 * takes it next. A span decodes output samples [lo, hi): it feeds the
 * resampler from a native sample `a` a little before lo, rounded down to a
 * multiple of in_rate / gcd(in_rate, out_rate) so that output sample j of
 * this fresh resampler is output sample a * out_rate / in_rate + j of a
 * whole decode (same phase, same filter, and the few samples it needs to
 * fill its history are discarded), and it starts the decoder
 * PREROLL_PACKETS packets before the one holding `a`, whose output is
 * discarded too. Measured on MP3, WAV and FLAC, the spans are bit-identical
 * to a whole decode (tests/test_range_identity.c). Two checks hold every
 * span to that at run time, since a damaged stream can keep a decoder from
 * converging within the pre-roll:
 *   - the seam: neighbouring spans both decode SEAM samples where they meet
 *     (a span runs SEAM samples past the next one's start), which must agree;
 *   - the start: a span whose decoder started mid-stream is decoded again
 *     from PREROLL_PACKETS packets earlier still, and its first SEAM
 *     samples must agree (a range's first span has no neighbour before it:
 *     fuzz/corpus/audio/regress-range-first-segment-preroll.mp3).
 * Anything unexpected inside the range (decoder errors, parameters changing
 * mid-stream, a failed check, a length other than the index promised) is a
 * departure from the index, and the one fallback policy applies: the whole
 * stream is decoded sequentially instead (source_decode_whole()).
 *
 * What it does not do: open the container or decode sequentially (audio.c),
 * decide what a span's samples are for (the caller's sink). */
#include "audio_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <libavutil/avstring.h>
#include <libavutil/channel_layout.h>

#include "genred/clock.h"
#include "genred/mp3frame.h"

enum {
    /* MP3's bit reservoir reaches back up to 511 bytes: 5 frames at
     * 32 kbit/s. One more frame refills the MDCT overlap and the synthesis
     * filterbank; the rest is margin. Costs 8 x 1152 samples per span. */
    PREROLL_PACKETS = 8,
    SEAM = 64,             /* samples compared where spans meet, and at a start */
    MIN_SPAN_S = 4,        /* without a sink: a shorter span is not worth a thread */
    MAX_THREADS = 64,
};

/* ---- the index ----------------------------------------------------------- */

typedef struct packet_ref {
    int64_t pos;     /* its bytes: upload[pos, pos + size) */
    int size;
    int64_t pts;     /* in the stream's time base */
    int64_t start;   /* its first sample on the timeline, at the native rate
                      * (negative for the encoder delay the decoder drops) */
} packet_ref;

struct stream_index {
    AVCodecParameters *par; /* owned copy of the stream's parameters */
    AVRational tb;
    int in_rate;
    packet_ref *pkts;       /* owned */
    size_t n_pkts, cap_pkts;
    int64_t pts0;           /* the first packet's pts */
    int64_t skip;           /* samples the decoder drops from the first packet */
    size_t n_native;        /* timeline length at in_rate */
    size_t n_out;           /* timeline length at out_rate */
    int is_mp3;
    uint32_t mp3_header;    /* the first packet's mp3_frame_header() (mp3frame.h) */
    mp3_reservoir reservoir; /* the decoder's, frame by frame (mp3frame.h) */
};

/* What one packet did to the index. */
typedef enum index_result {
    INDEX_FAILED = -1,      /* err set (out of memory) */
    INDEX_INEXACT = 0,      /* the timeline is not exact: no index */
    INDEX_EXACT = 1,        /* still exact */
} index_result;

size_t index_samples(const stream_index *ix) { return ix->n_out; }

void index_free(stream_index *ix) {
    if (!ix) return;
    avcodec_parameters_free(&ix->par);
    free(ix->pkts);
    free(ix);
}

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
static int pts_to_native(const stream_index *ix, int64_t pts, int64_t *out) {
    int64_t d, num;
    if (pts == AV_NOPTS_VALUE || __builtin_sub_overflow(pts, ix->pts0, &d) ||
        __builtin_mul_overflow(d, (int64_t)ix->tb.num * ix->in_rate, &num) ||
        num % ix->tb.den != 0)
        return -1;
    *out = num / ix->tb.den - ix->skip;
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

/* Records one packet of the stream. */
static index_result index_packet(stream_index *ix, const memory_reader *in, const AVPacket *pkt,
                                 int64_t *next_pts, int64_t *end_discard, gr_err *err) {
    if (pkt->size <= 0 || pkt->pos < 0 || (uint64_t)pkt->pos > in->len ||
        (size_t)pkt->size > in->len - (size_t)pkt->pos ||
        memcmp(in->data + pkt->pos, pkt->data, (size_t)pkt->size) != 0)
        return INDEX_INEXACT;
    /* The mp3 demuxer also hands out junk between frames as packets, which
     * the decoder refuses, dropping their samples from a whole decode: such
     * a stream's timeline is not what its index says. */
    uint32_t mp3 = ix->is_mp3 ? mp3_frame_header(pkt->data, pkt->size) : 0;
    if (ix->is_mp3 && (mp3 == 0 || (ix->n_pkts > 0 && mp3 != ix->mp3_header) ||
                       !mp3_reservoir_add(&ix->reservoir, pkt->data, pkt->size)))
        return INDEX_INEXACT;
    if (ix->n_pkts == 0) ix->mp3_header = mp3;
    if (pkt->pts == AV_NOPTS_VALUE || pkt->duration <= 0 || *end_discard != 0 ||
        av_packet_get_side_data(pkt, AV_PKT_DATA_PARAM_CHANGE, NULL) ||
        av_packet_get_side_data(pkt, AV_PKT_DATA_NEW_EXTRADATA, NULL))
        return INDEX_INEXACT;
    size_t sd_size = 0;
    const uint8_t *sd = av_packet_get_side_data(pkt, AV_PKT_DATA_SKIP_SAMPLES, &sd_size);
    uint32_t skip = sd && sd_size >= 8 ? job_u32(sd, 0) : 0;
    *end_discard = sd && sd_size >= 8 ? job_u32(sd + 4, 0) : 0;
    if (ix->n_pkts == 0) {
        ix->pts0 = pkt->pts;
        ix->skip = skip;
    } else if (pkt->pts != *next_pts || skip != 0) {
        return INDEX_INEXACT;
    }
    int64_t start, end;
    if (__builtin_add_overflow(pkt->pts, pkt->duration, next_pts) ||
        pts_to_native(ix, pkt->pts, &start) < 0 || pts_to_native(ix, *next_pts, &end) < 0)
        return INDEX_INEXACT;
    if (ix->n_pkts == ix->cap_pkts) {
        size_t cap = ix->cap_pkts ? 2 * ix->cap_pkts : 1024;
        packet_ref *p = realloc(ix->pkts, cap * sizeof *p);
        if (!p) {
            gr_fail(err, GR_EINTERNAL, "out of memory indexing packets");
            return INDEX_FAILED;
        }
        ix->pkts = p;
        ix->cap_pkts = cap;
    }
    ix->pkts[ix->n_pkts++] = (packet_ref){pkt->pos, pkt->size, pkt->pts, start};
    return INDEX_EXACT;
}

/* Reads every packet into ix. INDEX_EXACT: ix->n_native is set. */
static index_result index_packets(audio_source *s, stream_index *ix, gr_err *err) {
    decode_job *job = &s->job;
    AVPacket *pkt = av_packet_alloc();
    if (!pkt) {
        gr_fail(err, GR_EINTERNAL, "out of memory");
        return INDEX_FAILED;
    }
    s->job_used = 1;
    int64_t next_pts = 0, end_discard = 0;
    index_result exact = INDEX_EXACT;
    int ret = 0, interrupted = 0;
    while (exact == INDEX_EXACT && (ret = av_read_frame(job->fmt, pkt)) >= 0) {
        if (pkt->stream_index == s->stream)
            exact = index_packet(ix, &job->in, pkt, &next_pts, &end_discard, err);
        av_packet_unref(pkt);
        if (exact == INDEX_EXACT && job_interrupted(job)) interrupted = 1, ret = AVERROR_EXIT;
        if (interrupted) break;
    }
    av_packet_free(&pkt);
    if (exact == INDEX_FAILED) return INDEX_FAILED;
    /* As in the sequential decode: any other read error ends the input like
     * EOF. */
    if (interrupted || (exact == INDEX_EXACT && (ret == AVERROR(ENOMEM) || ret == AVERROR_EXIT))) {
        job_fail_av(err, ret, "reading container");
        return INDEX_FAILED;
    }
    int64_t end;
    if (exact != INDEX_EXACT || ix->n_pkts == 0 || pts_to_native(ix, next_pts, &end) < 0 ||
        end - end_discard <= 0)
        return INDEX_INEXACT;
    ix->n_native = (size_t)(end - end_discard);
    return INDEX_EXACT;
}

int source_index(audio_source *s, gr_err *err) {
    decode_job *job = &s->job;
    const AVStream *st = job->fmt->streams[s->stream];
    s->index = NULL;
    stream_index *ix = calloc(1, sizeof *ix);
    if (!ix) return gr_fail(err, GR_EINTERNAL, "out of memory");
    ix->in_rate = st->codecpar->sample_rate;
    ix->tb = st->time_base;
    ix->is_mp3 = strcmp(job->fmt->iformat->name, "mp3") == 0;
    if (av_match_list(job->fmt->iformat->name, "mp3,wav,flac,aiff", ',') <= 0 ||
        ix->in_rate <= 0 || ix->in_rate > MAX_RATE || ix->tb.num <= 0 || ix->tb.den <= 0) {
        index_free(ix);
        return 0;
    }
    index_result exact = index_packets(s, ix, err);
    if (exact != INDEX_EXACT) {
        index_free(ix);
        return exact == INDEX_FAILED ? -1 : 0;
    }

    /* The resampler's output length grows by exactly Q for every L more
     * input samples (the same phase repeats), once the input is longer than
     * its start-up: measure it on a tail of at least TAIL samples only.
     * (Measured: tails of 1024 samples already agree for 8..768 kHz.) */
    enum { TAIL = 32768 };
    int64_t g = gcd64(ix->in_rate, job->out_rate);
    size_t L = (size_t)(ix->in_rate / g), Q = (size_t)(job->out_rate / g);
    size_t whole = ix->n_native > TAIL + L ? (ix->n_native - TAIL) / L * L : 0;
    long long tail = resampled_count(ix->in_rate, job->out_rate, ix->n_native - whole);
    int rc = 0;
    ix->n_out = whole / L * Q + (size_t)(tail > 0 ? tail : 0);
    if (tail < 0)
        rc = gr_fail(err, GR_EINTERNAL, "setting up resampler");
    else if (ix->n_out > job->max_samples)
        rc = gr_fail(err, GR_EUNPROCESSABLE, "audio longer than the %.0f s limit",
                     (double)job->max_samples / job->out_rate);
    else if (!(ix->par = avcodec_parameters_alloc()) ||
             avcodec_parameters_copy(ix->par, st->codecpar) < 0)
        rc = gr_fail(err, GR_EINTERNAL, "out of memory");
    if (rc != 0 || ix->n_out == 0) {
        index_free(ix);
        return rc;
    }
    s->index = ix;
    return 0;
}

/* ---- one span ------------------------------------------------------------ */

/* What decoding a span came to. */
typedef enum span_result {
    SPAN_FAILED = -1,       /* err set: the request fails */
    SPAN_DONE = 0,          /* the samples are the whole decode's */
    SPAN_DEPARTS = 1,       /* the stream departs from its index: fall back */
} span_result;

/* One decoder run over output samples [lo, hi) of the timeline: those
 * before cut go to main, the others (at most SEAM) to rest. */
typedef struct span_decode {
    const audio_source *src;
    size_t lo, cut, hi;
    float *main;             /* cut - lo floats */
    float *rest;             /* hi - cut floats */
    size_t preroll;          /* packets decoded and discarded before `a`'s */
    size_t k0;               /* out: the packet the decoder started at */
    size_t out_pos;          /* timeline position of the resampler's next output */
    gr_err err;
} span_decode;

/* Moves the resampler's output in job->samples to where it belongs. */
static void collect(span_decode *g, decode_job *job) {
    /* job->samples are positions [out_pos, out_pos + n): copy what falls in
     * [lo, cut) to main and what falls in [cut, hi) to rest. */
    size_t from = g->out_pos, to = g->out_pos + job->n;
    size_t a = from > g->lo ? from : g->lo, b = to < g->cut ? to : g->cut;
    if (a < b) memcpy(g->main + (a - g->lo), job->samples + (a - from), (b - a) * sizeof(float));
    a = from > g->cut ? from : g->cut;
    b = to < g->hi ? to : g->hi;
    if (a < b) memcpy(g->rest + (a - g->cut), job->samples + (a - from), (b - a) * sizeof(float));
    g->out_pos = to;
    job->n = 0;
}

/* Samples [p, p + n) of what g decoded, into to. */
static void span_samples(const span_decode *g, size_t p, size_t n, float *to) {
    for (size_t i = 0; i < n; i++, p++) to[i] = p < g->cut ? g->main[p - g->lo] : g->rest[p - g->cut];
}

/* Feeds the part of frame f at or after native sample *expect to the
 * resampler. */
static span_result feed_frame(span_decode *g, decode_job *job, const AVFrame *f, int64_t a,
                              int64_t *expect, gr_err *err) {
    const stream_index *ix = g->src->index;
    int64_t fs;
    if (f->nb_samples <= 0) return SPAN_DONE;
    if (f->sample_rate != ix->in_rate || pts_to_native(ix, f->pts, &fs) < 0) return SPAN_DEPARTS;
    int64_t fe = fs + f->nb_samples;
    if (fe <= a) return SPAN_DONE; /* pre-roll */
    if (fs > *expect || (*expect > a && fs != *expect)) return SPAN_DEPARTS; /* a gap or overlap */
    if (!job->swr) {
        if (job_open_resampler(job, f, err) < 0) return SPAN_FAILED;
    } else if (f->format != job->swr_format ||
               av_channel_layout_compare(&f->ch_layout, &job->swr_layout) != 0) {
        return SPAN_DEPARTS;
    }
    int64_t from = *expect, to = fe < (int64_t)ix->n_native ? fe : (int64_t)ix->n_native;
    *expect = fe;
    if (to <= from) return SPAN_DONE; /* the padding the whole decode drops */
    const uint8_t *planes[MAX_INPUT_CHANNELS];
    int channels = f->ch_layout.nb_channels, bps = av_get_bytes_per_sample(f->format);
    size_t off = (size_t)(from - fs);
    if (av_sample_fmt_is_planar(f->format)) {
        for (int c = 0; c < channels; c++) planes[c] = f->extended_data[c] + off * (size_t)bps;
    } else {
        planes[0] = f->extended_data[0] + off * (size_t)bps * (size_t)channels;
    }
    if (job_convert(job, planes, (int)(to - from), err) < 0) return SPAN_FAILED;
    collect(g, job);
    return SPAN_DONE;
}

static span_result drain_span(span_decode *g, decode_job *job, int64_t a, int64_t *expect,
                              int preroll, gr_err *err) {
    for (;;) {
        int ret = avcodec_receive_frame(job->dec, job->frame);
        if (ret == AVERROR(EAGAIN) || ret == AVERROR_EOF) return SPAN_DONE;
        if (ret == AVERROR(ENOMEM)) return job_fail_av(err, ret, "decoding"), SPAN_FAILED;
        if (ret < 0) {
            if (preroll) continue;
            return SPAN_DEPARTS;
        }
        span_result rc = feed_frame(g, job, job->frame, a, expect, err);
        av_frame_unref(job->frame);
        if (rc != SPAN_DONE) return rc;
    }
}

static span_result decode_span_job(span_decode *g, decode_job *job) {
    const stream_index *ix = g->src->index;
    gr_err *err = &g->err;
    const int64_t in_rate = ix->in_rate, out_rate = job->out_rate;
    const int64_t gg = gcd64(in_rate, out_rate), L = in_rate / gg, Q = out_rate / gg;
    /* The native sample under output `lo`, less the resampler's history
     * (its filter spans about 32 output samples), down to a multiple of L. */
    int64_t need = (int64_t)g->lo * in_rate / out_rate;
    int64_t margin = 128 * in_rate / out_rate + 256;
    int64_t a = need > margin ? (need - margin) / L * L : 0;
    g->out_pos = (size_t)(a / L * Q);
    /* The packet holding sample a (binary search on starts), less pre-roll. */
    size_t lo = 0, hi = ix->n_pkts;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (ix->pkts[mid].start <= a) lo = mid;
        else hi = mid;
    }
    size_t k = lo, k0 = k > g->preroll ? k - g->preroll : 0;
    g->k0 = k0;

    if (job_open_codec(job, g->src->codec, ix->par, ix->tb, err) < 0) return SPAN_FAILED;
    job->pkt = av_packet_alloc();
    job->frame = av_frame_alloc();
    if (!job->pkt || !job->frame)
        return gr_fail(err, GR_EINTERNAL, "out of memory"), SPAN_FAILED;
    int64_t expect = a;
    size_t i = k0;
    for (; i < ix->n_pkts && g->out_pos < g->hi; i++) {
        if (job_interrupted(job)) return job_fail_av(err, AVERROR_EXIT, "decoding"), SPAN_FAILED;
        const packet_ref *p = &ix->pkts[i];
        AVPacket *pkt = job->pkt;
        /* Not reference-counted: avcodec_send_packet() copies the bytes (with
         * the padding decoders may read past the end). */
        pkt->data = (uint8_t *)g->src->job.in.data + p->pos;
        pkt->size = p->size;
        pkt->pts = pkt->dts = p->pts;
        pkt->duration = i + 1 < ix->n_pkts ? ix->pkts[i + 1].pts - p->pts : 0;
        int ret = avcodec_send_packet(job->dec, pkt);
        pkt->data = NULL;
        pkt->size = 0;
        if (ret == AVERROR(ENOMEM)) return job_fail_av(err, ret, "decoding"), SPAN_FAILED;
        if (ret < 0 && i >= k) return SPAN_DEPARTS;
        span_result rc = drain_span(g, job, a, &expect, i < k, err);
        if (rc != SPAN_DONE) return rc;
    }
    if (g->out_pos < g->hi && i == ix->n_pkts) {
        /* The end of the stream: flush the decoder and the resampler, as the
         * whole decode does, which must land exactly on the predicted end. */
        int ret = avcodec_send_packet(job->dec, NULL);
        if (ret < 0 && ret != AVERROR_EOF) return SPAN_DEPARTS;
        span_result rc = drain_span(g, job, a, &expect, 0, err);
        if (rc != SPAN_DONE) return rc;
        if (!job->swr) return SPAN_DEPARTS;
        if (job_convert(job, NULL, 0, err) < 0) return SPAN_FAILED;
        collect(g, job);
        if (g->out_pos != ix->n_out || expect < (int64_t)ix->n_native) return SPAN_DEPARTS;
    }
    return g->out_pos >= g->hi ? SPAN_DONE : SPAN_DEPARTS;
}

/* Decodes g with a decode_job of its own. */
static span_result run_span(span_decode *g) {
    const decode_job *parent = &g->src->job;
    decode_job job = {
        .out_rate = parent->out_rate,
        .max_samples = SIZE_MAX,
        .swr_format = -1,
        .deadline = parent->deadline,
    };
    span_result rc = decode_span_job(g, &job);
    job_release(&job);
    return rc;
}

/* The start check: a span whose decoder started mid-stream is trusted only
 * if a second decoder, started PREROLL_PACKETS packets earlier still, gives
 * the same first samples: both have then reached the whole decode's state. */
static span_result check_span_start(span_decode *g) {
    if (g->k0 == 0) return SPAN_DONE; /* started with the stream, as the whole decode does */
    float head[SEAM], again[SEAM];
    size_t n = g->hi - g->lo < SEAM ? g->hi - g->lo : SEAM;
    span_decode probe = {.src = g->src, .lo = g->lo, .cut = g->lo + n, .hi = g->lo + n,
                         .main = again, .preroll = g->preroll + PREROLL_PACKETS};
    span_result rc = run_span(&probe);
    if (rc == SPAN_FAILED) g->err = probe.err;
    if (rc != SPAN_DONE) return rc;
    span_samples(g, g->lo, n, head);
    return memcmp(head, again, n * sizeof(float)) == 0 ? SPAN_DONE : SPAN_DEPARTS;
}

/* ---- a range in spans ---------------------------------------------------- */

/* What a span decoded where it meets its neighbours, for the seam check. */
typedef struct span_edges {
    float head[SEAM];        /* its first samples */
    float tail[SEAM];        /* its samples from the next span's start on */
    size_t n_head, n_tail;
    float rest[SEAM];        /* without a sink: the samples past its own */
} span_edges;

typedef struct range_job {
    const audio_source *src;
    size_t first, end;        /* the range: samples [first, end) */
    size_t span, margin;
    size_t n_all;             /* spans the range holds */
    const size_t *picks;      /* the sink's: those decoded; NULL = all */
    size_t n_spans;           /* spans decoded: n_picks, or n_all */
    const audio_sink *sink;   /* NULL: the spans go to dst */
    float *dst;               /* without a sink: end - first floats */
    span_edges *edges;        /* per span */
    pthread_mutex_t mu;       /* guards what follows */
    size_t next;              /* the next span to take */
    span_result result;       /* the first failure or departure */
    gr_err err;
    double sink_s;            /* summed over threads */
} range_job;

/* The span number of the b-th span decoded. */
static size_t span_number(const range_job *j, size_t b) { return j->picks ? j->picks[b] : b; }

/* Whether the b-th and the (b+1)-th spans decoded meet, for the seam check. */
static int meets_next(const range_job *j, size_t b) {
    return b + 1 < j->n_spans && span_number(j, b + 1) == span_number(j, b) + 1;
}

/* The b-th span decoded decodes [*lo, *hi); its own samples end at *cut:
 * the next span's start, SEAM samples before *hi (the range's last span's
 * at *hi). */
static void span_bounds(const range_job *j, size_t b, size_t *lo, size_t *cut, size_t *hi) {
    size_t s = span_number(j, b);
    size_t own_lo = j->first + s * j->span;
    int last = s + 1 == j->n_all;
    size_t own_hi = last ? j->end : own_lo + j->span;
    *lo = own_lo - j->first > j->margin ? own_lo - j->margin : j->first;
    *cut = own_hi;
    *hi = last || j->end - own_hi <= j->margin + SEAM ? j->end : own_hi + j->margin + SEAM;
}

/* Decodes span b (into buf with a sink, of *cap floats, grown as needed). */
static span_result take_span(range_job *j, size_t b, float **buf, size_t *cap, gr_err *err) {
    span_edges *e = &j->edges[b];
    span_decode g = {.src = j->src, .preroll = PREROLL_PACKETS};
    span_bounds(j, b, &g.lo, &g.cut, &g.hi);
    if (j->sink) {
        g.cut = g.hi; /* all of it to the sink */
        if (g.hi - g.lo > *cap) {
            float *nb = realloc(*buf, (g.hi - g.lo) * sizeof **buf);
            if (!nb) return gr_fail(err, GR_EINTERNAL, "out of memory for decoded audio"), SPAN_FAILED;
            *buf = nb;
            *cap = g.hi - g.lo;
        }
        g.main = *buf;
    } else {
        g.main = j->dst + (g.lo - j->first);
        g.rest = e->rest;
    }
    span_result rc = run_span(&g);
    if (rc == SPAN_DONE) rc = check_span_start(&g);
    if (rc != SPAN_DONE) {
        *err = g.err;
        return rc;
    }
    e->n_head = g.hi - g.lo < SEAM ? g.hi - g.lo : SEAM;
    span_samples(&g, g.lo, e->n_head, e->head);
    if (meets_next(j, b)) {
        size_t next_lo, unused;
        span_bounds(j, b + 1, &next_lo, &unused, &unused);
        e->n_tail = g.hi - next_lo < SEAM ? g.hi - next_lo : SEAM;
        span_samples(&g, next_lo, e->n_tail, e->tail);
    }
    if (!j->sink) return SPAN_DONE;
    double t0 = monotonic_now();
    int ok = j->sink->take(j->sink->ctx, b, *buf, g.lo - j->first, g.hi - g.lo, err) == 0;
    double dt = monotonic_now() - t0;
    pthread_mutex_lock(&j->mu);
    j->sink_s += dt;
    pthread_mutex_unlock(&j->mu);
    return ok ? SPAN_DONE : SPAN_FAILED;
}

/* A decoding thread: takes spans in turn until none is left or one failed. */
static void *range_worker(void *arg) {
    range_job *j = arg;
    float *buf = NULL;
    size_t cap = 0;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        size_t b = j->next;
        int stop = j->result != SPAN_DONE || b == j->n_spans;
        if (!stop) j->next++;
        pthread_mutex_unlock(&j->mu);
        if (stop) break;
        gr_err err = {GR_OK, ""};
        span_result rc = take_span(j, b, &buf, &cap, &err);
        if (rc == SPAN_DONE) continue;
        pthread_mutex_lock(&j->mu);
        if (j->result == SPAN_DONE) {
            j->result = rc;
            j->err = err;
        }
        pthread_mutex_unlock(&j->mu);
    }
    free(buf);
    return NULL;
}

/* Runs every span of j on up to `threads` threads (this one included), then
 * the seam checks. Returns how many threads ran in *used. */
static span_result decode_spans(range_job *j, int threads, size_t *used) {
    size_t n = threads < 1 ? 1 : (size_t)threads;
    if (n > j->n_spans) n = j->n_spans;
    if (n > MAX_THREADS) n = MAX_THREADS;
    *used = n;
    if (pthread_mutex_init(&j->mu, NULL) != 0) {
        gr_fail(&j->err, GR_EINTERNAL, "audio: mutex init failed");
        return SPAN_FAILED;
    }
    pthread_t tid[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (size_t i = 1; i < n; i++)
        started[i] = pthread_create(&tid[i], NULL, range_worker, j) == 0;
    range_worker(j); /* here too; a thread that did not start is not missed */
    for (size_t i = 1; i < n; i++)
        if (started[i]) pthread_join(tid[i], NULL);
    pthread_mutex_destroy(&j->mu);
    /* The seams: where two spans meet, both decoded the same samples. */
    for (size_t b = 0; j->result == SPAN_DONE && b + 1 < j->n_spans; b++) {
        if (!meets_next(j, b)) continue;
        const span_edges *e = &j->edges[b], *next = &j->edges[b + 1];
        size_t k = e->n_tail < next->n_head ? e->n_tail : next->n_head;
        if (memcmp(e->tail, next->head, k * sizeof(float)) != 0) j->result = SPAN_DEPARTS;
    }
    return j->result;
}

int audio_source_decode(audio_source *s, size_t first, size_t count, int threads,
                        const audio_sink *sink, audio *out, gr_err *err) {
    if (!out) return gr_fail(err, GR_EINTERNAL, "audio_source_decode: no output");
    memset(out, 0, sizeof *out);
    if (!s) return gr_fail(err, GR_EINTERNAL, "audio_source_decode: no source");
    if (sink && (sink->span == 0 || !sink->take))
        return gr_fail(err, GR_EINTERNAL, "audio_source_decode: sink without spans");
    if (!s->index) return source_decode_whole(s, out, err);
    const size_t total = s->index->n_out;
    if (first >= total || count == 0)
        return gr_fail(err, GR_EINTERNAL, "audio: range [%zu, +%zu) outside %zu samples",
                       first, count, total);
    if (count > total - first) count = total - first;

    range_job j = {.src = s, .first = first, .end = first + count, .sink = sink,
                   .result = SPAN_DONE};
    if (sink) {
        j.span = sink->span;
        j.margin = sink->margin;
    } else {
        /* One span per thread, of MIN_SPAN_S at least. */
        size_t min_span = (size_t)MIN_SPAN_S * (size_t)s->job.out_rate;
        size_t n = threads < 1 ? 1 : threads > MAX_THREADS ? MAX_THREADS : (size_t)threads;
        if (count / n < min_span) n = count / min_span ? count / min_span : 1;
        j.span = (count + n - 1) / n;
    }
    /* The margin past the last span's own samples never makes a span. */
    size_t cut = count > j.margin ? count - j.margin : 1;
    j.n_all = j.n_spans = (cut + j.span - 1) / j.span;
    if (sink && sink->picks) {
        for (size_t b = 0; b < sink->n_picks; b++)
            if (sink->picks[b] >= j.n_all || (b > 0 && sink->picks[b] <= sink->picks[b - 1]))
                return gr_fail(err, GR_EINTERNAL, "audio: span %zu picked of %zu, or out of "
                               "order", sink->picks[b], j.n_all);
        if (sink->n_picks == 0)
            return gr_fail(err, GR_EINTERNAL, "audio: no span picked");
        j.picks = sink->picks;
        j.n_spans = sink->n_picks;
    }
    if (!sink) j.dst = malloc(count * sizeof *j.dst);
    j.edges = calloc(j.n_spans, sizeof *j.edges);
    if ((!sink && !j.dst) || !j.edges) {
        free(j.dst);
        free(j.edges);
        return gr_fail(err, GR_EINTERNAL, "out of memory for decoded audio");
    }
    size_t used;
    span_result rc = decode_spans(&j, threads, &used);
    free(j.edges);
    if (rc != SPAN_DONE) {
        free(j.dst);
        if (rc == SPAN_FAILED) {
            if (err) *err = j.err;
            return -1;
        }
        return source_decode_whole(s, out, err); /* the one fallback */
    }
    out->samples = j.dst;
    out->spans = (int)j.n_spans;
    out->n_samples = count;
    out->first = first;
    out->total = total;
    out->sample_rate = s->job.out_rate;
    out->duration_s = (double)total / s->job.out_rate;
    out->sink_ms = j.sink_s / (double)used * 1e3;
    av_strlcpy(out->format, s->job.fmt->iformat->name, sizeof out->format);
    return 0;
}
