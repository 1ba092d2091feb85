"""The contract every retrieval model fulfils, and the steps they share.

A model embeds each side of a batch into one L2-normalised space (`encode_video`,
`encode_music`) and defines its training loss (`loss`). Validation and test steps return
the embeddings with the batch's `index` and id keys; the Recall@K callback gathers them
over the whole split (and over processes) and computes exact metrics.
"""

from __future__ import annotations

import abc
import math
from typing import Any

import pytorch_lightning as pl
import torch

OPTIMIZERS = ("adam", "adamw", "sgd")


class RetrievalModule(pl.LightningModule, abc.ABC):
    def __init__(self, optim: dict[str, Any]):
        super().__init__()
        self.optim = dict(optim)
        # Set by train(): the resolved config and the dataset's extractor record. Saved in
        # every checkpoint, so `vmr retrieve` can rebuild the model and extract new media
        # exactly as the training data was extracted.
        self.run_record: dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_record is not None:
            checkpoint["vmr"] = self.run_record

    @abc.abstractmethod
    def encode_video(self, batch: dict[str, Any]) -> torch.Tensor:
        """[B, E] L2-normalised video embeddings."""

    @abc.abstractmethod
    def encode_music(self, batch: dict[str, Any]) -> torch.Tensor:
        """[B, E] L2-normalised music embeddings."""

    @abc.abstractmethod
    def loss(self, batch: dict[str, Any], video: torch.Tensor, music: torch.Tensor) -> dict:
        """{'loss': total, ...named parts} for one batch of pairs."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        parts = self.loss(batch, self.encode_video(batch), self.encode_music(batch))
        bs = batch["video"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "loss"}, batch_size=bs)
        self.log("train/loss", parts["loss"], batch_size=bs, prog_bar=True)
        return parts["loss"]

    def _eval_step(self, batch: dict[str, Any], stage: str) -> dict[str, torch.Tensor]:
        video, music = self.encode_video(batch), self.encode_music(batch)
        if video.shape[0] > 1:
            parts = self.loss(batch, video, music)
            self.log(f"{stage}/loss", parts["loss"], batch_size=video.shape[0], sync_dist=True)
        return {
            "video": video.float(),
            "music": music.float(),
            "index": batch["index"],
            "video_key": batch["video_key"],
            "music_key": batch["music_key"],
        }

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def configure_optimizers(self) -> Any:
        o = self.optim
        params = [p for p in self.parameters() if p.requires_grad]
        if o["name"] == "adam":
            opt = torch.optim.Adam(params, lr=o["lr"], weight_decay=o["weight_decay"])
        elif o["name"] == "adamw":
            opt = torch.optim.AdamW(params, lr=o["lr"], weight_decay=o["weight_decay"])
        elif o["name"] == "sgd":
            opt = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"],
                                  weight_decay=o["weight_decay"])
        else:
            raise ValueError(f"unknown optimizer {o['name']!r} (choose from: {OPTIMIZERS})")
        if o["scheduler"] == "constant" and o["warmup_steps"] == 0:
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = o["warmup_steps"]
        cosine = o["scheduler"] == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
