/* test_range_identity.c - range decoding gives the reference's samples, bit
 * for bit.
 *
 * audio_source_decode() decodes only a window of a file, cut into spans
 * decoded on several threads after a short pre-roll and stitched at the
 * positions the timestamps give (audio.h). Its promise is that this changes
 * nothing: the samples, and so the model's features, are those of the one
 * sequential decode of the whole file that audio_decode() does. Tolerance:
 * none. Samples and features must be bit-identical, which they are because
 * a span's decoder and resampler reach the whole decode's exact state
 * within the pre-roll; any drift would be a bug in the stitching, not
 * rounding.
 *
 * Inputs are made at test time from a real GTZAN track ($GENRED_SHARED)
 * with the ffmpeg CLI, in the formats where the index knows the length up
 * front (MP3 CBR and VBR at 44.1/48/22.05 kHz, with and without ID3 tags,
 * WAV, FLAC, AIFF) and in ones where it must fall back (Ogg Vorbis, M4A with
 * AAC or ALAC, a truncated MP3, an MP3 with corrupted frames), which must
 * then give the reference's
 * samples, except where damage before a window makes the whole decode drop
 * frames (see audio.h): there the window must still be the same music at
 * its timestamps. No timing is asserted here; bench/ measures. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libavutil/log.h>

#include "genred/audio.h"
#include "genred/features.h"
#include "genred/mel.h"
#include "tool.h"

#define RATE 16000

typedef struct fixture {
    char dir[PATH_MAX];
    char track[4][PATH_MAX]; /* real GTZAN tracks, 30 s, 16 kHz mono FLAC */
} fixture;

static const char *const TRACKS[4] = {"rock/rock.00003.flac", "jazz/jazz.00002.flac",
                                      "metal/metal.00004.flac", "blues/blues.00005.flac"};

/* ---- helpers ------------------------------------------------------------ */

static void path_in(const fixture *fx, const char *name, char out[PATH_MAX]) {
    int n = snprintf(out, PATH_MAX, "%s/%s", fx->dir, name);
    assert_true(n > 0 && n < PATH_MAX);
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s: %s", path, strerror(errno));
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n > 0);
    rewind(f);
    uint8_t *buf = malloc((size_t)n);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* The four tracks one after the other (2 minutes), as `name` with the
 * codec options given: long enough for several spans and a trim. */
static void make_song(const fixture *fx, const char *name, const char *rate,
                      const char *channels, char *const codec[]) {
    char out[PATH_MAX], *argv[64];
    path_in(fx, name, out);
    int n = 0;
    const char *head[] = {"ffmpeg", "-nostdin", "-v", "error", "-y"};
    for (size_t i = 0; i < sizeof head / sizeof *head; i++) argv[n++] = (char *)head[i];
    for (int i = 0; i < 4; i++) {
        argv[n++] = "-i";
        argv[n++] = (char *)fx->track[i];
    }
    argv[n++] = "-filter_complex";
    argv[n++] = "concat=n=4:v=0:a=1";
    argv[n++] = "-ar";
    argv[n++] = (char *)rate;
    argv[n++] = "-ac";
    argv[n++] = (char *)channels;
    for (int i = 0; codec[i]; i++) argv[n++] = codec[i];
    argv[n++] = out;
    argv[n] = NULL;
    assert_true(n < 64);
    if (run_tool(argv) != 0) fail_msg("ffmpeg failed making %s", name);
}

/* a's samples must be the reference's at the same positions, less `shift`:
 * the samples a damaged file's sequential decode dropped before them. */
static void expect_same_samples(const audio *ref, const audio *a, size_t shift,
                                const char *what) {
    assert_true(a->first >= shift && a->first - shift + a->n_samples <= ref->n_samples);
    const float *want = ref->samples + (a->first - shift);
    for (size_t i = 0; i < a->n_samples; i++)
        if (memcmp(&a->samples[i], &want[i], sizeof(float)) != 0)
            fail_msg("%s: sample %zu of the stream is %.9g, the whole decode has %.9g",
                     what, a->first + i, a->samples[i], want[i]);
}

static double correlation(const float *x, const float *y, size_t n) {
    double xx = 0, yy = 0, xy = 0;
    for (size_t i = 0; i < n; i++) {
        xx += (double)x[i] * x[i];
        yy += (double)y[i] * y[i];
        xy += (double)x[i] * y[i];
    }
    return xx > 0 && yy > 0 ? xy / sqrt(xx * yy) : (xx == yy ? 1 : 0);
}

/* Decodes `name` whole (the reference) and in windows on 1..4 threads.
 * exact: the index must know the length and the spans must be used (no
 * fallback), giving the reference's samples. Otherwise (damaged files): a
 * fallback must give the reference; spans may be used only where no
 * damage lies inside the window, and then they place samples by their
 * timestamps, i.e. where the reference has them once the frames its
 * sequential decode dropped before the window are counted back in. */
static void check_file(const fixture *fx, const char *name, int exact) {
    char path[PATH_MAX];
    path_in(fx, name, path);
    size_t len;
    uint8_t *data = read_file(path, &len);
    gr_err err = {0};
    audio ref;
    if (audio_decode(data, len, RATE, NULL, &ref, &err) != 0) fail_msg("%s: %s", name, err.msg);
    assert_true(ref.n_samples > 20 * RATE);
    assert_int_equal(ref.spans, 0);

    audio_source *src;
    if (audio_open(data, len, RATE, NULL, &src, &err) != 0) fail_msg("%s: %s", name, err.msg);
    if (exact) assert_int_equal(audio_source_samples(src), ref.n_samples);
    const size_t n = ref.n_samples;
    /* The whole stream, a trimmed window, odd edges, a short piece near
     * the end, and the last samples (the flush of decoder and resampler). */
    const size_t ranges[][2] = {{0, SIZE_MAX}, {15 * RATE, n - 30 * RATE},
                                {12345, n - 12345 - 777}, {n - 9 * RATE - 5, 8 * RATE},
                                {n - 5 * RATE, SIZE_MAX}};
    for (size_t r = 0; r < sizeof ranges / sizeof *ranges; r++) {
        for (int threads = 1; threads <= 4; threads++) {
            audio a;
            if (audio_source_decode(src, ranges[r][0], ranges[r][1], threads, NULL, &a,
                                    &err) != 0)
                fail_msg("%s: range %zu, %d threads: %s", name, r, threads, err.msg);
            char what[128];
            snprintf(what, sizeof what, "%s, range [%zu, +%zu), %d threads", name,
                     ranges[r][0], ranges[r][1], threads);
            if (exact) {
                size_t want = ranges[r][1] < n - ranges[r][0] ? ranges[r][1] : n - ranges[r][0];
                if (a.spans < 1) fail_msg("%s: fell back to the sequential decode", what);
                assert_int_equal(a.first, ranges[r][0]);
                assert_int_equal(a.n_samples, want);
                /* Long ranges are split as asked (4 s per span at least). */
                if (want >= (size_t)threads * 4 * RATE) assert_int_equal(a.spans, threads);
            }
            if (a.spans == 0) {
                assert_int_equal(a.first, 0);
                assert_int_equal(a.n_samples, ref.n_samples);
                assert_int_equal(a.total, ref.n_samples);
                expect_same_samples(&ref, &a, 0, what);
            } else if (exact) {
                expect_same_samples(&ref, &a, 0, what);
            } else {
                /* A dropped frame (1152 samples at 44.1 kHz = 417.96 at
                 * 16 kHz) also moves the reference's resampling phase, so
                 * equal up to a fraction of a sample: the best of the lags
                 * around the dropped count must correlate closely (0.95; a
                 * misplacement by a frame would give about 0). */
                assert_true(a.total >= ref.n_samples);
                size_t shift = a.total - ref.n_samples;
                double best = -1;
                for (size_t lag = shift ? shift - 1 : 0; lag <= shift + 1; lag++)
                    if (a.first >= lag && a.first - lag + a.n_samples <= ref.n_samples)
                        best = fmax(best, correlation(ref.samples + (a.first - lag),
                                                      a.samples, a.n_samples));
                if (!(best > 0.95)) fail_msg("%s: correlation %.4f with the whole decode",
                                             what, best);
            }
            audio_free(&a);
        }
    }
    audio_source_close(src);
    audio_free(&ref);
    free(data);
}

/* ---- fixture ------------------------------------------------------------ */

static int group_setup(void **state) {
    const char *shared = getenv("GENRED_SHARED");
    if (!shared || !*shared) {
        fprintf(stderr, "test_range_identity: GENRED_SHARED is not set (it must point at "
                        "the shared folder holding data/gtzan16k)\n");
        return -1;
    }
    fixture *fx = calloc(1, sizeof *fx);
    if (!fx) return -1;
    for (int i = 0; i < 4; i++) {
        snprintf(fx->track[i], PATH_MAX, "%s/data/gtzan16k/%s", shared, TRACKS[i]);
        if (access(fx->track[i], R_OK) != 0) {
            fprintf(stderr, "test_range_identity: missing %s: %s\n", fx->track[i],
                    strerror(errno));
            free(fx);
            return -1;
        }
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(fx->dir, sizeof fx->dir, "%s/genred-range-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(fx->dir)) {
        fprintf(stderr, "test_range_identity: mkdtemp: %s\n", strerror(errno));
        free(fx);
        return -1;
    }
    *state = fx;
    return 0;
}

static int group_teardown(void **state) {
    fixture *fx = *state;
    if (!fx) return 0;
    remove_tree(fx->dir);
    free(fx);
    return 0;
}

/* ---- tests -------------------------------------------------------------- */

static void test_mp3_cbr_44k_stereo(void **state) {
    char *codec[] = {"-c:a", "libmp3lame", "-b:a", "192k", NULL};
    make_song(*state, "cbr.mp3", "44100", "2", codec);
    check_file(*state, "cbr.mp3", 1);
}

static void test_mp3_vbr_48k_with_id3(void **state) {
    char *codec[] = {"-c:a", "libmp3lame", "-q:a", "2", "-metadata", "title=genred test",
                     "-id3v2_version", "3", "-write_id3v1", "1", NULL};
    make_song(*state, "vbr.mp3", "48000", "2", codec);
    check_file(*state, "vbr.mp3", 1);
}

/* 32 kbit/s: the bit reservoir reaches back over the most frames. */
static void test_mp3_low_bitrate_22k_mono(void **state) {
    char *codec[] = {"-c:a", "libmp3lame", "-b:a", "32k", NULL};
    make_song(*state, "low.mp3", "22050", "1", codec);
    check_file(*state, "low.mp3", 1);
}

/* MPEG-2.5 at 8 kbit/s: the other side info layout, and frames of 72 bytes
 * whose reservoir spans the most frames of all. */
static void test_mp3_mpeg25_8k_mono(void **state) {
    char *codec[] = {"-c:a", "libmp3lame", "-b:a", "8k", NULL};
    make_song(*state, "mpeg25.mp3", "8000", "1", codec);
    check_file(*state, "mpeg25.mp3", 1);
}

static void test_wav_and_flac(void **state) {
    char *wav[] = {"-c:a", "pcm_s16le", NULL};
    make_song(*state, "song.wav", "44100", "2", wav);
    check_file(*state, "song.wav", 1);
    char *flac[] = {"-c:a", "flac", NULL};
    make_song(*state, "song.flac", "44100", "2", flac);
    check_file(*state, "song.flac", 1);
    /* The training data's own format: no resampling at all. */
    make_song(*state, "song16k.flac", "16000", "1", flac);
    check_file(*state, "song16k.flac", 1);
}

/* AIFF is indexed like WAV: big-endian PCM, and AIFF-C's float. */
static void test_aiff(void **state) {
    char *s16[] = {"-c:a", "pcm_s16be", NULL};
    make_song(*state, "song.aiff", "44100", "2", s16);
    check_file(*state, "song.aiff", 1);
    char *f32[] = {"-c:a", "pcm_f32be", NULL};
    make_song(*state, "float.aiff", "48000", "1", f32);
    check_file(*state, "float.aiff", 1);
}

/* No length up front: everything is decoded once, as the reference. */
static void test_ogg_falls_back(void **state) {
    char *codec[] = {"-c:a", "libvorbis", NULL};
    make_song(*state, "song.ogg", "44100", "2", codec);
    check_file(*state, "song.ogg", 0);
}

/* MP4 is decoded sequentially (audio_range.c says why): AAC, whose last
 * packet lasts less than the frame the decoder gives for it, and ALAC. */
static void test_m4a_falls_back(void **state) {
    fixture *fx = *state;
    char *aac[] = {"-c:a", "aac", "-b:a", "160k", NULL};
    make_song(fx, "song.m4a", "44100", "2", aac);
    char *alac[] = {"-c:a", "alac", NULL};
    make_song(fx, "alac.m4a", "44100", "2", alac);
    const char *names[] = {"song.m4a", "alac.m4a"};
    for (int i = 0; i < 2; i++) {
        char path[PATH_MAX];
        path_in(fx, names[i], path);
        size_t len;
        uint8_t *data = read_file(path, &len);
        audio_source *src;
        gr_err err = {0};
        if (audio_open(data, len, RATE, NULL, &src, &err) != 0) fail_msg("%s", err.msg);
        assert_int_equal(audio_source_samples(src), 0);
        audio_source_close(src);
        free(data);
        check_file(fx, names[i], 0);
    }
}

/* Damaged files: the index may promise a length the decoder does not
 * deliver; the seams and the end check catch it and the sequential decode
 * answers instead. */
static void test_damaged_mp3s_give_the_reference(void **state) {
    fixture *fx = *state;
    char *codec[] = {"-c:a", "libmp3lame", "-b:a", "128k", NULL};
    make_song(fx, "whole.mp3", "44100", "2", codec);
    char src[PATH_MAX], dst[PATH_MAX];
    path_in(fx, "whole.mp3", src);
    size_t len;
    uint8_t *data = read_file(src, &len);

    /* Cut in the middle of a frame. */
    path_in(fx, "cut.mp3", dst);
    FILE *f = fopen(dst, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len * 2 / 3 + 101, f), len * 2 / 3 + 101);
    fclose(f);
    check_file(fx, "cut.mp3", 0);

    /* Noise over a few hundred bytes in several places. */
    uint64_t x = 0x9e3779b97f4a7c15u;
    for (int k = 1; k <= 5; k++) {
        size_t at = len * (size_t)k / 6;
        for (size_t i = 0; i < 300; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            data[at + i] = (uint8_t)(x >> 56);
        }
    }
    path_in(fx, "noisy.mp3", dst);
    f = fopen(dst, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    check_file(fx, "noisy.mp3", 0);
    free(data);
}

/* The model's input itself: features_compute() (trim first, then the window
 * in spans) against the chunks of the whole sequential decode. */
static void test_features_match_whole_decode(void **state) {
    fixture *fx = *state;
    char *codec[] = {"-c:a", "libmp3lame", "-b:a", "192k", NULL};
    make_song(fx, "feat.mp3", "44100", "2", codec);
    char path[PATH_MAX];
    path_in(fx, "feat.mp3", path);
    size_t len;
    uint8_t *data = read_file(path, &len);

    feature_params fp = {.kind = FEATURE_LOGMEL,
                         .mel = {.sample_rate = RATE, .n_fft = 1024, .win_length = 1024,
                                 .hop_length = 375, .n_mels = 128, .chunk_frames = 128,
                                 .fmin = 0, .fmax = 8000, .scale = MEL_SCALE_SLANEY,
                                 .slaney_norm = 1, .power = 2, .amin = 1e-10f,
                                 .norm_mean = -20.65f, .norm_std = 17.24f}};
    gr_err err = {0};
    featurizer *fz = featurizer_create(&fp, &err);
    if (!fz) fail_msg("%s", err.msg);
    const mel *m = featurizer_mel(fz);

    audio ref;
    if (audio_decode(data, len, RATE, NULL, &ref, &err) != 0) fail_msg("%s", err.msg);
    for (int trim = 0; trim <= 1; trim++) {
        size_t start = trim ? 15 * RATE : 0, end = ref.n_samples - (trim ? 15 * RATE : 0);
        size_t n = mel_chunk_count(m, end - start);
        float *want = malloc(n * mel_chunk_floats(m) * sizeof *want);
        assert_non_null(want);
        if (mel_compute(m, ref.samples + start, end - start, want, n, &err) != 0)
            fail_msg("%s", err.msg);
        for (int threads = 1; threads <= 3; threads++) {
            features_opts o = {.trim = trim, .trim_start_s = 15, .trim_end_s = 15,
                               .trim_min_keep_s = 30, .decode_threads = threads};
            analysis f;
            if (features_compute(fz, &o, data, len, &f, &err) != 0) fail_msg("%s", err.msg);
            assert_int_equal(f.n_chunks, n);
            /* Span by span: the window only, in several spans. */
            assert_true(f.spans > 1);
            assert_int_equal(f.trimmed, trim);
            assert_true(f.start_s == (double)start / RATE);
            assert_true(f.duration_s == ref.duration_s);
            double worst = 0;
            for (size_t i = 0; i < n * mel_chunk_floats(m); i++)
                worst = fmax(worst, fabs((double)f.chunks[i] - want[i]));
            if (worst != 0)
                fail_msg("trim %d, %d threads: features differ by up to %g", trim, threads,
                         worst);
            analysis_free(&f);
        }
        /* max_chunks: the chunks kept are the full analysis' chunks at their
         * places, bit for bit, whether only they were decoded (few kept:
         * one span each) or everything was (most kept). */
        size_t keep[] = {1, 4, n * 3 / 4 - 1, n * 3 / 4 + 1, n - 1, n, n + 5};
        for (size_t t = 0; t < sizeof keep / sizeof *keep; t++) {
            features_opts o = {.trim = trim, .trim_start_s = 15, .trim_end_s = 15,
                               .trim_min_keep_s = 30, .decode_threads = 2,
                               .max_chunks = keep[t]};
            analysis f;
            if (features_compute(fz, &o, data, len, &f, &err) != 0) fail_msg("%s", err.msg);
            size_t kept = keep[t] < n ? keep[t] : n;
            assert_int_equal(f.n_chunks, kept);
            assert_int_equal(f.window_chunks, n);
            /* Picked: one span per chunk kept; else the spans of 8. */
            assert_int_equal(f.spans, 4 * kept < 3 * n ? (int)kept : (int)((n + 7) / 8));
            for (size_t k = 0; k < kept; k++) {
                size_t at = features_chunk_pick(k, kept, n);
                assert_true(at < n && (k == 0 || at > features_chunk_pick(k - 1, kept, n)));
                if (memcmp(f.chunks + k * mel_chunk_floats(m),
                           want + at * mel_chunk_floats(m),
                           mel_chunk_floats(m) * sizeof(float)) != 0)
                    fail_msg("trim %d, max_chunks %zu: chunk %zu (the window's %zu) differs",
                             trim, keep[t], k, at);
            }
            analysis_free(&f);
        }
        free(want);
    }
    audio_free(&ref);
    featurizer_destroy(fz);
    free(data);
}

int main(void) {
    av_log_set_level(AV_LOG_QUIET);
    audio_limit_libav();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mp3_cbr_44k_stereo),
        cmocka_unit_test(test_mp3_vbr_48k_with_id3),
        cmocka_unit_test(test_mp3_low_bitrate_22k_mono),
        cmocka_unit_test(test_mp3_mpeg25_8k_mono),
        cmocka_unit_test(test_wav_and_flac),
        cmocka_unit_test(test_aiff),
        cmocka_unit_test(test_ogg_falls_back),
        cmocka_unit_test(test_m4a_falls_back),
        cmocka_unit_test(test_damaged_mp3s_give_the_reference),
        cmocka_unit_test(test_features_match_whole_decode),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
