"""Symmetric InfoNCE: values against NumPy, and 2-process (gloo) equivalence with 1 process.

DDP semantics checked here (see losses/contrastive.py): every rank r calls backward on its own
loss L_r; gather_with_grad's backward sums gradients over ranks. Then
  (a) mean_r L_r == L, the one-process loss on the concatenated batch;
  (b) rank r's gradient of its local embeddings, divided by the world size W (DDP's averaging
      applied to a per-rank Jacobian), equals rows r of the one-process gradient, and the mean
      over ranks of the gradient of a shared parameter (the logit scale) equals its
      one-process gradient;
  (c) parameters of a shared encoder, with their gradients averaged over ranks exactly as DDP
      does (all_reduce SUM / W), get the one-process gradient.
"""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from losses.contrastive import LogitScale, gather_with_grad, info_nce_loss, symmetric_info_nce

# ----------------------------------------------------------------------------- NumPy reference


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _np_info_nce(v, m, scale, weights=None, soft_v2m=None, soft_m2v=None) -> float:
    n = v.shape[0]
    eye = np.eye(n)
    lv = _np_log_softmax(scale * v @ m.T)
    lm = _np_log_softmax(scale * m @ v.T)
    tv = eye if soft_v2m is None else soft_v2m
    tm = eye if soft_m2v is None else soft_m2v
    per_row = (-(tv * lv).sum(axis=1) - (tm * lm).sum(axis=1)) / 2
    w = np.ones(n) if weights is None else weights
    return float((w * per_row).sum() / w.sum())


def _normalised(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _soft(rng: np.random.Generator, n: int) -> np.ndarray:
    """Row-stochastic targets with some exact zeros (a span-mixing-like pattern)."""
    t = rng.random((n, n)) * (rng.random((n, n)) < 0.4) + np.eye(n)
    return t / t.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- one process


@pytest.mark.parametrize("n, d, scale", [(2, 4, 1.0), (7, 5, 14.3), (16, 8, 100.0)])
def test_matches_numpy(n, d, scale):
    rng = np.random.default_rng(n)
    v, m = _normalised(rng, n, d), _normalised(rng, n, d)
    w = rng.random(n) + 0.1
    soft_a, soft_b = _soft(rng, n), _soft(rng, n)
    vt, mt = torch.from_numpy(v), torch.from_numpy(m)
    cases = [
        (symmetric_info_nce(vt, mt, scale), _np_info_nce(v, m, scale)),
        (
            symmetric_info_nce(vt, mt, torch.tensor(scale, dtype=torch.float64)),
            _np_info_nce(v, m, scale),
        ),
        (
            symmetric_info_nce(vt, mt, scale, weights=torch.from_numpy(w)),
            _np_info_nce(v, m, scale, weights=w),
        ),
        (
            symmetric_info_nce(vt, mt, scale, soft_targets=torch.from_numpy(soft_a)),
            _np_info_nce(v, m, scale, soft_v2m=soft_a, soft_m2v=soft_a),
        ),
        (
            symmetric_info_nce(
                vt,
                mt,
                scale,
                weights=torch.from_numpy(w),
                soft_targets=(torch.from_numpy(soft_a), torch.from_numpy(soft_b)),
            ),
            _np_info_nce(v, m, scale, weights=w, soft_v2m=soft_a, soft_m2v=soft_b),
        ),
        (
            symmetric_info_nce(vt, mt, scale, soft_targets=(None, torch.from_numpy(soft_b))),
            _np_info_nce(v, m, scale, soft_m2v=soft_b),
        ),
    ]
    for got, want in cases:
        assert got.shape == () and got.dtype == torch.float64
        np.testing.assert_allclose(got.item(), want, rtol=1e-10, atol=1e-10)
    # float32 inputs: float32 result, same value to float32 precision.
    got32 = info_nce_loss(vt.float(), mt.float(), scale, weights=torch.from_numpy(w).float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.item(), _np_info_nce(v, m, scale, weights=w), rtol=1e-5)


def test_one_hot_soft_targets_equal_hard_and_zero_weights():
    rng = np.random.default_rng(1)
    v, m = torch.from_numpy(_normalised(rng, 6, 4)), torch.from_numpy(_normalised(rng, 6, 4))
    hard = symmetric_info_nce(v, m, 10.0)
    torch.testing.assert_close(symmetric_info_nce(v, m, 10.0, soft_targets=torch.eye(6)), hard)
    torch.testing.assert_close(symmetric_info_nce(v, m, 10.0, weights=torch.full((6,), 3.0)), hard)
    # A zero weight removes the row from the mean (its item stays a negative column).
    w = torch.tensor([1.0, 1, 1, 1, 1, 0], dtype=torch.float64)
    got = symmetric_info_nce(v, m, 10.0, weights=w)
    np.testing.assert_allclose(got.item(), _np_info_nce(v.numpy(), m.numpy(), 10.0, w.numpy()))
    # All-zero weights give 0, not nan.
    assert symmetric_info_nce(v, m, 10.0, weights=torch.zeros(6)).item() == 0.0


def test_gradcheck_embeddings_and_scale():
    rng = np.random.default_rng(2)
    v = torch.from_numpy(_normalised(rng, 5, 3)).requires_grad_()
    m = torch.from_numpy(_normalised(rng, 5, 3)).requires_grad_()
    s = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    w = torch.from_numpy(rng.random(5) + 0.5)
    soft = torch.from_numpy(_soft(rng, 5))
    assert torch.autograd.gradcheck(
        lambda a, b, c: symmetric_info_nce(a, b, c, weights=w, soft_targets=soft), (v, m, s)
    )


def test_half_precision_returns_float32_with_grad():
    torch.manual_seed(0)
    v = F.normalize(torch.randn(8, 16), dim=1)
    m = F.normalize(torch.randn(8, 16), dim=1)
    ref = symmetric_info_nce(v.bfloat16().float(), m.bfloat16().float(), 20.0)
    vb, mb = v.bfloat16().requires_grad_(), m.bfloat16().requires_grad_()
    loss = symmetric_info_nce(vb, mb, torch.tensor(20.0, dtype=torch.bfloat16))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-2, atol=1e-2)
    loss.backward()
    assert vb.grad.dtype == torch.bfloat16 and torch.isfinite(mb.grad.float()).all()


def test_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        symmetric_info_nce(x, torch.randn(5, 3), 1.0)
    with pytest.raises(ValueError, match="same shape"):
        symmetric_info_nce(torch.randn(4), torch.randn(4), 1.0)
    with pytest.raises(ValueError, match="weights must be"):
        symmetric_info_nce(x, x, 1.0, weights=torch.ones(3))
    with pytest.raises(ValueError, match="soft_targets must be"):
        symmetric_info_nce(x, x, 1.0, soft_targets=torch.ones(4, 3) / 3)
    with pytest.raises(ValueError, match="temperature"):
        LogitScale(temperature=0.0)


def test_gather_is_identity_without_distributed():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def test_logit_scale_learnable_and_fixed():
    ls = LogitScale()
    assert isinstance(ls.log_scale, torch.nn.Parameter)
    assert ls().item() == pytest.approx(1 / 0.07, rel=1e-6)
    v = F.normalize(torch.randn(4, 3), dim=1)
    symmetric_info_nce(v, v.flip(0), ls()).backward()
    assert ls.log_scale.grad is not None and ls.log_scale.grad.item() != 0.0
    # Above the cap the forward value is pinned at 100 and clamp_() pins the parameter.
    with torch.no_grad():
        ls.log_scale.fill_(math.log(250.0))
    assert ls().item() == pytest.approx(100.0, rel=1e-6)
    ls.clamp_()
    assert ls.log_scale.item() == pytest.approx(math.log(100.0))

    fixed = LogitScale(temperature=0.005, learnable=False)
    assert list(fixed.parameters()) == [] and "log_scale" in fixed.state_dict()
    assert fixed().item() == pytest.approx(200.0, rel=1e-6)  # a fixed scale is not clamped
    assert not fixed().requires_grad


# ----------------------------------------------------------------------------- two processes

_F, _D = 5, 4  # raw input width and embedding width of the toy encoder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_for_rows(case, rows, emb_leaves: bool):
    """Loss on `rows` of the case, with embeddings as leaves or produced by the toy encoder."""
    w = None if case["weights"] is None else case["weights"][rows]
    soft = None if case["soft"] is None else case["soft"][rows]
    s = case["log_scale"].clone().requires_grad_()
    if emb_leaves:
        v = case["v"][rows].clone().requires_grad_()
        m = case["m"][rows].clone().requires_grad_()
        leaves = {"v": v, "m": m, "s": s}
    else:
        pv = case["pv"].clone().requires_grad_()
        pm = case["pm"].clone().requires_grad_()
        v = F.normalize(case["raw_v"][rows] @ pv, dim=1)
        m = F.normalize(case["raw_m"][rows] @ pm, dim=1)
        leaves = {"pv": pv, "pm": pm, "s": s}
    loss = symmetric_info_nce(v, m, s.exp(), weights=w, soft_targets=soft)
    loss.backward()
    return loss.detach(), {k: t.grad for k, t in leaves.items()}


def _rows(sizes, rank):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _worker(rank: int, world: int, port: int, cases, out_dir: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = []
        for case in cases:
            rows = _rows(case["sizes"], rank)
            loss_e, grads_e = _loss_for_rows(case, rows, emb_leaves=True)
            loss_p, grads_p = _loss_for_rows(case, rows, emb_leaves=False)
            for g in grads_p.values():  # what DDP does to parameter gradients
                dist.all_reduce(g, op=dist.ReduceOp.SUM)
                g /= world
            results.append(
                {"loss_e": loss_e, "grads_e": grads_e, "loss_p": loss_p, "grads_p": grads_p}
            )
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _make_case(seed: int, sizes, weights: bool, soft: bool):
    g = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    rng = np.random.default_rng(seed)
    return {
        "sizes": sizes,
        "v": F.normalize(torch.randn(n, _D, generator=g, dtype=torch.float64), dim=1),
        "m": F.normalize(torch.randn(n, _D, generator=g, dtype=torch.float64), dim=1),
        "raw_v": torch.randn(n, _F, generator=g, dtype=torch.float64),
        "raw_m": torch.randn(n, _F, generator=g, dtype=torch.float64),
        "pv": torch.randn(_F, _D, generator=g, dtype=torch.float64),
        "pm": torch.randn(_F, _D, generator=g, dtype=torch.float64),
        "log_scale": torch.tensor(math.log(5.0), dtype=torch.float64),
        "weights": torch.from_numpy(rng.random(n) + 0.2) if weights else None,
        "soft": torch.from_numpy(_soft(rng, n)) if soft else None,
    }


def test_two_processes_match_one_process(tmp_path):
    cases = [
        _make_case(0, (3, 3), weights=False, soft=False),
        _make_case(1, (3, 2), weights=False, soft=False),  # uneven local batches
        _make_case(2, (2, 4), weights=True, soft=False),
        _make_case(3, (4, 3), weights=True, soft=True),
    ]
    world = 2
    mp.spawn(_worker, args=(world, _free_port(), cases, str(tmp_path)), nprocs=world, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]

    for c, case in enumerate(cases):
        every = slice(0, sum(case["sizes"]))
        want_e, grads_e = _loss_for_rows(case, every, emb_leaves=True)
        want_p, grads_p = _loss_for_rows(case, every, emb_leaves=False)
        got = [per_rank[r][c] for r in range(world)]
        # (a) the mean of the ranks' losses is the one-process loss
        for key, want in (("loss_e", want_e), ("loss_p", want_p)):
            mean = (got[0][key] + got[1][key]) / world
            torch.testing.assert_close(mean, want, atol=1e-10, rtol=0)
        # (b) local embedding gradients / W are the one-process rows; the shared scale's
        # gradient averaged over ranks is the one-process one
        for r in range(world):
            rows = _rows(case["sizes"], r)
            for key in ("v", "m"):
                torch.testing.assert_close(
                    got[r]["grads_e"][key] / world, grads_e[key][rows], atol=1e-10, rtol=0
                )
        mean_s = (got[0]["grads_e"]["s"] + got[1]["grads_e"]["s"]) / world
        torch.testing.assert_close(mean_s, grads_e["s"], atol=1e-10, rtol=0)
        # (c) encoder parameters and scale with DDP-averaged gradients: the one-process grads
        for r in range(world):
            for key in ("pv", "pm", "s"):
                torch.testing.assert_close(got[r]["grads_p"][key], grads_p[key], atol=1e-10, rtol=0)


def test_autocast_does_not_lower_precision():
    torch.manual_seed(4)
    v = F.normalize(torch.randn(9, 16), dim=1)
    m = F.normalize(torch.randn(9, 16), dim=1)
    want = symmetric_info_nce(v, m, 100.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = symmetric_info_nce(v, m, 100.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
