"""The tiled CPU kernels of topk_search and the rank metrics against NumPy brute force.

Tiles are shrunk (monkeypatched) so that small galleries take the tiled paths: many tiles,
a narrow last tile with columns left over by the grouping, and deliberate ties (duplicated
gallery rows, small-integer embeddings whose float32 dot products are exact).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lightning_app.rank_kernel as rank_kernel
import lightning_app.topk_kernel as topk_kernel
from lightning_app.retrieval import retrieval_ranks
from lightning_app.search import single_positive_ranks, topk_search


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(topk_kernel, "TILE_COLS", 64)
    monkeypatch.setattr(topk_kernel, "TILE_ROWS", 8)
    monkeypatch.setattr(rank_kernel, "TILE_COLS", 32)
    monkeypatch.setattr(rank_kernel, "TILE_ROWS", 8)


def brute_topk(q: np.ndarray, g: np.ndarray, k: int, exclude=None):
    """Full lexsort of every row by (score desc, index asc), float64 scores."""
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    if exclude is not None:
        for row, e in enumerate(exclude):
            if e >= 0:
                scores[row, e] = -np.inf
    index = np.arange(g.shape[0])
    order = np.array([np.lexsort((index, -row))[:k] for row in scores])
    return np.take_along_axis(scores, order, 1), order


def brute_ranks(q: np.ndarray, g: np.ndarray, positives: list[set[int]]) -> np.ndarray:
    """1 + non-positives scoring >= the best positive (float64 scores)."""
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    out = []
    for row, pos in zip(scores, positives):
        best = max(row[j] for j in pos)
        negative = np.ones(len(row), bool)
        negative[list(pos)] = False
        out.append(1 + int(((row >= best) & negative).sum()))
    return np.array(out)


def quantised(rng, n: int, d: int, duplicate: bool) -> np.ndarray:
    e = rng.integers(-2, 3, (n, d)).astype(np.float32)
    if duplicate:  # a third of the rows copied elsewhere: equal scores at many indices
        e[rng.integers(0, n, n // 3)] = e[rng.integers(0, n, n // 3)]
    return e


@pytest.mark.parametrize("seed", range(6))
def test_tiled_topk_equals_brute_force_with_ties(small_tiles, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(260, 700))  # >= 4 tiles of 64, a narrow last tile
    m, d, k = int(rng.integers(1, 30)), int(rng.integers(1, 5)), int(rng.integers(1, 4))
    g, q = quantised(rng, n, d, seed % 2 == 0), quantised(rng, m, d, False)
    exclude = rng.integers(-1, n, m) if seed % 3 == 0 else None
    scores, index = topk_search(
        torch.from_numpy(q), torch.from_numpy(g), k, chunk_size=int(rng.integers(1, 20)),
        exclude=None if exclude is None else torch.from_numpy(exclude))
    want_s, want_i = brute_topk(q, g, k, exclude)
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_array_equal(scores.numpy(), want_s.astype(np.float32))


def test_tiled_topk_float_embeddings_with_duplicates(small_tiles):
    rng = np.random.default_rng(10)
    g = rng.standard_normal((500, 8)).astype(np.float32)
    g[:150] = g[150:300]  # every one of these scores twice
    q = rng.standard_normal((40, 8)).astype(np.float32)
    scores, index = topk_search(torch.from_numpy(q), torch.from_numpy(g), 3)
    want_s, want_i = brute_topk(q, g, 3)
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_allclose(scores.numpy(), want_s, rtol=0, atol=1e-5)


def test_tiled_topk_all_equal_scores_keep_index_order(small_tiles):
    scores, index = topk_search(torch.ones(5, 2), torch.ones(300, 2), 3)
    assert index.tolist() == [[0, 1, 2]] * 5
    assert scores.tolist() == [[2.0] * 3] * 5


def test_gallery_sorted_worst_first_still_exact(small_tiles):
    """The first tile holds the worst items: the threshold starts loose and must tighten."""
    g = torch.arange(600, dtype=torch.float32)[:, None].repeat(1, 2)
    scores, index = topk_search(torch.ones(3, 2), g, 3)
    assert index.tolist() == [[599, 598, 597]] * 3


def test_k_beyond_gallery_is_refused():
    with pytest.raises(ValueError, match=r"k=6 must be in \[1, 5\]"):
        topk_search(torch.ones(2, 3), torch.ones(5, 3), 6)
    with pytest.raises(ValueError, match=r"k=5 must be in \[1, 4\]"):
        topk_search(torch.ones(2, 3), torch.ones(5, 3), 5, exclude=torch.tensor([0, 1]))


def test_k_equal_to_gallery_returns_everything_in_order():
    q, g = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    scores, index = topk_search(q, g, 3)
    assert index.tolist() == [[1, 0, 2]] and scores.tolist() == [[1.0, 0.0, 0.0]]


@pytest.mark.parametrize("seed", range(6))
def test_tiled_ranks_equal_brute_force_with_ties(small_tiles, seed):
    rng = np.random.default_rng(100 + seed)
    n, m = int(rng.integers(70, 300)), int(rng.integers(1, 30))
    if seed % 2:
        g, q = quantised(rng, n, 3, True), quantised(rng, m, 3, False)
    else:
        g = rng.standard_normal((n, 16)).astype(np.float32)
        g[: n // 4] = g[n // 4 : 2 * (n // 4)]
        q = rng.standard_normal((m, 16)).astype(np.float32)
    positives = [set(rng.choice(n, int(rng.integers(1, 4)), replace=False).tolist())
                 for _ in range(m)]
    got = retrieval_ranks(torch.from_numpy(q), torch.from_numpy(g),
                          [sorted(p) for p in positives], chunk_size=int(rng.integers(1, 20)))
    np.testing.assert_array_equal(got.numpy(), brute_ranks(q, g, positives))
    one = rng.integers(0, n, m)
    got = single_positive_ranks(torch.from_numpy(q), torch.from_numpy(g), torch.from_numpy(one))
    np.testing.assert_array_equal(got.numpy(), brute_ranks(q, g, [{int(x)} for x in one]))


def test_tiled_ranks_recount_when_matmul_is_not_plain_float32(small_tiles, monkeypatch):
    """A positive outside its float32 band (simulated: a shifted score) is recounted densely."""
    rng = np.random.default_rng(5)
    g, q = quantised(rng, 100, 3, True), quantised(rng, 9, 3, False)
    one = rng.integers(0, 100, 9)
    monkeypatch.setattr(rank_kernel, "_UNIT", -1.0)  # an empty band: nothing found in it
    got = single_positive_ranks(torch.from_numpy(q), torch.from_numpy(g), torch.from_numpy(one))
    np.testing.assert_array_equal(got.numpy(), brute_ranks(q, g, [{int(x)} for x in one]))


def brute_paired(video: np.ndarray, music: np.ndarray, vkeys: np.ndarray, mkeys: np.ndarray):
    """Both directions from first occurrences of each id and the pairs' positive sets."""
    vids, vfirst, vinv = np.unique(vkeys, return_index=True, return_inverse=True)
    mids, mfirst, minv = np.unique(mkeys, return_index=True, return_inverse=True)
    v2m = [set() for _ in vids]
    m2v = [set() for _ in mids]
    for a, b in zip(vinv, minv):
        v2m[a].add(int(b))
        m2v[b].add(int(a))
    v, m = video[vfirst], music[mfirst]
    return brute_ranks(v, m, v2m), brute_ranks(m, v, m2v)


@pytest.mark.parametrize("seed", range(6))
def test_paired_tiles_count_both_directions_like_brute_force(small_tiles, seed):
    """One tile pass counted along rows (v2m) and columns (m2v): ties, duplicated rows,
    shared ids (several positives per query), galleries of a partial last tile."""
    from lightning_app.retrieval import paired_retrieval_ranks

    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(40, 250))
    if seed % 2:
        video, music = quantised(rng, n, 3, True), quantised(rng, n, 3, True)
    else:
        video = rng.standard_normal((n, 16)).astype(np.float32)
        music = rng.standard_normal((n, 16)).astype(np.float32)
        music[: n // 5] = music[n // 5 : 2 * (n // 5)]
    vkeys = rng.integers(0, int(n * 0.8), n)  # some videos and songs occur in several pairs
    mkeys = rng.integers(0, int(n * 0.6), n)
    got = paired_retrieval_ranks(torch.from_numpy(video), torch.from_numpy(music),
                                 torch.from_numpy(vkeys), torch.from_numpy(mkeys),
                                 chunk_size=int(rng.integers(1, 20)))
    want_v2m, want_m2v = brute_paired(video, music, vkeys, mkeys)
    np.testing.assert_array_equal(got["v2m"].numpy(), want_v2m)
    np.testing.assert_array_equal(got["m2v"].numpy(), want_m2v)


def test_paired_tiles_recount_both_directions_when_bands_miss(small_tiles, monkeypatch):
    from lightning_app.retrieval import paired_retrieval_ranks

    rng = np.random.default_rng(9)
    video, music = quantised(rng, 90, 3, True), quantised(rng, 90, 3, True)
    keys = np.arange(90)
    monkeypatch.setattr(rank_kernel, "_UNIT", -1.0)  # empty bands: every query recounted
    got = paired_retrieval_ranks(torch.from_numpy(video), torch.from_numpy(music),
                                 torch.from_numpy(keys), torch.from_numpy(keys), chunk_size=7)
    want_v2m, want_m2v = brute_paired(video, music, keys, keys)
    np.testing.assert_array_equal(got["v2m"].numpy(), want_v2m)
    np.testing.assert_array_equal(got["m2v"].numpy(), want_m2v)


@pytest.mark.parametrize("seed", range(3))
def test_bands_narrower_than_rounding_still_give_exact_ranks(small_tiles, monkeypatch, seed):
    """The band only decides speed: with one far narrower than float32 rounding, positives
    whose tile score differs from their plain dot product fall outside it and are recounted."""
    from lightning_app.retrieval import paired_retrieval_ranks

    rng = np.random.default_rng(300 + seed)
    video = rng.standard_normal((120, 64)).astype(np.float32)
    music = (video + rng.standard_normal((120, 64))).astype(np.float32)
    keys = np.arange(120)
    monkeypatch.setattr(rank_kernel, "_UNIT", 2.0**-60)
    got = paired_retrieval_ranks(torch.from_numpy(video), torch.from_numpy(music),
                                 torch.from_numpy(keys), torch.from_numpy(keys), chunk_size=9)
    want_v2m, want_m2v = brute_paired(video, music, keys, keys)
    np.testing.assert_array_equal(got["v2m"].numpy(), want_v2m)
    np.testing.assert_array_equal(got["m2v"].numpy(), want_m2v)
    got = single_positive_ranks(torch.from_numpy(music), torch.from_numpy(video),
                                torch.from_numpy(keys))
    np.testing.assert_array_equal(got.numpy(), want_m2v)


@pytest.mark.parametrize("threads", [1, 3])
def test_tiled_ranks_do_not_depend_on_the_thread_count(small_tiles, threads):
    """Row blocks are shared out to torch.get_num_threads() threads, each with its own
    counts: one thread (inline) and three (uneven shares) give the brute-force ranks."""
    from lightning_app.retrieval import paired_retrieval_ranks

    rng = np.random.default_rng(400 + threads)
    video, music = quantised(rng, 150, 3, True), quantised(rng, 150, 3, True)
    vkeys, mkeys = rng.integers(0, 120, 150), rng.integers(0, 90, 150)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = paired_retrieval_ranks(torch.from_numpy(video), torch.from_numpy(music),
                                     torch.from_numpy(vkeys), torch.from_numpy(mkeys),
                                     chunk_size=5)
    finally:
        torch.set_num_threads(before)
    want_v2m, want_m2v = brute_paired(video, music, vkeys, mkeys)
    np.testing.assert_array_equal(got["v2m"].numpy(), want_v2m)
    np.testing.assert_array_equal(got["m2v"].numpy(), want_m2v)


@pytest.mark.parametrize(("k", "threads"), [(10, 1), (64, 3), (65, 2)])
def test_tiled_topk_larger_k_any_thread_count(small_tiles, k, threads):
    """k up to MAX_TILED_K takes the sorted-insertion tiles (k + 1 goes dense), with the
    row blocks shared out to 1 or 3 threads; ties and an excluded index per query."""
    rng = np.random.default_rng(k)
    g, q = quantised(rng, 400, 3, True), quantised(rng, 23, 3, False)
    exclude = rng.integers(-1, 400, 23)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        scores, index = topk_search(torch.from_numpy(q), torch.from_numpy(g), k,
                                    chunk_size=5, exclude=torch.from_numpy(exclude))
    finally:
        torch.set_num_threads(before)
    want_s, want_i = brute_topk(q, g, k, exclude)
    np.testing.assert_array_equal(index.numpy(), want_i)
    np.testing.assert_array_equal(scores.numpy(), want_s.astype(np.float32))
