"""II (inter-intra) intra-modal loss against NumPy transcriptions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from losses.inter_intra import II_VARIANTS, ii_total, inter_intra_loss
from losses.structure import soft_intra_modal_structure_loss

# ----------------------------------------------------------------------------- references


def _rownorm(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_mse(raw: np.ndarray, emb: np.ndarray) -> float:
    a_in, a_out = _rownorm(raw) @ _rownorm(raw).T, _rownorm(emb) @ _rownorm(emb).T
    n = raw.shape[0]
    total = sum((a_in[i, j] - a_out[i, j]) ** 2 for i in range(n) for j in range(n) if i != j)
    return total / (n * (n - 1))


def _np_mse_grad(raw: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """d mse / d emb through the normalisation: C = E^ E^T, E^ = E / |E|."""
    n = raw.shape[0]
    en = _rownorm(emb)
    a_in, a_out = _rownorm(raw) @ _rownorm(raw).T, en @ en.T
    g_c = -2.0 * (a_in - a_out) / (n * (n - 1))
    np.fill_diagonal(g_c, 0.0)
    g_en = (g_c + g_c.T) @ en
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    # d(e/|e|)/de = (I - e^ e^^T) / |e|
    return (g_en - (g_en * en).sum(axis=1, keepdims=True) * en) / norms


def _np_kl(raw: np.ndarray, emb: np.ndarray, t: float) -> float:
    a_in, a_out = _rownorm(raw) @ _rownorm(raw).T, _rownorm(emb) @ _rownorm(emb).T
    n = raw.shape[0]
    total = 0.0
    for i in range(n):
        cols = [j for j in range(n) if j != i]
        p = np.exp(a_in[i, cols] / t)
        p /= p.sum()
        q = np.exp(a_out[i, cols] / t)
        q /= q.sum()
        total += float((p * np.log(p / q)).sum())
    return total / n


def _np_corr(raw: np.ndarray, emb: np.ndarray) -> float:
    """mean_i 1 - Pearson(row i of A_in, row i of A_out), off-diagonal entries only."""
    a_in, a_out = _rownorm(raw) @ _rownorm(raw).T, _rownorm(emb) @ _rownorm(emb).T
    n = raw.shape[0]
    total = 0.0
    for i in range(n):
        cols = [j for j in range(n) if j != i]
        x, y = a_in[i, cols], a_out[i, cols]
        if len(cols) < 2 or x.std() == 0 or y.std() == 0:
            r = 0.0
        else:
            r = float(np.corrcoef(x, y)[0, 1])
        total += 1.0 - r
    return total / n


def _np_centered(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0, keepdims=True)


def _data(seed: int, n: int, f: int = 9, d: int = 5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, f)) * 2.0, rng.standard_normal((n, d))


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("n", [2, 5, 13])
def test_mse_matches_numpy_value_and_grad(n):
    raw, emb = _data(n, n)
    emb_t = torch.from_numpy(emb).requires_grad_()
    loss = inter_intra_loss(torch.from_numpy(raw), emb_t, variant="mse")
    np.testing.assert_allclose(loss.item(), _np_mse(raw, emb), rtol=1e-10, atol=1e-12)
    loss.backward()
    np.testing.assert_allclose(emb_t.grad.numpy(), _np_mse_grad(raw, emb), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("n, t", [(2, 0.1), (6, 0.1), (11, 0.5), (20, 1.0)])
def test_kl_matches_numpy(n, t):
    raw, emb = _data(100 + n, n)
    loss = inter_intra_loss(torch.from_numpy(raw), torch.from_numpy(emb), "kl", temperature=t)
    np.testing.assert_allclose(loss.item(), _np_kl(raw, emb, t), rtol=1e-9, atol=1e-12)
    assert loss.item() >= 0.0


def test_kl_gradcheck():
    raw, emb = _data(3, 6)
    emb_t = torch.from_numpy(emb).requires_grad_()
    raw_t = torch.from_numpy(raw)
    assert torch.autograd.gradcheck(lambda e: inter_intra_loss(raw_t, e, "kl", 0.3), (emb_t,))


@pytest.mark.parametrize("k", [3, 100])
def test_rank_is_the_structure_loss(k):
    raw, emb = _data(4, 10)
    emb = _rownorm(emb)
    got = inter_intra_loss(torch.from_numpy(raw), torch.from_numpy(emb), "rank", k=k)
    want = soft_intra_modal_structure_loss(torch.from_numpy(raw), torch.from_numpy(emb), k=k)
    assert torch.equal(got, want)


@pytest.mark.parametrize("variant", II_VARIANTS)
def test_raw_gets_no_gradient(variant):
    raw, emb = _data(5, 8)
    raw_t = torch.from_numpy(raw).requires_grad_()
    emb_t = torch.from_numpy(_rownorm(emb)).requires_grad_()
    inter_intra_loss(raw_t, emb_t, variant).backward()
    assert raw_t.grad is None
    assert emb_t.grad is not None


@pytest.mark.parametrize("variant", ["mse", "kl"])
def test_zero_when_embeddings_are_the_normalised_raw_inputs(variant):
    torch.manual_seed(0)
    raw = torch.randn(12, 6, dtype=torch.float64) * 3
    emb = F.normalize(raw, dim=1).requires_grad_()
    loss = inter_intra_loss(raw, emb, variant)
    assert abs(loss.item()) < 1e-12
    loss.backward()
    assert emb.grad.abs().max().item() < 1e-10
    # Also invariant to the scale of the embeddings (cosine on both sides).
    assert abs(inter_intra_loss(raw, 5.0 * raw, variant).item()) < 1e-12


def test_half_precision_returns_float32():
    torch.manual_seed(1)
    raw = torch.randn(7, 4).bfloat16()
    emb = torch.randn(7, 3).bfloat16().requires_grad_()
    for variant in II_VARIANTS:
        loss = inter_intra_loss(raw, emb, variant)
        assert loss.dtype == torch.float32 and loss.shape == ()
    inter_intra_loss(raw, emb, "kl").backward()
    assert emb.grad.dtype == torch.bfloat16 and torch.isfinite(emb.grad.float()).all()


def test_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="valid variants: mse, kl, corr, rank"):
        inter_intra_loss(x, x, "cosine")
    with pytest.raises(ValueError, match="same number of rows"):
        inter_intra_loss(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match="2-D"):
        inter_intra_loss(torch.randn(4), x)
    with pytest.raises(ValueError, match="N >= 2"):
        inter_intra_loss(torch.randn(1, 3), torch.randn(1, 3), "mse")
    with pytest.raises(ValueError, match="temperature"):
        inter_intra_loss(x, x, "kl", temperature=0.0)


def test_ii_total():
    terms = {"video": torch.tensor(2.0), "music": torch.tensor(3.0)}
    got = ii_total(terms, {"video": 0.5, "music": 2.0, "text": 9.0})
    assert got.item() == pytest.approx(7.0)
    with pytest.raises(KeyError, match="music"):
        ii_total(terms, {"video": 1.0})
    with pytest.raises(ValueError, match="at least one"):
        ii_total({}, {"video": 1.0})


@pytest.mark.parametrize("variant", ["mse", "kl"])
def test_autocast_does_not_lower_precision(variant):
    torch.manual_seed(2)
    raw, emb = torch.randn(10, 6), torch.randn(10, 5)
    want = inter_intra_loss(raw, emb, variant)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = inter_intra_loss(raw, emb, variant)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ----------------------------------------------------------------------------- corr, centring


@pytest.mark.parametrize("n", [3, 7, 16])
def test_corr_matches_numpy_and_ignores_level_and_spread(n):
    raw, emb = _data(200 + n, n)
    got = inter_intra_loss(torch.from_numpy(raw), torch.from_numpy(emb), "corr")
    np.testing.assert_allclose(got.item(), _np_corr(raw, emb), rtol=1e-9, atol=1e-12)
    emb_t = torch.from_numpy(emb).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda e: inter_intra_loss(torch.from_numpy(raw), e, "corr"), (emb_t,))


def test_corr_is_zero_for_an_affine_copy_of_the_raw_structure():
    """Embeddings whose cosines are a * A_in + b per row (a > 0) lose nothing under corr,
    while mse still charges for the changed level: the relative form frees level and spread."""
    torch.manual_seed(3)
    n = 10
    raw = torch.randn(n, 6, dtype=torch.float64) + 4.0  # a common offset: cosines near 1
    a_in = F.normalize(raw, dim=1) @ F.normalize(raw, dim=1).T
    # A Gram matrix 0.5 * A_in + 0.5 * I is PSD with unit diagonal: realise it as embeddings.
    target = 0.5 * a_in + 0.5 * torch.eye(n, dtype=torch.float64)
    vals, vecs = torch.linalg.eigh(target)
    emb = vecs * vals.clamp_min(0).sqrt()
    assert inter_intra_loss(raw, emb, "corr").item() < 1e-10
    assert inter_intra_loss(raw, emb, "mse").item() > 1e-3


@pytest.mark.parametrize("variant", ["mse", "kl", "corr"])
def test_batch_centring_matches_numpy(variant):
    raw, emb = _data(300, 9)
    raw = raw + 5.0  # the common offset centring removes
    want = {"mse": _np_mse, "kl": lambda r, e: _np_kl(r, e, 0.1), "corr": _np_corr}[variant](
        _np_centered(raw), _np_centered(emb))
    got = inter_intra_loss(torch.from_numpy(raw), torch.from_numpy(emb), variant,
                           temperature=0.1, center="batch")
    np.testing.assert_allclose(got.item(), want, rtol=1e-9, atol=1e-12)
    # ... and centring is invariant to a common offset added to either side.
    shifted = inter_intra_loss(torch.from_numpy(raw - 3.0), torch.from_numpy(emb + 2.0), variant,
                               temperature=0.1, center="batch")
    np.testing.assert_allclose(shifted.item(), got.item(), rtol=1e-9, atol=1e-12)


def test_batch_centring_of_rank_is_the_structure_loss_of_centred_inputs():
    raw, emb = _data(301, 10)
    got = inter_intra_loss(torch.from_numpy(raw), torch.from_numpy(emb), "rank", k=6,
                           center="batch")
    want = soft_intra_modal_structure_loss(
        torch.from_numpy(_np_centered(raw)), torch.from_numpy(_rownorm(_np_centered(emb))), k=6)
    torch.testing.assert_close(got, want)


def test_unknown_centring():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="valid: none, batch"):
        inter_intra_loss(x, x, "mse", center="row")
