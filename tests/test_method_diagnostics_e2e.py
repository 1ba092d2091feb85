"""The measuring-only callbacks in a real run: the train/validation gap lands in metrics.json,
and CMGSD's margins per kind of negative (from the synthetic truth) land in the CSV log."""

from __future__ import annotations

import csv

import pytest
import torch

from lightning_app.config import load_config
from lightning_app.train import train


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diag")
    cfg = load_config("vmnet_cmgsd_synthetic", [
        f"data.root={tmp / 'data'}", f"run_dir={tmp / 'runs'}",
        "data.synthetic.pairs=1000", "data.synthetic.val=200", "data.synthetic.test=200",
        "data.synthetic.shared_songs=0.3", "data.batch_size=200", "data.eval_batch_size=200",
        "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "loss.cmgsd.ramp_epochs=0",
        "loss.structure_k=20", "loss.num_negatives=20", "eval.gap_pairs=100",
        "model.vmnet.music_hidden=[64]", "model.vmnet.video_hidden=[64]",
        "model.vmnet.embed_dim=32", "trainer.enable_progress_bar=false",
        "logger.wandb.mode=disabled",
    ])
    torch.manual_seed(0)
    metrics, objects = train(cfg)
    return metrics, objects["run_dir"]


def test_gap_is_train_minus_validation_recall_on_the_tested_checkpoint(adaptive_run):
    metrics, _ = adaptive_run
    for d in ("v2m", "m2v"):
        train_r, val_r = metrics[f"test/gap/train/{d}/R@10"], metrics[f"test/gap/val/{d}/R@10"]
        assert 0.0 <= train_r <= 1.0 and 0.0 <= val_r <= 1.0
        assert metrics[f"test/gap/{d}/R@10"] == pytest.approx(train_r - val_r, abs=1e-6)


def test_margins_per_kind_of_negative_are_logged(adaptive_run):
    _, run_dir = adaptive_run
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    last = [r for r in rows if r.get("margin/fixed/other_style/mean")][-1]
    assert float(last["margin/fixed/other_style/mean"]) == pytest.approx(0.1)
    # Equivalent negatives (shared songs) sit closer than the batch average in the joint
    # space, so the adaptive margins give them less than other-style negatives get.
    for term in ("video", "music"):
        equivalent = float(last[f"margin/{term}/equivalent/mean"])
        other = float(last[f"margin/{term}/other_style/mean"])
        assert 0.0 <= equivalent < other <= 0.5
        assert 0.0 <= float(last[f"margin/{term}/same_style/active"]) <= 1.0
