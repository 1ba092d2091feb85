"""`vmr extract-merge` and `vmr extract-slurm`: the commands around a sharded extract.

    vmr extract ... --shard K/N                 (one shard; see datamodules/extract/shards.py)
    vmr extract-merge OUT                       (every shard's report -> one summary)
    vmr extract-slurm --shards N [--dry-run] -- audio|video ARGS   (one array task a shard)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from datamodules.errors import DataError


def _cmd_extract_merge(args: argparse.Namespace) -> int:
    from datamodules.extract.shards import merge_reports, merged_line

    for summary in merge_reports(args.out).values():
        print(merged_line(summary))
        for failure in summary["failed"]:
            print(f"  failed: {failure['reason']}")
    return 0


def _cmd_extract_slurm(args: argparse.Namespace) -> int:
    from lightning_app.cli import build_parser
    from lightning_app.extract_slurm import ExtractSlurmOptions, write_extract_script
    from lightning_app.sweep_slurm import submit

    extract_args = [a for a in args.extract_args if a != "--"]
    if not extract_args:
        raise DataError("vmr extract-slurm: give the extract arguments after --, e.g. "
                        "-- video --input DIR --out DIR ...")
    parsed = build_parser().parse_args(["extract", *extract_args])  # checks them now
    opts = ExtractSlurmOptions(shards=args.shards, gpus=args.gpus, cpus=args.cpus,
                               time=args.time, partition=args.partition,
                               max_parallel=args.max_parallel)
    script = write_extract_script(extract_args, parsed.out, opts)
    if args.dry_run:
        print(script.read_text(), end="")
        print(f"# written to {script} (not submitted)")
        return 0
    job = submit(script)
    print(f"submitted job array {job}: {args.shards} shards; when all have finished: "
          f"vmr extract-merge {parsed.out}")
    return 0


def add_shard_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract-merge", help="combine the shard reports of a sharded extract")
    p.add_argument("out", type=Path, help="the --out folder the shards wrote to")
    p.set_defaults(func=_cmd_extract_merge)

    p = sub.add_parser("extract-slurm", help="a sharded extract as a SLURM job array")
    p.add_argument("--shards", type=int, default=8, help="array tasks (one shard each)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per task (0: CPU-only features)")
    p.add_argument("--cpus", type=int, default=8, help="CPUs per task (decoding workers)")
    p.add_argument("--time", default="24:00:00", help="time limit per task")
    p.add_argument("--partition", default="")
    p.add_argument("--max-parallel", type=int, default=0, help="tasks running at once (0: all)")
    p.add_argument("--dry-run", action="store_true", help="write and print the script only")
    p.add_argument("extract_args", nargs=argparse.REMAINDER,
                   help="-- then the arguments of vmr extract (audio|video ...)")
    p.set_defaults(func=_cmd_extract_slurm)
