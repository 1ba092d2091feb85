"""The files an evaluated split leaves in its folder, for a run's final test and `vmr eval`.

    per_query_v2m.parquet, per_query_m2v.parquet   lightning_app.per_query
    embeddings_{video,music}.npy, embeddings_ids.json   with eval.save_embeddings=true
    report.html                                     lightning_app.report_html

A run's final test also logs the per-query tables to W&B (when a WandbLogger is in use).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lightning_app.config import Config
from lightning_app.per_query import (
    QueryTable,
    log_wandb_tables,
    query_tables,
    save_embeddings,
    write_tables,
)
from lightning_app.report_html import media_files, write_report

REPORT = "report.html"


def write_split_outputs(out_dir: Path, cfg: Config, stage: str, metrics: dict[str, float],
                        tables: dict[str, QueryTable], rows: dict[str, torch.Tensor],
                        dataset: Any, title: str, facts: Sequence[tuple[str, str]]) -> None:
    """Per-query tables, optional embeddings and report.html of one evaluated split.

    `dataset`: the split's PairDataset (its `ids` / `music_ids` name the rows).
    """
    out_dir = Path(out_dir)
    write_tables(tables, out_dir)
    if cfg.eval.save_embeddings:
        save_embeddings(rows, dataset.ids, dataset.music_ids, out_dir)
    write_report(out_dir / REPORT, title=title, facts=facts, metrics=metrics, stage=stage,
                 ks=cfg.eval.ks, tables=tables, curve_max_k=cfg.eval.curve_max_k,
                 media=media_files(cfg.data.root))


def write_test_outputs(cfg: Config, run_dir: Path, recall: Any, datamodule: Any,
                       metrics: dict[str, float], loggers: Sequence, step: int,
                       checkpoint: str | None) -> None:
    """After train()'s final test (rank 0): the run folder's per-query files and report.

    `recall`: the RecallAtK callback, holding the test's gathered rows and ranks.
    """
    rows, ranks = recall.last_test_rows, recall.last_test_ranks
    if not rows:
        return
    dataset = datamodule.datasets["test"]
    tables = query_tables(rows, dataset.ids, dataset.music_ids, cfg.eval.topk,
                          cfg.eval.chunk_size, ranks=ranks)
    log_wandb_tables(loggers, tables, "test", step)
    facts = [("run", str(run_dir)), ("experiment", cfg.name), ("data", cfg.data.root),
             ("split", "test (whole split as gallery)"),
             ("checkpoint", checkpoint or "the final weights")]
    write_split_outputs(run_dir, cfg, "test", metrics, tables, rows, dataset,
                        f"{cfg.name}: test results", facts)
