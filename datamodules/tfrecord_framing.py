"""TFRecord framing: reading and writing the records of a file, CRCs verified.

A record is: uint64 LE length, uint32 masked CRC-32C of those 8 bytes, the data, uint32
masked CRC-32C of the data. Both CRCs are verified; any damage is a DataError naming the
file and the byte offset of the record. Uncompressed files are memory-mapped; gzip / zlib
files (see tfrecord_compression) are decompressed as a stream, and their offsets count bytes
of the decompressed data (`record_place` says so in messages).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from datamodules.atomic import atomic_file
from datamodules.errors import DataError
from datamodules.tfrecord_compression import detect_compression, inflate
from datamodules.tfrecord_crc import masked_crc

_HEADER = struct.Struct("<QI")
_U32 = struct.Struct("<I")


def offset_text(offset: int, compression: str | None = None) -> str:
    """'byte offset N', naming the decompressed data for a compressed file."""
    suffix = f" of the {compression}-decompressed data" if compression else ""
    return f"byte offset {offset}{suffix}"


def record_place(path: str | os.PathLike, offset: int, compression: str | None = None) -> str:
    """'PATH: record at byte offset N' for messages about one record."""
    return f"{path}: record at {offset_text(offset, compression)}"


def _problem(path: Path, pos: int, compression: str | None) -> Callable[[str], DataError]:
    def error(what: str) -> DataError:
        if what == "bad length CRC" and pos == 0:
            what += " (not a TFRecord file, nor gzip/zlib-compressed?)"
        return DataError(f"{path}: {what} in record at {offset_text(pos, compression)}")
    return error


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """(byte offset, payload) of every record in `path`, CRCs verified.

    The compression (none, gzip or zlib) is detected from the file's first bytes.
    """
    path = Path(path)
    compression = detect_compression(path)
    if compression is None:
        yield from _mapped_records(path)
    else:
        with open(path, "rb") as f:
            yield from _streamed_records(path, _Reader(inflate(f, compression, path)).read,
                                         compression)


def _mapped_records(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_SEQUENTIAL)
            pos = 0
            while pos < size:
                error = _problem(path, pos, None)
                if size - pos < _HEADER.size:
                    raise error("truncated header (file ends)")
                header = mm[pos : pos + _HEADER.size]
                length, length_crc = _HEADER.unpack(header)
                if masked_crc(header[:8]) != length_crc:
                    raise error("bad length CRC")
                start = pos + _HEADER.size
                end = start + length + 4
                if end > size:
                    raise error(f"truncated data ({length} bytes announced, file ends)")
                data = mm[start : start + length]
                if masked_crc(data) != _U32.unpack_from(mm, start + length)[0]:
                    raise error("bad data CRC")
                yield pos, data
                pos = end


class _Reader:
    """Exactly-n-bytes reads (fewer only at the end) over an iterator of byte pieces."""

    def __init__(self, pieces: Iterator[bytes]):
        self._pieces = pieces
        self._buf = bytearray()

    def read(self, n: int) -> bytes:
        while len(self._buf) < n:
            piece = next(self._pieces, None)
            if piece is None:
                break
            self._buf += piece
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def _streamed_records(path: Path, read: Callable[[int], bytes],
                      compression: str) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while header := read(_HEADER.size):
        error = _problem(path, pos, compression)
        if len(header) < _HEADER.size:
            raise error("truncated header (data ends)")
        length, length_crc = _HEADER.unpack(header)
        if masked_crc(header[:8]) != length_crc:
            raise error("bad length CRC")
        body = read(length + 4)
        if len(body) < length + 4:
            raise error(f"truncated data ({length} bytes announced, data ends)")
        data = body[:length]
        if masked_crc(data) != _U32.unpack_from(body, length)[0]:
            raise error("bad data CRC")
        yield pos, data
        pos += _HEADER.size + length + 4


def frame_record(payload: bytes) -> bytes:
    """One record's bytes in TFRecord framing."""
    length = struct.pack("<Q", len(payload))
    return b"".join(
        (length, _U32.pack(masked_crc(length)), payload, _U32.pack(masked_crc(payload)))
    )


def write_records(path: str | os.PathLike, payloads: Iterable[bytes]) -> int:
    """Write an uncompressed TFRecord file atomically; returns the number of records."""
    n = 0
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        for payload in payloads:
            f.write(frame_record(payload))
            n += 1
    return n
