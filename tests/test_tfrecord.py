"""TFRecord framing, CRC-32C and tf.train.(Sequence)Example decoding without TensorFlow.

Every round trip is checked against an independent writer in this file: protobuf wire format
and TFRecord framing encoded by hand, with a bitwise CRC-32C.
"""

from __future__ import annotations

import struct
from collections import Counter

import numpy as np
import pytest

from datamodules.errors import DataError
from datamodules.tfrecord import (
    DEQUANTIZE,
    crc32c,
    crc32c_python,
    dequantize,
    encode_example,
    encode_sequence_example,
    iter_records,
    masked_crc,
    parse_example,
    parse_sequence_example,
    read_frame_level,
    read_video_level,
    write_records,
)

# ------------------------------------------------------------------ independent implementation


def bitwise_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def bitwise_masked(data: bytes) -> int:
    c = bitwise_crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % 2**32


def frame(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", bitwise_masked(length)) + payload
            + struct.pack("<I", bitwise_masked(payload)))


def varint(n: int) -> bytes:
    n &= 2**64 - 1
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        out += bytes([low | (0x80 if n else 0)])
        if not n:
            return out


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def bytes_feature(*values: bytes) -> bytes:
    return ld(1, b"".join(ld(1, v) for v in values))


def int64_feature(*values: int) -> bytes:
    return ld(3, ld(1, b"".join(varint(v) for v in values)))


def float_feature(values) -> bytes:
    return ld(2, ld(1, struct.pack(f"<{len(values)}f", *values)))


def features(d: dict[str, bytes]) -> bytes:
    return b"".join(ld(1, ld(1, k.encode()) + ld(2, v)) for k, v in d.items())


def sequence_example(context: dict[str, bytes], lists: dict[str, list[bytes]]) -> bytes:
    fl = b"".join(ld(1, ld(1, k.encode()) + ld(2, b"".join(ld(1, f) for f in steps)))
                  for k, steps in lists.items())
    return ld(1, features(context)) + ld(2, fl)


def example(feats: dict[str, bytes]) -> bytes:
    return ld(1, features(feats))


def y8m_record(vid: str, labels, rgb: np.ndarray, audio: np.ndarray | None,
               key: str = "id", text: str | None = None) -> bytes:
    ctx = {key: bytes_feature(vid.encode()), "labels": int64_feature(*labels)}
    if text is not None:
        ctx["text"] = bytes_feature(text.encode())
    lists = {"rgb": [bytes_feature(r.tobytes()) for r in rgb]}
    if audio is not None:
        lists["audio"] = [bytes_feature(r.tobytes()) for r in audio]
    return sequence_example(ctx, lists)


def codes(rng, t: int, dim: int) -> np.ndarray:
    return rng.integers(0, 256, (t, dim), dtype=np.uint8)


def write_file(path, payloads) -> list[int]:
    """Frame `payloads` by hand into `path`; returns the byte offset of each record."""
    offsets, blob = [], b""
    for p in payloads:
        offsets.append(len(blob))
        blob += frame(p)
    path.write_bytes(blob)
    return offsets


# ---------------------------------------------------------------------------------------- CRC


@pytest.mark.parametrize(("data", "expected"), [
    (b"123456789", 0xE3069283),
    (b"", 0),
    (bytes(32), 0x8A9136AA),  # RFC 3720 B.4 test vectors
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
])
def test_crc32c_known_vectors(data, expected):
    assert crc32c(data) == expected
    assert crc32c_python(data) == expected
    assert bitwise_crc32c(data) == expected


def test_masked_crc_matches_independent():
    for data in (b"", b"abc", bytes(range(256)) * 3):
        assert masked_crc(data) == bitwise_masked(data)


# ------------------------------------------------------------------------------------ framing


def test_iter_records_reads_independent_framing(tmp_path):
    payloads = [b"", b"x", bytes(range(200)) * 7, b"last"]
    offsets = write_file(tmp_path / "a.tfrecord", payloads)
    assert list(iter_records(tmp_path / "a.tfrecord")) == list(zip(offsets, payloads))
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    assert list(iter_records(tmp_path / "empty.tfrecord")) == []


def test_write_records_matches_independent_framing(tmp_path):
    payloads = [b"one", bytes(1000), b"three"]
    assert write_records(tmp_path / "w.tfrecord", payloads) == 3
    assert (tmp_path / "w.tfrecord").read_bytes() == b"".join(frame(p) for p in payloads)
    assert [p.name for p in tmp_path.iterdir()] == ["w.tfrecord"]  # no temp file left


def _three_records(tmp_path):
    rng = np.random.default_rng(0)
    payloads = [y8m_record(f"v{k}", [23], codes(rng, 3, 1024), codes(rng, 3, 128))
                for k in range(3)]
    path = tmp_path / "bad.tfrecord"
    return path, write_file(path, payloads)


def test_corrupted_data_byte_names_record_offset(tmp_path):
    path, offsets = _three_records(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[offsets[1] + 12 + 40] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError) as e:
        list(iter_records(path))
    assert str(e.value) == f"{path}: bad data CRC in record at byte offset {offsets[1]}"
    assert "\n" not in str(e.value)


def test_corrupted_length_crc(tmp_path):
    path, offsets = _three_records(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[offsets[2] + 9] ^= 0x80
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=f"bad length CRC in record at byte offset {offsets[2]}$"):
        list(read_frame_level(path))


def test_corrupted_length_is_caught_by_length_crc(tmp_path):
    path, offsets = _three_records(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[offsets[1]] ^= 0x04  # the length itself
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match=f"bad length CRC in record at byte offset {offsets[1]}$"):
        list(iter_records(path))


@pytest.mark.parametrize("cut", [5, 100])  # inside the header, inside the data
def test_truncated_file_names_second_record(tmp_path, cut):
    path, offsets = _three_records(tmp_path)
    path.write_bytes(path.read_bytes()[: offsets[1] + cut])
    with pytest.raises(DataError) as e:
        list(iter_records(path))
    assert str(e.value).startswith(f"{path}: truncated")
    assert str(e.value).endswith(f"in record at byte offset {offsets[1]}")


# ----------------------------------------------------------------------------------- protobuf


@pytest.mark.parametrize("key", ["id", "video_id"])
def test_frame_level_round_trip(tmp_path, key):
    rng = np.random.default_rng(1)
    recs = [(f"vid{k}", sorted(rng.choice(50, k + 1, replace=False).tolist()),
             codes(rng, t, 1024), codes(rng, t, 128)) for k, t in enumerate([5, 1, 0, 9])]
    texts = ["w1 w2", None, None, "héllo"]
    payloads = [y8m_record(v, lab, r, a, key=key, text=txt)
                for (v, lab, r, a), txt in zip(recs, texts)]
    offsets = write_file(tmp_path / "f.tfrecord", payloads)
    got = list(read_frame_level(tmp_path / "f.tfrecord"))
    assert len(got) == 4
    for g, (vid, labels, rgb, audio), text, off in zip(got, recs, texts, offsets):
        assert (g.id, g.labels, g.text, g.offset) == (vid, labels, text, off)
        assert g.rgb.dtype == np.uint8 and g.rgb.shape == (len(rgb), 1024)
        assert g.audio.shape == (len(audio), 128)
        np.testing.assert_array_equal(g.rgb, rgb)
        np.testing.assert_array_equal(g.audio, audio)


def test_label_filter_and_skip_counts(tmp_path):
    rng = np.random.default_rng(2)
    payloads = [
        y8m_record("keep", [3, 23], codes(rng, 2, 1024), codes(rng, 2, 128)),
        y8m_record("other", [3, 4], codes(rng, 2, 1024), codes(rng, 2, 128)),
        y8m_record("noaudio", [23], codes(rng, 2, 1024), None),
        y8m_record("empty", [23], codes(rng, 0, 1024), codes(rng, 0, 128)),
    ]
    write_file(tmp_path / "s.tfrecord", payloads)
    skips: Counter = Counter()
    got = list(read_frame_level(tmp_path / "s.tfrecord", labels=[23], skips=skips))
    assert [g.id for g in got] == ["keep"]
    assert skips == {"no selected label": 1, "no 'audio' feature list": 1, "'rgb' has 0 frames": 1}


def test_record_without_rgb_is_an_error(tmp_path):
    rng = np.random.default_rng(3)
    good = y8m_record("a", [1], codes(rng, 2, 1024), codes(rng, 2, 128))
    bad = sequence_example({"id": bytes_feature(b"b")},
                           {"audio": [bytes_feature(codes(rng, 1, 128).tobytes())]})
    path = tmp_path / "r.tfrecord"
    offsets = write_file(path, [good, bad])
    with pytest.raises(DataError) as e:
        list(read_frame_level(path))
    where = f"{path}: record at byte offset {offsets[1]} (id b)"
    assert str(e.value) == f"{where}: no 'rgb' feature list"


def test_record_without_id_or_with_bad_frame_length(tmp_path):
    rng = np.random.default_rng(4)
    no_id = sequence_example({"labels": int64_feature(1)},
                             {"rgb": [], "audio": []})
    path = tmp_path / "n.tfrecord"
    write_file(path, [no_id])
    with pytest.raises(DataError, match=r"byte offset 0: record has no 'id' \(or 'video_id'\)"):
        list(read_frame_level(path))
    frames = [bytes_feature(codes(rng, 1, 1024).tobytes()), bytes_feature(bytes(1023))]
    short = sequence_example({"id": bytes_feature(b"s")},
                             {"rgb": frames, "audio": [bytes_feature(bytes(128))] * 2})
    write_file(path, [short])
    with pytest.raises(DataError, match=r"\(id s\): 'rgb' frame 1 has 1023 bytes, expected 1024"):
        list(read_frame_level(path))
    as_ints = sequence_example({"id": bytes_feature(b"i")},
                               {"rgb": [int64_feature(*range(1024))], "audio": []})
    write_file(path, [as_ints])
    with pytest.raises(DataError) as e:
        list(read_frame_level(path))
    assert str(e.value) == (f"{path}: record at byte offset 0 (id i): 'rgb' frame 0 has 1024 "
                            "values (int64_list), expected 1024 bytes (one byte string)")


def test_video_level_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    rgb, audio = rng.normal(size=(2, 1024)).astype(np.float32), rng.normal(size=(2, 128))
    audio = audio.astype(np.float32)
    payloads = [
        example({"id": bytes_feature(b"v0"), "labels": int64_feature(7, 23),
                 "mean_rgb": float_feature(rgb[0]), "mean_audio": float_feature(audio[0])}),
        example({"video_id": bytes_feature(b"v1"), "labels": int64_feature(),
                 "mean_rgb": float_feature(rgb[1]), "mean_audio": float_feature(audio[1])}),
    ]
    offsets = write_file(tmp_path / "v.tfrecord", payloads)
    got = list(read_video_level(tmp_path / "v.tfrecord"))
    assert [(g.id, g.labels, g.offset) for g in got] == [("v0", [7, 23], offsets[0]),
                                                        ("v1", [], offsets[1])]
    for k, g in enumerate(got):
        np.testing.assert_array_equal(g.mean_rgb, rgb[k])
        np.testing.assert_array_equal(g.mean_audio, audio[k])
    bad = example({"id": bytes_feature(b"x"), "mean_rgb": float_feature(rgb[0][:5]),
                   "mean_audio": float_feature(audio[0])})
    write_file(tmp_path / "v.tfrecord", [bad])
    with pytest.raises(DataError, match=r"\(id x\): 'mean_rgb' has 5 values, expected 1024"):
        list(read_video_level(tmp_path / "v.tfrecord"))


def test_generic_parsers_and_encoders():
    ctx = {"id": bytes_feature(b"abc"), "labels": int64_feature(1, -2, 2**40),
           "score": float_feature([0.5, -1.25])}
    raw = sequence_example(ctx, {"rgb": [bytes_feature(b"\x01\x02"), bytes_feature(b"\x03")]})
    context, lists = parse_sequence_example(raw)
    assert context == {"id": [b"abc"], "labels": [1, -2, 2**40], "score": [0.5, -1.25]}
    assert lists == {"rgb": [[b"\x01\x02"], [b"\x03"]]}
    # Our encoders give the same wire bytes as the hand encoding (one key per map).
    assert encode_sequence_example({"id": "abc"}, {"rgb": [b"\x01\x02", b"\x03"]}) == (
        sequence_example({"id": bytes_feature(b"abc")},
                         {"rgb": [bytes_feature(b"\x01\x02"), bytes_feature(b"\x03")]}))
    assert encode_example({"mean_audio": np.array([1.5, 2.0], np.float32)}) == example(
        {"mean_audio": float_feature([1.5, 2.0])})
    assert encode_example({"labels": [3, 23]}) == example({"labels": int64_feature(3, 23)})
    both = encode_sequence_example({"labels": [4], "id": b"q"}, {"a": [[1.0, 2.0]], "b": []})
    assert parse_sequence_example(both) == ({"labels": [4], "id": [b"q"]},
                                            {"a": [[1.0, 2.0]], "b": []})
    assert parse_example(example(ctx)) == context
    with pytest.raises(DataError, match="here: not a valid Example"):
        parse_example(b"\x0a\xff", where="here")


def test_dequantize_endpoints():
    assert DEQUANTIZE == (4 / 255, 4 / 512 - 2)
    got = dequantize(np.array([0, 128, 255], dtype=np.uint8))
    assert got.dtype == np.float32
    expected = np.array([q * 4 / 255 + 4 / 512 - 2 for q in (0, 128, 255)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[[0, 2]], [-1.9921875, 2.0078125], rtol=0, atol=1e-6)
