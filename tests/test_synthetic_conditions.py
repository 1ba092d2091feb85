"""SSVMR's planted conditions: filler, variable video lengths, the unpaired pool, defaults."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from datamodules.mvd import MVDDataModule
from datamodules.synthetic.ensure import MARKER
from datamodules.synthetic.himv200k import write_himv200k
from datamodules.synthetic.mvd import mvd_settings, write_mvd
from datamodules.synthetic.planted import PlantedBenchmark, PlantedSpec
from datamodules.synthetic.pool import UnpairedPool
from datamodules.synthetic.truth import PoolTruth, read_truth
from datamodules.synthetic.youtube8m import write_youtube8m
from datamodules.tfrecord import iter_records, parse_sequence_example

SMALL = {"pairs": 60, "val": 10, "test": 10, "styles": 4, "music_frames": 6, "video_frames": 8,
         "seed": 3, "noise": 0.2}
POOL = {"unpaired_videos": 9, "unpaired_music": 7, "unpaired_linked": 0.5}
# Digests of the features and split files these writers produced before filler, min_frames
# and the unpaired pool existed (computed at commit 95c19ca with `_digest`).
BEFORE = {
    "mvd": "ed65871796186a146a333204e94387294cba863eed9380be8fd9fc8ddeaa64e2",
    "himv200k": "57b71d8a469a974ebc3e09aa22192b76430e2f9588cbd3dac1e3fdcf4deaba38",
    "youtube8m": "62437e3b099edde9230761d16024c2419808299d26ab1fe02bb3e8a45df045ad",
}


def _digest(root: Path, truth: bool = False) -> str:
    """Every written file but synth.json (and the truth files unless `truth`), by content;
    TFRecords by their parsed records (protobuf map order varies between processes)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name == MARKER or (p.name.startswith("truth") and not truth):
            continue
        h.update(str(p.relative_to(root)).encode() + b"\0")
        if p.suffix == ".tfrecord":
            for _, rec in iter_records(p):
                ctx, lists = parse_sequence_example(rec)
                h.update(repr((sorted((k, [np.asarray(v).tobytes() for v in vals])
                                      for k, vals in ctx.items()),
                               sorted(lists.items()))).encode())
        else:
            h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _mvd_spec(**kwargs) -> PlantedSpec:
    return PlantedSpec(**mvd_settings({**SMALL, **kwargs}))


# ----------------------------------------------------------------------------- defaults


def test_defaults_write_the_data_written_before(tmp_path: Path):
    written = {
        "mvd": write_mvd(_mvd_spec(), tmp_path / "mvd", progress=False),
        "himv200k": write_himv200k(PlantedSpec(**SMALL), tmp_path / "himv", progress=False),
        "youtube8m": write_youtube8m(PlantedSpec(**SMALL), tmp_path / "y8m", shards=2,
                                     text=True, progress=False),
    }
    assert {name: _digest(root) for name, root in written.items()} == BEFORE
    assert not (written["mvd"] / "splits" / "unpaired_videos.csv").exists()


def test_older_synthetic_roots_stay_current(tmp_path: Path):
    """A root whose synth.json predates the new keys is not regenerated at their defaults."""
    settings = {"pairs": 60, "val": 10, "test": 10, "video_frames": 8, "music_frames": 8}
    dm = MVDDataModule(tmp_path / "mvd", synthetic=dict(settings))
    dm.prepare_data()
    marker = tmp_path / "mvd" / MARKER
    old = json.loads(marker.read_text())
    for key in ("filler", "min_frames", "unpaired_videos", "unpaired_music", "unpaired_linked"):
        del old[key]
    marker.write_text(json.dumps(old))
    before = marker.stat().st_mtime_ns
    MVDDataModule(tmp_path / "mvd", synthetic=dict(settings)).prepare_data()
    assert marker.stat().st_mtime_ns == before
    # ... while asking for another condition regenerates it.
    MVDDataModule(tmp_path / "mvd", synthetic={**settings, "filler": "background"}).prepare_data()
    assert json.loads(marker.read_text())["filler"] == "background"


# ----------------------------------------------------------------------------- determinism


def test_new_conditions_are_deterministic_by_seed(tmp_path: Path):
    spec = _mvd_spec(filler="background", min_frames=3)
    a = write_mvd(spec, tmp_path / "a", progress=False, **POOL)
    b = write_mvd(spec, tmp_path / "b", progress=False, **POOL)
    c = write_mvd(dataclasses.replace(spec, seed=4), tmp_path / "c", progress=False, **POOL)
    assert _digest(a, truth=True) == _digest(b, truth=True)
    assert _digest(a, truth=True) != _digest(c, truth=True)
    ids = {s: (a / "splits" / f"unpaired_{s}.csv").read_text() for s in ("videos", "music")}
    assert ids != {s: (c / "splits" / f"unpaired_{s}.csv").read_text()
                   for s in ("videos", "music")}


# ----------------------------------------------------------------------------- filler


def _probe_accuracy(filler: str, seed: int) -> float:
    """Balanced accuracy of a nearest-centroid probe telling salient from filler frames.

    Fitted on the single frames of half the videos, scored on the other half.
    """
    spec = _mvd_spec(pairs=300, val=20, test=20, video_frames=12, filler=filler, seed=seed)
    bench = PlantedBenchmark(spec)
    idx = np.arange(spec.pairs)
    x = bench.video_frames(idx)
    t = np.arange(spec.video_frames)
    salient = (t >= bench.span_start[:, None]) & (
        t < (bench.span_start + bench.span_length)[:, None])
    fit, score = idx < 150, idx >= 150
    xf, yf = x[fit].reshape(-1, x.shape[-1]), salient[fit].reshape(-1)
    xs, ys = x[score].reshape(-1, x.shape[-1]), salient[score].reshape(-1)
    mu, sd = xf.mean(0), xf.std(0)
    xf, xs = (xf - mu) / sd, (xs - mu) / sd
    c1, c0 = xf[yf].mean(0), xf[~yf].mean(0)
    pred = ((xs - c1) ** 2).sum(1) < ((xs - c0) ** 2).sum(1)
    return 0.5 * (pred[ys].mean() + (~pred[~ys]).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_background_filler_is_distinguishable_and_same_is_not(seed: int):
    assert _probe_accuracy("background", seed) > 0.85  # chance: 0.5
    assert abs(_probe_accuracy("same", seed) - 0.5) < 0.06


def test_filler_changes_only_the_filler():
    same = PlantedBenchmark(_mvd_spec())
    background = PlantedBenchmark(_mvd_spec(filler="background"))
    np.testing.assert_array_equal(same.content, background.content)
    np.testing.assert_array_equal(same.span_start, background.span_start)
    idx = np.arange(60)
    inside = (np.arange(8) >= same.span_start[:, None]) & (
        np.arange(8) < (same.span_start + same.span_length)[:, None])
    a, b = same.video_frames(idx), background.video_frames(idx)
    np.testing.assert_array_equal(a[inside], b[inside])
    assert not np.allclose(a[~inside], b[~inside])
    # Background contents lie away from every song content: nearest style centre is far.
    d_filler = np.linalg.norm(background.distractor[:, None] - same.style_centres[None], axis=2)
    d_song = np.linalg.norm(same.content[:, None] - same.style_centres[None], axis=2)
    assert d_filler.min(1).mean() > 2 * d_song.min(1).mean()


# ----------------------------------------------------------------------------- lengths


def test_variable_lengths_lie_in_range_with_spans_inside(tmp_path: Path):
    spec = _mvd_spec(video_frames=10, min_frames=4)
    root = write_mvd(spec, tmp_path / "mvd", progress=False, **POOL)
    lengths = {p.stem: len(np.load(p)) for p in (root / "features" / "video").glob("*.npy")}
    assert len(lengths) == 60 + POOL["unpaired_videos"]
    assert set(lengths.values()) <= set(range(4, 11)) and len(set(lengths.values())) >= 4
    truth = read_truth(root) + [r for r in PoolTruth.load(root).rows.values()
                                if r["side"] == "video"]
    for row in truth:
        start, length = int(row["span_start"]), int(row["span_length"])
        assert 0 <= start and length >= 1 and start + length <= lengths[row["id"]]
    songs = [len(np.load(p)) for p in (root / "features" / "music").glob("*.npy")]
    assert set(songs) == {spec.music_frames}
    full = write_mvd(_mvd_spec(video_frames=10), tmp_path / "full", progress=False)
    assert {len(np.load(p)) for p in (full / "features" / "video").glob("*.npy")} == {10}


# ----------------------------------------------------------------------------- the pool


def test_pool_plants_hidden_pairs_and_leaves_paired_data_alone(tmp_path: Path):
    spec = _mvd_spec()
    bench = PlantedBenchmark(spec)
    pool = UnpairedPool(bench, 9, 7, 0.5)
    assert pool.hidden_pairs == round(0.5 * 7)
    ids = pool.video_ids + pool.music_ids
    assert len(set(ids)) == 16 and not set(ids) & set(bench.ids)
    linked = np.flatnonzero(pool.video_partner >= 0)
    np.testing.assert_array_equal(pool.music_content[pool.video_partner[linked]],
                                  pool.video_content[linked])
    singles = np.flatnonzero(pool.music_partner < 0)
    d = np.linalg.norm(pool.music_content[singles][:, None] - pool.video_content[None], axis=2)
    assert d.min() > 0.1  # a single shares no content with any pool video
    # Pool items are drawn like paired ones: spread around the same style centres.
    off = pool.video_content - bench.style_centres[pool.video_style]
    assert 0.3 < off.std() / spec.tau < 1.7
    with_pool = write_mvd(spec, tmp_path / "pool", progress=False, **POOL)
    without = write_mvd(spec, tmp_path / "none", progress=False)
    for split in ("train", "val", "test"):
        assert ((with_pool / "splits" / f"{split}.csv").read_text()
                == (without / "splits" / f"{split}.csv").read_text())
    for vid in bench.ids[:5] + bench.ids[-5:]:
        np.testing.assert_array_equal(np.load(with_pool / "features" / "video" / f"{vid}.npy"),
                                      np.load(without / "features" / "video" / f"{vid}.npy"))
    truth = PoolTruth.load(with_pool)
    hidden = [(v, truth.partner(v)) for v in truth.ids("video") if truth.partner(v)]
    assert len(hidden) == 4 and all(truth.hidden_pair(v, m) for v, m in hidden)
    assert all(truth.partner(m) == v for v, m in hidden)
    assert PoolTruth.load(without) is None


def test_linked_fraction_extremes():
    bench = PlantedBenchmark(_mvd_spec())
    assert UnpairedPool(bench, 5, 8, 0.0).hidden_pairs == 0
    assert UnpairedPool(bench, 5, 8, 1.0).hidden_pairs == 5
    assert UnpairedPool(bench, 0, 3, 1.0).hidden_pairs == 0
