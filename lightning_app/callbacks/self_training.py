"""SSVMR self-training (reconstruction): score every training pair, clean the noisy ones.

Every `epochs_per_round` epochs (until `rounds` rounds are done) the current model embeds the
train split and, for each ORIGINAL pair (row i's video with row i's music, never the current
pseudo-labels, so an early mistake cannot compound), ranks the paired song among all distinct
training songs. A pair whose song ranks beyond `rank_threshold` is flagged and then dropped,
down-weighted (weight = `downweight`), or re-assigned to the model's top song when that song is
not the paired one and outscores it by more than `reassign_margin` (otherwise `fallback`:
downweight, drop or keep). The cleaned list is written by global rank 0 to
`<out_dir>/round_<r>.jsonl` (r = 1, 2, ...; atomic), every rank reads it back after a barrier
and hands it to the datamodule (`set_train_pairs`), so the next epoch's train loader (with
`reload_dataloaders_every_n_epochs=1`) trains on it. Reading the file back, rather than each
rank using its own copy, guarantees that all ranks train on identical pairs, and resuming
from a checkpoint re-applies the same file (checked against the store fingerprint).

Synthetic datasets carry a hidden truth file; when present, flag precision/recall against the
planted noisy pairs and the accuracy of re-assignments are logged (measuring only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn

from datamodules.pseudo_labels import read_pseudo_labels, write_pseudo_labels
from datamodules.train_pairs import TrainPairs
from lightning_app.callbacks.embedding import embed_train_split
from lightning_app.callbacks.truth import PairTruth, fraction
from lightning_app.retrieval import dedupe_by_key, single_positive_ranks, topk_search

ACTIONS = ("drop", "downweight", "reassign")
FALLBACKS = ("downweight", "drop", "keep")
OUTCOMES = ("kept", "downweighted", "dropped", "reassigned")
PREFIX = "self_training"


@dataclass
class Cleaning:
    """One round's decisions; arrays are per original pair (train row) unless noted."""

    ranks: np.ndarray  # int64 [N], rank of the paired song among distinct training songs
    flagged: np.ndarray  # bool [N]
    outcome: np.ndarray  # str [N], one of OUTCOMES
    music_rows: np.ndarray  # int64 [N], music row after cleaning (the row itself unless moved)
    weights: np.ndarray  # float32 [N]

    @property
    def pairs(self) -> TrainPairs:
        """The training list: every pair not dropped, in row order."""
        keep = np.flatnonzero(self.outcome != "dropped")
        return TrainPairs(keep, self.music_rows[keep], self.weights[keep])

    @property
    def status(self) -> list[str]:
        return [str(s) for s in self.outcome[self.outcome != "dropped"]]

    def counts(self) -> dict[str, int]:
        out = {"flagged": int(self.flagged.sum())}
        out.update({name: int((self.outcome == name).sum()) for name in OUTCOMES})
        return out


def clean_pairs(video: torch.Tensor, music: torch.Tensor, music_keys: torch.Tensor, *,
                rank_threshold: int, action: str, downweight: float, reassign_margin: float,
                fallback: str, chunk_size: int = 4096) -> Cleaning:
    """Decide every original pair (row i: video[i] with music[i]) from the embeddings.

    Songs are de-duplicated by `music_keys` (each represented by its first row), so a song
    used by several videos competes once. Ranks follow lightning_app.retrieval (ties count
    against the pair); the top song is `topk_search`'s (ties: lowest song key first).
    """
    n = video.shape[0]
    keys = music_keys.to(device=video.device, dtype=torch.long)
    _, first, inverse = dedupe_by_key(keys)
    gallery = music[first]
    ranks = single_positive_ranks(video, gallery, inverse, chunk_size=chunk_size).cpu().numpy()
    flagged = ranks > rank_threshold
    outcome = np.full(n, "kept", dtype=object)
    music_rows = np.arange(n, dtype=np.int64)
    weights = np.ones(n, dtype=np.float32)
    rest = flagged
    if action == "reassign":
        top_score, top = topk_search(video, gallery, 1, chunk_size=chunk_size)
        paired_score = (video.float() * gallery[inverse].float()).sum(dim=1)
        move = (top[:, 0] != inverse) & (top_score[:, 0] - paired_score > reassign_margin)
        move = flagged & move.cpu().numpy()
        music_rows[move] = first[top[:, 0]].cpu().numpy()[move]
        outcome[move] = "reassigned"
        rest = flagged & ~move
        action = fallback
    if action == "drop":
        outcome[rest] = "dropped"
    elif action == "downweight":
        outcome[rest] = "downweighted"
        weights[rest] = downweight
    return Cleaning(ranks.astype(np.int64), flagged, outcome, music_rows, weights)


def measure(result: Cleaning, video_ids: list[str], music_ids: list[str],
            truth: PairTruth) -> dict[str, float]:
    """Flag precision/recall against the planted noisy pairs; accuracy of re-assignments."""
    noisy = truth.noisy(video_ids)
    hits = int((result.flagged & noisy).sum())
    moved = np.flatnonzero(result.outcome == "reassigned")
    right = sum(truth.song(music_ids[result.music_rows[i]]) == truth.true_music(video_ids[i])
                for i in moved)
    return {
        "flag_precision": fraction(hits, int(result.flagged.sum())),
        "flag_recall": fraction(hits, int(noisy.sum())),
        "reassign_accuracy": fraction(right, len(moved)),
        "noisy": float(noisy.sum()),
    }


def datamodule_of(trainer: Any, who: str) -> Any:
    dm = getattr(trainer, "datamodule", None)
    if dm is None or not hasattr(dm, "set_train_pairs") or "train" not in dm.datasets:
        raise RuntimeError(f"{who} needs a StoreDataModule: trainer.fit(model, datamodule=dm)")
    return dm


def check_reloading(trainer: Any, who: str) -> None:
    every = getattr(trainer, "reload_dataloaders_every_n_epochs", 1)
    if every == 0:
        raise RuntimeError(
            f"{who} changes the training pairs between epochs: the trainer needs "
            "reload_dataloaders_every_n_epochs=1 (it is 0, so the changes would never be used)"
        )
    if every != 1:
        rank_zero_warn(f"{who}: reload_dataloaders_every_n_epochs={every}; new pairs take "
                       "effect only when the train loader is next reloaded")


class SelfTraining(Callback):
    def __init__(self, epochs_per_round: int = 1, rounds: int = 1, rank_threshold: int = 10,
                 action: str = "downweight", downweight: float = 0.1,
                 reassign_margin: float = 0.0, fallback: str = "downweight",
                 out_dir: str | Path = "pseudo_labels", batch_size: int = 1024,
                 chunk_size: int = 4096):
        for name, value, low in (("epochs_per_round", epochs_per_round, 1), ("rounds", rounds, 0),
                                 ("rank_threshold", rank_threshold, 1),
                                 ("batch_size", batch_size, 1), ("chunk_size", chunk_size, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"self_training.{name}={value!r} must be an integer >= {low}")
        if action not in ACTIONS:
            raise ValueError(f"self_training.action={action!r}: choose from {', '.join(ACTIONS)}")
        if fallback not in FALLBACKS:
            raise ValueError(
                f"self_training.fallback={fallback!r}: choose from {', '.join(FALLBACKS)}")
        if not math.isfinite(downweight) or downweight < 0:
            raise ValueError(f"self_training.downweight={downweight!r} must be finite and >= 0")
        if not math.isfinite(reassign_margin):
            raise ValueError(f"self_training.reassign_margin={reassign_margin!r} must be finite")
        self.epochs_per_round, self.rounds = int(epochs_per_round), int(rounds)
        self.rank_threshold, self.action = int(rank_threshold), action
        self.downweight, self.reassign_margin = float(downweight), float(reassign_margin)
        self.fallback = fallback
        self.out_dir = Path(out_dir)
        self.batch_size, self.chunk_size = int(batch_size), int(chunk_size)
        self.round = 0  # rounds completed
        self.current_file: str | None = None
        self.history: list[dict[str, Any]] = []
        self.last_result: Cleaning | None = None
        self._pending: str | None = None  # a restored file still to re-apply
        self._truth: dict[str, PairTruth | None] = {}

    def _settings(self) -> dict[str, Any]:
        return {"epochs_per_round": self.epochs_per_round, "rounds": self.rounds,
                "rank_threshold": self.rank_threshold, "action": self.action,
                "downweight": self.downweight, "reassign_margin": self.reassign_margin,
                "fallback": self.fallback}

    # ----- hooks ------------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module) -> None:
        dm = datamodule_of(trainer, "SelfTraining")
        check_reloading(trainer, "SelfTraining")
        self._reapply(dm)

    def on_train_start(self, trainer, pl_module) -> None:
        # Strategies that restore after setup load our state after on_fit_start.
        self._reapply(datamodule_of(trainer, "SelfTraining"))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.round >= self.rounds or (trainer.current_epoch + 1) % self.epochs_per_round:
            return
        metrics = self.run_round(trainer, pl_module)
        pl_module.log_dict({f"{PREFIX}/{k}": float(v) for k, v in metrics.items()},
                           sync_dist=False, rank_zero_only=False)

    # ----- one round --------------------------------------------------------------------------

    def run_round(self, trainer, pl_module) -> dict[str, float]:
        """Clean the original pairs with the current model and apply them; every rank calls it."""
        dm = datamodule_of(trainer, "SelfTraining")
        dataset = dm.datasets["train"]
        emb = embed_train_split(trainer, pl_module, dataset, self.batch_size)
        result = clean_pairs(emb["video"], emb["music"], dataset.music_keys,
                             rank_threshold=self.rank_threshold, action=self.action,
                             downweight=self.downweight, reassign_margin=self.reassign_margin,
                             fallback=self.fallback, chunk_size=self.chunk_size)
        r = self.round + 1
        if not len(result.pairs):
            raise RuntimeError(
                f"self-training round {r} would drop all {len(dataset)} training pairs "
                f"(rank_threshold={self.rank_threshold} with action/fallback 'drop')"
            )
        metrics: dict[str, float] = {"round": float(r), "pairs": float(len(result.pairs))}
        metrics.update({k: float(v) for k, v in result.counts().items()})
        truth = self._load_truth(dm.truth_path, dataset.ids, dataset.music_ids)
        if truth is not None:
            metrics.update(measure(result, dataset.ids, dataset.music_ids, truth))
        path = (self.out_dir / f"round_{r}.jsonl").resolve()
        fingerprint = dm.store_fingerprint
        if trainer.is_global_zero:
            write_pseudo_labels(path, result.pairs, dataset, fingerprint, r, status=result.status)
        # Rank 0's numbers describe the file every rank trains on.
        metrics = trainer.strategy.broadcast(metrics, src=0)
        trainer.strategy.barrier("self_training_round")
        dm.set_train_pairs(read_pseudo_labels(path, dataset, fingerprint))
        self.round, self.current_file, self.last_result = r, str(path), result
        self.history.append({**metrics, "epoch": int(trainer.current_epoch),
                             "global_step": int(trainer.global_step), "file": str(path)})
        return metrics

    def _load_truth(self, path: Path | None, ids: list[str],
                    music_ids: list[str]) -> PairTruth | None:
        key = str(path)
        if key not in self._truth:
            self._truth[key] = PairTruth.load(path, ids, music_ids)
        return self._truth[key]

    def _reapply(self, dm: Any) -> None:
        if self._pending is None:
            return
        path, self._pending = self._pending, None
        dm.set_train_pairs(read_pseudo_labels(path, dm.datasets["train"], dm.store_fingerprint))

    # ----- checkpointing ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "current_file": self.current_file,
                "history": [dict(h) for h in self.history], "settings": self._settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.round = int(state_dict["round"])
        self.current_file = state_dict.get("current_file")
        self.history = [dict(h) for h in state_dict.get("history", [])]
        saved = state_dict.get("settings", {})
        changed = {k: (v, saved[k]) for k, v in self._settings().items()
                   if k in saved and saved[k] != v}
        if changed:
            rank_zero_warn("SelfTraining: resuming with changed settings (now, in checkpoint): "
                           + ", ".join(f"{k}={a!r} ({b!r})" for k, (a, b) in changed.items()))
        self._pending = self.current_file
