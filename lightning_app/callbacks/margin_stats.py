"""Margins and active hinges per kind of negative, measured against the synthetic truth.

For VM-NET's ranking terms (a fixed margin, CMGSD's adaptive margins or the matched control),
every `every_n_steps` training batches the model keeps the batch's distances and margin
matrices (`record_margins`); this callback splits each term's selected (anchor, negative)
entries by what the negative is to the anchor's pair, read from the hidden truth file:

* ``equivalent``: the same multi-positive group (a shared song or a near-duplicate content;
  the truth's `group` column, else the true song): a negative CMGSD should NOT push away;
* ``same_style``: another song of the anchor's planted style (related);
* ``other_style``: everything else,

and logs, as epoch means, `margin/<term>/<kind>/mean` (mean margin) and
`margin/<term>/<kind>/active` (fraction of hinges with a positive value), over both ranking
directions; <term> is `fixed`, or CMGSD's `video`, `music`, `static`. The truth is read here only,
for measuring; nothing flows back into training.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import Callback

from losses.margin_stats import hinge_category_stats

__all__ = ["KINDS", "MarginStats", "negative_kinds", "read_item_truth"]

KINDS = ("equivalent", "same_style", "other_style")


def read_item_truth(path: str | Path) -> dict[str, tuple[int, str]]:
    """{pair id: (style, equivalence key)} from a truth.tsv.

    The key is the multi-positive `group` (pairs joined by a shared song or a near copy)
    when the truth has that column, else the pair's true song.
    """
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out = {}
    for r in rows:
        group = r.get("group") or ""
        key = f"group:{group}" if group else f"song:{r['true_music_id']}"
        out[r["id"]] = (int(r["style"]), key)
    return out


def negative_kinds(style: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """[N, N] kind index into KINDS of item k as a negative for anchor i (diagonal: 0)."""
    same_key = key[:, None] == key[None, :]
    same_style = style[:, None] == style[None, :]
    kinds = torch.full(same_key.shape, 2, dtype=torch.long, device=style.device)
    kinds[same_style] = 1
    kinds[same_key] = 0
    return kinds


class MarginStats(Callback):
    def __init__(self, every_n_steps: int = 10):
        self.every_n_steps = max(1, int(every_n_steps))
        self.truth: dict[str, tuple[int, str]] | None = None
        self._keys: dict[str, int] = {}

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        path = getattr(trainer.datamodule, "truth_path", None)
        if path is None or not hasattr(pl_module, "record_margins"):
            return
        self.truth = read_item_truth(path)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        if self.truth is not None:
            pl_module.record_margins = batch_idx % self.every_n_steps == 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        record = getattr(pl_module, "margin_record", None)
        pl_module.margin_record = None
        if self.truth is None or record is None:
            return
        ids = batch.get("video_id")
        if ids is None:  # batches held in memory carry no strings: look the ids up
            ids = trainer.datamodule.train_video_ids(batch["index"])
        if any(i not in self.truth for i in ids):
            return  # e.g. back-retrieval pairs without a truth row
        style = torch.tensor([self.truth[i][0] for i in ids])
        key = torch.tensor([self._keys.setdefault(self.truth[i][1], len(self._keys))
                            for i in ids])
        dist = record["dist_mv"]
        if dist.shape[0] != len(ids):
            return  # the record is of a micro-batch, not of this batch
        kinds = negative_kinds(style, key).to(dist.device)
        metrics = {}
        for term, margins in record["margins"].items():
            merged = _merge([hinge_category_stats(d, margins, record["num_negatives"], kinds,
                                                  len(KINDS)) for d in (dist, dist.T)])
            for j, kind in enumerate(KINDS):
                if merged["count"][j] > 0:
                    metrics[f"margin/{term}/{kind}/mean"] = float(merged["mean_margin"][j])
                    metrics[f"margin/{term}/{kind}/active"] = float(merged["active"][j])
        if metrics:
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(ids))


def _merge(stats: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Count-weighted means over several directions' per-category statistics."""
    count = sum(s["count"] for s in stats)
    out = {"count": count}
    for name in ("mean_margin", "active"):
        total = sum(torch.nan_to_num(s[name]) * s["count"] for s in stats)
        out[name] = total / count.clamp_min(1)
    return out
