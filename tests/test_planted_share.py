"""Benchmark conditions of the planted data: share, train_pairs, shared songs, near copies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from synth_digest import folder_digest

from datamodules.synthetic.himv200k import write_himv200k
from datamodules.synthetic.mvd import write_mvd
from datamodules.synthetic.planted import PlantedBenchmark, PlantedSpec
from datamodules.synthetic.truth import read_truth
from datamodules.synthetic.youtube8m import write_youtube8m
from lightning_app.cli import main

SMALL = PlantedSpec(pairs=60, val=10, test=10, music_frames=4, video_frames=4, noise=0.1, seed=3)
# Digests of these datasets as written before the benchmark conditions existed (commit
# 5cba3f3, computed with tests.synth_digest): the defaults must keep writing exactly them.
BEFORE = {
    "himv200k": "ced2e449055950130b99fcd6c2980cd6079ce2c3845663473d9d48b56efef866",
    "youtube8m": "013d505d11f395b8804ce2e8d73f5e8efc0be68dbe7ba269926a87d62b413ff0",
    "mvd": "20f159ce55616ec346b123b2543862d681a2465e3c749efb42cb2aa6af2576c5",
}


def _write(dataset: str, spec: PlantedSpec, out: Path, **kw) -> Path:
    if dataset == "himv200k":
        return write_himv200k(spec, out, progress=False, **kw)
    if dataset == "youtube8m":
        return write_youtube8m(spec, out, shards=2, text=True, progress=False, **kw)
    mvd_spec = dataclasses.replace(spec, music_dim=16, video_dim=24)
    return write_mvd(mvd_spec, out, progress=False, **kw)


@pytest.mark.parametrize("dataset", sorted(BEFORE))
def test_defaults_and_share_one_write_the_same_files_as_before(dataset, tmp_path):
    kw = {"missing": 0.05} if dataset == "himv200k" else {}
    if dataset == "mvd":
        kw = {"shared_songs": 0.2}
    out = _write(dataset, SMALL, tmp_path / "default", **kw)
    assert folder_digest(out) == BEFORE[dataset]
    explicit = dataclasses.replace(SMALL, share=1.0, train_pairs=0, near_duplicates=0.0)
    assert folder_digest(_write(dataset, explicit, tmp_path / "explicit", **kw)) == BEFORE[dataset]


# ----------------------------------------------------------------------------------- share


def _residual_r2(share: float, seed: int) -> float:
    """Held-out R^2 of ridge(video features + style) -> music features minus the style mean.

    0 means: knowing a pair's video tells nothing about its own music beyond its style.
    Whole videos are salient and feature noise is small, so only `share` limits it.
    """
    n = 2000
    spec = PlantedSpec(pairs=n, val=100, test=100, styles=8, music_dim=48, video_dim=48,
                       span=1.0, feature_noise=0.1, share=share, seed=seed)
    bench = PlantedBenchmark(spec)
    idx = np.arange(n)
    video = bench.video_vectors(idx).astype(np.float64)
    music = bench.music_vectors(idx).astype(np.float64)
    style = bench.style
    fit, held = idx[: n // 2], idx[n // 2 :]
    means = np.stack([music[fit][style[fit] == g].mean(0) for g in range(spec.styles)])
    target = music - means[style]
    x = np.hstack([video, np.eye(spec.styles)[style]])
    x = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-8)
    w = np.linalg.solve(x[fit].T @ x[fit] + 10.0 * np.eye(x.shape[1]), x[fit].T @ target[fit])
    return float(1.0 - ((target[held] - x[held] @ w) ** 2).mean() / (target[held] ** 2).mean())


def test_share_zero_leaves_only_the_style_in_common():
    # Measured: share 0 gives about -0.03 (ridge overfits a little), share 1 about 0.5-0.6.
    assert _residual_r2(0.0, seed=0) < 0.005
    assert _residual_r2(1.0, seed=0) > 0.3


def test_share_keeps_each_modality_spread_and_decorrelates_them():
    for share in (0.0, 0.5, 1.0):
        spec = PlantedSpec(pairs=4000, val=10, test=10, music_dim=8, video_dim=8, share=share)
        bench = PlantedBenchmark(spec)
        centre = bench.style_centres[bench.style]
        dv, dm = bench.content - centre, bench.music_content - centre
        for d in (dv, dm):  # spread tau around the style centre whatever the share
            assert d.std() == pytest.approx(spec.tau, rel=0.03)
        corr = (dv * dm).mean() / (dv.std() * dm.std())
        assert corr == pytest.approx(share, abs=0.03)


# ----------------------------------------------------------------------------- train_pairs


def test_train_pairs_keeps_validation_and_test_identical(tmp_path):
    spec = PlantedSpec(pairs=200, val=30, test=30, music_dim=8, video_dim=8, noise=0.2,
                       near_duplicates=0.1, seed=5)
    full = PlantedBenchmark(spec, shared_songs=0.2)
    for train_pairs in (20, 70):
        sub = PlantedBenchmark(dataclasses.replace(spec, train_pairs=train_pairs),
                               shared_songs=0.2)
        kept_train = np.flatnonzero(sub.split == "train")
        np.testing.assert_array_equal(kept_train, np.arange(train_pairs))  # a prefix
        assert (sub.split == "unused").sum() == 140 - train_pairs
        evaluation = np.flatnonzero(np.isin(full.split, ("val", "test")))
        np.testing.assert_array_equal(sub.split[evaluation], full.split[evaluation])
        for name in ("song_source", "near_source", "style"):
            np.testing.assert_array_equal(getattr(sub, name)[evaluation],
                                          getattr(full, name)[evaluation])
        for draw in ("video_vectors", "music_vectors", "video_frames", "music_frames"):
            np.testing.assert_array_equal(getattr(sub, draw)(evaluation),
                                          getattr(full, draw)(evaluation))
        # The training conditions are drawn among the kept pairs only.
        assert set(sub.song_source[kept_train]) <= set(kept_train)
        assert set(sub.near_source[kept_train]) <= set(kept_train)
        assert set(sub.music_source[kept_train]) <= set(kept_train)
        assert sub.noisy[kept_train].sum() == round(0.2 * train_pairs)
    # Written data: the same validation and test files, only a training prefix.
    a = write_himv200k(spec, tmp_path / "all", progress=False, shared_songs=0.2)
    b = write_himv200k(dataclasses.replace(spec, train_pairs=20), tmp_path / "sub",
                       progress=False, shared_songs=0.2)
    for split in ("val", "test"):
        ids = (a / "splits" / f"{split}.txt").read_text()
        assert (b / "splits" / f"{split}.txt").read_text() == ids
        for vid in ids.split():
            for modality in ("music", "video"):
                rel = Path("features") / modality / f"{vid}.npy"
                assert (a / rel).read_bytes() == (b / rel).read_bytes()
    train = (b / "splits" / "train.txt").read_text().split()
    assert train == (a / "splits" / "train.txt").read_text().split()[:20]
    assert len(list((b / "features" / "video").iterdir())) == 80
    assert len(read_truth(b)) == 80


def test_train_pairs_mvd_writes_every_song_its_rows_name(tmp_path):
    from datamodules.mvd import pack_mvd

    spec = PlantedSpec(pairs=200, val=30, test=30, music_dim=8, video_dim=8, noise=0.2,
                       train_pairs=40, near_duplicates=0.1, seed=2)
    root = write_mvd(spec, tmp_path / "mvd", shared_songs=0.3, progress=False)
    store = pack_mvd(root, tmp_path / "store", progress=False)  # fails on a missing song
    assert store.is_dir()
    rows = (root / "splits" / "train.csv").read_text().split()[1:]
    assert len(rows) == 40


# -------------------------------------------------------------- shared songs, near copies


def test_shared_songs_and_near_copies_are_planted_and_recorded(tmp_path):
    spec = PlantedSpec(pairs=300, val=60, test=60, seed=4, near_duplicates=0.2,
                       near_duplicate_scale=0.05)
    a = write_himv200k(spec, tmp_path / "a", progress=False, shared_songs=0.2)
    b = write_himv200k(spec, tmp_path / "b", progress=False, shared_songs=0.2)
    assert folder_digest(a) == folder_digest(b)  # deterministic by seed
    c = write_himv200k(dataclasses.replace(spec, seed=5), tmp_path / "c", progress=False,
                       shared_songs=0.2)
    assert folder_digest(c) != folder_digest(a)
    truth = {r["id"]: r for r in read_truth(a)}
    bench = PlantedBenchmark(spec, shared_songs=0.2)
    for split, size in (("train", 180), ("val", 60), ("test", 60)):
        rows = [r for r in truth.values() if r["split"] == split]
        sharers = [r for r in rows if r["true_music_id"] != r["id"]]
        copies = [r for r in rows if r["near_duplicate_of"]]
        assert len(sharers) == round(0.2 * size) and len(copies) == round(0.2 * size)
        for r in sharers:  # same song, same style, same group as the owner
            owner = truth[r["true_music_id"]]
            assert owner["true_music_id"] == owner["id"]
            assert (r["style"], r["group"]) == (owner["style"], owner["group"])
        for r in copies:
            original = truth[r["near_duplicate_of"]]
            assert r["split"] == original["split"] and r["group"] == original["group"]
            assert r["true_music_id"] == r["id"]  # copies take part in no shared song
    # A shared song's music files: the same clean song with their own noise. A near copy's
    # content lies tau * scale * sqrt(d) from its original's.
    ids = bench.ids
    sharer = next(i for i in range(300) if bench.song_source[i] != i)
    owner = bench.song_source[sharer]
    np.testing.assert_array_equal(bench.music_content[sharer], bench.music_content[owner])
    m = [np.load(a / "features" / "music" / f"{ids[i]}.npy") for i in (sharer, owner)]
    assert not np.array_equal(m[0], m[1])
    copy = next(i for i in range(300) if bench.near_source[i] != i)
    dist = np.linalg.norm(bench.content[copy] - bench.content[bench.near_source[copy]])
    assert dist == pytest.approx(spec.tau * 0.05 * np.sqrt(spec.content_dim), rel=0.6)
    assert dist < 0.2 * np.linalg.norm(bench.content[copy] - bench.content[(copy + 1) % 300])


def test_youtube8m_shared_songs_in_truth(tmp_path):
    spec = PlantedSpec(pairs=80, val=20, test=20, music_frames=4, video_frames=4, seed=1)
    out = write_youtube8m(spec, tmp_path / "y8m", shards=1, progress=False, shared_songs=0.25)
    rows = read_truth(out)
    assert sum(r["true_music_id"] != r["id"] for r in rows) == 10 + 5 + 5
    assert {"near_duplicate_of", "group"} <= set(rows[0])


# ------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize("kw, message", [
    ({"share": 1.5}, "share=1.5 must be in [0, 1]"),
    ({"train_pairs": 41}, "train_pairs=41 must be in [0, 40]"),
    ({"near_duplicates": 1.0}, "near_duplicates=1.0 must be in [0, 1)"),
    ({"near_duplicate_scale": -1.0}, "near_duplicate_scale=-1.0 must be >= 0"),
])
def test_bad_condition_values(kw, message):
    with pytest.raises(ValueError) as e:
        PlantedSpec(pairs=60, val=10, test=10, **kw)
    assert message in str(e.value)


@pytest.mark.parametrize("flags, message", [
    (["--share", "-0.1"], "vmr synth: share=-0.1 must be in [0, 1]"),
    (["--train-pairs", "50"], "vmr synth: train_pairs=50 must be in [0, 40]"),
    (["--shared-songs", "1"], "vmr synth: --shared-songs=1.0 must be in [0, 1)"),
])
def test_bad_synth_flags(flags, message, tmp_path, capsys):
    args = ["synth", "--dataset", "himv200k", "--out", str(tmp_path / "x"), "--pairs", "60",
            "--val", "10", "--test", "10", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("override, key", [
    ("data.synthetic.share=2", "data.synthetic.share"),
    ("data.synthetic.train_pairs=99999", "data.synthetic.train_pairs"),
    ("data.synthetic.near_duplicates=-0.5", "data.synthetic.near_duplicates"),
    ("data.synthetic.shared_songs=1.5", "data.synthetic.shared_songs"),
])
def test_bad_condition_config(override, key):
    from lightning_app.config import load_config
    from lightning_app.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        load_config("quickstart", [override])
