"""A folder of videos -> the MGSV-EC release layout (`vmr build-dataset --layout mgsv_ec`).

The features are made as MGSV-EC's were: CLIP ViT-B/32 image embeddings of one frame per
second (at most 50) and AST embeddings of 10-s windows every 2.5 s of the video's own audio
track (at most 96, 240 s), saved with torch.save as bare float32 tensors padded to 50 / 96
rows, each with its 0/1 mask (padding rows are zeros here; the release's are embeddings of
black frames / silence: a reader honours the mask either way). The layout and names are
datamodules/mgsv_ec_layout.py's, so `vmr prepare --dataset mgsv_ec --src OUT` reads it.

Each video is one CSV row whose track is its own audio (music_id = the file's id); the
moment is the whole track. MGSV-EC's video ids are decimal integers, so each file gets a
12-digit id derived from the SHA-1 of its id; `video_ids.csv` maps them back to the files.
The per-file features are first written as `<out>/features/extracted/{video,music}/<id>.npy`
(kept: a re-run resumes from them, as with the other layouts).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import torch

from datamodules.atomic import atomic_file, write_text
from datamodules.errors import DataError
from datamodules.extract.build_dataset import extract_pairs
from datamodules.extract.folders import PCAPlan
from datamodules.extract.jobs import JobSummary, list_media, plan_tasks
from datamodules.extract.specs import AudioSpec, VideoSpec
from datamodules.mgsv_ec_layout import (
    CSV_COLUMNS,
    FEATURE_PARENT,
    MUSIC_DIM,
    MUSIC_MAX_SECONDS,
    MUSIC_STRIDE,
    MUSIC_WINDOWS,
    VIDEO_DIM,
    VIDEO_FPS,
    VIDEO_FRAMES,
    csv_path,
    feature_path,
)


def check_specs(video: VideoSpec, audio: AudioSpec) -> tuple[VideoSpec, AudioSpec]:
    """The specs MGSV-EC's features need (frames and windows capped as the release's)."""
    if video.backbone != "clip_vit_b32" or audio.features != "ast":
        raise DataError(f"layout mgsv_ec stores CLIP frame and AST music features: use "
                        f"--backbone clip_vit_b32 and --audio-features ast, not "
                        f"{video.backbone} and {audio.features}")
    if video.pca or video.quantize:
        raise DataError("layout mgsv_ec stores raw CLIP embeddings: leave out --pca/--quantize")
    if video.fps != VIDEO_FPS or audio.hop_seconds != MUSIC_STRIDE:
        raise DataError(f"layout mgsv_ec: {VIDEO_FPS:g} frame per second and windows every "
                        f"{MUSIC_STRIDE} s (got --fps {video.fps:g}, --hop-seconds "
                        f"{audio.hop_seconds:g})")
    for what, dim, want in (("video", video.dim, VIDEO_DIM), ("music", audio.dim, MUSIC_DIM)):
        if dim != want:
            raise DataError(f"layout mgsv_ec stores {want}-d {what} features: these weights "
                            f"make {dim}-d ones")
    video = dataclasses.replace(video, max_seconds=min(video.max_seconds,
                                                       VIDEO_FRAMES / VIDEO_FPS))
    audio = dataclasses.replace(audio, max_seconds=MUSIC_MAX_SECONDS)
    return video, audio


def numeric_ids(ids: list[str]) -> dict[str, str]:
    """A 12-digit decimal id per id (from its SHA-1); a clash is an error, never a merge."""
    out, seen = {}, {}
    for i in ids:
        n = str(10**11 + int(hashlib.sha1(i.encode()).hexdigest(), 16) % (9 * 10**11))
        if n in seen:
            raise DataError(f"ids {seen[n]!r} and {i!r} map to the same video id {n}: rename "
                            "one of the files")
        out[i], seen[n] = n, i
    return out


def _save_padded(rows: np.ndarray, total: int, feature: Path, mask: Path) -> None:
    x = np.zeros((total, rows.shape[1]), dtype=np.float32)
    valid = min(total, rows.shape[0])
    x[:valid] = rows[:valid]
    m = np.zeros(total, dtype=np.float32)
    m[:valid] = 1.0
    for path, value in ((feature, x), (mask, m)):
        with atomic_file(path, suffix=".pt") as tmp:
            torch.save(torch.from_numpy(value), tmp)


def _row(video_id: str, music_id: str, source: Path) -> dict[str, object]:
    from datamodules.extract.decode import probe

    info = probe(source)
    d = float(info.duration)
    return {"video_id": video_id, "music_id": music_id, "video_start": 0.0, "video_end": d,
            "music_start": 0.0, "music_end": d, "music_total_duration": d,
            "video_segment_duration": d, "music_segment_duration": d,
            "music_path": str(source), "video_total_duration": d,
            "video_width": info.width or 0, "video_height": info.height or 0,
            "video_total_frames": info.video_frames or 0,
            "video_frame_rate": round(info.fps or 0), "video_category": ""}


def _csv(rows: list[dict[str, object]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def build_mgsv_ec(videos: Path, out: Path, video: VideoSpec, audio: AudioSpec,
                  splits_of, workers: int = 0, device: torch.device | None = None,
                  progress: bool = True) -> tuple[JobSummary, JobSummary, dict[str, list[str]],
                                                  VideoSpec, AudioSpec]:
    """Extract, then write the release layout; `splits_of(ids)` -> {split: ids}."""
    video, audio = check_specs(video, audio)
    work = out / "features" / "extracted"
    video_summary, music_summary, video, ids = extract_pairs(
        videos, out, work, video, audio, PCAPlan(dim=0), workers, device, progress)
    splits = splits_of(ids)
    sources = {t.name: t.source for t in plan_tasks(list_media(videos), work)}
    numeric = numeric_ids(ids)
    parent = out / FEATURE_PARENT
    rows = {}
    for i in ids:
        n = numeric[i]
        _save_padded(np.load(work / "video" / f"{i}.npy"), VIDEO_FRAMES,
                     feature_path(parent, "video", "feature", n),
                     feature_path(parent, "video", "mask", n))
        _save_padded(np.load(work / "music" / f"{i}.npy"), MUSIC_WINDOWS,
                     feature_path(parent, "music", "feature", i),
                     feature_path(parent, "music", "mask", i))
        rows[i] = _row(n, i, sources[i])
    for name, members in splits.items():
        write_text(csv_path(out, name), _csv([rows[i] for i in members]))
    write_text(out / "video_ids.csv", "video_id,id,file\n" + "".join(
        f"{numeric[i]},{i},{sources[i]}\n" for i in ids))
    return video_summary, music_summary, splits, video, audio
