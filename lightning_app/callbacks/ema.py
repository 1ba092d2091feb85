"""Exponential moving average of the weights (`ema.*`): evaluation and checkpoints use it.

Built on Lightning's `EMAWeightAveraging`, which keeps an `AveragedModel` updated after every
optimizer step (avg <- decay * avg + (1 - decay) * weights, starting as a copy of the weights
at the first update), swaps it in for validation, saves it as the checkpoint's `state_dict`
(the training weights go to `current_model_state`, the average's step count to
`averaging_state`, so a resumed run continues the same average) and copies it into the model
when training ends. Two of its behaviours do not fit how a run uses checkpoints, and are
changed here:

- Before averaging starts (`ema.start_step` optimizer steps), Lightning's average is the
  copy made at the start of fitting, so validation, checkpoints and the final model would be
  the untrained weights. Here the average follows the training weights until it starts.
- Lightning reloads the training weights (`current_model_state`) whenever the callback sees
  a checkpoint, also in `trainer.test(ckpt_path=best)`, which would test the raw weights.
  Here only fitting (resume) restores them; testing evaluates the saved average.

Buffers are averaged too (`use_buffers=True`, as timm's ModelEma): BatchNorm's running mean
and variance in the averaged model are the same moving average of the running statistics,
so they describe activations of weights close to the averaged ones rather than the last
step's. Integer buffers (BatchNorm's `num_batches_tracked`) keep their first value; they
matter only for BatchNorm without momentum, which no model here uses.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.trainer.states import TrainerFn


class EMA(EMAWeightAveraging):
    def __init__(self, decay: float, start_step: int = 0):
        super().__init__(decay=decay, update_starting_at_step=start_step, use_buffers=True)
        self.decay, self.start_step = decay, start_step

    def started(self) -> bool:
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    @torch.no_grad()
    def _follow_until_started(self, pl_module: pl.LightningModule) -> None:
        if self._average_model is None or self.started():
            return
        average = itertools.chain(self._average_model.module.parameters(),
                                  self._average_model.module.buffers())
        current = itertools.chain(pl_module.parameters(), pl_module.buffers())
        for avg, cur in zip(average, current):
            avg.copy_(cur)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule
                                  ) -> None:
        self._follow_until_started(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._follow_until_started(pl_module)
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._follow_until_started(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return  # the model already holds the checkpoint's averaged `state_dict`
        super().on_load_checkpoint(trainer, pl_module, checkpoint)
