"""HIMV-200K (Hong et al. 2018): reading its on-disk layout and packing it into the store.

The dataset was released only as `Youtube_ID.txt` (one YouTube id or URL per line); users
extract features themselves (`vmr extract`, or the authors' scripts). Expected layout:

    <root>/Youtube_ID.txt
    <root>/splits/{train,val,test}.txt       optional; created on first use, see below
    <root>/features/music/<id>.npy | <id>.pkl  1140-d (the authors' pickles are accepted)
    <root>/features/video/<id>.npy           1024-d, or [frames, 1024] frame features

No split files were released. The authors' code implies 4000 validation and 1000 test
pairs, so when `splits/` is absent the last `test_size` ids become the test split, the
`val_size` ids before them the validation split, the rest training, and the files are
written so the choice is visible and stable. Ids without features (deleted videos) are
skipped and counted in one warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from datamodules.atomic import atomic_directory, write_text
from datamodules.base import StoreDataModule
from datamodules.errors import DataError
from datamodules.feature_store import SPLITS, Item, ModalitySpec, read_meta, write_store
from datamodules.safe_pickle import load_array_pickle

log = logging.getLogger("vmr")

MUSIC_DIM = 1140
VIDEO_DIM = 1024
ID_FILE = "Youtube_ID.txt"
_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_NPY_MAGIC = np.lib.format.MAGIC_PREFIX
_URL_ID = re.compile(r"(?:[?&]v=|youtu\.be/|/embed/|/shorts/|/v/)([A-Za-z0-9_-]+)")


def parse_youtube_id(text: str) -> str | None:
    """A bare id, or the id inside a watch/short/embed URL; None if neither."""
    text = text.strip()
    if _ID.match(text):
        return text
    m = _URL_ID.search(text)
    return m.group(1) if m else None


def _lines(path: Path) -> list[tuple[int, str]]:
    """Numbered lines of a text list (UTF-8, with or without a BOM; any line endings)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return list(enumerate(text.splitlines(), start=1))


def read_youtube_ids(path: Path) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    for lineno, line in _lines(path):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        vid = parse_youtube_id(line)
        if vid is None:
            raise DataError(f"{path}:{lineno}: not a YouTube id or URL: {line.strip()!r}")
        if vid not in seen:
            seen.add(vid)
            ids.append(vid)
    if not ids:
        raise DataError(f"{path}: no YouTube ids")
    return ids


def load_or_create_splits(
    root: Path, ids: list[str], val_size: int, test_size: int
) -> dict[str, list[str]]:
    folder = root / "splits"
    present = [s for s in SPLITS if (folder / f"{s}.txt").exists()]
    if present and len(present) < len(SPLITS):
        missing = ", ".join(f"{s}.txt" for s in SPLITS if s not in present)
        raise DataError(f"{folder}: missing split file(s) {missing} (found {', '.join(present)})")
    if not present:
        if val_size < 1 or test_size < 1:
            raise DataError(
                f"{folder}: no split files, and val_size={val_size}, test_size={test_size} "
                "cannot create them (both must be >= 1)"
            )
        if val_size + test_size >= len(ids):
            raise DataError(
                f"{root / ID_FILE}: {len(ids)} ids cannot make val_size={val_size} and "
                f"test_size={test_size} splits with training ids left over"
            )
        n = len(ids)
        splits = {
            "train": ids[: n - val_size - test_size],
            "val": ids[n - val_size - test_size : n - test_size],
            "test": ids[n - test_size :],
        }
        _write_splits(folder, splits)
        log.info("himv200k: created %s (last %d ids test, %d before them val)", folder,
                 test_size, val_size)
        return splits
    known = set(ids)
    splits = {}
    where: dict[str, str] = {}  # id -> "file:line" of its first mention
    for split in SPLITS:
        path = folder / f"{split}.txt"
        members = []
        for lineno, line in _lines(path):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            vid = parse_youtube_id(line)
            if vid is None or vid not in known:
                raise DataError(f"{path}:{lineno}: id {line.strip()!r} is not in {ID_FILE}")
            if vid in where:
                raise DataError(f"{path}:{lineno}: id {vid} is already listed at {where[vid]}")
            where[vid] = f"{path}:{lineno}"
            members.append(vid)
        splits[split] = members
    return splits


def _write_splits(folder: Path, splits: dict[str, list[str]]) -> None:
    """All split files or none: a crash must not leave a partial splits/ folder."""
    if folder.exists():  # may hold other files: write next to them, one file at a time
        for split, members in splits.items():
            write_text(folder / f"{split}.txt", "".join(f"{i}\n" for i in members))
        return
    with atomic_directory(folder) as tmp:
        for split, members in splits.items():
            (tmp / f"{split}.txt").write_text("".join(f"{i}\n" for i in members))


def load_feature(path: Path, dim: int, vid: str) -> np.ndarray:
    """One id's features as [frames, dim] float32, validated."""
    try:
        if path.suffix == ".pkl":
            arr = load_array_pickle(path)
        else:
            with open(path, "rb") as f:
                if f.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                    raise DataError(f"{path}: not a NumPy .npy file (corrupt or wrong format)")
            arr = np.load(path, allow_pickle=False)
    except DataError:
        raise
    except Exception as e:  # numpy raises several types for corrupt files
        raise DataError(f"{path}: cannot read features ({type(e).__name__}: {e})") from None
    arr = np.asarray(arr)
    shape = arr.shape
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim or arr.shape[0] == 0:
        raise DataError(f"{path}: expected shape ({dim},) or (frames, {dim}), got {shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: expected numeric features, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: id {vid} has NaN or inf values")
    return arr


def _music_path(root: Path, vid: str) -> Path | None:
    for ext in (".npy", ".pkl"):
        p = root / "features" / "music" / f"{vid}{ext}"
        if p.exists():
            return p
    return None


def fingerprint(root: Path, splits: dict[str, list[str]]) -> str:
    """Changes when the id list, the splits or any feature file changes."""
    h = hashlib.sha256()
    h.update((root / ID_FILE).read_bytes())
    h.update(json.dumps(splits, sort_keys=True).encode())
    for modality in ("music", "video"):
        folder = root / "features" / modality
        if folder.is_dir():
            entries = sorted(
                (e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder)
            )
            h.update(json.dumps(entries).encode())
    return h.hexdigest()


def pack_himv200k(
    root: str | Path, out: str | Path | None = None, val_size: int = 4000, test_size: int = 1000
) -> Path:
    """Read the HIMV-200K layout under `root` and write the feature store to `out`."""
    root = Path(root)
    out = Path(out) if out else root / "store"
    ids = read_youtube_ids(_require_id_file(root))
    splits = load_or_create_splits(root, ids, val_size, test_size)
    missing: list[str] = []

    def items(split: str) -> Iterator[Item]:
        kept = 0
        for vid in splits[split]:
            music, video = _music_path(root, vid), root / "features" / "video" / f"{vid}.npy"
            if music is None or not video.exists():
                missing.append(vid)
                continue
            arrays = {
                "music": load_feature(music, MUSIC_DIM, vid),
                "video": load_feature(video, VIDEO_DIM, vid),
            }
            kept += 1
            yield Item(vid, vid, arrays)
        if kept == 0:
            raise DataError(
                f"{root}: split '{split}' is empty: none of its {len(splits[split])} ids has "
                f"both features/music/<id>.npy|.pkl and features/video/<id>.npy"
            )

    source = {"dataset": "himv200k", "root": str(root.resolve()),
              "fingerprint": fingerprint(root, splits)}
    modalities = {"video": ModalitySpec(VIDEO_DIM, "float32"),
                  "music": ModalitySpec(MUSIC_DIM, "float32")}
    write_store(out, {s: items(s) for s in SPLITS}, modalities, source)
    if missing:
        total = sum(len(v) for v in splits.values())
        log.warning("himv200k: skipped %d of %d ids with missing features (e.g. %s)",
                    len(missing), total, ", ".join(missing[:3]))
    return out


def _require_id_file(root: Path) -> Path:
    path = root / ID_FILE
    if not root.is_dir():
        raise DataError(
            f"{root}: HIMV-200K data folder not found; generate synthetic data with "
            f"`vmr synth --dataset himv200k --out {root}` or put {ID_FILE} and "
            "features/{music,video}/<id>.npy there (see README, Datasets)"
        )
    if not path.exists():
        raise DataError(f"{path}: not found (HIMV-200K lists its videos in {ID_FILE})")
    return path


def store_is_current(root: Path, store: Path, val_size: int, test_size: int) -> bool:
    if not (store / "meta.json").exists():
        return False
    try:
        meta = read_meta(store)
    except DataError:
        return False
    ids = read_youtube_ids(_require_id_file(root))
    splits = load_or_create_splits(root, ids, val_size, test_size)
    return meta["source"].get("fingerprint") == fingerprint(root, splits)


class HIMV200KDataModule(StoreDataModule):
    """HIMV-200K vectors (T = 1) or frame features; optionally synthesised on first use."""

    def __init__(self, *args, val_size: int = 4000, test_size: int = 1000,
                 synthetic: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_size = val_size
        self.test_size = test_size
        self.synthetic = synthetic

    def ensure_store(self) -> Path:
        if self.synthetic is not None:
            self._ensure_synthetic()
        _require_id_file(self.root)  # a clear error before any "packing" message
        if not store_is_current(self.root, self.store_path, self.val_size, self.test_size):
            log.info("himv200k: packing %s into %s", self.root, self.store_path)
            pack_himv200k(self.root, self.store_path, self.val_size, self.test_size)
        return self.store_path

    def _ensure_synthetic(self) -> None:
        from datamodules.synthetic.ensure import ensure_synthetic, planted_spec
        from datamodules.synthetic.himv200k import write_himv200k

        settings = dict(self.synthetic or {})
        missing = settings.pop("missing", 0.0)
        shared = float(settings.pop("shared_songs", 0.0))
        if not 0.0 <= shared < 1.0:
            raise DataError(f"data.synthetic.shared_songs={shared} must be in [0, 1)")
        spec = planted_spec(settings)
        wanted = {"dataset": "himv200k", "missing": missing, "shared_songs": shared,
                  **dataclasses.asdict(spec)}
        ensure_synthetic(self.root, wanted, lambda: write_himv200k(
            spec, self.root, missing=missing, shared_songs=shared), "himv200k")
