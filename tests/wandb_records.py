"""Read the records of an offline W&B run file (`run-<id>.wandb`) without a W&B server.

The file is W&B's 7-byte header followed by a LevelDB-style log: 32 KiB blocks of chunks,
each with a 7-byte header (CRC, length, type: full / first / middle / last). Each record is
a `wandb_internal.Record` protobuf. Tests use it to check what `wandb sync` would upload.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[bytes]:
    pos, pending = _HEADER, b""  # skip W&B's own file header
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        pos += _HEADER
        chunk, pos = data[pos:pos + length], pos + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def read_run(path: Path) -> dict:
    """{'run_id', 'resumed', 'group', 'job_type', 'history': [{'_step': ..., key: value_json}]}."""
    from wandb.proto import wandb_internal_pb2 as pb

    out: dict = {"run_id": None, "resumed": None, "group": None, "job_type": None, "history": []}
    for raw in _chunks(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run_id"], out["resumed"] = record.run.run_id, record.run.resumed
            out["group"], out["job_type"] = record.run.run_group, record.run.job_type
        elif kind == "history":
            out["history"].append({(i.key or "/".join(i.nested_key)): i.value_json
                                   for i in record.history.item})
    return out
