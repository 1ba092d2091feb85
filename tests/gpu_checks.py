"""The GPU checks' logic, on any device: `make gpu-check` runs them on CUDA (tests/test_gpu.py),
tests/test_gpu_checks_cpu.py runs the same functions on the CPU so they are known to work.

Each check compares `device` against the CPU reference or trains on `device`; nothing here
is CUDA-specific, so a check passing on the CPU exercises every line but the device's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent

# model name -> (experiment, overrides making it small); the authors' configs otherwise.
MODELS = {
    "vmnet": ("quickstart", ["loss.structure_k=20", "loss.num_negatives=20"]),
    "iiclvm": ("iiclvm_synthetic", ["data.synthetic.frames=12", "data.frames=8"]),
    "iiclvtm": ("iiclvtm_synthetic", ["data.synthetic.frames=12", "data.frames=8"]),
    "ssvmr": ("ssvmr_synthetic", ["data.synthetic.frames=12", "data.frames=8",
                                  "data.synthetic.unpaired_videos=0",
                                  "data.synthetic.unpaired_music=0"]),
}


def exact_embeddings(n: int, d: int, seed: int) -> torch.Tensor:
    """Embeddings whose dot products are exact in float32 (and TF32) on any device and in
    any summation order: entries are multiples of 1/4 in [-1, 1], so ties are real ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-4, 5, (n, d), generator=g).float() / 4


def check_metrics_equal(device: torch.device, n: int = 3000, d: int = 32) -> None:
    """Ranks (both directions, shared songs, ties) and top-k lists on `device` equal the CPU's."""
    from lightning_app.retrieval import paired_retrieval_ranks
    from lightning_app.search import topk_search

    video, music = exact_embeddings(n, d, 0), exact_embeddings(n, d, 1)
    music[1::7] = music[0::7][: len(music[1::7])]  # duplicated songs: many exact ties
    g = torch.Generator().manual_seed(2)
    video_keys = torch.arange(n)
    music_keys = torch.randint(0, n // 2, (n,), generator=g)  # songs shared by videos
    ref = paired_retrieval_ranks(video, music, video_keys, music_keys, chunk_size=512)
    got = paired_retrieval_ranks(video.to(device), music.to(device), video_keys.to(device),
                                 music_keys.to(device), chunk_size=512)
    for direction in ("v2m", "m2v"):
        assert got[direction].device.type == device.type
        assert torch.equal(got[direction].cpu(), ref[direction]), direction
    ref_s, ref_i = topk_search(video, music, 10, chunk_size=700)
    got_s, got_i = topk_search(video.to(device), music.to(device), 10, chunk_size=700)
    assert torch.equal(got_i.cpu(), ref_i) and torch.equal(got_s.cpu(), ref_s)


def model_config(name: str, tmp: Path, device: torch.device, steps: int = 3,
                 batch: int | None = None) -> Any:
    from lightning_app.config import load_config

    experiment, extra = MODELS[name]
    overrides = [
        f"data.root={tmp / ('data_' + name)}", f"run_dir={tmp / 'runs'}",
        "data.synthetic.pairs=400", "data.synthetic.val=50", "data.synthetic.test=50",
        "logger.wandb.mode=disabled", "trainer.enable_progress_bar=false",
        f"trainer.max_steps={steps}", "data.cache=device" if device.type != "cpu"
        else "data.cache=host", *extra,
    ]
    if batch is not None:
        overrides.append(f"data.batch_size={batch}")
    else:
        overrides.append("data.batch_size=50")
    return load_config(experiment, overrides)


class _Losses:
    """Collects each training step's loss and the device its batch was on."""

    def __init__(self):
        import pytorch_lightning as pl

        outer = self

        class Collect(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                outer.losses.append(float(loss.detach().float()))
                outer.devices.add(batch["video"].device.type)

        self.losses: list[float] = []
        self.devices: set[str] = set()
        self.callback = Collect()


def check_model_trains(name: str, device: torch.device, tmp: Path, steps: int = 3,
                       precision: str = "bf16-mixed") -> list[float]:
    """`steps` optimizer steps of model `name` in `precision` on `device`, batches from the
    store in that device's memory: finite losses, weights changed."""
    import pytorch_lightning as pl

    from lightning_app.registry import build_datamodule, build_model

    cfg = model_config(name, tmp, device, steps)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    torch.manual_seed(0)
    model = build_model(cfg, dm.dims)
    before = [p.detach().clone() for p in model.parameters()]
    losses = _Losses()
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else device.type, devices=1,
        precision=precision, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[losses.callback])
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == steps, (name, trainer.global_step)
    assert len(losses.losses) == steps and all(np.isfinite(losses.losses)), losses.losses
    assert losses.devices == {device.type}, losses.devices  # batches built on the device
    assert dm.cache_device is not None and dm.cache_device.type == device.type
    moved = any(not torch.equal(a, b.detach().cpu().to(a.dtype))
                for a, b in zip((p.cpu() for p in before), model.parameters()))
    assert moved, f"{name}: no parameter changed in {steps} steps"
    return losses.losses


def check_logmel_equal(device: torch.device, seconds: float = 3.0) -> float:
    """Log-mel features on `device` equal the CPU's within 1e-3 (log units); returns the
    largest difference."""
    from datamodules.extract.logmel import LOGMEL_SAMPLE_RATE, LogMelExtractor

    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * LOGMEL_SAMPLE_RATE)) / LOGMEL_SAMPLE_RATE
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.shape))
    wave = wave.astype(np.float32)
    ref = LogMelExtractor("cpu")(wave)
    got = LogMelExtractor(device)(wave)
    assert got.shape == ref.shape and np.isfinite(got).all()
    diff = float(np.abs(got - ref).max())
    assert diff < 1e-3, diff
    return diff


def check_cnn_equal(device: torch.device, weights: Path) -> float:
    """ResNet-50 frame features on `device` equal the CPU's within 1 % (relative to the
    features' scale; cuDNN may use TF32 convolutions); returns the relative difference."""
    from datamodules.extract.video_backbone import load_frame_encoder

    frames = torch.randint(0, 256, (6, 3, 72, 96), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    ref = load_frame_encoder("resnet50", weights, "cpu", image_size=64).encode(frames)
    got = load_frame_encoder("resnet50", weights, device, image_size=64).encode(frames)
    assert got.shape == ref.shape == (6, 2048) and torch.isfinite(got).all()
    rel = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    assert rel < 1e-2, rel
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=1)
    assert bool((cos > 0.9999).all()), cos
    return rel


def vmr(*args: str, cwd: Path = ROOT, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_JOB_ID", "SLURM_NTASKS")}
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.run([sys.executable, "-m", "lightning_app", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def check_ddp_one_device(device: torch.device, tmp: Path) -> str:
    """`vmr train` with trainer.strategy=ddp on one device: NCCL on CUDA (gloo on the CPU);
    the run finishes with test metrics. Returns the backend Lightning reported."""
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    proc = vmr("train", "quickstart", f"data.root={tmp / 'ddp_data'}",
               f"run_dir={tmp / 'ddp_runs'}", "data.synthetic.pairs=400",
               "data.synthetic.val=50", "data.synthetic.test=50", "data.batch_size=50",
               "data.eval_batch_size=50", "loss.structure_k=20", "loss.num_negatives=20",
               "trainer.max_epochs=1", "trainer.strategy=ddp", "trainer.devices=1",
               f"trainer.accelerator={accelerator}", "logger.wandb.mode=disabled",
               "trainer.enable_progress_bar=false")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    backend = "nccl" if device.type == "cuda" else "gloo"
    assert f"distributed_backend={backend}" in out, out[-3000:]
    metrics = list((tmp / "ddp_runs").rglob("metrics.json"))
    assert len(metrics) == 1 and "test/v2m/R@10" in json.loads(metrics[0].read_text())
    return backend


def check_retrieve(device: torch.device, tmp: Path, weights: Path) -> list[str]:
    """`vmr retrieve --device <device>` on raw files gives the CPU's list (same files in the
    same order, scores within 1e-3): a small SSVMR trained on four colour/tone videos."""
    from media import make_audio, make_video

    from datamodules.extract.build_dataset import build_dataset
    from datamodules.extract.folders import PCAPlan
    from datamodules.extract.specs import AudioSpec, VideoSpec
    from lightning_app.config import load_config
    from lightning_app.train import train

    videos, library = tmp / "videos", tmp / "library"
    videos.mkdir()
    library.mkdir()
    for i, color in enumerate(("red", "green", "blue", "yellow", "white")):
        make_video(videos / f"{color}.mp4", seconds=2.0, color=color, tone_hz=220.0 * 2 ** (i / 2))
        make_audio(library / f"track_{color}.wav", seconds=2.0, tone_hz=220.0 * 2 ** (i / 2))
    spec = VideoSpec(backbone="resnet50", weights=str(weights), image_size=64)
    build_dataset(videos, tmp / "ds", "mvd", spec, AudioSpec("logmel"), PCAPlan(dim=4),
                  val_fraction=0.2, test_fraction=0.2, progress=False, device=device)
    cfg = load_config("ssvmr_videos", [
        f"data.root={tmp / 'ds'}", f"run_dir={tmp / 'runs'}", "data.batch_size=3",
        "data.eval_batch_size=4", "data.frames=2", "model.ssvmr.video_dim=4",
        "model.ssvmr.mixing.enabled=false", "trainer.max_epochs=2",
        "checkpoint.monitor=train/loss", "checkpoint.mode=min",
        "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled",
    ])
    torch.manual_seed(0)
    _, objects = train(cfg)
    ckpt = objects["run_dir"] / "checkpoints" / "last.ckpt"
    lists = {}
    for where in ("cpu", str(device)):
        proc = vmr("retrieve", "--ckpt", str(ckpt), "--library", str(library), "--video",
                   str(videos / "red.mp4"), "-k", "5", "--json", "--workers", "0",
                   "--device", where)
        assert proc.returncode == 0, proc.stderr[-3000:]
        lists[where] = json.loads(proc.stdout)["results"]
    ref, got = lists["cpu"], lists[str(device)]
    assert [r["file"] for r in got] == [r["file"] for r in ref]
    assert all(abs(a["score"] - b["score"]) < 1e-3 for a, b in zip(got, ref))
    return [r["file"] for r in got]
