"""MGSV-EC: the reader against an independently written release (tests/mgsv_release.py).

Checks what reaches the store and the batches (only valid frames; never the poisoned
padding), the accepted folder arrangements, the clip boundaries in the index, and that the
de-duplicated evaluation gallery gives the official protocol's ranks and a brute-force
reference with several positives per track.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mgsv_release import POISON, WHERE, small_splits, write_release

from datamodules.feature_store import StoreSplit
from datamodules.mgsv_ec import MGSVECDataModule, pack_mgsv_ec
from datamodules.mgsv_ec_eval import official_dedup_ranks, official_metrics
from datamodules.mgsv_ec_tensors import TrackCache
from lightning_app.retrieval import metrics_from_ranks, paired_retrieval_ranks


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("mgsv") / "MGSV", small_splits())


@pytest.fixture(scope="module")
def datamodule(release):
    dm = MGSVECDataModule(release.root, batch_size=4, eval_batch_size=100)
    dm.prepare_data()
    dm.setup()
    return dm


def _check_store(store, rel) -> None:
    for split, rows in rel.rows.items():
        s = StoreSplit(store, split)
        assert [r["id"] for r in s.rows] == [r["video_id"] for r in rows]
        assert [r["music_id"] for r in s.rows] == [r["music_id"] for r in rows]
        for i, row in enumerate(rows):
            np.testing.assert_array_equal(s.frames("video", i), rel.video[row["video_id"]])
            np.testing.assert_array_equal(s.frames("music", i), rel.music[row["music_id"]])


@pytest.mark.parametrize("where", sorted(WHERE))
def test_pack_stores_exactly_the_valid_rows_at_every_accepted_level(tmp_path, where):
    rel = write_release(tmp_path / "r", small_splits(), where=where, seed=3)
    store = pack_mgsv_ec(rel.root, tmp_path / "store", progress=False)
    _check_store(store, rel)
    meta = json.loads((store / "meta.json").read_text())
    assert meta["modalities"]["video"]["dim"] == 512 and meta["modalities"]["music"]["dim"] == 768
    assert meta["source"]["tracks"] == {"train": 2, "val": 3, "test": 4}


def test_scattered_bool_masks_and_float16_features(tmp_path):
    rel = write_release(tmp_path / "r", small_splits(), scattered=True, seed=5,
                        feat_dtype=torch.float16, mask_dtype=torch.bool)
    _check_store(pack_mgsv_ec(rel.root, tmp_path / "store", progress=False), rel)


def test_index_keeps_ids_as_text_and_the_clip_boundaries(datamodule, release):
    rows = StoreSplit(datamodule.store_path, "test").rows
    src = release.rows["test"]
    assert [r["id"] for r in rows] == ["123456789012", "123456789013", "123456789014",
                                       "123456789015", "123456789016", "123456789017"]
    for r, s in zip(rows, src):
        for key in ("video_start", "video_end", "music_start", "music_end",
                    "music_total_duration"):
            assert r[key] == float(s[key])
        assert r["video_width"] == 1080 and r["video_category"] == s["video_category"]
        assert r["music_path"] == s["music_path"]  # quoted in the CSV (it holds a comma)
        first, last = r["moment_windows"]
        centres = 2.5 * np.arange(96)
        inside = np.flatnonzero((centres >= r["music_start"]) & (centres <= r["music_end"]))
        assert (first, last) == (inside[0], inside[-1])
    assert rows[2]["csv_line"] == "test_data.csv:4"


def test_batches_never_carry_padding(datamodule, release):
    for loader in (datamodule.test_dataloader(), datamodule.train_dataloader()):
        for batch in loader:
            for side, store in (("video", release.video), ("music", release.music)):
                x, mask = batch[side], batch[f"{side}_mask"]
                assert not (x == POISON).any()
                ids = batch[f"{side}_id"]
                for b, key in enumerate(ids):
                    n = len(store[key])
                    assert mask[b].tolist() == [True] * n + [False] * (mask.shape[1] - n)
                    np.testing.assert_array_equal(x[b, :n].numpy(), store[key])
                    assert not x[b, n:].any()


def _brute_force(v: np.ndarray, m_rows: np.ndarray, vid: list[str], mid: list[str]):
    """v2m: 1 + distinct other tracks scoring >= the query's track; m2v: 1 + videos of other
    tracks scoring >= the track's best video."""
    tracks = sorted(set(mid))
    emb = {t: m_rows[mid.index(t)] for t in tracks}
    v2m = []
    for q in sorted(range(len(vid)), key=lambda i: vid[i]):
        own = v[q] @ emb[mid[q]]
        v2m.append(1 + sum(v[q] @ emb[t] >= own for t in tracks if t != mid[q]))
    m2v = []
    for t in tracks:
        scores = v @ emb[t]
        pos = [i for i in range(len(vid)) if mid[i] == t]
        best = max(scores[i] for i in pos)
        m2v.append(1 + sum(scores[i] >= best for i in range(len(vid)) if mid[i] != t))
    return np.array(v2m), np.array(m2v)


def test_dedup_gallery_equals_official_protocol_and_brute_force(datamodule):
    ds = datamodule.datasets["test"]
    vid, mid = list(ds.ids), list(ds.music_ids)
    assert len(set(mid)) < len(mid)  # two tracks serve two test videos each
    rng = np.random.default_rng(0)
    v = rng.normal(size=(len(vid), 8)).astype(np.float32)
    by_track = {t: rng.normal(size=8).astype(np.float32) for t in sorted(set(mid))}
    m = np.stack([by_track[t] for t in mid])  # a track embeds the same in every row
    ranks = paired_retrieval_ranks(torch.from_numpy(v), torch.from_numpy(m), ds.video_keys,
                                   ds.music_keys)
    ref_v2m, ref_m2v = _brute_force(v, m, vid, mid)
    order = np.argsort(vid)  # vmr's queries are the unique ids, sorted
    official = official_dedup_ranks(v @ m.T, mid, mid)[order] + 1
    assert ranks["v2m"].tolist() == ref_v2m.tolist() == official.tolist()
    assert ranks["m2v"].tolist() == ref_m2v.tolist()
    assert len(ranks["m2v"]) == 4  # the gallery of the v2m direction: 4 distinct tracks
    ours = metrics_from_ranks(ranks["v2m"], ks=(1, 3))
    off = official_metrics(official - 1)
    assert ours["R@1"] * 100 == pytest.approx(off["R1"])
    assert ours["R@3"] * 100 == pytest.approx(off["R3"])
    assert ours["MnR"] == pytest.approx(off["MeanR"])
    assert ours["MdR"] == pytest.approx(off["MedianR"])


def test_official_metrics_by_hand():
    out = official_metrics(np.array([0, 0, 1, 4, 9, 120]))
    assert out["R1"] == pytest.approx(100 * 2 / 6)
    assert out["R5"] == pytest.approx(100 * 4 / 6)
    assert out["R10"] == pytest.approx(100 * 5 / 6)
    assert out["R100"] == pytest.approx(100 * 5 / 6)
    assert out["MedianR"] == 3.5 and out["MeanR"] == pytest.approx(134 / 6 + 1)
    assert out["MRR"] == pytest.approx(np.mean([1, 1, 1 / 2, 1 / 5, 1 / 10, 1 / 121]))


def test_track_cache_reads_each_track_once_within_its_budget(release):
    order = [mid for rows in release.rows.values() for mid in (r["music_id"] for r in rows)]
    cache = TrackCache(release.features, 768)
    for mid in order:
        np.testing.assert_array_equal(cache(mid), release.music[mid])
    assert cache.loads == len(set(order)) < len(order)
    tiny = TrackCache(release.features, 768, max_bytes=1)  # keeps only the last track
    for mid in ["4+5555555555", "7+9999999999", "4+5555555555", "4+5555555555"]:
        tiny(mid)
    assert tiny.loads == 3
