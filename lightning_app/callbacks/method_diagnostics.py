"""Measuring-only callbacks that some methods' studies need (nothing here changes training)."""

from __future__ import annotations

from typing import Any

from lightning_app.callbacks.margin_stats import MarginStats
from lightning_app.callbacks.train_gap import TrainValGap


def method_callbacks(cfg: Any) -> list:
    """The train/validation gap when `eval.gap_pairs` > 0; margin statistics for VM-NET
    (active only when the dataset has a synthetic truth file)."""
    callbacks: list = []
    if cfg.eval.gap_pairs:
        callbacks.append(TrainValGap(cfg.eval.gap_pairs, cfg.data.eval_batch_size))
    if cfg.model.name == "vmnet":
        callbacks.append(MarginStats(every_n_steps=cfg.trainer.log_every_n_steps))
    return callbacks
