"""Span-level mixing of two videos for SSVMR (pure tensor functions; docs/methods.md, SSVMR).

A `MixPlan` says, for every sample A of a local batch, which partner B it takes frames from,
where A's window starts (`start`), how long it is (`length` frames; 0 = not mixed) and where
B's window starts (`source_start`; None = the same positions as A's, i.e. time-aligned).
`span_mix` applies a plan: A's frames [start, start + length) are replaced by B's frames
[source_start, source_start + length); a position whose source frame is not valid in B (B
shorter) keeps A's own frame.

Two ways to draw a plan (`model.ssvmr.mixing.mode`):

- `saliency_mix_plan` (SSMix-like): partners form one random cycle through the batch (every
  sample is the partner of exactly one other); the window is `window_frac` of A's valid
  frames (rounded, at least 1, at most T_A - 1 so some of A survives); B's window is B's
  most salient one (highest mean saliency), pasted over A's least salient one (lowest mean);
  the two positions are chosen independently.
- `sample_mix_plan` (random_aligned, the ablation): a random other sample as partner, a span
  of a random fraction of A's length at a random start, taken from B at the same positions.

Targets: the mixed video's target over the music batch gives B's song the share w and A's
song 1 - w (`mixing_targets`); w is the replaced fraction of A (`length_share`) or B's share
of the clean saliency mass (`saliency_share`). The music-to-video direction uses the same
weights read the other way (`music_to_video_targets`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from models.saliency import normalise_mass

MIX_DISTRIBUTIONS = ("uniform", "beta")
_TINY = torch.finfo(torch.float32).tiny


class MixPlan(NamedTuple):
    """One mixing draw for a local batch ([B] long each); length 0 means "not mixed"."""

    partner: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    source_start: torch.Tensor | None = None  # None: B's window sits where A's does


def _source_index(t_count: int, start: torch.Tensor, length: torch.Tensor,
                  source_start: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(in A's window [B, T] bool, B's frame index for each of A's positions [B, T] long)."""
    t = torch.arange(t_count, device=start.device)
    src = start if source_start is None else source_start.to(start.device)
    in_window = (t >= start[:, None]) & (t < (start + length)[:, None])
    index = t[None, :] - start[:, None] + src[:, None]
    inside = in_window & (index >= 0) & (index < t_count)
    return inside, index.clamp(0, t_count - 1)


def mixed_positions(mask: torch.Tensor, partner: torch.Tensor, start: torch.Tensor,
                    length: torch.Tensor,
                    source_start: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] bool: A's positions that `span_mix` fills with a (valid) frame of the partner."""
    device = mask.device
    inside, index = _source_index(mask.shape[1], start.to(device), length.to(device),
                                  source_start)
    partner_valid = mask[partner.to(device)].gather(1, index)
    return inside & partner_valid


def source_positions(mask: torch.Tensor, partner: torch.Tensor, start: torch.Tensor,
                     length: torch.Tensor,
                     source_start: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] bool in the PARTNER's time axis: row i marks the frames of partner_i that are
    pasted into sample i (the positions of `mixed_positions`, mapped back to B's frames)."""
    device = mask.device
    start, length = start.to(device), length.to(device)
    src = start if source_start is None else source_start.to(device)
    u = torch.arange(mask.shape[1], device=device)[None, :]
    in_window = (u >= src[:, None]) & (u < (src + length)[:, None])
    lands = u - src[:, None] + start[:, None] < mask.shape[1]  # A's position exists
    return in_window & lands & mask[partner.to(device)]


def span_mix(video: torch.Tensor, mask: torch.Tensor, partner: torch.Tensor,
             start: torch.Tensor, length: torch.Tensor,
             source_start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a plan to frames [B, T, D] with mask [B, T] -> (mixed frames, mixed mask).

    Row i equals video i except at `mixed_positions`, which hold partner_i's frames (from
    B's window, position by position) and are valid: `mixed_mask = mask | replaced`. Plans
    drawn here put A's window inside A's valid frames, so the mask is then unchanged.
    """
    device = video.device
    partner = partner.to(device)
    replaced = mixed_positions(mask, partner, start, length, source_start)
    _, index = _source_index(video.shape[1], start.to(device), length.to(device), source_start)
    taken = video[partner].gather(1, index[..., None].expand(-1, -1, video.shape[2]))
    return torch.where(replaced.unsqueeze(-1), taken, video), mask | replaced


# ----- label weights and targets --------------------------------------------------------------


def length_share(replaced: torch.Tensor, mixed_mask: torch.Tensor) -> torch.Tensor:
    """[B] float32: replaced frames / valid frames of the mixed video (0 for unmixed rows)."""
    num = replaced.sum(1).float()
    return (num / mixed_mask.sum(1).float().clamp_min(_TINY)).clamp(0.0, 1.0)


def saliency_share(saliency: torch.Tensor, mask: torch.Tensor, partner: torch.Tensor,
                   start: torch.Tensor, length: torch.Tensor,
                   source_start: torch.Tensor | None = None) -> torch.Tensor:
    """[B] float32: B's share of the mixed video's CLEAN saliency mass.

    Each clean video's saliency is normalised to mass 1 over its valid frames; the mixed
    video holds B's mass inside B's window and A's mass outside A's window, and
    w = B's / (B's + A's). 0 for unmixed rows; the length share where both masses are 0.
    """
    mass = normalise_mass(saliency, mask)
    replaced = mixed_positions(mask, partner, start, length, source_start)
    pasted = source_positions(mask, partner, start, length, source_start)
    from_b = (mass[partner.to(mass.device)] * pasted).sum(1)
    from_a = (mass * (mask & ~replaced)).sum(1)
    total = from_b + from_a
    w = torch.where(total > 0, from_b / total.clamp_min(_TINY), length_share(replaced, mask))
    return torch.where(replaced.any(1), w, torch.zeros_like(w)).clamp(0.0, 1.0)


def mixing_targets(share: torch.Tensor, partner: torch.Tensor, offset: int = 0,
                   n_global: int | None = None) -> torch.Tensor:
    """Soft video-to-music targets [B_local, N_global] (float32, rows sum to 1).

    Row i puts 1 - share_i on its own music (global column offset + i) and share_i on its
    partner's (offset + partner_i); unmixed rows (share 0) are one-hot. `offset`: rows held
    by lower ranks; `n_global`: the global batch size (default: the local one).
    """
    b = share.shape[0]
    n_global = b if n_global is None else n_global
    if offset < 0 or offset + b > n_global:
        raise ValueError(f"rows [{offset}, {offset + b}) do not fit a global batch of {n_global}")
    w = share.float()
    rows = torch.arange(b, device=w.device)
    target = torch.zeros(b, n_global, device=w.device, dtype=torch.float32)
    target.index_put_((rows, offset + rows), 1.0 - w, accumulate=True)
    target.index_put_((rows, offset + partner.to(w.device)), w, accumulate=True)
    return target


def music_to_video_targets(v2m: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Soft music-to-video targets [B_local, N_global] from the video-to-music ones.

    Music j's target over the (mixed) videos is how much of song j each video holds:
    column j of the local v2m block, normalised to sum 1. Partners are local, so no other
    rank's video holds a local song. A song no video holds (possible only when its own video
    was entirely replaced) keeps a one-hot target on its own video.
    """
    b, n_global = v2m.shape
    block = v2m[:, offset:offset + b].T  # [music j, video i]
    total = block.sum(1, keepdim=True)
    own = torch.eye(b, device=v2m.device, dtype=v2m.dtype)
    block = torch.where(total > 0, block / total.clamp_min(_TINY), own)
    out = torch.zeros_like(v2m)
    out[:, offset:offset + b] = block
    return out


# ----- plans ----------------------------------------------------------------------------------


def random_cycle(b: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[b] long partners forming one random cycle: nobody is their own partner and everyone
    is the partner of exactly one other sample (b = 1: [0])."""
    order = torch.randperm(b, generator=generator)
    partner = torch.empty(b, dtype=torch.long)
    partner[order] = order.roll(-1)
    return partner


def window_means(saliency: torch.Tensor, mask: torch.Tensor,
                 length: torch.Tensor) -> torch.Tensor:
    """[B, T] float32: mean saliency of the window [s, s + length_i) for every start s; NaN
    where the window leaves the sequence or covers an invalid frame."""
    b, t = saliency.shape
    length = length.to(saliency.device).long()
    zero = torch.zeros(b, 1, device=saliency.device)
    sums = torch.cat([zero, (saliency.float() * mask).cumsum(1)], dim=1)  # [B, T + 1]
    counts = torch.cat([zero, mask.float().cumsum(1)], dim=1)
    s = torch.arange(t, device=saliency.device)[None, :]
    end = s + length[:, None]
    fits = end <= t
    end = end.clamp(max=t)
    window_sum = sums.gather(1, end) - sums[:, :t]
    full = (counts.gather(1, end) - counts[:, :t]) == length[:, None].float()
    ok = fits & full & (length[:, None] > 0)
    return torch.where(ok, window_sum / length[:, None].clamp_min(1).float(),
                       torch.full_like(window_sum, float("nan")))


def window_start(saliency: torch.Tensor, mask: torch.Tensor, length: torch.Tensor,
                 highest: bool) -> torch.Tensor:
    """[B] long: start of the window with the highest (or lowest) mean saliency; ties go to
    the earliest start; 0 where no window of that length fits."""
    means = window_means(saliency, mask, length)
    none = means.isnan()
    fill = float("-inf") if highest else float("inf")
    scored = torch.where(none, torch.full_like(means, fill), means)
    if not highest:
        scored = -scored
    # Ties (up to float rounding of the window sums) go to the earliest start.
    top = scored.max(dim=1, keepdim=True).values
    near = scored >= top - 1e-6 * (1.0 + top.abs())
    best = near.float().argmax(dim=1)  # the first True
    return torch.where(none.all(1), torch.zeros_like(best), best)


def saliency_mix_plan(saliency: torch.Tensor, mask: torch.Tensor, window_frac: float,
                      prob: float = 1.0, partner: torch.Tensor | None = None) -> MixPlan:
    """B's most salient window over A's least salient one (draws from torch's global RNG).

    Window L_i = clamp(round(window_frac * T_A), 1, T_A - 1) frames. Sample i is mixed when
    T_A >= 2, its partner has at least L_i valid frames in a row, and a uniform draw < prob.
    Partners: `random_cycle` unless given.
    """
    b, device = mask.shape[0], mask.device
    if partner is None:
        partner = random_cycle(b)
    partner = partner.to(device)
    chosen = (torch.rand(b) < prob).to(device)
    lengths = mask.sum(1)
    window = (window_frac * lengths.float()).round().long().clamp_min(1)
    window = torch.minimum(window, (lengths - 1).clamp_min(0))
    a_start = window_start(saliency, mask, window, highest=False)
    b_means = window_means(saliency[partner], mask[partner], window)
    b_start = window_start(saliency[partner], mask[partner], window, highest=True)
    ok = chosen & (window >= 1) & ~b_means.isnan().all(1) & (partner != torch.arange(b,
                                                                                      device=device))
    zero = torch.zeros_like(window)
    return MixPlan(partner, torch.where(ok, a_start, zero), torch.where(ok, window, zero),
                   torch.where(ok, b_start, zero))


def sample_mix_plan(mask: torch.Tensor, prob: float, min_span: float, max_span: float,
                    distribution: str = "uniform", beta_a: float = 2.0,
                    beta_b: float = 2.0) -> MixPlan:
    """A random time-aligned plan for left-aligned masks [B, T] (torch's global RNG, on CPU).

    Each sample is mixed with probability `prob` (never when the batch has one sample or the
    sample has no frames). Partner: uniform over the other samples. Span fraction f: uniform on
    [min_span, max_span], or min_span + (max_span - min_span) * Beta(beta_a, beta_b); length
    L = clamp(round(f * T_A), 1, T_A) frames; start uniform on [0, T_A - L].
    """
    if distribution not in MIX_DISTRIBUTIONS:
        raise ValueError(f"unknown span distribution {distribution!r} "
                         f"(choose from: {', '.join(MIX_DISTRIBUTIONS)})")
    b = mask.shape[0]
    lengths = mask.sum(1).cpu()
    if distribution == "uniform":
        u = torch.rand(b)
    else:
        u = torch.distributions.Beta(torch.tensor(float(beta_a)),
                                     torch.tensor(float(beta_b))).sample((b,))
    frac = min_span + (max_span - min_span) * u
    span = torch.minimum((frac * lengths).round().long().clamp_min(1), lengths)
    start = (torch.rand(b) * (lengths - span + 1)).floor().long()
    start = torch.minimum(start, (lengths - span).clamp_min(0))  # guards rand() == 1 - eps
    shift = 1 + (torch.rand(b) * max(b - 1, 1)).floor().long().clamp(max=max(b - 2, 0))
    partner = (torch.arange(b) + shift) % b
    chosen = (torch.rand(b) < prob) & (lengths > 0) & (b > 1)
    device = mask.device
    return MixPlan(partner.to(device), torch.where(chosen, start, 0).to(device),
                   torch.where(chosen, span, 0).to(device))


# ----- measuring (synthetic data only) --------------------------------------------------------


def content_stats(salient: torch.Tensor, mask: torch.Tensor,
                  plan: MixPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """For a batch with planted salient frames [B, T] bool (metrics only, never trained on):
    (pasted window holds any of B's salient frames [B] bool, any of A's salient frames
    survive outside the replaced positions [B] bool)."""
    salient = salient.to(mask.device).bool() & mask
    pasted = source_positions(mask, *plan)
    replaced = mixed_positions(mask, *plan)
    b_content = (salient[plan.partner.to(mask.device)] & pasted).any(1)
    a_survives = (salient & ~replaced).any(1)
    return b_content, a_survives
