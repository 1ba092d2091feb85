"""Write the planted benchmark in the generic MVD layout that `datamodules.mvd` reads.

    <out>/splits/{train,val,test}.csv      header `video_id,music_id`, one row per pair
    <out>/features/video/<video_id>.npy    [length, video_dim] float32 (length = video_frames,
                                           or drawn in [min_frames, video_frames])
    <out>/features/music/<music_id>.npy    [music_frames, music_dim] float32, one per song
    <out>/truth.tsv, <out>/synth.json      hidden truth and the generator settings
    <out>/splits/unpaired_videos.csv       with a pool only: header `video_id`, one pool video
    <out>/splits/unpaired_music.csv        ... header `music_id`, one pool song per line
    <out>/truth_unpaired.tsv               ... the pool's hidden pairs (datamodules.synthetic.pool)

Songs: a song's id is the id of the pair that owns it. A fraction `shared_songs` of each
split's videos truly goes with another pair's song (same content: the video shows that
song's content; see `PlantedBenchmark`), so its row names that song and no music file of
its own is written. Label noise (`spec.noise`) gives noisy training rows another training
pair's song id; truth.tsv holds the true and written song of every video. Dimensions and
frame counts are the spec's (MVD features are configurable); `MUSIC_DIM`/`VIDEO_DIM` are the
defaults the DataModule and `vmr synth --dataset mvd` use. The unpaired pool (`unpaired_videos`,
`unpaired_music`, of which `unpaired_linked` x the smaller count are hidden pairs) has its
features in the same folders and is named in no split file. The folder is written atomically
and replaces an earlier synthetic folder, but never a folder of other data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from datamodules.atomic import atomic_directory
from datamodules.errors import DataError
from datamodules.mvd_unpaired import UNPAIRED_LISTS
from datamodules.progress import progress_bar
from datamodules.synthetic.ensure import (
    ensure_synthetic,
    planted_spec,
    refuse_other_data,
    write_marker,
)
from datamodules.synthetic.planted import PlantedBenchmark, PlantedSpec
from datamodules.synthetic.pool import UnpairedPool, check_pool_counts
from datamodules.synthetic.truth import TRUTH_FILE, UNPAIRED_TRUTH_FILE, rows_tsv, truth_tsv

MUSIC_DIM = 128
VIDEO_DIM = 512
SPAN = 0.3  # short salient spans: the SSVMR setting
SHARED_SONGS = 0.1
UNPAIRED_LINKED = 0.5
CHUNK = 512


def mvd_settings(settings: dict) -> dict:
    """`settings` (PlantedSpec keywords) with the MVD defaults for the keys it lacks."""
    return {"music_dim": MUSIC_DIM, "video_dim": VIDEO_DIM, "span": SPAN, **settings}


def write_mvd(
    spec: PlantedSpec, out: str | Path, shared_songs: float = SHARED_SONGS, progress: bool = True,
    unpaired_videos: int = 0, unpaired_music: int = 0, unpaired_linked: float = UNPAIRED_LINKED,
) -> Path:
    """Write `spec` (and an unpaired pool) in the MVD layout under `out` (atomically)."""
    if not 0.0 <= shared_songs < 1.0:
        raise ValueError(f"shared_songs={shared_songs} must be in [0, 1)")
    check_pool_counts(unpaired_videos, unpaired_music, unpaired_linked)
    out = Path(out)
    refuse_other_data(out)
    bench = PlantedBenchmark(spec, shared_songs=shared_songs)
    n = spec.pairs
    song = bench.song_source
    written = song[bench.music_source]  # the song each row names (label noise applied)
    with atomic_directory(out) as tmp:
        (tmp / "splits").mkdir()
        video_dir, music_dir = tmp / "features" / "video", tmp / "features" / "music"
        video_dir.mkdir(parents=True)
        music_dir.mkdir(parents=True)
        for split in ("train", "val", "test"):
            rows = [f"{bench.ids[i]},{bench.ids[written[i]]}\n"
                    for i in np.flatnonzero(bench.split == split)]
            (tmp / "splits" / f"{split}.csv").write_text("video_id,music_id\n" + "".join(rows))
        bar = progress_bar(progress, total=n, desc=f"synth mvd -> {out}", unit="pair")
        for start in range(0, n, CHUNK):
            idx = np.arange(start, min(n, start + CHUNK))
            idx = idx[bench.kept[idx]]  # training pairs left out by `train_pairs`: not written
            for i, frames in zip(idx, bench.video_frames(idx)):
                np.save(video_dir / f"{bench.ids[i]}.npy", frames[: bench.video_length[i]])
            owners = idx[song[idx] == idx]
            if len(owners):
                for i, frames in zip(owners, bench.song_frames(owners)):
                    np.save(music_dir / f"{bench.ids[i]}.npy", frames)
            bar.update(len(idx))
        bar.close()
        (tmp / TRUTH_FILE).write_text(truth_tsv(bench))
        if unpaired_videos or unpaired_music:
            pool = UnpairedPool(bench, unpaired_videos, unpaired_music, unpaired_linked)
            _write_pool(pool, tmp)
        settings = {"dataset": "mvd", "shared_songs": shared_songs,
                    **pool_settings(unpaired_videos, unpaired_music, unpaired_linked),
                    **dataclasses.asdict(spec)}
        write_marker(tmp, settings)
    return out


def pool_settings(videos: int, music: int, linked: float) -> dict:
    """The pool's entries in synth.json (and in what `ensure_synthetic` compares)."""
    return {"unpaired_videos": videos, "unpaired_music": music, "unpaired_linked": linked}


def _write_pool(pool: UnpairedPool, tmp: Path) -> None:
    features = tmp / "features"
    for side, ids, frames in (("video", pool.video_ids, pool.video_frames),
                              ("music", pool.music_ids, pool.music_frames)):
        if not ids:
            continue
        (tmp / "splits" / UNPAIRED_LISTS[side]).write_text(
            f"{side}_id\n" + "".join(f"{i}\n" for i in ids))
        for start in range(0, len(ids), CHUNK):
            idx = np.arange(start, min(len(ids), start + CHUNK))
            for i, x in zip(idx, frames(idx)):
                keep = pool.video_length[i] if side == "video" else len(x)
                np.save(features / side / f"{ids[i]}.npy", x[:keep])
    (tmp / UNPAIRED_TRUTH_FILE).write_text(rows_tsv(pool.truth_rows()))


def ensure_synthetic_mvd(root: str | Path, synthetic: dict) -> bool:
    """Write synthetic MVD under `root` for the `data.synthetic` settings unless it is there
    (datamodules.synthetic.ensure); bad settings are one-line DataErrors."""
    settings = dict(synthetic)
    shared = float(settings.pop("shared_songs", SHARED_SONGS))
    pool = pool_settings(settings.pop("unpaired_videos", 0), settings.pop("unpaired_music", 0),
                         settings.pop("unpaired_linked", UNPAIRED_LINKED))
    if settings.pop("missing", 0.0):
        raise DataError("data.synthetic.missing: MVD is curated (every listed id has "
                        "features); use 0")
    if not 0.0 <= shared < 1.0:
        raise DataError(f"data.synthetic.shared_songs={shared} must be in [0, 1)")
    try:
        check_pool_counts(*pool.values())
    except ValueError as e:
        raise DataError(f"data.synthetic: {e}") from None
    spec = planted_spec(mvd_settings(settings))
    wanted = {"dataset": "mvd", "shared_songs": shared, **pool, **dataclasses.asdict(spec)}
    return ensure_synthetic(root, wanted, lambda: write_mvd(spec, root, shared, **pool), "mvd")
