"""How music features are made, as data (`AudioSpec`), re-exported by `specs`.

    vmnet   one 1140-d vector of VM-NET statistics per track (librosa, no weights)
    logmel  per-second 128-band log-mel means, [seconds, 128] (no weights)
    ast     Audio Spectrogram Transformer window embeddings, [windows, 768] (weights: a
            transformers folder or file); windows of 10 s every `hop_seconds`
    vggish  VGGish embeddings, one per 0.96 s, [rows, 128] (weights: a state dict file);
            with `pca`: YouTube-8M's PCA + 256-level quantisation (stored dequantised)

`prepare` (per file, in worker processes) decodes and computes spectrograms; `finish` (in
the main process, on the accelerator) runs the network. Files the spec names are checked
against their recorded SHA-256 before use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.errors import DataError
from datamodules.extract import default_device

AUDIO_FEATURES = ("vmnet", "logmel", "ast", "vggish")
WEIGHTED_FEATURES = ("ast", "vggish")
# The seconds decoded when none are given: MGSV-EC's 240 s for AST, six minutes otherwise.
DEFAULT_MAX_SECONDS = {"ast": 240.0}


@dataclasses.dataclass(frozen=True)
class AudioSpec:
    features: str = "vmnet"
    mel_sr_quirk: bool = False  # VM-NET: the original's 22050-Hz mel filterbank
    max_seconds: float = 360.0  # seconds decoded from the start (not vmnet)
    weights: str = ""  # ast: folder or file; vggish: state dict file
    weights_sha256: str = ""
    hop_seconds: float = 2.5  # ast: window centres every hop (MGSV-EC: 2.5 s)
    pca: str = ""  # vggish: YouTube-8M PCA parameters (then quantised)
    pca_sha256: str = ""
    batch_size: int = 16  # windows / examples per forward pass

    def __post_init__(self) -> None:
        if self.features not in AUDIO_FEATURES:
            raise DataError(f"audio features {self.features!r} unknown "
                            f"(choose from: {', '.join(AUDIO_FEATURES)})")
        if self.features in WEIGHTED_FEATURES and not self.weights:
            raise DataError(f"audio features {self.features}: give the model's local weights "
                            "(--weights)")
        if self.pca and self.features != "vggish":
            raise DataError(f"audio features {self.features}: a PCA file applies to vggish only")
        if self.batch_size < 1:
            raise DataError(f"batch_size={self.batch_size}: must be >= 1")

    @property
    def dim(self) -> int:
        if self.features == "ast":
            from datamodules.extract.ast_audio import ast_dim

            return ast_dim(self.weights)
        if self.features == "vggish":
            from datamodules.extract.vggish import VGGISH_DIM

            return VGGISH_DIM
        from datamodules.extract.logmel import LOGMEL_DIM
        from datamodules.extract.vmnet_audio import DIM

        return DIM if self.features == "vmnet" else LOGMEL_DIM

    def resolved(self) -> AudioSpec:
        """Absolute paths and the SHA-256 of the weights and PCA files (what a record keeps)."""
        from datamodules.extract.hf_weights import weights_sha256
        from datamodules.extract.specs import file_sha256

        spec = self
        if self.weights and not self.weights_sha256:
            if not Path(self.weights).exists():
                raise DataError(f"{self.weights}: {self.features} weights not found")
            spec = dataclasses.replace(spec, weights=str(Path(self.weights).resolve()),
                                       weights_sha256=weights_sha256(self.weights))
        if self.pca and not self.pca_sha256:
            spec = dataclasses.replace(spec, pca=str(Path(self.pca).resolve()),
                                       pca_sha256=file_sha256(self.pca, "VGGish PCA"))
        return spec

    def prepare(self) -> Callable[[Path], Any]:
        if self.features == "ast":
            from datamodules.extract.ast_audio import WINDOW_SECONDS, ASTPrepare

            return ASTPrepare(self.weights, self.hop_seconds, WINDOW_SECONDS, self.max_seconds)
        return _AudioPrepare(self)

    def finish(self, device: torch.device | None = None) -> Callable[[Any], np.ndarray] | None:
        device = device or default_device()
        if self.features == "vmnet":
            return None  # librosa statistics are complete after `prepare`
        if self.features == "logmel":
            from datamodules.extract.logmel import LogMelExtractor

            return LogMelExtractor(device=device)
        if self.features == "ast":
            from datamodules.extract.ast_audio import load_ast_encoder

            encoder = load_ast_encoder(self.weights, device, self.batch_size)
            self._check(encoder.weights_sha256)
            return encoder
        return self.vggish(device)

    def vggish(self, device: torch.device | None = None, codes: bool = False,
               ) -> Callable[[torch.Tensor], np.ndarray]:
        """Examples [N, 1, 96, 64] -> embeddings (PCA'd and quantised when `pca` is set)."""
        from datamodules.extract.specs import check_sha256
        from datamodules.extract.vggish import load_vggish, load_vggish_pca, postprocess

        pca = None
        if self.pca:  # the small file first: a bad one fails before 290 MB of weights load
            check_sha256(self.pca, self.pca_sha256, "VGGish PCA")
            pca = load_vggish_pca(self.pca)
        model, digest = load_vggish(self.weights, device or default_device())
        self._check(digest)
        dev, batch = next(model.parameters()).device, self.batch_size

        def encode(examples: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                out = torch.cat([model(examples[i : i + batch].to(dev)).cpu()
                                 for i in range(0, examples.shape[0], batch)])
            x = out.numpy()
            return x if pca is None else postprocess(x, *pca, codes=codes)

        return encode

    def _check(self, digest: str) -> None:
        if self.weights_sha256 and digest != self.weights_sha256:
            from datamodules.extract.specs import _changed

            raise DataError(_changed(self.weights, f"{self.features} weights",
                                     self.weights_sha256))


@dataclasses.dataclass(frozen=True)
class _AudioPrepare:
    spec: AudioSpec

    def __call__(self, path: Path) -> Any:
        if self.spec.features == "vmnet":
            from datamodules.extract.vmnet_audio import vmnet_features_from_file

            return vmnet_features_from_file(path, mel_sr_quirk=self.spec.mel_sr_quirk)
        from datamodules.extract.decode import decode_audio

        if self.spec.features == "vggish":
            from datamodules.extract.vggish import VGGISH_SAMPLE_RATE, vggish_examples

            y = decode_audio(path, VGGISH_SAMPLE_RATE, max_seconds=self.spec.max_seconds)
            return vggish_examples(y)
        from datamodules.extract.logmel import LOGMEL_SAMPLE_RATE

        return decode_audio(path, LOGMEL_SAMPLE_RATE, max_seconds=self.spec.max_seconds)
