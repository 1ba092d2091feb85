"""Seeded random galleries: the draws, and ranks within each draw against a brute force."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch

from lightning_app.galleries import draw_galleries, gallery_ranks, mean_and_std, subset_rows


def test_draws_are_seeded_distinct_sorted_and_in_range():
    first = draw_galleries(200, 50, 4, seed=3)
    again = draw_galleries(200, 50, 4, seed=3)
    other = draw_galleries(200, 50, 4, seed=4)
    assert len(first) == 4
    for a, b in zip(first, again):
        assert np.array_equal(a, b)
    for g in first:
        assert g.dtype == np.int64 and len(g) == 50 and len(np.unique(g)) == 50
        assert np.all(np.diff(g) > 0) and g.min() >= 0 and g.max() < 200
    # Each draw is its own subset, and the seed changes them.
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], other[0])
    # Draw d does not depend on how many draws were asked for.
    assert np.array_equal(draw_galleries(200, 50, 1, seed=3)[0], first[0])
    # A gallery of the whole split is the whole split.
    assert np.array_equal(draw_galleries(7, 7, 1, seed=0)[0], np.arange(7))


@pytest.mark.parametrize("size,draws", [(0, 1), (201, 1), (10, 0)])
def test_bad_draw_arguments(size, draws):
    with pytest.raises(ValueError):
        draw_galleries(200, size, draws, seed=0)


def _reference_ranks(video, music, vkeys, mkeys):
    """Brute force: unique ids as items, np.lexsort over the score sub-matrix per query.

    Items are sorted by score (descending) with negatives before positives among equal
    scores, so the first positive's position counts every tied negative against the query.
    """
    out = {}
    sides = {"v2m": (video, music, vkeys, mkeys), "m2v": (music, video, mkeys, vkeys)}
    for direction, (q_emb, g_emb, q_keys, g_keys) in sides.items():
        q_ids, g_ids = sorted(set(q_keys)), sorted(set(g_keys))
        q_rep = [q_emb[list(q_keys).index(i)] for i in q_ids]  # first occurrence
        g_rep = [g_emb[list(g_keys).index(i)] for i in g_ids]
        scores = np.asarray(q_rep, np.float32) @ np.asarray(g_rep, np.float32).T
        ranks = []
        for qi, q in enumerate(q_ids):
            pos = {g for a, g in zip(q_keys, g_keys) if a == q}
            is_pos = np.array([g in pos for g in g_ids])
            order = np.lexsort((is_pos, -scores[qi]))
            ranks.append(int(np.flatnonzero(is_pos[order])[0]) + 1)
        out[direction] = np.array(ranks)
    return out


def _rows(n, dim, seed, shared_every=0, quantize=0.0):
    rng = np.random.default_rng(seed)
    video = rng.standard_normal((n, dim)).astype(np.float32)
    music = (video + 0.8 * rng.standard_normal((n, dim))).astype(np.float32)
    vkeys = np.arange(n)
    mkeys = np.arange(n)
    if shared_every:  # some songs serve several videos (as in MVD)
        mkeys = np.where(np.arange(n) % shared_every == 1, np.arange(n) - 1, mkeys)
        for i in range(n):
            music[i] = music[mkeys[i]]
    if quantize:  # coarse values make tied scores common
        video, music = np.round(video / quantize) * quantize, np.round(music / quantize) * quantize
    return {"video": torch.from_numpy(video), "music": torch.from_numpy(music),
            "video_key": torch.from_numpy(vkeys), "music_key": torch.from_numpy(mkeys),
            "index": torch.arange(n)}


@pytest.mark.parametrize("shared_every,quantize", [(0, 0.0), (3, 0.0), (0, 1.0), (4, 1.0)])
def test_ranks_per_draw_equal_a_brute_force_argsort(shared_every, quantize):
    rows = _rows(120, 6, seed=1, shared_every=shared_every, quantize=quantize)
    galleries = draw_galleries(120, 40, 5, seed=9)
    got = gallery_ranks(rows, galleries, chunk_size=7)
    for positions, ranks in zip(galleries, got):
        sub = subset_rows(rows, positions)
        assert sub["index"].tolist() == positions.tolist()
        ref = _reference_ranks(sub["video"].numpy(), sub["music"].numpy(),
                               sub["video_key"].tolist(), sub["music_key"].tolist())
        for direction in ("v2m", "m2v"):
            assert ranks[direction].tolist() == ref[direction].tolist(), direction


def test_constant_embeddings_rank_last_in_every_draw():
    """Pessimistic ties: a collapsed model ranks every positive behind all negatives."""
    rows = _rows(30, 4, seed=0)
    rows["video"] = torch.ones(30, 4)
    rows["music"] = torch.ones(30, 4)
    for ranks in gallery_ranks(rows, draw_galleries(30, 10, 3, seed=0)):
        assert ranks["v2m"].tolist() == [10] * 10 and ranks["m2v"].tolist() == [10] * 10


def test_mean_and_sample_std_over_draws():
    per_draw = [{"a": 0.5, "b": 3.0}, {"a": 0.75, "b": 3.0}, {"a": 0.25, "b": 9.0}]
    out = mean_and_std(per_draw)
    assert out["a"] == statistics.fmean([0.5, 0.75, 0.25])
    assert out["a/std"] == pytest.approx(float(np.std([0.5, 0.75, 0.25], ddof=1)), abs=1e-15)
    assert out["b/std"] == pytest.approx(float(np.std([3.0, 3.0, 9.0], ddof=1)), abs=1e-15)
    assert mean_and_std([{"a": 0.4}]) == {"a": 0.4, "a/std": 0.0}
