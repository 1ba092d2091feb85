"""The embedding cache (trainer.accumulate_grad_batches): the whole batch's gradient, exactly.

Each model's gradient with N micro-batches is compared with its own plain autograd gradient
on the whole batch (float64, no dropout), and, with dropout, with a reference that embeds the
same micro-batches with autograd in the same random order.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lightning_app.config import IICLVMConfig, IILossConfig, OptimConfig, TextConfig
from models.grad_cache import (
    DirectEmbedder,
    EmbeddingCache,
    batch_coupled_modules,
    split_rows,
)
from models.iiclvm import IICLVM
from models.ssvmr import SSVMR, default_model_config


def iiclvm(text: str | None = None, dropout: float = 0.0, **ii) -> IICLVM:
    cfg = IICLVMConfig(embed_dim=16, video_dim=24, music_dim=10)
    for enc in (cfg.video_encoder, cfg.music_encoder):
        enc.d_model, enc.layers, enc.heads, enc.dropout = 16, 1, 2, dropout
    if text:
        cfg.text = TextConfig(enabled=True, source=text, buckets=97, max_tokens=8, dim=12)
    ii = {"weight": 0.5, **ii}
    if text:
        ii.setdefault("text_weight", 1.0)
    return IICLVM(dataclasses.asdict(cfg), dataclasses.asdict(IILossConfig(**ii)),
                  dataclasses.asdict(OptimConfig()))


def batch(n: int = 12, t: int = 5, seed: int = 0, dtype=torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    words = ["w1", "w2 w3", "", "w1 w9 w9", "hello world", "a b c d"]
    return {
        "video": torch.randn(n, t, 24, generator=g, dtype=dtype), "video_mask": mask,
        "music": torch.randn(n, t, 10, generator=g, dtype=dtype), "music_mask": mask.clone(),
        "text": [words[i % len(words)] for i in range(n)],
        "text_emb": torch.randn(n, 12, generator=g, dtype=dtype),
        "weight": torch.rand(n, generator=g, dtype=dtype) + 0.5,
        "index": torch.arange(n),
    }


def gradients(model: nn.Module, b: dict, embed) -> tuple[dict[str, torch.Tensor], float]:
    model.zero_grad()
    parts = model.training_loss(b, embed)
    embed.backward(parts["loss"])
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, float(parts["loss"].detach())


def assert_same_gradients(want: dict, got: dict, atol: float = 1e-10) -> None:
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=atol, msg=name)


# ----- the pieces ---------------------------------------------------------------------------


def test_split_rows_slices_per_row_values_only():
    b = {"video": torch.arange(10).view(5, 2), "keys": list("abcde"), "scale": torch.tensor(2.0),
         "other": torch.zeros(3)}
    parts = split_rows(b, 2)
    assert [p["keys"] for p in parts] == [list("abc"), list("de")]
    assert torch.equal(torch.cat([p["video"] for p in parts]), b["video"])
    assert all(p["scale"] is b["scale"] and p["other"] is b["other"] for p in parts)
    assert len(split_rows(b, 8)) == 5  # more pieces than rows: no empty micro-batch


def test_input_gradient_equals_autograd_through_the_whole_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = {"video": torch.randn(10, 4, dtype=torch.float64)}

    def fn(b):
        return {"emb": net(b["video"])}

    def loss_of(out):  # couples all rows, like an in-batch loss
        e = out["emb"]
        return (e @ e.T).logsumexp(1).sum()

    direct = DirectEmbedder()
    out = direct(fn, x, input_grad="video")
    want = direct.input_gradient(loss_of(out), out)
    cache = EmbeddingCache(3)
    out = cache(fn, x, input_grad="video")
    got = cache.input_gradient(loss_of(out), out)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert all(p.grad is None for p in net.parameters())  # no parameter touched


def test_batch_statistics_are_found():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    assert batch_coupled_modules(net) == ["1"]
    assert batch_coupled_modules(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))) == []


# ----- models -------------------------------------------------------------------------------


@pytest.mark.parametrize("text,variant", [(None, "mse"), (None, "kl"), (None, "rank"),
                                          ("hashed", "mse"), ("precomputed", "kl")])
def test_iiclvm_gradient_with_four_micro_batches_is_the_whole_batch_gradient(text, variant):
    torch.manual_seed(0)
    model = iiclvm(text, variant=variant, k=8).double().train()
    b = batch()
    want, loss = gradients(model, b, DirectEmbedder())
    got, cached_loss = gradients(model, b, EmbeddingCache(4))
    assert cached_loss == pytest.approx(loss, rel=1e-12)
    assert "logit_scale.log_scale" in got  # used by the loss directly, not via embeddings
    if text:
        assert any(n.startswith("text_encoder.") for n in got)
    assert_same_gradients(want, got)


def test_uneven_micro_batches():
    torch.manual_seed(0)
    model = iiclvm().double().train()
    b = batch(n=11)
    want, _ = gradients(model, b, DirectEmbedder())
    got, _ = gradients(model, b, EmbeddingCache(3))  # 4 + 4 + 3 rows
    assert_same_gradients(want, got)


def test_dropout_is_replayed_with_the_masks_of_the_cached_pass():
    """With dropout the reference is autograd over the same micro-batches in the same order."""
    model = iiclvm(dropout=0.3).double().train()
    b = batch()
    torch.manual_seed(1)
    got, _ = gradients(model, b, EmbeddingCache(4))
    model.zero_grad()
    torch.manual_seed(1)
    outs = [model.embed_pair(piece) for piece in split_rows(b, 4)]
    full = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    model.loss(b, full["video"], full["music"])["loss"].backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert_same_gradients(want, got)
    torch.manual_seed(1)
    no_dropout_order, _ = gradients(model, b, DirectEmbedder())  # whole-batch masks differ
    assert not torch.allclose(no_dropout_order["video_proj.weight"], got["video_proj.weight"])


def ssvmr(saliency: bool = True, **mixing) -> SSVMR:
    cfg = default_model_config()
    cfg.update(video_dim=24, music_dim=10, embed_dim=16, saliency=saliency)
    for side in ("video_encoder", "music_encoder"):
        cfg[side] = {"kind": "transformer", "d_model": 16, "layers": 1, "heads": 2,
                     "dropout": 0.0}
    cfg["mixing"].update({"enabled": True, **mixing})  # mixing is off by default
    return SSVMR(cfg, dataclasses.asdict(OptimConfig()))


@pytest.mark.parametrize("mixing", [
    {"enabled": False},
    {"mode": "random_aligned", "keep_clean": False},
    {"mode": "random_aligned", "keep_clean": True},
    # The default: span placed by the input-gradient saliency of the clean loss (an extra
    # backward pass), which the cache replays against its cached output gradients.
    {"mode": "saliency", "saliency_source": "gradient", "label_weight": "saliency"},
    {"mode": "saliency", "saliency_source": "attention", "window_frac": 0.4},
], ids=["no_mixing", "random_mixed_only", "random_keep_clean", "gradient_saliency",
        "attention_saliency"])
def test_ssvmr_gradient_with_four_micro_batches_is_the_whole_batch_gradient(mixing):
    torch.manual_seed(0)
    model = ssvmr(**mixing).double().train()
    torch.nn.init.normal_(model.saliency.score.weight)  # a non-uniform attention
    b = batch()
    torch.manual_seed(1)  # the mixing plan's draws
    want, loss = gradients(model, b, DirectEmbedder())
    torch.manual_seed(1)
    got, cached_loss = gradients(model, b, EmbeddingCache(4))
    assert cached_loss == pytest.approx(loss, rel=1e-12)
    assert_same_gradients(want, got)
    if mixing.get("enabled", True):
        parts = model.training_loss(b, DirectEmbedder())
        assert float(parts["mix_frac"]) > 0  # mixing really happened
