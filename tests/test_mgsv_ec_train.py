"""vmnet_mgsv_ec_synthetic end to end on a small planted MGSV-EC: it learns, and the official
metric set of the run's per-query ranks agrees with its metrics.json, whose official keys
(`test/v2m/official/...`) equal `python -m datamodules.mgsv_ec_eval`'s numbers exactly, for the
run and for `vmr eval` of its checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules.mgsv_ec_eval import from_per_query
from lightning_app.config import load_config
from lightning_app.evaluate import evaluate
from lightning_app.train import train


@pytest.mark.slow
def test_vmnet_on_synthetic_mgsv_ec_learns(tmp_path):
    cfg = load_config("vmnet_mgsv_ec_synthetic", [
        f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'runs'}",
        "data.synthetic.pairs=800", "data.synthetic.val=100", "data.synthetic.test=100",
        "data.batch_size=100", "data.eval_batch_size=100", "trainer.max_epochs=8",
        "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled",
    ])
    torch.manual_seed(0)
    metrics, _ = train(cfg)
    assert metrics["test/gallery_size"] == 100  # one video per test track: 100 tracks
    assert metrics["test/v2m/R@10"] >= 4 * 0.10, metrics  # chance R@10 = 10 %
    run = next((tmp_path / "runs" / "vmnet_mgsv_ec_synthetic").iterdir())
    official = from_per_query(run / "per_query_v2m.parquet")
    assert official["R10"] == pytest.approx(100 * metrics["test/v2m/R@10"])
    assert official["R1"] == pytest.approx(100 * metrics["test/v2m/R@1"])
    assert official["MeanR"] == pytest.approx(metrics["test/v2m/MnR"])
    written = json.loads((run / "metrics.json").read_text())
    assert {k: written[f"test/v2m/official/{k}"] for k in official} == official
    _, out = evaluate(written["best_checkpoint"], ["eval.split=val"], tmp_path / "eval")
    evaluated = json.loads((out / "metrics.json").read_text())
    assert {k: evaluated[f"val/v2m/official/{k}"] for k in official} \
        == from_per_query(out / "per_query_v2m.parquet")
