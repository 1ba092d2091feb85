"""Every model trains under bf16-mixed; losses and retrieval metrics stay float32."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_app.config import load_config
from lightning_app.train import train

SMALL = {
    "quickstart": ["data.synthetic.pairs=600", "data.synthetic.val=100",
                   "data.synthetic.test=100", "data.batch_size=100", "loss.structure_k=50"],
    "iiclvm_synthetic": ["data.synthetic.pairs=500", "data.synthetic.val=100",
                         "data.synthetic.test=100", "data.synthetic.frames=8",
                         "data.frames=8", "data.batch_size=100", "optim.warmup_steps=0"],
    "ssvmr_synthetic": ["data.synthetic.pairs=500", "data.synthetic.val=100",
                        "data.synthetic.test=100", "data.synthetic.frames=8", "data.frames=8",
                        "data.batch_size=100", "optim.warmup_steps=0",
                        "self_training.epochs_per_round=1", "self_training.rounds=1",
                        "back_retrieval.start_epoch=0", "back_retrieval.every_n_epochs=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_bf16_mixed_training(name, tmp_path):
    cfg = load_config(name, [
        f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'runs'}",
        "data.eval_batch_size=100", "trainer.max_epochs=1", "trainer.precision=bf16-mixed",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "logger.wandb.mode=disabled", *SMALL[name],
    ])
    metrics, objects = train(cfg)
    assert objects["trainer"].precision == "bf16-mixed"
    assert math.isfinite(metrics["test/loss"])
    for key in ("test/v2m/R@1", "test/m2v/R@10", "test/v2m/MdR"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key])
    # Parameters stay float32 (autocast only lowers the matmuls).
    assert all(p.dtype == torch.float32 for p in objects["model"].parameters())
