"""`train(cfg) -> (metrics, objects)`: one experiment, from data to the run folder.

A plain function so tests (and notebooks) call it directly; the CLI only parses arguments.
Bad data or config fail before the run folder exists, so nothing half-written is left; a
run that fails after that is marked failed in its status.json (lightning_app.run_status).
A run continues from its checkpoint in its own folder when asked (`resume=`) or when a
scheduler restarts the same launch (lightning_app.resume, lightning_app.run_dir).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers.logger import DummyLogger

from datamodules.atomic import write_json, write_text
from datamodules.base import TRUTH_FILE
from datamodules.errors import DataError
from datamodules.extract.specs import dataset_extractor
from datamodules.mgsv_ec_eval import dataset_official_keys
from lightning_app.ann_index import IndexParams
from lightning_app.atomic_checkpoint import AtomicModelCheckpoint
from lightning_app.callbacks import RecallAtK
from lightning_app.callbacks.back_retrieval import BackRetrieval, check_source
from lightning_app.callbacks.method_diagnostics import method_callbacks
from lightning_app.callbacks.rng_state import RNGState
from lightning_app.callbacks.self_training import SelfTraining
from lightning_app.config import Config, to_dict, to_yaml
from lightning_app.eval_outputs import write_test_outputs
from lightning_app.loggers import build_loggers, finish_loggers
from lightning_app.registry import build_datamodule, build_model
from lightning_app.resume import checkpoint_position, open_run, resume_target
from lightning_app.run_dir import git_commit, launch_rank, wait_for_rank0
from lightning_app.run_status import run_status
from lightning_app.table import metrics_table
from lightning_app.trainer_factory import (
    build_trainer,
    check_model_options,
    check_options,
    prepare_model,
    use_train_batches_for_validation,
)
from lightning_app.truth_recall import TruthRecall


def train(cfg: Config) -> tuple[dict[str, float], dict[str, Any]]:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    target = resume_target(cfg)  # a bad `resume=` fails now, before any work
    check_options(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data_per_node = False  # one store for all nodes, built by rank 0
    if launch_rank() == 0:
        datamodule.prepare_data()  # fail on bad data now, before anything is written
        if cfg.back_retrieval.enabled:  # e.g. source=unpaired on data without unpaired lists
            check_source(cfg.back_retrieval.source, datamodule)
        dims = datamodule.dims
    else:  # started alongside rank 0 (srun, torchrun): wait until it has built the store
        dims = wait_for_rank0(lambda: _store_dims(datamodule), f"the store {datamodule.store_path}")
    model = build_model(cfg, dims)
    model.run_record = {"config": to_dict(cfg), "extractor": dataset_extractor(cfg.data.root)}
    check_model_options(cfg, model)  # refusals that need the model, before the run folder
    prepare_model(cfg, model)

    run_dir, ckpt_path = open_run(cfg, target)
    # From here on a run that stops on an error is marked failed (status.json).
    with run_status(run_dir, write=launch_rank() == 0):
        return _fit_and_test(cfg, datamodule, model, run_dir, ckpt_path)


def _fit_and_test(cfg: Config, datamodule: Any, model: Any, run_dir: Path,
                  ckpt_path: Path | None) -> tuple[dict[str, float], dict[str, Any]]:
    commit = git_commit()
    write_text(run_dir / "config.yaml", to_yaml(cfg))
    hparams = {"config": to_dict(cfg), "seed": cfg.seed, "git_commit": commit,
               "run_dir": str(run_dir)}
    resume_at = checkpoint_position(ckpt_path) if ckpt_path else None
    # fast_dev_run turns Lightning's loggers off: start no W&B run for it either.
    loggers = ([DummyLogger()] if cfg.trainer.fast_dev_run
               else build_loggers(cfg, run_dir, hparams, resume_at=resume_at))

    recall, checkpoint, training_set_changes = build_callbacks(cfg, run_dir, datamodule)
    callbacks = [recall, checkpoint, LearningRateMonitor("epoch"), *training_set_changes,
                 RNGState(), *method_callbacks(cfg)]
    # Lightning's keys (fast_dev_run, max_steps, ...), early stopping, EMA, profiler.
    trainer = build_trainer(cfg, run_dir, loggers, callbacks,
                            reload_dataloaders=bool(training_set_changes))
    if cfg.trainer.overfit_batches:
        use_train_batches_for_validation(datamodule)
    with warnings.catch_warnings():
        if ckpt_path is not None:  # the checkpoints are this run's own
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* not empty")
        # overfit_batches turns shuffling off, as asked.
        warnings.filterwarnings("ignore", message=r"You requested to overfit")
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    best = checkpoint.best_model_path or None
    # Testing the best checkpoint restores the callbacks' state as it was then: keep the
    # per-round history of the whole run.
    histories = [(cb, [dict(h) for h in cb.history]) for cb in training_set_changes]
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True,
                           verbose=False)
    # Exact retrieval metrics from the callback; the test loss from Lightning's results.
    metrics = {k: float(v) for k, v in results[0].items() if k.startswith("test/")}
    metrics.update(recall.last_metrics.get("test", {}))
    # MGSV-EC: also the official metric set (R1..R100 in percent, MedianR, MeanR, MRR).
    metrics.update(dataset_official_keys(cfg.data.dataset, recall.last_test_ranks, "test"))
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", {
            **metrics, "best_checkpoint": str(best) if best else None,
            "best_val": _float(checkpoint.best_model_score), "git_commit": commit,
            "seed": cfg.seed, "experiment": cfg.name,
        })
        for callback, history in histories:
            # Per-round counts (flagged, re-assigned, precision/recall vs planted noise, ...).
            name = "self_training" if isinstance(callback, SelfTraining) else "back_retrieval"
            write_json(run_dir / f"{name}.json", history)
        print(metrics_table(metrics, "test", title=f"{cfg.name}: test metrics ({run_dir})"))
        # Per-query results (parquet, W&B table), optional embeddings and report.html.
        write_test_outputs(cfg, run_dir, recall, datamodule, metrics, loggers,
                           trainer.global_step, str(best) if best else None)
    finish_loggers(loggers)
    objects = {"trainer": trainer, "model": model, "datamodule": datamodule,
               "run_dir": Path(run_dir), "recall": recall}
    return metrics, objects


def build_callbacks(cfg: Config, run_dir: Path, datamodule: Any = None
                    ) -> tuple[RecallAtK, ModelCheckpoint, list]:
    """Evaluation, checkpointing, and the callbacks that rewrite the training pairs."""
    ckpt = cfg.checkpoint
    # Atomic checkpoint files; a full disk stops the run with one line (no partial .ckpt).
    checkpoint = AtomicModelCheckpoint(
        dirpath=run_dir / "checkpoints", monitor=ckpt.monitor, mode=ckpt.mode,
        # Lightning 2.6 still writes last.ckpt at the end of a fast_dev_run: not here.
        save_top_k=ckpt.save_top_k, save_last=ckpt.save_last and not cfg.trainer.fast_dev_run,
        filename="best-{epoch:03d}", auto_insert_metric_name=False,
    )
    # Compatible / multi-positive recall beside the exact numbers (lightning_app.truth_recall).
    extras = [] if datamodule is None else [TruthRecall(
        datamodule, cfg.eval.ks, cfg.eval.chunk_size, Path(cfg.data.root) / TRUTH_FILE)]
    recall = RecallAtK(cfg.eval.ks, cfg.eval.chunk_size, cfg.eval.curve_max_k, curve_dir=run_dir,
                       extras=extras)
    changes: list = []
    st = cfg.self_training
    if st.enabled:
        changes.append(SelfTraining(
            epochs_per_round=st.epochs_per_round, rounds=st.rounds,
            rank_threshold=st.rank_threshold, action=st.action, downweight=st.downweight,
            reassign_margin=st.reassign_margin, fallback=st.fallback,
            out_dir=run_dir / "pseudo_labels", batch_size=cfg.data.eval_batch_size,
            chunk_size=cfg.eval.chunk_size, rule=st.rule, student=st.student,
            ema_decay=st.ema_decay,
        ))
    br = cfg.back_retrieval
    if br.enabled:
        changes.append(BackRetrieval(
            every_n_epochs=br.every_n_epochs, start_epoch=br.start_epoch,
            rank_tolerance=br.rank_tolerance, similarity_floor=br.similarity_floor,
            weight=br.weight, max_new=br.max_new, batch_size=cfg.data.eval_batch_size,
            chunk_size=cfg.eval.chunk_size, source=br.source,
            index=IndexParams(br.index, nprobe=br.nprobe, ef_search=br.ef_search),
        ))
    return recall, checkpoint, changes


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def _store_dims(datamodule: Any) -> dict[str, int] | None:
    try:
        return datamodule.dims
    except DataError:
        return None
