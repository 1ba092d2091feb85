"""A full disk (a 200 KiB tmpfs) and a read-only folder (the same tmpfs remounted read-only)
under `vmr prepare`, `vmr synth`, `vmr extract` and a training run's checkpoints: exit code
2, one error line naming the path and the cause, no traceback, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from media import make_audio
from small_fs import error_lines, run_on_small_fs

SYNTH = ["--pairs", "300", "--val", "50", "--test", "50"]


def _the_error(result: dict) -> str:
    """The one error line of a run that exited 2 without a traceback."""
    assert "Traceback" not in result["err"], result["err"]
    errors = error_lines(result)
    assert result["rc"] == 2 and len(errors) == 1, result
    return errors[0]


def _one_error(result: dict, expected: str) -> None:
    assert _the_error(result) == f"vmr: error: {expected}", result


@pytest.fixture(scope="module")
def data_cases(tmp_path_factory) -> tuple[Path, dict]:
    from datamodules.synthetic.himv200k import write_himv200k
    from datamodules.synthetic.planted import PlantedSpec

    tmp = tmp_path_factory.mktemp("full_disk")
    src = write_himv200k(PlantedSpec(pairs=300, val=50, test=50, seed=0), tmp / "himv",
                         progress=False)
    small = tmp / "small"
    prepare = ["prepare", "--dataset", "himv200k", "--src", str(src), "--out",
               str(small / "store")]
    synth = ["synth", "--dataset", "himv200k", "--out", str(small / "synth"), *SYNTH]
    results = run_on_small_fs(tmp, "200k", {"prepare": prepare, "synth": synth},
                              {"prepare_ro": prepare, "synth_ro": synth})
    return small, results


def test_prepare_on_a_full_disk(data_cases):
    small, results = data_cases
    _one_error(results["prepare"], f"{small / 'store'}: no space left on device")
    assert results["prepare"]["files"] == []  # no store, no temporary folder, no lock file


def test_synth_on_a_full_disk(data_cases):
    small, results = data_cases
    _one_error(results["synth"], f"{small / 'synth'}: no space left on device")
    assert results["synth"]["files"] == []


def test_prepare_and_synth_into_a_read_only_folder(data_cases):
    small, results = data_cases
    for case in ("prepare_ro", "synth_ro"):
        _one_error(results[case], f"{small}: not writable (read-only file system)")
        assert results[case]["files"] == []


@pytest.fixture(scope="module")
def slow_cases(tmp_path_factory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("full_disk_slow")
    media = tmp / "media"
    media.mkdir()
    for i in range(4):
        make_audio(media / f"tone{i}.wav", seconds=20.0, tone_hz=220.0 * (i + 1),
                   sample_rate=16000)
    small = tmp / "small"
    extract = ["extract", "audio", "--input", str(media), "--out", str(small / "feat"),
               "--features", "logmel", "--workers", "0"]
    train = ["train", "quickstart", f"data.root={tmp / 'data'}", f"run_dir={small / 'runs'}",
             "data.synthetic.pairs=400", "data.synthetic.val=100", "data.synthetic.test=100",
             "data.batch_size=100", "data.eval_batch_size=100", "trainer.max_epochs=1",
             "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled",
             "loss.structure_k=20"]
    results = run_on_small_fs(tmp, "24k", {"extract": extract, "train": train},
                              {"extract_ro": extract})
    return small, tmp / "snapshots", results


@pytest.mark.slow
def test_extract_on_a_full_disk_stops_and_keeps_only_whole_files(slow_cases):
    small, snaps, results = slow_cases
    result = results["extract"]
    error = _the_error(result)
    # The job stops at the first file that does not fit, naming it; earlier ones are whole.
    failed = error[len("vmr: error: "):].split(": ")[0]
    assert error == f"vmr: error: {failed}: no space left on device"
    assert Path(failed).parent == small / "feat" and Path(failed).suffix == ".npy"
    kept = result["files"]
    assert all(f.startswith("feat/tone") and f.endswith(".npy") for f in kept), kept
    assert f"feat/{Path(failed).name}" not in kept
    for name in kept:
        assert np.load(snaps / "extract" / name).shape[0] > 0  # whole .npy files only


@pytest.mark.slow
def test_extract_into_a_read_only_folder(slow_cases):
    small, _, results = slow_cases
    _one_error(results["extract_ro"], f"{small / 'feat'}: not writable (read-only file system)")
    assert results["extract_ro"]["files"] == []


@pytest.mark.slow
def test_checkpoint_on_a_full_disk_stops_the_run_marked_failed(slow_cases):
    small, snaps, results = slow_cases
    result = results["train"]
    error = _the_error(result)
    assert error.startswith(f"vmr: error: {small / 'runs' / 'quickstart'}/")
    assert error.endswith("/checkpoints/best-000.ckpt: no space left on device")
    assert not [f for f in result["files"] if ".ckpt" in f or ".tmp" in f], result["files"]
    status_file = next((snaps / "train").rglob("status.json"))
    status = json.loads(status_file.read_text())
    assert status["status"] == "failed"
    assert status["reason"] == error[len("vmr: error: "):]
    assert not (status_file.parent / "metrics.json").exists()
