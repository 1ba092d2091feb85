"""Is a feature store whole? Cheap checks every time it is opened, checksums on request.

`store_problem` (every open): each file exists and has the size meta.json records (stores
written before sizes were recorded: the .npy header's shape and dtype must match meta.json
and account for the file's size), and every index line parses, with offsets and lengths
inside the arrays (the rows are handed to the StoreSplit that opens the split next:
datamodules.index_handoff). `verify_store` (`vmr prepare --verify`) also recomputes the SHA-256 of
each file that has one recorded. Every problem is one line naming the file and the cause.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from datamodules import index_handoff
from datamodules.errors import DataError

INDEX = "index.jsonl"


def parse_index(path: Path, modalities: list[str], frames: dict[str, int]) -> list[dict]:
    """Every row of `path`, or a DataError naming the first broken line."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                rows.append(_row(line, modalities, frames, f"{path}:{number}"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: broken (not UTF-8 text: {e.reason})") from None
    return rows


def index_key(modalities: list[str], frames: dict[str, int]) -> tuple:
    """What a parsed index was checked against (datamodules.index_handoff)."""
    return tuple(modalities), tuple(sorted(frames.items()))


def _row(line: str, modalities: list[str], frames: dict[str, int], where: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: broken line ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict) or not isinstance(row.get("id"), str) \
            or not isinstance(row.get("music_id"), str):
        raise DataError(f"{where}: broken line (not a row with 'id' and 'music_id')")
    for m in modalities:
        off, n = row.get(f"{m}_offset"), row.get(f"{m}_length")
        if not (_count(off) and _count(n)):
            raise DataError(f"{where}: broken line (no valid {m}_offset/{m}_length)")
        if off + n > frames[m]:
            raise DataError(f"{where}: {m} frames {off}..{off + n} lie beyond the "
                            f"{frames[m]} frames of {m}.npy")
    return row


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def npy_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header bytes) from a .npy header, or a DataError."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
            return tuple(shape), np.dtype(dtype), f.tell()
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (ValueError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: broken .npy header ({str(e).splitlines()[0][:120]})") from None


def split_problem(store: Path, split: str, meta: dict[str, Any]) -> str | None:
    """The first thing wrong with one split's files (sizes, headers, index), or None."""
    folder = store / split
    info = meta["splits"][split]
    recorded = info.get("files", {})
    for name, want in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{path}: missing"
        have = path.stat().st_size
        if have != want.get("bytes"):
            return f"{path}: {_size_change(have, want.get('bytes'), 'meta.json records')}"
    frames = {}
    for m, spec in meta["modalities"].items():
        path = folder / f"{m}.npy"
        frames_meta = info.get("modalities", {}).get(m, {}).get("frames")
        try:
            shape, dtype, header = npy_layout(path)
        except DataError as e:
            return str(e)
        want_shape = (frames_meta, spec["dim"])
        if shape != want_shape or dtype != np.dtype(spec["dtype"]):
            return (f"{path}: holds {shape} {dtype}, meta.json says {want_shape} "
                    f"{np.dtype(spec['dtype'])}")
        expected = header + int(np.prod(shape)) * dtype.itemsize
        have = path.stat().st_size
        if have != expected:
            return f"{path}: {_size_change(have, expected, f'its header ({shape} {dtype}) needs')}"
        frames[m] = shape[0]
    modalities = list(meta["modalities"])
    before = index_handoff.stamp(folder / INDEX)
    try:
        rows = parse_index(folder / INDEX, modalities, frames)
    except DataError as e:
        return str(e)
    if len(rows) != info.get("count"):
        return f"{folder / INDEX}: {len(rows)} rows, meta.json says {info.get('count')}"
    index_handoff.leave(folder / INDEX, before, index_key(modalities, frames), rows)
    return None


def _size_change(have: int, want: int | None, basis: str) -> str:
    if want is not None and have < want:
        return f"truncated: {have} bytes, {basis} {want}"
    return f"{have} bytes, {basis} {want}"


def store_problem(store: str | Path) -> str | None:
    """One line on what is wrong with the store, or None if it is whole (or absent)."""
    from datamodules.feature_store import read_meta

    store = Path(store)
    if not (store / "meta.json").exists():
        return None  # no store yet: nothing damaged, the DataModule builds it
    try:
        meta = read_meta(store)
        splits = meta["splits"]
        meta["modalities"]
    except DataError as e:
        return str(e)
    except (KeyError, TypeError):
        return f"{store / 'meta.json'}: broken (no 'splits' or 'modalities')"
    for split in splits:
        problem = split_problem(store, split, meta)
        if problem:
            return problem
    return None


def verify_store(store: str | Path) -> tuple[list[str], int]:
    """(one line per bad file, number of files whose SHA-256 was checked)."""
    from datamodules.feature_store import read_meta, sha256_file

    store = Path(store)
    try:
        meta = read_meta(store)
    except DataError as e:
        return [str(e)], 0
    problems, checked = [], 0
    for split, info in meta["splits"].items():
        problem = split_problem(store, split, meta)
        if problem:
            problems.append(problem)
        sums = {n: f["sha256"] for n, f in info.get("files", {}).items() if "sha256" in f}
        for m, v in info.get("modalities", {}).items():  # stores without per-file records
            sums.setdefault(f"{m}.npy", v.get("sha256"))
        for name, want in sums.items():
            path = store / split / name
            if want is None or not path.is_file() or (problem and problem.startswith(str(path))):
                continue
            checked += 1
            if sha256_file(path) != want:
                problems.append(f"{path}: SHA-256 differs from meta.json (content changed)")
    return problems, checked
