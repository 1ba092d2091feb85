"""HIMV-200K: id parsing, splits, packing into the feature store, the DataModule, batches."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datamodules.atomic import atomic_directory, write_text
from datamodules.errors import DataError
from datamodules.feature_store import Item, ModalitySpec, StoreSplit, read_meta, write_store
from datamodules.himv200k import (
    HIMV200KDataModule,
    load_or_create_splits,
    pack_himv200k,
    parse_youtube_id,
    read_youtube_ids,
    store_is_current,
)
from datamodules.pairs import PairDataset
from datamodules.safe_pickle import load_array_pickle

VID = "dQw4w9WgXcQ"
SYNTH = {"pairs": 300, "val": 50, "test": 50, "seed": 0, "missing": 0.0}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _ids(root: Path, split: str | None = None) -> list[str]:
    name = f"splits/{split}.txt" if split else "Youtube_ID.txt"
    return (root / name).read_text().split()


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- ids


@pytest.mark.parametrize(
    "text",
    [
        VID,
        f"  {VID}  \n",
        f"https://www.youtube.com/watch?v={VID}",
        f"https://www.youtube.com/watch?v={VID}&t=42s&list=PL123",
        f"https://m.youtube.com/watch?feature=share&v={VID}",
        f"https://youtu.be/{VID}",
        f"https://youtu.be/{VID}?si=AbCd",
        f"https://www.youtube.com/embed/{VID}?autoplay=1",
        f"https://www.youtube.com/shorts/{VID}",
        f"http://www.youtube.com/v/{VID}?version=3",
    ],
)
def test_parse_youtube_id(text):
    assert parse_youtube_id(text) == VID


def test_parse_youtube_id_keeps_dashes_and_underscores():
    assert parse_youtube_id("-a_B-c_D-e_") == "-a_B-c_D-e_"
    assert parse_youtube_id("https://youtu.be/-a_B-c_D-e_") == "-a_B-c_D-e_"


@pytest.mark.parametrize("text", ["not an id!", "https://example.com/video", "", "a b"])
def test_parse_youtube_id_rejects(text):
    assert parse_youtube_id(text) is None


def test_read_youtube_ids_skips_comments_blanks_and_duplicates(tmp_path):
    path = tmp_path / "Youtube_ID.txt"
    path.write_text(f"# header\n{VID}\n\nhttps://youtu.be/abc\n{VID}\n  \n")
    assert read_youtube_ids(path) == [VID, "abc"]


def test_id_file_with_bom_and_crlf(tmp_path):
    path = tmp_path / "Youtube_ID.txt"
    path.write_bytes(f"\ufeff{VID}\r\nhttps://youtu.be/abc\r\n".encode())
    assert read_youtube_ids(path) == [VID, "abc"]


def test_id_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "Youtube_ID.txt"
    path.write_bytes(b"abc\n\xff\xfe\n")
    with pytest.raises(DataError) as e:
        read_youtube_ids(path)
    assert str(e.value) == f"{path}: not UTF-8 text (invalid start byte at byte 4)"


def test_bad_id_line_names_file_and_line(tmp_path):
    path = tmp_path / "Youtube_ID.txt"
    path.write_text(f"{VID}\n\nnot an id!\n")
    with pytest.raises(DataError) as e:
        read_youtube_ids(path)
    assert str(e.value) == f"{path}:3: not a YouTube id or URL: 'not an id!'"


def test_id_file_without_ids(tmp_path):
    path = tmp_path / "Youtube_ID.txt"
    path.write_text("# only a comment\n")
    with pytest.raises(DataError) as e:
        read_youtube_ids(path)
    assert str(e.value) == f"{path}: no YouTube ids"


# ----------------------------------------------------------------------------- splits


@pytest.fixture
def id_root(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "ids"
    root.mkdir()
    ids = [f"id{i:02d}" for i in range(20)]
    (root / "Youtube_ID.txt").write_text("".join(f"{i}\n" for i in ids))
    return root, ids


def test_splits_created_when_absent_and_read_back(id_root):
    root, ids = id_root
    splits = load_or_create_splits(root, ids, val_size=5, test_size=3)
    assert splits == {"train": ids[:12], "val": ids[12:17], "test": ids[17:]}
    for split, members in splits.items():
        assert _ids(root, split) == members
    assert _hidden(root) == [] and _hidden(root / "splits") == []
    # Written once: later calls read the files, whatever sizes they are given.
    assert load_or_create_splits(root, ids, val_size=1, test_size=1) == splits


def test_split_sizes_that_leave_no_training_ids(id_root):
    root, ids = id_root
    with pytest.raises(DataError) as e:
        load_or_create_splits(root, ids, val_size=15, test_size=5)
    assert str(e.value) == (
        f"{root / 'Youtube_ID.txt'}: 20 ids cannot make val_size=15 and test_size=5 splits "
        "with training ids left over"
    )
    with pytest.raises(DataError) as e:
        load_or_create_splits(root, ids, val_size=0, test_size=5)
    assert str(e.value) == (
        f"{root / 'splits'}: no split files, and val_size=0, test_size=5 cannot create them "
        "(both must be >= 1)"
    )
    assert not (root / "splits").exists()


def test_partial_splits_folder(id_root):
    root, ids = id_root
    load_or_create_splits(root, ids, 5, 3)
    (root / "splits" / "val.txt").unlink()
    with pytest.raises(DataError) as e:
        load_or_create_splits(root, ids, 5, 3)
    assert str(e.value) == f"{root / 'splits'}: missing split file(s) val.txt (found train, test)"


def test_split_id_not_in_the_id_list(id_root):
    root, ids = id_root
    load_or_create_splits(root, ids, 5, 3)
    path = root / "splits" / "test.txt"
    path.write_text("id17\n\nzzz\n")
    with pytest.raises(DataError) as e:
        load_or_create_splits(root, ids, 5, 3)
    assert str(e.value) == f"{path}:3: id 'zzz' is not in Youtube_ID.txt"


def test_an_id_in_two_splits_is_refused(id_root):
    root, ids = id_root
    load_or_create_splits(root, ids, 5, 3)
    (root / "splits" / "test.txt").write_text("# test ids\nid17\nid00\n")
    with pytest.raises(DataError) as e:
        load_or_create_splits(root, ids, 5, 3)
    assert str(e.value) == (
        f"{root / 'splits' / 'test.txt'}:3: id id00 is already listed at "
        f"{root / 'splits' / 'train.txt'}:1"
    )


# ----------------------------------------------------------------------------- packing


def test_pack_round_trip(himv_root, tmp_path):
    store = pack_himv200k(himv_root, tmp_path / "store")
    meta = read_meta(store)
    assert {m: (v["dim"], v["dtype"]) for m, v in meta["modalities"].items()} == {
        "video": (1024, "float32"), "music": (1140, "float32")
    }
    assert {s: v["count"] for s, v in meta["splits"].items()} == {"train": 200, "val": 50,
                                                                  "test": 50}
    assert meta["source"]["dataset"] == "himv200k"
    assert meta["source"]["root"] == str(himv_root.resolve())
    for split in ("train", "val", "test"):
        part = StoreSplit(store, split)
        assert [r["id"] for r in part.rows] == _ids(himv_root, split)
        assert [r["music_id"] for r in part.rows] == _ids(himv_root, split)
    train = StoreSplit(store, "train")
    for i in (0, 57, 199):
        vid = train.rows[i]["id"]
        video = np.load(himv_root / "features" / "video" / f"{vid}.npy")
        music = np.load(himv_root / "features" / "music" / f"{vid}.npy")
        np.testing.assert_array_equal(train.frames("video", i), video[None])
        np.testing.assert_array_equal(train.frames("music", i), music[None])
    assert _hidden(tmp_path) == [] and _hidden(store) == []
    assert stat.S_IMODE(store.stat().st_mode) == 0o777 & ~_umask()


def test_pack_defaults_to_root_store(himv_root):
    assert pack_himv200k(himv_root) == himv_root / "store"
    assert (himv_root / "store" / "meta.json").exists()


def test_pickled_music_is_accepted(make_himv_root, tmp_path):
    root = make_himv_root(music_format="pkl")
    store = pack_himv200k(root, tmp_path / "store")
    val = StoreSplit(store, "val")
    for i in (0, 49):
        vid = val.rows[i]["id"]
        expected = load_array_pickle(root / "features" / "music" / f"{vid}.pkl").astype(np.float32)
        np.testing.assert_array_equal(val.frames("music", i)[0], expected)


def test_frame_level_video_keeps_its_length(himv_root, tmp_path):
    vid = _ids(himv_root, "train")[3]
    frames = np.random.default_rng(0).normal(size=(5, 1024)).astype(np.float32)
    np.save(himv_root / "features" / "video" / f"{vid}.npy", frames)
    store = pack_himv200k(himv_root, tmp_path / "store")
    train = StoreSplit(store, "train")
    assert train.rows[3]["id"] == vid
    assert train.rows[3]["video_length"] == 5
    assert [r["video_length"] for r in train.rows].count(1) == 199
    np.testing.assert_array_equal(train.frames("video", 3), frames)
    after = np.load(himv_root / "features" / "video" / f"{train.rows[4]['id']}.npy")
    np.testing.assert_array_equal(train.frames("video", 4), after[None])
    batch = PairDataset(train).__getitems__([2, 3, 4])
    assert batch["video"].shape == (3, 5, 1024)
    assert batch["video_mask"].tolist() == [[True] + [False] * 4, [True] * 5,
                                            [True] + [False] * 4]
    assert batch["video"][0, 1:].abs().sum().item() == 0.0
    torch.testing.assert_close(batch["video"][1], torch.from_numpy(frames))


def test_missing_features_are_skipped_with_one_warning(make_himv_root, tmp_path, caplog):
    root = make_himv_root(missing=0.1)
    have = {p.stem for p in (root / "features" / "video").iterdir()}
    skipped = [i for i in _ids(root) if i not in have]
    assert skipped
    with caplog.at_level(logging.INFO, logger="vmr"):
        store = pack_himv200k(root, tmp_path / "store")
    warnings = [r for r in caplog.records if r.name == "vmr" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith(
        f"himv200k: skipped {len(skipped)} of 300 ids with missing features (e.g. "
    )
    meta = read_meta(store)
    assert sum(v["count"] for v in meta["splits"].values()) == 300 - len(skipped)
    packed = {r["id"] for s in ("train", "val", "test") for r in StoreSplit(store, s).rows}
    assert packed == have


def test_no_warning_when_nothing_is_missing(himv_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="vmr"):
        pack_himv200k(himv_root, tmp_path / "store")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_music_without_video_counts_as_missing(himv_root, tmp_path):
    vid = _ids(himv_root, "val")[0]
    (himv_root / "features" / "video" / f"{vid}.npy").unlink()
    store = pack_himv200k(himv_root, tmp_path / "store")
    assert read_meta(store)["splits"]["val"]["count"] == 49
    assert vid not in [r["id"] for r in StoreSplit(store, "val").rows]


def test_store_staleness(himv_root):
    store = himv_root / "store"
    assert store_is_current(himv_root, store, 4000, 1000) is False  # nothing packed yet
    pack_himv200k(himv_root, store)
    assert store_is_current(himv_root, store, 4000, 1000) is True
    feature = himv_root / "features" / "music" / f"{_ids(himv_root)[10]}.npy"
    st = feature.stat()
    os.utime(feature, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert store_is_current(himv_root, store, 4000, 1000) is False
    pack_himv200k(himv_root, store)
    assert store_is_current(himv_root, store, 4000, 1000) is True
    np.save(himv_root / "features" / "video" / "newvideo123.npy", np.zeros(1024, np.float32))
    assert store_is_current(himv_root, store, 4000, 1000) is False
    pack_himv200k(himv_root, store)
    assert store_is_current(himv_root, store, 4000, 1000) is True
    with open(himv_root / "Youtube_ID.txt", "a") as f:
        f.write("extra123456\n")
    assert store_is_current(himv_root, store, 4000, 1000) is False


def test_store_of_another_format_version_is_stale(himv_root):
    store = pack_himv200k(himv_root)
    meta = json.loads((store / "meta.json").read_text())
    meta["format_version"] = 0
    (store / "meta.json").write_text(json.dumps(meta))
    assert store_is_current(himv_root, store, 4000, 1000) is False
    with pytest.raises(DataError) as e:
        read_meta(store)
    assert str(e.value) == f"{store / 'meta.json'}: store format 0 is not 1; re-run `vmr prepare`"


def test_read_meta_errors(tmp_path):
    with pytest.raises(DataError) as e:
        read_meta(tmp_path)
    assert str(e.value) == f"{tmp_path / 'meta.json'}: no feature store here (run `vmr prepare`)"
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt meta.json"):
        read_meta(tmp_path)


# ----------------------------------------------------------------------------- DataModule


def test_datamodule_generates_synthetic_data_into_a_missing_root(tmp_path):
    root = tmp_path / "gen"
    dm = HIMV200KDataModule(root, batch_size=50, synthetic=dict(SYNTH))
    dm.prepare_data()
    assert json.loads((root / "synth.json").read_text())["pairs"] == 300
    assert read_meta(root / "store")["splits"]["train"]["count"] == 200
    dm.setup("fit")
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 200, "val": 50, "test": 50}
    assert dm.dims == {"video": 1024, "music": 1140}
    assert _hidden(tmp_path) == [] and _hidden(root) == []


def test_datamodule_generates_into_an_empty_folder(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    HIMV200KDataModule(root, synthetic=dict(SYNTH)).prepare_data()
    assert len(_ids(root)) == 300


def test_datamodule_never_overwrites_real_data(himv_root):
    (himv_root / "synth.json").unlink()  # now it looks like real data
    before = _ids(himv_root)
    dm = HIMV200KDataModule(himv_root, synthetic={**SYNTH, "seed": 9})
    dm.prepare_data()
    assert _ids(himv_root) == before
    assert not (himv_root / "synth.json").exists()
    assert read_meta(himv_root / "store")["splits"]["test"]["count"] == 50


def test_datamodule_regenerates_only_when_settings_change(himv_root):
    HIMV200KDataModule(himv_root, synthetic=dict(SYNTH)).prepare_data()
    stamp = (himv_root / "Youtube_ID.txt").stat().st_ino
    packed = (himv_root / "store" / "meta.json").stat().st_ino
    HIMV200KDataModule(himv_root, synthetic=dict(SYNTH)).prepare_data()
    assert (himv_root / "Youtube_ID.txt").stat().st_ino == stamp  # not regenerated
    assert (himv_root / "store" / "meta.json").stat().st_ino == packed  # current: not re-packed
    old = _ids(himv_root)
    HIMV200KDataModule(himv_root, synthetic={**SYNTH, "seed": 1}).prepare_data()
    assert set(_ids(himv_root)).isdisjoint(old)
    assert json.loads((himv_root / "synth.json").read_text())["seed"] == 1
    assert StoreSplit(himv_root / "store", "test").rows[0]["id"] == _ids(himv_root, "test")[0]


def test_datamodule_bad_synthetic_settings(tmp_path):
    dm = HIMV200KDataModule(tmp_path / "x", synthetic={**SYNTH, "pairs": 100})
    with pytest.raises(DataError) as e:
        dm.prepare_data()
    assert str(e.value) == (
        "data.synthetic: pairs=100 leaves no training pairs after val=50 and test=50"
    )
    assert not (tmp_path / "x").exists()


def test_datamodule_missing_root_mentions_vmr_synth(tmp_path):
    root = tmp_path / "nope"
    with pytest.raises(DataError) as e:
        HIMV200KDataModule(root).prepare_data()
    assert str(e.value).startswith(f"{root}: HIMV-200K data folder not found; generate synthetic "
                                   f"data with `vmr synth --dataset himv200k --out {root}`")
    assert not root.exists()


def test_datamodule_loaders(himv_root):
    dm = HIMV200KDataModule(himv_root, batch_size=64, eval_batch_size=50)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.train_dataloader()
    batches = list(train)
    assert len(batches) == 3  # 200 // 64, ragged last batch dropped
    assert all(b["video"].shape == (64, 1, 1024) for b in batches)
    seen = torch.cat([b["index"] for b in batches])
    assert len(set(seen.tolist())) == 192
    val = list(dm.val_dataloader())
    assert [len(b["index"]) for b in val] == [50]
    assert val[0]["index"].tolist() == list(range(50))  # evaluation is not shuffled


def test_batch_size_must_divide_over_processes(himv_root):
    dm = HIMV200KDataModule(himv_root, batch_size=1000, eval_batch_size=1000)
    dm.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(DataError) as e:
        dm.per_device(1000, "data.batch_size")
    assert str(e.value) == (
        "config: data.batch_size=1000 is not divisible by the 3 processes (devices x nodes); "
        "the batch size is global"
    )
    with pytest.raises(DataError, match="data.eval_batch_size=1000 is not divisible by the 3"):
        dm.val_dataloader()
    dm.trainer = SimpleNamespace(world_size=4)
    assert dm.per_device(1000, "data.batch_size") == 250
    dm.trainer = None
    assert dm.per_device(1000, "data.batch_size") == 1000


# ----------------------------------------------------------------------------- PairDataset


def test_pair_dataset_batch(himv_root):
    store = pack_himv200k(himv_root)
    split = StoreSplit(store, "test")
    ds = PairDataset(split)
    assert len(ds) == 50
    batch = ds.__getitems__([0, 3, 5])
    assert set(batch) == {"video", "video_mask", "music", "music_mask", "index", "video_key",
                          "music_key", "video_id", "music_id"}
    assert batch["video"].shape == (3, 1, 1024) and batch["video"].dtype == torch.float32
    assert batch["music"].shape == (3, 1, 1140) and batch["music"].dtype == torch.float32
    assert batch["video_mask"].dtype == torch.bool and batch["video_mask"].all()
    assert batch["music_mask"].shape == (3, 1) and batch["music_mask"].all()
    assert batch["index"].tolist() == [0, 3, 5]
    ids = _ids(himv_root, "test")
    assert batch["video_id"] == [ids[0], ids[3], ids[5]] == batch["music_id"]
    ordered = sorted(ids)
    assert batch["video_key"].tolist() == [ordered.index(ids[i]) for i in (0, 3, 5)]
    assert batch["music_key"].tolist() == batch["video_key"].tolist()
    expected = np.load(himv_root / "features" / "video" / f"{ids[3]}.npy")
    torch.testing.assert_close(batch["video"][1, 0], torch.from_numpy(expected))
    one = ds[3]
    assert one["video"].shape == (1, 1024) and one["video_id"] == ids[3]
    assert one["index"].item() == 3


def test_shared_music_gets_one_key(tmp_path):
    codes = {"video": ModalitySpec(2, "float32"), "music": ModalitySpec(2, "float32")}

    def items():
        for vid, mid in (("a", "m1"), ("b", "m2"), ("c", "m1")):
            yield Item(vid, mid, {"video": np.ones((1, 2)), "music": np.ones((1, 2))})

    store = write_store(tmp_path / "s", {s: items() for s in ("train", "val", "test")}, codes,
                        {"dataset": "toy"})
    batch = PairDataset(StoreSplit(store, "train")).__getitems__([0, 1, 2])
    assert batch["music_key"].tolist() == [0, 1, 0]
    assert batch["video_key"].tolist() == [0, 1, 2]


VIDEO_Q = ModalitySpec(4, "uint8", dequantize=(4 / 255, 4 / 512 - 2))
MUSIC_Q = ModalitySpec(3, "uint8")


def _code_items() -> list[Item]:
    rng = np.random.default_rng(1)
    return [
        Item(f"v{i}", f"m{i}", {
            "video": rng.integers(0, 256, (n, 4), dtype=np.uint8),
            "music": rng.integers(0, 256, (2, 3), dtype=np.uint8),
        }, extra={"label": i})
        for i, n in enumerate((2, 3, 1))
    ]


def test_quantised_store_is_dequantised_in_batches(tmp_path):
    items = _code_items()
    store = write_store(tmp_path / "q", {s: list(items) for s in ("train", "val", "test")},
                        {"video": VIDEO_Q, "music": MUSIC_Q}, {"dataset": "toy"})
    meta = read_meta(store)
    assert meta["modalities"]["video"] == {"dim": 4, "dtype": "uint8",
                                           "dequantize": [4 / 255, 4 / 512 - 2]}
    assert meta["splits"]["val"]["modalities"]["video"]["frames"] == 6
    split = StoreSplit(store, "val")
    assert split.arrays["video"].dtype == np.uint8
    assert split.rows[1]["label"] == 1
    np.testing.assert_array_equal(split.frames("video", 1), items[1].arrays["video"])
    batch = PairDataset(split).__getitems__([0, 1, 2])
    assert batch["video"].shape == (3, 3, 4)
    assert batch["video_mask"].tolist() == [[True, True, False], [True, True, True],
                                            [True, False, False]]
    for row, item in enumerate(items):
        n = len(item.arrays["video"])
        expected = item.arrays["video"].astype(np.float32) * (4 / 255) + (4 / 512 - 2)
        np.testing.assert_allclose(batch["video"][row, :n].numpy(), expected, rtol=1e-6,
                                   atol=1e-6)
        assert batch["video"][row, n:].abs().sum().item() == 0.0  # padding stays zero
    # No dequantisation configured: codes come back as floats.
    np.testing.assert_array_equal(batch["music"][2].numpy(),
                                  items[2].arrays["music"].astype(np.float32))


def test_write_store_refuses_items_of_the_wrong_shape_or_range(tmp_path):
    bad = Item("v9", "m9", {"video": np.zeros((2, 5), np.uint8), "music": np.zeros((1, 3))})
    with pytest.raises(DataError) as e:
        write_store(tmp_path / "q", {"train": [bad]}, {"video": VIDEO_Q, "music": MUSIC_Q},
                    {"dataset": "toy"})
    assert str(e.value) == "item v9: 'video' features have shape (2, 5), expected (frames, 4)"
    big = Item("v8", "m8", {"video": np.full((1, 4), 300.0), "music": np.zeros((1, 3))})
    with pytest.raises(DataError) as e:
        write_store(tmp_path / "q", {"train": [big]}, {"video": VIDEO_Q, "music": MUSIC_Q},
                    {"dataset": "toy"})
    assert str(e.value) == "item v8: 'video' values do not fit uint8 (range [300.0, 300.0])"
    lacking = Item("v7", "m7", {"video": np.zeros((1, 4), np.uint8)})
    with pytest.raises(DataError) as e:
        write_store(tmp_path / "q", {"train": [lacking]}, {"video": VIDEO_Q, "music": MUSIC_Q},
                    {"dataset": "toy"})
    assert str(e.value) == "item v7: no 'music' features (has: video)"
    assert list(tmp_path.iterdir()) == []


def test_write_store_empty_split(tmp_path):
    with pytest.raises(DataError) as e:
        write_store(tmp_path / "q", {"train": _code_items(), "val": []},
                    {"video": VIDEO_Q, "music": MUSIC_Q}, {"dataset": "toy", "root": "/data/x"})
    assert str(e.value) == "/data/x: split 'val' is empty"
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_directory_keeps_the_old_folder_on_failure(tmp_path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("crash")
    assert (final / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with atomic_directory(final) as tmp:
        (tmp / "b.txt").write_text("three")
    assert [p.name for p in final.iterdir()] == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file_permissions_follow_the_umask(tmp_path):
    write_text(tmp_path / "f.txt", "hello")
    assert (tmp_path / "f.txt").read_text() == "hello"
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o666 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
