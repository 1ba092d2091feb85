"""topk_search and single_positive_ranks against NumPy brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_app.retrieval import retrieval_ranks
from lightning_app.search import single_positive_ranks, topk_search


def brute_topk(q: np.ndarray, g: np.ndarray, k: int, exclude=None):
    """Sort every row by (score descending, gallery index ascending): the documented rule."""
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    out_s, out_i = [], []
    for row, s in enumerate(scores):
        cand = np.arange(len(s))
        if exclude is not None and exclude[row] >= 0:
            cand = cand[cand != exclude[row]]
        order = cand[np.lexsort((cand, -s[cand]))][:k]
        out_s.append(s[order])
        out_i.append(order)
    return np.array(out_s), np.array(out_i)


def int_embeddings(rng, n, d, low=-2, high=3):
    # Small integers: every dot product is exact in float32, and ties are common.
    return rng.integers(low, high, (n, d)).astype(np.float32)


@pytest.mark.parametrize("q,g,d,k,chunk", [(1, 1, 3, 1, 1), (17, 23, 4, 5, 4),
                                           (33, 7, 2, 7, 5), (50, 101, 3, 13, 64)])
def test_topk_matches_brute_force_with_ties(q, g, d, k, chunk):
    rng = np.random.default_rng(q * 1000 + g)
    qe, ge = int_embeddings(rng, q, d), int_embeddings(rng, g, d)
    scores, index = topk_search(torch.from_numpy(qe), torch.from_numpy(ge), k, chunk_size=chunk)
    want_s, want_i = brute_topk(qe, ge, k)
    assert scores.dtype == torch.float32 and index.dtype == torch.int64
    assert scores.shape == (q, k) and index.shape == (q, k)
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_array_equal(scores.numpy(), want_s.astype(np.float32))


def test_topk_all_tied_gives_lowest_indices_in_order():
    qe = torch.ones(3, 2)
    ge = torch.ones(9, 2)
    scores, index = topk_search(qe, ge, 4, chunk_size=2)
    assert index.tolist() == [[0, 1, 2, 3]] * 3
    assert scores.tolist() == [[2.0] * 4] * 3


def test_topk_random_gaussian_float_queries():
    torch.manual_seed(0)
    qe = torch.nn.functional.normalize(torch.randn(29, 16), dim=1)
    ge = torch.nn.functional.normalize(torch.randn(61, 16), dim=1)
    scores, index = topk_search(qe, ge, 10, chunk_size=6)
    want_s, want_i = brute_topk(qe.numpy(), ge.numpy(), 10)
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_allclose(scores.numpy(), want_s, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_topk_exclude(chunk):
    rng = np.random.default_rng(7)
    e = int_embeddings(rng, 19, 3)
    exclude = np.arange(19)
    exclude[[2, 5, 11]] = -1  # these queries exclude nothing
    scores, index = topk_search(torch.from_numpy(e), torch.from_numpy(e), 18,
                                chunk_size=chunk, exclude=torch.from_numpy(exclude))
    want_s, want_i = brute_topk(e, e, 18, exclude)
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_array_equal(scores.numpy(), want_s.astype(np.float32))
    for row in range(19):
        if exclude[row] >= 0:
            assert exclude[row] not in index[row].tolist()


def test_topk_self_exclusion_finds_nearest_other_item():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    _, index = topk_search(e, e, 1, exclude=torch.arange(3))
    assert index.reshape(-1).tolist() == [1, 0, 1]


def test_topk_bad_arguments():
    qe, ge = torch.randn(4, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="k=6"):
        topk_search(qe, ge, 6)
    with pytest.raises(ValueError, match="k=0"):
        topk_search(qe, ge, 0)
    with pytest.raises(ValueError, match="k=5"):  # one gallery item excluded per query
        topk_search(qe, ge, 5, exclude=torch.tensor([0, -1, 2, 3]))
    topk_search(qe, ge, 5, exclude=torch.full((4,), -1))  # nothing excluded: k = G is fine
    with pytest.raises(ValueError, match="exclude"):
        topk_search(qe, ge, 1, exclude=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="exclude"):
        topk_search(qe, ge, 1, exclude=torch.tensor([0, 1, 2, 5]))
    with pytest.raises(ValueError, match="dimensions differ"):
        topk_search(qe, torch.randn(5, 2), 1)
    with pytest.raises(ValueError, match="NaN"):
        topk_search(torch.full((2, 3), float("nan")), ge, 1)
    with pytest.raises(ValueError, match="chunk_size"):
        topk_search(qe, ge, 1, chunk_size=0)


def test_single_positive_ranks_equal_retrieval_ranks():
    rng = np.random.default_rng(3)
    qe = torch.from_numpy(int_embeddings(rng, 31, 3))
    ge = torch.from_numpy(int_embeddings(rng, 12, 3))
    pos = torch.from_numpy(rng.integers(0, 12, 31))
    want = retrieval_ranks(qe, ge, [[int(p)] for p in pos], chunk_size=5)
    assert torch.equal(single_positive_ranks(qe, ge, pos, chunk_size=4), want)
    with pytest.raises(ValueError, match="out of range"):
        single_positive_ranks(qe, ge, torch.full((31,), 12))
    with pytest.raises(ValueError, match="one gallery index per query"):
        single_positive_ranks(qe, ge, pos[:3])
