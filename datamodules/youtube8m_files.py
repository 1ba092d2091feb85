"""Where YouTube-8M frame-level TFRecords are, which partition each file is, and a fingerprint.

Files are `<root>/frame/*` (or `<root>/*` when there is no frame/ folder) named *.tfrecord or
*.tfrecords, optionally compressed and then named *.gz or *.zlib (the content decides how a
file is read, see tfrecord_compression). YouTube-8M's partition files are named
train*/validate*/test*; other names carry no partition.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datamodules.errors import DataError

PREPARE_VERSION = 1
PARTITIONS = {"train": "train", "validate": "val", "test": "test"}  # file prefix -> split
RECORD_SUFFIXES = (".tfrecord", ".tfrecords")
COMPRESSED_SUFFIXES = ("", ".gz", ".zlib")
PATTERNS = tuple(f"*{r}{c}" for r in RECORD_SUFFIXES for c in COMPRESSED_SUFFIXES)


def frame_folder(root: Path) -> Path:
    return root / "frame" if (root / "frame").is_dir() else root


def is_record_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(r + c) for r in RECORD_SUFFIXES for c in COMPRESSED_SUFFIXES)


def source_files(root: str | Path) -> list[Path]:
    """The frame-level TFRecords under `<root>/frame` (or `<root>`), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: YouTube-8M folder not found; generate synthetic data with "
            f"`vmr synth --dataset youtube8m --out {root}` or put frame-level *.tfrecord "
            "files in <root>/frame (see README, Datasets)"
        )
    folder = frame_folder(root)
    entries = sorted(p for p in folder.iterdir() if p.is_file())
    files = [p for p in entries if is_record_file(p)]
    if not files:
        others = [p.name for p in entries if not p.name.startswith(".")
                  and p.name != "vocabulary.csv" and p.suffix not in (".json", ".tsv")]
        plural = "" if len(others) == 1 else "s"
        seen = f"; found {len(others)} other file{plural}, e.g. {others[0]!r}" if others else ""
        raise DataError(f"{folder}: no frame-level TFRecord files ({', '.join(PATTERNS)})"
                        f"{seen}")
    return files


def partition_of(path: Path) -> str | None:
    """The split a YouTube-8M partition file feeds (train, val, test), or None."""
    for prefix, split in PARTITIONS.items():
        if path.name.startswith(prefix):
            return split
    return None


def fingerprint(files: list[Path], label_ids: list[int], val_fraction: float,
                test_fraction: float, seed: int = 0) -> str:
    """Changes when a source file, the label selection or the split settings change."""
    entries = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    settings = [PREPARE_VERSION, label_ids, val_fraction, test_fraction, entries]
    if seed:  # seed 0 leaves the fingerprints of stores made before the seed existed alone
        settings.append(seed)
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()
