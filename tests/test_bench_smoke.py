"""`python -m bench.run --quick` end to end: every group reports positive ratios and passes
its correctness checks (ours against the reference on the same inputs)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("retrieval", "topk", "ann", "loading", "epoch", "extract")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_quick(tmp_path):
    pytest.importorskip("faiss", reason="the topk group needs faiss-cpu (the `bench` extra)")
    out = tmp_path / "bench"
    own = ROOT / "bench" / "results.json"
    before = own.stat().st_mtime_ns if own.exists() else None
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=880,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["quick"] is True and results["threads"] >= 1
    assert results["machine"]["cpu"] and results["calibration"]["sgemm_gflops"] > 0
    assert set(results["groups"]) == set(GROUPS)
    for name in GROUPS:
        rows = results["groups"][name]["rows"]
        assert rows, name
        for row in rows:
            assert row["group"] == name
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
            assert row["ours"] > 0 and row["reference"] > 0, row
            assert row["ratio_definition"] and row["notes"], row
            if "check" in row:
                assert row["check"]["ok"], row["check"]["detail"]
    md = (out / "results.md").read_text()
    assert "| group | case | ours | reference |" in md
    assert not list(out.glob(".*tmp*"))  # written atomically, no leftovers
    # The repository's own results were not touched.
    assert (own.stat().st_mtime_ns if own.exists() else None) == before
