"""A real sweep through the CLI on tiny data: both runs train (one W&B group, the grid point
as job type in their configs), a rerun skips the finished run and resumes the interrupted
one in its own folder, and the SLURM array task's entry point continues one run by index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_app.run_dir import RUN_DIR_ENV
from lightning_app.sweep_plan import Manifest

PROJECT = Path(__file__).resolve().parent.parent


def tiny(tmp: Path) -> list[str]:
    """Quickstart on 200 training pairs, two batches, one epoch: seconds per run."""
    return [f"data.root={tmp / 'data'}", "data.synthetic.pairs=400", "data.synthetic.val=100",
            "data.synthetic.test=100", "data.batch_size=100", "data.eval_batch_size=100",
            "trainer.enable_progress_bar=false", "loss.structure_k=20",
            "loss.num_negatives=20", "trainer.max_epochs=1", "logger.wandb.mode=disabled"]


def vmr(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in (RUN_DIR_ENV, "WANDB_API_KEY", "WANDB_MODE")}
    env.update(OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "lightning_app", *args], cwd=PROJECT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    return out


def commands_in_log(run_root: Path) -> list[str]:
    return [ln for ln in (run_root / "train.log").read_text().splitlines()
            if ln.startswith("# ")]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    args = ["sweep", "quickstart", "optim.lr=3e-4,1e-3", *tiny(tmp), "--out", str(tmp / "s")]
    vmr(*args)
    return tmp / "s", args


def only_folder(run_root: Path) -> Path:
    folders = [p for p in (run_root / "quickstart").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def test_every_run_trains_in_its_own_root_with_one_wandb_group(swept):
    """Each run's config carries the sweep's W&B group and its grid point as job type
    (test_sweep_plan checks that the W&B logger records them)."""
    out, _ = swept
    manifest = Manifest.read(out)
    assert [r.status for r in manifest.runs] == ["done", "done"]
    assert manifest.group == f"quickstart-{manifest.created}"
    for run, lr in zip(manifest.runs, ("3e-4", "1e-3")):
        folder = only_folder(out / "runs" / run.id)
        assert run.run_dir == str(folder.relative_to(out))
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["test/v2m/R@10"] > 0 and metrics["seed"] == 0
        wandb = yaml.safe_load((folder / "config.yaml").read_text())["logger"]["wandb"]
        assert wandb["group"] == manifest.group
        assert wandb["job_type"] == run.job_type == f"optim.lr={lr}"  # the grid point


def test_rerun_skips_finished_runs_and_resumes_the_interrupted_one(swept):
    out, args = swept
    manifest = Manifest.read(out)
    first, second = (out / "runs" / r.id for r in manifest.runs)
    kept = only_folder(first) / "metrics.json"
    kept_stamp = kept.stat().st_mtime_ns
    interrupted = only_folder(second)
    (interrupted / "metrics.json").unlink()  # as if killed after its last checkpoint
    assert (interrupted / "checkpoints" / "last.ckpt").is_file()

    printed = vmr(*args).stdout  # the same command again, into the same folder
    assert "1 of 2 runs already finished, skipped" in printed
    assert f"resuming {manifest.runs[1].id}" in printed
    assert kept.stat().st_mtime_ns == kept_stamp and len(commands_in_log(first)) == 1
    commands = commands_in_log(second)
    assert len(commands) == 2 and commands[1].endswith("resume=last")
    assert only_folder(second) == interrupted  # continued in place
    assert (interrupted / "metrics.json").is_file()
    assert [r.status for r in Manifest.read(out).runs] == ["done", "done"]


@pytest.mark.slow
def test_sweep_task_resumes_one_run_by_index(swept):
    out, _ = swept
    run = Manifest.read(out).runs[0]
    folder = only_folder(out / "runs" / run.id)
    (folder / "metrics.json").unlink()
    printed = vmr("sweep-task", str(out), "0").stdout
    assert "resume=last" in printed
    assert only_folder(out / "runs" / run.id) == folder and (folder / "metrics.json").is_file()
    assert json.loads((out / "runs" / run.id / "exit.json").read_text()) == {
        "returncode": 0, "error": None}
