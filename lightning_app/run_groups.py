"""Finished runs, read from their folders, grouped by configuration (for `vmr compare`).

A run folder is a folder with config.yaml (the resolved config) or metrics.json. It is
finished when it has metrics.json and no status.json saying it failed; the rest are counted
as skipped. Two runs have the same configuration when their resolved configs agree on every
key except the EXCLUDED ones: the seed (runs of one configuration differ by it), keys that
only locate files (run_dir, resume, data.root, data.store), and keys that change how a run
is watched or how fast it loads, never what it computes (logger, progress bar, log interval,
profiler, loader worker counts, the description).
"""

from __future__ import annotations

import difflib
import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_app.config.loading import flatten
from lightning_app.errors import ConfigError
from lightning_app.run_status import read_status

EXCLUDED = ("seed", "run_dir", "resume", "description", "data.root", "data.store",
            "data.num_workers", "data.prepare_workers", "logger", "trainer.enable_progress_bar",
            "trainer.log_every_n_steps", "trainer.profiler")
# Folders inside a run that hold no runs (W&B keeps its own config.yaml in wandb/).
_NOT_RUNS = {"wandb", "checkpoints", "csv", "store", "pseudo_labels"}


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flattened: {"optim.lr": 0.001, ...}
    metrics: dict[str, float]  # of one stage, without its prefix: {"v2m/R@10": 0.6, ...}


@dataclass
class Group:
    key: dict[str, Any]  # the configuration (or the --by keys) its runs share
    runs: list[Run] = field(default_factory=list)


@dataclass
class Found:
    finished: list[Path]
    unfinished: list[Path]  # no metrics.json yet (running, killed)
    failed: list[Path]  # status.json says failed


def find_runs(paths: list[Path]) -> Found:
    found = Found([], [], [])
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such run folder")
        for run in _run_folders(path):
            if _failed(run):
                found.failed.append(run)
            elif (run / "metrics.json").is_file():
                found.finished.append(run)
            else:
                found.unfinished.append(run)
    return found


def _run_folders(path: Path) -> list[Path]:
    runs = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in _NOT_RUNS and not d.startswith("."))
        if "config.yaml" in files or "metrics.json" in files:
            runs.append(Path(folder))
            dirs.clear()  # a run folder holds no further runs
    return runs


def _failed(run: Path) -> bool:
    """status.json says failed (lightning_app.run_status; a resumed run is running again)."""
    return str(read_status(run).get("status", "")).lower() == "failed"


def read_mapping(path: Path, parse) -> dict:
    """A JSON/YAML mapping, {} when the file is absent; a one-line error when it is corrupt."""
    if not path.exists():
        return {}
    try:
        data = parse(path.read_text())
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: corrupt ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(data).__name__}")
    return data


def load_run(path: Path, stage: str) -> Run:
    metrics = read_mapping(path / "metrics.json", json.loads)
    saved = read_mapping(path / "config.yaml", yaml.safe_load)
    # A key added to the schema after the run was made reads as its default (new keys
    # default to the earlier behaviour), so old and new runs of one setting group together.
    config = {**_defaults(), **flatten(saved)} if saved else {}
    if "name" not in config:  # a run folder from before config.yaml was written
        config["name"] = metrics.get("experiment") or path.parent.name
    if "seed" not in config and "seed" in metrics:
        config["seed"] = metrics["seed"]
    prefix = f"{stage}/"
    values = {k[len(prefix):]: float(v) for k, v in metrics.items()
              if k.startswith(prefix) and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return Run(path, config, values)


@functools.cache
def _defaults() -> dict[str, Any]:
    from lightning_app.config import Config, to_dict

    return flatten(to_dict(Config()))


def excluded(key: str) -> bool:
    return any(key == e or key.startswith(e + ".") for e in EXCLUDED)


def configuration(run: Run) -> dict[str, Any]:
    return {k: v for k, v in run.config.items() if not excluded(k)}


def _hashable(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def group_runs(runs: list[Run], by: list[str] | None = None) -> list[Group]:
    """Runs with the same configuration (or the same values of the `by` keys), in the order
    of their first run."""
    if by:
        have = sorted({k for r in runs for k in r.config})
        for key in by:
            if key not in have:
                close = difflib.get_close_matches(key, have, n=3)
                hint = f" (did you mean: {', '.join(close)}?)" if close else ""
                raise ConfigError(f"--by {key}: no run has this config key{hint}")
    groups: dict[str, Group] = {}
    for run in runs:
        key = {k: run.config.get(k) for k in by} if by else configuration(run)
        groups.setdefault(_hashable(key), Group(key)).runs.append(run)
    return list(groups.values())


def differing_keys(groups: list[Group]) -> list[str]:
    """The configuration keys whose values are not the same in every group."""
    keys = sorted({k for g in groups for k in g.key})
    missing = object()
    return [k for k in keys
            if len({_hashable({"v": g.key.get(k, missing)}) for g in groups}) > 1]
