"""tf.train.Example / SequenceExample messages without TensorFlow: encoding and parsing.

The protobuf classes are built at import from a descriptor written here (field numbers as in
tensorflow/core/example/{feature,example}.proto), so only the `protobuf` package is needed.
A payload that does not parse is a DataError naming where it came from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from datamodules.errors import DataError


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


def parse_message(cls: type, data: bytes, where: str) -> Any:
    """`data` parsed as a `cls` (Example or SequenceExample); DataError if it is not one."""
    try:
        return cls.FromString(data)
    except Exception as e:  # DecodeError, or upb's RuntimeError variants
        raise DataError(f"{where}: not a valid {cls.__name__} ({e})") from None


def parse_example(data: bytes, where: str = "record") -> dict[str, list]:
    msg = parse_message(Example, data, where)
    return {k: _values(f) for k, f in msg.features.feature.items()}


def parse_sequence_example(data: bytes, where: str = "record") -> tuple[dict, dict]:
    """(context name -> values, feature list name -> per-step value lists)."""
    msg = parse_message(SequenceExample, data, where)
    context = {k: _values(f) for k, f in msg.context.feature.items()}
    lists = {
        k: [_values(f) for f in fl.feature] for k, fl in msg.feature_lists.feature_list.items()
    }
    return context, lists
