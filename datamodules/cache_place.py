"""Where a run's store splits live while training: `data.cache` resolved to a place.

`device` (GPU memory, datamodules.device_store), `host` (RAM, the same batching there) or
`none` (the memory-mapped store files, read in DataLoader workers); `auto` picks by the
splits' size against the free memory of each.
"""

from __future__ import annotations

import torch

from datamodules.feature_store import StoreSplit


def split_nbytes(split: StoreSplit) -> int:
    """Bytes the split's frame arrays take in memory, as stored."""
    return int(sum(a.nbytes for a in split.arrays.values()))


CACHE_MODES = ("auto", "device", "host", "none")


def available_host_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none, e.g. macOS)."""
    return meminfo_bytes("MemAvailable")


def meminfo_bytes(field: str) -> int | None:
    """A /proc/meminfo field in bytes (None where there is no such file or field)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def choose_cache(mode: str, fraction: float, nbytes: int, device: torch.device) -> str:
    """Where the splits live: "device", "host" or "none" (memory-mapped, as stored on disk).

    `auto`: on the device when `nbytes` fit in `fraction` of its free memory (CUDA; on a CPU
    device that is host memory), else in host memory when they fit in `fraction` of the
    available RAM, else memory-mapped. `device` on a CPU device is `host`.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"data.cache={mode!r} must be one of {', '.join(CACHE_MODES)}")
    if mode == "none":
        return "none"
    if mode in ("device", "host"):
        return "device" if mode == "device" and device.type != "cpu" else "host"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= fraction * free:
            return "device"
    host = available_host_bytes()
    return "host" if host is None or nbytes <= fraction * host else "none"
