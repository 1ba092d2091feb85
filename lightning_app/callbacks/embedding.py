"""Embed every row of the train split with the current model, identically on every rank.

Self-training and back retrieval score all training pairs between epochs. Each process
embeds a strided shard of the rows (padded like DistributedSampler so every rank has the same
number, at least one), the shards are gathered with their row index, padding is dropped, and
every rank ends with the same [N, E] tensors in dataset order. One process: no gather.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from pytorch_lightning.utilities import move_data_to_device

from lightning_app.distributed import gather_rows, unique_by_index


def shard_rows(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Rows rank, rank + world, ... of range(n), wrapped so every rank gets ceil(n / world)."""
    if n < 1:
        raise ValueError("embed_train_split: the dataset is empty")
    per_rank = -(-n // world_size)
    return torch.arange(rank, per_rank * world_size, world_size) % n


@contextlib.contextmanager
def _evaluating(pl_module: torch.nn.Module, dataset: Any):
    """Eval mode + no_grad; deterministic frame sampling; every module's mode restored after."""
    modes = {m: m.training for m in pl_module.modules()}
    # SparseFrameDataset samples random frames while `train` is set: use segment centres.
    sampling = getattr(dataset, "train", None)
    if isinstance(sampling, bool):
        dataset.train = False
    pl_module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        if isinstance(sampling, bool):
            dataset.train = sampling


def embed_train_split(trainer: Any, pl_module: Any, dataset: Any, batch_size: int
                      ) -> dict[str, torch.Tensor]:
    """{"video": [N, E], "music": [N, E]} float32 on pl_module.device, row n = dataset row n.

    `dataset` is a PairDataset (its `__getitems__(rows)` gives a batch); `pl_module` has
    `encode_video(batch)` / `encode_music(batch)`. Inputs and forward pass go through the
    trainer's precision plugin when there is one (as training steps do). Every rank must call
    it (it gathers across processes).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    world = int(getattr(trainer, "world_size", 1) or 1)
    rank = int(getattr(trainer, "global_rank", 0) or 0)
    device = pl_module.device
    rows = shard_rows(len(dataset), rank, world)
    plugin = getattr(trainer, "precision_plugin", None)
    videos, musics = [], []
    with _evaluating(pl_module, dataset):
        for start in range(0, len(rows), batch_size):
            batch = dataset.__getitems__(rows[start:start + batch_size].tolist())
            batch = move_data_to_device(batch, device)
            if plugin is not None:  # e.g. "16-true" casts float inputs to the model's dtype
                batch = plugin.convert_input(batch)
            context = plugin.forward_context() if plugin is not None else contextlib.nullcontext()
            with context:
                videos.append(pl_module.encode_video(batch).float())
                musics.append(pl_module.encode_music(batch).float())
    video, music = torch.cat(videos), torch.cat(musics)
    if world <= 1:
        return {"video": video, "music": music}
    index = rows.to(device)
    gathered = {
        name: gather_rows(t, pl_module.all_gather, world)
        for name, t in (("video", video), ("music", music), ("index", index))
    }
    out = unique_by_index(gathered.pop("index"), **gathered)
    if out["index"].shape[0] != len(dataset):
        raise RuntimeError(
            f"embed_train_split: gathered {out['index'].shape[0]} of {len(dataset)} rows"
        )
    return {"video": out["video"], "music": out["music"]}


def embed_loader(trainer: Any, pl_module: Any, loader: Any, side: str, dim: int,
                 device: torch.device) -> torch.Tensor:
    """[N, dim] float32 embeddings of one side ("video"/"music") of every batch of `loader`,
    in loader order (no gather: every process reads the whole loader). None -> [0, dim]."""
    if loader is None:
        return torch.zeros(0, dim, device=device)
    plugin = getattr(trainer, "precision_plugin", None)
    encode = pl_module.encode_video if side == "video" else pl_module.encode_music
    out = []
    with _evaluating(pl_module, loader.dataset):
        for batch in loader:
            batch = move_data_to_device(batch, pl_module.device)
            if plugin is not None:
                batch = plugin.convert_input(batch)
            context = plugin.forward_context() if plugin is not None else contextlib.nullcontext()
            with context:
                out.append(encode(batch).float())
    return torch.cat(out).to(device) if out else torch.zeros(0, dim, device=device)
