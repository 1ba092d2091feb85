"""Retrieval metrics against a brute-force NumPy reference and hand-computed examples."""

import numpy as np
import pytest
import torch

from lightning_app.retrieval import (
    dedupe_by_key,
    metrics_from_ranks,
    paired_retrieval_metrics,
    recall_curve,
    retrieval_metrics,
    retrieval_ranks,
)

# ----------------------------------------------------------------------------- reference


def _np_ranks(query: np.ndarray, gallery: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Sort each query's gallery by descending score, ties putting positives after negatives."""
    scores = query.astype(np.float64) @ gallery.astype(np.float64).T
    ranks = np.empty(len(query), dtype=np.int64)
    for q in range(len(query)):
        # lexsort: the last key is primary (descending score); is_pos breaks ties (False first).
        order = np.lexsort((pos[q].astype(np.int64), -scores[q]))
        ranks[q] = int(np.nonzero(pos[q][order])[0][0]) + 1
    return ranks


def _random_positives(rng, num_queries, num_gallery, max_pos):
    mask = np.zeros((num_queries, num_gallery), dtype=bool)
    lists = []
    for q in range(num_queries):
        count = int(rng.integers(1, max_pos + 1))
        idx = rng.choice(num_gallery, size=count, replace=False)
        mask[q, idx] = True
        lists.append(idx.tolist())
    return mask, lists


def _check_against_reference(query, gallery, mask, lists):
    expected = _np_ranks(query, gallery, mask)
    q_t, g_t = torch.from_numpy(query), torch.from_numpy(gallery)
    for chunk in (1, 7, 64, 1000):
        by_mask = retrieval_ranks(q_t, g_t, torch.from_numpy(mask), chunk_size=chunk)
        by_list = retrieval_ranks(q_t, g_t, lists, chunk_size=chunk)
        by_tensors = retrieval_ranks(q_t, g_t, [torch.tensor(x) for x in lists], chunk_size=chunk)
        assert by_mask.dtype == torch.long
        np.testing.assert_array_equal(by_mask.numpy(), expected)
        np.testing.assert_array_equal(by_list.numpy(), expected)
        np.testing.assert_array_equal(by_tensors.numpy(), expected)
    return expected


# ----------------------------------------------------------------------------- random data


@pytest.mark.parametrize("max_pos", [1, 4])
def test_ranks_match_bruteforce_continuous(max_pos):
    rng = np.random.default_rng(max_pos)
    query = rng.standard_normal((37, 8)).astype(np.float32)
    gallery = rng.standard_normal((53, 8)).astype(np.float32)
    mask, lists = _random_positives(rng, 37, 53, max_pos)
    _check_against_reference(query, gallery, mask, lists)


@pytest.mark.parametrize("max_pos", [1, 3])
def test_ranks_match_bruteforce_with_many_exact_ties(max_pos):
    # Small integer embeddings give exact integer scores with lots of ties, in float32 too.
    rng = np.random.default_rng(10 + max_pos)
    query = rng.integers(-2, 3, size=(37, 3)).astype(np.float32)
    gallery = rng.integers(-2, 3, size=(53, 3)).astype(np.float32)
    mask, lists = _random_positives(rng, 37, 53, max_pos)
    _check_against_reference(query, gallery, mask, lists)


def test_metrics_from_random_ranks_match_numpy():
    rng = np.random.default_rng(3)
    query = rng.standard_normal((37, 5)).astype(np.float32)
    gallery = rng.standard_normal((53, 5)).astype(np.float32)
    mask, lists = _random_positives(rng, 37, 53, 2)
    expected = _np_ranks(query, gallery, mask)
    out = retrieval_metrics(
        torch.from_numpy(query), torch.from_numpy(gallery), lists, ks=(1, 5, 10, 50), chunk_size=7
    )
    assert set(out) == {"R@1", "R@5", "R@10", "R@50", "MdR", "MnR"}
    for k in (1, 5, 10, 50):
        assert out[f"R@{k}"] == pytest.approx(np.mean(expected <= k))
    assert out["MdR"] == pytest.approx(np.median(expected))
    assert out["MnR"] == pytest.approx(np.mean(expected))
    assert all(isinstance(v, float) for v in out.values())


def test_half_precision_inputs():
    torch.manual_seed(0)
    query = torch.randn(9, 4)
    gallery = torch.randn(13, 4)
    positives = [[i] for i in range(9)]
    ref = retrieval_ranks(query.bfloat16().float(), gallery.bfloat16().float(), positives)
    got = retrieval_ranks(query.bfloat16(), gallery.bfloat16(), positives, chunk_size=4)
    torch.testing.assert_close(got, ref)


# ----------------------------------------------------------------------------- hand-built


def test_hand_built_ties():
    # 1-D embeddings: the score of gallery item g for query q is query[q] * gallery[g].
    gallery = torch.tensor([[3.0], [2.0], [2.0], [1.0], [2.0]])
    query = torch.ones(5, 1)
    positives = [
        [0],  # best score, no ties: rank 1
        [1],  # score 2 tied with negatives 2 and 4, below 0: rank 1 + 3 = 4
        [1, 2],  # tie among positives does not hurt; negatives 0 and 4 >= 2: rank 3
        [3],  # lowest score: every other item is above: rank 5
        [3, 4],  # best positive 4 (score 2): negatives 0, 1, 2 >= 2: rank 4
    ]
    ranks = retrieval_ranks(query, gallery, positives, chunk_size=2)
    assert ranks.tolist() == [1, 4, 3, 5, 4]
    # The brute-force reference used above agrees with the hand-written ranks.
    mask = np.zeros((5, 5), dtype=bool)
    for q, pos in enumerate(positives):
        mask[q, pos] = True
    assert _np_ranks(query.numpy(), gallery.numpy(), mask).tolist() == [1, 4, 3, 5, 4]
    # A negative query flips the order.
    ranks = retrieval_ranks(-torch.ones(1, 1), gallery, [[3]])
    assert ranks.tolist() == [1]


def test_constant_embeddings_are_ranked_last():
    query = torch.ones(6, 4)
    gallery = torch.ones(10, 4)
    ranks = retrieval_ranks(query, gallery, [[i] for i in range(6)])
    assert ranks.tolist() == [10] * 6  # rank = 1 + number of negatives = G
    out = retrieval_metrics(query, gallery, [[i] for i in range(6)])
    assert out["R@1"] == 0.0 and out["R@5"] == 0.0 and out["R@10"] == 1.0
    # With three positives per query there are G - 3 negatives, all tied.
    ranks = retrieval_ranks(query, gallery, [[i, i + 1, i + 2] for i in range(6)])
    assert ranks.tolist() == [8] * 6


@pytest.mark.parametrize("values", [[3, 1, 2], [4, 1, 3, 2], [5, 5, 1, 9, 2, 7], [7]])
def test_median_and_mean_rank_follow_numpy(values):
    out = metrics_from_ranks(torch.tensor(values), ks=(1, 2))
    assert out["MdR"] == float(np.median(values))
    assert out["MnR"] == pytest.approx(float(np.mean(values)))
    assert out["R@1"] == pytest.approx(np.mean(np.array(values) <= 1))
    assert out["R@2"] == pytest.approx(np.mean(np.array(values) <= 2))


def test_recall_curve():
    ranks = torch.tensor([1, 3, 3, 7, 2, 10])
    curve = recall_curve(ranks, 8)
    expected = [np.mean(ranks.numpy() <= k) for k in range(1, 9)]
    assert curve.dtype == torch.float32 and curve.shape == (8,)
    np.testing.assert_allclose(curve.numpy(), expected, rtol=1e-6)
    out = metrics_from_ranks(ranks, ks=(1, 5))
    assert curve[0].item() == pytest.approx(out["R@1"])
    assert curve[4].item() == pytest.approx(out["R@5"])


def test_dedupe_by_key():
    keys = torch.tensor([7, 3, 7, 9, 3, 3, 1])
    unique, first, inverse = dedupe_by_key(keys)
    assert unique.tolist() == [1, 3, 7, 9]
    assert first.tolist() == [6, 1, 0, 3]
    assert inverse.tolist() == [2, 1, 2, 3, 1, 1, 0]
    assert torch.equal(unique[inverse], keys)
    assert torch.equal(keys[first], unique)


def test_paired_retrieval_metrics_with_shared_music():
    # Pairs: (video 10, music 5), (video 11, music 5), (video 12, music 7), (video 10, music 7).
    # Music 5 is used by two videos; video 10 appears twice (its first row is used).
    m5, m7 = [1.0, 0.0], [0.0, 1.0]
    v10, v11, v12 = [0.6, 0.8], [0.8, 0.6], [1.0, 0.0]
    video_emb = torch.tensor([v10, v11, v12, v10])
    music_emb = torch.tensor([m5, m5, m7, m7])
    video_keys = torch.tensor([10, 11, 12, 10])
    music_keys = torch.tensor([5, 5, 7, 7])

    # Gallery sizes after de-duplication: 2 songs, 3 videos.
    assert dedupe_by_key(music_keys)[0].tolist() == [5, 7]
    assert dedupe_by_key(video_keys)[0].tolist() == [10, 11, 12]

    out = paired_retrieval_metrics(video_emb, music_emb, video_keys, music_keys, ks=(1, 2))
    # v2m (gallery [m5, m7]):
    #   v10: positives {m5, m7}, best 0.8 (m7), no negatives   -> rank 1
    #   v11: positive m5 scores 0.8 > m7 0.6                   -> rank 1
    #   v12: positive m7 scores 0.0 < m5 1.0                   -> rank 2
    # m2v (gallery [v10, v11, v12]):
    #   m5: positives {v10: 0.6, v11: 0.8}, negative v12: 1.0  -> rank 2
    #   m7: positives {v12: 0.0, v10: 0.8}, negative v11: 0.6  -> rank 1
    expected = {
        "v2m/R@1": 2 / 3, "v2m/R@2": 1.0, "v2m/MdR": 1.0, "v2m/MnR": 4 / 3,
        "m2v/R@1": 0.5, "m2v/R@2": 1.0, "m2v/MdR": 1.5, "m2v/MnR": 1.5,
    }  # fmt: skip
    assert set(out) == set(expected)
    for key, value in expected.items():
        assert out[key] == pytest.approx(value), key

    # Same answer through retrieval_ranks with the gallery and positives written out by hand.
    v2m = retrieval_ranks(torch.tensor([v10, v11, v12]), torch.tensor([m5, m7]), [[0, 1], [0], [1]])
    m2v = retrieval_ranks(torch.tensor([m5, m7]), torch.tensor([v10, v11, v12]), [[0, 1], [2, 0]])
    assert v2m.tolist() == [1, 1, 2] and m2v.tolist() == [2, 1]


def test_paired_matches_plain_metrics_when_all_ids_unique():
    torch.manual_seed(4)
    video = torch.nn.functional.normalize(torch.randn(23, 6), dim=1)
    music = torch.nn.functional.normalize(torch.randn(23, 6), dim=1)
    perm = torch.randperm(23)  # keys need not be in row order
    out = paired_retrieval_metrics(video, music, perm, perm * 3 + 1, chunk_size=5)
    # Unique keys are sorted, so row n becomes item perm[n] in both galleries.
    order = torch.argsort(perm)
    diag = [[i] for i in range(23)]
    v2m = retrieval_metrics(video[order], music[order], diag)
    m2v = retrieval_metrics(music[order], video[order], diag)
    for k, v in v2m.items():
        assert out[f"v2m/{k}"] == pytest.approx(v)
    for k, v in m2v.items():
        assert out[f"m2v/{k}"] == pytest.approx(v)


# ----------------------------------------------------------------------------- errors


def test_query_without_positive_raises():
    query, gallery = torch.randn(4, 3), torch.randn(6, 3)
    with pytest.raises(ValueError, match="query 2 has no positive"):
        retrieval_metrics(query, gallery, [[0], [1, 2], [], [5]])
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[[0, 1, 3], [0, 1, 5]] = True
    with pytest.raises(ValueError, match="query 2 has no positive"):
        retrieval_metrics(query, gallery, mask)


def test_invalid_positives_raise():
    query, gallery = torch.randn(3, 3), torch.randn(5, 3)
    with pytest.raises(ValueError, match="out of range"):
        retrieval_ranks(query, gallery, [[0], [5], [1]])
    with pytest.raises(ValueError, match="out of range"):
        retrieval_ranks(query, gallery, [[0], [-1], [1]])
    with pytest.raises(ValueError, match="one entry per query"):
        retrieval_ranks(query, gallery, [[0], [1]])
    with pytest.raises(ValueError, match="shape"):
        retrieval_ranks(query, gallery, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="dimensions differ"):
        retrieval_ranks(query, torch.randn(5, 4), [[0], [1], [2]])
    with pytest.raises(ValueError, match="integer gallery indices"):
        retrieval_ranks(query, gallery, [[0], [1.0], [2]])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_ranks(query, torch.full((5, 3), float("nan")), [[0], [1], [2]])
