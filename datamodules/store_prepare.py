"""Making sure a DataModule's store is there and whole before anything else is written.

`prepare_store` runs the DataModule's build (which packs the store when it is missing or
stale) under the store's lock (datamodules.store_lock), then checks the store
(datamodules.store_check). A damaged store is set aside and rebuilt from its source, then
reported in one warning line; when that cannot be done (the source is gone), the error is one line
naming the damaged file, and the damaged store is put back as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datamodules.errors import DataError
from datamodules.store_check import store_problem
from datamodules.store_lock import store_lock

log = logging.getLogger("vmr")


def prepare_store(store: str | Path, build: Callable[[], Any], source: str | Path) -> None:
    store, source = Path(store), Path(source)
    # The lock sits next to the data folder, not in it: a synthetic folder is generated only
    # into an empty folder, and is replaced as a whole when its settings change.
    missing = _first_missing(source.parent)  # the lock file's folder is made if need be
    try:
        with store_lock(source, required=False):
            _prepare(store, build, source)
    except BaseException:
        if missing is not None:  # leave no empty folders behind a refused build
            _remove_empty(source.parent, missing)
        raise


def _prepare(store: Path, build: Callable[[], Any], source: Path) -> None:
    before = _stamp(store)
    problem = store_problem(store)
    if problem is None:
        build()
        if _stamp(store) == before:
            return  # the store checked whole above was kept as it was
        problem = store_problem(store)
        if problem is None:
            return
    _rebuild(store, build, problem)
    again = store_problem(store)
    if again is not None:
        raise DataError(f"{again} (just rebuilt from {source})")
    # After the rebuild, so that a store that cannot be rebuilt gives one line (the error).
    log.warning("vmr: warning: %s; rebuilt the store from %s", problem, source)


def _rebuild(store: Path, build: Callable[[], Any], problem: str) -> None:
    aside = Path(tempfile.mkdtemp(prefix=f".{store.name}.", suffix=".damaged",
                                  dir=store.parent))
    os.replace(store, aside / store.name)
    try:
        build()
    except DataError as e:
        if not (store / "meta.json").exists():  # put the damaged store back as it was
            shutil.rmtree(store, ignore_errors=True)
            os.replace(aside / store.name, store)
        raise DataError(f"{problem}; cannot rebuild it: {e}") from None
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _stamp(store: Path) -> tuple[int, int] | None:
    """Identifies the store's meta.json as written (a rebuild writes a new one)."""
    try:
        st = (store / "meta.json").stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of `folder`'s ancestry (itself included) that does not exist."""
    first = None
    for path in [folder, *folder.parents]:
        if path.exists():
            break
        first = path
    return first


def _remove_empty(folder: Path, up_to: Path) -> None:
    for path in [folder, *folder.parents]:
        try:
            path.rmdir()
        except OSError:
            return  # not empty (or gone): keep it and everything above
        if path == up_to:
            return
