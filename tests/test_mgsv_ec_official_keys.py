"""MGSV-EC's official metric set in metrics.json: the keys a run writes
(`test/v2m/official/...`) equal what `python -m datamodules.mgsv_ec_eval` prints from the
run's per_query_v2m.parquet, and both equal the official protocol's walk; other datasets
write no such keys; `vmr compare --sort` ranks runs by them in the right direction.
(tests/test_mgsv_ec_train.py checks a whole run and `vmr eval`.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_compare import make_run

from datamodules.mgsv_ec_eval import (
    KS,
    dataset_official_keys,
    from_per_query,
    main,
    official_dedup_ranks,
    official_metrics,
)
from lightning_app.compare import compare_runs
from lightning_app.per_query import query_tables, write_tables
from lightning_app.retrieval import paired_retrieval_ranks

NAMES = [f"R{k}" for k in KS] + ["MedianR", "MeanR", "MRR"]


@pytest.fixture
def evaluated(tmp_path):
    """A split of 30 videos over 12 tracks (several videos per track), its ranks and tables."""
    rng = np.random.default_rng(1)
    track = rng.integers(0, 12, size=30)
    video = torch.from_numpy(rng.normal(size=(30, 8)).astype(np.float32))
    music = torch.from_numpy(rng.normal(size=(12, 8)).astype(np.float32))[track]
    rows = {"video": video, "music": music, "video_key": torch.arange(30),
            "music_key": torch.from_numpy(track), "index": torch.arange(30)}
    video_ids = [f"v{i:02d}" for i in range(30)]
    music_ids = [f"t{t:02d}" for t in track]
    ranks = paired_retrieval_ranks(video, music, rows["video_key"], rows["music_key"])
    write_tables(query_tables(rows, video_ids, music_ids, topk=5, ranks=ranks), tmp_path)
    scores = (video @ music.T).numpy()
    return ranks, tmp_path / "per_query_v2m.parquet", official_dedup_ranks(scores, music_ids,
                                                                         music_ids)


def test_metrics_json_keys_equal_the_official_evaluation_exactly(evaluated, capsys):
    ranks, parquet, walked = evaluated
    keys = dataset_official_keys("mgsv_ec", ranks, "test")
    assert sorted(keys) == sorted(f"test/v2m/official/{n}" for n in NAMES)
    printed = from_per_query(parquet)
    assert {k.rsplit("/", 1)[1]: v for k, v in keys.items()} == printed  # exactly equal
    assert printed == official_metrics(walked)  # the official walk (no ties in random data)
    assert 0 < printed["MRR"] < 1 and printed["R100"] == 100.0
    assert main([str(parquet)]) == 0
    assert f"MRR {printed['MRR']:.4f}" in capsys.readouterr().out


def test_other_datasets_get_no_official_keys(evaluated):
    ranks, _, _ = evaluated
    for dataset in ("himv200k", "youtube8m", "mvd"):
        assert dataset_official_keys(dataset, ranks, "test") == {}
    assert dataset_official_keys("mgsv_ec", {}, "test") == {}  # no test ranks (no test run)


@pytest.mark.parametrize("sort", ["v2m/official/MRR", "v2m/official/R10",
                                  "v2m/official/MedianR", "v2m/official/MeanR"])
def test_compare_sorts_official_keys_best_first(tmp_path, sort):
    better = {"MRR": 0.6, "R10": 80.0, "MedianR": 2.0, "MeanR": 3.5}
    worse = {"MRR": 0.3, "R10": 40.0, "MedianR": 9.0, "MeanR": 12.0}
    for lr, values in (("0.001", worse), ("0.0003", better)):  # worse first on disk and by lr
        make_run(tmp_path, lr, 0, {f"test/v2m/official/{k}": v for k, v in values.items()})
    text, _ = compare_runs([tmp_path], sort=sort, metrics=[sort], fmt="json")
    rows = json.loads(text)["groups"]
    assert [r["metrics"][sort]["mean"] for r in rows] == [better[sort.rsplit("/", 1)[1]],
                                                          worse[sort.rsplit("/", 1)[1]]]
