"""VM-NET: the architecture and loss as docs/methods.md describes them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_app.config import LossConfig, OptimConfig, VMNetConfig
from losses.ranking import inter_modal_ranking_loss
from losses.structure import soft_intra_modal_structure_loss
from models.pooling import masked_pool
from models.vmnet import VMNet


def make_model(**overrides) -> VMNet:
    model_cfg = dataclasses.replace(VMNetConfig(), **overrides)
    return VMNet(dataclasses.asdict(model_cfg), dataclasses.asdict(LossConfig()),
                 dataclasses.asdict(OptimConfig()))


def make_batch(n: int = 8, t: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.randn(n, t, 1024, generator=g),
        "video_mask": torch.ones(n, t, dtype=torch.bool),
        "music": torch.randn(n, 1, 1140, generator=g),
        "music_mask": torch.ones(n, 1, dtype=torch.bool),
    }


def layer_summary(seq: nn.Sequential) -> list:
    out = []
    for layer in seq:
        if isinstance(layer, nn.Linear):
            out.append(("fc", layer.in_features, layer.out_features))
        elif isinstance(layer, nn.BatchNorm1d):
            out.append(("bn", layer.num_features, layer.eps, layer.momentum))
        elif isinstance(layer, nn.Dropout):
            out.append(("dropout", layer.p))
        else:
            out.append((type(layer).__name__.lower(),))
    return out


def test_branches_match_the_released_architecture():
    m = make_model()
    assert layer_summary(m.music_net) == [
        ("fc", 1140, 2048), ("relu",), ("dropout", 0.1),
        ("fc", 2048, 1024), ("relu",), ("dropout", 0.1),
        ("fc", 1024, 512), ("bn", 512, 1e-3, 0.01),
    ]
    assert layer_summary(m.video_net) == [
        ("fc", 1024, 2048), ("relu",), ("dropout", 0.1),
        ("fc", 2048, 512), ("bn", 512, 1e-3, 0.01),
    ]


def test_is_linear_drops_relus_and_mean_max_doubles_video_input():
    m = make_model(is_linear=True, video_pooling="mean_max")
    assert not any(isinstance(x, nn.ReLU) for x in [*m.music_net, *m.video_net])
    assert m.video_net[0].in_features == 2048


def test_he_truncated_normal_init():
    torch.manual_seed(0)
    fc = make_model().music_net[0]
    std = math.sqrt(2.0 / fc.in_features)
    w = fc.weight.detach()
    assert w.abs().max() <= 2 * std + 1e-7
    # A normal truncated at 2 std keeps 0.8796 of its standard deviation.
    assert w.std().item() == pytest.approx(0.8796 * std, rel=0.02)
    assert torch.count_nonzero(fc.bias) == 0


def test_embeddings_are_unit_length():
    m = make_model().eval()
    batch = make_batch()
    v, mu = m.encode_video(batch), m.encode_music(batch)
    assert v.shape == (8, 512) and mu.shape == (8, 512)
    torch.testing.assert_close(v.norm(dim=1), torch.ones(8))
    torch.testing.assert_close(mu.norm(dim=1), torch.ones(8))


def test_total_loss_is_3_1_02_02_weighted_sum():
    torch.manual_seed(0)
    m = make_model().eval()
    batch = make_batch(n=12, t=3)
    v, mu = m.encode_video(batch), m.encode_music(batch)
    parts = m.loss(batch, v, mu)
    l_mv, l_vm = inter_modal_ranking_loss(mu, v, 100, 0.1)
    s_m = soft_intra_modal_structure_loss(batch["music"].mean(1), mu, 100)
    s_v = soft_intra_modal_structure_loss(batch["video"].mean(1), v, 100)
    expected = 3 * l_mv + l_vm + 0.2 * s_m + 0.2 * s_v
    torch.testing.assert_close(parts["loss"], expected)
    torch.testing.assert_close(parts["rank_mv"], l_mv)


@pytest.mark.parametrize("pooling", ["mean", "max", "mean_max"])
def test_masked_pool_matches_numpy(pooling):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)
    lengths = [5, 1, 3, 2]
    mask = np.arange(5)[None, :] < np.array(lengths)[:, None]
    got = masked_pool(torch.from_numpy(x), torch.from_numpy(mask), pooling).numpy()
    mean = np.stack([x[i, :n].mean(0) for i, n in enumerate(lengths)])
    mx = np.stack([x[i, :n].max(0) for i, n in enumerate(lengths)])
    want = {"mean": mean, "max": mx, "mean_max": np.concatenate([mean, mx], 1)}[pooling]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_unknown_pooling_is_an_error():
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        masked_pool(torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool), "median")


def test_checkpoint_reloads_with_weights_only(tmp_path):
    import pytorch_lightning as pl

    torch.manual_seed(0)
    m = make_model()
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         accelerator="cpu", max_epochs=0)
    trainer.strategy.connect(m)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = VMNet.load_from_checkpoint(path, weights_only=True).eval()
    batch = make_batch()
    torch.testing.assert_close(loaded.encode_music(batch), m.eval().encode_music(batch))
    assert loaded.hparams["loss"]["margin"] == 0.1


def test_adaptive_margin_routes_through_cmgsd_with_the_epoch_ramp():
    from lightning_app.config import CMGSDConfig
    from losses.margin import cmgsd_ranking_loss

    torch.manual_seed(0)
    loss_cfg = dataclasses.asdict(LossConfig(margin="adaptive", cmgsd=CMGSDConfig(ramp_epochs=4)))
    m = VMNet(dataclasses.asdict(VMNetConfig()), loss_cfg, dataclasses.asdict(OptimConfig())).eval()
    batch = make_batch(n=10)
    v, mu = m.encode_video(batch), m.encode_music(batch)
    import pytorch_lightning as pl

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    m.trainer = trainer
    trainer.fit_loop.epoch_progress.current.completed = 2  # current_epoch = 2 -> lambda 0.5
    parts = m.loss(batch, v, mu)
    static = torch.cat([torch.nn.functional.normalize(batch["video"].mean(1), dim=-1),
                        torch.nn.functional.normalize(batch["music"].mean(1), dim=-1)], dim=-1)
    l_mv, l_vm = cmgsd_ranking_loss(mu, v, v.detach(), mu.detach(), 0.5, 100, 0.1, 0.2, 1.0,
                                    static_feats=static, zscore="row", max_margin=0.5)
    assert float(parts["cmgsd_lambda"]) == 0.5
    torch.testing.assert_close(parts["rank_mv"], l_mv)
    torch.testing.assert_close(parts["rank_vm"], l_vm)
