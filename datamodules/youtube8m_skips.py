"""Skipped YouTube-8M records, counted by reason, and why a split came out empty.

The store is written only when every split has records; otherwise the error says which
files fed the split and what happened to their records, e.g. "split 'train' is empty: all
1000 records of its 4 train* files were skipped (600 no selected label, 400 'audio' has 0
frames)".
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from datamodules.errors import DataError
from datamodules.youtube8m_files import partition_of
from datamodules.youtube8m_scan import Scan
from datamodules.youtube8m_splits import Scheme

SPLIT_ORDER = ("train", "val", "test")


def skip_text(skips: Counter) -> str:
    """'600 no selected label, 400 'audio' has 0 frames' (most frequent first)."""
    ordered = sorted(skips.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {why}" for why, n in ordered)


def files_text(n: int, what: str = "") -> str:
    """'its 1 train* file', 'its 4 files'."""
    return f"its {n} {what}file{'' if n == 1 else 's'}"


def what_happened(scans: list[Scan], description: str) -> str:
    """'all N records of <description> were skipped (...)' or '<description> hold no records'."""
    skips = sum((s.skips for s in scans), Counter())
    total = sum(s.records for s in scans)
    if total == 0:
        return f"{description} hold no records"
    kept = sum(len(s.rows) for s in scans)
    if kept == 0:
        return f"all {total} records of {description} were skipped ({skip_text(skips)})"
    return f"{kept} of {total} records of {description} kept (skipped: {skip_text(skips)})"


def outside_train(files: list[Path], scans: list[Scan]) -> str:
    """What happened to the records of the validate*/test* files (for the train-only error)."""
    chosen = [s for f, s in zip(files, scans) if partition_of(f) in ("val", "test")]
    if not chosen:
        return "there are no validate* or test* files"
    return what_happened(chosen, files_text(len(chosen), "validate*/test* "))


def check_some_kept(folder: Path, scans: list[Scan]) -> None:
    """Before splitting: nothing kept at all is an error naming every skip reason."""
    if not any(s.rows for s in scans):
        raise DataError(f"{folder}: split 'train' is empty: "
                        f"{what_happened(scans, files_text(len(scans)))}")


def check_splits_filled(folder: Path, files: list[Path], scans: list[Scan],
                        scheme: Scheme) -> None:
    """DataError naming the first empty split and what happened to the records meant for it."""
    counts = Counter(row["split"] for s in scans for row in s.rows)
    for split in SPLIT_ORDER:
        if counts[split]:
            continue
        kept = sum(counts.values())
        if kept == 0:
            why = what_happened(scans, files_text(len(files)))
        elif split == "train" and scheme.train_from_files:
            chosen = [s for f, s in zip(files, scans) if partition_of(f) == "train"]
            why = (what_happened(chosen, files_text(len(chosen), "train* ")) if chosen
                   else "there are no train* files")
        else:
            shown = ", ".join(f"{s} {counts[s]}" for s in SPLIT_ORDER)
            why = (f"only {kept} records kept ({shown}; {scheme.text}), too few to fill every "
                   "split; add records or raise that split's fraction")
        raise DataError(f"{folder}: split '{split}' is empty: {why}")
