"""Micro-batch accumulation under DDP (2 CPU processes, gloo): the step of one process on the
whole global batch.

Each process holds half of the global batch and splits it into 2 micro-batches; InfoNCE
gathers the embeddings with gradient, DDP's own reduction is off during the cache's
backward passes and the gradients are averaged once. After one SGD step the weights must equal
those of one process stepping on the whole batch without micro-batches.
"""

from __future__ import annotations

import dataclasses

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_app.config import IICLVMConfig, IILossConfig, OptimConfig
from models.iiclvm import IICLVM

ROWS, FRAMES = 8, 3


class Pairs(Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.video = torch.randn(ROWS, FRAMES, 24, generator=g)
        self.music = torch.randn(ROWS, FRAMES, 10, generator=g)

    def __len__(self) -> int:
        return ROWS

    def __getitem__(self, i: int) -> dict:
        mask = torch.ones(FRAMES, dtype=torch.bool)
        return {"video": self.video[i], "video_mask": mask, "music": self.music[i],
                "music_mask": mask, "index": torch.tensor(i)}


def model() -> IICLVM:
    cfg = IICLVMConfig(embed_dim=8, video_dim=24, music_dim=10)
    for enc in (cfg.video_encoder, cfg.music_encoder):
        enc.kind, enc.d_model, enc.dropout = "mean", 8, 0.0
    # The II term is per process under DDP (by design); InfoNCE is global.
    ii = IILossConfig(weight=0.0)
    optim = OptimConfig(name="sgd", lr=0.5, momentum=0.0)
    torch.manual_seed(0)
    return IICLVM(dataclasses.asdict(cfg), dataclasses.asdict(ii), dataclasses.asdict(optim))


def fit_one_step(m: IICLVM, devices: int, micro_batches: int) -> dict[str, torch.Tensor]:
    m.set_micro_batches(micro_batches)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, max_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0,
                         strategy="ddp_spawn" if devices > 1 else "auto")
    # Global batch of 8: one batch of 8, or 4 per process.
    trainer.fit(m, DataLoader(Pairs(), batch_size=ROWS // devices, shuffle=False))
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.slow
def test_two_processes_with_micro_batches_step_as_one_process_on_the_whole_batch():
    want = fit_one_step(model(), devices=1, micro_batches=1)
    start = model().state_dict()
    got = fit_one_step(model(), devices=2, micro_batches=2)
    assert any(not torch.equal(want[k], start[k]) for k in want)  # the step moved weights
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)
