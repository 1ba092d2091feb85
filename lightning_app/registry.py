"""Config -> objects. A small explicit table per kind; no import paths read from config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from datamodules.base import StoreDataModule
from datamodules.himv200k import HIMV200KDataModule
from datamodules.mgsv_ec import MGSVECDataModule
from datamodules.mvd import MVDDataModule
from datamodules.synthetic.mgsv_ec import SHARED_SONGS as MGSV_SHARED_SONGS
from datamodules.synthetic.mvd import SHARED_SONGS as MVD_SHARED_SONGS
from datamodules.youtube8m import YouTube8MDataModule
from lightning_app.config import Config, SynthConfig
from lightning_app.errors import ConfigError
from models.base import RetrievalModule
from models.iiclvm import IICLVM
from models.ssvmr import SSVMR
from models.vmnet import VMNet

# data.synthetic.shared_songs left empty: MVD and MGSV-EC plant shared songs by default (for
# MGSV-EC the fraction of training videos using another video's track), the others not.
DEFAULT_SHARED_SONGS = {"mvd": MVD_SHARED_SONGS, "mgsv_ec": MGSV_SHARED_SONGS}


def synth_settings(s: SynthConfig, dataset: str = "himv200k") -> dict:
    """SynthConfig -> PlantedSpec keyword arguments (+ `missing`, `shared_songs` for the
    writer)."""
    shared = s.shared_songs if s.shared_songs is not None else DEFAULT_SHARED_SONGS.get(dataset,
                                                                                        0.0)
    return {
        "pairs": s.pairs, "val": s.val, "test": s.test, "styles": s.styles, "tau": s.tau,
        "noise": s.noise, "seed": s.seed, "music_frames": s.frames, "video_frames": s.frames,
        "span": s.span, "feature_noise": s.feature_noise, "missing": s.missing,
        "filler": s.filler, "min_frames": s.min_frames, "share": s.share,
        "train_pairs": s.train_pairs, "near_duplicates": s.near_duplicates,
        "near_duplicate_scale": s.near_duplicate_scale, "shared_songs": float(shared),
    }


def _himv200k(cfg: Config) -> StoreDataModule:
    d = cfg.data
    return HIMV200KDataModule(
        d.root, d.store or None, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers, val_size=d.val_size, test_size=d.test_size,
        synthetic=synth_settings(d.synthetic, "himv200k") if d.synthetic.enabled else None,
    )


def _youtube8m(cfg: Config) -> StoreDataModule:
    d = cfg.data
    synthetic = None
    if d.synthetic.enabled:
        synthetic = synth_settings(d.synthetic, "youtube8m")
        synthetic.update(text=d.synthetic.text, shards=d.synthetic.shards)
        # Synthetic text embeddings (`text_emb`) are generated only for a model that reads
        # them, with the model's dimension.
        t = cfg.model.iiclvm.text
        if cfg.model.name == "iiclvm" and t.enabled and t.source == "precomputed":
            synthetic["text_emb_dim"] = t.dim
    # Label ids may be given as numbers; names are looked up in vocabulary.csv.
    labels = [int(x) if str(x).isdigit() else str(x) for x in d.labels]
    return YouTube8MDataModule(
        d.root, d.store or None, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers, frames=d.frames, labels=labels, workers=d.prepare_workers,
        synthetic=synthetic,
    )


def _mvd(cfg: Config) -> StoreDataModule:
    d = cfg.data
    synthetic = None
    if d.synthetic.enabled:
        synthetic = synth_settings(d.synthetic, "mvd")
        synthetic.update(unpaired_videos=d.synthetic.unpaired_videos,
                         unpaired_music=d.synthetic.unpaired_music,
                         unpaired_linked=d.synthetic.unpaired_linked)
    return MVDDataModule(d.root, d.store or None, batch_size=d.batch_size,
                         eval_batch_size=d.eval_batch_size, num_workers=d.num_workers,
                         frames=d.frames, synthetic=synthetic)


def _mgsv_ec(cfg: Config) -> StoreDataModule:
    d = cfg.data
    synthetic = synth_settings(d.synthetic, "mgsv_ec") if d.synthetic.enabled else None
    return MGSVECDataModule(d.root, d.store or None, batch_size=d.batch_size,
                            eval_batch_size=d.eval_batch_size, num_workers=d.num_workers,
                            synthetic=synthetic)


def _check_dims(cfg: Config, section: str, expected: tuple, dims: dict[str, int]) -> None:
    for modality, key, want in expected:
        if dims.get(modality) != want:
            raise ConfigError(
                f"config: model.{section}.{key}={want} but the {cfg.data.dataset} store has "
                f"{modality} dimension {dims.get(modality)}"
            )


def _iiclvm(cfg: Config, dims: dict[str, int]) -> RetrievalModule:
    m = cfg.model.iiclvm
    _check_dims(cfg, "iiclvm", (("music", "music_dim", m.music_dim),
                                ("video", "video_dim", m.video_dim)), dims)
    if m.text.enabled and m.text.source == "precomputed":
        if "text_emb" not in dims:
            hint = ""
            if cfg.data.dataset == "youtube8m":
                hint = ("; set data.synthetic.text=true" if cfg.data.synthetic.enabled
                        else "; its records carry no text_emb context feature")
            raise ConfigError(
                f"config: model.iiclvm.text.source=precomputed (model.iiclvm.text.dim="
                f"{m.text.dim}) but the {cfg.data.dataset} store has no text_emb modality{hint}"
            )
        if dims["text_emb"] != m.text.dim:
            raise ConfigError(
                f"config: model.iiclvm.text.dim={m.text.dim} but the {cfg.data.dataset} store "
                f"has text_emb dimension {dims['text_emb']}"
            )
    return IICLVM(dataclasses.asdict(m), dataclasses.asdict(cfg.ii_loss),
                  dataclasses.asdict(cfg.optim))


def _ssvmr(cfg: Config, dims: dict[str, int]) -> RetrievalModule:
    m = cfg.model.ssvmr
    _check_dims(cfg, "ssvmr", (("music", "music_dim", m.music_dim),
                               ("video", "video_dim", m.video_dim)), dims)
    return SSVMR(dataclasses.asdict(m), dataclasses.asdict(cfg.optim))


def _vmnet(cfg: Config, dims: dict[str, int]) -> RetrievalModule:
    m = cfg.model.vmnet
    _check_dims(cfg, "vmnet", (("music", "music_dim", m.music_dim),
                               ("video", "video_dim", m.video_dim)), dims)
    return VMNet(dataclasses.asdict(m), dataclasses.asdict(cfg.loss), dataclasses.asdict(cfg.optim))


DATAMODULES: dict[str, Callable[[Config], StoreDataModule]] = {
    "himv200k": _himv200k,
    "youtube8m": _youtube8m,
    "mvd": _mvd,
    "mgsv_ec": _mgsv_ec,
}
MODELS: dict[str, Callable[[Config, dict[str, int]], RetrievalModule]] = {
    "vmnet": _vmnet,
    "iiclvm": _iiclvm,
    "ssvmr": _ssvmr,
}


def build_datamodule(cfg: Config) -> StoreDataModule:
    datamodule = DATAMODULES[cfg.data.dataset](cfg)
    datamodule.configure_cache(cfg.data.cache, cfg.data.cache_fraction)
    return datamodule


def build_model(cfg: Config, dims: dict[str, int]) -> RetrievalModule:
    return MODELS[cfg.model.name](cfg, dims)
