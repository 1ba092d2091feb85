"""Where a host-memory loader's time goes (group `loading`, data.cache=host): its parts timed
alone on the same split and batch shape, the rest of an epoch being the loader's own Python.

Parts per batch, both modalities: Global-Sparse sampling (the float64 uniform draws, as
datamodules.sampling draws them, and the sampled rows: datamodules.host_gather.sparse_rows)
and the fused gather kernel (gather, cast, dequantise, zero padding into a recycled array:
host_gather.gather_rows, on torch's threads; uint8 batches over 16 MiB with streaming stores
on x86-64). What an epoch takes beyond these is the
DataLoader, the sampler, index tensors, the batch dict and the buffer pool, per batch.
"""

from __future__ import annotations

import time

import numpy as np
import torch

MODALITIES = ("video", "music")


def host_parts(loader, frames: int, repeats: int) -> dict[str, float]:
    """Seconds per pair {"sampling", "gather"} of an epoch of batches like `loader`'s (a
    training loader over a split in host memory), each part timed alone; the fastest of
    `repeats` epochs after an untimed one (the batch arrays are made there, as the loader's
    first epoch makes its own)."""
    from datamodules.batch_buffers import BufferPool
    from datamodules.host_gather import gather_rows, sparse_rows

    cache, batch, batches = loader.dataset.cache, loader.batch_size, len(loader)
    arrays = {m: cache.arrays[m].numpy() for m in MODALITIES}
    pool, rng = BufferPool(), np.random.default_rng(0)
    best = {"sampling": float("inf"), "gather": float("inf")}
    for _ in range(1 + repeats):
        sampling = gather = 0.0
        for _ in range(batches):
            idx = rng.permutation(len(loader.dataset))[:batch]
            for m in MODALITIES:
                start = time.perf_counter()
                uniform = rng.random((batch, frames))
                rows, mask = sparse_rows(cache.host_offsets[m][idx],
                                         cache.host_lengths[m][idx], frames, uniform)
                mid = time.perf_counter()
                out = pool.take((batch, frames, cache.dims[m]), np.float32)
                gather_rows(arrays[m], rows, mask, cache.dequantize[m], out)
                gather += time.perf_counter() - mid
                sampling += mid - start
                del out
        pairs = batches * batch
        best = {"sampling": min(best["sampling"], sampling / pairs),
                "gather": min(best["gather"], gather / pairs)}
    return best


def parts_note(epoch_s_per_pair: float, parts: dict[str, float], batch: int) -> str:
    """'a us per pair: gather kernel b, sampling c, the rest d (...)'."""
    from datamodules.host_gather import STREAM_MIN_BYTES

    rest = epoch_s_per_pair - parts["gather"] - parts["sampling"]
    return (f"{epoch_s_per_pair * 1e6:.1f} us per pair: fused gather kernel "
            f"{parts['gather'] * 1e6:.1f} (both modalities, {torch.get_num_threads()} "
            f"threads; rows prefetched, batches over {STREAM_MIN_BYTES >> 20} MiB written "
            f"with streaming stores), "
            f"Global-Sparse sampling {parts['sampling'] * 1e6:.1f} "
            f"(uniform draws and rows), the rest {rest * 1e6:.1f} (DataLoader, sampler, index "
            f"tensors, batch dict, buffer pool: Python per batch of {batch})")
