"""gmodel_file.py - the .gmodel container (docs/model-format.md), with the
Python standard library only: magic, format version, JSON header, padding,
little-endian float32 data, CRC-32.

write() and read() are all there is. scripts/get-model uses them on machines
without NumPy or PyTorch; train/gmodel.py builds on them to export and
rebuild PyTorch modules.

What it does not do: check the header's contents (src/model.c is the judge;
gmodel.py checks what it exports), or know any layer.
"""
import json
import os
import struct
import zlib

MAGIC = b"GENREDM\0"
FORMAT_VERSION = 2          # writes 2; reads 1 and 2
DATA_ALIGN = 64


class GModelError(ValueError):
    """A module or file that the .gmodel format cannot represent or that is
    malformed."""


def write(path, header, data):
    """Writes header (a dict; data.floats is set here) and data (float32
    values as little-endian bytes, e.g. array('f').tobytes() on a
    little-endian machine) to path, atomically. Returns the header as written."""
    if len(data) % 4:
        raise GModelError("data must be whole float32 values")
    header = dict(header, data={"floats": len(data) // 4})
    try:
        text = json.dumps(header, ensure_ascii=False, allow_nan=False, indent=1)
    except (TypeError, ValueError) as e:
        raise GModelError(f"header is not representable as JSON: {e}") from e
    hb = text.encode("utf-8")
    body = bytearray(MAGIC + struct.pack("<II", FORMAT_VERSION, len(hb)) + hb)
    body += b"\0" * (-len(body) % DATA_ALIGN)
    body += data
    body += struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(body)
    os.replace(tmp, path)
    return json.loads(text)


def read(path):
    """Checks the container of path (magic, version, lengths, padding, CRC)
    and returns (header dict, data as little-endian float32 bytes)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 20 or blob[:8] != MAGIC:
        raise GModelError(f"{path}: not a genred model file")
    version, hlen = struct.unpack_from("<II", blob, 8)
    if not 1 <= version <= FORMAT_VERSION:
        raise GModelError(f"{path}: unsupported format version {version}")
    if 16 + hlen + 4 > len(blob):
        raise GModelError(f"{path}: header length {hlen} does not fit")
    header = json.loads(blob[16:16 + hlen].decode("utf-8"))
    off = -(-(16 + hlen) // DATA_ALIGN) * DATA_ALIGN
    n = header.get("data", {}).get("floats")
    if not isinstance(n, int) or off + 4 * n + 4 != len(blob):
        raise GModelError(f"{path}: data.floats {n!r} does not match the file length")
    if any(blob[16 + hlen:off]):
        raise GModelError(f"{path}: padding is not zero")
    (crc,) = struct.unpack_from("<I", blob, len(blob) - 4)
    if zlib.crc32(blob[:-4]) & 0xFFFFFFFF != crc:
        raise GModelError(f"{path}: CRC mismatch (file corrupted?)")
    return header, bytes(blob[off:off + 4 * n])
