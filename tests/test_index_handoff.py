"""Opening a store parses each index once: the open-time check hands its rows to the split.

A changed, rebuilt or just-written index is parsed again, so the split always sees the file
as it is now."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from datamodules import feature_store
from datamodules.errors import DataError
from datamodules.feature_store import Item, ModalitySpec, StoreSplit, write_store
from datamodules.store_check import parse_index, store_problem

HOUR_NS = 3600 * 10**9


@pytest.fixture
def store(tmp_path) -> Path:
    rng = np.random.default_rng(0)

    def items(split: str, n: int):
        for i in range(n):
            yield Item(f"{split}{i:03d}", f"m{i:03d}", {"video": rng.random((2, 3), np.float32)})

    out = write_store(tmp_path / "store", {s: items(s, 20) for s in ("train", "val", "test")},
                      {"video": ModalitySpec(3, "float32")}, {"root": str(tmp_path)})
    for index in out.glob("*/index.jsonl"):
        _age(index)
    return out


def _age(path: Path, ns: int = HOUR_NS) -> None:
    """Set the file's times `ns` in the past (as a store written a while ago)."""
    then = time.time_ns() - ns
    os.utime(path, ns=(then, then))


@pytest.fixture
def parses(monkeypatch) -> list[Path]:
    """The index files StoreSplit parses itself (instead of taking the check's rows)."""
    seen: list[Path] = []

    def counting(path, modalities, frames):
        seen.append(Path(path))
        return parse_index(path, modalities, frames)

    monkeypatch.setattr(feature_store, "parse_index", counting)
    return seen


def test_split_takes_the_rows_the_check_parsed_once(store, parses):
    reference = parse_index(store / "val" / "index.jsonl", ["video"], {"video": 40})
    assert store_problem(store) is None
    val = StoreSplit(store, "val")
    assert parses == [] and val.rows == reference
    assert [r["id"] for r in val.rows] == [f"val{i:03d}" for i in range(20)]
    assert val.offsets["video"].tolist() == list(range(0, 40, 2))
    StoreSplit(store, "val")  # the rows were handed over once: a second open parses
    assert parses == [store / "val" / "index.jsonl"]


def test_an_index_changed_after_the_check_is_parsed_again(store, parses):
    assert store_problem(store) is None
    index = store / "train" / "index.jsonl"
    before = index.stat().st_mtime_ns
    text = index.read_text()
    index.write_text(text.replace('"train000"', '"train999"'))  # same size, other content
    os.utime(index, ns=(before + 10**6, before + 10**6))  # still long ago, one tick later
    train = StoreSplit(store, "train")
    assert parses == [index] and train.rows[0]["id"] == "train999"


def test_an_index_broken_after_the_check_is_refused_when_opened(store, parses):
    assert store_problem(store) is None
    index = store / "test" / "index.jsonl"
    index.write_text(index.read_text().replace('"video_offset": 4', '"video_offset": 400'))
    with pytest.raises(DataError, match=r"index.jsonl:3: video frames 400\.\.402 lie beyond "
                                        r"the 40 frames of video.npy"):
        StoreSplit(store, "test")


def test_a_just_written_index_is_not_handed_over(store, parses):
    index = store / "val" / "index.jsonl"
    _age(index, 0)  # modified now: a same-size rewrite in this clock tick would look unchanged
    assert store_problem(store) is None
    StoreSplit(store, "val")
    assert parses == [index]


def test_a_rebuilt_store_is_parsed_again(store, parses, tmp_path):
    assert store_problem(store) is None
    items = [Item(f"new{i}", f"m{i}", {"video": np.ones((1, 3), np.float32)}) for i in range(5)]
    write_store(store, {s: iter(items) for s in ("train", "val", "test")},
                {"video": ModalitySpec(3, "float32")}, {"root": "other"})
    _age(store / "val" / "index.jsonl")
    val = StoreSplit(store, "val")
    assert parses == [store / "val" / "index.jsonl"]
    assert [r["id"] for r in val.rows] == [f"new{i}" for i in range(5)]
