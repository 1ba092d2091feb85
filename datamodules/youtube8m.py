"""YouTube-8M music videos: selecting them from frame-level TFRecords and packing the store.

Expected layout (as downloaded, or as `vmr synth --dataset youtube8m` writes it):

    <root>/frame/*.tfrecord   frame-level SequenceExamples (or the files directly in <root>)
    <root>/vocabulary.csv     label names (needed when labels are selected by name)

Each record whose labels include a selected label (default "Music video") becomes one pair:
its `rgb` sequence is the video side and its `audio` sequence the music side (music_id =
video id). Codes stay uint8 in the store; the loader dequantises them.

Splits: when every file name starts with train/validate/test, YouTube-8M's partitions are
kept (validate -> val). If that leaves val or test empty (the official test files carry no
labels), the other one is split by a hash of the id, test taking
test_fraction / (val_fraction + test_fraction) of it; if both are empty, everything is split
by the hash as for other file names: sha1(id) in [0, 1) below test_fraction -> test, below
test_fraction + val_fraction -> val, else train. Records without a selected label, with an
empty sequence, or missing `rgb`/`audio` are skipped and counted; a damaged file is an error.

Precomputed text embeddings: when the kept records carry a `text_emb` context feature (floats,
as `vmr synth --dataset youtube8m --text` writes), the store gets a further modality
"text_emb" (float32, one frame per item), which the loaders return as batch["text_emb"]
[B, D]. It is all or nothing: every kept record must carry it with the same D, or a
DataError names the first record that lacks it or disagrees (file, byte offset, id); records
are not silently dropped for it. A new or changed source file changes the fingerprint, so a
store never goes stale on it.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import difflib
import hashlib
import json
import logging
import multiprocessing
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.base import StoreDataModule
from datamodules.errors import DataError
from datamodules.feature_store import SPLITS, Item, ModalitySpec, StoreSplit, read_meta, write_store
from datamodules.progress import progress_bar
from datamodules.sampling import SparseFrameDataset
from datamodules.tfrecord import AUDIO_DIM, DEQUANTIZE, RGB_DIM, read_frame_level

log = logging.getLogger("vmr")

PREPARE_VERSION = 1
VOCABULARY = "vocabulary.csv"
PARTITIONS = {"train": "train", "validate": "val", "test": "test"}
MODALITIES = {"video": ModalitySpec(RGB_DIM, "uint8", DEQUANTIZE),
              "music": ModalitySpec(AUDIO_DIM, "uint8", DEQUANTIZE)}


def source_files(root: str | Path) -> list[Path]:
    """The frame-level TFRecords under `<root>/frame` (or `<root>`), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: YouTube-8M folder not found; generate synthetic data with "
            f"`vmr synth --dataset youtube8m --out {root}` or put frame-level *.tfrecord "
            "files in <root>/frame (see README, Datasets)"
        )
    folder = root / "frame" if (root / "frame").is_dir() else root
    files = sorted(folder.glob("*.tfrecord"))
    if not files:
        raise DataError(f"{folder}: no frame-level *.tfrecord files")
    return files


def read_vocabulary(path: Path) -> dict[str, int]:
    """Label name -> index from a YouTube-8M vocabulary.csv."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"Index", "Name"} <= set(reader.fieldnames or ()):
                raise DataError(f"{path}: needs the columns Index and Name (YouTube-8M format)")
            vocab = {}
            for row in reader:
                try:
                    vocab[row["Name"]] = int(row["Index"])
                except (TypeError, ValueError):
                    raise DataError(
                        f"{path}:{reader.line_num}: bad Index {row.get('Index')!r}"
                    ) from None
    except FileNotFoundError:
        raise DataError(f"{path}: not found (needed to select labels by name)") from None
    return vocab


def resolve_labels(root: str | Path, labels: Sequence[str | int] | str | int) -> list[int]:
    """Label ids for `labels`: ints (or digit strings) as given, names via vocabulary.csv."""
    if isinstance(labels, (str, int)):
        labels = [labels]
    ids, names = set(), []
    for label in labels:
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            ids.add(int(label))
        elif isinstance(label, str) and label.strip().isdigit():
            ids.add(int(label))
        elif isinstance(label, str) and label.strip():
            names.append(label.strip())
        else:
            raise DataError(f"labels: {label!r} is neither a label id nor a label name")
    if names:
        path = Path(root) / VOCABULARY
        vocab = read_vocabulary(path)
        folded = {k.casefold(): v for k, v in vocab.items()}
        for name in names:
            if name.casefold() not in folded:
                close = difflib.get_close_matches(name, list(vocab), n=3, cutoff=0.6)
                hint = f" (close matches: {', '.join(map(repr, close))})" if close else ""
                raise DataError(f"{path}: no label named {name!r}{hint}")
            ids.add(folded[name.casefold()])
    if not ids:
        raise DataError("labels: no label selected")
    return sorted(ids)


def hash_unit(vid: str) -> float:
    """A stable pseudo-random number in [0, 1) for an id."""
    return int.from_bytes(hashlib.sha1(vid.encode()).digest()[:8], "big") / 2.0**64


def partition_of(path: Path) -> str | None:
    for prefix, split in PARTITIONS.items():
        if path.name.startswith(prefix):
            return split
    return None


def fingerprint(files: list[Path], label_ids: list[int], val_fraction: float,
                test_fraction: float) -> str:
    """Changes when a source file, the label selection or the split settings change."""
    entries = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    settings = [PREPARE_VERSION, label_ids, val_fraction, test_fraction, entries]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()


@dataclasses.dataclass
class _Scan:
    """What one worker found in one file; the frames went to spill files."""

    rows: list[dict]
    skips: Counter
    frames: dict[str, int]


def _scan_file(path: Path, spill: Path, label_ids: list[int]) -> _Scan:
    skips: Counter = Counter()
    rows: list[dict] = []
    frames = {"video": 0, "music": 0}  # text_emb stays in the rows (one small vector each)
    with open(f"{spill}.video", "wb") as fv, open(f"{spill}.music", "wb") as fm:
        for rec in read_frame_level(path, labels=label_ids, skips=skips):
            row = {"id": rec.id, "labels": rec.labels, "text": rec.text, "offset": rec.offset,
                   "text_emb": rec.text_emb}
            for name, arr, f in (("video", rec.rgb, fv), ("music", rec.audio, fm)):
                row[name] = (frames[name], len(arr))
                f.write(arr.tobytes())
                frames[name] += len(arr)
            rows.append(row)
    return _Scan(rows, skips, frames)


def _scan_all(files: list[Path], spill: Path, label_ids: list[int], workers: int,
              progress: bool) -> list[_Scan]:
    bar = progress_bar(progress, total=len(files), desc="prepare youtube8m", unit="file")
    try:
        if workers <= 1:
            scans = []
            for k, path in enumerate(files):
                scans.append(_scan_file(path, spill / str(k), label_ids))
                bar.update(1)
            return scans
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        results: list[_Scan | None] = [None] * len(files)
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(_scan_file, path, spill / str(k), label_ids): k
                       for k, path in enumerate(files)}
            try:
                for fut in cf.as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
        return results  # type: ignore[return-value]
    finally:
        bar.close()


def _assign_splits(files: list[Path], scans: list[_Scan], val_fraction: float,
                   test_fraction: float) -> str:
    """Set row["split"] on every row; returns a description of the scheme."""
    parts = [partition_of(f) for f in files]
    official = all(p is not None for p in parts)
    if official:
        for part, scan in zip(parts, scans):
            for row in scan.rows:
                row["split"] = part
        have = Counter(row["split"] for scan in scans for row in scan.rows)
        if have["val"] and have["test"]:
            return "official partitions"
        if have["val"] or have["test"]:
            share = test_fraction / (val_fraction + test_fraction)
            for scan in scans:
                for row in scan.rows:
                    if row["split"] != "train":
                        row["split"] = "test" if hash_unit(row["id"]) < share else "val"
            return f"official partitions; validate/test split by id hash ({share:.2f} test)"
    for scan in scans:
        for row in scan.rows:
            u = hash_unit(row["id"])
            row["split"] = ("test" if u < test_fraction
                            else "val" if u < test_fraction + val_fraction else "train")
    return ("official partitions leave val and test empty; " if official else "") + (
        f"split by id hash (val {val_fraction}, test {test_fraction})")


def _check_unique(files: list[Path], scans: list[_Scan]) -> None:
    seen: dict[str, str] = {}
    for path, scan in zip(files, scans):
        for row in scan.rows:
            here = f"{path} byte offset {row['offset']}"
            if row["id"] in seen:
                raise DataError(f"{here}: id {row['id']} already seen at {seen[row['id']]}")
            seen[row["id"]] = here


def _text_emb_dim(files: list[Path], scans: list[_Scan]) -> int | None:
    """D when every kept record carries a `text_emb` of D values; None when none does."""
    first: tuple[int, str] | None = None  # (D, where) of the first record with one
    lacking: str | None = None
    for path, scan in zip(files, scans):
        for row in scan.rows:
            emb = row["text_emb"]
            here = f"{path}: record at byte offset {row['offset']} (id {row['id']})"
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


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"val_fraction={val_fraction}, test_fraction={test_fraction}: both must be in "
            "(0, 1) with a sum below 1"
        )


def prepare_youtube8m(
    src: str | Path,
    out: str | Path | None = None,
    labels: Sequence[str | int] = ("Music video",),
    workers: int = 2,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    progress: bool = True,
) -> Path:
    """Select the labelled videos of a YouTube-8M frame-level folder into a feature store."""
    src = Path(src)
    out = Path(out) if out else src / "store"
    _check_fractions(val_fraction, test_fraction)
    files = source_files(src)
    label_ids = resolve_labels(src, labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    spill = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".spill", dir=out.parent))
    try:
        scans = _scan_all(files, spill, label_ids, workers, progress)
        _check_unique(files, scans)
        emb_dim = _text_emb_dim(files, scans)
        modalities = dict(MODALITIES)
        if emb_dim is not None:
            modalities["text_emb"] = ModalitySpec(emb_dim, "float32")
        scheme = _assign_splits(files, scans, val_fraction, test_fraction)

        def items(split: str) -> Iterator[Item]:
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

        skips = sum((scan.skips for scan in scans), Counter())
        source = {
            "dataset": "youtube8m", "root": str(src.resolve()), "files": len(files),
            "fingerprint": fingerprint(files, label_ids, val_fraction, test_fraction),
            "labels": label_ids, "splits": scheme, "skipped": dict(sorted(skips.items())),
        }
        if emb_dim is not None:
            source["text_emb_dim"] = emb_dim
        write_store(out, {s: items(s) for s in SPLITS}, modalities, source)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    counts = Counter(row["split"] for scan in scans for row in scan.rows)
    kept = sum(counts.values())
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(skips.items())) or "none"
    level = logging.WARNING if set(skips) - {"no selected label"} else logging.INFO
    log.log(level, "youtube8m: kept %d of %d records from %d files (train %d, val %d, test %d; "
            "%s); skipped: %s", kept, kept + sum(skips.values()), len(files), counts["train"],
            counts["val"], counts["test"], scheme, skipped)
    return out


def store_is_current(root: Path, store: Path, labels: Sequence[str | int],
                     val_fraction: float, test_fraction: float) -> bool:
    try:
        meta = read_meta(store)
    except DataError:
        return False
    files = source_files(root)
    want = fingerprint(files, resolve_labels(root, labels), val_fraction, test_fraction)
    return meta["source"].get("fingerprint") == want


class YouTube8MDataModule(StoreDataModule):
    """YouTube-8M music videos, `frames` GS-sampled frames per modality; optionally synthetic."""

    def __init__(
        self,
        root: str | Path,
        store: str | Path | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        frames: int = 32,
        labels: Sequence[str | int] = ("Music video",),
        workers: int = 2,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        synthetic: dict | None = None,
    ):
        super().__init__(root, store, batch_size, eval_batch_size, num_workers)
        if frames < 1:
            raise DataError(f"frames={frames} must be >= 1")
        self.frames = frames
        self.labels = [labels] if isinstance(labels, (str, int)) else list(labels)
        self.workers = workers
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.synthetic = synthetic

    def ensure_store(self) -> Path:
        if self.synthetic is not None:
            self._ensure_synthetic()
        source_files(self.root)  # a clear error before any "preparing" message
        current = store_is_current(self.root, self.store_path, self.labels,
                                   self.val_fraction, self.test_fraction)
        if not current:
            log.info("youtube8m: preparing %s into %s", self.root, self.store_path)
            prepare_youtube8m(self.root, self.store_path, self.labels, self.workers,
                              self.val_fraction, self.test_fraction)
        return self.store_path

    def make_dataset(self, split: StoreSplit) -> SparseFrameDataset:
        # Global Sparse sampling: random frames in training, segment centres otherwise.
        return SparseFrameDataset(split, self.frames, train=split.split == "train")

    def _ensure_synthetic(self) -> None:
        from datamodules.synthetic.ensure import ensure_synthetic, planted_spec
        from datamodules.synthetic.youtube8m import write_youtube8m

        settings = dict(self.synthetic or {})
        extra = {"shards": int(settings.pop("shards", 4)),
                 "non_music": float(settings.pop("non_music", 0.25)),
                 "missing": float(settings.pop("missing", 0.0)),
                 "shared_songs": float(settings.pop("shared_songs", 0.0)),
                 # Text embeddings only when asked for (the registry asks when the model reads
                 # precomputed text), so existing synthetic roots and stores stay as they are.
                 "text_emb_dim": int(settings.pop("text_emb_dim", 0))}
        settings.update(music_dim=128, video_dim=1024)
        if not 0.0 <= extra["shared_songs"] < 1.0:
            raise DataError(f"data.synthetic.shared_songs={extra['shared_songs']} must be in "
                            "[0, 1)")
        spec = planted_spec(settings)
        wanted = {"dataset": "youtube8m", **extra, **dataclasses.asdict(spec)}
        if not (spec.text and extra["text_emb_dim"] > 0):
            del wanted["text_emb_dim"]  # synth.json has it only when text_emb was written
        ensure_synthetic(self.root, wanted, lambda: write_youtube8m(spec, self.root, **extra),
                         "youtube8m")
