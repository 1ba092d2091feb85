"""train(cfg) end to end on small planted data: it learns, and the run folder is complete."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from lightning_app.config import load_config, to_dict
from lightning_app.train import train


def small_quickstart(tmp_path, *extra):
    return load_config("quickstart", [
        f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'runs'}",
        "data.synthetic.pairs=1400", "data.synthetic.val=200", "data.synthetic.test=200",
        "data.batch_size=200", "data.eval_batch_size=200", "trainer.max_epochs=6",
        "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled",
        "loss.structure_k=50", *extra,
    ])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = small_quickstart(tmp)
    torch.manual_seed(0)
    metrics, objects = train(cfg)
    return cfg, metrics, objects


def test_learned_retrieval_is_far_above_chance(finished_run):
    _, metrics, _ = finished_run
    chance_r10 = 10 / 200
    assert metrics["test/gallery_size"] == 200
    for direction in ("v2m", "m2v"):
        assert metrics[f"test/{direction}/R@10"] >= 5 * chance_r10, metrics
        assert metrics[f"test/{direction}/MdR"] < 20, metrics  # chance median is ~100


def test_run_folder_contract(finished_run):
    cfg, metrics, objects = finished_run
    run = objects["run_dir"]
    assert run.parent.parent == cfg_run_root(cfg) and run.parent.name == "quickstart"
    assert yaml.safe_load((run / "config.yaml").read_text()) == to_dict(cfg)
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("test/v2m/R@1", "test/v2m/R@10", "test/m2v/MdR", "test/m2v/MnR"):
        assert saved[key] == metrics[key]
    assert saved["seed"] == cfg.seed and saved["git_commit"]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    with open(run / "csv" / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert {"val/v2m/R@10", "val/m2v/MdR", "train/loss"} <= set(header)
    assert (run / "recall_curve_test.png").stat().st_size > 1000
    assert not list(run.parent.glob(".*tmp*"))


def cfg_run_root(cfg):
    from pathlib import Path

    return Path(cfg.run_dir)


def test_best_checkpoint_is_the_monitored_maximum(finished_run):
    _, _, objects = finished_run
    ckpt = objects["trainer"].checkpoint_callback
    with open(objects["run_dir"] / "csv" / "metrics.csv") as f:
        values = [float(r["val/v2m/R@10"]) for r in csv.DictReader(f) if r["val/v2m/R@10"]]
    assert float(ckpt.best_model_score) == pytest.approx(max(values))


def test_wandb_offline_run_gets_config_seed_commit_and_curve(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = small_quickstart(tmp_path, "logger.wandb.mode=auto", "trainer.max_epochs=1", "seed=7")
    _, objects = train(cfg)
    runs = list((objects["run_dir"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "auto mode without WANDB_API_KEY must be offline"
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    for needle in (b"git_commit", b"quickstart", b"val/v2m/R@10", b"himv200k", b"vmnet"):
        assert needle in record, needle
    images = list((runs[0] / "files" / "media" / "images").rglob("recall_curve*.png"))
    assert any("test" in str(p) for p in images) and any("val" in str(p) for p in images)


def test_each_run_gets_its_own_folder(tmp_path, monkeypatch):
    from lightning_app.run_dir import RUN_DIR_ENV, make_run_dir

    monkeypatch.setenv(RUN_DIR_ENV, "unset")  # restored after the test
    for var in ("LOCAL_RANK", "RANK", "SLURM_PROCID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    first = make_run_dir(tmp_path, "x")
    second = make_run_dir(tmp_path, "x")
    assert first != second and first.parent == second.parent == tmp_path / "x"
    # A DDP worker re-running the command joins the launcher's folder instead.
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert make_run_dir(tmp_path, "x") == second
