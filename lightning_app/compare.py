"""`vmr compare`: one table of the final metrics of many runs, with per-experiment means.

Reads only the run folders (metrics.json, config.yaml), so runs compare without W&B.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from lightning_app.errors import ConfigError

SHOWN = ("v2m/R@1", "v2m/R@10", "v2m/MdR", "m2v/R@1", "m2v/R@10", "m2v/MdR")


def find_runs(paths: list[Path]) -> list[Path]:
    runs: list[Path] = []
    for path in paths:
        if not path.exists():
            raise ConfigError(f"{path}: no such run folder")
        if (path / "metrics.json").exists():
            runs.append(path)
        else:
            runs.extend(sorted(p.parent for p in path.rglob("metrics.json")))
    return runs


def _read(path: Path, parse) -> dict:
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


def _load(run: Path, stage: str) -> tuple[str, int, dict[str, float]]:
    metrics = _read(run / "metrics.json", json.loads)
    cfg = _read(run / "config.yaml", yaml.safe_load)
    name = cfg.get("name") or metrics.get("experiment") or run.parent.name
    values = {k[len(stage) + 1:]: v for k, v in metrics.items() if k.startswith(f"{stage}/")}
    return name, cfg.get("seed", metrics.get("seed", -1)), values


def _number(value: object, default: float | None = None) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default


def _cell(key: str, value: float | None) -> str:
    if value is None:
        return f"{'-':>10}"
    return f"{value * 100:>10.2f}" if "/R@" in key else f"{value:>10.1f}"


def compare_runs(paths: list[Path], stage: str = "test", sort: str | None = None) -> str:
    runs = find_runs(paths)
    if not runs:
        raise ConfigError(f"no finished runs (metrics.json) under {', '.join(map(str, paths))}")
    loaded = [(run, *_load(run, stage)) for run in runs]
    if sort:
        have = sorted({k for *_, values in loaded for k in values})
        if sort not in have:
            raise ConfigError(
                f"--sort {sort}: no run has {stage}/{sort} (choose from: {', '.join(have)})"
            )
        higher_is_better = "R@" in sort
        # Runs without the metric go last in either direction.
        missing = float("-inf") if higher_is_better else float("inf")
        loaded.sort(key=lambda r: _number(r[3].get(sort), missing), reverse=higher_is_better)
    head = f"{'run':<44}{'seed':>6}" + "".join(f"{k:>10}" for k in SHOWN)
    lines = [f"{stage} metrics (R@K in %)", head]
    for run, name, seed, values in loaded:
        label = f"{name}/{run.name}"[-44:]
        cells = "".join(_cell(k, _number(values.get(k))) for k in SHOWN)
        lines.append(f"{label:<44}{seed!s:>6}" + cells)
    groups: dict[str, list[dict[str, float]]] = {}
    for _, name, _, values in loaded:
        groups.setdefault(name, []).append(values)
    lines += ["", "mean ± std over runs of each experiment"]
    for name, rows in sorted(groups.items()):
        cells = []
        for k in SHOWN:
            xs = [x for r in rows if (x := _number(r.get(k))) is not None]
            scale = 100 if "/R@" in k else 1
            mean = statistics.fmean(xs) * scale if xs else float("nan")
            std = statistics.stdev(xs) * scale if len(xs) > 1 else 0.0
            cells.append(f"{mean:>6.1f}±{std:<3.1f}")
        lines.append(f"{name + f' (n={len(rows)})':<50}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)
