"""Cluster launches: `slurm.sbatch` (filled by `make slurm`), `torchrun.sh`, and the
Lightning plugins `train()` adds when a scheduler started the process."""

from __future__ import annotations

import signal

from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment


def cluster_plugins() -> list:
    """SLURM: save an hpc checkpoint and requeue on SIGUSR1 (the template sends it 120 s
    before the time limit). torchrun: its environment, named explicitly because Lightning
    would otherwise prefer SLURM's when torchrun runs inside an allocation."""
    if TorchElasticEnvironment.detect():
        return [TorchElasticEnvironment()]
    if SLURMEnvironment.detect():
        return [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)]
    return []
