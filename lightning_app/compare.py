"""`vmr compare`: finished runs grouped by configuration, with mean, std, n and a 95 % CI
(Student t over the group's runs, usually its seeds) per metric.

Reads only the run folders (config.yaml, metrics.json, status.json), so runs compare without
W&B. Which keys make a configuration: lightning_app.run_groups (EXCLUDED). The columns
before the metrics are the keys whose values differ between the groups (or the `--by` keys).
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from lightning_app import stats
from lightning_app.errors import ConfigError
from lightning_app.run_groups import Group, differing_keys, find_runs, group_runs, load_run

SHOWN = ("v2m/R@1", "v2m/R@10", "v2m/MdR", "m2v/R@1", "m2v/R@10", "m2v/MdR")
FORMATS = ("md", "csv", "json")


def compare_runs(paths: list[Path], stage: str = "test", sort: str | None = None,
                 by: list[str] | None = None, metrics: list[str] | None = None,
                 fmt: str = "md") -> tuple[str, str]:
    """(the table in `fmt`, a note on skipped runs or "")."""
    found = find_runs(paths)
    if not found.finished:
        skipped = _skipped_note(len(found.unfinished), len(found.failed))
        raise ConfigError(f"no finished runs (metrics.json) under {', '.join(map(str, paths))}"
                          + (f" ({skipped})" if skipped else ""))
    runs = [load_run(p, stage) for p in found.finished]
    have = sorted({k for r in runs for k in r.metrics})
    shown = list(metrics) if metrics else [m for m in SHOWN if m in have] or have
    for name in [*shown, *([sort] if sort else [])]:
        if name not in have:
            flag = "--sort" if name == sort else "--metrics"
            raise ConfigError(f"{flag} {name}: no run has {stage}/{name} "
                              f"(choose from: {', '.join(have)})")
    groups = group_runs(runs, by)
    keys = list(by) if by else (differing_keys(groups) or ["name"])
    rows = sorted((_summary(g, keys, shown) for g in groups),
                  key=lambda r: [_order(r["config"][k]) for k in keys])
    if sort:
        higher_is_better = _higher_is_better(sort)
        # Groups without the metric go last in either direction.
        missing = float("-inf") if higher_is_better else float("inf")
        rows.sort(key=lambda r: _or(r["metrics"][sort]["mean"], missing),
                  reverse=higher_is_better)
    note = _skipped_note(len(found.unfinished), len(found.failed))
    if fmt == "json":
        return json.dumps({"stage": stage, "keys": keys, "metrics": shown, "groups": rows,
                           "skipped": {"unfinished": [str(p) for p in found.unfinished],
                                       "failed": [str(p) for p in found.failed]}},
                          indent=2), note
    if fmt == "csv":
        return _csv(rows, keys, shown), note
    if fmt == "md":
        return _markdown(rows, keys, shown, stage), note
    raise ConfigError(f"--format {fmt}: choose from {', '.join(FORMATS)}")


def _summary(group: Group, keys: list[str], shown: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"config": {k: group.key.get(k, group.runs[0].config.get(k))
                                      for k in keys},
                           "n": len(group.runs), "runs": [str(r.path) for r in group.runs],
                           "metrics": {}}
    for name in shown:
        xs = [r.metrics[name] for r in group.runs if name in r.metrics]
        s = stats.summarize(xs)
        out["metrics"][name] = {"mean": s["mean"], "std": s["std"], "n": s["n"],
                                "ci95": None if s["ci95_lo"] is None
                                else [s["ci95_lo"], s["ci95_hi"]]}
    return out


def _csv(rows: list[dict], keys: list[str], shown: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*keys, "n", *(f"{m}/{s}" for m in shown
                                   for s in ("mean", "std", "ci95_lo", "ci95_hi"))])
    for row in rows:
        cells: list[Any] = [_value(row["config"][k]) for k in keys] + [row["n"]]
        for m in shown:
            s = row["metrics"][m]
            ci = s["ci95"] or [None, None]
            cells += [_blank(s["mean"]), _blank(s["std"]), _blank(ci[0]), _blank(ci[1])]
        writer.writerow(cells)
    return buf.getvalue().rstrip("\n")


def _markdown(rows: list[dict], keys: list[str], shown: list[str], stage: str) -> str:
    """A Markdown table whose columns line up, so it reads in a terminal as it is."""
    head = [*keys, "n", *shown]
    body = [[_value(r["config"][k]) for k in keys] + [str(r["n"])]
            + [_cell(m, r["metrics"][m]) for m in shown] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    title = (f"{stage} metrics: mean ± std [95 % CI] over the runs of each configuration "
             "(R@K in %)")
    return "\n".join([title, "", line(head), "|" + "|".join("-" * (w + 2) for w in widths)
                      + "|", *(line(b) for b in body)])


def _higher_is_better(metric: str) -> bool:
    """Recalls (R@K; MGSV-EC's official R<k>) and MRR grow with quality; ranks, losses fall."""
    name = metric.rsplit("/", 1)[-1]
    return "R@" in name or name == "MRR" or bool(re.fullmatch(r"R\d+", name))


def _cell(name: str, s: dict) -> str:
    if s["mean"] is None:
        return "-"
    scale = 100.0 if "R@" in name else 1.0
    text = f"{s['mean'] * scale:.2f}"
    if s["std"] is not None:
        text += f" ± {s['std'] * scale:.2f}"
    if s["ci95"] is not None:
        text += f" [{s['ci95'][0] * scale:.2f}, {s['ci95'][1] * scale:.2f}]"
    return text


def _order(v: Any) -> tuple:
    """Numbers by value, before anything else by its text (None, lists, strings mix)."""
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    return (0, v, "") if number else (1, 0, _value(v))


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _blank(x: float | None) -> str | float:
    return "" if x is None else x


def _or(x: float | None, default: float) -> float:
    return default if x is None else x


def _skipped_note(unfinished: int, failed: int) -> str:
    parts = [f"{n} {what} run{'s' if n != 1 else ''}"
             for n, what in ((unfinished, "unfinished"), (failed, "failed")) if n]
    return f"skipped {' and '.join(parts)}" if parts else ""
