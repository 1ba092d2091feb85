"""MGSV-EC (Xin et al., ICCV 2025): the released CLIP/AST feature files, packed into the store.

Layout (datamodules.mgsv_ec_layout; docs/datasets.md): three annotation CSVs and, per id, a
padded feature tensor plus a mask in .pt files. `<root>` must contain the CSV folder
(`dataset/MGSV-EC/`) and the folder holding `vit_feature1/` and `ast_feature2p5/` (at
`features/Kuai_feature/` as the official code expects, or any level `feature_dir_candidates`
lists, since the zip's top folder was never verified).

Store: one row per CSV row (a query video and its track). Only valid frames/windows are
stored (mask != 0), so padding never reaches a model and lengths vary per row; the batch
pads to the longest row with a False mask. Music is stored per row (a track used by 14
videos is stored 14 times; simple and mmap-friendly, about 8.5 GB of float32 for the
release's training split). Each index row keeps the CSV's clip boundaries and durations
(`video_start`, `video_end`, `music_start`, `music_end`, `music_total_duration`, ...), the
GT moment's window range `moment_windows` = [first, last] and `csv_line`
(`test_data.csv:17`), for moment-level work; rows keep `music_id`, so evaluation galleries
are de-duplicated tracks and every video of a track counts as its positive.

Errors are one line naming the file or row: a missing CSV or feature folder, a CSV row
without its four .pt files, a damaged file, a wrong shape, a mask with no valid entry,
NaN/inf. The source fingerprint covers the CSV bytes and the .pt files' names, sizes and
mtimes, so a changed release is packed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

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
from datamodules.mgsv_ec_csv import Row, read_splits
from datamodules.mgsv_ec_layout import (
    MUSIC_DIM,
    MUSIC_DIR,
    VIDEO_DIM,
    VIDEO_DIR,
    feature_dir_candidates,
    feature_path,
    moment_windows,
)
from datamodules.mgsv_ec_tensors import TrackCache, load_valid
from datamodules.pairs import PairDataset
from datamodules.progress import progress_bar

log = logging.getLogger("vmr")

PREPARE_VERSION = 1
DIMS = {"video": VIDEO_DIM, "music": MUSIC_DIM}


def _holds_features(folder: Path) -> bool:
    return (folder / VIDEO_DIR).is_dir() and (folder / MUSIC_DIR).is_dir()


def find_feature_dir(root: Path, depth: int = 3) -> Path:
    """The folder under `root` that holds both vit_feature1/ and ast_feature2p5/.

    The usual places first (feature_dir_candidates), then any folder at most `depth` levels
    down (never inside the feature folders or a store); two such folders are ambiguous.
    """
    for folder in feature_dir_candidates(root):
        if _holds_features(folder):
            return folder
    found, level = [], [root]
    for _ in range(depth):
        level = [e for d in level for e in sorted(d.iterdir()) if e.is_dir()
                 and not e.name.startswith(".") and e.name not in (VIDEO_DIR, MUSIC_DIR, "store")]
        found += [d for d in level if _holds_features(d)]
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(f"{root}: several MGSV-EC feature folders ({', '.join(map(str, found))});"
                        " keep one")
    raise DataError(f"{root}: no folder with the MGSV-EC feature folders {VIDEO_DIR}/ and "
                    f"{MUSIC_DIR}/ (searched {depth} levels down); unzip MGSV_feature.zip from "
                    "the Hugging Face dataset xxayt/MGSV-EC there (docs/datasets.md)")


def _require_root(root: Path) -> None:
    if not root.is_dir():
        raise DataError(
            f"{root}: MGSV-EC data folder not found; generate synthetic data with "
            f"`vmr synth --dataset mgsv_ec --out {root}` or download the release "
            "(docs/datasets.md)")


def _stems(folder: Path) -> dict[str, os.DirEntry]:
    if not folder.is_dir():
        return {}
    return {e.name[:-3]: e for e in os.scandir(folder) if e.name.endswith(".pt")}


def _listing(parent: Path) -> dict[tuple[str, str], dict[str, os.DirEntry]]:
    """(side, kind) -> {key: directory entry} of every .pt file of the release."""
    return {(side, kind): _stems(feature_path(parent, side, kind, "x").parent)
            for side in DIMS for kind in ("feature", "mask")}


def _check_files(parent: Path, splits: dict[str, list[Row]], listing: dict) -> None:
    """Every row's four files exist (before anything is read): else name the row and file."""
    for rows in splits.values():
        for row in rows:
            for side, key in (("video", row.video_id), ("music", row.music_id)):
                for kind in ("feature", "mask"):
                    if key not in listing[(side, kind)]:
                        raise DataError(f"{row.where}: {side} {key} has no {kind} file "
                                        f"{feature_path(parent, side, kind, key)}")


def fingerprint(root: str | Path) -> str:
    """Changes when a CSV or any .pt file (name, size, mtime) changes."""
    root = Path(root)
    csv_dir, _ = read_splits(root)
    parent = find_feature_dir(root)
    h = hashlib.sha256(f"mgsv_ec {PREPARE_VERSION}".encode())
    for split in SPLITS:
        h.update(split.encode() + b"\0" + (csv_dir / f"{split}_data.csv").read_bytes() + b"\0")
    for (side, kind), entries in sorted(_listing(parent).items()):
        stats = sorted((k, e.stat().st_size, e.stat().st_mtime_ns) for k, e in entries.items())
        h.update(json.dumps([side, kind, stats]).encode())
    return h.hexdigest()


def index_extra(row: Row) -> dict:
    """What the store's index keeps of a row besides ids and offsets (clip boundaries...)."""
    first, last = moment_windows(row.meta["music_start"], row.meta["music_end"])
    return {**row.meta, "moment_windows": [first, last], "csv_line": Path(row.where).name}


def pack_mgsv_ec(root: str | Path, out: str | Path | None = None, progress: bool = True) -> Path:
    """Read the MGSV-EC release under `root` (module docstring) and write the store to `out`."""
    root = Path(root)
    out = Path(out) if out else root / "store"
    _require_root(root)
    _, splits = read_splits(root)
    parent = find_feature_dir(root)
    listing = _listing(parent)
    _check_files(parent, splits, listing)
    total = sum(len(rows) for rows in splits.values())
    bar = progress_bar(progress, total=total, desc="prepare mgsv_ec", unit="video")
    track = TrackCache(parent, MUSIC_DIM)

    def items(split: str) -> Iterator[Item]:
        for row in splits[split]:
            arrays = {"video": load_valid(parent, "video", row.video_id, VIDEO_DIM),
                      "music": track(row.music_id)}
            bar.update(1)
            yield Item(row.video_id, row.music_id, arrays, index_extra(row))

    tracks = {s: len({r.music_id for r in rows}) for s, rows in splits.items()}
    source = {"dataset": "mgsv_ec", "root": str(root.resolve()), "fingerprint": fingerprint(root),
              "feature_dir": str(parent.resolve()),
              "rows": {s: len(r) for s, r in splits.items()}, "tracks": tracks}
    modalities = {m: ModalitySpec(d, "float32") for m, d in DIMS.items()}
    try:
        write_store(out, {s: items(s) for s in SPLITS}, modalities, source)
    finally:
        bar.close()
    log.info("mgsv_ec: packed %d videos (%s) into %s", total,
             ", ".join(f"{s} {len(r)} over {tracks[s]} tracks" for s, r in splits.items()), out)
    return out


def store_is_current(root: str | Path, store: str | Path) -> bool:
    return source_fingerprint(store) == fingerprint(root)


class MGSVECDataModule(StoreDataModule):
    """MGSV-EC features: every valid frame (<= 50 per video) and window (<= 96 per track).

    Batches carry all of a row's valid frames/windows, padded to the batch's longest row
    with a False mask (the official loader feeds all 50/96 slots with the padding masked).
    """

    def __init__(self, root: str | Path, store: str | Path | None = None,
                 batch_size: int = 256, eval_batch_size: int = 1000, num_workers: int = 0,
                 synthetic: dict | None = None):
        super().__init__(root, store, batch_size, eval_batch_size, num_workers)
        self.synthetic = synthetic

    def ensure_store(self) -> Path:
        if self.synthetic is not None:
            from datamodules.synthetic.mgsv_ec import ensure_synthetic_mgsv_ec

            ensure_synthetic_mgsv_ec(self.root, self.synthetic)
        _require_root(self.root)
        if not store_is_current(self.root, self.store_path):
            log.info("mgsv_ec: packing %s into %s", self.root, self.store_path)
            pack_mgsv_ec(self.root, self.store_path)
        return self.store_path

    def make_dataset(self, split: StoreSplit) -> PairDataset:
        return PairDataset(split)
