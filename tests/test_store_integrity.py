"""A damaged feature store through the `vmr` entry point: rebuilt from its source (one
warning line) or refused in one line naming the file (exit 2) before any run folder exists;
`vmr prepare --verify` reports each bad file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from datamodules.errors import DataError
from datamodules.feature_store import StoreSplit, read_meta
from datamodules.npy_stream import HEADER_BYTES
from datamodules.store_check import store_problem
from lightning_app.cli import main


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def packed(himv_root, capsys) -> Path:
    assert main(["prepare", "--dataset", "himv200k", "--src", str(himv_root)]) == 0
    capsys.readouterr()
    return himv_root


def _lines(capsys) -> tuple[list[str], list[str]]:
    out, err = capsys.readouterr()
    return out.splitlines(), err.splitlines()


def _truncate(path: Path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def _break_line(path: Path, number: int) -> None:
    """Overwrite line `number`'s first characters in place: same size, not JSON any more."""
    lines = path.read_bytes().split(b"\n")
    lines[number - 1] = b"{broken" + lines[number - 1][len(b"{broken"):]
    path.write_bytes(b"\n".join(lines))


def _train(root: Path, tmp_path: Path, *extra: str) -> int:
    return main(["train", "vmnet_himv200k", f"data.root={root}", f"run_dir={tmp_path / 'runs'}",
                 "logger.wandb.mode=disabled", "data.batch_size=100", "data.eval_batch_size=50",
                 "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false", *extra])


def test_written_store_records_sizes_and_checksums(packed):
    meta = read_meta(packed / "store")
    files = meta["splits"]["val"]["files"]
    assert set(files) == {"video.npy", "music.npy", "index.jsonl"}
    for name, info in files.items():
        assert info["bytes"] == (packed / "store" / "val" / name).stat().st_size
    # The streamed .npy is what np.save would write for the same array.
    video = np.load(packed / "store" / "val" / "video.npy")
    assert video.shape == (50, 1024) and files["video.npy"]["bytes"] == HEADER_BYTES + video.nbytes
    assert store_problem(packed / "store") is None


def test_verify_passes_a_whole_store(packed, capsys):
    rc = main(["prepare", "--dataset", "himv200k", "--src", str(packed), "--verify"])
    out, err = _lines(capsys)
    assert rc == 0 and err == []
    assert out == [f"{packed / 'store'}: store verified (9 files match their SHA-256)"]


def test_verify_takes_the_store_alone_and_prepare_names_a_missing_flag(packed, capsys):
    assert main(["prepare", "--verify", "--out", str(packed / "store")]) == 0
    out, err = _lines(capsys)
    assert err == [] and out[0].endswith("store verified (9 files match their SHA-256)")
    assert main(["prepare", "--src", str(packed)]) == 2
    assert _lines(capsys)[1] == ["vmr: error: vmr prepare: --dataset is required (only "
                                 "--verify works without)"]
    assert main(["prepare", "--verify"]) == 2
    assert _lines(capsys)[1] == ["vmr: error: vmr prepare --verify: give the store (--out "
                                 "STORE) or the dataset folder whose store it is (--src DIR)"]


def test_verify_reports_each_bad_file_in_one_line(packed, capsys):
    store = packed / "store"
    _truncate(store / "val" / "video.npy", 1000)
    _break_line(store / "train" / "index.jsonl", 3)
    with open(store / "test" / "music.npy", "r+b") as f:  # same size, one byte changed
        f.seek(HEADER_BYTES + 10)
        byte = f.read(1)
        f.seek(HEADER_BYTES + 10)
        f.write(bytes([byte[0] ^ 0xFF]))
    rc = main(["prepare", "--dataset", "himv200k", "--src", str(packed), "--verify"])
    out, err = _lines(capsys)
    assert rc == 2 and out == []
    assert sorted(err) == sorted([
        f"vmr: error: {store / 'train' / 'index.jsonl'}:3: broken line (Expecting property name "
        "enclosed in double quotes at column 2)",
        f"vmr: error: {store / 'val' / 'video.npy'}: truncated: 1000 bytes, meta.json records "
        f"{HEADER_BYTES + 50 * 1024 * 4}",
        f"vmr: error: {store / 'test' / 'music.npy'}: SHA-256 differs from meta.json "
        "(content changed)",
    ])


@pytest.mark.parametrize("damage", ["truncated_npy", "broken_index_line", "missing_npy"])
def test_damaged_store_without_its_source_is_one_line_before_any_run_folder(
        packed, tmp_path, capsys, damage):
    store = packed / "store"
    shutil.rmtree(packed / "features")  # the source is gone: nothing to rebuild from
    if damage == "truncated_npy":
        _truncate(store / "train" / "music.npy", 5000)
        culprit = f"{store / 'train' / 'music.npy'}: truncated: 5000 bytes"
    elif damage == "broken_index_line":
        _break_line(store / "val" / "index.jsonl", 7)
        culprit = f"{store / 'val' / 'index.jsonl'}:7: broken line"
    else:
        (store / "test" / "video.npy").unlink()
        culprit = f"{store / 'test' / 'video.npy'}: missing"
    before = sorted(p.name for p in store.rglob("*"))
    rc = _train(packed, tmp_path)
    out, err = _lines(capsys)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"vmr: error: {culprit}"), err
    assert "cannot rebuild it" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in store.rglob("*")) == before  # the store is left as it was
    assert [p.name for p in packed.iterdir() if p.name.startswith(".")] == []


def test_damaged_store_is_rebuilt_from_its_source_with_one_warning(packed, tmp_path, capsys):
    store = packed / "store"
    _truncate(store / "val" / "video.npy", 3000)
    rc = _train(packed, tmp_path)
    out, err = _lines(capsys)
    assert rc == 0
    warnings = [line for line in err if "warning" in line]
    assert warnings == [f"vmr: warning: {store / 'val' / 'video.npy'}: truncated: 3000 bytes, "
                        f"meta.json records {HEADER_BYTES + 50 * 1024 * 4}; rebuilt the store "
                        f"from {packed}"]
    assert store_problem(store) is None
    assert json.loads(next((tmp_path / "runs").rglob("status.json")).read_text())["status"] \
        == "finished"


def test_store_written_before_sizes_were_recorded_is_checked_by_its_npy_headers(packed):
    store = packed / "store"
    meta = json.loads((store / "meta.json").read_text())
    for info in meta["splits"].values():
        del info["files"]
    (store / "meta.json").write_text(json.dumps(meta))
    assert store_problem(store) is None
    _truncate(store / "test" / "video.npy", HEADER_BYTES + 4 * 1024 * 3 + 5)
    assert store_problem(store) == (
        f"{store / 'test' / 'video.npy'}: truncated: {HEADER_BYTES + 4 * 1024 * 3 + 5} bytes, "
        f"its header ((50, 1024) float32) needs {HEADER_BYTES + 50 * 1024 * 4}")


def test_index_pointing_past_the_arrays_is_refused(packed):
    path = packed / "store" / "val" / "index.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[4]["music_offset"] = 10_000
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"index.jsonl:5: music frames 10000\.\.10001 lie beyond "
                                        r"the 50 frames of music.npy"):
        StoreSplit(packed / "store", "val")


def test_store_split_names_a_truncated_array(packed):
    _truncate(packed / "store" / "train" / "video.npy", 4000)
    with pytest.raises(DataError, match=r"train/video.npy: damaged \(.*\); re-run `vmr prepare`"):
        StoreSplit(packed / "store", "train")
