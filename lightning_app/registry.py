"""Config -> objects. A small explicit table per kind; no import paths read from config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from datamodules.base import StoreDataModule
from datamodules.himv200k import HIMV200KDataModule
from lightning_app.config import Config, SynthConfig
from lightning_app.errors import ConfigError
from models.base import RetrievalModule
from models.vmnet import VMNet


def synth_settings(s: SynthConfig) -> dict:
    """SynthConfig -> PlantedSpec keyword arguments (+ `missing` for the writer)."""
    return {
        "pairs": s.pairs, "val": s.val, "test": s.test, "styles": s.styles, "tau": s.tau,
        "noise": s.noise, "seed": s.seed, "music_frames": s.frames, "video_frames": s.frames,
        "span": s.span, "feature_noise": s.feature_noise, "missing": s.missing,
    }


def _himv200k(cfg: Config) -> StoreDataModule:
    d = cfg.data
    return HIMV200KDataModule(
        d.root, d.store or None, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers, val_size=d.val_size, test_size=d.test_size,
        synthetic=synth_settings(d.synthetic) if d.synthetic.enabled else None,
    )


def _vmnet(cfg: Config, dims: dict[str, int]) -> RetrievalModule:
    m = cfg.model.vmnet
    expected = (("music", "music_dim", m.music_dim), ("video", "video_dim", m.video_dim))
    for modality, key, want in expected:
        if dims.get(modality) != want:
            raise ConfigError(
                f"config: model.vmnet.{key}={want} but the {cfg.data.dataset} store has "
                f"{modality} dimension {dims.get(modality)}"
            )
    return VMNet(dataclasses.asdict(m), dataclasses.asdict(cfg.loss), dataclasses.asdict(cfg.optim))


DATAMODULES: dict[str, Callable[[Config], StoreDataModule]] = {"himv200k": _himv200k}
MODELS: dict[str, Callable[[Config, dict[str, int]], RetrievalModule]] = {"vmnet": _vmnet}


def build_datamodule(cfg: Config) -> StoreDataModule:
    return DATAMODULES[cfg.data.dataset](cfg)


def build_model(cfg: Config, dims: dict[str, int]) -> RetrievalModule:
    return MODELS[cfg.model.name](cfg, dims)
