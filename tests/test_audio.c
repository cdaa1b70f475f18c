/* test_audio.c - audio_decode on real music, generated signals and hostile
 * bytes.
 *
 * Inputs are made at test time in a private mkdtemp directory: real GTZAN
 * audio from $GENRED_SHARED/data/gtzan16k converted with the ffmpeg CLI,
 * synthetic tones from ffmpeg's aevalsrc, and hand-crafted byte strings for
 * the hostile cases. The reference for "decodes correctly" is the ffmpeg CLI
 * decoding the original FLAC, not audio_decode itself. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libavutil/log.h>

#include "genred/audio.h"
#include "tool.h"

#define RATE 16000
#define GTZAN_TRACK "blues/blues.00000.flac"

typedef struct fixture {
    char dir[PATH_MAX];  /* mkdtemp'ed scratch directory, removed at the end */
    char flac[PATH_MAX]; /* the real GTZAN track (16 kHz mono FLAC) */
    float *ref;          /* that track decoded by the ffmpeg CLI; owned */
    size_t n_ref;
} fixture;

/* ---- helpers ----------------------------------------------------------- */

static void path_in(const fixture *fx, const char *name, char out[PATH_MAX]) {
    int n = snprintf(out, PATH_MAX, "%s/%s", fx->dir, name);
    assert_true(n > 0 && n < PATH_MAX);
}

/* ffmpeg -nostdin -v error -y ARGS... ; fails the test if ffmpeg does. */
#define FFMPEG(...)                                                          \
    do {                                                                     \
        char *argv_[] = {"ffmpeg", "-nostdin", "-v", "error", "-y",          \
                         __VA_ARGS__, NULL};                                 \
        if (run_tool(argv_) != 0) fail_msg("ffmpeg failed: %s", #__VA_ARGS__); \
    } while (0)

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s: %s", path, strerror(errno));
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* Deterministic junk (xorshift64). */
static void fill_noise(uint8_t *p, size_t n, uint64_t seed) {
    uint64_t x = seed | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        p[i] = (uint8_t)(x >> 56);
    }
}

static int decode_bytes(const void *data, size_t len, double max_s, audio *a,
                        gr_err *err) {
    audio_limits lim = {.max_duration_s = max_s};
    memset(err, 0, sizeof *err);
    return audio_decode(data, len, RATE, &lim, a, err);
}

/* Decodes a file of the scratch dir; on failure returns the status. */
static gr_status decode_named(const fixture *fx, const char *name, double max_s,
                              audio *a) {
    char path[PATH_MAX];
    path_in(fx, name, path);
    size_t len;
    uint8_t *data = read_file(path, &len);
    gr_err err;
    int rc = decode_bytes(data, len, max_s, a, &err);
    free(data);
    if (rc == 0) return GR_OK;
    assert_int_equal(rc, -1);
    assert_int_not_equal(err.status, GR_OK);
    assert_true(err.msg[0] != '\0');
    assert_null(a->samples);
    return err.status;
}

/* Decoding data must fail with status want. */
static void expect_status(const void *data, size_t len, gr_status want) {
    audio a;
    gr_err err;
    int rc = decode_bytes(data, len, 0, &a, &err);
    if (rc == 0) {
        audio_free(&a);
        fail_msg("expected %s, got success", gr_status_code(want));
    }
    if (err.status != want)
        fail_msg("expected %s, got %s: %s", gr_status_code(want),
                 gr_status_code(err.status), err.msg);
}

/* Amplitude of the hz component of x[0..n): 2/n |DFT|. Exact for a tone with
 * an integer number of periods in the window. */
static double tone_amplitude(const float *x, size_t n, double hz) {
    double re = 0, im = 0;
    for (size_t i = 0; i < n; i++) {
        double ph = 2 * M_PI * hz * (double)i / RATE;
        re += x[i] * cos(ph);
        im -= x[i] * sin(ph);
    }
    return 2 * sqrt(re * re + im * im) / (double)n;
}

static size_t zero_crossings(const float *x, size_t n) {
    size_t z = 0;
    for (size_t i = 1; i < n; i++) z += (x[i - 1] < 0) != (x[i] < 0);
    return z;
}

/* Checks a decoded tone: length, frequency (zero crossings and the DFT at
 * neighbouring frequencies) and amplitude within tol (relative). */
static void expect_tone(const audio *a, double seconds, double hz, double amp,
                        double tol) {
    assert_int_equal(a->sample_rate, RATE);
    if (fabs(a->duration_s - seconds) > 0.1)
        fail_msg("duration %.3f s, expected %.3f s", a->duration_s, seconds);
    /* One second from the middle: away from codec edges. */
    assert_true(a->n_samples >= 3 * RATE / 2);
    const float *mid = a->samples + (a->n_samples - RATE) / 2;
    size_t zc = zero_crossings(mid, RATE);
    if (fabs((double)zc - 2 * hz) > 4)
        fail_msg("%zu zero crossings in 1 s, expected %.0f", zc, 2 * hz);
    double got = tone_amplitude(mid, RATE, hz);
    if (fabs(got - amp) > tol * amp)
        fail_msg("amplitude %.4f at %.0f Hz, expected %.4f", got, hz, amp);
    assert_true(tone_amplitude(mid, RATE, hz * 0.8) < 0.02 * amp);
    assert_true(tone_amplitude(mid, RATE, hz * 1.2) < 0.02 * amp);
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* Lag (in samples, |lag| <= max_lag) that best aligns y with ref, found on
 * one second of audio starting at 2 s. */
static long best_lag(const float *ref, size_t n_ref, const float *y, size_t n_y,
                     long max_lag) {
    const size_t at = 2 * RATE, len = RATE;
    assert_true(n_ref >= at + len && n_y >= at + len + (size_t)max_lag);
    long best = 0;
    double best_dot = -INFINITY;
    for (long lag = -max_lag; lag <= max_lag; lag++) {
        double d = dot(ref + at, y + (long)at + lag, len);
        if (d > best_dot) best_dot = d, best = lag;
    }
    return best;
}

typedef struct comparison {
    double corr, max_abs, rms_rel, gain;
} comparison;

/* Compares y[lag..] with ref[0..] over their overlap. */
static comparison compare(const float *ref, size_t n_ref, const float *y,
                          size_t n_y, long lag) {
    if (lag < 0) {
        ref -= lag, n_ref += (size_t)lag;
        lag = 0;
    }
    y += lag, n_y -= (size_t)lag;
    size_t n = n_ref < n_y ? n_ref : n_y;
    double rr = 0, yy = 0, ry = 0, dd = 0, max_abs = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)y[i] - ref[i];
        rr += (double)ref[i] * ref[i];
        yy += (double)y[i] * y[i];
        ry += (double)ref[i] * y[i];
        dd += d * d;
        if (fabs(d) > max_abs) max_abs = fabs(d);
    }
    return (comparison){ry / sqrt(rr * yy), max_abs, sqrt(dd / rr), sqrt(yy / rr)};
}

/* ---- fixture ----------------------------------------------------------- */

static int group_setup(void **state) {
    const char *shared = getenv("GENRED_SHARED");
    if (!shared || !*shared) {
        fprintf(stderr, "test_audio: GENRED_SHARED is not set (it must point at "
                        "the shared folder holding data/gtzan16k)\n");
        return -1;
    }
    fixture *fx = calloc(1, sizeof *fx);
    if (!fx) return -1;
    snprintf(fx->flac, sizeof fx->flac, "%s/data/gtzan16k/%s", shared, GTZAN_TRACK);
    if (access(fx->flac, R_OK) != 0) {
        fprintf(stderr, "test_audio: missing %s: %s\n", fx->flac, strerror(errno));
        free(fx);
        return -1;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(fx->dir, sizeof fx->dir, "%s/genred-audio-XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(fx->dir)) {
        fprintf(stderr, "test_audio: mkdtemp: %s\n", strerror(errno));
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

static int group_teardown(void **state) {
    fixture *fx = *state;
    if (!fx) return 0; /* setup failed and said why */
    remove_tree(fx->dir);
    free(fx->ref);
    free(fx);
    return 0;
}

/* The original track decoded by the ffmpeg CLI, made once. */
static const float *reference(fixture *fx, size_t *n) {
    if (!fx->ref) {
        char raw[PATH_MAX];
        path_in(fx, "ref.f32", raw);
        FFMPEG("-i", fx->flac, "-f", "f32le", "-ac", "1", "-ar", "16000", raw);
        size_t len;
        fx->ref = (float *)read_file(raw, &len);
        fx->n_ref = len / sizeof(float);
        assert_true(fx->n_ref > 29 * RATE);
    }
    *n = fx->n_ref;
    return fx->ref;
}

/* The GTZAN track as 44.1 kHz stereo, both channels the original (no -3 dB
 * upmix, so the mean downmix must give back the original level). */
static void make_stereo_44k(fixture *fx, const char *name, const char *codec) {
    char out[PATH_MAX];
    path_in(fx, name, out);
    FFMPEG("-i", fx->flac, "-af", "pan=stereo|c0=c0|c1=c0", "-ar", "44100",
           "-c:a", (char *)codec, out);
}

/* ---- real music -------------------------------------------------------- */

static void test_flac_original_is_exact(void **state) {
    fixture *fx = *state;
    size_t n_ref;
    const float *ref = reference(fx, &n_ref);
    audio a;
    size_t len;
    uint8_t *data = read_file(fx->flac, &len);
    gr_err err;
    assert_int_equal(decode_bytes(data, len, 0, &a, &err), 0);
    free(data);
    assert_string_equal(a.format, "flac");
    assert_int_equal(a.n_samples, n_ref);
    comparison c = compare(ref, n_ref, a.samples, a.n_samples, 0);
    assert_true(c.max_abs == 0.0);
    audio_free(&a);
    assert_null(a.samples);
}

static void test_wav_44k_stereo_matches_original(void **state) {
    fixture *fx = *state;
    size_t n_ref;
    const float *ref = reference(fx, &n_ref);
    make_stereo_44k(fx, "music.wav", "pcm_s16le");
    audio a;
    assert_int_equal(decode_named(fx, "music.wav", 0, &a), GR_OK);
    assert_string_equal(a.format, "wav");
    assert_int_equal(a.sample_rate, RATE);
    assert_true(labs((long)a.n_samples - (long)n_ref) <= 2);
    assert_true(fabs(a.duration_s - (double)a.n_samples / RATE) < 1e-9);
    assert_int_equal(best_lag(ref, n_ref, a.samples, a.n_samples, 200), 0);
    comparison c = compare(ref, n_ref, a.samples, a.n_samples, 0);
    /* Two resamplings (16k -> 44.1k by the CLI, back by us) differ from the
     * original only near 8 kHz, where the filters roll off. */
    if (!(c.corr > 0.9995 && c.max_abs < 0.05 && c.rms_rel < 0.02))
        fail_msg("corr %.5f max|d| %.4f rms_rel %.4f", c.corr, c.max_abs, c.rms_rel);
    audio_free(&a);
}

static void test_mp3_44k_stereo_matches_original(void **state) {
    fixture *fx = *state;
    size_t n_ref;
    const float *ref = reference(fx, &n_ref);
    make_stereo_44k(fx, "music.mp3", "libmp3lame");
    audio a;
    assert_int_equal(decode_named(fx, "music.mp3", 0, &a), GR_OK);
    assert_string_equal(a.format, "mp3");
    /* Within one MP3 frame of the original, gapless or not. */
    assert_true(labs((long)a.n_samples - (long)n_ref) <= 1200);
    /* Encoder delay is 1105 samples at 44.1 kHz (~400 here) when the LAME
     * tag is not honoured; search wider than that. */
    long lag = best_lag(ref, n_ref, a.samples, a.n_samples, 1200);
    comparison c = compare(ref, n_ref, a.samples, a.n_samples, lag);
    /* LAME scales its input by 0.95, hence the gain window. */
    if (!(c.corr > 0.99 && c.gain > 0.85 && c.gain < 1.05))
        fail_msg("lag %ld corr %.5f gain %.4f", lag, c.corr, c.gain);
    audio_free(&a);
}

/* ---- generated signals ------------------------------------------------- */

static void test_sine_48k_stereo_s16_is_mean_downmixed(void **state) {
    fixture *fx = *state;
    char out[PATH_MAX];
    path_in(fx, "sine48.wav", out);
    /* Mean of 0.6 and 0.2 is 0.4; swr's default matrix would give 0.566. */
    FFMPEG("-f", "lavfi", "-i",
           "aevalsrc=0.6*sin(2*PI*1000*t)|0.2*sin(2*PI*1000*t):s=48000:d=2",
           "-c:a", "pcm_s16le", out);
    audio a;
    assert_int_equal(decode_named(fx, "sine48.wav", 0, &a), GR_OK);
    assert_int_equal(a.n_samples, 2 * RATE);
    expect_tone(&a, 2.0, 1000, 0.4, 0.01);
    audio_free(&a);
}

static void test_8ch_192k_float_wav(void **state) {
    fixture *fx = *state;
    char out[PATH_MAX];
    path_in(fx, "sine8ch.wav", out);
    FFMPEG("-f", "lavfi", "-i",
           "aevalsrc=0.1*sin(2*PI*1000*t)|0.2*sin(2*PI*1000*t)|"
           "0.3*sin(2*PI*1000*t)|0.4*sin(2*PI*1000*t)|0.5*sin(2*PI*1000*t)|"
           "0.6*sin(2*PI*1000*t)|0.7*sin(2*PI*1000*t)|0.8*sin(2*PI*1000*t)"
           ":s=192000:d=2:c=7.1",
           "-c:a", "pcm_f32le", out);
    audio a;
    assert_int_equal(decode_named(fx, "sine8ch.wav", 0, &a), GR_OK);
    expect_tone(&a, 2.0, 1000, 0.45, 0.01);
    audio_free(&a);
}

static void test_8bit_wav(void **state) {
    fixture *fx = *state;
    char out[PATH_MAX];
    path_in(fx, "sine8bit.wav", out);
    FFMPEG("-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*700*t):s=22050:d=2",
           "-c:a", "pcm_u8", out);
    audio a;
    assert_int_equal(decode_named(fx, "sine8bit.wav", 0, &a), GR_OK);
    expect_tone(&a, 2.0, 700, 0.5, 0.02);
    audio_free(&a);
}

static void test_flac_vorbis_opus(void **state) {
    fixture *fx = *state;
    static const struct {
        const char *name, *codec, *rate, *format;
        double tol;
    } cases[] = {
        {"sine.flac", "flac", "44100", "flac", 0.01},
        {"sine.ogg", "libvorbis", "44100", "ogg", 0.05},
        {"sine.opus.ogg", "libopus", "48000", "ogg", 0.05},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[PATH_MAX];
        path_in(fx, cases[i].name, out);
        FFMPEG("-f", "lavfi", "-i",
               "aevalsrc=0.5*sin(2*PI*1000*t)|0.5*sin(2*PI*1000*t):s=44100:d=3",
               "-ar", (char *)cases[i].rate, "-c:a", (char *)cases[i].codec,
               "-f", (char *)cases[i].format, out);
        audio a;
        assert_int_equal(decode_named(fx, cases[i].name, 0, &a), GR_OK);
        assert_string_equal(a.format, cases[i].format);
        expect_tone(&a, 3.0, 1000, 0.5, cases[i].tol);
        audio_free(&a);
    }
}

/* ---- MP4 (M4A) and AIFF ------------------------------------------------ */

#define MOV_NAME "mov,mp4,m4a,3gp,3g2,mj2" /* lavf's name for its MP4 demuxer */

/* The GTZAN track as AAC and ALAC in M4A and as AIFF against the original:
 * the lossless ones like WAV, AAC like MP3 (its encoder delay is in the
 * edit list, which lavf honours: no lag). */
static void test_m4a_and_aiff_music(void **state) {
    fixture *fx = *state;
    size_t n_ref;
    const float *ref = reference(fx, &n_ref);
    static const struct {
        const char *name, *codec, *format;
        int lossless;
    } cases[] = {
        {"music.m4a", "aac", MOV_NAME, 0},
        {"music-alac.m4a", "alac", MOV_NAME, 1},
        {"music.aiff", "pcm_s16be", "aiff", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        make_stereo_44k(fx, cases[i].name, cases[i].codec);
        audio a;
        assert_int_equal(decode_named(fx, cases[i].name, 0, &a), GR_OK);
        assert_string_equal(a.format, cases[i].format);
        long lag = best_lag(ref, n_ref, a.samples, a.n_samples, 1200);
        comparison c = compare(ref, n_ref, a.samples, a.n_samples, lag);
        if (cases[i].lossless ? !(lag == 0 && labs((long)a.n_samples - (long)n_ref) <= 2 &&
                                  c.corr > 0.9995 && c.max_abs < 0.05 && c.rms_rel < 0.02)
                              : !(lag == 0 && labs((long)a.n_samples - (long)n_ref) <= 400 &&
                                  c.corr > 0.99 && c.gain > 0.9 && c.gain < 1.1))
            fail_msg("%s: %zu samples (original %zu), lag %ld corr %.5f max|d| %.4f gain %.4f",
                     cases[i].name, a.n_samples, n_ref, lag, c.corr, c.max_abs, c.gain);
        audio_free(&a);
    }
}

/* What else MP4 and AIFF carry: MP3, Opus and PCM in MP4, AIFF-C's 8-bit,
 * float and mu-law. */
static void test_m4a_and_aiff_codecs(void **state) {
    fixture *fx = *state;
    static const struct {
        const char *name, *codec, *rate, *format;
        double tol;
    } cases[] = {
        {"sine.m4a", "aac", "48000", "mp4", 0.05},
        {"sine-alac.m4a", "alac", "44100", "ipod", 0.01},
        {"sine-mp3.mp4", "libmp3lame", "44100", "mp4", 0.05},
        {"sine-opus.mp4", "libopus", "48000", "mp4", 0.05},
        {"sine-pcm.mov", "pcm_s16le", "44100", "mov", 0.01},
        {"sine8.aiff", "pcm_s8", "22050", "aiff", 0.02},
        {"sine-float.aiff", "pcm_f32be", "44100", "aiff", 0.01},
        {"sine-mulaw.aiff", "pcm_mulaw", "8000", "aiff", 0.05},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[PATH_MAX];
        path_in(fx, cases[i].name, out);
        FFMPEG("-f", "lavfi", "-i",
               "aevalsrc=0.5*sin(2*PI*1000*t)|0.5*sin(2*PI*1000*t):s=44100:d=3",
               "-ar", (char *)cases[i].rate, "-c:a", (char *)cases[i].codec,
               "-f", (char *)cases[i].format, out);
        audio a;
        assert_int_equal(decode_named(fx, cases[i].name, 0, &a), GR_OK);
        assert_string_equal(a.format, strcmp(cases[i].format, "aiff") == 0 ? "aiff" : MOV_NAME);
        expect_tone(&a, 3.0, 1000, 0.5, cases[i].tol);
        audio_free(&a);
    }
}

/* The MP4s refused, and the ones that look odd but are music. */
static void test_mp4_structure(void **state) {
    fixture *fx = *state;
    char tone[PATH_MAX], path[PATH_MAX];
    path_in(fx, "tone.m4a", tone);
    FFMPEG("-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*1000*t):s=44100:d=4", "-c:a", "aac",
           tone);
    audio a;

    path_in(fx, "video.mp4", path);
    FFMPEG("-f", "lavfi", "-i", "testsrc=size=64x48:rate=5", "-t", "2", "-c:v", "mpeg4", path);
    assert_int_equal(decode_named(fx, "video.mp4", 0, &a), GR_EUNSUPPORTED);
    path_in(fx, "video-audio.mp4", path);
    FFMPEG("-f", "lavfi", "-i", "testsrc=size=64x48:rate=5", "-i", tone, "-t", "4",
           "-c:v", "mpeg4", "-c:a", "copy", path);
    assert_int_equal(decode_named(fx, "video-audio.mp4", 0, &a), GR_EUNSUPPORTED);
    path_in(fx, "fragmented.m4a", path);
    FFMPEG("-i", tone, "-c", "copy", "-movflags", "frag_keyframe+empty_moov", path);
    assert_int_equal(decode_named(fx, "fragmented.m4a", 0, &a), GR_EUNSUPPORTED);

    /* Cover art is an attached picture, not a video track. */
    char png[PATH_MAX];
    path_in(fx, "cover.png", png);
    FFMPEG("-f", "lavfi", "-i", "testsrc=size=64x64:rate=1", "-frames:v", "1", png);
    path_in(fx, "cover.m4a", path);
    FFMPEG("-i", tone, "-i", png, "-map", "0", "-map", "1", "-c:a", "copy", "-c:v", "png",
           "-disposition:v", "attached_pic", path);
    assert_int_equal(decode_named(fx, "cover.m4a", 0, &a), GR_OK);
    expect_tone(&a, 4.0, 1000, 0.5, 0.05);
    audio_free(&a);

    /* The moov first (faststart): cut inside it, nothing is known; cut in
     * the mdat, what came decodes. */
    path_in(fx, "faststart.m4a", path);
    FFMPEG("-i", tone, "-c", "copy", "-movflags", "faststart", path);
    size_t len;
    uint8_t *data = read_file(path, &len);
    const uint8_t *mdat = memmem(data, len, "mdat", 4);
    assert_non_null(mdat);
    gr_err err;
    expect_status(data, 200, GR_EUNPROCESSABLE);
    size_t cut = (size_t)(mdat - data) + (len - (size_t)(mdat - data)) / 2;
    assert_int_equal(decode_bytes(data, cut, 0, &a, &err), 0);
    if (!(a.duration_s > 1.5 && a.duration_s < 2.5)) fail_msg("%.2f s decoded", a.duration_s);
    audio_free(&a);
    free(data);
}

/* Valid containers carrying codecs outside the decoder whitelist. */
static void test_codecs_outside_whitelist(void **state) {
    fixture *fx = *state;
    static const struct { const char *name, *codec, *format; } cases[] = {
        {"adpcm.wav", "adpcm_ms", "wav"},
        {"speex.ogg", "libspeex", "ogg"},
        {"ac3.m4a", "ac3", "mp4"},
        {"ima.aiff", "adpcm_ima_qt", "aiff"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[PATH_MAX];
        path_in(fx, cases[i].name, out);
        FFMPEG("-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*1000*t):s=16000:d=1",
               "-c:a", (char *)cases[i].codec, "-f", (char *)cases[i].format, out);
        audio a;
        assert_int_equal(decode_named(fx, cases[i].name, 0, &a), GR_EUNPROCESSABLE);
    }
}

/* Plain PCM WAV (no channel mask) so the layout is unknown to libav. */
static size_t craft_wav(uint8_t *buf, size_t cap, uint16_t channels,
                        uint32_t rate, uint32_t claimed_data, const int16_t *frame,
                        size_t n_frames) {
    size_t data = (size_t)channels * 2 * n_frames;
    assert_true(44 + data <= cap);
    uint32_t riff = claimed_data > UINT32_MAX - 36 ? UINT32_MAX : 36 + claimed_data;
    uint8_t *p = buf;
#define PUT(bytes, n) (memcpy(p, bytes, n), p += n)
#define PUT_LE(v, n)                                                        \
    do {                                                                    \
        for (int b_ = 0; b_ < n; b_++) *p++ = (uint8_t)((uint64_t)(v) >> (8 * b_)); \
    } while (0)
    PUT("RIFF", 4); PUT_LE(riff, 4); PUT("WAVE", 4);
    PUT("fmt ", 4); PUT_LE(16, 4);
    PUT_LE(1, 2);                              /* WAVE_FORMAT_PCM */
    PUT_LE(channels, 2); PUT_LE(rate, 4);
    PUT_LE((uint64_t)rate * channels * 2, 4);  /* byte rate */
    PUT_LE(channels * 2, 2); PUT_LE(16, 2);
    PUT("data", 4); PUT_LE(claimed_data, 4);
    for (size_t i = 0; i < n_frames; i++)
        for (uint16_t c = 0; c < channels; c++) PUT_LE((uint16_t)frame[c], 2);
#undef PUT
#undef PUT_LE
    return (size_t)(p - buf);
}

static void test_unknown_layouts_are_mean_downmixed(void **state) {
    (void)state;
    enum { FRAMES = 4000 };
    static uint8_t buf[44 + 12 * 2 * FRAMES];
    const int16_t three[] = {3000, 6000, -3000};
    int16_t twelve[12];
    for (int c = 0; c < 12; c++) twelve[c] = (int16_t)(1000 * (c + 1));
    const struct { uint16_t ch; const int16_t *frame; double mean; } cases[] = {
        {3, three, 2000.0 / 32768},
        {12, twelve, 6500.0 / 32768},
    };
    for (size_t i = 0; i < 2; i++) {
        uint32_t bytes = (uint32_t)cases[i].ch * 2 * FRAMES;
        size_t len = craft_wav(buf, sizeof buf, cases[i].ch, RATE, bytes,
                               cases[i].frame, FRAMES);
        audio a;
        gr_err err;
        assert_int_equal(decode_bytes(buf, len, 0, &a, &err), 0);
        assert_int_equal(a.n_samples, FRAMES);
        /* Same rate in and out: pure rematrix, exact up to float rounding. */
        for (size_t s = 0; s < a.n_samples; s++)
            assert_true(fabs(a.samples[s] - cases[i].mean) < 1e-6);
        audio_free(&a);
    }
}

static void test_parameters_changing_midstream(void **state) {
    fixture *fx = *state;
    char p1[PATH_MAX], p2[PATH_MAX];
    path_in(fx, "part1.mp3", p1);
    path_in(fx, "part2.mp3", p2);
    /* No Xing/LAME tag, so the concatenation is just a frame sequence whose
     * rate and channel count change half way. */
    FFMPEG("-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*1000*t):s=44100:d=1",
           "-write_xing", "0", p1);
    FFMPEG("-f", "lavfi", "-i",
           "aevalsrc=0.5*sin(2*PI*500*t)|0.5*sin(2*PI*500*t):s=22050:d=1",
           "-write_xing", "0", p2);
    size_t l1, l2;
    uint8_t *b1 = read_file(p1, &l1), *b2 = read_file(p2, &l2);
    uint8_t *both = malloc(l1 + l2);
    assert_non_null(both);
    memcpy(both, b1, l1);
    memcpy(both + l1, b2, l2);
    audio a;
    gr_err err;
    assert_int_equal(decode_bytes(both, l1 + l2, 0, &a, &err), 0);
    /* Two seconds plus encoder delay and padding of each part. */
    assert_true(a.duration_s > 1.95 && a.duration_s < 2.25);
    const float *first = a.samples + RATE / 8, *second = a.samples + 9 * RATE / 8;
    size_t win = 3 * RATE / 4;
    assert_true(tone_amplitude(first, win, 1000) > 0.4);
    assert_true(tone_amplitude(first, win, 500) < 0.02);
    assert_true(tone_amplitude(second, win, 500) > 0.4);
    assert_true(tone_amplitude(second, win, 1000) < 0.02);
    audio_free(&a);
    free(both);
    free(b1);
    free(b2);
}

/* ---- limits ------------------------------------------------------------ */

static void test_duration_limit(void **state) {
    fixture *fx = *state;
    make_stereo_44k(fx, "limit.wav", "pcm_s16le");
    audio a;
    assert_int_equal(decode_named(fx, "limit.wav", 10.0, &a), GR_EUNPROCESSABLE);
    assert_int_equal(decode_named(fx, "limit.wav", 30.5, &a), GR_OK);
    audio_free(&a);
}

/* An hour of silence is 650 KB of FLAC but 230 MB of float at 16 kHz: the
 * limit must stop decoding early instead of filling memory first. */
static void test_decompression_bomb_is_cut_at_limit(void **state) {
    fixture *fx = *state;
    char out[PATH_MAX];
    path_in(fx, "silence.flac", out);
    FFMPEG("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "3600",
           "-c:a", "flac", out);
    audio a;
    assert_int_equal(decode_named(fx, "silence.flac", 60.0, &a), GR_EUNPROCESSABLE);
}

/* The request deadline interrupts a decode: one that passed already stops
 * it at the header, one that passes midway stops it within a packet (an
 * hour of FLAC cannot be decoded in 20 ms), and one far away changes
 * nothing. */
static void test_deadline(void **state) {
    fixture *fx = *state;
    char out[PATH_MAX];
    path_in(fx, "hour.flac", out);
    FFMPEG("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "3600",
           "-c:a", "flac", out);
    size_t len;
    uint8_t *data = read_file(out, &len);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    static const struct {
        double offset_s;
        gr_status want;
    } cases[] = {{-1.0, GR_EDEADLINE}, {0.02, GR_EDEADLINE}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
        audio_limits lim = {.max_duration_s = 7200, .deadline = now + cases[i].offset_s};
        audio a;
        gr_err err = {0};
        assert_int_equal(audio_decode(data, len, RATE, &lim, &a, &err), -1);
        assert_int_equal(err.status, cases[i].want);
        assert_non_null(strstr(err.msg, "deadline"));
        assert_null(a.samples);
    }
    free(data);

    make_stereo_44k(fx, "deadline.wav", "pcm_s16le");
    path_in(fx, "deadline.wav", out);
    data = read_file(out, &len);
    audio_limits lim = {.deadline = now + 600};
    audio a;
    gr_err err = {0};
    if (audio_decode(data, len, RATE, &lim, &a, &err) != 0) fail_msg("%s", err.msg);
    assert_true(a.duration_s > 29.0);
    audio_free(&a);
    free(data);
}

/* ---- hostile and broken input ------------------------------------------ */

static void test_not_audio_is_unsupported(void **state) {
    (void)state;
    expect_status("", 0, GR_EUNSUPPORTED);
    expect_status(NULL, 0, GR_EUNSUPPORTED);

    static uint8_t noise[64 * 1024];
    fill_noise(noise, sizeof noise, 0x9E3779B97F4A7C15u);
    expect_status(noise, sizeof noise, GR_EUNSUPPORTED);

    static const uint8_t png[] = {
        0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13, 'I', 'H', 'D',
        'R', 0, 0, 0, 16, 0, 0, 0, 16, 8, 2, 0, 0, 0, 0x90, 0x91, 0x68, 0x36,
        0, 0, 0, 0, 'I', 'E', 'N', 'D', 0xae, 0x42, 0x60, 0x82};
    expect_status(png, sizeof png, GR_EUNSUPPORTED);

    static const uint8_t zip[] = {
        'P', 'K', 3, 4, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0,
        5, 0, 0, 0, 5, 0, 0, 0, 'a', '.', 't', 'x', 't', 'h', 'e', 'l', 'l', 'o',
        'P', 'K', 5, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    expect_status(zip, sizeof zip, GR_EUNSUPPORTED);
}

/* A playlist naming `target` must be refused without touching it: an
 * inotify watch on the target sees no open, and a control open afterwards
 * proves the watch works. */
static void expect_playlist_refused(const char *text, const char *target) {
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    assert_true(fd >= 0);
    assert_true(inotify_add_watch(fd, target, IN_OPEN | IN_ACCESS) >= 0);

    expect_status(text, strlen(text), GR_EUNSUPPORTED);
    char ev[4096];
    ssize_t got = read(fd, ev, sizeof ev);
    if (got >= 0) fail_msg("decoding the playlist opened %s", target);
    assert_int_equal(errno, EAGAIN);

    int probe = open(target, O_RDONLY);
    assert_true(probe >= 0);
    close(probe);
    assert_true(read(fd, ev, sizeof ev) > 0);
    close(fd);
}

static void test_playlists_open_nothing(void **state) {
    fixture *fx = *state;
    /* The target is a valid WAV: if a playlist were followed, decoding would
     * succeed instead of failing. */
    char target[PATH_MAX];
    path_in(fx, "target.wav", target);
    FFMPEG("-f", "lavfi", "-i", "aevalsrc=0.5*sin(2*PI*1000*t):s=16000:d=4",
           target);

    char text[3 * PATH_MAX];
    snprintf(text, sizeof text, "#EXTM3U\n#EXTINF:4,tone\n%s\n", target);
    expect_playlist_refused(text, target);
    snprintf(text, sizeof text,
             "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n"
             "#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:4.0,\nfile:%s\n#EXT-X-ENDLIST\n",
             target);
    expect_playlist_refused(text, target);
    snprintf(text, sizeof text, "ffconcat version 1.0\nfile '%s'\n", target);
    expect_playlist_refused(text, target);

    static const char passwd[] = "ffconcat version 1.0\nfile '/etc/passwd'\n";
    expect_status(passwd, strlen(passwd), GR_EUNSUPPORTED);
    static const char hls_passwd[] =
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/passwd\n"
        "#EXT-X-ENDLIST\n";
    expect_status(hls_passwd, strlen(hls_passwd), GR_EUNSUPPORTED);
}

static void test_truncated_files(void **state) {
    fixture *fx = *state;
    make_stereo_44k(fx, "trunc.mp3", "libmp3lame");
    char path[PATH_MAX];
    path_in(fx, "trunc.mp3", path);
    size_t len;
    uint8_t *mp3 = read_file(path, &len);
    audio a;
    gr_err err;
    /* The first 30% decodes to roughly the first 30% of the audio. */
    assert_int_equal(decode_bytes(mp3, len * 3 / 10, 0, &a, &err), 0);
    assert_true(a.duration_s > 0.25 * 30 && a.duration_s < 0.35 * 30);
    audio_free(&a);
    free(mp3);

    make_stereo_44k(fx, "trunc.wav", "pcm_s16le");
    path_in(fx, "trunc.wav", path);
    uint8_t *wav = read_file(path, &len);
    /* 20 bytes: "RIFF....WAVEfmt " + chunk size, too little to recognise. */
    expect_status(wav, 20, GR_EUNSUPPORTED);
    /* A complete header with no data: recognised, nothing to decode. */
    expect_status(wav, 44, GR_EUNPROCESSABLE);
    free(wav);
}

/* Junk over three stretches of the stream: the damaged frames are skipped
 * and everything else still decodes. */
static void test_corrupt_frames_are_skipped(void **state) {
    fixture *fx = *state;
    static const struct { const char *name, *codec; } cases[] = {
        {"corrupt.mp3", "libmp3lame"},
        {"corrupt.flac", "flac"},
        {"corrupt.ogg", "libvorbis"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        make_stereo_44k(fx, cases[i].name, cases[i].codec);
        char path[PATH_MAX];
        path_in(fx, cases[i].name, path);
        size_t len;
        uint8_t *data = read_file(path, &len);
        for (int k = 3; k <= 7; k += 2)
            fill_noise(data + len * (size_t)k / 10, 3000, (uint64_t)k);
        audio a;
        gr_err err;
        if (decode_bytes(data, len, 0, &a, &err) != 0)
            fail_msg("%s: %s", cases[i].name, err.msg);
        if (!(a.duration_s > 25.0 && a.duration_s < 30.1))
            fail_msg("%s: %.2f s decoded", cases[i].name, a.duration_s);
        audio_free(&a);
        free(data);
    }
}

static void test_crafted_wav_headers(void **state) {
    (void)state;
    enum { FRAMES = RATE };
    static uint8_t buf[44 + 2 * 100 * FRAMES];
    int16_t frame[100];
    for (int c = 0; c < 100; c++) frame[c] = 1000;

    /* Claims ~4 GB of data, holds one second: decode what is there. */
    size_t len = craft_wav(buf, sizeof buf, 1, RATE, 0xFFFFFFF0u, frame, FRAMES);
    audio a;
    gr_err err;
    assert_int_equal(decode_bytes(buf, len, 0, &a, &err), 0);
    assert_int_equal(a.n_samples, FRAMES);
    audio_free(&a);

    len = craft_wav(buf, sizeof buf, 0, RATE, 2 * FRAMES, frame, 0);
    memset(buf + len, 0, 2 * FRAMES); /* the bytes a channel would have had */
    expect_status(buf, len + 2 * FRAMES, GR_EUNPROCESSABLE);

    len = craft_wav(buf, sizeof buf, 1, 0, 2 * FRAMES, frame, FRAMES);
    expect_status(buf, len, GR_EUNPROCESSABLE);

    len = craft_wav(buf, sizeof buf, 100, RATE, 200 * (FRAMES / 10), frame,
                    FRAMES / 10);
    expect_status(buf, len, GR_EUNPROCESSABLE);

    /* 20 MHz: resampling to 16 kHz would need a ~170 MB filter. */
    len = craft_wav(buf, sizeof buf, 1, 20000000, 2 * FRAMES, frame, FRAMES);
    expect_status(buf, len, GR_EUNPROCESSABLE);
}

static long peak_rss_kb(void) {
    struct rusage ru;
    assert_int_equal(getrusage(RUSAGE_SELF, &ru), 0);
    return ru.ru_maxrss;
}

/* lavf zero-fills a WAV LIST/INFO entry at its declared size before reading
 * it: 100 bytes claiming 2 GB must be refused, not cost 2 GB of RAM. */
static void test_header_size_bombs(void **state) {
    (void)state;
    static const uint8_t wav[] = {
        'R', 'I', 'F', 'F', 0x60, 0, 0, 0, 'W', 'A', 'V', 'E',
        'f', 'm', 't', ' ', 16, 0, 0, 0, 1, 0, 1, 0, 0x80, 0x3e, 0, 0,
        0, 0x7d, 0, 0, 2, 0, 16, 0,
        'L', 'I', 'S', 'T', 0xf0, 0xff, 0xff, 0x7f, 'I', 'N', 'F', 'O',
        'I', 'S', 'F', 'T', 0x00, 0xff, 0xff, 0x7f, 'b', 'o', 'm', 'b',
        'd', 'a', 't', 'a', 4, 0, 0, 0, 1, 0, 2, 0};
    long before = peak_rss_kb();
    expect_status(wav, sizeof wav, GR_EUNPROCESSABLE);
    long grown_mb = (peak_rss_kb() - before) / 1024;
    if (grown_mb > 256) fail_msg("peak RSS grew by %ld MB", grown_mb);

    /* FLAC: STREAMINFO block claiming 16 MB. */
    static const uint8_t flac[] = {'f', 'L', 'a', 'C', 0x80, 0xff, 0xff, 0xff,
                                   0x10, 0, 0x10, 0, 0, 0, 0, 0, 0, 0};
    expect_status(flac, sizeof flac, GR_EUNPROCESSABLE);
}

static void test_id3_tag_without_audio(void **state) {
    (void)state;
    /* ID3v2.4 header, one TIT2 frame, padding to the declared size. */
    static uint8_t tag[10 + 16 + 500] = {'I', 'D', '3', 4, 0, 0, 0, 0, 4, 4,
                                         'T', 'I', 'T', '2', 0, 0, 0, 6, 0, 0,
                                         3, 'h', 'e', 'l', 'l', 'o'};
    expect_status(tag, sizeof tag, GR_EUNPROCESSABLE);
}

static void test_bad_arguments(void **state) {
    (void)state;
    audio a;
    gr_err err = {0};
    assert_int_equal(audio_decode("RIFF", 4, 0, NULL, &a, &err), -1);
    assert_int_equal(err.status, GR_EINTERNAL);
    assert_int_equal(audio_decode(NULL, 10, RATE, NULL, &a, &err), -1);
    assert_int_equal(err.status, GR_EINTERNAL);
    audio_free(NULL);
}

/* ---- threads ----------------------------------------------------------- */

typedef struct decode_task {
    const uint8_t *data;
    size_t len;
    audio out;
    int rc;
} decode_task;

static void *decode_thread(void *arg) {
    decode_task *t = arg;
    gr_err err;
    t->rc = decode_bytes(t->data, t->len, 0, &t->out, &err);
    return NULL;
}

static void test_concurrent_decodes_agree(void **state) {
    fixture *fx = *state;
    char path[PATH_MAX];
    path_in(fx, "threads.mp3", path);
    FFMPEG("-i", fx->flac, "-t", "8", "-ac", "2", "-ar", "44100", path);
    size_t len;
    uint8_t *data = read_file(path, &len);
    audio serial;
    gr_err err;
    assert_int_equal(decode_bytes(data, len, 0, &serial, &err), 0);

    enum { THREADS = 4 };
    decode_task tasks[THREADS];
    pthread_t tid[THREADS];
    for (int i = 0; i < THREADS; i++) {
        tasks[i] = (decode_task){.data = data, .len = len};
        assert_int_equal(pthread_create(&tid[i], NULL, decode_thread, &tasks[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(tid[i], NULL), 0);
        assert_int_equal(tasks[i].rc, 0);
        assert_int_equal(tasks[i].out.n_samples, serial.n_samples);
        assert_memory_equal(tasks[i].out.samples, serial.samples,
                            serial.n_samples * sizeof(float));
        audio_free(&tasks[i].out);
    }
    audio_free(&serial);
    free(data);
}

int main(void) {
    /* The test is the caller here: keep expected libav complaints about the
     * hostile inputs off the test log. */
    av_log_set_level(AV_LOG_QUIET);
    audio_limit_libav();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flac_original_is_exact),
        cmocka_unit_test(test_wav_44k_stereo_matches_original),
        cmocka_unit_test(test_mp3_44k_stereo_matches_original),
        cmocka_unit_test(test_sine_48k_stereo_s16_is_mean_downmixed),
        cmocka_unit_test(test_8ch_192k_float_wav),
        cmocka_unit_test(test_8bit_wav),
        cmocka_unit_test(test_flac_vorbis_opus),
        cmocka_unit_test(test_m4a_and_aiff_music),
        cmocka_unit_test(test_m4a_and_aiff_codecs),
        cmocka_unit_test(test_mp4_structure),
        cmocka_unit_test(test_codecs_outside_whitelist),
        cmocka_unit_test(test_unknown_layouts_are_mean_downmixed),
        cmocka_unit_test(test_parameters_changing_midstream),
        cmocka_unit_test(test_duration_limit),
        cmocka_unit_test(test_decompression_bomb_is_cut_at_limit),
        cmocka_unit_test(test_deadline),
        cmocka_unit_test(test_not_audio_is_unsupported),
        cmocka_unit_test(test_playlists_open_nothing),
        cmocka_unit_test(test_truncated_files),
        cmocka_unit_test(test_corrupt_frames_are_skipped),
        cmocka_unit_test(test_crafted_wav_headers),
        cmocka_unit_test(test_header_size_bombs),
        cmocka_unit_test(test_id3_tag_without_audio),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_concurrent_decodes_agree),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
