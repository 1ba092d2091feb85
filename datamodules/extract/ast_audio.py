"""Audio Spectrogram Transformer embeddings: one 768-d vector per window, from local weights.

The windows are MGSV-EC's: window k is the 10 s of audio centred at k * hop seconds
(hop 2.5 s by default), cut to [0, max_seconds] (240 s), so the first windows are shorter;
a track ending inside a window is continued by silence. Window k exists while its centre
lies inside the track (k * hop <= duration), so a track of d seconds gives
min(floor(d / hop) + 1, floor(max_seconds / hop)) rows: 96 at most with the defaults.

Each window becomes transformers' `ASTFeatureExtractor` input (Kaldi fbank, 128 mel bins,
zero-padded or cut to the model's `max_length` frames, normalised with the AudioSet
mean/std; a `preprocessor_config.json` next to the weights overrides these); the embedding
is `ASTModel`'s pooled output, the mean of the CLS and distillation tokens after the final
LayerNorm. The fbank runs in the decoding worker, the transformer on the accelerator.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import torch

from datamodules.errors import DataError
from datamodules.extract import default_device
from datamodules.extract.hf_weights import (
    load_config,
    load_pretrained,
    need_transformers,
    read_config,
)

AST_SAMPLE_RATE = 16_000
WINDOW_SECONDS = 10.0
HOP_SECONDS = 2.5
MAX_SECONDS = 240.0
_EXTRACTOR_KEYS = ("num_mel_bins", "max_length", "padding_value", "do_normalize", "mean",
                   "std")


def window_bounds(n_samples: int, hop: float = HOP_SECONDS, window: float = WINDOW_SECONDS,
                  max_seconds: float = MAX_SECONDS, sample_rate: int = AST_SAMPLE_RATE,
                  ) -> list[tuple[int, int]]:
    """[start, stop) sample indices of each window (stop may pass the track's end)."""
    if not (hop > 0 and window > 0 and max_seconds >= hop):
        raise DataError(f"AST windows: hop={hop}, window={window}, max_seconds={max_seconds}: "
                        "need hop > 0, window > 0 and max_seconds >= hop")
    duration = n_samples / sample_rate
    count = min(math.floor(duration / hop) + 1, math.floor(max_seconds / hop))
    bounds = []
    for k in range(max(count, 1)):
        start = max(0.0, k * hop - window / 2)
        stop = min(max_seconds, k * hop + window / 2)
        bounds.append((round(start * sample_rate), round(stop * sample_rate)))
    return bounds


def cut_windows(y: np.ndarray, hop: float = HOP_SECONDS, window: float = WINDOW_SECONDS,
                max_seconds: float = MAX_SECONDS) -> list[np.ndarray]:
    """The waveform's windows, each continued by zeros past the end of the track."""
    bounds = window_bounds(len(y), hop, window, max_seconds)
    padded = np.zeros(max(stop for _, stop in bounds), dtype=np.float32)
    n = min(len(y), len(padded))
    padded[:n] = y[:n]
    return [padded[a:b] for a, b in bounds]


def _model_config(weights: Path):
    need_transformers("AST features")
    from transformers import ASTConfig

    # No config.json: AST-base's sizes (768-d, 1024 frames, 128 mel bins, stride 10).
    return load_config(ASTConfig, weights, "AST")


def feature_extractor(weights: str | os.PathLike):
    """The fbank settings of these weights: preprocessor_config.json, else the model's sizes."""
    need_transformers("AST features")
    from transformers import ASTFeatureExtractor

    path = Path(weights)
    config = _model_config(path)
    settings = {"num_mel_bins": config.num_mel_bins, "max_length": config.max_length}
    pre = read_config(path, "preprocessor_config.json") if path.is_dir() else None
    if pre is not None:
        if pre.get("sampling_rate", AST_SAMPLE_RATE) != AST_SAMPLE_RATE:
            raise DataError(f"{path}/preprocessor_config.json: sampling_rate "
                            f"{pre['sampling_rate']}, this extractor decodes at "
                            f"{AST_SAMPLE_RATE} Hz")
        settings.update({k: pre[k] for k in _EXTRACTOR_KEYS if k in pre})
    return ASTFeatureExtractor(sampling_rate=AST_SAMPLE_RATE, **settings)


@dataclasses.dataclass(frozen=True)
class ASTPrepare:
    """A file -> its windows' normalised fbanks, float32 [windows, max_length, mel bins]."""

    weights: str
    hop: float = HOP_SECONDS
    window: float = WINDOW_SECONDS
    max_seconds: float = MAX_SECONDS

    def __call__(self, path: Path) -> np.ndarray:
        from datamodules.extract.decode import decode_audio

        y = decode_audio(path, AST_SAMPLE_RATE, max_seconds=self.max_seconds)
        return self.fbanks(y)

    def fbanks(self, y: np.ndarray) -> np.ndarray:
        extractor = _cached_extractor(self.weights)
        windows = cut_windows(y, self.hop, self.window, self.max_seconds)
        out = extractor(windows, sampling_rate=AST_SAMPLE_RATE, return_tensors="np")
        return np.asarray(out["input_values"], dtype=np.float32)


_EXTRACTORS: dict[str, object] = {}


def _cached_extractor(weights: str):
    if weights not in _EXTRACTORS:  # one per worker process, built on its first file
        _EXTRACTORS[weights] = feature_extractor(weights)
    return _EXTRACTORS[weights]


class ASTEncoder:
    """ASTModel in eval mode on `device`; `__call__`: fbanks [N, T, F] -> float32 [N, D]."""

    def __init__(self, model: torch.nn.Module, device: torch.device, weights: Path,
                 weights_sha256: str, batch_size: int = 16) -> None:
        self.model = model.to(device)
        self.device = device
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.dim = int(model.config.hidden_size)
        self.batch_size = batch_size

    def __call__(self, fbanks: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.as_tensor(fbanks, dtype=torch.float32)
        out = torch.empty((x.shape[0], self.dim), dtype=torch.float32)
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch_size):
                batch = x[start : start + self.batch_size].to(self.device)
                out[start : start + batch.shape[0]] = self.model(batch).pooler_output.cpu()
        return out.numpy()


def load_ast_encoder(weights: str | os.PathLike, device: torch.device | str | None = None,
                     batch_size: int = 16) -> ASTEncoder:
    """ASTModel from a local folder or file; DataError (one line) if it does not fit."""
    need_transformers("AST features")
    from transformers import ASTModel

    path = Path(weights)
    model, digest = load_pretrained(ASTModel, _model_config(path), path, "the AST model")
    return ASTEncoder(model, torch.device(device or default_device()), path, digest, batch_size)


def ast_dim(weights: str | os.PathLike) -> int:
    return int(_model_config(Path(weights)).hidden_size)
