"""A folder of videos -> a dataset folder in a layout a DataModule reads (`vmr build-dataset`).

Each video gives one pair: its frames (CNN features, PCA-whitened) and its own audio track
(the music). Layouts:

    himv200k   Youtube_ID.txt, splits/{train,val,test}.txt, features/music/<id>.npy (1140-d
               VM-NET statistics), features/video/<id>.npy ([seconds, 1024])
    mvd        splits/{train,val,test}.csv (video_id,music_id), features/video/<id>.npy
               ([seconds, D]), features/music/<id>.npy (log-mel [seconds, 128], VM-NET,
               AST [windows, 768] or VGGish [seconds, 128])
    mgsv_ec    the MGSV-EC release's layout: CLIP frames and AST windows as padded .pt
               tensors with masks, dataset/MGSV-EC/<split>_data.csv (build_mgsv_ec.py)

Both also get `extractor.json` (how the features were made, and the source folder; training
copies it into the checkpoint so `vmr retrieve` can extract a new video the same way, and
evaluation reports link each id to its source file) and `build-report.json`
(done / skipped / failed files with reasons). A video without an audio stream, or one
that cannot be decoded, is left out of the splits and listed in the report. Running the
command again resumes: existing feature files are kept, and the lists are rewritten.

Splits: ids ordered by the SHA-1 of the id, the first `test_fraction` of them test, the
next `val_fraction` validation (at least one each), the rest training: deterministic,
independent of file order and of the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from datamodules.atomic import write_json, write_text
from datamodules.errors import DataError
from datamodules.extract.folders import PCAPlan, extract_audio, extract_video
from datamodules.extract.jobs import JobSummary
from datamodules.extract.specs import AudioSpec, VideoSpec, record

LAYOUTS = ("himv200k", "mvd", "mgsv_ec")
DEFAULT_AUDIO = {"himv200k": "vmnet", "mvd": "logmel", "mgsv_ec": "ast"}
HIMV_VIDEO_DIM = 1024


@dataclasses.dataclass
class BuildReport:
    out: Path
    video: JobSummary
    music: JobSummary
    pairs: dict[str, int]  # split -> number of pairs

    def text(self) -> str:
        sizes = ", ".join(f"{k} {v}" for k, v in self.pairs.items())
        return "\n".join([self.video.report(), self.music.report(),
                          f"dataset: {sum(self.pairs.values())} pairs ({sizes}) in {self.out}"])


def split_ids(ids: list[str], val_fraction: float, test_fraction: float,
              where: Path) -> dict[str, list[str]]:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction={val_fraction}, test_fraction={test_fraction}: each "
                        "must be in (0, 1) and their sum below 1")
    order = sorted(ids, key=lambda i: hashlib.sha1(i.encode()).hexdigest())
    n = len(order)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    if n < n_test + n_val + 1:
        raise DataError(f"{where}: {n} usable videos cannot make {n_test} test, {n_val} "
                        "validation and at least one training pair")
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def extract_pairs(videos: Path, out: Path, features: Path, video: VideoSpec, audio: AudioSpec,
                  pca: PCAPlan, workers: int, device: torch.device | None, progress: bool
                  ) -> tuple[JobSummary, JobSummary, VideoSpec, list[str]]:
    """Video features into features/video, the videos' own audio into features/music, the
    report into out/build-report.json; returns the ids that have both (sorted)."""
    video_summary, video = extract_video(videos, features / "video", video, pca,
                                         workers=workers, device=device, progress=progress)
    music_summary = extract_audio(videos, features / "music", audio, workers=workers,
                                  device=device, progress=progress)
    write_json(out / "build-report.json",
               {"video": video_summary.as_dict(), "music": music_summary.as_dict()})
    ids = sorted(set(video_summary.done + video_summary.skipped)
                 & set(music_summary.done + music_summary.skipped))
    if not ids:
        raise DataError(f"{videos}: no video gave both video and audio features "
                        f"(reasons in {out / 'build-report.json'})")
    return video_summary, music_summary, video, ids


def build_dataset(videos: Path, out: Path, layout: str, video: VideoSpec, audio: AudioSpec,
                  pca: PCAPlan | None = None, val_fraction: float = 0.1,
                  test_fraction: float = 0.1, workers: int = 0,
                  device: torch.device | None = None, progress: bool = True) -> BuildReport:
    if layout not in LAYOUTS:
        raise DataError(f"layout {layout!r} unknown (choose from: {', '.join(LAYOUTS)})")
    pca = pca or PCAPlan()
    if layout == "mgsv_ec":  # CLIP + AST in the release's own layout
        from datamodules.extract.build_mgsv_ec import build_mgsv_ec

        video_summary, music_summary, splits, video, audio = build_mgsv_ec(
            videos, out, video, audio,
            lambda ids: split_ids(ids, val_fraction, test_fraction, videos),
            workers=workers, device=device, progress=progress)
        write_json(out / "extractor.json",
                   record(video, audio, layout=layout, videos=str(Path(videos).resolve())))
        return BuildReport(out, video_summary, music_summary,
                           {k: len(v) for k, v in splits.items()})
    if layout == "himv200k":
        _check_himv(video, audio, pca)
    video_summary, music_summary, video, ids = extract_pairs(
        videos, out, out / "features", video, audio, pca, workers, device, progress)
    splits = split_ids(ids, val_fraction, test_fraction, videos)
    if layout == "himv200k":
        write_text(out / "Youtube_ID.txt", "".join(f"{i}\n" for i in ids))
        for name, members in splits.items():
            write_text(out / "splits" / f"{name}.txt", "".join(f"{i}\n" for i in members))
    else:
        for name, members in splits.items():
            rows = "".join(f"{i},{i}\n" for i in members)
            write_text(out / "splits" / f"{name}.csv", "video_id,music_id\n" + rows)
    # The source folder too: evaluation reports play a query's media from it.
    write_json(out / "extractor.json",
               record(video, audio, layout=layout, videos=str(Path(videos).resolve())))
    return BuildReport(out, video_summary, music_summary, {k: len(v) for k, v in splits.items()})


def _check_himv(video: VideoSpec, audio: AudioSpec, pca: PCAPlan) -> None:
    if audio.features != "vmnet":
        raise DataError(f"layout himv200k stores VM-NET music statistics: use audio features "
                        f"vmnet, not {audio.features!r}")
    dim = video.dim if video.pca else pca.dim
    if dim != HIMV_VIDEO_DIM:
        raise DataError(f"layout himv200k stores {HIMV_VIDEO_DIM}-d video features: PCA "
                        f"dimension {dim} does not fit (use --pca-dim {HIMV_VIDEO_DIM} or a "
                        f"{HIMV_VIDEO_DIM}-d --pca file)")
