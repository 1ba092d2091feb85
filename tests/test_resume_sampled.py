"""Resume is exact also when frames are sampled (MVD + SSVMR: GS sampling and span mixing).

The first leg stops at max_epochs=1 and the resume extends to 3, standing in for a kill
(tests/test_resume.py kills a real process); a constant LR keeps the schedule identical,
since a cosine schedule's horizon follows max_epochs.
"""

from __future__ import annotations

import pytest

from lightning_app.config import load_config
from lightning_app.train import train


def _cfg(tmp_path, runs: str, *extra: str):
    return load_config("ssvmr_synthetic_no_back_retrieval", [
        f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / runs}",
        "data.synthetic.pairs=500", "data.synthetic.val=100", "data.synthetic.test=100",
        "data.synthetic.frames=12", "data.frames=6", "data.batch_size=100",
        "data.eval_batch_size=100", "optim.warmup_steps=0", "optim.scheduler=constant",
        "self_training.epochs_per_round=1", "model.ssvmr.mixing.enabled=true",
        "self_training.rounds=2", "trainer.enable_progress_bar=false",
        "logger.wandb.mode=disabled", *extra,
    ])


@pytest.mark.slow
def test_sampled_frames_and_mixing_resume_exactly(tmp_path):
    uninterrupted, _ = train(_cfg(tmp_path, "a", "trainer.max_epochs=3"))
    _, first = train(_cfg(tmp_path, "b", "trainer.max_epochs=1"))
    resumed, again = train(_cfg(tmp_path, "b", "trainer.max_epochs=3",
                                f"resume={first['run_dir']}"))
    assert again["run_dir"] == first["run_dir"]
    for key in ("test/v2m/R@1", "test/v2m/R@10", "test/m2v/MnR", "test/loss"):
        assert resumed[key] == pytest.approx(uninterrupted[key], abs=1e-9), key
