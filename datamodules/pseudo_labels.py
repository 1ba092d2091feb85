"""Pseudo-label files: a TrainPairs list written by id, so it can be read, diffed and resumed.

JSON lines; the first line is a header, then one line per pair:

    {"format": 1, "store_fingerprint": "<hex>", "round": 2, "count": 1234}
    {"video_id": "...", "music_id": "...", "weight": 1.0, "status": "kept"}

Ids (not row numbers) make the file readable and robust to row order; the fingerprint ties it
to one store (`StoreDataModule.store_fingerprint`), so labels made for other data are refused.
A music id maps back to the first train row carrying it (rows sharing a song share its id).
`status` is free text from the writer; without one, "kept" when the pair is the dataset's
own pairing of that video and "reassigned" otherwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from datamodules.atomic import write_text
from datamodules.errors import DataError
from datamodules.pairs import PairDataset
from datamodules.train_pairs import TrainPairs

FORMAT = 1


def write_pseudo_labels(
    path: str | Path,
    pairs: TrainPairs,
    dataset: PairDataset,
    fingerprint: str,
    round: int,
    status: list[str] | None = None,
) -> Path:
    """Write `pairs` (rows of `dataset`, the train split) to `path` atomically; returns it."""
    path = Path(path)
    pairs.check_rows(len(dataset), str(path))
    if status is not None and len(status) != len(pairs):
        raise DataError(f"{path}: {len(status)} statuses for {len(pairs)} pairs")
    header = {"format": FORMAT, "store_fingerprint": fingerprint, "round": int(round),
              "count": len(pairs)}
    lines = [json.dumps(header)]
    for p, (v, m, w) in enumerate(zip(pairs.video_rows, pairs.music_rows, pairs.weights)):
        if status is not None:
            st = str(status[p])
        else:
            st = "kept" if dataset.music_ids[m] == dataset.music_ids[v] else "reassigned"
        lines.append(json.dumps({"video_id": dataset.ids[v], "music_id": dataset.music_ids[m],
                                 "weight": float(w), "status": st}))
    write_text(path, "\n".join(lines) + "\n")
    return path


def _first_rows(ids: list[str]) -> dict[str, int]:
    rows: dict[str, int] = {}
    for i, key in enumerate(ids):
        rows.setdefault(key, i)
    return rows


def read_header(path: str | Path) -> dict:
    """The header line of a pseudo-label file (format, store_fingerprint, round, count)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except FileNotFoundError:
        raise DataError(f"{path}: pseudo-label file not found") from None
    return _header(path, first)


def _header(path: Path, line: str) -> dict:
    try:
        header = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:1: not valid JSON ({e.msg})") from None
    if not isinstance(header, dict) or "store_fingerprint" not in header:
        raise DataError(f"{path}:1: not a pseudo-label file (no header with store_fingerprint)")
    if header.get("format") != FORMAT:
        raise DataError(f"{path}:1: pseudo-label format {header.get('format')!r} is not {FORMAT}")
    return header


def read_pseudo_labels(path: str | Path, dataset: PairDataset, fingerprint: str) -> TrainPairs:
    """The pairs in `path` as rows of `dataset` (the train split of the store `fingerprint`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: pseudo-label file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{path}: empty pseudo-label file (no header)")
    header = _header(path, lines[0])
    if header["store_fingerprint"] != fingerprint:
        raise DataError(
            f"{path}: pseudo-labels were made for store {header['store_fingerprint']}, "
            f"not this store {fingerprint}"
        )
    videos, musics = _first_rows(dataset.ids), _first_rows(dataset.music_ids)
    video_rows, music_rows, weights = [], [], []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object with video_id, music_id, weight")
        vid, mid = row.get("video_id"), row.get("music_id")
        if not isinstance(vid, str) or vid not in videos:
            raise DataError(f"{where}: unknown video id {vid!r} (not in the train split)")
        if not isinstance(mid, str) or mid not in musics:
            raise DataError(f"{where}: unknown music id {mid!r} (not in the train split)")
        w = row.get("weight", 1.0)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise DataError(f"{where}: weight {w!r} must be a finite number >= 0")
        video_rows.append(videos[vid])
        music_rows.append(musics[mid])
        weights.append(w)
    count = header.get("count")
    if count is not None and count != len(video_rows):
        raise DataError(f"{path}: header says {count} pairs, the file has {len(video_rows)} "
                        "(truncated or edited?)")
    return TrainPairs(np.array(video_rows, dtype=np.int64), np.array(music_rows, dtype=np.int64),
                      np.array(weights, dtype=np.float32))
