"""gzip / zlib TFRecords (as TensorFlow's TFRecordOptions(compression_type=...) writes them).

The files are written here without project code: records framed by the independent writer
of test_tfrecord.py (bitwise CRC-32C), the whole file then compressed with Python's gzip /
zlib modules. A compressed file must yield exactly the records (offsets and payloads) of the
uncompressed one; anything unreadable is one line naming the file and the place.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib

import numpy as np
import pytest
from test_tfrecord import codes, frame, y8m_record

from datamodules.errors import DataError
from datamodules.tfrecord import detect_compression, iter_records, read_frame_level
from datamodules.tfrecord_compression import CHUNK, inflate


@pytest.fixture(scope="module")
def raw_blob() -> bytes:
    """Seven YouTube-8M records, two of them longer than a decompression piece (CHUNK)."""
    rng = np.random.default_rng(7)
    lengths = [3, 90, 0, 1, 70, 5, 2]  # 90 * (1024 + 128) codes > 64 KiB
    return b"".join(frame(y8m_record(f"v{k}", [23, k], codes(rng, t, 1024), codes(rng, t, 128)))
                    for k, t in enumerate(lengths))




@pytest.mark.parametrize(("kind", "name", "compress"), [
    ("gzip", "a.tfrecord.gz", gzip.compress),
    ("zlib", "a.tfrecords.zlib", zlib.compress),
    ("gzip", "no_extension", lambda b: gzip.compress(b, compresslevel=1)),
    ("zlib", "a.tfrecord", lambda b: zlib.compress(b, 9)),  # the content decides, not the name
    ("gzip", "two_members.gz", lambda b: gzip.compress(b[:1000]) + gzip.compress(b[1000:])),
])
def test_compressed_file_yields_the_records_of_the_uncompressed_one(tmp_path, raw_blob, kind,
                                                                     name, compress):
    raw, packed = tmp_path / "raw.tfrecord", tmp_path / name
    raw.write_bytes(raw_blob)
    packed.write_bytes(compress(raw_blob))
    assert detect_compression(raw) is None and detect_compression(packed) == kind
    expected = list(iter_records(raw))
    assert len(expected) == 7
    assert list(iter_records(packed)) == expected
    for a, b in zip(read_frame_level(raw), read_frame_level(packed), strict=True):
        assert (a.id, a.labels, a.offset) == (b.id, b.labels, b.offset)
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.audio, b.audio)


def test_decompression_is_streamed_in_bounded_pieces(tmp_path, raw_blob):
    path = tmp_path / "big.gz"
    path.write_bytes(gzip.compress(raw_blob * 4))
    with open(path, "rb") as f:
        pieces = [len(p) for p in inflate(f, "gzip", path)]
    assert sum(pieces) == 4 * len(raw_blob)
    assert len(pieces) > 4 and max(pieces) <= CHUNK


def _error(path) -> str:
    with pytest.raises(DataError) as e:
        list(iter_records(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    return msg


def test_truncated_and_damaged_compressed_files_are_one_line(tmp_path, raw_blob):
    packed = gzip.compress(raw_blob)
    cut = tmp_path / "cut.tfrecord.gz"
    cut.write_bytes(packed[:5000])
    assert _error(cut) == (f"{cut}: gzip-compressed data truncated: the stream ends early, at "
                           "compressed byte 5000")
    # Damage inside compressible deflate data: zlib notices it (a bad block header, or the
    # gzip trailer's CRC-32 at the end); the place is the compressed piece it was read in.
    zeros = b"".join(frame(y8m_record(f"z{k}", [23], np.full((40, 1024), k, np.uint8),
                                      np.full((40, 128), k, np.uint8))) for k in range(20))
    packed = gzip.compress(zeros, mtime=0)
    assert len(packed) < CHUNK
    for where in (20, len(packed) - 6):
        bad = bytearray(packed)
        bad[where] ^= 0xFF
        damaged = _write(tmp_path / "damaged.gz", bytes(bad))
        assert _error(damaged).startswith(
            f"{damaged}: gzip-compressed data damaged in compressed bytes 0-{len(packed)} (")
    trailing = tmp_path / "trailing.zlib"
    trailing.write_bytes(zlib.compress(raw_blob) + b"junk")
    assert _error(trailing) == (f"{trailing}: damaged: bytes after the end of the zlib stream, "
                                f"at compressed byte {len(zlib.compress(raw_blob))}")
    # Compressed data that decompresses to damaged framing: offsets count decompressed bytes.
    offsets = [off for off, _ in iter_records(_write(tmp_path / "raw", raw_blob))]
    broken = bytearray(raw_blob)
    broken[offsets[2] + 13] ^= 0xFF
    path = _write(tmp_path / "crc.tfrecord.gz", gzip.compress(bytes(broken)))
    assert _error(path) == (f"{path}: bad data CRC in record at byte offset {offsets[2]} of the "
                            "gzip-decompressed data")


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("compress", "name", "tool"), [
    (bz2.compress, "bzip2", "bunzip2"),
    (lzma.compress, "xz", "unxz"),
])
def test_other_compressors_are_named(tmp_path, raw_blob, compress, name, tool):
    path = _write(tmp_path / "a.tfrecord", compress(raw_blob))
    assert _error(path) == (f"{path}: {name}-compressed; TFRecords are read uncompressed or "
                            f"gzip/zlib-compressed (decompress it first, e.g. `{tool}`)")


def test_not_a_tfrecord(tmp_path):
    named = _write(tmp_path / "x.tfrecord.gz", b"hello world, not compressed")
    assert _error(named) == (f"{named}: named .gz but not gzip-compressed (starts with bytes "
                             "68656c6c), nor an uncompressed TFRecord")
    plain = _write(tmp_path / "x.tfrecord", b"hello world, not a record")
    assert _error(plain) == (f"{plain}: bad length CRC (not a TFRecord file, nor "
                             "gzip/zlib-compressed?) in record at byte offset 0")
