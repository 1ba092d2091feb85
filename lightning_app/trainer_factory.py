"""The Lightning Trainer of a run, from `trainer.*`, `early_stopping.*` and `ema.*`.

`check_options` and `check_model_options` refuse what cannot work, before the run folder
exists; `prepare_model` sets up micro-batch accumulation and torch.compile on the model;
`build_trainer` passes Lightning's own keys through and adds early stopping, the EMA callback
and a profiler writing into `<run>/profiler/`.

Notes on how Lightning's debugging keys meet the rest of a run:

- `fast_dev_run`: Lightning runs N batches of each stage and turns loggers and checkpoints
  off, so no W&B run is started, there is no best checkpoint (the test uses the weights as
  trained) and only `metrics.json` and the recall curve are written.
- `overfit_batches`: Lightning 2 validates on the first N *validation* batches; here the
  validation loader is the training loader, so validation scores exactly the N batches
  trained on (memorising them should bring val R@K to 1). The test split is unchanged.
- `val_check_interval`: validation (Recall@K, checkpoints, early stopping) inside the epoch;
  `last.ckpt` may then be a mid-epoch checkpoint, which resumes the step count but not
  bit-exactly (the epoch's batch order restarts).
- `accumulate_grad_batches`: never Lightning's accumulation (fewer in-batch negatives per
  step); the model splits each batch itself (models.grad_cache) and steps once per batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, EarlyStopping
from pytorch_lightning.loggers import Logger

from lightning_app.callbacks.ema import EMA
from lightning_app.config import Config
from lightning_app.errors import ConfigError
from lightning_app.launch import cluster_plugins
from models.base import RetrievalModule
from models.grad_cache import batch_coupled_modules

MODEL_NAMES = {"vmnet": "VM-NET", "iiclvm": "II-CLVM", "ssvmr": "SSVMR"}
PROFILE_FILE = "profile"


def monitorable_metrics(cfg: Config) -> list[str]:
    """The validation values logged for early stopping: Recall@K, MdR and MnR per direction
    (and their compatible / multi-positive versions, logged when the data has a truth file or
    songs shared by several videos: lightning_app.truth_recall), and the loss."""
    values = [*(f"R@{k}" for k in cfg.eval.ks), "MdR", "MnR"]
    names = [f"val/{d}/{kind}{v}" for kind in ("", "compat/", "multi/")
             for d in ("v2m", "m2v") for v in values]
    return [*names, "val/loss"]


def check_options(cfg: Config) -> None:
    """One-line ConfigErrors for options this run cannot honour (before any work)."""
    known = monitorable_metrics(cfg)
    values = ",".join([*(f"R@{k}" for k in cfg.eval.ks), "MdR", "MnR"])
    choices = (f"val/{{v2m,m2v}}/{{{values}}}, the same under val/{{v2m,m2v}}/{{compat,multi}}/ "
               "on data with truth, or val/loss")
    for key, monitor in (("early_stopping.monitor", cfg.early_stopping.monitor),
                         ("checkpoint.monitor", cfg.checkpoint.monitor)):
        # Training values (train/...) depend on the model; Lightning names a missing one.
        if monitor and not monitor.startswith("train/") and monitor not in known:
            raise ConfigError(
                f"config: '{key}' has unknown metric {monitor!r} (choose from: {choices})")


def check_model_options(cfg: Config, model: RetrievalModule) -> None:
    """One-line ConfigErrors for options this model cannot honour."""
    n = cfg.trainer.accumulate_grad_batches
    if n == 1:
        return
    label = MODEL_NAMES.get(cfg.model.name, cfg.model.name)
    where = f"trainer.accumulate_grad_batches={n}"
    if batch_coupled_modules(model):
        raise ConfigError(
            f"{where}: {label}'s BatchNorm normalises each micro-batch with its own statistics, "
            f"so accumulation would not reproduce the batch-{cfg.data.batch_size} gradient; "
            "lower data.batch_size or use more devices")
    if type(model).training_step is not RetrievalModule.training_step:
        raise ConfigError(
            f"{where}: {label}'s training step does not go through training_loss, so its "
            "micro-batches could not reproduce the whole batch's gradient")


def prepare_model(cfg: Config, model: RetrievalModule) -> None:
    """Micro-batch accumulation (manual optimization when > 1) and torch.compile."""
    t = cfg.trainer
    model.set_micro_batches(t.accumulate_grad_batches, t.gradient_clip_val)
    if t.compile:
        model.compile_submodules()


def build_trainer(cfg: Config, run_dir: Path, loggers: list[Logger], callbacks: list[Callback],
                  reload_dataloaders: bool = False) -> pl.Trainer:
    t = cfg.trainer
    return pl.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=t.max_epochs, max_steps=t.max_steps, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, precision=t.precision,
        # With micro-batches the model steps and clips itself (Lightning refuses both).
        gradient_clip_val=None if t.accumulate_grad_batches > 1 else t.gradient_clip_val,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        val_check_interval=t.val_check_interval,
        log_every_n_steps=t.log_every_n_steps, deterministic=t.deterministic,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches, fast_dev_run=t.fast_dev_run,
        overfit_batches=t.overfit_batches, enable_progress_bar=t.enable_progress_bar,
        profiler=build_profiler(t.profiler, run_dir),
        logger=loggers, callbacks=[*callbacks, *option_callbacks(cfg)],
        enable_model_summary=False,
        # Self-training and back retrieval change the training pairs between epochs.
        reload_dataloaders_every_n_epochs=1 if reload_dataloaders else 0,
        plugins=cluster_plugins(),
    )


def option_callbacks(cfg: Config) -> list[Callback]:
    out: list[Callback] = []
    es = cfg.early_stopping
    if es.monitor:
        # Checked after every validation (also mid-epoch with val_check_interval).
        out.append(EarlyStopping(monitor=es.monitor, mode=es.mode, patience=es.patience,
                                 min_delta=es.min_delta, check_on_train_epoch_end=False))
    if cfg.ema.enabled:
        out.append(EMA(cfg.ema.decay, cfg.ema.start_step))
    return out


def build_profiler(kind: str, run_dir: Path) -> Any:
    """Lightning's profiler of that kind, writing `<run>/profiler/<stage>-profile*`."""
    if kind == "none":
        return None
    from pytorch_lightning import profilers

    where = {"dirpath": str(run_dir / "profiler"), "filename": PROFILE_FILE}
    if kind == "simple":
        return profilers.SimpleProfiler(**where)
    if kind == "advanced":
        return profilers.AdvancedProfiler(**where)
    return profilers.PyTorchProfiler(**where)


def use_train_batches_for_validation(datamodule: Any) -> None:
    """`overfit_batches`: validate on the training loader (Lightning limits both to the first
    N batches and turns shuffling off, so both see the same rows in the same batches)."""

    def val_dataloader() -> Any:
        # Validation rows are then training rows: whatever maps a validation row's `index`
        # back to its pair (compatible recall, per-query results) must read the train split.
        datamodule.datasets["val"] = datamodule.datasets["train"]
        return datamodule.train_dataloader()

    datamodule.val_dataloader = val_dataloader
