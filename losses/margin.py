"""CMGSD adaptive margins (He et al., "Improving Video Retrieval by Adaptive Margin", SIGIR 2021).

Reconstruction (docs/methods.md; the paper body was not available): a fixed triplet margin is wrong
when a random negative is semantically close to the positive, so each (anchor, negative) pair
gets a margin that grows with the distance between the negative and the positive, measured in
some single-modal feature space:

    d[i, k] = 1 - cos(f_i, f_k)                    (f: single-modal features, item i = positive)
    z       = (d - mean) / std                     (over ALL N(N-1) off-diagonal entries of d,
                                                    population std; std ~ 0 gives z = 0)
    m[i, k] = max(0, alpha + beta * z[i, k])       (detached: margins carry no gradient)

For the triplet (anchor i, positive i of the other modality, negative k of the other modality)
the distance between negative and positive is d[i, k] of whichever feature space is used; all
these matrices are symmetric, so the same margin matrix serves both ranking directions.

``cmgsd_ranking_loss`` combines, per direction (T = the VM-NET top-Q hinge loss with the given
margins, the Q hardest negatives chosen by embedding distance as in the fixed-margin loss):

    L = T(fixed margin) + lam * (T(m_video) + T(m_music)) + (1 - lam) * T(m_static)

m_video from the video-side features (the negative video vs the positive video), m_music from
the music-side features (the negative music vs the positive music), m_static from an optional
frozen "static" expert's features; without static features the last term is dropped (weight
0). ``lam`` ramps 0 -> 1 over the first epochs (``lambda_ramp``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from losses.precision import HALF, autocast_off, upcast
from losses.ranking import _triplet_with_margin_sets

__all__ = [
    "adaptive_margin",
    "cmgsd_ranking_loss",
    "intra_modal_distances",
    "lambda_ramp",
]



def intra_modal_distances(feats: torch.Tensor) -> torch.Tensor:
    """[N, F] -> [N, N] cosine distances ``1 - cos`` of the row-L2-normalised features.

    Half precision is computed in float32; zero rows have cosine 0 (distance 1) to everything.
    """
    if feats.dim() != 2:
        raise ValueError(f"intra_modal_distances expects [N, F] features, got {tuple(feats.shape)}")
    x = upcast(feats)
    with autocast_off(x.device):
        xn = F.normalize(x, dim=1, eps=1e-12)
        return 1.0 - xn @ xn.T


def adaptive_margin(dist: torch.Tensor, alpha: float = 0.2, beta: float = 1.0) -> torch.Tensor:
    """Per-pair margins ``max(0, alpha + beta * zscore(dist))`` from an [N, N] distance matrix.

    The z-score uses the mean and the population standard deviation of all N(N-1)
    off-diagonal entries of ``dist`` (one batch-level normalisation, so a row of uniformly
    distant items still gets large margins). A constant matrix (std 0, or std at rounding
    level, <= 64 * eps * max|d|) gives z = 0, i.e. margin ``max(0, alpha)`` everywhere. The
    input is detached; the diagonal of the result is 0 (it is the positive pair and is never
    used). Returns float32 (float64 for float64 input).
    """
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"adaptive_margin expects a square [N, N] matrix, got {tuple(dist.shape)}")
    n = dist.shape[0]
    if n < 2:
        raise ValueError(f"adaptive_margin needs N >= 2 (off-diagonal entries), got N={n}")
    d = dist.detach()
    d = d.float() if d.dtype in HALF or not d.is_floating_point() else d
    off = ~torch.eye(n, dtype=torch.bool, device=d.device)
    vals = d[off]
    mean = vals.mean()
    std = (vals - mean).pow(2).mean().sqrt()
    # A constant matrix leaves only rounding noise in std; count that as 0 (z = 0).
    degenerate = std <= 64 * torch.finfo(d.dtype).eps * vals.abs().max()
    z = (d - mean) / std.clamp_min(torch.finfo(d.dtype).tiny)
    z = torch.where(degenerate, torch.zeros_like(z), z)
    return torch.clamp(alpha + beta * z, min=0.0).masked_fill(~off, 0.0)


def lambda_ramp(epoch: float, ramp_epochs: float) -> float:
    """Linear ramp ``min(1, max(0, epoch / ramp_epochs))``; ``ramp_epochs == 0`` gives 1."""
    if ramp_epochs < 0:
        raise ValueError(f"ramp_epochs must be >= 0, got {ramp_epochs}")
    if ramp_epochs == 0:
        return 1.0
    return float(min(1.0, max(0.0, epoch / ramp_epochs)))


def _check_feats(feats: torch.Tensor, n: int, name: str) -> None:
    if feats.dim() != 2 or feats.shape[0] != n:
        raise ValueError(
            f"cmgsd_ranking_loss: {name} must be [N, F] with N = {n} rows, got {tuple(feats.shape)}"
        )


def cmgsd_ranking_loss(
    music_emb: torch.Tensor,
    video_emb: torch.Tensor,
    video_feats: torch.Tensor,
    music_feats: torch.Tensor,
    lam: float,
    num_negatives: int = 100,
    margin: float = 0.1,
    alpha: float = 0.2,
    beta: float = 1.0,
    static_feats: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CMGSD ranking loss (module docstring for the reading of the terms).

    Args:
        music_emb, video_emb: [N, D] L2-normalised embeddings, row i a pair.
        video_feats: [N, Fv] video-side single-modal features (the model's own pre-projection
            features or pooled raw inputs), row i of pair i; only used for margins (detached).
        music_feats: [N, Fm] music-side single-modal features.
        lam: weight of the adaptive terms, in [0, 1] (see ``lambda_ramp``).
        num_negatives: Q hardest negatives per anchor (clipped to N - 1).
        margin: the fixed margin of the first term.
        alpha, beta: ``adaptive_margin`` parameters.
        static_feats: optional [N, Fs] features of a frozen static expert; ``None`` drops the
            ``(1 - lam) * T(m_static)`` term.

    Returns:
        ``(loss_music_to_video, loss_video_to_music)``, float32 scalars, each
        ``T(margin) + lam * (T(m_video) + T(m_music)) + (1 - lam) * T(m_static)`` for that
        direction.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if music_emb.dim() != 2 or video_emb.dim() != 2 or music_emb.shape != video_emb.shape:
        raise ValueError(
            "cmgsd_ranking_loss expects music and video embeddings of the same shape [N, D], "
            f"got music={tuple(music_emb.shape)} video={tuple(video_emb.shape)}"
        )
    n = music_emb.shape[0]
    if n < 2:
        raise ValueError(f"cmgsd_ranking_loss needs at least 2 pairs (N >= 2), got N={n}")
    _check_feats(video_feats, n, "video_feats")
    _check_feats(music_feats, n, "music_feats")
    fixed = torch.full((n, n), float(margin), device=music_emb.device)
    m_video = adaptive_margin(intra_modal_distances(video_feats), alpha, beta)
    m_music = adaptive_margin(intra_modal_distances(music_feats), alpha, beta)
    margins = [fixed, m_video, m_music]
    if static_feats is not None:
        _check_feats(static_feats, n, "static_feats")
        margins.append(adaptive_margin(intra_modal_distances(static_feats), alpha, beta))
    # Every margin matrix is symmetric (d[i, k] = d[k, i]), so both directions use the same one.
    mv, vm = _triplet_with_margin_sets(music_emb, video_emb, margins, margins, num_negatives)
    out = []
    for t in (mv, vm):
        loss = t[0] + lam * (t[1] + t[2])
        if static_feats is not None:
            loss = loss + (1.0 - lam) * t[3]
        out.append(loss)
    return out[0], out[1]
