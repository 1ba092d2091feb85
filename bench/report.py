"""results.json -> results.md: one table, every figure a ratio against a same-run reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import describe_machine, fmt_bytes
from datamodules.atomic import write_json, write_text

RATIO_HEADER = ("ratio (> 1: ours better; time and memory rows: reference / ours, throughput "
                "rows: ours / reference)")


def fmt_value(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value * 1e3:.1f} ms" if value < 0.1 else f"{value:.2f} s"
    if unit == "bytes":
        return fmt_bytes(value)
    if unit == "pairs/s":
        return f"{value:,.0f} pairs/s"
    return f"{value:.4g} {unit}"


def fmt_ratio(ratio: float) -> str:
    if ratio < 0.1:
        return f"{ratio:.2g}x"
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x" if ratio < 100 else f"{ratio:.0f}x"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(results: dict[str, Any]) -> str:
    cal = results["calibration"]
    lines = [
        "# vmr benchmarks",
        "",
        f"Written by `python -m bench.run{' --quick' if results['quick'] else ''}` "
        f"(`make bench`) on {results['finished']}; this invocation ran "
        f"{results['runtime_s']:.0f} s. Each figure is a ratio against a reference measured "
        "in the same run with the same thread count; absolute times are for orientation only.",
        "",
        f"Machine: {describe_machine(results['machine'])}.",
        "",
        f"Calibration ({results['threads']} threads, measured before each group; the best of "
        f"{cal.get('samples', 1)} measurements): float32 matmul {cal['sgemm_gflops']:.0f} "
        f"GFLOP/s (torch, n={cal['sgemm_n']}), memory copy {cal['copy_gbps']:.1f} GB/s (read + "
        f"write, {fmt_bytes(cal['copy_bytes'])}). Notes compare achieved rates with the "
        "calibration as it stood when their group ran; on a loaded machine a group can beat it.",
        "",
        f"| group | case | ours | reference | {RATIO_HEADER} | notes |",
        "|---|---|---|---|---|---|",
    ]
    checks, notes = [], []
    for name, group in results["groups"].items():
        for r in group["rows"]:
            lines.append("| " + " | ".join(_cell(x) for x in (
                r["group"], r["case"], fmt_value(r["ours"], r["unit"]),
                fmt_value(r["reference"], r["unit"]), fmt_ratio(r["ratio"]), r["notes"])) + " |")
            if "check" in r:
                mark = "ok" if r["check"]["ok"] else "FAILED"
                checks.append(f"- {mark}: {r['group']}, {r['case']}: {r['check']['detail']}")
        notes += [f"- {name}: {n}" for n in group.get("notes", [])]
        notes.append(f"- {name}: measured {group['measured_at']} in {group['seconds']:.0f} s"
                     + (" (an earlier `--only` run than the rest)"
                        if group.get("run_id") != results["run_id"] else ""))
    if "gpu" not in results["groups"]:
        lines += ["", "GPU numbers: not measured yet (no GPU lent); `make bench ARGS=\"--gpu\"` "
                  "on a CUDA machine adds the gpu group and device-memory rows, `make gpu-check` "
                  "the GPU tests."]
    lines += ["", "Correctness checks (ours against the reference, same inputs):", "", *checks,
              "", "Notes:", "", *notes, ""]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> str:
    text = markdown(results)
    write_json(out / "results.json", results)
    write_text(out / "results.md", text)
    return text
