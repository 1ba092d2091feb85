"""Bad unpaired lists, bad pool pairs, and datasets without a pool or planted spans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datamodules.errors import DataError
from datamodules.feature_store import read_meta
from datamodules.himv200k import HIMV200KDataModule
from datamodules.mvd import MVDDataModule, pack_mvd, store_is_current
from datamodules.synthetic.himv200k import write_himv200k
from datamodules.synthetic.planted import PlantedSpec
from datamodules.train_pairs import TrainPairs

SPLITS = {"train": [("v1", "s1"), ("v2", "s2"), ("v3", "s1")], "val": [("v4", "s4")],
          "test": [("v5", "s5")]}


def _make(root: Path, videos=("u1", "u2"), music=("t1",), dims=(6, 4)) -> Path:
    """A hand-made MVD folder with a pool; every listed id gets a [3, D] feature file."""
    rng = np.random.default_rng(0)
    for folder in ("splits", "features/video", "features/music"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for split, rows in SPLITS.items():
        text = "video_id,music_id\n" + "".join(f"{v},{m}\n" for v, m in rows)
        (root / "splits" / f"{split}.csv").write_text(text)
        for v, m in rows:
            np.save(root / "features" / "video" / f"{v}.npy", rng.normal(size=(3, dims[0])))
            np.save(root / "features" / "music" / f"{m}.npy", rng.normal(size=(3, dims[1])))
    for side, ids, dim in (("video", videos, dims[0]), ("music", music, dims[1])):
        name = "unpaired_videos.csv" if side == "video" else "unpaired_music.csv"
        (root / "splits" / name).write_text(f"{side}_id\n" + "".join(f"{i}\n" for i in ids))
        for i in ids:
            np.save(root / "features" / side / f"{i}.npy", rng.normal(size=(2 + len(i), dim)))
    return root


def _error(root: Path) -> str:
    with pytest.raises(DataError) as e:
        pack_mvd(root, progress=False)
    assert "\n" not in str(e.value) and not (root / "store").exists()
    return str(e.value)


def test_hand_made_pool_packs_without_salient_or_text(tmp_path: Path):
    root = _make(tmp_path / "m")
    dm = MVDDataModule(root, batch_size=2, eval_batch_size=4, frames=4)
    dm.prepare_data()
    dm.setup()
    assert dm.unpaired_ids("video") == ["u1", "u2"] and dm.unpaired_ids("music") == ["t1"]
    batch = next(iter(dm.unpaired_dataloader("video", 4)))
    assert "salient" not in batch and batch["video_mask"].sum(1).tolist() == [4, 4]
    assert "salient" not in next(iter(dm.train_dataloader()))  # real data: no planted spans
    dm.set_extra_pairs(dm.pairs_from_ids(["u2"], ["t1"], [0.5]))
    assert len(dm.train_dataset()) == 4


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: _write(r, "unpaired_videos.csv", "video_id\nu1\nv2\n"),
     "unpaired_videos.csv:3: unpaired video v2 is a split's video; an unpaired item belongs "
     "to no split"),
    (lambda r: _write(r, "unpaired_music.csv", "music_id\ns4\n"),
     "unpaired_music.csv:2: unpaired music s4 is named by a split row"),
    (lambda r: _write(r, "unpaired_videos.csv", "video_id\nu1\nu2\nu1\n"),
     "unpaired_videos.csv:4: video_id u1 repeats"),
    (lambda r: _write(r, "unpaired_videos.csv", "video_id\nu1\nu9\n"),
     "unpaired_videos.csv:3: video id u9 has no feature file"),
    (lambda r: _write(r, "unpaired_music.csv", "song\nt1\n"),
     "unpaired_music.csv:1: header must name the column music_id, got song"),
    (lambda r: _write(r, "unpaired_music.csv", "music_id\n"),
     "unpaired_music.csv: no rows (only a header); delete the file for no unpaired pool"),
    (lambda r: _write(r, "unpaired_videos.csv", "video_id\n../x\n"),
     "unpaired_videos.csv:2: video_id '../x' is not a valid file name"),
    (lambda r: np.save(r / "features" / "video" / "u1.npy", np.zeros((3, 5))),
     "u1.npy: video dimension 5, but 6 other video files have dimension 6"),
])
def test_bad_unpaired_lists(tmp_path: Path, edit, message):
    root = _make(tmp_path / "m")
    edit(root)
    assert message in _error(root)


def _write(root: Path, name: str, text: str) -> None:
    (root / "splits" / name).write_text(text)


def test_the_fingerprint_covers_the_lists(tmp_path: Path):
    root = _make(tmp_path / "m", videos=("u1",), music=("t1",))
    store = pack_mvd(root, progress=False)
    assert store_is_current(root, store)
    _write(root, "unpaired_videos.csv", "video_id\nu1\nv9\n")
    np.save(root / "features" / "video" / "v9.npy", np.zeros((2, 6)))
    assert not store_is_current(root, store)
    (root / "splits" / "unpaired_videos.csv").unlink()
    (root / "features" / "video" / "v9.npy").unlink()
    (root / "features" / "video" / "u1.npy").unlink()
    assert not store_is_current(root, store)
    assert "unpaired_video" not in read_meta(pack_mvd(root, progress=False))["splits"]


def test_bad_pool_pairs(tmp_path: Path):
    dm = MVDDataModule(_make(tmp_path / "m"), frames=4)
    with pytest.raises(DataError, match="pairs_from_ids: call setup"):
        dm.pairs_from_ids(["u1"], ["t1"], [1.0])
    dm.prepare_data()
    dm.setup()
    with pytest.raises(DataError, match="music id 'nope' is neither in the train split nor"):
        dm.pairs_from_ids(["u1"], ["nope"], [1.0])
    with pytest.raises(DataError, match="video id 'v5' is neither"):  # a test video
        dm.pairs_from_ids(["v5"], ["t1"], [1.0])
    with pytest.raises(DataError, match="1 video ids, 2 music ids and 1 weights differ"):
        dm.pairs_from_ids(["u1"], ["t1", "s1"], [1.0])
    flags = np.array([True])
    with pytest.raises(DataError, match="pair 0 names unpaired video 2, but the dataset's "
                                        "unpaired video list has 2 items"):
        dm.set_extra_pairs(TrainPairs([2], [0], [1.0], flags, ~flags))
    with pytest.raises(DataError, match="weight -1.0 of pair 0 must be finite"):
        dm.pairs_from_ids(["u1"], ["t1"], [-1.0])
    with pytest.raises(DataError, match="video_unpaired must be a bool array of 1 entries"):
        TrainPairs([0], [0], [1.0], np.array([1]))
    with pytest.raises(DataError, match="unpaired side 'audio' must be one of video, music"):
        dm.unpaired_dataloader("audio", 4)
    with pytest.raises(DataError, match="batch_size=0 must be >= 1"):
        dm.unpaired_dataloader("video", 0)


def test_datasets_without_pool_support_answer_none(tmp_path: Path):
    spec = PlantedSpec(pairs=30, val=5, test=5, seed=1)
    root = write_himv200k(spec, tmp_path / "himv", progress=False)
    dm = HIMV200KDataModule(root, val_size=5, test_size=5)
    dm.prepare_data()
    dm.setup()
    assert dm.unpaired_dataloader("video", 8) is None and dm.unpaired_ids("music") == []
    assert "salient" not in next(iter(dm.train_dataloader()))
