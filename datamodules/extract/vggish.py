"""VGGish: one 128-d embedding per 0.96 s of audio, optionally PCA'd and quantised as
YouTube-8M released its audio features (II-CLVM's native music input).

torchaudio 2.11 no longer ships its VGGish pipeline (`torchaudio.prototype` is gone), so the
architecture and its input processing are written out here, with the same parameter names
(`features_network.*`, `embedding_network.*`): a state dict saved from torchaudio's VGGISH
bundle loads as it is; one from the torchvggish port (`features.*`, `embeddings.*`) too.

Input: the waveform at 16 kHz, mono; 25 ms periodic-Hann frames every 10 ms, |rFFT| with
512 bins, 64 HTK-mel bands from 125 to 7500 Hz (the DC bin weighted 0), log(mel + 0.01);
examples of 96 frames (0.96 s) without overlap. A track shorter than one example is
zero-padded to one, so every file gives at least one row.

Network: four VGG blocks (3x3 convolutions 64, 128, 256x2, 512x2, each block ending in a 2x2
max-pool), the [512, 6, 4] map flattened in TensorFlow's (height, width, channel) order,
then 4096-4096-128 fully connected layers, each followed by a ReLU.

Post-processing (`--pca FILE`): y = (x - pca_means) @ pca_eigen_vectors.T with the parameters
of the AudioSet release (`vggish_pca_params.npz`, or a torch file with the same two keys),
then clipped to [-2, 2] and quantised to 256 levels with the project's `quantize`.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datamodules.errors import DataError
from datamodules.extract import default_device
from datamodules.extract.torch_file import load_torch_bytes, read_file

VGGISH_SAMPLE_RATE = 16_000
VGGISH_DIM = 128
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
FFT = 512
MEL_BANDS = 64
MEL_MIN_HZ, MEL_MAX_HZ = 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s, no overlap
_MIN_SAMPLES = WINDOW + (EXAMPLE_FRAMES - 1) * HOP  # one whole example
_RENAMES = (("features.", "features_network."), ("embeddings.", "embedding_network."))


class VGGishNetwork(nn.Module):
    """[N, 1, 96, 64] log-mel examples -> [N, 128] embeddings (after the last ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout, convs in ((1, 64, 1), (64, 128, 1), (128, 256, 2), (256, 512, 2)):
            for i in range(convs):
                layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1),
                           nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2, 2))
        self.features_network = nn.Sequential(*layers)
        self.embedding_network = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096), nn.ReLU(True),
            nn.Linear(4096, VGGISH_DIM), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features_network(x).permute(0, 2, 3, 1)  # TensorFlow's NHWC flattening
        return self.embedding_network(x.reshape(x.shape[0], -1))


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log(1.0 + hz / 700.0)


def mel_matrix() -> torch.Tensor:
    """[257, 64] HTK triangles, linear in mel, from 125 to 7500 Hz; the DC row is zero."""
    bins_mel = _hz_to_mel(torch.linspace(0.0, VGGISH_SAMPLE_RATE / 2, FFT // 2 + 1,
                                         dtype=torch.float64))
    edges = torch.linspace(float(_hz_to_mel(torch.tensor(MEL_MIN_HZ, dtype=torch.float64))),
                           float(_hz_to_mel(torch.tensor(MEL_MAX_HZ, dtype=torch.float64))),
                           MEL_BANDS + 2, dtype=torch.float64)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[0] = 0.0
    return weights.float()


_MEL = mel_matrix()


def vggish_examples(y: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Mono 16-kHz waveform -> float32 [N, 1, 96, 64] log-mel examples (N >= 1)."""
    y = torch.as_tensor(y, dtype=torch.float32).flatten()
    if y.numel() < _MIN_SAMPLES:
        y = torch.nn.functional.pad(y, (0, _MIN_SAMPLES - y.numel()))
    frames = y.unfold(0, WINDOW, HOP)
    window = torch.hann_window(WINDOW, periodic=True, dtype=torch.float32)
    magnitude = torch.fft.rfft(frames * window, FFT).abs()
    log_mel = torch.log(magnitude @ _MEL + LOG_OFFSET)
    n = (log_mel.shape[0] - EXAMPLE_FRAMES) // EXAMPLE_FRAMES + 1
    return log_mel[: n * EXAMPLE_FRAMES].reshape(n, 1, EXAMPLE_FRAMES, MEL_BANDS).contiguous()


def load_vggish(weights: str | os.PathLike, device: torch.device | str | None = None,
                ) -> tuple[VGGishNetwork, str]:
    """The network from a local state dict (torchaudio's or torchvggish's names) + its SHA-256."""
    from datamodules.extract.hf_weights import read_weights

    path = Path(weights)
    if not path.is_file():
        raise DataError(f"{path}: VGGish weights file not found")
    state, digest = read_weights(path)
    state = {canonical_name(k): v for k, v in state.items()}
    model = VGGishNetwork()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise DataError(f"{path}: does not fit VGGish: {len(missing)} missing keys"
                        f"{_examples(missing)}, {len(unexpected)} unexpected keys"
                        f"{_examples(unexpected)}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise DataError(f"{path}: does not fit VGGish: {k} has shape {list(v.shape)}, "
                            f"expected {list(expected[k].shape)}")
    model.load_state_dict(state)
    return model.eval().to(device or default_device()), digest


def canonical_name(key: str) -> str:
    """torchvggish's parameter names -> torchaudio's (the ones this network uses)."""
    for old, new in _RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def load_vggish_pca(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(pca_eigen_vectors [128, 128], pca_means [128]) from an .npz or a torch file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: VGGish PCA file not found")
    data = read_file(p, "VGGish PCA")  # read once: the format is told from its first bytes
    if data[:2] == b"PK" and p.suffix == ".npz":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                params = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as e:
            raise DataError(f"{p}: corrupt VGGish PCA file ({e})") from None
    else:
        params = load_torch_bytes(p, data, "VGGish PCA")
        if not isinstance(params, dict):
            raise DataError(f"{p}: not a VGGish PCA file (expected a dict of arrays)")
    try:
        vectors = np.asarray(params["pca_eigen_vectors"], dtype=np.float64)
        means = np.asarray(params["pca_means"], dtype=np.float64).reshape(-1)
    except KeyError as e:
        raise DataError(f"{p}: not a VGGish PCA file: no {e.args[0]!r} array") from None
    if vectors.shape != (VGGISH_DIM, VGGISH_DIM) or means.shape != (VGGISH_DIM,):
        raise DataError(f"{p}: VGGish PCA shapes {list(vectors.shape)} and {list(means.shape)}"
                        f", expected [{VGGISH_DIM}, {VGGISH_DIM}] and [{VGGISH_DIM}]")
    if not (np.isfinite(vectors).all() and np.isfinite(means).all()):
        raise DataError(f"{p}: VGGish PCA parameters hold NaN or inf")
    return vectors, means


def postprocess(embeddings: np.ndarray, vectors: np.ndarray, means: np.ndarray,
                codes: bool = False) -> np.ndarray:
    """YouTube-8M's audio features: PCA, clip to [-2, 2], 256 levels (dequantised unless
    `codes`)."""
    from datamodules.extract.pca import quantize
    from datamodules.tfrecord import dequantize

    projected = (np.asarray(embeddings, np.float64) - means) @ vectors.T
    q = quantize(projected)
    return q if codes else dequantize(q).astype(np.float32)


def seconds_to_rows(seconds: float) -> int:
    """Rows VGGish gives for `seconds` of audio (at least one)."""
    frames = 1 + (round(seconds * VGGISH_SAMPLE_RATE) - WINDOW) // HOP
    return max(1, math.floor(frames / EXAMPLE_FRAMES))


def _examples(keys: list[str], n: int = 3) -> str:
    return f" (e.g. {', '.join(keys[:n])})" if keys else ""
