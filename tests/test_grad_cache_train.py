"""trainer.accumulate_grad_batches through train(): the same steps as the whole batch, and the
one-line refusal for a model whose batch statistics cannot be split."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from lightning_app.cli import main
from lightning_app.config import load_config
from lightning_app.errors import ConfigError
from lightning_app.train import train


@pytest.fixture(scope="module")
def y8m_root(tmp_path_factory):
    return tmp_path_factory.mktemp("accumulate") / "data"


def iiclvm_run(root, tmp_path, n: int):
    cfg = load_config("iiclvm_synthetic", [
        f"data.root={root}", f"run_dir={tmp_path / f'runs{n}'}",
        "data.synthetic.pairs=300", "data.synthetic.val=50", "data.synthetic.test=50",
        "data.synthetic.frames=4", "data.frames=4", "data.batch_size=50",
        "data.eval_batch_size=50", "model.iiclvm.embed_dim=16",
        "model.iiclvm.video_encoder={kind: transformer, d_model: 16, layers: 1, heads: 2, "
        "dropout: 0.0}",
        "model.iiclvm.music_encoder={kind: transformer, d_model: 16, layers: 1, heads: 2, "
        "dropout: 0.0}",
        "optim.name=sgd", "optim.lr=0.5", "optim.scheduler=cosine", "optim.warmup_steps=1",
        "trainer.gradient_clip_val=0.5", "trainer.max_steps=3", "trainer.max_epochs=1",
        f"trainer.accumulate_grad_batches={n}", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled",
    ])
    torch.manual_seed(0)
    return train(cfg)


@pytest.mark.filterwarnings("ignore:.*could not find the monitored key")  # 3 steps, no val
def test_two_micro_batches_take_the_same_steps_as_the_whole_batch(y8m_root, tmp_path):
    whole_metrics, whole = iiclvm_run(y8m_root, tmp_path, 1)
    metrics, split = iiclvm_run(y8m_root, tmp_path, 2)
    assert not split["model"].automatic_optimization and split["trainer"].global_step == 3
    a = torch.load(whole["run_dir"] / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(split["run_dir"] / "checkpoints" / "last.ckpt", weights_only=True)
    for name, want in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], want, rtol=0, atol=2e-6, msg=name)
    # Clipping, the cosine schedule with warmup and the logged loss behave the same too.
    with open(split["run_dir"] / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    with open(whole["run_dir"] / "csv" / "metrics.csv") as f:
        want_rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(rows) == len(want_rows) == 3
    for r, w in zip(rows, want_rows):
        assert float(r["train/loss"]) == pytest.approx(float(w["train/loss"]), rel=1e-5)
    assert len({r["train/loss"] for r in rows}) == 3  # the steps did move the weights
    assert math.isfinite(metrics["test/v2m/R@10"]) and metrics["test/gallery_size"] == 50
    assert metrics["test/v2m/R@10"] == pytest.approx(whole_metrics["test/v2m/R@10"])


def test_vmnet_batchnorm_refuses_accumulation_in_one_line(tmp_path, capsys):
    args = [f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'runs'}",
            "data.synthetic.pairs=300", "data.synthetic.val=50", "data.synthetic.test=50",
            "data.batch_size=100", "model.vmnet.music_hidden=[16]",
            "model.vmnet.video_hidden=[16]", "trainer.accumulate_grad_batches=4",
            "logger.wandb.mode=disabled"]
    code = main(["train", "quickstart", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert ("trainer.accumulate_grad_batches=4: VM-NET's BatchNorm normalises each micro-batch "
            "with its own statistics, so accumulation would not reproduce the batch-100 "
            "gradient; lower data.batch_size or use more devices") in err
    assert not (tmp_path / "runs").exists()


def test_more_micro_batches_than_rows_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'trainer.accumulate_grad_batches' must be in "
                                          r"\[1, data.batch_size = 4\]"):
        load_config("iiclvm_synthetic", ["data.batch_size=4", "trainer.accumulate_grad_batches=5"])
