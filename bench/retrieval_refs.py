"""The references of the `retrieval` group (each run in a fresh process): a brute-force NumPy
argsort of every score row, and torchmetrics' RetrievalHitRate on one flat score tensor."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from bench.common import best_of, measure_peak


def make_pairs(n: int):
    from bench.retrieval import make_pairs as pairs

    return pairs(n)


def reference_ranks(queries: np.ndarray, gallery: np.ndarray, rows: np.ndarray,
                    block: int = 256) -> tuple[np.ndarray, float]:
    """(1-based rank of gallery[q] for each query q in `rows`, seconds spent in the matmuls).

    Query q's one positive is gallery item q. Each score row is fully sorted.
    """
    ranks = np.empty(len(rows), dtype=np.int64)
    is_pos = np.zeros(gallery.shape[0], dtype=bool)
    matmul = 0.0
    for start in range(0, len(rows), block):
        qs = rows[start : start + block]
        t = time.perf_counter()
        scores = queries[qs] @ gallery.T
        matmul += time.perf_counter() - t
        for j, q in enumerate(qs):
            is_pos[q] = True
            # Primary key -score, then is_pos (False first): tied negatives rank above.
            order = np.lexsort((is_pos, -scores[j]))
            ranks[start + j] = int(np.flatnonzero(order == q)[0]) + 1
            is_pos[q] = False
    return ranks, matmul


def case_reference(n: int, queries: int | None) -> dict[str, Any]:
    video, music = make_pairs(n)
    v, m = video.numpy(), music.numpy()
    if queries is None or queries >= n:
        rows = np.arange(n)
    else:
        rows = np.sort(np.random.default_rng(n).choice(n, queries, replace=False))

    reference_ranks(v[:64], m[:64], np.arange(8))  # warm-up (library buffers)

    def run():
        v2m, mm1 = reference_ranks(v, m, rows)
        m2v, mm2 = reference_ranks(m, v, rows)
        return {"v2m": v2m, "m2v": m2v}, mm1 + mm2

    start = time.perf_counter()
    (ranks, matmul_s), memory = measure_peak(run)
    elapsed = time.perf_counter() - start
    scale = n / len(rows)
    return {"n": n, "rows": rows, "ranks": ranks, "time_s": elapsed * scale,
            "measured_s": elapsed, "scale": scale, "matmul_s": matmul_s * scale,
            "memory": memory}


def case_torchmetrics(n: int, directions: tuple[str, ...], repeats: int) -> dict[str, Any]:
    from torchmetrics.retrieval import RetrievalHitRate

    video, music = make_pairs(n)
    # Warm-up (library buffers, lazy imports) on 8 x 8 scores.
    RetrievalHitRate(top_k=10)((video[:8] @ music[:8].T).reshape(-1),
                               torch.eye(8, dtype=torch.bool).reshape(-1),
                               indexes=torch.arange(8).repeat_interleave(8))

    def run():
        out = {}
        for d in directions:
            q, g = (video, music) if d == "v2m" else (music, video)
            preds = (q @ g.T).reshape(-1)
            target = torch.eye(n, dtype=torch.bool).reshape(-1)
            indexes = torch.arange(n).repeat_interleave(n)
            out[d] = float(RetrievalHitRate(top_k=10)(preds, target, indexes=indexes))
            del preds, target, indexes
        return out

    start = time.perf_counter()
    hit_rate, memory = measure_peak(run)
    times = [time.perf_counter() - start]
    times += best_of(run, repeats - 1)[1] if repeats > 1 else []
    return {"n": n, "directions": directions, "hit_rate": hit_rate, "time_s": min(times),
            "times_s": times, "memory": memory}


def reference_notes(res: dict) -> str:
    share = min(res["matmul_s"] / res["time_s"], 1.0)
    extra = ""
    if res["scale"] > 1:
        extra = (f"EXTRAPOLATED: measured {len(res['rows'])} random queries per direction in "
                 f"{res['measured_s']:.1f} s, scaled x{res['scale']:.0f} (linear in queries); ")
    return (f"{extra}Python/NumPy sort-bound: {1 - share:.0%} of the time is one full "
            f"np.lexsort of an N-score row per query (O(N log N), single-threaded); "
            f"the threaded matmul is {share:.0%}")
