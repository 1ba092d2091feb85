"""Studies without training: the YAML checks, and the report's numbers on a study folder
whose metrics.json files are written by hand, against NumPy/SciPy computed here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from lightning_app import stats, study
from lightning_app.cli import main
from lightning_app.errors import ConfigError
from lightning_app.study import check_arms, load_study, study_runs
from lightning_app.sweep_plan import Manifest

# ----- the YAML --------------------------------------------------------------------------

GOOD = """\
description: ii loss on and off
control: off
seeds: [0, 1]
overrides: [trainer.max_epochs=1]
arms:
  off: {experiment: quickstart, overrides: [optim.lr=1e-3]}
  on:  {experiment: quickstart}
"""


def write_study(folder: Path, text: str, name: str = "s") -> Path:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(text)
    return folder


def test_a_good_study_loads_with_off_and_on_as_names(tmp_path):
    s = load_study("s", write_study(tmp_path, GOOD))
    assert s.control == "off" and list(s.arms) == ["off", "on"] and s.seeds == [0, 1]
    check_arms(s, ["data.synthetic.seed=3"])
    runs = study_runs(s, [5, 6], ["data.synthetic.seed=3"])
    assert [(r.id, r.arm, r.seed, r.job_type) for r in runs] == [
        ("off-s5", "off", 5, "off"), ("off-s6", "off", 6, "off"),
        ("on-s5", "on", 5, "on"), ("on-s6", "on", 6, "on")]
    # The study's overrides, then the command line's, then the arm's own.
    assert runs[0].overrides == ["trainer.max_epochs=1", "data.synthetic.seed=3",
                                 "optim.lr=1e-3"]


def test_the_shipped_study_is_valid():
    s = load_study("quickstart_lr")
    check_arms(s, [])
    assert s.control in s.arms and len(s.arms) == 2 and len(s.seeds) == 3


@pytest.mark.parametrize("edit, message", [
    (lambda t: t + "colour: red\n",
     "unknown key 'colour' (valid keys: arms, control, description, overrides, seeds)"),
    (lambda t: t.replace("control: off\n", ""), "missing 'control' (the name of the control arm)"),
    (lambda t: t.replace("control: off", "control: of"),
     "control 'of' is not an arm (arms: off, on)"),
    (lambda t: t.replace("seeds: [0, 1]", "seeds: [0, 0]"), "'seeds' repeats a seed: [0, 0]"),
    (lambda t: t.replace("seeds: [0, 1]", "seeds: 3"),
     "'seeds' must be a non-empty list of integers, got 3"),
    (lambda t: t.replace("{experiment: quickstart}", "{experiment: quickstart, lr: 1}"),
     "unknown key 'arms.on.lr' (valid keys: experiment, overrides)"),
    (lambda t: t.replace("{experiment: quickstart}", "{overrides: []}"),
     "'arms.on' needs 'experiment: NAME'"),
    (lambda t: t.replace("[trainer.max_epochs=1]", "[seed=1]"),
     "'overrides': 'seed' is set by the sweep for every run (give seeds with --seeds)"),
    (lambda t: t.replace("[optim.lr=1e-3]", "[optim.lr]"),
     "'arms.off.overrides' entry 'optim.lr' is not a key=value string"),
])
def test_study_yaml_errors(tmp_path, edit, message):
    folder = write_study(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError) as e:
        load_study("s", folder)
    assert str(e.value).startswith(f"{folder / 's.yaml'}: ")
    assert message in str(e.value)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("{experiment: quickstart}", "{experiment: nope}"),
     "arm 'on': unknown experiment 'nope'"),
    (lambda t: t.replace("[optim.lr=1e-3]", "[optim.lrr=1e-3]"),
     "arm 'off': command line: unknown key 'optim.lrr'"),
])
def test_arm_configs_are_checked_through_the_cli(capsys, tmp_path, monkeypatch, edit, message):
    folder = write_study(tmp_path / "studies", edit(GOOD))
    monkeypatch.setattr(study, "STUDIES_DIR", folder)
    assert main(["study", "s", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()
    assert main(["study", "nope"]) == 2
    assert "unknown study 'nope' (choose from: s in" in capsys.readouterr().err


# ----- the report ------------------------------------------------------------------------

ARMS = ("ctl", "a", "b")
SEEDS = (0, 1, 2, 3)
METRICS = ("test/v2m/R@1", "test/v2m/R@10", "test/m2v/MdR")


def fake_study(tmp_path: Path) -> tuple[Path, dict]:
    """Arms ctl and a finish all 4 seeds; b finishes seed 2 only (seed 0 failed, 1 and 3 never
    ran). Returns the folder and {arm: {seed: {metric: value}}}."""
    s = load_study("s", write_study(tmp_path / "studies", """\
control: ctl
seeds: [0, 1, 2, 3]
arms:
  ctl: {experiment: quickstart}
  a: {experiment: quickstart, overrides: [optim.lr=1e-3]}
  b: {experiment: quickstart, overrides: [optim.lr=1e-2]}
"""))
    runs = study_runs(s, list(SEEDS), [])
    folder = tmp_path / "study"
    manifest = Manifest(kind="study", name="s", created="20260101-000000", grid={},
                        seeds=list(SEEDS), command="vmr study s --seeds 0,1,2,3", runs=runs,
                        study=s.definition())
    rng = np.random.default_rng(7)
    values: dict = {arm: {} for arm in ARMS}
    for run in runs:
        if run.arm == "b" and run.seed != 2:
            if run.seed == 0:
                run.status, run.returncode, run.error = "failed", 1, "RuntimeError: nan loss"
            continue
        metrics = {m: float(rng.uniform(0.1, 0.9)) if "R@" in m else float(rng.integers(1, 50))
                   for m in METRICS}
        if (run.arm, run.seed) == ("a", 3):
            del metrics["test/m2v/MdR"]  # a metric one run lacks (added to the code later)
        values[run.arm][run.seed] = metrics
        folder_run = run.root(folder) / "quickstart" / "20260101-000000"
        folder_run.mkdir(parents=True)
        (folder_run / "metrics.json").write_text(json.dumps(
            {**metrics, "val/v2m/R@1": 0.5, "best_checkpoint": None, "seed": run.seed}))
    manifest.write(folder)
    return folder, values


def test_report_matches_a_hand_computation(capsys, tmp_path):
    folder, values = fake_study(tmp_path)
    assert main(["study", "s", "--report-only", str(folder)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(folder)
    report = json.loads((folder / "report.json").read_text())
    assert report["study"] == "s" and report["control"] == "ctl"
    assert set(report["arms"]) == set(ARMS)
    for arm in ARMS:
        got = report["arms"][arm]
        seeds = sorted(values[arm])
        assert got["n"] == len(seeds) and report["arm_seeds"][arm] == seeds
        assert set(got["metrics"]) == set(METRICS)  # test metrics only
        for m in METRICS:
            xs = np.array([values[arm][s][m] for s in seeds if m in values[arm][s]])
            assert got["metrics"][m]["values"] == pytest.approx(list(xs))
            assert got["metrics"][m]["mean"] == pytest.approx(xs.mean())
            if len(xs) > 1:
                assert got["metrics"][m]["std"] == pytest.approx(xs.std(ddof=1))
            else:
                assert got["metrics"][m]["std"] is None
            common = [s for s in seeds if s in values["ctl"] and m in values[arm][s]]
            d = np.array([values[arm][s][m] - values["ctl"][s][m] for s in common])
            diff = got["diff_to_control"][m]
            assert diff["mean"] == pytest.approx(d.mean())
            if len(d) > 1:
                half = scipy.stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
                assert diff["ci95"] == pytest.approx([d.mean() - half, d.mean() + half])
            else:
                assert diff["ci95"] is None  # one pair: no interval
    assert report["arms"]["ctl"]["diff_to_control"][METRICS[0]] == {"mean": 0.0,
                                                                    "ci95": [0.0, 0.0]}
    assert [(f["arm"], f["seed"], f["status"]) for f in report["failed"]] == [
        ("b", 0, "failed"), ("b", 1, "pending"), ("b", 3, "pending")]
    assert report["failed"][0]["error"] == "RuntimeError: nan loss"

    md = (folder / "report.md").read_text()
    assert "vmr study s --seeds 0,1,2,3" in md
    assert "**3 run(s) failed or did not finish**" in md
    assert "| metric | ctl (n=4) | a (n=4) | b (n=1) |" in md
    r1 = values["a"]
    xs = np.array([r1[s]["test/v2m/R@1"] for s in SEEDS]) * 100
    assert "| test/v2m/R@1 | " in md and f"{xs.mean():.2f} ± {xs.std(ddof=1):.2f}" in md
    assert "[n/a]" in md  # b's difference has no CI
    assert " (n=3) |" in md.split("| test/m2v/MdR |")[1].splitlines()[0]  # a lacks one
    assert (folder / "report.png").stat().st_size > 5000


def test_report_only_refuses_another_folder(capsys, tmp_path):
    folder, _ = fake_study(tmp_path)
    assert main(["study", "other", "--report-only", str(folder)]) == 2
    assert f"{folder}: not a folder of study 'other' (it holds study 's')" in (
        capsys.readouterr().err)


def test_t_quantiles_without_scipy_match_scipy():
    for df in range(1, 200):
        assert stats.t975_table(df) == pytest.approx(scipy.stats.t.ppf(0.975, df), abs=2e-4)
    xs = [0.3, 0.5, 0.45]
    lo, hi = stats.ci95(xs)
    ref = scipy.stats.t.interval(0.95, 2, loc=np.mean(xs), scale=scipy.stats.sem(xs))
    assert (lo, hi) == pytest.approx(ref)
    assert stats.ci95([0.3]) is None and stats.std([0.3]) is None and stats.mean([]) is None


def test_report_survives_a_control_without_finished_runs(tmp_path):
    from lightning_app.study_report import write_report

    folder, values = fake_study(tmp_path)
    manifest = Manifest.read(folder)
    for run in manifest.runs:
        if run.arm == "ctl":
            (run.root(folder) / "quickstart" / "20260101-000000" / "metrics.json").unlink()
    report = write_report(manifest, folder)
    assert report["arms"]["ctl"]["n"] == 0 and report["arms"]["ctl"]["metrics"] == {}
    assert report["arms"]["a"]["n"] == 4
    assert report["arms"]["a"]["diff_to_control"]["test/v2m/R@1"] == {"mean": None,
                                                                      "ci95": None}
    assert "| test/v2m/R@1 | - |" in (folder / "report.md").read_text()
