"""Recall@K, MdR and MnR over a whole validation or test split, in both directions.

The model's validation/test steps return embeddings plus the dataset `index` and id keys
(see `models.base.RetrievalModule`). At epoch end this callback gathers them from every
process, drops DistributedSampler padding, de-duplicates galleries by id and computes
exact metrics on the module's device. All ranks compute the same numbers, so they are
logged without a reduction. A recall-at-K curve image goes to W&B when it is in use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from lightning_app.distributed import gather_rows, unique_by_index
from lightning_app.retrieval import metrics_from_ranks, paired_retrieval_ranks, recall_curve

FIELDS = ("video", "music", "index", "video_key", "music_key")
# extra(stage, rows) -> {metric name: value}; rows as gathered (FIELDS, one per dataset index).
ExtraMetrics = Callable[[str, dict[str, torch.Tensor]], dict[str, float]]


class RecallAtK(Callback):
    def __init__(self, ks: list[int] | tuple[int, ...] = (1, 5, 10), chunk_size: int = 4096,
                 curve_max_k: int = 100, curve_dir: str | Path | None = None,
                 extras: Sequence[ExtraMetrics] = ()):
        self.ks = tuple(ks)
        # Further metrics over the same gathered rows (e.g. lightning_app.truth_recall):
        # called as extra(stage, rows) after the exact ones; their dicts join the logged
        # metrics and last_metrics. They must give the same numbers on every process.
        self.extras = list(extras)
        self.chunk_size = chunk_size
        self.curve_max_k = curve_max_k
        self.curve_dir = Path(curve_dir) if curve_dir else None
        self._outputs: list[dict[str, torch.Tensor]] = []
        self.last_curves: dict[str, torch.Tensor] = {}
        # Exact values per stage as Python floats (Lightning's logged copies are float32).
        self.last_metrics: dict[str, dict[str, float]] = {}
        # The last test's gathered rows (video, music, video_key, music_key, index; one per
        # pair of the split, by dataset index) and their ranks: per-query results and top-k
        # lists are made from them (lightning_app.per_query).
        self.last_test_rows: dict[str, torch.Tensor] = {}
        self.last_test_ranks: dict[str, torch.Tensor] = {}

    # ----- collecting ----------------------------------------------------------------------

    def _collect(self, outputs: Any) -> None:
        if not isinstance(outputs, dict) or not all(f in outputs for f in FIELDS):
            raise RuntimeError(
                "RecallAtK needs validation/test steps that return "
                f"{', '.join(FIELDS)} (see models.base.RetrievalModule)"
            )
        self._outputs.append({f: outputs[f].detach() for f in FIELDS})

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._outputs = []

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._outputs = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        self._collect(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0) -> None:
        self._collect(outputs)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._finish(trainer, pl_module, "test")

    # ----- computing ------------------------------------------------------------------------

    def gather(self, trainer: pl.Trainer, pl_module: pl.LightningModule
               ) -> dict[str, torch.Tensor]:
        """The collected rows from every process, one per dataset index, sorted by index."""
        cols = {f: torch.cat([o[f] for o in self._outputs]) for f in FIELDS}
        world = trainer.world_size
        cols = {f: gather_rows(c, pl_module.all_gather, world) for f, c in cols.items()}
        return unique_by_index(cols.pop("index"), **cols)

    def ranks(self, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Ranks per direction over the given rows, identical on every rank."""
        return paired_retrieval_ranks(rows["video"], rows["music"], rows["video_key"],
                                      rows["music_key"], chunk_size=self.chunk_size)

    def compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule
                ) -> dict[str, torch.Tensor]:
        """Ranks per direction over the whole split, identical on every rank."""
        return self.ranks(self.gather(trainer, pl_module))

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self._outputs:
            return
        rows = self.gather(trainer, pl_module)
        ranks = self.ranks(rows)
        self._outputs = []
        if stage == "test":
            self.last_test_rows, self.last_test_ranks = rows, ranks
        metrics: dict[str, float] = {}
        for direction, r in ranks.items():
            metrics.update({f"{stage}/{direction}/{k}": v
                            for k, v in metrics_from_ranks(r, self.ks).items()})
        metrics[f"{stage}/gallery_size"] = float(ranks["v2m"].numel())
        for extra in self.extras:
            metrics.update(extra(stage, rows))
        self.last_metrics[stage] = metrics
        # Identical on all ranks: no reduction needed (and none that could change them).
        pl_module.log_dict(metrics, sync_dist=False, rank_zero_only=False)
        if trainer.sanity_checking:
            return
        self.last_curves = {d: recall_curve(r, self.curve_max_k).cpu() for d, r in ranks.items()}
        if trainer.is_global_zero:
            self._log_curve(trainer, stage)

    def _log_curve(self, trainer: pl.Trainer, stage: str) -> None:
        from pytorch_lightning.loggers import WandbLogger

        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers and (self.curve_dir is None or stage != "test"):
            return
        fig = recall_figure(self.last_curves, f"{stage} recall@K (epoch {trainer.current_epoch})")
        try:
            if self.curve_dir is not None and stage == "test":
                self.curve_dir.mkdir(parents=True, exist_ok=True)
                fig.savefig(self.curve_dir / "recall_curve_test.png", dpi=100)
            for lg in wandb_loggers:
                lg.log_image(key=f"{stage}/recall_curve", images=[fig], step=trainer.global_step)
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)


def recall_figure(curves: dict[str, torch.Tensor], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for direction, curve in curves.items():
        ks = torch.arange(1, curve.numel() + 1)
        ax.plot(ks.numpy(), curve.numpy() * 100, label=direction)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    return fig
