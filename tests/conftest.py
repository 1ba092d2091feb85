"""Shared pytest fixtures.

Data-layer fixtures (small planted synthetic HIMV-200K folders) are prefixed `himv_` /
`make_himv_`. Everything is written under pytest's tmp_path, never into data/ or runs/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from datamodules.synthetic.himv200k import write_himv200k
from datamodules.synthetic.planted import PlantedSpec

# Small enough to write and pack in well under a second.
HIMV_PAIRS, HIMV_VAL, HIMV_TEST = 300, 50, 50


@pytest.fixture
def himv_spec() -> PlantedSpec:
    return PlantedSpec(pairs=HIMV_PAIRS, val=HIMV_VAL, test=HIMV_TEST, seed=0)


@pytest.fixture
def make_himv_root(tmp_path: Path, himv_spec: PlantedSpec) -> Callable[..., Path]:
    """make_himv_root(name="himv", spec=None, missing=0.0, music_format="npy") -> folder."""

    def make(name: str = "himv", spec: PlantedSpec | None = None, **kwargs) -> Path:
        return write_himv200k(spec or himv_spec, tmp_path / name, progress=False, **kwargs)

    return make


@pytest.fixture
def himv_root(make_himv_root: Callable[..., Path]) -> Path:
    """A small synthetic HIMV-200K folder (300 pairs: 200 train, 50 val, 50 test)."""
    return make_himv_root()


@pytest.fixture(scope="session")
def resnet50_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised torchvision ResNet-50 state dict (tests never download)."""
    import torch
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet50_random.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def pca_1024(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2048 -> 1024 PCA whitening fitted on random frames (as if published with a dataset)."""
    import numpy as np

    from datamodules.extract.pca import PCAWhitening

    x = np.random.default_rng(0).standard_normal((1100, 2048)).astype(np.float32)
    path = tmp_path_factory.mktemp("pca") / "pca_1024.npz"
    PCAWhitening.fit(x, dim=1024).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small trained quickstart run shared by the evaluation tests (test_eval,
    test_per_query): 600 planted pairs (100 val, 100 test), 2 epochs, top-7 lists, W&B
    offline. {"cfg", "metrics", "run" (folder), "datasets" (split -> PairDataset)}."""
    import os

    import torch

    from lightning_app.config import load_config
    from lightning_app.train import train

    tmp = tmp_path_factory.mktemp("tiny_run")
    cfg = load_config("quickstart", [
        f"data.root={tmp / 'data'}", f"run_dir={tmp / 'runs'}", "data.synthetic.pairs=600",
        "data.synthetic.val=100", "data.synthetic.test=100", "data.batch_size=100",
        "data.eval_batch_size=100", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
        "logger.wandb.mode=offline", "loss.structure_k=20", "loss.num_negatives=20",
        "eval.topk=7",
    ])
    saved = {k: os.environ.pop(k, None) for k in ("WANDB_API_KEY", "WANDB_MODE")}
    torch.manual_seed(0)
    try:
        metrics, objects = train(cfg)
    finally:
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    return {"cfg": cfg, "metrics": metrics, "run": objects["run_dir"],
            "datasets": objects["datamodule"].datasets}
