"""Reading torch.save files safely: one place for the read, the weights_only load and the
one-line reasons, shared by every loader of weights or parameters in datamodules/extract/."""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from datamodules.errors import DataError

# DataParallel/DDP and torch.compile wrap parameter names in these prefixes.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_file(path: Path, what: str) -> bytes:
    """The file's bytes; a missing or unreadable file is one line naming `what`."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except OSError as e:
        raise DataError(f"{path}: {what} file not readable ({e.strerror or e})") from None


def load_torch_bytes(path: Path, data: bytes, what: str) -> object:
    """torch.load(weights_only=True) of a file's bytes; each way it can fail is one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4" notes on foreign files
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"{path}: not a loadable torch {what} file (it holds objects other "
                        "than tensors, refused by weights_only=True)") from None
    except RuntimeError:
        raise DataError(f"{path}: not a loadable torch {what} file (corrupt or truncated "
                        "archive)") from None
    except Exception:  # noqa: BLE001 - any other parse failure: the bytes are not a torch file
        raise DataError(f"{path}: not a loadable torch {what} file (not a torch.save "
                        "file)") from None


def unwrap_state_dict(obj: object) -> object:
    """A checkpoint's parameters when they sit under 'state_dict' or 'model', else `obj`."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
    return obj


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter names without a prefix that every one of them carries (see WRAPPER_PREFIXES)."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state
