"""Bad input through the `vmr` entry point: exit code 2, one line naming the culprit, and
nothing half-written (no store, no temp folders, no run folder)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from datamodules.feature_store import StoreSplit, read_meta
from lightning_app.cli import main
from lightning_app.config import DataConfig, experiment_names
from lightning_app.errors import ConfigError


@pytest.fixture(autouse=True)
def _in_tmp_cwd(tmp_path, monkeypatch):
    """Relative paths (runs/, data/) land in tmp_path if anything slips through."""
    monkeypatch.chdir(tmp_path)


def _refused(capsys, rc: int) -> str:
    """The one stderr line of a refused command, without the 'vmr: error: ' prefix."""
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vmr: error: ")
    return lines[0][len("vmr: error: "):]


def _nothing_written(root: Path, tmp_path: Path) -> None:
    assert not (root / "store").exists()
    for folder in (root, root.parent, tmp_path):
        if folder.exists():
            assert [p.name for p in folder.iterdir() if ".tmp" in p.name or ".old" in p.name] == []
    assert not (tmp_path / "runs").exists()


def _prepare(root: Path) -> int:
    return main(["prepare", "--dataset", "himv200k", "--src", str(root)])


def _train(root: Path, tmp_path: Path, *extra: str) -> int:
    return main(["train", "vmnet_himv200k", f"data.root={root}", f"run_dir={tmp_path / 'runs'}",
                 "logger.wandb.mode=disabled", *extra])


def _split(root: Path, split: str) -> list[str]:
    return (root / "splits" / f"{split}.txt").read_text().split()


def _video(root: Path, vid: str) -> Path:
    return root / "features" / "video" / f"{vid}.npy"


def _music(root: Path, vid: str) -> Path:
    return root / "features" / "music" / f"{vid}.npy"


class _Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----------------------------------------------------------------------------- config


def test_unknown_config_key(capsys, tmp_path):
    rc = main(["train", "quickstart", "data.bogus=1", f"run_dir={tmp_path / 'runs'}"])
    valid = ", ".join(sorted(DataConfig.__dataclass_fields__))
    assert _refused(capsys, rc) == (
        f"command line: unknown key 'data.bogus' (valid keys under 'data': {valid})"
    )
    assert list(tmp_path.iterdir()) == []


def test_unknown_experiment(capsys, tmp_path):
    rc = main(["train", "nope"])
    names = ", ".join(experiment_names())
    assert _refused(capsys, rc) == f"unknown experiment 'nope' (choose from: {names})"
    assert list(tmp_path.iterdir()) == []


def test_bad_value(capsys):
    assert _refused(capsys, main(["train", "quickstart", "data.batch_size=0"])) == (
        "config: 'data.batch_size' must be > 0 (got 0)"
    )


def test_debug_shows_the_exception_instead():
    with pytest.raises(ConfigError, match="unknown experiment 'nope'"):
        main(["--debug", "train", "nope"])


def test_bad_synthetic_settings_through_train(capsys, tmp_path):
    # Refused by the config checks, before the generator could raise a bare ValueError.
    root = tmp_path / "syn"
    rc = main(["train", "quickstart", f"data.root={root}", f"run_dir={tmp_path / 'runs'}",
               "logger.wandb.mode=disabled", "data.synthetic.styles=0"])
    assert _refused(capsys, rc) == "config: 'data.synthetic.styles' must be >= 1 (got 0)"
    assert not root.exists() and not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- data


def test_missing_data_folder(capsys, tmp_path):
    root = tmp_path / "nope"
    msg = _refused(capsys, _train(root, tmp_path))
    assert msg == (
        f"{root}: HIMV-200K data folder not found; generate synthetic data with "
        f"`vmr synth --dataset himv200k --out {root}` or put Youtube_ID.txt and "
        "features/{music,video}/<id>.npy there (see README, Datasets)"
    )
    assert not root.exists()
    _nothing_written(root, tmp_path)


def test_missing_data_folder_via_prepare(capsys, tmp_path):
    root = tmp_path / "nope"
    assert "`vmr synth --dataset himv200k" in _refused(capsys, _prepare(root))
    assert not root.exists()


def test_missing_id_file(capsys, himv_root, tmp_path):
    (himv_root / "Youtube_ID.txt").unlink()
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{himv_root / 'Youtube_ID.txt'}: not found (HIMV-200K lists its videos in Youtube_ID.txt)"
    )
    _nothing_written(himv_root, tmp_path)


def test_music_with_the_wrong_dimension(capsys, himv_root, tmp_path):
    path = _music(himv_root, _split(himv_root, "train")[3])
    np.save(path, np.zeros(1000, np.float32))
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{path}: expected shape (1140,) or (frames, 1140), got (1000,)"
    )
    _nothing_written(himv_root, tmp_path)


def test_nan_in_video_features(capsys, himv_root, tmp_path):
    vid = _split(himv_root, "val")[4]
    arr = np.load(_video(himv_root, vid))
    arr[17] = np.nan
    np.save(_video(himv_root, vid), arr)
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{_video(himv_root, vid)}: id {vid} has NaN or inf values"
    )
    _nothing_written(himv_root, tmp_path)


def test_nan_through_train(capsys, himv_root, tmp_path):
    vid = _split(himv_root, "train")[0]
    arr = np.load(_video(himv_root, vid))
    arr[0] = np.nan
    np.save(_video(himv_root, vid), arr)
    assert _refused(capsys, _train(himv_root, tmp_path)) == (
        f"{_video(himv_root, vid)}: id {vid} has NaN or inf values"
    )
    _nothing_written(himv_root, tmp_path)


def test_console_stderr_has_only_the_error(himv_root, tmp_path):
    """The real console (not pytest's log capture): progress goes to stdout, stderr holds
    exactly the one error line."""
    vid = _split(himv_root, "train")[0]
    arr = np.load(_video(himv_root, vid))
    arr[0] = np.nan
    np.save(_video(himv_root, vid), arr)
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_app", "train", "vmnet_himv200k", f"data.root={himv_root}",
         f"run_dir={tmp_path / 'runs'}", "logger.wandb.mode=disabled"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"vmr: error: {_video(himv_root, vid)}: id {vid} has NaN or inf values\n"
    assert proc.stdout == f"himv200k: packing {himv_root} into {himv_root / 'store'}\n"
    _nothing_written(himv_root, tmp_path)


def test_inf_in_music_features(capsys, himv_root, tmp_path):
    vid = _split(himv_root, "test")[-1]
    arr = np.load(_music(himv_root, vid))
    arr[5] = -np.inf
    np.save(_music(himv_root, vid), arr)
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{_music(himv_root, vid)}: id {vid} has NaN or inf values"
    )
    _nothing_written(himv_root, tmp_path)


def test_empty_split(capsys, himv_root, tmp_path):
    for vid in _split(himv_root, "test"):
        _video(himv_root, vid).unlink()
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{himv_root}: split 'test' is empty: none of its 50 ids has both "
        "features/music/<id>.npy|.pkl and features/video/<id>.npy"
    )
    _nothing_written(himv_root, tmp_path)


def test_truncated_pickle(capsys, himv_root, tmp_path):
    vid = _split(himv_root, "train")[1]
    _music(himv_root, vid).unlink()
    data = pickle.dumps(np.ones(1140), protocol=2)
    path = himv_root / "features" / "music" / f"{vid}.pkl"
    path.write_bytes(data[: len(data) // 2])
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{path}: corrupt pickle (UnpicklingError: pickle data was truncated)"
    )
    _nothing_written(himv_root, tmp_path)


def test_pickle_with_a_forbidden_global_is_not_executed(capsys, himv_root, tmp_path):
    vid = _split(himv_root, "train")[2]
    _music(himv_root, vid).unlink()
    marker = tmp_path / "PWNED"
    path = himv_root / "features" / "music" / f"{vid}.pkl"
    path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{path}: refusing to load pickle: it references {os.system.__module__}.system, which "
        "a NumPy feature array never needs (nothing was executed)"
    )
    assert not marker.exists()
    _nothing_written(himv_root, tmp_path)


def test_pickle_of_something_else(capsys, himv_root, tmp_path):
    vid = _split(himv_root, "train")[2]
    _music(himv_root, vid).unlink()
    path = himv_root / "features" / "music" / f"{vid}.pkl"
    path.write_bytes(pickle.dumps({"a": "b"}, protocol=2))
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{path}: pickle holds dict, not a feature array"
    )


def test_corrupt_npy(capsys, himv_root, tmp_path):
    path = _video(himv_root, _split(himv_root, "val")[0])
    path.write_bytes(b"garbage\x00\x01" * 10)
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{path}: not a NumPy .npy file (corrupt or wrong format)"
    )
    _nothing_written(himv_root, tmp_path)


def test_truncated_npy(capsys, himv_root, tmp_path):
    path = _video(himv_root, _split(himv_root, "val")[0])
    path.write_bytes(path.read_bytes()[:300])
    msg = _refused(capsys, _prepare(himv_root))
    assert msg.startswith(f"{path}: cannot read features (ValueError: ")
    _nothing_written(himv_root, tmp_path)


def test_missing_splits_file(capsys, himv_root, tmp_path):
    (himv_root / "splits" / "val.txt").unlink()
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{himv_root / 'splits'}: missing split file(s) val.txt (found train, test)"
    )
    _nothing_written(himv_root, tmp_path)


def test_split_id_not_in_id_file(capsys, himv_root, tmp_path):
    path = himv_root / "splits" / "test.txt"
    path.write_text(path.read_text() + "zzzzzzzzzzz\n")
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{path}:51: id 'zzzzzzzzzzz' is not in Youtube_ID.txt"
    )
    _nothing_written(himv_root, tmp_path)


def test_failed_prepare_keeps_the_previous_store(capsys, himv_root, tmp_path):
    assert _prepare(himv_root) == 0
    capsys.readouterr()
    meta = (himv_root / "store" / "meta.json").read_bytes()
    vid = _split(himv_root, "train")[5]
    arr = np.load(_video(himv_root, vid))
    arr[:] = np.nan
    np.save(_video(himv_root, vid), arr)
    assert _refused(capsys, _prepare(himv_root)) == (
        f"{_video(himv_root, vid)}: id {vid} has NaN or inf values"
    )
    assert (himv_root / "store" / "meta.json").read_bytes() == meta
    assert len(StoreSplit(himv_root / "store", "train")) == 200
    assert [p.name for p in himv_root.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------- synth, prepare


def test_synth_and_prepare(capsys, tmp_path):
    out = tmp_path / "syn"
    rc = main(["synth", "--dataset", "himv200k", "--out", str(out), "--pairs", "300",
               "--val", "50", "--test", "50", "--seed", "3", "--missing", "0.1"])
    assert rc == 0
    stdout, _ = capsys.readouterr()
    assert stdout == f"wrote synthetic himv200k (300 pairs, seed 3) to {out}\n"
    assert json.loads((out / "synth.json").read_text())["seed"] == 3
    kept = len(list((out / "features" / "video").iterdir()))
    assert 0 < kept < 300

    assert _prepare(out) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout == f"packed himv200k from {out} into {out / 'store'}\n"
    assert stderr.startswith(f"himv200k: skipped {300 - kept} of 300 ids with missing features")
    assert len(stderr.splitlines()) == 1
    meta = read_meta(out / "store")
    assert sum(s["count"] for s in meta["splits"].values()) == kept


def test_prepare_creates_splits_and_reports_on_stdout(capsys, himv_root, tmp_path):
    shutil.rmtree(himv_root / "splits")
    out = tmp_path / "elsewhere"
    rc = main(["prepare", "--dataset", "himv200k", "--src", str(himv_root), "--out", str(out),
               "--val-size", "40", "--test-size", "20"])
    assert rc == 0
    stdout, stderr = capsys.readouterr()
    assert stderr == ""
    assert stdout.splitlines()[-1] == f"packed himv200k from {himv_root} into {out}"
    assert {s: v["count"] for s, v in read_meta(out)["splits"].items()} == {
        "train": 240, "val": 40, "test": 20
    }
    assert not (himv_root / "store").exists()


def test_synth_pickle_music(capsys, tmp_path):
    out = tmp_path / "syn"
    assert main(["synth", "--dataset", "himv200k", "--out", str(out), "--pairs", "120",
                 "--val", "10", "--test", "10", "--music-format", "pkl"]) == 0
    assert {p.suffix for p in (out / "features" / "music").iterdir()} == {".pkl"}
    assert _prepare(out) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pairs", "10", "--val", "5", "--test", "5"],
         "vmr synth: pairs=10 leaves no training pairs after val=5 and test=5"),
        (["--missing", "1.0"], "vmr synth: --missing=1.0 must be in [0, 1)"),
        (["--feature-noise", "-1"], "vmr synth: tau=0.6 and feature_noise=-1.0 must be >= 0"),
        (["--noise", "2"], "vmr synth: noise=2.0 must be in [0, 1)"),
    ],
)
def test_synth_bad_arguments(capsys, tmp_path, args, message):
    out = tmp_path / "syn"
    rc = main(["synth", "--dataset", "himv200k", "--out", str(out), *args])
    assert _refused(capsys, rc) == message
    assert list(tmp_path.iterdir()) == []


def test_synth_refuses_to_replace_real_data(capsys, himv_root, tmp_path):
    (himv_root / "synth.json").unlink()
    ids = (himv_root / "Youtube_ID.txt").read_text()
    rc = main(["synth", "--dataset", "himv200k", "--out", str(himv_root), "--pairs", "120",
               "--val", "10", "--test", "10"])
    assert _refused(capsys, rc) == (
        f"{himv_root}: exists and is not a synthetic dataset (no synth.json); "
        "refusing to replace it, choose another --out"
    )
    assert (himv_root / "Youtube_ID.txt").read_text() == ids


def test_experiments_lists_every_experiment(capsys):
    assert main(["experiments"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == experiment_names()


# ----------------------------------------------------------------------------- compare


def _fake_run(runs: Path, name: str, stamp: str, seed: int, v2m_r1: float, mdr: float) -> Path:
    run = runs / name / stamp
    run.mkdir(parents=True)
    metrics = {"test/v2m/R@1": v2m_r1, "test/v2m/R@10": 0.5, "test/v2m/MdR": mdr,
               "test/m2v/R@1": 0.2, "test/m2v/R@10": 0.6, "test/m2v/MdR": 8.0,
               "val/v2m/R@1": 0.9, "seed": seed, "experiment": name}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "config.yaml").write_text(yaml.safe_dump({"name": name, "seed": seed}))
    return run


def test_compare_two_runs(capsys, tmp_path):
    """Two seeds of one experiment: one group, mean ± std [95 % CI] per metric."""
    runs = tmp_path / "runs"
    _fake_run(runs, "exp", "20260101-000000", 0, 0.10, 12.0)
    _fake_run(runs, "exp", "20260101-000001", 1, 0.20, 10.0)
    assert main(["compare", str(runs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("test metrics: mean ± std [95 % CI]")
    cells = [c.strip() for c in out[2].strip("|").split("|")]
    assert cells == ["name", "n", "v2m/R@1", "v2m/R@10", "v2m/MdR", "m2v/R@1", "m2v/R@10",
                     "m2v/MdR"]
    row = [c.strip() for c in out[4].strip("|").split("|")]
    # t_{0.975,1} = 12.706; sd(10, 20) = 7.07: 15 ± 12.706 * 7.07 / sqrt(2) = 15 ± 63.53
    assert row[:3] == ["exp", "2", "15.00 ± 7.07 [-48.53, 78.53]"]
    assert row[3:5] == ["50.00 ± 0.00 [50.00, 50.00]", "11.00 ± 1.41 [-1.71, 23.71]"]
    assert len(out) == 5


def test_compare_sorts_and_groups(capsys, tmp_path):
    runs = tmp_path / "runs"
    a = _fake_run(runs, "a", "1", 0, 0.10, 12.0)
    _fake_run(runs, "b", "2", 0, 0.30, 4.0)
    assert main(["compare", str(runs), "--sort", "v2m/R@1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out[4:6]] == ["b", "a"]
    assert main(["compare", str(runs), "--sort", "v2m/MdR"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out[4:6]] == ["b", "a"]  # lower rank first
    assert main(["compare", str(a), "--stage", "val"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("val metrics")
    assert [c.strip() for c in out[2].strip("|").split("|")] == ["name", "n", "v2m/R@1"]
    assert [c.strip() for c in out[4].strip("|").split("|")] == ["a", "1", "90.00"]


def test_compare_errors(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _refused(capsys, main(["compare", str(empty)])) == (
        f"no finished runs (metrics.json) under {empty}"
    )
    assert _refused(capsys, main(["compare", str(tmp_path / "nope")])) == (
        f"{tmp_path / 'nope'}: no such run folder"
    )
    run = _fake_run(tmp_path / "runs", "exp", "1", 0, 0.1, 3.0)
    assert _refused(capsys, main(["compare", str(run), "--sort", "v2m/R@5"])) == (
        "--sort v2m/R@5: no run has test/v2m/R@5 (choose from: m2v/MdR, m2v/R@1, m2v/R@10, "
        "v2m/MdR, v2m/R@1, v2m/R@10)"
    )
    (run / "metrics.json").write_text("{broken")
    msg = _refused(capsys, main(["compare", str(run)]))
    assert msg.startswith(f"{run / 'metrics.json'}: corrupt (")
