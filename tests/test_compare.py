"""`vmr compare` on hand-made run folders: grouping by configuration (seed, paths and
logger settings aside), the differing keys as columns, mean/std/CI against NumPy/SciPy,
--by, the three formats, and skipped unfinished or failed runs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import yaml

from lightning_app.cli import main
from lightning_app.config import load_config, to_dict
from lightning_app.run_groups import excluded

LRS = ("0.0003", "0.001")  # the order of the rows: by value
SEEDS = (0, 1, 2)


def make_run(runs: Path, lr: str, seed: int, metrics: dict | None) -> Path:
    """A run folder as train() leaves it; each run has its own run_dir, data root, W&B group."""
    cfg = load_config("quickstart", [f"optim.lr={lr}", f"seed={seed}",
                                     f"run_dir={runs}/r{lr}{seed}", f"data.root=/data/{seed}",
                                     f"logger.wandb.group=g{seed}", "logger.wandb.mode=disabled"])
    run = runs / f"r{lr}{seed}" / "quickstart" / "20260101-000000"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    # W&B keeps a config.yaml of its own inside the run: not a run.
    (run / "wandb" / "offline-run-x" / "files").mkdir(parents=True)
    (run / "wandb" / "offline-run-x" / "files" / "config.yaml").write_text("a: 1\n")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(
            {**metrics, "seed": seed, "experiment": "quickstart", "best_checkpoint": None}))
    return run


@pytest.fixture
def runs(tmp_path) -> tuple[Path, dict]:
    """Two learning rates x three seeds, plus one unfinished and one failed run."""
    rng = np.random.default_rng(3)
    values: dict = {}
    for lr in LRS:
        for seed in SEEDS:
            m = {"test/v2m/R@1": float(rng.uniform(0.1, 0.5)),
                 "test/v2m/R@10": float(rng.uniform(0.5, 0.9)),
                 "test/v2m/MdR": float(rng.integers(1, 20)),
                 "test/m2v/R@1": float(rng.uniform(0.1, 0.5)),
                 "test/m2v/R@10": float(rng.uniform(0.5, 0.9)),
                 "test/m2v/MdR": float(rng.integers(1, 20)),
                 "test/m2v/MnR": float(rng.uniform(5, 50)), "val/v2m/R@1": 0.5}
            values[(lr, seed)] = m
            make_run(tmp_path / "runs", lr, seed, m)
    make_run(tmp_path / "runs", LRS[0], 7, None)  # still running, or killed
    failed = make_run(tmp_path / "runs", LRS[1], 8, values[(LRS[1], 0)])
    (failed / "status.json").write_text(json.dumps({"status": "failed"}))
    return tmp_path / "runs", values


def compare_json(capsys, *args: str) -> dict:
    assert main(["compare", *args, "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == "vmr compare: skipped 1 unfinished run and 1 failed run"
    return json.loads(out)


def test_groups_by_configuration_with_ci(capsys, runs):
    root, values = runs
    report = compare_json(capsys, str(root))
    assert report["keys"] == ["optim.lr"]  # seed, run_dir, data.root, logger: not configuration
    assert len(report["groups"]) == 2
    assert len(report["skipped"]["unfinished"]) == 1 and len(report["skipped"]["failed"]) == 1
    for group, lr in zip(report["groups"], LRS):
        assert group["config"] == {"optim.lr": float(lr)} and group["n"] == 3
        for metric in report["metrics"]:
            xs = np.array([values[(lr, s)][f"test/{metric}"] for s in SEEDS])
            got = group["metrics"][metric]
            half = scipy.stats.t.ppf(0.975, 2) * xs.std(ddof=1) / np.sqrt(3)
            assert got["mean"] == pytest.approx(xs.mean())
            assert got["std"] == pytest.approx(xs.std(ddof=1))
            assert got["ci95"] == pytest.approx([xs.mean() - half, xs.mean() + half])


def test_markdown_shows_the_differing_keys_and_counts_skipped_runs(capsys, runs):
    root, values = runs
    assert main(["compare", str(root), "--metrics", "v2m/R@1", "m2v/MnR"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:] if "|" in ln]
    assert cells[0] == ["optim.lr", "n", "v2m/R@1", "m2v/MnR"]
    assert [c[:2] for c in cells[2:]] == [["0.0003", "3"], ["0.001", "3"]]
    xs = np.array([values[("0.0003", s)]["test/v2m/R@1"] for s in SEEDS]) * 100
    half = scipy.stats.t.ppf(0.975, 2) * xs.std(ddof=1) / np.sqrt(3)
    assert cells[2][2] == (f"{xs.mean():.2f} ± {xs.std(ddof=1):.2f} "
                           f"[{xs.mean() - half:.2f}, {xs.mean() + half:.2f}]")
    assert lines[-1] == "skipped 1 unfinished run and 1 failed run"
    # Columns line up: every table line has the same length.
    assert len({len(ln) for ln in lines[2:-1]}) == 1


def test_by_groups_on_chosen_keys(capsys, runs):
    root, values = runs
    report = compare_json(capsys, str(root), "--by", "seed", "--sort", "v2m/R@1")
    assert report["keys"] == ["seed"]
    assert sorted(g["config"]["seed"] for g in report["groups"]) == list(SEEDS)
    means = [g["metrics"]["v2m/R@1"]["mean"] for g in report["groups"]]
    assert means == sorted(means, reverse=True)  # higher recall first
    for g in report["groups"]:
        s = g["config"]["seed"]
        assert g["n"] == 2 and g["metrics"]["v2m/R@1"]["mean"] == pytest.approx(
            np.mean([values[(lr, s)]["test/v2m/R@1"] for lr in LRS]))
    assert main(["compare", str(root), "--by", "optim.lrr"]) == 2
    assert "--by optim.lrr: no run has this config key (did you mean: optim.lr" in (
        capsys.readouterr().err)


def test_csv_parses(capsys, runs):
    root, values = runs
    assert main(["compare", str(root), "--format", "csv", "--stage", "test"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["optim.lr"] for r in rows] == ["0.0003", "0.001"]
    xs = np.array([values[("0.001", s)]["test/m2v/MdR"] for s in SEEDS])
    assert float(rows[1]["m2v/MdR/mean"]) == pytest.approx(xs.mean())
    assert float(rows[1]["m2v/MdR/std"]) == pytest.approx(xs.std(ddof=1))
    assert rows[1]["n"] == "3" and float(rows[1]["m2v/MdR/ci95_lo"]) < xs.mean()


def test_one_run_per_group_has_no_std_or_ci(capsys, tmp_path):
    make_run(tmp_path / "runs", "0.001", 0, {"test/v2m/R@1": 0.25})
    assert main(["compare", str(tmp_path / "runs"), "--format", "json"]) == 0
    group = json.loads(capsys.readouterr().out)["groups"][0]
    assert group["metrics"]["v2m/R@1"] == {"mean": 0.25, "std": None, "n": 1, "ci95": None}


def test_excluded_keys():
    for key in ("seed", "run_dir", "resume", "data.root", "logger.wandb.group",
                "logger.wandb.job_type", "trainer.enable_progress_bar"):
        assert excluded(key), key
    for key in ("optim.lr", "data.batch_size", "data.synthetic.seed", "name", "loggers"):
        assert not excluded(key), key
