"""Batch extraction jobs: many media files -> one feature file each, resumable.

A job is a list of `Task`s (a source file and the output it should produce). The CPU-heavy,
per-file part (`prepare`: decoding, librosa statistics) runs in DataLoader worker processes,
several files at once; the result comes back to the main process, where an optional
`finish` step runs on the accelerator (a CNN over the frames, a log-mel transform) and the
output is written atomically. A task whose output already exists is skipped, so an
interrupted job resumes where it stopped. A file that cannot be used (no audio stream,
corrupt, zero length) is recorded with its reason and the job goes on; the summary lists
done, skipped and failed files.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.atomic import save_npy, write_json
from datamodules.errors import DataError, StorageError
from datamodules.extract.media_files import (  # noqa: F401 - re-exported
    AUDIO_EXTENSIONS,
    MEDIA_EXTENSIONS,
    VIDEO_EXTENSIONS,
    scan_media,
)
from datamodules.progress import progress_bar

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclasses.dataclass(frozen=True)
class Task:
    name: str  # the id the output is known by
    source: Path
    output: Path


@dataclasses.dataclass
class JobSummary:
    what: str
    done: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (source, reason)
    seconds: float = 0.0
    # files of the folder that are not media (or lack the stream needed): (file, reason)
    not_media: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        rate = len(self.done) / self.seconds if self.seconds > 0 else 0.0
        other = f", {len(self.not_media)} not media" if self.not_media else ""
        return (f"{self.what}: {len(self.done)} done, {len(self.skipped)} skipped (output "
                f"exists), {len(self.failed)} failed{other} in {self.seconds:.1f} s "
                f"({rate:.2f} files/s)")

    def report(self) -> str:
        """The summary line, then one line per failed or left-out file with its reason."""
        return "\n".join([self.line(), *(f"  failed: {r}" for _, r in self.failed),
                          *(f"  not media: {r}" for _, r in self.not_media)])

    def as_dict(self) -> dict[str, Any]:
        return {"what": self.what, "done": self.done, "skipped": self.skipped,
                "failed": [{"file": f, "reason": r} for f, r in self.failed],
                "not_media": [{"file": f, "reason": r} for f, r in self.not_media],
                "seconds": round(self.seconds, 3)}

    def write(self, path: Path) -> None:
        write_json(path, self.as_dict())


def media_id(path: Path) -> str:
    """The id a file's features are stored under: its stem, restricted to [A-Za-z0-9_-].

    The restriction keeps ids valid in every layout (HIMV-200K's id list, CSV splits,
    file names); other characters become '_'.
    """
    name = _UNSAFE.sub("_", path.stem).strip("_")
    return name or "_"


def list_media(source: Path, need: str | None = None) -> list[Path]:
    """Media files under a folder (recognised by content, see media_files.py), or the file."""
    return scan_media(source, need).files


def plan_tasks(files: Sequence[Path], out: Path) -> list[Task]:
    """One task per file, writing out/<id>.npy; two files with the same id are an error."""
    seen: dict[str, Path] = {}
    tasks = []
    for f in files:
        name = media_id(f)
        if name in seen:
            raise DataError(f"{f}: its id {name!r} is also the id of {seen[name]}; "
                            "rename one of them")
        seen[name] = f
        tasks.append(Task(name, f, out / f"{name}.npy"))
    return tasks


class _Prepared(Dataset):
    """Runs `prepare` in a worker; failures travel back as text instead of killing the job."""

    def __init__(self, tasks: Sequence[Task], prepare: Callable[[Path], Any]):
        self.tasks, self.prepare = list(tasks), prepare

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        try:
            return i, self.prepare(self.tasks[i].source), None
        except DataError as e:
            return i, None, str(e)
        except Exception as e:  # noqa: BLE001 - one bad file must not stop a batch job
            return i, None, f"{self.tasks[i].source}: {type(e).__name__}: {e}"


# Starting worker processes costs 1.5-4 s (imports, librosa's JIT) and pays off only over
# longer jobs (make bench: `extract`), so short ones run in this process.
MIN_TASKS_PER_WORKER = 4


def _one_thread(_: int) -> None:
    # Each worker handles one file at a time; W workers x N threads would oversubscribe the
    # cores: torch's threads and the BLAS/OpenMP pools numpy and librosa use.
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _check_output(array: np.ndarray, task: Task) -> np.ndarray:
    array = np.asarray(array)
    if array.size == 0:
        raise DataError(f"{task.source}: produced no features (zero length)")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError(f"{task.source}: features contain NaN or inf")
    return array


def run_jobs(
    tasks: Sequence[Task],
    prepare: Callable[[Path], Any],
    finish: Callable[[Any], np.ndarray] | None = None,
    workers: int = 0,
    what: str = "extract",
    progress: bool = True,
) -> JobSummary:
    """Run every task whose output does not exist yet; return what happened.

    `prepare(source)` must be picklable (a module-level function or a dataclass instance)
    when `workers` > 0; `finish(prepared)` runs in this process, in task order.
    """
    summary = JobSummary(what)
    todo = []
    for t in tasks:
        if t.output.exists():
            summary.skipped.append(t.name)
        else:
            todo.append(t)
    if len(todo) < MIN_TASKS_PER_WORKER * workers:
        workers = 0
    start = time.perf_counter()
    if todo:
        loader = DataLoader(_Prepared(todo, prepare), batch_size=None, shuffle=False,
                            num_workers=workers, worker_init_fn=_one_thread if workers else None,
                            prefetch_factor=2 if workers else None,
                            multiprocessing_context="spawn" if workers else None,
                            persistent_workers=False)
        with progress_bar(progress, total=len(todo), desc=what, unit="file") as bar:
            for i, prepared, error in loader:
                task = todo[i]
                if error is None:
                    try:
                        out = finish(prepared) if finish is not None else prepared
                        save_npy(task.output, _check_output(out, task))
                    except StorageError:
                        raise  # a full disk or read-only folder stops the job, not one file
                    except DataError as e:
                        error = str(e)
                if error is None:
                    summary.done.append(task.name)
                else:
                    summary.failed.append((str(task.source), error))
                bar.update(1)
    summary.seconds = time.perf_counter() - start
    return summary
