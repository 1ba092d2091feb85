"""The CSV id lists of the generic MVD layout (split files, unpaired lists), read one way.

Each row's ids are checked as file names and carry their `file:line`, so a later check can
name the row; encoding and CSV errors become one-line DataErrors naming the file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

from datamodules.errors import DataError


def valid_name(name: str) -> bool:
    """An id usable as a file name inside one folder."""
    return bool(name) and name not in (".", "..") and not set(name) & {"/", "\\", "\0"}


def id_rows(path: Path, columns: Sequence[str]) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(`file:line`, the row's values of `columns`) for every row of the CSV at `path`."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in reader.fieldnames or ()]
            if not set(columns) <= set(fields):
                named = (f"the column {columns[0]}" if len(columns) == 1
                         else f"the columns {' and '.join(columns)}")
                raise DataError(f"{path}:1: header must name {named}, got "
                                f"{','.join(fields) or 'nothing'}")
            reader.fieldnames = fields
            for rec in reader:
                where = f"{path}:{reader.line_num}"
                values = tuple(str(rec.get(c) or "").strip() for c in columns)
                for column, value in zip(columns, values):
                    if not valid_name(value):
                        raise DataError(f"{where}: {column} {value!r} is not a valid file name")
                yield where, values
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None
