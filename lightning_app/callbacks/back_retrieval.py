"""SSVMR back retrieval (reconstruction): cycle-consistent video -> music -> video pairs.

By analogy with back translation: after epoch `start_epoch` and every `every_n_epochs` epochs
after it, the current model embeds the train split; every distinct training video retrieves
its top song among the distinct training songs, and that song retrieves its top
`rank_tolerance` videos. When the video is among them (the cycle closes), the similarity is
at least `similarity_floor`, and (video id, music id) is not already a training pair, the pair
becomes a candidate. The `max_new` best-scoring candidates become the datamodule's extra
pairs (`set_extra_pairs`, weight `weight`), replacing the previous extras: each run re-decides
the whole set with the newer model. Pairs are decided on global rank 0 and broadcast, so all
ranks train on the same list. The callback owns the datamodule's extra pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback

from datamodules.errors import DataError
from datamodules.train_pairs import TrainPairs
from lightning_app.callbacks.embedding import embed_train_split
from lightning_app.callbacks.self_training import check_reloading, datamodule_of
from lightning_app.callbacks.truth import PairTruth, fraction
from lightning_app.retrieval import dedupe_by_key, topk_search

PREFIX = "back_retrieval"


@dataclass
class BackRetrieved:
    video_rows: np.ndarray  # int64 [A], the added pairs, best score first
    music_rows: np.ndarray  # int64 [A]
    scores: np.ndarray  # float32 [A]
    cycle_consistent: int  # videos whose cycle closes (before floor, existing pairs and cap)
    candidates: int  # ... that also pass the floor and are new


def back_retrieve(video: torch.Tensor, music: torch.Tensor, video_keys: torch.Tensor,
                  music_keys: torch.Tensor, existing: tuple[np.ndarray, np.ndarray], *,
                  rank_tolerance: int, similarity_floor: float, max_new: int | None,
                  chunk_size: int = 4096) -> BackRetrieved:
    """Cycle-consistent new pairs from train-row embeddings (video[n], music[n] = row n).

    Videos and songs are de-duplicated by key (first row represents them); `existing` is the
    current pairing as (video rows, music rows). Ties in retrieval go to the lowest key, and
    candidates are ranked by score, then video key.
    """
    device = video.device
    _, v_first, _ = dedupe_by_key(video_keys.to(device=device, dtype=torch.long))
    m_unique, m_first, _ = dedupe_by_key(music_keys.to(device=device, dtype=torch.long))
    videos, songs = video[v_first], music[m_first]
    score, song = topk_search(videos, songs, 1, chunk_size=chunk_size)
    score, song = score[:, 0], song[:, 0]
    asked, slot = torch.unique(song, sorted=True, return_inverse=True)
    k = min(rank_tolerance, videos.shape[0])
    _, back = topk_search(songs[asked], videos, k, chunk_size=chunk_size)  # [S, k] video idx
    mine = torch.arange(videos.shape[0], device=device)
    cycle = (back[slot] == mine[:, None]).any(dim=1)
    # Pairs by (video key, music key): keys are the dataset's id codes, so this compares ids.
    n_music = int(m_unique.numel())
    ex_v, ex_m = (torch.as_tensor(x, dtype=torch.long) for x in existing)
    have = video_keys.cpu()[ex_v] * n_music + music_keys.cpu()[ex_m]
    vkey, mkey = video_keys.to(device)[v_first], m_unique[song]
    new = ~torch.isin((vkey * n_music + mkey).cpu(), have).to(device)
    ok = cycle & (score >= similarity_floor) & new
    chosen = torch.nonzero(ok).reshape(-1)
    order = torch.sort(score[chosen], descending=True, stable=True).indices
    chosen = chosen[order]
    if max_new is not None:
        chosen = chosen[:max_new]
    return BackRetrieved(
        video_rows=v_first[chosen].cpu().numpy().astype(np.int64),
        music_rows=m_first[song[chosen]].cpu().numpy().astype(np.int64),
        scores=score[chosen].cpu().numpy().astype(np.float32),
        cycle_consistent=int(cycle.sum()),
        candidates=int(ok.sum()),
    )


class BackRetrieval(Callback):
    def __init__(self, every_n_epochs: int = 1, start_epoch: int = 0, rank_tolerance: int = 1,
                 similarity_floor: float = 0.0, weight: float = 1.0,
                 max_new: int | None = None, batch_size: int = 1024, chunk_size: int = 4096):
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
        dm = datamodule_of(trainer, "BackRetrieval")
        dataset = dm.datasets["train"]
        emb = embed_train_split(trainer, pl_module, dataset, self.batch_size)
        dm.set_extra_pairs(None)  # our previous extras are re-decided, not counted as existing
        base = dm.train_pairs
        result = back_retrieve(emb["video"], emb["music"], dataset.video_keys, dataset.music_keys,
                               (base.video_rows, base.music_rows),
                               rank_tolerance=self.rank_tolerance,
                               similarity_floor=self.similarity_floor, max_new=self.max_new,
                               chunk_size=self.chunk_size)
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
        self.extra = {"fingerprint": dm.store_fingerprint,
                      "video_ids": [dataset.ids[v] for v in result.video_rows],
                      "music_ids": [dataset.music_ids[m] for m in result.music_rows],
                      "weight": self.weight}
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
        dataset = dm.datasets["train"]
        videos, musics = _first_rows(dataset.ids), _first_rows(dataset.music_ids)
        missing = [i for i in extra["video_ids"] if i not in videos]
        missing += [i for i in extra["music_ids"] if i not in musics]
        if missing:
            raise DataError(f"back retrieval: checkpoint names id {missing[0]!r}, which is not "
                            "in the train split")
        n = len(extra["video_ids"])
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


def _first_rows(ids: list[str]) -> dict[str, int]:
    rows: dict[str, int] = {}
    for i, key in enumerate(ids):
        rows.setdefault(key, i)
    return rows
