"""SSVMR back retrieval (reconstruction): cycle-consistent pairs join training.

By analogy with back translation: after epoch `start_epoch` and every `every_n_epochs` epochs
after it, the current model embeds the candidates and keeps the cycle-consistent pairs at or
above `similarity_floor` (lightning_app.callbacks.cycle_pairs), at most `max_new`, best first.
They become the datamodule's extra pairs with loss weight `weight` (`set_extra_pairs`),
replacing the previous extras: each run re-decides the whole set with the newer model.

`source=unpaired` (default): the dataset's unpaired videos and songs (lists beside the splits,
e.g. MVD's splits/unpaired_videos.csv and unpaired_music.csv) are the monolingual data: each
unpaired video retrieves its top song among the unpaired AND training songs, each unpaired
song its top video among all videos, and the pair joins when the partner retrieves it back.
A dataset without such lists is an error naming the fix (`source=split`). `source=split`:
every distinct training video retrieves its top training song, and a new (video, song)
combination of the split joins when the cycle closes.

Pairs are decided on global rank 0 and broadcast, so all ranks train on the same list; they
are kept by id in the checkpoint and re-applied on resume. Synthetic datasets' hidden truth
measures the added pairs (same style; for the pool, the planted hidden pairs found).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback

from datamodules.errors import DataError
from datamodules.train_pairs import TrainPairs
from lightning_app.ann_index import IndexParams
from lightning_app.callbacks.cycle_pairs import (
    BackRetrieved,
    PoolPairs,
    back_retrieve,
    pool_back_retrieve,
)
from lightning_app.callbacks.embedding import embed_loader, embed_train_split
from lightning_app.callbacks.self_training import check_reloading, datamodule_of
from lightning_app.callbacks.truth import PairTruth, fraction
from lightning_app.retrieval import dedupe_by_key

__all__ = ["SOURCES", "BackRetrieval", "BackRetrieved", "PoolPairs", "back_retrieve",
           "check_source", "pool_back_retrieve"]

PREFIX = "back_retrieval"
SOURCES = ("unpaired", "split")


def check_source(source: str, datamodule: Any) -> None:
    """DataError unless `source` can run on this (prepared) datamodule."""
    if source not in SOURCES:
        raise DataError(f"back_retrieval.source={source!r}: choose from {', '.join(SOURCES)}")
    if source == "unpaired" and not any(datamodule.unpaired_ids(side)
                                        for side in ("video", "music")):
        raise DataError(
            f"back_retrieval.source=unpaired: the dataset at {datamodule.root} has no "
            "unpaired videos or songs (MVD layout: splits/unpaired_videos.csv, "
            "splits/unpaired_music.csv); set back_retrieval.source=split to mine the "
            "training split instead")


class BackRetrieval(Callback):
    def __init__(self, every_n_epochs: int = 1, start_epoch: int = 0, rank_tolerance: int = 1,
                 similarity_floor: float = 0.0, weight: float = 1.0,
                 max_new: int | None = None, batch_size: int = 1024, chunk_size: int = 4096,
                 source: str = "split", index: IndexParams | None = None):
        for name, value, low in (("every_n_epochs", every_n_epochs, 1),
                                 ("start_epoch", start_epoch, 0),
                                 ("rank_tolerance", rank_tolerance, 1),
                                 ("batch_size", batch_size, 1), ("chunk_size", chunk_size, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"back_retrieval.{name}={value!r} must be an integer >= {low}")
        if max_new is not None and (int(max_new) != max_new or max_new < 0):
            raise ValueError(f"back_retrieval.max_new={max_new!r} must be null or an integer >= 0")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"back_retrieval.weight={weight!r} must be finite and >= 0")
        if not math.isfinite(similarity_floor):
            raise ValueError(f"back_retrieval.similarity_floor={similarity_floor!r} must be finite")
        if source not in SOURCES:
            raise ValueError(f"back_retrieval.source={source!r}: choose from {', '.join(SOURCES)}")
        self.source = source
        # The candidate search: exact, or a FAISS index (back_retrieval.index).
        self.index = index or IndexParams("exact")
        self.every_n_epochs, self.start_epoch = int(every_n_epochs), int(start_epoch)
        self.rank_tolerance, self.similarity_floor = int(rank_tolerance), float(similarity_floor)
        self.weight = float(weight)
        self.max_new = None if max_new is None else int(max_new)
        self.batch_size, self.chunk_size = int(batch_size), int(chunk_size)
        self.history: list[dict[str, Any]] = []
        self.last_result: BackRetrieved | None = None
        # The extra pairs by id, so a resumed run re-applies them to the same store.
        self.extra: dict[str, Any] | None = None
        self._pending = False
        self._truth: dict[str, PairTruth | None] = {}

    def due(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and (epoch - self.start_epoch) % self.every_n_epochs == 0

    # ----- hooks ------------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module) -> None:
        dm = datamodule_of(trainer, "BackRetrieval")
        check_reloading(trainer, "BackRetrieval")
        check_source(self.source, dm)
        self._reapply(dm)

    def on_train_start(self, trainer, pl_module) -> None:
        self._reapply(datamodule_of(trainer, "BackRetrieval"))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.due(trainer.current_epoch):
            return
        metrics = self.run(trainer, pl_module)
        pl_module.log_dict({f"{PREFIX}/{k}": float(v) for k, v in metrics.items()},
                           sync_dist=False, rank_zero_only=False)

    # ----- one pass ---------------------------------------------------------------------------

    def run(self, trainer, pl_module) -> dict[str, float]:
        """Find cycle-consistent pairs with the current model and set them as extra pairs."""
        if self.source == "unpaired":
            return self.run_unpaired(trainer, pl_module)
        dm = datamodule_of(trainer, "BackRetrieval")
        dataset = dm.datasets["train"]
        emb = embed_train_split(trainer, pl_module, dataset, self.batch_size)
        dm.set_extra_pairs(None)  # our previous extras are re-decided, not counted as existing
        base = dm.train_pairs
        result = back_retrieve(emb["video"], emb["music"], dataset.video_keys, dataset.music_keys,
                               (base.video_rows, base.music_rows),
                               rank_tolerance=self.rank_tolerance,
                               similarity_floor=self.similarity_floor, max_new=self.max_new,
                               chunk_size=self.chunk_size, index=self.index)
        result = trainer.strategy.broadcast(result, src=0)  # rank 0 decides for everyone
        metrics = {"cycle_consistent": float(result.cycle_consistent),
                   "candidates": float(result.candidates),
                   "added": float(len(result.video_rows))}
        key = str(dm.truth_path)
        if key not in self._truth:
            self._truth[key] = PairTruth.load(dm.truth_path, dataset.ids, dataset.music_ids)
        truth = self._truth[key]
        if truth is not None:
            same = sum(truth.style(dataset.ids[v])
                       == truth.style(truth.song(dataset.music_ids[m]))
                       for v, m in zip(result.video_rows, result.music_rows))
            metrics["same_style"] = fraction(same, len(result.video_rows))
        n = len(result.video_rows)
        weights = np.full(n, self.weight, dtype=np.float32)
        dm.set_extra_pairs(TrainPairs(result.video_rows, result.music_rows, weights) if n else None)
        self.extra = {"fingerprint": dm.store_fingerprint, "source": "split",
                      "video_ids": [dataset.ids[v] for v in result.video_rows],
                      "music_ids": [dataset.music_ids[m] for m in result.music_rows],
                      "weight": self.weight}
        return self._record(trainer, result, metrics)

    def run_unpaired(self, trainer, pl_module) -> dict[str, float]:
        """Partners for the unpaired pool among pool and training items (module docstring)."""
        dm = datamodule_of(trainer, "BackRetrieval")
        dataset = dm.datasets["train"]
        emb = embed_train_split(trainer, pl_module, dataset, self.batch_size)
        device = emb["video"].device
        _, v_first, _ = dedupe_by_key(dataset.video_keys.to(device))
        _, m_first, _ = dedupe_by_key(dataset.music_keys.to(device))
        pool_ids = {side: dm.unpaired_ids(side) for side in ("video", "music")}
        pool = {side: embed_loader(trainer, pl_module, dm.unpaired_dataloader(side,
                                                                           self.batch_size),
                                   side, emb[side].shape[1], device)
                for side in ("video", "music")}
        videos = torch.cat([pool["video"], emb["video"][v_first]])
        songs = torch.cat([pool["music"], emb["music"][m_first]])
        result = pool_back_retrieve(videos, songs, len(pool_ids["video"]),
                                    len(pool_ids["music"]), rank_tolerance=self.rank_tolerance,
                                    similarity_floor=self.similarity_floor,
                                    max_new=self.max_new, chunk_size=self.chunk_size,
                                    index=self.index)
        result = trainer.strategy.broadcast(result, src=0)  # rank 0 decides for everyone
        n_v, n_m = len(pool_ids["video"]), len(pool_ids["music"])
        v_first, m_first = v_first.cpu().numpy(), m_first.cpu().numpy()
        video_ids = [pool_ids["video"][i] if i < n_v else dataset.ids[v_first[i - n_v]]
                     for i in result.video_index.tolist()]
        music_ids = [pool_ids["music"][j] if j < n_m else dataset.music_ids[m_first[j - n_m]]
                     for j in result.music_index.tolist()]
        metrics = {"cycle_consistent": float(result.cycle_consistent),
                   "candidates": float(result.candidates), "added": float(len(video_ids)),
                   "pool_videos_paired": float((result.video_index < n_v).sum()),
                   "pool_songs_paired": float((result.music_index < n_m).sum())}
        metrics.update(pool_truth_metrics(dm.root, video_ids, music_ids))
        n = len(video_ids)
        dm.set_extra_pairs(dm.pairs_from_ids(video_ids, music_ids, np.full(n, self.weight))
                           if n else None)
        self.extra = {"fingerprint": dm.store_fingerprint, "source": "unpaired",
                      "video_ids": video_ids, "music_ids": music_ids, "weight": self.weight}
        return self._record(trainer, result, metrics)

    def _record(self, trainer, result: Any, metrics: dict[str, float]) -> dict[str, float]:
        self.last_result = result
        self.history.append({**metrics, "epoch": int(trainer.current_epoch),
                             "global_step": int(trainer.global_step)})
        return metrics

    def _reapply(self, dm: Any) -> None:
        if not self._pending:
            return
        self._pending = False
        extra = self.extra
        if extra is None or not extra["video_ids"]:
            dm.set_extra_pairs(None)
            return
        if extra["fingerprint"] != dm.store_fingerprint:
            raise DataError(
                f"back retrieval: the checkpoint's extra pairs were made for store "
                f"{extra['fingerprint']}, not this store {dm.store_fingerprint}"
            )
        n = len(extra["video_ids"])
        if extra.get("source", "split") == "unpaired":
            dm.set_extra_pairs(dm.pairs_from_ids(extra["video_ids"], extra["music_ids"],
                                                 np.full(n, extra["weight"])))
            return
        dataset = dm.datasets["train"]
        videos, musics = _first_rows(dataset.ids), _first_rows(dataset.music_ids)
        missing = [i for i in extra["video_ids"] if i not in videos]
        missing += [i for i in extra["music_ids"] if i not in musics]
        if missing:
            raise DataError(f"back retrieval: checkpoint names id {missing[0]!r}, which is not "
                            "in the train split")
        dm.set_extra_pairs(TrainPairs(np.array([videos[i] for i in extra["video_ids"]]),
                                      np.array([musics[i] for i in extra["music_ids"]]),
                                      np.full(n, extra["weight"], dtype=np.float32)))

    # ----- checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history],
                "extra": None if self.extra is None else dict(self.extra)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.extra = state_dict.get("extra")
        self._pending = True


def pool_truth_metrics(root: Any, video_ids: list[str], music_ids: list[str]) -> dict[str, float]:
    """Against a synthetic pool's planted hidden pairs (measuring only): the fraction of added
    pairs that are hidden pairs, and the fraction of hidden pairs added. {} without truth."""
    from datamodules.synthetic.truth import PoolTruth

    truth = PoolTruth.load(root)
    if truth is None:
        return {}
    hidden = sum(1 for v in truth.ids("video") if truth.partner(v))
    hits = sum(truth.hidden_pair(v, m) for v, m in zip(video_ids, music_ids))
    return {"hidden_pair_precision": fraction(hits, len(video_ids)),
            "hidden_pair_recall": fraction(hits, hidden)}


def _first_rows(ids: list[str]) -> dict[str, int]:
    rows: dict[str, int] = {}
    for i, key in enumerate(ids):
        rows.setdefault(key, i)
    return rows
