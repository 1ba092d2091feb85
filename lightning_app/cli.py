"""The `vmr` command (also `python -m lightning_app`).

    vmr train NAME [key=value ...]       run experiments/NAME.yaml
    vmr synth --dataset himv200k --out DIR [--pairs N --seed S ...]
    vmr prepare --dataset himv200k --src DIR [--out DIR] [--verify]
    vmr compare [RUNS_DIR | RUN_DIR ...] [--by KEY ...] [--format md|csv|json]
    vmr experiments                      list experiment names
    vmr eval CKPT [key=value ...] [--out DIR]   (lightning_app/cli_eval.py)
    vmr extract audio|video, vmr build-dataset, vmr retrieve   (lightning_app/cli_media.py)
    vmr sweep, vmr study, vmr sweep-task (grids, studies, SLURM arrays; lightning_app/cli_sweep.py)

Bad input exits with code 2 and one line naming the file, key or value; `--debug` shows
the traceback instead. Heavy imports happen inside each command so `vmr --help` is quick.
Messages of the "vmr" logger go to stdout (warnings to stderr), so that stderr carries
only problems.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from lightning_app.cli_data import add_data_commands
from lightning_app.cli_eval import add_eval_commands
from lightning_app.cli_media import add_media_commands
from lightning_app.cli_sweep import add_sweep_commands
from lightning_app.errors import USER_ERRORS


class _ConsoleHandler(logging.Handler):
    """INFO to stdout, WARNING and above to stderr; the streams are looked up per record."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _setup_logging() -> None:
    log = logging.getLogger("vmr")
    log.setLevel(logging.INFO)
    if not any(isinstance(h, _ConsoleHandler) for h in log.handlers):
        log.addHandler(_ConsoleHandler())


def _cmd_train(args: argparse.Namespace) -> int:
    from lightning_app.config import load_config

    cfg = load_config(args.name, args.overrides)
    from lightning_app.train import train

    train(cfg)
    return 0


def _cmd_experiments(args: argparse.Namespace) -> int:
    from lightning_app.config import EXPERIMENTS_DIR, experiment_names

    for name in experiment_names():
        lines = (EXPERIMENTS_DIR / f"{name}.yaml").read_text().splitlines()
        first = lines[0] if lines else ""
        print(f"{name:<24} {first.lstrip('# ').strip()}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from lightning_app.compare import compare_runs

    table, note = compare_runs([Path(p) for p in args.paths], stage=args.stage, sort=args.sort,
                               by=args.by, metrics=args.metrics, fmt=args.format)
    print(table)
    if note:  # stdout stays parseable for csv and json
        print(note if args.format == "md" else f"vmr compare: {note}",
              file=sys.stdout if args.format == "md" else sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmr", description="Video-music retrieval experiments.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run an experiment (experiments/NAME.yaml)")
    p.add_argument("name", help="experiment name, e.g. quickstart")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("experiments", help="list the experiments")
    p.set_defaults(func=_cmd_experiments)

    add_data_commands(sub)

    p = sub.add_parser("compare", help="mean, std and 95%% CI of finished runs per configuration")
    p.add_argument("paths", nargs="*", default=["runs"], help="run folders or folders of runs")
    p.add_argument("--stage", default="test", choices=("test", "val"))
    p.add_argument("--sort", default=None, help="metric to sort by, e.g. v2m/R@10")
    p.add_argument("--by", nargs="+", default=None, metavar="KEY",
                   help="group by these config keys (default: the whole configuration)")
    p.add_argument("--metrics", nargs="+", default=None, metavar="METRIC",
                   help="metric columns, e.g. v2m/R@1 m2v/MnR")
    p.add_argument("--format", default="md", choices=("md", "csv", "json"))
    p.set_defaults(func=_cmd_compare)

    add_media_commands(sub)
    add_eval_commands(sub)
    add_sweep_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    # Lightning 2.6 against torch 2.11 warns about its own pytree use at every step.
    warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
    try:
        return args.func(args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"vmr: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or unwritable folder any writer met: one line
        from datamodules.atomic import storage_message

        message = storage_message(e)
        if args.debug or message is None:
            raise
        print(f"vmr: error: {message}", file=sys.stderr)
        return 2
