"""VM-NET (Hong, Im, Yang, ICMR 2018), as released in the authors' TensorFlow code.

Two-branch MLP into a 512-d L2-normalised space. Music: FC 2048, ReLU, dropout, FC 1024,
ReLU, dropout, FC 512, BatchNorm. Video: FC 2048, ReLU, dropout, FC 512, BatchNorm.
He (truncated normal) initialisation. Loss: 3 L_mv + 1 L_vm + 0.2 L_struct(music)
+ 0.2 L_struct(video) (inter-modal top-Q ranking, soft intra-modal structure).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from losses.margin import cmgsd_margins, cmgsd_ranking_loss, lambda_ramp
from losses.ranking import global_inter_modal_ranking_loss, inter_modal_ranking_loss
from losses.structure import soft_intra_modal_structure_loss
from models.base import RetrievalModule
from models.cmgsd_sources import EMABranches, MarginHeads, pre_projection, pre_projection_dim
from models.pooling import masked_pool, pooled_dim

# loss.margin values that use CMGSD's terms (the adaptive loss and its matched control).
CMGSD_MARGINS = ("adaptive", "fixed_matched")


def he_truncated_normal_(linear: nn.Linear) -> None:
    """TF's variance-scaling init: truncated normal (2 std) with std sqrt(2 / fan_in)."""
    std = math.sqrt(2.0 / linear.in_features)
    nn.init.trunc_normal_(linear.weight, std=std, a=-2 * std, b=2 * std)
    nn.init.zeros_(linear.bias)


def branch(in_dim: int, hidden: list[int], out_dim: int, dropout: float, linear: bool,
           bn_eps: float, bn_momentum: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(nn.Linear(in_dim, width))
        if not linear:
            layers.append(nn.ReLU())
        layers.append(nn.Dropout(dropout))
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    layers.append(nn.BatchNorm1d(out_dim, eps=bn_eps, momentum=bn_momentum))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            he_truncated_normal_(layer)
    return nn.Sequential(*layers)


class VMNet(RetrievalModule):
    def __init__(self, model: dict[str, Any], loss: dict[str, Any], optim: dict[str, Any]):
        super().__init__(optim)
        # Plain dicts, so checkpoints reload with weights_only=True.
        self.save_hyperparameters({"model": model, "loss": loss, "optim": optim})
        self.cfg, self.loss_cfg = dict(model), dict(loss)
        common = {"dropout": model["dropout"], "linear": model["is_linear"],
                  "bn_eps": model["bn_eps"], "bn_momentum": model["bn_momentum"]}
        self.video_pooling = model["video_pooling"]
        video_in = pooled_dim(model["video_dim"], self.video_pooling)
        embed = model["embed_dim"]
        self.music_net = branch(model["music_dim"], model["music_hidden"], embed, **common)
        self.video_net = branch(video_in, model["video_hidden"], embed, **common)
        # CMGSD's dynamic source (models.cmgsd_sources); older checkpoints lack the keys.
        m = self.loss_cfg.get("cmgsd", {})
        self.dynamic_source = m.get("dynamic_source", "joint")
        if loss["margin"] == "adaptive" and self.dynamic_source == "heads":
            self.margin_heads = MarginHeads(
                pre_projection_dim(self.video_net, video_in),
                pre_projection_dim(self.music_net, model["music_dim"]),
                m["head_dim"], m["head_dropout"])
        if loss["margin"] == "adaptive" and self.dynamic_source == "ema":
            self.margin_ema = EMABranches(self.video_net, self.music_net, m["ema_decay"])
        # Set by the margin-statistics callback: keep the last training batch's distances and
        # margin matrices (detached) for measuring; never read by the loss.
        self.record_margins = False
        self.margin_record: dict[str, Any] | None = None

    def video_input(self, batch: dict[str, Any]) -> torch.Tensor:
        return masked_pool(batch["video"], batch["video_mask"], self.video_pooling)

    def music_input(self, batch: dict[str, Any]) -> torch.Tensor:
        # Music is one vector per track; frame sequences are averaged.
        return masked_pool(batch["music"], batch["music_mask"], "mean")

    def encode_video(self, batch: dict[str, Any]) -> torch.Tensor:
        return F.normalize(self.video_net(self.video_input(batch)), dim=-1)

    def encode_music(self, batch: dict[str, Any]) -> torch.Tensor:
        return F.normalize(self.music_net(self.music_input(batch)), dim=-1)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if hasattr(self, "margin_ema"):
            self.margin_ema.update(self.video_net, self.music_net)

    def ranking_loss(self, batch: dict[str, Any], video: torch.Tensor, music: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(L_mv, L_vm, extra parts): a fixed margin, or CMGSD's terms (adaptive / matched).

        The fixed-margin loss ranks against the global batch when several processes train
        (identical to one process on the whole batch). CMGSD's margins and the structure
        loss stay per process: they need each process's own features, and the structure
        loss only looks at the first K samples anyway.
        """
        c = self.loss_cfg
        if c["margin"] not in CMGSD_MARGINS:
            ranking = global_inter_modal_ranking_loss(music, video, c["num_negatives"], c["margin"])
            if self.record_margins and self.training:
                self._record(music, video, {"fixed": torch.full(
                    (video.shape[0],) * 2, float(c["margin"]), device=video.device)})
            return (*ranking, {})
        m = c["cmgsd"]
        lam = lambda_ramp(self.current_epoch, m["ramp_epochs"])
        # The frozen raw inputs stand in for CMGSD's static expert.
        static = None
        if m["static"]:
            static = torch.cat([F.normalize(self.video_input(batch), dim=-1),
                                F.normalize(self.music_input(batch), dim=-1)], dim=-1)
        matched = c["margin"] == "fixed_matched"
        extra: dict[str, torch.Tensor] = {"cmgsd_lambda": torch.tensor(lam)}
        if matched:
            v_feats, m_feats = video.detach(), music.detach()  # unused: every margin is fixed
        else:
            v_feats, m_feats, extra = self._dynamic_features(batch, video, music, extra)
        kw = {"zscore": m.get("zscore", "batch"), "max_margin": m.get("max_margin"),
              "normalize_terms": m.get("normalize_terms", False), "matched": matched}
        l_mv, l_vm = cmgsd_ranking_loss(
            music, video, v_feats, m_feats, lam, c["num_negatives"],
            m["fixed_margin"], m["alpha"], m["beta"], static_feats=static, **kw,
        )
        if self.record_margins and self.training:
            margins = cmgsd_margins(v_feats, m_feats, m["fixed_margin"], m["alpha"], m["beta"],
                                    static, kw["zscore"], kw["max_margin"], matched)
            self._record(music, video, dict(zip(("fixed", "video", "music", "static"), margins)))
        return l_mv, l_vm, extra

    def _dynamic_features(self, batch: dict[str, Any], video: torch.Tensor,
                          music: torch.Tensor, extra: dict[str, torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(video-side, music-side) features for the margins, per `dynamic_source`."""
        if self.dynamic_source == "ema":
            v, m = self.margin_ema.embed(self.video_input(batch), self.music_input(batch))
            return v, m, extra
        if self.dynamic_source == "heads":
            # Detached inputs: the heads learn from the pairs without moving the backbone.
            with torch.no_grad():
                v_pre = pre_projection(self.video_net, self.video_input(batch))
                m_pre = pre_projection(self.music_net, self.music_input(batch))
            v, m = self.margin_heads(v_pre, m_pre)
            c = self.loss_cfg
            h_mv, h_vm = inter_modal_ranking_loss(m, v, c["num_negatives"],
                                                  c["cmgsd"]["fixed_margin"])
            return v.detach(), m.detach(), {**extra, "head_rank": h_mv + h_vm}
        return video.detach(), music.detach(), extra

    def _record(self, music: torch.Tensor, video: torch.Tensor,
                margins: dict[str, torch.Tensor]) -> None:
        self.margin_record = {"dist_mv": -(music.detach().float() @ video.detach().float().T),
                              "margins": {k: v.detach() for k, v in margins.items()},
                              "num_negatives": int(self.loss_cfg["num_negatives"])}

    def loss(self, batch: dict[str, Any], video: torch.Tensor, music: torch.Tensor) -> dict:
        c = self.loss_cfg
        l_mv, l_vm, extra = self.ranking_loss(batch, video, music)
        s_music = soft_intra_modal_structure_loss(self.music_input(batch), music, c["structure_k"])
        s_video = soft_intra_modal_structure_loss(self.video_input(batch), video, c["structure_k"])
        total = (c["music_to_video_weight"] * l_mv + c["video_to_music_weight"] * l_vm
                 + c["structure_music_weight"] * s_music + c["structure_video_weight"] * s_video)
        if "head_rank" in extra:  # the margin heads' own loss (no gradient reaches the branches)
            total = total + extra["head_rank"]
        return {"loss": total, "rank_mv": l_mv, "rank_vm": l_vm,
                "struct_music": s_music, "struct_video": s_video, **extra}
