"""The on-disk layout of the MGSV-EC feature release, as constants and path helpers.

MGSV-EC (Xin et al., "Music Grounding by Short Video", ICCV 2025, arXiv 2408.16990; code
github.com/xxayt/MGSV; data huggingface.co/datasets/xxayt/MGSV-EC). One module so the reader
(`datamodules.mgsv_ec`), the synthetic writer and `vmr build-dataset --layout mgsv_ec` agree
on every name. docs/datasets.md describes the layout and what about it is unverified.

    <root>/dataset/MGSV-EC/{train,val,test}_data.csv   16 columns (CSV_COLUMNS)
    <root>/features/Kuai_feature/                      FEATURE_PARENT (see feature_dir_candidates)
        vit_feature1/vit_feature/<video_id>.pt         [50, 512] CLIP ViT-B/32, 1 frame per second
        vit_feature1/vit_mask/<video_id>.pt            [50] 1 = real frame, 0 = padding
        ast_feature2p5/ast_feature/<music_id>.pt       [96, 768] AST, 10-s windows every 2.5 s
        ast_feature2p5/ast_mask/<music_id>.pt          [96] 1 = window centre inside the track

Every .pt file holds one bare tensor (torch.save). `video_id` is a decimal integer written
as text and must stay text (a float turns 113722188340 into 1.13722188340e+11); `music_id`
is used verbatim (it contains a '+').
"""

from __future__ import annotations

import math
from pathlib import Path

SPLITS = ("train", "val", "test")

# Annotations: <root>/CSV_DIR/<split>_data.csv
CSV_DIR = Path("dataset") / "MGSV-EC"
CSV_COLUMNS = (
    "video_id", "music_id", "video_start", "video_end", "music_start", "music_end",
    "music_total_duration", "video_segment_duration", "music_segment_duration", "music_path",
    "video_total_duration", "video_width", "video_height", "video_total_frames",
    "video_frame_rate", "video_category",
)
# Columns read as numbers (seconds, pixels, counts); the rest stay text.
FLOAT_COLUMNS = ("video_start", "video_end", "music_start", "music_end", "music_total_duration",
                 "video_segment_duration", "music_segment_duration", "video_total_duration")
INT_COLUMNS = ("video_width", "video_height", "video_total_frames", "video_frame_rate")

# Features: <feature parent>/<VIDEO_DIR>/{vit_feature,vit_mask}/<video_id>.pt, same for music.
FEATURE_PARENT = Path("features") / "Kuai_feature"
VIDEO_DIR = "vit_feature1"
VIDEO_FEATURE, VIDEO_MASK = "vit_feature", "vit_mask"
MUSIC_DIR = "ast_feature2p5"
MUSIC_FEATURE, MUSIC_MASK = "ast_feature", "ast_mask"
SUFFIX = ".pt"

VIDEO_FRAMES = 50  # padded length: --max_v_frames 50 of the official scripts
VIDEO_DIM = 512  # CLIP ViT-B/32 image embedding (after the projection, not normalised)
VIDEO_FPS = 1.0
MUSIC_WINDOWS = 96  # padded length: int(240 s / 2.5 s)
MUSIC_DIM = 768  # AST: mean of the CLS and distillation tokens
MUSIC_STRIDE = 2.5  # seconds between window centres
MUSIC_WINDOW = 10.0  # seconds per window, centred at k * MUSIC_STRIDE
MUSIC_MAX_SECONDS = 240.0  # longer audio is cut, shorter zero-padded


def csv_path(root: str | Path, split: str) -> Path:
    return Path(root) / CSV_DIR / f"{split}_data.csv"


def feature_path(parent: str | Path, side: str, kind: str, key: str) -> Path:
    """`<parent>/vit_feature1/vit_feature/<key>.pt` etc.; side video|music, kind feature|mask."""
    if side == "video":
        sub = (VIDEO_DIR, VIDEO_FEATURE if kind == "feature" else VIDEO_MASK)
    elif side == "music":
        sub = (MUSIC_DIR, MUSIC_FEATURE if kind == "feature" else MUSIC_MASK)
    else:
        raise ValueError(f"side must be video or music, got {side!r}")
    if kind not in ("feature", "mask"):
        raise ValueError(f"kind must be feature or mask, got {kind!r}")
    return Path(parent) / sub[0] / sub[1] / f"{key}{SUFFIX}"


def feature_dir_candidates(root: str | Path) -> list[Path]:
    """Folders that may hold vit_feature1/ and ast_feature2p5/, most likely first.

    The README of the official code puts them under features/Kuai_feature/; the top folder
    inside MGSV_feature.zip was not verified, so the unzipped folder may sit at any level.
    """
    root = Path(root)
    return [root / FEATURE_PARENT, root / "features", root / "Kuai_feature",
            root / "MGSV_feature" / "Kuai_feature", root / "MGSV_feature", root]


def csv_dir_candidates(root: str | Path) -> list[Path]:
    """Folders that may hold the three `<split>_data.csv` files, most likely first."""
    root = Path(root)
    return [root / CSV_DIR, root / "MGSV-EC", root / "dataset", root]


def valid_video_frames(video_start: float, video_end: float,
                       frames: int = VIDEO_FRAMES) -> int:
    """Real frames of a video segment at 1 fps (frames named by second, capped at `frames`).

    The official raw-frame loader keeps seconds floor(start) .. min(floor(end), frames - 1).
    """
    first = int(math.floor(video_start))
    last = min(int(math.floor(video_end)), frames - 1)
    return max(0, last - first + 1)


def valid_music_windows(duration: float, windows: int = MUSIC_WINDOWS) -> int:
    """Windows whose centre k * 2.5 s lies inside a track of `duration` seconds (capped)."""
    return max(0, min(windows, int(math.floor(duration / MUSIC_STRIDE)) + 1))


def moment_windows(start: float, end: float, windows: int = MUSIC_WINDOWS) -> tuple[int, int]:
    """(first, last) window index whose centre lies in [start, end] (last < first: none)."""
    first = int(math.ceil(start / MUSIC_STRIDE - 1e-9))
    last = min(windows - 1, int(math.floor(end / MUSIC_STRIDE + 1e-9)))
    return first, last
