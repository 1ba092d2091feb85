"""MVD through `vmr prepare`: curated-data errors exit 2 with one line; nothing is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lightning_app.cli import main


@pytest.fixture(scope="module")
def mvd_source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mvd") / "src"
    assert main(["synth", "--dataset", "mvd", "--out", str(out), "--pairs", "120", "--val", "20",
                 "--test", "20", "--frames", "6", "--noise", "0.3"]) == 0
    return out


@pytest.fixture
def src(mvd_source, tmp_path) -> Path:
    copy = tmp_path / "src"
    shutil.copytree(mvd_source, copy)
    return copy


def _fails_with(capsys, src: Path, *needles: str) -> None:
    assert main(["prepare", "--dataset", "mvd", "--src", str(src)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    assert not (src / "store").exists()
    assert not list(src.glob(".store*"))


def test_prepare_happy_path(src, capsys):
    assert main(["prepare", "--dataset", "mvd", "--src", str(src)]) == 0
    assert (src / "store" / "meta.json").exists()


def test_csv_row_naming_a_missing_id(src, capsys):
    lines = (src / "splits" / "val.csv").read_text().splitlines()
    video_id = lines[3].split(",")[0]
    (src / "features" / "video" / f"{video_id}.npy").unlink()
    _fails_with(capsys, src, "val.csv:4", video_id)


def test_duplicate_pair_rows(src, capsys):
    path = src / "splits" / "test.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[2]]) + "\n")
    _fails_with(capsys, src, "test.csv", "duplicate")


def test_feature_with_the_wrong_dimension(src, capsys):
    music_id = (src / "splits" / "train.csv").read_text().splitlines()[1].split(",")[1]
    np.save(src / "features" / "music" / f"{music_id}.npy", np.zeros((6, 100), np.float32))
    _fails_with(capsys, src, f"{music_id}.npy", "music dimension 100", "dimension 128")
