"""The rows of a store index that the open-time check parsed, handed to the split that opens it.

Parsing an index costs about 1 s per 100k rows, and opening a store would parse each index
twice: the integrity check (datamodules.store_check, in `prepare_data`) and the StoreSplit
that reads it (in `setup`). The check leaves its rows here, keyed by the file as it was when
read (device, inode, size, modification time) and by the frame counts the rows were checked
against; the next StoreSplit of that file takes them, once, and parses the file itself when
anything differs (a rebuilt store has new files, an edited index a new size or time).

File times are coarse (one clock tick): a same-size rewrite in the tick the check read the
file would keep its time. So rows of a file modified less than RECENT_NS before the check
read it are not left here; that file is simply parsed again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

RECENT_NS = 2_000_000_000
MAX_FILES = 16  # a process checks a few stores; never hold more than this many indexes

_left: dict[str, tuple[tuple, list[dict]]] = {}


def stamp(path: Path) -> tuple | None:
    """The file as it is now, or None when it cannot be trusted to show a change."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if time.time_ns() - st.st_mtime_ns < RECENT_NS:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def leave(path: Path, before: tuple | None, checked: tuple, rows: list[dict]) -> None:
    """Keep `rows`, parsed from `path` as `before` (stamp taken before reading) showed it."""
    if before is None or stamp(path) != before:
        return  # recently written, or changed while it was read
    key = os.fspath(Path(path).absolute())
    _left.pop(key, None)
    while len(_left) >= MAX_FILES:
        _left.pop(next(iter(_left)))
    _left[key] = ((*before, checked), rows)


def take(path: Path, checked: tuple) -> list[dict] | None:
    """The rows left for `path` if the file and the frame counts are as they were, else None."""
    entry = _left.pop(os.fspath(Path(path).absolute()), None)
    if entry is None:
        return None
    now = stamp(path)
    return entry[1] if now is not None and (*now, checked) == entry[0] else None
