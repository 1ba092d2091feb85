"""The contract every retrieval model fulfils, and the steps they share.

A model embeds each side of a batch into one L2-normalised space (`encode_video`,
`encode_music`) and defines its training loss (`loss`). Validation and test steps return
the embeddings with the batch's `index` and id keys; the Recall@K callback gathers them
over the whole split (and over processes) and computes exact metrics.

Training goes through `training_loss(batch, embed)`: the loss of the whole batch, with each
per-row encoder call made through `embed` so that `trainer.accumulate_grad_batches` can split
the batch into micro-batches and still produce the whole batch's gradient (models.grad_cache).
"""

from __future__ import annotations

import abc
import math
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch

from models.grad_cache import DirectEmbedder, Embedder, EmbeddingCache, average_gradients

OPTIMIZERS = ("adam", "adamw", "sgd")


class RetrievalModule(pl.LightningModule, abc.ABC):
    def __init__(self, optim: dict[str, Any]):
        super().__init__()
        self.optim = dict(optim)
        # Set by train(): the resolved config and the dataset's extractor record. Saved in
        # every checkpoint, so `vmr retrieve` can rebuild the model and extract new media
        # exactly as the training data was extracted.
        self.run_record: dict[str, Any] | None = None
        # Set by train() (`set_micro_batches`): the embedding-cache accumulation.
        self.micro_batches = 1
        self.manual_clip_val: float | None = None

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

    def embed_pair(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"video": self.encode_video(batch), "music": self.encode_music(batch)}

    def training_loss(self, batch: dict[str, Any], embed: Embedder) -> dict:
        """The loss parts of one training batch. Every per-row encoder call goes through
        `embed(fn, batch)` (models.grad_cache), so the same code gives the whole batch's
        gradient with or without micro-batch accumulation."""
        out = embed(self.embed_pair, batch)
        return self.loss(batch, out["video"], out["music"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:
            parts = self.training_loss(batch, DirectEmbedder())
        else:
            parts = self._accumulated_step(batch)
        self.log_train(parts, batch["video"].shape[0])
        return parts["loss"]

    def log_train(self, parts: dict[str, torch.Tensor], batch_size: int) -> None:
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "loss"},
                      batch_size=batch_size)
        self.log("train/loss", parts["loss"], batch_size=batch_size, prog_bar=True)

    def compile_submodules(self) -> None:
        """torch.compile the `forward` of every top-level submodule (encoders, projections).

        In place, so parameter names and checkpoints do not change (`torch.compile(module)`
        would prefix them with `_orig_mod.`; `nn.Module.compile()` traces nothing in torch
        2.11, its `_call_impl` being on dynamo's skip list). The compiled function is bound
        per instance, so a deep copy (an averaged or teacher model) runs its own weights.
        Code that bypasses `forward` (SSVMR's per-frame saliency path) stays eager.
        """
        for module in self.children():
            module.forward = types.MethodType(torch.compile(type(module).forward), module)

    # ----- accumulation over micro-batches (manual optimization) ----------------------------

    def set_micro_batches(self, n: int, gradient_clip_val: float | None = None) -> None:
        """Split every training batch into `n` micro-batches with the whole batch's gradient
        (models.grad_cache). n > 1 takes the optimizer step here (Lightning's manual
        optimization), so gradient clipping moves from the Trainer to the model."""
        if n < 1:
            raise ValueError(f"micro-batches must be >= 1, got {n}")
        self.micro_batches = int(n)
        self.manual_clip_val = gradient_clip_val
        self.automatic_optimization = self.micro_batches == 1

    def _accumulated_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        opt = self.optimizers()
        parts: dict[str, torch.Tensor] = {}

        def closure() -> torch.Tensor:
            opt.zero_grad()
            cache = EmbeddingCache(self.micro_batches)
            with self._ddp_sync_blocked():
                out = self.training_loss(batch, cache)
                cache.backward(out["loss"], self.manual_backward)
            average_gradients(self.parameters())  # once per batch, as DDP would
            parts.update({k: v.detach() for k, v in out.items()})
            return parts["loss"]

        # Through the optimizer, so mixed precision unscales before `on_before_optimizer_step`.
        opt.step(closure=closure)
        scheduler = self.lr_schedulers()
        if scheduler is not None:  # every schedule here steps per optimizer step
            scheduler.step()
        return parts

    @contextmanager
    def _ddp_sync_blocked(self) -> Iterator[None]:
        """DDP would all-reduce at every backward of the cache; gradients are averaged once."""
        from torch.nn.parallel import DistributedDataParallel

        wrapper = self.trainer.strategy.model
        if isinstance(wrapper, DistributedDataParallel):
            with wrapper.no_sync():
                yield
        else:
            yield

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Lightning clips only in automatic optimization; here gradients are unscaled already.
        if not self.automatic_optimization and self.manual_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.manual_clip_val,
                                gradient_clip_algorithm="norm")

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
