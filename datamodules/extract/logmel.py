"""Frame-sequence audio features: 128-band log-mel energies averaged per second (1 Hz).

The sequence models (II-CLVM, SSVMR) read one 128-d audio vector per second, the rate and
width of YouTube-8M's audio features. YouTube-8M used VGGish embeddings of 0.96-s log-mel
patches; this is the plain log-mel part of that recipe, computed with torchaudio on any
device, so raw media can be turned into sequences without a pretrained audio network.

Per 10-ms frame (16 kHz input): a 25-ms Hann window (400 samples, zero-padded to a 512-point
FFT), frames centred on t = i * 10 ms with zeros beyond both ends, power spectrum, 128
Slaney-scale mel bands over 0-8 kHz with Slaney area normalisation (librosa's default
filterbank), then natural log(mel + 1e-6). Row s of the output is the mean of the frames
centred in [s, s + 1) seconds. There are round-half-up(seconds) rows, at least one: a
trailing partial second is kept when it lasts at least half a second (its row averages the
frames it has) and dropped otherwise.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import torch
import torchaudio

from datamodules.errors import DataError
from datamodules.extract import default_device
from datamodules.extract.decode import check_waveform, decode_audio

LOGMEL_SAMPLE_RATE = 16000
LOGMEL_DIM = 128
WIN_LENGTH = 400  # 25 ms
N_FFT = 512
HOP = 160  # 10 ms
FRAMES_PER_SECOND = LOGMEL_SAMPLE_RATE // HOP  # 100
F_MIN, F_MAX = 0.0, LOGMEL_SAMPLE_RATE / 2
LOG_OFFSET = 1e-6


def n_rows(n_samples: int, sample_rate: int = LOGMEL_SAMPLE_RATE) -> int:
    """Output rows for `n_samples`: whole seconds, plus a last part of >= 0.5 s; at least 1."""
    return max(1, (2 * n_samples + sample_rate) // (2 * sample_rate))


def _as_tensor(waveform: np.ndarray | torch.Tensor, source: str) -> torch.Tensor:
    if isinstance(waveform, torch.Tensor):
        # Checked where it lies, so a waveform already on the GPU stays there.
        if waveform.ndim != 1:
            raise DataError(f"{source}: expected a mono waveform [samples], "
                            f"got shape {tuple(waveform.shape)}")
        if waveform.numel() == 0:
            raise DataError(f"{source}: empty waveform (no samples)")
        if not bool(torch.isfinite(waveform).all()):
            raise DataError(f"{source}: waveform holds NaN or infinite samples")
        return waveform.to(torch.float32)
    return torch.from_numpy(check_waveform(waveform, source))


class LogMelExtractor:
    """Callable: mono 16-kHz waveform -> float32 [rows, 128] per-second log-mel means.

    Holds the torchaudio transform on `device` (default: CUDA when available, else CPU);
    inputs may be numpy arrays or tensors on any device, outputs are numpy on the CPU.
    """

    def __init__(self, device: str | torch.device | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=LOGMEL_SAMPLE_RATE,
            n_fft=N_FFT,
            win_length=WIN_LENGTH,
            hop_length=HOP,
            f_min=F_MIN,
            f_max=F_MAX,
            n_mels=LOGMEL_DIM,
            power=2.0,
            center=True,
            pad_mode="constant",
            norm="slaney",
            mel_scale="slaney",
        ).to(self.device)

    @torch.inference_mode()
    def frames(self, waveform: np.ndarray | torch.Tensor, source: str = "waveform") -> torch.Tensor:
        """Log-mel of every 10-ms frame, [1 + samples // 160, 128], on `self.device`."""
        y = _as_tensor(waveform, source).to(self.device)
        return torch.log(self.mel(y) + LOG_OFFSET).T

    def __call__(self, waveform: np.ndarray | torch.Tensor, source: str = "waveform") -> np.ndarray:
        frames = self.frames(waveform, source)
        return _per_second(frames, int(waveform.shape[-1]))

    @torch.inference_mode()
    def batch(self, waveforms: Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
        """`[self(w) for w in waveforms]` in one transform call on the zero-padded batch.

        The same numbers as one at a time (up to float rounding): centred frames already
        see zeros past each waveform's end.
        """
        ys = [_as_tensor(w, f"waveform {i}").to(self.device) for i, w in enumerate(waveforms)]
        if not ys:
            return []
        padded = torch.nn.utils.rnn.pad_sequence(ys, batch_first=True)
        logmel = torch.log(self.mel(padded) + LOG_OFFSET).transpose(1, 2)
        return [_per_second(logmel[i, : 1 + len(y) // HOP], len(y)) for i, y in enumerate(ys)]


def _per_second(frames: torch.Tensor, n_samples: int) -> np.ndarray:
    """Mean of the frames centred in each second; rows as `n_rows` says."""
    rows = n_rows(n_samples)
    frames = frames[: rows * FRAMES_PER_SECOND]
    index = torch.arange(frames.shape[0], device=frames.device) // FRAMES_PER_SECOND
    sums = torch.zeros(rows, frames.shape[1], device=frames.device, dtype=frames.dtype)
    sums.index_add_(0, index, frames)
    counts = torch.bincount(index, minlength=rows).to(frames.dtype)
    return (sums / counts[:, None]).cpu().numpy().astype(np.float32, copy=False)


@functools.lru_cache(maxsize=1)
def _shared_extractor() -> LogMelExtractor:
    return LogMelExtractor()


def logmel_features_from_file(
    path: str | os.PathLike,
    extractor: LogMelExtractor | None = None,
    max_seconds: float | None = None,
) -> np.ndarray:
    """Per-second log-mel [rows, 128] of `path`'s audio (decoded mono at 16 kHz).

    `extractor` defaults to one shared extractor on the default device; `max_seconds` stops
    decoding there. Raises MediaError (a DataError) for a file that cannot be decoded.
    """
    y = decode_audio(path, LOGMEL_SAMPLE_RATE, max_seconds=max_seconds)
    return (extractor or _shared_extractor())(y, source=str(path))
