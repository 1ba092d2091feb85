"""Local weights for the transformers-based extractors (CLIP, AST): read, hash, load.

Nothing is downloaded. `weights` is either a folder as `save_pretrained` writes it
(config.json and model.safetensors or pytorch_model.bin, possibly sharded) or a single file
(.safetensors, or a torch state dict, plain or under "state_dict"/"model"), which then gets
the default configuration of the architecture (the real ViT-B/32 or AST sizes). The
SHA-256 recorded with the features covers exactly the bytes loaded: for a folder, the hash
of every config and weight file's name and hash, so a changed config is noticed too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from datamodules.errors import DataError
from datamodules.extract.torch_file import (
    load_torch_bytes,
    read_file,
    strip_wrapper_prefixes,
    unwrap_state_dict,
)

CONFIG_FILES = ("config.json", "preprocessor_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def need_transformers(what: str) -> None:
    """A one-line error instead of an ImportError when the `extract` extra is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise DataError(f"{what} needs the transformers package: pip install 'vmr[extract]'") \
            from None


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not p.name.startswith("."))


def weights_sha256(path: str | Path) -> str:
    """The SHA-256 of a weights file, or of a folder's config and weight files together."""
    p = Path(path)
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    if not p.is_dir():
        raise DataError(f"{p}: weights file or folder not found")
    h = hashlib.sha256()
    files = [p / n for n in CONFIG_FILES if (p / n).is_file()] + weight_files(p)
    for f in files:
        h.update(f"{f.name}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def read_config(folder: Path, name: str = "config.json") -> dict[str, Any] | None:
    path = folder / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the configuration ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: the configuration is not a JSON object")
    return data


def _parse(path: Path, data: bytes) -> Mapping[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(data)
        except Exception as e:  # noqa: BLE001 - any parse failure: not a safetensors file
            raise DataError(f"{path}: not a loadable safetensors file ({e})") from None
    obj = unwrap_state_dict(load_torch_bytes(path, data, "weights"))
    if not isinstance(obj, Mapping):
        raise DataError(f"{path}: not a state dict (got a {type(obj).__name__})")
    return obj


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor in a weights file (or in all weight files of a folder) and the SHA-256
    of exactly the bytes read (see `weights_sha256`)."""
    p = Path(path)
    if p.is_dir():
        files = weight_files(p)
        if not files:
            raise DataError(f"{p}: no weight file in the folder (expected model.safetensors "
                            "or pytorch_model.bin)")
    elif p.is_file():
        files = [p]
    else:
        raise DataError(f"{p}: weights file or folder not found")
    state: dict[str, torch.Tensor] = {}
    folder_hash = hashlib.sha256()
    for n in CONFIG_FILES if p.is_dir() else ():
        if (p / n).is_file():
            folder_hash.update(f"{n}\0{hashlib.sha256((p / n).read_bytes()).hexdigest()}\n"
                               .encode())
    digest = ""
    for f in files:
        data = read_file(f, "weights")
        digest = hashlib.sha256(data).hexdigest()
        folder_hash.update(f"{f.name}\0{digest}\n".encode())
        part = _parse(f, data)
        if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in part.items()):
            raise DataError(f"{f}: not a state dict (expected parameter names -> tensors)")
        state.update(part)
    if not state:
        raise DataError(f"{p}: the weights hold no tensors")
    state = strip_wrapper_prefixes(state)
    return state, folder_hash.hexdigest() if p.is_dir() else digest


def load_pretrained(model_cls, config, path: str | Path, what: str,
                    ) -> tuple[torch.nn.Module, str]:
    """`model_cls` with `config`, filled by transformers from the tensors at `path`.

    transformers does the matching (a task model's or a full CLIP model's prefixes, keys
    renamed since older releases); keys the model lacks (a classifier head, CLIP's text
    tower) are ignored. A key the model needs but the file lacks, or one of another shape,
    is a one-line DataError naming `what`. Returns the model and the weights' SHA-256.
    """
    from transformers.utils import logging as hf_logging

    state, digest = read_weights(path)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # no load report or progress bar on the console
    hf_logging.disable_progress_bar()
    try:
        model, info = model_cls.from_pretrained(None, config=config, state_dict=state,
                                                output_loading_info=True)
    except (RuntimeError, ValueError, KeyError) as e:
        raise DataError(f"{path}: does not fit {what} ({_first_line(e)})") from None
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
    missing = sorted(k for k in info["missing_keys"] if not k.endswith("position_ids"))
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise DataError(f"{path}: does not fit {what}: {len(missing)} missing keys"
                        f"{_examples(missing)}, {len(mismatched)} of another shape"
                        f"{_examples(mismatched)}")
    return model.eval(), digest


def load_config(config_cls, path: str | Path, what: str):
    """The configuration next to the weights (a folder's config.json), else the defaults."""
    p = Path(path)
    if not (p.is_dir() and (p / "config.json").is_file()):
        return config_cls()
    try:
        return config_cls.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - bad JSON, wrong model type: one line
        raise DataError(f"{p}/config.json: not a {what} configuration ({_first_line(e)})") \
            from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _examples(keys: list[str], n: int = 3) -> str:
    return f" (e.g. {', '.join(keys[:n])})" if keys else ""
