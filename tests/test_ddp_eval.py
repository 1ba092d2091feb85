"""Validation metrics with 2 processes (DDP, gloo) equal those of 1 process on an odd split."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules.himv200k import HIMV200KDataModule
from datamodules.synthetic.himv200k import write_himv200k
from datamodules.synthetic.planted import PlantedSpec
from lightning_app.callbacks import RecallAtK
from lightning_app.config import LossConfig, OptimConfig, VMNetConfig
from models.vmnet import VMNet


class DumpingRecall(RecallAtK):
    """Writes each rank's metrics to a file so the test can compare ranks."""

    def __init__(self, out: Path):
        super().__init__(ks=(1, 5, 10), chunk_size=17)
        self.out = out

    def on_validation_epoch_end(self, trainer, pl_module):
        super().on_validation_epoch_end(trainer, pl_module)
        path = self.out / f"rank{trainer.global_rank}-of-{trainer.world_size}.json"
        path.write_text(json.dumps(self.last_metrics["val"]))


@pytest.mark.slow
def test_two_process_validation_equals_one_process(tmp_path):
    root = tmp_path / "himv"
    # 101 validation pairs: DistributedSampler pads 2 ranks to 51 + 51 with a repeated item.
    write_himv200k(PlantedSpec(pairs=300, val=101, test=50, seed=5), root, progress=False)
    torch.manual_seed(0)
    model = VMNet(dataclasses.asdict(VMNetConfig()), dataclasses.asdict(LossConfig()),
                  dataclasses.asdict(OptimConfig()))
    state = {k: v.clone() for k, v in model.state_dict().items()}

    for devices in (1, 2):
        model.load_state_dict(state)
        dm = HIMV200KDataModule(root, batch_size=50, eval_batch_size=20)
        trainer = pl.Trainer(accelerator="cpu", devices=devices, logger=False,
                             strategy="ddp_spawn" if devices > 1 else "auto",
                             enable_checkpointing=False, enable_progress_bar=False,
                             callbacks=[DumpingRecall(tmp_path)])
        trainer.validate(model, datamodule=dm, verbose=False)

    single = json.loads((tmp_path / "rank0-of-1.json").read_text())
    assert single["val/gallery_size"] == 101
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}-of-2.json").read_text()) == single
