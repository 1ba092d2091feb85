"""CMGSD's bounded / row-normalised margins, term weights, the matched control, the dynamic
sources (EMA copy, heads) and the per-kind hinge statistics, against NumPy transcriptions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from losses.margin import (
    adaptive_margin,
    cmgsd_ranking_loss,
    cmgsd_term_weights,
    intra_modal_distances,
    zscore_off_diagonal,
)
from losses.margin_stats import hinge_category_stats
from losses.ranking import inter_modal_ranking_loss, triplet_ranking_loss_with_margins
from models.cmgsd_sources import EMABranches, MarginHeads, ema_update_

# ----------------------------------------------------------------------------- references


def _np_margin(d: np.ndarray, alpha: float, beta: float, zscore: str, max_margin) -> np.ndarray:
    n = d.shape[0]
    m = np.zeros_like(d)
    all_vals = np.array([d[i, k] for i in range(n) for k in range(n) if i != k])
    for i in range(n):
        vals = np.array([d[i, k] for k in range(n) if k != i]) if zscore == "row" else all_vals
        mean, std = vals.mean(), vals.std()
        for k in range(n):
            if i == k:
                continue
            z = (d[i, k] - mean) / std if std > 1e-12 else 0.0
            value = max(0.0, alpha + beta * z)
            m[i, k] = value if max_margin is None else min(value, max_margin)
    return m


def _np_distances(x: np.ndarray) -> np.ndarray:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return 1.0 - xn @ xn.T


def _normalised(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- margins


@pytest.mark.parametrize("zscore", ["batch", "row"])
@pytest.mark.parametrize("max_margin", [None, 0.5, 0.05])
def test_adaptive_margin_matches_numpy(zscore, max_margin):
    rng = np.random.default_rng(7)
    feats = rng.standard_normal((9, 5)) * 3
    d = _np_distances(feats)
    got = adaptive_margin(intra_modal_distances(torch.from_numpy(feats)), 0.2, 1.5, zscore,
                          max_margin)
    np.testing.assert_allclose(got.numpy(), _np_margin(d, 0.2, 1.5, zscore, max_margin),
                               rtol=1e-9, atol=1e-12)
    assert got.min() >= 0 and (got.diagonal() == 0).all()
    if max_margin is not None:
        assert got.max() <= max_margin
    else:  # the unbounded batch map goes well past any fixed margin on spread-out distances
        assert got.max() > 0.5


def test_row_zscore_standardises_every_row_and_handles_constant_rows():
    rng = np.random.default_rng(1)
    d = torch.from_numpy(rng.random((6, 6)))
    z = zscore_off_diagonal(d, "row")
    off = ~torch.eye(6, dtype=torch.bool)
    rows = z[off].view(6, 5)
    torch.testing.assert_close(rows.mean(1), torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(rows.pow(2).mean(1), torch.ones(6, dtype=torch.float64))
    d[2] = 0.7  # a constant row (its diagonal too): z = 0 there, other rows unaffected
    z2 = zscore_off_diagonal(d, "row")
    assert (z2[2] == 0).all()
    torch.testing.assert_close(z2[0], z[0])
    # Row z-scores rank each anchor's negatives among themselves: a row whose negatives are
    # all far still gets margins around alpha, unlike the batch z-score.
    d3 = torch.tensor([[0.0, 0.1, 0.2], [0.1, 0.0, 1.9], [0.2, 1.9, 0.0]])
    row = adaptive_margin(d3, 0.2, 1.0, "row")
    assert row[0].sum() == pytest.approx(row[1].sum())
    with pytest.raises(ValueError, match="valid: batch, row"):
        zscore_off_diagonal(d, "column")
    with pytest.raises(ValueError, match="max_margin"):
        adaptive_margin(d, max_margin=-1.0)


# ----------------------------------------------------------------------------- terms


def test_term_weights_and_matched_control_term_count():
    assert cmgsd_term_weights(0.3, static=False) == pytest.approx([1.0, 0.3, 0.3])
    assert cmgsd_term_weights(0.3, static=True) == pytest.approx([1.0, 0.3, 0.3, 0.7])
    w = cmgsd_term_weights(0.3, static=True, normalize_terms=True)
    assert sum(w) == pytest.approx(1.0) and w[0] == pytest.approx(1.0 / 2.3)
    rng = np.random.default_rng(3)
    n, q = 10, 4
    music = torch.from_numpy(_normalised(rng, n, 6))
    video = torch.from_numpy(_normalised(rng, n, 6))
    vf, mf, sf = (torch.from_numpy(rng.standard_normal((n, 5))) for _ in range(3))
    fixed = inter_modal_ranking_loss(music, video, q, 0.1)
    for lam, static in ((0.0, None), (0.6, None), (0.6, sf), (1.0, sf)):
        # The matched control = the fixed-margin loss in as many terms, with the same weights.
        got = cmgsd_ranking_loss(music, video, vf, mf, lam, q, 0.1, static_feats=static,
                                 matched=True)
        count = sum(cmgsd_term_weights(lam, static is not None))
        for g, f in zip(got, fixed):
            torch.testing.assert_close(g, count * f)
        # Normalised, it is exactly the fixed-margin loss.
        norm = cmgsd_ranking_loss(music, video, vf, mf, lam, q, 0.1, static_feats=static,
                                  matched=True, normalize_terms=True)
        for g, f in zip(norm, fixed):
            torch.testing.assert_close(g, f)


def test_adaptive_loss_is_the_weighted_sum_of_bounded_row_terms():
    rng = np.random.default_rng(4)
    n, q, lam = 9, 3, 0.5
    music, video = (torch.from_numpy(_normalised(rng, n, 6)) for _ in range(2))
    vf, mf = (rng.standard_normal((n, 5)) for _ in range(2))
    mv_m = _np_margin(_np_distances(vf), 0.2, 1.0, "row", 0.4)
    mm_m = _np_margin(_np_distances(mf), 0.2, 1.0, "row", 0.4)
    terms = [triplet_ranking_loss_with_margins(music, video, torch.from_numpy(m),
                                               torch.from_numpy(m), q)
             for m in (np.full((n, n), 0.1), mv_m, mm_m)]
    got = cmgsd_ranking_loss(music, video, torch.from_numpy(vf), torch.from_numpy(mf), lam, q,
                             0.1, zscore="row", max_margin=0.4, normalize_terms=True)
    for j in range(2):
        want = (terms[0][j] + lam * terms[1][j] + lam * terms[2][j]) / (1 + 2 * lam)
        torch.testing.assert_close(got[j], want)


# ----------------------------------------------------------------------------- sources


def test_ema_update_matches_numpy_and_the_branch_copy_follows_slowly():
    rng = np.random.default_rng(5)
    t, s = rng.standard_normal(7), rng.standard_normal(7)
    tt = torch.from_numpy(t.copy())
    ema_update_([tt], [torch.from_numpy(s)], 0.9)
    np.testing.assert_allclose(tt.numpy(), 0.9 * t + 0.1 * s, rtol=1e-12)
    with pytest.raises(ValueError, match="decay"):
        ema_update_([tt], [tt], 1.5)
    torch.manual_seed(0)
    video = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    music = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))
    ema = EMABranches(video, music, decay=0.75)
    start = [p.detach().clone() for p in ema.video.parameters()]
    assert not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        for p in video.parameters():
            p.add_(1.0)
        video[1].running_mean.fill_(2.0)
    ema.update(video, music)
    for p0, p, live in zip(start, ema.video.parameters(), video.parameters()):
        torch.testing.assert_close(p, 0.75 * p0 + 0.25 * live.detach())
    torch.testing.assert_close(ema.video[1].running_mean, torch.full((3,), 2.0))
    v, m = ema.embed(torch.randn(6, 4), torch.randn(6, 5))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(6))
    assert ema.training and not v.requires_grad  # modes restored, no gradient


def test_margin_heads_are_normalised_single_modal_maps():
    torch.manual_seed(1)
    heads = MarginHeads(8, 6, dim=4, dropout=0.1).eval()
    v, m = heads(torch.randn(5, 8), torch.randn(5, 6))
    assert v.shape == m.shape == (5, 4)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(5))
    # ReLU first: negative pre-projection features do not reach the linear layer.
    x = torch.randn(5, 8)
    torch.testing.assert_close(heads(x, torch.zeros(5, 6))[0],
                               heads(x.clamp_min(0), torch.zeros(5, 6))[0])


# ----------------------------------------------------------------------------- statistics


def test_hinge_category_stats_match_brute_force():
    rng = np.random.default_rng(6)
    n, q, c = 12, 4, 3
    dist = -(_normalised(rng, n, 5) @ _normalised(rng, n, 5).T)
    margins = rng.random((n, n)) * 0.5
    cat = rng.integers(0, c, (n, n))
    got = hinge_category_stats(torch.from_numpy(dist), torch.from_numpy(margins), q,
                               torch.from_numpy(cat), c + 1)
    sums, active, count = np.zeros(c + 1), np.zeros(c + 1), np.zeros(c + 1)
    for i in range(n):
        negs = sorted((k for k in range(n) if k != i), key=lambda k: dist[i, k])[:q]
        for k in negs:
            g = cat[i, k]
            count[g] += 1
            sums[g] += margins[i, k]
            active[g] += margins[i, k] + dist[i, i] - dist[i, k] > 0
    np.testing.assert_array_equal(got["count"].numpy(), count)
    seen = count > 0
    np.testing.assert_allclose(got["mean_margin"].numpy()[seen], sums[seen] / count[seen])
    np.testing.assert_allclose(got["active"].numpy()[seen], active[seen] / count[seen])
    assert np.isnan(got["mean_margin"][c].item())  # category c never occurs
