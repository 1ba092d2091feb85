"""Writing a .npy file front to back when its length is known only at the end.

The header is written first with room for any frame count (HEADER_BYTES, a multiple of 64
as NumPy aligns it) and rewritten in place on `close`, so rows are appended with plain
writes: one pass over the data, and a full disk raises OSError (a memory-mapped write
would end the process with SIGBUS instead).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = b"\x93NUMPY\x01\x00"  # format version 1.0: a 2-byte header length follows
HEADER_BYTES = 128  # the dict for shape (10**19, 10**9) takes 82 characters


def npy_header(dtype: str | np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version-1.0 .npy header of exactly HEADER_BYTES bytes (padded with spaces)."""
    descr = np.lib.format.dtype_to_descr(np.dtype(dtype))
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    room = HEADER_BYTES - len(MAGIC) - 2
    if len(text) + 1 > room:
        raise ValueError(f"npy header for shape {shape} does not fit {HEADER_BYTES} bytes")
    return MAGIC + struct.pack("<H", room) + (text.ljust(room - 1) + "\n").encode("latin1")


class NpyStream:
    """A [frames, dim] array appended to chunk by chunk; `close` fixes the header."""

    def __init__(self, path: Path, dtype: str, dim: int):
        self.path, self.dtype, self.dim = Path(path), np.dtype(dtype), int(dim)
        self.frames = 0
        self.file = open(self.path, "wb")
        self.file.write(npy_header(self.dtype, (0, self.dim)))

    def write(self, rows: np.ndarray) -> None:
        """Append rows already in the stream's dtype and width (the caller checked them)."""
        self.file.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.frames += len(rows)

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(npy_header(self.dtype, (self.frames, self.dim)))
        self.file.close()

    def abort(self) -> None:
        self.file.close()
