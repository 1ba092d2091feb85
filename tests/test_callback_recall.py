"""Recall@K callback: whole-split metrics, and identical numbers across processes."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DistributedSampler

from datamodules.himv200k import HIMV200KDataModule
from datamodules.synthetic.himv200k import write_himv200k
from datamodules.synthetic.planted import PlantedSpec
from lightning_app.callbacks import RecallAtK
from lightning_app.config import LossConfig, OptimConfig, VMNetConfig
from lightning_app.distributed import gather_rows, unique_by_index
from lightning_app.retrieval import paired_retrieval_metrics
from models.vmnet import VMNet


def small_datamodule(tmp_path, eval_batch_size=64):
    root = tmp_path / "himv"
    write_himv200k(PlantedSpec(pairs=400, val=103, test=50, seed=3), root, progress=False)
    return HIMV200KDataModule(root, batch_size=64, eval_batch_size=eval_batch_size)


def vmnet() -> VMNet:
    return VMNet(dataclasses.asdict(VMNetConfig()), dataclasses.asdict(LossConfig()),
                 dataclasses.asdict(OptimConfig()))


def test_callback_metrics_equal_direct_computation_over_whole_split(tmp_path):
    torch.manual_seed(0)
    dm = small_datamodule(tmp_path, eval_batch_size=40)  # 103 = 40 + 40 + 23: ragged batches
    model = vmnet()
    callback = RecallAtK(ks=(1, 5, 10), chunk_size=7)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, callbacks=[callback])
    trainer.validate(model, datamodule=dm, verbose=False)

    model.eval()
    batch = dm.datasets["val"].__getitems__(list(range(103)))
    with torch.no_grad():
        v, m = model.encode_video(batch), model.encode_music(batch)
    want = paired_retrieval_metrics(v, m, batch["video_key"], batch["music_key"], ks=(1, 5, 10))
    got = callback.last_metrics["val"]
    assert got["val/gallery_size"] == 103
    for key, value in want.items():
        assert got[f"val/{key}"] == pytest.approx(value, abs=1e-12), key
        assert float(trainer.callback_metrics[f"val/{key}"]) == pytest.approx(value, rel=1e-6)


def test_unique_by_index_drops_sampler_padding_and_sorts():
    index = torch.tensor([4, 0, 2, 1, 3, 0])
    col = torch.tensor([40, 0, 20, 10, 30, 0])
    rows = unique_by_index(index, value=col)
    assert rows["index"].tolist() == [0, 1, 2, 3, 4]
    assert rows["value"].tolist() == [0, 10, 20, 30, 40]


def test_gather_rows_is_identity_for_one_process():
    t = torch.arange(6).reshape(3, 2)
    assert gather_rows(t, lambda x: pytest.fail("no gather with one process"), 1) is t


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, emb_v, emb_m, keys, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # DistributedSampler pads 13 items to 14 by repeating index 0 on the last rank.
        idx = torch.tensor(list(DistributedSampler(range(len(keys)), world, rank, shuffle=False)))
        if rank == 1:
            idx = torch.cat([idx, idx[:1]])  # ranks may also hold different counts (7 vs 8)
        def all_gather(t):
            parts = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(parts, t.contiguous())
            return torch.stack(parts)
        cols = {"video": emb_v[idx], "music": emb_m[idx], "video_key": keys[idx],
                "music_key": keys[idx], "index": idx}
        cols = {k: gather_rows(c, all_gather, world) for k, c in cols.items()}
        rows = unique_by_index(cols.pop("index"), **cols)
        out[rank] = paired_retrieval_metrics(rows["video"], rows["music"], rows["video_key"],
                                             rows["music_key"], ks=(1, 3))
    finally:
        dist.destroy_process_group()


def test_two_processes_compute_the_single_process_metrics():
    torch.manual_seed(0)
    n = 13
    emb_v = torch.nn.functional.normalize(torch.randn(n, 8), dim=1)
    emb_m = torch.nn.functional.normalize(emb_v + 0.8 * torch.randn(n, 8), dim=1)
    keys = torch.arange(n)
    want = paired_retrieval_metrics(emb_v, emb_m, keys, keys, ks=(1, 3))
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), emb_v, emb_m, keys, out), nprocs=2, join=True)
        got = dict(out)
    assert got[0] == want
    assert got[1] == want
