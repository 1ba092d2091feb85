"""The local sweep launcher judges each run by its exit code and its status.json: a run
whose status.json says failed is failed (with the recorded reason) even after exit code 0,
and a run that exited with status.json missing or still running is named as killed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lightning_app import sweep
from lightning_app.cli import main
from lightning_app.sweep_outcome import Outcome, outcome
from lightning_app.sweep_plan import Manifest

FULL = "StorageError: runs/x/report.html: no space left on device"
# What each stand-in run does in its train folder, and how it exits.
BEHAVIOUR = {
    0: ("metrics", {"status": "failed", "reason": FULL}, "sys.exit(0)"),
    1: ("", {"status": "running"}, "os.kill(os.getpid(), signal.SIGKILL)"),
    2: ("metrics", {"status": "finished"}, "sys.exit(0)"),
    3: ("", None, "print('RuntimeError: not the reason'); sys.exit(1)"),
}


def _fake_command(run, sweep_dir, group, python=sys.executable):
    folder = run.root(sweep_dir) / run.experiment / "20260101-000000"
    metrics, status, end = BEHAVIOUR[run.index]
    code = [f"import json, os, pathlib, signal, sys; p = pathlib.Path({str(folder)!r})",
            "p.mkdir(parents=True)"]
    if metrics:
        code.append("(p / 'metrics.json').write_text('{}')")
    if status is not None:
        code.append(f"(p / 'status.json').write_text(json.dumps({status!r}))")
    return [python, "-c", "; ".join([*code, end])]


@pytest.fixture
def swept(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "command", _fake_command)
    out = tmp_path / "s"
    code = main(["sweep", "quickstart", "optim.lr=1e-3,2e-3,3e-3,4e-3", "--out", str(out)])
    return code, out, capsys.readouterr().out


def test_status_json_decides_failed_and_killed_runs(swept):
    code, out, printed = swept
    assert code == 1
    runs = Manifest.read(out).runs
    assert [(r.status, r.killed) for r in runs] == [
        ("failed", False), ("failed", True), ("done", False), ("failed", True)]
    assert [r.returncode for r in runs] == [0, -9, 0, 1]
    assert runs[0].error == FULL
    assert runs[1].error == "killed (exit code -9; status.json still says running)"
    assert runs[3].error == "killed (exit code 1; no status.json)"
    lines = printed.splitlines()
    assert f"sweep: FAILED {runs[0].id} (exit code 0): {FULL}" in lines
    assert [ln for ln in lines if ln.startswith("sweep: finished")] == [
        ln for ln in lines if ln.startswith(f"sweep: finished {runs[2].id} (")] != []
    summary = lines[lines.index(next(ln for ln in lines if "4 runs (" in ln)):]
    log = out / "runs" / "{}" / "train.log"
    assert summary == [
        f"sweep quickstart: 4 runs (1 done, 3 failed) in {out}",
        f"  failed {runs[0].id}: {FULL} (log: {str(log).format(runs[0].id)})",
        f"  killed {runs[1].id}: {runs[1].error} (log: {str(log).format(runs[1].id)})",
        f"  killed {runs[3].id}: {runs[3].error} (log: {str(log).format(runs[3].id)})",
    ]


def test_reopening_the_sweep_keeps_a_recorded_failure_despite_metrics_json(swept, capsys):
    _, out, _ = swept
    manifest = Manifest.read(out)
    for run in manifest.runs:
        run.status, run.error = "pending", None
    sweep.refresh(manifest, out)
    assert manifest.runs[0].status == "failed" and manifest.runs[0].error == FULL
    assert manifest.runs[2].status == "done"


@pytest.mark.parametrize("status, done, code, expected", [
    ({"status": "finished"}, True, 0, Outcome("done")),
    (None, True, 0, Outcome("done")),  # a folder from before status.json existed
    ({"status": "failed", "reason": "Oops: x"}, True, 0, Outcome("failed", "Oops: x")),
    ({"status": "failed"}, False, 2, Outcome("failed", "status.json says failed")),
    ({"status": "running"}, True, 0,
     Outcome("failed", "killed (exit code 0; status.json still says running)", killed=True)),
    ({"status": "finished"}, True, 1, Outcome("failed", "last line")),
    ("no folder", False, 2, Outcome("failed", "last line")),
])
def test_outcome_table(tmp_path, status, done, code, expected):
    folder: Path | None = None if status == "no folder" else tmp_path
    if isinstance(status, dict):
        (tmp_path / "status.json").write_text(json.dumps(status))
    assert outcome(folder, done, code, "last line") == expected
