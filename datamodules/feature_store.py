"""The packed feature store: the one training-time format every DataModule reads.

    <store>/meta.json                  format version, dims, dtypes, dequantisation,
                                       source fingerprint, counts, checksums
    <store>/<split>/index.jsonl        one row per item: id, music_id, per-modality
                                       offset/length, optional labels/text
    <store>/<split>/<modality>.npy     every frame of every item back to back [frames, dim]

Arrays open with `np.load(mmap_mode="r")`, so loading never parses source files in the
training loop. The whole store is written in a temporary folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.atomic import atomic_directory
from datamodules.errors import DataError

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
_COPY_ROWS = 1 << 16


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
    """Streams one split: frames go to raw files, rows to the index; `close` makes .npy files."""

    def __init__(self, folder: Path, modalities: dict[str, ModalitySpec]):
        self.folder = folder
        folder.mkdir(parents=True)
        self.modalities = modalities
        self.raw = {m: open(folder / f".{m}.raw", "wb") for m in modalities}
        self.frames = dict.fromkeys(modalities, 0)
        self.index = open(folder / "index.jsonl", "w")
        self.count = 0

    def add(self, item: Item) -> None:
        row: dict[str, Any] = {"id": item.id, "music_id": item.music_id}
        arrays = {name: _checked(item, name, spec) for name, spec in self.modalities.items()}
        for name, arr in arrays.items():
            row[f"{name}_offset"] = self.frames[name]
            row[f"{name}_length"] = len(arr)
            self.raw[name].write(arr.tobytes())
            self.frames[name] += len(arr)
        row.update(item.extra)
        self.index.write(json.dumps(row) + "\n")
        self.count += 1

    def abort(self) -> None:
        """Close the files without converting them (the caller discards the folder)."""
        self.index.close()
        for f in self.raw.values():
            f.close()

    def close(self) -> dict[str, Any]:
        self.index.close()
        info: dict[str, Any] = {"count": self.count, "modalities": {}}
        for name, spec in self.modalities.items():
            self.raw[name].close()
            raw_path = self.folder / f".{name}.raw"
            final = self.folder / f"{name}.npy"
            shape = (self.frames[name], spec.dim)
            out = np.lib.format.open_memmap(final, mode="w+", dtype=spec.dtype, shape=shape)
            src = np.memmap(raw_path, dtype=spec.dtype, mode="r", shape=shape) if shape[0] else None
            for start in range(0, shape[0], _COPY_ROWS):
                out[start : start + _COPY_ROWS] = src[start : start + _COPY_ROWS]
            out.flush()
            del out, src
            raw_path.unlink()
            info["modalities"][name] = {"frames": shape[0], "sha256": sha256_file(final)}
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

    An error raised while iterating the items leaves any existing store untouched.
    """
    out = Path(out)
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
        with open(folder / "index.jsonl") as f:
            self.rows = [json.loads(line) for line in f]
        self.modalities = {
            m: ModalitySpec(
                v["dim"], v["dtype"], tuple(v["dequantize"]) if v["dequantize"] else None
            )
            for m, v in self.meta["modalities"].items()
        }
        self.arrays = {m: np.load(folder / f"{m}.npy", mmap_mode="r") for m in self.modalities}
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
