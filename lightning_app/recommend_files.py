"""The files a checkpoint's extractor record points to, where they were or where they moved.

A record (datamodules.extract.specs) names each file the extraction read by path and
SHA-256: the video network's weights (CNN state dict, or a CLIP folder or file) and PCA, the
music network's weights (AST folder or file, VGGish state dict) and VGGish's PCA. When such a
file has moved, `vmr retrieve --video-weights/--video-pca/--audio-weights/--audio-pca PATH`
replaces the recorded path; the file there must have the recorded SHA-256, since the model
was trained on features those exact bytes made. Every file is checked here, before any media
is decoded: a missing one, or one with other content, is one line naming it and the option.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from datamodules.errors import DataError
from datamodules.extract.specs import AudioSpec, VideoSpec
from lightning_app.errors import ConfigError

FIELDS = ("weights", "pca")
OPTIONS = {("video", "weights"): "--video-weights", ("video", "pca"): "--video-pca",
           ("music", "weights"): "--audio-weights", ("music", "pca"): "--audio-pca"}


def describe(side: str, spec: VideoSpec | AudioSpec, field: str) -> str:
    """What the file is, in words ("CLIP weights", "ast weights", "VGGish PCA", ...)."""
    if isinstance(spec, VideoSpec):
        name = "CLIP" if spec.is_clip else spec.backbone
        return f"{name} weights" if field == "weights" else "video PCA"
    return f"{spec.features} weights" if field == "weights" else "VGGish PCA"


def locate(specs: dict[str, VideoSpec | AudioSpec],
           moved: dict[tuple[str, str], str | Path | None]) -> dict[str, VideoSpec | AudioSpec]:
    """`specs` with the moved files' paths in place, every file found and checked.

    `moved`: (side, "weights" | "pca") -> the file's new path (None or absent: as recorded).
    """
    from datamodules.extract.hf_weights import weights_sha256

    out = {}
    for side, spec in specs.items():
        for field in FIELDS:
            option, what = OPTIONS[(side, field)], describe(side, spec, field)
            recorded, want = getattr(spec, field), getattr(spec, f"{field}_sha256")
            new = moved.get((side, field))
            if new is None:
                if recorded and not Path(recorded).exists():
                    raise DataError(f"{recorded}: {what} not found (moved? give its new path "
                                    f"with {option} PATH)")
                continue
            if not recorded:
                kind = spec.backbone if isinstance(spec, VideoSpec) else spec.features
                raise ConfigError(f"{option} {new}: the checkpoint's {side} extractor ({kind}) "
                                  f"reads no {field} file")
            if not Path(new).exists():
                raise DataError(f"{new}: {what} not found ({option})")
            have = weights_sha256(new)
            if want and have != want:
                raise DataError(f"{new}: not the {what} the training features were extracted "
                                f"with ({option}: SHA-256 {have[:12]}..., recorded "
                                f"{want[:12]}... for {recorded})")
            spec = dataclasses.replace(spec, **{field: str(Path(new).resolve())})
        out[side] = spec
    return out
