"""The run folder `runs/<NAME>/<timestamp>/` and what goes into it besides logger files."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from lightning_app.config import PROJECT_ROOT

# Set by the launching process so that DDP worker processes (which re-run the command)
# write into the same folder instead of creating their own.
RUN_DIR_ENV = "VMR_RUN_DIR"


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


def make_run_dir(run_root: str | Path, name: str) -> Path:
    inherited = os.environ.get(RUN_DIR_ENV) if _is_worker_process() else None
    if inherited:
        path = Path(inherited)
    else:
        # Schedulers start all ranks at once: a job id names the folder identically on each.
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path(run_root) / name / (f"{stamp}-{job}" if job and job != "none" else stamp)
        if not job:
            suffix = 1
            base = path
            while path.exists():
                suffix += 1
                path = base.with_name(f"{base.name}-{suffix}")
        os.environ[RUN_DIR_ENV] = str(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
