"""CMGSD adaptive margins and per-pair-margin ranking loss against NumPy transcriptions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from losses.margin import adaptive_margin, cmgsd_ranking_loss, intra_modal_distances, lambda_ramp
from losses.ranking import inter_modal_ranking_loss, triplet_ranking_loss_with_margins

# ----------------------------------------------------------------------------- references


def _normalised(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_distances(feats: np.ndarray) -> np.ndarray:
    n = feats.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        for k in range(n):
            a, b = feats[i], feats[k]
            out[i, k] = 1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return out


def _np_adaptive_margin(d: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    n = d.shape[0]
    vals = np.array([d[i, k] for i in range(n) for k in range(n) if i != k])
    mean, std = vals.mean(), vals.std()  # population std (ddof=0)
    m = np.zeros_like(d)
    for i in range(n):
        for k in range(n):
            if i != k:
                z = (d[i, k] - mean) / std if std > 0 else 0.0
                m[i, k] = max(0.0, alpha + beta * z)
    return m


def _np_triplet_one_direction(dist: np.ndarray, margins: np.ndarray, num_negatives: int):
    n = dist.shape[0]
    q = min(num_negatives, n - 1)
    total = 0.0
    for i in range(n):
        negatives = [k for k in range(n) if k != i]
        order = np.argsort(dist[i, negatives], kind="stable")
        for t in order[:q]:
            k = negatives[t]
            total += max(0.0, margins[i, k] + dist[i, i] - dist[i, k])
    return total / (n * q)


def _np_triplet(music, video, m_mv, m_vm, num_negatives):
    dist = -(music @ video.T)
    return (
        _np_triplet_one_direction(dist, m_mv, num_negatives),
        _np_triplet_one_direction(dist.T.copy(), m_vm, num_negatives),
    )


def _np_cmgsd(music, video, vf, mf, lam, q, margin, alpha, beta, sf=None):
    n = music.shape[0]
    fixed = _np_triplet(music, video, np.full((n, n), margin), np.full((n, n), margin), q)
    mvid = _np_adaptive_margin(_np_distances(vf), alpha, beta)
    mmus = _np_adaptive_margin(_np_distances(mf), alpha, beta)
    tv = _np_triplet(music, video, mvid, mvid, q)
    tm = _np_triplet(music, video, mmus, mmus, q)
    out = [fixed[j] + lam * (tv[j] + tm[j]) for j in range(2)]
    if sf is not None:
        ms = _np_adaptive_margin(_np_distances(sf), alpha, beta)
        ts = _np_triplet(music, video, ms, ms, q)
        out = [out[j] + (1 - lam) * ts[j] for j in range(2)]
    return out


# ----------------------------------------------------------------------------- margins


@pytest.mark.parametrize("n, alpha, beta", [(2, 0.2, 1.0), (6, 0.2, 1.0), (15, 0.5, 0.3)])
def test_adaptive_margin_and_distances_match_numpy(n, alpha, beta):
    rng = np.random.default_rng(n)
    feats = rng.standard_normal((n, 7)) * 4
    d = intra_modal_distances(torch.from_numpy(feats))
    np.testing.assert_allclose(d.numpy(), _np_distances(feats), rtol=1e-10, atol=1e-12)
    m = adaptive_margin(d, alpha, beta)
    np.testing.assert_allclose(
        m.numpy(), _np_adaptive_margin(_np_distances(feats), alpha, beta), rtol=1e-9, atol=1e-12
    )
    assert (m >= 0).all() and (m.diagonal() == 0).all()
    torch.testing.assert_close(m, m.T)  # symmetric distances give symmetric margins


def test_adaptive_margin_is_detached_constant_and_clamped():
    feats = torch.randn(5, 3, requires_grad=True)
    m = adaptive_margin(intra_modal_distances(feats))
    assert not m.requires_grad and m.dtype == torch.float32
    # Constant distances: std 0, z 0, margin alpha everywhere off the diagonal.
    const = adaptive_margin(torch.full((4, 4), 0.7), alpha=0.3)
    torch.testing.assert_close(const, 0.3 * (1 - torch.eye(4)))
    # A large negative z is clamped at 0.
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    assert adaptive_margin(d, alpha=0.0, beta=1.0)[0, 1].item() == 0.0
    assert adaptive_margin(intra_modal_distances(torch.randn(4, 3).bfloat16())).dtype == (
        torch.float32
    )
    with pytest.raises(ValueError, match="square"):
        adaptive_margin(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        adaptive_margin(torch.zeros(1, 1))


def test_lambda_ramp():
    assert lambda_ramp(0, 10) == 0.0
    assert lambda_ramp(3, 10) == pytest.approx(0.3)
    assert lambda_ramp(10, 10) == 1.0
    assert lambda_ramp(25, 10) == 1.0
    assert lambda_ramp(-1, 10) == 0.0
    assert lambda_ramp(0, 0) == 1.0 and lambda_ramp(7, 0) == 1.0
    with pytest.raises(ValueError, match="ramp_epochs"):
        lambda_ramp(1, -1)


# ----------------------------------------------------------------------------- ranking


@pytest.mark.parametrize("n, q", [(2, 100), (5, 2), (12, 100), (20, 7)])
def test_triplet_with_margins_matches_numpy(n, q):
    rng = np.random.default_rng(10 + n)
    music, video = _normalised(rng, n, 6), _normalised(rng, n, 6)
    m_mv, m_vm = rng.random((n, n)) * 0.5, rng.random((n, n)) * 0.5
    mv, vm = triplet_ranking_loss_with_margins(
        torch.from_numpy(music),
        torch.from_numpy(video),
        torch.from_numpy(m_mv),
        torch.from_numpy(m_vm),
        num_negatives=q,
    )
    ref_mv, ref_vm = _np_triplet(music, video, m_mv, m_vm, q)
    assert mv.dtype == torch.float32 and mv.shape == ()
    np.testing.assert_allclose(mv.item(), ref_mv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vm.item(), ref_vm, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n, q, margin", [(3, 100, 0.1), (9, 4, 0.3), (16, 15, 0.0)])
def test_constant_margins_equal_inter_modal_ranking_loss(n, q, margin):
    rng = np.random.default_rng(n)
    music = torch.from_numpy(_normalised(rng, n, 5)).float()
    video = torch.from_numpy(_normalised(rng, n, 5)).float()
    const = torch.full((n, n), margin)
    got = triplet_ranking_loss_with_margins(music, video, const, const, num_negatives=q)
    want = inter_modal_ranking_loss(music, video, num_negatives=q, margin=margin)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_triplet_with_margins_grad_and_errors():
    torch.manual_seed(0)
    music = torch.nn.functional.normalize(torch.randn(6, 4), dim=1).requires_grad_()
    video = torch.nn.functional.normalize(torch.randn(6, 4), dim=1).requires_grad_()
    margins = torch.rand(6, 6, requires_grad=True)
    mv, vm = triplet_ranking_loss_with_margins(music, video, margins, margins, 3)
    (mv + vm).backward()
    assert music.grad is not None and video.grad is not None
    assert margins.grad is None  # margins carry no gradient
    ok = torch.ones(6, 4)
    with pytest.raises(ValueError, match="margins_mv must be"):
        triplet_ranking_loss_with_margins(ok, ok, torch.ones(6, 5), torch.ones(6, 6))
    with pytest.raises(ValueError, match="margins_vm must be"):
        triplet_ranking_loss_with_margins(ok, ok, torch.ones(6, 6), torch.ones(5, 6))
    with pytest.raises(ValueError, match="same shape"):
        triplet_ranking_loss_with_margins(ok, torch.ones(5, 4), torch.ones(6, 6), torch.ones(6, 6))
    with pytest.raises(ValueError, match="N >= 2"):
        one = torch.ones(1, 4)
        triplet_ranking_loss_with_margins(one, one, torch.ones(1, 1), torch.ones(1, 1))
    with pytest.raises(ValueError, match="num_negatives"):
        triplet_ranking_loss_with_margins(ok, ok, torch.ones(6, 6), torch.ones(6, 6), 0)


# ----------------------------------------------------------------------------- CMGSD


@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("with_static", [False, True])
def test_cmgsd_composition_matches_numpy(lam, with_static):
    n, q = 10, 4
    rng = np.random.default_rng(int(lam * 10) + 100 * with_static)
    music, video = _normalised(rng, n, 6), _normalised(rng, n, 6)
    vf, mf, sf = (rng.standard_normal((n, f)) for f in (8, 7, 5))
    mv, vm = cmgsd_ranking_loss(
        torch.from_numpy(music),
        torch.from_numpy(video),
        torch.from_numpy(vf),
        torch.from_numpy(mf),
        lam,
        num_negatives=q,
        margin=0.1,
        alpha=0.2,
        beta=1.0,
        static_feats=torch.from_numpy(sf) if with_static else None,
    )
    ref = _np_cmgsd(music, video, vf, mf, lam, q, 0.1, 0.2, 1.0, sf if with_static else None)
    np.testing.assert_allclose(mv.item(), ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vm.item(), ref[1], rtol=1e-5, atol=1e-6)


def test_cmgsd_lambda_zero_without_static_is_the_fixed_margin_loss():
    torch.manual_seed(3)
    music = torch.nn.functional.normalize(torch.randn(8, 4), dim=1).requires_grad_()
    video = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
    vf = torch.randn(8, 5, requires_grad=True)
    got = cmgsd_ranking_loss(music, video, vf, torch.randn(8, 3), lam=0.0, num_negatives=5)
    want = inter_modal_ranking_loss(music, video, num_negatives=5, margin=0.1)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    sum(got).backward()
    assert music.grad is not None and vf.grad is None  # features only feed the margins


def test_cmgsd_errors():
    e = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    f = torch.randn(4, 2)
    with pytest.raises(ValueError, match="lam"):
        cmgsd_ranking_loss(e, e, f, f, lam=1.5)
    with pytest.raises(ValueError, match="video_feats"):
        cmgsd_ranking_loss(e, e, torch.randn(3, 2), f, lam=0.5)
    with pytest.raises(ValueError, match="music_feats"):
        cmgsd_ranking_loss(e, e, f, torch.randn(4), lam=0.5)
    with pytest.raises(ValueError, match="static_feats"):
        cmgsd_ranking_loss(e, e, f, f, lam=0.5, static_feats=torch.randn(5, 2))
    with pytest.raises(ValueError, match="same shape"):
        cmgsd_ranking_loss(e, e[:3], f, f, lam=0.5)


def test_autocast_does_not_lower_precision():
    torch.manual_seed(5)
    music = torch.nn.functional.normalize(torch.randn(12, 16), dim=1)
    video = torch.nn.functional.normalize(torch.randn(12, 16), dim=1)
    vf, mf = torch.randn(12, 7), torch.randn(12, 9)
    want = cmgsd_ranking_loss(music, video, vf, mf, lam=0.5, num_negatives=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cmgsd_ranking_loss(music, video, vf, mf, lam=0.5, num_negatives=5)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0, atol=0)
