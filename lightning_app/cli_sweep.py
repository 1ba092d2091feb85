"""`vmr sweep`, `vmr study` and `vmr sweep-task` (the SLURM array task's entry point).

    vmr sweep NAME key=v1,v2 other=a,b --seeds 0,1,2 [--launcher local|slurm] [--parallel N]
              [--dry-run] [--out DIR | --resume SWEEP_DIR]
    vmr study NAME [--seeds 0,1,2] [key=value ...] [--launcher ...] [--parallel N] [--dry-run]
              [--out DIR | --resume STUDY_DIR | --report-only STUDY_DIR]
    vmr sweep-task SWEEP_DIR INDEX [key=value ...]

A sweep folder (default runs/sweeps/NAME/<time>/, studies runs/studies/NAME/<time>/) holds
manifest.json and one run root per run; running the same sweep again into it (`--out` the
same folder, or `--resume`) skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from lightning_app.errors import ConfigError
from lightning_app.sweep_plan import (
    Manifest,
    RunSpec,
    check_not_reserved,
    parse_grid,
    parse_seeds,
    sweep_runs,
)

SWEEPS_DIR, STUDIES_DIR_OUT = Path("runs/sweeps"), Path("runs/studies")


class _IntermixedParser(argparse.ArgumentParser):
    """Lets key=value arguments come after options too (`vmr sweep NAME --seeds 0,1 a=1,2`)."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inner:  # the intermixed parse calls back in here, twice
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def _parser(sub: argparse._SubParsersAction, name: str, **kwargs) -> argparse.ArgumentParser:
    p = sub.add_parser(name, **kwargs)
    p.__class__ = _IntermixedParser
    return p


def add_sweep_commands(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "sweep", help="run a grid of overrides x seeds of one experiment")
    p.add_argument("name", nargs="?", help="experiment name (optional with --resume)")
    p.add_argument("grid", nargs="*", help="key=v1,v2 (a comma inside [] or quotes, or \\, "
                                           "stays in the value)")
    p.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2 (default 0)")
    _launch_args(p, "runs/sweeps/NAME/<time>")
    p.set_defaults(func=_cmd_sweep)

    p = _parser(sub, "study", help="run experiments/studies/NAME.yaml and report")
    p.add_argument("name", help="study name (experiments/studies/NAME.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value applied to every arm")
    p.add_argument("--seeds", default=None, help="replace the study's seeds, e.g. 0,1,2")
    p.add_argument("--report-only", type=Path, metavar="STUDY_DIR",
                   help="only (re)build the report of an existing study folder")
    _launch_args(p, "runs/studies/NAME/<time>")
    p.set_defaults(func=_cmd_study)

    p = _parser(sub, "sweep-task", help="run one run of a sweep folder (a SLURM array task)")
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("index", type=int, help="the run's index in manifest.json")
    p.add_argument("overrides", nargs="*", help="key=value added to the run's own")
    p.set_defaults(func=_cmd_sweep_task)


def _launch_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--parallel", type=int, default=None,
                   help="runs at once (local: default 1; slurm: array tasks at once)")
    p.add_argument("--dry-run", action="store_true",
                   help="local: print the commands; slurm: write and print the job script")
    p.add_argument("--out", type=Path, default=None, help=f"the folder (default {default_out})")
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue the sweep in DIR (its manifest.json says what to run)")
    for flag, kind, default, text in (
            ("--nodes", int, 1, "slurm: nodes per run"),
            ("--gpus", int, 1, "slurm: GPUs (= tasks) per node and run"),
            ("--cpus", int, 8, "slurm: CPUs per task"),
            ("--time", str, "24:00:00", "slurm: time limit per run"),
            ("--partition", str, "", "slurm: partition (default: the cluster's)")):
        p.add_argument(flag, type=kind, default=default, help=text)


def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.resume:
        manifest, sweep_dir = _resumed(args, args.grid)
    else:
        if not args.name:
            raise ConfigError("vmr sweep: give an experiment NAME (or --resume SWEEP_DIR)")
        grid = parse_grid(args.grid)
        seeds = parse_seeds(args.seeds or "0")
        runs = sweep_runs(args.name, grid, seeds)
        _check_configs(runs)
        command = shlex.join(["vmr", "sweep", args.name, *args.grid,
                              "--seeds", ",".join(map(str, seeds))])
        manifest = Manifest(kind="sweep", name=args.name, created=_stamp(), grid=grid,
                            seeds=seeds, command=command, runs=runs)
        sweep_dir = args.out or _new_dir(SWEEPS_DIR / args.name, manifest)
    return _launch(manifest, sweep_dir, args)


def _cmd_study(args: argparse.Namespace) -> int:
    from lightning_app.study import check_arms, load_study, study_runs
    from lightning_app.study_report import write_report

    if args.report_only:
        manifest = Manifest.read(args.report_only)
        if manifest.kind != "study" or manifest.name != args.name:
            raise ConfigError(f"{args.report_only}: not a folder of study '{args.name}' "
                              f"(it holds {manifest.kind} '{manifest.name}')")
        _report(write_report(manifest, args.report_only))
        print(args.report_only)
        return 0
    if args.resume:
        manifest, sweep_dir = _resumed(args, args.overrides)
    else:
        study = load_study(args.name)
        seeds = parse_seeds(args.seeds) if args.seeds else study.seeds
        for item in args.overrides:
            if "=" not in item or item.startswith("="):
                raise ConfigError(f"override '{item}' is not of the form key=value")
            check_not_reserved(item.split("=", 1)[0], "vmr study")
        check_arms(study, args.overrides)
        command = shlex.join(["vmr", "study", args.name, "--seeds", ",".join(map(str, seeds)),
                              *args.overrides])
        manifest = Manifest(kind="study", name=args.name, created=_stamp(), grid={},
                            seeds=seeds, command=command,
                            runs=study_runs(study, seeds, args.overrides),
                            study=study.definition())
        sweep_dir = args.out or _new_dir(STUDIES_DIR_OUT / args.name, manifest)
    code = _launch(manifest, sweep_dir, args)
    if args.launcher == "local" and not args.dry_run:
        _report(write_report(manifest, sweep_dir))
    elif not args.dry_run:
        print(f"report when the jobs are done: vmr study {args.name} --report-only {sweep_dir}")
    if not args.dry_run:
        print(sweep_dir)
    return code


def _report(report: dict) -> None:
    arms = ", ".join(f"{arm} n={a['n']}" for arm, a in report["arms"].items())
    print(f"study {report['study']}: report.md, report.json, report.png ({arms})")


def _cmd_sweep_task(args: argparse.Namespace) -> int:
    """Run (or resume, or skip) run INDEX of the sweep folder, in this process."""
    from lightning_app.cli import main
    from lightning_app.run_dir import launch_rank
    from lightning_app.sweep import EXIT_FILE, last_error, resumable, run_state, write_exit

    manifest = Manifest.read(args.sweep_dir)
    if not 0 <= args.index < len(manifest.runs):
        raise ConfigError(f"{args.sweep_dir}: no run {args.index} (it has "
                          f"{len(manifest.runs)}: 0-{len(manifest.runs) - 1})")
    run = manifest.runs[args.index]
    if run_state(args.sweep_dir, run)[0] == "done":
        print(f"sweep-task: {run.id} is already finished")
        return 0
    rank0 = launch_rank() == 0
    if rank0:
        (run.root(args.sweep_dir) / EXIT_FILE).unlink(missing_ok=True)
    argv = [*run.train_args(args.sweep_dir, manifest.group, resumable(run, args.sweep_dir)),
            *args.overrides]
    print(f"sweep-task: {run.id}: vmr {shlex.join(argv)}", flush=True)
    try:
        code = main(argv)
    except BaseException as e:
        if rank0:
            write_exit(run, args.sweep_dir, 1, f"{type(e).__name__}: {e}".splitlines()[0])
        raise
    if rank0:
        write_exit(run, args.sweep_dir, code, None if code == 0 else
                   last_error(run.root(args.sweep_dir) / "train.log") or f"exit code {code}")
    return code


def _launch(manifest: Manifest, sweep_dir: Path, args: argparse.Namespace) -> int:
    from lightning_app.sweep import command, open_sweep, refresh, run_local, summary

    sweep_dir = Path(sweep_dir)
    if args.launcher == "slurm":
        from lightning_app.sweep_slurm import SlurmOptions, launch_slurm

        manifest = open_sweep(manifest, sweep_dir)
        opts = SlurmOptions(nodes=args.nodes, gpus=args.gpus, cpus=args.cpus, time=args.time,
                            partition=args.partition, max_parallel=args.parallel or 0)
        launch_slurm(manifest, sweep_dir, opts, args.dry_run)
        return 0
    if args.parallel is not None and args.parallel < 1:
        raise ConfigError(f"--parallel {args.parallel}: must be at least 1")
    if args.dry_run:  # nothing is written: show what would run, and what is skipped
        if (sweep_dir / "manifest.json").is_file():
            manifest = Manifest.read(sweep_dir)
            refresh(manifest, sweep_dir)
        for run in manifest.runs:
            what = ("# finished: " + run.id if run.status == "done" else
                    shlex.join(command(run, sweep_dir, manifest.group)))
            print(what)
        return 0
    manifest = open_sweep(manifest, sweep_dir)
    print(f"{manifest.kind} {manifest.name}: {len(manifest.runs)} runs in {sweep_dir}",
          flush=True)
    failed = run_local(manifest, sweep_dir, args.parallel or 1)
    print(summary(manifest, sweep_dir))
    return 1 if failed else 0


def _resumed(args: argparse.Namespace, extra: list[str]) -> tuple[Manifest, Path]:
    if extra or args.out or args.seeds:
        raise ConfigError("--resume takes the runs from SWEEP_DIR/manifest.json; give no "
                          "key=value, --seeds or --out with it")
    manifest = Manifest.read(args.resume)
    if args.name and args.name != manifest.name:
        raise ConfigError(f"--resume {args.resume}: it is {manifest.kind} '{manifest.name}', "
                          f"not '{args.name}'")
    return manifest, args.resume


def _check_configs(runs: list[RunSpec]) -> None:
    """Load each distinct configuration now, so a bad key fails before any run starts."""
    from lightning_app.config import load_config

    seen: set[tuple] = set()
    for run in runs:
        key = (run.experiment, tuple(run.overrides))
        if key not in seen:
            seen.add(key)
            load_config(run.experiment, run.overrides)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _new_dir(parent: Path, manifest: Manifest) -> Path:
    """parent/<time>, made unique; the folder's name is the W&B group's time too."""
    stamp = manifest.created
    path, n = parent / stamp, 1
    while path.exists():
        n += 1
        path = parent / f"{stamp}-{n}"
    manifest.created = path.name
    return path
