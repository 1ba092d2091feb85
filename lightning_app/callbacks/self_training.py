"""SSVMR self-training as teacher/student (reconstruction): score every pair, clean the noisy.

Every `epochs_per_round` epochs (until `rounds` rounds are done) a TEACHER embeds the train
split and decides every ORIGINAL pair (row i's video with row i's music, never the current
pseudo-labels, so an early mistake cannot compound): flag, then keep, drop, down-weight or
re-assign (lightning_app.callbacks.pair_cleaning; rules `margin` or `cycle`). Who is the
teacher and who learns from the cleaned list (`student`):

- `continue`: the model scores its own pairs and keeps training (the simplest reading);
- `reinit`: the model scores, then the student restarts from the run's initial weights with a
  fresh optimizer state (the LR schedule runs on) and learns from the cleaned labels, so the
  teacher's memorised noise is not carried over (classic self-training);
- `ema`: an exponential moving average of the model's weights (`ema_decay`, per training
  step; lightning_app.callbacks.teacher) scores the pairs; the model keeps training.

The cleaned list is written by global rank 0 to `<out_dir>/round_<r>.jsonl` (r = 1, 2, ...;
atomic), every rank reads it back after a barrier and hands it to the datamodule
(`set_train_pairs`), so the next epoch's train loader (with `reload_dataloaders_every_n_epochs=1`)
trains on it. Reading the file back, rather than each rank using its own copy, guarantees that
all ranks train on identical pairs, and resuming from a checkpoint re-applies the same file
(checked against the store fingerprint); the EMA teacher and the initial weights are part of
the callback's checkpoint state.

Synthetic datasets carry a hidden truth file; when present, flag precision/recall against the
planted noisy pairs and the accuracy of re-assignments are logged per round (measuring only).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn

from datamodules.pseudo_labels import read_pseudo_labels, write_pseudo_labels
from lightning_app.callbacks.embedding import embed_train_split
from lightning_app.callbacks.pair_cleaning import (
    ACTIONS,
    FALLBACKS,
    OUTCOMES,
    RULES,
    Cleaning,
    clean_pairs,
    measure,
)
from lightning_app.callbacks.teacher import EMATeacher, snapshot, swapped_in
from lightning_app.callbacks.truth import PairTruth

__all__ = ["ACTIONS", "FALLBACKS", "OUTCOMES", "RULES", "STUDENTS", "Cleaning", "SelfTraining",
           "check_reloading", "clean_pairs", "datamodule_of", "measure"]

STUDENTS = ("continue", "reinit", "ema")
PREFIX = "self_training"


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
                 chunk_size: int = 4096, rule: str = "margin", student: str = "continue",
                 ema_decay: float = 0.9):
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
        if rule not in RULES:
            raise ValueError(f"self_training.rule={rule!r}: choose from {', '.join(RULES)}")
        if student not in STUDENTS:
            raise ValueError(
                f"self_training.student={student!r}: choose from {', '.join(STUDENTS)}")
        self.epochs_per_round, self.rounds = int(epochs_per_round), int(rounds)
        self.rank_threshold, self.action = int(rank_threshold), action
        self.downweight, self.reassign_margin = float(downweight), float(reassign_margin)
        self.fallback, self.rule, self.student = fallback, rule, student
        self.teacher = EMATeacher(ema_decay) if student == "ema" else None
        # reinit: the weights every student restarts from (the run's initial weights).
        self.initial: dict[str, torch.Tensor] | None = None
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
                "fallback": self.fallback, "rule": self.rule, "student": self.student}

    # ----- hooks ------------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module) -> None:
        dm = datamodule_of(trainer, "SelfTraining")
        check_reloading(trainer, "SelfTraining")
        self._reapply(dm)
        if self.student == "reinit" and self.initial is None:  # not restored: a fresh run
            self.initial = snapshot(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.teacher is not None:
            self.teacher.update(pl_module)

    def on_train_start(self, trainer, pl_module) -> None:
        # Strategies that restore after setup load our state after on_fit_start.
        self._reapply(datamodule_of(trainer, "SelfTraining"))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.round >= self.rounds or (trainer.current_epoch + 1) % self.epochs_per_round:
            return
        metrics = self.run_round(trainer, pl_module)
        if self.student == "reinit":
            self.restart_student(trainer, pl_module)
        pl_module.log_dict({f"{PREFIX}/{k}": float(v) for k, v in metrics.items()},
                           sync_dist=False, rank_zero_only=False)

    # ----- one round --------------------------------------------------------------------------

    def run_round(self, trainer, pl_module) -> dict[str, float]:
        """Clean the original pairs with the current model and apply them; every rank calls it."""
        dm = datamodule_of(trainer, "SelfTraining")
        dataset = dm.datasets["train"]
        teacher = None if self.teacher is None else self.teacher.state
        if teacher is None:  # continue / reinit (or an EMA that has seen no step yet)
            emb = embed_train_split(trainer, pl_module, dataset, self.batch_size)
        else:
            with swapped_in(pl_module, teacher):
                emb = embed_train_split(trainer, pl_module, dataset, self.batch_size)
        result = clean_pairs(emb["video"], emb["music"], dataset.music_keys,
                             rank_threshold=self.rank_threshold, action=self.action,
                             downweight=self.downweight, reassign_margin=self.reassign_margin,
                             fallback=self.fallback, rule=self.rule,
                             video_keys=dataset.video_keys, chunk_size=self.chunk_size)
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

    def restart_student(self, trainer, pl_module) -> None:
        """Back to the initial weights, with every optimizer's state (moments, steps) cleared."""
        if self.initial is None:
            raise RuntimeError("SelfTraining(student='reinit'): no initial weights recorded")
        pl_module.load_state_dict(self.initial)
        for optimizer in getattr(trainer, "optimizers", []):
            optimizer.state.clear()

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
                "history": [dict(h) for h in self.history], "settings": self._settings(),
                "teacher": None if self.teacher is None else self.teacher.state_dict(),
                "initial": None if self.initial is None else dict(self.initial)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.round = int(state_dict["round"])
        self.current_file = state_dict.get("current_file")
        self.history = [dict(h) for h in state_dict.get("history", [])]
        if self.teacher is not None and state_dict.get("teacher") is not None:
            self.teacher.load_state_dict(state_dict["teacher"])
        if self.student == "reinit" and state_dict.get("initial") is not None:
            self.initial = {k: v.clone() for k, v in state_dict["initial"].items()}
        saved = state_dict.get("settings", {})
        changed = {k: (v, saved[k]) for k, v in self._settings().items()
                   if k in saved and saved[k] != v}
        if changed:
            rank_zero_warn("SelfTraining: resuming with changed settings (now, in checkpoint): "
                           + ", ".join(f"{k}={a!r} ({b!r})" for k, (a, b) in changed.items()))
        self._pending = self.current_file
