"""Global random-number states in checkpoints: a resumed run draws what an uninterrupted one would.

Dropout, span mixing and every other draw from torch / numpy / `random` continue from the
checkpoint instead of from the seed. The states are restored when Lightning loads callback
state, which is after the model is built (its initialisation draws) and before the first
training batch; the sanity check Lightning runs in between is skipped on resume and runs in
an isolated RNG anyway. Saved by rank 0 and restored on every rank: seed_everything gives
all ranks the same stream, and they draw alike. The CUDA state is the current device's.
Everything is stored as plain tensors and ints, so checkpoints load with weights_only=True.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from pytorch_lightning.callbacks import Callback


class RNGState(Callback):
    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        n = state_dict["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                             n["has_gauss"], n["gauss"]))
        p = state_dict["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"])
