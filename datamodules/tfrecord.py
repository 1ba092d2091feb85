"""TFRecord files and tf.train.Example / SequenceExample messages, without TensorFlow.

A record is: uint64 LE length, uint32 masked CRC-32C of those 8 bytes, the data, uint32
masked CRC-32C of the data. Both CRCs are verified; any damage is a DataError naming the
file and the byte offset of the record. The protobuf classes are built at import from a
descriptor written here (field numbers as in tensorflow/core/example/{feature,example}.proto),
so only the `protobuf` package is needed.

YouTube-8M frame-level files hold SequenceExamples (context `id` or, in 2017 files,
`video_id`, `labels`; feature lists `rgb` and `audio` with one 1024- / 128-byte uint8 code
per second); video-level files hold Examples with `mean_rgb` / `mean_audio` floats. Not in
YouTube-8M but read when present: context `text` (bytes, text found in the video) and
`text_emb` (floats, a precomputed embedding of that text, e.g. from a sentence encoder).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from datamodules.atomic import atomic_file
from datamodules.errors import DataError

# ------------------------------------------------------------------------------------- CRC-32C

_POLY = 0x82F63B78  # Castagnoli, reflected
_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
    _TABLE.append(_c)


def crc32c_python(data: bytes) -> int:
    """Table-driven CRC-32C; the fallback when `google-crc32c` is not installed (slow)."""
    crc, table = 0xFFFFFFFF, _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:
    from google_crc32c import value as _crc32c_c
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c_c = None


def crc32c(data: bytes) -> int:
    return _crc32c_c(bytes(data)) if _crc32c_c is not None else crc32c_python(data)


def masked_crc(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------------------------ framing

_HEADER = struct.Struct("<QI")
_U32 = struct.Struct("<I")


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """(byte offset, payload) of every record in `path`, CRCs verified."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_SEQUENTIAL)
            pos = 0
            while pos < size:
                where = f"{path}: {{}} in record at byte offset {pos}"
                if size - pos < _HEADER.size:
                    raise DataError(where.format("truncated header (file ends)"))
                header = mm[pos : pos + _HEADER.size]
                length, length_crc = _HEADER.unpack(header)
                if masked_crc(header[:8]) != length_crc:
                    raise DataError(where.format("bad length CRC"))
                start = pos + _HEADER.size
                end = start + length + 4
                if end > size:
                    raise DataError(where.format(
                        f"truncated data ({length} bytes announced, file ends)"
                    ))
                data = mm[start : start + length]
                if masked_crc(data) != _U32.unpack_from(mm, start + length)[0]:
                    raise DataError(where.format("bad data CRC"))
                yield pos, data
                pos = end


def frame_record(payload: bytes) -> bytes:
    """One record's bytes in TFRecord framing."""
    length = struct.pack("<Q", len(payload))
    return b"".join(
        (length, _U32.pack(masked_crc(length)), payload, _U32.pack(masked_crc(payload)))
    )


def write_records(path: str | os.PathLike, payloads: Iterable[bytes]) -> int:
    """Write a TFRecord file atomically; returns the number of records."""
    n = 0
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        for payload in payloads:
            f.write(frame_record(payload))
            n += 1
    return n


# ----------------------------------------------------------------------------------- protobuf


def _build_classes() -> dict[str, type]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="vmr_tf_example.proto", package="vmr_tf", syntax="proto3"
    )
    F = descriptor_pb2.FieldDescriptorProto
    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL

    def message(name: str, fields: list[tuple], nested: list | None = None):
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name, *oneof in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof:
                f.oneof_index = oneof[0]
        return m

    def map_entry(parent, name: str, value_type: str) -> None:
        e = parent.nested_type.add(name=name)
        e.options.map_entry = True
        e.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
        e.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=value_type)

    msg = F.TYPE_MESSAGE
    message("BytesList", [("value", 1, F.TYPE_BYTES, rep, None)])
    message("FloatList", [("value", 1, F.TYPE_FLOAT, rep, None)])
    message("Int64List", [("value", 1, F.TYPE_INT64, rep, None)])
    feature = message("Feature", [
        ("bytes_list", 1, msg, opt, ".vmr_tf.BytesList", 0),
        ("float_list", 2, msg, opt, ".vmr_tf.FloatList", 0),
        ("int64_list", 3, msg, opt, ".vmr_tf.Int64List", 0),
    ])
    feature.oneof_decl.add(name="kind")
    features = message("Features", [("feature", 1, msg, rep, ".vmr_tf.Features.FeatureEntry")])
    map_entry(features, "FeatureEntry", ".vmr_tf.Feature")
    message("FeatureList", [("feature", 1, msg, rep, ".vmr_tf.Feature")])
    lists = message(
        "FeatureLists", [("feature_list", 1, msg, rep, ".vmr_tf.FeatureLists.FeatureListEntry")]
    )
    map_entry(lists, "FeatureListEntry", ".vmr_tf.FeatureList")
    message("Example", [("features", 1, msg, opt, ".vmr_tf.Features")])
    message("SequenceExample", [
        ("context", 1, msg, opt, ".vmr_tf.Features"),
        ("feature_lists", 2, msg, opt, ".vmr_tf.FeatureLists"),
    ])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    names = ("Feature", "Features", "FeatureList", "FeatureLists", "Example", "SequenceExample")
    get = getattr(message_factory, "GetMessageClass", None)
    if get is None:  # protobuf < 4.21
        factory = message_factory.MessageFactory(pool)
        get = factory.GetPrototype
    return {n: get(pool.FindMessageTypeByName(f"vmr_tf.{n}")) for n in names}


_PB = _build_classes()
Feature, Example, SequenceExample = _PB["Feature"], _PB["Example"], _PB["SequenceExample"]


def _values(feature: Any) -> list:
    kind = feature.WhichOneof("kind")
    return list(getattr(feature, kind).value) if kind else []


def _fill(feature: Any, values: Any) -> None:
    """Set a Feature from bytes/str (one value), a numpy array or a list of one kind."""
    if isinstance(values, (bytes, str)):
        values = [values]
    if isinstance(values, np.ndarray):
        kind = "float_list" if values.dtype.kind == "f" else "int64_list"
        values = values.ravel().tolist()
    else:
        values = list(values)
        if not values:
            return
        first = values[0]
        if isinstance(first, (bytes, str)):
            kind = "bytes_list"
            values = [v.encode() if isinstance(v, str) else v for v in values]
        elif isinstance(first, (float, np.floating)):
            kind, values = "float_list", [float(v) for v in values]
        elif isinstance(first, (int, np.integer)):
            kind, values = "int64_list", [int(v) for v in values]
        else:
            raise TypeError(f"cannot encode feature values of type {type(first).__name__}")
    getattr(feature, kind).value.extend(values)


def encode_example(features: dict[str, Any]) -> bytes:
    msg = Example()
    for key, values in features.items():
        _fill(msg.features.feature[key], values)
    return msg.SerializeToString()


def encode_sequence_example(context: dict[str, Any], feature_lists: dict[str, list]) -> bytes:
    """`feature_lists[name]` holds one entry per step (bytes, array or list of values)."""
    msg = SequenceExample()
    for key, values in context.items():
        _fill(msg.context.feature[key], values)
    for key, steps in feature_lists.items():
        fl = msg.feature_lists.feature_list[key]
        fl.SetInParent()  # an empty list is present, not missing
        for step in steps:
            _fill(fl.feature.add(), step)
    return msg.SerializeToString()


def _parse(cls: type, data: bytes, where: str) -> Any:
    try:
        return cls.FromString(data)
    except Exception as e:  # DecodeError, or upb's RuntimeError variants
        raise DataError(f"{where}: not a valid {cls.__name__} ({e})") from None


def parse_example(data: bytes, where: str = "record") -> dict[str, list]:
    msg = _parse(Example, data, where)
    return {k: _values(f) for k, f in msg.features.feature.items()}


def parse_sequence_example(data: bytes, where: str = "record") -> tuple[dict, dict]:
    """(context name -> values, feature list name -> per-step value lists)."""
    msg = _parse(SequenceExample, data, where)
    context = {k: _values(f) for k, f in msg.context.feature.items()}
    lists = {
        k: [_values(f) for f in fl.feature] for k, fl in msg.feature_lists.feature_list.items()
    }
    return context, lists


# --------------------------------------------------------------------------- YouTube-8M records

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
        v = f.bytes_list.value if f.WhichOneof("kind") == "bytes_list" else ()
        if len(v) != 1 or len(v[0]) != dim:
            got = f"{len(v[0])} bytes" if len(v) == 1 else f"{len(v)} values"
            raise DataError(f"{where}: '{name}' frame {k} has {got}, expected {dim} bytes")
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


def read_frame_level(
    path: str | os.PathLike,
    labels: Collection[int] | None = None,
    skips: Counter | None = None,
) -> Iterator[FrameRecord]:
    """YouTube-8M frame-level records of `path`.

    `labels`: decode only records carrying one of these label ids (others are counted in
    `skips["no selected label"]`). Without `skips`, a record missing `rgb` or `audio` is a
    DataError; with it, such records and empty sequences are counted there and left out.
    A `text_emb` context feature that is not a non-empty list of finite floats is always a
    DataError.
    """
    wanted = frozenset(labels) if labels is not None else None
    for offset, data in iter_records(path):
        where = f"{path}: record at byte offset {offset}"
        msg = _parse(SequenceExample, data, where)
        ctx = msg.context.feature
        vid = _context_id(ctx, where)
        where = f"{path}: record at byte offset {offset} (id {vid})"
        record_labels = list(ctx["labels"].int64_list.value) if "labels" in ctx else []
        if wanted is not None and wanted.isdisjoint(record_labels):
            if skips is not None:
                skips["no selected label"] += 1
            continue
        lists = msg.feature_lists.feature_list
        missing = [name for name in ("rgb", "audio") if name not in lists]
        if missing:
            if skips is None:
                raise DataError(f"{where}: no '{missing[0]}' feature list")
            skips[f"missing {missing[0]}"] += 1
            continue
        rgb = _frames(lists["rgb"], RGB_DIM, where, "rgb")
        audio = _frames(lists["audio"], AUDIO_DIM, where, "audio")
        if skips is not None and (len(rgb) == 0 or len(audio) == 0):
            skips["empty sequence"] += 1
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
    for offset, data in iter_records(path):
        where = f"{path}: record at byte offset {offset}"
        feats = _parse(Example, data, where).features.feature
        vid = _context_id(feats, where)
        where = f"{where} (id {vid})"
        labels = list(feats["labels"].int64_list.value) if "labels" in feats else []
        yield VideoRecord(
            vid, labels, _floats(feats, "mean_rgb", RGB_DIM, where),
            _floats(feats, "mean_audio", AUDIO_DIM, where), _context_text(feats), offset,
        )
