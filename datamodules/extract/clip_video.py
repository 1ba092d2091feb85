"""CLIP ViT-B/32 frame features: one 512-d image embedding per frame, from local weights.

The network is transformers' `CLIPVisionModelWithProjection` (the image tower and its
projection; the text tower in a full CLIP checkpoint is ignored), filled from a folder
written by `save_pretrained` (its config.json gives the sizes) or from a single state-dict
file (then the ViT-B/32 sizes: patch 32, 224 px, 512-d projection). The embedding is the
projected CLS token, not L2-normalised, as MGSV-EC's released video features are.

Preprocessing is CLIP's, as transformers' `CLIPImageProcessor` does it: resize so the
shortest side is the model's image size (bicubic, antialiased, on uint8 like torchvision),
center crop to a square, scale to [0, 1], normalise with CLIP's mean/std. The resize and
crop run in the decoding worker (uint8, small); the normalisation and the network in the
main process on the accelerator.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF

from datamodules.extract import default_device
from datamodules.extract.hf_weights import load_config, load_pretrained, need_transformers
from datamodules.extract.video_backbone import check_frames

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# A frame budget per decoded file: above it the decoder shrinks frames first (keeping the
# aspect ratio, shortest side still >= 2x the model's input), so a long HD video never sits
# whole in a worker's memory. MGSV-EC's 50 frames of 1080x1920 (311 MB) stay below it.
MAX_DECODE_BYTES = 512 * 1024 * 1024


def _vision_config(weights: Path):
    need_transformers("clip_vit_b32")
    from transformers import CLIPVisionConfig

    # A full CLIP model's config.json gives its image tower's part; no config: ViT-B/32.
    return load_config(CLIPVisionConfig, weights, "CLIP vision")


def resize_and_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [T, 3, H, W] -> uint8 [T, 3, size, size]: shortest side to `size`, center crop."""
    h, w = frames.shape[-2:]
    if min(h, w) != size:
        frames = TF.resize(frames, [size], interpolation=TF.InterpolationMode.BICUBIC,
                           antialias=True)
    return TF.center_crop(frames, [size, size])


class ClipFrameEncoder:
    """CLIP's image tower in eval mode on `device`; `encode`: uint8 frames -> [T, D]."""

    def __init__(self, model: torch.nn.Module, device: torch.device, weights: Path,
                 weights_sha256: str) -> None:
        self.model = model.to(device)
        self.device = device
        self.weights = weights
        self.weights_sha256 = weights_sha256
        self.image_size = int(model.config.image_size)
        self.dim = int(model.config.projection_dim)
        self._mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)

    def pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> the normalised float32 input of the network."""
        if frames.shape[-2:] != (self.image_size, self.image_size):
            frames = resize_and_crop(frames, self.image_size)
        return (frames.to(self.device, torch.float32) / 255.0 - self._mean) / self._std

    def encode(self, frames: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        check_frames(frames, batch_size)
        out = torch.empty((frames.shape[0], self.dim), dtype=torch.float32)
        with torch.inference_mode():
            for start in range(0, frames.shape[0], batch_size):
                x = self.pixel_values(frames[start : start + batch_size])
                out[start : start + x.shape[0]] = self.model(pixel_values=x).image_embeds.cpu()
        return out


def load_clip_encoder(weights: str | os.PathLike, device: torch.device | str | None = None,
                      ) -> ClipFrameEncoder:
    """CLIP's image tower from a local folder or file; DataError (one line) if it does not fit."""
    need_transformers("clip_vit_b32")
    from transformers import CLIPVisionModelWithProjection

    path = Path(weights)
    model, digest = load_pretrained(CLIPVisionModelWithProjection, _vision_config(path), path,
                                    "CLIP's image tower")
    return ClipFrameEncoder(model, torch.device(device or default_device()), path, digest)


def clip_dim(weights: str | os.PathLike) -> int:
    """The embedding size the weights make (512 for ViT-B/32), read from the config only."""
    return int(_vision_config(Path(weights)).projection_dim)


def clip_image_size(weights: str | os.PathLike) -> int:
    return int(_vision_config(Path(weights)).image_size)


@dataclasses.dataclass(frozen=True)
class ClipFramePrepare:
    """Decode at `fps` (in a worker), then CLIP's resize and center crop, still uint8."""

    fps: float
    max_seconds: float
    size: int

    def __call__(self, path: Path) -> torch.Tensor:
        from datamodules.extract.decode import decode_video_frames, probe

        info = probe(path)
        return resize_and_crop(decode_video_frames(path, fps=self.fps, max_seconds=self.max_seconds,
                                                   size=self._decode_size(info)), self.size)

    def _decode_size(self, info) -> tuple[int, int] | None:
        """None (native size) unless the frames would exceed MAX_DECODE_BYTES."""
        if not (info.width and info.height):
            return None
        seconds = min(info.duration or self.max_seconds, self.max_seconds)
        frames = int(seconds * self.fps) + 1
        if frames * info.width * info.height * 3 <= MAX_DECODE_BYTES:
            return None
        short = min(info.width, info.height)
        scale = max(2 * self.size / short,
                    (MAX_DECODE_BYTES / (frames * info.width * info.height * 3)) ** 0.5)
        if scale >= 1:
            return None
        return (max(self.size, round(info.height * scale)),
                max(self.size, round(info.width * scale)))
