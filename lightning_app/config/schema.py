"""The experiment configuration schema: one dataclass per section, defaults included.

`lightning_app.config.loading` checks every YAML layer and override against these classes
before merging. Choices (dataset, model, ...) are data in field metadata, never module paths
to import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning_app.config.methods import (
    BackRetrievalConfig,
    IILossConfig,
    LossConfig,
    ModelConfig,
    SelfTrainingConfig,
)
from lightning_app.config.schema_base import choice


@dataclass
class SynthConfig:
    """Planted synthetic data generated into `data.root` on first use (see `vmr synth`)."""

    enabled: bool = False
    pairs: int = 6000
    val: int = 1000
    test: int = 1000
    styles: int = 16
    tau: float = 0.6
    noise: float = 0.0
    missing: float = 0.0
    frames: int = 12
    span: float = 0.5
    feature_noise: float = 0.5
    seed: int = 0
    # YouTube-8M format only: planted in-video text (II-CLVTM) and the number of TFRecord shards.
    text: bool = False
    shards: int = 4
    # Fraction of each split's videos whose (true) song is another pair's song; empty (null):
    # the format's default, 0.1 for MVD and 0 for HIMV-200K and YouTube-8M.
    shared_songs: float | None = None
    # Benchmark conditions (datamodules.synthetic.conditions). share: how much pair-specific
    # content a pair's video and music share (1: all; 0: only the style, so same-style items
    # are interchangeable). train_pairs: training pairs written (0: pairs - val - test); val
    # and test stay the same. near_duplicates: fraction of each split's pairs whose content is
    # a near copy of another pair's (deviation near_duplicate_scale x tau per modality).
    share: float = 1.0
    train_pairs: int = 0
    near_duplicates: float = 0.0
    near_duplicate_scale: float = 0.1
    # What non-salient video frames show: "same" (another content of the songs' distribution,
    # indistinguishable frame by frame) or "background" (content no song uses).
    filler: str = choice("same", ("same", "background"))
    # MVD/HIMV-200K: 0 = every video has `frames` frames; else uniform in [min_frames, frames].
    min_frames: int = 0
    # MVD format only: the unpaired pool (splits/unpaired_{videos,music}.csv), in no split;
    # `unpaired_linked` x the smaller count of them are hidden pairs (shared content).
    unpaired_videos: int = 0
    unpaired_music: int = 0
    unpaired_linked: float = 0.5


@dataclass
class DataConfig:
    dataset: str = choice("himv200k", ("himv200k", "youtube8m", "mvd", "mgsv_ec"))
    root: str = "data/synthetic_himv200k"
    # Packed feature store; empty means `<root>/store`. Built by `vmr prepare` or on first use.
    store: str = ""
    # Global batch size: split evenly over all devices and nodes.
    batch_size: int = 1000
    eval_batch_size: int = 1000
    num_workers: int = 0
    # Used only when the dataset ships no split files (HIMV-200K): the last `test_size` ids
    # are the test split and the `val_size` before them the validation split.
    val_size: int = 4000
    test_size: int = 1000
    # Sequence datasets (YouTube-8M): Global Sparse sampling takes one frame from each of
    # `frames` equal segments (random in training, centred in evaluation).
    frames: int = 32
    # YouTube-8M: the music-video subset, by vocabulary name or label id.
    labels: list[str] = field(default_factory=lambda: ["Music video"])
    # Processes reading source files in parallel while packing the store.
    prepare_workers: int = 2
    # Where the splits live while batching: `device` (GPU memory, as stored), `host` (RAM),
    # `none` (memory-mapped files, DataLoader workers), `auto`: device when they fit in
    # `cache_fraction` of the free device memory, else host when they fit in that fraction of
    # the available RAM, else none (datamodules.cache_place).
    cache: str = choice("auto", ("auto", "device", "host", "none"))
    cache_fraction: float = 0.5
    synthetic: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class OptimConfig:
    name: str = choice("adam", ("adam", "adamw", "sgd"))
    lr: float = 3e-4
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str = choice("constant", ("constant", "cosine"))
    warmup_steps: int = 0


@dataclass
class TrainerConfig:
    max_epochs: int = 20
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Any = "32-true"
    gradient_clip_val: float | None = None
    check_val_every_n_epoch: int = 1
    log_every_n_steps: int = 10
    # As in Lightning: an int is a number of batches, a float in [0, 1] a fraction (a typed
    # float field would turn `=10` into 10.0, which Lightning rejects).
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    # Lightning's debugging keys, passed through as Lightning defines them.
    fast_dev_run: Any = False
    overfit_batches: Any = 0.0
    max_steps: int = -1
    val_check_interval: Any = None
    profiler: str = choice("none", ("none", "simple", "advanced", "pytorch"))
    # torch.compile the model before fitting.
    compile: bool = False
    # Split each batch into this many micro-batches (less memory) with the whole batch's
    # gradient (an embedding cache, as GradCache: models/grad_cache.py); one optimizer step
    # per batch. Refused for models with BatchNorm (VM-NET).
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    enable_progress_bar: bool = True


@dataclass
class EarlyStoppingConfig:
    """Stop when `monitor` has not improved for `patience` validations; empty: off."""

    monitor: str = ""
    mode: str = choice("max", ("max", "min"))
    patience: int = 3
    min_delta: float = 0.0


@dataclass
class EMAConfig:
    """Exponential moving average of the weights; evaluation and checkpoints use it."""

    enabled: bool = False
    decay: float = 0.999
    # Optimizer steps before averaging starts (the average starts from the weights then).
    start_step: int = 0


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 50, 100])
    chunk_size: int = 4096
    # Length of the recall-at-K curve image logged to W&B.
    curve_max_k: int = 100
    # `vmr eval`: the split to score, and R seeded random galleries of N items that contain
    # each query's positives (0: the whole split as gallery).
    split: str = choice("test", ("test", "val", "train"))
    gallery_size: int = 0
    draws: int = 1
    # Per-query results: each query's top-k gallery ids and scores.
    topk: int = 10
    save_embeddings: bool = False
    # Train/validation gap (lightning_app.callbacks.train_gap): R@10 on this many training
    # pairs minus R@10 on as many validation pairs, logged as gap/...; 0: off.
    gap_pairs: int = 0


@dataclass
class CheckpointConfig:
    monitor: str = "val/v2m/R@10"
    mode: str = choice("max", ("max", "min"))
    save_top_k: int = 1
    save_last: bool = True


@dataclass
class WandbConfig:
    # auto: online when WANDB_API_KEY is set, otherwise offline.
    mode: str = choice("auto", ("auto", "online", "offline", "disabled"))
    project: str = "vmr"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)
    # Empty: the experiment name. Sweeps and studies set one group per sweep, the arm as job type.
    group: str = ""
    job_type: str = ""


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config:
    name: str = ""
    description: str = ""
    seed: int = 0
    run_dir: str = "runs"
    # Continue a run in its own folder: a run folder, or "last" (the newest run of this
    # experiment with checkpoints/last.ckpt). Only trainer.max_epochs may differ from the run.
    resume: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ii_loss: IILossConfig = field(default_factory=IILossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)
    back_retrieval: BackRetrievalConfig = field(default_factory=BackRetrievalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
