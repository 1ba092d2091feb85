"""The packed feature store: the one training-time format every DataModule reads.

    <store>/meta.json                  format version, dims, dtypes, dequantisation,
                                       source fingerprint, counts, each file's size and
                                       SHA-256 (splits.<split>.files)
    <store>/<split>/index.jsonl        one row per item: id, music_id, per-modality
                                       offset/length, optional labels/text
    <store>/<split>/<modality>.npy     every frame of every item back to back [frames, dim]

Arrays open with `np.load(mmap_mode="r")`, so loading never parses source files in the
training loop. The whole store is written in a temporary folder and renamed into place,
under a lock shared with other processes building it (datamodules.store_lock). Opening a
split parses its whole index, or takes the rows the open-time check (datamodules.store_check,
which checks sizes as well) has just parsed (datamodules.index_handoff).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules import index_handoff
from datamodules.atomic import atomic_directory
from datamodules.errors import DataError
from datamodules.npy_stream import NpyStream
from datamodules.store_check import index_key, parse_index, store_problem
from datamodules.store_lock import store_lock

log = logging.getLogger("vmr")

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class Item:
    """One pair as a source reader yields it; arrays are [frames, dim]."""

    id: str
    music_id: str
    arrays: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModalitySpec:
    dim: int
    dtype: str
    # x = code * scale + offset after casting to float (YouTube-8M uint8 codes); None: as is.
    dequantize: tuple[float, float] | None = None


class _SplitWriter:
    """Streams one split: frames go straight into the .npy files, rows into the index.

    Each .npy starts with a header of fixed size (datamodules.npy_stream) that `close`
    rewrites with the final frame count, so the frames are written once, with plain file
    writes (a memory map on a full disk would crash the process instead of raising).
    """

    def __init__(self, folder: Path, modalities: dict[str, ModalitySpec]):
        self.folder = folder
        folder.mkdir(parents=True)
        self.modalities = modalities
        self.npy = {m: NpyStream(folder / f"{m}.npy", s.dtype, s.dim)
                    for m, s in modalities.items()}
        self.index = open(folder / "index.jsonl", "w")
        self.count = 0

    def add(self, item: Item) -> None:
        row: dict[str, Any] = {"id": item.id, "music_id": item.music_id}
        arrays = {name: _checked(item, name, spec) for name, spec in self.modalities.items()}
        for name, arr in arrays.items():
            row[f"{name}_offset"] = self.npy[name].frames
            row[f"{name}_length"] = len(arr)
            self.npy[name].write(arr)
        row.update(item.extra)
        self.index.write(json.dumps(row) + "\n")
        self.count += 1

    def abort(self) -> None:
        """Close the files as they are (the caller discards the folder)."""
        self.index.close()
        for f in self.npy.values():
            f.abort()

    def close(self) -> dict[str, Any]:
        self.index.close()
        info: dict[str, Any] = {"count": self.count, "modalities": {}, "files": {}}
        for name, stream in self.npy.items():
            stream.close()
            digest = sha256_file(stream.path)
            info["modalities"][name] = {"frames": stream.frames, "sha256": digest}
            info["files"][stream.path.name] = {"bytes": stream.path.stat().st_size,
                                               "sha256": digest}
        index = self.folder / "index.jsonl"
        # Sizes are checked every time the store is opened, checksums by `vmr prepare --verify`.
        info["files"]["index.jsonl"] = {"bytes": index.stat().st_size,
                                        "sha256": sha256_file(index)}
        return info


def _checked(item: Item, name: str, spec: ModalitySpec) -> np.ndarray:
    """item.arrays[name] as contiguous [frames, dim] of the stored dtype, or a DataError."""
    if name not in item.arrays:
        raise DataError(f"item {item.id}: no '{name}' features (has: {', '.join(item.arrays)})")
    arr = np.asarray(item.arrays[name])
    if arr.ndim != 2 or arr.shape[1] != spec.dim:
        raise DataError(
            f"item {item.id}: '{name}' features have shape {arr.shape}, "
            f"expected (frames, {spec.dim})"
        )
    target = np.dtype(spec.dtype)
    if np.issubdtype(target, np.integer) and arr.dtype != target and arr.size:
        info = np.iinfo(target)
        if not np.isfinite(arr).all() or arr.min() < info.min or arr.max() > info.max:
            raise DataError(
                f"item {item.id}: '{name}' values do not fit {target} "
                f"(range [{arr.min()}, {arr.max()}])"
            )
    return np.ascontiguousarray(arr, dtype=target)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_store(
    out: str | Path,
    splits: dict[str, Iterable[Item]],
    modalities: dict[str, ModalitySpec],
    source: dict[str, Any],
) -> Path:
    """Write `splits` (name -> items) atomically to `out`; returns `out`.

    An error raised while iterating the items leaves any existing store untouched. Under
    the store's lock (datamodules.store_lock): a process that had to wait for another one
    building the same store from the same source uses that store instead of writing it again.
    """
    out = Path(out)
    with store_lock(out) as lock:
        if lock.waited and _built_from(out, source):
            log.info("vmr: %s was built from the same source by another process; using it", out)
            return out
        return _write_store(out, splits, modalities, source)


def _built_from(store: Path, source: dict[str, Any]) -> bool:
    try:
        meta = read_meta(store)
    except DataError:
        return False
    same = meta.get("source") == json.loads(json.dumps(source))
    return same and store_problem(store) is None


def _write_store(out: Path, splits: dict[str, Iterable[Item]],
                 modalities: dict[str, ModalitySpec], source: dict[str, Any]) -> Path:
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "source": source,
        "modalities": {
            m: {"dim": s.dim, "dtype": s.dtype, "dequantize": s.dequantize}
            for m, s in modalities.items()
        },
        "splits": {},
    }
    with atomic_directory(out) as tmp:
        for split, items in splits.items():
            writer = _SplitWriter(tmp / split, modalities)
            try:
                for item in items:
                    writer.add(item)
            except BaseException:
                writer.abort()
                raise
            info = writer.close()
            if info["count"] == 0:
                raise DataError(f"{source.get('root', out)}: split '{split}' is empty")
            meta["splits"][split] = info
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_meta(store: str | Path) -> dict[str, Any]:
    path = Path(store) / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: no feature store here (run `vmr prepare`)") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt meta.json ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: store format {meta.get('format_version')} is not {FORMAT_VERSION}; "
            "re-run `vmr prepare`"
        )
    return meta


def source_fingerprint(store: str | Path) -> str | None:
    """The source fingerprint a readable store was packed from (None: no readable store)."""
    try:
        return read_meta(store)["source"].get("fingerprint")
    except DataError:
        return None


class StoreSplit:
    """Read access to one split of a store: rows plus memory-mapped frame arrays."""

    def __init__(self, store: str | Path, split: str, meta: dict[str, Any] | None = None):
        self.root = Path(store)
        self.meta = meta or read_meta(store)
        if split not in self.meta["splits"]:
            have = ", ".join(self.meta["splits"])
            raise DataError(f"{self.root}: store has no split '{split}' (has: {have})")
        self.split = split
        folder = self.root / split
        self.modalities = {
            m: ModalitySpec(
                v["dim"], v["dtype"], tuple(v["dequantize"]) if v["dequantize"] else None
            )
            for m, v in self.meta["modalities"].items()
        }
        self.arrays = {m: _open_array(folder / f"{m}.npy") for m in self.modalities}
        # Every line is parsed and its frames checked against the arrays: a broken index is
        # a one-line error here, not an exception in the middle of training. The open-time
        # check did exactly that for an unchanged file: its rows are taken instead.
        frames = {m: len(a) for m, a in self.arrays.items()}
        index, names = folder / "index.jsonl", list(self.modalities)
        rows = index_handoff.take(index, index_key(names, frames))
        self.rows = rows if rows is not None else parse_index(index, names, frames)
        self.offsets = {m: np.array([r[f"{m}_offset"] for r in self.rows]) for m in self.modalities}
        self.lengths = {m: np.array([r[f"{m}_length"] for r in self.rows]) for m in self.modalities}

    def __len__(self) -> int:
        return len(self.rows)

    def frames(self, modality: str, i: int) -> np.ndarray:
        """Raw stored frames of item i (codes, not dequantised)."""
        off, n = self.offsets[modality][i], self.lengths[modality][i]
        return self.arrays[modality][off : off + n]

    def iter_items(self) -> Iterator[Item]:
        for i, row in enumerate(self.rows):
            arrays = {m: np.asarray(self.frames(m, i)) for m in self.modalities}
            yield Item(row["id"], row["music_id"], arrays)


def _open_array(path: Path) -> np.ndarray:
    """The memory-mapped array, or a DataError naming a missing or truncated file."""
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise DataError(f"{path}: missing (re-run `vmr prepare`)") from None
    except (ValueError, OSError) as e:  # e.g. "mmap length is greater than file size"
        raise DataError(f"{path}: damaged ({str(e).splitlines()[0][:120]}); "
                        "re-run `vmr prepare`") from None
