"""Loggers for a run: CSV always (runs compare without W&B), W&B unless disabled.

W&B is offline unless WANDB_API_KEY is set or `logger.wandb.mode=online`, so a run never
needs a network; offline runs can be uploaded later with `wandb sync <run>/wandb/...`.
A resumed run logs on: the same W&B run (its id is kept in `<run>/wandb_id`) and the same
`csv/metrics.csv`, cut back to the checkpoint it continues from.
"""

from __future__ import annotations

import csv
import logging
import os
import secrets
import string
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from datamodules.atomic import atomic_file, write_text
from lightning_app.config import Config
from lightning_app.run_dir import launch_rank

WANDB_ID_FILE = "wandb_id"


def wandb_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def build_loggers(cfg: Config, run_dir: Path, hparams: dict[str, Any],
                  resume_at: tuple[int, int] | None = None) -> list[Logger]:
    """`resume_at`: (epoch, global_step) of the checkpoint a resumed run continues from."""
    loggers: list[Logger] = [ResumableCSVLogger(save_dir=str(run_dir), name="", version="csv",
                                                resume_at=resume_at)]
    w = cfg.logger.wandb
    mode = wandb_mode(w.mode)
    if mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger

        # Only rank 0 logs to W&B; it fixes the run id at the first start and reuses it.
        run_id = wandb_run_id(run_dir) if launch_rank() == 0 else None
        name = f"{cfg.name}/{run_dir.name}"
        segment = offline_segment(run_dir) if mode == "offline" and resume_at else 1
        if run_id and segment > 1:
            # W&B cannot continue an offline run: a second offline start of one id numbers its
            # history from step 0 again, and `wandb sync` of both folders keeps only one of
            # them. Each resumed offline start is therefore its own W&B run of the same group.
            run_id, name = f"{run_id}-s{segment}", f"{name} (segment {segment})"
        loggers.append(WandbLogger(
            # A sweep or study sets one group for all its runs and the arm as job type.
            project=w.project, entity=w.entity, group=w.group or cfg.name,
            job_type=w.job_type or None, name=name,
            tags=[cfg.model.name, cfg.data.dataset, *w.tags],
            save_dir=str(run_dir), offline=(mode == "offline"), log_model=False,
            id=run_id, resume="allow", settings=_wandb_settings(),
        ))
        hparams = {**hparams, "wandb_segment": segment}
    for lg in loggers:
        lg.log_hyperparams(hparams)
    return loggers


def offline_segment(run_dir: Path) -> int:
    """1 + the number of offline W&B folders this run folder already holds."""
    return 1 + len(list((run_dir / "wandb").glob("offline-run-*")))


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run folder: read from `wandb_id`, or made and written there."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    write_text(path, run_id + "\n")
    return run_id


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, but a resumed run keeps the rows logged up to its checkpoint,
    and a new column never truncates the file in place."""

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        # Lightning rewrites the whole file (open "w", then write) when a key first appears,
        # e.g. the epoch-end values logged right after a checkpoint: a process killed in
        # between left a truncated log that lost the epochs the checkpoint covers.
        path = Path(self.metrics_file_path)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)

    def __init__(self, log_dir: str, resume_at: tuple[int, int] | None):
        self.resume_at = resume_at
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self.resume_at is None or not path.is_file():
            super()._check_log_dir_exists()  # a fresh run: start a new file
            return
        epoch, step = self.resume_at
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = list(reader.fieldnames or []), list(reader)
        # Rows the killed process logged after the checkpoint are logged again on resume.
        kept = [r for r in rows if _before(r, epoch, step)]
        with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = header


def _before(row: dict[str, str], epoch: int, step: int) -> bool:
    try:
        row_epoch = int(float(row.get("epoch") or epoch))
        row_step = int(float(row.get("step") or 0))
    except ValueError:
        return True
    return row_epoch < epoch or (row_epoch == epoch and row_step <= step)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose `resume_at` keeps a resumed run's earlier rows (Lightning deletes them)."""

    def __init__(self, *args: Any, resume_at: tuple[int, int] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._resume_at = resume_at

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir, self._resume_at)
        return self._experiment


def _wandb_settings() -> Any:
    import wandb

    # No console capture: Lightning's progress bar and our table stay as they are.
    return wandb.Settings(console="off", silent=True)


def finish_loggers(loggers: list[Logger]) -> None:
    """Close the W&B run so an offline run folder is complete (config, media, summary)."""
    from pytorch_lightning.loggers import WandbLogger

    finished = False
    for lg in loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg.experiment.finish()
            finished = True
    if finished:
        import wandb

        # finish() returns before W&B's service has flushed and closed the run's files;
        # shutting the service down waits for that (a later run starts a new one).
        wandb.teardown()


class _DropTips(logging.Filter):
    """Lightning advertises a hosted logger at every Trainer start; keep the console quiet."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropTips())
