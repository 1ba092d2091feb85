"""The machine a benchmark ran on: CPU, flags, memory, load, library versions, thread pools."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np
import torch

GiB = 2**30


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def thread_pools() -> list[dict[str, Any]]:
    """The BLAS/OpenMP pools loaded in this process and their thread counts (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return []
    keep = ("internal_api", "num_threads", "architecture", "version", "filepath")
    pools = []
    for info in threadpool_info():
        row = {k: info.get(k) for k in keep if info.get(k) is not None}
        path = str(row.get("filepath", ""))
        row["filepath"] = os.path.join(os.path.basename(os.path.dirname(path)),
                                       os.path.basename(path))
        pools.append(row)
    return pools


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or platform.machine()


def _mem_total() -> int | None:
    from datamodules.cache_place import meminfo_bytes

    return meminfo_bytes("MemTotal")


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f in ("avx2", "avx512f", "fma", "amx_tile"))
    except OSError:  # pragma: no cover
        pass
    return []


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except ImportError:
        return None
    return getattr(mod, "__version__", "?")


def machine(threads: int) -> dict[str, Any]:
    mem = _mem_total()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "cpus_available": default_threads(),
        "memory_gib": round(mem / GiB, 1) if mem else None,
        "load_average_at_start": load,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "faiss": _version("faiss"),
        "torchmetrics": _version("torchmetrics"),
        "pytorch_lightning": _version("pytorch_lightning"),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "thread_pools": thread_pools(),
    }


def describe_machine(m: dict[str, Any]) -> str:
    flags = "/".join(m.get("cpu_flags") or []) or "?"
    load = m.get("load_average_at_start")
    return (f"{m['cpu']} ({flags}), {m['cpus_available']} of {m['logical_cpus']} logical CPUs "
            f"available, {m['memory_gib']} GiB RAM, {m['os']}; load average at start "
            f"{load}; Python {m['python']}, torch {m['torch']}, NumPy {m['numpy']}, "
            f"faiss {m['faiss']}, torchmetrics {m['torchmetrics']}, "
            f"pytorch-lightning {m['pytorch_lightning']}; {m['threads']} threads everywhere")
