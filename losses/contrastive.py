"""Symmetric InfoNCE (CLIP-style) that scales over processes (open_clip's "local loss").

Each process scores its *local* rows against the *global* batch gathered from every process:

    logits_v2m = scale * v_local @ m_global.T        [B_local, B_global]
    logits_m2v = scale * m_local @ v_global.T        [B_local, B_global]

The target of local row ``i`` is its global index ``offset_rank + i``, where ``offset_rank`` is
the number of rows held by the lower ranks (local batch sizes are gathered, so ranks may hold
different numbers of rows, e.g. an uneven last batch). The per-row loss is

    l_i = (CE(logits_v2m[i], target_i) + CE(logits_m2v[i], target_i)) / 2

Normalisation and gradient semantics (why DDP reproduces the single-process gradient)
------------------------------------------------------------------------------------
Let ``W`` be the world size, ``N = sum_r B_r`` the global batch and ``w_i`` the per-pair weights
(all 1 without ``weights``). The single-process loss on the concatenated batch is the weighted
mean ``L = sum_i w_i l_i / sum_i w_i`` over all ``N`` rows. Rank ``r`` returns

    L_r = W * sum_{i in r} w_i l_i / sum_{all i} w_i

(the weight sum is all-reduced; without weights it is ``W * sum_{i in r} l_i / N``, which is the
plain local mean ``sum_{i in r} l_i / B_r`` whenever the local batches are equal, exactly as in
open_clip). Hence ``mean_r L_r = L``: the mean of the ranks' losses (what Lightning's
``sync_dist`` logs) is the single-process loss, for even and uneven batches alike.

Gradients: ``gather_with_grad``'s backward all-reduces (SUMS) the gradient of the gathered tensor
over ranks and hands each rank the slice of its own rows. Every rank calls ``backward`` on its
own ``L_r``, so the gradient that reaches rank ``r``'s local embeddings ``x_r`` is
``sum_{r'} dL_{r'}/dx_r = d(sum_r' L_r')/dx_r = W * dL/dx_r``. DDP then AVERAGES parameter
gradients over ranks: ``(1/W) sum_r J_r^T (W dL/dx_r) = sum_r J_r^T dL/dx_r = dL/dtheta``,
the single-process gradient. A parameter used directly in the loss (the shared logit scale)
gets ``dL_r/ds`` on rank ``r`` and DDP's average ``(1/W) sum_r dL_r/ds = dL/ds``.
Put differently: the rank-local gradient of ``x_r`` divided by ``W`` equals rows ``r`` of the
single-process gradient; that is the invariant the tests check.

Requirements: every rank must call the loss (and backward) the same number of times, as for
any collective. With one process (or torch.distributed not initialised) nothing is gathered.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from losses.distributed import (
    gather_known_sizes,
    gather_sizes,
    gather_with_grad,
    world_and_rank,
)
from losses.precision import autocast_off, upcast

__all__ = [
    "LogitScale",
    "gather_with_grad",
    "info_nce_loss",
    "symmetric_info_nce",
]



def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy against a probability target: -sum_j t_ij log softmax(z_i)_j."""
    logp = F.log_softmax(logits, dim=1)
    # 0 * log p must not produce nan where a target entry is exactly zero.
    return -(target * logp).where(target != 0, torch.zeros_like(logp)).sum(dim=1)


def _check_soft(t: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if tuple(t.shape) != shape:
        raise ValueError(
            f"soft_targets must be [B_local, B_global] = {list(shape)}, got {list(t.shape)}"
        )
    return upcast(t.detach())


def symmetric_info_nce(
    video_emb: torch.Tensor,
    music_emb: torch.Tensor,
    logit_scale: float | torch.Tensor,
    weights: torch.Tensor | None = None,
    soft_targets: torch.Tensor | tuple[torch.Tensor | None, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE of the local rows against the global (all-process) batch.

    Args:
        video_emb: [B_local, D] video embeddings (normally L2-normalised); row i pairs with
            ``music_emb[i]``.
        music_emb: [B_local, D] music embeddings.
        logit_scale: the multiplier of the cosine logits, already exponentiated (1 / T), a
            float or a scalar tensor (e.g. ``LogitScale()()``, which then gets a gradient).
        weights: optional [B_local] non-negative per-pair weights; the loss is the weighted
            mean over the global batch (see the module docstring). Treated as constants
            (detached). If all global weights are zero the loss is 0.
        soft_targets: optional soft labels replacing the one-hot targets: a [B_local, B_global]
            tensor whose row i is a distribution over the global columns (rows sum to 1;
            columns in the gathered, rank-ordered order). One tensor is used for both
            directions (video i vs global music j, and music i vs global video j); a pair
            ``(v2m, m2v)`` gives one per direction, ``None`` in the pair meaning one-hot for
            that direction. Treated as constants (detached).

    Returns:
        Scalar loss ``L_r = W * sum_{i local} w_i l_i / sum_{i global} w_i`` with
        ``l_i = (CE_v2m_i + CE_m2v_i) / 2``: the mean over ranks equals the single-process
        loss on the concatenated batch, and with DDP's gradient averaging the gradients equal
        the single-process ones (module docstring). In one process: the (weighted) mean over
        the batch. float32 for half-precision inputs, else the input dtype.
    """
    if video_emb.dim() != 2 or music_emb.dim() != 2 or video_emb.shape != music_emb.shape:
        raise ValueError(
            "symmetric_info_nce expects video and music embeddings of the same shape "
            f"[B, D], got video={tuple(video_emb.shape)} music={tuple(music_emb.shape)}"
        )
    b = video_emb.shape[0]
    if weights is not None and tuple(weights.shape) != (b,):
        raise ValueError(f"weights must be [B_local] = [{b}], got {list(weights.shape)}")
    with autocast_off(video_emb.device):
        return _info_nce_fp32(video_emb, music_emb, logit_scale, weights, soft_targets)


def _info_nce_fp32(video_emb, music_emb, logit_scale, weights, soft_targets) -> torch.Tensor:
    b = video_emb.shape[0]
    world, rank = world_and_rank()
    video = upcast(video_emb)
    music = upcast(music_emb)
    if world > 1:
        sizes = gather_sizes(b, video.device, world)
        video_all = gather_known_sizes(video, tuple(sizes), rank)
        music_all = gather_known_sizes(music, tuple(sizes), rank)
        offset, n_global = sum(sizes[:rank]), sum(sizes)
    else:
        video_all, music_all, offset, n_global = video, music, 0, b
    if n_global < 1:
        raise ValueError("symmetric_info_nce needs at least one pair in the global batch")

    if isinstance(logit_scale, torch.Tensor):
        scale = upcast(logit_scale).to(device=video.device)
    else:
        scale = float(logit_scale)  # a Python float keeps full precision in any dtype
    logits_v2m = scale * (video @ music_all.T)  # [B, N]
    logits_m2v = scale * (music @ video_all.T)  # [B, N]

    targets = torch.arange(offset, offset + b, device=video.device)
    if soft_targets is None:
        soft_v2m = soft_m2v = None
    elif isinstance(soft_targets, torch.Tensor):
        soft_v2m = soft_m2v = soft_targets
    else:
        soft_v2m, soft_m2v = soft_targets
    per_dir = []
    for logits, soft in ((logits_v2m, soft_v2m), (logits_m2v, soft_m2v)):
        if soft is None:
            per_dir.append(F.cross_entropy(logits, targets, reduction="none"))
        else:
            t = _check_soft(soft, (b, n_global)).to(device=logits.device, dtype=logits.dtype)
            per_dir.append(_soft_ce(logits, t))
    per_row = (per_dir[0] + per_dir[1]) / 2  # [B]

    if weights is None:
        return per_row.sum() * (world / n_global)
    w = upcast(weights.detach()).to(device=per_row.device, dtype=per_row.dtype)
    total_w = w.sum()
    if world > 1:
        total_w = total_w.clone()
        dist.all_reduce(total_w, op=dist.ReduceOp.SUM)
    return (w * per_row).sum() * world / total_w.clamp_min(torch.finfo(total_w.dtype).tiny)


#: Alias: the same function under the name used in the method cards.
info_nce_loss = symmetric_info_nce


class LogitScale(nn.Module):
    """The InfoNCE logit multiplier ``1 / T``, stored as its log.

    Learnable (default): an ``nn.Parameter`` ``log_scale`` initialised to ``log(1 / T)``
    (T = 0.07 as in CLIP); ``forward()`` returns ``exp(min(log_scale, log(max_scale)))``, i.e.
    the scale clamped to ``max_scale`` (100). Above the cap the clamp passes no gradient, so
    the training loop should also call :meth:`clamp_` after each optimiser step (as CLIP does)
    to pin the parameter at the cap. Fixed (``learnable=False``): a buffer, returned as
    ``1 / T`` without clamping.
    """

    def __init__(
        self, temperature: float = 0.07, learnable: bool = True, max_scale: float = 100.0
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if max_scale <= 0:
            raise ValueError(f"max_scale must be > 0, got {max_scale}")
        self.learnable = bool(learnable)
        self.log_max = math.log(max_scale)
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        if self.learnable:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)

    def forward(self) -> torch.Tensor:
        if not self.learnable:
            return self.log_scale.exp()
        return self.log_scale.clamp(max=self.log_max).exp()

    @torch.no_grad()
    def clamp_(self) -> LogitScale:
        """Clamp the learnable log-scale in place to ``log(max_scale)`` (after optimiser steps)."""
        if self.learnable:
            self.log_scale.clamp_(max=self.log_max)
        return self

    def extra_repr(self) -> str:
        return f"learnable={self.learnable}, max_scale={math.exp(self.log_max):g}"
