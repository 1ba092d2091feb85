"""Sweeps without training: comma lists and grids, the manifest, bad input, the local
launcher's failure handling (with a stand-in training command) and the SLURM job array
(with stand-in sbatch and srun)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_app import sweep
from lightning_app.cli import main
from lightning_app.errors import ConfigError
from lightning_app.sweep_plan import (
    Manifest,
    expand,
    parse_grid,
    parse_seeds,
    split_values,
    sweep_runs,
)
from lightning_app.sweep_slurm import array_spec


def refused(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0].removeprefix("vmr: error: ")


@pytest.mark.parametrize("text, values", [
    ("1e-3,3e-4", ["1e-3", "3e-4"]),
    ("[1,5,10]", ["[1,5,10]"]),
    ("[1,5,10],[1,10]", ["[1,5,10]", "[1,10]"]),
    ("{a: 1, b: [2,3]},x", ["{a: 1, b: [2,3]}", "x"]),
    (r"a\,b,c", ["a,b", "c"]),
    ("'x,y',\"u,v\",z", ["'x,y'", '"u,v"', "z"]),
    ("single", ["single"]),
    ("path/to/a,path/to/b", ["path/to/a", "path/to/b"]),
])
def test_split_values(text, values):
    assert split_values(text) == values


@pytest.mark.parametrize("text, message", [
    ("[1,2", "unclosed bracket"),
    ("1,2]", "unbalanced ']'"),
    ("'a,b", "unclosed quote"),
])
def test_split_values_refuses_unbalanced(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        split_values(text)


def test_grid_is_the_cartesian_product_in_order():
    grid = parse_grid(["optim.lr=1e-3,3e-4", "eval.ks=[1,5],[10]", "trainer.max_epochs=2"])
    assert grid == {"optim.lr": ["1e-3", "3e-4"], "eval.ks": ["[1,5]", "[10]"],
                    "trainer.max_epochs": ["2"]}
    assert expand(grid) == [
        ["optim.lr=1e-3", "eval.ks=[1,5]", "trainer.max_epochs=2"],
        ["optim.lr=1e-3", "eval.ks=[10]", "trainer.max_epochs=2"],
        ["optim.lr=3e-4", "eval.ks=[1,5]", "trainer.max_epochs=2"],
        ["optim.lr=3e-4", "eval.ks=[10]", "trainer.max_epochs=2"],
    ]
    runs = sweep_runs("quickstart", grid, [0, 1, 2])
    assert len(runs) == 12 and [r.index for r in runs] == list(range(12))
    assert len({r.id for r in runs}) == 12
    assert [(r.overrides, r.seed) for r in runs[:3]] == [(expand(grid)[0], s) for s in (0, 1, 2)]
    # The job type (and run id) names only the keys that vary.
    assert runs[0].job_type == "optim.lr=1e-3,eval.ks=[1,5]"
    assert runs[0].id == "000-lr=1e-3_ks=_1_5-s0"
    assert sweep_runs("quickstart", {}, [4])[0].overrides == []
    assert sweep_runs("quickstart", {}, [4])[0].job_type == "default"


@pytest.mark.parametrize("items, message", [
    (["optim.lr"], "sweep: 'optim.lr' is not of the form key=value[,value...]"),
    (["a=1", "a=2"], "sweep: key 'a' is given twice"),
    (["seed=0,1"], "sweep: 'seed' is set by the sweep for every run (give seeds with --seeds)"),
    (["run_dir=x"], "sweep: 'run_dir' is set by the sweep for every run"),
    (["optim.lr=1e-3,"], "sweep: 'optim.lr=1e-3,' has an empty value"),
])
def test_parse_grid_errors(items, message):
    with pytest.raises(ConfigError) as e:
        parse_grid(items)
    assert str(e.value) == message


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    with pytest.raises(ConfigError, match="expected integers"):
        parse_seeds("0,a")
    with pytest.raises(ConfigError, match="repeated"):
        parse_seeds("1,1")


def test_train_args_quote_job_types_that_yaml_would_change(tmp_path):
    run = sweep_runs("quickstart", {"eval.ks": ["[1,5]", "[10]"]}, [3])[0]
    args = run.train_args(tmp_path, "g-1", resume=True)
    assert args == ["train", "quickstart", "eval.ks=[1,5]", "seed=3",
                    f"run_dir={tmp_path.resolve() / 'runs' / run.id}", "logger.wandb.group=g-1",
                    "logger.wandb.job_type='eval.ks=[1,5]'", "resume=last"]
    from lightning_app.config import load_config

    for job_type in ("eval.ks=[1,5]", "off", "it's", "plain_name"):
        run.job_type = job_type
        overrides = run.train_args(tmp_path, "g", resume=False)[2:]
        assert load_config("quickstart", overrides).logger.wandb.job_type == job_type


def test_dry_run_prints_the_commands_and_writes_nothing(capsys, tmp_path):
    out = tmp_path / "sweep"
    # Options may come before the key=value list.
    assert main(["sweep", "quickstart", "--seeds", "0,1", "optim.lr=1e-3,3e-4",
                 "eval.ks=[1,5,10]", "--dry-run", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and not out.exists()
    assert all(" -m lightning_app train quickstart optim.lr=" in ln for ln in lines)
    assert "optim.lr=3e-4 'eval.ks=[1,5,10]' seed=1" in lines[3]
    assert f"run_dir={out.resolve()}/runs/003-lr=3e-4-s1" in lines[3]


def test_sweep_refuses_bad_keys_before_running(capsys, tmp_path):
    msg = refused(capsys, main(["sweep", "quickstart", "optim.lrr=1,2", "--out",
                                str(tmp_path / "s")]))
    assert msg.startswith("command line: unknown key 'optim.lrr'")
    assert not (tmp_path / "s").exists()
    assert refused(capsys, main(["sweep", "nope", "optim.lr=1"])).startswith(
        "unknown experiment 'nope'")
    assert refused(capsys, main(["sweep", "quickstart", "seed=1,2"])) == (
        "sweep: 'seed' is set by the sweep for every run (give seeds with --seeds)")
    assert refused(capsys, main(["sweep", "--resume", str(tmp_path)])) == (
        f"{tmp_path}: not a sweep folder (no manifest.json)")


def test_rerun_into_a_folder_of_another_sweep_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "run_local", lambda *a, **k: [])
    out = tmp_path / "s"
    assert main(["sweep", "quickstart", "optim.lr=1e-3", "--out", str(out)]) == 0
    assert Manifest.read(out).runs[0].overrides == ["optim.lr=1e-3"]
    capsys.readouterr()
    msg = refused(capsys, main(["sweep", "quickstart", "optim.lr=1e-4", "--out", str(out)]))
    assert msg == (f"{out}: holds a different sweep (quickstart, 1 runs); use a new --out "
                   "folder or --resume it")


def test_local_launcher_records_failures_and_goes_on(capsys, tmp_path, monkeypatch):
    """Run 1 fails (exit 3 with an error line), runs 0 and 2 succeed: the sweep finishes all
    three, marks the failure in the manifest and exits 1."""

    def fake_command(run, sweep_dir, group, python=sys.executable):
        root = run.root(sweep_dir) / run.experiment / "20260101-000000"
        if run.index == 1:
            code = "import sys; print('Traceback...'); print('RuntimeError: boom'); sys.exit(3)"
        else:
            code = (f"import pathlib; p = pathlib.Path({str(root)!r}); "
                    "p.mkdir(parents=True); (p / 'metrics.json').write_text('{}')")
        return [python, "-c", code]

    monkeypatch.setattr(sweep, "command", fake_command)
    prepared = []  # side by side, each dataset is built once first
    monkeypatch.setattr(sweep, "prepare_data", lambda runs: prepared.extend(runs))
    out = tmp_path / "s"
    assert main(["sweep", "quickstart", "optim.lr=1e-3,2e-3,3e-3", "--out", str(out),
                 "--parallel", "2"]) == 1
    printed = capsys.readouterr().out
    manifest = Manifest.read(out)
    assert [r.status for r in manifest.runs] == ["done", "failed", "done"]
    assert [r.index for r in prepared] == [0, 1, 2]
    failed = manifest.runs[1]
    assert failed.returncode == 3 and failed.error == "RuntimeError: boom"
    assert manifest.runs[0].run_dir == f"runs/{manifest.runs[0].id}/quickstart/20260101-000000"
    assert "3 runs (2 done, 1 failed)" in printed
    assert f"failed {failed.id}: RuntimeError: boom" in printed
    log = (out / "runs" / failed.id / "train.log").read_text()
    assert log.startswith("# ") and "RuntimeError: boom" in log


# ----- SLURM -----------------------------------------------------------------------------


def test_array_spec():
    assert array_spec([0, 1, 2, 3]) == "0-3"
    assert array_spec([1, 3, 4]) == "1,3,4"
    assert array_spec([2, 3], max_parallel=4) == "2-3%4"


def fake_tool(bin_dir: Path, name: str, record: Path, stdout: str = "") -> None:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {record}\necho "{stdout}"\n')
    tool.chmod(0o755)


def test_slurm_array_is_written_submitted_and_runs_one_task_per_run(capsys, tmp_path,
                                                                    monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "sbatch", tmp_path / "sbatch_args", "Submitted batch job 4242")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = tmp_path / "s"
    assert main(["sweep", "quickstart", "optim.lr=1e-3,3e-4", "--seeds", "0,1", "--launcher",
                 "slurm", "--out", str(out), "--partition", "gpu", "--gpus", "2",
                 "--parallel", "3"]) == 0
    printed = capsys.readouterr().out
    manifest = Manifest.read(out)
    script = Path(manifest.launcher["script"])
    assert (tmp_path / "sbatch_args").read_text().split() == [str(script)]
    assert manifest.launcher["job_id"] == "4242" and "job array 4242" in printed
    assert all(r.status == "submitted" for r in manifest.runs)
    text = script.read_text()
    headers = re.findall(r"^#SBATCH (\S+)", text, re.M)
    for header in ("--array=0-3%3", "--partition=gpu", "--ntasks-per-node=2", "--gres=gpu:2",
                   "--nodes=1", "--requeue", "--signal=SIGUSR1@120",
                   f"--output={out.resolve()}/slurm/%x-%A_%a.out"):
        assert header in headers, header
    assert "@" not in re.sub(r"SIGUSR1@120", "", text)  # every field filled
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    # Run the script as array task 2 with a stand-in srun: it asks for run 2 of the manifest.
    fake_tool(bin_dir, "srun", tmp_path / "srun_args")
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2"}
    assert subprocess.run(["bash", str(script)], env=env, capture_output=True).returncode == 0
    assert (tmp_path / "srun_args").read_text().splitlines() == [
        "--kill-on-bad-exit=1", ".venv/bin/vmr", "sweep-task", str(out.resolve()), "2",
        "trainer.devices=2", "trainer.num_nodes=1"]


def test_slurm_dry_run_writes_the_script_without_submitting(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    out = tmp_path / "s"
    assert main(["sweep", "quickstart", "optim.lr=1e-3,3e-4", "--launcher", "slurm",
                 "--dry-run", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    script = Path(Manifest.read(out).launcher["script"])
    assert printed == script.read_text()
    assert "#SBATCH --array=0-1\n" in printed and "--partition" not in printed
    assert "job_id" not in Manifest.read(out).launcher
    # Only unfinished runs go into a resubmission.
    run = Manifest.read(out).runs[0]
    done = run.root(out) / "quickstart" / "20260101-000000"
    done.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({"test/v2m/R@1": 0.5}))
    assert main(["sweep", "--resume", str(out), "--launcher", "slurm", "--dry-run"]) == 0
    assert "#SBATCH --array=1-1\n" in capsys.readouterr().out
    msg = refused(capsys, main(["sweep-task", str(out), "7"]))
    assert msg == f"{out}: no run 7 (it has 2: 0-1)"
    assert main(["sweep-task", str(out), "0"]) == 0  # finished: nothing to do
    assert "already finished" in capsys.readouterr().out


# ----- W&B -------------------------------------------------------------------------------


def test_wandb_offline_run_records_group_and_job_type(tmp_path, monkeypatch):
    from wandb_records import read_run

    from lightning_app.config import load_config
    from lightning_app.loggers import build_loggers, finish_loggers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = load_config("quickstart", ["logger.wandb.mode=offline", "logger.wandb.job_type=arm_b",
                                     "logger.wandb.group=quickstart-20260101-000000"])
    loggers = build_loggers(cfg, tmp_path, {"seed": 0})
    loggers[-1].experiment.log({"x": 1.0})
    finish_loggers(loggers)
    record = read_run(next(tmp_path.glob("wandb/offline-run-*/run-*.wandb")))
    assert (record["group"], record["job_type"]) == ("quickstart-20260101-000000", "arm_b")


def test_parallel_runs_may_not_rewrite_each_others_data(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "command", lambda *a, **k: pytest.fail("nothing may start"))
    assert main(["sweep", "quickstart", "data.synthetic.seed=1,2", f"data.root={tmp_path}/d",
                 "--parallel", "2", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"vmr: error: --parallel: runs 000-seed=1-s0 and 001-seed=2-s0 use "
                   f"data.root={tmp_path}/d with different data settings and would rewrite "
                   "each other's data; give each its own data.root or run one at a time")
