"""Group `epoch`: one training epoch under Lightning vs a bare PyTorch loop doing the same work.

Models and data come from the real configs (`quickstart` for VM-NET, `iiclvm_synthetic`
for II-CLVM) through `lightning_app.registry`, with a temporary data root and smaller
synthetic sizes. Both sides use the same model object (reset to the same initial weights
before every epoch), the same DataLoader and a fresh optimizer from
`model.configure_optimizers()`.

Ours: `pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
enable_progress_bar=False, limit_val_batches=0).fit(model, loader)`; the time is the whole
`fit` call. Reference: for each batch `zero_grad`, `model.loss(batch, encode_video,
encode_music)`, `backward`, `step`, and the model's own `on_train_batch_end` hook (II-CLVM
clamps its temperature there). The optimizer schedule is set to constant with no warm-up on
both sides: `configure_optimizers` needs a Trainer for the cosine schedule, and a LambdaLR
step costs microseconds. Runs alternate (after one untimed warm-up epoch) and the fastest of
each is kept.

Per-step framework overhead (bench.step_overhead): a zero-cost model under Trainer.fit vs a
bare loop over the same loader, with the split in host memory (data.cache=host) and
memory-mapped (none), and a SimpleProfiler breakdown of the Lightning step.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch

from bench.common import RATIO_TIME, check, log, row

GROUP = "epoch"

# name: (experiment, pairs, val, test, batch, frames of the synthetic sequences)
FULL = {
    "VM-NET": ("quickstart", 4400, 200, 200, 500, None),
    "II-CLVM": ("iiclvm_synthetic", 2400, 200, 200, 250, 24),
}
QUICK = {
    "VM-NET": ("quickstart", 700, 100, 100, 100, None),
    "II-CLVM": ("iiclvm_synthetic", 500, 100, 100, 100, 24),
}
REPEATS = {"full": 3, "quick": 1}


class EpochTimer(pl.Callback):
    """Wall time inside the training epochs, summed (fit's setup and teardown excluded), and
    the optimizer steps taken in them; the first `skip` epochs are not counted."""

    def __init__(self, skip: int = 0):
        self.seconds, self.steps, self.skip = 0.0, 0, skip
        self._start, self._first_step = 0.0, 0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start, self._first_step = time.perf_counter(), trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch >= self.skip:
            self.seconds += time.perf_counter() - self._start
            self.steps += trainer.global_step - self._first_step


def _quiet() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("vmr").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", module="lightning_fabric")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def lightning_epoch(model, loader) -> tuple[float, float, int]:
    """(wall time of Trainer.fit, time inside the epoch, optimizer steps)."""
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, enable_model_summary=False, accelerator="cpu", devices=1,
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    return time.perf_counter() - start, timer.seconds, trainer.global_step


def bare_epoch(model, loader) -> tuple[float, int]:
    """(wall time, steps) of the same epoch in plain PyTorch."""
    start = time.perf_counter()
    model.train()
    opt = model.configure_optimizers()
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"bench: expected a bare optimizer (constant schedule), got {type(opt)}")
    steps = 0
    for i, batch in enumerate(loader):
        opt.zero_grad(set_to_none=True)
        parts = model.loss(batch, model.encode_video(batch), model.encode_music(batch))
        parts["loss"].backward()
        opt.step()
        model.on_train_batch_end(parts, batch, i)
        steps += 1
    return time.perf_counter() - start, steps


def _bench_model(ctx, name: str, setting: tuple, repeats: int) -> dict[str, Any]:
    from lightning_app.config import load_config
    from lightning_app.registry import build_datamodule, build_model

    experiment, pairs, val, test, batch, frames = setting
    root = ctx.tmp / f"epoch_{experiment}"
    overrides = [
        f"data.root={root}", f"run_dir={ctx.tmp / 'runs'}", f"data.synthetic.pairs={pairs}",
        f"data.synthetic.val={val}", f"data.synthetic.test={test}", f"data.batch_size={batch}",
        "data.num_workers=0", "trainer.max_epochs=1", "logger.wandb.mode=disabled",
        "optim.scheduler=constant", "optim.warmup_steps=0",
    ]
    if frames is not None:
        overrides.append(f"data.synthetic.frames={frames}")
    if batch < 200:  # VM-NET's defaults need at least 100 negatives / neighbours per batch
        overrides += ["loss.num_negatives=50", "loss.structure_k=50"]
    cfg = load_config(experiment, overrides)
    log(f"epoch {name}: preparing {experiment} data ({pairs} pairs)")
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    model = build_model(cfg, dm.dims)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    loader = dm.train_dataloader()

    def reset():
        model.load_state_dict(init)
        torch.manual_seed(0)

    log(f"epoch {name}: {len(loader)} steps of {batch}; warm-up, then {repeats}x each")
    reset()
    bare_epoch(model, loader)  # warm-up: allocator, page cache, lazy init
    fits, inner, bares = [], [], []
    for _ in range(repeats):
        reset()
        t_fit, t_in, pl_steps = lightning_epoch(model, loader)
        fits.append(t_fit)
        inner.append(t_in)
        reset()
        t_bare, steps = bare_epoch(model, loader)
        bares.append(t_bare)
    return {"name": name, "experiment": experiment, "steps": steps, "lightning_steps": pl_steps,
            "batch": batch,
            "fit_s": fits, "epoch_in_fit_s": inner, "bare_s": bares,
            "params": sum(p.numel() for p in model.parameters()),
            "overrides": overrides}


def run(ctx) -> dict[str, Any]:
    _quiet()
    settings = QUICK if ctx.quick else FULL
    repeats = REPEATS["quick" if ctx.quick else "full"]
    rows, details = [], []
    for name, setting in settings.items():
        res = _bench_model(ctx, name, setting, repeats)
        t_fit, t_in, t_bare = min(res["fit_s"]), min(res["epoch_in_fit_s"]), min(res["bare_s"])
        steps = res["steps"]
        per_step = (t_in - t_bare) / steps
        notes = (
            f"{steps} steps of {res['batch']}; bare loop {t_bare / steps * 1e3:.0f} ms per step "
            f"(forward, loss, backward, optimizer: arithmetic and PyTorch-op bound). Lightning "
            f"overhead {t_fit / t_bare - 1:+.0%}: fit() setup/teardown {t_fit - t_in:.2f} s "
            f"(fixed per fit call), {per_step * 1e3:+.1f} ms per step inside the epoch "
            f"(Lightning's hooks, self.log of the loss parts, optimizer closure): Python "
            f"overhead; the fixed part amortises over longer runs. Spread over "
            f"{len(res['fit_s'])} alternating runs: Lightning "
            f"{min(res['fit_s']):.2f}-{max(res['fit_s']):.2f} s, bare "
            f"{min(res['bare_s']):.2f}-{max(res['bare_s']):.2f} s"
            + (" (Lightning below the bare loop is noise)" if t_fit < t_bare else ""))
        rows.append(row(
            GROUP, f"{name} one epoch ({res['experiment']}, {res['params'] / 1e6:.1f} M params): "
            f"Lightning Trainer.fit vs bare PyTorch loop",
            t_fit, t_bare, "s", RATIO_TIME, notes,
            check=check(steps > 0 and res["lightning_steps"] == steps,
                        f"optimizer steps per epoch: Lightning {res['lightning_steps']}, "
                        f"bare loop {steps}"),
            fit_s=res["fit_s"], epoch_in_fit_s=res["epoch_in_fit_s"], bare_s=res["bare_s"],
            overhead=t_fit / t_bare - 1, steps=steps))
        details.append(res)
    from bench.step_overhead import measure, overhead_row

    device = torch.device(getattr(ctx, "device", "cpu"))
    for cache in ("device", "none") if device.type == "cuda" else ("host", "none"):
        log(f"epoch: per-step overhead, zero-cost model, data.cache={cache}")
        res = measure(ctx.tmp / "zero_cost", ctx.quick, device, cache)
        rows.append(overhead_row(GROUP, res))
        details.append({k: v for k, v in res.items() if k != "place"})
    return {"rows": rows, "details": details,
            "notes": ["epoch ratio = bare-loop time / Lightning time: below 1 means Lightning "
                      "is slower; overhead = 1/ratio - 1."]}
