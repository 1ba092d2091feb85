"""A store split held in (device or host) memory as stored, batched there.

`DeviceSplit` keeps one split's frame arrays as torch tensors in the store's dtype (uint8
codes, float16, float32), with per-item offsets and lengths, on a torch device: the GPU
(`data.cache=device`) or host RAM (`data.cache=host`). A batch is then one row gather per
modality (torch kernels on a GPU; on the host one fused numba pass per modality into a
recycled array, datamodules.host_gather and batch_buffers), Global-Sparse sampled and
dequantised where the data lives; nothing goes through a worker process or a host-to-device
copy of frames. The arrays are read in on the first batch, in chunks, so a split that fits
the device need not fit the host's RAM twice.

Batches are bit-identical to the memory-mapped NumPy path (datamodules.pairs,
datamodules.sampling): the gathers copy the same stored values, casting to float32 is exact,
dequantisation is the same two float32 roundings (x * scale, then + offset), and training
samples frames from the same uniform draws (NumPy's generator, drawn on the host as before:
a [B, frames] float64 array per modality), so a seed and a resumed run give the same frames
as the memory-mapped path with `data.num_workers=0` (with workers, that path draws from each
worker's own stream).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from datamodules.batch_buffers import BufferPool
from datamodules.feature_store import StoreSplit


class DeviceSplit:
    """One split's frames, offsets and lengths as tensors on `device` (dtype as stored)."""

    def __init__(self, split: StoreSplit, device: torch.device | str,
                 salient: np.ndarray | None = None):
        self.device = torch.device(device)
        self.split = split.split
        self.dims = {m: spec.dim for m, spec in split.modalities.items()}
        self.dequantize = {m: spec.dequantize for m, spec in split.modalities.items()}
        self._source = split.arrays  # memory-mapped; read into memory on first use
        self._arrays: dict[str, torch.Tensor] | None = None
        self._dequantize_tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.offsets = {m: torch.as_tensor(np.asarray(split.offsets[m], dtype=np.int64))
                        .to(self.device) for m in split.modalities}
        self.lengths = {m: torch.as_tensor(np.asarray(split.lengths[m], dtype=np.int64))
                        .to(self.device) for m in split.modalities}
        # Host copies: a batch's longest item without waiting for the device, and the
        # host path's sampling (NumPy in, no torch indexing per batch).
        self.host_lengths = {m: np.asarray(split.lengths[m], dtype=np.int64)
                             for m in split.modalities}
        self.host_offsets = {m: np.asarray(split.offsets[m], dtype=np.int64)
                             for m in split.modalities}
        self._buffers = BufferPool()  # the host path's recycled float32 batches
        self.salient = (None if salient is None
                        else torch.from_numpy(np.ascontiguousarray(salient)).to(self.device))

    @property
    def arrays(self) -> dict[str, torch.Tensor]:
        if self._arrays is None:
            self._arrays = {m: _to_device(a, self.device) for m, a in self._source.items()}
        return self._arrays

    def index(self, indices: Any) -> torch.Tensor:
        """Row indices as int64 on this split's device."""
        if isinstance(indices, torch.Tensor):
            return indices.to(device=self.device, dtype=torch.int64)
        return torch.as_tensor(np.asarray(indices, dtype=np.int64)).to(self.device)

    def _batch(self, modality: str, rows: torch.Tensor, mask: torch.Tensor | None
               ) -> torch.Tensor:
        """float32 [*rows.shape, D]: the stored frames at `rows`, dequantised, with +0.0 where
        `mask` is False (the padding the NumPy path leaves)."""
        if self.device.type == "cpu":
            return self._host_batch(modality, rows, mask)
        arr = self.arrays[modality]
        shape = (*rows.shape, self.dims[modality])
        if arr.shape[0] == 0:  # e.g. the pool's song split has no video frames
            return torch.zeros(shape, device=self.device)
        x = arr.index_select(0, rows.reshape(-1)).reshape(shape).to(torch.float32)
        spec = self.dequantize[modality]
        if spec is not None:
            # Two float32 roundings, as NumPy's `x * float32(scale) + float32(offset)`; in
            # place on the fresh float32 copy.
            scale, offset = self._scalars(modality, spec)
            x.mul_(scale).add_(offset)
        if mask is not None:
            x.masked_fill_(~mask[..., None], 0.0)  # one kernel, no host synchronisation
        return x

    def _host_batch(self, modality: str, rows: torch.Tensor, mask: torch.Tensor | None
                    ) -> torch.Tensor:
        """`_batch` in host memory: one fused gather, cast and dequantise pass (numba, on
        torch's thread count) into a recycled array (datamodules.host_gather, batch_buffers);
        torch's uint8 index_select and casts were several times slower here."""
        from datamodules.host_gather import gather_rows  # numba: imported on first use

        rows_np = rows.numpy()
        out = self._buffers.take((*rows_np.shape, self.dims[modality]), np.float32)
        gather_rows(self.arrays[modality].numpy(), rows_np,
                    None if mask is None else mask.numpy(), self.dequantize[modality], out)
        return torch.from_numpy(out)

    def _scalars(self, modality: str, spec: tuple[float, float]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._dequantize_tensors.get(modality)
        if cached is None:
            cached = tuple(torch.tensor(np.float32(v), device=self.device) for v in spec)
            self._dequantize_tensors[modality] = cached
        return cached

    def padded(self, modality: str, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Every frame of each item, zero-padded to the longest: float32 [B, T, D], mask [B, T]
        (datamodules.pairs.PairDataset's batch)."""
        idx = self.index(indices)
        offsets, lengths = self.offsets[modality][idx], self.lengths[modality][idx]
        host = self.host_lengths[modality][np.asarray(indices, dtype=np.int64)]
        longest = int(host.max()) if len(host) else 0
        steps = torch.arange(longest, device=self.device)
        mask = steps[None, :] < lengths[:, None]
        rows = torch.where(mask, offsets[:, None] + steps[None, :], 0)
        return self._batch(modality, rows, mask), mask

    def sparse(self, modality: str, idx: torch.Tensor, frames: int,
               uniform: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Global-Sparse sampled frames float32 [B, frames, D], mask [B, frames] and the flat
        stored rows [B, frames] (datamodules.sampling.SparseFrameDataset's batch).

        `uniform`: [B, frames] draws in [0, 1) for training (random frame per segment); None
        takes segment centres.
        """
        if self.device.type == "cpu":
            from datamodules.host_gather import sparse_rows  # numba: imported on first use

            pick = idx.numpy()
            rows_np, mask_np = sparse_rows(self.host_offsets[modality][pick],
                                           self.host_lengths[modality][pick], frames, uniform)
            rows, mask = torch.from_numpy(rows_np), torch.from_numpy(mask_np)
            return self._host_batch(modality, rows, mask), mask, rows
        offsets, lengths = self.offsets[modality][idx], self.lengths[modality][idx]
        u = None if uniform is None else torch.from_numpy(uniform).to(self.device)
        rel, mask = global_sparse_torch(lengths, frames, u)
        rows = torch.where(mask, offsets[:, None] + rel, 0)
        return self._batch(modality, rows, mask), mask, rows

    def vectors(self, modality: str, idx: torch.Tensor) -> torch.Tensor:
        """The single frame of each item: float32 [B, D]."""
        return self._batch(modality, self.offsets[modality][idx], None)

    def salient_at(self, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Whether each sampled stored video frame is salient (False on masked slots)."""
        return self.salient[rows] & mask


def global_sparse_torch(lengths: torch.Tensor, n: int, uniform: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """datamodules.sampling.global_sparse_batch in torch, on `lengths`' device.

    `uniform` (float64 [B, n]) are the training draws; None: evaluation (segment centres).
    The arithmetic is the NumPy version's, so the indices are identical.
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    k = torch.arange(n, device=lengths.device, dtype=torch.int64)[None, :]
    L = lengths.to(torch.int64)[:, None]
    start = torch.div(k * L, n, rounding_mode="floor")
    end = torch.div((k + 1) * L, n, rounding_mode="floor")
    width = end - start
    if uniform is None:
        sparse = start + torch.div(width, 2, rounding_mode="floor")
    else:
        # float64 product truncated toward zero, as NumPy's astype(int64).
        step = (uniform.to(torch.float64) * width.to(torch.float64)).to(torch.int64)
        sparse = start + torch.minimum(step, width - 1)
    short = L < n
    dense = k.expand_as(sparse)
    idx = torch.where(short, dense, sparse)
    mask = torch.where(short, dense < L, True)
    return torch.where(mask, idx, 0), mask


def _to_device(array: np.ndarray, device: torch.device, chunk_bytes: int = 1 << 28
               ) -> torch.Tensor:
    """A stored array (often a read-only memmap) as a tensor in memory on `device`, read in
    chunks of about `chunk_bytes` (the device copy never needs a host copy of the whole)."""
    rows = max(1, chunk_bytes // max(1, array[:1].nbytes))
    if device.type == "cpu":
        # Allocated by NumPy, which asks for transparent huge pages on large arrays (torch's
        # CPU allocator does not): the batch kernels read rows at random, and TLB misses on
        # 4 KiB pages made them ~20 % slower.
        host = np.empty(array.shape, dtype=array.dtype)
        for start in range(0, array.shape[0], rows):
            host[start:start + rows] = array[start:start + rows]
        return torch.from_numpy(host)
    out = torch.empty(array.shape, dtype=torch.from_numpy(array[:0]).dtype, device=device)
    for start in range(0, array.shape[0], rows):
        part = torch.from_numpy(np.array(array[start:start + rows], copy=True))
        out[start:start + rows].copy_(part)
    return out
