"""Loggers for a run: CSV always (runs compare without W&B), W&B unless disabled.

W&B is offline unless WANDB_API_KEY is set or `logger.wandb.mode=online`, so a run never
needs a network; offline runs can be uploaded later with `wandb sync <run>/wandb/...`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger

from lightning_app.config import Config


def wandb_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def build_loggers(cfg: Config, run_dir: Path, hparams: dict[str, Any]) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="csv")]
    w = cfg.logger.wandb
    mode = wandb_mode(w.mode)
    if mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(
            project=w.project, entity=w.entity, group=cfg.name,
            name=f"{cfg.name}/{run_dir.name}", tags=[cfg.model.name, cfg.data.dataset, *w.tags],
            save_dir=str(run_dir), offline=(mode == "offline"), log_model=False,
            settings=_wandb_settings(),
        ))
    for lg in loggers:
        lg.log_hyperparams(hparams)
    return loggers


def _wandb_settings() -> Any:
    import wandb

    # No console capture: Lightning's progress bar and our table stay as they are.
    return wandb.Settings(console="off", silent=True)


def finish_loggers(loggers: list[Logger]) -> None:
    """Close the W&B run so an offline run folder is complete (config, media, summary)."""
    from pytorch_lightning.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger) and lg._experiment is not None:
            lg.experiment.finish()


class _DropTips(logging.Filter):
    """Lightning advertises a hosted logger at every Trainer start; keep the console quiet."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in record.getMessage()


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropTips())
