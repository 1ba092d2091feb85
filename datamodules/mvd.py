"""MVD (Music Video Dataset, Pretet et al. 2021) in a generic layout, packed into the store.

MVD's own file format was not published in a form we could read, so any dataset of split
lists plus per-id feature arrays works (`vmr synth --dataset mvd` writes one):

    <root>/splits/{train,val,test}.csv      header `video_id,music_id` (further columns are
                                            ignored); a song may serve several videos
    <root>/features/video/<video_id>.npy    [frames, Dv] float (or [Dv]: one frame)
    <root>/features/music/<music_id>.npy    [frames, Dm] float (or [Dm])
    <root>/splits/unpaired_videos.csv       optional: videos in no split (header `video_id`)
    <root>/splits/unpaired_music.csv        optional: songs in no split (header `music_id`)

Dimensions are read from the first file of each modality (the first train row); every other
file must agree. MVD is curated, so unlike HIMV-200K nothing is skipped: a listed id without
its feature file, a wrong dimension, NaN/inf values, a repeated (video_id, music_id) row, a
video listed in two splits or a missing split file is a DataError naming the file (and
line). A video may appear twice in one split with different songs (several positives).

Store: one row per CSV row, frames as float32. Music frames are stored per row, so a song
shared by several videos is stored once per video (simple and mmap-friendly; songs are
small); rows keep `music_id`, so evaluation de-duplicates the music gallery by it. The
source fingerprint covers the CSV bytes and the feature files' names, sizes and mtimes.
The unpaired lists (datamodules.mvd_unpaired) become the store splits `unpaired_video`
and `unpaired_music`, never evaluated. Videos may differ in length (`frames` GS-sampled
frames, padded and masked when shorter); synthetic planted spans add the metrics-only batch
key `salient` (datamodules.salient).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from datamodules.base import StoreDataModule
from datamodules.errors import DataError
from datamodules.feature_store import (
    SPLITS,
    Item,
    ModalitySpec,
    StoreSplit,
    source_fingerprint,
    write_store,
)
from datamodules.himv200k import load_feature
from datamodules.id_csv import id_rows
from datamodules.mvd_unpaired import read_unpaired, unpaired_files, unpaired_items
from datamodules.progress import progress_bar
from datamodules.salient import read_spans, salient_frames
from datamodules.sampling import SparseFrameDataset
from datamodules.unpaired import UnpairedDataset

log = logging.getLogger("vmr")

PREPARE_VERSION = 1
COLUMNS = ("video_id", "music_id")
MODALITIES = ("video", "music")


class Row(NamedTuple):
    video_id: str
    music_id: str
    where: str  # "<csv>:<line>"


def _require_root(root: Path) -> None:
    if not root.is_dir():
        raise DataError(
            f"{root}: MVD data folder not found; generate synthetic data with "
            f"`vmr synth --dataset mvd --out {root}` or put splits/{{train,val,test}}.csv and "
            "features/{video,music}/<id>.npy there (see README, Datasets)"
        )


def split_files(root: Path) -> dict[str, Path]:
    folder = root / "splits"
    files = {s: folder / f"{s}.csv" for s in SPLITS}
    missing = [p.name for p in files.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"{folder}: missing split file(s) {', '.join(missing)} (MVD needs train.csv, "
            "val.csv and test.csv with the header video_id,music_id)"
        )
    return files


def read_split(path: Path) -> list[Row]:
    """The rows of one split CSV, with each row's file:line."""
    rows = [Row(vid, mid, where) for where, (vid, mid) in id_rows(path, COLUMNS)]
    if not rows:
        raise DataError(f"{path}: no rows (only a header)")
    return rows


def read_splits(root: str | Path) -> dict[str, list[Row]]:
    """All three splits, checked: no repeated pair, no video in two splits."""
    root = Path(root)
    splits = {s: read_split(p) for s, p in split_files(root).items()}
    pairs: dict[tuple[str, str], str] = {}
    video_split: dict[str, tuple[str, str]] = {}  # video -> (split, where)
    for split, rows in splits.items():
        for row in rows:
            key = (row.video_id, row.music_id)
            if key in pairs:
                raise DataError(f"{row.where}: row (video_id {row.video_id}, music_id "
                                f"{row.music_id}) repeats {pairs[key]}")
            pairs[key] = row.where
            other = video_split.setdefault(row.video_id, (split, row.where))
            if other[0] != split:
                raise DataError(f"{row.where}: video {row.video_id} is also in split "
                                f"'{other[0]}' ({other[1]}); a video belongs to one split")
    return splits


def _feature_files(root: Path, modality: str) -> dict[str, os.DirEntry]:
    folder = root / "features" / modality
    if not folder.is_dir():
        return {}
    return {e.name[:-4]: e for e in os.scandir(folder) if e.name.endswith(".npy")}


def _check_features(root: Path, splits: dict[str, list[Row]]) -> dict[str, dict]:
    """The feature files by modality (id -> entry), after checking every row has its own."""
    present = {m: _feature_files(root, m) for m in MODALITIES}
    for rows in splits.values():
        for row in rows:
            for m, key in zip(MODALITIES, (row.video_id, row.music_id)):
                if key not in present[m]:
                    raise DataError(f"{row.where}: {m} id {key} has no feature file "
                                    f"{root / 'features' / m / f'{key}.npy'}")
    return present


def _probe_dim(path: Path) -> int:
    """The feature dimension of one file ([D] or [frames, D])."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # numpy raises several types for corrupt files
        raise DataError(f"{path}: cannot read features ({type(e).__name__}: {e})") from None
    if arr.ndim not in (1, 2) or arr.shape[-1] == 0:
        raise DataError(f"{path}: expected shape (dim,) or (frames, dim), got {arr.shape}")
    return int(arr.shape[-1])


def _common_dim(folder: Path, modality: str, ids: set[str]) -> int:
    """The dimension all `ids`' files share, read from their headers (memory-mapped).

    The majority decides, so a single odd file is the one named in the error, whichever
    file happens to be read first.
    """
    dims = {key: _probe_dim(folder / f"{key}.npy") for key in sorted(ids)}
    counts = Counter(dims.values())
    common, n = counts.most_common(1)[0]
    if len(counts) > 1:
        odd = next(key for key, d in dims.items() if d != common)
        raise DataError(
            f"{folder / f'{odd}.npy'}: {modality} dimension {dims[odd]}, but {n} other "
            f"{modality} files have dimension {common}"
        )
    return common


def fingerprint(root: str | Path) -> str:
    """Changes when a split file or any feature file (name, size, mtime) changes."""
    root = Path(root)
    h = hashlib.sha256(f"mvd {PREPARE_VERSION}".encode())
    for split, path in split_files(root).items():
        h.update(split.encode() + b"\0" + path.read_bytes() + b"\0")
    for side, path in unpaired_files(root).items():  # nothing when there is no pool
        h.update(f"unpaired {side}".encode() + b"\0" + path.read_bytes() + b"\0")
    for m in MODALITIES:
        entries = sorted((name, e.stat().st_size, e.stat().st_mtime_ns)
                         for name, e in _feature_files(root, m).items())
        h.update(json.dumps([m, entries]).encode())
    return h.hexdigest()


def pack_mvd(root: str | Path, out: str | Path | None = None, progress: bool = True) -> Path:
    """Read the MVD layout under `root` (module docstring) and write the store to `out`."""
    root = Path(root)
    out = Path(out) if out else root / "store"
    _require_root(root)
    splits = read_splits(root)
    present = _check_features(root, splits)
    paired = {m: {getattr(row, f"{m}_id") for rows in splits.values() for row in rows}
              for m in MODALITIES}
    pool = read_unpaired(root, paired, present)
    folder = {m: root / "features" / m for m in MODALITIES}
    dims = {m: _common_dim(folder[m], m, paired[m] | {x.id for x in pool.get(m, ())})
            for m in MODALITIES}
    total = sum(len(rows) for rows in splits.values()) + sum(len(x) for x in pool.values())
    bar = progress_bar(progress, total=total, desc="prepare mvd", unit="pair")

    def items(split: str) -> Iterator[Item]:
        for row in splits[split]:
            arrays = {m: load_feature(folder[m] / f"{key}.npy", dims[m], key)
                      for m, key in zip(MODALITIES, (row.video_id, row.music_id))}
            bar.update(1)
            yield Item(row.video_id, row.music_id, arrays)

    songs = {row.music_id for rows in splits.values() for row in rows}
    source = {"dataset": "mvd", "root": str(root.resolve()), "fingerprint": fingerprint(root),
              "rows": {s: len(r) for s, r in splits.items()}, "songs": len(songs)}
    if pool:
        source["unpaired"] = {side: len(x) for side, x in pool.items()}
    modalities = {m: ModalitySpec(dims[m], "float32") for m in MODALITIES}
    stored = {s: items(s) for s in SPLITS} | unpaired_items(root, pool, dims, bar)
    try:
        write_store(out, stored, modalities, source)
    finally:
        bar.close()
    log.info("mvd: packed %d rows (%s; %d distinct songs) into %s", total,
             ", ".join(f"{s} {len(r)}" for s, r in splits.items()), len(songs), out)
    return out


def store_is_current(root: str | Path, store: str | Path) -> bool:
    return source_fingerprint(store) == fingerprint(root)


class MVDDataModule(StoreDataModule):
    """MVD-style split CSVs + per-id arrays, `frames` GS-sampled frames per modality."""

    def __init__(
        self,
        root: str | Path,
        store: str | Path | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        frames: int = 32,
        synthetic: dict | None = None,
    ):
        super().__init__(root, store, batch_size, eval_batch_size, num_workers)
        if frames < 1:
            raise DataError(f"frames={frames} must be >= 1")
        self.frames = frames
        self.synthetic = synthetic

    def ensure_store(self) -> Path:
        if self.synthetic is not None:
            self._ensure_synthetic()
        _require_root(self.root)  # a clear error before any "packing" message
        if not store_is_current(self.root, self.store_path):
            log.info("mvd: packing %s into %s", self.root, self.store_path)
            pack_mvd(self.root, self.store_path)
        return self.store_path

    def make_dataset(self, split: StoreSplit) -> SparseFrameDataset:
        # Global Sparse sampling: random frames in training, segment centres otherwise.
        return SparseFrameDataset(split, self.frames, train=split.split == "train",
                                  salient=salient_frames(split, self._spans()))

    def make_unpaired_dataset(self, split: StoreSplit, side: str, train: bool,
                              key_offset: int) -> UnpairedDataset:
        salient = salient_frames(split, self._spans()) if side == "video" else None
        return UnpairedDataset(split, side, self.frames, train=train, key_offset=key_offset,
                               salient=salient)

    def _spans(self) -> dict | None:
        """Planted salient spans (synthetic data; metrics only), read once."""
        if not hasattr(self, "_planted_spans"):
            self._planted_spans = read_spans(self.root)
        return self._planted_spans

    def _ensure_synthetic(self) -> None:
        from datamodules.synthetic.mvd import ensure_synthetic_mvd

        ensure_synthetic_mvd(self.root, self.synthetic or {})
