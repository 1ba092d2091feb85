"""Group `gpu` (`make bench ARGS="--gpu"`): figures on the CUDA device, each against a
reference measured in the same run.

    metrics   Recall@K ranks of N = 100k pairs (d = 512, both directions) vs the matmul
              alone (the same chunked products, nothing else): the GPU floor
    steps     training steps/s per model at the authors' batch sizes (VM-NET 1000, II-CLVM,
              II-CLVTM and SSVMR 250), bf16-mixed, batches from the split in device memory
              (data.cache=device) vs the memory-mapped loader with workers (data.cache=none)
    topk      exact top-10, 100k x 100k (d = 128), vs faiss GpuIndexFlatIP when faiss has GPU
              support (otherwise the row is left out with a note)

`--device cpu` runs the same code at small sizes on the CPU (a dry run: it checks the
logic, its figures say nothing about a GPU).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.common import RATIO_RATE, RATIO_TIME, check, log, row

GROUP = "gpu"
FULL = {"metrics_n": 100_000, "metrics_d": 512, "check_n": 10_000, "topk_n": 100_000,
        "topk_d": 128, "steps": 30, "warmup": 5, "pairs_per_batch": 4}
DRY = {"metrics_n": 3000, "metrics_d": 64, "check_n": 1000, "topk_n": 3000, "topk_d": 32,
       "steps": 3, "warmup": 1, "pairs_per_batch": 2}
BATCHES = {"vmnet": 1000, "iiclvm": 250, "iiclvtm": 250, "ssvmr": 250}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int = 3) -> float:
    fn()  # warm-up: kernels, allocator
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def metrics_row(device: torch.device, s: dict) -> dict[str, Any]:
    from lightning_app.retrieval import paired_retrieval_ranks

    n, d, chunk = s["metrics_n"], s["metrics_d"], 4096
    g = torch.Generator(device=device).manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(n, d, device=device, generator=g), dim=1)
    music = torch.nn.functional.normalize(torch.randn(n, d, device=device, generator=g), dim=1)
    keys = torch.arange(n, device=device)

    def ours() -> None:
        paired_retrieval_ranks(video, music, keys, keys, chunk_size=chunk)

    def floor() -> None:  # the two directions' score matrices, chunk by chunk, nothing else
        for q, gal in ((video, music), (music, video)):
            for start in range(0, n, chunk):
                q[start:start + chunk] @ gal.T

    log(f"gpu: metrics at N={n} on {device}")
    t_ours, t_floor = _timed(ours, device), _timed(floor, device)
    same_chunks = all(torch.equal(a, b) for a, b in zip(
        paired_retrieval_ranks(video, music, keys, keys, chunk_size=512).values(),
        paired_retrieval_ranks(video, music, keys, keys, chunk_size=chunk).values()))
    m = s["check_n"]
    on_device = paired_retrieval_ranks(video[:m], music[:m], keys[:m], keys[:m])
    on_cpu = paired_retrieval_ranks(video[:m].cpu(), music[:m].cpu(), keys[:m].cpu(),
                                    keys[:m].cpu())
    same_cpu = all(torch.equal(on_device[k].cpu(), on_cpu[k]) for k in on_cpu)
    return row(GROUP, f"Recall@K ranks, N={n:,} pairs, d={d}, both directions ({device}): "
               f"ours vs the matmul floor", t_ours, t_floor, "s", RATIO_TIME,
               f"floor: the 2 x {n // chunk + 1} chunked float32 products alone; the rest of "
               f"ours is the exact rank count per query", check=check(
                   same_chunks and same_cpu, f"ranks identical with chunks 512 and {chunk} at "
                   f"N={n}, and equal to the CPU's at N={m}"))


# model -> the authors' experiment (its batch size is the authors')
EXPERIMENTS = {"VM-NET": "vmnet_synthetic", "II-CLVM": "iiclvm_synthetic",
               "II-CLVTM": "iiclvtm_synthetic", "SSVMR": "ssvmr_synthetic"}


class _StepClock:
    """Wall time from the start of step `warmup` to the end of training; first loss."""

    def __init__(self, warmup: int, device: torch.device):
        import pytorch_lightning as pl

        outer = self
        self.start = self.end = 0.0
        self.first_loss = float("nan")

        class Clock(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warmup:
                    _sync(device)
                    outer.start = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step == 1:
                    loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                    outer.first_loss = float(loss.detach().float())

            def on_train_end(self, trainer, pl_module):
                _sync(device)
                outer.end = time.perf_counter()

        self.callback = Clock()


def steps_per_s(experiment: str, device: torch.device, cache: str, s: dict, tmp,
                workers: int) -> tuple[float, float, int]:
    """(steps/s after warm-up, first step's loss, batch) in bf16-mixed with data.cache=`cache`."""
    import pytorch_lightning as pl

    from lightning_app.config import load_config
    from lightning_app.registry import build_datamodule, build_model

    batch = load_config(experiment, []).data.batch_size
    if device.type == "cpu":
        batch = min(batch, 100)  # dry run
    pairs = s["pairs_per_batch"] * batch
    cfg = load_config(experiment, [
        f"data.root={tmp / experiment}", f"run_dir={tmp / 'runs'}",
        f"data.synthetic.pairs={pairs + 200}", "data.synthetic.val=100",
        "data.synthetic.test=100", f"data.batch_size={batch}", f"data.cache={cache}",
        f"data.num_workers={workers}", "logger.wandb.mode=disabled",
        *(["loss.num_negatives=50", "loss.structure_k=50"] if batch < 200 else [])])
    dm = build_datamodule(cfg)
    dm.prepare_data()
    torch.manual_seed(0)
    model = build_model(cfg, dm.dims)
    clock = _StepClock(s["warmup"], device)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
        precision="bf16-mixed", max_steps=s["steps"], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[clock.callback])
    trainer.fit(model, datamodule=dm)
    return (s["steps"] - s["warmup"]) / (clock.end - clock.start), clock.first_loss, batch


def steps_rows(ctx, device: torch.device, s: dict) -> list[dict[str, Any]]:
    rows = []
    workers = min(4, ctx.threads)
    for name, experiment in EXPERIMENTS.items():
        log(f"gpu: {name} steps/s, data.cache=device vs none ({workers} workers)")
        ours, loss_ours, batch = steps_per_s(experiment, device, "device", s, ctx.tmp, 0)
        ref, loss_ref, _ = steps_per_s(experiment, device, "none", s, ctx.tmp, workers)
        same = same_first_batch(experiment, device, ctx.tmp, batch)
        rows.append(row(
            GROUP, f"{name} training steps/s, batch {batch} ({experiment}), bf16-mixed "
            f"({device}): split in device memory vs memory-mapped loader", ours, ref,
            "steps/s", RATIO_RATE,
            f"{s['steps'] - s['warmup']} timed steps after {s['warmup']} warm-up; reference: "
            f"data.cache=none, {workers} DataLoader workers, batches copied to the device by "
            f"Lightning. First step's loss {loss_ours:.6f} vs {loss_ref:.6f} (the workers "
            f"draw training frames from their own RNG streams)",
            check=check(same, "the first training batch (seed 0) from device memory is "
                              "bit-identical to the memory-mapped loader's without workers")))
    return rows


def same_first_batch(experiment: str, device: torch.device, tmp, batch: int) -> bool:
    """The first training batch with data.cache=device equals data.cache=none's (0 workers)."""
    from lightning_app.config import load_config
    from lightning_app.registry import build_datamodule

    batches = []
    for cache in ("device", "none"):
        cfg = load_config(experiment, [f"data.root={tmp / experiment}", f"data.cache={cache}",
                                       f"data.batch_size={batch}", "data.num_workers=0"])
        dm = build_datamodule(cfg)
        strategy = type("Strategy", (), {"root_device": device})()
        dm.trainer = type("Trainer", (), {"strategy": strategy, "world_size": 1,
                                          "current_epoch": 0})()
        dm.setup("fit")
        torch.manual_seed(0)
        batches.append(next(iter(dm.train_dataloader())))
    ours, ref = batches
    strings = {"video_id", "music_id", "text"}  # leave the batch; text comes as token hashes
    return set(ref) - strings <= set(ours) and all(
        torch.equal(v.cpu(), ref[k]) for k, v in ours.items() if k in ref)


def topk_row(device: torch.device, s: dict) -> tuple[dict[str, Any] | None, str]:
    from lightning_app.search import topk_search

    try:
        import faiss
    except ImportError:
        return None, "gpu topk: left out: faiss is not installed (pip install -e '.[faiss]')"
    if device.type != "cuda" or not hasattr(faiss, "StandardGpuResources"):
        return None, (f"gpu topk: left out: this faiss ({faiss.__version__}) has no GPU support "
                      f"(faiss-cpu); install a faiss GPU build for the row")
    n, d, k = s["topk_n"], s["topk_d"], 10
    g = torch.Generator(device=device).manual_seed(1)
    query = torch.randn(n, d, device=device, generator=g)
    gallery = torch.randn(n, d, device=device, generator=g)
    res = faiss.StandardGpuResources()
    index = faiss.GpuIndexFlatIP(res, d)
    index.add(gallery.cpu().numpy())
    q_np = query.cpu().numpy()
    got: dict[str, Any] = {}

    def ours() -> None:
        got["ours"] = topk_search(query, gallery, k)[1]

    def reference() -> None:
        got["faiss"] = index.search(q_np, k)[1]

    log(f"gpu: top-{k} {n} x {n} vs faiss GpuIndexFlatIP")
    t_ours, t_ref = _timed(ours, device), _timed(reference, device)
    same = float((got["ours"].cpu().numpy() == got["faiss"]).mean())
    return row(GROUP, f"exact top-{k}, {n:,} x {n:,}, d={d} ({device}): ours vs faiss "
               f"GpuIndexFlatIP", n / t_ours, n / t_ref, "queries/s", RATIO_RATE,
               "faiss searches from host queries (its usual call; the copy is in its time)",
               check=check(same >= 0.999, f"{same:.4%} of top-{k} entries identical to faiss "
                                          f"(random normal data: ties are improbable)")), ""


def run(ctx) -> dict[str, Any]:
    device = torch.device(getattr(ctx, "device", "cuda"))
    s = FULL if device.type == "cuda" else DRY
    rows = [metrics_row(device, s), *steps_rows(ctx, device, s)]
    topk, note = topk_row(device, s)
    notes = [note] if topk is None else []
    if topk is not None:
        rows.append(topk)
    if device.type != "cuda":
        notes.append(f"gpu: dry run on {device} at small sizes: checks the code, not a GPU")
    return {"rows": rows, "notes": notes, "settings": {**s, "device": str(device)}}
