"""Continuing a run in its own folder: which folder, which checkpoint, and the config check.

`resume=RUN_DIR` or `resume=last` continues a run by hand; a scheduler launch that finds its
folder again (SLURM requeue, torchrun restart; lightning_app.run_dir) continues on its own.
Lightning restores model, optimizer, LR scheduler, loops and callback state from the
checkpoint; the config must be the run's own, except `trainer.max_epochs` (to extend a run).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml

from datamodules.atomic import write_text
from lightning_app.config import Config, flatten, to_yaml
from lightning_app.errors import ConfigError
from lightning_app.run_dir import (
    LAUNCH_FILE,
    claim_run_dir,
    find_launch_run,
    inherited_run_dir,
    launch_key,
    launch_rank,
    make_run_dir,
)
from lightning_app.run_status import read_status

log = logging.getLogger("vmr")

LAST = "checkpoints/last.ckpt"
# Keys that may differ between a run and its continuation.
CHANGEABLE = ("trainer.max_epochs", "resume")
_SHOWN = 5


def latest_checkpoint(run: Path) -> Path | None:
    """The newest of checkpoints/last.ckpt and Lightning's SLURM `hpc_ckpt_N.ckpt` files."""
    found = [p for p in (run / LAST, *run.glob("hpc_ckpt_*.ckpt")) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_last_run(run_root: str | Path, name: str) -> Path | None:
    """The newest run folder of experiment `name` that has checkpoints/last.ckpt."""
    parent = Path(run_root) / name
    if not parent.is_dir():
        return None
    runs = [p for p in parent.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / LAST).is_file()]
    # Names start with the start time (YYYYmmdd-HHMMSS); "-2", "-10" break ties in order.
    return max(runs, key=lambda p: (p.name[:15], len(p.name), p.name)) if runs else None


def resume_target(cfg: Config) -> tuple[Path, Path] | None:
    """(run folder, checkpoint) for `resume=...`, checked before any work; None without it."""
    if not cfg.resume:
        return None
    where = f"resume={cfg.resume}"
    # A process Lightning's DDP launcher started joins its folder; a requeued job its own.
    run = inherited_run_dir() or _relaunched_run(cfg)
    if run is None and cfg.resume == "last":
        run = find_last_run(cfg.run_dir, cfg.name)
        if run is None:
            raise ConfigError(f"{where}: no run of '{cfg.name}' under "
                              f"{Path(cfg.run_dir) / cfg.name} has {LAST}")
    elif run is None:
        run = Path(cfg.resume).expanduser()
        short = Path(cfg.run_dir) / cfg.name / cfg.resume  # resume=<timestamp> works too
        if not run.is_dir() and not run.is_absolute() and short.is_dir():
            run = short
        if not run.is_dir():
            raise ConfigError(f"{where}: no such run folder")
    run = run.resolve()
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        raise ConfigError(f"{where}: nothing to resume from ({run / LAST} does not exist)")
    check_same_config(run, cfg, where)
    return run, ckpt


def _relaunched_run(cfg: Config) -> Path | None:
    key = launch_key()
    return find_launch_run(Path(cfg.run_dir) / cfg.name, key) if key else None


def open_run(cfg: Config, target: tuple[Path, Path] | None) -> tuple[Path, Path | None]:
    """The run folder to write into and the checkpoint to continue from (None: from scratch)."""
    if target is not None:
        run, ckpt = target
        _note_failed(run)
        claim_run_dir(run)
        key = launch_key()
        if key and launch_rank() == 0:  # after a requeue, this launch continues this folder
            write_text(run / LAUNCH_FILE, key)
        return run, ckpt
    run = make_run_dir(cfg.run_dir, cfg.name)
    ckpt = latest_checkpoint(run)
    if ckpt is not None:  # a scheduler launch found its folder again: continue it
        check_same_config(run, cfg, f"resuming {run}")
        _note_failed(run)
        log.info("vmr: resuming %s from %s", run, ckpt.name)
    return run, ckpt


def _note_failed(run: Path) -> None:
    """Resuming is how a failed run continues: say so (its status goes back to running)."""
    status = read_status(run)
    if status.get("status") == "failed" and launch_rank() == 0:
        log.info("vmr: %s had failed (%s); continuing it", run, status.get("reason", "?"))


def check_same_config(run: Path, cfg: Config, where: str) -> None:
    """Raise a one-line ConfigError naming every key (but CHANGEABLE) that differs."""
    path = run / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{where}: {run} is not a run folder (no config.yaml)")
    try:
        saved = flatten(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError:
        raise ConfigError(f"{path}: not valid YAML") from None
    now = flatten(yaml.safe_load(to_yaml(cfg)))
    missing = object()
    diff = sorted(k for k in saved.keys() | now.keys()
                  if k not in CHANGEABLE and saved.get(k, missing) != now.get(k, missing))
    if diff:
        shown = ", ".join(f"{k} ({saved.get(k, '<unset>')!r} -> {now.get(k, '<unset>')!r})"
                          for k in diff[:_SHOWN])
        more = f" and {len(diff) - _SHOWN} more" if len(diff) > _SHOWN else ""
        raise ConfigError(f"{where}: config differs from {path} in {shown}{more}; only "
                          "trainer.max_epochs may change (repeat the run's overrides)")


def checkpoint_position(ckpt: Path) -> tuple[int, int] | None:
    """(epoch, global_step) stored in a Lightning checkpoint, read without loading tensors."""
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"]), int(state["global_step"])
    except Exception:  # an unreadable checkpoint fails loudly in trainer.fit instead
        return None
