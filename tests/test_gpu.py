"""`make gpu-check`: the checks of tests/gpu_checks.py on the CUDA device (marker `gpu`).

Deselected by default (pyproject addopts); `make gpu-check` selects them and first fails with
"no CUDA device" on a machine without one, as the fixture below does when run directly.
"""

from __future__ import annotations

import gpu_checks as checks
import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda() -> torch.device:
    if not torch.cuda.is_available():
        pytest.exit("no CUDA device", returncode=1)
    return torch.device("cuda", torch.cuda.current_device())


def test_metrics_on_cuda_equal_cpu(cuda):
    checks.check_metrics_equal(cuda, n=20000, d=64)


@pytest.mark.parametrize("name", sorted(checks.MODELS))
def test_model_trains_in_bf16_from_device_memory(cuda, name, tmp_path):
    checks.check_model_trains(name, cuda, tmp_path, steps=5, precision="bf16-mixed")


def test_logmel_on_cuda_equals_cpu(cuda):
    checks.check_logmel_equal(cuda, seconds=10.0)


def test_cnn_on_cuda_equals_cpu(cuda, resnet50_weights):
    checks.check_cnn_equal(cuda, resnet50_weights)


def test_retrieve_on_cuda(cuda, tmp_path, resnet50_weights):
    checks.check_retrieve(cuda, tmp_path, resnet50_weights)


def test_ddp_nccl_one_gpu(cuda, tmp_path):
    assert checks.check_ddp_one_device(cuda, tmp_path) == "nccl"
