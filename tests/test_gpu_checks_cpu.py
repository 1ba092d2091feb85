"""The GPU checks (tests/gpu_checks.py) run on the CPU, so their logic is known to work on a
machine without a GPU: metrics, a bf16 training step from host memory, log-mel and CNN
extraction against themselves; the heavier ones (three models, retrieve, DDP) are slow."""

from __future__ import annotations

import gpu_checks as checks
import pytest
import torch

CPU = torch.device("cpu")


def test_metrics_check_on_cpu():
    checks.check_metrics_equal(CPU, n=1500, d=16)


def test_vmnet_bf16_steps_on_cpu(tmp_path):
    losses = checks.check_model_trains("vmnet", CPU, tmp_path, steps=2)
    assert len(losses) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iiclvm", "iiclvtm", "ssvmr"])
def test_model_bf16_steps_on_cpu(name, tmp_path):
    checks.check_model_trains(name, CPU, tmp_path, steps=2)


def test_extraction_checks_on_cpu(resnet50_weights):
    assert checks.check_logmel_equal(CPU, seconds=1.0) == 0.0
    assert checks.check_cnn_equal(CPU, resnet50_weights) == 0.0


@pytest.mark.slow
def test_retrieve_check_on_cpu(tmp_path, resnet50_weights):
    assert len(checks.check_retrieve(CPU, tmp_path, resnet50_weights)) == 5


@pytest.mark.slow
def test_ddp_check_on_cpu_uses_gloo(tmp_path):
    assert checks.check_ddp_one_device(CPU, tmp_path) == "gloo"
