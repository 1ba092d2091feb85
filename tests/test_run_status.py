"""status.json: a run that fails after its folder exists is marked failed with the one-line
reason; `vmr compare` skips and counts it, `vmr eval` of its checkpoint warns, and `resume=`
continues it (running again, then finished)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from datamodules.errors import DataError, StorageError
from lightning_app.cli import main
from lightning_app.run_status import read_status, run_status, write_status


def test_run_status_marks_running_finished_and_failed(tmp_path):
    with run_status(tmp_path):
        assert read_status(tmp_path)["status"] == "running"
    assert read_status(tmp_path)["status"] == "finished"
    with pytest.raises(DataError, match="bad row"), run_status(tmp_path):
        raise DataError("x.csv:3: bad row\nsecond line")
    assert read_status(tmp_path)["status"] == "failed"
    assert read_status(tmp_path)["reason"] == "x.csv:3: bad row"
    with pytest.raises(RuntimeError), run_status(tmp_path):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")
    assert read_status(tmp_path)["reason"] == "RuntimeError: CUDA out of memory. Tried to " \
                                              "allocate 2 GiB"


def test_an_interrupted_run_is_marked_failed_with_the_interruption(tmp_path):
    with pytest.raises(SystemExit), run_status(tmp_path):
        raise SystemExit(1)  # how Lightning ends fit() after Ctrl-C
    assert read_status(tmp_path)["reason"] == "interrupted (exit code 1)"


def test_a_full_disk_without_a_file_name_names_the_run_folder(tmp_path):
    import errno

    with pytest.raises(StorageError) as caught, run_status(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(caught.value) == f"{tmp_path}: no space left on device"
    assert read_status(tmp_path) == {**read_status(tmp_path), "status": "failed",
                                     "reason": f"{tmp_path}: no space left on device"}


def test_other_ranks_only_convert_errors(tmp_path):
    with pytest.raises(KeyError), run_status(tmp_path, write=False):
        raise KeyError("x")
    assert not (tmp_path / "status.json").exists()


def _copy_run(run: Path, tmp_path: Path, reason: str) -> Path:
    copy = tmp_path / "runs" / "quickstart" / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("wandb", "eval"))
    write_status(copy, "failed", reason)
    return copy


def test_compare_skips_and_counts_a_failed_run(tiny_run, tmp_path, capsys):
    failed = _copy_run(tiny_run["run"], tmp_path, "disk full")
    assert main(["compare", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err == (f"vmr: error: no finished runs (metrics.json) under "
                                       f"{tmp_path / 'runs'} (skipped 1 failed run)\n")
    assert main(["compare", str(tmp_path / "runs"), str(tiny_run["run"])]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith("skipped 1 failed run") and "| 1 " in out
    write_status(failed, "running")  # resumed: no longer failed, counted as finished again
    assert main(["compare", str(tmp_path / "runs")]) == 0
    assert "skipped" not in capsys.readouterr().out


def test_eval_of_a_failed_runs_checkpoint_warns_in_one_line(tiny_run, tmp_path, capsys):
    failed = _copy_run(tiny_run["run"], tmp_path, "x.ckpt: no space left on device")
    ckpt = next((failed / "checkpoints").glob("best-*.ckpt"))
    assert main(["eval", str(ckpt), "--out", str(tmp_path / "eval")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "warning" in line] == [
        f"vmr: warning: {ckpt} is from a run that failed (x.ckpt: no space left on device); "
        "evaluating it anyway"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["checkpoint"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # the run was copied
def test_resume_continues_a_failed_run(tiny_run, tmp_path, capsys):
    failed = _copy_run(tiny_run["run"], tmp_path, "killed by a full disk")
    (failed / "metrics.json").unlink()
    cfg = tiny_run["cfg"]
    overrides = [f"data.root={cfg.data.root}", f"run_dir={cfg.run_dir}",
                 "data.synthetic.pairs=600", "data.synthetic.val=100",
                 "data.synthetic.test=100", "data.batch_size=100", "data.eval_batch_size=100",
                 "trainer.enable_progress_bar=false", "logger.wandb.mode=offline",
                 "loss.structure_k=20", "loss.num_negatives=20", "eval.topk=7",
                 f"resume={failed}", "trainer.max_epochs=3"]
    assert main(["train", "quickstart", *overrides]) == 0
    out = capsys.readouterr().out
    assert f"vmr: {failed} had failed (killed by a full disk); continuing it" in out
    assert read_status(failed)["status"] == "finished"
    assert (failed / "metrics.json").is_file()
