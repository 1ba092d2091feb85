"""A trained checkpoint as a recommender: music for a new video, videos for a piece of music.

`vmr retrieve --ckpt CKPT --library DIR --video FILE` embeds every track under DIR once and
caches it next to the library (`DIR/.vmr-cache/`, see lightning_app/retrieve_cache.py):
per-file features keyed by the extractor and the file (size, mtime and a content
fingerprint), and the library's embeddings keyed by the checkpoint's SHA-256, the extractor
and the file list, so they are rebuilt exactly when the checkpoint or the files change;
damaged cache files are rebuilt. The query goes through the same extractor the training
data did (the record the checkpoint carries, see datamodules/extract/specs.py) and the same
frame sampling as evaluation, then the exact top-k search of lightning_app.search, or an
index from lightning_app/ann_index.py (`--index`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.atomic import atomic_file
from datamodules.errors import DataError
from datamodules.extract import default_device
from datamodules.extract.jobs import Task, list_media, run_jobs
from datamodules.extract.specs import AudioSpec, VideoSpec, specs_from_record
from datamodules.sampling import global_sparse_batch
from lightning_app.ann_index import IndexParams, cached_index, index_search
from lightning_app.checkpoint_file import read_checkpoint
from lightning_app.config import Config, config_from_dict
from lightning_app.errors import ConfigError
from lightning_app.recommend_files import locate
from lightning_app.registry import build_model
from lightning_app.retrieve_cache import drop_damaged, file_key, read_embeddings
from lightning_app.search import topk_search
from models.base import RetrievalModule

log = logging.getLogger("vmr")

CACHE_DIR = ".vmr-cache"
SIDES = ("video", "music")


@dataclasses.dataclass
class Match:
    rank: int
    score: float
    file: str


@dataclasses.dataclass
class Recommender:
    model: RetrievalModule
    cfg: Config
    specs: dict[str, VideoSpec | AudioSpec]  # side -> how its raw media become features
    ckpt_sha256: str
    device: torch.device
    _finishers: dict = dataclasses.field(default_factory=dict, repr=False)

    # ----- building --------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, ckpt: str | Path, extractor: dict | None = None,
                        weights: str | Path | None = None, pca: str | Path | None = None,
                        device: torch.device | None = None,
                        audio_weights: str | Path | None = None,
                        audio_pca: str | Path | None = None) -> Recommender:
        """Rebuild the model from `ckpt`; `extractor` (a record) replaces the checkpoint's.

        `weights` / `pca` (video) and `audio_weights` / `audio_pca` point at moved copies of
        the files the record names; their content must still match the recorded SHA-256
        (lightning_app.recommend_files).
        """
        path = Path(ckpt)
        saved = read_checkpoint(path)
        state, rec, digest = saved.state_dict, saved.record, saved.sha256
        cfg = config_from_dict(rec["config"], str(path))
        model_cfg = getattr(cfg.model, cfg.model.name)
        text = getattr(model_cfg, "text", None)
        if text is not None and text.enabled:
            raise ConfigError(f"{path}: the model reads video text (II-CLVTM); retrieval from "
                              "raw media supports video/music-only models")
        dims = {"video": model_cfg.video_dim, "music": model_cfg.music_dim}
        model = build_model(cfg, dims)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise DataError(f"{path}: weights do not fit a {cfg.model.name} model "
                            f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
        device = device or default_device()
        model.to(device).eval()
        record = extractor if extractor is not None else rec.get("extractor")
        if not record:
            raise ConfigError(
                f"{path}: the checkpoint has no extractor record (its training data was not "
                "made by `vmr build-dataset`, e.g. synthetic features): pass --extractor "
                "DATASET/extractor.json")
        video, audio = specs_from_record(record, f"{path} (extractor record)")
        if video is None or audio is None:
            raise ConfigError(f"{path}: the extractor record lacks the video or music side")
        specs = locate({"video": video, "music": audio}, {
            ("video", "weights"): weights, ("video", "pca"): pca,
            ("music", "weights"): audio_weights, ("music", "pca"): audio_pca})
        video, audio = specs["video"], specs["music"]
        for side, spec, want in (("video", video, dims["video"]), ("music", audio, dims["music"])):
            if spec.dim != want:
                raise ConfigError(f"{path}: the model takes {want}-d {side} features but the "
                                  f"extractor makes {spec.dim}-d ones")
        return cls(model, cfg, {"video": video, "music": audio}, digest, device)

    # ----- features and embeddings -----------------------------------------------------------

    def _finish(self, side: str) -> Any:
        """The side's main-process step (CNN, log-mel, or None), built once per recommender."""
        if side not in self._finishers:
            self._finishers[side] = self.specs[side].finish(self.device)
        return self._finishers[side]

    def extract(self, side: str, path: Path) -> np.ndarray:
        """Features of one media file, exactly as the training data was extracted."""
        finish = self._finish(side)
        prepared = self.specs[side].prepare()(Path(path))
        out = finish(prepared) if finish is not None else prepared
        return np.asarray(out, dtype=np.float32)

    @torch.inference_mode()
    def embed(self, side: str, features: list[np.ndarray], batch_size: int = 256) -> torch.Tensor:
        """[N, E] float32 embeddings of N feature arrays ([D] or [frames, D])."""
        encode = self.model.encode_video if side == "video" else self.model.encode_music
        # Sequence datasets evaluate on `frames` Global-Sparse segment centres; HIMV-200K
        # models see every frame (pooled by the model).
        frames = None if self.cfg.data.dataset == "himv200k" else self.cfg.data.frames
        chunks = []
        for start in range(0, len(features), batch_size):
            x, mask = feature_batch(features[start:start + batch_size], frames)
            batch = {side: x.to(self.device), f"{side}_mask": mask.to(self.device)}
            chunks.append(encode(batch).float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, 0)

    def library(self, side: str, folder: Path, workers: int = 0,
                progress: bool = True) -> tuple[list[str], torch.Tensor]:
        """(relative file names, [N, E] embeddings) of every `side` file under `folder`."""
        folder = Path(folder)
        # Recognised by content: a video library leaves out songs, a music one keeps videos.
        files = list_media(folder, need="video" if side == "video" else None)
        spec = self.specs[side]
        spec_key = _digest(dataclasses.asdict(spec))
        cache = folder / CACHE_DIR
        feature_dir = cache / f"features-{side}-{spec_key[:16]}"
        tasks = []
        for f in files:
            rel = str(f.relative_to(folder)) if f != folder else f.name
            tasks.append(Task(rel, f, feature_dir / f"{file_key(f, rel)}.npy"))
        drop_damaged(t.output for t in tasks)  # a damaged feature file is extracted again
        # Build the extractor (a CNN, for videos) only when some file is not cached yet.
        new = any(not t.output.exists() for t in tasks)
        summary = run_jobs(tasks, spec.prepare(), self._finish(side) if new else None,
                           workers=workers, what=f"library {side} features", progress=progress)
        if summary.done:
            log.info("%s", summary.line())
        for _, reason in summary.failed:
            log.warning("skipped library file: %s", reason)
        ready = [t for t in tasks if t.output.exists()]
        current = {t.output.name for t in tasks}
        for stale in feature_dir.glob("*.npy"):  # features of files since changed or removed
            if stale.name not in current:
                stale.unlink(missing_ok=True)
        if not ready:
            raise DataError(f"{folder}: no {side} file of the library could be extracted")
        key = _digest({"ckpt": self.ckpt_sha256, "spec": spec_key,
                       "files": [(t.name, t.output.name) for t in ready]})
        emb_path = cache / f"embeddings-{side}-{key[:16]}.npz"
        if emb_path.exists():
            cached = read_embeddings(emb_path, len(ready))
            if cached is not None:
                return cached
        emb = self.embed(side, [np.load(t.output) for t in ready])
        for old in cache.glob(f"embeddings-{side}-*.npz"):  # one current cache per side
            old.unlink(missing_ok=True)
        with atomic_file(emb_path, suffix=".npz") as tmp:
            np.savez(tmp, names=np.array([t.name for t in ready]), embeddings=emb.numpy())
        log.info("embedded %d library %s files into %s", len(ready), side, emb_path)
        return [t.name for t in ready], emb

    def recommend(self, query_side: str, query: Path, library: Path, k: int = 10,
                  workers: int = 0, progress: bool = True,
                  index: IndexParams | None = None) -> list[Match]:
        """The k best `library` files for `query`; `index` picks the search (default exact)."""
        target = "music" if query_side == "video" else "video"
        # The query first: a bad query file fails before any library work.
        q = self.embed(query_side, [self.extract(query_side, Path(query))])
        names, gallery = self.library(target, library, workers, progress)
        k = min(k, len(names))
        if index is None or index.kind == "exact":
            scores, idx = topk_search(q, gallery, k)
        else:  # built once per library state, cached with the embeddings
            built = cached_index(gallery.numpy(), index, Path(library) / CACHE_DIR, target)
            scores, idx = index_search(built, q, k)
        found = [(s, i) for s, i in zip(scores[0].tolist(), idx[0].tolist()) if i >= 0]
        return [Match(r + 1, float(s), names[i]) for r, (s, i) in enumerate(found)]


def feature_batch(arrays: list[np.ndarray],
                  frames: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature arrays -> ([B, T, D] float32, [B, T] bool mask), as the DataModules batch them.

    `frames=None`: every frame, zero-padded to the longest; otherwise `frames` Global-Sparse
    segment centres (the evaluation sampling of the sequence DataModules).
    """
    seqs = [np.atleast_2d(np.asarray(a, dtype=np.float32)) for a in arrays]
    lengths = np.array([len(s) for s in seqs])
    dim = seqs[0].shape[1]
    if frames is None:
        x = np.zeros((len(seqs), int(lengths.max()), dim), np.float32)
        mask = np.zeros(x.shape[:2], bool)
        for i, s in enumerate(seqs):
            x[i, :len(s)], mask[i, :len(s)] = s, True
    else:
        idx, mask = global_sparse_batch(lengths, frames, train=False)
        x = np.stack([s[i] for s, i in zip(seqs, idx)]) * mask[..., None]
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(mask)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def format_matches(matches: list[Match], query: Path, direction: str) -> str:
    width = max([len(m.file) for m in matches] + [4])
    lines = [f"{direction} for {query}", f"{'rank':>4}  {'score':>7}  {'file':<{width}}"]
    lines += [f"{m.rank:>4}  {m.score:>7.4f}  {m.file:<{width}}" for m in matches]
    return "\n".join(lines)


def matches_json(matches: list[Match], query: Path, direction: str, ckpt: Path) -> str:
    return json.dumps({"query": str(query), "direction": direction, "checkpoint": str(ckpt),
                       "results": [dataclasses.asdict(m) for m in matches]}, indent=2)
