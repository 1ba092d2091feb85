"""What every benchmark group shares: threads, timing, peak memory, machine, result rows.

Every figure the report shows is a ratio of two measurements taken in the same run with
the same thread count (`set_threads` sets torch, the BLAS/OpenMP pools NumPy and faiss use,
and faiss's own OpenMP count to one number).

Peak memory is the peak resident set size (VmHWM) of a fresh process, reset just before the
measured call (`/proc/self/clear_refs`, Linux >= 4.0), minus the resident size right before
it: it counts what torch, NumPy and faiss allocate (tracemalloc sees none of torch's
allocations), page-granular, including allocator slack. Where the reset is not available the
delta against the earlier high-water mark is only a lower bound, and the row says so.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# The machine description lives in bench/machine.py; re-exported for the groups and run.py.
from bench.machine import (  # noqa: F401
    default_threads,
    describe_machine,
    machine,
    thread_pools,
)

MiB = 2**20
GiB = 2**30

# What the ratio column means, per kind of figure; always "> 1: ours is better".
RATIO_TIME = "reference time / ours time (> 1: ours faster)"
RATIO_RATE = "ours throughput / reference throughput (> 1: ours faster)"
RATIO_MEMORY = "reference peak / ours peak (> 1: ours uses less)"


# ----------------------------------------------------------------------------- threads


def set_threads(n: int) -> None:
    """One thread count for torch, NumPy's BLAS, faiss's BLAS and OpenMP (this process).

    Environment variables are set too, so processes started later start with the same.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


# ----------------------------------------------------------------------------- timing


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
    """(fastest wall time, all wall times) of `repeats` calls."""
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), times


def calibrate(quick: bool) -> dict[str, float]:
    """The machine's reachable float32 matmul rate and copy bandwidth, with these threads.

    Notes compare achieved rates with these, measured in the same run, rather than with a
    datasheet peak (the machine may be shared).
    """
    n = 2048 if quick else 4096
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    t_mm, _ = best_of(lambda: a @ b, 3 if quick else 4)
    src = torch.ones((32 if quick else 256) * MiB // 4)
    dst = torch.empty_like(src)
    t_cp, _ = best_of(lambda: dst.copy_(src), 3)
    return {
        "sgemm_n": n,
        "sgemm_gflops": 2 * n**3 / t_mm / 1e9,
        "samples": 1,
        "copy_bytes": src.numel() * 4,
        # read + write
        "copy_gbps": 2 * src.numel() * 4 / t_cp / 1e9,
    }


def best_calibration(old: dict[str, float] | None, new: dict[str, float]) -> dict[str, float]:
    """The higher of each rate seen so far in this run (a shared machine's load varies)."""
    if not old:
        return dict(new)
    out = dict(old)
    out["sgemm_gflops"] = max(old["sgemm_gflops"], new["sgemm_gflops"])
    out["copy_gbps"] = max(old["copy_gbps"], new["copy_gbps"])
    out["samples"] = old.get("samples", 1) + 1
    return out


# ----------------------------------------------------------------------------- isolation


def run_isolated(threads: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a fresh spawned process with `threads` threads.

    A fresh process gives each peak-memory figure a clean baseline (nothing the previous
    measurement allocated is still held by an allocator). `fn` must be importable.
    """
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(1, mp_context=ctx, initializer=set_threads,
                                initargs=(threads,)) as pool:
        return pool.submit(fn, *args, **kwargs).result()


# ----------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_peak(fn: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """(fn(), memory) with memory = {"peak_delta_bytes", "method", "exact"}.

    peak_delta_bytes: peak resident size during the call minus the resident size before.
    """
    import resource

    before = _status_kib("VmRSS")
    exact = before is not None and _reset_peak()
    if exact:
        result = fn()
        peak = _status_kib("VmHWM")
        delta = (peak - before) * 1024
        method = "VmHWM after reset (/proc/self/clear_refs) minus VmRSS before"
    else:
        high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = fn()
        delta = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - high) * 1024
        method = "ru_maxrss increase (lower bound: earlier high-water mark not reset)"
    return result, {"peak_delta_bytes": max(0, int(delta)), "method": method, "exact": exact}


# ----------------------------------------------------------------------------- rows


def row(group: str, case: str, ours: float, reference: float, unit: str, ratio_definition: str,
        notes: str, **extra: Any) -> dict[str, Any]:
    """One table row; the ratio follows `ratio_definition` (always > 1: ours better)."""
    if ratio_definition == RATIO_RATE:
        ratio = ours / reference
    else:  # time or memory: smaller is better
        ratio = reference / ours if ours > 0 else math.inf
    return {"group": group, "case": case, "ours": ours, "reference": reference, "unit": unit,
            "ratio": ratio, "ratio_definition": ratio_definition, "notes": notes, **extra}


def check(ok: bool, detail: str) -> dict[str, Any]:
    """A correctness check attached to a row (the smoke test requires every one to pass)."""
    if not ok:
        print(f"bench: CHECK FAILED: {detail}", flush=True)
    return {"ok": bool(ok), "detail": detail}


def fmt_bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclasses.dataclass
class Context:
    """What a group's `run(ctx)` gets: settings of this run and a scratch folder."""

    threads: int
    quick: bool
    calibration: dict[str, float]
    machine: dict[str, Any]
    tmp: Path


def top_ops(fn: Callable[[], Any], count: int = 4) -> list[dict[str, Any]]:
    """The torch ops taking the most self time in one call of `fn` (torch.profiler, CPU).

    Used for notes only; the profiled call is never one of the timed ones.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6,
             "share": e.self_cpu_time_total / total} for e in events[:count]]


def fmt_ops(ops: list[dict[str, Any]]) -> str:
    return ", ".join(f"{o['op']} {o['share']:.0%}" for o in ops)
