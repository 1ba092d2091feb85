"""A new CSV column never truncates csv/metrics.csv in place (a kill mid-rewrite lost epochs)."""

from __future__ import annotations

import csv

import pytest

from lightning_app.loggers import ResumableCSVLogger


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_new_column_rewrites_the_file_with_every_row(tmp_path):
    logger = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="csv")
    logger.log_metrics({"val/score": 1.0}, step=0)
    logger.save()
    logger.log_metrics({"train/new": 2.0}, step=1)
    logger.save()
    rows = _rows(tmp_path / "csv" / "metrics.csv")
    assert [(r["val/score"], r["train/new"]) for r in rows] == [("1.0", ""), ("", "2.0")]


def test_a_failure_during_the_rewrite_leaves_the_old_file_whole(tmp_path, monkeypatch):
    logger = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="csv")
    for step in range(3):
        logger.log_metrics({"val/score": float(step)}, step=step)
    logger.save()
    path = tmp_path / "csv" / "metrics.csv"
    before = path.read_bytes()

    def dies(self, rows):  # the process stops while the new file is being written
        raise KeyboardInterrupt

    monkeypatch.setattr(csv.DictWriter, "writerows", dies)
    logger.log_metrics({"train/new": 1.0}, step=3)
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    assert path.read_bytes() == before and len(_rows(path)) == 3
