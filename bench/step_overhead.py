"""Per-step framework overhead: Lightning + the data path around a model that does nothing.

The model (`ZeroCostModel`) has one parameter; its training step logs one value (as every
model here logs its loss parts) and returns `w * 0`, so the step's arithmetic is nil and
what remains per step is the DataLoader fetch (the real StoreDataModule path: shuffled
SparseFrameDataset batches, Global-Sparse sampled and dequantised where the split lives),
the batch transfer, Lightning's hooks, logging and the optimizer. Data: a YouTube-8M-shaped
store of random uint8 codes (1024-d video, 128-d audio, 36 frames, `frames` = 32), written
once per run.

Ours: ms per step inside `Trainer.fit` (an epoch timer callback; fit's setup and the first
epoch excluded: it reads a split held in memory in and makes the batch arrays),
CSV logger on, checkpointing, progress bar and validation off. Reference: the same epochs in
a bare loop over the same loader with the same zero work (zero_grad, step, backward,
optimizer step). A third pass, profiled with Lightning's SimpleProfiler (its own cost
excluded from the two timings), says where the Lightning step's time goes; Lightning's own
part is the profiled hooks, logging, batch transfer, training_step call and optimizer
closure (an upper bound: the closure includes the scalar SGD step the bare loop does too).
On a shared machine that sum is steadier than the difference of the two totals.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from bench.epoch import EpochTimer
from datamodules.base import StoreDataModule
from datamodules.feature_store import Item, ModalitySpec, StoreSplit, write_store
from datamodules.sampling import SparseFrameDataset

FULL = {"items": 2048, "stored_frames": 36, "frames": 32, "batch": 256, "epochs": 8}
QUICK = {"items": 256, "stored_frames": 36, "frames": 32, "batch": 64, "epochs": 4}
DEQUANTIZE = (4.0 / 255.0, -2.0)  # YouTube-8M's code-to-float mapping
FRAMEWORK_PARTS = ("hooks", "logging (self.log)", "batch transfer", "training_step",
                   "optimizer step")


class ZeroCostModel(pl.LightningModule):
    """A model whose step costs nothing: what is left of a step's time is the framework's."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.log_seconds = 0.0

    def zero_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.w * 0.0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.zero_loss(batch)
        start = time.perf_counter()
        self.log("train/loss", loss, batch_size=batch["video"].shape[0])
        self.log_seconds += time.perf_counter() - start
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RandomYouTube8M(StoreDataModule):
    """A YouTube-8M-shaped store of random codes (the bench's data; no source files)."""

    def __init__(self, root: Path, settings: dict, cache: str):
        super().__init__(root, batch_size=settings["batch"], eval_batch_size=settings["batch"])
        self.settings = settings
        self.configure_cache(cache)

    def ensure_store(self) -> Path:
        if (self.store_path / "meta.json").exists():
            return self.store_path
        s, rng = self.settings, np.random.default_rng(0)
        modalities = {"video": ModalitySpec(1024, "uint8", DEQUANTIZE),
                      "music": ModalitySpec(128, "uint8", DEQUANTIZE)}

        def items(n: int, prefix: str):
            for i in range(n):
                arrays = {m: rng.integers(0, 256, (s["stored_frames"], spec.dim), np.uint8)
                          for m, spec in modalities.items()}
                yield Item(f"{prefix}{i}", f"{prefix}{i}", arrays)

        n = s["items"]
        splits = {"train": items(n, "t"), "val": items(8, "v"), "test": items(8, "x")}
        write_store(self.store_path, splits, modalities, {"dataset": "bench-random"})
        return self.store_path

    def make_dataset(self, split: StoreSplit) -> SparseFrameDataset:
        return SparseFrameDataset(split, self.settings["frames"], train=split.split == "train")


def _trainer(tmp: Path, epochs: int, device: torch.device, profiler: Any = None,
             callbacks: list | None = None) -> pl.Trainer:
    from pytorch_lightning.loggers import CSVLogger

    return pl.Trainer(
        max_epochs=epochs, logger=CSVLogger(tmp / "csv"), log_every_n_steps=10,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, accelerator=device.type if device.type != "cpu" else "cpu",
        devices=1, profiler=profiler, callbacks=callbacks or [], num_sanity_val_steps=0)


def lightning_steps(dm: StoreDataModule, tmp: Path, epochs: int, device: torch.device
                    ) -> tuple[float, int, float, int]:
    """(seconds inside the epochs after the first, their optimizer steps, seconds per step in
    self.log, all optimizer steps) under Trainer.fit. The first epoch reads a split held in
    memory in and makes the batch arrays: one-off costs, left out of both loops' times."""
    model, timer = ZeroCostModel(), EpochTimer(skip=1)
    trainer = _trainer(tmp, epochs, device, callbacks=[timer])
    trainer.fit(model, datamodule=dm)
    steps = max(1, trainer.global_step)
    return timer.seconds, timer.steps, model.log_seconds / steps, trainer.global_step


def bare_steps(dm: StoreDataModule, epochs: int, device: torch.device) -> tuple[float, int]:
    """(seconds, steps) of the same epochs after the first in a plain loop over the same
    loader."""
    model = ZeroCostModel().to(device)
    opt = model.configure_optimizers()
    steps, start = 0, time.perf_counter()
    for epoch in range(epochs):
        if epoch == 1:  # as lightning_steps: the first epoch is not timed
            steps, start = 0, time.perf_counter()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
            opt.zero_grad(set_to_none=True)
            model.zero_loss(batch).backward()
            opt.step()
            steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, steps


def profile_breakdown(dm: StoreDataModule, tmp: Path, epochs: int, device: torch.device
                      ) -> dict[str, float]:
    """Seconds per step by part of a Lightning step (SimpleProfiler's records)."""
    from pytorch_lightning.profilers import SimpleProfiler

    profiler = SimpleProfiler()
    model, timer = ZeroCostModel(), EpochTimer()
    trainer = _trainer(tmp, epochs, device, profiler=profiler, callbacks=[timer])
    trainer.fit(model, datamodule=dm)
    steps = max(1, trainer.global_step)
    total = {name: sum(d) for name, d in profiler.recorded_durations.items()}
    parts: dict[str, float] = defaultdict(float)
    for name, seconds in total.items():
        parts[_category(name)] += seconds
    # optimizer_step wraps the closure (training_step, backward, zero_grad): keep its own time.
    parts["optimizer step"] -= parts["training_step"] + parts["backward"]
    parts["logging (self.log)"] = model.log_seconds
    parts["training_step"] -= model.log_seconds
    parts.pop("other", None)
    out = {name: max(0.0, sec) / steps for name, sec in parts.items()}
    out["epoch (profiled)"] = timer.seconds / steps
    return out


def _category(action: str) -> str:
    if "train_dataloader_next" in action:
        return "dataloader fetch"
    if "batch_to_device" in action:
        return "batch transfer"
    if action.endswith("optimizer_step"):
        return "optimizer step"
    if action.endswith(".training_step"):
        return "training_step"
    if action.endswith(".backward"):
        return "backward"
    if action.startswith(("[Callback]", "[LightningModule]", "[LightningDataModule]",
                          "[Strategy]")) and ".on_" in action or "zero_grad" in action:
        return "hooks"
    return "other"


def measure(tmp: Path, quick: bool, device: torch.device, cache: str) -> dict[str, Any]:
    """Steps timed three ways (module docstring); every time is seconds per step."""
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    s = QUICK if quick else FULL
    dm = RandomYouTube8M(tmp / "zero_cost_data", s, cache)
    dm.prepare_data()
    # Warm-up (page cache, allocator), then alternate and keep the fastest of each.
    lightning_steps(_fresh(dm, s, cache, tmp), tmp / f"{cache}_warm", 1, device)
    best_pl, best_bare, log_s, steps = float("inf"), float("inf"), 0.0, 0
    for k in range(2):
        t_pl, timed, log_s, steps = lightning_steps(
            _fresh(dm, s, cache, tmp), tmp / f"{cache}_pl{k}", s["epochs"], device)
        best_pl = min(best_pl, t_pl / max(1, timed))
        t_bare, bare_n = bare_steps(_fresh(dm, s, cache, tmp, device), s["epochs"], device)
        best_bare = min(best_bare, t_bare / bare_n)
    fetch = _fetch_only(_fresh(dm, s, cache, tmp, device), device)
    parts = profile_breakdown(_fresh(dm, s, cache, tmp), tmp / f"{cache}_prof", s["epochs"], device)
    place = _fresh(dm, s, cache, tmp, device).cache_device
    return {"lightning_s": best_pl, "bare_s": best_bare, "fetch_s": fetch, "steps": steps,
            "log_s": log_s, "parts": parts, "settings": dict(s), "cache": cache,
            "place": f"{place} memory" if place is not None else "memory-mapped files"}


def _fresh(dm: RandomYouTube8M, s: dict, cache: str, tmp: Path,
           device: torch.device | None = None) -> RandomYouTube8M:
    """A new DataModule on the same store (Trainer.fit sets up its own); with `device`,
    set up here as a Trainer on that device would."""
    out = RandomYouTube8M(dm.root, s, cache)
    if device is not None:
        strategy = type("Strategy", (), {"root_device": device})()
        out.trainer = type("T", (), {"strategy": strategy, "world_size": 1,
                                     "current_epoch": 0})()
        out.setup("fit")
    return out


def _fetch_only(dm: StoreDataModule, device: torch.device) -> float:
    """Seconds per batch of one epoch of the loader alone (moved to the device), after a
    warm-up epoch (a split held in memory is read in on its first batch, and the host path's
    batch arrays and kernels are made then: one-off costs the timed steps above never see)."""
    sum(1 for _ in dm.train_dataloader())  # keeps no batch: the timed epoch reuses them all
    loader = dm.train_dataloader()
    start, n = time.perf_counter(), 0
    for batch in loader:
        batch["video"].to(device, non_blocking=True)
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / max(1, n)


def overhead_row(group: str, res: dict[str, Any]) -> dict[str, Any]:
    """The bench row for one `measure` result (ms per step, Lightning vs the bare loop)."""
    from bench.common import RATIO_TIME, check, row

    s = res["settings"]
    ms = {k: v * 1e3 for k, v in res["parts"].items()}
    over = (res["lightning_s"] - res["bare_s"]) * 1e3
    parts = ", ".join(f"{k} {v:.2f}" for k, v in sorted(ms.items(), key=lambda kv: -kv[1])
                      if k != "epoch (profiled)")
    # Lightning's own share: every profiled part but the fetch and the zero model's own work
    # (a scalar's backward and SGD step, which the bare loop does too).
    own = sum(v for k, v in ms.items() if k in FRAMEWORK_PARTS)
    expected = s["epochs"] * (s["items"] // s["batch"])
    notes = (
        f"Lightning's own part of a step (profiled: hooks, logging, batch transfer, "
        f"training_step call, optimizer closure) {own:.2f} ms (goal <= 1 ms). "
        f"Zero-cost model, batch {s['batch']} x {s['frames']} GS frames from the store in "
        f"{res['place']} (data.cache={res['cache']}): Lightning "
        f"{res['lightning_s'] * 1e3:.2f} ms per step, bare loop {res['bare_s'] * 1e3:.2f} ms, "
        f"a difference of {over:+.2f} ms per step (within the noise of a shared machine "
        f"when small); the loader alone takes "
        f"{res['fetch_s'] * 1e3:.2f} ms per batch. Profiled step ({ms['epoch (profiled)']:.2f} "
        f"ms with SimpleProfiler's own cost, every epoch: the fetch includes the first "
        f"epoch's one-off reading in), ms per step: {parts}")
    return row(group, f"per-step framework overhead, zero-cost model, YouTube-8M-shaped batch "
               f"{s['batch']} (data.cache={res['cache']}): Lightning vs bare loop",
               res["lightning_s"] * 1e3, res["bare_s"] * 1e3, "ms/step", RATIO_TIME, notes,
               check=check(res["steps"] == expected,
                           f"optimizer steps under Lightning {res['steps']} = "
                           f"{s['epochs']} epochs x {s['items'] // s['batch']} batches"),
               overhead_ms=over, framework_ms=own, fetch_ms=res["fetch_s"] * 1e3,
               breakdown_ms=ms)
