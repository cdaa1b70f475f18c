/* test_mp3frame.c - mp3_reservoir_add() on hand-made layer III frames:
 * what the decoder holds after each, and the frames that read past the
 * stream's bytes or refer to more reservoir than it holds. (Real encoders'
 * streams, which must all pass, are test_range_identity.c's; damaged ones
 * from fuzzing are fuzz/corpus/audio/regress-range-overread-*.mp3.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "genred/mp3frame.h"

/* MPEG-1 layer III, 128 kbit/s, 44.1 kHz, no CRC, no padding: 417 bytes,
 * 32 bytes of side info (stereo) and 381 of main data. */
enum { MPEG1_BYTES = 417, MPEG1_OWN = 381 };
/* MPEG-2 layer III, 64 kbit/s, 22.05 kHz: 208 bytes; mono 9 bytes of side
 * info (195 of main data), stereo 17 (187). */
enum { MPEG2_BYTES = 208, MPEG2_MONO_OWN = 195, MPEG2_STEREO_OWN = 187 };

typedef struct bit_writer {
    uint8_t *p;
    int pos;
} bit_writer;

static void put(bit_writer *w, int n, unsigned v) {
    for (int i = n - 1; i >= 0; i--, w->pos++)
        if (v >> i & 1) w->p[w->pos >> 3] |= (uint8_t)(0x80 >> (w->pos & 7));
}

/* One granule's side info; the fields mp3frame.c does not use are zero. */
typedef struct granule {
    int p23, big_values, sfc;
    int block_type; /* 0: no block split; else the split's block_type */
    int split;      /* write a block split (with block_type, even 0) */
    int switch_point;
} granule;

static void put_granule(bit_writer *w, const granule *g, int lsf) {
    put(w, 12, (unsigned)g->p23);
    put(w, 9, (unsigned)g->big_values);
    put(w, 8, 0);
    put(w, lsf ? 9 : 4, (unsigned)g->sfc);
    put(w, 1, (unsigned)(g->split || g->block_type));
    if (g->split || g->block_type) {
        put(w, 2, (unsigned)g->block_type);
        put(w, 1, (unsigned)g->switch_point);
        put(w, 10 + 9, 0);
    } else {
        put(w, 15 + 7, 0);
    }
    put(w, lsf ? 2 : 3, 0);
}

/* An MPEG-1 stereo frame whose four granules are g[gr * 2 + ch]; 128
 * kbit/s at 44.1 kHz, or 320 kbit/s at 32 kHz (1440 bytes, 1404 of main
 * data) if big. */
static int mpeg1_frame_sized(uint8_t *buf, int begin, const granule g[4], int big) {
    memset(buf, 0, big ? 1440 : MPEG1_BYTES);
    const uint8_t header[4] = {0xFF, 0xFB, big ? 0xE8 : 0x90, 0x00}; /* stereo */
    memcpy(buf, header, 4);
    bit_writer w = {buf + 4, 0};
    put(&w, 9, (unsigned)begin);
    put(&w, 3, 0);
    put(&w, 8, 0); /* scfsi, both channels */
    for (int i = 0; i < 4; i++) put_granule(&w, &g[i], 0);
    assert_int_equal(w.pos, 32 * 8);
    return big ? 1440 : MPEG1_BYTES;
}

static int mpeg1_frame(uint8_t *buf, int begin, const granule g[4]) {
    return mpeg1_frame_sized(buf, begin, g, 0);
}

/* An MPEG-2 frame: mono (g[0]), or joint stereo (g[0], g[1]) with the
 * intensity stereo bit of the mode extension set or not. */
static int mpeg2_frame(uint8_t *buf, int begin, const granule *g, int stereo, int intensity) {
    memset(buf, 0, MPEG2_BYTES);
    const uint8_t header[4] = {0xFF, 0xF3, 0x80,
                               !stereo ? 0xC0 : intensity ? 0x50 : 0x40};
    memcpy(buf, header, 4);
    bit_writer w = {buf + 4, 0};
    put(&w, 8, (unsigned)begin);
    put(&w, stereo ? 2 : 1, 0);
    for (int ch = 0; ch < (stereo ? 2 : 1); ch++) put_granule(&w, &g[ch], 1);
    assert_int_equal(w.pos, (stereo ? 17 : 9) * 8);
    return MPEG2_BYTES;
}

static uint8_t frame[1440 + 100]; /* the largest frame, + junk after it */

static void test_reservoir_follows_the_decoder(void **state) {
    (void)state;
    mp3_reservoir r = {0};
    /* 400 bits from the frame's own start: 331 of its 381 bytes are left. */
    granule a[4] = {{.p23 = 100}, {.p23 = 100}, {.p23 = 100}, {.p23 = 100}};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 0, a)), 1);
    assert_int_equal(r.held, MPEG1_OWN - 50);
    /* 300 bytes back and exactly to the frame's end: all 381 are left. */
    granule b[4] = {{.p23 = 600}, {.p23 = 600}, {.p23 = 600}, {.p23 = 600}};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 300, b)), 1);
    assert_int_equal(r.held, MPEG1_OWN);
    /* Within the reservoir alone (300 back, 100 read, aligned up from 799
     * bits): the decoder keeps the unread 200 and then the whole frame. */
    granule c[4] = {{.p23 = 200}, {.p23 = 200}, {.p23 = 200}, {.p23 = 199}};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 300, c)), 1);
    assert_int_equal(r.held, 200 + MPEG1_OWN);
    assert_int_equal(r.frames, 3);
    /* Of a big frame's 1404 bytes left unread it keeps the last 512. */
    granule none[4] = {{0}};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame_sized(frame, 0, none, 1)), 1);
    assert_int_equal(r.held, 512);
}

static void test_frames_that_read_past_the_stream(void **state) {
    (void)state;
    /* Main data one bit longer than the frame and its reservoir: the
     * decoder's "invalid new backstep". Exactly as long is fine. */
    mp3_reservoir r = {0};
    granule fits[4] = {{.p23 = 762}, {.p23 = 762}, {.p23 = 762}, {.p23 = 762}};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 0, fits)), 1);
    assert_int_equal(r.held, 0);
    r = (mp3_reservoir){0};
    granule over[4] = {{.p23 = 762}, {.p23 = 762}, {.p23 = 762}, {.p23 = 763}};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 0, over)), 0);

    /* Scale factors longer than part2_3_length (slen 4 and 3: 74 bits) in
     * the last granule, 10 bits before the end: read past it all the same. */
    r = (mp3_reservoir){0};
    granule sf[4] = {{.p23 = 1000}, {.p23 = 1000}, {.p23 = 1038}, {.p23 = 10, .sfc = 15}};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 0, sf)), 0);
    sf[3].sfc = 0;
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 0, sf)), 1);
    /* Short blocks with slen 4 and 3: 18 * 4 + 18 * 3 = 126 bits. */
    sf[3] = (granule){.p23 = 10, .sfc = 15, .block_type = 2};
    sf[2].p23 = 3048 - 2000 - 126;
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 0, sf)), 1);
    sf[2].p23++;
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 0, sf)), 0);
}

static void test_reservoir_longer_than_held(void **state) {
    (void)state;
    mp3_reservoir r = {0};
    granule a[4] = {{.p23 = 100}, {.p23 = 100}, {.p23 = 100}, {.p23 = 100}};
    /* A stream's first frame may refer back: every decode starts alike. */
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 40, a)), 1);
    int held = r.held;
    assert_true(held > 0);
    /* Later, asking for one byte more than is held skips granules. */
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, held + 1, a)), 0);
    r = (mp3_reservoir){.held = held, .frames = 1};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, held, a)), 1);
}

static void test_frames_the_decoder_refuses(void **state) {
    (void)state;
    mp3_reservoir r = {0};
    granule g[4] = {{.p23 = 100}, {.p23 = 100}, {.p23 = 100}, {.p23 = 100}};
    int n = mpeg1_frame(frame, 0, g);
    assert_int_equal(mp3_reservoir_add(&r, frame, 35), 0);    /* side info cut */
    assert_int_equal(mp3_reservoir_add(&r, frame, 3), 0);     /* header cut */
    frame[2] = 0x00;                                          /* free format */
    assert_int_equal(mp3_reservoir_add(&r, frame, n), 0);
    g[1].big_values = 289;
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 0, g)), 0);
    g[1] = (granule){.p23 = 100, .split = 1, .block_type = 0};
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg1_frame(frame, 0, g)), 0);
    frame[0] = 0x00;                                          /* no sync */
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, n), 0);
}

static void test_layer2_has_no_reservoir(void **state) {
    (void)state;
    mp3_reservoir r = {0};
    uint8_t l2[4] = {0xFF, 0xFD, 0x90, 0x00};
    assert_int_equal(mp3_reservoir_add(&r, l2, sizeof l2), 1);
    assert_int_equal(r.frames, 1);
    assert_int_equal(r.held, 0);
}

/* A cut last frame: the decoder reads as far as the packet goes. */
static void test_short_packet(void **state) {
    (void)state;
    mp3_reservoir r = {0};
    granule g[4] = {{.p23 = 100}, {.p23 = 100}, {.p23 = 100}, {.p23 = 100}};
    int n = mpeg1_frame(frame, 0, g);
    assert_int_equal(mp3_reservoir_add(&r, frame, 36 + 50), 1);
    assert_int_equal(r.held, 0);
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, 36 + 49), 0);
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, n + 100), 1); /* junk after: ignored */
    assert_int_equal(r.held, MPEG1_OWN - 50);
}

/* An MPEG-2 stereo frame whose right channel's granule (1 bit of
 * part2_3_length, scale factors `g`) starts `bits` before the frame's end
 * must pass, and fail one bit later: its scale factors are `bits` long. */
static void expect_scale_factor_bits(granule g, int intensity, int bits) {
    g.p23 = 1;
    granule two[2] = {{.p23 = 8 * MPEG2_STEREO_OWN - bits}, g};
    mp3_reservoir r = {0};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg2_frame(frame, 0, two, 1, intensity)), 1);
    two[0].p23++;
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg2_frame(frame, 0, two, 1, intensity)), 0);
}

static void test_mpeg2_scale_factors(void **state) {
    (void)state;
    mp3_reservoir r = {0};
    granule mono = {.p23 = 8 * MPEG2_MONO_OWN};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg2_frame(frame, 0, &mono, 0, 0)), 1);
    assert_int_equal(r.held, 0);
    mono.p23++;
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, mpeg2_frame(frame, 0, &mono, 0, 0)), 0);

    /* MPEG-2.5, 11.025 kHz at 64 kbit/s: 417 bytes, 404 of main data. */
    memset(frame, 0, sizeof frame);
    mono.p23 = 8 * 404;
    mpeg2_frame(frame, 0, &mono, 0, 0);
    frame[1] = 0xE3;
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, 417), 1);
    assert_int_equal(r.held, 0);
    mono.p23++;
    mpeg2_frame(frame, 0, &mono, 0, 0);
    frame[1] = 0xE3;
    r = (mp3_reservoir){0};
    assert_int_equal(mp3_reservoir_add(&r, frame, 417), 0);

    /* scalefac_compress 399: slen 4, 4, 3, 3 over 6, 5, 5, 5 bands (long
     * blocks), 9, 9, 9, 9 (short) or 6, 9, 9, 9 (mixed). */
    expect_scale_factor_bits((granule){.sfc = 399}, 0, 74);
    expect_scale_factor_bits((granule){.sfc = 399, .block_type = 2}, 0, 126);
    expect_scale_factor_bits((granule){.sfc = 399, .block_type = 2, .switch_point = 1}, 0, 114);
    /* 499 (99 past 400: slen 4, 4, 3) over 6, 5, 7, 3; 511 (11 past 500:
     * slen 3, 2) over 11, 10. */
    expect_scale_factor_bits((granule){.sfc = 499}, 0, 65);
    expect_scale_factor_bits((granule){.sfc = 511}, 0, 53);
    /* 358: slen 4, 2, 1, 2 over 6, 5, 5, 5; but under intensity stereo the
     * right channel halves it (179: slen 4, 5, 5 over 7, 7, 7). */
    expect_scale_factor_bits((granule){.sfc = 358}, 0, 49);
    expect_scale_factor_bits((granule){.sfc = 358}, 1, 98);
    /* Halved past 180 (200: 20 = slen 1, 1, 0 over 6, 6, 6) and past 244
     * (250: 6 = slen 2, 0 over 8, 8). */
    expect_scale_factor_bits((granule){.sfc = 400}, 1, 12);
    expect_scale_factor_bits((granule){.sfc = 500}, 1, 16);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reservoir_follows_the_decoder),
        cmocka_unit_test(test_frames_that_read_past_the_stream),
        cmocka_unit_test(test_reservoir_longer_than_held),
        cmocka_unit_test(test_frames_the_decoder_refuses),
        cmocka_unit_test(test_layer2_has_no_reservoir),
        cmocka_unit_test(test_short_packet),
        cmocka_unit_test(test_mpeg2_scale_factors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
