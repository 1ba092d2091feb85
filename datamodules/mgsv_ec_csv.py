"""The annotation CSVs of MGSV-EC (`<split>_data.csv`), read as text and checked row by row.

The csv module reads every field as a string, so `video_id` (an 11-12 digit integer that is
also a file name) is never turned into a float; a file re-saved by a tool that did so
(`1.13722188340e+11`) is rejected with its file:line. Times in seconds become floats, pixel
sizes and counts ints; the columns a reader needs (REQUIRED) must be present and filled, the
others are kept when present (`video_category` may be empty in the release).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamodules.errors import DataError
from datamodules.id_csv import valid_name
from datamodules.mgsv_ec_layout import (
    CSV_COLUMNS,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    SPLITS,
    csv_dir_candidates,
)

REQUIRED = ("video_id", "music_id", "video_start", "video_end", "music_start", "music_end",
            "music_total_duration")
_VIDEO_ID = re.compile(r"[0-9]+")


@dataclass
class Row:
    """One CSV row: a query video, its track and the row's metadata (floats/ints/text)."""

    video_id: str
    music_id: str
    where: str  # "<csv>:<line>"
    meta: dict[str, Any] = field(default_factory=dict)


def find_csv_dir(root: Path) -> Path:
    """The folder under `root` holding all three `<split>_data.csv` files."""
    for folder in csv_dir_candidates(root):
        if all((folder / f"{s}_data.csv").is_file() for s in SPLITS):
            return folder
    looked = ", ".join(str(p) for p in csv_dir_candidates(root))
    raise DataError(f"{root}: no MGSV-EC annotation files {{train,val,test}}_data.csv "
                    f"(looked in {looked}); download dataset/MGSV-EC/ from the Hugging Face "
                    "dataset xxayt/MGSV-EC (docs/datasets.md)")


def _number(value: str, column: str, where: str, kind: type) -> float | int:
    try:
        x = float(value)
    except ValueError:
        raise DataError(f"{where}: {column} {value!r} is not a number") from None
    if not math.isfinite(x):
        raise DataError(f"{where}: {column} {value!r} is not a finite number")
    if kind is int:
        if x != int(x):
            raise DataError(f"{where}: {column} {value!r} is not an integer")
        return int(x)
    return x


def parse_row(rec: dict[str, str], where: str) -> Row:
    """One record of csv.DictReader -> Row, or a DataError naming `where` and the column."""
    values = {c: (rec.get(c) or "").strip() for c in CSV_COLUMNS if c in rec}
    for column in REQUIRED:
        if not values.get(column):
            raise DataError(f"{where}: {column} is empty")
    vid = values["video_id"]
    if not _VIDEO_ID.fullmatch(vid):
        hint = (" (written as a float? keep video_id as the integer text of the release)"
                if re.fullmatch(r"[0-9.]+(e\+?[0-9]+)?", vid, re.IGNORECASE) else "")
        raise DataError(f"{where}: video_id {vid!r} is not a decimal integer{hint}")
    mid = values["music_id"]
    if not valid_name(mid):
        raise DataError(f"{where}: music_id {mid!r} is not a valid file name")
    meta: dict[str, Any] = {}
    for column, value in values.items():
        if column in ("video_id", "music_id"):
            continue
        if column in FLOAT_COLUMNS or column in INT_COLUMNS:
            kind = float if column in FLOAT_COLUMNS else int
            meta[column] = _number(value, column, where, kind) if value else None
        else:
            meta[column] = value
    if meta["video_end"] < meta["video_start"]:
        raise DataError(f"{where}: video_end {meta['video_end']} < video_start "
                        f"{meta['video_start']}")
    if not 0 <= meta["music_start"] <= meta["music_end"]:
        raise DataError(f"{where}: music moment [{meta['music_start']}, {meta['music_end']}] "
                        "is not an interval inside the track")
    return Row(vid, mid, where, meta)


def read_split(path: Path) -> list[Row]:
    """Every row of one `<split>_data.csv`, checked (module docstring)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in reader.fieldnames or ()]
            missing = [c for c in REQUIRED if c not in fields]
            if missing:
                raise DataError(f"{path}:1: header lacks {', '.join(missing)} (MGSV-EC columns: "
                                f"{','.join(CSV_COLUMNS)})")
            reader.fieldnames = fields
            rows = [parse_row(rec, f"{path}:{reader.line_num}") for rec in reader]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: no rows (only a header)")
    return rows


def read_splits(root: Path) -> tuple[Path, dict[str, list[Row]]]:
    """(the CSV folder, rows per split). A video in two splits is an error (leakage)."""
    folder = find_csv_dir(root)
    splits = {s: read_split(folder / f"{s}_data.csv") for s in SPLITS}
    seen: dict[str, tuple[str, str]] = {}
    for split, rows in splits.items():
        for row in rows:
            other = seen.setdefault(row.video_id, (split, row.where))
            if other[0] != split:
                raise DataError(f"{row.where}: video {row.video_id} is also in split "
                                f"'{other[0]}' ({other[1]}); a video belongs to one split")
    return folder, splits
