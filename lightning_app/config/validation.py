"""Value checks that types cannot express: choices from field metadata, then ranges."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

from lightning_app.config.schema import Config
from lightning_app.errors import ConfigError


def validate(cfg: Config) -> None:
    """Choices from field metadata, then value ranges that types cannot express."""
    _check_choices(cfg, "")
    d, syn, t = cfg.data, cfg.data.synthetic, cfg.trainer
    checks = [
        ("data.batch_size", d.batch_size > 0, "must be > 0"),
        ("data.eval_batch_size", d.eval_batch_size > 0, "must be > 0"),
        ("data.num_workers", d.num_workers >= 0, "must be >= 0"),
        ("data.val_size", d.val_size >= 1, "must be >= 1"),
        ("data.test_size", d.test_size >= 1, "must be >= 1"),
        ("data.synthetic.val", syn.val >= 1, "must be >= 1"),
        ("data.synthetic.test", syn.test >= 1, "must be >= 1"),
        ("data.synthetic.pairs", syn.pairs > syn.val + syn.test,
         f"must be > data.synthetic.val + data.synthetic.test = {syn.val + syn.test}"),
        ("data.synthetic.styles", syn.styles >= 1, "must be >= 1"),
        ("data.synthetic.frames", syn.frames >= 1, "must be >= 1"),
        ("data.synthetic.span", 0.0 < syn.span <= 1.0, "must be in (0, 1]"),
        ("data.synthetic.tau", syn.tau >= 0.0, "must be >= 0"),
        ("data.synthetic.feature_noise", syn.feature_noise >= 0.0, "must be >= 0"),
        ("data.synthetic.noise", 0.0 <= syn.noise < 1.0, "must be in [0, 1)"),
        ("data.synthetic.missing", 0.0 <= syn.missing < 1.0, "must be in [0, 1)"),
        ("data.synthetic.share", 0.0 <= syn.share <= 1.0, "must be in [0, 1]"),
        ("data.synthetic.train_pairs", 0 <= syn.train_pairs <= syn.pairs - syn.val - syn.test,
         f"must be in [0, data.synthetic.pairs - val - test = {syn.pairs - syn.val - syn.test}]"
         " (0: all of them)"),
        ("data.synthetic.near_duplicates", 0.0 <= syn.near_duplicates < 1.0, "must be in [0, 1)"),
        ("data.synthetic.near_duplicate_scale", syn.near_duplicate_scale >= 0.0, "must be >= 0"),
        ("data.synthetic.min_frames", 0 <= syn.min_frames <= syn.frames,
         f"must be in [0, data.synthetic.frames = {syn.frames}] (0: all videos full length)"),
        ("data.synthetic.unpaired_videos", syn.unpaired_videos >= 0, "must be >= 0"),
        ("data.synthetic.unpaired_music", syn.unpaired_music >= 0, "must be >= 0"),
        ("data.synthetic.unpaired_linked", 0.0 <= syn.unpaired_linked <= 1.0,
         "must be in [0, 1]"),
        *_synthetic_format_checks(cfg),
        ("optim.lr", cfg.optim.lr > 0, "must be > 0"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, "must be >= 0"),
        ("optim.warmup_steps", cfg.optim.warmup_steps >= 0, "must be >= 0"),
        ("loss.num_negatives", cfg.loss.num_negatives > 0, "must be > 0"),
        ("loss.structure_k", cfg.loss.structure_k >= 2, "must be >= 2"),
        ("loss.margin", cfg.loss.margin in ("adaptive", "fixed_matched")
         or (not isinstance(cfg.loss.margin, str) and cfg.loss.margin >= 0),
         "must be a number >= 0, 'adaptive' or 'fixed_matched'"),
        ("loss.cmgsd.ramp_epochs", cfg.loss.cmgsd.ramp_epochs >= 0, "must be >= 0"),
        ("loss.cmgsd.max_margin", cfg.loss.cmgsd.max_margin is None
         or cfg.loss.cmgsd.max_margin > 0, "must be > 0 or empty (unbounded)"),
        ("loss.cmgsd.head_dim", cfg.loss.cmgsd.head_dim >= 1, "must be >= 1"),
        ("loss.cmgsd.head_dropout", 0.0 <= cfg.loss.cmgsd.head_dropout < 1.0,
         "must be in [0, 1)"),
        ("loss.cmgsd.ema_decay", 0.0 < cfg.loss.cmgsd.ema_decay < 1.0, "must be in (0, 1)"),
        ("ii_loss.weight", cfg.ii_loss.weight >= 0, "must be >= 0"),
        ("ii_loss.temperature", cfg.ii_loss.temperature > 0, "must be > 0"),
        ("ii_loss.k", cfg.ii_loss.k >= 2, "must be >= 2"),
        ("model.iiclvm.temperature", cfg.model.iiclvm.temperature > 0, "must be > 0"),
        ("model.ssvmr.temperature", cfg.model.ssvmr.temperature > 0, "must be > 0"),
        ("model.ssvmr.mixing.prob", 0.0 <= cfg.model.ssvmr.mixing.prob <= 1.0,
         "must be in [0, 1]"),
        ("model.ssvmr.mixing.window_frac", 0.0 < cfg.model.ssvmr.mixing.window_frac < 1.0,
         "must be in (0, 1)"),
        ("model.ssvmr.mixing.start_epoch", cfg.model.ssvmr.mixing.start_epoch >= 0,
         "must be >= 0"),
        ("model.ssvmr.mixing.saliency_source",
         cfg.model.ssvmr.mixing.saliency_source != "attention" or cfg.model.ssvmr.saliency,
         "'attention' needs model.ssvmr.saliency=true"),
        ("model.ssvmr.mixing.min_span",
         0.0 < cfg.model.ssvmr.mixing.min_span <= cfg.model.ssvmr.mixing.max_span <= 1.0,
         "must satisfy 0 < min_span <= max_span <= 1"),
        ("data.frames", d.frames >= 1, "must be >= 1"),
        ("data.labels", bool(d.labels), "must name at least one label"),
        ("data.prepare_workers", d.prepare_workers >= 0, "must be >= 0"),
        ("data.cache_fraction", 0.0 < d.cache_fraction <= 1.0, "must be in (0, 1]"),
        ("data.synthetic.shards", syn.shards >= 1, "must be >= 1"),
        ("data.synthetic.shared_songs", syn.shared_songs is None
         or 0.0 <= syn.shared_songs < 1.0, "must be in [0, 1) or empty (the format's default)"),
        ("eval.ks", bool(cfg.eval.ks) and min(cfg.eval.ks) >= 1,
         "must be a non-empty list of k >= 1"),
        ("eval.chunk_size", cfg.eval.chunk_size > 0, "must be > 0"),
        ("eval.curve_max_k", cfg.eval.curve_max_k >= 1, "must be >= 1"),
        ("trainer.max_epochs", t.max_epochs > 0, "must be > 0"),
        ("trainer.num_nodes", t.num_nodes >= 1, "must be >= 1"),
        ("trainer.check_val_every_n_epoch", t.check_val_every_n_epoch >= 1, "must be >= 1"),
        ("trainer.log_every_n_steps", t.log_every_n_steps >= 1, "must be >= 1"),
        ("trainer.limit_train_batches", _is_batch_limit(t.limit_train_batches),
         "must be empty, a number of batches (int >= 0) or a fraction in [0.0, 1.0]"),
        ("trainer.limit_val_batches", _is_batch_limit(t.limit_val_batches),
         "must be empty, a number of batches (int >= 0) or a fraction in [0.0, 1.0]"),
        ("trainer.limit_test_batches", _is_batch_limit(t.limit_test_batches),
         "must be empty, a number of batches (int >= 0) or a fraction in [0.0, 1.0]"),
        ("trainer.overfit_batches", _is_batch_limit(t.overfit_batches),
         "must be a number of batches (int >= 0) or a fraction in [0.0, 1.0]"),
        ("trainer.fast_dev_run", isinstance(t.fast_dev_run, bool)
         or (isinstance(t.fast_dev_run, int) and t.fast_dev_run >= 0),
         "must be true, false or a number of batches >= 0"),
        ("trainer.max_steps", t.max_steps >= -1, "must be >= -1 (-1: no limit)"),
        ("trainer.val_check_interval", t.val_check_interval is None
         or _is_batch_limit(t.val_check_interval) and t.val_check_interval != 0,
         "must be empty, a number of training batches (int >= 1) or a fraction in (0.0, 1.0]"),
        ("trainer.accumulate_grad_batches", 1 <= t.accumulate_grad_batches <= d.batch_size,
         f"must be in [1, data.batch_size = {d.batch_size}] (micro-batches of the batch)"),
        ("early_stopping.patience", cfg.early_stopping.patience >= 1, "must be >= 1"),
        ("ema.decay", 0.0 < cfg.ema.decay < 1.0, "must be in (0, 1)"),
        ("ema.start_step", cfg.ema.start_step >= 0, "must be >= 0"),
        ("eval.gallery_size", cfg.eval.gallery_size >= 0, "must be >= 0 (0: the whole split)"),
        ("eval.draws", cfg.eval.draws >= 1, "must be >= 1"),
        ("eval.topk", cfg.eval.topk >= 1, "must be >= 1"),
        ("eval.gap_pairs", cfg.eval.gap_pairs == 0 or cfg.eval.gap_pairs >= 2,
         "must be 0 (off) or >= 2"),
        ("checkpoint.save_top_k", cfg.checkpoint.save_top_k >= -1, "must be >= -1"),
        ("self_training.epochs_per_round", cfg.self_training.epochs_per_round >= 1,
         "must be >= 1"),
        ("self_training.rounds", cfg.self_training.rounds >= 1, "must be >= 1"),
        ("self_training.rank_threshold", cfg.self_training.rank_threshold >= 1, "must be >= 1"),
        ("self_training.downweight", 0.0 <= cfg.self_training.downweight <= 1.0,
         "must be in [0, 1]"),
        ("self_training.ema_decay", 0.0 <= cfg.self_training.ema_decay < 1.0,
         "must be in [0, 1)"),
        ("back_retrieval.every_n_epochs", cfg.back_retrieval.every_n_epochs >= 1,
         "must be >= 1"),
        ("back_retrieval.rank_tolerance", cfg.back_retrieval.rank_tolerance >= 1,
         "must be >= 1"),
        ("back_retrieval.weight", cfg.back_retrieval.weight >= 0, "must be >= 0"),
        ("back_retrieval.nprobe", cfg.back_retrieval.nprobe >= 0, "must be >= 0"),
        ("back_retrieval.ef_search", cfg.back_retrieval.ef_search >= 1, "must be >= 1"),
        ("back_retrieval.index", cfg.back_retrieval.index == "exact"
         or importlib.util.find_spec("faiss") is not None,
         "needs FAISS, which is not installed: pip install 'vmr[faiss]' (or use exact)"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"config: '{key}' {why} (got {_get(cfg, key)!r})")


def _synthetic_format_checks(cfg: Config) -> list[tuple[str, bool, str]]:
    """Planted conditions that only some on-disk formats can hold (when synthesising)."""
    d, syn = cfg.data, cfg.data.synthetic
    if not syn.enabled:
        return []
    return [
        ("data.synthetic.unpaired_videos", d.dataset == "mvd" or syn.unpaired_videos == 0,
         f"must be 0 for data.dataset={d.dataset} (only the mvd layout has an unpaired pool)"),
        ("data.synthetic.unpaired_music", d.dataset == "mvd" or syn.unpaired_music == 0,
         f"must be 0 for data.dataset={d.dataset} (only the mvd layout has an unpaired pool)"),
        ("data.synthetic.min_frames", d.dataset != "youtube8m" or syn.min_frames == 0,
         "must be 0 for data.dataset=youtube8m (its writer draws its own video lengths)"),
        # MGSV-EC's shapes are the release's (50 frames, 96 windows; 6-50 valid frames).
        ("data.synthetic.min_frames", d.dataset != "mgsv_ec" or syn.min_frames == 0,
         "must be 0 for data.dataset=mgsv_ec (its writer draws 6-50 valid frames per video)"),
        ("data.synthetic.train_pairs", d.dataset != "mgsv_ec" or syn.train_pairs == 0,
         "must be 0 for data.dataset=mgsv_ec (its val/test tracks are training tracks)"),
        ("data.synthetic.shared_songs", d.dataset != "mgsv_ec" or syn.shared_songs is None
         or syn.shared_songs > 0, "must be > 0 for data.dataset=mgsv_ec (videos share tracks)"),
    ]


def _is_batch_limit(x: Any) -> bool:
    if x is None:
        return True
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    return x >= 0 if isinstance(x, int) else 0.0 <= x <= 1.0


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _check_choices(node: Any, prefix: str) -> None:
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        key = f"{prefix}{f.name}"
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            valid = ", ".join(f.metadata["choices"])
            raise ConfigError(f"config: '{key}' has unknown value {value!r} (choose from: {valid})")
        if dataclasses.is_dataclass(value):
            _check_choices(value, key + ".")
