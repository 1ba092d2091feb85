"""The official MGSV-EC video-to-music retrieval numbers, from ranks.

The official evaluation (xxayt/MGSV, `Recall_metrics(..., dedup=True)`) scores every query
video of the split against the music of every row, walks each video's columns from the best
score down and counts each music_id once, at its first occurrence: a query's 0-based rank is
the number of distinct tracks met before its own. So the gallery is the split's distinct
tracks, and every video of a track counts as a positive for it. In val and test each track
has one video, so the gallery is exactly the 2000 tracks of the split.

vmr's exact retrieval (lightning_app.retrieval.paired_retrieval_ranks) ranks the same
de-duplicated gallery: its v2m ranks are these ranks + 1 (ties apart: vmr counts a tie with
another track against the query, the official sort breaks ties by position). This module
turns such ranks into the official metric set: a run on MGSV-EC writes it into metrics.json
(`official_keys`: `test/v2m/official/R1` ... `MRR`), and `python -m datamodules.mgsv_ec_eval
RUN/per_query_v2m.parquet` prints it from a finished run's per-query ranks; both go through
`from_ranks`, so they agree exactly. `official_dedup_ranks` transcribes the official walk for
testing.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

KS = (1, 3, 5, 10, 20, 25, 50, 100)
# metrics.json keys: <stage>/v2m/official/<name> (R<k> in percent as the official log prints,
# unlike vmr's own R@K fractions; MedianR, MeanR 1-based; MRR a fraction).
OFFICIAL = "v2m/official"


def official_dedup_ranks(scores: np.ndarray, column_music: Sequence[str],
                         query_music: Sequence[str]) -> np.ndarray:
    """0-based ranks: distinct music ids met before the query's own, best score first.

    scores [Q, C]: row q = query video q, column c = the music of row c of the split.
    """
    scores = np.asarray(scores)
    ranks = np.empty(len(scores), dtype=np.int64)
    for q, row in enumerate(scores):
        seen: set[str] = set()
        for c in np.argsort(-row, kind="stable"):
            music = column_music[c]
            if music == query_music[q]:
                break
            seen.add(music)
        ranks[q] = len(seen)
    return ranks


def official_metrics(ranks0: np.ndarray) -> dict[str, float]:
    """R1..R100 (percent of queries with rank < k), MedianR and MeanR (1-based), MRR.

    MRR is mean(1 / (rank0 + 1)) as a fraction; R@k in percent as the official log prints.
    """
    r = np.asarray(ranks0, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("official_metrics: no ranks")
    out = {f"R{k}": float(100.0 * np.mean(r < k)) for k in KS}
    out["MedianR"] = float(np.median(r) + 1)
    out["MeanR"] = float(np.mean(r) + 1)
    out["MRR"] = float(np.mean(1.0 / (r + 1)))
    return out


def from_ranks(ranks: Any) -> dict[str, float]:
    """The official numbers from vmr's 1-based v2m ranks (array, list or tensor)."""
    if hasattr(ranks, "cpu"):  # a torch tensor, possibly on an accelerator
        ranks = ranks.cpu().numpy()
    return official_metrics(np.asarray(ranks, dtype=np.int64) - 1)


def official_keys(ranks: Any, stage: str) -> dict[str, float]:
    """metrics.json entries `<stage>/v2m/official/<name>` of vmr's 1-based v2m ranks."""
    return {f"{stage}/{OFFICIAL}/{k}": v for k, v in from_ranks(ranks).items()}


def dataset_official_keys(dataset: str, ranks: dict[str, Any], stage: str) -> dict[str, float]:
    """`official_keys` of the v2m ranks for data.dataset=mgsv_ec; {} for other datasets."""
    if dataset != "mgsv_ec" or "v2m" not in ranks:
        return {}
    return official_keys(ranks["v2m"], stage)


def from_per_query(path: str | Path) -> dict[str, float]:
    """The official numbers of a run's `per_query_v2m.parquet` (its 1-based `rank` column)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["rank"])
    return from_ranks(table.column("rank").to_pylist())


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m datamodules.mgsv_ec_eval RUN/per_query_v2m.parquet",
              file=sys.stderr)
        return 2
    metrics = from_per_query(args[0])
    print("  ".join(f"{k} {v:.2f}" if k != "MRR" else f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
