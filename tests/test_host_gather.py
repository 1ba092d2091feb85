"""The host batch kernels equal NumPy bit for bit; recycled batch arrays are never overwritten
while anyone holds them.

References are written out here independently: the NumPy expression the memory-mapped loader
uses (fancy-index gather cast to float32, `* float32(scale) + float32(offset)`, padding zero)
and datamodules.sampling.global_sparse_batch for the sampled rows.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules import batch_buffers, host_gather
from datamodules.batch_buffers import BufferPool, aligned_empty
from datamodules.host_gather import gather_rows, sparse_rows
from datamodules.host_gather_llvm import HAS_STREAMING_STORES
from datamodules.sampling import global_sparse_batch


def _numpy_batch(arr, rows, mask, dequantize):
    x = np.asarray(arr[rows.reshape(-1)], dtype=np.float32)
    if dequantize is not None:
        with np.errstate(invalid="ignore"):  # NaN payloads in the float16 stores
            x = x * np.float32(dequantize[0]) + np.float32(dequantize[1])
    if mask is not None:
        x[~mask.reshape(-1)] = 0.0
    return x.reshape(*rows.shape, arr.shape[1])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype == np.float32 and np.array_equal(
        a.view(np.uint32), b.view(np.uint32))


def _float16_store(rng, n, d):
    special = np.array([0x0000, 0x8000, 0x0001, 0x83FF, 0x7C00, 0xFC00, 0x7E00, 0x7C01,
                        0xFE13, 0x7BFF, 0x3C00], dtype=np.uint16)
    bits = rng.integers(0, 1 << 16, (n, d), dtype=np.uint16)
    bits[0, :len(special)] = special  # zeros, subnormals, infinities, NaN payloads, max
    return bits.view(np.float16)


STORES = {
    "uint8 codes": (lambda r: r.integers(0, 256, (50, 33), dtype=np.uint8), (4 / 255, -2.0)),
    "uint8 raw": (lambda r: r.integers(0, 256, (50, 33), dtype=np.uint8), None),
    "int16 codes": (lambda r: r.integers(-3000, 3000, (50, 7), dtype=np.int16), (0.01, 0.5)),
    "float16": (lambda r: _float16_store(r, 50, 17), None),
    "float16 scaled": (lambda r: _float16_store(r, 50, 17), (0.37, -1.25)),
    "float32": (lambda r: r.standard_normal((50, 9)).astype(np.float32), None),
    "float64": (lambda r: r.standard_normal((50, 5)), (3.0, 1.0)),
    "bool (NumPy fallback)": (lambda r: r.random((50, 6)) < 0.5, None),
}


@pytest.fixture(params=[1, 3], ids=["one thread", "three threads"])
def threads(request, monkeypatch):
    """One range, or rows split over three threads (even tiny batches split)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    monkeypatch.setattr(host_gather, "MIN_VALUES_PER_THREAD", 1)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("store", sorted(STORES))
def test_gather_equals_numpy(store, threads):
    rng = np.random.default_rng(0)
    make, dequantize = STORES[store]
    arr = make(rng)
    rows = rng.integers(0, len(arr), (6, 5))
    rows[0, 0] = 0  # the float16 special values
    mask = rng.random((6, 5)) < 0.7
    mask[0, 0] = True
    for m in (mask, None):
        out = np.full((6, 5, arr.shape[1]), np.nan, dtype=np.float32)  # stale content
        got = gather_rows(arr, rows, m, dequantize, out)
        assert got is out
        assert _same_bits(out, _numpy_batch(arr, rows, m, dequantize)), (store, m is None)
    # One item per row ([B] rows, no mask): the per-item vectors' shape.
    out = np.empty((6, arr.shape[1]), dtype=np.float32)
    gather_rows(arr, rows[:, 0], None, dequantize, out)
    assert _same_bits(out, _numpy_batch(arr, rows[:, 0], None, dequantize))


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_long_batches_with_prefetching_equal_numpy(dtype, threads):
    """Rows of 1 KiB and more, enough of them that the kernels prefetch rows ahead (up to the
    last row of each thread's range)."""
    rng = np.random.default_rng(2)
    arr = (rng.integers(0, 256, (300, 1024), dtype=np.uint8) if dtype == "uint8"
           else _float16_store(rng, 300, 1024))
    rows = rng.integers(0, len(arr), (40, 8))
    rows[-1, -1] = len(arr) - 1
    mask = rng.random((40, 8)) < 0.9
    out = np.empty((40, 8, 1024), dtype=np.float32)
    gather_rows(arr, rows, mask, (0.02, -2.5), out)
    assert _same_bits(out, _numpy_batch(arr, rows, mask, (0.02, -2.5)))


@pytest.mark.parametrize("dequantize", [(4 / 255, -2.0), None])
def test_streaming_stores_equal_numpy(dequantize, threads, monkeypatch):
    """uint8 codes into a 64-byte aligned batch: the streaming-store kernel (x86-64; the plain
    one elsewhere), padding rows included."""
    monkeypatch.setattr(host_gather, "STREAM_MIN_BYTES", 0)
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (200, 128), dtype=np.uint8)
    rows = rng.integers(0, len(arr), (30, 7))
    mask = rng.random((30, 7)) < 0.8
    out = aligned_empty((30, 7, 128), np.float32)
    out.fill(np.nan)
    assert out.ctypes.data % 64 == 0
    assert host_gather._streams(arr, out.reshape(-1, 128)) == HAS_STREAMING_STORES
    gather_rows(arr, rows, mask, dequantize, out)
    assert _same_bits(out, _numpy_batch(arr, rows, mask, dequantize))
    # Not streamed: rows that are not whole cache lines, or an unaligned batch.
    assert not host_gather._streams(arr[:, :120], out.reshape(-1, 128)[:, :120])
    unaligned = aligned_empty((211 * 128 + 1,), np.float32)[1:].reshape(211, 128)
    assert not host_gather._streams(arr, unaligned)
    gather_rows(arr, rows[0], None, dequantize, unaligned[:7])
    assert _same_bits(unaligned[:7], _numpy_batch(arr, rows[0], None, dequantize))


def test_pool_arrays_are_cache_line_aligned():
    pool = _pool()
    for shape in ((3, 5), (7,), (2, 3, 33)):
        assert pool.take(shape).ctypes.data % batch_buffers.ALIGN == 0
        assert aligned_empty(shape, np.float16).ctypes.data % 64 == 0


def test_gather_refuses_an_output_it_cannot_fill_in_place():
    arr = np.zeros((3, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        gather_rows(arr, np.zeros(2, np.int64), None, None, np.empty((4, 2), np.float32).T)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        gather_rows(arr, np.zeros(2, np.int64), None, None, np.empty((2, 4), np.float64))
    with pytest.raises(ValueError, match=r"out \(2, 5\) and mask None for rows \(2,\)"):
        gather_rows(arr, np.zeros(2, np.int64), None, None, np.empty((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"mask \(3,\)"):
        gather_rows(arr, np.zeros(2, np.int64), np.ones(3, bool), None,
                    np.empty((2, 4), np.float32))


def test_float16_keeps_nan_payloads_and_signs():
    bits = np.array([[0x7C01, 0xFE13, 0x8000, 0x0001]], dtype=np.uint16)
    out = np.empty((1, 4), dtype=np.float32)
    gather_rows(bits.view(np.float16), np.zeros(1, dtype=np.int64), None, None, out)
    assert [hex(v) for v in out.view(np.uint32)[0]] == \
        [hex(v) for v in bits.view(np.float16).astype(np.float32).view(np.uint32)[0]]


def test_padding_is_positive_zero_and_empty_cases():
    arr = np.full((3, 4), 7, dtype=np.uint8)
    out = np.full((2, 3, 4), -1.0, dtype=np.float32)
    mask = np.array([[True, False, False], [False, False, False]])
    gather_rows(arr, np.zeros((2, 3), dtype=np.int64), mask, (1.0, -7.0), out)
    bits = out.view(np.uint32)
    assert (bits == 0).all()  # +0.0 everywhere: 7 * 1 - 7 and the padding, never -0.0
    # A split with no frames (an unpaired pool's missing modality): zeros.
    out = np.full((2, 3, 4), 5.0, dtype=np.float32)
    gather_rows(np.empty((0, 4), dtype=np.uint8), np.zeros((2, 3), np.int64), None, None, out)
    assert (out.view(np.uint32) == 0).all()
    # Rows outside the store: an error, never a read out of bounds.
    for bad in (-1, 3):
        with pytest.raises(IndexError, match="outside the 3 stored rows"):
            gather_rows(arr, np.array([0, bad]), None, None, np.empty((2, 4), np.float32))
    # No rows at all: nothing to do, nothing read.
    out = np.empty((0, 3, 4), dtype=np.float32)
    assert gather_rows(arr, np.zeros((0, 3), np.int64), None, None, out).shape == (0, 3, 4)


@pytest.mark.parametrize("train", [True, False])
def test_sparse_rows_equal_global_sparse_batch(train):
    lengths = np.array([0, 1, 5, 7, 8, 9, 31, 100, 257, 8])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for n in (1, 8, 13):
        # global_sparse_batch draws rng.random((B, n)) once: the same draws as `uniform`.
        uniform = np.random.default_rng(n).random((len(lengths), n)) if train else None
        rng = np.random.default_rng(n) if train else None
        rel, mask = global_sparse_batch(lengths, n, train, rng)
        rows, got_mask = sparse_rows(offsets, lengths, n, uniform)
        assert np.array_equal(got_mask, mask)
        assert np.array_equal(rows, np.where(mask, offsets[:, None] + rel, 0))
        assert rows.dtype == np.int64 and got_mask.dtype == bool
    with pytest.raises(ValueError, match="n=0 must be >= 1"):
        sparse_rows(offsets, lengths, 0, None)


def _pool(capacity=3):
    return BufferPool(capacity=capacity, min_bytes=0)


def test_pool_never_hands_out_a_held_array():
    pool = _pool()

    def batch(value: float) -> torch.Tensor:
        arr = pool.take((4, 5))
        arr.fill(value)
        return torch.from_numpy(arr)

    kept = batch(1.0)
    view = batch(2.0)[1]  # only a view of the batch survives
    as_numpy = batch(3.0).numpy()  # only a NumPy array on the tensor survives
    plain = pool.take((4, 5))  # the pool is full: a fresh array, held directly
    plain.fill(4.0)
    for _ in range(5):
        batch(-1.0)  # dropped at once
    assert bool((kept == 1).all()) and bool((view == 2).all())
    assert (as_numpy == 3).all() and (plain == 4).all()
    assert len(pool.arrays) == 3
    del kept, as_numpy, plain
    assert bool((view == 2).all())
    again = [pool.take((4, 5)) for _ in range(2)]  # the two released pooled arrays
    assert all(any(a is p for p in pool.arrays) for a in again)
    assert bool((view == 2).all())


def test_pool_reuses_dropped_arrays_and_stays_bounded():
    pool = _pool()
    seen = set()
    for _ in range(50):  # an epoch whose batches are dropped after use
        batch = torch.from_numpy(pool.take((8, 3)))
        batch.fill_(1.0)
        seen.add(batch.data_ptr())
        del batch
    assert len(seen) == 1 and len(pool.arrays) == 1
    prev = None
    seen.clear()
    for _ in range(50):  # the loop variable keeps the previous batch while the next is made
        batch = torch.from_numpy(pool.take((8, 3)))
        assert prev is None or batch.data_ptr() != prev.data_ptr()
        seen.add(batch.data_ptr())
        prev = batch
    assert len(seen) == 2
    # Shapes that change every batch: a free array of another shape makes room.
    for k in range(20):
        pool.take((k + 1, 3))
    assert len(pool.arrays) == 3 and pool.nbytes() <= 3 * 20 * 3 * 4


def test_small_arrays_are_not_pooled():
    pool = BufferPool(capacity=2)
    assert pool.min_bytes == batch_buffers.MIN_POOLED_BYTES
    pool.take((4, 5))
    assert pool.arrays == []
    with pytest.raises(ValueError, match="capacity=-1"):
        BufferPool(capacity=-1)
