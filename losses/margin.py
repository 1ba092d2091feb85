"""CMGSD adaptive margins (He et al., "Improving Video Retrieval by Adaptive Margin", SIGIR 2021).

Reconstruction (docs/methods.md; the paper body was not available): a fixed triplet margin is wrong
when a random negative is semantically close to the positive, so each (anchor, negative) pair
gets a margin that grows with the distance between the negative and the positive, measured in
some single-modal feature space:

    d[i, k] = 1 - cos(f_i, f_k)                    (f: single-modal features, item i = positive)
    z       = (d - mean) / std                     ("batch": over ALL N(N-1) off-diagonal entries
                                                    of d; "row": per row i over its N-1
                                                    off-diagonal entries; population std;
                                                    std ~ 0 gives z = 0)
    m[i, k] = clamp(alpha + beta * z[i, k], 0, max_margin)
                                                   (detached: margins carry no gradient;
                                                    max_margin None: no upper bound)

For the triplet (anchor i, positive i of the other modality, negative k of the other modality)
the distance between negative and positive is d[i, k] of whichever feature space is used. Row i
of a margin matrix always belongs to the pair of anchor i, in both ranking directions (the
batch z-score keeps the matrix symmetric, the row z-score normalises per anchor).

Why the bound and the row z-score: with one batch-wide z-score and no bound, margins reach
alpha + beta * (max z) (3.6 measured on synthetic data, where the largest possible gap of two
cosines is 2), and every negative of the anchor's own style falls below the batch mean, so all
of them get margin 0 whatever their distance; the row z-score ranks each anchor's negatives
among themselves.

``cmgsd_ranking_loss`` combines, per direction (T = the VM-NET top-Q hinge loss with the given
margins, the Q hardest negatives chosen by embedding distance as in the fixed-margin loss):

    L = [T(fixed margin) + lam * (T(m_video) + T(m_music)) + (1 - lam) * T(m_static)] / W

m_video from the video-side features (the negative video vs the positive video), m_music from
the music-side features (the negative music vs the positive music), m_static from an optional
frozen "static" expert's features; without static features the last term is dropped (weight
0). ``lam`` ramps 0 -> 1 over the first epochs (``lambda_ramp``). W = 1 by default, or with
``normalize_terms`` the sum of the term weights, 1 + 2 lam (+ 1 - lam with a static expert), so
the loss is a weighted MEAN of hinge terms, on the scale of the fixed-margin loss.
``matched=True`` is the control with the same terms and weights but every margin matrix
replaced by the fixed margin: it differs from CMGSD only in the margin values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from losses.precision import HALF, autocast_off, upcast
from losses.ranking import _triplet_with_margin_sets

__all__ = [
    "ZSCORES",
    "adaptive_margin",
    "cmgsd_ranking_loss",
    "cmgsd_term_weights",
    "intra_modal_distances",
    "lambda_ramp",
    "zscore_off_diagonal",
]

ZSCORES = ("batch", "row")

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


def zscore_off_diagonal(d: torch.Tensor, zscore: str = "batch") -> torch.Tensor:
    """z-scores of the off-diagonal entries of a square matrix (diagonal set to 0).

    ``"batch"``: one mean and population std over all N(N-1) off-diagonal entries; ``"row"``:
    per row over its N-1 off-diagonal entries. A constant set (std 0, or std at rounding level,
    <= 64 * eps * max|d|) gives z = 0.
    """
    if zscore not in ZSCORES:
        raise ValueError(f"unknown zscore {zscore!r}; valid: {', '.join(ZSCORES)}")
    n = d.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=d.device)
    if zscore == "batch":
        vals = d[off]
        mean = vals.mean()
        std = (vals - mean).pow(2).mean().sqrt()
        scale = vals.abs().max()
    else:
        vals = d[off].view(n, n - 1)
        mean = vals.mean(dim=1, keepdim=True)
        std = (vals - mean).pow(2).mean(dim=1, keepdim=True).sqrt()
        scale = vals.abs().amax(dim=1, keepdim=True)
    # A constant set leaves only rounding noise in std; count that as 0 (z = 0).
    degenerate = std <= 64 * torch.finfo(d.dtype).eps * scale
    z = (d - mean) / std.clamp_min(torch.finfo(d.dtype).tiny)
    z = torch.where(degenerate, torch.zeros_like(z), z)
    return z.masked_fill(~off, 0.0)


def adaptive_margin(dist: torch.Tensor, alpha: float = 0.2, beta: float = 1.0,
                    zscore: str = "batch", max_margin: float | None = None) -> torch.Tensor:
    """Per-pair margins ``clamp(alpha + beta * z(dist), 0, max_margin)`` from [N, N] distances.

    ``z`` is :func:`zscore_off_diagonal` (``"batch"``: one batch-level normalisation, so a row
    of uniformly distant items still gets large margins; ``"row"``: per anchor row).
    ``max_margin=None`` leaves the margins unbounded above (the third-party port). The input is
    detached; the diagonal of the result is 0 (it is the positive pair and is never used).
    Returns float32 (float64 for float64 input).
    """
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"adaptive_margin expects a square [N, N] matrix, got {tuple(dist.shape)}")
    n = dist.shape[0]
    if n < 2:
        raise ValueError(f"adaptive_margin needs N >= 2 (off-diagonal entries), got N={n}")
    if max_margin is not None and max_margin < 0:
        raise ValueError(f"max_margin must be >= 0 or None, got {max_margin}")
    d = dist.detach()
    d = d.float() if d.dtype in HALF or not d.is_floating_point() else d
    z = zscore_off_diagonal(d, zscore)
    m = torch.clamp(alpha + beta * z, min=0.0, max=max_margin)
    return m.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), 0.0)


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


def cmgsd_term_weights(lam: float, static: bool, normalize_terms: bool = False) -> list[float]:
    """Weights of the hinge terms [fixed, video, music(, static)]: [1, lam, lam(, 1 - lam)].

    With ``normalize_terms`` they are divided by their sum, so they add up to 1.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    weights = [1.0, lam, lam] + ([1.0 - lam] if static else [])
    if normalize_terms:
        total = sum(weights)
        weights = [w / total for w in weights]
    return weights


def cmgsd_margins(video_feats: torch.Tensor, music_feats: torch.Tensor, margin: float,
                  alpha: float = 0.2, beta: float = 1.0, static_feats: torch.Tensor | None = None,
                  zscore: str = "batch", max_margin: float | None = None,
                  matched: bool = False) -> list[torch.Tensor]:
    """The [N, N] margin matrices [fixed, m_video, m_music(, m_static)] of the CMGSD terms.

    ``matched=True`` gives the fixed margin in every matrix (the matched control).
    """
    n = video_feats.shape[0]
    _check_feats(music_feats, n, "music_feats")
    feats = [video_feats, music_feats]
    if static_feats is not None:
        _check_feats(static_feats, n, "static_feats")
        feats.append(static_feats)
    fixed = torch.full((n, n), float(margin), device=video_feats.device)
    if matched:
        return [fixed] * (1 + len(feats))
    return [fixed] + [adaptive_margin(intra_modal_distances(f), alpha, beta, zscore, max_margin)
                      for f in feats]


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
    zscore: str = "batch",
    max_margin: float | None = None,
    normalize_terms: bool = False,
    matched: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CMGSD ranking loss (module docstring for the reading of the terms).

    Args:
        music_emb, video_emb: [N, D] L2-normalised embeddings, row i a pair.
        video_feats: [N, Fv] video-side single-modal features (e.g. the model's own
            embeddings, separate heads, or a momentum copy), row i of pair i; only used for
            margins (detached).
        music_feats: [N, Fm] music-side single-modal features.
        lam: weight of the adaptive terms, in [0, 1] (see ``lambda_ramp``).
        num_negatives: Q hardest negatives per anchor (clipped to N - 1).
        margin: the fixed margin of the first term (and of every term when ``matched``).
        alpha, beta, zscore, max_margin: ``adaptive_margin`` parameters.
        static_feats: optional [N, Fs] features of a frozen static expert; ``None`` drops the
            ``(1 - lam) * T(m_static)`` term.
        normalize_terms: divide by the sum of the term weights (``cmgsd_term_weights``).
        matched: the matched fixed-margin control (same terms, fixed margins).

    Returns:
        ``(loss_music_to_video, loss_video_to_music)``, float32 scalars, each
        ``sum_t w_t T(m_t)`` over the terms for that direction.
    """
    if music_emb.dim() != 2 or video_emb.dim() != 2 or music_emb.shape != video_emb.shape:
        raise ValueError(
            "cmgsd_ranking_loss expects music and video embeddings of the same shape [N, D], "
            f"got music={tuple(music_emb.shape)} video={tuple(video_emb.shape)}"
        )
    n = music_emb.shape[0]
    if n < 2:
        raise ValueError(f"cmgsd_ranking_loss needs at least 2 pairs (N >= 2), got N={n}")
    weights = cmgsd_term_weights(lam, static_feats is not None, normalize_terms)
    _check_feats(video_feats, n, "video_feats")
    margins = cmgsd_margins(video_feats, music_feats, margin, alpha, beta, static_feats,
                            zscore, max_margin, matched)
    # Row i of every margin matrix belongs to anchor i's pair, in both directions.
    mv, vm = _triplet_with_margin_sets(music_emb, video_emb, margins, margins, num_negatives)
    return tuple(sum(w * t for w, t in zip(weights, terms)) for terms in (mv, vm))
