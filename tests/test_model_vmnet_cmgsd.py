"""VM-NET with CMGSD's dynamic sources and the matched control; the measuring helpers
(margin kinds from the truth file, the train/validation gap)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lightning_app.callbacks.margin_stats import negative_kinds, read_item_truth
from lightning_app.callbacks.train_gap import gap_metrics
from lightning_app.config import CMGSDConfig, LossConfig, OptimConfig, VMNetConfig
from losses.margin import cmgsd_ranking_loss
from losses.ranking import inter_modal_ranking_loss
from models.cmgsd_sources import pre_projection
from models.vmnet import VMNet

SMALL = {"music_dim": 12, "video_dim": 10, "embed_dim": 8, "music_hidden": [16, 14],
         "video_hidden": [18]}


def make(margin="adaptive", **cmgsd) -> VMNet:
    loss = LossConfig(margin=margin, num_negatives=4, cmgsd=CMGSDConfig(ramp_epochs=0, **cmgsd))
    return VMNet(dataclasses.asdict(VMNetConfig(**SMALL)), dataclasses.asdict(loss),
                 dataclasses.asdict(OptimConfig()))


def batch(n=9, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randn(n, 1, 10, generator=g),
            "music": torch.randn(n, 1, 12, generator=g),
            "video_mask": torch.ones(n, 1, dtype=torch.bool),
            "music_mask": torch.ones(n, 1, dtype=torch.bool)}


def _ranking(m: VMNet, b: dict, feats: tuple[torch.Tensor, torch.Tensor], **kw):
    v, mu = m.encode_video(b), m.encode_music(b)
    static = torch.cat([F.normalize(b["video"][:, 0], dim=-1),
                        F.normalize(b["music"][:, 0], dim=-1)], dim=-1)
    got = m.loss(b, v, mu)
    want = cmgsd_ranking_loss(mu, v, *feats, 1.0, 4, 0.1, 0.2, 1.0, static_feats=static, **kw)
    return got, want


def test_heads_source_reads_margins_off_the_heads_and_trains_only_them():
    torch.manual_seed(0)
    m = make(dynamic_source="heads", zscore="row", max_margin=0.5).eval()
    b = batch()
    v_pre = pre_projection(m.video_net, b["video"][:, 0])
    m_pre = pre_projection(m.music_net, b["music"][:, 0])
    hv, hm = m.margin_heads(v_pre, m_pre)
    got, want = _ranking(m, b, (hv.detach(), hm.detach()), zscore="row", max_margin=0.5)
    torch.testing.assert_close(got["rank_mv"], want[0])
    h_mv, h_vm = inter_modal_ranking_loss(hm, hv, 4, 0.1)
    torch.testing.assert_close(got["head_rank"], h_mv + h_vm)
    # The heads' loss moves the heads only, never the branches.
    m.zero_grad()
    got["head_rank"].backward()
    assert all(p.grad is None for p in m.video_net.parameters())
    assert m.margin_heads.video[2].weight.grad is not None


def test_ema_source_uses_the_momentum_copy_updated_after_each_step():
    torch.manual_seed(1)
    m = make(dynamic_source="ema", ema_decay=0.5, zscore="batch", max_margin=None).eval()
    b = batch()
    with torch.no_grad():
        for p in m.video_net.parameters():
            p.add_(0.3)
    ev, em = m.margin_ema.embed(b["video"][:, 0], b["music"][:, 0])
    got, want = _ranking(m, b, (ev, em))
    torch.testing.assert_close(got["rank_vm"], want[1])
    before = [p.clone() for p in m.margin_ema.video.parameters()]
    m.on_train_batch_end(None, b, 0)
    for p0, p, live in zip(before, m.margin_ema.video.parameters(), m.video_net.parameters()):
        torch.testing.assert_close(p, 0.5 * p0 + 0.5 * live.detach())


def test_fixed_matched_normalised_is_the_fixed_margin_loss_and_skips_sources():
    torch.manual_seed(2)
    m = make(margin="fixed_matched", normalize_terms=True, dynamic_source="heads").eval()
    assert not hasattr(m, "margin_heads")  # no dynamic margins: nothing to build
    b = batch()
    v, mu = m.encode_video(b), m.encode_music(b)
    parts = m.loss(b, v, mu)
    fixed = inter_modal_ranking_loss(mu, v, 4, 0.1)
    torch.testing.assert_close(parts["rank_mv"], fixed[0])
    torch.testing.assert_close(parts["rank_vm"], fixed[1])


def test_margin_record_holds_every_term_when_asked():
    torch.manual_seed(3)
    m = make(zscore="row")
    m.record_margins = True
    b = batch()
    m.loss(b, m.encode_video(b), m.encode_music(b))
    assert set(m.margin_record["margins"]) == {"fixed", "video", "music", "static"}
    assert m.margin_record["dist_mv"].shape == (9, 9)


def test_negative_kinds_and_truth_keys(tmp_path):
    path = tmp_path / "truth.tsv"
    path.write_text("id\tstyle\ttrue_music_id\tgroup\n"
                    "a\t0\ta\ta\nb\t0\ta\ta\nc\t0\tc\tc\nd\t1\td\td\ne\t2\te\td\n")
    truth = read_item_truth(path)
    assert truth["a"][1] == truth["b"][1] == "group:a" and truth["d"][1] == truth["e"][1]
    (tmp_path / "old.tsv").write_text("id\tstyle\ttrue_music_id\nx\t3\ty\n")
    assert read_item_truth(tmp_path / "old.tsv") == {"x": (3, "song:y")}
    keys = {k: i for i, k in enumerate(sorted({t[1] for t in truth.values()}))}
    ids = ["a", "b", "c", "d", "e"]
    kinds = negative_kinds(torch.tensor([truth[i][0] for i in ids]),
                           torch.tensor([keys[truth[i][1]] for i in ids]))
    assert kinds[0].tolist() == [0, 0, 1, 2, 2]  # b shares a's song, c only its style
    assert kinds[3, 4].item() == 0  # near-duplicates across styles are equivalent


def test_gap_metrics_against_brute_force():
    torch.manual_seed(4)
    e = F.normalize(torch.randn(20, 6), dim=1)
    train = {"video": e, "music": e + 0.01 * torch.randn(20, 6),
             "video_key": torch.arange(20), "music_key": torch.arange(20)}
    val = {"video": e, "music": F.normalize(torch.randn(20, 6), dim=1),
           "video_key": torch.arange(20), "music_key": torch.arange(20)}
    got = gap_metrics(train, val, ks=(1, 5))

    def brute(q, g, k):
        sims = q @ g.T
        return sum(int((sims[i] > sims[i, i]).sum()) < k for i in range(len(q))) / len(q)

    for k in (1, 5):
        t, v = brute(train["video"], train["music"], k), brute(val["video"], val["music"], k)
        assert got[f"train/v2m/R@{k}"] == pytest.approx(t)
        assert got[f"val/v2m/R@{k}"] == pytest.approx(v)
        assert got[f"v2m/R@{k}"] == pytest.approx(t - v)
    assert got["train/m2v/R@1"] == pytest.approx(brute(train["music"], train["video"], 1))
