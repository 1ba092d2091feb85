"""Config sections of the methods: models, their losses, self-training and back retrieval."""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_app.config.schema_base import choice


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
    """SSVMR span-level mixing (reconstruction after SSMix, docs/methods.md)."""

    # Off by default: in our studies it was no better than no mixing, and clearly worse when
    # filler frames look like real content (docs/methods.md, SSVMR).
    enabled: bool = False
    # saliency: B's most salient window over A's least salient one; random_aligned: a random
    # span of B at the same positions in A (the project's first reconstruction, an ablation).
    mode: str = choice("saliency", ("saliency", "random_aligned"))
    # Per-frame saliency: input gradient of the clean loss, or the pooling attention.
    saliency_source: str = choice("gradient", ("gradient", "attention"))
    # saliency mode: the window as a fraction of A's valid frames (at least 1 frame).
    window_frac: float = 0.1
    # B's target weight: window / length, or B's share of the clean saliency mass.
    label_weight: str = choice("length", ("length", "saliency"))
    # true: loss = (clean loss + mixed loss) / 2; false: mixed rows replace the clean ones.
    keep_clean: bool = True
    # First epoch (0-based) that mixes; earlier epochs train without mixing.
    start_epoch: int = 0
    # Fraction of training samples mixed.
    prob: float = 1.0
    # random_aligned mode: the span as a fraction of the video's length.
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
    """CMGSD adaptive margin (reconstruction, docs/methods.md): clamp(alpha + beta z, 0, max).

    Used by `loss.margin=adaptive`; `loss.margin=fixed_matched` is its control with the same
    hinge terms and weights but the fixed margin everywhere.
    """

    fixed_margin: float = 0.1
    alpha: float = 0.2
    beta: float = 1.0
    # Upper bound of the adaptive margins; empty (null): unbounded, as the third-party port.
    # Defaults (0.5, row) from the registered tuning study cmgsd_tuning (docs/methods.md).
    max_margin: float | None = 0.5
    # z-score of the distances over the whole batch (the port) or per anchor row.
    zscore: str = choice("row", ("batch", "row"))
    # Distances from the joint embeddings being trained, from separate single-modal heads on
    # the pre-projection features, or from a momentum (EMA) copy of the branches.
    dynamic_source: str = choice("joint", ("joint", "heads", "ema"))
    head_dim: int = 256
    head_dropout: float = 0.1
    ema_decay: float = 0.99
    # Divide the loss by the sum of its term weights (1 + 2 lambda (+ 1 - lambda)).
    normalize_terms: bool = False
    # lambda ramps 0 -> 1 over this many epochs (self-distillation terms phase in).
    ramp_epochs: int = 5
    # Use the frozen raw input features as CMGSD's static expert.
    static: bool = True


@dataclass
class LossConfig:
    """VM-NET: L = 3 L_mv + 1 L_vm + 0.2 L_struct(music) + 0.2 L_struct(video)."""

    num_negatives: int = 100
    # A number; "adaptive" for CMGSD's per-negative margins (settings in `cmgsd`); or
    # "fixed_matched": CMGSD's terms and weights with `cmgsd.fixed_margin` in every term.
    margin: float | str = 0.1
    music_to_video_weight: float = 3.0
    video_to_music_weight: float = 1.0
    structure_k: int = 100
    structure_music_weight: float = 0.2
    structure_video_weight: float = 0.2
    cmgsd: CMGSDConfig = field(default_factory=CMGSDConfig)


@dataclass
class IILossConfig:
    """II-CLVM's inter-intra loss; weight 0 gives the plain contrastive baseline.

    Defaults (corr at weight 1) from the registered tuning and follow-up studies
    (docs/methods.md).
    """

    weight: float = 1.0
    variant: str = choice("corr", ("mse", "kl", "corr", "rank"))
    # "batch": subtract each side's batch mean before the cosines (removes the raw features'
    # common offset, which otherwise pins all raw cosines near 1).
    center: str = choice("none", ("none", "batch"))
    # Per-modality weights; 0 skips that modality's term entirely.
    video_weight: float = 1.0
    music_weight: float = 1.0
    text_weight: float = 1.0
    # Softmax temperature of the `kl` variant; `k`: samples used by the `rank` variant.
    temperature: float = 0.1
    k: int = 100


@dataclass
class SelfTrainingConfig:
    """Pseudo-label self-training rounds (SSVMR; reconstruction, docs/methods.md)."""

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
    # Pseudo-label of a flagged pair: the top song when it beats the paired one by
    # `reassign_margin` (margin) or when video -> top song -> top video closes (cycle).
    rule: str = choice("margin", ("margin", "cycle"))
    # Who scores and who learns: the model itself (continue), a student restarted from the
    # initial weights after each round (reinit), or an EMA teacher of the weights (ema).
    student: str = choice("continue", ("continue", "reinit", "ema"))
    # EMA teacher: per-step decay of the moving average (student=ema).
    ema_decay: float = 0.9


@dataclass
class BackRetrievalConfig:
    """Back-retrieval augmentation: cycle-consistent video -> music -> video pairs."""

    enabled: bool = False
    # unpaired: partners for the dataset's unpaired videos and songs (back translation's
    # monolingual data; needs an unpaired list); split: new pairs inside the training split.
    source: str = choice("unpaired", ("unpaired", "split"))
    every_n_epochs: int = 4
    start_epoch: int = 4
    rank_tolerance: int = 1
    similarity_floor: float = 0.5
    weight: float = 0.5
    max_new: int = 100000
    # Candidate search: exact, or a FAISS index for big collections (flat is exact; ivf and
    # hnsw approximate; pip install 'vmr[faiss]'). nprobe 0: chosen from the size.
    index: str = choice("exact", ("exact", "flat", "ivf", "hnsw"))
    nprobe: int = 0
    ef_search: int = 128
