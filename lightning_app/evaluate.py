"""`evaluate(ckpt, overrides, out)`: score a trained checkpoint without training.

The model and the data are rebuilt from the resolved config the checkpoint carries
(lightning_app.checkpoint_file), with `key=value` overrides checked as `vmr train` checks
them: another `data.root` (another dataset with the same feature dimensions), another split
(`eval.split=test|val|train`), seeded random galleries (`eval.gallery_size`, `eval.draws`,
lightning_app.galleries), `eval.topk`, `eval.save_embeddings`, devices. Evaluation runs in a
pl.Trainer with the config's devices and strategy and the RecallAtK callback, so the
metrics are gathered over processes exactly as in training: with no override they equal the
run's own final test metrics.

Metric keys carry the split's name (`test/v2m/R@10`, `val/m2v/MdR`, `train/...`); with
random galleries every metric is the mean over draws and `<key>/std` the sample standard
deviation. Results go to `<run>/eval/<timestamp>/` (or `out`): metrics.json, config.yaml,
per-query tables, report.html (lightning_app.eval_outputs). Bad input (a missing or
unreadable checkpoint, dimensions that do not fit the data, a gallery larger than the
split, an unknown key) stops before anything is written.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from datamodules.atomic import write_json, write_text
from datamodules.base import TRUTH_FILE
from datamodules.errors import DataError
from datamodules.mgsv_ec_eval import dataset_official_keys
from datamodules.pairs import identity_collate
from lightning_app.callbacks import RecallAtK
from lightning_app.checkpoint_file import CheckpointFile, read_checkpoint
from lightning_app.config import Config, config_from_dict, config_with_overrides, to_yaml
from lightning_app.errors import ConfigError
from lightning_app.eval_outputs import write_split_outputs
from lightning_app.galleries import draw_galleries, gallery_ranks, mean_and_std, subset_rows
from lightning_app.launch import cluster_plugins
from lightning_app.per_query import concat_draws, query_tables
from lightning_app.registry import build_datamodule, build_model
from lightning_app.retrieval import metrics_from_ranks
from lightning_app.run_dir import git_commit, launch_rank, wait_for_rank0
from lightning_app.run_status import read_status
from lightning_app.table import metrics_table
from lightning_app.trainer_factory import prepare_model
from lightning_app.truth_recall import TruthRecall

EVAL_DIR = "eval"
log = logging.getLogger("vmr")


def evaluate(ckpt: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None
             ) -> tuple[dict[str, float], Path | None]:
    """(metrics, results folder) for `ckpt` (the folder is None on ranks other than 0)."""
    saved = read_checkpoint(ckpt)
    warn_if_failed_run(saved.path)
    trained = config_from_dict(saved.record["config"], str(saved.path))
    cfg = config_with_overrides(saved.record["config"], list(overrides), str(saved.path))
    e = cfg.eval
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data_per_node = False
    if launch_rank() == 0:
        datamodule.prepare_data()
        dims = datamodule.dims
    else:  # started alongside rank 0 (srun, torchrun): wait until it has built the store
        dims = wait_for_rank0(lambda: _store_dims(datamodule), f"the store {datamodule.store_path}")
    _check_dims(saved, trained, cfg, dims)
    model = build_model(cfg, dims)
    _check_weights(model, saved, cfg)
    prepare_model(cfg, model)  # torch.compile as in training (names and weights unchanged)
    datamodule.setup("test")
    dataset = datamodule.datasets[e.split]
    _check_gallery(e.gallery_size, len(dataset), e.split)

    # Compatible / multi-positive recall as in training, for the evaluated split.
    truth = SplitTruth(TruthRecall(datamodule, e.ks, e.chunk_size,
                                   Path(cfg.data.root) / TRUTH_FILE), e.split)
    recall = RecallAtK(e.ks, e.chunk_size, e.curve_max_k, extras=[truth])
    t = cfg.trainer
    trainer = pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, deterministic=t.deterministic,
        limit_test_batches=t.limit_test_batches, enable_progress_bar=t.enable_progress_bar,
        logger=False, enable_checkpointing=False, enable_model_summary=False,
        callbacks=[recall], plugins=cluster_plugins(),
    )
    loader = eval_loader(dataset, cfg, trainer.world_size)
    with _centre_frames(dataset), warnings.catch_warnings():
        # Only weights are needed: the callbacks that trained the checkpoint play no part.
        warnings.filterwarnings("ignore", message=r".*callbacks used to create the checkpoint")
        # Lightning loads the weights as train()'s final test does (same hooks, same dtype).
        results = trainer.test(model, dataloaders=loader, ckpt_path=str(saved.path),
                               weights_only=True, verbose=False)
    metrics = {k: float(v) for k, v in results[0].items() if k.startswith("test/")}
    rows = recall.last_test_rows
    if e.gallery_size == 0:
        metrics.update(recall.last_metrics["test"])
        # MGSV-EC: the official metric set too (its protocol ranks the whole split).
        metrics.update(dataset_official_keys(cfg.data.dataset, recall.last_test_ranks, "test"))
        tables = query_tables(rows, dataset.ids, dataset.music_ids, e.topk, e.chunk_size,
                              ranks=recall.last_test_ranks)
    else:
        _check_gallery(e.gallery_size, len(rows["index"]), e.split)  # limit_test_batches
        galleries = draw_galleries(len(rows["index"]), e.gallery_size, e.draws, cfg.seed)
        per_draw = gallery_ranks(rows, galleries, e.chunk_size)
        metrics.update(mean_and_std([
            {**_rank_metrics(r, e.ks), **truth("test", subset_rows(rows, g))}
            for g, r in zip(galleries, per_draw)]))
        # Unique video queries per draw (N unless ids repeat), as for the whole split.
        metrics["test/gallery_size"] = statistics.fmean(r["v2m"].numel() for r in per_draw)
        tables = concat_draws([
            query_tables(subset_rows(rows, g), dataset.ids, dataset.music_ids, e.topk,
                         e.chunk_size, ranks=r) for g, r in zip(galleries, per_draw)])
    # Lightning ran the split as its "test" stage: name the metrics after the split.
    metrics = {f"{e.split}/{k[len('test/'):]}": v for k, v in metrics.items()}
    if not trainer.is_global_zero:
        return metrics, None

    out_dir = Path(out) if out else new_eval_dir(saved.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    gallery = (f"{e.draws} random galleries of {e.gallery_size} pairs (seed {cfg.seed})"
               if e.gallery_size else f"the whole split ({len(rows['index'])} pairs)")
    write_json(out_dir / "metrics.json", {
        **metrics, "checkpoint": str(saved.path), "split": e.split,
        "gallery_size": e.gallery_size, "draws": e.draws if e.gallery_size else 1,
        "seed": cfg.seed, "experiment": cfg.name, "git_commit": git_commit(),
    })
    write_text(out_dir / "config.yaml", to_yaml(cfg))
    facts = [("checkpoint", str(saved.path)), ("experiment", cfg.name),
             ("data", cfg.data.root), ("split", e.split), ("gallery", gallery)]
    write_split_outputs(out_dir, cfg, e.split, metrics, tables, rows, dataset,
                        f"{cfg.name}: {e.split} results", facts)
    print(metrics_table(metrics, e.split, title=f"{cfg.name}: {e.split} metrics, {gallery} "
                                                f"({out_dir})"))
    if e.gallery_size:
        spread = {k[:-len("/std")]: v for k, v in metrics.items() if k.endswith("/std")}
        print(metrics_table(spread, e.split, title="standard deviation over the draws"))
    return metrics, out_dir


def warn_if_failed_run(ckpt: Path) -> None:
    """A failed run's checkpoints are whole (written atomically) but not its final result."""
    parent = Path(ckpt).resolve().parent
    run = parent.parent if parent.name == "checkpoints" else parent
    status = read_status(run)
    if status.get("status") == "failed" and launch_rank() == 0:
        log.warning("vmr: warning: %s is from a run that failed (%s); evaluating it anyway",
                    ckpt, status.get("reason", "no reason recorded"))


def new_eval_dir(ckpt: Path) -> Path:
    """`<run>/eval/<timestamp>` for a checkpoint in `<run>/checkpoints/` (else next to it)."""
    parent = ckpt.resolve().parent
    run = parent.parent if parent.name == "checkpoints" else parent
    base = path = run / EVAL_DIR / time.strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while path.exists():
        suffix += 1
        path = base.with_name(f"{base.name}-{suffix}")
    return path


def eval_loader(dataset: Any, cfg: Config, world_size: int) -> DataLoader:
    """The split in order, in batches of data.eval_batch_size over all processes (as the
    DataModules' validation and test loaders)."""
    if cfg.data.eval_batch_size % world_size:
        raise DataError(
            f"config: data.eval_batch_size={cfg.data.eval_batch_size} is not divisible by the "
            f"{world_size} processes (devices x nodes); the batch size is global")
    workers = cfg.data.num_workers
    extra: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": 4} if workers else {}
    return DataLoader(dataset, batch_size=cfg.data.eval_batch_size // world_size, shuffle=False,
                      drop_last=False, num_workers=workers, collate_fn=identity_collate, **extra)


class SplitTruth:
    """TruthRecall for the evaluated split, which Lightning runs as its "test" stage: rows
    are looked up in `split` and the metrics named `test/...` like the others."""

    def __init__(self, truth: TruthRecall, split: str):
        self.truth, self.split = truth, split

    def __call__(self, stage: str, rows: dict) -> dict[str, float]:
        found = self.truth(self.split, rows)
        return {f"{stage}/{k[len(self.split) + 1:]}": v for k, v in found.items()}


def _rank_metrics(ranks: dict, ks: Sequence[int]) -> dict[str, float]:
    return {f"test/{d}/{k}": v for d, r in ranks.items()
            for k, v in metrics_from_ranks(r, ks).items()}


@contextlib.contextmanager
def _centre_frames(dataset: Any):
    """Sequence datasets sample random frames for the train split: evaluate on centres."""
    sampling = getattr(dataset, "train", None)
    if isinstance(sampling, bool):
        dataset.train = False
    try:
        yield
    finally:
        if isinstance(sampling, bool):
            dataset.train = sampling


def _check_dims(saved: CheckpointFile, trained: Config, cfg: Config,
                dims: dict[str, int]) -> None:
    m = getattr(trained.model, trained.model.name)
    want = {"video": m.video_dim, "music": m.music_dim}
    have = {side: dims.get(side) for side in want}
    if want != have:
        raise DataError(
            f"{saved.path}: the model takes {want['video']}-d video and {want['music']}-d "
            f"music features, but the {cfg.data.dataset} data at {cfg.data.root} has "
            f"{have['video']}-d video and {have['music']}-d music features")


def _check_weights(model: Any, saved: CheckpointFile, cfg: Config) -> None:
    try:
        model.load_state_dict(saved.state_dict, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0][:200]
        raise DataError(f"{saved.path}: its weights do not fit the {cfg.model.name} model its "
                        f"config describes (with the overrides): {first}") from None


def _check_gallery(gallery_size: int, pairs: int, split: str) -> None:
    if gallery_size > pairs:
        raise ConfigError(f"eval.gallery_size={gallery_size} is larger than the {split} split "
                          f"({pairs} pairs)")


def _store_dims(datamodule: Any) -> dict[str, int] | None:
    try:
        return datamodule.dims
    except DataError:
        return None
