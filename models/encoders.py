"""Sequence encoders shared by II-CLVM / II-CLVTM (and SSVMR): frames [B, T, D] -> [B, d].

`transformer`: input projection, sinusoidal positions, pre-norm Transformer encoder with a
padding mask, masked mean pooling (`frames` returns the per-frame features before pooling,
e.g. for SSVMR's saliency attention). `mean`: projection and masked mean (the baseline).
`bilstm`: a bidirectional LSTM over the projected frames, masked mean of its outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.pooling import masked_pool

ENCODERS = ("transformer", "mean", "bilstm")


class SinusoidalPositions(nn.Module):
    def __init__(self, dim: int, max_len: int = 4096):
        super().__init__()
        pos = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        table = torch.zeros(max_len, dim)
        table[:, 0::2] = torch.sin(pos * div)
        table[:, 1::2] = torch.cos(pos * div[: dim // 2])
        self.register_buffer("table", table, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.table.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} frames exceeds {self.table.shape[0]}")
        return x + self.table[: x.shape[1]].to(x.dtype)


class TemporalEncoder(nn.Module):
    def __init__(self, in_dim: int, d_model: int = 256, kind: str = "transformer",
                 layers: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        if kind not in ENCODERS:
            raise ValueError(f"unknown encoder {kind!r} (choose from: {', '.join(ENCODERS)})")
        self.kind = kind
        self.project = nn.Sequential(nn.Linear(in_dim, d_model), nn.LayerNorm(d_model))
        self.out_dim = d_model
        if kind == "transformer":
            self.positions = SinusoidalPositions(d_model)
            layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout,
                                               batch_first=True, norm_first=True)
            self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d_model)
        elif kind == "bilstm":
            self.body = nn.LSTM(d_model, d_model // 2, num_layers=layers, batch_first=True,
                                bidirectional=True, dropout=dropout if layers > 1 else 0.0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, in_dim] frames, [B, T] bool mask -> [B, d_model] (masked mean of `frames`)."""
        return masked_pool(self.frames(x, mask), mask, "mean")

    def frames(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-frame features [B, T, d_model] before pooling (padded rows hold no meaning)."""
        h = self.project(x)
        if self.kind == "transformer":
            h = self.body(self.positions(h), src_key_padding_mask=~mask)
            h = self.norm(h)
        elif self.kind == "bilstm":
            # Packing keeps the backward direction from reading the padding first.
            lengths = mask.sum(1).clamp_min(1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(h, lengths, batch_first=True,
                                                       enforce_sorted=False)
            h, _ = self.body(packed)
            h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True,
                                                    total_length=mask.shape[1])
        return h
