"""`prepare_youtube8m`: selected YouTube-8M records -> a feature store, and its staleness.

Each record whose labels include a selected label (default "Music video") becomes one pair:
its `rgb` sequence is the video side and its `audio` sequence the music side (music_id =
video id). Codes stay uint8 in the store; the loader dequantises them. Splits: see
youtube8m_splits; skipped records: youtube8m_skips. Every check (train-only folder, duplicate
ids, text_emb, empty splits) runs before the store is written, and the store is written
atomically, so a failed prepare leaves nothing behind.

Precomputed text embeddings: when the kept records carry a `text_emb` context feature (floats,
as `vmr synth --dataset youtube8m --text` writes), the store gets a further modality
"text_emb" (float32, one frame per item), which the loaders return as batch["text_emb"]
[B, D]. It is all or nothing: every kept record must carry it with the same D, or a
DataError names the first record that lacks it or disagrees (file, byte offset, id); records
are not silently dropped for it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.errors import DataError
from datamodules.feature_store import SPLITS, Item, ModalitySpec, read_meta, write_store
from datamodules.tfrecord_framing import offset_text, record_place
from datamodules.youtube8m_files import fingerprint, frame_folder, source_files
from datamodules.youtube8m_labels import resolve_labels
from datamodules.youtube8m_records import AUDIO_DIM, DEQUANTIZE, RGB_DIM
from datamodules.youtube8m_scan import Scan, scan_all
from datamodules.youtube8m_skips import (
    check_some_kept,
    check_splits_filled,
    outside_train,
    skip_text,
)
from datamodules.youtube8m_splits import SplitSettings, assign_splits, check_not_train_only

log = logging.getLogger("vmr")

MODALITIES = {"video": ModalitySpec(RGB_DIM, "uint8", DEQUANTIZE),
              "music": ModalitySpec(AUDIO_DIM, "uint8", DEQUANTIZE)}


def _check_unique(files: list[Path], scans: list[Scan]) -> None:
    seen: dict[str, str] = {}
    for path, scan in zip(files, scans):
        for row in scan.rows:
            here = f"{path} {offset_text(row['offset'], scan.compression)}"
            if row["id"] in seen:
                raise DataError(f"{here}: id {row['id']} already seen at {seen[row['id']]}")
            seen[row["id"]] = here


def _text_emb_dim(files: list[Path], scans: list[Scan]) -> int | None:
    """D when every kept record carries a `text_emb` of D values; None when none does."""
    first: tuple[int, str] | None = None  # (D, where) of the first record with one
    lacking: str | None = None
    for path, scan in zip(files, scans):
        for row in scan.rows:
            emb = row["text_emb"]
            here = f"{record_place(path, row['offset'], scan.compression)} (id {row['id']})"
            if emb is None:
                lacking = lacking or here
            elif first is None:
                first = (len(emb), here)
            elif len(emb) != first[0]:
                raise DataError(f"{here}: 'text_emb' has {len(emb)} values, but {first[1]} has "
                                f"{first[0]}; every record needs the same dimension")
            if first is not None and lacking is not None:
                raise DataError(f"{lacking}: no 'text_emb', but {first[1]} has one; every "
                                "selected record must carry text_emb, or none")
    return None if first is None else first[0]


def _items(scans: list[Scan], spill: Path, split: str, emb_dim: int | None) -> Iterator[Item]:
    for k, scan in enumerate(scans):
        arrays = {
            m: np.memmap(f"{spill / str(k)}.{m}", dtype=np.uint8, mode="r",
                         shape=(n, MODALITIES[m].dim)) if n else None
            for m, n in scan.frames.items()
        }
        for row in scan.rows:
            if row["split"] != split:
                continue
            frames = {m: arrays[m][row[m][0] : row[m][0] + row[m][1]] for m in arrays}
            if emb_dim is not None:
                frames["text_emb"] = row["text_emb"][None, :]
            extra: dict[str, Any] = {"labels": row["labels"]}
            if row["text"] is not None:
                extra["text"] = row["text"]
            yield Item(row["id"], row["id"], frames, extra)


def prepare_youtube8m(
    src: str | Path,
    out: str | Path | None = None,
    labels: Sequence[str | int] = ("Music video",),
    workers: int = 2,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    progress: bool = True,
    split_seed: int = 0,
) -> Path:
    """Select the labelled videos of a YouTube-8M frame-level folder into a feature store."""
    src = Path(src)
    out = Path(out) if out else src / "store"
    settings = SplitSettings(val_fraction, test_fraction, split_seed)
    settings.check()
    files = source_files(src)
    folder = frame_folder(src)
    check_not_train_only(src, folder, files, settings)
    label_ids = resolve_labels(src, labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    spill = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".spill", dir=out.parent))
    try:
        scans = scan_all(files, spill, label_ids, workers, progress)
        check_some_kept(folder, scans)
        _check_unique(files, scans)
        emb_dim = _text_emb_dim(files, scans)
        modalities = dict(MODALITIES)
        if emb_dim is not None:
            modalities["text_emb"] = ModalitySpec(emb_dim, "float32")
        scheme = assign_splits(src, folder, files, [s.rows for s in scans], settings,
                               outside_train(files, scans))
        check_splits_filled(folder, files, scans, scheme)
        skips = sum((scan.skips for scan in scans), Counter())
        source = {
            "dataset": "youtube8m", "root": str(src.resolve()), "files": len(files),
            "fingerprint": fingerprint(files, label_ids, settings.val, settings.test,
                                       settings.seed),
            "labels": label_ids, "splits": scheme.text, "split_settings": settings.as_meta(),
            "skipped": dict(sorted(skips.items())),
        }
        if emb_dim is not None:
            source["text_emb_dim"] = emb_dim
        write_store(out, {s: _items(scans, spill, s, emb_dim) for s in SPLITS}, modalities,
                    source)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    counts = Counter(row["split"] for scan in scans for row in scan.rows)
    kept = sum(counts.values())
    level = logging.WARNING if set(skips) - {"no selected label"} else logging.INFO
    log.log(level, "youtube8m: kept %d of %d records from %d files (train %d, val %d, test %d; "
            "%s); skipped: %s", kept, kept + sum(skips.values()), len(files), counts["train"],
            counts["val"], counts["test"], scheme.text, skip_text(skips) or "none")
    return out


def recorded_settings(store: Path) -> SplitSettings | None:
    """The split settings `store` was prepared with, or None when there is no readable store."""
    try:
        return SplitSettings.from_meta(read_meta(store)["source"])
    except DataError:
        return None


def store_is_current(root: Path, store: Path, labels: Sequence[str | int],
                     val_fraction: float | None = None, test_fraction: float | None = None,
                     split_seed: int | None = None) -> bool:
    """Whether `store` was prepared from `root`'s present files with these settings.

    Split settings left None are the ones the store was prepared with (e.g. by `vmr prepare
    --val-fraction`), so such a store stays current for a DataModule that sets none.
    """
    try:
        meta = read_meta(store)
    except DataError:
        return False
    recorded = SplitSettings.from_meta(meta["source"])
    settings = SplitSettings(
        recorded.val_fraction if val_fraction is None else val_fraction,
        recorded.test_fraction if test_fraction is None else test_fraction,
        recorded.seed if split_seed is None else split_seed)
    files = source_files(root)
    want = fingerprint(files, resolve_labels(root, labels), settings.val, settings.test,
                       settings.seed)
    return meta["source"].get("fingerprint") == want
