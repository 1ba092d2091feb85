"""Write the planted benchmark in the HIMV-200K layout that `datamodules.himv200k` reads.

    <out>/Youtube_ID.txt                one YouTube id per line
    <out>/splits/{train,val,test}.txt   ids per split (last `test` ids test, `val` before)
    <out>/features/music/<id>.npy       1140-d float32 (or the authors' <id>.pkl pickles)
    <out>/features/video/<id>.npy       1024-d float32
    <out>/truth.tsv, <out>/synth.json   hidden truth and the generator settings

A fraction `missing` of ids gets no feature files, as deleted YouTube videos do in the
real list. Music is named after the pair, so with `shared_songs` several music ids hold one
song (the same clean content, each with its own per-frame noise: the same song cut from
different videos); truth.tsv names each pair's song (`true_music_id`) and group. Training
pairs left out by `spec.train_pairs` are not written (nor listed). The folder is written
atomically and replaces an earlier synthetic folder, but never a folder of other data (one
without synth.json).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np

from datamodules.atomic import atomic_directory
from datamodules.progress import progress_bar
from datamodules.synthetic.ensure import refuse_other_data, write_marker
from datamodules.synthetic.planted import PlantedBenchmark, PlantedSpec
from datamodules.synthetic.truth import TRUTH_FILE, truth_tsv

CHUNK = 1024


def write_himv200k(
    spec: PlantedSpec,
    out: str | Path,
    missing: float = 0.0,
    music_format: str = "npy",
    progress: bool = True,
    shared_songs: float = 0.0,
) -> Path:
    if spec.music_dim != 1140 or spec.video_dim != 1024:
        spec = dataclasses.replace(spec, music_dim=1140, video_dim=1024)
    if music_format not in ("npy", "pkl"):
        raise ValueError(f"music_format must be 'npy' or 'pkl', got {music_format!r}")
    if not 0.0 <= missing < 1.0:
        raise ValueError(f"missing={missing} must be in [0, 1)")
    out = Path(out)
    refuse_other_data(out)
    bench = PlantedBenchmark(spec, shared_songs=shared_songs)
    n = spec.pairs
    drop = np.random.default_rng([spec.seed, 99]).random(n) < missing
    drop |= ~bench.kept  # training pairs left out by `train_pairs` are not written at all
    with atomic_directory(out) as tmp:
        (tmp / "splits").mkdir()
        music_dir, video_dir = tmp / "features" / "music", tmp / "features" / "video"
        music_dir.mkdir(parents=True)
        video_dir.mkdir(parents=True)
        kept_ids = [bench.ids[i] for i in np.flatnonzero(bench.kept)]
        (tmp / "Youtube_ID.txt").write_text("".join(f"{i}\n" for i in kept_ids))
        for split in ("train", "val", "test"):
            ids = [bench.ids[i] for i in np.flatnonzero(bench.split == split)]
            (tmp / "splits" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        bar = progress_bar(progress, total=n, desc=f"synth himv200k -> {out}", unit="pair")
        for start in range(0, n, CHUNK):
            idx = np.arange(start, min(n, start + CHUNK))
            music, video = bench.music_vectors(idx), bench.video_vectors(idx)
            for row, i in enumerate(idx):
                if drop[i]:
                    continue
                vid = bench.ids[i]
                np.save(video_dir / f"{vid}.npy", video[row])
                if music_format == "npy":
                    np.save(music_dir / f"{vid}.npy", music[row])
                else:
                    with open(music_dir / f"{vid}.pkl", "wb") as f:
                        pickle.dump(music[row].astype(np.float64), f, protocol=2)
            bar.update(len(idx))
        bar.close()
        (tmp / TRUTH_FILE).write_text(truth_tsv(bench))
        settings = {"dataset": "himv200k", "missing": missing, "shared_songs": shared_songs,
                    **dataclasses.asdict(spec)}
        write_marker(tmp, settings)
    return out
