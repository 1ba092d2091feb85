"""Not a test module: a tiny MGSV-EC feature release written independently of the synth code.

Written from the published description only (16-column CSVs, one bare tensor per .pt file:
[50, 512] / [96, 768] features and [50] / [96] masks), with plain csv and torch.save. Padding
rows hold POISON, so a reader that lets padding through is caught; masks are saved as views
of a larger batch tensor (as the release's extraction code does), at a non-zero storage
offset. `where` places the files at one of the levels the reader accepts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

POISON = 12345.0
COLUMNS = ("video_id,music_id,video_start,video_end,music_start,music_end,music_total_duration,"
           "video_segment_duration,music_segment_duration,music_path,video_total_duration,"
           "video_width,video_height,video_total_frames,video_frame_rate,video_category"
           ).split(",")
# (csv folder, feature parent) relative to the root, per accepted arrangement.
WHERE = {
    "official": ("dataset/MGSV-EC", "features/Kuai_feature"),
    "flat": (".", "."),
    "zip_folder": ("dataset/MGSV-EC", "MGSV_feature"),
    "unzipped_deeper": ("dataset/MGSV-EC", "features/MGSV_feature/Kuai_feature"),
}


@dataclass
class Release:
    root: Path
    csv_dir: Path
    features: Path
    rows: dict[str, list[dict]]
    video: dict[str, np.ndarray] = field(default_factory=dict)  # valid rows only
    music: dict[str, np.ndarray] = field(default_factory=dict)

    def pt(self, side: str, kind: str, key: str) -> Path:
        folder = {"video": "vit_feature1", "music": "ast_feature2p5"}[side]
        sub = {("video", "feature"): "vit_feature", ("video", "mask"): "vit_mask",
               ("music", "feature"): "ast_feature", ("music", "mask"): "ast_mask"}[(side, kind)]
        return self.features / folder / sub / f"{key}.pt"


def _save_padded(path_feat: Path, path_mask: Path, valid: np.ndarray, total: int,
                 positions: np.ndarray, feat_dtype: torch.dtype, mask_dtype: torch.dtype) -> None:
    x = torch.full((total, valid.shape[1]), POISON, dtype=torch.float32)
    x[torch.from_numpy(positions)] = torch.from_numpy(valid)
    batch = torch.zeros((3, total), dtype=mask_dtype)  # the mask is row 1 of a batch tensor
    batch[1, torch.from_numpy(positions)] = 1
    path_feat.parent.mkdir(parents=True, exist_ok=True)
    path_mask.parent.mkdir(parents=True, exist_ok=True)
    torch.save(x.to(feat_dtype), path_feat)
    torch.save(batch[1], path_mask)


def write_release(root: Path, splits: dict[str, list[tuple[str, str]]], where: str = "official",
                  seed: int = 0, video_valid: dict[str, int] | None = None,
                  music_valid: dict[str, int] | None = None, scattered: bool = False,
                  feat_dtype: torch.dtype = torch.float32,
                  mask_dtype: torch.dtype = torch.float32) -> Release:
    """splits: split -> [(video_id, music_id)]. Valid counts default to random ones;
    `scattered` puts the valid entries at random positions instead of a prefix."""
    rng = np.random.default_rng(seed)
    csv_rel, feat_rel = WHERE[where]
    rel = Release(root, root / csv_rel, root / feat_rel, {})
    video_valid, music_valid = dict(video_valid or {}), dict(music_valid or {})
    for split, pairs in splits.items():
        rows = []
        for vid, mid in pairs:
            n_v = video_valid.setdefault(vid, int(rng.integers(3, 51)))
            n_m = music_valid.setdefault(mid, int(rng.integers(4, 97)))
            duration = 2.5 * (n_m - 1) + 1.0
            m_start = float(rng.uniform(0, duration / 2))
            rows.append({"video_id": vid, "music_id": mid, "video_start": "0.0",
                         "video_end": str(n_v - 0.5), "music_start": str(round(m_start, 3)),
                         "music_end": str(round(m_start + 5, 3)),
                         "music_total_duration": str(duration),
                         "video_segment_duration": str(n_v - 0.5),
                         "music_segment_duration": "5.0",
                         "music_path": f"/Data/music/source_music/1/{mid}+A, title.mp3",
                         "video_total_duration": str(n_v), "video_width": "1080",
                         "video_height": "1920", "video_total_frames": str(30 * n_v),
                         "video_frame_rate": "30", "video_category": "" if n_v % 5 else "Games"})
        rel.rows[split] = rows
    for side, valid_counts, total, dim in (("video", video_valid, 50, 512),
                                           ("music", music_valid, 96, 768)):
        store = rel.video if side == "video" else rel.music
        for key, n in valid_counts.items():
            positions = (np.sort(rng.choice(total, n, replace=False)) if scattered
                         else np.arange(n))
            valid = rng.normal(0, 1, (n, dim)).astype(np.float32)
            valid = torch.from_numpy(valid).to(feat_dtype).float().numpy()  # what survives
            store[key] = valid
            _save_padded(rel.pt(side, "feature", key), rel.pt(side, "mask", key), valid, total,
                         positions, feat_dtype, mask_dtype)
    rel.csv_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in rel.rows.items():
        with open(rel.csv_dir / f"{split}_data.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    return rel


def small_splits() -> dict[str, list[tuple[str, str]]]:
    """Train: 6 videos over 2 tracks; val: 3 videos, 3 tracks; test: 6 videos over 4 tracks
    (two tracks serve two videos each), ids in the release's forms."""
    return {
        "train": [(f"1137221883{i:02d}", "7+5x4mjjeiubm49fg" if i % 2 else "4+12767402249")
                  for i in range(6)],
        "val": [("99000000001", "8+5xaaaaaaaaaaaaa"), ("99000000002", "4+12767402249"),
                ("99000000003", "7+1000000001")],
        "test": [("123456789012", "8+5xbbbbbbbbbbbbb"), ("123456789013", "8+5xbbbbbbbbbbbbb"),
                 ("123456789014", "4+5555555555"), ("123456789015", "7+5x4mjjeiubm49fg"),
                 ("123456789016", "4+5555555555"), ("123456789017", "7+9999999999")],
    }
