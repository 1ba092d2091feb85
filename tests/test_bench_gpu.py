"""bench --gpu without a GPU: one line naming the dry run; the gpu group's rows on the CPU."""

from __future__ import annotations

import pytest
import torch

from bench import gpu
from bench.run import main, parse_args


def test_gpu_flag_needs_cuda_unless_the_device_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="bench --gpu: no CUDA device"):
        main(["--gpu", "--only", "gpu"])
    args = parse_args(["--only", "gpu", "--device", "cpu"])
    assert args.gpu and args.device == "cpu"
    assert not parse_args([]).gpu


def test_metrics_row_checks_ranks_on_the_cpu():
    sizes = {**gpu.DRY, "metrics_n": 600, "metrics_d": 16, "check_n": 300}
    row = gpu.metrics_row(torch.device("cpu"), sizes)
    assert row["check"]["ok"], row["check"]["detail"]
    assert row["ours"] > 0 and row["reference"] > 0 and row["unit"] == "s"


def test_topk_row_is_left_out_with_a_note_without_faiss_gpu():
    row, note = gpu.topk_row(torch.device("cpu"), gpu.DRY)
    assert row is None and note.startswith("gpu topk: left out:")
