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

GROUP = "retrieval"
DIM = 512
CHUNK = 4096  # eval.chunk_size's default
KS = (1, 5, 10)
# Music = normalise(video + NOISE * unit-scale noise): cos(positive) ~ 1/sqrt(1 + NOISE^2) ~ 0.12,
# close to the best of N random negatives, so R@10 lands mid-range and checks mean something.
NOISE = 8.0
# Bytes per score torchmetrics needs before it starts: preds float32 + target bool + int64 index.
TM_BYTES_PER_SCORE = 4 + 1 + 8
# Ours at its peak (the rank count), per score of a chunk: float32 scores, bool positive mask,
# (scores >= best) & ~pos as three bool temporaries, and the int32 copy that
# `bool_tensor.sum(dim=1, dtype=torch.int32)` materialises.
PEAK_BYTES_PER_SCORE = 4 + 1 + 3 + 4

FULL = {
    # n: (ours repeats, reference queries per direction (None: all), torchmetrics directions)
    2000: (3, None, ("v2m", "m2v")),
    # torchmetrics takes ~1.5 min per direction at 10k on 2 cores: one direction only.
    10000: (3, None, ("v2m",)),
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


# ----------------------------------------------------------------------------- references


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

    # Matmul share: the same chunked products alone (a sample of chunks at large N).
    chunks = range(0, n, CHUNK)
    sample = list(chunks)[: max(1, 10000 // CHUNK)] if n > 20000 else list(chunks)
    t = time.perf_counter()
    for s in sample:
        video[s : s + CHUNK] @ music.T
    sampled_rows = sum(min(CHUNK, n - s) for s in sample)
    matmul_s = (time.perf_counter() - t) * (2 * n / sampled_rows)

    one_direction = {}
    for d in tm_directions:
        q, g = (video, music) if d == "v2m" else (music, video)
        one_direction[d] = best_of(
            lambda q=q, g=g: metrics_from_ranks(
                single_positive_ranks(q, g, keys, chunk_size=CHUNK), KS), repeats)[0]
    return {"n": n, "time_s": min(times), "times_s": times, "memory": memory,
            "ranks": {d: r.numpy() for d, r in ranks.items()}, "metrics": metrics,
            "matmul_s": matmul_s, "matmul_sampled_queries": sampled_rows,
            "one_direction_s": one_direction}


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


def _ours_notes(ctx, res: dict) -> str:
    n, t, mm = res["n"], res["time_s"], min(res["matmul_s"], res["time_s"])
    share = mm / t
    gflops = 2 * 2 * n * n * DIM / mm / 1e9
    peak = ctx.calibration["sgemm_gflops"]
    rest = max(t - mm, 1e-9)
    scores = 2 * n * n
    bytes_per_score = ctx.calibration["copy_gbps"] * 1e9 * rest / scores
    sampled = ("" if res["matmul_sampled_queries"] >= n
               else f" (matmul time from {res['matmul_sampled_queries']} queries, scaled)")
    kind = ("mostly arithmetic (matmul)" if share >= 0.6 else
            "mostly elementwise passes (memory traffic and per-op overhead)")
    return (f"{kind}: matmul {share:.0%} of the time at {gflops:.0f} GFLOP/s "
            f"({gflops / peak:.0%} of the {peak:.0f} GFLOP/s sgemm measured here){sampled}; the "
            f"rest, elementwise passes (mask, max, compare, count) over {CHUNK}x{n} score "
            f"blocks, takes {rest / scores * 1e9:.1f} ns per score, in which the measured copy "
            f"rate ({ctx.calibration['copy_gbps']:.1f} GB/s) moves ~{bytes_per_score:.0f} B")


def _reference_notes(res: dict) -> str:
    share = min(res["matmul_s"] / res["time_s"], 1.0)
    extra = ""
    if res["scale"] > 1:
        extra = (f"EXTRAPOLATED: measured {len(res['rows'])} random queries per direction in "
                 f"{res['measured_s']:.1f} s, scaled x{res['scale']:.0f} (linear in queries); ")
    return (f"{extra}Python/NumPy sort-bound: {1 - share:.0%} of the time is one full "
            f"np.lexsort of an N-score row per query (O(N log N), single-threaded); "
            f"the threaded matmul is {share:.0%}")


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
        block = min(CHUNK, n) * n * 4
        mem_note = (f"measured peak RSS increase in a fresh process ({ours['memory']['method']}); "
                    f"analytic: {fmt_bytes(block * PEAK_BYTES_PER_SCORE / 4)}, "
                    f"{PEAK_BYTES_PER_SCORE} B per score of one {min(CHUNK, n)}x{n} chunk "
                    f"(float32 scores 4 B = {fmt_bytes(block)}, positive mask 1, three bool "
                    f"temporaries of the rank count 3, and the int32 copy torch makes to sum a "
                    f"bool tensor 4); the full N x N scores alone would be {fmt_bytes(n * n * 4)}")
        extrapolated = ref["scale"] > 1
        rows.append(row(
            GROUP, f"R@1/5/10, MdR, MnR, both directions, {label}, d={DIM} "
            f"vs brute-force argsort{' (extrapolated)' if extrapolated else ''}",
            ours["time_s"], ref["time_s"], "s", RATIO_TIME,
            f"ours: {_ours_notes(ctx, ours)}. reference: {_reference_notes(ref)}",
            check=rank_check, extrapolated=extrapolated, n=n,
            ours_times_s=ours["times_s"], metrics=ours["metrics"], **agreement))
        rows.append(row(
            GROUP, f"peak memory, {label} vs brute-force argsort (256-query blocks)",
            ours_mem, ref["memory"]["peak_delta_bytes"], "bytes", RATIO_MEMORY,
            f"ours: {mem_note}. reference: scores 256 queries at a time, so it needs "
            f"little memory; it pays in sort time instead", n=n,
            exact=ours["memory"]["exact"] and ref["memory"]["exact"]))
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

