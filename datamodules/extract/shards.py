"""Extraction split over many machines: `vmr extract ... --shard K/N`, `vmr extract-merge`.

Shard K of N (K = 0 .. N-1, as SLURM numbers array tasks) takes the files whose id (the
output's name) has a SHA-1 equal to K modulo N: deterministic, the same on every machine,
and stable when files are added to the folder between runs (no file ever changes shard, so
nothing is done twice or missed). Outputs are per id (`<out>/<id>.npy`), so the shards'
outputs together are exactly one unsharded run's, and a re-run of a shard skips the files
it already wrote. Shards are balanced statistically (within a few percent for thousands
of files; a tiny folder may leave a shard empty, which is not an error).

Each shard writes its own report, `extract-<modality>-report.shard-K-of-N.json`;
`merge_reports` combines them into `extract-<modality>-report.json` once every shard has
reported.

Video features need one projection for all shards: a given PCA file (`--pca`) or none
(`--pca-dim 0`, the default for CLIP). Fitting a PCA per shard would project each shard
differently, so a sharded run that would fit one is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from datamodules.atomic import write_json
from datamodules.errors import DataError
from datamodules.extract.jobs import JobSummary, Task, media_id, plan_tasks, run_jobs, scan_media
from datamodules.extract.specs import AudioSpec, VideoSpec, file_sha256

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_REPORT = re.compile(r"^extract-(audio|video)-report\.shard-(\d+)-of-(\d+)\.json$")


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int  # 0 .. count - 1
    count: int

    def owns(self, name: str) -> bool:
        return shard_of(name, self.count) == self.index

    def select(self, tasks: Sequence[Task]) -> list[Task]:
        return [t for t in tasks if self.owns(t.name)]

    def report_name(self, modality: str) -> str:
        return f"extract-{modality}-report.shard-{self.index}-of-{self.count}.json"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(name: str, count: int) -> int:
    """The shard (0 .. count-1) of an id: its SHA-1 modulo `count`."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:16], 16) % count


def parse_shard(text: str) -> Shard:
    """'K/N' with 0 <= K < N; a one-line DataError otherwise."""
    m = _SHARD.match(text or "")
    if not m:
        raise DataError(f"--shard {text!r}: expected K/N, e.g. 0/4 (shard K of N, K from 0)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or k >= n:
        raise DataError(f"--shard {text}: K must be in 0..N-1 and N >= 1 (shards are numbered "
                        "from 0, like SLURM array task ids)")
    return Shard(k, n)


def _shard_tasks(source: Path, out: Path, shard: Shard, need: str | None = None):
    """This shard's tasks and the files it lists as not media (each listed by one shard).

    Ids are checked for clashes over the whole folder, not only this shard's part, so
    every shard refuses a folder that one unsharded run would refuse.
    """
    scan = scan_media(source, need)
    not_media = [(f, reason) for f, reason in scan.not_media if shard.owns(media_id(Path(f)))]
    return shard.select(plan_tasks(scan.files, out)), not_media


def extract_audio_shard(source: Path, out: Path, spec: AudioSpec, shard: Shard,
                        workers: int = 0, device: torch.device | None = None,
                        progress: bool = True) -> JobSummary:
    tasks, not_media = _shard_tasks(source, out, shard)
    summary = run_jobs(tasks, spec.prepare(), spec.finish(device) if tasks else None,
                       workers=workers, what=f"audio {spec.features} (shard {shard})",
                       progress=progress)
    summary.not_media = not_media
    return summary


def extract_video_shard(source: Path, out: Path, spec: VideoSpec, pca_dim: int, shard: Shard,
                        workers: int = 0, device: torch.device | None = None,
                        codes: bool = False, progress: bool = True) -> JobSummary:
    if not spec.pca and pca_dim != 0:
        raise DataError(f"--shard {shard}: every shard must project with the same PCA: give "
                        "one with --pca FILE (fit it first, e.g. on one unsharded sample), "
                        "or keep the raw features with --pca-dim 0")
    tasks, not_media = _shard_tasks(source, out, shard, need="video")
    encoder = spec.load_encoder(device)  # also checks the weights before anything is written
    spec = dataclasses.replace(spec, weights=str(Path(spec.weights).resolve()),
                               weights_sha256=encoder.weights_sha256)
    if spec.pca and not spec.pca_sha256:
        spec = dataclasses.replace(spec, pca=str(Path(spec.pca).resolve()),
                                   pca_sha256=file_sha256(spec.pca, "PCA"))
    encode, project = spec.encoder(loaded=encoder), spec.project(codes=codes)
    summary = run_jobs(tasks, spec.prepare(), lambda frames: project(encode(frames)), workers,
                       what=f"video {spec.backbone} (shard {shard})", progress=progress)
    summary.not_media = not_media
    return summary


def merge_reports(out: Path) -> dict[str, dict[str, Any]]:
    """Combine the shard reports in `out` (per modality); write and return the summaries.

    A file is `done` if some shard run wrote it, `skipped` if its output was already there;
    `failed` lists files that no run wrote. Every shard 0..N-1 must have reported.
    """
    found: dict[tuple[str, int], dict[int, dict]] = {}
    for path in sorted(Path(out).glob("extract-*-report.shard-*-of-*.json")):
        m = _REPORT.match(path.name)
        if not m:
            continue
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read the shard report ({e})") from None
        found.setdefault((m.group(1), int(m.group(3))), {})[int(m.group(2))] = report
    if not found:
        raise DataError(f"{out}: no shard reports (extract-*-report.shard-K-of-N.json)")
    merged = {}
    for (modality, count), reports in sorted(found.items()):
        missing = [k for k in range(count) if k not in reports]
        if missing:
            listed = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            raise DataError(f"{out}: {modality} shard reports {listed} ({len(missing)} of "
                            f"{count}) missing: those shards have not finished")
        merged[modality] = _merge(modality, count, [reports[k] for k in range(count)])
    for modality, summary in merged.items():
        write_json(Path(out) / f"extract-{modality}-report.json", summary)
    return merged


def _merge(modality: str, count: int, reports: list[dict]) -> dict[str, Any]:
    done = sorted({i for r in reports for i in r.get("done", [])})
    skipped = sorted({i for r in reports for i in r.get("skipped", [])} - set(done))
    failed = [f for r in reports for f in r.get("failed", [])]
    not_media = [f for r in reports for f in r.get("not_media", [])]
    seconds = [float(r.get("seconds", 0.0)) for r in reports]
    what = reports[0].get("what", modality).split(" (shard")[0]
    return {"what": what, "shards": count, "done": done, "skipped": skipped, "failed": failed,
            "not_media": not_media, "seconds": round(sum(seconds), 3),
            "slowest_shard_seconds": round(max(seconds), 3)}


def merged_line(summary: dict[str, Any]) -> str:
    return (f"{summary['what']}: {len(summary['done'])} done, {len(summary['skipped'])} "
            f"skipped (output exists), {len(summary['failed'])} failed, "
            f"{len(summary.get('not_media', []))} not media over "
            f"{summary['shards']} shards ({summary['seconds']:.1f} s in all, slowest shard "
            f"{summary['slowest_shard_seconds']:.1f} s)")
