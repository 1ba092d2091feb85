"""Helpers for the self-training / back-retrieval tests (not a test module).

`TableModel` is a real RetrievalModule whose embeddings are looked up by id from tables built
from a synthetic dataset's truth, so the outcome of a cleaning round is known exactly:

- video of pair i:         normalise(e_i + style_weight * s_style(i))
- music file of pair m:    the same vector for the pair whose music it REALLY holds
                           (truth `written_music_id`), so a clean pair scores 1 and a noisy
                           pair's true song (another row's music file) also scores 1.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from datamodules.himv200k import HIMV200KDataModule
from datamodules.synthetic.himv200k import write_himv200k
from datamodules.synthetic.planted import PlantedSpec
from datamodules.synthetic.truth import read_truth
from models.base import RetrievalModule

SGD = {"name": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0,
       "scheduler": "constant", "warmup_steps": 0}


def noisy_himv(root: Path, seed: int = 11) -> tuple[HIMV200KDataModule, list[dict]]:
    """300 training pairs, 90 of them (30 %) with another pair's music; set up."""
    write_himv200k(PlantedSpec(pairs=400, val=50, test=50, noise=0.3, seed=seed), root,
                   progress=False)
    dm = HIMV200KDataModule(root, batch_size=100, eval_batch_size=50)
    dm.prepare_data()
    dm.setup("fit")
    return dm, read_truth(root)


class TableModel(RetrievalModule):
    """Fixed embeddings by id; records what each training step saw."""

    def __init__(self, truth: list[dict], style_weight: float = 0.5):
        super().__init__(SGD)
        self.w = torch.nn.Parameter(torch.zeros(1))
        pos = {r["id"]: p for p, r in enumerate(truth)}
        n, styles = len(truth), 1 + max(int(r["style"]) for r in truth)
        table = torch.zeros(n, n + styles)
        for p, r in enumerate(truth):
            table[p, p] = 1.0
            table[p, n + int(r["style"])] = style_weight
        table = torch.nn.functional.normalize(table, dim=1)
        self.register_buffer("table", table)
        self.video_pos = pos
        self.music_pos = {r["id"]: pos[r["written_music_id"]] for r in truth}
        self.seen: list[dict] = []

    def encode_video(self, batch):
        return self.table[[self.video_pos[i] for i in batch["video_id"]]]

    def encode_music(self, batch):
        return self.table[[self.music_pos[i] for i in batch["music_id"]]]

    def loss(self, batch, video, music):
        return {"loss": (self.w ** 2).sum()}

    def training_step(self, batch, batch_idx):
        self.seen.append({"epoch": self.current_epoch, "video_id": list(batch["video_id"]),
                          "music_id": list(batch["music_id"]),
                          "weight": batch["weight"].tolist() if "weight" in batch else None})
        return ((self.w - 1.0) ** 2).sum()

    def pairs_seen(self, epoch: int) -> dict[tuple[str, str], float]:
        out = {}
        for s in self.seen:
            if s["epoch"] == epoch:
                weights = s["weight"] or [1.0] * len(s["video_id"])
                out.update(zip(zip(s["video_id"], s["music_id"]), weights))
        return out


def fake_trainer(dm, epoch: int = 0, step: int = 0) -> SimpleNamespace:
    """What the callbacks' round functions use of a one-process Trainer."""
    strategy = SimpleNamespace(broadcast=lambda obj, src=0: obj, barrier=lambda name=None: None)
    return SimpleNamespace(datamodule=dm, world_size=1, global_rank=0, is_global_zero=True,
                           strategy=strategy, current_epoch=epoch, global_step=step,
                           reload_dataloaders_every_n_epochs=1)


def loader_pairs(dm) -> dict[tuple[str, str], float]:
    """(video id, music id) -> weight over one pass of the current train loader."""
    out = {}
    for batch in dm.train_dataloader():
        weights = batch["weight"].tolist() if "weight" in batch else [1.0] * len(batch["index"])
        out.update(zip(zip(batch["video_id"], batch["music_id"]), weights))
    return out
