"""SSVMR (Cheng et al., "Saliency-based Self-training for Video-Music Retrieval", ICASSP 2023).

Dual encoder over frame sequences (a `TemporalEncoder` per modality, a linear projection, L2
normalisation) trained with symmetric InfoNCE over the global (all-process) batch, plus the
paper's saliency idea: mix two videos at span level, keeping what matters in both.

Saliency pooling (`saliency: true`): the video side pools its per-frame features with a
learned attention (models.saliency.SaliencyPool), zero-initialised, so training starts from
the masked mean.

Span mixing (training only, from epoch `mixing.start_epoch`; models.span_mixing). Mode
`saliency` (default, after SSMix): per-frame saliency of the CLEAN batch, from the gradient
of the clean loss with respect to the input frames (`saliency_source: gradient`; one extra
backward pass, no parameter update) or from the pooling attention (`attention`); B's most
salient window of `window_frac` of A's length is pasted over A's least salient window.
Mode `random_aligned` (the ablation; the project's first reconstruction): a random span of
[min_span, max_span] of A's length at a random start, taken from B at the same positions.

Both directions see the mixed rows (docs/methods.md, SSVMR): the mixed video's target over
the music batch is soft (A's song 1 - w, B's song w; w = replaced length / A's length, or B's
share of the clean saliency mass with `label_weight: saliency`), and each song's target over
the mixed videos is the same weights read column-wise, normalised. With `keep_clean` (default)
the step loss is the mean of the clean loss and the mixed loss (mixed rows are added, as in
SSMix); without it the mixed rows replace the clean ones. Pair weights from self-training and
back retrieval (`batch["weight"]`) weight row i of both losses (a mixed row keeps A's weight).
A metrics-only `salient` key of synthetic batches, when present, measures how often the pasted
window holds B's planted content and A's content survives; it never enters the loss.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from losses.contrastive import LogitScale, info_nce_loss
from losses.distributed import gather_sizes, world_and_rank
from models.base import RetrievalModule
from models.encoders import TemporalEncoder
from models.grad_cache import DirectEmbedder, Embedder
from models.saliency import SaliencyPool, masked_softmax, rms_saliency
from models.span_mixing import (
    MIX_DISTRIBUTIONS,
    MixPlan,
    content_stats,
    length_share,
    mixed_positions,
    mixing_targets,
    music_to_video_targets,
    saliency_mix_plan,
    saliency_share,
    sample_mix_plan,
    span_mix,
)

__all__ = ["SSVMR", "MixPlan", "default_model_config", "masked_softmax"]

MIX_MODES = ("saliency", "random_aligned")
SALIENCY_SOURCES = ("gradient", "attention")
LABEL_WEIGHTS = ("length", "saliency")

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
        # Off by default: measured no better than no mixing (docs/methods.md, SSVMR).
        "enabled": False,
        "mode": "saliency",
        "saliency_source": "gradient",
        "window_frac": 0.1,
        "label_weight": "length",
        "keep_clean": True,
        "start_epoch": 0,
        "prob": 1.0,
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
        ("mixing.mode", mix["mode"] in MIX_MODES, f"choose from: {', '.join(MIX_MODES)}"),
        ("mixing.saliency_source", mix["saliency_source"] in SALIENCY_SOURCES,
         f"choose from: {', '.join(SALIENCY_SOURCES)}"),
        ("mixing.label_weight", mix["label_weight"] in LABEL_WEIGHTS,
         f"choose from: {', '.join(LABEL_WEIGHTS)}"),
        ("mixing.saliency_source", mix["saliency_source"] != "attention" or cfg["saliency"],
         "'attention' needs model.ssvmr.saliency=true (the attention pooling)"),
        ("mixing.window_frac", 0.0 < mix["window_frac"] < 1.0, "must be in (0, 1)"),
        ("mixing.start_epoch", mix["start_epoch"] >= 0, "must be >= 0"),
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


def _global_layout(b: int, device: torch.device) -> tuple[int, int]:
    """(offset of this rank's rows, global batch size); gathers the local sizes under DDP."""
    world, rank = world_and_rank()
    if world == 1:
        return 0, b
    sizes = gather_sizes(b, device, world)
    return sum(sizes[:rank]), sum(sizes)


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
        m = self.mix
        return bool(self.training and m["enabled"] and m["prob"] > 0
                    and self.current_epoch >= m["start_epoch"])

    def _embed_video(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        emb, attn = self.video_features(batch["video"], batch["video_mask"])
        return {"video": emb} if attn is None else {"video": emb, "attention": attn}

    def _embed_music(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"music": self.encode_music(batch)}

    def train_loss(self, batch: dict[str, Any], plan: MixPlan | None = None) -> dict:
        """`training_loss` with plain autograd (no micro-batches)."""
        return self.training_loss(batch, DirectEmbedder(), plan)

    def training_loss(self, batch: dict[str, Any], embed: Embedder,
                      plan: MixPlan | None = None) -> dict:
        """The training loss parts. Mixes when `plan` is given, or when training with mixing on
        (a plan is then drawn); otherwise plain InfoNCE on the batch's own embeddings.

        Every encoder call goes through `embed` (models.grad_cache), the gradient saliency
        too, so micro-batch accumulation reproduces this whole-batch computation exactly.
        """
        music = embed(self._embed_music, batch)["music"]
        if plan is None and not self.mixing_active():
            return self.loss(batch, embed(self._embed_video, batch)["video"], music)
        m = self.mix
        video, mask = batch["video"], batch["video_mask"]
        offset, n_global = _global_layout(video.shape[0], video.device)  # same calls on all ranks
        needs_saliency = ((m["mode"] == "saliency" and plan is None)
                          or m["label_weight"] == "saliency")
        clean, saliency = None, None
        if m["keep_clean"] or needs_saliency:
            gradient = needs_saliency and m["saliency_source"] == "gradient"
            out = embed(self._embed_video, batch, input_grad="video" if gradient else None)
            clean = self.loss(batch, out["video"], music)
            if gradient:
                saliency = rms_saliency(embed.input_gradient(clean["loss"], out), mask)
            elif needs_saliency:
                saliency = out["attention"].detach()
        if plan is None:
            plan = (saliency_mix_plan(saliency, mask, m["window_frac"], m["prob"])
                    if m["mode"] == "saliency" else
                    sample_mix_plan(mask, m["prob"], m["min_span"], m["max_span"],
                                    m["distribution"], m["beta_a"], m["beta_b"]))
        mixed, mixed_mask = span_mix(video, mask, *plan)
        replaced = mixed_positions(mask, *plan)
        share = (saliency_share(saliency, mask, *plan) if m["label_weight"] == "saliency"
                 else length_share(replaced, mixed_mask))
        v2m = mixing_targets(share, plan.partner, offset, n_global)
        emb = embed(self._embed_video, {"video": mixed, "video_mask": mixed_mask})["video"]
        parts = self.loss(batch, emb, music,
                          soft_targets=(v2m, music_to_video_targets(v2m, offset)))
        if clean is not None and m["keep_clean"]:
            parts = {"loss": (clean["loss"] + parts["loss"]) / 2, "nce": clean["nce"],
                     "nce_mixed": parts["nce"], "temperature": parts["temperature"]}
        parts.update(self._mix_stats(batch, mask, plan, replaced, mixed_mask, share))
        return parts

    def _mix_stats(self, batch: dict[str, Any], mask: torch.Tensor, plan: MixPlan,
                   replaced: torch.Tensor, mixed_mask: torch.Tensor,
                   share: torch.Tensor) -> dict[str, torch.Tensor]:
        is_mixed = replaced.any(1)
        n_mixed = is_mixed.sum().clamp_min(1).float()
        span = replaced.sum(1).float() / mixed_mask.sum(1).clamp_min(1).float()
        stats = {"mix_frac": is_mixed.float().mean(),
                 "mix_span": (span * is_mixed).sum() / n_mixed,
                 "mix_weight": (share * is_mixed).sum() / n_mixed}
        salient = batch.get("salient")
        if salient is not None and tuple(salient.shape) == tuple(mask.shape):
            b_content, a_survives = content_stats(salient, mask, plan)
            stats["mix/b_content"] = (b_content & is_mixed).sum() / n_mixed
            stats["mix/a_survives"] = (a_survives & is_mixed).sum() / n_mixed
        return {k: v.detach() for k, v in stats.items()}

    def log_train(self, parts: dict[str, torch.Tensor], batch_size: int) -> None:
        parts = dict(parts)
        for key in ("mix/b_content", "mix/a_survives"):  # per-epoch fractions of mixed rows
            if key in parts:
                mixed_rows = max(1, int(round(float(parts["mix_frac"]) * batch_size)))
                self.log(f"train/{key}", parts.pop(key), on_step=False, on_epoch=True,
                         batch_size=mixed_rows)
        super().log_train(parts, batch_size)
