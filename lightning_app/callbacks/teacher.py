"""The teacher of teacher/student self-training: an EMA copy of the weights, or the initial
weights a re-initialised student starts again from.

`EMATeacher` keeps an exponential moving average of a module's state (after every training
step: t <- decay * t + (1 - decay) * s for floating-point entries; integer buffers are copied)
as plain tensors, so it lives in checkpoints (weights_only) and a resumed run continues the
same average. `swapped_in` lends the teacher's weights to the module for scoring and puts the
student's back afterwards, so no second model object (and no deep copy of a LightningModule
with its trainer) is needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the module's state."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@contextlib.contextmanager
def swapped_in(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run the block with `state` loaded into `module`; restore the module's own after."""
    own = snapshot(module)
    module.load_state_dict(state)
    try:
        yield
    finally:
        module.load_state_dict(own)


class EMATeacher:
    def __init__(self, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"self_training.ema_decay={decay!r} must be in [0, 1)")
        self.decay = float(decay)
        self.state: dict[str, torch.Tensor] | None = None
        self.updates = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        """One EMA step towards the module's current state (the first call copies it)."""
        current = module.state_dict()
        if self.state is None:
            self.state = snapshot(module)
        else:
            self._follow(current)
            for key, value in current.items():
                mine = self.state[key]
                if mine.is_floating_point():
                    mine.mul_(self.decay).add_(value.detach().to(mine.dtype),
                                              alpha=1.0 - self.decay)
                else:
                    mine.copy_(value)
        self.updates += 1

    def _follow(self, current: dict[str, torch.Tensor]) -> None:
        """Keep the average on the module's device (a restored state arrives on the CPU)."""
        for key, value in current.items():
            if self.state[key].device != value.device:
                self.state[key] = self.state[key].to(value.device)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates,
                "state": None if self.state is None else dict(self.state)}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.updates = int(saved.get("updates", 0))
        state = saved.get("state")
        self.state = None if state is None else {k: v.clone() for k, v in state.items()}
