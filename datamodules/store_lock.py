"""One builder per store: a file lock next to the folder it guards (`.<name>.lock`, flock).

`write_store` locks the store folder; a DataModule preparing its data locks the data folder
(datamodules.store_prepare), which holds the store and may itself be generated. Two
processes preparing the same store at once (two users, two SLURM jobs) take turns: the
second waits until the first has finished, then finds the store built and uses it. The wait
is bounded by VMR_STORE_LOCK_TIMEOUT_S (default 6 hours); past it, a one-line error names
the process holding the lock. The lock is re-entrant within a process (preparing a store
and writing it take it both), and the lock file is removed on release, so nothing is left
next to the store; a waiter that acquired a file meanwhile removed tries again.
flock works across NFS clients on Linux (the kernel maps it to NFS byte-range locks).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datamodules.atomic import storage_reason
from datamodules.errors import DataError, StorageError

log = logging.getLogger("vmr")

TIMEOUT_ENV, TIMEOUT_DEFAULT_S = "VMR_STORE_LOCK_TIMEOUT_S", 6 * 3600.0
_POLL_S = 0.2
_held: dict[Path, int] = {}  # lock file -> nesting depth in this process


@dataclass
class Lock:
    path: Path | None  # None: the folder is read-only, nobody can build there
    waited: bool = False  # another process held it first (and may have built the store)


def lock_path(store: str | Path) -> Path:
    store = Path(store)
    return store.parent / f".{store.absolute().name}.lock"


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(raw) if raw else TIMEOUT_DEFAULT_S
    except ValueError:
        raise DataError(f"{TIMEOUT_ENV}={raw!r}: not a number of seconds") from None


@contextlib.contextmanager
def store_lock(store: str | Path, required: bool = True) -> Iterator[Lock]:
    """Hold the store's lock for the block.

    `required=False` (only reading, maybe building): where the lock file cannot be created
    (a read-only folder) the block runs without it; a build there fails on its own.
    """
    path = lock_path(store)
    key = path.absolute()
    if key in _held:
        _held[key] += 1
        try:
            yield Lock(path)
        finally:
            _held[key] -= 1
        return
    try:
        fd, waited = _acquire(path, timeout_s())
    except StorageError:
        if required:
            raise
        yield Lock(None)
        return
    _held[key] = 1
    try:
        yield Lock(path, waited)
    finally:
        del _held[key]
        path.unlink(missing_ok=True)  # before unlocking: a waiter then sees a removed file
        os.close(fd)


def _acquire(path: Path, limit: float) -> tuple[int, bool]:
    start, waited = time.monotonic(), False
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            reason = storage_reason(e)
            if reason is None:
                raise
            raise StorageError(f"{path.parent}: {reason}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not waited:
                log.info("vmr: %s is being built by %s; waiting (%s sets the limit)",
                         path.parent / path.name[1:-len('.lock')], _holder(fd), TIMEOUT_ENV)
            waited = True
            holder = _holder(fd)
            os.close(fd)
            if time.monotonic() - start > limit:
                raise DataError(f"{path}: gave up after {limit:.0f} s waiting for {holder} to "
                                f"finish building the store ({TIMEOUT_ENV} sets the limit)"
                                ) from None
            time.sleep(_POLL_S)
            continue
        if _same_file(fd, path):
            _write_holder(fd)
            return fd, waited
        os.close(fd)  # its holder removed it on release: lock the current file instead


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _write_holder(fd: int) -> None:
    text = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}"
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
    except OSError:  # a full disk: the lock holds all the same, only unnamed
        pass


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"
