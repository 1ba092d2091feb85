"""Where CMGSD's dynamic margins read their single-modal distances (`loss.cmgsd.dynamic_source`).

* ``joint``: the joint embeddings being trained (detached). The margin then follows the very
  space the ranking loss shapes: a negative the model has already pushed away gets a larger
  margin and is pushed further.
* ``heads``: small single-modal heads on each branch's pre-projection features (ReLU,
  dropout, linear to `head_dim`, L2 normalisation), as in the third-party port. Our choice
  for their training signal (reconstruction): the heads form a second, light video-music space
  trained with the fixed-margin top-Q ranking loss on DETACHED pre-projection features, so
  they learn from the same pairs but never change the backbone; the backbone only feels them
  through the margins.
* ``ema``: a momentum copy of both branches (weights p_ema <- d * p_ema + (1 - d) * p after
  every training step, buffers copied), run in evaluation mode: a slowly moving teacher.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DYNAMIC_SOURCES", "EMABranches", "MarginHeads", "ema_update_", "pre_projection"]

DYNAMIC_SOURCES = ("joint", "heads", "ema")


def pre_projection(branch: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A VM-NET branch's features before its last linear layer and BatchNorm."""
    return branch[:-2](x)


def pre_projection_dim(branch: nn.Sequential, in_dim: int) -> int:
    """Width of :func:`pre_projection`'s output (the input width for a branch without hidden)."""
    linears = [m for m in branch[:-2] if isinstance(m, nn.Linear)]
    return linears[-1].out_features if linears else in_dim


class MarginHeads(nn.Module):
    """One head per modality: ReLU, dropout, linear to `dim`; outputs L2-normalised."""

    def __init__(self, video_in: int, music_in: int, dim: int = 256, dropout: float = 0.1):
        super().__init__()
        self.video = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(video_in, dim))
        self.music = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(music_in, dim))

    def forward(self, video_pre: torch.Tensor, music_pre: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return (F.normalize(self.video(video_pre), dim=-1),
                F.normalize(self.music(music_pre), dim=-1))


@torch.no_grad()
def ema_update_(target: Iterable[torch.Tensor], source: Iterable[torch.Tensor],
                decay: float) -> None:
    """In place: t <- decay * t + (1 - decay) * s for every (t, s) pair."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    for t, s in zip(target, source, strict=True):
        t.mul_(decay).add_(s.detach().to(t.dtype), alpha=1.0 - decay)


class EMABranches(nn.Module):
    """Momentum copies of the video and music branches (no gradient, evaluation mode)."""

    def __init__(self, video_net: nn.Module, music_net: nn.Module, decay: float):
        super().__init__()
        self.decay = float(decay)
        self.video = copy.deepcopy(video_net)
        self.music = copy.deepcopy(music_net)
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, video_net: nn.Module, music_net: nn.Module) -> None:
        for mine, live in ((self.video, video_net), (self.music, music_net)):
            ema_update_(mine.parameters(), live.parameters(), self.decay)
            for b_mine, b_live in zip(mine.buffers(), live.buffers(), strict=True):
                b_mine.copy_(b_live)

    @torch.no_grad()
    def embed(self, video_in: torch.Tensor, music_in: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised embeddings of the copies in evaluation mode (modes restored)."""
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        try:
            return (F.normalize(self.video(video_in), dim=-1),
                    F.normalize(self.music(music_in), dim=-1))
        finally:
            for m, mode in modes:
                m.training = mode
