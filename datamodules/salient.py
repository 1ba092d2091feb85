"""Planted salient spans of a synthetic dataset, per stored video frame (metrics only).

A synthetic dataset's truth files (datamodules.synthetic.truth) give each video's salient
span as `span_start`/`span_length` columns (frame indices of the stored array): `truth.tsv`
for the paired videos, `truth_unpaired.tsv` for the pool's. Batches carry the mask of the
sampled frames as `salient` so a model can log, e.g., how often a mixed-in window holds the
planted content. Training must never read it; real data has no such files and no key.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from datamodules.feature_store import StoreSplit

log = logging.getLogger("vmr")

SPAN_FILES = ("truth.tsv", "truth_unpaired.tsv")  # datamodules.synthetic.truth's names
Spans = dict[str, tuple[int, int]]


def read_spans(root: str | Path) -> Spans | None:
    """{video id: (span_start, span_length)} from the truth files under `root` (None: none)."""
    spans: Spans = {}
    found = False
    for name in SPAN_FILES:
        path = Path(root) / name
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t")
            if not {"id", "span_start", "span_length"} <= set(reader.fieldnames or ()):
                continue
            found = True
            for row in reader:
                if row["span_start"] != "":  # pool songs have no span
                    spans[row["id"]] = (int(row["span_start"]), int(row["span_length"]))
    return spans if found else None


def salient_frames(split: StoreSplit, spans: Spans | None) -> np.ndarray | None:
    """bool [stored video frames of `split`]: True inside each row's span; None when any row
    has no span (the key is then left out rather than guessed)."""
    if spans is None:
        return None
    missing = [r["id"] for r in split.rows if r["id"] not in spans]
    if missing:
        log.warning("%s/%s: no planted span for %d videos (e.g. %s); batches carry no "
                    "'salient' key", split.root, split.split, len(missing), missing[0])
        return None
    offsets, lengths = split.offsets["video"], split.lengths["video"]
    out = np.zeros(len(split.arrays["video"]), dtype=bool)
    for row, off, n in zip(split.rows, offsets, lengths):
        start, length = spans[row["id"]]
        out[off + min(start, n) : off + min(start + length, n)] = True
    return out
