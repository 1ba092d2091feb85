"""Which compression a TFRecord file uses, and streaming gzip / zlib decompression.

TensorFlow's `TFRecordOptions(compression_type="GZIP")` writes the whole file as one gzip
stream, "ZLIB" as one zlib stream; the records inside are framed as usual. The kind is read
from the content, not the name: a file whose first 12 bytes are a valid record header (its
length CRC matches) is uncompressed, else the gzip magic (1f 8b) or a zlib header
(deflate, (CMF * 256 + FLG) % 31 == 0) decides. Other compressors (bzip2, xz, zstd, lz4, zip)
are recognised by their magic bytes and rejected with one line. Decompression is streamed in
pieces of at most CHUNK bytes, so a file of many GB never sits in memory at once; damage is a
DataError naming the file and the compressed bytes where zlib noticed it.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from datamodules.errors import DataError
from datamodules.tfrecord_crc import masked_crc

GZIP, ZLIB = "gzip", "zlib"
CHUNK = 1 << 16  # compressed bytes read at a time; also the most decompressed bytes per piece
SUFFIXES = {".gz": GZIP, ".zlib": ZLIB}  # names that announce a compression
# Magic bytes of compressors TensorFlow does not use for TFRecords: (name, tool to undo it).
_OTHER = {b"BZh": ("bzip2", "bunzip2"), b"\xfd7zXZ\x00": ("xz", "unxz"),
          b"\x28\xb5\x2f\xfd": ("zstd", "unzstd"), b"\x04\x22\x4d\x18": ("lz4", "unlz4"),
          b"PK\x03\x04": ("zip", "unzip")}


def _is_record_header(head: bytes) -> bool:
    if len(head) < 12:
        return False
    return masked_crc(head[:8]) == struct.unpack_from("<I", head, 8)[0]


def _is_zlib_header(head: bytes) -> bool:
    if len(head) < 2:
        return False
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0


def compression_of(head: bytes, path: str | os.PathLike) -> str | None:
    """GZIP, ZLIB or None (uncompressed) for a file starting with `head` (its first 12 bytes).

    Raises DataError for other compressors, and for a file named *.gz / *.zlib whose content
    is neither that nor an uncompressed TFRecord.
    """
    if not head or _is_record_header(head):
        return None
    if head[:2] == b"\x1f\x8b":
        return GZIP
    if _is_zlib_header(head):
        return ZLIB
    for magic, (name, tool) in _OTHER.items():
        if head.startswith(magic):
            raise DataError(f"{path}: {name}-compressed; TFRecords are read uncompressed or "
                            f"gzip/zlib-compressed (decompress it first, e.g. `{tool}`)")
    named = SUFFIXES.get(Path(path).suffix.lower())
    if named is not None:
        raise DataError(f"{path}: named {Path(path).suffix} but not {named}-compressed (starts "
                        f"with bytes {head[:4].hex()}), nor an uncompressed TFRecord")
    return None


def detect_compression(path: str | os.PathLike) -> str | None:
    """The compression of the TFRecord file `path` from its first bytes (see compression_of)."""
    with open(path, "rb") as f:
        return compression_of(f.read(12), path)


def inflate(f: BinaryIO, kind: str, path: str | os.PathLike) -> Iterator[bytes]:
    """The decompressed content of the open file `f` (GZIP or ZLIB), piece by piece.

    Concatenated gzip members (`cat a.gz b.gz`) and zero padding after a gzip stream are read
    as gzip(1) reads them; anything else after the end of the stream is damage.
    """
    wbits = 31 if kind == GZIP else 15  # 16 + 15: gzip header and trailer; 15: zlib's
    d = zlib.decompressobj(wbits)
    fed = 0  # compressed bytes read so far
    while chunk := f.read(CHUNK):
        start, fed = fed, fed + len(chunk)
        data = chunk
        while data:
            if d.eof:  # a finished stream, and more bytes follow
                if kind == GZIP and data[:2] == b"\x1f\x8b":
                    d = zlib.decompressobj(wbits)
                elif kind == GZIP and not data.strip(b"\0"):
                    break
                else:
                    raise DataError(f"{path}: damaged: bytes after the end of the {kind} "
                                    f"stream, at compressed byte {fed - len(data)}")
            try:
                out = d.decompress(data, CHUNK)
            except zlib.error as e:
                raise DataError(f"{path}: {kind}-compressed data damaged in compressed bytes "
                                f"{start}-{fed} ({e})") from None
            if out:
                yield out
            data = d.unused_data if d.eof else d.unconsumed_tail
    try:
        rest = d.flush()
    except zlib.error as e:  # pragma: no cover - flush of a consumed stream rarely fails
        raise DataError(f"{path}: {kind}-compressed data damaged at its end ({e})") from None
    if rest:
        yield rest
    if not d.eof:
        raise DataError(f"{path}: {kind}-compressed data truncated: the stream ends early, at "
                        f"compressed byte {fed}")
