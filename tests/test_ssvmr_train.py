"""SSVMR end to end: saliency mixing, teacher/student self-training and back retrieval over
the unpaired pool inside train(), and exact resume with all of them on."""

from __future__ import annotations

import csv
import json

import pytest

from lightning_app.config import load_config
from lightning_app.train import train


def _cfg(tmp_path, runs: str, *extra: str):
    return load_config("ssvmr_synthetic", [
        f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / runs}",
        "data.synthetic.pairs=300", "data.synthetic.val=50", "data.synthetic.test=50",
        "data.synthetic.frames=6", "data.frames=6", "data.synthetic.min_frames=3",
        "data.synthetic.filler=background", "data.synthetic.unpaired_videos=100",
        "data.synthetic.unpaired_music=100", "data.batch_size=50", "data.eval_batch_size=50",
        "model.ssvmr.video_encoder.d_model=32", "model.ssvmr.music_encoder.d_model=32",
        "model.ssvmr.embed_dim=32", "model.ssvmr.mixing.enabled=true",
        "model.ssvmr.mixing.start_epoch=1",
        "model.ssvmr.mixing.window_frac=0.3", "self_training.epochs_per_round=1",
        "self_training.rounds=2", "self_training.student=ema", "self_training.ema_decay=0.5",
        "back_retrieval.source=unpaired", "back_retrieval.start_epoch=1",
        "back_retrieval.every_n_epochs=1", "back_retrieval.similarity_floor=-1.0",
        "optim.warmup_steps=0", "optim.scheduler=constant", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled", *extra,
    ])


def test_saliency_mixing_self_training_and_the_unpaired_pool_in_train(tmp_path):
    metrics, objs = train(_cfg(tmp_path, "runs", "trainer.max_epochs=3"))
    run_dir, dm = objs["run_dir"], objs["datamodule"]
    assert metrics["test/v2m/R@10"] > 0.4  # chance: 10 of ~45 distinct songs, 0.22
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    mixed = [r for r in rows if r.get("train/mix/b_content")]
    assert [int(r["epoch"]) for r in mixed] == [1, 2]  # from start_epoch on, per epoch
    for r in mixed:
        assert 0.0 <= float(r["train/mix/b_content"]) <= 1.0
        assert 0.0 <= float(r["train/mix/a_survives"]) <= 1.0
    assert not any(r.get("train/mix_frac") for r in rows if r["epoch"] == "0")
    # the whole run's rounds, even when the best checkpoint (tested) predates the last one
    rounds = json.loads((run_dir / "self_training.json").read_text())
    assert [int(r["round"]) for r in rounds] == [1, 2]
    assert all(0.0 <= r["flag_precision"] <= 1.0 for r in rounds)
    mined = json.loads((run_dir / "back_retrieval.json").read_text())
    assert [r["epoch"] for r in mined] == [1, 2]
    # with no floor every closed cycle joins, and pool items now reach the training loader
    assert mined[-1]["added"] == mined[-1]["cycle_consistent"] > 0
    assert dm.train_pairs.uses_pool
    pool_videos = set(dm.unpaired_ids("video"))
    seen = set()
    for batch in dm.train_dataloader():
        seen.update(dm.train_video_ids(batch["index"]))  # in-memory batches carry no strings
    assert seen & pool_videos


@pytest.mark.slow
@pytest.mark.parametrize("student", ["ema", "reinit"])
def test_resume_is_exact_with_every_ssvmr_component(tmp_path, student):
    st = f"self_training.student={student}"
    uninterrupted, _ = train(_cfg(tmp_path, "a", "trainer.max_epochs=3", st))
    _, first = train(_cfg(tmp_path, "b", "trainer.max_epochs=1", st))
    resumed, again = train(_cfg(tmp_path, "b", "trainer.max_epochs=3", st,
                                f"resume={first['run_dir']}"))
    assert again["run_dir"] == first["run_dir"]
    for key in ("test/v2m/R@1", "test/v2m/R@10", "test/m2v/MnR", "test/loss"):
        assert resumed[key] == pytest.approx(uninterrupted[key], abs=1e-9), key
