"""YouTube-8M records: frame-level SequenceExamples and video-level Examples, decoded.

Frame-level files hold SequenceExamples (context `id` or, in 2017 files, `video_id`,
`labels`; feature lists `rgb` and `audio` with one 1024- / 128-byte uint8 code per second);
video-level files hold Examples with `mean_rgb` / `mean_audio` floats. Not in YouTube-8M but
read when present: context `text` (bytes, text found in the video) and `text_emb` (floats, a
precomputed embedding of that text, e.g. from a sentence encoder). Files may be uncompressed,
gzip or zlib (tfrecord_framing). Skip reasons and errors state the real counts ("'audio' has
0 frames", "'rgb' frame 1 has 1023 bytes, expected 1024").
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Collection, Iterator
from typing import Any, NamedTuple

import numpy as np

from datamodules.errors import DataError
from datamodules.tfrecord_compression import detect_compression
from datamodules.tfrecord_example import Example, SequenceExample, parse_message
from datamodules.tfrecord_framing import iter_records, record_place

# x = q * 4/255 + 4/512 - 2 (the YouTube-8M starter code's dequantisation).
DEQUANTIZE = (4.0 / 255.0, 4.0 / 512.0 - 2.0)
RGB_DIM, AUDIO_DIM = 1024, 128


def dequantize(q: np.ndarray) -> np.ndarray:
    scale, offset = DEQUANTIZE
    return np.asarray(q, dtype=np.float32) * np.float32(scale) + np.float32(offset)


class FrameRecord(NamedTuple):
    id: str
    labels: list[int]
    rgb: np.ndarray  # uint8 [T, 1024]
    audio: np.ndarray  # uint8 [T, 128]
    text: str | None
    offset: int  # byte offset of the record in its file
    text_emb: np.ndarray | None = None  # float32 [D], context feature `text_emb` when present


class VideoRecord(NamedTuple):
    id: str
    labels: list[int]
    mean_rgb: np.ndarray  # float32 [1024]
    mean_audio: np.ndarray  # float32 [128]
    text: str | None
    offset: int


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _step_header(dim: int) -> bytes:
    """Bytes before the codes of one step (Feature{bytes_list{value}}) inside a FeatureList."""
    inner = b"\x0a" + _varint(dim)  # BytesList.value
    bl = b"\x0a" + _varint(len(inner) + dim)  # Feature.bytes_list
    return b"\x0a" + _varint(len(bl) + len(inner) + dim) + bl + inner  # FeatureList.feature


_HEADERS = {d: np.frombuffer(_step_header(d), np.uint8) for d in (RGB_DIM, AUDIO_DIM)}


def _frames(fl: Any, dim: int, where: str, name: str) -> np.ndarray:
    """A feature list of one `dim`-byte code per step as uint8 [T, dim]."""
    t = len(fl.feature)
    header = _HEADERS.get(dim)
    if header is None:
        header = np.frombuffer(_step_header(dim), np.uint8)
    stride = len(header) + dim
    # Fast path: the canonical encoding has a fixed stride, so one reshape reads every step.
    raw = np.frombuffer(fl.SerializeToString(), np.uint8)
    if raw.size == t * stride:
        steps = raw.reshape(t, stride)
        if (steps[:, : len(header)] == header).all():
            return steps[:, len(header) :].copy()
    rows = []
    for k, f in enumerate(fl.feature):
        kind = f.WhichOneof("kind")
        v = f.bytes_list.value if kind == "bytes_list" else ()
        if len(v) != 1 or len(v[0]) != dim:
            if kind is None:
                got = "no value"
            elif kind != "bytes_list":  # e.g. codes written as int64s: say so, with the count
                got = f"{len(getattr(f, kind).value)} values ({kind})"
            else:
                got = f"{len(v[0])} bytes" if len(v) == 1 else f"{len(v)} byte strings"
            raise DataError(f"{where}: '{name}' frame {k} has {got}, expected {dim} bytes "
                            "(one byte string)")
        rows.append(v[0])
    return np.frombuffer(b"".join(rows), np.uint8).reshape(t, dim)


def _context_id(ctx: Any, where: str) -> str:
    for key in ("id", "video_id"):
        if key in ctx:
            v = ctx[key].bytes_list.value
            if len(v) == 1 and v[0]:
                return v[0].decode("utf-8", "replace")
    raise DataError(f"{where}: record has no 'id' (or 'video_id')")


def _context_text(ctx: Any) -> str | None:
    if "text" not in ctx:
        return None
    return b" ".join(ctx["text"].bytes_list.value).decode("utf-8", "replace")


def _context_text_emb(ctx: Any, where: str) -> np.ndarray | None:
    """The optional `text_emb` context feature: a non-empty list of finite floats."""
    if "text_emb" not in ctx:
        return None
    f = ctx["text_emb"]
    kind = f.WhichOneof("kind")
    if kind != "float_list" or not f.float_list.value:
        got = kind if kind and kind != "float_list" else "no values"
        raise DataError(f"{where}: 'text_emb' must be a non-empty float_list, found {got}")
    v = np.array(f.float_list.value, dtype=np.float32)
    if not np.isfinite(v).all():
        raise DataError(f"{where}: 'text_emb' has non-finite values")
    return v


def _missing_lists(ctx: Any, lists: Any) -> str | None:
    """Why a SequenceExample has no usable `rgb`/`audio` lists, or None when both are there."""
    for name in ("rgb", "audio"):
        if name not in lists:
            if "mean_rgb" in ctx:  # an Example of the video-level files parses as a context
                return "video-level record ('mean_rgb', no frame lists)"
            return f"no '{name}' feature list"
    return None


def read_frame_level(
    path: str | os.PathLike,
    labels: Collection[int] | None = None,
    skips: Counter | None = None,
) -> Iterator[FrameRecord]:
    """YouTube-8M frame-level records of `path`.

    `labels`: decode only records carrying one of these label ids (others are counted in
    `skips["no selected label"]`). Without `skips`, a record missing `rgb` or `audio` is a
    DataError; with it, such records and empty sequences are counted there by reason
    ("no 'audio' feature list", "'rgb' has 0 frames", ...) and left out. A `text_emb`
    context feature that is not a non-empty list of finite floats is always a DataError.
    """
    wanted = frozenset(labels) if labels is not None else None
    compression = detect_compression(path)
    for offset, data in iter_records(path):
        where = record_place(path, offset, compression)
        msg = parse_message(SequenceExample, data, where)
        ctx = msg.context.feature
        vid = _context_id(ctx, where)
        where = f"{where} (id {vid})"
        record_labels = list(ctx["labels"].int64_list.value) if "labels" in ctx else []
        if wanted is not None and wanted.isdisjoint(record_labels):
            if skips is not None:
                skips["no selected label"] += 1
            continue
        lists = msg.feature_lists.feature_list
        missing = _missing_lists(ctx, lists)
        if missing:
            if skips is None:
                raise DataError(f"{where}: {missing}")
            skips[missing] += 1
            continue
        rgb = _frames(lists["rgb"], RGB_DIM, where, "rgb")
        audio = _frames(lists["audio"], AUDIO_DIM, where, "audio")
        if skips is not None and (len(rgb) == 0 or len(audio) == 0):
            skips[f"'{'rgb' if len(rgb) == 0 else 'audio'}' has 0 frames"] += 1
            continue
        yield FrameRecord(vid, record_labels, rgb, audio, _context_text(ctx), offset,
                          _context_text_emb(ctx, where))


def _floats(feats: Any, name: str, dim: int, where: str) -> np.ndarray:
    if name not in feats:
        raise DataError(f"{where}: no '{name}' feature")
    v = np.asarray(feats[name].float_list.value, dtype=np.float32)
    if v.shape != (dim,):
        raise DataError(f"{where}: '{name}' has {v.size} values, expected {dim}")
    return v


def read_video_level(path: str | os.PathLike) -> Iterator[VideoRecord]:
    """YouTube-8M video-level records (Examples with mean_rgb / mean_audio) of `path`."""
    compression = detect_compression(path)
    for offset, data in iter_records(path):
        where = record_place(path, offset, compression)
        feats = parse_message(Example, data, where).features.feature
        vid = _context_id(feats, where)
        where = f"{where} (id {vid})"
        labels = list(feats["labels"].int64_list.value) if "labels" in feats else []
        yield VideoRecord(
            vid, labels, _floats(feats, "mean_rgb", RGB_DIM, where),
            _floats(feats, "mean_audio", AUDIO_DIM, where), _context_text(feats), offset,
        )
