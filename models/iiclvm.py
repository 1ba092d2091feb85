"""II-CLVM and II-CLVTM (Chen et al., arXiv 2407.19415, 2024).

Dual encoder over frame sequences (YouTube-8M style video and audio features), projected to
a shared space and trained with symmetric InfoNCE (global batch across processes), plus the
inter-intra (II) loss: per modality, keep the similarity structure of the pooled raw inputs
in the embeddings, which stops the model from overfitting false negatives (unpaired items
that fit each other). II-CLVTM adds text found in the video as a further video-side input,
fused with the video before the projection; the II term then also covers the text side.

Reconstruction (docs/methods.md): encoder kind, temperature, II variant and weights are config
keys; the paper body could not be checked.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from losses.contrastive import LogitScale, info_nce_loss
from losses.inter_intra import inter_intra_loss
from models.base import RetrievalModule
from models.encoders import TemporalEncoder
from models.pooling import masked_pool
from models.text import HashedTextEncoder, bag_of_tokens, bucket_tokens, hash_tokens

# Raw-text side of the II loss: token counts in this many buckets (a cheap bag of words).
RAW_TEXT_BUCKETS = 1024


class IICLVM(RetrievalModule):
    def __init__(self, model: dict[str, Any], ii_loss: dict[str, Any], optim: dict[str, Any]):
        super().__init__(optim)
        # Plain dicts, so checkpoints reload with weights_only=True.
        self.save_hyperparameters({"model": model, "ii_loss": ii_loss, "optim": optim})
        self.cfg, self.ii = dict(model), dict(ii_loss)
        venc, menc = model["video_encoder"], model["music_encoder"]
        self.video_encoder = TemporalEncoder(model["video_dim"], **venc)
        self.music_encoder = TemporalEncoder(model["music_dim"], **menc)
        d = self.video_encoder.out_dim
        text = model["text"]
        self.text_source = text["source"] if text["enabled"] else None
        if self.text_source == "hashed":
            self.text_encoder: nn.Module = HashedTextEncoder(text["buckets"], d)
        elif self.text_source == "precomputed":
            self.text_encoder = nn.Sequential(nn.Linear(text["dim"], d), nn.GELU(), nn.Linear(d, d))
        if self.text_source:
            self.fuse = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.LayerNorm(d))
            self.text_proj = nn.Linear(d, model["embed_dim"])
        self.video_proj = nn.Linear(d, model["embed_dim"])
        self.music_proj = nn.Linear(self.music_encoder.out_dim, model["embed_dim"])
        self.logit_scale = LogitScale(model["temperature"], model["learnable_temperature"])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Past the cap the clamp passes no gradient, so pull the parameter back (as CLIP does).
        self.logit_scale.clamp_()

    # ----- text -----------------------------------------------------------------------------

    def _text(self, batch: dict[str, Any]) -> torch.Tensor:
        """Text features [B, d]."""
        if self.text_source == "precomputed":
            return self.text_encoder(self._text_raw(batch))
        return self.text_encoder(*self._token_ids(batch))

    def _text_raw(self, batch: dict[str, Any]) -> torch.Tensor:
        """The raw text representation of the II loss [B, R] (no parameters involved)."""
        if self.text_source == "precomputed":
            if "text_emb" not in batch:
                raise KeyError("model.iiclvm.text.source=precomputed needs `text_emb` in the batch")
            emb = batch["text_emb"]  # stored in half precision: at least float32
            return emb.to(torch.promote_types(emb.dtype, torch.float32))
        return bag_of_tokens(self._token_ids(batch)[0], RAW_TEXT_BUCKETS)

    def _token_ids(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.cfg["text"]
        if "text_tokens" in batch:  # in-memory batches carry token hashes, not strings
            ids, mask = bucket_tokens(batch["text_tokens"], t["buckets"], t["max_tokens"])
            return ids.to(self.device), mask.to(self.device)
        if "text" not in batch:
            raise KeyError("model.iiclvm.text.enabled=true needs `text` in the batch")
        ids, mask = hash_tokens(list(batch["text"]), t["buckets"], t["max_tokens"])
        return ids.to(self.device), mask.to(self.device)

    # ----- embeddings -----------------------------------------------------------------------

    def encode_video(self, batch: dict[str, Any]) -> torch.Tensor:
        h = self.video_encoder(batch["video"], batch["video_mask"])
        if self.text_source:
            h = self.fuse(torch.cat([h, self._text(batch)], dim=-1))
        return F.normalize(self.video_proj(h), dim=-1)

    def encode_music(self, batch: dict[str, Any]) -> torch.Tensor:
        h = self.music_encoder(batch["music"], batch["music_mask"])
        return F.normalize(self.music_proj(h), dim=-1)

    # ----- loss -----------------------------------------------------------------------------

    def _text_ii_active(self) -> bool:
        ii = self.ii
        return bool(self.text_source and ii["weight"] > 0 and ii["text_weight"] > 0)

    def text_embedding(self, batch: dict[str, Any]) -> torch.Tensor:
        """The text side's own embedding [B, E] (the II loss's text term)."""
        return F.normalize(self.text_proj(self._text(batch)), dim=-1)

    def embed_pair(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = super().embed_pair(batch)
        if self._text_ii_active():
            out["text"] = self.text_embedding(batch)
        return out

    def training_loss(self, batch: dict[str, Any], embed: Any) -> dict:
        out = embed(self.embed_pair, batch)
        return self.loss(batch, out["video"], out["music"], text=out.get("text"))

    def loss(self, batch: dict[str, Any], video: torch.Tensor, music: torch.Tensor,
             text: torch.Tensor | None = None) -> dict:
        """`text`: the text embeddings when already computed (else computed here)."""
        scale = self.logit_scale()
        nce = info_nce_loss(video, music, scale, weights=batch.get("weight"))
        parts: dict[str, torch.Tensor] = {"nce": nce, "temperature": 1.0 / scale.detach()}
        total = nce
        ii = self.ii
        if ii["weight"] > 0:
            kw = {"variant": ii["variant"], "temperature": ii["temperature"], "k": ii["k"],
                  "center": ii.get("center", "none")}  # older checkpoints lack `center`
            terms: dict[str, tuple[float, torch.Tensor]] = {}
            if ii["video_weight"] > 0:
                raw = masked_pool(batch["video"], batch["video_mask"], "mean")
                terms["video"] = (ii["video_weight"], inter_intra_loss(raw, video, **kw))
            if ii["music_weight"] > 0:
                raw = masked_pool(batch["music"], batch["music_mask"], "mean")
                terms["music"] = (ii["music_weight"], inter_intra_loss(raw, music, **kw))
            if self.text_source and ii["text_weight"] > 0:
                raw = self._text_raw(batch)
                emb = self.text_embedding(batch) if text is None else text
                terms["text"] = (ii["text_weight"], inter_intra_loss(raw, emb, **kw))
            if terms:  # every per-modality weight 0: nothing to add
                ii_total = sum(w * term for w, term in terms.values())
                parts.update({f"ii_{name}": term for name, (_, term) in terms.items()})
                parts["ii"] = ii_total
                total = total + ii["weight"] * ii_total
        parts["loss"] = total
        return parts
