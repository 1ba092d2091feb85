"""Per-frame saliency of a video: learned attention pooling, and input-gradient saliency.

Two readings of "which frames matter" for SSVMR's span mixing (docs/methods.md, SSVMR):

- attention: the video side pools its per-frame features with a learned attention (a linear
  score per frame -> softmax over the valid frames -> weighted sum); the attention weights
  are a saliency the model learned through the retrieval loss alone.
- gradient: as in SSMix, the saliency of a frame is the size of the loss gradient with
  respect to that input frame, RMS over the feature dimensions. It costs one extra backward
  pass through the video encoder (no parameter is updated by it).
"""

from __future__ import annotations

import torch
from torch import nn


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the valid positions of each row ([B, T], float32); padded -> exactly 0.

    A row without valid positions gets all zeros (no nan).
    """
    s = scores.float().masked_fill(~mask, torch.finfo(torch.float32).min)
    return torch.softmax(s, dim=-1) * mask.to(torch.float32)


class SaliencyPool(nn.Module):
    """Per-frame saliency: linear score -> masked softmax -> attention-weighted sum."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        nn.init.zeros_(self.score.weight)  # starts as the masked mean
        nn.init.zeros_(self.score.bias)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [B, T, d], mask [B, T] -> (pooled [B, d], attention [B, T] float32)."""
        attn = masked_softmax(self.score(h).squeeze(-1), mask)
        h = h.masked_fill(~mask.unsqueeze(-1), 0.0)  # padded rows never leak (even inf/nan)
        return (attn.to(h.dtype).unsqueeze(-1) * h).sum(1), attn


def gradient_saliency(loss: torch.Tensor, frames: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """[B, T] float32: RMS over feature dims of d loss / d frames; padded frames -> 0.

    `frames` [B, T, D] must be a leaf that requires grad and was used to compute `loss`.
    Uses `torch.autograd.grad`, so no parameter's `.grad` changes, and keeps the graph
    (`retain_graph=True`) so the same forward pass can still be trained on.
    """
    (grad,) = torch.autograd.grad(loss, frames, retain_graph=True)
    return rms_saliency(grad, mask)


def rms_saliency(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] float32: RMS over feature dims of a frame gradient [B, T, D]; padded -> 0."""
    rms = grad.detach().float().pow(2).mean(dim=-1).sqrt()
    return rms * mask.to(rms.dtype)


def normalise_mass(saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's saliency over its valid frames scaled to sum to 1 (uniform when all zero)."""
    s = saliency.detach().float().clamp_min(0.0) * mask
    total = s.sum(dim=1, keepdim=True)
    uniform = mask.float() / mask.sum(dim=1, keepdim=True).clamp_min(1)
    return torch.where(total > 0, s / total.clamp_min(torch.finfo(torch.float32).tiny), uniform)
