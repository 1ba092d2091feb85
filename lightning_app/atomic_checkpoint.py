"""Checkpoint files that are whole or absent, and a full disk as one line.

Lightning's default writer stages a checkpoint in the system temp folder and then copies it
next to its final name; on a full disk that copy stops half-way and leaves a truncated
.ckpt under the final name. AtomicCheckpointIO writes a temporary file in the checkpoint
folder and renames it into place (datamodules.atomic.atomic_file): a failed write leaves
the previous file, if any, and no partial one; ENOSPC / EACCES / EROFS become a StorageError
naming the checkpoint (the run then stops, marked failed: lightning_app.run_status).
"""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from datamodules.atomic import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        # Serialised in memory first (as Lightning does): torch's zip writer turns a failed
        # file write into a RuntimeError without errno; a plain write raises ENOSPC.
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            f.write(buffer.getbuffer())


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that makes the strategy write its files with AtomicCheckpointIO."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Only Lightning's plain local writer is replaced (not a strategy's own sharded one).
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
