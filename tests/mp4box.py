"""mp4box.py - reads and rewrites the boxes of MP4/M4A files, for tests that
need an MP4 no encoder writes (a data reference to another file, a sample
table that lies, a moov cut short).

A file is a list of Box(type, payload); container boxes (CONTAINERS) hold
their children in `boxes` instead. write() lays a tree out again with fresh
sizes. Sample offsets (stco) are not adjusted, so rewrite only files whose
moov comes after the mdat (ffmpeg's default without -movflags faststart), or
keep every box before the mdat the same length.

What it does not do: validate anything (these files are meant to be wrong).
"""
import struct
import zlib

CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"dinf", b"stbl", b"edts", b"udta", b"mvex"}


class Box:
    def __init__(self, kind, payload=b"", boxes=None):
        self.kind = kind
        self.payload = payload
        self.boxes = boxes

    def find(self, *path):
        """The first descendant along path (types), or None."""
        node = self
        for kind in path:
            node = next((b for b in node.boxes or [] if b.kind == kind), None)
            if node is None:
                return None
        return node


def parse(data, start=0, end=None):
    """The boxes of data[start:end]; a box claiming past the end keeps what is there."""
    end = len(data) if end is None else end
    out, at = [], start
    while end - at >= 8:
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", data[at + 8:at + 16])[0], 16
        elif size == 0:
            size = end - at
        if size < head:
            break
        stop = min(at + size, end)
        body = data[at + head:stop]
        if kind in CONTAINERS:
            out.append(Box(kind, boxes=parse(data, at + head, stop)))
        else:
            out.append(Box(kind, body))
        at = stop
    return out


def box(kind, payload):
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def write(boxes):
    return b"".join(box(b.kind, write(b.boxes) if b.boxes is not None else b.payload)
                    for b in boxes)


def root(data):
    return Box(b"root", boxes=parse(data))


def audio_track(top):
    """The first trak whose handler is 'soun'."""
    for trak in top.find(b"moov").boxes:
        hdlr = trak.find(b"mdia", b"hdlr")
        if trak.kind == b"trak" and hdlr is not None and hdlr.payload[8:12] == b"soun":
            return trak
    raise ValueError("no audio track")


def alias_record(path):
    """A QuickTime 'alis' data reference naming the absolute path (alias
    record field 2, with ':' for '/' and no volume name), in the layout
    lavf's mov_read_dref() reads; lavf 5.1 then names path in its "Skipped
    opening external track" warning."""
    name = path.rsplit("/", 1)[-1].encode()[:63]
    fixed = (bytes(10) + bytes([0]) + bytes(27) + bytes(12) + bytes([len(name)]) +
             name.ljust(63, b"\0") + bytes(16) + struct.pack(">hh", 1, 1) + bytes(16))
    target = path.replace("/", ":").encode()
    field = struct.pack(">hH", 2, len(target)) + target + (b"\0" if len(target) % 2 else b"")
    record = fixed + field + struct.pack(">hH", -1, 0)
    return box(b"alis", b"\0\0\0\0" + record)  # version 0, flags 0: not self-contained


def with_alias(data, path):
    """data (moov after mdat) with its audio track's samples said to lie in
    the file at path."""
    top = root(data)
    dref = audio_track(top).find(b"mdia", b"minf", b"dinf", b"dref")
    dref.payload = b"\0\0\0\0" + struct.pack(">I", 1) + alias_record(path)
    return write(top.boxes)


def with_url(data, url):
    """data with its audio track's data reference a 'url ' entry naming url
    (flags 0: the samples are elsewhere)."""
    top = root(data)
    dref = audio_track(top).find(b"mdia", b"minf", b"dinf", b"dref")
    dref.payload = (b"\0\0\0\0" + struct.pack(">I", 1) +
                    box(b"url ", b"\0\0\0\0" + url.encode() + b"\0"))
    return write(top.boxes)


def with_compressed_moov(data, inflated_size):
    """An ftyp and a moov holding only a cmov whose zlib stream inflates to
    inflated_size zero bytes (a decompression bomb for lavf's mov_read_cmov)."""
    ftyp = next(b for b in parse(data) if b.kind == b"ftyp")
    packed = zlib.compress(bytes(inflated_size), 9)
    cmov = box(b"cmov", box(b"dcom", b"zlib") + box(b"cmvd", struct.pack(">I", inflated_size) + packed))
    return box(b"ftyp", ftyp.payload) + box(b"moov", cmov)


def with_sample_count(data, count):
    """data with a constant-size stsz claiming count samples and an stsc
    putting them all in the first chunk: a sample table far larger than the
    file."""
    top = root(data)
    stbl = audio_track(top).find(b"mdia", b"minf", b"stbl")
    stbl.find(b"stsz").payload = b"\0\0\0\0" + struct.pack(">II", 16, count)
    stbl.find(b"stsc").payload = b"\0\0\0\0" + struct.pack(">IIII", 1, 1, count, 1)
    return write(top.boxes)
