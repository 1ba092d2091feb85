"""SSVMR: saliency pooling, span mixing (helpers and training loss), soft targets, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from losses.contrastive import info_nce_loss
from models.encoders import TemporalEncoder
from models.pooling import masked_pool
from models.saliency import gradient_saliency
from models.span_mixing import (
    MixPlan,
    length_share,
    mixed_positions,
    mixing_targets,
    saliency_mix_plan,
    sample_mix_plan,
    span_mix,
)
from models.ssvmr import SSVMR, default_model_config

OPTIM = {"name": "adam", "lr": 1e-2, "weight_decay": 0.0, "momentum": 0.9,
         "scheduler": "constant", "warmup_steps": 0}
LENGTHS = [5, 3, 1, 5, 2, 4]


def make_model(kind: str = "transformer", saliency: bool = True, dropout: float = 0.0,
               **mixing) -> SSVMR:
    cfg = default_model_config()
    cfg.update(video_dim=12, music_dim=8, embed_dim=16, saliency=saliency)
    for side in ("video_encoder", "music_encoder"):
        cfg[side] = {"kind": kind, "d_model": 16, "layers": 1, "heads": 2, "dropout": dropout}
    cfg["mixing"].update({"enabled": True, **mixing})
    return SSVMR(cfg, OPTIM)


def make_batch(lengths=LENGTHS, t=5, seed=0, weight=None) -> dict:
    g = torch.Generator().manual_seed(seed)
    n = len(lengths)
    mask = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]
    batch = {
        "video": torch.randn(n, t, 12, generator=g), "video_mask": mask,
        "music": torch.randn(n, t, 8, generator=g), "music_mask": mask.clone(),
        "index": torch.arange(n), "video_key": [f"v{i}" for i in range(n)],
        "music_key": [f"m{i}" for i in range(n)],
    }
    if weight is not None:
        batch["weight"] = weight
    return batch


def plan(partner, start, length, source=None) -> MixPlan:
    t = [torch.tensor(x, dtype=torch.long) for x in (partner, start, length)]
    return MixPlan(*t, None if source is None else torch.tensor(source, dtype=torch.long))


# ----- span_mix / targets ------------------------------------------------------------------


def reference_mix(video, mask, partner, start, length, source_start=None):
    video, mask = video.numpy(), mask.numpy()
    out, out_mask, rep = video.copy(), mask.copy(), np.zeros_like(mask)
    for i in range(video.shape[0]):
        p = int(partner[i])
        for t in range(int(start[i]), int(start[i]) + int(length[i])):
            if t < video.shape[1] and mask[p, t]:
                out[i, t], out_mask[i, t], rep[i, t] = video[p, t], True, True
    return out, out_mask, rep


@pytest.mark.parametrize("case", [
    # partner shorter than the span (row 0 <- row 2 of length 1), span at the end, a span
    # running past T, an unmixed row (length 0) and a span outside A's valid frames.
    ([2, 0, 3, 4, 1, 0], [0, 1, 0, 3, 0, 4], [4, 2, 1, 2, 0, 3]),
    ([1, 2, 3, 4, 5, 0], [4, 0, 0, 0, 1, 3], [1, 3, 1, 5, 1, 2]),
])
def test_span_mix_matches_a_loop_reference(case):
    b = make_batch()
    p = plan(*case)
    mixed, mixed_mask = span_mix(b["video"], b["video_mask"], *p)
    want, want_mask, want_rep = reference_mix(b["video"], b["video_mask"], *p)
    np.testing.assert_array_equal(mixed.numpy(), want)
    np.testing.assert_array_equal(mixed_mask.numpy(), want_mask)
    np.testing.assert_array_equal(mixed_positions(b["video_mask"], *p).numpy(), want_rep)


def test_span_mix_random_plans_match_the_reference():
    torch.manual_seed(1)
    b = make_batch(lengths=[7, 2, 5, 7, 1, 3, 6, 4], t=7, seed=3)
    for _ in range(20):
        p = sample_mix_plan(b["video_mask"], 0.7, 0.1, 1.0)
        mixed, mixed_mask = span_mix(b["video"], b["video_mask"], *p)
        want, want_mask, _ = reference_mix(b["video"], b["video_mask"], *p)
        np.testing.assert_array_equal(mixed.numpy(), want)
        np.testing.assert_array_equal(mixed_mask.numpy(), want_mask)
        # sampled spans lie inside A's frames: the mask never changes
        assert torch.equal(mixed_mask, b["video_mask"])


@pytest.mark.parametrize("distribution", ["uniform", "beta"])
def test_sample_mix_plan_invariants(distribution):
    torch.manual_seed(0)
    lengths = torch.tensor([10, 1, 7, 10, 3, 0, 9, 10] * 4)
    mask = torch.arange(10)[None, :] < lengths[:, None]
    mixed = 0
    for _ in range(50):
        p = sample_mix_plan(mask, 0.5, 0.2, 0.6, distribution, 2.0, 5.0)
        rows = torch.arange(len(lengths))
        assert (p.partner != rows).all()
        on = p.length > 0
        assert not on[lengths == 0].any()
        la, span, start = lengths[on], p.length[on], p.start[on]
        assert (span >= 1).all() and (start >= 0).all() and (start + span <= la).all()
        lo = (0.2 * la.float()).round().clamp_min(1)
        hi = (0.6 * la.float()).round().clamp_min(1)
        assert (span >= lo).all() and (span <= hi).all()
        assert (p.start[~on] == 0).all()
        mixed += int(on.sum())
    assert 0.4 < mixed / (50 * int((lengths > 0).sum())) < 0.6
    single = sample_mix_plan(mask[:1], 1.0, 0.2, 0.6)
    assert int(single.length[0]) == 0  # nobody to mix with


def test_uniform_targets_give_the_partner_the_replaced_share():
    b = make_batch()
    mask = b["video_mask"]  # lengths 5, 3, 1, 5, 2, 4
    # row 0: span 2 from partner 3 (full); row 1: span 3 from partner 2 of length 1 (only t=0
    # replaced); row 3: unmixed; row 5: span at the end, 1 frame of 4 from partner 0.
    p = plan([3, 2, 0, 0, 0, 0], [1, 0, 0, 0, 0, 3], [2, 3, 0, 0, 0, 1])
    _, mixed_mask = span_mix(b["video"], mask, *p)
    rep = mixed_positions(mask, *p)
    t = mixing_targets(length_share(rep, mixed_mask), p.partner, offset=4, n_global=14)
    assert t.shape == (6, 14)
    torch.testing.assert_close(t.sum(1), torch.ones(6))
    want = torch.zeros(6, 14)
    for i in range(6):
        want[i, 4 + i] = 1.0
    want[0, 4], want[0, 7] = 1 - 2 / 5, 2 / 5
    want[1, 5], want[1, 6] = 1 - 1 / 3, 1 / 3
    want[5, 9], want[5, 4] = 1 - 1 / 4, 1 / 4
    torch.testing.assert_close(t, want)
    with pytest.raises(ValueError, match="do not fit"):
        mixing_targets(length_share(rep, mixed_mask), p.partner, offset=10, n_global=14)


# ----- saliency pooling ---------------------------------------------------------------------


def test_encoder_frames_pool_to_forward():
    torch.manual_seed(0)
    enc = TemporalEncoder(12, d_model=8, layers=1, heads=2, dropout=0.0).eval()
    b = make_batch()
    x, m = b["video"], b["video_mask"]
    torch.testing.assert_close(enc(x, m), masked_pool(enc.frames(x, m), m, "mean"))


@pytest.mark.parametrize("kind", ["transformer", "mean", "bilstm"])
def test_saliency_pooling_ignores_padded_frames(kind):
    torch.manual_seed(0)
    m = make_model(kind).eval()
    torch.nn.init.normal_(m.saliency.score.weight)  # a non-trivial saliency
    b = make_batch()
    v, attn = m.video_features(b["video"], b["video_mask"])
    assert (attn[~b["video_mask"]] == 0).all()
    torch.testing.assert_close(attn.sum(1), torch.ones(6))
    assert attn.std() > 0.01
    garbage = dict(b, video=b["video"].masked_fill(~b["video_mask"].unsqueeze(-1), 1e3))
    torch.testing.assert_close(m.encode_video(garbage), v)
    torch.testing.assert_close(m.video_saliency(garbage), attn)


def test_saliency_starts_as_the_masked_mean():
    torch.manual_seed(0)
    m = make_model().eval()
    b = make_batch()
    h = m.video_encoder(b["video"], b["video_mask"])
    plain = torch.nn.functional.normalize(m.video_proj(h), dim=-1)
    torch.testing.assert_close(m.encode_video(b), plain)
    with pytest.raises(RuntimeError, match="saliency=false"):
        make_model(saliency=False).video_saliency(b)


# ----- the training loss ---------------------------------------------------------------------


@pytest.mark.parametrize("mixing", [{"enabled": False}, {"prob": 0.0}])
def test_without_mixing_the_loss_is_plain_infonce(mixing):
    torch.manual_seed(0)
    m = make_model(**mixing).train()
    b = make_batch()
    parts = m.train_loss(b)
    want = info_nce_loss(m.encode_video(b), m.encode_music(b), m.logit_scale())
    torch.testing.assert_close(parts["loss"], want)
    assert "mix_frac" not in parts


@pytest.mark.parametrize("saliency", [True, False])
def test_mixed_rows_replace_clean_rows_without_keep_clean(saliency):
    torch.manual_seed(0)
    m = make_model(saliency=saliency, keep_clean=False).train()
    if saliency:
        torch.nn.init.normal_(m.saliency.score.weight)
    w = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.0, 0.25])
    b = make_batch(weight=w)
    p = plan([3, 2, 0, 0, 0, 0], [1, 0, 0, 0, 0, 3], [2, 3, 0, 0, 0, 1])
    parts = m.train_loss(b, p)
    mixed, mixed_mask = span_mix(b["video"], b["video_mask"], *p)
    emb, _ = m.video_features(mixed, mixed_mask)
    music, scale = m.encode_music(b), m.logit_scale()
    # by hand: v2m row 0 = .6 song 0 + .4 song 3; row 1 = 2/3 song 1 + 1/3 song 2; row 5 =
    # .75 song 5 + .25 song 0; m2v: each song's column of that matrix, normalised
    t = torch.eye(6)
    t[0, 0], t[0, 3] = 0.6, 0.4
    t[1, 1], t[1, 2] = 2 / 3, 1 / 3
    t[5, 5], t[5, 0] = 0.75, 0.25
    tm = t.T / t.T.sum(1, keepdim=True)
    logp_v = torch.log_softmax(scale * emb @ music.T, dim=1)
    logp_m = torch.log_softmax(scale * music @ emb.T, dim=1)
    ce = (-(t * logp_v).sum(1) - (tm * logp_m).sum(1)) / 2
    torch.testing.assert_close(parts["loss"], (w * ce).sum() / w.sum())
    assert float(parts["mix_frac"]) == pytest.approx(3 / 6)
    assert float(parts["mix_span"]) == pytest.approx((2 / 5 + 1 / 3 + 1 / 4) / 3)
    assert float(parts["mix_weight"]) == pytest.approx((0.4 + 1 / 3 + 0.25) / 3)


def test_keep_clean_averages_the_clean_and_the_mixed_loss():
    torch.manual_seed(0)
    m = make_model(keep_clean=True).train()
    w = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.0, 0.25])
    b = make_batch(weight=w)
    # unaligned windows: row 0 takes frames 3, 4 of row 3 into its frames 0, 1
    p = plan([3, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], [3, 0, 0, 0, 0, 0])
    parts = m.train_loss(b, p)
    music, scale = m.encode_music(b), m.logit_scale()
    clean = m.encode_video(b)
    mixed, mixed_mask = span_mix(b["video"], b["video_mask"], *p)
    emb, _ = m.video_features(mixed, mixed_mask)
    eye = torch.eye(6)

    def ce(video, t_v, t_m):
        lv = torch.log_softmax(scale * video @ music.T, dim=1)
        lm = torch.log_softmax(scale * music @ video.T, dim=1)
        return (w * (-(t_v * lv).sum(1) - (t_m * lm).sum(1)) / 2).sum() / w.sum()

    t = eye.clone()
    t[0, 0], t[0, 3] = 0.6, 0.4        # 2 of row 0's 5 frames come from row 3
    t[5, 5], t[5, 0] = 0.75, 0.25      # 1 of row 5's 4 frames comes from row 0
    tm = t.T / t.T.sum(1, keepdim=True)
    want = (ce(clean, eye, eye) + ce(emb, t, tm)) / 2
    torch.testing.assert_close(parts["loss"], want)
    torch.testing.assert_close(parts["nce"], ce(clean, eye, eye))
    torch.testing.assert_close(parts["nce_mixed"], ce(emb, t, tm))


def test_random_aligned_training_draws_todays_plan():
    m = make_model(mode="random_aligned", keep_clean=False, prob=1.0).train()
    b = make_batch(lengths=[5] * 6)
    torch.manual_seed(0)
    parts = m.train_loss(b)
    torch.manual_seed(0)
    p = sample_mix_plan(b["video_mask"], 1.0, 0.1, 0.5)
    torch.testing.assert_close(parts["loss"], m.train_loss(b, p)["loss"])
    assert float(parts["mix_frac"]) == 1.0
    assert 0.1 <= float(parts["mix_span"]) <= 0.5
    plain = info_nce_loss(m.encode_video(b), m.encode_music(b), m.logit_scale())
    assert not torch.allclose(parts["loss"], plain)


@pytest.mark.parametrize("source", ["gradient", "attention"])
def test_saliency_mode_plans_from_the_clean_batchs_saliency(source):
    torch.manual_seed(0)
    m = make_model(saliency_source=source, window_frac=0.4, dropout=0.0).train()
    torch.nn.init.normal_(m.saliency.score.weight)
    b = make_batch(lengths=[5, 5, 4, 5, 3, 5])
    torch.manual_seed(1)
    parts = m.train_loss(b)
    # the same by hand: the clean loss's input gradient (or the attention) picks the windows
    frames = b["video"].clone().requires_grad_(True)
    emb, attn = m.video_features(frames, b["video_mask"])
    clean = info_nce_loss(emb, m.encode_music(b), m.logit_scale())
    sal = (gradient_saliency(clean, frames, b["video_mask"]) if source == "gradient"
           else attn.detach())
    torch.manual_seed(1)
    p = saliency_mix_plan(sal, b["video_mask"], 0.4, 1.0)
    assert (p.length > 0).all()
    torch.testing.assert_close(parts["loss"], m.train_loss(b, p)["loss"])
    assert all(param.grad is None for param in m.parameters())  # saliency left no gradient


def test_mixing_starts_at_start_epoch():
    import types

    m = make_model(start_epoch=2).train()
    b = make_batch()
    m._trainer = types.SimpleNamespace(current_epoch=1)  # what LightningModule reads
    assert not m.mixing_active() and "mix_frac" not in m.train_loss(b)
    m._trainer.current_epoch = 2
    assert m.mixing_active() and "mix_frac" in m.train_loss(b)


def test_salient_frames_are_measured_never_trained_on():
    torch.manual_seed(0)
    m = make_model(keep_clean=False).train()
    b = make_batch(lengths=[5] * 6)
    p = plan([1, 2, 3, 4, 5, 0], [0] * 6, [2] * 6, [3] * 6)
    salient = torch.zeros(6, 5, dtype=torch.bool)
    salient[:, 3] = True  # every B's frame 3 is pasted over A's frames 0, 1: A keeps frame 3
    salient[0] = torch.tensor([True, True, False, False, False])  # row 0 loses all of A
    plain = m.train_loss(b, p)
    parts = m.train_loss({**b, "salient": salient}, p)
    torch.testing.assert_close(parts["loss"], plain["loss"])
    # row 5's partner is row 0, whose frames 3, 4 are not salient
    assert float(parts["mix/b_content"]) == pytest.approx(5 / 6)
    assert float(parts["mix/a_survives"]) == pytest.approx(5 / 6)


def test_eval_embeddings_are_deterministic_and_never_mixed():
    torch.manual_seed(0)
    m = make_model(prob=1.0).eval()
    b = make_batch()
    with pytest.warns(UserWarning, match="self.log"):  # no trainer attached
        out1 = m.validation_step(b, 0)
    with pytest.warns(UserWarning, match="self.log"):
        out2 = m.test_step(b, 0)
    torch.testing.assert_close(out1["video"], out2["video"], rtol=0, atol=0)
    torch.testing.assert_close(out1["video"], m.encode_video(b))
    torch.testing.assert_close(out1["music"], m.encode_music(b))
    plain = info_nce_loss(out1["video"], out1["music"], m.logit_scale())
    torch.testing.assert_close(m.train_loss(b)["loss"], plain)  # eval mode: no mixing


def test_pair_weights_enter_the_loss_exactly_as_info_nce_weights():
    torch.manual_seed(0)
    m = make_model(prob=0.0).train()
    w = torch.tensor([1.0, 0.5, 2.0, 0.0, 1.0, 0.25])
    b = make_batch(weight=w)
    v, mu = m.encode_video(b), m.encode_music(b)
    got = m.train_loss(b)["loss"]
    torch.testing.assert_close(got, info_nce_loss(v, mu, m.logit_scale(), weights=w))
    assert not torch.allclose(got, info_nce_loss(v, mu, m.logit_scale()))


def test_config_defaults_and_validation():
    m = SSVMR({"mixing": {"prob": 0.25}}, OPTIM)
    hp = m.hparams["model"]
    assert hp["video_dim"] == 512 and hp["saliency"] is True
    assert hp["mixing"] == {"enabled": False, "mode": "saliency", "saliency_source": "gradient",
                            "window_frac": 0.1, "label_weight": "length", "keep_clean": True,
                            "start_epoch": 0, "prob": 0.25, "min_span": 0.1, "max_span": 0.5,
                            "distribution": "uniform", "beta_a": 2.0, "beta_b": 2.0}
    assert default_model_config()["video_encoder"]["kind"] == "transformer"
    with pytest.raises(ValueError, match="unknown SSVMR model.mixing keys: spam"):
        SSVMR({"mixing": {"spam": 1}}, OPTIM)
    with pytest.raises(ValueError, match="mixing.prob"):
        SSVMR({"mixing": {"prob": 1.5}}, OPTIM)
    with pytest.raises(ValueError, match="min_span"):
        SSVMR({"mixing": {"min_span": 0.6}}, OPTIM)
    with pytest.raises(ValueError, match="distribution"):
        SSVMR({"mixing": {"distribution": "gauss"}}, OPTIM)
    with pytest.raises(ValueError, match="mixing.mode"):
        SSVMR({"mixing": {"mode": "cutmix"}}, OPTIM)
    with pytest.raises(ValueError, match="window_frac"):
        SSVMR({"mixing": {"window_frac": 1.0}}, OPTIM)
    with pytest.raises(ValueError, match="needs model.ssvmr.saliency=true"):
        SSVMR({"saliency": False, "mixing": {"saliency_source": "attention"}}, OPTIM)


def test_learnable_temperature_is_clamped():
    m = make_model()
    with torch.no_grad():
        m.logit_scale.log_scale.fill_(10.0)
    m.on_train_batch_end(None, None, 0)
    assert float(m.logit_scale().detach()) == pytest.approx(100.0)


def test_checkpoint_reloads_with_weights_only(tmp_path):
    import pytorch_lightning as pl

    torch.manual_seed(0)
    m = make_model(prob=0.3, distribution="beta")
    torch.nn.init.normal_(m.saliency.score.weight)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         accelerator="cpu", max_epochs=0)
    trainer.strategy.connect(m)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = SSVMR.load_from_checkpoint(path, weights_only=True).eval()
    b = make_batch()
    m.eval()
    torch.testing.assert_close(loaded.encode_video(b), m.encode_video(b))
    torch.testing.assert_close(loaded.encode_music(b), m.encode_music(b))
    assert loaded.hparams["model"]["mixing"]["distribution"] == "beta"
    assert loaded.mix["prob"] == 0.3


def test_a_few_steps_on_a_planted_batch_reduce_the_loss():
    torch.manual_seed(0)
    n, t = 16, 6
    z = torch.randn(n, 1, 4)
    lengths = torch.randint(3, t + 1, (n,))
    mask = torch.arange(t)[None, :] < lengths[:, None]
    b = {
        "video": z @ torch.randn(4, 12) + 0.1 * torch.randn(n, t, 12), "video_mask": mask,
        "music": z @ torch.randn(4, 8) + 0.1 * torch.randn(n, t, 8), "music_mask": mask,
    }
    m = make_model(prob=0.5)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)

    def eval_loss() -> float:
        m.eval()
        with torch.no_grad():
            return float(m.train_loss(b)["loss"])

    before = eval_loss()
    m.train()
    for _ in range(15):
        opt.zero_grad()
        m.train_loss(b)["loss"].backward()
        opt.step()
        m.on_train_batch_end(None, b, 0)
    after = eval_loss()
    assert after < 0.5 * before, (before, after)


# ----- two processes: global columns of the soft targets ------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, state, cases, out_dir):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = SSVMR(cfg, OPTIM)
        m.load_state_dict(state)
        m.train()
        losses = []
        for batch, plans in cases:
            sizes = [len(p.partner) for p in plans]
            lo = sum(sizes[:rank])
            local = {k: v[lo:lo + sizes[rank]] for k, v in batch.items()}
            losses.append(m.train_loss(local, plans[rank])["loss"].detach())
        torch.save(losses, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _joined(plans, offsets, field: str) -> torch.Tensor | None:
    """One rank-ordered MixPlan field: partner indices shifted by each rank's row offset."""
    parts = [getattr(p, field) for p in plans]
    if parts[0] is None:  # e.g. source_start: aligned windows on every rank
        return None
    return torch.cat([x + (o if field == "partner" else 0) for x, o in zip(parts, offsets)])


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """Rank offsets: the mean of two ranks' mixed losses is the one-process loss."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    m = make_model(prob=1.0).train()
    torch.nn.init.normal_(m.saliency.score.weight)
    cases = []
    for sizes, seed in (((3, 3), 0), ((4, 2), 1)):
        lengths = [5, 3, 1, 5, 2, 4]
        w = torch.tensor([1.0, 0.5, 2.0, 0.3, 1.0, 0.25])
        b = make_batch(lengths=lengths, seed=seed, weight=w)
        b = {k: v for k, v in b.items() if isinstance(v, torch.Tensor)}
        plans, lo = [], 0
        for n in sizes:  # local partners (another local sample), spans inside A's frames
            rows = torch.arange(n)
            la = torch.tensor(lengths[lo:lo + n])
            span = (la // 2).clamp_min(1)
            plans.append(MixPlan((rows + 1) % n, la - span, torch.where(la > 1, span, 0)))
            lo += n
        cases.append((b, plans))
    mp.spawn(_ddp_worker, args=(2, _free_port(), m.hparams["model"], m.state_dict(), cases,
                                str(tmp_path)), nprocs=2, join=True)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for c, (b, plans) in enumerate(cases):
        offsets = [0, len(plans[0].partner)]

        glob = MixPlan(*(_joined(plans, offsets, f) for f in MixPlan._fields))
        want = m.train_loss(b, glob)["loss"].detach()
        torch.testing.assert_close((per_rank[0][c] + per_rank[1][c]) / 2, want)


def test_config_schema_matches_the_model_defaults():
    import dataclasses as dc

    from lightning_app.config import SSVMRConfig
    from models.ssvmr import default_model_config

    assert dc.asdict(SSVMRConfig()) == default_model_config()
