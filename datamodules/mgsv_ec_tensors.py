"""Loading one MGSV-EC feature/mask pair of .pt files: only the valid rows come out.

Each file holds one bare tensor (torch.save). Loading is safe (`weights_only=True`, which
refuses pickled code) and always onto the CPU (the release's tensors were most likely saved
from the GPU). A mask entry != 0 marks a real frame/window; bool, integer and float masks are
accepted. Padded rows are never assumed to be zero (the extraction embedded black frames and
silence there), so they are dropped here and never reach the store or a model. Features are
cast to float32 (float16 would load too); a mask may be a view into a larger saved storage,
so everything returned is a fresh copy.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from datamodules.errors import DataError
from datamodules.mgsv_ec_layout import feature_path


def load_tensor(path: Path) -> torch.Tensor:
    """The one tensor saved in `path`, or a one-line DataError naming the file."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except Exception as e:  # zip, pickle and storage errors all mean a damaged file
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DataError(f"{path}: cannot load ({type(e).__name__}: {reason})") from None
    if not isinstance(obj, torch.Tensor):
        raise DataError(f"{path}: holds a {type(obj).__name__}, expected one tensor")
    return obj


def load_valid(parent: Path, side: str, key: str, dim: int) -> np.ndarray:
    """The valid rows of `<key>.pt` under `side`'s feature folder: float32 [n_valid, dim]."""
    feat_path = feature_path(parent, side, "feature", key)
    mask_path = feature_path(parent, side, "mask", key)
    feat, mask = load_tensor(feat_path), load_tensor(mask_path)
    if feat.dim() != 2 or feat.shape[1] != dim or feat.shape[0] == 0:
        raise DataError(f"{feat_path}: shape {tuple(feat.shape)}, expected (frames, {dim})")
    if not feat.is_floating_point():
        raise DataError(f"{feat_path}: dtype {feat.dtype}, expected floating-point features")
    if mask.dim() != 1 or mask.shape[0] != feat.shape[0]:
        raise DataError(f"{mask_path}: shape {tuple(mask.shape)}, expected ({feat.shape[0]},) "
                        f"to match {feat_path.name}")
    if mask.is_complex():
        raise DataError(f"{mask_path}: dtype {mask.dtype}, expected a 0/1 mask")
    valid = (mask != 0).numpy().copy()
    if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
        raise DataError(f"{mask_path}: NaN or inf in the mask")
    if not valid.any():
        raise DataError(f"{mask_path}: no valid {'frame' if side == 'video' else 'window'} "
                        "(all mask entries are 0)")
    rows = feat.float().numpy()[valid]  # boolean indexing copies: nothing shares the file
    if not np.isfinite(rows).all():
        raise DataError(f"{feat_path}: NaN or inf in a valid row")
    return np.ascontiguousarray(rows, dtype=np.float32)


class TrackCache:
    """Tracks' valid windows, kept while they fit in `max_bytes` (least recently used out).

    Many videos share a track, in no particular order; the release's 4,050 tracks take about
    0.7 GB as valid float32 windows, so with the default budget each is read once.
    """

    def __init__(self, parent: Path, dim: int, max_bytes: int = 1 << 30):
        self.parent, self.dim, self.max_bytes = parent, dim, max_bytes
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self.loads = 0  # files read (for tests and logs)

    def __call__(self, music_id: str) -> np.ndarray:
        if music_id in self._cache:
            self._cache.move_to_end(music_id)
            return self._cache[music_id]
        arr = load_valid(self.parent, "music", music_id, self.dim)
        self.loads += 1
        self._cache[music_id] = arr
        self._bytes += arr.nbytes
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes
        return arr
