"""The train/validation gap: how much better the model retrieves pairs it trained on.

Definition (ours): take the first G pairs of the train split and the first G pairs of the
validation split (G = `pairs`, cut to the smaller split so both galleries have the same
size), embed both with the current model in evaluation mode (dropout off, centred frame
sampling), and compute exact Recall@K within each set, both directions. Then

    gap/<dir>/R@K = R@K(train subset) - R@K(validation subset)

a positive gap is memorisation that does not transfer. Logged after every validation as
`gap/train/<dir>/R@K`, `gap/val/<dir>/R@K` and `gap/<dir>/R@K`, and once more on the tested
(best) checkpoint as `test/gap/...`, which lands in metrics.json. The train subset uses the
split's original pairs (self-training may re-pair what is trained on; the gap does not follow).
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.callbacks import Callback

from lightning_app.callbacks.embedding import embed_train_split
from lightning_app.retrieval import metrics_from_ranks, paired_retrieval_ranks

__all__ = ["LeadingRows", "TrainValGap", "gap_metrics"]


class LeadingRows:
    """The first `n` rows of a pair dataset, with its `train` switch passed through."""

    def __init__(self, dataset: Any, n: int):
        self.dataset, self.n = dataset, min(int(n), len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, rows: list[int]) -> dict[str, Any]:
        return self.dataset.__getitems__(rows)

    @property
    def train(self) -> Any:
        return getattr(self.dataset, "train", None)

    @train.setter
    def train(self, value: bool) -> None:
        self.dataset.train = value

    def keys(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.video_keys[: self.n], self.dataset.music_keys[: self.n]


def gap_metrics(train: dict[str, torch.Tensor], val: dict[str, torch.Tensor],
                ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    """{"train/v2m/R@10": ..., "val/v2m/R@10": ..., "v2m/R@10": train - val, ...}.

    `train` and `val` each hold "video", "music" [G, E] embeddings and "video_key",
    "music_key" [G] integer ids (rows are pairs).
    """
    out: dict[str, float] = {}
    per_set = {}
    for name, rows in (("train", train), ("val", val)):
        ranks = paired_retrieval_ranks(rows["video"], rows["music"], rows["video_key"],
                                       rows["music_key"])
        per_set[name] = {d: metrics_from_ranks(r, ks) for d, r in ranks.items()}
    for direction in ("v2m", "m2v"):
        for k in ks:
            t, v = (per_set[s][direction][f"R@{k}"] for s in ("train", "val"))
            out[f"train/{direction}/R@{k}"] = t
            out[f"val/{direction}/R@{k}"] = v
            out[f"{direction}/R@{k}"] = t - v
    return out


class TrainValGap(Callback):
    def __init__(self, pairs: int, batch_size: int, ks: tuple[int, ...] = (10,)):
        if pairs < 2:
            raise ValueError(f"eval.gap_pairs must be 0 (off) or >= 2, got {pairs}")
        self.pairs, self.batch_size, self.ks = int(pairs), int(batch_size), tuple(ks)

    def _embed(self, trainer: Any, pl_module: Any, dataset: Any, n: int) -> dict:
        view = LeadingRows(dataset, n)
        emb = embed_train_split(trainer, pl_module, view, self.batch_size)
        video_key, music_key = view.keys()
        return {**emb, "video_key": video_key, "music_key": music_key}

    def measure(self, trainer: Any, pl_module: Any) -> dict[str, float]:
        datasets = trainer.datamodule.datasets
        n = min(self.pairs, len(datasets["train"]), len(datasets["val"]))
        train = self._embed(trainer, pl_module, datasets["train"], n)
        val = self._embed(trainer, pl_module, datasets["val"], n)
        return gap_metrics(train, val, self.ks)

    def _log(self, trainer: Any, pl_module: Any, prefix: str) -> None:
        metrics = self.measure(trainer, pl_module)
        # Identical on every rank (the embeddings are gathered): no reduction needed.
        pl_module.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()},
                           sync_dist=False, rank_zero_only=False)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "gap")

    def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._log(trainer, pl_module, "test/gap")
