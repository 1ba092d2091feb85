"""Compatible and multi-positive recall for `RecallAtK(extras=[...])`.

With a truth file (`<data.root>/truth.tsv`, synthetic data) two label sets are measured:

- `compat`: a hit is any gallery item of the query's planted style;
- `multi`: a hit is any item in the query's group: pairs sharing a song or holding a near copy
  of each other's content (truth column `group`; files written before it existed fall back
  to the song, `true_music_id`).

A video is labelled by its own truth row; a music item by the row of the song it holds (the
`written_music_id` of a pair it is paired with: HIMV-200K and YouTube-8M name music after the
pair, MVD after the song; lightning_app.callbacks.truth explains the convention).

Without truth, `multi` is measured from the ids alone when some music id serves several
videos of the split (MVD rows naming one song for several videos): rows that share a music id
form one group (truth_metrics.shared_key_labels). Exact recall already counts every video of
a song as a hit for that song, so there `multi` equals the exact numbers unless ids chain.

Metric names: `<stage>/<v2m|m2v>/<compat|multi>/<R@k|MdR|MnR>`, k in eval.ks.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_app.retrieval import metrics_from_ranks
from lightning_app.truth_metrics import paired_label_ranks, shared_key_labels

log = logging.getLogger("vmr")


def read_truth_rows(path: str | Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {r["id"]: r for r in csv.DictReader(f, delimiter="\t")}


class TruthRecall:
    """Callable `(stage, rows) -> metrics` over the rows RecallAtK gathered for a split.

    `datamodule.datasets[stage]` maps a row's dataset `index` to its video and music ids.
    """

    def __init__(self, datamodule: Any, ks: Sequence[int] = (1, 5, 10), chunk_size: int = 4096,
                 truth_path: str | Path | None = None):
        self.datamodule = datamodule
        self.ks = tuple(ks)
        self.chunk_size = chunk_size
        self.truth_path = Path(truth_path) if truth_path else None
        self._truth: dict[str, dict[str, str]] | None = None
        self._warned = False

    @property
    def truth(self) -> dict[str, dict[str, str]] | None:
        if self._truth is None and self.truth_path is not None and self.truth_path.is_file():
            self._truth = read_truth_rows(self.truth_path)
        return self._truth

    def __call__(self, stage: str, rows: dict[str, torch.Tensor]) -> dict[str, float]:
        # Validation and test pairs carry no label noise, so a row's music always shares its
        # video's labels and every query has a positive; training rows may not.
        dataset = getattr(self.datamodule, "datasets", {}).get(stage)
        if dataset is None or stage not in ("val", "test"):
            return {}
        index = rows["index"].cpu().tolist()
        video_ids = [dataset.ids[i] for i in index]
        labels = self.truth_labels(video_ids) if self.truth is not None else None
        if labels is None:
            labels = self.id_labels(rows)
        out: dict[str, float] = {}
        for name, (v_lab, m_lab) in labels.items():
            device = rows["video"].device
            ranks = paired_label_ranks(rows["video"], rows["music"], rows["video_key"],
                                       rows["music_key"], v_lab.to(device), m_lab.to(device),
                                       self.chunk_size)
            for direction, r in ranks.items():
                out.update({f"{stage}/{direction}/{name}/{k}": v
                            for k, v in metrics_from_ranks(r, self.ks).items()})
        return out

    def truth_labels(self, video_ids: list[str]
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        """{"compat": (video, music) labels per row, "multi": ...}; None if ids lack truth."""
        truth = self.truth or {}
        lacking = [v for v in video_ids if v not in truth
                   or truth[v]["written_music_id"] not in truth]
        if lacking:
            if not self._warned:
                log.warning("%s: no truth for %d evaluated ids (e.g. %s); compatible and "
                            "multi-positive recall not measured", self.truth_path, len(lacking),
                            lacking[0])
                self._warned = True
            return None
        songs = [truth[v]["written_music_id"] for v in video_ids]
        group = "group" if "group" in truth[video_ids[0]] else "true_music_id"
        out = {}
        for name, column in (("compat", "style"), ("multi", group)):
            codes: dict[str, int] = {}
            v_lab = [codes.setdefault(truth[v][column], len(codes)) for v in video_ids]
            m_lab = [codes.setdefault(truth[s][column], len(codes)) for s in songs]
            out[name] = (torch.tensor(v_lab), torch.tensor(m_lab))
        return out

    @staticmethod
    def id_labels(rows: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{"multi": labels} when some music id serves several rows, else {} (nothing new)."""
        music = rows["music_key"]
        if torch.unique(music).numel() == music.numel():
            return {}
        labels = shared_key_labels(rows["video_key"], music)
        return {"multi": (labels, labels)}
