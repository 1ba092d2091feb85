"""Text found in a video (OCR, captions) for II-CLVTM: hashed tokens, no vocabulary file.

Tokens are lower-cased alphanumeric runs hashed with CRC-32 (stable across processes and
runs, unlike Python's `hash`) into a fixed number of buckets; 0 is padding.
"""

from __future__ import annotations

import re
import zlib

import torch
from torch import nn

_TOKEN = re.compile(r"[0-9a-z]+")


def hash_tokens(texts: list[str], buckets: int, max_tokens: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [B, L] in 1..buckets-1 (0 = padding) and the mask [B, L]."""
    rows = [[1 + zlib.crc32(t.encode()) % (buckets - 1) for t in _TOKEN.findall(s.lower())]
            [:max_tokens] for s in texts]
    longest = max(1, max(len(r) for r in rows))
    ids = torch.zeros(len(texts), longest, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, ids != 0


def token_hashes(texts: list[str]) -> torch.Tensor:
    """CRC-32 of each token, int64 [N, T] (T = the most tokens of a text, at least 1; -1 pads):
    the string work of `hash_tokens`, done once per split so batches carry tensors only."""
    rows = [[zlib.crc32(t.encode()) for t in _TOKEN.findall(s.lower())] for s in texts]
    out = torch.full((len(texts), max([1, *map(len, rows)])), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def bucket_tokens(hashes: torch.Tensor, buckets: int, max_tokens: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`hash_tokens`'s ids and mask from `token_hashes` rows (identical values and shape)."""
    hashes = hashes[:, :max_tokens]
    valid = hashes >= 0
    longest = max(1, int(valid.sum(1).max())) if len(hashes) else 1
    ids = torch.where(valid, 1 + hashes % (buckets - 1), 0)[:, :longest]
    return ids, ids != 0


def bag_of_tokens(ids: torch.Tensor, buckets: int) -> torch.Tensor:
    """Token counts [B, buckets] (padding dropped): the raw text side of the II loss."""
    counts = torch.zeros(ids.shape[0], buckets, device=ids.device)
    counts.scatter_add_(1, ids % buckets, torch.ones_like(ids, dtype=counts.dtype))
    counts[:, 0] = 0.0
    return counts


class HashedTextEncoder(nn.Module):
    """Trainable embedding per hash bucket, masked mean, then a small MLP."""

    def __init__(self, buckets: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(buckets, dim, padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).float()
        pooled = (self.embed(ids) * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.mlp(pooled)
