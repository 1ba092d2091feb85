"""Losses run in float32 whatever the training precision (bf16-mixed, fp16)."""

from __future__ import annotations

import contextlib

import torch

HALF = (torch.float16, torch.bfloat16)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half precision -> float32; float32/float64 unchanged (float64 is kept for tests)."""
    return x.float() if x.dtype in HALF else x


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast (e.g. Lightning's bf16-mixed) so the loss really runs in float32."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()
