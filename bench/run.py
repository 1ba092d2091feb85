"""`make bench`: writes bench/results.json and bench/results.md.

Retrieval metrics: `lightning_app.retrieval.paired_retrieval_metrics` (chunked, exact)
against a brute-force NumPy reference that argsorts every query's full score row, on the
same embeddings, same thread count. Both compute identical ranks (checked); the ratio is
reference time / ours. Peak memory is the score block each method materialises.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from datamodules.atomic import write_json, write_text
from lightning_app.retrieval import metrics_from_ranks, paired_retrieval_ranks

OUT = Path(__file__).resolve().parent
SIZES = (2000, 10000)
DIM = 512
CHUNK = 4096


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def reference_ranks(video: np.ndarray, music: np.ndarray) -> np.ndarray:
    """Rank of the paired item by a full argsort per query (ties: positive last)."""
    ranks = np.empty(len(video), dtype=np.int64)
    for start in range(0, len(video), 512):
        scores = video[start : start + 512] @ music.T
        rows = np.arange(scores.shape[0])
        positive = start + rows
        is_pos = np.zeros_like(scores, dtype=bool)
        is_pos[rows, positive] = True
        for r in rows:
            order = np.lexsort((is_pos[r], -scores[r]))
            ranks[start + r] = int(np.flatnonzero(is_pos[r][order])[0]) + 1
    return ranks


def bench_retrieval(n: int) -> dict:
    g = torch.Generator().manual_seed(n)
    video = torch.nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=1)
    music = torch.nn.functional.normalize(video + 1.0 * torch.randn(n, DIM, generator=g), dim=1)
    keys = torch.arange(n)
    ours = paired_retrieval_ranks(video, music, keys, keys, chunk_size=CHUNK)["v2m"].numpy()
    v64, m64 = video.double().numpy(), music.double().numpy()
    ref = reference_ranks(v64, m64)
    # float32 (ours) vs float64 (reference) scores may order near-ties differently; every
    # disagreement must be such a near-tie.
    for q in np.flatnonzero(ours != ref):
        row = v64[q] @ m64.T
        gap = np.delete(np.abs(row - row[q]), q).min()
        assert gap < 1e-5, f"query {q}: rank {ours[q]} vs reference {ref[q]} (gap {gap:.2e})"
    def ours_both() -> None:
        for r in paired_retrieval_ranks(video, music, keys, keys, chunk_size=CHUNK).values():
            metrics_from_ranks(r, (1, 10))

    def reference_both() -> None:
        reference_ranks(video.numpy(), music.numpy())
        reference_ranks(music.numpy(), video.numpy())

    t_ours = _best_of(ours_both)
    t_ref = _best_of(reference_both, repeats=1)
    return {
        "n": n, "rank_agreement": float(np.mean(ours == ref)),
        "ours_s": t_ours, "reference_s": t_ref, "speedup": t_ref / t_ours,
        "ours_score_block_mb": min(CHUNK, n) * n * 4 / 2**20,
        "full_matrix_mb": n * n * 4 / 2**20,
    }


def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    results = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "cpu": platform.processor()},
        "retrieval_metrics": [bench_retrieval(n) for n in SIZES],
    }
    write_json(OUT / "results.json", results)
    lines = ["# vmr benchmarks", "",
             "Retrieval metrics, both directions: exact chunked vs brute-force argsort:",
             "", "| N | ours (s) | reference (s) | speed-up | rank agreement | score block (MiB) "
             "| full N x N (MiB) |", "|---|---|---|---|---|---|---|"]
    for r in results["retrieval_metrics"]:
        lines.append(f"| {r['n']} | {r['ours_s']:.3f} | {r['reference_s']:.2f} | "
                     f"{r['speedup']:.0f}x | {r['rank_agreement']:.4%} | "
                     f"{r['ours_score_block_mb']:.0f} | {r['full_matrix_mb']:.0f} |")
    text = "\n".join(lines) + "\n"
    write_text(OUT / "results.md", text)
    print(text)
    print(json.dumps(results["machine"]))


if __name__ == "__main__":
    main()
