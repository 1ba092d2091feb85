"""II-CLVM / II-CLVTM: encoders, text branch and loss composition."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lightning_app.config import IICLVMConfig, IILossConfig, OptimConfig, TextConfig
from losses.contrastive import info_nce_loss
from losses.inter_intra import inter_intra_loss
from models.encoders import TemporalEncoder
from models.iiclvm import IICLVM, RAW_TEXT_BUCKETS
from models.text import bag_of_tokens, hash_tokens


def make_model(text: str | None = None, **ii) -> IICLVM:
    cfg = IICLVMConfig(embed_dim=32)
    for enc in (cfg.video_encoder, cfg.music_encoder):
        enc.d_model, enc.layers, enc.heads = 32, 1, 4
    if text:
        cfg.text = TextConfig(enabled=True, source=text, buckets=97, max_tokens=8, dim=12)
    return IICLVM(dataclasses.asdict(cfg), dataclasses.asdict(IILossConfig(**ii)),
                  dataclasses.asdict(OptimConfig()))


def make_batch(n=6, t=5, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([5, 3, 1, 5, 2, 4])[:n]
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return {
        "video": torch.randn(n, t, 1024, generator=g), "video_mask": mask,
        "music": torch.randn(n, t, 128, generator=g), "music_mask": mask.clone(),
        "text": ["w1 w2 w3", "w4", "", "w1 w9 w9", "w2 w3", "hello world"][:n],
        "text_emb": torch.randn(n, 12, generator=g),
    }


@pytest.mark.parametrize("kind", ["transformer", "mean", "bilstm"])
def test_encoders_ignore_padded_frames(kind):
    torch.manual_seed(0)
    enc = TemporalEncoder(16, d_model=8, kind=kind, layers=1, heads=2, dropout=0.0).eval()
    x = torch.randn(3, 6, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    out = enc(x, mask)
    x2 = x.clone()
    x2[~mask] = 1e3  # garbage in the padding must not matter
    torch.testing.assert_close(enc(x2, mask), out)
    assert out.shape == (3, 8)


def test_unknown_encoder_kind():
    with pytest.raises(ValueError, match="unknown encoder 'gru'"):
        TemporalEncoder(4, kind="gru")


def test_hash_tokens_are_stable_and_padded():
    ids, mask = hash_tokens(["Hello, WORLD!", "", "a b c d e"], buckets=101, max_tokens=3)
    again, _ = hash_tokens(["hello world"], buckets=101, max_tokens=3)
    assert ids.shape == (3, 3)
    assert mask.tolist() == [[True, True, False], [False] * 3, [True] * 3]
    assert ids[0, :2].tolist() == again[0, :2].tolist()
    assert int(ids.min()) >= 0 and int(ids.max()) <= 100 and (ids[mask] > 0).all()
    counts = bag_of_tokens(torch.tensor([[3, 3, 0, 5]]), 8)
    assert counts.tolist() == [[0, 0, 0, 2, 0, 1, 0, 0]]


def test_without_ii_the_loss_is_plain_infonce():
    torch.manual_seed(0)
    m = make_model(weight=0.0).eval()
    b = make_batch()
    v, mu = m.encode_video(b), m.encode_music(b)
    parts = m.loss(b, v, mu)
    torch.testing.assert_close(parts["loss"], info_nce_loss(v, mu, m.logit_scale()))
    assert "ii" not in parts


@pytest.mark.parametrize("variant, center", [("mse", "none"), ("kl", "none"), ("rank", "none"),
                                             ("corr", "none"), ("mse", "batch")])
def test_ii_loss_adds_weighted_per_modality_terms(variant, center):
    torch.manual_seed(0)
    m = make_model(weight=0.5, variant=variant, video_weight=2.0, music_weight=0.25, k=4,
                   center=center).eval()
    b = make_batch()
    v, mu = m.encode_video(b), m.encode_music(b)
    parts = m.loss(b, v, mu)
    vm, mm = b["video_mask"].unsqueeze(-1).float(), b["music_mask"].unsqueeze(-1).float()
    raw_v = (b["video"] * vm).sum(1) / vm.sum(1)
    raw_m = (b["music"] * mm).sum(1) / mm.sum(1)
    kw = {"variant": variant, "temperature": 0.1, "k": 4, "center": center}
    ii = 2.0 * inter_intra_loss(raw_v, v, **kw) + 0.25 * inter_intra_loss(raw_m, mu, **kw)
    expected = info_nce_loss(v, mu, m.logit_scale()) + 0.5 * ii
    torch.testing.assert_close(parts["loss"], expected)


def test_video_weight_zero_skips_the_video_term_entirely():
    """No video II term is computed: the loss does not even read the raw video frames'
    similarity (garbage there changes nothing), and no `ii_video` part is logged."""
    torch.manual_seed(0)
    m = make_model(weight=1.0, video_weight=0.0, music_weight=1.0).eval()
    b = make_batch()
    v, mu = m.encode_video(b), m.encode_music(b)
    parts = m.loss(b, v, mu)
    assert "ii_video" not in parts and "ii_music" in parts
    b2 = dict(b, video=b["video"] * 1e3)  # the raw video changes ...
    parts2 = m.loss(b2, v, mu)  # ... but with the same embeddings the loss does not
    torch.testing.assert_close(parts2["loss"], parts["loss"])
    off = make_model(weight=1.0, video_weight=0.0, music_weight=0.0).eval()
    parts = off.loss(b, v, mu)
    assert "ii" not in parts
    torch.testing.assert_close(parts["loss"], info_nce_loss(v, mu, off.logit_scale()))


def test_clvtm_hashed_text_changes_the_video_embedding_and_adds_a_text_term():
    torch.manual_seed(0)
    m = make_model(text="hashed", variant="mse").eval()
    b = make_batch()
    v = m.encode_video(b)
    b2 = dict(b, text=["something else entirely"] * 6)
    assert not torch.allclose(m.encode_video(b2), v)
    parts = m.loss(b, v, m.encode_music(b))
    ids, mask = hash_tokens(b["text"], 97, 8)
    emb = F.normalize(m.text_proj(m.text_encoder(ids, mask)), dim=-1)
    want = inter_intra_loss(bag_of_tokens(ids, RAW_TEXT_BUCKETS), emb, variant="mse")
    torch.testing.assert_close(parts["ii_text"], want)


def test_clvtm_precomputed_text_and_missing_text_errors():
    torch.manual_seed(0)
    m = make_model(text="precomputed").eval()
    b = make_batch()
    assert m.encode_video(b).shape == (6, 32)
    with pytest.raises(KeyError, match="text_emb"):
        m.encode_video({k: v for k, v in b.items() if k != "text_emb"})
    h = make_model(text="hashed")
    with pytest.raises(KeyError, match="needs `text` in the batch"):
        h.encode_video({k: v for k, v in b.items() if k != "text"})


def test_learnable_temperature_is_trained_and_clamped():
    m = make_model()
    assert any(p is m.logit_scale.log_scale for p in m.parameters())
    with torch.no_grad():
        m.logit_scale.log_scale.fill_(10.0)
    m.on_train_batch_end(None, None, 0)
    assert float(m.logit_scale()) == pytest.approx(100.0)
