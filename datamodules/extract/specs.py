"""What an extraction did, as data: recorded with a dataset and replayed at retrieval time.

`vmr build-dataset` writes the two specs to `<dataset>/extractor.json`; training copies the
record into the checkpoint; `vmr retrieve` rebuilds the same extractor from it, so a query
video goes through exactly the network, weights, frame rate, PCA and quantisation the
model was trained on. Files the record points to (CNN weights, PCA) are checked against
their SHA-256 before use.

Each spec splits extraction into `prepare` (per file, CPU, runs in worker processes:
decoding, librosa statistics) and `finish` (in the main process, on the accelerator:
CNN, log-mel, PCA).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.errors import DataError
from datamodules.extract import default_device
from datamodules.extract.specs_audio import AUDIO_FEATURES, AudioSpec  # noqa: F401 (re-export)
from datamodules.feature_store import sha256_file

RECORD_VERSION = 1


# ----- video -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    backbone: str = "inception_v3"
    weights: str = ""  # local file with the CNN's state dict
    weights_sha256: str = ""
    image_size: int = 0  # 0: the backbone's own (299 Inception, 224 ResNet)
    fps: float = 1.0
    max_seconds: float = 360.0
    pca: str = ""  # PCA whitening file ("" = raw 2048-d CNN features)
    pca_sha256: str = ""
    quantize: bool = False  # YouTube-8M uint8 precision (stored dequantised)
    batch_size: int = 64  # frames per CNN forward pass

    @property
    def is_clip(self) -> bool:
        from datamodules.extract.video_backbone import CLIP_BACKBONES

        return self.backbone in CLIP_BACKBONES

    @property
    def size(self) -> int:
        if self.is_clip:  # the model's own input size: its position embeddings fix it
            from datamodules.extract.clip_video import clip_image_size

            return clip_image_size(self.weights)
        from datamodules.extract.video_backbone import DEFAULT_IMAGE_SIZE

        return self.image_size or DEFAULT_IMAGE_SIZE[self.backbone]

    @property
    def dim(self) -> int:
        if self.pca:
            return load_pca(self).output_dim
        if self.is_clip:
            from datamodules.extract.clip_video import clip_dim

            return clip_dim(self.weights)
        from datamodules.extract.video_backbone import FEATURE_DIM

        return FEATURE_DIM

    def prepare(self) -> Callable[[Path], Any]:
        if self.is_clip:
            from datamodules.extract.clip_video import ClipFramePrepare

            return ClipFramePrepare(self.fps, self.max_seconds, self.size)
        return _FramePrepare(self.fps, self.max_seconds, self.size)

    def load_encoder(self, device: torch.device | None = None) -> Any:
        """The network (a FrameEncoder or ClipFrameEncoder), its weights checked against the
        recorded SHA-256."""
        from datamodules.extract.video_backbone import load_frame_encoder

        enc = load_frame_encoder(self.backbone, self.weights, device=device or default_device(),
                                 image_size=self.size)
        # The encoder hashed exactly the bytes it loaded: no second read of the file.
        if self.weights_sha256 and enc.weights_sha256 != self.weights_sha256:
            what = "CLIP weights" if self.is_clip else "CNN weights"
            raise DataError(_changed(self.weights, what, self.weights_sha256))
        return enc

    def encoder(self, device: torch.device | None = None,
                loaded: Any = None) -> Callable[[torch.Tensor], np.ndarray]:
        """Frames -> raw [T, D] features (before PCA); `loaded`: a frame encoder."""
        enc = loaded or self.load_encoder(device)
        return lambda frames: enc.encode(frames, batch_size=self.batch_size).numpy()

    def project(self, codes: bool = False) -> Callable[[np.ndarray], np.ndarray]:
        """Raw CNN features -> stored features (PCA whitening, optional quantisation).

        Quantised features come back dequantised (float32 with uint8 precision), which is
        what the dataset layouts store; `codes=True` returns the uint8 codes themselves.
        """
        from datamodules.extract.pca import quantize as to_codes
        from datamodules.tfrecord import dequantize

        pca = load_pca(self) if self.pca else None
        quantize = self.quantize

        def apply(raw: np.ndarray) -> np.ndarray:
            x = pca.transform(raw) if pca is not None else np.asarray(raw, np.float32)
            if quantize:
                q = to_codes(x)
                return q if codes else dequantize(q).astype(np.float32)
            return np.asarray(x, dtype=np.float32)

        return apply

    def finish(self, device: torch.device | None = None) -> Callable[[Any], np.ndarray]:
        encode, project = self.encoder(device), self.project()
        return lambda frames: project(encode(frames))


def load_pca(spec: VideoSpec) -> Any:
    from datamodules.extract.pca import PCAWhitening

    check_sha256(spec.pca, spec.pca_sha256, "PCA")
    return PCAWhitening.load(spec.pca)


@dataclasses.dataclass(frozen=True)
class _FramePrepare:
    """Decode at `fps`, resized to the CNN's input size by the decoder itself (in the worker):
    six minutes of HD video never sit in memory at full size, and less travels back."""

    fps: float
    max_seconds: float
    size: int

    def __call__(self, path: Path) -> torch.Tensor:
        from datamodules.extract.decode import decode_video_frames

        return decode_video_frames(path, fps=self.fps, max_seconds=self.max_seconds,
                                   size=(self.size, self.size))


def file_sha256(path: str, what: str) -> str:
    """The SHA-256 of a file the extraction needs; a one-line error when it is missing."""
    if not Path(path).is_file():
        raise DataError(f"{path}: {what} file not found")
    return sha256_file(path)


def check_sha256(path: str, expected: str, what: str) -> None:
    digest = file_sha256(path, what)
    if expected and digest != expected:
        raise DataError(_changed(path, what, expected))


def _changed(path: str, what: str, expected: str) -> str:
    return (f"{path}: {what} file changed since the features were extracted (sha256 differs "
            f"from the recorded {expected[:12]}...)")


# ----- the record ----------------------------------------------------------------------------


def record(video: VideoSpec | None, audio: AudioSpec | None, **extra: Any) -> dict:
    return {"version": RECORD_VERSION,
            "video": dataclasses.asdict(video) if video else None,
            "music": dataclasses.asdict(audio) if audio else None, **extra}


def specs_from_record(rec: dict, where: str) -> tuple[VideoSpec | None, AudioSpec | None]:
    """The specs back from a record (extractor.json or a checkpoint); errors name `where`."""
    if not isinstance(rec, dict) or rec.get("version") != RECORD_VERSION:
        raise DataError(f"{where}: not an extractor record of version {RECORD_VERSION}")
    try:
        video = VideoSpec(**rec["video"]) if rec.get("video") else None
        audio = AudioSpec(**rec["music"]) if rec.get("music") else None
    except TypeError as e:
        raise DataError(f"{where}: bad extractor record ({e})") from None
    return video, audio


def read_record(path: str | Path) -> dict:
    p = Path(path)
    try:
        rec = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: extractor record not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{p}: cannot read extractor record ({e})") from None
    specs_from_record(rec, str(p))  # validate now
    return rec


EXTRACTOR_FILE = "extractor.json"


def dataset_extractor(root: str | Path) -> dict | None:
    """The extractor record of a dataset built by `vmr build-dataset` (None for others)."""
    path = Path(root) / EXTRACTOR_FILE
    return read_record(path) if path.exists() else None
