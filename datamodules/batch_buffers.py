"""Recycled output arrays for batches built in host memory (data.cache=host).

A float32 batch of 256 x 32 YouTube-8M frames is 33.5 MB. Allocated fresh for every batch,
such an array comes straight from mmap (it is above glibc's mmap threshold) and every one of
its pages faults in on first write and is unmapped again when the batch is dropped: that
costs about as much as gathering the batch itself. So the arrays are kept and refilled, but
only when nobody else holds them.

A batch is handed out as `torch.from_numpy(array)`: the tensor's storage holds a reference
to the array until every tensor and view sharing that storage is gone, and NumPy views (or
`tensor.numpy()`) hold it through `.base`. An array whose reference count is back to what the
pool alone holds is therefore unreachable by anyone else and safe to overwrite; one that a
caller kept (a stored batch, `x[0]`, `x.numpy()`) is never handed out again while held.
A batch copied to a GPU and dropped may be refilled at once: a copy from pageable memory has
read it by the time `.to(device, non_blocking=True)` returns (CUDA stages such copies).
"""

from __future__ import annotations

import sys

import numpy as np

# Arrays smaller than this are cheap to allocate (NumPy and malloc reuse them); not pooled.
MIN_POOLED_BYTES = 1 << 20
# Pooled arrays start on a cache line: the host kernels' streaming stores write whole lines.
ALIGN = 64


def _refs(arrays: list[np.ndarray], i: int) -> int:
    """The reference count of arrays[i], counted the same way for every array."""
    return sys.getrefcount(arrays[i])


class BufferPool:
    """Up to `capacity` arrays of any (shape, dtype), reused when unreferenced elsewhere.

    `take(shape, dtype)` returns an uninitialised array: a pooled one nobody holds when there
    is one of that shape and dtype, else a new one, which the pool keeps in place of a free
    array of another shape (so shapes that change from batch to batch do not pin memory) or
    of the oldest array when all are held. The pool never holds more than `capacity`.
    """

    def __init__(self, capacity: int = 8, min_bytes: int | None = None):
        if capacity < 0:
            raise ValueError(f"capacity={capacity} must be >= 0")
        self.capacity = capacity
        self.min_bytes = MIN_POOLED_BYTES if min_bytes is None else min_bytes
        self.arrays: list[np.ndarray] = []
        # What _refs reads for an array only the pool holds (the interpreter's own counting
        # differs between Python versions, so it is measured, not assumed).
        probe = [np.empty(0)]
        self._free_refs = _refs(probe, 0)

    def take(self, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = tuple(int(s) for s in shape)
        if int(np.prod(shape)) * dtype.itemsize < self.min_bytes:
            return np.empty(shape, dtype=dtype)
        other = -1  # a free array of another shape, to make room
        for i in range(len(self.arrays)):
            if _refs(self.arrays, i) != self._free_refs:
                continue
            if self.arrays[i].shape == shape and self.arrays[i].dtype == dtype:
                return self.arrays[i]
            other = i
        out = aligned_empty(shape, dtype)
        if len(self.arrays) >= self.capacity > 0:
            # Make room: a free array of another shape, else the oldest held one (its holder
            # keeps it alive; the pool just stops tracking it, so arrays a caller keeps for
            # good do not take the pool's places).
            self.arrays.pop(other if other >= 0 else 0)
        if self.capacity > 0:
            self.arrays.append(out)
        return out

    def nbytes(self) -> int:
        """Bytes the pool keeps (held by callers or not)."""
        return sum(a.nbytes for a in self.arrays)


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype, align: int = ALIGN) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts at a multiple of `align` bytes
    (NumPy only promises 16)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)
