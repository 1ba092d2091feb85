"""Atomic writes: a reader (or a crashed job) never sees a half-written file or folder.

Everything is first written under a temporary name in the same directory (so the final
`os.replace` is a rename on one filesystem) and only then moved into place. A full disk or a
folder that is not writable stops with a StorageError naming the path (one line); the
temporary file or folder is removed, so nothing half-written is left.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.errors import StorageError

# errno -> the cause as a user reads it.
_NO_SPACE = {errno.ENOSPC: "no space left on device",
             errno.EDQUOT: "no space left on device (disk quota exceeded)"}
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")
_NOT_WRITABLE = {errno.EACCES: "not writable (permission denied)",
                 errno.EPERM: "not writable (operation not permitted)",
                 errno.EROFS: "not writable (read-only file system)"}


def storage_reason(error: BaseException) -> str | None:
    """'no space left on device' / 'not writable (...)' for such an OSError, else None."""
    if not isinstance(error, OSError):
        return None
    if error.errno is None and _SHORT_WRITE.match(str(error)):
        # NumPy's tofile reports a full disk as "N requested and M written", without errno.
        return _NO_SPACE[errno.ENOSPC]
    return _NO_SPACE.get(error.errno) or _NOT_WRITABLE.get(error.errno)


def storage_message(error: BaseException, path: str | os.PathLike | None = None) -> str | None:
    """One line naming the path and the cause, or None for other errors."""
    reason = storage_reason(error)
    if reason is None:
        return None
    # A failed write names no file; a failed open/mkdir names the one it tried.
    where = path if path is not None else getattr(error, "filename", None)
    return f"{where}: {reason}" if where is not None else reason


@contextlib.contextmanager
def storage_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk or an unwritable folder inside the block into a StorageError."""
    try:
        yield
    except OSError as e:
        message = storage_message(e, path)
        if message is None:
            raise
        raise StorageError(message) from None


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: changing the umask is process-wide, so not on every write.
_UMASK = _read_umask()


def _temp_path(final: Path, suffix: str = "") -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    # mkstemp creates 0600; give the final file the permissions a plain open() would.
    os.chmod(name, 0o666 & ~_UMASK)
    return Path(name)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds.

    `suffix` is kept on the temporary name for writers that insist on an extension
    (``np.save`` appends ``.npy`` otherwise).
    """
    final = Path(path)
    with storage_errors(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path(final, suffix)
    try:
        with storage_errors(final):
            yield tmp
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_file(path, suffix=".npy") as tmp:
        np.save(tmp, array)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `path` as a whole.

    On failure the temporary folder is removed and any existing `path` is left untouched.
    """
    final = Path(path)
    with storage_errors(final.parent):
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    # mkdtemp creates 0700; give the final folder the permissions a plain mkdir() would.
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        with storage_errors(final):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
        os.replace(final, old / final.name)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old / final.name, final)  # put the previous version back
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
