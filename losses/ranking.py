"""VM-NET inter-modal ranking loss (Hong et al., ICMR 2018).

Transcribed from the authors' TensorFlow code: the distance between a music and a video
embedding is the negative cosine similarity, and each anchor is pushed away from its
``num_negatives`` *hardest* (closest) negatives in the batch by a hinge with ``margin``.
"""

from __future__ import annotations

import torch

from losses.distributed import gather_global, world_and_rank
from losses.precision import autocast_off

__all__ = ["inter_modal_ranking_loss", "triplet_ranking_loss_with_margins"]


def _check_pair_batch(music_emb: torch.Tensor, video_emb: torch.Tensor) -> int:
    """Validate that the two embedding batches are [N, D] pairs; return N."""
    if music_emb.dim() != 2 or video_emb.dim() != 2:
        raise ValueError(
            "inter_modal_ranking_loss expects 2-D [N, D] embeddings, got shapes "
            f"music={tuple(music_emb.shape)} video={tuple(video_emb.shape)}"
        )
    if music_emb.shape != video_emb.shape:
        raise ValueError(
            "inter_modal_ranking_loss: shape mismatch, music and video embeddings must both be "
            f"[N, D] with row i a pair; got music={tuple(music_emb.shape)} "
            f"video={tuple(video_emb.shape)}"
        )
    n = music_emb.shape[0]
    if n < 2:
        raise ValueError(
            "inter_modal_ranking_loss needs at least 2 pairs (N >= 2) so that each anchor has "
            f"a negative; got N={n}"
        )
    return n


def _hardest_negative_hinge(dist: torch.Tensor, num_neg: int, margin: float,
                            offset: int = 0) -> torch.Tensor:
    """Mean hinge over each row's ``num_neg`` smallest distances to non-positive items.

    Row i of ``dist`` ([B, N]) holds the distances from anchor i to every item of the other
    modality; its positive is column ``offset + i`` (the diagonal for a square block).
    Masking the positive with +inf keeps topk from choosing it as its own negative
    (num_neg <= N - 1, so there are always enough finite entries).
    """
    rows = torch.arange(dist.shape[0], device=dist.device)
    positive = dist[rows, offset + rows].unsqueeze(1)  # [B, 1]
    masked = dist.index_put((rows, offset + rows), torch.tensor(float("inf"), device=dist.device))
    # Smallest distance = most similar negative = most violating one.
    hardest = masked.topk(num_neg, dim=1, largest=False).values  # [B, Q]
    # Mean over all B*Q terms, zeros included, as in the reference implementation.
    return torch.clamp(margin + positive - hardest, min=0.0).mean()


def inter_modal_ranking_loss(
    music_emb: torch.Tensor,
    video_emb: torch.Tensor,
    num_negatives: int = 100,
    margin: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VM-NET's bidirectional top-Q hinge ranking loss.

    Args:
        music_emb: [N, D] L2-normalised music embeddings; row i pairs with ``video_emb[i]``.
        video_emb: [N, D] L2-normalised video embeddings.
        num_negatives: Q, the number of hardest in-batch negatives per anchor; clipped to N-1
            so small batches (e.g. the last one of an epoch) still work.
        margin: hinge margin.

    Returns:
        ``(loss_music_to_video, loss_video_to_music)``, float32 scalars. The first uses music
        anchors against video negatives, the second video anchors against music negatives.
    """
    n = _check_pair_batch(music_emb, video_emb)
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    num_neg = min(int(num_negatives), n - 1)
    # Half-precision dot products and hinge means lose too much precision for a loss; cast up.
    with autocast_off(music_emb.device):
        music = music_emb.float()
        video = video_emb.float()
        dist = -(music @ video.T)  # [N_music, N_video]; negative cosine for normalised inputs
        loss_mv = _hardest_negative_hinge(dist, num_neg, margin)
        loss_vm = _hardest_negative_hinge(dist.T, num_neg, margin)
    return loss_mv, loss_vm


def global_inter_modal_ranking_loss(
    music_emb: torch.Tensor,
    video_emb: torch.Tensor,
    num_negatives: int = 100,
    margin: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`inter_modal_ranking_loss` over the global batch when several processes train.

    Each process ranks its own anchors against every process's items (gathered with
    gradient), choosing the Q hardest negatives from the whole global batch. Each direction
    is normalised as W * sum(local terms) / (N * Q), so DDP's gradient averaging gives exactly
    the gradient of one process on the concatenated batch. With one process this is
    `inter_modal_ranking_loss` itself.
    """
    world, _ = world_and_rank()
    if world == 1:
        return inter_modal_ranking_loss(music_emb, video_emb, num_negatives, margin)
    b = _check_pair_batch(music_emb, video_emb)
    (music_all, video_all), offset, n = gather_global(music_emb, video_emb)
    num_neg = min(int(num_negatives), n - 1)
    with autocast_off(music_emb.device):
        dist_mv = -(music_emb.float() @ video_all.float().T)  # local music anchors [B, N]
        dist_vm = -(video_emb.float() @ music_all.float().T)  # local video anchors [B, N]
        scale = world * b / n  # local mean -> W * local sum / (N * Q)
        loss_mv = _hardest_negative_hinge(dist_mv, num_neg, margin, offset) * scale
        loss_vm = _hardest_negative_hinge(dist_vm, num_neg, margin, offset) * scale
    return loss_mv, loss_vm


# ----------------------------------------------------------------------------- per-pair margins


def _hardest_negative_hinge_margins(
    dist: torch.Tensor, num_neg: int, margins: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Like ``_hardest_negative_hinge`` but with [N, N] per-(anchor, negative) margins.

    The ``num_neg`` negatives of each row are chosen by distance alone (smallest first, the
    diagonal excluded), exactly as in ``_hardest_negative_hinge``; then each margin matrix is
    read at the chosen (row, column) entries. One selection serves every margin matrix.
    """
    n = dist.shape[0]
    positive = dist.diagonal().unsqueeze(1)  # [N, 1]
    eye = torch.eye(n, dtype=torch.bool, device=dist.device)
    masked = dist.masked_fill(eye, float("inf"))
    idx = masked.topk(num_neg, dim=1, largest=False).indices  # [N, Q]
    hardest = dist.gather(1, idx)  # differentiable, same values as topk's
    return [torch.clamp(m.gather(1, idx) + positive - hardest, min=0.0).mean() for m in margins]


def _check_margins(m: torch.Tensor, n: int, name: str) -> torch.Tensor:
    if tuple(m.shape) != (n, n):
        raise ValueError(
            f"triplet_ranking_loss_with_margins: {name} must be [N, N] = [{n}, {n}], "
            f"got {list(m.shape)}"
        )
    return m.detach().float()


def _triplet_with_margin_sets(
    music_emb: torch.Tensor,
    video_emb: torch.Tensor,
    margins_mv: list[torch.Tensor],
    margins_vm: list[torch.Tensor],
    num_negatives: int,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Shared body: one distance matrix and one hardest-negative selection per direction."""
    if music_emb.dim() != 2 or video_emb.dim() != 2 or music_emb.shape != video_emb.shape:
        raise ValueError(
            "triplet_ranking_loss_with_margins expects music and video embeddings of the same "
            f"shape [N, D], got music={tuple(music_emb.shape)} video={tuple(video_emb.shape)}"
        )
    n = music_emb.shape[0]
    if n < 2:
        raise ValueError(
            f"triplet_ranking_loss_with_margins needs at least 2 pairs (N >= 2), got N={n}"
        )
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    num_neg = min(int(num_negatives), n - 1)
    mv = [_check_margins(m, n, "margins_mv") for m in margins_mv]
    vm = [_check_margins(m, n, "margins_vm") for m in margins_vm]
    with autocast_off(music_emb.device):
        dist = -(music_emb.float() @ video_emb.float().T)  # [N_music, N_video]
        return (
            _hardest_negative_hinge_margins(dist, num_neg, mv),
            _hardest_negative_hinge_margins(dist.T, num_neg, vm),
        )


def triplet_ranking_loss_with_margins(
    music_emb: torch.Tensor,
    video_emb: torch.Tensor,
    margins_mv: torch.Tensor,
    margins_vm: torch.Tensor,
    num_negatives: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``inter_modal_ranking_loss`` with a per-(anchor, negative) margin instead of a scalar.

    Args:
        music_emb: [N, D] L2-normalised music embeddings; row i pairs with ``video_emb[i]``.
        video_emb: [N, D] L2-normalised video embeddings.
        margins_mv: [N, N]; entry [i, k] is the margin for music anchor i against video
            negative k. Detached (margins carry no gradient); the diagonal is never read.
        margins_vm: [N, N]; entry [i, k] is the margin for video anchor i against music
            negative k.
        num_negatives: Q, clipped to N - 1. The Q negatives of each anchor are the ones with
            the smallest distance D = -cos, chosen exactly as in ``inter_modal_ranking_loss``
            (independent of the margins).

    Returns:
        ``(loss_music_to_video, loss_video_to_music)``, float32 scalars: the mean over the
        N * Q selected (anchor, negative) terms of ``max(0, m[i, k] + D[i, i] - D[i, k])``.
        With constant margin matrices this equals ``inter_modal_ranking_loss``.
    """
    (mv,), (vm,) = _triplet_with_margin_sets(
        music_emb, video_emb, [margins_mv], [margins_vm], num_negatives
    )
    return mv, vm
