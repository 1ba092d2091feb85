"""MVD: the generic split-CSV + per-id-array layout, packing, bad input, the DataModule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.errors import DataError
from datamodules.feature_store import StoreSplit, read_meta
from datamodules.mvd import MVDDataModule, pack_mvd, store_is_current
from datamodules.synthetic.mvd import MUSIC_DIM, VIDEO_DIM, mvd_settings, write_mvd
from datamodules.synthetic.planted import PlantedBenchmark, PlantedSpec
from datamodules.synthetic.truth import read_truth
from lightning_app.retrieval import paired_retrieval_ranks

SETTINGS = {"pairs": 300, "val": 40, "test": 40, "noise": 0.3, "seed": 0}
SPEC = PlantedSpec(**mvd_settings(SETTINGS))


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mvd(SPEC, tmp_path_factory.mktemp("mvd") / "mvd", progress=False)


@pytest.fixture(scope="module")
def store(synth_root: Path) -> Path:
    return pack_mvd(synth_root, synth_root.parent / "store", progress=False)


def _csv(root: Path, split: str) -> list[list[str]]:
    return [line.split(",") for line in (root / "splits" / f"{split}.csv").read_text().split()]


# ----------------------------------------------------------------------------- synthetic layout


def test_synthetic_layout(synth_root: Path):
    rows = {s: _csv(synth_root, s) for s in ("train", "val", "test")}
    assert all(r[0] == ["video_id", "music_id"] for r in rows.values())
    assert [len(r) - 1 for r in rows.values()] == [220, 40, 40]
    songs = {m for r in rows.values() for _, m in r[1:]}
    music = {p.stem for p in (synth_root / "features" / "music").glob("*.npy")}
    videos = {p.stem for p in (synth_root / "features" / "video").glob("*.npy")}
    assert songs <= music and len(videos) == 300
    assert np.load(synth_root / "features" / "video" / f"{rows['val'][1][0]}.npy").shape == (
        SPEC.video_frames, VIDEO_DIM)
    assert np.load(synth_root / "features" / "music" / f"{next(iter(music))}.npy").shape == (
        SPEC.music_frames, MUSIC_DIM)
    settings = json.loads((synth_root / "synth.json").read_text())
    assert settings["dataset"] == "mvd" and settings["shared_songs"] == 0.1
    assert settings["span"] == 0.3
    # Truth: label noise only in train; shared songs are true pairings, not noise.
    truth = {r["id"]: r for r in read_truth(synth_root)}
    for split, r in rows.items():
        for vid, mid in r[1:]:
            assert truth[vid]["written_music_id"] == mid
            assert (truth[vid]["noisy"] == "True") == (mid != truth[vid]["true_music_id"])
            if split != "train":
                assert mid == truth[vid]["true_music_id"]
    noisy = sum(t["noisy"] == "True" for t in truth.values())
    assert 0.25 * 220 <= noisy <= 0.3 * 220
    shared = [vid for vid, mid in rows["test"][1:] if mid != vid]
    assert len(shared) == 4  # round(0.1 * 40)


def test_shared_song_videos_show_the_song_content():
    bench = PlantedBenchmark(SPEC, shared_songs=0.1)
    sharers = np.flatnonzero(bench.song_source != np.arange(SPEC.pairs))
    assert len(sharers) == 22 + 4 + 4
    owner = bench.song_source[sharers]
    assert (bench.song_source[owner] == owner).all()  # owners keep their own song
    assert (bench.split[sharers] == bench.split[owner]).all()
    np.testing.assert_array_equal(bench.content[sharers], bench.content[owner])
    np.testing.assert_array_equal(bench.style[sharers], bench.style[owner])
    with pytest.raises(ValueError, match="shared_songs"):
        PlantedBenchmark(SPEC, shared_songs=1.0)


def test_write_refuses_real_data(tmp_path: Path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="refusing to replace it"):
        write_mvd(SPEC, tmp_path / "real", progress=False)
    assert (tmp_path / "real" / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------- packing


def test_pack_round_trip(synth_root: Path, store: Path):
    meta = read_meta(store)
    assert meta["source"]["dataset"] == "mvd" and meta["source"]["rows"]["test"] == 40
    assert {m: v["dim"] for m, v in meta["modalities"].items()} == {"video": VIDEO_DIM,
                                                                    "music": MUSIC_DIM}
    assert store_is_current(synth_root, store)
    for split in ("train", "test"):
        s = StoreSplit(store, split)
        rows = _csv(synth_root, split)[1:]
        assert [(r["id"], r["music_id"]) for r in s.rows] == [tuple(r) for r in rows]
        for i in (0, 7, len(rows) - 1):
            vid, mid = rows[i]
            np.testing.assert_array_equal(
                s.frames("video", i), np.load(synth_root / "features" / "video" / f"{vid}.npy"))
            np.testing.assert_array_equal(
                s.frames("music", i), np.load(synth_root / "features" / "music" / f"{mid}.npy"))


def test_shared_songs_deduplicate_the_test_gallery(store: Path):
    from datamodules.sampling import SparseFrameDataset

    ds = SparseFrameDataset(StoreSplit(store, "test"), frames=4)
    assert len(torch.unique(ds.music_keys)) == 36 < len(ds) == 40
    batch = ds.__getitems__(list(range(len(ds))))
    # Oracle embeddings: each video embeds as its own song (pooled music frames).
    music = batch["music"].mean(dim=1)
    ranks = paired_retrieval_ranks(music, music, batch["video_key"], batch["music_key"])
    assert len(ranks["v2m"]) == 40 and len(ranks["m2v"]) == 36
    assert (ranks["v2m"] == 1).all()  # each song is in the gallery once: no ties with copies
    # Without the music ids, copies of a song would be separate gallery items and tie.
    ranks = paired_retrieval_ranks(music, music, batch["video_key"], batch["index"])
    copies = torch.bincount(ds.music_keys)[ds.music_keys]  # rows sharing each row's song
    assert sorted(ranks["v2m"].tolist()) == sorted(copies.tolist()) and (copies > 1).any()


# ----------------------------------------------------------------------------- bad input


def _make(root: Path, splits: dict | None = None, dims=(6, 4)) -> Path:
    """A tiny hand-made MVD folder: every listed id gets a [3, D] feature file."""
    splits = splits or {"train": [("v1", "s1"), ("v2", "s2"), ("v3", "s1")],
                        "val": [("v4", "s4")], "test": [("v5", "s5")]}
    rng = np.random.default_rng(0)
    for folder in ("splits", "features/video", "features/music"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        text = "video_id,music_id\n" + "".join(f"{v},{m}\n" for v, m in rows)
        (root / "splits" / f"{split}.csv").write_text(text)
        for v, m in rows:
            np.save(root / "features" / "video" / f"{v}.npy", rng.normal(size=(3, dims[0])))
            np.save(root / "features" / "music" / f"{m}.npy", rng.normal(size=(3, dims[1])))
    return root


def _error(root: Path) -> str:
    with pytest.raises(DataError) as e:
        pack_mvd(root, progress=False)
    assert "\n" not in str(e.value)
    assert not (root / "store").exists()
    return str(e.value)


def test_hand_made_folder_packs(tmp_path: Path):
    root = _make(tmp_path / "m")
    np.save(root / "features" / "video" / "v4.npy", np.ones(6, dtype=np.float16))  # [Dv] works
    meta = read_meta(pack_mvd(root, progress=False))
    assert meta["splits"]["train"]["count"] == 3 and meta["source"]["songs"] == 4
    assert StoreSplit(root / "store", "val").frames("video", 0).shape == (1, 6)


def test_missing_split_files(tmp_path: Path):
    root = _make(tmp_path / "m")
    (root / "splits" / "train.csv").unlink()
    (root / "splits" / "test.csv").unlink()
    assert _error(root) == (f"{root / 'splits'}: missing split file(s) train.csv, test.csv (MVD "
                            "needs train.csv, val.csv and test.csv with the header "
                            "video_id,music_id)")


def test_missing_root(tmp_path: Path):
    with pytest.raises(DataError, match="MVD data folder not found; generate synthetic data"):
        pack_mvd(tmp_path / "none")


def test_id_without_feature_file(tmp_path: Path):
    root = _make(tmp_path / "m")
    (root / "features" / "music" / "s2.npy").unlink()
    csv = root / "splits" / "train.csv"
    path = root / "features" / "music" / "s2.npy"
    assert _error(root) == f"{csv}:3: music id s2 has no feature file {path}"
    root = _make(tmp_path / "n")
    (root / "features" / "video" / "v5.npy").unlink()
    csv, path = root / "splits" / "test.csv", root / "features" / "video" / "v5.npy"
    assert _error(root) == f"{csv}:2: video id v5 has no feature file {path}"


def test_wrong_dimension(tmp_path: Path):
    root = _make(tmp_path / "m")
    path = root / "features" / "video" / "v4.npy"
    np.save(path, np.zeros((3, 5)))
    others = len(list(path.parent.glob("*.npy"))) - 1
    assert _error(root) == (
        f"{path}: video dimension 5, but {others} other video files have dimension 6")
    root = _make(tmp_path / "n")
    path = root / "features" / "music" / "s5.npy"
    np.save(path, np.zeros(7))
    others = len(list(path.parent.glob("*.npy"))) - 1
    assert _error(root) == (
        f"{path}: music dimension 7, but {others} other music files have dimension 4")


def test_nan_values(tmp_path: Path):
    root = _make(tmp_path / "m")
    path = root / "features" / "music" / "s4.npy"
    np.save(path, np.array([[0.0, np.inf, 0.0, 0.0]]))
    assert _error(root) == f"{path}: id s4 has NaN or inf values"


def test_duplicate_pair(tmp_path: Path):
    root = _make(tmp_path / "m", {"train": [("v1", "s1"), ("v2", "s2"), ("v1", "s1")],
                                  "val": [("v4", "s4")], "test": [("v5", "s5")]})
    csv = root / "splits" / "train.csv"
    assert _error(root) == f"{csv}:4: row (video_id v1, music_id s1) repeats {csv}:2"


def test_video_in_two_splits(tmp_path: Path):
    root = _make(tmp_path / "m", {"train": [("v1", "s1"), ("v2", "s2")],
                                  "val": [("v4", "s4")], "test": [("v5", "s5"), ("v2", "s9")]})
    train, test = root / "splits" / "train.csv", root / "splits" / "test.csv"
    assert _error(root) == (f"{test}:3: video v2 is also in split 'train' ({train}:3); "
                            "a video belongs to one split")


def test_bad_header_empty_split_and_bad_ids(tmp_path: Path):
    root = _make(tmp_path / "m")
    val = root / "splits" / "val.csv"
    val.write_text("video,song\nv4,s4\n")
    assert _error(root) == f"{val}:1: header must name the columns video_id and music_id, " \
                           "got video,song"
    val.write_text("video_id,music_id\n")
    assert _error(root) == f"{val}: no rows (only a header)"
    val.write_text("video_id,music_id\n../v4,s4\n")
    assert _error(root) == f"{val}:2: video_id '../v4' is not a valid file name"
    val.write_text("music_id,video_id,extra\ns4,v4,x\n\n")  # column order free, extras ignored
    pack_mvd(root, progress=False)


# ----------------------------------------------------------------------------- DataModule


def test_datamodule_synthesises_on_first_use(tmp_path: Path):
    root = tmp_path / "mvd"
    dm = MVDDataModule(root, batch_size=32, eval_batch_size=40, frames=16,
                       synthetic=dict(SETTINGS))
    dm.prepare_data()
    dm.setup()
    assert (root / "synth.json").exists() and dm.dims == {"video": VIDEO_DIM, "music": MUSIC_DIM}
    assert dm.truth_path == root / "truth.tsv"
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (32, 16, VIDEO_DIM) and batch["music"].shape == (32, 16, 128)
    assert batch["video_mask"].shape == (32, 16) and batch["video_mask"].dtype == torch.bool
    assert (batch["video_mask"].sum(1) == SPEC.video_frames).all()  # 12 frames < 16 slots
    assert batch["video_key"].dtype == torch.int64 and len(batch["music_id"]) == 32
    test = next(iter(dm.test_dataloader()))
    assert test["music"].shape == (40, 16, MUSIC_DIM)
    assert len(torch.unique(test["music_key"])) < len(test["video_key"])
    # Same settings: nothing rewritten; other settings: regenerated; real data: left alone.
    stamp = (root / "synth.json").stat().st_mtime_ns
    MVDDataModule(root, synthetic=dict(SETTINGS)).prepare_data()
    assert (root / "synth.json").stat().st_mtime_ns == stamp
    MVDDataModule(root, synthetic={**SETTINGS, "shared_songs": 0.0}).prepare_data()
    assert json.loads((root / "synth.json").read_text())["shared_songs"] == 0.0
    real = _make(tmp_path / "real")
    dm = MVDDataModule(real, synthetic=dict(SETTINGS))
    dm.prepare_data()
    assert not (real / "synth.json").exists() and dm.dims == {"video": 6, "music": 4}


def test_datamodule_bad_settings(tmp_path: Path):
    with pytest.raises(DataError, match="data.synthetic: pairs=10 leaves no training pairs"):
        MVDDataModule(tmp_path / "x", synthetic={"pairs": 10, "val": 5, "test": 5}).prepare_data()
    with pytest.raises(DataError, match="data.synthetic.missing: MVD is curated"):
        MVDDataModule(tmp_path / "x", synthetic={"missing": 0.1}).prepare_data()
    with pytest.raises(DataError, match="frames=0"):
        MVDDataModule(tmp_path / "x", frames=0)
