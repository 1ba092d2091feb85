"""The report of a study folder: per arm mean, std and n of every test metric, and the
difference to the control arm with a 95 % confidence interval paired by seed.

report.json:
    {"study": NAME, "control": ARM, "seeds": [...], "command": "...", "failed": [...],
     "arm_seeds": {ARM: [seeds of its finished runs]},
     "arms": {ARM: {"n": int,
                    "metrics": {METRIC: {"mean", "std", "values"}},
                    "diff_to_control": {METRIC: {"mean", "ci95": [lo, hi] | null}}}}}

`values` are in the order of "arm_seeds"; std is
the sample std (ddof=1, null for one run). The difference pairs each seed's run with the
control's run of the same seed: mean of (arm - control) +- t_{0.975, n-1} sd / sqrt(n), null
for fewer than two pairs. Failed or unfinished runs are left out and listed in "failed".
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path

from datamodules.atomic import write_json, write_text
from lightning_app import stats
from lightning_app.sweep import refresh
from lightning_app.sweep_plan import Manifest

STAGE = "test/"
_DIRECTIONS = ("v2m", "m2v")


def collect(manifest: Manifest, sweep_dir: Path) -> tuple[dict[str, dict[int, dict]], list]:
    """{arm: {seed: test metrics}} of the finished runs, and [(arm, seed, why)] of the rest."""
    refresh(manifest, sweep_dir)
    done: dict[str, dict[int, dict]] = {arm: {} for arm in manifest.study["arms"]}
    missing = []
    for run in manifest.runs:
        if run.status == "done" and run.run_dir:
            metrics = json.loads((Path(sweep_dir) / run.run_dir / "metrics.json").read_text())
            done[run.arm][run.seed] = {k: float(v) for k, v in metrics.items()
                                       if k.startswith(STAGE) and _is_number(v)}
        else:
            why = run.error or ("not finished" if run.status != "failed" else "failed")
            missing.append({"arm": run.arm, "seed": run.seed, "status": run.status,
                            "error": why})
    return done, missing


def build_report(manifest: Manifest, sweep_dir: Path) -> dict:
    done, missing = collect(manifest, sweep_dir)
    control = manifest.study["control"]
    arms = {}
    for arm, by_seed in done.items():
        seeds = sorted(by_seed)
        names = sorted({m for s in seeds for m in by_seed[s]}, key=_metric_order)
        metrics, diffs = {}, {}
        for name in names:
            values = {s: by_seed[s][name] for s in seeds if name in by_seed[s]}
            xs = [values[s] for s in sorted(values)]
            metrics[name] = {"mean": stats.mean(xs), "std": stats.std(xs), "values": xs}
            reference = {s: m[name] for s, m in done[control].items() if name in m}
            paired = stats.paired_differences(values, reference)
            ci = stats.ci95(paired)
            diffs[name] = {"mean": stats.mean(paired), "ci95": list(ci) if ci else None}
        arms[arm] = {"n": len(seeds), "metrics": metrics, "diff_to_control": diffs}
    return {"study": manifest.name, "control": control, "seeds": manifest.seeds,
            "description": manifest.study.get("description", ""),
            "command": manifest.command, "folder": str(sweep_dir), "failed": missing,
            "arm_seeds": {arm: sorted(by_seed) for arm, by_seed in done.items()}, "arms": arms}


def write_report(manifest: Manifest, sweep_dir: Path) -> dict:
    """report.json, report.md and report.png in the study folder."""
    from lightning_app.study_plot import plot_report

    report = build_report(manifest, sweep_dir)
    write_json(Path(sweep_dir) / "report.json", report)
    write_text(Path(sweep_dir) / "report.md", report_markdown(report))
    plot_report(report, Path(sweep_dir) / "report.png")
    return report


def report_markdown(report: dict) -> str:
    arms, control = report["arms"], report["control"]
    names = sorted({m for a in arms.values() for m in a["metrics"]}, key=_metric_order)
    lines = [f"# Study {report['study']}", ""]
    if report.get("description"):
        lines += [report["description"].strip(), ""]
    lines += [f"Control arm: `{control}`. Seeds: {', '.join(map(str, report['seeds']))}. "
              "R@K in %, ranks as numbers.", "",
              "Reproduce with:", "", "```bash", report["command"], "```", ""]
    if report["failed"]:
        lines += [f"**{len(report['failed'])} run(s) failed or did not finish** and are left "
                  "out (n below counts finished runs):", ""]
        lines += [f"- `{f['arm']}` seed {f['seed']}: {f['status']} ({f['error']})"
                  for f in report["failed"]]
        lines.append("")
    head = "| metric | " + " | ".join(f"{a} (n={arms[a]['n']})" for a in arms) + " |"
    lines += ["## Mean ± std over seeds", "", head, "|---" * (len(arms) + 1) + "|"]
    for name in names:
        cells = [_mean_std(name, arms[a]["metrics"].get(name), arms[a]["n"]) for a in arms]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    others = [a for a in arms if a != control]
    if others:
        lines += ["", f"## Difference to `{control}` (mean [95 % CI], paired by seed)", "",
                  "| metric | " + " | ".join(others) + " |", "|---" * (len(others) + 1) + "|"]
        for name in names:
            cells = [_diff(name, arms[a]["diff_to_control"].get(name)) for a in others]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if any(d["ci95"] is None for a in others for d in arms[a]["diff_to_control"].values()):
            lines += ["", "A CI needs at least two seeds that both arms finished; "
                      "'n/a' marks a difference without one."]
    return "\n".join(lines) + "\n"


def _scale(name: str) -> float:
    return 100.0 if "/R@" in name else 1.0


def _fmt(x: float | None, name: str, sign: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x * _scale(name):{'+' if sign else ''}.2f}"


def _mean_std(name: str, m: dict | None, n: int) -> str:
    if not m:
        return "-"
    text = f"{_fmt(m['mean'], name)} ± {_fmt(m['std'], name)}"
    # A metric some runs lack (e.g. added to the code between runs) has fewer values.
    return text if len(m["values"]) == n else f"{text} (n={len(m['values'])})"


def _diff(name: str, d: dict | None) -> str:
    if not d or d["mean"] is None:
        return "-"
    ci = d["ci95"]
    span = f"[{_fmt(ci[0], name, True)}, {_fmt(ci[1], name, True)}]" if ci else "[n/a]"
    return f"{_fmt(d['mean'], name, True)} {span}"


def _metric_order(name: str) -> tuple:
    """The plain metrics first, then each family (`test/v2m/compat/R@1`, ...) by name; within
    one, v2m before m2v, R@K by K, then MdR, MnR; metrics of no direction (loss, ...) last."""
    parts = name.split("/")
    if len(parts) < 3 or parts[1] not in _DIRECTIONS:
        return (1, "", 0, 0, 0, name)
    family, metric = "/".join(parts[2:-1]), parts[-1]
    direction = _DIRECTIONS.index(parts[1])
    if metric.startswith("R@") and metric[2:].isdigit():
        return (0, family, direction, 0, int(metric[2:]), name)
    return (0, family, direction, 1, 0, name)


def _is_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)
