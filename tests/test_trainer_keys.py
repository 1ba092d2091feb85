"""Lightning's debugging and training keys (trainer.*, early_stopping.*): each has its effect.

A tiny VM-NET (64-unit branches) on 300 planted HIMV-200K pairs: 200 train (4 batches of 50),
50 val and 50 test (evaluated in batches of 20), generated once for the module.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from lightning_app.callbacks import RecallAtK
from lightning_app.cli import main
from lightning_app.config import load_config
from lightning_app.train import train

TRAIN_BATCH, EVAL_BATCH = 50, 20


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("keys") / "data"


def overrides(data_root, tmp_path, *extra: str) -> list[str]:
    return [
        f"data.root={data_root}", f"run_dir={tmp_path / 'runs'}",
        "data.synthetic.pairs=300", "data.synthetic.val=50", "data.synthetic.test=50",
        f"data.batch_size={TRAIN_BATCH}", f"data.eval_batch_size={EVAL_BATCH}",
        "model.vmnet.music_hidden=[64]", "model.vmnet.video_hidden=[64]",
        "model.vmnet.embed_dim=32", "loss.structure_k=20", "loss.num_negatives=20",
        "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        "logger.wandb.mode=disabled", *extra,
    ]


def run(data_root, tmp_path, *extra: str):
    torch.manual_seed(0)
    return train(load_config("quickstart", overrides(data_root, tmp_path, *extra)))


def csv_rows(run_dir, column: str) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get(column)]


@pytest.mark.filterwarnings("ignore:.*could not find the monitored key")  # no validation
def test_max_steps_stops_at_that_optimizer_step(data_root, tmp_path):
    _, objects = run(data_root, tmp_path, "trainer.max_steps=3", "trainer.max_epochs=5")
    assert objects["trainer"].global_step == 3


def test_limit_val_and_test_batches_shrink_the_galleries_and_the_profiler_reports(
        data_root, tmp_path):
    metrics, objects = run(data_root, tmp_path, "trainer.limit_val_batches=1",
                           "trainer.limit_test_batches=2", "trainer.max_epochs=1",
                           "trainer.profiler=simple")
    run_dir = objects["run_dir"]
    galleries = {float(r["val/gallery_size"]) for r in csv_rows(run_dir, "val/gallery_size")}
    assert galleries == {EVAL_BATCH}  # one evaluation batch (the split has 50 pairs)
    assert metrics["test/gallery_size"] == 2 * EVAL_BATCH
    report = (run_dir / "profiler" / "fit-profile.txt").read_text()
    assert "FIT Profiler Report" in report and "run_training_batch" in report
    assert "TEST Profiler Report" in (run_dir / "profiler" / "test-profile.txt").read_text()


def test_fast_dev_run_runs_one_batch_and_still_writes_metrics(data_root, tmp_path):
    metrics, objects = run(data_root, tmp_path, "trainer.fast_dev_run=true")
    run_dir = objects["run_dir"]
    assert objects["trainer"].global_step == 1
    assert metrics["test/gallery_size"] == EVAL_BATCH  # one test batch, current weights
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["best_checkpoint"] is None and saved["test/v2m/R@10"] == metrics["test/v2m/R@10"]
    assert not (run_dir / "csv").exists()  # Lightning turns logging off
    assert not list(run_dir.glob("checkpoints/*.ckpt"))  # ... and checkpointing


def test_overfit_batches_validates_on_the_batches_trained_on(data_root, tmp_path, monkeypatch):
    seen: dict[str, list[list[str]]] = {"train": [], "val": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        seen["train"].append(list(batch["video_key"]))

    original = RecallAtK.on_validation_batch_end

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx=0):
        if not trainer.sanity_checking:
            seen["val"].append(list(batch["video_key"]))
        original(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx)

    monkeypatch.setattr(RecallAtK, "on_train_batch_start", on_train_batch_start, raising=False)
    monkeypatch.setattr(RecallAtK, "on_validation_batch_end", on_validation_batch_end)
    _, objects = run(data_root, tmp_path, "trainer.overfit_batches=2")
    first_two = seen["train"][:2]
    assert len(first_two[0]) == TRAIN_BATCH and first_two[0] != first_two[1]
    assert seen["train"] == first_two * 2  # the same 2 batches, unshuffled, in both epochs
    assert seen["val"] == first_two * 2  # ... and validation scores exactly those
    galleries = {float(r["val/gallery_size"]) for r in csv_rows(objects["run_dir"],
                                                                "val/gallery_size")}
    assert galleries == {2 * TRAIN_BATCH}


def test_val_check_interval_validates_twice_per_epoch(data_root, tmp_path):
    metrics, objects = run(data_root, tmp_path, "trainer.val_check_interval=0.5",
                           "trainer.max_epochs=1")
    rows = csv_rows(objects["run_dir"], "val/v2m/R@10")
    assert [int(r["step"]) for r in rows] == [1, 3]  # after batches 2 and 4 of 4
    best = objects["trainer"].checkpoint_callback
    assert float(best.best_model_score) == pytest.approx(max(float(r["val/v2m/R@10"])
                                                             for r in rows))
    assert best.best_model_path and metrics["test/gallery_size"] == 50


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["advanced", "pytorch"])
def test_advanced_and_pytorch_profilers_write_into_the_run_folder(data_root, tmp_path, kind):
    _, objects = run(data_root, tmp_path, f"trainer.profiler={kind}", "trainer.max_epochs=1",
                     "trainer.limit_train_batches=2")
    written = [p for p in (objects["run_dir"] / "profiler").iterdir() if p.stat().st_size]
    assert any(p.name.startswith("fit-profile") for p in written), written


@pytest.mark.slow  # inductor compiles on the CPU for about a minute
def test_compile_trains_with_compiled_encoders(data_root, tmp_path):
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    metrics, objects = run(data_root, tmp_path, "trainer.compile=true", "trainer.max_epochs=1",
                           "trainer.limit_train_batches=2")
    assert counters["stats"]["unique_graphs"] >= 2  # both branches really were compiled
    for key in ("test/loss", "test/v2m/R@10", "test/m2v/MnR"):
        assert math.isfinite(metrics[key]), key
    net = objects["model"].music_net.eval()  # no dropout, BatchNorm's running statistics
    x = torch.randn(3, net[0].in_features)
    with torch.no_grad():
        torch.testing.assert_close(net(x), type(net).forward(net, x))  # compiled == eager
    torch._dynamo.reset()


def test_early_stopping_stops_when_the_monitor_cannot_improve(data_root, tmp_path):
    # An improvement must exceed min_delta = 1000; a recall never can, so after the first
    # validation (the baseline) one more without improvement ends the run.
    _, objects = run(data_root, tmp_path, "trainer.max_epochs=6",
                     "trainer.limit_train_batches=1", "early_stopping.monitor=val/v2m/R@10",
                     "early_stopping.patience=1", "early_stopping.min_delta=1000")
    trainer = objects["trainer"]
    assert trainer.current_epoch == 2 and trainer.global_step == 2
    assert len(csv_rows(objects["run_dir"], "val/v2m/R@10")) == 2


def test_unknown_early_stopping_monitor_is_one_line_before_any_work(data_root, tmp_path,
                                                                     capsys):
    args = overrides(tmp_path / "never_written", tmp_path, "early_stopping.monitor=val/v2m/R@7")
    code = main(["train", "quickstart", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'early_stopping.monitor' has unknown metric 'val/v2m/R@7'" in err
    assert "val/{v2m,m2v}/{R@1,R@5,R@10,R@50,R@100,MdR,MnR}" in err and "val/loss" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "never_written").exists()


def test_unknown_checkpoint_monitor_is_one_line_before_any_work(data_root, tmp_path, capsys):
    args = overrides(tmp_path / "never_written", tmp_path, "checkpoint.monitor=val/v2m/R@11")
    code = main(["train", "quickstart", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'checkpoint.monitor' has unknown metric 'val/v2m/R@11'" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "never_written").exists()
