"""Write the planted benchmark in the MGSV-EC feature-release layout (datamodules.mgsv_ec_layout).

Same files as the release: three 16-column CSVs (`video_id` a 12-digit integer, `music_id`
like `7+5x...` or `4+1234567890`, times as Python float reprs, some empty categories) and
per id a padded float32 feature tensor ([50, 512] per video, [96, 768] per track) with a
float32 0/1 mask, each saved with torch.save as one bare tensor. Padded rows hold one
constant non-zero vector per modality (as black frames and silence embed to), so a reader
that forgets the mask sees it.

Tracks and videos as in the real data: in training most videos share a track (`shared_songs`,
default 0.9: about 10 videos per track; the release has about 14), while validation and test
have one video per track, and a fraction `SEEN` of their tracks are training tracks (the
release: about 3/4). A video's valid frames are its planted length (6-50 s at 1 fps); a
track's valid windows follow its drawn duration (`DURATION` seconds, shorter than the
release's 30-240 s to keep the store small); the GT moment is a span of the track as long as
the video segment (metadata only: planted music shows its content in every window). Label
noise (`noise`) makes a training row name another row's track. Deterministic in the seed;
written atomically; never replaces a folder of other data.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np
import torch

from datamodules.atomic import atomic_directory
from datamodules.errors import DataError
from datamodules.mgsv_ec_layout import (
    CSV_COLUMNS,
    CSV_DIR,
    FEATURE_PARENT,
    MUSIC_DIM,
    MUSIC_WINDOWS,
    SPLITS,
    VIDEO_DIM,
    VIDEO_FRAMES,
    feature_path,
    valid_music_windows,
)
from datamodules.progress import progress_bar
from datamodules.synthetic.conditions import share_within
from datamodules.synthetic.ensure import (
    ensure_synthetic,
    planted_spec,
    refuse_other_data,
    write_marker,
)
from datamodules.synthetic.planted import PlantedBenchmark, PlantedSpec

SHARED_SONGS = 0.9
SEEN = 0.75
MIN_FRAMES = 6
DURATION = (30.0, 75.0)
CATEGORIES = ("Fashion", "Games", "Home Furnishings", "Food", "Travel", "Pets", "")
CHUNK = 256
_STREAMS = {"seen": 31, "ids": 32, "meta": 33, "pad": 34}


def mgsv_settings(settings: dict) -> dict:
    """PlantedSpec keywords with the release's fixed shapes (frames are not settable)."""
    out = {k: v for k, v in settings.items() if k not in ("music_frames", "video_frames")}
    return {**out, "music_dim": MUSIC_DIM, "video_dim": VIDEO_DIM, "music_frames": MUSIC_WINDOWS,
            "video_frames": VIDEO_FRAMES, "min_frames": MIN_FRAMES}


class MGSVPlanted(PlantedBenchmark):
    """Shared tracks inside training only; val/test videos take distinct training tracks."""

    def _make_shared_songs(self, rng: np.random.Generator, fraction: float) -> np.ndarray:
        source = np.arange(self.spec.pairs)
        share_within(rng, np.flatnonzero(self.split == "train"), fraction, source)
        owners = np.flatnonzero((self.split == "train") & (source == np.arange(len(source))))
        seen = np.random.default_rng([self.spec.seed, _STREAMS["seen"]])
        for split in ("val", "test"):
            members = np.flatnonzero(self.split == split)
            k = min(int(round(SEEN * len(members))), len(owners))
            takers = seen.choice(members, k, replace=False)
            source[takers] = seen.choice(owners, k, replace=False)  # one video per track
        return source


def _ids(rng: np.random.Generator, n: int) -> tuple[list[str], list[str]]:
    """n distinct 12-digit video ids and n distinct music ids in the release's two forms."""
    videos = [str(x) for x in rng.choice(9 * 10**11, n, replace=False) + 10**11]
    alnum = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    music = []
    for i in range(n):
        prefix = int(rng.choice([4, 7, 8]))
        if i % 2:
            music.append(f"{prefix}+5x{''.join(rng.choice(alnum, 13))}")
        else:
            music.append(f"{prefix}+{10**10 + int(rng.integers(0, 9 * 10**10))}")
    if len(set(music)) < n:  # vanishingly rare; keep ids unique whatever the seed
        music = [f"{m[:-4]}{i:04d}" if m in music[:i] else m for i, m in enumerate(music)]
    return videos, music


def _padded(valid: np.ndarray, total: int, pad: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """([total, D] float32 with `pad` after the valid rows, [total] float32 0/1 mask)."""
    x = np.broadcast_to(pad, (total, pad.shape[0])).copy()
    x[: len(valid)] = valid
    mask = np.zeros(total, dtype=np.float32)
    mask[: len(valid)] = 1.0
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(mask)


def _f(x: float) -> str:
    return repr(float(round(x, 3)))


def _meta_rows(bench: MGSVPlanted, written: np.ndarray, music_ids: list[str],
               video_ids: list[str], durations: np.ndarray) -> dict[int, dict]:
    rng = np.random.default_rng([bench.spec.seed, _STREAMS["meta"]])
    rows = {}
    for i in np.flatnonzero(bench.kept):
        song = written[i]
        end = bench.video_length[i] - 1 + rng.uniform(0.2, 0.95)
        seg = min(end, durations[song])
        m_start = rng.uniform(0.0, durations[song] - seg)
        total = end + rng.uniform(0.0, 0.2)
        category = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))] if rng.random() < 0.98 \
            else ""
        rows[i] = {
            "video_id": video_ids[i], "music_id": music_ids[song], "video_start": "0.0",
            "video_end": _f(end), "music_start": _f(m_start), "music_end": _f(m_start + seg),
            "music_total_duration": _f(durations[song]),
            "video_segment_duration": repr(float(round(end, 3))),
            "music_segment_duration": repr(float(round(m_start + seg, 3) - round(m_start, 3))),
            "music_path": f"/Data/music/source_music/{i % 10}/{music_ids[song]}+synthetic.mp3",
            "video_total_duration": _f(total), "video_width": "1080", "video_height": "1920",
            "video_total_frames": str(int(round(total * 30))), "video_frame_rate": "30",
            "video_category": category,
        }
    return rows


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_mgsv_ec(spec: PlantedSpec, out: str | Path, shared_songs: float = SHARED_SONGS,
                  progress: bool = True) -> Path:
    """Write `spec` (shapes from `mgsv_settings`) in the MGSV-EC layout under `out`."""
    if not 0.0 < shared_songs < 1.0:
        raise ValueError(f"shared_songs={shared_songs} must be in (0, 1) for mgsv_ec")
    if spec.train_pairs:
        raise ValueError("train_pairs must be 0 for mgsv_ec (val/test tracks are training "
                         "tracks, which a subset would drop)")
    out = Path(out)
    refuse_other_data(out)
    bench = MGSVPlanted(spec, shared_songs=shared_songs)
    n = spec.pairs
    written = bench.song_source[bench.music_source]  # the track each row names
    video_ids, music_ids = _ids(np.random.default_rng([spec.seed, _STREAMS["ids"]]), n)
    drng = np.random.default_rng([spec.seed, _STREAMS["pad"]])
    durations = drng.uniform(*DURATION, n)
    pads = {"video": drng.normal(0, 1, VIDEO_DIM), "music": drng.normal(0, 1, MUSIC_DIM)}
    meta = _meta_rows(bench, written, music_ids, video_ids, durations)
    tracks = np.unique(written[bench.kept])
    with atomic_directory(out) as tmp:
        (tmp / CSV_DIR).mkdir(parents=True)
        for split in SPLITS:
            rows = [meta[i] for i in np.flatnonzero(bench.split == split)]
            (tmp / CSV_DIR / f"{split}_data.csv").write_text(_csv(rows), encoding="utf-8")
        parent = tmp / FEATURE_PARENT
        for side in ("video", "music"):
            for kind in ("feature", "mask"):
                feature_path(parent, side, kind, "x").parent.mkdir(parents=True)
        bar = progress_bar(progress, total=n + len(tracks), desc=f"synth mgsv_ec -> {out}",
                           unit="file")
        for start in range(0, n, CHUNK):
            idx = np.arange(start, min(n, start + CHUNK))
            for i, frames in zip(idx, bench.video_frames(idx)):
                x, mask = _padded(frames[: bench.video_length[i]], VIDEO_FRAMES, pads["video"])
                torch.save(x, feature_path(parent, "video", "feature", video_ids[i]))
                torch.save(mask, feature_path(parent, "video", "mask", video_ids[i]))
            bar.update(len(idx))
        for start in range(0, len(tracks), CHUNK):
            idx = tracks[start : start + CHUNK]
            for j, frames in zip(idx, bench.song_frames(idx)):
                keep = valid_music_windows(durations[j])
                x, mask = _padded(frames[:keep], MUSIC_WINDOWS, pads["music"])
                torch.save(x, feature_path(parent, "music", "feature", music_ids[j]))
                torch.save(mask, feature_path(parent, "music", "mask", music_ids[j]))
            bar.update(len(idx))
        bar.close()
        write_marker(tmp, {"dataset": "mgsv_ec", "shared_songs": shared_songs,
                           **dataclasses.asdict(spec)})
    return out


def ensure_synthetic_mgsv_ec(root: str | Path, synthetic: dict) -> bool:
    """Write synthetic MGSV-EC under `root` for the `data.synthetic` settings unless it is
    there (datamodules.synthetic.ensure); bad settings are one-line DataErrors."""
    settings = dict(synthetic)
    shared = float(settings.pop("shared_songs", SHARED_SONGS))
    if settings.pop("missing", 0.0):
        raise DataError("data.synthetic.missing: mgsv_ec ships every listed id's features; use 0")
    if not 0.0 < shared < 1.0:
        raise DataError(f"data.synthetic.shared_songs={shared} must be in (0, 1) for mgsv_ec")
    if settings.get("train_pairs"):
        raise DataError("data.synthetic.train_pairs must be 0 for mgsv_ec")
    spec = planted_spec(mgsv_settings(settings))
    wanted = {"dataset": "mgsv_ec", "shared_songs": shared, **dataclasses.asdict(spec)}
    return ensure_synthetic(root, wanted, lambda: write_mgsv_ec(spec, root, shared), "mgsv_ec")
