"""Group `retrieval`, the floor row: our metrics (both directions) against the score tiles
they need, made alone; and the note on where our time goes."""

from __future__ import annotations

from typing import Any

from bench.common import RATIO_TIME, check, row


def _tile_note() -> str:
    from lightning_app.rank_kernel import TILE_COLS, TILE_ROWS

    return (f"lightning_app/rank_tiled.py: tiles of {TILE_ROWS} queries x {TILE_COLS} items "
            "through oneDNN (lightning_app/cpu_gemm.py), row blocks shared out to the threads")


def ours_notes(ctx, res: dict) -> str:
    from bench.retrieval import DIM

    n, t, mm = res["n"], res["time_s"], min(res["matmul_s"], res["time_s"])
    gflops = 2 * n * n * DIM / mm / 1e9
    peak = ctx.calibration["sgemm_gflops"]
    return (f"score tiles {mm / t:.0%} of the time at {gflops:.0f} GFLOP/s (torch's matmul "
            f"measured {peak:.0f} here); the rest, per tile one compiled pass counting each "
            f"score against its row's and its column's float32 band (both directions) and "
            f"listing the few items inside a band, {(t - mm) / (n * n) * 1e9:.2f} ns per score")


def floor_row(ctx, n: int, ours: dict, label: str) -> dict[str, Any]:
    """Ours (both directions, metrics included) against its score tiles alone."""
    from bench.retrieval import CHUNK, DIM, GROUP

    over = ours["time_s"] / ours["matmul_s"]
    sampled = ("" if ours["matmul_sampled_queries"] >= n else
               f"; tile time from {ours['matmul_sampled_queries']} queries per direction, scaled")
    return row(
        GROUP, f"R@1/5/10, MdR, MnR, both directions, {label}, d={DIM} vs the matmul alone "
        "(its score tiles, nothing else)", ours["time_s"], ours["matmul_s"], "s", RATIO_TIME,
        f"ours takes {over:.2f}x the time of the products it needs (goal <= 1.3x, i.e. ratio >= "
        f"0.77): the N x N score tiles, made once and counted for both directions "
        f"({_tile_note()}){sampled}; the floor is the faster of two ways to make them alone, "
        f"one OpenMP team per product ({ours['matmul_team_s']:.2f} s) or {ctx.threads} "
        f"threads making their own (as ours, {ours['matmul_split_s']:.2f} s). For scale, "
        f"torch's own "
        f"matmul (MKL) on {CHUNK}-row blocks takes {ours['torch_matmul_s']:.2f} s for the same "
        f"products ({ours['torch_matmul_s'] / ours['time_s']:.2f}x ours)",
        check=check(over <= 1.3 or n < 20000, f"metrics at {over:.2f}x their matmul at N={n}"
                    + (" (goal <= 1.3x at N >= 20k)" if n >= 20000 else " (no goal below 20k)")),
        n=n, over_matmul=over)
