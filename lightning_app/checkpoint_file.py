"""Reading a trained checkpoint: its weights and the run record it carries.

train() stores the resolved config and the dataset's extractor record in every checkpoint
(`checkpoint["vmr"]`, see models.base.RetrievalModule). Checkpoints written before that fall
back to the run folder's `config.yaml` (`<run>/checkpoints/x.ckpt` -> `<run>/config.yaml`).
`vmr retrieve` and `vmr eval` both start here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path
from typing import Any

import torch
import yaml

from datamodules.errors import DataError


@dataclasses.dataclass
class CheckpointFile:
    path: Path
    state_dict: dict[str, torch.Tensor]
    record: dict[str, Any]  # {"config": resolved config dict, "extractor": record or None}
    sha256: str


def read_checkpoint(path: str | Path) -> CheckpointFile:
    """The checkpoint at `path`, read once (weights, run record and SHA-256 of the bytes).

    Raises DataError with one line for a missing file, a file that is not a readable
    checkpoint, and a checkpoint without a config anywhere.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise DataError(f"{path}: checkpoint not found") from None
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and torch errors alike
        raise DataError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(f"{path}: not a Lightning checkpoint (no state_dict)")
    rec = ckpt.get("vmr")
    if rec is None:  # older checkpoints: the run folder's config.yaml
        cfg_file = path.parent.parent / "config.yaml"
        if not cfg_file.exists():
            raise DataError(f"{path}: the checkpoint carries no config and {cfg_file} "
                            "does not exist")
        rec = {"config": yaml.safe_load(cfg_file.read_text()), "extractor": None}
    return CheckpointFile(path, ckpt["state_dict"], rec, hashlib.sha256(data).hexdigest())
