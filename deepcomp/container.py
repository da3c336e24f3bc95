"""The deepcomp file: magic, version, a JSON header, binary records, checksums.

Layout (all integers little-endian)::

    0   8 bytes  magic  b"DCMP\\r\\n\\x1a\\n"
    8   u16      format version (1)
    10  u16      flags (bit 0: header is zlib-compressed)
    12  u32      header length H
    16  H bytes  header: UTF-8 JSON (an object), zlib-compressed if flag 0
    .   u32      CRC-32 of the header bytes
    .   records  the binary records, back to back; their lengths and CRC-32s
                 are listed in the header under "records"
    .   u32      CRC-32 of every byte before it (the file checksum)

No pickle anywhere; parsing is strict (every length, offset and checksum is
checked) and every problem raises ``DeepCompError``.  Files are written
atomically (temporary file, then rename).  See docs/FORMAT.md.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints import atomic_write_bytes
from .errors import DeepCompError

MAGIC = b"DCMP\r\n\x1a\n"
VERSION = 1
FLAG_ZLIB_HEADER = 1
SUFFIX = ".dcmp"
_PREFIX = struct.Struct("<8sHHI")
_U32 = struct.Struct("<I")
MAX_HEADER = 64 << 20


@dataclass
class Container:
    """A parsed file: the header (a dict) and the records (bytes)."""

    header: dict
    records: list[bytes] = field(default_factory=list)

    def add(self, data: bytes) -> int:
        """Append a record; returns its index."""
        self.records.append(bytes(data))
        return len(self.records) - 1


def to_bytes(container: Container, compress_header: bool = True) -> bytes:
    header = dict(container.header)
    header["records"] = [[len(r), zlib.crc32(r)] for r in container.records]
    text = json.dumps(header, separators=(",", ":"), sort_keys=False).encode("utf-8")
    flags = 0
    if compress_header:
        text = zlib.compress(text, 9)
        flags |= FLAG_ZLIB_HEADER
    parts = [_PREFIX.pack(MAGIC, VERSION, flags, len(text)), text, _U32.pack(zlib.crc32(text))]
    parts.extend(container.records)
    body = b"".join(parts)
    return body + _U32.pack(zlib.crc32(body))


def from_bytes(data: bytes, source: str = "file") -> Container:
    """Parse and verify a deepcomp file held in memory."""
    view = memoryview(data)
    if len(data) < _PREFIX.size + 2 * _U32.size:
        raise DeepCompError(f"{source} is not a deepcomp file (too short: {len(data)} bytes)")
    magic, version, flags, hlen = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise DeepCompError(f"{source} is not a deepcomp file (wrong magic bytes)")
    if version != VERSION:
        raise DeepCompError(f"{source} has format version {version}; this deepcomp reads version {VERSION}")
    if flags & ~FLAG_ZLIB_HEADER:
        raise DeepCompError(f"{source} uses unknown format flags {flags:#x}")
    (file_crc,) = _U32.unpack_from(view, len(data) - 4)
    if zlib.crc32(view[:-4]) != file_crc:
        raise DeepCompError(f"{source} is corrupt (file checksum mismatch; truncated or modified)")
    pos = _PREFIX.size
    if hlen > MAX_HEADER or pos + hlen + 4 > len(data) - 4:
        raise DeepCompError(f"{source} is corrupt (header length {hlen} out of range)")
    raw = bytes(view[pos : pos + hlen])
    pos += hlen
    (hcrc,) = _U32.unpack_from(view, pos)
    pos += 4
    if zlib.crc32(raw) != hcrc:
        raise DeepCompError(f"{source} is corrupt (header checksum mismatch)")
    try:
        if flags & FLAG_ZLIB_HEADER:
            raw = zlib.decompress(raw)
        header = json.loads(raw.decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeepCompError(f"{source} is corrupt (unreadable header: {exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("records"), list):
        raise DeepCompError(f"{source} is corrupt (header without a record list)")
    records = []
    end = len(data) - 4
    for i, entry in enumerate(header["records"]):
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, int) and x >= 0 for x in entry)):
            raise DeepCompError(f"{source} is corrupt (bad entry for record {i})")
        length, crc = entry
        if pos + length > end:
            raise DeepCompError(f"{source} is corrupt (record {i} runs past the end)")
        rec = bytes(view[pos : pos + length])
        if zlib.crc32(rec) != crc:
            raise DeepCompError(f"{source} is corrupt (record {i} checksum mismatch)")
        records.append(rec)
        pos += length
    if pos != end:
        raise DeepCompError(f"{source} is corrupt ({end - pos} unexpected bytes after the records)")
    return Container(header=header, records=records)


def write(path: str | os.PathLike, container: Container) -> int:
    """Write atomically; returns the file size in bytes."""
    data = to_bytes(container)
    atomic_write_bytes(path, data)
    return len(data)


def read(path: str | os.PathLike) -> Container:
    path = Path(path)
    if not path.is_file():
        raise DeepCompError(f"file not found: {path}")
    return from_bytes(path.read_bytes(), source=str(path))


def is_deepcomp_file(path: str | os.PathLike) -> bool:
    """True if the file starts with the deepcomp magic bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False
