"""Batches from a split held in host memory (data.cache=host), one fused pass per modality.

The NumPy way to make a float32 batch from stored rows takes three passes over a fresh array
(a fancy-index gather cast to float32, `*= scale`, `+= offset`) plus a fourth to zero the
padding, and page-faults the fresh 30+ MB array in on the way. `gather_rows` does it in one
compiled pass (numba, GIL released) that reads each stored row once and writes each output
value once, into an output the caller provides (datamodules.batch_buffers recycles them),
with the rows split over torch's thread count (`torch.get_num_threads()`, the knob the rest
of the process honours) on one lazily created thread pool. numba's own `parallel=True` would
bring a second OpenMP runtime next to torch's, so plain threads run the nogil kernel on row
ranges instead.

The values are bit-identical to NumPy's: the cast to float32 is NumPy's (exact for integer
codes and float16; float16 goes through a table made by NumPy's own cast, so even NaN
payloads match) and dequantisation is the same two float32 roundings, `float32(x * scale)`
then `+ offset` (no fused multiply-add: numba does not contract without fastmath). Padding
rows (mask False) are +0.0, as the NumPy paths leave them.

Batches larger than the caches, from uint8 codes, are written with streaming stores on
x86-64 (datamodules.host_gather_llvm: no read of each output line before writing it), and
every kernel prefetches the rows it is about to read.

`sparse_rows` is `datamodules.sampling.global_sparse_batch` plus the row offsets in one
compiled loop (the same integer arithmetic and float64 truncation, so the same frames).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from datamodules.host_gather_llvm import (
    HAS_STREAMING_STORES,
    LANES,
    prefetch,
    store_fence,
    stream_row,
)
from datamodules.thread_pool import shared_executor

# Output values per thread below which splitting costs more than it saves (a thread hand-off
# is some tens of microseconds; 32k output values take about that long).
MIN_VALUES_PER_THREAD = 1 << 15
# How far ahead of the row being converted the kernels prefetch (bytes of rows: 4 rows of
# 1024 uint8 codes, 32 of 128): the rows are random (shuffled items) and DRAM latency, not
# bandwidth, bounded the kernel; prefetching halved its time.
PREFETCH_BYTES = 4096
# Batches at least this large are written with streaming stores (host_gather_llvm): they
# outgrow the caches anyway; a smaller one is left in cache for the model to read.
STREAM_MIN_BYTES = 16 << 20
# Stored dtypes the kernels read directly (others: NumPy, `gather_rows_numpy`).
DIRECT = frozenset(np.dtype(t) for t in ("uint8", "int8", "uint16", "int16", "int32",
                                          "float32", "float64"))

_half_table: np.ndarray | None = None


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _gather_cast(arr, rows, mask, dequantize, scale, offset, ahead, out, lo,
                 hi):  # pragma: no cover
    d = out.shape[1]
    for i in range(lo, hi):
        if i + ahead < hi:  # inline: a call per row passing arrays costs refcounting
            start = rows[i + ahead] * arr.strides[0]
            for byte in range(0, arr.shape[1] * arr.itemsize, 64):
                prefetch(arr, start + byte)
        o = out[i]
        if not mask[i]:
            for j in range(d):
                o[j] = 0.0
        elif dequantize:
            src = arr[rows[i]]
            for j in range(d):
                o[j] = np.float32(np.float32(src[j]) * scale) + offset
        else:
            src = arr[rows[i]]
            for j in range(d):
                o[j] = np.float32(src[j])


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _gather_table(arr, table, rows, mask, dequantize, scale, offset, ahead, out, lo,
                  hi):  # pragma: no cover
    d = out.shape[1]
    for i in range(lo, hi):
        if i + ahead < hi:  # inline: a call per row passing arrays costs refcounting
            start = rows[i + ahead] * arr.strides[0]
            for byte in range(0, arr.shape[1] * arr.itemsize, 64):
                prefetch(arr, start + byte)
        o = out[i]
        if not mask[i]:
            for j in range(d):
                o[j] = 0.0
        elif dequantize:
            src = arr[rows[i]]
            for j in range(d):
                o[j] = np.float32(table[src[j]] * scale) + offset
        else:
            src = arr[rows[i]]
            for j in range(d):
                o[j] = table[src[j]]


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _gather_stream(arr, rows, mask, scale, offset, ahead, out, lo, hi):  # pragma: no cover
    """_gather_cast of uint8 codes (C-contiguous rows) with streaming stores."""
    d = out.shape[1]
    src, dst = arr.reshape(-1), out.reshape(-1)
    for i in range(lo, hi):
        if i + ahead < hi:  # inline: a call per row passing arrays costs refcounting
            start = rows[i + ahead] * arr.strides[0]
            for byte in range(0, arr.shape[1] * arr.itemsize, 64):
                prefetch(arr, start + byte)
        if mask[i]:
            stream_row(src, rows[i] * d, dst, i * d, d, scale, offset)
        else:
            for j in range(i * d, (i + 1) * d):
                dst[j] = 0.0
    store_fence()


@numba.njit(nogil=True, cache=True)
def _sparse_rows(offsets, lengths, n, uniform, train, rows, mask):  # pragma: no cover
    for b in range(lengths.shape[0]):
        length = lengths[b]
        for k in range(n):
            if length < n:  # short: every frame in order, then masked slots
                ok = k < length
                rel = k
            else:
                start = (k * length) // n
                width = ((k + 1) * length) // n - start
                if train:  # float64 product truncated toward zero, as astype(int64)
                    rel = start + min(np.int64(uniform[b, k] * np.float64(width)), width - 1)
                else:
                    rel = start + width // 2
                ok = True
            mask[b, k] = ok
            rows[b, k] = offsets[b] + rel if ok else 0


def sparse_rows(offsets: np.ndarray, lengths: np.ndarray, n: int, uniform: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Global-Sparse sampled stored rows int64 [B, n] (0 on masked slots) and mask [B, n] for
    items starting at `offsets` with `lengths` frames; `uniform` float64 [B, n] are the
    training draws, None takes segment centres."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    lengths = np.asarray(lengths, dtype=np.int64)
    if (lengths < 0).any():
        raise ValueError("sequence lengths must be >= 0")
    rows = np.empty((len(lengths), n), dtype=np.int64)
    mask = np.empty((len(lengths), n), dtype=bool)
    train = uniform is not None
    draws = np.ascontiguousarray(uniform, dtype=np.float64) if train else np.empty((0, 0))
    _sparse_rows(np.asarray(offsets, dtype=np.int64), lengths, n, draws, train, rows, mask)
    return rows, mask


def gather_rows(arr: np.ndarray, rows: np.ndarray, mask: np.ndarray | None,
                dequantize: tuple[float, float] | None, out: np.ndarray) -> np.ndarray:
    """Fill float32 `out` [*rows.shape, D] with `arr[rows]` as float32, dequantised
    (`x * float32(scale) + float32(offset)`) when `dequantize` is given, and +0.0 where
    `mask` (shaped like `rows`) is False; return `out`."""
    if out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError("gather_rows writes into a C-contiguous float32 array")
    shape = (*np.shape(rows), arr.shape[1])
    if out.shape != shape or (mask is not None and np.shape(mask) != shape[:-1]):
        raise ValueError(f"gather_rows: out {out.shape} and mask "
                         f"{None if mask is None else np.shape(mask)} for rows "
                         f"{np.shape(rows)} of {arr.shape[1]} values")
    flat_out = out.reshape(-1, out.shape[-1])
    flat_rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(-1)
    n = len(flat_rows)
    if n == 0:
        return out
    if arr.shape[0] == 0:  # e.g. an unpaired pool's song split has no video frames
        flat_out.fill(0.0)
        return out
    if flat_rows.min() < 0 or flat_rows.max() >= arr.shape[0]:  # the kernels do not check
        raise IndexError(f"rows {flat_rows.min()}..{flat_rows.max()} outside the "
                         f"{arr.shape[0]} stored rows")
    flat_mask = (np.ones(n, dtype=bool) if mask is None
                 else np.ascontiguousarray(mask, dtype=bool).reshape(-1))
    if arr.dtype not in DIRECT and arr.dtype != np.float16:
        return gather_rows_numpy(arr, rows, mask, dequantize, out)
    scale, offset = (np.float32(v) for v in (dequantize or (1.0, 0.0)))
    ahead = max(1, PREFETCH_BYTES // max(1, arr.strides[0]))
    if _streams(arr, flat_out):  # x * 1 + 0 is x for codes 0..255: no branch needed
        args = (arr, flat_rows, flat_mask, scale, offset, ahead, flat_out)
        _run_split(_gather_stream, args, n, flat_out.shape[1])
        return out
    if arr.dtype == np.float16:
        args = (arr.view(np.uint16), _float16_table())
        kernel = _gather_table
    else:
        args, kernel = (arr,), _gather_cast
    args = (*args, flat_rows, flat_mask, dequantize is not None, scale, offset, ahead, flat_out)
    _run_split(kernel, args, n, flat_out.shape[1])
    return out


def _streams(arr: np.ndarray, out: np.ndarray) -> bool:
    """Whether `_gather_stream` can write `out` (2-D): uint8 rows in C order, whole cache
    lines per row, 64-byte aligned, and a batch large enough to bypass the caches."""
    return (HAS_STREAMING_STORES and arr.dtype == np.uint8 and arr.flags.c_contiguous
            and out.shape[1] % LANES == 0 and out.ctypes.data % 64 == 0
            and out.nbytes >= STREAM_MIN_BYTES)


def gather_rows_numpy(arr: np.ndarray, rows: np.ndarray, mask: np.ndarray | None,
                      dequantize: tuple[float, float] | None, out: np.ndarray) -> np.ndarray:
    """`gather_rows` in NumPy passes: the reference the kernels equal (and the fallback for
    dtypes they do not read)."""
    flat = out.reshape(-1, out.shape[-1])
    if arr.shape[0] == 0:
        flat[...] = 0.0
        return out
    flat[...] = arr[np.asarray(rows, dtype=np.int64).reshape(-1)]
    if dequantize is not None:
        flat *= np.float32(dequantize[0])
        flat += np.float32(dequantize[1])
    if mask is not None:
        flat[~np.asarray(mask, dtype=bool).reshape(-1)] = 0.0
    return out


def _run_split(kernel, args: tuple, n: int, dim: int) -> None:
    """kernel(*args, lo, hi) over rows [0, n), cut into one range per thread."""
    parts = max(1, min(torch.get_num_threads(), n * dim // MIN_VALUES_PER_THREAD))
    if parts == 1:
        kernel(*args, 0, n)
        return
    bounds = [n * p // parts for p in range(parts + 1)]
    pool = shared_executor(parts - 1)
    futures = [pool.submit(kernel, *args, bounds[p], bounds[p + 1]) for p in range(1, parts)]
    kernel(*args, bounds[0], bounds[1])  # this thread takes the first range
    for f in futures:
        f.result()


def _float16_table() -> np.ndarray:
    """float32 of every float16 bit pattern, by NumPy's own cast (256 KiB)."""
    global _half_table
    if _half_table is None:
        _half_table = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(
            np.float16).astype(np.float32)
    return _half_table
