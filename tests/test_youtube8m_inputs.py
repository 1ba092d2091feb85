"""YouTube-8M folders as users have them, through `vmr prepare` / `vmr train`.

Compressed files (gzip / zlib, written here with Python's gzip and zlib modules over the
synthetic writer's files), *.tfrecords names, folders whose records are all skipped, and a
folder of train* files only. Bad input: exit code 2, exactly one line on stderr naming the
folder or file and the cause, and no store (nor spill folder) left behind.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest

from datamodules.feature_store import StoreSplit
from datamodules.synthetic.planted import PlantedSpec
from datamodules.synthetic.youtube8m import MUSIC_VIDEO_LABEL, write_youtube8m
from datamodules.tfrecord import encode_example, encode_sequence_example, write_records
from datamodules.youtube8m import YouTube8MDataModule, store_is_current
from lightning_app.cli import main

SPEC = PlantedSpec(pairs=60, val=10, test=10, music_frames=4, video_frames=4, seed=3,
                   music_dim=128, video_dim=1024)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return write_youtube8m(SPEC, tmp_path_factory.mktemp("y8m") / "src", shards=1,
                           progress=False)


def _prepare(src: Path, out: Path, *extra: str) -> int:
    return main(["prepare", "--dataset", "youtube8m", "--src", str(src), "--out", str(out),
                 "--workers", "1", *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("vmr: error: ")
    return err[0].removeprefix("vmr: error: ")


def _nothing_written(parent: Path) -> None:
    assert not (parent / "store").exists()
    assert not list(parent.glob(".store*")), list(parent.iterdir())


def _store_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and p.name != "meta.json"}


def _folder_with(source: Path, dest: Path, rename) -> Path:
    """A copy of `source` whose frame files are rewritten by `rename(path) -> (name, bytes)`."""
    (dest / "frame").mkdir(parents=True)
    shutil.copy(source / "vocabulary.csv", dest / "vocabulary.csv")
    for path in sorted((source / "frame").iterdir()):
        got = rename(path)
        if got is not None:
            (dest / "frame" / got[0]).write_bytes(got[1])
    return dest


def _compressed(path: Path):
    raw = path.read_bytes()
    if path.name.startswith("train"):
        return path.name + ".gz", gzip.compress(raw)  # TFRecordOptions("GZIP")
    if path.name.startswith("validate"):
        return path.stem + ".tfrecords.zlib", zlib.compress(raw)  # TFRecordOptions("ZLIB")
    return path.stem + ".tfrecords", raw


def test_compressed_and_tfrecords_files_give_the_same_store(source, tmp_path, capsys):
    src = _folder_with(source, tmp_path / "packed", _compressed)
    names = sorted(p.name for p in (src / "frame").iterdir())
    assert names == ["test0000.tfrecords", "train0000.tfrecord.gz",
                     "validate0000.tfrecords.zlib"]
    assert _prepare(source, tmp_path / "plain") == 0
    assert _prepare(src, tmp_path / "store") == 0
    assert capsys.readouterr().err == ""
    assert _store_files(tmp_path / "store") == _store_files(tmp_path / "plain")
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert meta["source"]["splits"] == "official partitions"


def test_truncated_gzip_is_one_line_and_writes_nothing(source, tmp_path, capsys):
    src = _folder_with(source, tmp_path / "src", _compressed)
    shard = src / "frame" / "train0000.tfrecord.gz"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert _prepare(src, tmp_path / "store") == 2
    assert _one_error_line(capsys) == (
        f"{shard}: gzip-compressed data truncated: the stream ends early, at compressed byte "
        f"{len(data) // 2}")
    _nothing_written(tmp_path)


def _skipped_folder(source: Path, root: Path) -> Path:
    """Two unpartitioned files whose ten records are all skipped, for four reasons."""
    (root / "frame").mkdir(parents=True)
    shutil.copy(source / "vocabulary.csv", root / "vocabulary.csv")
    rgb, audio = [bytes(1024)] * 3, [bytes(128)] * 3
    music = {"labels": [MUSIC_VIDEO_LABEL]}
    write_records(root / "frame" / "part-0.tfrecords", [
        *(encode_sequence_example({"id": f"o{k}", "labels": [1]},
                                  {"rgb": rgb, "audio": audio}) for k in range(4)),
        *(encode_sequence_example({"id": f"s{k}", **music}, {"rgb": rgb, "audio": []})
          for k in range(3)),
    ])
    write_records(root / "frame" / "part-1.tfrecord", [
        *(encode_sequence_example({"id": f"n{k}", **music}, {"rgb": rgb})
          for k in range(2)),
        encode_example({"id": "v0", **music, "mean_rgb": np.zeros(1024, np.float32),
                        "mean_audio": np.zeros(128, np.float32)}),
    ])
    return root


def test_all_records_skipped_names_counts_by_reason(source, tmp_path, capsys):
    root = _skipped_folder(source, tmp_path / "src")
    expected = (f"{root / 'frame'}: split 'train' is empty: all 10 records of its 2 files were "
                "skipped (4 no selected label, 3 'audio' has 0 frames, 2 no 'audio' feature "
                "list, 1 video-level record ('mean_rgb', no frame lists))")
    assert _prepare(root, tmp_path / "store") == 2
    assert _one_error_line(capsys) == expected
    _nothing_written(tmp_path)
    # The same through `vmr train`: nothing is trained, no store is written.
    code = main(["train", "iiclvm_youtube8m", f"data.root={root}", "data.prepare_workers=1",
                 f"run_dir={tmp_path / 'runs'}", "logger.wandb.mode=disabled"])
    assert code == 2
    assert _one_error_line(capsys) == expected
    _nothing_written(root)
    assert not (tmp_path / "runs").exists()


def _unit(vid: str, seed: int) -> float:
    """hash_unit transcribed: sha1 of 'seed:id' (seed 0: of the id alone), first 8 bytes."""
    key = vid if seed == 0 else f"{seed}:{vid}"
    return int(hashlib.sha1(key.encode()).hexdigest()[:16], 16) / 2**64


def test_train_only_folder_explains_and_splits_with_val_fraction(source, tmp_path, capsys):
    root = _folder_with(source, tmp_path / "src",
                        lambda p: (p.name, p.read_bytes()) if p.name.startswith("train") else None)
    assert _prepare(root, root / "store") == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"{root / 'frame'}: only train partition files (1 train*): val and "
                           "test come from YouTube-8M's validate partition")
    assert line.endswith(f"`vmr prepare --dataset youtube8m --src {root} --val-fraction 0.1 "
                         "[--test-fraction 0.1] [--split-seed 0]`")
    _nothing_written(root)

    flags = ["--val-fraction", "0.2", "--test-fraction", "0.15", "--split-seed", "5"]
    assert _prepare(root, root / "store", *flags) == 0
    assert _prepare(root, tmp_path / "again", *flags) == 0
    assert _store_files(root / "store") == _store_files(tmp_path / "again")
    ids = {s: [r["id"] for r in StoreSplit(root / "store", s).rows]
           for s in ("train", "val", "test")}
    assert min(len(v) for v in ids.values()) >= 3
    for split, members in ids.items():
        for vid in members:
            u = _unit(vid, 5)
            assert split == ("test" if u < 0.15 else "val" if u < 0.35 else "train")
    # A DataModule that sets no split keeps the prepared store (and its split).
    meta = (root / "store" / "meta.json").stat().st_mtime_ns
    assert store_is_current(root, root / "store", ["Music video"])
    YouTube8MDataModule(root, workers=1).ensure_store()
    assert (root / "store" / "meta.json").stat().st_mtime_ns == meta


def test_folder_without_tfrecords_says_what_is_there(tmp_path, capsys):
    (tmp_path / "src" / "frame").mkdir(parents=True)
    (tmp_path / "src" / "frame" / "train0000.tfrecord.bz2").write_bytes(b"BZh9")
    assert _prepare(tmp_path / "src", tmp_path / "store") == 2
    assert _one_error_line(capsys) == (
        f"{tmp_path / 'src' / 'frame'}: no frame-level TFRecord files (*.tfrecord, "
        "*.tfrecord.gz, *.tfrecord.zlib, *.tfrecords, *.tfrecords.gz, *.tfrecords.zlib); found "
        "1 other file, e.g. 'train0000.tfrecord.bz2'")


def _records(prefix: str, n: int, label: int = MUSIC_VIDEO_LABEL) -> list[bytes]:
    frames = {"rgb": [bytes(1024)] * 2, "audio": [bytes(128)] * 2}
    return [encode_sequence_example({"id": f"{prefix}{k}", "labels": [label]}, frames)
            for k in range(n)]


@pytest.mark.parametrize(("files", "message"), [
    # Official partitions, but every train record has another label.
    ({"train0.tfrecord": _records("t", 3, label=1), "validate0.tfrecord": _records("v", 4)},
     "split 'train' is empty: all 3 records of its 1 train* file were skipped (3 no selected "
     "label)"),
    # Train records kept, the validate/test ones all skipped, and no --val-fraction.
    ({"train0.tfrecord": _records("t", 3), "validate0.tfrecord": _records("v", 2, label=1),
      "test0.tfrecord": _records("x", 1, label=1)},
     "split 'val' is empty: all 3 records of its 2 validate*/test* files were skipped (3 no "
     "selected label); val and test come from the validate partition; split the train records "
     "instead with `vmr prepare --dataset youtube8m --src {root} --val-fraction 0.1 "
     "[--test-fraction 0.1] [--split-seed 0]`"),
    # No partition names and too few records for every split.
    ({"part-0.tfrecord": _records("p", 2) + _records("q", 1, label=1)},
     "split '{empty}' is empty: only 2 records kept (train {train}, val {val}, test {test}; "
     "split by id hash (val 0.1, test 0.1)), too few to fill every split; add records or raise "
     "that split's fraction"),
])
def test_empty_split_says_why(tmp_path, capsys, files, message):
    root = tmp_path / "src"
    (root / "frame").mkdir(parents=True)
    for name, records in files.items():
        write_records(root / "frame" / name, records)
    counts = {s: 0 for s in ("train", "val", "test")}
    for vid in ("p0", "p1"):
        u = _unit(vid, 0)
        counts["test" if u < 0.1 else "val" if u < 0.2 else "train"] += 1
    empty = next(s for s in ("train", "val", "test") if counts[s] == 0)
    assert _prepare(root, tmp_path / "store", "--labels", str(MUSIC_VIDEO_LABEL)) == 2
    assert _one_error_line(capsys) == f"{root / 'frame'}: " + message.format(
        root=root, empty=empty, **counts)
    _nothing_written(tmp_path)
