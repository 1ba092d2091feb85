"""Running a sweep folder: its runs' state on disk, the local launcher, and the summary.

A run's state is read from its run root, never trusted from an earlier launcher: a train
folder with metrics.json is done (skipped on a rerun), one with checkpoints/last.ckpt but no
metrics.json was interrupted (continued with `resume=last`, in the same folder), anything
else runs from scratch. The local launcher starts each run as its own `python -m
lightning_app train ...` process (its output in `<run root>/train.log`), records failures
(exit code, and the reason from the run's status.json, else the last error line) in the
manifest and goes on with the other runs. A run whose status.json says failed is failed
whatever its exit code; one that exited with status.json missing or still running was
killed (lightning_app.sweep_outcome).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from datamodules.atomic import write_json
from lightning_app.errors import ConfigError
from lightning_app.sweep_outcome import outcome, recorded_failure
from lightning_app.sweep_plan import MANIFEST, Manifest, RunSpec

LOG = "train.log"
# Written into a run root by `vmr sweep-task` (SLURM): how the task ended.
EXIT_FILE = "exit.json"
LAST_CKPT = Path("checkpoints") / "last.ckpt"
_POLL_S = 0.2
# The data settings that decide what a data root and its store hold (batch sizes, loader
# workers, frame sampling only decide how it is read).
_ON_DISK = ("dataset", "root", "store", "synthetic", "val_size", "test_size", "labels")


def run_state(sweep_dir: Path, run: RunSpec) -> tuple[str | None, Path | None]:
    """("done" | "interrupted" | None, the newest train folder) of `run`, read from disk."""
    parent = run.root(sweep_dir) / run.experiment
    folders = sorted(p for p in parent.iterdir()
                     if p.is_dir() and not p.name.startswith(".")) if parent.is_dir() else []
    for state, probe in (("done", "metrics.json"), ("interrupted", LAST_CKPT)):
        found = [p for p in folders if (p / probe).is_file()]
        if found:
            return state, found[-1]
    return None, (folders[-1] if folders else None)


def refresh(manifest: Manifest, sweep_dir: Path, runs: list[RunSpec] | None = None) -> None:
    """Bring the status of `runs` (default: every run) up to date with their run roots."""
    for run in manifest.runs if runs is None else runs:
        state, folder = run_state(sweep_dir, run)
        if folder is not None:
            run.run_dir = str(folder.relative_to(sweep_dir))
        ended = _read_exit(run.root(sweep_dir) / EXIT_FILE)  # a SLURM task's end
        failure = recorded_failure(folder)
        if failure is not None:  # status.json says so, whatever metrics.json and exit say
            run.status, run.error = "failed", failure
        elif state == "done":
            run.status, run.killed = "done", False
        elif ended is not None and ended.get("returncode") != 0:
            run.status = "failed"
            run.returncode, run.error = ended.get("returncode"), ended.get("error")
        elif state == "interrupted" and run.status != "failed":
            run.status = "interrupted"
        elif state is None and run.status in ("running", "done", "interrupted"):
            run.status = "pending"  # its launcher died before it wrote anything to resume


def _read_exit(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def open_sweep(manifest: Manifest, sweep_dir: Path) -> Manifest:
    """The manifest of `sweep_dir`: written now, or the saved one when it plans the same runs."""
    sweep_dir = Path(sweep_dir)
    if (sweep_dir / MANIFEST).is_file():
        saved = Manifest.read(sweep_dir)
        if saved.plan() != manifest.plan():
            raise ConfigError(f"{sweep_dir}: holds a different {saved.kind} ({saved.name}, "
                              f"{len(saved.runs)} runs); use a new --out folder or --resume it")
        manifest = saved
    sweep_dir.mkdir(parents=True, exist_ok=True)
    refresh(manifest, sweep_dir)
    manifest.write(sweep_dir)
    return manifest


def resumable(run: RunSpec, sweep_dir: Path) -> bool:
    """An earlier attempt left checkpoints/last.ckpt but no metrics.json."""
    return run_state(sweep_dir, run)[0] == "interrupted"


def command(run: RunSpec, sweep_dir: Path, group: str, python: str = sys.executable) -> list[str]:
    resume = resumable(run, sweep_dir)
    return [python, "-m", "lightning_app", *run.train_args(sweep_dir, group, resume)]


def run_local(manifest: Manifest, sweep_dir: Path, parallel: int = 1) -> list[RunSpec]:
    """Run every unfinished run, `parallel` at a time; returns the failed ones."""
    todo = [r for r in manifest.runs if r.status != "done"]
    skipped = len(manifest.runs) - len(todo)
    if skipped:
        print(f"sweep: {skipped} of {len(manifest.runs)} runs already finished, skipped")
    if parallel > 1 and len(todo) > 1:
        prepare_data(todo)
    env = {k: v for k, v in os.environ.items() if k != "VMR_RUN_DIR"}
    env["PYTHONUNBUFFERED"] = "1"
    running: dict[subprocess.Popen, tuple[RunSpec, float]] = {}
    try:
        while todo or running:
            while todo and len(running) < max(1, parallel):
                run = todo.pop(0)
                running[_start(run, sweep_dir, manifest.group, env)] = (run, time.monotonic())
                manifest.write(sweep_dir)
            for proc in [p for p in running if p.poll() is not None]:
                run, started = running.pop(proc)
                _finish(run, sweep_dir, proc.returncode, time.monotonic() - started)
                manifest.write(sweep_dir)
            time.sleep(_POLL_S)
    finally:  # Ctrl-C or a crash of the launcher: stop the runs it started, keep the record
        for proc, (run, _) in running.items():
            proc.terminate()
            proc.wait()
            run.status = "pending"
        refresh(manifest, sweep_dir, [run for run, _ in running.values()])
        manifest.write(sweep_dir)
    return [r for r in manifest.runs if r.status == "failed"]


def prepare_data(runs: list[RunSpec]) -> None:
    """Build each distinct dataset once before runs start side by side: runs would otherwise
    all generate (synthetic) or pack the same data folder at the same time."""
    from lightning_app.config import load_config, to_dict
    from lightning_app.registry import build_datamodule

    seen: set[str] = set()
    roots: dict[str, RunSpec] = {}
    for run in runs:
        cfg = load_config(run.experiment, [*run.overrides, f"seed={run.seed}"])
        data = to_dict(cfg)["data"]
        key = json.dumps({k: data.get(k) for k in _ON_DISK}, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        other = roots.setdefault(str(Path(cfg.data.root).resolve()), run)
        if other is not run:
            raise ConfigError(f"--parallel: runs {other.id} and {run.id} use data.root="
                              f"{cfg.data.root} with different data settings and would rewrite "
                              "each other's data; give each its own data.root or run one at a "
                              "time")
        print(f"sweep: preparing the data of {run.id} ({cfg.data.root})", flush=True)
        build_datamodule(cfg).prepare_data()


def _start(run: RunSpec, sweep_dir: Path, group: str, env: dict) -> subprocess.Popen:
    cmd = command(run, sweep_dir, group)
    how = "resuming" if "resume=last" in cmd else "starting"
    print(f"sweep: {how} {run.id}", flush=True)
    root = run.root(sweep_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / EXIT_FILE).unlink(missing_ok=True)
    with open(root / LOG, "a") as log:  # a resumed run's log continues
        log.write(f"# {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    run.status, run.returncode, run.error, run.killed = "running", None, None, False
    return proc


def _finish(run: RunSpec, sweep_dir: Path, returncode: int, seconds: float) -> None:
    state, folder = run_state(sweep_dir, run)
    if folder is not None:
        run.run_dir = str(folder.relative_to(sweep_dir))
    run.returncode = returncode
    end = outcome(folder, state == "done", returncode, last_error(run.root(sweep_dir) / LOG))
    run.status, run.error, run.killed = end.status, end.error, end.killed
    if end.status == "done":
        print(f"sweep: finished {run.id} ({seconds:.0f} s)", flush=True)
        return
    print(f"sweep: FAILED {run.id} (exit code {returncode}): {run.error}", flush=True)


def last_error(log: Path) -> str | None:
    """The last line of `log` that reads like an error (else its last line)."""
    if not log.is_file():
        return None
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "exception" in ln.lower()]
    return (errors or lines or [None])[-1]


def write_exit(run: RunSpec, sweep_dir: Path, returncode: int, error: str | None) -> None:
    write_json(run.root(sweep_dir) / EXIT_FILE, {"returncode": returncode, "error": error})


def summary(manifest: Manifest, sweep_dir: Path) -> str:
    counts: dict[str, int] = {}
    for run in manifest.runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines = [f"{manifest.kind} {manifest.name}: {len(manifest.runs)} runs ({parts}) in {sweep_dir}"]
    for run in manifest.runs:
        if run.status == "failed":
            how = "killed" if run.killed else "failed"
            lines.append(f"  {how} {run.id}: {run.error} (log: {run.root(sweep_dir) / LOG})")
    return "\n".join(lines)
