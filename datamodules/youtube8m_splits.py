"""Which split (train / val / test) each kept YouTube-8M record goes to.

YouTube-8M ships partitions, not splits: train*, validate* and test* files (the official test
files carry no labels, so they contribute nothing to a labelled subset). When every file is
named after a partition:

- train files -> train; validate -> val; test -> test, when both val and test get records;
- when only one of val / test gets records, it is split between them by id hash, test taking
  test_fraction / (val_fraction + test_fraction) of it;
- when neither does (a folder with train files only), val and test must come from somewhere:
  that is an error unless `val_fraction` is given, which splits the train records instead.

Files with other names are split by id hash: u = hash_unit(id, seed) in [0, 1); u below
test_fraction -> test, below test_fraction + val_fraction -> val, else train. The split of
a record depends only on its id (and the seed), so it is deterministic, and adding files
never moves records between splits. Fractions left unset (None) are DEFAULT_FRACTION.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from datamodules.errors import DataError
from datamodules.youtube8m_files import partition_of

DEFAULT_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class SplitSettings:
    val_fraction: float | None = None
    test_fraction: float | None = None
    seed: int = 0

    @property
    def val(self) -> float:
        return DEFAULT_FRACTION if self.val_fraction is None else self.val_fraction

    @property
    def test(self) -> float:
        return DEFAULT_FRACTION if self.test_fraction is None else self.test_fraction

    def check(self) -> None:
        v, t = self.val, self.test
        if not (0 < v < 1 and 0 < t < 1 and v + t < 1):
            raise DataError(f"val_fraction={v}, test_fraction={t}: both must be in (0, 1) "
                            "with a sum below 1")

    def as_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_meta(cls, source: dict[str, Any]) -> SplitSettings:
        """The settings a store was prepared with (stores older than this record: defaults)."""
        recorded = source.get("split_settings") or {}
        return cls(recorded.get("val_fraction"), recorded.get("test_fraction"),
                   int(recorded.get("seed", 0)))


class Scheme(NamedTuple):
    text: str  # for meta.json and the summary line
    train_from_files: bool  # train holds exactly the records of the train* files


def hash_unit(vid: str, seed: int = 0) -> float:
    """A stable pseudo-random number in [0, 1) for an id (and a seed)."""
    key = vid if seed == 0 else f"{seed}:{vid}"  # seed 0: the values stores always used
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2.0**64


def train_only_hint(root: Path) -> str:
    return (f"split the train records instead with `vmr prepare --dataset youtube8m --src "
            f"{root} --val-fraction 0.1 [--test-fraction 0.1] [--split-seed 0]`")


def check_not_train_only(root: Path, folder: Path, files: list[Path],
                         settings: SplitSettings) -> None:
    """Before reading anything: a folder of train* files only needs `val_fraction`."""
    parts = {partition_of(f) for f in files}
    if parts == {"train"} and settings.val_fraction is None:
        raise DataError(
            f"{folder}: only train partition files ({len(files)} train*): val and test come "
            "from YouTube-8M's validate partition (validate* files next to the train* files; "
            "split into val and test by id hash, since the official test* files carry no "
            f"labels); add the validate files, or {train_only_hint(root)}"
        )


def _hash_split(rows: list[dict], settings: SplitSettings) -> None:
    v, t = settings.val, settings.test
    for row in rows:
        u = hash_unit(row["id"], settings.seed)
        row["split"] = "test" if u < t else "val" if u < t + v else "train"


def assign_splits(root: Path, folder: Path, files: list[Path], rows_per_file: list[list[dict]],
                  settings: SplitSettings, skipped_outside_train: str) -> Scheme:
    """Set row["split"] on every row; returns how.

    `skipped_outside_train` describes what was skipped in validate*/test* files, for the
    error when they yield no record and `val_fraction` is unset.
    """
    seed_text = f", seed {settings.seed}" if settings.seed else ""
    parts = [partition_of(f) for f in files]
    rows = [row for file_rows in rows_per_file for row in file_rows]
    if not all(p is not None for p in parts):
        _hash_split(rows, settings)
        return Scheme(f"split by id hash (val {settings.val}, test {settings.test}{seed_text})",
                      False)
    for part, file_rows in zip(parts, rows_per_file):
        for row in file_rows:
            row["split"] = part
    have = Counter(row["split"] for row in rows)
    if have["val"] and have["test"]:
        return Scheme("official partitions", True)
    if have["val"] or have["test"]:
        share = settings.test / (settings.val + settings.test)
        for row in rows:
            if row["split"] != "train":
                row["split"] = ("test" if hash_unit(row["id"], settings.seed) < share
                                else "val")
        return Scheme(f"official partitions; validate/test split by id hash ({share:.2f} test"
                      f"{seed_text})", True)
    if settings.val_fraction is None:
        raise DataError(f"{folder}: split 'val' is empty: {skipped_outside_train}; val and test "
                        f"come from the validate partition; {train_only_hint(root)}")
    _hash_split(rows, settings)
    return Scheme(f"official partitions without val/test records; train split by id hash "
                  f"(val {settings.val}, test {settings.test}{seed_text})", False)
