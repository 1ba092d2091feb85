"""Group `retrieval`: Recall@K / median / mean rank for N paired items, both directions.

Ours: `lightning_app.retrieval.paired_retrieval_ranks` (exact, `CHUNK` queries at a time) +
`metrics_from_ranks`, what the Recall@K callback runs on a split.

References, on the same embeddings and threads:
* brute force (NumPy): score a block of queries, then argsort each query's full score row
  (`np.lexsort` with the same tie rule as ours: a negative tied with the positive ranks
  above it). At large N it runs on a random subset of queries and its time is extrapolated
  linearly in the number of queries (each query costs the same: one score row + one sort);
  such rows are labelled.
* torchmetrics `RetrievalHitRate(top_k=10)`: it takes every (query, item) score as one flat
  tensor with flat targets and query indexes, so it needs O(N^2) memory; run where that fits.
  Hit rate @10 with one positive per query is exactly R@10.

Every case runs in a fresh process, which also gives its peak resident memory (common.py).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import (
    RATIO_MEMORY,
    RATIO_TIME,
    best_of,
    check,
    fmt_bytes,
    fmt_ops,
    log,
    measure_peak,
    row,
    run_isolated,
    top_ops,
)
from bench.retrieval_floor import floor_row, ours_notes
from bench.retrieval_refs import case_reference, case_torchmetrics, reference_notes

GROUP = "retrieval"

DIM = 512
CHUNK = 4096  # eval.chunk_size's default
KS = (1, 5, 10)
# Music = normalise(video + NOISE * unit-scale noise): cos(positive) ~ 1/sqrt(1 + NOISE^2) ~ 0.12,
# close to the best of N random negatives, so R@10 lands mid-range and checks mean something.
NOISE = 8.0
# Bytes per score torchmetrics needs before it starts: preds float32 + target bool + int64 index.
TM_BYTES_PER_SCORE = 4 + 1 + 8
# Ours at its peak, per score of a tile: the float32 score (the counts are per row and
# column, lightning_app/rank_tiles.py, no masks).
PEAK_BYTES_PER_SCORE = 4

FULL = {
    # n: (ours repeats, reference queries per direction (None: all), torchmetrics directions)
    2000: (3, None, ("v2m", "m2v")),
    # torchmetrics takes ~1.5 min per direction at 10k on 2 cores: one direction only.
    10000: (3, None, ("v2m",)),
    20000: (3, 1000, ()),  # the size the metrics-vs-matmul goal is stated at
    50000: (1, 1000, ()),
}
QUICK = {
    1000: (3, None, ("v2m", "m2v")),
    2000: (2, 400, ("v2m",)),
}


def make_pairs(n: int, dim: int = DIM) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    video = F.normalize(torch.randn(n, dim, generator=g), dim=1)
    noise = torch.randn(n, dim, generator=g) * (NOISE / math.sqrt(dim))
    return video, F.normalize(video + noise, dim=1)


# ----------------------------------------------------------------------------- cases (spawned)


def case_ours(n: int, repeats: int, tm_directions: tuple[str, ...]) -> dict[str, Any]:
    from lightning_app.retrieval import metrics_from_ranks, paired_retrieval_ranks
    from lightning_app.search import single_positive_ranks

    video, music = make_pairs(n)
    keys = torch.arange(n)

    def both():
        ranks = paired_retrieval_ranks(video, music, keys, keys, chunk_size=CHUNK)
        return ranks, {d: metrics_from_ranks(r, KS) for d, r in ranks.items()}

    # Warm-up on a slice: one-time library buffers (BLAS, OpenMP pools) stay out of the peak.
    paired_retrieval_ranks(video[:64], music[:64], keys[:64], keys[:64], chunk_size=CHUNK)
    start = time.perf_counter()
    (ranks, metrics), memory = measure_peak(both)
    times = [time.perf_counter() - start]
    times += best_of(both, repeats - 1)[1] if repeats > 1 else []

    # The floor: the same score tiles alone (the rank kernel's GEMM and tile shape; the N x N
    # product once, as ours makes it for both directions; a sample of row blocks at large N),
    # best of `repeats`.
    from lightning_app.cpu_gemm import scores_t
    from lightning_app.rank_kernel import TILE_COLS, TILE_ROWS

    blocks = list(range(0, n, TILE_ROWS))
    sample = blocks[: max(1, 10000 // TILE_ROWS)] if n > 20000 else blocks
    sampled_rows = sum(min(TILE_ROWS, n - s) for s in sample)

    def tiles(blocks=sample):
        for s in blocks:
            for c in range(0, n, TILE_COLS):
                scores_t(video[s : s + TILE_ROWS], music[c : c + TILE_COLS])

    # Made both ways ours could: one OpenMP team per product, or each thread its own row
    # blocks (lightning_app/cpu_workers.py, as ours does); the faster is the floor.
    from lightning_app.cpu_workers import run_split

    team_s = best_of(tiles, repeats)[0] * (n / sampled_rows)
    split_s = best_of(lambda: run_split(tiles, sample), repeats)[0] * (n / sampled_rows)
    matmul_s = min(team_s, split_s)
    # torch's own matmul (MKL here) on eval.chunk_size row blocks, for comparison.
    chunks = list(range(0, n, CHUNK))[: max(1, sampled_rows // CHUNK)]
    t = time.perf_counter()
    for s in chunks:
        video[s : s + CHUNK] @ music.T
    torch_matmul_s = (time.perf_counter() - t) * n / sum(min(CHUNK, n - s) for s in chunks)

    one_direction = {}
    for d in tm_directions:
        q, g = (video, music) if d == "v2m" else (music, video)
        one_direction[d] = best_of(
            lambda q=q, g=g: metrics_from_ranks(
                single_positive_ranks(q, g, keys, chunk_size=CHUNK), KS), repeats)[0]
    return {"n": n, "time_s": min(times), "times_s": times, "memory": memory,
            "ranks": {d: r.numpy() for d, r in ranks.items()}, "metrics": metrics,
            "matmul_s": matmul_s, "matmul_team_s": team_s, "matmul_split_s": split_s,
            "matmul_sampled_queries": sampled_rows,
            "torch_matmul_s": torch_matmul_s,
            "one_direction_s": one_direction}


# ----------------------------------------------------------------------------- comparison


def _rank_check(n: int, ours: dict, ref: dict) -> tuple[dict, dict]:
    """Ours vs the reference on the reference's queries: ranks, R@10, near-tie explanation."""
    rows = ref["rows"]
    video, music = make_pairs(n)
    v, m = video.double().numpy(), music.double().numpy()
    agree, r10, worst_gap, bad = {}, {}, 0.0, []
    for d in ("v2m", "m2v"):
        a, b = ours["ranks"][d][rows], ref["ranks"][d]
        agree[d] = float(np.mean(a == b))
        r10[d] = (float(np.mean(a <= 10)), float(np.mean(b <= 10)))
        q, g = (v, m) if d == "v2m" else (m, v)
        for k in np.flatnonzero(a != b):
            # float32 scores from two BLAS libraries may order near-ties differently; any
            # disagreement must be one (some negative within 1e-5 of the positive, float64).
            qi = rows[k]
            s = q[qi] @ g.T
            gap = float(np.delete(np.abs(s - s[qi]), qi).min())
            worst_gap = max(worst_gap, gap)
            if gap >= 1e-5:
                bad.append((d, int(qi), int(a[k]), int(b[k]), gap))
    subset = "" if len(rows) == n else f" (on the reference's {len(rows)} queries per direction)"
    ok = not bad and all(x == y for x, y in r10.values())
    detail = (f"R@10 ours vs reference{subset}: "
              + ", ".join(f"{d} {x:.4f} vs {y:.4f}" for d, (x, y) in r10.items())
              + "; rank agreement " + ", ".join(f"{d} {x:.4%}" for d, x in agree.items())
              + ("" if worst_gap == 0
                 else f"; disagreements are near-ties (gap <= {worst_gap:.1e})")
              + (f"; NOT near-ties: {bad[:3]}" if bad else ""))
    return check(ok, detail), {"rank_agreement": agree, "r10": r10}


def run(ctx) -> dict[str, Any]:
    sizes = QUICK if ctx.quick else FULL
    rows, details = [], []
    for n, (repeats, ref_queries, tm_dirs) in sizes.items():
        log(f"retrieval N={n}: ours (both directions, chunk {CHUNK})")
        ours = run_isolated(ctx.threads, case_ours, n, repeats, tm_dirs)
        log(f"retrieval N={n}: brute-force argsort reference"
            + (f" on {ref_queries} queries per direction" if ref_queries else ""))
        ref = run_isolated(ctx.threads, case_reference, n, ref_queries)
        rank_check, agreement = _rank_check(n, ours, ref)
        label = f"N={n // 1000}k" if n >= 1000 else f"N={n}"
        ours_mem = ours["memory"]["peak_delta_bytes"]
        from lightning_app.rank_kernel import TILE_COLS, TILE_ROWS

        shape = (min(TILE_ROWS, n), min(TILE_COLS, n))
        block = shape[0] * shape[1] * 4
        mem_note = (f"measured peak RSS increase in a fresh process ({ours['memory']['method']}); "
                    f"analytic: {fmt_bytes(block * PEAK_BYTES_PER_SCORE / 4)}, "
                    f"{PEAK_BYTES_PER_SCORE} B per score of one {shape[0]}x{shape[1]} tile "
                    f"(float32 scores; counts per row and column, no masks) plus per-item "
                    f"counters; the full N x N scores alone would be {fmt_bytes(n * n * 4)}")
        extrapolated = ref["scale"] > 1
        rows.append(row(
            GROUP, f"R@1/5/10, MdR, MnR, both directions, {label}, d={DIM} "
            f"vs brute-force argsort{' (extrapolated)' if extrapolated else ''}",
            ours["time_s"], ref["time_s"], "s", RATIO_TIME,
            f"ours: {ours_notes(ctx, ours)}. reference: {reference_notes(ref)}",
            check=rank_check, extrapolated=extrapolated, n=n,
            ours_times_s=ours["times_s"], metrics=ours["metrics"], **agreement))
        rows.append(row(
            GROUP, f"peak memory, {label} vs brute-force argsort (256-query blocks)",
            ours_mem, ref["memory"]["peak_delta_bytes"], "bytes", RATIO_MEMORY,
            f"ours: {mem_note}. reference: scores 256 queries at a time, so it needs "
            f"little memory; it pays in sort time instead", n=n,
            exact=ours["memory"]["exact"] and ref["memory"]["exact"]))
        rows.append(floor_row(ctx, n, ours, label))
        if tm_dirs:
            log(f"retrieval N={n}: torchmetrics RetrievalHitRate(top_k=10), {'+'.join(tm_dirs)}")
            tm = run_isolated(ctx.threads, case_torchmetrics, n, tm_dirs,
                              2 if n <= 2000 else 1)
            ours_t = sum(ours["one_direction_s"][d] for d in tm_dirs)
            diffs = {d: (ours["metrics"][d]["R@10"], tm["hit_rate"][d]) for d in tm_dirs}
            # torchmetrics averages in float32: equal means within half a query.
            same = all(abs(a - b) <= 0.5 / n for a, b in diffs.values())
            tm_check = check(same, "R@10 ours vs torchmetrics hit rate@10: " + ", ".join(
                f"{d} {a:.4f} vs {b:.4f}" for d, (a, b) in diffs.items()))
            dirs = " + ".join(tm_dirs)
            flat = n * n * TM_BYTES_PER_SCORE
            rows.append(row(
                GROUP, f"R@10 ({dirs}), {label} vs torchmetrics RetrievalHitRate(top_k=10)",
                ours_t, tm["time_s"], "s", RATIO_TIME,
                f"ours: single_positive_ranks + metrics_from_ranks per direction (same "
                f"chunked kernel). torchmetrics: scores as one flat N^2 tensor with flat "
                f"targets and int64 query indexes ({fmt_bytes(flat)} before it starts), then "
                f"sorts all N^2 entries by query (sort + unique) and loops over the N queries in "
                f"Python: memory-bandwidth and Python-overhead bound"
                + ("" if len(tm_dirs) == 2 else
                   f"; one direction only, to keep the run short "
                   f"({tm['time_s'] / len(tm_dirs):.0f} s per direction here)"),
                check=tm_check, n=n, directions=list(tm_dirs)))
            rows.append(row(
                GROUP, f"peak memory, {label} vs torchmetrics",
                ours_mem, tm["memory"]["peak_delta_bytes"], "bytes", RATIO_MEMORY,
                "torchmetrics holds N^2 preds/targets/indexes plus sorted copies; ours one "
                "score block at a time", n=n,
                exact=ours["memory"]["exact"] and tm["memory"]["exact"]))
        details.append({"n": n, "ours": _strip(ours), "reference": _strip(ref)})
    n_prof = max(n for n in sizes if n <= 10000)
    video, music = make_pairs(n_prof)
    from lightning_app.search import single_positive_ranks

    c = min(CHUNK, n_prof)
    ops = top_ops(lambda: single_positive_ranks(video[:c], music, torch.arange(c)))
    largest = max(sizes)
    notes = [
        f"Where ours spends its time (torch.profiler self time, one {c}-query chunk against "
        f"N={n_prof}): {fmt_ops(ops)}"
        + ("; aten::copy_ is the int32 copy torch makes to sum the bool rank mask"
           if any(o["op"] == "aten::copy_" for o in ops) else ""),
        f"torchmetrics is not run at N={largest // 1000}k: it needs every score as one flat "
        f"tensor plus a bool target and an int64 query index per score, "
        f"{fmt_bytes(largest**2 * TM_BYTES_PER_SCORE)} before sorting copies, more than this "
        f"machine's RAM" if not sizes[largest][2] else "",
        "Peak memory: peak resident set size during the call minus the resident size before "
        "it, each case in a fresh process; page-granular, includes allocator slack.",
    ]
    return {"rows": rows, "details": details, "notes": [x for x in notes if x],
            "profile_one_chunk": {"n": n_prof, "ops": ops},
            "settings": {"dim": DIM, "chunk": CHUNK, "noise": NOISE,
                         "sizes": {str(k): list(v) for k, v in sizes.items()}}}


def _strip(res: dict) -> dict:
    """JSON-friendly summary of a case (no rank arrays)."""
    out = {k: v for k, v in res.items() if k not in ("ranks", "rows")}
    if "rows" in res:
        out["queries_measured"] = len(res["rows"])
    return out

