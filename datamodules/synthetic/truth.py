"""The hidden truth of a synthetic dataset: for measuring only, never for training.

`truth.tsv` (one row per pair) lets callbacks and reports measure, e.g., pseudo-label
precision against planted noise. `truth_unpaired.tsv` (one row per unpaired pool item, written
only with a pool) says which pool video and pool song share a content (`partner_id`, the
hidden pairs; "" for singles), each item's style and each pool video's salient span. The
one loader-side reader is the `salient` batch key (frames inside the planted span, for
metrics only; datamodules.salient), which reads the span columns of both files.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from datamodules.synthetic.planted import PlantedBenchmark

TRUTH_FILE = "truth.tsv"
UNPAIRED_TRUTH_FILE = "truth_unpaired.tsv"


def truth_tsv(bench: PlantedBenchmark) -> str:
    return rows_tsv(bench.truth_rows())


def rows_tsv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_truth(root: str | Path) -> list[dict]:
    with open(Path(root) / TRUTH_FILE, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


class PoolTruth:
    """The planted truth of the unpaired pool (`truth_unpaired.tsv`), by item id."""

    def __init__(self, rows: list[dict]):
        self.rows = {r["id"]: r for r in rows}

    @classmethod
    def load(cls, root: str | Path) -> PoolTruth | None:
        """The pool truth under `root`, or None when the dataset has none."""
        path = Path(root) / UNPAIRED_TRUTH_FILE
        if not path.is_file():
            return None
        with open(path, newline="", encoding="utf-8") as f:
            return cls(list(csv.DictReader(f, delimiter="\t")))

    def partner(self, item_id: str) -> str | None:
        """The pool item on the other side that shares this item's content (None: a single)."""
        row = self.rows.get(item_id)
        return (row["partner_id"] or None) if row is not None else None

    def style(self, item_id: str) -> int | None:
        row = self.rows.get(item_id)
        return int(row["style"]) if row is not None else None

    def hidden_pair(self, video_id: str, music_id: str) -> bool:
        """True when the pool video and the pool song were drawn with one shared content."""
        return self.partner(video_id) == music_id and music_id in self.rows

    def ids(self, side: str) -> list[str]:
        return [i for i, r in self.rows.items() if r["side"] == side]
