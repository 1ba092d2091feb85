"""Training-pair overrides (pseudo-labels, back retrieval) and pseudo-label files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.errors import DataError
from datamodules.himv200k import HIMV200KDataModule
from datamodules.pseudo_labels import read_pseudo_labels, write_pseudo_labels
from datamodules.sampling import SparseFrameDataset
from datamodules.synthetic.himv200k import write_himv200k
from datamodules.synthetic.planted import PlantedSpec
from datamodules.train_pairs import PairOverrideDataset, TrainPairs

SPEC = PlantedSpec(pairs=300, val=40, test=40, noise=0.3, seed=0)
N_TRAIN = 300 - 40 - 40


@pytest.fixture(scope="module")
def dm(tmp_path_factory: pytest.TempPathFactory) -> HIMV200KDataModule:
    root = write_himv200k(SPEC, tmp_path_factory.mktemp("tp") / "himv", progress=False)
    dm = HIMV200KDataModule(root, batch_size=32, val_size=40, test_size=40)
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture
def fresh(dm: HIMV200KDataModule):
    """The module-scoped DataModule with its overrides reset after each test."""
    yield dm
    dm.set_train_pairs(None)
    dm.set_extra_pairs(None)


def _same(a: dict, b: dict, keys=None) -> None:
    for k in keys or a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_identity_override_equals_plain_dataset(dm):
    base = dm.datasets["train"]
    ds = PairOverrideDataset(base, TrainPairs.identity(len(base)))
    idx = [5, 0, 17, 200]
    got, want = ds.__getitems__(idx), base.__getitems__(idx)
    assert set(got) == set(want) | {"weight"}
    _same(want, got)
    assert torch.equal(got["weight"], torch.ones(4))
    assert got["index"].dtype == torch.int64


def test_reassigned_music_comes_from_other_row(dm):
    base = dm.datasets["train"]
    pairs = TrainPairs(np.array([3, 4, 5]), np.array([10, 4, 0]),
                       np.array([0.5, 1.0, 0.0], dtype=np.float32))
    b = PairOverrideDataset(base, pairs).__getitems__([0, 1, 2])
    video, music = base.__getitems__([3, 4, 5]), base.__getitems__([10, 4, 0])
    _same(video, b, ["video", "video_mask", "video_key", "video_id"])
    _same(music, b, ["music", "music_mask", "music_key", "music_id"])
    assert torch.equal(b["index"], torch.tensor([0, 1, 2]))
    assert torch.allclose(b["weight"], torch.tensor([0.5, 1.0, 0.0]))
    assert b["music_id"][0] == base.music_ids[10] != b["video_id"][0]
    one = PairOverrideDataset(base, pairs)[0]
    assert one["music_id"] == base.music_ids[10] and one["weight"] == 0.5


def test_subclass_sampling_and_text_follow_video_row(dm):
    split = dm.datasets["train"].split
    base = SparseFrameDataset(split, frames=4, train=False)
    base.texts = [f"text {i}" for i in range(len(base))]  # as if the store had text
    b = PairOverrideDataset(base, TrainPairs(np.array([1, 2]), np.array([7, 8]),
                                             np.ones(2))).__getitems__([0, 1])
    assert b["text"] == ["text 1", "text 2"]
    assert b["music"].shape == (2, 4, split.modalities["music"].dim)  # GS-sampled: 4 frames
    assert torch.equal(b["music"], base.__getitems__([7, 8])["music"])


def test_train_pairs_validation():
    with pytest.raises(DataError, match="differ in length"):
        TrainPairs(np.arange(3), np.arange(2), np.ones(3))
    with pytest.raises(DataError, match="weight nan of pair 1"):
        TrainPairs(np.arange(2), np.arange(2), np.array([1.0, np.nan]))
    with pytest.raises(DataError, match="weight -1.0 of pair 0"):
        TrainPairs(np.arange(2), np.arange(2), np.array([-1.0, 1.0]))
    with pytest.raises(DataError, match="negative row"):
        TrainPairs(np.array([0, -1]), np.arange(2), np.ones(2))
    with pytest.raises(DataError, match="integer"):
        TrainPairs(np.array([0.5]), np.arange(1), np.ones(1))
    with pytest.raises(DataError, match="pair 1 names music row 9, but the train split has 5"):
        TrainPairs(np.arange(2), np.array([0, 9]), np.ones(2)).check_rows(5)
    p = TrainPairs.identity(4)
    assert len(p) == 4 and p.video_rows.dtype == np.int64 and p.weights.dtype == np.float32


def test_datamodule_overrides_and_extras(fresh):
    dm = fresh
    n = len(dm.datasets["train"])
    assert n == N_TRAIN
    assert dm.train_dataloader().dataset is dm.datasets["train"]
    assert len(dm.train_pairs) == n
    assert len(dm.train_dataloader()) == n // 32
    half = TrainPairs(np.arange(0, n, 2), np.arange(0, n, 2), np.ones(n // 2))
    dm.set_train_pairs(half)
    assert len(dm.train_dataloader().dataset) == n // 2
    assert len(dm.train_dataloader()) == (n // 2) // 32
    extra = TrainPairs(np.array([1, 3]), np.array([3, 1]), np.full(2, 0.5))
    dm.set_extra_pairs(extra)
    pairs = dm.train_pairs
    assert len(pairs) == n // 2 + 2
    assert pairs.music_rows[-2:].tolist() == [3, 1]
    assert pairs.weights[-1] == np.float32(0.5)
    dm.set_train_pairs(None)
    assert len(dm.train_pairs) == n + 2
    assert np.array_equal(dm.train_pairs.video_rows[:n], np.arange(n))
    batch = next(iter(dm.train_dataloader()))
    assert "weight" in batch and batch["video"].shape[0] == 32
    with pytest.raises(DataError, match=f"extra pairs: pair 0 names video row {n}"):
        dm.set_extra_pairs(TrainPairs(np.array([n]), np.array([0]), np.ones(1)))
    # Evaluation loaders are never re-paired.
    assert dm.val_dataloader().dataset is dm.datasets["val"]


def test_fingerprint_and_truth_path(dm, tmp_path):
    fp = dm.store_fingerprint
    assert isinstance(fp, str) and len(fp) == 16 and fp == dm.store_fingerprint
    assert dm.truth_path == dm.root / "truth.tsv"
    other = write_himv200k(PlantedSpec(pairs=300, val=40, test=40, seed=1), tmp_path / "o",
                           progress=False)
    dm2 = HIMV200KDataModule(other, val_size=40, test_size=40)
    dm2.prepare_data()
    assert dm2.store_fingerprint != fp
    (other / "truth.tsv").unlink()
    assert dm2.truth_path is None


def test_pseudo_label_round_trip(dm, tmp_path):
    ds = dm.datasets["train"]
    pairs = TrainPairs(np.array([0, 1, 2, 5]), np.array([0, 9, 2, 1]),
                       np.array([1.0, 0.25, 0.0, 1.0], dtype=np.float32))
    path = write_pseudo_labels(tmp_path / "pl.jsonl", pairs, ds, dm.store_fingerprint, round=2)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"format": 1, "store_fingerprint": dm.store_fingerprint,
                                    "round": 2, "count": 4}
    row = json.loads(lines[2])
    assert row == {"video_id": ds.ids[1], "music_id": ds.music_ids[9], "weight": 0.25,
                   "status": "reassigned"}
    assert json.loads(lines[1])["status"] == "kept"
    back = read_pseudo_labels(path, ds, dm.store_fingerprint)
    for a, b in ((back.video_rows, pairs.video_rows), (back.music_rows, pairs.music_rows),
                 (back.weights, pairs.weights)):
        assert np.array_equal(a, b)
    write_pseudo_labels(path, pairs, ds, "f", 0, status=["a", "b", "c", "d"])
    assert json.loads(path.read_text().splitlines()[4])["status"] == "d"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic: no temp left


def test_pseudo_label_errors(dm, tmp_path):
    ds = dm.datasets["train"]
    fp = dm.store_fingerprint
    path = write_pseudo_labels(tmp_path / "pl.jsonl", TrainPairs.identity(3), ds, "abc", 1)
    with pytest.raises(DataError) as e:
        read_pseudo_labels(path, ds, fp)
    assert str(e.value) == f"{path}: pseudo-labels were made for store abc, not this store {fp}"

    def rewrite(line: int, text: str) -> None:
        lines = path.read_text().splitlines()
        lines[line - 1] = text
        path.write_text("\n".join(lines) + "\n")

    write_pseudo_labels(path, TrainPairs.identity(3), ds, fp, 1)
    rewrite(3, json.dumps({"video_id": "nope", "music_id": ds.music_ids[0], "weight": 1}))
    with pytest.raises(DataError) as e:
        read_pseudo_labels(path, ds, fp)
    assert str(e.value) == f"{path}:3: unknown video id 'nope' (not in the train split)"
    rewrite(3, json.dumps({"video_id": ds.ids[0], "music_id": "zzz", "weight": 1}))
    with pytest.raises(DataError) as e:
        read_pseudo_labels(path, ds, fp)
    assert str(e.value) == f"{path}:3: unknown music id 'zzz' (not in the train split)"
    rewrite(4, '{"video_id": ')
    rewrite(3, json.dumps({"video_id": ds.ids[0], "music_id": ds.music_ids[0]}))
    with pytest.raises(DataError, match=rf"^{path}:4: not valid JSON \("):
        read_pseudo_labels(path, ds, fp)
    rewrite(4, json.dumps({"video_id": ds.ids[0], "music_id": ds.music_ids[0], "weight": -2}))
    with pytest.raises(DataError, match=rf"^{path}:4: weight -2 must be"):
        read_pseudo_labels(path, ds, fp)
    path.write_text("\n".join(path.read_text().splitlines()[:3]) + "\n")
    with pytest.raises(DataError, match="header says 3 pairs, the file has 2"):
        read_pseudo_labels(path, ds, fp)
    with pytest.raises(DataError, match="not found"):
        read_pseudo_labels(tmp_path / "none.jsonl", ds, fp)
    (tmp_path / "x.jsonl").write_text('{"video_id": "a"}\n')
    with pytest.raises(DataError, match="not a pseudo-label file"):
        read_pseudo_labels(tmp_path / "x.jsonl", ds, fp)


def test_pseudo_labels_drive_training_pairs(fresh, tmp_path: Path):
    dm = fresh
    ds = dm.datasets["train"]
    pairs = TrainPairs(np.array([4, 6]), np.array([6, 4]), np.ones(2))
    path = write_pseudo_labels(tmp_path / "pl.jsonl", pairs, ds, dm.store_fingerprint, 1)
    dm.set_train_pairs(read_pseudo_labels(path, ds, dm.store_fingerprint))
    loader = dm.train_dataloader()
    assert len(loader.dataset) == 2 and not loader.drop_last
    batch = next(iter(loader))
    assert sorted(zip(batch["video_id"], batch["music_id"])) == sorted(
        [(ds.ids[4], ds.music_ids[6]), (ds.ids[6], ds.music_ids[4])])
