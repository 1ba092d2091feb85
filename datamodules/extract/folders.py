"""Folders of media -> folders of per-id feature files (`vmr extract audio|video`).

Video features take up to three passes, each resumable: the CNN writes raw 2048-d frame
features to `<out>/.raw/`; a PCA whitening is fitted on a random sample of those frames
and saved (`<out>/pca.npz`, reused if it exists so a resumed job projects with the same
PCA); the raw features are projected (and optionally quantised) into `<out>/<id>.npy`.
With a given PCA file (`--pca`, e.g. another dataset's, as `vmr retrieve` reuses its training
set's) the CNN output is projected directly.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from datamodules.errors import DataError
from datamodules.extract.jobs import JobSummary, Task, plan_tasks, run_jobs, scan_media
from datamodules.extract.specs import AudioSpec, VideoSpec, file_sha256

log = logging.getLogger("vmr")


def extract_audio(source: Path, out: Path, spec: AudioSpec, workers: int = 0,
                  device: torch.device | None = None, progress: bool = True) -> JobSummary:
    """One feature file per media file under `source` (the audio track of videos too)."""
    scan = scan_media(source)
    summary = run_jobs(plan_tasks(scan.files, out), spec.prepare(), spec.finish(device),
                       workers=workers, what=f"audio {spec.features}", progress=progress)
    summary.not_media = scan.not_media
    return summary


@dataclasses.dataclass(frozen=True)
class PCAPlan:
    dim: int = 1024  # 0: keep the raw 2048-d CNN features
    sample: int = 100_000  # frames drawn (uniformly over all frames) to fit it
    seed: int = 0


def extract_video(source: Path, out: Path, spec: VideoSpec, pca: PCAPlan | None = None,
                  workers: int = 0, device: torch.device | None = None, codes: bool = False,
                  keep_raw: bool = False, progress: bool = True,
                  ) -> tuple[JobSummary, VideoSpec]:
    """Extract video features for every file under `source`; returns the spec actually used.

    `codes=True` with `spec.quantize` writes the uint8 codes themselves (YouTube-8M's
    on-disk form) instead of their dequantised values.
    """
    pca = pca or PCAPlan()
    scan = scan_media(source, need="video")
    tasks = plan_tasks(scan.files, out)
    # Loading the CNN first also checks the weights file, before anything is written.
    cnn = spec.load_encoder(device)
    spec = dataclasses.replace(spec, weights=str(Path(spec.weights).resolve()),
                               weights_sha256=cnn.weights_sha256)
    encode = spec.encoder(loaded=cnn)
    if spec.pca or pca.dim == 0:
        if spec.pca and not spec.pca_sha256:
            spec = dataclasses.replace(spec, pca=str(Path(spec.pca).resolve()),
                                       pca_sha256=file_sha256(spec.pca, "PCA"))
        project = spec.project(codes=codes)
        summary = run_jobs(tasks, spec.prepare(), lambda f: project(encode(f)), workers,
                           what=f"video {spec.backbone}", progress=progress)
        summary.not_media = scan.not_media
        return summary, spec

    todo = [t for t in tasks if not t.output.exists()]
    raw_dir = out / ".raw"
    raw_tasks = [Task(t.name, t.source, raw_dir / f"{t.name}.npy") for t in todo]
    raw = run_jobs(raw_tasks, spec.prepare(), encode, workers,
                   what=f"video {spec.backbone} (CNN)", progress=progress)
    pca_path = out / "pca.npz"
    if not pca_path.exists():
        _fit_pca(sorted(raw_dir.glob("*.npy")), pca, pca_path)
    spec = dataclasses.replace(spec, pca=str(pca_path.resolve()),
                               pca_sha256=file_sha256(str(pca_path), "PCA"))
    ready = [t for t in raw_tasks if t.output.exists()]
    project = spec.project(codes=codes)
    projected = run_jobs([Task(t.name, t.output, out / f"{t.name}.npy") for t in ready],
                         np.load, project, workers=0, what="video PCA", progress=progress)
    summary = JobSummary(f"video {spec.backbone}", done=projected.done,
                         skipped=[t.name for t in tasks if t not in todo],
                         failed=raw.failed + projected.failed,
                         seconds=raw.seconds + projected.seconds, not_media=scan.not_media)
    if not keep_raw:  # a raw file is only needed until its projection is written
        for t in ready:
            if (out / f"{t.name}.npy").exists():
                t.output.unlink(missing_ok=True)
        if raw_dir.exists() and not any(raw_dir.iterdir()):
            raw_dir.rmdir()
    return summary, spec


def _fit_pca(raw_files: list[Path], plan: PCAPlan, path: Path) -> None:
    from datamodules.extract.pca import PCAWhitening, sample_rows

    if not raw_files:
        raise DataError(f"{path.parent}: no video could be encoded, so there is nothing to fit "
                        "the PCA on")
    arrays = [np.load(f, mmap_mode="r") for f in raw_files]
    sample = sample_rows(arrays, plan.sample, plan.seed)
    log.info("fitting PCA whitening to %d dims on %d frames from %d videos", plan.dim,
             len(sample), len(arrays))
    PCAWhitening.fit(sample, dim=plan.dim).save(path)
