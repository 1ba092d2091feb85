"""The MVD layout's optional unpaired pool: videos and songs that belong to no split.

    <root>/splits/unpaired_videos.csv    header `video_id` (further columns are ignored)
    <root>/splits/unpaired_music.csv     header `music_id`
    (their features: features/video/<id>.npy, features/music/<id>.npy, as for all ids)

Either file may be absent. A listed id must be a valid file name with a feature file of the
dataset's dimension, appear once, and be unpaired: an unpaired video may not be a split's
video, an unpaired song may not be named by any split row (DataError naming file and line).
`pack_mvd` stores them as the splits `unpaired_video` / `unpaired_music`
(datamodules.unpaired); the source fingerprint covers these files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from datamodules.errors import DataError
from datamodules.feature_store import Item
from datamodules.himv200k import load_feature
from datamodules.id_csv import id_rows
from datamodules.unpaired import SIDES, UNPAIRED_SPLITS

UNPAIRED_LISTS = {"video": "unpaired_videos.csv", "music": "unpaired_music.csv"}


class Listed(NamedTuple):
    id: str
    where: str  # "<csv>:<line>"


def unpaired_files(root: Path) -> dict[str, Path]:
    """The pool lists present under `root`, by side."""
    files = {side: root / "splits" / name for side, name in UNPAIRED_LISTS.items()}
    return {side: path for side, path in files.items() if path.is_file()}


def _read_list(path: Path, side: str) -> list[Listed]:
    column = f"{side}_id"
    items, seen = [], {}
    for where, (key,) in id_rows(path, (column,)):
        if key in seen:
            raise DataError(f"{where}: {column} {key} repeats {seen[key]}")
        seen[key] = where
        items.append(Listed(key, where))
    if not items:
        raise DataError(f"{path}: no rows (only a header); delete the file for no unpaired pool")
    return items


def read_unpaired(root: Path, paired: dict[str, set[str]],
                  present: dict[str, dict[str, os.DirEntry]]) -> dict[str, list[Listed]]:
    """The pool lists under `root`, checked against the split ids `paired[side]` and the
    feature files `present[side]` (id -> file)."""
    lists = {side: _read_list(path, side) for side, path in unpaired_files(root).items()}
    for side, items in lists.items():
        for item in items:
            if item.id in paired[side]:
                who = "a split's video" if side == "video" else "named by a split row"
                raise DataError(f"{item.where}: unpaired {side} {item.id} is {who}; an "
                                "unpaired item belongs to no split")
            if item.id not in present[side]:
                raise DataError(f"{item.where}: {side} id {item.id} has no feature file "
                                f"{root / 'features' / side / f'{item.id}.npy'}")
    return lists


def unpaired_items(root: Path, lists: dict[str, list[Listed]], dims: dict[str, int],
                   progress: object) -> dict[str, Iterator[Item]]:
    """Store splits (name -> items) for the pool: one row per item, the other side empty."""

    def items(side: str) -> Iterator[Item]:
        other = next(s for s in SIDES if s != side)
        empty = np.zeros((0, dims[other]), dtype=np.float32)
        for item in lists[side]:
            arr = load_feature(root / "features" / side / f"{item.id}.npy", dims[side], item.id)
            progress.update(1)
            # Video rows name no song; a song row is named after itself (as a music id).
            yield Item(item.id, item.id if side == "music" else "", {side: arr, other: empty})

    return {UNPAIRED_SPLITS[side]: items(side) for side in lists}
