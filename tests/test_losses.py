"""VM-NET losses against independent NumPy transcriptions of the formulas."""

import numpy as np
import pytest
import torch

from losses.ranking import inter_modal_ranking_loss
from losses.structure import soft_intra_modal_structure_loss

# ----------------------------------------------------------------------------- references


def _normalised(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _np_ranking_one_direction(dist: np.ndarray, num_negatives: int, margin: float) -> float:
    """Row i is the anchor; its negatives are the other columns, hardest (smallest) first."""
    n = dist.shape[0]
    q = min(num_negatives, n - 1)
    total = 0.0
    for i in range(n):
        negatives = [k for k in range(n) if k != i]
        order = np.argsort(dist[i, negatives], kind="stable")
        for t in order[:q]:
            k = negatives[t]
            total += max(0.0, margin + dist[i, i] - dist[i, k])
    return total / (n * q)


def _np_ranking(music: np.ndarray, video: np.ndarray, num_negatives: int, margin: float):
    dist = -(music @ video.T)
    mv = _np_ranking_one_direction(dist, num_negatives, margin)
    vm = _np_ranking_one_direction(dist.T.copy(), num_negatives, margin)
    return mv, vm


def _np_structure(raw: np.ndarray, emb: np.ndarray, k: int):
    """Returns (loss, c, dist_emb) with c[i, j] for the column pair (j, j+1)."""
    kk = min(k, emb.shape[0])
    xn = raw[:kk] / np.linalg.norm(raw[:kk], axis=1, keepdims=True)
    do = -(xn @ xn.T)
    e = emb[:kk]
    de = -(e @ e.T)
    c = np.zeros((kk, kk - 1))
    total = 0.0
    for i in range(kk):
        for j in range(kk - 1):
            c[i, j] = np.sign(do[i, j] - do[i, j + 1]) - np.sign(de[i, j] - de[i, j + 1])
            total += c[i, j] * (de[i, j + 1] - de[i, j])
    return total / (kk * (kk - 1)), c, de


def _np_structure_grad(emb: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """d loss / d emb with c constant: loss = sum_ij W_ij De_ij, De = -E E^T."""
    kk = c.shape[0]
    w = np.zeros((kk, kk))
    for i in range(kk):
        for j in range(kk - 1):
            w[i, j + 1] += c[i, j]
            w[i, j] -= c[i, j]
    w /= kk * (kk - 1)
    grad = np.zeros_like(emb)
    grad[:kk] = -(w + w.T) @ emb[:kk]
    return grad


# ----------------------------------------------------------------------------- ranking


@pytest.mark.parametrize(
    "n, num_negatives, margin",
    [(2, 100, 0.1), (5, 3, 0.1), (9, 100, 0.2), (17, 4, 0.5), (33, 32, 0.0), (40, 10, 1.0)],
)
def test_ranking_loss_matches_numpy(n, num_negatives, margin):
    rng = np.random.default_rng(n * 1000 + num_negatives)
    music = _normalised(rng, n, 8)
    video = _normalised(rng, n, 8)
    mv, vm = inter_modal_ranking_loss(
        torch.from_numpy(music), torch.from_numpy(video), num_negatives, margin
    )
    ref_mv, ref_vm = _np_ranking(music, video, num_negatives, margin)
    assert mv.dtype == torch.float32 and vm.dtype == torch.float32
    assert mv.shape == () and vm.shape == ()
    np.testing.assert_allclose(mv.item(), ref_mv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vm.item(), ref_vm, rtol=1e-5, atol=1e-6)


def test_ranking_directions_differ_and_swap():
    rng = np.random.default_rng(0)
    music = torch.from_numpy(_normalised(rng, 12, 6))
    video = torch.from_numpy(_normalised(rng, 12, 6))
    mv, vm = inter_modal_ranking_loss(music, video, num_negatives=3, margin=0.3)
    assert not torch.isclose(mv, vm)
    # Swapping the modalities swaps the two directions.
    vm2, mv2 = inter_modal_ranking_loss(video, music, num_negatives=3, margin=0.3)
    torch.testing.assert_close(mv, mv2)
    torch.testing.assert_close(vm, vm2)


def test_ranking_loss_zero_for_well_separated_pairs():
    emb = torch.eye(6)
    mv, vm = inter_modal_ranking_loss(emb, emb, num_negatives=5, margin=0.5)
    assert mv.item() == 0.0 and vm.item() == 0.0
    # Identical embeddings: every hinge is exactly the margin.
    same = torch.ones(4, 3) / 3**0.5
    mv, vm = inter_modal_ranking_loss(same, same, num_negatives=2, margin=0.25)
    assert mv.item() == pytest.approx(0.25) and vm.item() == pytest.approx(0.25)


def test_ranking_loss_half_precision_returns_float32_and_has_grad():
    torch.manual_seed(0)
    music = torch.nn.functional.normalize(torch.randn(10, 16), dim=1)
    video = torch.nn.functional.normalize(torch.randn(10, 16), dim=1)
    ref_mv, ref_vm = inter_modal_ranking_loss(music.bfloat16().float(), video.bfloat16().float())
    m = music.bfloat16().requires_grad_()
    v = video.bfloat16().requires_grad_()
    mv, vm = inter_modal_ranking_loss(m, v)
    assert mv.dtype == torch.float32 and vm.dtype == torch.float32
    torch.testing.assert_close(mv, ref_mv)
    torch.testing.assert_close(vm, ref_vm)
    (mv + vm).backward()
    assert m.grad is not None and m.grad.dtype == torch.bfloat16
    assert v.grad is not None and torch.isfinite(v.grad.float()).all()


def test_ranking_loss_errors():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        inter_modal_ranking_loss(torch.ones(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match="shape mismatch"):
        inter_modal_ranking_loss(torch.ones(3, 4), torch.ones(4, 4))
    with pytest.raises(ValueError, match="shape mismatch"):
        inter_modal_ranking_loss(torch.ones(3, 4), torch.ones(3, 5))
    with pytest.raises(ValueError, match="2-D"):
        inter_modal_ranking_loss(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="num_negatives"):
        inter_modal_ranking_loss(torch.ones(3, 4), torch.ones(3, 4), num_negatives=0)


# ----------------------------------------------------------------------------- structure


@pytest.mark.parametrize("n, k", [(2, 100), (7, 100), (12, 5), (30, 30), (25, 100)])
def test_structure_loss_matches_numpy_value_and_grad(n, k):
    rng = np.random.default_rng(7 * n + k)
    raw = rng.standard_normal((n, 11)) * 3.0  # raw features are not normalised
    emb = _normalised(rng, n, 6)
    ref_loss, c, _ = _np_structure(raw, emb, k)
    ref_grad = _np_structure_grad(emb, c, k)

    raw_t = torch.from_numpy(raw).requires_grad_()
    emb_t = torch.from_numpy(emb).requires_grad_()
    loss = soft_intra_modal_structure_loss(raw_t, emb_t, k=k)
    assert loss.dtype == torch.float32 and loss.shape == ()
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-5, atol=1e-6)

    loss.backward()
    assert raw_t.grad is None  # raw features are a fixed target
    np.testing.assert_allclose(emb_t.grad.numpy(), ref_grad, rtol=1e-4, atol=1e-6)


def test_structure_loss_zero_when_orders_agree():
    # Embeddings equal to the normalised raw features reproduce every neighbour order exactly.
    torch.manual_seed(1)
    raw = torch.randn(9, 5)
    emb = torch.nn.functional.normalize(raw, dim=1).requires_grad_()
    loss = soft_intra_modal_structure_loss(raw, emb, k=100)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(emb.grad) == 0


def test_structure_loss_half_precision_and_grad_only_first_k_rows():
    torch.manual_seed(2)
    raw = torch.randn(10, 7).bfloat16()
    emb = torch.nn.functional.normalize(torch.randn(10, 4), dim=1).bfloat16().requires_grad_()
    loss = soft_intra_modal_structure_loss(raw, emb, k=6)
    assert loss.dtype == torch.float32
    loss.backward()
    assert emb.grad.dtype == torch.bfloat16
    assert torch.count_nonzero(emb.grad[6:]) == 0


def test_structure_loss_errors():
    with pytest.raises(ValueError, match="K = min"):
        soft_intra_modal_structure_loss(torch.ones(1, 3), torch.ones(1, 2))
    with pytest.raises(ValueError, match="K = min"):
        soft_intra_modal_structure_loss(torch.ones(5, 3), torch.ones(5, 2), k=1)
    with pytest.raises(ValueError, match="same number of rows"):
        soft_intra_modal_structure_loss(torch.ones(5, 3), torch.ones(4, 2))
    with pytest.raises(ValueError, match="2-D"):
        soft_intra_modal_structure_loss(torch.ones(5), torch.ones(5, 2))
