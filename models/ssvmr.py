"""SSVMR (Cheng et al., "Saliency-based Self-training for Video-Music Retrieval", ICASSP 2023).

Dual encoder over frame sequences (a `TemporalEncoder` per modality, a linear projection, L2
normalisation) trained with symmetric InfoNCE over the global (all-process) batch, plus the
paper's saliency idea: mix two videos at span level and learn which frames matter.

Saliency pooling (`saliency: true`): the video side pools its per-frame features with a
learned attention, a linear score per frame -> softmax over the valid frames -> weighted sum,
instead of the masked mean. The scorer is zero-initialised, so training starts from the mean
and the saliency is learned through the retrieval loss only.

Span mixing (training only; evaluation never mixes). For a random subset (`mixing.prob`) of
the local batch, sample A is given a partner B (another local sample, never itself), a span
length L = round(f * T_A) frames (at least 1, at most T_A) with f drawn from
`mixing.distribution` on [min_span, max_span], and a start s in [0, T_A - L]. Video A's
frames [s, s + L) are replaced by video B's frames at the same time positions (time-aligned);
where B has no frame at a position (B shorter), A keeps its own frame and mask. The target of
the mixed video over the global music batch is soft: music B gets the partner share w and
music A gets 1 - w, with w = (frames actually replaced) / (valid frames of the mixed video),
or, with saliency on, the share of the mixed video's (detached) saliency attention mass that
falls on the replaced frames. The music-to-video direction keeps one-hot targets.

Reconstruction (docs/methods.md): the span distribution and its range, the mixing probability, the
partner choice (uniform over the other local samples), the zero-initialised linear saliency
scorer and the saliency-weighted target are our choices, all config keys; the paper body could
not be checked. Self-training rounds and back retrieval live outside the model: they produce
the per-pair `batch["weight"]` (pseudo-label weights), passed to the loss as `weights` (a
mixed row keeps the weight of its sample A).
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from losses.contrastive import LogitScale, info_nce_loss
from losses.distributed import gather_sizes, world_and_rank
from models.base import RetrievalModule
from models.encoders import TemporalEncoder

MIX_DISTRIBUTIONS = ("uniform", "beta")

# The `model` dict schema with its defaults (mirrors lightning_app.config.methods.SSVMRConfig).
_ENCODER_DEFAULTS = {"kind": "transformer", "d_model": 256, "layers": 2, "heads": 4,
                     "dropout": 0.1}
_MODEL_DEFAULTS: dict[str, Any] = {
    "video_dim": 512,
    "music_dim": 128,
    "embed_dim": 256,
    "video_encoder": _ENCODER_DEFAULTS,
    "music_encoder": _ENCODER_DEFAULTS,
    "temperature": 0.07,
    "learnable_temperature": True,
    "saliency": True,
    "mixing": {
        "enabled": True,
        "prob": 0.5,
        "min_span": 0.1,
        "max_span": 0.5,
        "distribution": "uniform",
        "beta_a": 2.0,
        "beta_b": 2.0,
    },
}


def default_model_config() -> dict[str, Any]:
    """A fresh copy of the `model` dict with every key at its default."""
    return copy.deepcopy(_MODEL_DEFAULTS)


def _merge(defaults: dict[str, Any], given: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown SSVMR {where} keys: {', '.join(unknown)}")
    out = {}
    for key, default in defaults.items():
        value = given.get(key, default)
        if isinstance(default, dict):
            value = _merge(default, dict(value), f"{where}.{key}")
        out[key] = value
    return out


def _validate(cfg: dict[str, Any]) -> None:
    mix = cfg["mixing"]
    checks = (
        ("temperature", cfg["temperature"] > 0, "must be > 0"),
        ("mixing.prob", 0.0 <= mix["prob"] <= 1.0, "must be in [0, 1]"),
        ("mixing.min_span", 0.0 < mix["min_span"] <= mix["max_span"] <= 1.0,
         "needs 0 < min_span <= max_span <= 1"),
        ("mixing.distribution", mix["distribution"] in MIX_DISTRIBUTIONS,
         f"choose from: {', '.join(MIX_DISTRIBUTIONS)}"),
        ("mixing.beta_a", mix["beta_a"] > 0 and mix["beta_b"] > 0, "beta_a, beta_b must be > 0"),
    )
    for key, ok, why in checks:
        if not ok:
            raise ValueError(f"SSVMR model.{key}: {why}")


# ----- saliency pooling ---------------------------------------------------------------------


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


# ----- span mixing (pure helpers) -----------------------------------------------------------


class MixPlan(NamedTuple):
    """One mixing draw for a local batch: per sample A, its partner index, span start and span
    length in frames ([B] long each). Length 0 means "not mixed"."""

    partner: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor


def mixed_positions(mask: torch.Tensor, partner: torch.Tensor, start: torch.Tensor,
                    length: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: positions t in [start, start + length) (clipped to T) where the partner has
    a valid frame, i.e. the frames that `span_mix` takes from the partner."""
    t = torch.arange(mask.shape[1], device=mask.device)
    start, length = start.to(mask.device), length.to(mask.device)
    in_span = (t >= start[:, None]) & (t < (start + length)[:, None])
    return in_span & mask[partner.to(mask.device)]


def span_mix(video: torch.Tensor, mask: torch.Tensor, partner: torch.Tensor,
             start: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-aligned span mixing of a batch.

    Args:
        video: [B, T, D] frames; mask: [B, T] bool valid frames.
        partner: [B] long, the batch index of each sample's partner B.
        start, length: [B] long, the span [start, start + length) in frames (length 0: no mix;
            a span running past T is clipped).

    Returns:
        (mixed_video, mixed_mask): row i equals video i except at the positions of
        `mixed_positions` (inside the span and valid in the partner), which hold the partner's
        frames at the same time index and are valid. Where the partner is shorter than the span,
        sample i keeps its own frames and mask. `mixed_mask = mask | replaced`; spans drawn by
        `sample_mix_plan` lie inside A's valid frames, so there the mask is unchanged.
    """
    replaced = mixed_positions(mask, partner, start, length)
    mixed = torch.where(replaced.unsqueeze(-1), video[partner.to(video.device)], video)
    return mixed, mask | replaced


def partner_share(replaced: torch.Tensor, mixed_mask: torch.Tensor,
                  saliency: torch.Tensor | None = None) -> torch.Tensor:
    """[B] float32 target weight of the partner's music.

    Without saliency: replaced frames / valid frames of the mixed video (L / T_A). With
    saliency ([B, T] attention of the mixed video, treated as a constant): the attention mass on
    the replaced frames over the mass on all valid frames. 0 for unmixed rows.
    """
    if saliency is None:
        num = replaced.sum(1).float()
        den = mixed_mask.sum(1).float()
    else:
        s = saliency.detach().float()
        num = (s * replaced).sum(1)
        den = (s * mixed_mask).sum(1)
    return (num / den.clamp_min(torch.finfo(torch.float32).tiny)).clamp(0.0, 1.0)


def mixing_targets(replaced: torch.Tensor, mixed_mask: torch.Tensor, partner: torch.Tensor,
                   offset: int = 0, n_global: int | None = None,
                   saliency: torch.Tensor | None = None) -> torch.Tensor:
    """Soft video-to-music targets [B_local, N_global] (float32, rows sum to 1).

    Row i puts 1 - w_i on its own music (global column offset + i) and w_i on its partner's
    (offset + partner_i), w = `partner_share(replaced, mixed_mask, saliency)`; unmixed rows are
    one-hot. `offset` is the number of rows held by lower ranks, `n_global` the global batch
    size (default: the local one, i.e. a single process).
    """
    b = replaced.shape[0]
    n_global = b if n_global is None else n_global
    if offset < 0 or offset + b > n_global:
        raise ValueError(f"rows [{offset}, {offset + b}) do not fit a global batch of {n_global}")
    w = partner_share(replaced, mixed_mask, saliency)
    rows = torch.arange(b, device=replaced.device)
    partner = partner.to(replaced.device)
    target = torch.zeros(b, n_global, device=replaced.device, dtype=torch.float32)
    target.index_put_((rows, offset + rows), 1.0 - w, accumulate=True)
    target.index_put_((rows, offset + partner), w, accumulate=True)
    return target


def sample_mix_plan(mask: torch.Tensor, prob: float, min_span: float, max_span: float,
                    distribution: str = "uniform", beta_a: float = 2.0,
                    beta_b: float = 2.0) -> MixPlan:
    """Draw a `MixPlan` for a batch with left-aligned masks [B, T] (torch's global RNG, on CPU).

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


def _global_layout(b: int, device: torch.device) -> tuple[int, int]:
    """(offset of this rank's rows, global batch size); gathers the local sizes under DDP."""
    world, rank = world_and_rank()
    if world == 1:
        return 0, b
    sizes = gather_sizes(b, device, world)
    return sum(sizes[:rank]), sum(sizes)


# ----- the model ----------------------------------------------------------------------------


class SSVMR(RetrievalModule):
    def __init__(self, model: dict[str, Any], optim: dict[str, Any]):
        super().__init__(optim)
        cfg = _merge(_MODEL_DEFAULTS, dict(model), "model")
        _validate(cfg)
        # Plain dicts (defaults filled in), so checkpoints reload with weights_only=True.
        self.save_hyperparameters({"model": cfg, "optim": dict(optim)})
        self.cfg, self.mix = cfg, cfg["mixing"]
        self.video_encoder = TemporalEncoder(cfg["video_dim"], **cfg["video_encoder"])
        self.music_encoder = TemporalEncoder(cfg["music_dim"], **cfg["music_encoder"])
        d = self.video_encoder.out_dim
        self.saliency = SaliencyPool(d) if cfg["saliency"] else None
        self.video_proj = nn.Linear(d, cfg["embed_dim"])
        self.music_proj = nn.Linear(self.music_encoder.out_dim, cfg["embed_dim"])
        self.logit_scale = LogitScale(cfg["temperature"], cfg["learnable_temperature"])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Past the cap the clamp passes no gradient, so pull the parameter back (as CLIP does).
        self.logit_scale.clamp_()

    # ----- embeddings -----------------------------------------------------------------------

    def video_features(self, video: torch.Tensor,
                       mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(L2-normalised embeddings [B, E], saliency attention [B, T] or None without it)."""
        if self.saliency is None:
            h, attn = self.video_encoder(video, mask), None
        else:
            h, attn = self.saliency(self.video_encoder.frames(video, mask), mask)
        return F.normalize(self.video_proj(h), dim=-1), attn

    def encode_video(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.video_features(batch["video"], batch["video_mask"])[0]

    def video_saliency(self, batch: dict[str, Any]) -> torch.Tensor:
        """Per-frame saliency attention [B, T] (rows sum to 1 over the valid frames)."""
        if self.saliency is None:
            raise RuntimeError("SSVMR was built with saliency=false: no saliency to report")
        return self.video_features(batch["video"], batch["video_mask"])[1]

    def encode_music(self, batch: dict[str, Any]) -> torch.Tensor:
        h = self.music_encoder(batch["music"], batch["music_mask"])
        return F.normalize(self.music_proj(h), dim=-1)

    # ----- loss -----------------------------------------------------------------------------

    def loss(self, batch: dict[str, Any], video: torch.Tensor, music: torch.Tensor,
             soft_targets: Any = None) -> dict:
        scale = self.logit_scale()
        nce = info_nce_loss(video, music, scale, weights=batch.get("weight"),
                            soft_targets=soft_targets)
        return {"loss": nce, "nce": nce, "temperature": 1.0 / scale.detach()}

    def mixing_active(self) -> bool:
        return bool(self.training and self.mix["enabled"] and self.mix["prob"] > 0)

    def sample_plan(self, mask: torch.Tensor) -> MixPlan:
        m = self.mix
        return sample_mix_plan(mask, m["prob"], m["min_span"], m["max_span"], m["distribution"],
                               m["beta_a"], m["beta_b"])

    def train_loss(self, batch: dict[str, Any], plan: MixPlan | None = None) -> dict:
        """The training loss parts. Mixes when `plan` is given, or when training with mixing on
        (a plan is then drawn); otherwise plain InfoNCE on the batch's own embeddings."""
        music = self.encode_music(batch)
        if plan is None and not self.mixing_active():
            return self.loss(batch, self.encode_video(batch), music)
        video, mask = batch["video"], batch["video_mask"]
        if plan is None:
            plan = self.sample_plan(mask)
        offset, n_global = _global_layout(video.shape[0], video.device)  # same calls on all ranks
        mixed, mixed_mask = span_mix(video, mask, *plan)
        emb, attn = self.video_features(mixed, mixed_mask)
        replaced = mixed_positions(mask, *plan)
        targets = mixing_targets(replaced, mixed_mask, plan.partner, offset, n_global,
                                 None if attn is None else attn.detach())
        parts = self.loss(batch, emb, music, soft_targets=(targets, None))
        is_mixed = replaced.any(1)
        n_mixed = is_mixed.sum().clamp_min(1).float()
        span = replaced.sum(1).float() / mixed_mask.sum(1).clamp_min(1).float()
        share = partner_share(replaced, mixed_mask, attn)
        parts["mix_frac"] = is_mixed.float().mean()
        parts["mix_span"] = (span * is_mixed).sum() / n_mixed
        parts["mix_weight"] = (share * is_mixed).sum() / n_mixed
        return parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        parts = self.train_loss(batch)
        bs = batch["video"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "loss"}, batch_size=bs)
        self.log("train/loss", parts["loss"], batch_size=bs, prog_bar=True)
        return parts["loss"]
