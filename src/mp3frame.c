/* mp3frame.c - follows libavcodec's mp3 decoder through a layer III
 * stream's bit reservoir, from headers and side info (see mp3frame.h).
 *
 * Positions here are in bits from the first byte after the frame's side
 * info, where the frame's own main data begins (`own` bytes of it); the
 * reservoir the decoder holds lies before that, at [-8 * held, 0). The
 * bookkeeping is libavcodec's (mpegaudiodec_template.c, lavc 59): where it
 * starts reading, that each granule ends exactly part2_3_length bits after
 * it started, how it byte-aligns at the end of a frame and which bytes it
 * keeps for the next one. A frame reads only stream bytes if it asks for no
 * more reservoir than is held and no granule reaches past the frame's end.
 * A granule reaches part2_3_length bits, or further when its scale factors
 * (part 2) alone are longer: the decoder reads them all and steps back.
 * (The last Huffman code word may also cross the frame's end; past it lies
 * the packet's zero padding, the same for every decoder: audio.c sends
 * copies.)
 *
 * The tables are the standard's: ISO 11172-3 2.4.2.7 (MPEG-1) and 13818-3
 * 2.4.3.2 (MPEG-2 and 2.5 scale factors). */
#include "genred/mp3frame.h"

#include <string.h>

enum {
    HEADER_BYTES = 4,
    /* The decoder keeps at most this many of a frame's own bytes, whatever
     * is left of them: a reservoir never reaches back further (511). */
    BACKSTEP = 512,
    MAX_SIDE_BYTES = 32, /* MPEG-1 stereo */
};

/* Layer III bit rates (kbit/s) by index: MPEG-1, then MPEG-2 and 2.5. */
static const int KBPS[2][15] = {
    {0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320},
    {0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160},
};
static const int RATE[3] = {44100, 48000, 32000};

/* MPEG-1 slen1 and slen2 by scalefac_compress. */
static const uint8_t SLEN[2][16] = {
    {0, 0, 0, 0, 3, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4},
    {0, 1, 2, 3, 0, 1, 2, 3, 1, 2, 3, 1, 2, 3, 2, 3},
};

/* MPEG-2 nr_of_sfb: [how slen was derived][long, short, mixed blocks][4]. */
static const uint8_t NR_OF_SFB[6][3][4] = {
    {{6, 5, 5, 5}, {9, 9, 9, 9}, {6, 9, 9, 9}},
    {{6, 5, 7, 3}, {9, 9, 12, 6}, {6, 9, 12, 6}},
    {{11, 10, 0, 0}, {18, 18, 0, 0}, {15, 18, 0, 0}},
    {{7, 7, 7, 0}, {12, 12, 12, 0}, {6, 15, 12, 0}},
    {{6, 6, 6, 3}, {12, 9, 9, 6}, {6, 12, 9, 6}},
    {{8, 8, 5, 0}, {15, 12, 9, 0}, {6, 18, 9, 0}},
};

/* A big-endian bit reader over a copy of the side info with 2 bytes of
 * zeros after it: reads of up to 16 bits look at 3 bytes. */
typedef struct bit_reader {
    uint8_t bytes[MAX_SIDE_BYTES + 2];
    int pos;
} bit_reader;

static int take(bit_reader *b, int n) {
    const uint8_t *q = b->bytes + (b->pos >> 3);
    uint32_t window = (uint32_t)q[0] << 16 | (uint32_t)q[1] << 8 | q[2];
    int v = (int)(window >> (24 - (b->pos & 7) - n) & ((1u << n) - 1));
    b->pos += n;
    return v;
}

/* Scale factor bits of an MPEG-2/2.5 granule. intensity_right: the right
 * channel under intensity stereo, which has its own slen derivation (the
 * decoder tests the header's mode extension bit alone, and so do we). */
static int lsf_part2_bits(int sfc, int block_type, int switch_point, int intensity_right) {
    int slen[4] = {0}, row;
    if (intensity_right) {
        int i = sfc >> 1;
        if (i < 180) {
            slen[0] = i / 36, slen[1] = i / 6 % 6, slen[2] = i % 6, row = 3;
        } else if (i < 244) {
            i -= 180;
            slen[0] = i >> 4, slen[1] = i >> 2 & 3, slen[2] = i & 3, row = 4;
        } else {
            i -= 244;
            slen[0] = i / 3, slen[1] = i % 3, row = 5;
        }
    } else if (sfc < 400) {
        slen[0] = (sfc >> 4) / 5, slen[1] = (sfc >> 4) % 5;
        slen[2] = sfc >> 2 & 3, slen[3] = sfc & 3, row = 0;
    } else if (sfc < 500) {
        sfc -= 400;
        slen[0] = (sfc >> 2) / 5, slen[1] = (sfc >> 2) % 5, slen[2] = sfc & 3, row = 1;
    } else {
        sfc -= 500;
        slen[0] = sfc / 3, slen[1] = sfc % 3, row = 2;
    }
    int kind = block_type == 2 ? (switch_point ? 2 : 1) : 0, bits = 0;
    for (int k = 0; k < 4; k++) bits += NR_OF_SFB[row][kind][k] * slen[k];
    return bits;
}

/* Scale factor bits of an MPEG-1 granule; scfsi: the bands it reuses from
 * granule 0 (always 0 for granule 0). */
static int mpeg1_part2_bits(int sfc, int block_type, int switch_point, int scfsi) {
    int slen1 = SLEN[0][sfc], slen2 = SLEN[1][sfc];
    if (block_type == 2) return (switch_point ? 17 : 18) * slen1 + 18 * slen2;
    int bits = 0;
    for (int k = 0; k < 4; k++)
        if (!(scfsi & (8 >> k))) bits += (k == 0 ? 6 : 5) * (k < 2 ? slen1 : slen2);
    return bits;
}

uint32_t mp3_frame_header(const uint8_t *p, int size) {
    if (size < HEADER_BYTES) return 0;
    uint32_t h = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    if ((h & 0xFFE00000u) != 0xFFE00000u || ((h >> 19) & 3) == 1 || ((h >> 17) & 3) == 0 ||
        ((h >> 12) & 15) == 15 || ((h >> 10) & 3) == 3)
        return 0;
    return (h & 0xFFFE0C00u) | (((h >> 6) & 3) == 3 ? 0x40u : 0);
}

int mp3_reservoir_add(mp3_reservoir *r, const uint8_t *frame, int size) {
    if (mp3_frame_header(frame, size) == 0) return 0;
    uint32_t h = (uint32_t)frame[0] << 24 | (uint32_t)frame[1] << 16 |
                 (uint32_t)frame[2] << 8 | frame[3];
    int version = h >> 19 & 3, layer = h >> 17 & 3, rate = h >> 10 & 3;
    int kbps_index = h >> 12 & 15;
    r->frames++;
    if (layer != 1) return 1; /* layers I and II: no reservoir */
    /* Free format (index 0) has no frame size in its header; lavc's decoder
     * refuses it. */
    if (kbps_index == 0) return 0;

    int lsf = version != 3, mono = (h >> 6 & 3) == 3, channels = mono ? 1 : 2;
    int intensity = h >> 4 & 1, crc = (h >> 16 & 1) ? 0 : 2;
    int hz = RATE[rate] >> (version == 3 ? 0 : version == 2 ? 1 : 2);
    int frame_size = (lsf ? 72000 : 144000) * KBPS[lsf][kbps_index] / hz + (int)(h >> 9 & 1);
    /* The decoder takes the frame's size from its header; a shorter packet
     * (a cut last frame) it decodes as far as it goes. */
    int bytes = size < frame_size ? size : frame_size;
    int side = lsf ? (mono ? 9 : 17) : (mono ? 17 : 32);
    int own = bytes - HEADER_BYTES - crc - side;
    if (own < 0) return 0;

    bit_reader b = {.pos = 0};
    memcpy(b.bytes, frame + HEADER_BYTES + crc, (size_t)side);
    int granules = lsf ? 1 : 2, begin, scfsi[2] = {0, 0};
    if (lsf) {
        begin = take(&b, 8);
        take(&b, channels);
    } else {
        begin = take(&b, 9);
        take(&b, mono ? 5 : 3);
        for (int ch = 0; ch < channels; ch++) scfsi[ch] = take(&b, 4);
    }
    int p23[2][2], part2[2][2];
    for (int gr = 0; gr < granules; gr++)
        for (int ch = 0; ch < channels; ch++) {
            p23[gr][ch] = take(&b, 12);
            int big_values = take(&b, 9);
            take(&b, 8); /* global_gain */
            int sfc = take(&b, lsf ? 9 : 4);
            int block_type = 0, switch_point = 0;
            if (take(&b, 1)) {
                block_type = take(&b, 2);
                switch_point = take(&b, 1);
                take(&b, 10);    /* table_select x 2 */
                take(&b, 9);     /* subblock_gain x 3 */
                if (block_type == 0) return 0; /* the decoder refuses the frame */
            } else {
                take(&b, 15);    /* table_select x 3 */
                take(&b, 7);     /* region0_count, region1_count */
            }
            take(&b, lsf ? 2 : 3); /* (preflag,) scalefac_scale, count1table_select */
            if (big_values > 288) return 0; /* refused too */
            part2[gr][ch] = lsf ? lsf_part2_bits(sfc, block_type, switch_point,
                                                 intensity && ch == 1)
                                : mpeg1_part2_bits(sfc, block_type, switch_point,
                                                   gr == 1 ? scfsi[ch] : 0);
        }

    /* Where the decoder starts reading: `begin` bytes back. Only a stream's
     * first frame may ask for more than is held (none is); the decoder then
     * skips granules until the start lies behind it. */
    int held = r->held, x, gr = 0;
    if (begin <= held) {
        x = -8 * begin;
    } else {
        if (r->frames > 1) return 0;
        int at = 8 * held;
        for (; gr < granules && at >> 3 < begin; gr++)
            for (int ch = 0; ch < channels; ch++) at += p23[gr][ch];
        int skip = at - 8 * begin;
        x = skip < 0 ? -8 * held : skip - 8 * held; /* < 0: every granule skipped */
    }
    for (; gr < granules; gr++)
        for (int ch = 0; ch < channels; ch++) {
            if (x + part2[gr][ch] > 8 * own) return 0; /* read, then stepped back */
            x += p23[gr][ch];
        }
    if (x > 8 * own) return 0;

    /* What the decoder keeps, byte-aligned: the rest of the frame's own
     * bytes, or (if it never got to them) the rest of the reservoir and then
     * the frame's own bytes. More than BACKSTEP own bytes are cut to the
     * frame's last BACKSTEP. */
    int tail = own - (x > 0 ? (x + 7) / 8 : 0);
    if (tail > BACKSTEP) tail = BACKSTEP;
    int rest = x < 0 ? held - (x + 8 * held + 7) / 8 : 0;
    r->held = rest + tail;
    return 1;
}
