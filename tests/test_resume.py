"""Resuming a run: a SIGKILLed run continued with `resume=` ends exactly where an
uninterrupted run does, in the same folder; bad `resume=` values fail in one line; the W&B
run id survives the restart."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from wandb_records import read_run

from lightning_app.cli import main
from lightning_app.config import load_config, to_yaml
from lightning_app.errors import ConfigError
from lightning_app.resume import (
    check_same_config,
    find_last_run,
    latest_checkpoint,
    resume_target,
)
from lightning_app.run_dir import RUN_DIR_ENV

PROJECT = Path(__file__).resolve().parent.parent


def tiny(tmp: Path, runs: str = "runs") -> list[str]:
    """Quickstart on 500 training pairs: five batches an epoch, a few seconds a run."""
    return [
        f"data.root={tmp / 'data'}", f"run_dir={tmp / runs}",
        "data.synthetic.pairs=700", "data.synthetic.val=100", "data.synthetic.test=100",
        "data.batch_size=100", "data.eval_batch_size=100", "trainer.enable_progress_bar=false",
        "logger.wandb.mode=disabled", "loss.structure_k=20", "loss.num_negatives=20",
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (RUN_DIR_ENV, "RANK", "LOCAL_RANK", "SLURM_JOB_ID", "SLURM_NTASKS",
                        "SLURM_PROCID", "TORCHELASTIC_RUN_ID")}
    # The same thread count in every run, so the float results can be compared exactly.
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def vmr_train(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightning_app", "train", "quickstart", *args]


def only_run(parent: Path) -> Path:
    runs = [p for p in parent.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    env = _env()
    a = subprocess.run(vmr_train(*tiny(tmp_path, "runs_a"), "trainer.max_epochs=3"), env=env,
                       cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert a.returncode == 0, a.stderr[-3000:]
    run_a = only_run(tmp_path / "runs_a" / "quickstart")

    # Run B: a real kill (SIGKILL, no chance to clean up) once epoch 0's checkpoint exists.
    log = open(tmp_path / "b1.log", "w")
    proc = subprocess.Popen(vmr_train(*tiny(tmp_path, "runs_b"), "trainer.max_epochs=3"),
                            env=env, cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT)
    parent_b = tmp_path / "runs_b" / "quickstart"
    deadline = time.monotonic() + 240
    last = None
    while last is None:
        assert proc.poll() is None, (tmp_path / "b1.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        found = list(parent_b.glob("*/checkpoints/last.ckpt")) if parent_b.is_dir() else []
        last = found[0] if found else None
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    log.close()
    run_b = only_run(parent_b)
    assert not (run_b / "metrics.json").exists()
    killed_at = torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert killed_at < 2, "the kill came too late to leave work to resume"

    b = subprocess.run(vmr_train(*tiny(tmp_path, "runs_b"), "trainer.max_epochs=3",
                                 f"resume={run_b}"),
                       env=env, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stderr[-3000:]
    assert only_run(parent_b) == run_b  # continued in place: no new folder

    metrics_a = json.loads((run_a / "metrics.json").read_text())
    metrics_b = json.loads((run_b / "metrics.json").read_text())
    test_keys = [k for k in metrics_a if k.startswith("test/")]
    assert len(test_keys) > 10
    for key in test_keys:
        assert metrics_b[key] == pytest.approx(metrics_a[key], abs=1e-6), key
    assert metrics_b["best_val"] == pytest.approx(metrics_a["best_val"], abs=1e-6)
    assert Path(metrics_b["best_checkpoint"]).parent.parent == run_b
    # The CSV log continues too: one validation row per epoch, as in the uninterrupted run.
    assert val_epochs(run_b) == val_epochs(run_a) == [0, 1, 2]
    saved = yaml.safe_load((run_b / "config.yaml").read_text())
    assert saved["resume"] == str(run_b) and saved["trainer"]["max_epochs"] == 3


def val_epochs(run: Path) -> list[int]:
    with open(run / "csv" / "metrics.csv") as f:
        return [int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("val/v2m/R@10")]


# ----- bad resume values -----------------------------------------------------------------


def fake_run(parent: Path, name: str, overrides: list[str], ckpt: bool = True) -> Path:
    run = parent / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(load_config("quickstart", overrides)))
    if ckpt:
        (run / "checkpoints" / "last.ckpt").write_bytes(b"not read by these tests")
    return run


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main(["train", "quickstart", *args])
    return code, capsys.readouterr().err.strip()


def test_resume_errors_are_one_line(tmp_path, capsys):
    base = tiny(tmp_path)
    parent = tmp_path / "runs" / "quickstart"
    code, err = run_cli(capsys, *base, f"resume={tmp_path / 'nope'}")
    assert code == 2 and "no such run folder" in err and len(err.splitlines()) == 1

    code, err = run_cli(capsys, *base, "resume=last")
    assert code == 2 and len(err.splitlines()) == 1
    assert "resume=last: no run of 'quickstart'" in err and "last.ckpt" in err

    bare = fake_run(parent, "20260101-000000", base, ckpt=False)
    code, err = run_cli(capsys, *base, f"resume={bare}")
    assert code == 2 and "nothing to resume from" in err and "last.ckpt" in err

    no_config = tmp_path / "elsewhere"
    (no_config / "checkpoints").mkdir(parents=True)
    (no_config / "checkpoints" / "last.ckpt").write_bytes(b"x")
    code, err = run_cli(capsys, *base, f"resume={no_config}")
    assert code == 2 and "not a run folder (no config.yaml)" in err

    run = fake_run(parent, "20260101-000001", base)
    code, err = run_cli(capsys, *base, "optim.lr=0.01", "seed=3", f"resume={run}")
    assert code == 2 and len(err.splitlines()) == 1
    assert "optim.lr (0.0003 -> 0.01)" in err and "seed (0 -> 3)" in err
    assert "only trainer.max_epochs may change" in err
    assert not list(tmp_path.glob("data/*")), "a bad resume must fail before any data work"


def test_only_max_epochs_may_change(tmp_path):
    base = tiny(tmp_path)
    run = fake_run(tmp_path / "runs" / "quickstart", "20260101-000000", base)
    longer = load_config("quickstart", [*base, "trainer.max_epochs=50", f"resume={run}"])
    check_same_config(run, longer, "test")
    with pytest.raises(ConfigError, match="trainer.devices"):
        check_same_config(run, load_config("quickstart", [*base, "trainer.devices=2"]), "test")


def test_resume_last_and_short_names(tmp_path, monkeypatch):
    monkeypatch.setenv(RUN_DIR_ENV, "unset")
    monkeypatch.delenv(RUN_DIR_ENV)
    for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK",
                "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    base = tiny(tmp_path)
    parent = tmp_path / "runs" / "quickstart"
    older = fake_run(parent, "20260101-000000", base)
    newer = fake_run(parent, "20260102-000000-2", base)
    fake_run(parent, "20260103-000000", base, ckpt=False)  # newest, but nothing to resume
    assert find_last_run(tmp_path / "runs", "quickstart") == newer
    cfg = load_config("quickstart", [*base, "resume=last"])
    assert resume_target(cfg) == (newer.resolve(), newer.resolve() / "checkpoints/last.ckpt")
    cfg = load_config("quickstart", [*base, f"resume={older.name}"])  # relative to run_dir/NAME
    assert resume_target(cfg)[0] == older.resolve()
    # Lightning's SLURM checkpoint, when newer, is where a requeued job continues from.
    hpc = older / "hpc_ckpt_3.ckpt"
    hpc.write_bytes(b"x")
    os.utime(hpc, (time.time() + 10, time.time() + 10))
    assert latest_checkpoint(older) == hpc


# ----- W&B -------------------------------------------------------------------------------


def test_resumed_run_logs_to_the_same_wandb_run(tmp_path, monkeypatch):
    from lightning_app.train import train

    monkeypatch.setenv(RUN_DIR_ENV, "unset")
    monkeypatch.delenv(RUN_DIR_ENV)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    base = [a for a in tiny(tmp_path) if not a.startswith("logger.")] + [
        "logger.wandb.mode=offline"]
    _, first = train(load_config("quickstart", [*base, "trainer.max_epochs=1"]))
    run = first["run_dir"]
    run_id = (run / "wandb_id").read_text().strip()
    assert run_id
    _, second = train(load_config("quickstart", [*base, "trainer.max_epochs=2",
                                                 f"resume={run}"]))
    assert second["run_dir"] == run.resolve()
    assert (run / "wandb_id").read_text().strip() == run_id
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2, offline  # one folder per start
    # W&B cannot continue an offline run: each segment starts its history at step 0 again
    # (checked in the records), so the resumed start is its own W&B run of the same group,
    # and `wandb sync RUN/wandb/offline-run-*` keeps both histories.
    first_seg, second_seg = (read_run(next(p.glob("run-*.wandb"))) for p in offline)
    assert first_seg["run_id"] == run_id and second_seg["run_id"] == f"{run_id}-s2"
    assert offline[1].name.endswith(f"-{run_id}-s2")
    assert first_seg["history"][0]["_step"] == second_seg["history"][0]["_step"] == "0"
    epochs = [{json.loads(r["epoch"]) for r in seg["history"] if "epoch" in r}
              for seg in (first_seg, second_seg)]
    assert max(epochs[0]) == 1 and min(epochs[1]) == 1 and max(epochs[1]) == 2
    assert val_epochs(run) == [0, 1]
