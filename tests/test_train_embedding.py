"""embed_train_split: dataset order, eval mode restored, and two processes equal one."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_app.callbacks.embedding import embed_train_split, shard_rows


class Rows:
    """A dataset whose batches carry per-row features and id lists, like PairDataset."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.video = torch.randn(n, 4, generator=g)
        self.music = torch.randn(n, 4, generator=g)
        self.train = True  # SparseFrameDataset-style flag: must be off while embedding
        self.flags: list[bool] = []

    def __len__(self):
        return self.video.shape[0]

    def __getitems__(self, rows):
        self.flags.append(self.train)
        return {"video": self.video[rows], "music": self.music[rows],
                "index": torch.tensor(rows), "video_id": [str(r) for r in rows]}


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.drop = torch.nn.Dropout(0.5)  # would randomise embeddings in train mode
        self.frozen = torch.nn.Dropout(0.5)
        self.device = torch.device("cpu")
        self.modes: list[bool] = []

    def encode_video(self, batch):
        self.modes.append(self.training or torch.is_grad_enabled())
        return torch.nn.functional.normalize(self.drop(self.proj(batch["video"])), dim=1)

    def encode_music(self, batch):
        return torch.nn.functional.normalize(self.drop(self.proj(batch["music"])), dim=1)


def reference(model, data):
    with torch.no_grad():
        model.eval()
        batch = data.__getitems__(list(range(len(data))))
        return model.encode_video(batch), model.encode_music(batch)


def test_rows_in_dataset_order_in_eval_mode_and_modes_restored():
    torch.manual_seed(0)
    model, data = Encoder(), Rows(11)
    model.train()
    model.frozen.eval()  # a submodule deliberately in eval mode stays so
    out = embed_train_split(SimpleNamespace(world_size=1, global_rank=0), model, data, 4)
    assert model.modes == [False, False, False]
    assert data.flags == [False, False, False] and data.train is True
    assert model.training and model.drop.training and not model.frozen.training
    video, music = reference(model, data)
    assert torch.allclose(out["video"], video) and torch.allclose(out["music"], music)
    assert out["video"].dtype == torch.float32 and out["video"].shape == (11, 3)


def test_shards_cover_every_row_with_equal_counts():
    shards = [shard_rows(7, r, 3) for r in range(3)]
    assert [s.tolist() for s in shards] == [[0, 3, 6], [1, 4, 0], [2, 5, 1]]
    assert set(torch.cat(shards).tolist()) == set(range(7))
    with pytest.raises(ValueError, match="empty"):
        shard_rows(0, 0, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, state, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, data = Encoder(), Rows(7)
        model.load_state_dict(state)

        def all_gather(t):
            parts = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(parts, t.contiguous())
            return torch.stack(parts)

        model.all_gather = all_gather
        trainer = SimpleNamespace(world_size=world, global_rank=rank)
        got = embed_train_split(trainer, model, data, batch_size=2)
        out[rank] = (got["video"], got["music"])
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_give_every_rank_the_single_process_rows():
    torch.manual_seed(0)
    model = Encoder()
    video, music = reference(model, Rows(7))
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), model.state_dict(), out), nprocs=2, join=True)
        got = dict(out)
    for rank in (0, 1):
        assert torch.allclose(got[rank][0], video) and torch.allclose(got[rank][1], music)
