"""Cluster launches: the `make slurm` script, the run folder every rank (and a requeued job)
agrees on, automatic resume after a requeue, the SLURM plugin, torchrun, the epoch-seeded
training order."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from datamodules.base import EpochSampler
from lightning_app.config import load_config, to_yaml
from lightning_app.errors import ConfigError
from lightning_app.launch import cluster_plugins
from lightning_app.resume import open_run
from lightning_app.run_dir import LAUNCH_FILE, RUN_DIR_ENV, WAIT_ENV, launch_key, launch_rank

PROJECT = Path(__file__).resolve().parent.parent
LAUNCH_VARS = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_STEP_ID", "SLURM_PROCID",
               "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS_PER_NODE", "SLURM_RESTART_COUNT",
               "TORCHELASTIC_RUN_ID", "RANK", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE",
               "WORLD_SIZE", "NODE_RANK")


# ----- make slurm ------------------------------------------------------------------------


def make_slurm(tmp_path: Path, *args: str, path: str | None = None) -> tuple[Path, str]:
    env = {**os.environ, "PATH": path or os.environ["PATH"]}
    out = subprocess.run(["make", "--no-print-directory", "slurm", f"SBATCH_DIR={tmp_path}",
                          *args], cwd=PROJECT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    script = Path(out.stdout.splitlines()[0])
    assert script.parent == tmp_path and script.suffix == ".sbatch"
    return script, out.stdout


def test_make_slurm_dry_writes_the_job_script(tmp_path):
    script, printed = make_slurm(tmp_path, "DRY=1", "NAME=quickstart", "NODES=2", "GPUS=4")
    text = script.read_text()
    assert text in printed  # DRY=1 prints the script instead of submitting it
    headers = re.findall(r"^#SBATCH (\S+)", text, re.M)
    for header in ("--nodes=2", "--ntasks-per-node=4", "--gres=gpu:4", "--cpus-per-task=8",
                   "--time=24:00:00", "--signal=SIGUSR1@120", "--requeue",
                   "--open-mode=append", "--job-name=vmr-quickstart",
                   f"--output={tmp_path}/%x-%j.out"):
        assert header in headers, header
    assert not any(h.startswith("--partition") for h in headers)  # none given
    srun = " ".join(re.search(r"^srun .*?[^\\]$", text, re.M | re.S).group(0).split("\\\n"))
    assert re.search(r"\.venv/bin/vmr train quickstart trainer\.devices=4 "
                     r"trainer\.num_nodes=2\b", srun), srun
    assert "--kill-on-bad-exit=1" in srun
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert "@" not in re.sub(r"SIGUSR1@120", "", text)  # every field filled


def test_slurm_script_runs_srun_with_overrides_and_resume(tmp_path):
    """Execute the script with a stand-in srun: the vmr command line arrives intact."""
    script, _ = make_slurm(tmp_path, "DRY=1", "NAME=quickstart", "GPUS=2", "PARTITION=gpu",
                           "TIME=1:00:00", "ARGS=optim.lr=1e-3 seed=3", "RESUME=last")
    text = script.read_text()
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --time=1:00:00" in text
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n')
    (bin_dir / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "SRUN_ARGS": str(tmp_path / "args")}
    assert subprocess.run(["bash", str(script)], env=env, capture_output=True).returncode == 0
    args = (tmp_path / "args").read_text().splitlines()
    assert args == ["--kill-on-bad-exit=1", ".venv/bin/vmr", "train", "quickstart",
                    "trainer.devices=2", "trainer.num_nodes=1", "optim.lr=1e-3", "seed=3",
                    "resume=last"]


def test_make_slurm_submits_with_sbatch(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        f'#!/bin/bash\necho "$@" > {tmp_path}/submitted\necho "Submitted batch job 7"\n')
    (bin_dir / "sbatch").chmod(0o755)
    script, printed = make_slurm(tmp_path, "NAME=quickstart",
                                 path=f"{bin_dir}:{os.environ['PATH']}")
    assert (tmp_path / "submitted").read_text().strip() == str(script)
    assert "Submitted batch job 7" in printed


# ----- the run folder under a scheduler, and resuming after a requeue --------------------


@pytest.fixture
def clean_launch_env(monkeypatch):
    monkeypatch.setenv(RUN_DIR_ENV, "unset")  # restored after the test
    monkeypatch.delenv(RUN_DIR_ENV)
    for var in LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def slurm_env(clean_launch_env):
    """What srun sets for one task of job 4242 (step 0)."""
    for var, value in (("SLURM_JOB_ID", "4242"), ("SLURM_NTASKS", "1"),
                       ("SLURM_JOB_NAME", "vmr-quickstart"), ("SLURM_STEP_ID", "0"),
                       ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0"), ("SLURM_NODEID", "0"),
                       ("SLURM_NTASKS_PER_NODE", "1")):
        clean_launch_env.setenv(var, value)
    return clean_launch_env


def small_cfg(tmp_path: Path, *extra: str):
    return load_config("quickstart", [
        f"data.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'runs'}",
        "data.synthetic.pairs=700", "data.synthetic.val=100", "data.synthetic.test=100",
        "data.batch_size=100", "data.eval_batch_size=100", "trainer.enable_progress_bar=false",
        "logger.wandb.mode=disabled", "loss.structure_k=20", "loss.num_negatives=20", *extra])


def test_requeued_slurm_job_resumes_its_own_run(tmp_path, slurm_env):
    cfg = small_cfg(tmp_path)
    parent = tmp_path / "runs" / "quickstart"
    other = parent / "20260101-000000-4100"  # another job's run: never touched
    (other / "checkpoints").mkdir(parents=True)
    (other / LAUNCH_FILE).write_text("slurm:4100:0")
    (other / "checkpoints" / "last.ckpt").write_bytes(b"x")
    ours = parent / "20260101-000100-4242"
    (ours / "checkpoints").mkdir(parents=True)
    (ours / LAUNCH_FILE).write_text("slurm:4242:0")
    (ours / "config.yaml").write_text(to_yaml(cfg))
    (ours / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert launch_key() == "slurm:4242:0"
    assert open_run(cfg, None) == (ours, ours / "checkpoints" / "last.ckpt")
    # The SIGUSR1 checkpoint Lightning wrote before requeueing is newer: continue from it.
    hpc = ours / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    os.utime(hpc, (time.time() + 5, time.time() + 5))
    assert open_run(cfg, None) == (ours, hpc)
    # A different config is not silently continued.
    with pytest.raises(ConfigError, match="optim.lr"):
        open_run(small_cfg(tmp_path, "optim.lr=0.1"), None)


def test_all_ranks_of_a_launch_share_one_new_folder(tmp_path, slurm_env):
    cfg = small_cfg(tmp_path)
    run, ckpt = open_run(cfg, None)  # rank 0 creates it
    assert ckpt is None and run.name.endswith("-4242")
    assert (run / LAUNCH_FILE).read_text() == "slurm:4242:0"
    slurm_env.delenv(RUN_DIR_ENV)
    slurm_env.setenv("SLURM_PROCID", "1")
    assert launch_rank() == 1
    assert open_run(cfg, None) == (run, None)  # rank 1 finds it
    slurm_env.delenv(RUN_DIR_ENV)
    slurm_env.setenv("SLURM_STEP_ID", "1")  # a second srun in the same job: its own run
    slurm_env.setenv(WAIT_ENV, "0.5")
    with pytest.raises(ConfigError, match="waiting for rank 0"):
        open_run(cfg, None)


def test_slurm_plugin_requeues_on_sigusr1(slurm_env):
    from lightning_fabric.plugins.environments import SLURMEnvironment

    (plugin,) = cluster_plugins()
    assert isinstance(plugin, SLURMEnvironment)
    assert plugin.auto_requeue and plugin.requeue_signal == signal.SIGUSR1


def test_no_plugins_outside_a_scheduler(clean_launch_env):
    assert cluster_plugins() == []
    assert launch_key() is None


def test_torchrun_needs_a_run_id_to_agree_on_the_folder(clean_launch_env):
    for var, value in (("RANK", "1"), ("GROUP_RANK", "0"), ("LOCAL_RANK", "1"),
                       ("LOCAL_WORLD_SIZE", "2"), ("WORLD_SIZE", "2"),
                       ("TORCHELASTIC_RUN_ID", "none")):
        clean_launch_env.setenv(var, value)
    with pytest.raises(ConfigError, match="--rdzv-id"):
        launch_key()
    clean_launch_env.setenv("TORCHELASTIC_RUN_ID", "abc123")
    assert launch_key() == "torchrun:abc123" and launch_rank() == 1


def test_slurm_requeue_end_to_end(tmp_path, slurm_env):
    """train() under (a fake single-task) SLURM, then the same job again: it continues."""
    from lightning_app.train import train

    _, first = train(small_cfg(tmp_path, "trainer.max_epochs=1"))
    run = first["run_dir"]
    assert run.name.endswith("-4242")
    slurm_env.delenv(RUN_DIR_ENV)
    slurm_env.setenv("SLURM_RESTART_COUNT", "1")
    _, second = train(small_cfg(tmp_path, "trainer.max_epochs=2"))  # requeued, run longer
    assert second["run_dir"] == run
    assert second["trainer"].current_epoch == 2
    assert [p.name for p in (tmp_path / "runs" / "quickstart").iterdir()] == [run.name]
    assert json.loads((run / "metrics.json").read_text())["test/gallery_size"] == 100


# ----- the training order ----------------------------------------------------------------


def test_epoch_sampler_order_depends_only_on_seed_and_epoch():
    data = range(50)
    a, b = EpochSampler(data, seed=1), EpochSampler(data, seed=1)
    torch.manual_seed(123)  # the global RNG plays no part
    first = list(a)
    torch.rand(10)
    assert list(b) == first and sorted(first) == list(range(50))
    a.set_epoch(1)
    assert list(a) != first
    assert list(EpochSampler(data, seed=1, epoch=1)) == list(a)
    assert list(EpochSampler(data, seed=2)) != first


def test_train_loader_is_shuffled_for_lightning(himv_root, monkeypatch):
    """Lightning must see a shuffling loader, so under DDP its DistributedSampler shuffles."""
    from lightning_fabric.utilities.data import _set_sampler_epoch
    from pytorch_lightning.utilities.data import _is_dataloader_shuffled

    from datamodules.himv200k import HIMV200KDataModule

    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    dm = HIMV200KDataModule(himv_root, batch_size=64, eval_batch_size=50)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert _is_dataloader_shuffled(loader) and not _is_dataloader_shuffled(dm.val_dataloader())
    assert loader.sampler.seed == 5
    epoch0 = torch.cat([b["index"] for b in loader])
    _set_sampler_epoch(loader, 1)  # what Lightning does before each epoch
    assert not torch.equal(torch.cat([b["index"] for b in loader]), epoch0)


# ----- torchrun ----------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_cpu_processes_write_one_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in (*LAUNCH_VARS, RUN_DIR_ENV)}
    env.update(GPUS="2", OMP_NUM_THREADS="1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    cfg = small_cfg(tmp_path)
    out = subprocess.run(
        ["bash", "lightning_app/launch/torchrun.sh", "quickstart", "trainer.accelerator=cpu",
         f"data.root={cfg.data.root}", f"run_dir={cfg.run_dir}", "data.synthetic.pairs=700",
         "data.synthetic.val=100", "data.synthetic.test=100", "data.batch_size=100",
         "data.eval_batch_size=100", "trainer.enable_progress_bar=false",
         "logger.wandb.mode=disabled", "loss.structure_k=20", "loss.num_negatives=20",
         "trainer.max_epochs=2"],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = list((tmp_path / "runs" / "quickstart").iterdir())
    assert len(runs) == 1, runs  # both ranks wrote into one folder
    run = runs[0]
    assert (run / LAUNCH_FILE).read_text().startswith("torchrun:")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/gallery_size"] == 100 and metrics["test/v2m/R@10"] > 0.3
    assert (run / "checkpoints" / "last.ckpt").is_file()
