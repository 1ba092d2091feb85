"""The planted truth of a synthetic dataset, read only to MEASURE self-training and back retrieval.

`truth.tsv` has one row per pair id: `style`, `true_music_id`, `written_music_id` (the song
whose music was written for this pair) and `noisy`. Datasets name music differently: HIMV-200K
and YouTube-8M stores name each pair's music after the pair (`music_id == id`), MVD after the
song itself (`music_id == written_music_id`). Both are covered by reading the song a store
music id really holds off the training rows: the row (video v, music m) says that m holds
`written_music_id(v)`. A re-assigned pair (video v, music m) is then correct when that song is
`true_music_id(v)`. Nothing here is ever used to choose pairs.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("vmr")


class PairTruth:
    def __init__(self, rows: dict[str, dict[str, str]], ids: Sequence[str],
                 music_ids: Sequence[str]):
        self.rows = rows
        # The song each store music id holds, read off the (video, music) rows of the split.
        self.songs = {m: rows[v]["written_music_id"] for v, m in zip(ids, music_ids)}

    @classmethod
    def load(cls, path: str | Path | None, ids: Sequence[str],
             music_ids: Sequence[str]) -> PairTruth | None:
        """The truth for these (train) rows, or None without a truth file or when ids lack rows."""
        if path is None or not Path(path).is_file():
            return None
        with open(path, newline="", encoding="utf-8") as f:
            rows = {r["id"]: r for r in csv.DictReader(f, delimiter="\t")}
        missing = [i for i in ids if i not in rows]
        if missing:
            log.warning("%s: no truth for %d train ids (e.g. %s); not measuring against it",
                        path, len(missing), missing[0])
            return None
        return cls(rows, ids, music_ids)

    def noisy(self, ids: Sequence[str]) -> np.ndarray:
        return np.array([self.rows[i]["noisy"].strip().lower() == "true" for i in ids], dtype=bool)

    def song(self, music_id: str) -> str:
        """The song (its owning pair's id) that a store music id really holds."""
        return self.songs.get(music_id, music_id)

    def true_music(self, video_id: str) -> str:
        return self.rows[video_id]["true_music_id"]

    def style(self, pair_id: str) -> int | None:
        row = self.rows.get(pair_id)
        return int(row["style"]) if row is not None else None


def fraction(hits: int, total: int) -> float:
    """hits / total, NaN when there is nothing to measure (logged as such, never as 0 or 1)."""
    return hits / total if total else float("nan")
