"""`status.json` in a run folder: running, finished or failed (with the one-line reason).

Rank 0 writes "running" when it opens the folder (a resumed failed run goes back to
running), "finished" after metrics.json, and "failed" with the reason when the run stops
on an error after its folder exists. `vmr compare` skips failed runs and counts them
(lightning_app.run_groups), `vmr eval` warns about a failed run's checkpoint, and
`resume=` continues a failed run like any other.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamodules.atomic import storage_message, write_json
from datamodules.errors import StorageError

STATUS_FILE = "status.json"


def read_status(run: str | Path) -> dict[str, Any]:
    """The run's status record ({} when it has none or it is unreadable)."""
    try:
        data = json.loads((Path(run) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_status(run: str | Path, status: str, reason: str | None = None) -> None:
    record: dict[str, Any] = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                              "host": socket.gethostname(), "pid": os.getpid()}
    if reason is not None:
        record["reason"] = reason
    path = Path(run) / STATUS_FILE
    try:
        write_json(path, record)
    except StorageError:
        if not path.is_file():
            raise
        # A full disk: rewrite the existing file in place, in the block it already has.
        with open(path, "r+") as f:
            f.write(json.dumps(record, indent=2, sort_keys=True) + "\n")
            f.truncate()


def one_line(error: BaseException) -> str:
    """The error as the CLI would print it: its first line, with its type if it is not ours."""
    from lightning_app.errors import USER_ERRORS

    if isinstance(error, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    if isinstance(error, SystemExit):  # Lightning ends a run on Ctrl-C with sys.exit(1)
        return f"interrupted (exit code {error.code})"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, USER_ERRORS):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@contextlib.contextmanager
def run_status(run: Path, write: bool = True) -> Iterator[None]:
    """Mark `run` running for the block, finished after it, failed when it raises.

    A full disk or unwritable folder the block meets is re-raised as a StorageError that
    names the run folder when the error itself names no file. `write=False` (ranks other
    than 0) only converts errors.
    """
    if write:
        write_status(run, "running")
    try:
        yield
    except BaseException as e:
        message = storage_message(e, getattr(e, "filename", None) or run)
        error: BaseException = StorageError(message) if message else e
        if write:
            with contextlib.suppress(Exception):  # a full disk may refuse this too
                write_status(run, "failed", one_line(error))
        if error is e:
            raise
        raise error from None
    if write:
        write_status(run, "finished")
