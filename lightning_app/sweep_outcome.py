"""How a sweep run ended: its exit code read together with its run folder's status.json.

The exit code alone can mislead: a run whose status.json says failed did fail (after it
wrote metrics.json, say), whatever its exit code, and the reason recorded there is the one
to show. A run folder whose status.json is missing or still says running after the child
exited never recorded its end: the process was killed (out of memory, a signal) or died
without unwinding, so its last log line is not a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lightning_app.run_status import STATUS_FILE, read_status


@dataclass(frozen=True)
class Outcome:
    status: str  # "done" | "failed"
    error: str | None = None
    killed: bool = False  # ended without recording its end in status.json


def recorded_failure(folder: Path | None) -> str | None:
    """The reason status.json records when it says the run failed, else None."""
    if folder is None:
        return None
    record = read_status(folder)
    if record.get("status") != "failed":
        return None
    return str(record.get("reason") or "status.json says failed")


def outcome(folder: Path | None, done: bool, returncode: int,
            last_error: str | None) -> Outcome:
    """The end of a child run: `folder` its newest train folder (None: it made none), `done`
    whether that folder holds metrics.json, `last_error` its log's last error line."""
    failure = recorded_failure(folder)
    if failure is not None:
        return Outcome("failed", failure)
    recorded = read_status(folder).get("status") if folder is not None else None
    if returncode == 0 and done and recorded != "running":  # finished (or written before
        return Outcome("done")                              # status.json existed)
    if folder is not None and recorded in (None, "running"):
        state = (f"no {STATUS_FILE}" if recorded is None
                 else f"{STATUS_FILE} still says running")
        return Outcome("failed", f"killed (exit code {returncode}; {state})", killed=True)
    return Outcome("failed", last_error or f"exit code {returncode}")
