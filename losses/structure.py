"""VM-NET soft intra-modal structure loss (Hong et al., ICMR 2018).

The loss asks the embedding space to keep the *ordering* of neighbours that the raw input
features have: for each anchor row and each pair of adjacent columns (j, j+1), if the raw
distances and the embedded distances disagree on which of the two items is closer, the
embedded distances are pushed towards the raw order. The sign terms only pick the direction,
so they carry no gradient, as in the authors' TensorFlow code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from losses.precision import autocast_off

__all__ = ["soft_intra_modal_structure_loss"]


def soft_intra_modal_structure_loss(
    raw: torch.Tensor, emb: torch.Tensor, k: int = 100
) -> torch.Tensor:
    """Soft structure-preserving loss for one modality.

    Args:
        raw: [N, F] raw input features (e.g. pooled audio or frame features); no gradient
            flows into them (they are detached).
        emb: [N, D] L2-normalised embeddings of the same N items.
        k: only the first K = min(k, N) items of the batch are used, which bounds the
            O(K^2) cost.

    Returns:
        A float32 scalar: the mean over the K*(K-1) (row, adjacent-column-pair) entries of
        ``c * (De[:, j+1] - De[:, j])`` with
        ``c = sign(Do[:, j] - Do[:, j+1]) - sign(De[:, j] - De[:, j+1])``.
        The self pair (diagonal) is not excluded, following the reference code.
    """
    if raw.dim() != 2 or emb.dim() != 2:
        raise ValueError(
            "soft_intra_modal_structure_loss expects 2-D [N, F] raw and [N, D] emb, got "
            f"raw={tuple(raw.shape)} emb={tuple(emb.shape)}"
        )
    if raw.shape[0] != emb.shape[0]:
        raise ValueError(
            "soft_intra_modal_structure_loss: raw and emb must have the same number of rows, "
            f"got raw={tuple(raw.shape)} emb={tuple(emb.shape)}"
        )
    kk = min(int(k), emb.shape[0])
    if kk < 2:
        raise ValueError(
            "soft_intra_modal_structure_loss needs K = min(k, N) >= 2 items, got "
            f"K={kk} (k={k}, N={emb.shape[0]})"
        )
    with autocast_off(emb.device):
        # Raw features are a fixed target: detach so no gradient reaches what produced them.
        xn = F.normalize(raw[:kk].detach().float(), dim=1, eps=1e-12)
        dist_raw = -(xn @ xn.T)  # [K, K]
        e = emb[:kk].float()
        dist_emb = -(e @ e.T)  # [K, K]
        with torch.no_grad():
            # sign() only chooses the direction of the push; it must not contribute gradient.
            d_emb = dist_emb.detach()
            c = torch.sign(dist_raw[:, :-1] - dist_raw[:, 1:]) - torch.sign(
                d_emb[:, :-1] - d_emb[:, 1:]
            )  # [K, K-1]
        return (c * (dist_emb[:, 1:] - dist_emb[:, :-1])).mean()
