"""The run folder `runs/<NAME>/<timestamp>/` and what goes into it besides logger files.

Every process of a run must write into one folder. Lightning's own DDP launcher passes it to
the processes it starts (VMR_RUN_DIR). Under a scheduler (srun, torchrun) all ranks start at
once: rank 0 creates `<timestamp>-<job id>` and marks it with the launch's identity
(`launch_key`), the other ranks wait for the folder with that mark, and the same launch
after a SLURM requeue or a torchrun restart finds it again (and resumes from its checkpoint).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from datamodules.atomic import write_text
from lightning_app.config import PROJECT_ROOT
from lightning_app.errors import ConfigError

# Set by the launching process so that DDP worker processes (which re-run the command)
# write into the same folder instead of creating their own.
RUN_DIR_ENV = "VMR_RUN_DIR"
# The launch identity written into a scheduler-launched run folder.
LAUNCH_FILE = ".launch"
# How long a rank waits for rank 0 (building the data store, creating the run folder).
WAIT_ENV, WAIT_DEFAULT_S = "VMR_RANK_WAIT_S", 6 * 3600.0

T = TypeVar("T")


def launch_rank() -> int:
    """Global rank as the launcher set it (0 for a plain process and for the DDP launcher)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var):
            return int(os.environ[var])
    local, node = int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("NODE_RANK", "0"))
    return local if node == 0 else 1 + local


def _is_worker_process() -> bool:
    """A process started by a launcher (Lightning DDP, torchrun, srun), not by the user."""
    return any(os.environ.get(v) for v in ("LOCAL_RANK", "RANK", "SLURM_PROCID"))


def _is_torchelastic() -> bool:
    return all(v in os.environ for v in ("RANK", "GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))


def _is_slurm_launch() -> bool:
    """srun (or an sbatch step) started this process; Lightning's SLURMEnvironment.detect()."""
    name = os.environ.get("SLURM_JOB_NAME")
    return "SLURM_NTASKS" in os.environ and name not in ("bash", "interactive")


def launch_key() -> str | None:
    """The identity of this launch, shared by all its ranks and kept across restarts.

    SLURM: job id and step (a requeued job re-runs the same steps under the same job id).
    torchrun: the rendezvous id (`--rdzv-id`; an elastic restart keeps it). None for a
    process the user started directly.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if job and _is_slurm_launch():
        return f"slurm:{job}:{os.environ.get('SLURM_STEP_ID', 'batch')}"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if _is_torchelastic() and run_id and run_id != "none":
        return f"torchrun:{run_id}"
    if _is_torchelastic() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "torchrun without --rdzv-id: the ranks cannot agree on one run folder; pass "
            "--rdzv-id=<id unique to this run, the same on every node> (or --standalone on "
            "one node); lightning_app/launch/torchrun.sh does"
        )
    return None


def inherited_run_dir() -> Path | None:
    """The folder of the Lightning DDP launcher that started this process, if it did."""
    inherited = os.environ.get(RUN_DIR_ENV) if _is_worker_process() else None
    return Path(inherited) if inherited else None


def make_run_dir(run_root: str | Path, name: str) -> Path:
    inherited = inherited_run_dir()
    key = None if inherited else launch_key()
    if inherited:
        path = inherited
    elif key:
        path = _launch_run_dir(Path(run_root) / name, key)
    else:
        job = os.environ.get("SLURM_JOB_ID")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = base = Path(run_root) / name / (f"{stamp}-{job}" if job else stamp)
        suffix = 1
        while path.exists():
            suffix += 1
            path = base.with_name(f"{base.name}-{suffix}")
    claim_run_dir(path)
    return path


def claim_run_dir(path: Path) -> None:
    """Create `path` and make it the run folder of processes this one launches."""
    path.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(path)


def find_launch_run(parent: Path, key: str) -> Path | None:
    """The run folder under `parent` that the launch `key` created (None if there is none)."""
    if not parent.is_dir():
        return None
    for path in sorted(parent.iterdir(), reverse=True):
        marker = path / LAUNCH_FILE
        if not path.name.startswith(".") and marker.is_file() and marker.read_text() == key:
            return path
    return None


def _launch_run_dir(parent: Path, key: str) -> Path:
    found = find_launch_run(parent, key)
    if found is not None:  # a later rank, or the same launch after a requeue / restart
        return found
    if launch_rank() != 0:
        return wait_for_rank0(lambda: find_launch_run(parent, key), f"the run folder of {key}")
    kind, rest = key.split(":", 1)
    job = rest.split(":")[0] if kind == "slurm" else re.sub(r"[^\w.-]", "_", rest)[:40]
    final = base = parent / f"{time.strftime('%Y%m%d-%H%M%S')}-{job}"
    suffix = 1
    while final.exists():
        suffix += 1
        final = base.with_name(f"{base.name}-{suffix}")
    tmp = parent / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    write_text(tmp / LAUNCH_FILE, key)
    os.replace(tmp, final)  # the other ranks see the folder only with its mark
    return final


def wait_for_rank0(probe: Callable[[], T | None], what: str) -> T:
    """Poll `probe` until it returns a value: rank 0 builds data and folders, the others wait.

    A failing rank 0 ends the others through the launcher (srun --kill-on-bad-exit, torchrun);
    VMR_RANK_WAIT_S bounds the wait otherwise.
    """
    limit = float(os.environ.get(WAIT_ENV, WAIT_DEFAULT_S))
    start = time.monotonic()
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() - start > limit:
            raise ConfigError(f"rank {launch_rank()}: gave up after {limit:.0f} s waiting for "
                              f"rank 0 to create {what} ({WAIT_ENV} sets the limit)")
        time.sleep(1.0)


def git_commit() -> str:
    """HEAD of the project checkout, with '-dirty' when there are uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(PROJECT_ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
