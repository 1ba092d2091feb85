"""Intra-modal term of the II (inter-intra) loss (II-CLVM, Chen et al. 2024).

The II loss keeps each modality's feature distribution from changing too much between the
encoder's input and its output, which keeps the model from over-fitting the false negatives
of one-to-one video-music pairs. Per modality, with

    A_in  = cos-sim matrix of the row-L2-normalised pooled raw inputs (DETACHED: a fixed target)
    A_out = cos-sim matrix of the (row-L2-normalised) embeddings,

four variants are provided (reconstruction, docs/methods.md):

* ``mse``:  mean of (A_in - A_out)^2 over the N(N-1) off-diagonal entries;
* ``kl``:   mean over rows i of KL(softmax(A_in[i, j != i] / T) || softmax(A_out[i, j != i] / T)),
            the softmax taken over the off-diagonal entries of the row only;
* ``corr``: mean over rows i of 1 - Pearson(A_in[i, j != i], A_out[i, j != i]): only the
            SHAPE of each row's similarity profile is kept, not its level or spread, so the
            embedding may sharpen similarities (as InfoNCE wants) as long as it keeps their order
            and proportions (a row with a constant profile gives correlation 0);
* ``rank``: VM-NET's soft intra-modal structure loss on the first ``k`` rows
            (:func:`losses.structure.soft_intra_modal_structure_loss`).

``mse`` pins absolute cosines: raw features with a large common offset have all cosines near
1 (e.g. ~0.9 between same-style items), and ``mse`` then holds the embeddings there too, against
the contrastive term. ``center="batch"`` subtracts each side's batch mean (raw features and
embeddings alike) before the cosines, which removes that common offset for every variant.

``mse``, ``kl`` and ``corr`` use the whole batch; ``k`` only applies to ``rank``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from losses.precision import autocast_off, upcast
from losses.structure import soft_intra_modal_structure_loss

__all__ = ["II_CENTERS", "II_VARIANTS", "cosine_similarity_matrix", "ii_total", "inter_intra_loss"]

II_VARIANTS = ("mse", "kl", "corr", "rank")
II_CENTERS = ("none", "batch")


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """[N, F] -> [N, N] cosine similarities (rows L2-normalised, zero rows give 0)."""
    xn = F.normalize(upcast(x), dim=1, eps=1e-12)
    return xn @ xn.T


def center_rows(x: torch.Tensor, center: str) -> torch.Tensor:
    """Subtract the batch mean row (``"batch"``) or nothing (``"none"``)."""
    if center not in II_CENTERS:
        raise ValueError(f"unknown centring {center!r}; valid: {', '.join(II_CENTERS)}")
    return x - x.mean(dim=0, keepdim=True) if center == "batch" else x


def _off_diagonal(a: torch.Tensor) -> torch.Tensor:
    """[N, N] -> [N, N-1]: each row without its diagonal entry, column order kept."""
    n = a.shape[0]
    keep = ~torch.eye(n, dtype=torch.bool, device=a.device)
    return a[keep].view(n, n - 1)


def inter_intra_loss(
    raw: torch.Tensor,
    emb: torch.Tensor,
    variant: str = "mse",
    temperature: float = 0.1,
    k: int = 100,
    center: str = "none",
) -> torch.Tensor:
    """Intra-modal structure-preservation loss for one modality.

    Args:
        raw: [N, F] pooled raw input features; detached (no gradient reaches them).
        emb: [N, D] embeddings of the same N items (normalised again here for mse/kl/corr).
        variant: ``"mse"``, ``"kl"``, ``"corr"`` or ``"rank"`` (module docstring).
        temperature: softmax temperature T of the ``kl`` variant.
        k: number of leading rows used by the ``rank`` variant (ignored otherwise).
        center: ``"none"`` or ``"batch"``: subtract each side's mean row over the batch
            before the cosines (for ``rank``: centred embeddings are L2-normalised again).

    Returns:
        A scalar, float32 for half-precision inputs (else the embeddings' dtype for mse/kl;
        ``rank`` returns float32 like the structure loss).
    """
    if variant not in II_VARIANTS:
        raise ValueError(
            f"unknown inter-intra variant {variant!r}; valid variants: {', '.join(II_VARIANTS)}"
        )
    if raw.dim() != 2 or emb.dim() != 2:
        raise ValueError(
            "inter_intra_loss expects 2-D [N, F] raw and [N, D] emb, got "
            f"raw={tuple(raw.shape)} emb={tuple(emb.shape)}"
        )
    if raw.shape[0] != emb.shape[0]:
        raise ValueError(
            "inter_intra_loss: raw and emb must have the same number of rows, got "
            f"raw={tuple(raw.shape)} emb={tuple(emb.shape)}"
        )
    with autocast_off(emb.device):
        raw = center_rows(upcast(raw.detach()), center)
        if center != "none":
            emb = center_rows(upcast(emb), center)
        if variant == "rank":
            if center != "none":
                emb = F.normalize(emb, dim=1, eps=1e-12)
            return soft_intra_modal_structure_loss(raw, emb, k=k)
        return _similarity_loss(raw, emb, variant, temperature)


def _similarity_loss(
    raw: torch.Tensor, emb: torch.Tensor, variant: str, temperature: float
) -> torch.Tensor:
    n = emb.shape[0]
    if n < 2:
        raise ValueError(f"inter_intra_loss needs at least 2 rows (N >= 2), got N={n}")

    a_out = cosine_similarity_matrix(emb)
    a_in = cosine_similarity_matrix(raw.detach()).to(a_out.dtype)
    s_in, s_out = _off_diagonal(a_in), _off_diagonal(a_out)  # [N, N-1]
    if variant == "mse":
        return (s_in - s_out).pow(2).mean()
    if variant == "corr":
        return (1.0 - _row_correlation(s_in, s_out)).mean()
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_p = F.log_softmax(s_in / temperature, dim=1)
    log_q = F.log_softmax(s_out / temperature, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def _row_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` ([N, M] -> [N]).

    A row with (numerically) zero spread on either side has correlation 0, not NaN.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    norm_a, norm_b = a.norm(dim=1), b.norm(dim=1)
    tiny = torch.finfo(a.dtype).eps
    ok = (norm_a > tiny) & (norm_b > tiny)
    denom = torch.where(ok, norm_a * norm_b, torch.ones_like(norm_a))
    return torch.where(ok, (a * b).sum(dim=1) / denom, torch.zeros_like(norm_a))


def ii_total(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """Weighted sum ``sum_name weights[name] * terms[name]``.

    Every term needs a weight (a missing one raises ``KeyError`` naming it); weights for names
    without a term are ignored, so one weight table can serve models without e.g. a text branch.
    """
    if not terms:
        raise ValueError("ii_total needs at least one term")
    missing = [name for name in terms if name not in weights]
    if missing:
        raise KeyError(f"ii_total: no weight for term(s) {missing}; weights: {sorted(weights)}")
    return sum(float(weights[name]) * value for name, value in terms.items())
