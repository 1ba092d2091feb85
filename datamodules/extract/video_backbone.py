"""Frame encoder: a torchvision CNN from a local weights file -> one 2048-d vector per frame.

YouTube-8M's frame features are the 2048-d pooled activations of Inception-v3 (before PCA);
ResNet-50's pooled features have the same size and are a common substitute. Nothing is
downloaded: the network is built with `weights=None` and filled from a file the user
supplies (a plain state dict, or a checkpoint holding it under "state_dict" or "model";
a DataParallel/DDP "module." or torch.compile "_orig_mod." prefix is stripped). The
classifier (`fc.*`) and Inception's auxiliary head (`AuxLogits.*`) may be in the file or
not: both are ignored (the classifier is replaced by the identity, the aux head not built).
Old torchvision files without BatchNorm `num_batches_tracked` counters load too.

Input pipeline, as torchvision's pretrained weights expect: uint8 RGB frames scaled to [0, 1],
resized (bilinear, antialiased, aspect ratio not kept, as the YouTube-8M extractor did) to
`image_size` x `image_size`, normalised with the ImageNet mean/std. Inception-v3 is built
with `transform_input=True`, as torchvision does for its pretrained Inception weights (a port
of Google's, which expect inputs in [-1, 1]): features from this module match
`torchvision.models.inception_v3(weights=...)` with fc removed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from datamodules.errors import DataError
from datamodules.extract import default_device
from datamodules.extract.torch_file import (
    load_torch_bytes,
    read_file,
    strip_wrapper_prefixes,
    unwrap_state_dict,
)

CNN_BACKBONES = ("inception_v3", "resnet50")
# Transformer backbones with their own loader and preprocessing (datamodules/extract/clip_video.py).
CLIP_BACKBONES = ("clip_vit_b32",)
BACKBONES = CNN_BACKBONES + CLIP_BACKBONES
FEATURE_DIM = 2048
DEFAULT_IMAGE_SIZE = {"inception_v3": 299, "resnet50": 224}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_IMAGE_SIZE = {"inception_v3": 75, "resnet50": 32}
# Keys that may be in the file or not, and are never used: the classifier, Inception's aux head.
_OPTIONAL = {"inception_v3": ("fc.", "AuxLogits."), "resnet50": ("fc.",)}

def check_frames(frames: torch.Tensor, batch_size: int) -> None:
    """What every frame encoder takes: uint8 [T, 3, H, W] RGB frames, batches of >= 1."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be uint8 [T, 3, H, W], got {frames.dtype} "
                         f"{list(frames.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")

class FrameEncoder:
    """A CNN in eval mode on `device`; `encode` maps uint8 frames to [T, 2048] features."""

    def __init__(self, backbone: str, model: nn.Module, image_size: int,
                 device: torch.device, weights: Path, weights_sha256: str) -> None:
        self.backbone = backbone
        # channels_last: 1.2-1.6x faster convolutions on CPU (oneDNN) and on tensor-core GPUs
        self.model = model.eval().to(device, memory_format=torch.channels_last)
        self.image_size = image_size
        self.device = device
        self.weights = weights
        self.weights_sha256 = weights_sha256  # recorded by runs: which weights made the features
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] (on the device) -> normalised float32 [B, 3, S, S]."""
        x = frames.to(torch.float32) / 255.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)

    def encode(self, frames: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """uint8 [T, 3, H, W] RGB frames -> float32 [T, 2048] features on the CPU."""
        check_frames(frames, batch_size)
        out = torch.empty((frames.shape[0], FEATURE_DIM), dtype=torch.float32)
        with torch.inference_mode():
            for start in range(0, frames.shape[0], batch_size):
                batch = frames[start : start + batch_size].to(self.device, non_blocking=True)
                features = self.model(self.preprocess(batch))
                out[start : start + batch.shape[0]] = features.float().cpu()
        return out


def load_frame_encoder(backbone: str, weights: str | Path, device: torch.device | str | None = None,
                       image_size: int | None = None) -> FrameEncoder:
    """Build `backbone` from the local file `weights`; DataError (one line) if it does not fit."""
    if backbone not in BACKBONES:
        raise DataError(f"unknown video backbone {backbone!r}; choices: {', '.join(BACKBONES)}")
    if backbone in CLIP_BACKBONES:  # its input size is the model's own: image_size unused
        from datamodules.extract.clip_video import load_clip_encoder

        return load_clip_encoder(weights, device)  # same interface: encode, weights_sha256
    if device is None:
        device = default_device()
    size = DEFAULT_IMAGE_SIZE[backbone] if image_size is None else int(image_size)
    if size < MIN_IMAGE_SIZE[backbone]:
        raise DataError(f"image_size={size} is too small for {backbone} "
                        f"(at least {MIN_IMAGE_SIZE[backbone]})")
    path = Path(weights)
    state, digest = _read_state_dict(path)
    state = {k: v for k, v in state.items() if not k.startswith(_OPTIONAL[backbone])}
    model = _build(backbone)
    _check_fits(path, backbone, model.state_dict(), state)
    model.load_state_dict(state)
    return FrameEncoder(backbone, model, size, torch.device(device), path, digest)


def _build(backbone: str) -> nn.Module:
    """The network without its classifier (and, for Inception, without the auxiliary head)."""
    if backbone == "inception_v3":
        # init_weights=False skips the slow truncated-normal init: the file overwrites it.
        model = torchvision.models.inception_v3(weights=None, aux_logits=False,
                                                init_weights=False, transform_input=True)
    else:
        model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Identity()
    return model


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The file's state dict (unwrapped, prefixes stripped) and the file's SHA-256."""
    data = read_file(path, "weights")
    digest = hashlib.sha256(data).hexdigest()  # of exactly the bytes loaded
    obj = unwrap_state_dict(load_torch_bytes(path, data, "weights"))
    if (not isinstance(obj, Mapping) or not obj
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise DataError(f"{path}: not a state dict (expected parameter names -> tensors, "
                        f"directly or under 'state_dict' or 'model'; got {_describe(obj)})")
    return strip_wrapper_prefixes(dict(obj)), digest


def _check_fits(path: Path, backbone: str, expected: Mapping[str, torch.Tensor],
                state: dict[str, torch.Tensor]) -> None:
    """Same keys and shapes as the model; BatchNorm counters the file lacks are set to 0."""
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros((), dtype=torch.long)  # old torchvision files lack them
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    what = f"{path}: does not fit torchvision {backbone}"
    if missing or unexpected:
        raise DataError(f"{what}: {len(missing)} missing keys{_examples(missing)}, "
                        f"{len(unexpected)} unexpected keys{_examples(unexpected)}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise DataError(f"{what}: {k} has shape {list(v.shape)} in the file, the model "
                            f"expects {list(expected[k].shape)}")


def _describe(obj: object) -> str:
    if isinstance(obj, Mapping):
        keys = [repr(k) for k in list(obj)[:4]]
        return f"a dict with keys {', '.join(keys)}{', ...' if len(obj) > 4 else ''}" if keys \
            else "an empty dict"
    return f"a {type(obj).__name__}"


def _examples(keys: list[str], n: int = 3) -> str:
    return f" (e.g. {', '.join(keys[:n])})" if keys else ""
