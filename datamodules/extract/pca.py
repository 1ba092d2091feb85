"""YouTube-8M-style PCA whitening of CNN frame features, and the uint8 quantisation.

YouTube-8M reduced Inception's 2048-d frame features to 1024 dimensions with PCA plus
whitening, then stored each value as a uint8 code of the value clipped to [-2, 2]. This module
fits that projection on a sample of frames (`sample_rows` + `PCAWhitening.fit`), applies it,
saves it next to the dataset (so query videos at retrieval time get the same projection), and
holds the project's single `quantize` (the inverse of `datamodules.tfrecord.dequantize`).

Whitening: y = ((x - mean) @ components) / sqrt(eigenvalues + eps), with `components` the
top-K eigenvectors (columns) of the sample covariance (divisor N - 1), sorted by decreasing
eigenvalue; each column's sign is fixed so that its largest-magnitude entry is positive (the
first such entry on ties), which makes a fit reproducible across LAPACK builds. On the
fitting sample, y has covariance diag(eigenvalues / (eigenvalues + eps)) ~ identity.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from datamodules.atomic import atomic_file
from datamodules.errors import DataError
from datamodules.tfrecord import DEQUANTIZE

FORMAT_VERSION = 1
_ARRAYS = ("format_version", "mean", "components", "eigenvalues", "eps")
_CHUNK = 65536  # rows per float64 block when accumulating the covariance


@dataclasses.dataclass(frozen=True, eq=False)
class PCAWhitening:
    """mean [D], components [D, K] (orthonormal columns), eigenvalues [K] (>= 0), eps > 0."""

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    eps: float = 1e-4

    def __post_init__(self) -> None:
        problem = _problem(self.mean, self.components, self.eigenvalues, self.eps)
        if problem:
            raise ValueError(f"PCAWhitening: {problem}")

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.components.shape[1])

    @classmethod
    def fit(cls, x: np.ndarray, dim: int = 1024, eps: float = 1e-4) -> PCAWhitening:
        """Fit on frames `x` [N, D] (N >= dim + 1, D >= dim); the covariance in float64."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise DataError(f"PCA fit: frames must be a 2-D array [N, D], got shape {x.shape}")
        n, d = x.shape
        if dim < 1 or d < dim:
            raise DataError(f"PCA to {dim} dimensions needs features with at least {dim} "
                            f"dimensions, got {d}: lower the PCA dimension")
        if n < dim + 1:
            raise DataError(f"PCA to {dim} dimensions needs at least {dim + 1} frames, got {n}: "
                            "lower the PCA dimension or sample more frames")
        if not eps > 0:
            raise DataError(f"PCA fit: eps={eps} must be > 0")
        mean = np.zeros(d)
        for start in range(0, n, _CHUNK):
            mean += x[start : start + _CHUNK].sum(axis=0, dtype=np.float64)
        mean /= n
        if not np.isfinite(mean).all():
            raise DataError("PCA fit: the frames contain non-finite values (NaN or inf)")
        cov = np.zeros((d, d))
        for start in range(0, n, _CHUNK):  # two passes: no cancellation from E[x^2] - E[x]^2
            block = x[start : start + _CHUNK].astype(np.float64) - mean
            cov += block.T @ block
        cov /= n - 1
        eigenvalues, vectors = np.linalg.eigh(cov)  # ascending
        order = np.argsort(eigenvalues, kind="stable")[::-1][:dim]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)  # round-off can make ~0 negative
        components = vectors[:, order]
        components *= _signs(components)
        return cls(mean, components, eigenvalues, float(eps))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Frames [N, D] -> whitened float32 [N, K] (computed in float64)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"PCA transform: expected frames [N, {self.input_dim}], "
                             f"got shape {x.shape}")
        y = (x.astype(np.float64) - self.mean) @ self.components
        return (y / np.sqrt(self.eigenvalues + self.eps)).astype(np.float32)

    def save(self, path: str | Path) -> None:
        """Write an .npz atomically (a reader never sees half a file)."""
        with atomic_file(path, suffix=".npz") as tmp:
            np.savez(tmp, format_version=np.int64(FORMAT_VERSION), mean=self.mean,
                     components=self.components, eigenvalues=self.eigenvalues,
                     eps=np.float64(self.eps))

    @classmethod
    def load(cls, path: str | Path) -> PCAWhitening:
        """Read a file written by `save`; DataError (one line) naming the file and the fault."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: PCA file not found")
        try:
            with open(path, "rb") as f:
                magic = f.read(6)
            if magic == b"\x93NUMPY":
                raise DataError(f"{path}: not a PCA file (an .npy array, expected an .npz)")
            if magic[:2] != b"PK":
                raise DataError(f"{path}: not a PCA file (not an .npz archive)")
            with np.load(path, allow_pickle=False) as npz:
                missing = [k for k in _ARRAYS if k not in npz.files]
                if missing:
                    raise DataError(f"{path}: not a PCA file: missing arrays {', '.join(missing)}")
                arrays = {k: npz[k] for k in _ARRAYS}
        except DataError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise DataError(f"{path}: corrupt PCA file ({_first_line(e)})") from None
        version, eps = arrays["format_version"], arrays["eps"]
        if version.shape != () or version.dtype.kind not in "iu" or version != FORMAT_VERSION:
            raise DataError(f"{path}: PCA file format version {version.tolist()!r}, this code "
                            f"reads version {FORMAT_VERSION}")
        problem = "eps must be a single number" if eps.shape != () or eps.dtype.kind != "f" \
            else _problem(arrays["mean"], arrays["components"], arrays["eigenvalues"], float(eps))
        if problem:
            raise DataError(f"{path}: bad PCA file: {problem}")
        return cls(arrays["mean"], arrays["components"], arrays["eigenvalues"], float(eps))


def _problem(mean: np.ndarray, components: np.ndarray, eigenvalues: np.ndarray,
             eps: float) -> str:
    """Why these arrays are not a whitening ("" if they are)."""
    for name, a in (("mean", mean), ("components", components), ("eigenvalues", eigenvalues)):
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            return f"{name} must be a floating-point array"
    if mean.ndim != 1 or components.ndim != 2 or eigenvalues.ndim != 1:
        return (f"inconsistent shapes: mean {list(mean.shape)}, components "
                f"{list(components.shape)}, eigenvalues {list(eigenvalues.shape)} "
                "(expected [D], [D, K], [K])")
    d, k = components.shape
    if mean.shape[0] != d or eigenvalues.shape[0] != k or k < 1 or k > d:
        return (f"inconsistent shapes: mean {list(mean.shape)}, components [{d}, {k}], "
                f"eigenvalues {list(eigenvalues.shape)} (expected [D], [D, K], [K], K <= D)")
    for name, a in (("mean", mean), ("components", components), ("eigenvalues", eigenvalues)):
        if not np.isfinite(a).all():
            return f"{name} has non-finite values"
    if (eigenvalues < 0).any():
        return "eigenvalues must be >= 0"
    if not (np.isfinite(eps) and eps > 0):
        return f"eps={eps} must be a finite number > 0"
    return ""


def _signs(components: np.ndarray) -> np.ndarray:
    """+-1 per column: the sign that makes the column's largest-magnitude entry positive."""
    rows = np.argmax(np.abs(components), axis=0)
    signs = np.sign(components[rows, np.arange(components.shape[1])])
    return np.where(signs == 0, 1.0, signs)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def sample_rows(arrays: list[np.ndarray], max_rows: int, seed: int) -> np.ndarray:
    """A uniform sample of at most `max_rows` rows from all `arrays` together (PCA fitting).

    Every row of every array is equally likely, whatever the array lengths; rows are drawn
    without replacement and returned in their original order. Same seed, same rows. With
    fewer rows in total than `max_rows`, all of them are returned.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows={max_rows} must be >= 1")
    if not arrays:
        raise ValueError("sample_rows: no arrays given")
    dims = {a.shape[1:] for a in arrays}
    if len(dims) != 1 or any(a.ndim != 2 for a in arrays):
        raise ValueError(f"sample_rows: arrays must all be [n_i, D] with one D, got shapes "
                         f"{sorted({tuple(a.shape[1:]) for a in arrays})} per row")
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    total = int(offsets[-1])
    dtype = np.result_type(*arrays)
    if total <= max_rows:
        return np.concatenate(arrays).astype(dtype, copy=False)
    picks = np.sort(np.random.default_rng(seed).choice(total, size=max_rows, replace=False))
    which = np.searchsorted(offsets, picks, side="right") - 1
    out = np.empty((max_rows, arrays[0].shape[1]), dtype=dtype)
    bounds = np.searchsorted(which, np.arange(len(arrays) + 1))
    for i in np.flatnonzero(np.diff(bounds)):
        lo, hi = bounds[i], bounds[i + 1]
        out[lo:hi] = arrays[i][picks[lo:hi] - offsets[i]]
    return out


def quantize(x: np.ndarray) -> np.ndarray:
    """Floats -> YouTube-8M uint8 codes: the code whose `dequantize` value is nearest.

    Values are clipped to [-2, 2] first; `datamodules.tfrecord.dequantize(quantize(x))` is
    then within half a code step (2/255) of the clipped value. (The YouTube-8M extractor
    rounded (x + 2) * 255/4 instead, which ignores the 4/512 offset of its own dequantisation
    and leaves a bias of up to 4/512 on top of the rounding error.)
    """
    x = np.asarray(x)
    if np.isnan(x).any():
        raise ValueError("quantize: the features contain NaN")
    scale, offset = DEQUANTIZE
    q = np.rint((np.clip(x, -2.0, 2.0) - offset) / scale)
    return np.clip(q, 0, 255).astype(np.uint8)
