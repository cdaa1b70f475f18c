/* mp3frame.h - does an MPEG audio layer III frame's decoder read only the
 * stream's bytes?
 *
 * A layer III frame's main data may begin up to 511 bytes before the frame,
 * in the bit reservoir the frames before it left unused, and libavcodec's
 * mp3 decoder carries those bytes from frame to frame. While every frame
 * reads only bytes of the stream, what the decoder carries is a suffix of
 * the stream, so a decoder started a few frames before a point agrees there
 * with one started at the top: what audio.c's indexed decode relies on.
 * A damaged frame can break that: side info that claims more bits than the
 * frame and the reservoir hold makes the decoder read past them (into
 * padding or stale buffer contents), and a reservoir reaching back further
 * than the decoder holds makes it skip granules. Its output then depends on
 * everything decoded before, however far back.
 *
 * mp3_reservoir_add() follows the decoder's bookkeeping frame by frame from
 * headers and side info alone and tells when a frame leaves those bounds.
 * mp3_frame_header() is the decoder's own first check of a frame.
 * Neither decodes, checks CRCs, or looks into layers I and II past the
 * header (they have no reservoir: each frame reads only its own bytes).
 */
#ifndef GENRED_MP3FRAME_H
#define GENRED_MP3FRAME_H

#include <stdint.h>

/* The header of the frame at p (size bytes, borrowed) as the mp3 decoder
 * checks it before decoding: 0 if there is none (no sync word, or a
 * reserved version, layer, bit rate or sample rate), else the fields a
 * stream keeps from frame to frame, so that two frames of one stream give
 * the same value: sync, version, layer, sample rate, and mono or not (the
 * decoder refuses a frame whose channel count changed; stereo and joint
 * stereo alternate in ordinary files). */
uint32_t mp3_frame_header(const uint8_t *p, int size);

/* The decoder's reservoir as it stands before the next frame. Zero it
 * (= {0}) before the stream's first frame. */
typedef struct mp3_reservoir {
    int held;   /* bytes the decoder keeps for the next frame */
    int frames; /* frames added so far */
} mp3_reservoir;

/* Adds the next frame of the stream: one packet of size bytes (borrowed),
 * starting with its header, as the demuxer hands it to the decoder.
 * Returns 1 if the decoder reads only stream bytes for it, with the whole
 * reservoir it asks for (the first frame may ask for bytes before the
 * stream: every decode starts without them), and 0 if not, or if the
 * decoder would refuse the frame. */
int mp3_reservoir_add(mp3_reservoir *r, const uint8_t *frame, int size);

#endif
