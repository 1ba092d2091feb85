"""`make bench` (`python -m bench.run`): writes results.json and results.md.

Groups (each in bench/<name>.py, each figure a ratio against a reference measured in the
same run with the same thread count):

    retrieval  Recall@K / ranks at N = 2k, 10k, 50k vs a brute-force argsort and torchmetrics
    topk       top-10 search, 100k x 100k (d = 128) vs faiss IndexFlatIP
    ann        FAISS IVF / HNSW over 1M synthetic items: queries/s and recall@10 vs exact
    loading    YouTube-8M feature store vs reading the source TFRecords
    epoch      one VM-NET / II-CLVM epoch under Lightning vs a bare PyTorch loop
    extract    audio (vmnet, logmel) and video (ResNet-50, Inception-v3 + PCA) extraction
               from 30-s mp4 clips vs real time, and workers=2 vs workers=0
    gpu        only with --gpu: metrics at N=100k vs the GPU matmul floor, training steps/s
               per model from device memory vs the memory-mapped loader, top-k vs faiss GPU;
               --gpu also adds device-memory rows to `loading` (--device cpu: a dry run)

Options: --quick (small sizes, for the smoke test), --only NAME (repeatable; the other
groups of an existing results.json of the same mode and thread count are kept), --out DIR
(default: bench/), --threads N (default: the CPUs this process may use).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.common import (
    Context,
    best_calibration,
    calibrate,
    default_threads,
    log,
    machine,
    set_threads,
)

GROUPS = ("retrieval", "topk", "ann", "loading", "epoch", "extract")
GPU_GROUPS = ("gpu",)  # run only with --gpu
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes (about a minute; used by tests/test_bench_smoke.py)")
    p.add_argument("--only", action="append", choices=GROUPS + GPU_GROUPS, metavar="NAME",
                   help=f"run only this group (repeatable): {', '.join(GROUPS + GPU_GROUPS)}")
    p.add_argument("--gpu", action="store_true",
                   help="add the gpu group and device rows (needs CUDA unless --device cpu)")
    p.add_argument("--device", default="cuda",
                   help="the device of --gpu (default cuda; cpu: a dry run at small sizes)")
    p.add_argument("--out", type=Path, default=HERE,
                   help="folder for results.json and results.md (default: bench/)")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help="threads for torch, BLAS, OpenMP and faiss (default: available CPUs)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.only and "gpu" in args.only:
        args.gpu = True
    return args


def _previous(out: Path, quick: bool, threads: int) -> dict:
    """Groups of an earlier results.json measured the same way (kept by --only runs)."""
    try:
        old = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    if old.get("quick") != quick or old.get("threads") != threads or "groups" not in old:
        return {}
    return old["groups"]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.gpu and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            sys.exit("bench --gpu: no CUDA device (--device cpu runs a dry run)")
    start = time.perf_counter()
    run_id = uuid.uuid4().hex[:12]
    set_threads(args.threads)
    try:
        import faiss  # noqa: F401  (so its BLAS/OpenMP pools show in the machine description)
    except ImportError:
        if args.only is None or {"topk", "ann"} & set(args.only):
            sys.exit("bench: the topk and ann groups need faiss-cpu (pip install -e '.[bench]')")
    set_threads(args.threads)
    info = machine(args.threads)
    log(f"{args.threads} threads; calibrating matmul and copy rates")
    calibration = calibrate(args.quick)
    selected = args.only or list(GROUPS) + (list(GPU_GROUPS) if args.gpu else [])
    groups = _previous(args.out, args.quick, args.threads) if args.only else {}
    with tempfile.TemporaryDirectory(prefix="vmr-bench-") as tmp:
        ctx = Context(args.threads, args.quick, calibration, info, Path(tmp))
        ctx.device = args.device if args.gpu else "cpu"  # read by loading, epoch and gpu
        for k, name in enumerate(selected):
            if k:  # re-measure before each group; notes use the best rate seen in the run
                ctx.calibration = best_calibration(ctx.calibration, calibrate(args.quick))
            t = time.perf_counter()
            module = importlib.import_module(f"bench.{name}")
            result = module.run(ctx)
            result.update(seconds=time.perf_counter() - t, run_id=run_id,
                          measured_at=time.strftime("%Y-%m-%d %H:%M:%S"),
                          calibration=dict(ctx.calibration))
            groups[name] = result
            log(f"{name}: done in {result['seconds']:.0f} s")
    results = {
        "schema": 1,
        "run_id": run_id,
        "quick": args.quick,
        "threads": args.threads,
        "machine": info,
        "calibration": ctx.calibration,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runtime_s": time.perf_counter() - start,
        "groups": {g: groups[g] for g in GROUPS + GPU_GROUPS if g in groups},
    }
    from bench.report import write

    text = write(results, args.out)
    print(text)
    log(f"wrote {args.out / 'results.json'} and results.md in {results['runtime_s']:.0f} s")
    return results


if __name__ == "__main__":
    main()
