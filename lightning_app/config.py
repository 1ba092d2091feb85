"""Experiment configuration: `experiments/base.yaml` + `experiments/NAME.yaml` + overrides.

The dataclasses below are the schema. Every YAML layer and every `key=value` override is
checked against it before merging, so a typo fails with one line that names the source,
the key and the valid keys, instead of being silently ignored. Choices (dataset, model, ...)
are data in field metadata, never module paths to import.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_app.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"


def choice(default: str, choices: tuple[str, ...]) -> Any:
    return field(default=default, metadata={"choices": choices})


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
    # MVD format only: fraction of videos whose (true) song is another pair's song.
    shared_songs: float = 0.1


@dataclass
class DataConfig:
    dataset: str = choice("himv200k", ("himv200k", "youtube8m", "mvd"))
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
    synthetic: SynthConfig = field(default_factory=SynthConfig)


@dataclass
class VMNetConfig:
    music_dim: int = 1140
    video_dim: int = 1024
    embed_dim: int = 512
    music_hidden: list[int] = field(default_factory=lambda: [2048, 1024])
    video_hidden: list[int] = field(default_factory=lambda: [2048])
    dropout: float = 0.1
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01
    # The released train.py's `is_linear` flag: drop the ReLUs.
    is_linear: bool = False
    # How frame sequences become one vector (HIMV-200K is already one vector per track).
    video_pooling: str = choice("mean", ("mean", "max", "mean_max"))


@dataclass
class EncoderConfig:
    kind: str = choice("transformer", ("transformer", "mean", "bilstm"))
    d_model: int = 256
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1


@dataclass
class TextConfig:
    """II-CLVTM's video-side text: raw text through a hashed-token encoder, or precomputed."""

    enabled: bool = False
    source: str = choice("hashed", ("hashed", "precomputed"))
    buckets: int = 32768
    max_tokens: int = 32
    # Dimension of precomputed text embeddings (`text_emb` in the batch).
    dim: int = 384


@dataclass
class IICLVMConfig:
    video_dim: int = 1024
    music_dim: int = 128
    embed_dim: int = 256
    video_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    music_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    text: TextConfig = field(default_factory=TextConfig)
    temperature: float = 0.07
    learnable_temperature: bool = True


@dataclass
class MixingConfig:
    """SSVMR span-level mixing (reconstruction, METHODS.md)."""

    enabled: bool = True
    # Fraction of training samples mixed, and the span as a fraction of the video's length.
    prob: float = 0.5
    min_span: float = 0.1
    max_span: float = 0.5
    distribution: str = choice("uniform", ("uniform", "beta"))
    beta_a: float = 2.0
    beta_b: float = 2.0


@dataclass
class SSVMRConfig:
    video_dim: int = 512
    music_dim: int = 128
    embed_dim: int = 256
    video_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    music_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    temperature: float = 0.07
    learnable_temperature: bool = True
    # Video frames pooled by learned saliency attention; mixing targets follow its mass.
    saliency: bool = True
    mixing: MixingConfig = field(default_factory=MixingConfig)


@dataclass
class ModelConfig:
    name: str = choice("vmnet", ("vmnet", "iiclvm", "ssvmr"))
    vmnet: VMNetConfig = field(default_factory=VMNetConfig)
    iiclvm: IICLVMConfig = field(default_factory=IICLVMConfig)
    ssvmr: SSVMRConfig = field(default_factory=SSVMRConfig)


@dataclass
class CMGSDConfig:
    """CMGSD adaptive margin (reconstruction, METHODS.md): m = max(0, alpha + beta z(d))."""

    fixed_margin: float = 0.1
    alpha: float = 0.2
    beta: float = 1.0
    # lambda ramps 0 -> 1 over this many epochs (self-distillation terms phase in).
    ramp_epochs: int = 5
    # Use the frozen raw input features as CMGSD's static expert.
    static: bool = True


@dataclass
class LossConfig:
    """VM-NET: L = 3 L_mv + 1 L_vm + 0.2 L_struct(music) + 0.2 L_struct(video)."""

    num_negatives: int = 100
    # A number, or "adaptive" for CMGSD's per-negative margins (settings in `cmgsd`).
    margin: float | str = 0.1
    music_to_video_weight: float = 3.0
    video_to_music_weight: float = 1.0
    structure_k: int = 100
    structure_music_weight: float = 0.2
    structure_video_weight: float = 0.2
    cmgsd: CMGSDConfig = field(default_factory=CMGSDConfig)


@dataclass
class IILossConfig:
    """II-CLVM's inter-intra loss; weight 0 gives the plain contrastive baseline."""

    weight: float = 1.0
    variant: str = choice("mse", ("mse", "kl", "rank"))
    video_weight: float = 1.0
    music_weight: float = 1.0
    text_weight: float = 1.0
    # Softmax temperature of the `kl` variant; `k`: samples used by the `rank` variant.
    temperature: float = 0.1
    k: int = 100


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
    deterministic: bool = False
    enable_progress_bar: bool = True


@dataclass
class EvalConfig:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 50, 100])
    chunk_size: int = 4096
    # Length of the recall-at-K curve image logged to W&B.
    curve_max_k: int = 100


@dataclass
class SelfTrainingConfig:
    """Pseudo-label self-training rounds (SSVMR; reconstruction, METHODS.md)."""

    enabled: bool = False
    epochs_per_round: int = 4
    rounds: int = 2
    # A pair is flagged when its paired song ranks beyond this among all training songs.
    rank_threshold: int = 50
    action: str = choice("reassign", ("drop", "downweight", "reassign"))
    downweight: float = 0.2
    # Re-assign only when the top song beats the paired one by this cosine margin.
    reassign_margin: float = 0.1
    fallback: str = choice("downweight", ("downweight", "drop", "keep"))


@dataclass
class BackRetrievalConfig:
    """Back-retrieval augmentation: cycle-consistent video -> music -> video pairs."""

    enabled: bool = False
    every_n_epochs: int = 4
    start_epoch: int = 4
    rank_tolerance: int = 1
    similarity_floor: float = 0.5
    weight: float = 0.5
    max_new: int = 100000


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
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def experiment_names(experiments_dir: Path = EXPERIMENTS_DIR) -> list[str]:
    return sorted(p.stem for p in experiments_dir.glob("*.yaml") if p.stem != "base")


def load_config(
    name: str, overrides: list[str] | tuple[str, ...] = (), experiments_dir: Path | None = None
) -> Config:
    """Merge base.yaml, NAME.yaml and `key=value` overrides into a validated `Config`."""
    experiments_dir = Path(experiments_dir or EXPERIMENTS_DIR)
    names = experiment_names(experiments_dir)
    if not names:
        raise ConfigError(f"unknown experiment '{name}': no experiments in {experiments_dir}")
    if name not in names:
        raise ConfigError(f"unknown experiment '{name}' (choose from: {', '.join(names)})")
    layers: list[tuple[str, dict]] = []
    base = experiments_dir / "base.yaml"
    if base.exists():
        layers.append((str(base), _read_yaml(base)))
    layers += _experiment_layers(experiments_dir, name, names, chain=())
    layers.append(("command line", _parse_overrides(overrides)))

    merged = OmegaConf.structured(Config)
    for source, layer in layers:
        _check_keys(merged, layer, source, prefix="")
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", "") or "?"
            msg = str(e).splitlines()[0]
            raise ConfigError(f"{source}: bad value for '{key}': {msg}") from None
    merged.name = name
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


EXTENDS = "extends"


def _experiment_layers(experiments_dir: Path, name: str, names: list[str],
                       chain: tuple[str, ...]) -> list[tuple[str, dict]]:
    """NAME.yaml, preceded by the experiment it `extends` (recursively), outermost first.

    An ablation then states only what it changes, e.g. `extends: ssvmr_synthetic` plus
    `model: {ssvmr: {mixing: {enabled: false}}}`.
    """
    path = experiments_dir / f"{name}.yaml"
    layer = dict(_read_yaml(path))
    parent = layer.pop(EXTENDS, None)
    if parent is None:
        return [(str(path), layer)]
    if not isinstance(parent, str) or parent not in names:
        raise ConfigError(
            f"{path}: '{EXTENDS}: {parent}' is not an experiment (choose from: {', '.join(names)})"
        )
    if parent in chain or parent == name:
        cycle = " -> ".join((*chain, name, parent))
        raise ConfigError(f"{path}: '{EXTENDS}' forms a cycle ({cycle})")
    return [*_experiment_layers(experiments_dir, parent, names, (*chain, name)), (str(path), layer)]


def config_from_dict(d: dict, where: str) -> Config:
    """A resolved config saved earlier (config.yaml, a checkpoint) back into a `Config`."""
    merged = OmegaConf.structured(Config)
    _check_keys(merged, d, where, prefix="")
    try:
        merged = OmegaConf.merge(merged, d)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        raise ConfigError(f"{where}: bad value for '{key}': {str(e).splitlines()[0]}") from None
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """The resolved config as plain containers (for YAML, JSON and W&B)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


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
        ("optim.lr", cfg.optim.lr > 0, "must be > 0"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, "must be >= 0"),
        ("optim.warmup_steps", cfg.optim.warmup_steps >= 0, "must be >= 0"),
        ("loss.num_negatives", cfg.loss.num_negatives > 0, "must be > 0"),
        ("loss.structure_k", cfg.loss.structure_k >= 2, "must be >= 2"),
        ("loss.margin", cfg.loss.margin == "adaptive"
         or (not isinstance(cfg.loss.margin, str) and cfg.loss.margin >= 0),
         "must be a number >= 0 or 'adaptive'"),
        ("loss.cmgsd.ramp_epochs", cfg.loss.cmgsd.ramp_epochs >= 0, "must be >= 0"),
        ("ii_loss.weight", cfg.ii_loss.weight >= 0, "must be >= 0"),
        ("ii_loss.temperature", cfg.ii_loss.temperature > 0, "must be > 0"),
        ("ii_loss.k", cfg.ii_loss.k >= 2, "must be >= 2"),
        ("model.iiclvm.temperature", cfg.model.iiclvm.temperature > 0, "must be > 0"),
        ("model.ssvmr.temperature", cfg.model.ssvmr.temperature > 0, "must be > 0"),
        ("model.ssvmr.mixing.prob", 0.0 <= cfg.model.ssvmr.mixing.prob <= 1.0,
         "must be in [0, 1]"),
        ("model.ssvmr.mixing.min_span",
         0.0 < cfg.model.ssvmr.mixing.min_span <= cfg.model.ssvmr.mixing.max_span <= 1.0,
         "must satisfy 0 < min_span <= max_span <= 1"),
        ("data.frames", d.frames >= 1, "must be >= 1"),
        ("data.labels", bool(d.labels), "must name at least one label"),
        ("data.prepare_workers", d.prepare_workers >= 0, "must be >= 0"),
        ("data.synthetic.shards", syn.shards >= 1, "must be >= 1"),
        ("data.synthetic.shared_songs", 0.0 <= syn.shared_songs < 1.0, "must be in [0, 1)"),
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
        ("checkpoint.save_top_k", cfg.checkpoint.save_top_k >= -1, "must be >= -1"),
        ("self_training.epochs_per_round", cfg.self_training.epochs_per_round >= 1,
         "must be >= 1"),
        ("self_training.rounds", cfg.self_training.rounds >= 1, "must be >= 1"),
        ("self_training.rank_threshold", cfg.self_training.rank_threshold >= 1, "must be >= 1"),
        ("self_training.downweight", 0.0 <= cfg.self_training.downweight <= 1.0,
         "must be in [0, 1]"),
        ("back_retrieval.every_n_epochs", cfg.back_retrieval.every_n_epochs >= 1,
         "must be >= 1"),
        ("back_retrieval.rank_tolerance", cfg.back_retrieval.rank_tolerance >= 1,
         "must be >= 1"),
        ("back_retrieval.weight", cfg.back_retrieval.weight >= 0, "must be >= 0"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise ConfigError(f"config: '{key}' {why} (got {_get(cfg, key)!r})")


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


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def _parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        msg = str(e).splitlines()[0]
        raise ConfigError(f"command line: cannot parse overrides ({msg})") from None


def _check_keys(schema: DictConfig, layer: dict, source: str, prefix: str) -> None:
    """Raise on keys the schema lacks; drop empty sections (`data:` with all keys commented)."""
    for key, value in list(layer.items()):
        dotted = f"{prefix}{key}"
        if key not in schema:
            valid = ", ".join(sorted(str(k) for k in schema.keys()))
            where = f"under '{prefix[:-1]}'" if prefix else "at top level"
            raise ConfigError(f"{source}: unknown key '{dotted}' (valid keys {where}: {valid})")
        child = schema._get_node(key)
        if isinstance(child, DictConfig) and child._is_none() is False:
            if value is None:
                del layer[key]
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a mapping, got {value!r}")
            _check_keys(child, value, source, prefix=f"{dotted}.")
