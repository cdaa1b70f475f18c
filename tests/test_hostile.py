"""test_hostile.py - hostile uploads and hostile HTTP against a running daemon.

Each case sends one kind of bad (or merely odd) input and asserts the status
the contract documents for it, with the JSON error body where genred writes
the answer; then a good upload must still be classified, so no case leaves the
daemon broken. Finally every case is repeated ROUNDS times and the daemon's
idle resident memory (VmRSS) after the repeats is compared with after a
warm-up round: input must not leak memory, whatever it is.

The statuses, case by case (what openapi.yaml and README.md promise):

  empty body ........................................... 400 bad_request
  random bytes, PNG or ZIP named .mp3, m3u/HLS/concat .. 415 unsupported_media
  WAV cut inside its 44-byte header ..................... 415
  WAV header only, MP3 cut to 2 KB (0.05 s) ............ 422
  MP3 or WAV cut mid-stream, > 3 s left ................ 200 on what decodes
  WAV header claiming 4 GB of samples .................. 200 on what is there
  WAV LIST/INFO chunk claiming 4 GB .................... 422 unprocessable_audio
  WAV with zero channels or a zero sample rate ......... 422
  WAV format chunk whose extra bytes are cut short ..... 422 (was 500)
  8 channels, 192 kHz, 32-bit float WAV ................ 200
  an hour of silence (FLAC) ............................ 422 (max_duration_s)
  ID3 tag and no audio ................................. 422
  5 MB cover-art ID3 tag before a real MP3 ............. 200
  multipart: no boundary, foreign boundary, two boundary
    parameters, two file parts, no closing boundary .... 400 bad_request
    (the last one was a 200 on the bytes that came)
  multipart: extra empty delimiters before the part .... 200
  a header line or header block over MHD's 32 KiB ...... 431 (libmicrohttpd's
    own HTML answer: genred never sees the request); a URL over it: 414
  chunked transfer encoding, Expect: 100-continue,
    HTTP/1.0, many requests on one keep-alive connection 200
  Expect: 100-continue with a too large Content-Length . 413, no 100 sent
  client gone mid-upload or before the answer .......... (nothing to read)
  Content-Length with Transfer-Encoding, two
    Content-Lengths, two Transfer-Encodings, one in
    HTTP/1.0 ........................................... 400, Connection: close
  Transfer-Encoding gzip, identity, "gzip, chunked",
    one that is not UTF-8 (quoted in the message) ...... 501, Connection: close
  a control byte in the target (%00, %0d%0a, \x01) .... 400, Connection: close
  500 query parameters, 33, or a 1 KB value ............ 414, Connection: close
    (each of these four: exactly one answer, nothing after it is served)

Then, each with a daemon of its own (issue 12): a header block dribbled a
line at a time is cut at header_timeout_s; 300 slowloris connections leave
/healthz and /readyz answering within 1 s on the ops port (and, with
max_connections_per_client, on the main port) and a classification
completing; 200 uploads of a byte a second hold no classification slot and
get 408; SIGTERM with uploads waiting for the slot lets them finish within
shutdown_timeout_s, and past it answers "shutting down" and counts them.
  MP4 with a video track only, or video and audio ...... 415 (audio files only)
  fragmented MP4 (moof) ................................ 415
  MP4 with a compressed moov (cmov, a zlib bomb) ....... 415
  MP4 whose moov is cut short .......................... 422
  MP4 whose data reference (dref) names /etc/passwd .... 422: the track has no
    samples, nothing is opened (test_mp4_data_reference_opens_nothing)
  MP4 with a 'url ' data reference to a file ........... 200: lavf reads those
    tracks from the upload itself
  MP4 sample table claiming 80 million samples ......... 422 (was 1.9 GB of
    memory and 5 s); hidden outside its stbl: 422 within AUDIO_LIBAV_MAX_ALLOC
    (test_mp4_sample_table_bombs_cost_little_memory)

What it does not do: the limits of other configurations (test_api.py), load
over time (soak.py), arbitrary bytes (fuzz/).
"""
import ctypes
import http.client
import io
import json
import math
import os
import pathlib
import random
import re
import select
import signal
import socket
import struct
import subprocess
import threading
import time
import zipfile
import zlib

import pytest

import conftest
import mp4box

CLASSIFY = "/v1/classify"
UPLOAD_LIMIT = 32 * 1024 * 1024   # this module's daemon: room for the 8-channel case
ROUNDS = 4                        # repeats of every case for the memory check
RSS_GROWTH_LIMIT_KB = 8 * 1024    # see test_memory_does_not_grow_across_repeats
MHD_HEADER_MEMORY = 32 * 1024     # libmicrohttpd's default per-connection memory


# --- the daemon and the checks ----------------------------------------------

@pytest.fixture(scope="module")
def hd(genred_bin, source_dir, model_path, tmp_path_factory):
    """One daemon for the whole module, so its memory can be followed."""
    flags = conftest._base_flags(source_dir, model_path)
    flags["max-upload-bytes"] = str(UPLOAD_LIMIT)
    d = conftest.Daemon(genred_bin, flags, tmp_path_factory.mktemp("hostile") / "stderr.log")
    yield d
    conftest._stop_all([d])


def rss_kb(d, field="VmRSS"):
    """A memory figure of the daemon, in kB: VmRSS, or its parts RssAnon
    (heap, stacks) and RssFile (pages of the binary and libraries)."""
    with open(f"/proc/{d.proc.pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} line")


def check_error(api, status, headers, body, want_status, want_code, phrase=None):
    """An error genred wrote: exact status, JSON per the Error schema, exact
    code, and (when given) the phrase that says which check refused it."""
    assert status == want_status, f"expected {want_status}, got {status}: {body[:300]!r}"
    assert (headers.get("content-type") or "").split(";")[0].strip() == "application/json"
    err = json.loads(body)
    api.validate(err, "Error")
    assert err["error"]["code"] == want_code, err
    if phrase:
        assert phrase in err["error"]["message"], err
    return err


def check_answer(api, check_classify, status, headers, body, chunks=None):
    """A classify answer: 200, the ClassifyResult schema, the invariants
    every answer keeps, and (when given) the chunk count."""
    assert status == 200, f"expected 200, got {status}: {body[:300]!r}"
    assert (headers.get("content-type") or "").split(";")[0].strip() == "application/json"
    ans = json.loads(body)
    api.validate(ans, "ClassifyResult")
    check_classify(ans)
    if chunks is not None:
        assert ans["chunks"] == chunks, (ans["chunks"], ans["duration_s"])
    return ans


def post(d, body, content_type="application/octet-stream", files=None, timeout=60):
    """POST /v1/classify with requests; returns (status, headers, body)."""
    headers = {} if files else {"Content-Type": content_type}
    r = d.request("POST", CLASSIFY, data=None if files else body, files=files,
                  headers=headers, timeout=timeout)
    return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content


# --- raw HTTP -----------------------------------------------------------------

def read_responses(data):
    """Splits what a server sent into [(status, headers, body)], bodies by
    Content-Length (1xx answers have none)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete HTTP answer: {data[:300]!r}")
        lines = head.decode("iso-8859-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = 0 if status < 200 else int(headers.get("content-length", "0"))
        if len(rest) < n:
            raise AssertionError(f"body cut short: {len(rest)} of {n} bytes")
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def exchange(port, data, timeout=60.0, half_close=True):
    """Sends data on a fresh connection from a thread (the server may answer
    and close before reading it all), half-closes, and reads until the server
    closes. Returns every answer read. Without half_close (a proxy takes a
    half-close for a client gone) it reads until the server closes or is
    quiet for `timeout`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send():
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # answered and closed before the request was all sent

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass  # a reset after the answer (unread request bytes); judged by what came
    except socket.timeout:
        if half_close:
            raise
    finally:
        sock.close()
        sender.join(timeout)
    return read_responses(got)


def request_bytes(port, body, content_type, extra=b"", version="1.1", length=True,
                  path=CLASSIFY):
    head = f"POST {path} HTTP/{version}\r\nHost: 127.0.0.1:{port}\r\n"
    head += f"Content-Type: {content_type}\r\n"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    if version == "1.1":
        head += "Connection: close\r\n"
    return head.encode() + extra + b"\r\n" + body


# --- inputs made here ---------------------------------------------------------

def wav_bytes(channels, rate, bits, samples, fmt=1, data=None, riff_size=None,
              data_size=None, extra_chunks=b""):
    """A RIFF/WAVE file; any field can be made to lie."""
    align = channels * bits // 8
    if data is None:
        data = bytes(samples * align)
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, rate * align, align, bits)
    if fmt == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE, IEEE float subformat
        fmt_chunk += struct.pack("<HHI", 22, bits, (1 << channels) - 1)
        fmt_chunk += bytes.fromhex("0300000000001000800000aa00389b71")
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + extra_chunks +
            b"data" + struct.pack("<I", len(data) if data_size is None else data_size) + data)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def tone_wav(seconds=3.5, rate=16000):
    """A 16-bit mono chord: the good upload that follows every case."""
    n = int(seconds * rate)
    pcm = bytearray()
    for i in range(n):
        t = i / rate
        v = 0.2 * math.sin(2 * math.pi * 220 * t) + 0.1 * math.sin(2 * math.pi * 331 * t)
        pcm += struct.pack("<h", int(v * 32767))
    return wav_bytes(1, rate, 16, n, data=bytes(pcm))


def float_8ch_192k(seconds=3.2):
    """8 channels, 192 kHz, 32-bit float, a different tone per channel."""
    import numpy as np
    rate, ch = 192000, 8
    t = np.arange(int(rate * seconds)) / rate
    x = np.stack([0.3 * np.sin(2 * np.pi * 110 * (c + 1) * t) for c in range(ch)], 1)
    return wav_bytes(ch, rate, 32, len(t), fmt=0xFFFE, data=x.astype("<f4").tobytes())


def png_bytes():
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes(random.Random(y).randbytes(3 * 64)) for y in range(64))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def zip_bytes():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("song.txt", "la " * 20000)
        z.writestr("notes.txt", "not audio\n" * 100)
    return buf.getvalue()


def id3_tag(frames):
    n = len(frames)
    size = bytes([(n >> 21) & 127, (n >> 14) & 127, (n >> 7) & 127, n & 127])
    return b"ID3\x03\x00\x00" + size + frames


def id3_frame(kind, payload):
    return kind + struct.pack(">I", len(payload)) + b"\x00\x00" + payload


def cover_art_tag(nbytes):
    """An ID3v2.3 tag holding one APIC (attached picture) frame of nbytes."""
    jpeg = b"\xff\xd8\xff\xe0" + random.Random(5).randbytes(nbytes - 4)
    return id3_tag(id3_frame(b"APIC", b"\x00image/jpeg\x00\x03cover\x00" + jpeg))


def multipart(boundary, parts, closing=True, preamble=b""):
    body = preamble
    for name, filename, data in parts:
        body += (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + name +
                 b"\"; filename=\"" + filename + b"\"\r\nContent-Type: audio/mpeg\r\n\r\n" +
                 data + b"\r\n")
    if closing:
        body += b"--" + boundary + b"--\r\n"
    return body


def chunked(data, piece=7919):
    out = b""
    for i in range(0, len(data), piece):
        part = data[i:i + piece]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return out + b"0\r\n\r\n"


class Inputs:
    """Everything the cases send, made once per module."""

    def __init__(self, audio):
        self.audio = audio
        self.mp3 = audio.excerpt_mp3.read_bytes()      # 30 s, 44.1 kHz stereo
        self.wav = audio.excerpt_wav.read_bytes()      # 30 s, 44.1 kHz stereo s16
        self.tone = tone_wav()
        self.noise = random.Random(1).randbytes(64 * 1024)
        self.png = png_bytes()
        self.zip = zip_bytes()
        self.float8 = float_8ch_192k()
        self.cover = cover_art_tag(5 * 1024 * 1024) + self.mp3
        self.m4a = audio.excerpt_m4a.read_bytes()     # 30 s AAC, moov after mdat
        self._silence = None
        self._mp4 = {}

    def mp4(self, name, *args):
        """An MP4 made by the ffmpeg CLI with args (input options and all)."""
        if name not in self._mp4:
            self._mp4[name] = self.audio._ffmpeg(name, *args).read_bytes()
        return self._mp4[name]

    def video_only_mp4(self):
        return self.mp4("video.mp4", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5",
                        "-t", "2", "-c:v", "mpeg4")

    def video_and_audio_mp4(self):
        return self.mp4("video-audio.mp4", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5",
                        "-i", self.audio.excerpt_m4a, "-t", "10", "-c:v", "mpeg4",
                        "-c:a", "copy")

    def fragmented_m4a(self):
        return self.mp4("fragmented.m4a", "-i", self.audio.excerpt_m4a, "-c", "copy",
                        "-movflags", "frag_keyframe+empty_moov")

    def faststart_m4a(self):
        return self.mp4("faststart.m4a", "-i", self.audio.excerpt_m4a, "-c", "copy",
                        "-movflags", "faststart")

    def sample_table_bomb(self, hidden, count=80_000_000):
        """The m4a with a constant-size stsz claiming count samples, all in
        its first chunk: in its stbl, or (hidden) moved to an edts box
        before it, where lavf reads it all the same."""
        top = mp4box.root(self.m4a)
        trak = mp4box.audio_track(top)
        stbl = trak.find(b"mdia", b"minf", b"stbl")
        bomb = [mp4box.Box(b"stsz", b"\0\0\0\0" + struct.pack(">II", 16, count)),
                mp4box.Box(b"stsc", b"\0\0\0\0" + struct.pack(">IIII", 1, 1, count, 1))]
        stbl.boxes = [b for b in stbl.boxes if b.kind not in (b"stsz", b"stsc")]
        if hidden:
            trak.boxes.insert(0, mp4box.Box(b"edts", boxes=bomb))
        else:
            stbl.boxes += bomb
        return mp4box.write(top.boxes)

    @property
    def silence_hour(self):
        """An hour of 16 kHz mono digital silence as FLAC (~650 KB)."""
        if self._silence is None:
            path = self.audio._ffmpeg("silence-1h.flac", "-f", "lavfi", "-i",
                                      "anullsrc=r=16000:cl=mono", "-t", "3600", "-c:a", "flac")
            self._silence = path.read_bytes()
        return self._silence


@pytest.fixture(scope="module")
def inputs(audio):
    return Inputs(audio)


# --- the cases ------------------------------------------------------------------
#
# A case is f(d, api, check_classify, inp) that sends its input and asserts the
# answer. CASES lists them by id; each one runs once as its own test (followed
# by a good upload) and ROUNDS more times in the memory test.

CASES = {}


def case(fn):
    CASES[fn.__name__.replace("_", "-")] = fn
    return fn


@case
def empty_body(d, api, cc, inp):
    check_error(api, *post(d, b"", "audio/mpeg"), 400, "bad_request", "empty upload")


@case
def random_bytes(d, api, cc, inp):
    check_error(api, *post(d, inp.noise), 415, "unsupported_media")


@case
def png_named_mp3(d, api, cc, inp):
    check_error(api, *post(d, None, files={"file": ("cover.mp3", inp.png, "audio/mpeg")}),
                415, "unsupported_media")


@case
def zip_named_mp3(d, api, cc, inp):
    check_error(api, *post(d, None, files={"file": ("album.mp3", inp.zip, "audio/mpeg")}),
                415, "unsupported_media")


@case
def mp3_truncated_midstream(d, api, cc, inp):
    # 40 % of the bytes, cut inside a frame: ~12 s decode, 4 whole chunks.
    ans = check_answer(api, cc, *post(d, inp.mp3[:len(inp.mp3) * 4 // 10 + 17], "audio/mpeg"))
    assert 11.0 < ans["duration_s"] < 13.0 and ans["chunks"] == int(ans["duration_s"] // 3), ans


@case
def mp3_truncated_to_2k(d, api, cc, inp):
    check_error(api, *post(d, inp.mp3[:2048], "audio/mpeg"), 422, "unprocessable_audio",
                "too short")


@case
def wav_truncated_midstream(d, api, cc, inp):
    # The header still says 30 s; 10 s of samples (and half a frame) follow.
    body = inp.wav[:44 + 44100 * 4 * 10 + 3]
    ans = check_answer(api, cc, *post(d, body, "audio/wav"), chunks=3)
    assert abs(ans["duration_s"] - 10.0) < 0.01, ans


@case
def wav_truncated_in_header(d, api, cc, inp):
    check_error(api, *post(d, inp.wav[:30], "audio/wav"), 415, "unsupported_media")


@case
def wav_header_only(d, api, cc, inp):
    check_error(api, *post(d, inp.wav[:44], "audio/wav"), 422, "unprocessable_audio")


@case
def wav_claiming_4gb_of_samples(d, api, cc, inp):
    body = wav_bytes(1, 16000, 16, 16000 * 10, riff_size=0xFFFFFFFF, data_size=0xFFFFFFF0)
    ans = check_answer(api, cc, *post(d, body, "audio/wav"), chunks=3)
    assert abs(ans["duration_s"] - 10.0) < 0.01, ans


@case
def wav_list_chunk_claiming_4gb(d, api, cc, inp):
    info = b"LIST" + struct.pack("<I", 0xFFFFFFF0) + b"INFO" + b"INAM" + struct.pack("<I", 6) + b"title\x00"
    body = wav_bytes(1, 16000, 16, 16000 * 10, extra_chunks=info)
    check_error(api, *post(d, body, "audio/wav"), 422, "unprocessable_audio",
                "claims more bytes than uploaded")


@case
def wav_extradata_cut_short(d, api, cc, inp):
    """Found by fuzz_audio: lavf reports this as ENOMEM, which was a 500."""
    fmt = struct.pack("<HHIIHHH", 0xFFFE, 1, 16000, 32000, 2, 16, 22 + 4096)
    fmt += struct.pack("<HHI", 16, 16, 4) + bytes.fromhex("0100000000001000800000aa00389b71")
    fmt += bytes(100)  # of the 4096 extra format bytes cbSize promises
    body = b"WAVE" + b"fmt " + struct.pack("<I", 18 + 22 + 4096) + fmt
    body = b"RIFF" + struct.pack("<I", len(body)) + body
    check_error(api, *post(d, body, "audio/wav"), 422, "unprocessable_audio", "malformed")


@case
def wav_zero_channels(d, api, cc, inp):
    body = wav_bytes(0, 16000, 16, 0, data=bytes(320000))
    check_error(api, *post(d, body, "audio/wav"), 422, "unprocessable_audio")


@case
def wav_zero_sample_rate(d, api, cc, inp):
    body = wav_bytes(1, 0, 16, 160000)
    check_error(api, *post(d, body, "audio/wav"), 422, "unprocessable_audio")


@case
def wav_8ch_192khz_float(d, api, cc, inp):
    ans = check_answer(api, cc, *post(d, inp.float8, "audio/wav"), chunks=1)
    assert abs(ans["duration_s"] - 3.2) < 0.01, ans


@case
def hour_of_silence(d, api, cc, inp):
    check_error(api, *post(d, inp.silence_hour, "audio/flac"), 422, "unprocessable_audio",
                "longer than")


@case
def id3_tag_without_audio(d, api, cc, inp):
    body = id3_tag(id3_frame(b"TIT2", b"\x00a title"))
    check_error(api, *post(d, body, "audio/mpeg"), 422, "unprocessable_audio")


@case
def id3_5mb_cover_art(d, api, cc, inp):
    check_answer(api, cc, *post(d, inp.cover, "audio/mpeg"), chunks=10)


@case
def m3u_playlist(d, api, cc, inp):
    body = b"#EXTM3U\n#EXTINF:123,Song\n/etc/passwd\nhttp://127.0.0.1:1/a.mp3\n"
    check_error(api, *post(d, body, "audio/mpeg"), 415, "unsupported_media")


@case
def hls_playlist(d, api, cc, inp):
    body = (b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:10.0,\n"
            b"http://127.0.0.1:1/seg0.ts\n#EXTINF:10.0,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")
    check_error(api, *post(d, body, "application/octet-stream"), 415, "unsupported_media")


@case
def ffconcat_script(d, api, cc, inp):
    body = b"ffconcat version 1.0\nfile /etc/passwd\nfile 'http://127.0.0.1:1/x.mp3'\n"
    check_error(api, *post(d, body, "audio/mpeg"), 415, "unsupported_media")


def multipart_case(d, body, content_type):
    return exchange(d.port, request_bytes(d.port, body, content_type))


@case
def multipart_without_boundary(d, api, cc, inp):
    body = multipart(b"XyZ", [(b"file", b"a.mp3", inp.tone)])
    (r,) = multipart_case(d, body, "multipart/form-data")
    check_error(api, *r, 400, "bad_request")


@case
def multipart_with_foreign_boundary(d, api, cc, inp):
    body = multipart(b"XyZ", [(b"file", b"a.mp3", inp.tone)])
    (r,) = multipart_case(d, body, "multipart/form-data; boundary=OTHER")
    check_error(api, *r, 400, "bad_request", "no 'file' field")


@case
def multipart_with_two_boundary_parameters(d, api, cc, inp):
    body = multipart(b"XyZ", [(b"file", b"a.mp3", inp.tone)])
    for ct in ("multipart/form-data; boundary=XyZ; boundary=OTHER",
               "multipart/form-data; boundary=OTHER; boundary=XyZ"):
        (r,) = multipart_case(d, body, ct)
        check_error(api, *r, 400, "bad_request")


@case
def multipart_with_two_file_parts(d, api, cc, inp):
    body = multipart(b"XyZ", [(b"file", b"a.mp3", inp.tone), (b"file", b"b.mp3", inp.tone)])
    (r,) = multipart_case(d, body, "multipart/form-data; boundary=XyZ")
    check_error(api, *r, 400, "bad_request", "more than one 'file'")


@case
def multipart_without_closing_boundary(d, api, cc, inp):
    body = multipart(b"XyZ", [(b"file", b"a.mp3", inp.tone)], closing=False)
    (r,) = multipart_case(d, body, "multipart/form-data; boundary=XyZ")
    check_error(api, *r, 400, "bad_request", "closing boundary")


@case
def multipart_with_repeated_delimiters(d, api, cc, inp):
    # Empty parts without headers before the real one are skipped.
    body = multipart(b"XyZ", [(b"file", b"a.wav", inp.tone)], preamble=b"--XyZ\r\n--XyZ\r\n")
    (r,) = multipart_case(d, body, "multipart/form-data; boundary=XyZ")
    check_answer(api, cc, *r, chunks=1)


def check_mhd_refusal(answers, status):
    """libmicrohttpd answers these itself (HTML body) and closes."""
    (r,) = answers
    assert r[0] == status, r
    assert r[1].get("connection", "").lower() == "close", r[1]


@case
def huge_header_line(d, api, cc, inp):
    extra = b"X-Huge: " + b"a" * (2 * MHD_HEADER_MEMORY) + b"\r\n"
    check_mhd_refusal(exchange(d.port, request_bytes(d.port, inp.tone, "audio/wav", extra)), 431)


@case
def huge_header_block(d, api, cc, inp):
    extra = b"".join(b"X-Header-%04d: some value\r\n" % i for i in range(2000))
    check_mhd_refusal(exchange(d.port, request_bytes(d.port, inp.tone, "audio/wav", extra)), 431)


@case
def huge_url(d, api, cc, inp):
    req = b"GET /healthz?" + b"a" * (2 * MHD_HEADER_MEMORY) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    check_mhd_refusal(exchange(d.port, req), 414)


@case
def chunked_transfer_encoding(d, api, cc, inp):
    req = request_bytes(d.port, chunked(inp.mp3), "audio/mpeg",
                        b"Transfer-Encoding: chunked\r\n", length=False)
    (r,) = exchange(d.port, req)
    check_answer(api, cc, *r, chunks=10)


@case
def expect_100_continue(d, api, cc, inp):
    req = request_bytes(d.port, inp.mp3, "audio/mpeg", b"Expect: 100-continue\r\n")
    cont, r = exchange(d.port, req)
    assert cont[0] == 100, cont
    check_answer(api, cc, *r, chunks=10)


@case
def expect_100_continue_too_large(d, api, cc, inp):
    """A client that waits for 100 Continue is refused before it sends."""
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    try:
        sock.sendall(f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nContent-Type: audio/wav\r\n"
                     f"Expect: 100-continue\r\nContent-Length: {UPLOAD_LIMIT + 1}\r\n\r\n".encode())
        got = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    finally:
        sock.close()
    (r,) = read_responses(got)
    check_error(api, *r, 413, "payload_too_large")


@case
def http_1_0(d, api, cc, inp):
    (r,) = exchange(d.port, request_bytes(d.port, inp.tone, "audio/wav", version="1.0"))
    check_answer(api, cc, *r, chunks=1)


@case
def keep_alive_many_requests(d, api, cc, inp):
    """60 requests, good and bad, on one connection, each answered."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=60)
    try:
        conn.connect()
        sock = conn.sock
        for i in range(60):
            kind = i % 4
            if kind == 0:
                conn.request("GET", "/healthz")
            elif kind == 1:
                conn.request("POST", CLASSIFY, body=inp.tone, headers={"Content-Type": "audio/wav"})
            elif kind == 2:
                conn.request("POST", CLASSIFY, body=inp.noise[:4096],
                             headers={"Content-Type": "application/octet-stream"})
            else:
                conn.request("POST", CLASSIFY, body=inp.wav[:44], headers={"Content-Type": "audio/wav"})
            resp = conn.getresponse()
            body = resp.read()
            headers = {k.lower(): v for k, v in resp.getheaders()}
            if kind == 0:
                assert resp.status == 200 and json.loads(body) == {"status": "ok"}, (i, body)
            elif kind == 1:
                check_answer(api, cc, resp.status, headers, body, chunks=1)
            elif kind == 2:
                check_error(api, resp.status, headers, body, 415, "unsupported_media")
            else:
                check_error(api, resp.status, headers, body, 422, "unprocessable_audio")
            assert conn.sock is sock, f"request {i}: the server closed the connection"
    finally:
        conn.close()


def hang_up(port, data, after_s=0.0):
    """Sends data, waits, then disconnects without reading a byte (RST via
    SO_LINGER 0, as a crashed client would)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(data)
        time.sleep(after_s)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


@case
def client_gone_mid_upload(d, api, cc, inp):
    req = request_bytes(d.port, inp.mp3, "audio/mpeg")
    hang_up(d.port, req[:len(req) // 3], after_s=0.05)


@case
def client_gone_before_the_answer(d, api, cc, inp):
    # The whole upload arrives; the client leaves while it is classified.
    hang_up(d.port, request_bytes(d.port, inp.mp3, "audio/mpeg"), after_s=0.01)


# Issue 12, findings 3 to 6: framing two parsers could read differently,
# targets that decode to something else, queries MHD chokes on. Each is
# refused with a JSON error and Connection: close, and what follows it on
# the connection (here a request for /metrics) is never served: exactly one
# answer comes back. Before, the smuggled request was answered, or the
# connection hung (unknown codings) or closed without a word (the query).

SMUGGLED = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


def check_refused_alone(api, data, port, status, code, phrase=None):
    t0 = time.monotonic()
    answers = exchange(port, data, timeout=10)
    assert len(answers) == 1, [a[:2] for a in answers]
    (r,) = answers
    check_error(api, *r, status, code, phrase)
    assert r[1].get("connection", "").lower() == "close", r[1]
    assert time.monotonic() - t0 < 5, "refused only after a timeout"


def classify_head(extra, path=CLASSIFY, version="1.1"):
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Type: audio/wav\r\n".encode()
            + extra + b"\r\n")


@case
def content_length_and_chunked(d, api, cc, inp):
    data = classify_head(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + \
        b"0\r\n\r\n" + SMUGGLED
    check_refused_alone(api, data, d.port, 400, "bad_request", "both Content-Length")


@case
def two_content_lengths(d, api, cc, inp):
    for lengths in ((3, 61), (61, 3), (3, 3)):
        extra = b"".join(b"Content-Length: %d\r\n" % n for n in lengths)
        data = classify_head(extra) + b"abc" + SMUGGLED + b"x" * 20
        check_refused_alone(api, data, d.port, 400, "bad_request", "more than one Content-Length")


@case
def unknown_transfer_encoding(d, api, cc, inp):
    for coding in (b"gzip", b"identity", b"gzip, chunked", b"chunked ", b"g\x85zip"):
        data = classify_head(b"Transfer-Encoding: " + coding + b"\r\n") + b"0\r\n\r\n" + SMUGGLED
        check_refused_alone(api, data, d.port, 501, "not_implemented")
    data = b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n" + SMUGGLED
    check_refused_alone(api, data, d.port, 501, "not_implemented")


@case
def repeated_or_http10_transfer_encoding(d, api, cc, inp):
    data = classify_head(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n") + \
        b"0\r\n\r\n" + SMUGGLED
    check_refused_alone(api, data, d.port, 400, "bad_request", "more than one Transfer-Encoding")
    data = classify_head(b"Transfer-Encoding: chunked\r\n", version="1.0") + b"0\r\n\r\n"
    check_refused_alone(api, data, d.port, 400, "bad_request", "HTTP/1.0")


@case
def control_bytes_in_the_target(d, api, cc, inp):
    for target in (b"/metrics%00", b"/healthz%00x", b"/v1/model%0d%0aX-Forged:%20yes",
                   b"/healthz\x01", b"/healthz?trim=0%00", b"/%7f"):
        data = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n" + SMUGGLED
        check_refused_alone(api, data, d.port, 400, "bad_request", "control character")
    data = classify_head(b"Content-Length: %d\r\n" % len(inp.tone), path=CLASSIFY + "%00x")
    check_refused_alone(api, data + inp.tone, d.port, 400, "bad_request", "control character")


@case
def query_parameter_flood(d, api, cc, inp):
    flood = "&".join(f"p{i}=1" for i in range(500))  # ~3.4 KB: MHD's pool gave out
    for path in ("/healthz", "/v1/model", CLASSIFY):
        data = f"GET {path}?{flood} HTTP/1.1\r\nHost: x\r\n\r\n".encode() + SMUGGLED
        check_refused_alone(api, data, d.port, 414, "uri_too_long")
    many = "&".join(["trim=1"] * 33)
    data = classify_head(b"Content-Length: %d\r\n" % len(inp.tone), path=f"{CLASSIFY}?{many}")
    check_refused_alone(api, data + inp.tone, d.port, 414, "uri_too_long")
    long_value = "trim=" + "1" * 1100
    data = f"GET /healthz?{long_value} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    check_refused_alone(api, data, d.port, 414, "uri_too_long")
    # Within the limits, a query is as before.
    (r,) = exchange(d.port, request_bytes(d.port, inp.tone, "audio/wav",
                                          path=f"{CLASSIFY}?trim=1&segments=0&mel=0"))
    check_answer(api, cc, *r, chunks=1)
@case
def mp4_video_track_only(d, api, cc, inp):
    check_error(api, *post(d, inp.video_only_mp4(), "audio/mp4"), 415, "unsupported_media",
                "video track")


@case
def mp4_video_and_audio(d, api, cc, inp):
    check_error(api, *post(d, inp.video_and_audio_mp4(), "application/octet-stream"), 415,
                "unsupported_media", "video track")


@case
def mp4_fragmented(d, api, cc, inp):
    check_error(api, *post(d, inp.fragmented_m4a(), "audio/mp4"), 415, "unsupported_media",
                "fragmented MP4")


@case
def mp4_compressed_moov(d, api, cc, inp):
    # 256 KB that lavf would inflate into 256 MB and parse as a moov.
    body = mp4box.with_compressed_moov(inp.m4a, 256 << 20)
    check_error(api, *post(d, body, "audio/mp4"), 415, "unsupported_media", "cmov")


@case
def mp4_moov_cut_short(d, api, cc, inp):
    data = inp.faststart_m4a()
    moov = data.index(b"moov") - 4
    size = struct.unpack(">I", data[moov:moov + 4])[0]
    check_error(api, *post(d, data[:moov + size // 2], "audio/mp4"), 422,
                "unprocessable_audio", "'moov' box claims more bytes")


@case
def mp4_mdat_cut_short(d, api, cc, inp):
    # moov first: the samples that arrived (a third of them) are analysed.
    data = inp.faststart_m4a()
    mdat = data.index(b"mdat") + 4
    ans = check_answer(api, cc, *post(d, data[:mdat + (len(data) - mdat) // 3], "audio/mp4"))
    assert 9.0 < ans["duration_s"] < 11.0, ans


@case
def mp4_dref_to_etc_passwd(d, api, cc, inp):
    body = mp4box.with_alias(inp.m4a, "/etc/passwd")
    err = check_error(api, *post(d, body, "audio/mp4"), 422, "unprocessable_audio")
    assert "root:" not in err["error"]["message"], err


@case
def mp4_url_dref(d, api, cc, inp):
    """lavf reads no 'url ' reference: the track's samples come from the upload."""
    check_answer(api, cc, *post(d, mp4box.with_url(inp.m4a, "file:///etc/passwd"), "audio/mp4"),
                 chunks=10)


@case
def mp4_sample_table_claims(d, api, cc, inp):
    check_error(api, *post(d, inp.sample_table_bomb(hidden=False), "audio/mp4"), 422,
                "unprocessable_audio", "sample table claims more")


@case
def mp4_sample_table_hidden(d, api, cc, inp):
    check_error(api, *post(d, inp.sample_table_bomb(hidden=True), "audio/mp4"), 422,
                "unprocessable_audio")


def good_upload_works(d, api, cc, inp):
    check_answer(api, cc, *post(d, inp.tone, "audio/wav"), chunks=1)


# --- the tests --------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case_then_good_upload(hd, api, check_classify, inputs, name):
    CASES[name](hd, api, check_classify, inputs)
    assert hd.alive(), f"daemon died on {name}:\n{hd.log_tail()}"
    good_upload_works(hd, api, check_classify, inputs)


def test_memory_does_not_grow_across_repeats(hd, api, check_classify, inputs, genred_bin):
    """VmRSS after ROUNDS more rounds of every case stays within
    RSS_GROWTH_LIMIT_KB of VmRSS after a warm-up round, both measured idle.
    The warm-up touches what stays (model workspaces, thread stacks, pages
    of the libraries); what is left is what a leak would add: each round
    uploads ~35 MB (the 8-channel file alone is 20 MB) in ~70 requests, so
    losing any upload-sized buffer fails. Measured on a correct build: 0 to
    1 MB of growth; with the upload buffers of refused multipart requests
    leaked on purpose (~0.5 MB a round), 2 to 7.5 MB: leaks that small are
    left to test_valgrind.py and LeakSanitizer, which see every block.

    Under AddressSanitizer (the ASan+UBSan run of .ci/run) RSS says nothing
    (the allocator quarantines freed memory): the rounds still run and every
    status is still checked, and LeakSanitizer judges leaks when the daemon
    exits (the fixture requires exit status 0)."""
    sanitized = b"__asan_init" in pathlib.Path(genred_bin).read_bytes()

    def one_round():
        for fn in CASES.values():
            fn(hd, api, check_classify, inputs)
        good_upload_works(hd, api, check_classify, inputs)

    def idle_rss():
        time.sleep(1.0)  # connection threads of hung-up clients finish
        return rss_kb(hd)

    one_round()
    samples = [idle_rss()]
    for _ in range(ROUNDS):
        one_round()
        samples.append(idle_rss())
    growth = samples[-1] - samples[0]
    print(f"\nidle VmRSS kB after warm-up and each of {ROUNDS} rounds: {samples}; "
          f"growth {growth} kB (limit {RSS_GROWTH_LIMIT_KB}"
          f"{'; not judged under ASan' if sanitized else ''})")
    assert hd.alive()
    if not sanitized:
        assert growth <= RSS_GROWTH_LIMIT_KB, \
            f"VmRSS grew {growth} kB over {ROUNDS} rounds: {samples}"


# --- slow clients and shutdown (issue 12, findings 1, 2 and 7) ----------------
#
# Each test starts its own daemon with the settings it needs. Floods are a
# few hundred connections driven from one thread (Flood), bounded in count
# and time; what the daemon must keep doing meanwhile is measured from other
# threads.

FLOOD = 300          # connections: more than max_connections (256) + 8
PROBE_LIMIT_S = 1.0  # what a probe may take during a flood
OTHER_CLIENT = "127.0.0.2"  # a second client address (all of 127/8 is local)


class Flood(threading.Thread):
    """n connections that each send `head` and then `drip` every `every_s`
    seconds, forever: a header line (slowloris) or a body byte (slow
    upload). A connection the server ends is recorded (its lifetime, and
    the answer it got if any) and, with reopen, opened again at the next
    drip, as slowhttptest does (so at most n connections a drip). Runs
    until stop()."""

    def __init__(self, port, n, head, drip, every_s, reopen=True):
        super().__init__(daemon=True)
        self.port, self.n, self.head, self.drip = port, n, head, drip
        self.every_s, self.reopen = every_s, reopen
        self.ended = []            # (lifetime s, bytes the server sent)
        self.opened = 0
        self._halt = threading.Event()
        self._socks = {}           # socket -> (opened at, bytes received)
        self._reopen_due = 0       # ended since the last drip
        self.start()

    def _open(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s.setblocking(False)
            s.sendall(self.head)
        except OSError:
            self.ended.append((0.0, b""))
            return
        self.opened += 1
        self._socks[s] = (time.monotonic(), b"")

    def _end(self, s):
        opened, got = self._socks.pop(s)
        s.close()
        self.ended.append((time.monotonic() - opened, got))
        self._reopen_due += self.reopen

    def run(self):
        for _ in range(self.n):
            self._open()
        next_drip = time.monotonic() + self.every_s
        while not self._halt.is_set() and (self._socks or self._reopen_due):
            readable, _, _ = select.select(list(self._socks), [], [], 0.05)
            for s in readable:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:  # an answer: kept until the server closes
                    opened, got = self._socks[s]
                    self._socks[s] = (opened, got + data)
                else:
                    self._end(s)
            if not self._socks:
                time.sleep(0.05)
            if time.monotonic() >= next_drip:
                next_drip += self.every_s
                for _ in range(self._reopen_due):
                    self._open()
                self._reopen_due = 0
                for s in list(self._socks):
                    try:
                        s.send(self.drip)
                    except OSError:
                        pass  # ended: select sees it next round
        for s in list(self._socks):
            s.close()

    def stop(self):
        self._halt.set()
        self.join(30)
        assert not self.is_alive()


def slowloris(port, n=FLOOD, every_s=1.0, reopen=True):
    return Flood(port, n, b"GET / HTTP/1.1\r\nHost: x\r\nX-a: b\r\n", b"X-a: b\r\n", every_s, reopen)


def metric(d, name, ops=True):
    text = d.request("GET", "/metrics", ops=ops, timeout=5).text
    m = re.search(rf"^{name} (\d+)$", text, flags=re.M)
    assert m, f"no {name} in /metrics"
    return int(m.group(1))


class Prober(threading.Thread):
    """GETs /healthz and /readyz in turn every 0.1 s on the given listener
    until stop(); records (path, status or error, seconds)."""

    def __init__(self, url, source=None):
        super().__init__(daemon=True)
        self.url, self.source = url, source
        self.results = []
        self._halt = threading.Event()
        self.start()

    def run(self):
        host, port = self.url.rsplit("/", 1)[1].split(":")
        paths = ["/healthz", "/readyz"]
        while not self._halt.is_set():
            path = paths[len(self.results) % 2]
            t0 = time.monotonic()
            try:
                conn = http.client.HTTPConnection(
                    host, int(port), timeout=5,
                    source_address=(self.source, 0) if self.source else None)
                conn.request("GET", path)
                status = conn.getresponse().status
                conn.close()
            except OSError as e:
                status = repr(e)
            self.results.append((path, status, time.monotonic() - t0))
            self._halt.wait(0.1)

    def stop(self):
        self._halt.set()
        self.join(30)

    def check(self):
        assert len(self.results) >= 20, self.results
        bad = [r for r in self.results if r[1] != 200 or r[2] > PROBE_LIMIT_S]
        assert not bad, f"{len(bad)} of {len(self.results)} probes failed or were slow: {bad[:5]}"
        return max(r[2] for r in self.results)


def classify_from(port, body, source):
    """POST /v1/classify from another client address; (status, seconds)."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        conn.request("POST", CLASSIFY, body=body, headers={"Content-Type": "audio/mpeg"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - t0
    finally:
        conn.close()


def test_header_block_has_a_deadline_bytes_do_not_restart(start_daemon):
    """Finding 1's cause: MHD's idle timeout restarts with every byte, so a
    header line every few seconds held a connection forever. A connection
    that dribbles header lines is cut at header_timeout_s, without an
    answer; so is one kept alive without a next request."""
    d = start_daemon({"header-timeout-s": 2, "idle-timeout-s": 30, "ops-port": 0})
    flood = slowloris(d.port, n=1, every_s=0.25, reopen=False)
    keep = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    keep.request("GET", "/healthz")
    assert keep.getresponse().read() == b'{"status":"ok"}'
    t_keep = time.monotonic()
    assert closed_by_peer(keep.sock, timeout=6)
    kept = time.monotonic() - t_keep
    flood.join(10)
    keep.close()
    ((lived, got),) = flood.ended
    assert got == b"", got[:200]
    assert 1.8 <= lived <= 3.5, f"dribbling connection lived {lived:.2f} s"
    assert 1.8 <= kept <= 3.5, f"idle keep-alive connection lived {kept:.2f} s"
    # Counted when MHD has closed them, a moment after they ended here.
    deadline = time.monotonic() + 5
    while metric(d, "genred_header_timeouts_total") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(d, "genred_header_timeouts_total") == 2


def closed_by_peer(sock, timeout):
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_slowloris_flood_leaves_probes_and_a_classification_answered(start_daemon, inputs):
    """Finding 1, as slowhttptest -H ran it (a few hundred connections here,
    1000 there): 300 connections from one address dribble header lines and
    reconnect when cut. With max_connections_per_client they hold at most
    64 connections; each is cut at header_timeout_s; /healthz and /readyz
    answer within 1 s on the ops port and on the main port (from another
    address), and a real classification from another address completes."""
    d = start_daemon({"ops-port": 0, "header-timeout-s": 3,
                      "max-connections-per-client": 64})
    flood = slowloris(d.port)
    try:
        time.sleep(1.0)  # every connection opened, the first ones refused
        t_start = time.monotonic()
        ops = Prober(d.ops_url)
        api = Prober(d.url, source=OTHER_CLIENT)
        held = [metric(d, "genred_connections")]
        status, took = classify_from(d.port, inputs.mp3, OTHER_CLIENT)
        while time.monotonic() - t_start < 7.0:
            held.append(metric(d, "genred_connections"))
            time.sleep(0.5)
        ops.stop()
        api.stop()
    finally:
        flood.stop()
    assert status == 200, status
    ops_max, api_max = ops.check(), api.check()
    cut = [lived for lived, got in flood.ended if lived > 0.5]
    print(f"\nslowloris x{FLOOD}, 64 per client: {flood.opened} connections opened, "
          f"{len(flood.ended)} ended ({len(cut)} cut after {min(cut, default=0):.1f}-"
          f"{max(cut, default=0):.1f} s); daemon held {min(held)}-{max(held)}; "
          f"probes: ops max {ops_max * 1e3:.0f} ms over {len(ops.results)}, "
          f"api max {api_max * 1e3:.0f} ms over {len(api.results)}; classify {took:.2f} s")
    assert max(held) <= 64 + 4, held  # the flood's 64, and this test's own
    assert cut and max(cut) < 3 + 1.5, f"connections outlived header_timeout_s: {max(cut)}"
    assert metric(d, "genred_header_timeouts_total") >= 64


def test_slowloris_flood_fills_the_port_not_the_ops_port(start_daemon):
    """The same flood without a per-client limit takes every connection of
    the main port (max_connections and its headroom for probes); the ops
    listener has connections of its own, and its /healthz and /readyz
    answer within 1 s throughout."""
    d = start_daemon({"ops-port": 0, "header-timeout-s": 3})
    flood = slowloris(d.port)
    try:
        time.sleep(1.0)
        ops = Prober(d.ops_url)
        held = []
        while len(held) < 14:
            held.append(metric(d, "genred_connections"))
            time.sleep(0.5)
        ops.stop()
    finally:
        flood.stop()
    ops_max = ops.check()
    print(f"\nslowloris x{FLOOD}, no client limit: daemon held {min(held)}-{max(held)} "
          f"connections; ops probes max {ops_max * 1e3:.0f} ms over {len(ops.results)}")
    assert max(held) >= 256, f"the flood never filled the port: {held}"


def test_slow_uploads_hold_no_classification_slot_and_get_408(start_daemon, api,
                                                              check_classify, inputs):
    """Finding 2: uploads of one byte a second held the classification slots
    while they uploaded, and a real upload got 503. Now 200 of them, with a
    single classification slot, leave it free: a real upload is answered at
    once; each slow one gets 408 (JSON, Connection: close) once 10 s of it
    have come under min_upload_rate."""
    d = start_daemon({"ops-port": 0, "max-active-requests": 1, "workers": 1})
    head = (f"POST {CLASSIFY} HTTP/1.1\r\nHost: x\r\nContent-Type: audio/mpeg\r\n"
            f"Content-Length: 100000\r\n\r\n").encode()
    slow = Flood(d.port, 200, head, b"x", 1.0, reopen=False)
    try:
        time.sleep(1.5)
        assert metric(d, "genred_connections") >= 200
        t0 = time.monotonic()
        r = post(d, inputs.mp3, "audio/mpeg", timeout=30)
        took = time.monotonic() - t0
        check_answer(api, check_classify, *r, chunks=10)
        assert took < 8, f"the real upload waited {took:.1f} s"
        slow.join(20)
    finally:
        slow.stop()
    assert len(slow.ended) == 200, len(slow.ended)
    lifetimes = sorted(lived for lived, _ in slow.ended)
    for lived, got in slow.ended:
        (resp,) = read_responses(got)
        check_error(api, *resp, 408, "request_timeout", "slower than")
        assert resp[1]["connection"].lower() == "close"
    print(f"\n200 slow uploads: a real one answered in {took:.2f} s; 408 after "
          f"{lifetimes[0]:.1f}-{lifetimes[-1]:.1f} s")
    assert 9.5 <= lifetimes[0] and lifetimes[-1] <= 14, lifetimes
    assert metric(d, "genred_slow_uploads_total") == 200


def queued_uploads_then_sigterm(start_daemon, inputs, shutdown_timeout_s, waiters=4):
    """One classification slot held by a 10-minute WAV analysed untrimmed,
    one chunk per forward pass; `waiters` 3-minute songs wait for it; then
    SIGTERM. Returns the daemon, its exit status and [(status, headers,
    body)] of the holder and the waiters."""
    d = start_daemon({"ops-port": 0, "workers": 1, "max-batch": 1, "max-active-requests": 1,
                      "max-upload-bytes": "32M", "max-duration-s": 900,
                      "shutdown-timeout-s": shutdown_timeout_s})
    long_wav = inputs.audio.long_wav.read_bytes()
    song = inputs.audio.song_mp3.read_bytes()
    answers = {}

    def send(i, body):
        try:
            answers[i] = raw_post(d.port, body, "?trim=0")
        except OSError as e:
            answers[i] = repr(e)

    threads = [threading.Thread(target=send, args=(0, long_wav), daemon=True)]
    threads[0].start()
    deadline = time.monotonic() + 30
    while metric(d, "genred_active_requests") < 1:
        assert time.monotonic() < deadline, "the holder never started"
        time.sleep(0.01)
    for i in range(1, waiters + 1):
        threads.append(threading.Thread(target=send, args=(i, song), daemon=True))
        threads[-1].start()
    while metric(d, "genred_queue_depth") < waiters:
        assert time.monotonic() < deadline, "the uploads never queued"
        time.sleep(0.01)
    d.proc.send_signal(signal.SIGTERM)
    rc = d.proc.wait(timeout=120)
    for t in threads:
        t.join(30)
    return d, rc, [answers.get(i) for i in range(waiters + 1)]


def raw_post(port, body, query):
    """POST /v1/classify; (status, headers, body) as the server sent them."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", CLASSIFY + query, body=body,
                     headers={"Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def stopped_line(d):
    lines = [json.loads(x) for x in d.log_tail(1 << 20).splitlines() if '"stopped"' in x]
    assert len(lines) == 1, d.log_tail()
    return lines[0]


def test_sigterm_lets_waiting_uploads_finish(start_daemon, api, check_classify, inputs):
    """Finding 7: SIGTERM answered uploads waiting for a classification slot
    with an immediate 503 "too many classifications in flight". Within
    shutdown_timeout_s they now wait their turn and are answered, with
    Connection: close, and nothing is cancelled."""
    d, rc, answers = queued_uploads_then_sigterm(start_daemon, inputs, 120)
    assert rc == 0, d.log_tail()
    for i, a in enumerate(answers):
        assert isinstance(a, tuple), (i, a)
        check_answer(api, check_classify, *a)
        assert a[1]["connection"].lower() == "close", (i, a[1])
    assert stopped_line(d)["requests_cancelled"] == 0


def test_sigterm_out_of_time_cancels_waiting_uploads_and_counts_them(start_daemon, api, inputs):
    """Past shutdown_timeout_s, the uploads still waiting get 503 "server is
    shutting down" at once, each counted in the exit log line's
    requests_cancelled (which said 0), and the daemon exits 0. The one
    running gives up at its next check (503), or, in a decode slower than
    the grace after the timeout (sanitizer builds), is cut with the
    connection; it is counted either way."""
    d, rc, answers = queued_uploads_then_sigterm(start_daemon, inputs, 0.5)
    assert rc == 0, d.log_tail()
    holder, waiting = answers[0], answers[1:]
    for a in waiting:
        assert isinstance(a, tuple), a
        check_error(api, *a, 503, "busy", "shutting down")
    if isinstance(holder, tuple) and holder[0] != 200:
        check_error(api, *holder, 503, "busy", "shutting down")
    cancelled = len(waiting) + (not isinstance(holder, tuple) or holder[0] != 200)
    assert stopped_line(d)["requests_cancelled"] == cancelled, (answers, stopped_line(d))
# --- MP4: what the cases cannot see from the answer alone --------------------

IN_ACCESS, IN_OPEN = 0x1, 0x20


class Watch:
    """An inotify watch on one file: opened() says whether anyone opened or
    read it since the watch began (or since the last call)."""

    def __init__(self, path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        wd = self.libc.inotify_add_watch(self.fd, str(path).encode(), IN_OPEN | IN_ACCESS)
        assert wd >= 0, os.strerror(ctypes.get_errno())

    def opened(self):
        try:
            return len(os.read(self.fd, 65536)) > 0
        except BlockingIOError:
            return False

    def close(self):
        os.close(self.fd)


def test_mp4_data_reference_opens_nothing(hd, api, inputs, tmp_path):
    """An MP4 whose track says its samples lie in another file: the daemon
    must not open it. The file named is the very M4A, watched with inotify.
    The control: ffprobe with data references enabled (lavf's enable_drefs
    and use_absolute_path) opens it and reads the track's packets from it,
    so the upload is a working reference and the watch sees its use."""
    target = tmp_path / "target.m4a"
    target.write_bytes(inputs.m4a)
    upload = tmp_path / "alias.m4a"
    upload.write_bytes(mp4box.with_alias(inputs.m4a, str(target)))
    watch = Watch(target)
    try:
        status, headers, body = post(hd, upload.read_bytes(), "audio/mp4")
        check_error(api, status, headers, body, 422, "unprocessable_audio", "no audio samples")
        assert not watch.opened(), f"the daemon opened {target}"

        probe = subprocess.run(["ffprobe", "-v", "error", "-enable_drefs", "1",
                                "-use_absolute_path", "1", "-count_packets", "-show_entries",
                                "stream=nb_read_packets", "-of", "csv=p=0", str(upload)],
                               capture_output=True, timeout=60)
        assert probe.returncode == 0, probe.stderr
        assert int(probe.stdout) > 1000, probe.stdout
        assert watch.opened(), "ffprobe followed the reference unseen: the watch is blind"
    finally:
        watch.close()
    assert hd.alive()


def vm_kb(d, field):
    return rss_kb(d, field)


def test_mp4_sample_table_bombs_cost_little_memory(start_daemon, api, inputs):
    """A sample table claiming 80 million samples made lavf fill a 1.9 GB
    index from a 0.5 MB upload. In its stbl it is refused before lavf runs;
    hidden elsewhere, AUDIO_LIBAV_MAX_ALLOC (64 MB) bounds the index lavf
    may allocate, the hidden one just under the cap included. The daemon's
    peak RSS (VmHWM) may grow by 160 MB at most over all three."""
    d = start_daemon({"workers": 1})
    before = vm_kb(d, "VmHWM")
    for body in (inputs.sample_table_bomb(hidden=False), inputs.sample_table_bomb(hidden=True),
                 inputs.sample_table_bomb(hidden=True, count=2_700_000)):
        status, headers, raw = post(d, body, "audio/mp4")
        check_error(api, status, headers, raw, 422, "unprocessable_audio")
    grown_mb = (vm_kb(d, "VmHWM") - before) / 1024
    print(f"\npeak RSS grew {grown_mb:.0f} MB over the sample-table bombs")
    assert grown_mb < 160, f"peak RSS grew {grown_mb:.0f} MB"
