"""FAISS indexes (lightning_app/ann_index.py): recall against exact search, the cache next to
the library, and the one-line message when FAISS is missing."""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import torch.nn.functional as F

from lightning_app.ann_index import IndexParams, cached_index, index_search, search
from lightning_app.errors import ConfigError
from lightning_app.search import topk_search


def clustered(n: int, seed: int, dim: int = 32, centres: int = 40) -> torch.Tensor:
    """Unit vectors around a few centres, like real embeddings (not uniform noise)."""
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(centres, dim, generator=g), dim=1)
    x = c[torch.randint(centres, (n,), generator=g)] + 0.1 * torch.randn(n, dim, generator=g)
    return F.normalize(x, dim=1)


def recall_at(found: torch.Tensor, exact: torch.Tensor) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist()))
    return hits / exact.numel()


@pytest.fixture(scope="module")
def library():
    return clustered(2000, 0), clustered(200, 1)


@pytest.mark.parametrize("params, floor", [
    (IndexParams("flat"), 1.0),
    (IndexParams("ivf", nlist=32, nprobe=8), 0.9),  # 0.96 measured
    (IndexParams("hnsw", m=16, ef_search=128), 0.9),
])
def test_index_recall_against_exact_search(library, params, floor):
    gallery, queries = library
    _, exact = topk_search(queries, gallery, 10)
    scores, found = search(queries, gallery, 10, params)
    assert found.shape == (200, 10) and scores.dtype == torch.float32
    assert recall_at(found, exact) >= floor
    # Scores are the items' inner products, best first.
    ok = found >= 0
    want = (queries[:, None, :] * gallery[found.clamp(min=0)]).sum(-1)
    torch.testing.assert_close(scores[ok], want[ok], atol=1e-5, rtol=0)
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())


def test_ivf_searching_every_cell_is_exact(library):
    gallery, queries = library
    _, exact = topk_search(queries, gallery, 10)
    _, found = search(queries, gallery, 10, IndexParams("ivf", nlist=16, nprobe=16))
    assert recall_at(found, exact) == 1.0


def test_cached_index_is_reused_and_rebuilt_when_embeddings_change(library, tmp_path, caplog):
    gallery, queries = library
    emb = gallery[:500].numpy()
    params = IndexParams("hnsw", m=8, ef_search=32)
    first = cached_index(emb, params, tmp_path, "music")
    (path,) = tmp_path.glob("index-music-hnsw-*.faiss")
    stamp = path.stat().st_mtime_ns
    again = cached_index(emb, params, tmp_path, "music")  # read back, not rebuilt
    assert path.stat().st_mtime_ns == stamp and again.ntotal == first.ntotal
    assert torch.equal(index_search(again, queries, 5)[1], index_search(first, queries, 5)[1])

    changed = emb.copy()
    changed[0] = -changed[0]
    cached_index(changed, params, tmp_path, "music")
    (new_path,) = tmp_path.glob("index-music-hnsw-*.faiss")  # the old file is gone
    assert new_path != path

    # Other parameters: another file; a damaged file: rebuilt with one warning.
    cached_index(changed, IndexParams("hnsw", m=12), tmp_path, "music")
    (third,) = tmp_path.glob("index-music-hnsw-*.faiss")
    third.write_bytes(third.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="vmr"):
        rebuilt = cached_index(changed, IndexParams("hnsw", m=12), tmp_path, "music")
    assert rebuilt.ntotal == len(changed)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "damaged index cache" in warnings[0].getMessage()


def test_missing_faiss_is_one_line_naming_the_install(library, monkeypatch):
    gallery, queries = library
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError
    with pytest.raises(ConfigError, match=r"index 'ivf' needs FAISS.*pip install 'vmr\[faiss\]'"):
        search(queries, gallery, 5, IndexParams("ivf"))
    scores, found = search(queries, gallery, 5, IndexParams("exact"))  # exact needs nothing
    assert torch.equal(found, topk_search(queries, gallery, 5)[1])


def test_bad_index_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="choose from exact, flat, ivf, hnsw"):
        IndexParams("annoy")
    with pytest.raises(ConfigError, match="nprobe=-1"):
        IndexParams("ivf", nprobe=-1)
    assert IndexParams("ivf").resolved(1_000_000).nlist == 1000
    assert IndexParams("ivf").resolved(100).nlist == 2  # at least 39 training points per cell
