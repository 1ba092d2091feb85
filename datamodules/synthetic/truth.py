"""The hidden truth file of a synthetic dataset (never read by loaders).

It lets callbacks and reports measure, e.g., pseudo-label precision against planted noise.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from datamodules.synthetic.planted import PlantedBenchmark

TRUTH_FILE = "truth.tsv"


def truth_tsv(bench: PlantedBenchmark) -> str:
    rows = bench.truth_rows()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def read_truth(root: str | Path) -> list[dict]:
    with open(Path(root) / TRUTH_FILE, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))
