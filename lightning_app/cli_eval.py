"""`vmr eval CKPT [key=value ...] [--out DIR]`: score a checkpoint without training.

Registered by lightning_app.cli.build_parser; the work is lightning_app.evaluate.evaluate.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_eval(args: argparse.Namespace) -> int:
    from lightning_app.evaluate import evaluate

    evaluate(args.ckpt, args.overrides, args.out)
    return 0


def add_eval_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint (metrics, per-query results, report.html)",
        description="Rebuild the model and data from the checkpoint's config (plus overrides) "
                    "and evaluate: e.g. eval.split=val, data.root=DIR, eval.gallery_size=1000 "
                    "eval.draws=10, eval.topk=20, eval.save_embeddings=true. Results go to "
                    "<run>/eval/<timestamp>/ unless --out is given.")
    p.add_argument("ckpt", type=Path, help="a checkpoint written by vmr train")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default <run>/eval/<timestamp>)")
    p.set_defaults(func=_cmd_eval)
