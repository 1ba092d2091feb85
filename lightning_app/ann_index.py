"""Search indexes for big libraries: exact (ours), or FAISS flat / IVF / HNSW (optional).

`exact` is `lightning_app.search.topk_search` (no dependency). The others go through FAISS
(`pip install 'vmr[faiss]'`), all by inner product on the same float32 embeddings:

* flat: FAISS's exact brute force (same results as exact up to float32 near-ties);
* ivf: `IndexIVFFlat`, `nlist` k-means cells, `nprobe` of them searched per query;
* hnsw: `IndexHNSWFlat`, a graph with `M` links per item, `ef_search` candidates kept.

IVF and HNSW are approximate: recall@10 against exact search is what `make bench` reports
(bench/ann.py). An approximate index may return fewer than k items for a query; missing
slots come back as index -1 and score -inf.

`cached_index` keeps a built index next to the library (`DIR/.vmr-cache/`), keyed on the
SHA-256 of the embeddings and the index parameters, so it is rebuilt exactly when either
changes; a cache file FAISS cannot read is rebuilt with one warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.atomic import atomic_file
from lightning_app.errors import ConfigError
from lightning_app.search import topk_search

log = logging.getLogger("vmr")

INDEXES = ("exact", "flat", "ivf", "hnsw")
INSTALL_HINT = "pip install 'vmr[faiss]' (or pip install faiss-cpu)"
TRAIN_POINTS_PER_CELL = 64


@dataclasses.dataclass(frozen=True)
class IndexParams:
    """Which index and its knobs; 0 means "chosen from the library size" (see resolved())."""

    kind: str = "exact"
    nlist: int = 0  # ivf: k-means cells (0: about sqrt(N), at most N / 39)
    nprobe: int = 0  # ivf: cells searched per query (0: nlist / 64, at least 8)
    m: int = 32  # hnsw: links per item
    ef_construction: int = 100  # hnsw: candidates kept while building
    ef_search: int = 128  # hnsw: candidates kept while searching

    def __post_init__(self) -> None:
        if self.kind not in INDEXES:
            raise ConfigError(f"index {self.kind!r}: choose from {', '.join(INDEXES)}")
        for name in ("nlist", "nprobe"):
            if getattr(self, name) < 0:
                raise ConfigError(f"index {name}={getattr(self, name)}: must be >= 0")
        for name in ("m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ConfigError(f"index {name}={getattr(self, name)}: must be >= 1")

    def resolved(self, n: int) -> IndexParams:
        """The parameters with the size-dependent defaults filled in for n items."""
        if self.kind != "ivf":
            return self
        nlist = self.nlist or max(1, min(int(math.sqrt(n)), n // 39))
        nprobe = self.nprobe or max(8, nlist // 64)
        return dataclasses.replace(self, nlist=nlist, nprobe=min(nprobe, nlist))


def require_faiss(kind: str) -> Any:
    """The faiss module, or a one-line ConfigError saying what to install."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(f"index {kind!r} needs FAISS, which is not installed: "
                          f"{INSTALL_HINT}; index 'exact' works without it") from None
    return faiss


def build_index(embeddings: np.ndarray, params: IndexParams) -> Any:
    """A FAISS index (inner product) over float32 [N, d] `embeddings`, ready to search."""
    faiss = require_faiss(params.kind)
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, dim = x.shape
    params = params.resolved(n)
    if params.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif params.kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, params.nlist, faiss.METRIC_INNER_PRODUCT)
        # k-means on a fixed sample of 64 points per cell: enough for the cells, and the
        # training cost stays a few seconds at 1M items.
        rng = np.random.default_rng(0)
        per_cell = TRAIN_POINTS_PER_CELL * params.nlist
        sample = x if n <= per_cell else x[np.sort(rng.choice(n, per_cell, replace=False))]
        index.cp.seed = 0
        index.train(sample)
        index.nprobe = params.nprobe
    elif params.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
    else:
        raise ConfigError(f"index {params.kind!r} is not a FAISS index")
    index.add(x)
    return index


def configure(index: Any, params: IndexParams) -> None:
    """Apply the search-time knobs (a loaded index keeps the ones it was saved with)."""
    params = params.resolved(index.ntotal)
    if params.kind == "ivf":
        index.nprobe = params.nprobe
    elif params.kind == "hnsw":
        index.hnsw.efSearch = params.ef_search


def index_search(index: Any, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores float32 [Q, k], indices int64 [Q, k]) from a FAISS index, best first."""
    q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    scores, index = index.search(q, k)
    scores = np.where(index < 0, -np.inf, scores).astype(np.float32)
    return torch.from_numpy(scores), torch.from_numpy(index.astype(np.int64))


def search(queries: torch.Tensor, gallery: torch.Tensor, k: int, params: IndexParams,
           chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of `gallery` for each query with the chosen index, built for this call only."""
    if params.kind == "exact":
        return topk_search(queries, gallery, k, chunk_size=chunk_size)
    index = build_index(gallery.detach().float().cpu().numpy(), params)
    scores, found = index_search(index, queries, k)
    return scores.to(queries.device), found.to(queries.device)


def embeddings_digest(embeddings: np.ndarray) -> str:
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    return hashlib.sha256(str(x.shape).encode() + x.tobytes()).hexdigest()


def cached_index(embeddings: np.ndarray, params: IndexParams, cache: Path, side: str) -> Any:
    """The index over `embeddings`, read from `cache` or built and written there.

    The file name carries a digest of the embeddings and the (resolved) parameters; older
    index files of this side and kind are removed when a new one is written.
    """
    faiss = require_faiss(params.kind)
    params = params.resolved(len(embeddings))
    key = hashlib.sha256(json.dumps({"embeddings": embeddings_digest(embeddings),
                                     "params": dataclasses.asdict(params)},
                                    sort_keys=True).encode()).hexdigest()
    path = Path(cache) / f"index-{side}-{params.kind}-{key[:16]}.faiss"
    if path.exists():
        try:
            index = faiss.read_index(str(path))
            if index.ntotal != len(embeddings) or index.d != embeddings.shape[1]:
                raise ValueError(f"holds {index.ntotal} x {index.d}")
            configure(index, params)
            return index
        except (RuntimeError, ValueError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("%s: damaged index cache file (%s); rebuilding it", path, reason[:200])
            path.unlink(missing_ok=True)
    index = build_index(embeddings, params)
    for old in Path(cache).glob(f"index-{side}-{params.kind}-*.faiss"):
        old.unlink(missing_ok=True)
    Path(cache).mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))
    log.info("built a %s index over %d library %s items: %s", params.kind, len(embeddings),
             side, path)
    return index
