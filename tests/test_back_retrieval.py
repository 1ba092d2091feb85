"""SSVMR back retrieval: cycle-consistent new pairs, exactly the planted ones; inside fit."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pair_tables import TableModel, fake_trainer, loader_pairs, noisy_himv

from datamodules.errors import DataError
from lightning_app.callbacks import BackRetrieval, SelfTraining
from lightning_app.callbacks.back_retrieval import back_retrieve

# ----- the rule on hand-made embeddings ------------------------------------------------------


def e(*weights):
    return torch.nn.functional.normalize(torch.tensor(weights, dtype=torch.float32), dim=0)


# Five pairs (row i: video i with song i), songs = the unit vectors e_0..e_4.
SONGS = torch.eye(5)
VIDEOS = torch.stack([
    e(1, 0, 0, 0, 0),    # top song 0: its own pair (cycle closes, but not new)
    e(0, .5, 1, 0, 0),   # top song 2 (.894); song 2 ranks video 2 first, video 1 second
    e(0, 0, 1, 0, 0),    # top song 2: its own pair
    e(0, 1, 0, 0, 0),    # top song 1 (1.0); song 1 ranks it first -> new pair (3, 1)
    e(0, .6, 0, .8, 0),  # top song 3 (.8); song 3 ranks it first -> new pair (4, 3)
])
KEYS = torch.arange(5)
IDENTITY = (np.arange(5), np.arange(5))


def run(existing=IDENTITY, **kwargs):
    args = {"rank_tolerance": 1, "similarity_floor": -1.0, "max_new": None, "chunk_size": 2}
    return back_retrieve(VIDEOS, SONGS, KEYS, KEYS, existing, **{**args, **kwargs})


def pairs(result):
    return list(zip(result.video_rows.tolist(), result.music_rows.tolist()))


def test_cycle_consistent_new_pairs_best_score_first():
    result = run()
    assert pairs(result) == [(3, 1), (4, 3)]
    assert result.scores.tolist() == pytest.approx([1.0, 0.8])
    assert (result.cycle_consistent, result.candidates) == (4, 2)


def test_rank_tolerance_floor_cap_and_existing_pairs():
    assert pairs(run(rank_tolerance=2)) == [(3, 1), (1, 2), (4, 3)]
    assert pairs(run(rank_tolerance=2, max_new=2)) == [(3, 1), (1, 2)]
    assert pairs(run(rank_tolerance=2, max_new=0)) == []
    assert pairs(run(similarity_floor=0.9)) == [(3, 1)]
    existing = (np.array([0, 1, 2, 3, 4, 3]), np.array([0, 1, 2, 3, 4, 1]))
    assert pairs(run(existing=existing)) == [(4, 3)]


def test_duplicate_ids_are_one_item_and_compared_by_id():
    # Row 5 repeats video 3 with song 1, row 6 repeats pair 0, under the same ids: they add
    # no items, and as existing pairs they exclude (video 3, song 1) by id.
    videos = torch.cat([VIDEOS, VIDEOS[3:4], VIDEOS[0:1]])
    songs = torch.cat([SONGS, SONGS[1:2], SONGS[0:1]])
    vkeys, mkeys = torch.tensor([0, 1, 2, 3, 4, 3, 0]), torch.tensor([0, 1, 2, 3, 4, 1, 0])
    kwargs = {"rank_tolerance": 1, "similarity_floor": -1.0, "max_new": None}
    result = back_retrieve(videos, songs, vkeys, mkeys, (np.arange(7), np.arange(7)), **kwargs)
    assert pairs(result) == [(4, 3)]
    result = back_retrieve(videos, songs, vkeys, mkeys, (np.arange(5), np.arange(5)), **kwargs)
    assert pairs(result) == [(3, 1), (4, 3)]  # first rows represent video 3 and song 1


def test_constructor_rejects_bad_settings():
    for kwargs, match in [({"rank_tolerance": 0}, "rank_tolerance"),
                          ({"every_n_epochs": 0}, "every_n_epochs"),
                          ({"max_new": -1}, "max_new"), ({"weight": -0.5}, "weight"),
                          ({"similarity_floor": float("inf")}, "similarity_floor")]:
        with pytest.raises(ValueError, match=match):
            BackRetrieval(**kwargs)


def test_schedule():
    cb = BackRetrieval(every_n_epochs=3, start_epoch=2)
    assert [epoch for epoch in range(10) if cb.due(epoch)] == [2, 5, 8]


# ----- on a noisy synthetic HIMV-200K -----------------------------------------------------------


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    dm, truth = noisy_himv(tmp_path_factory.mktemp("br") / "himv", seed=21)
    rows = {r["id"]: r for r in truth}
    train = dm.datasets["train"]
    # Embeddings are the true content (no style term): each noisy video's true song sits in
    # another noisy row, and that song's best video is the noisy video: exactly these pairs.
    planted = {(v, train.music_ids[k]) for k, m in enumerate(train.music_ids)
               for v in [rows[m]["written_music_id"]] if v != m}
    return dm, truth, planted


def fresh(noisy):
    noisy[0].set_train_pairs(None)
    noisy[0].set_extra_pairs(None)
    return noisy


def test_adds_exactly_the_planted_true_pairs(noisy):
    dm, truth, planted = fresh(noisy)
    train = dm.datasets["train"]
    assert len(planted) == 90
    cb = BackRetrieval(weight=0.5, batch_size=64, chunk_size=40)
    metrics = cb.run(fake_trainer(dm, epoch=2, step=9), TableModel(truth, style_weight=0.0))
    result = cb.last_result
    added = {(train.ids[v], train.music_ids[m])
             for v, m in zip(result.video_rows, result.music_rows)}
    assert added == planted
    assert metrics == {"cycle_consistent": 300.0, "candidates": 90.0, "added": 90.0,
                       "same_style": 1.0}
    assert cb.history == [{**metrics, "epoch": 2, "global_step": 9}]
    assert len(dm.train_pairs) == 390
    dm.batch_size = 1000
    seen = loader_pairs(dm)
    assert {p for p, w in seen.items() if w == 0.5} == planted
    assert {p for p, w in seen.items() if w == 1.0} == {(v, v) for v in train.ids}

    # The cap keeps the best; a second run replaces (not stacks) the extras.
    capped = BackRetrieval(max_new=10)
    assert capped.run(fake_trainer(dm), TableModel(truth, style_weight=0.0))["added"] == 10
    assert len(dm.train_pairs) == 310


def test_floor_and_noisy_styles(noisy):
    dm, truth, planted = fresh(noisy)
    # With a style term the true songs still win (1.0 vs <= .2), so the same pairs come back.
    cb = BackRetrieval(similarity_floor=0.99)
    assert cb.run(fake_trainer(dm), TableModel(truth))["added"] == 90
    assert BackRetrieval(similarity_floor=1.01).run(fake_trainer(dm), TableModel(truth)) == {
        "cycle_consistent": 300.0, "candidates": 0.0, "added": 0.0,
        "same_style": pytest.approx(float("nan"), nan_ok=True)}
    assert len(dm.train_pairs) == 300  # no extras


def test_state_round_trip_and_resume(noisy, tmp_path):
    dm, truth, planted = fresh(noisy)
    cb = BackRetrieval(max_new=5, weight=0.25)
    cb.run(fake_trainer(dm), TableModel(truth, style_weight=0.0))
    want = dm.train_pairs
    state = cb.state_dict()
    assert state["history"] == cb.history and len(state["extra"]["video_ids"]) == 5

    dm.set_extra_pairs(None)
    again = BackRetrieval()
    again.load_state_dict(state)
    again.on_fit_start(fake_trainer(dm), None)
    got = dm.train_pairs
    for name in ("video_rows", "music_rows", "weights"):
        assert np.array_equal(getattr(got, name), getattr(want, name))

    other, _ = noisy_himv(tmp_path / "other", seed=22)
    foreign = BackRetrieval()
    foreign.load_state_dict(state)
    with pytest.raises(DataError, match="made for store"):
        foreign.on_fit_start(fake_trainer(other), None)


def test_inside_fit_with_self_training(noisy, tmp_path):
    """Self-training drops the noisy pairs, back retrieval adds their true pairs."""
    dm, truth, planted = fresh(noisy)
    dm.batch_size = 1000
    train = dm.datasets["train"]
    noisy_videos = {v for v, _ in planted}
    clean = {(v, v) for v in train.ids if v not in noisy_videos}
    model = TableModel(truth, style_weight=0.0)
    st = SelfTraining(rank_threshold=1, action="drop", out_dir=tmp_path)
    br = BackRetrieval(start_epoch=1, weight=0.5)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, reload_dataloaders_every_n_epochs=1,
                         callbacks=[st, br])
    trainer.fit(model, datamodule=dm)
    assert len(model.pairs_seen(0)) == 300
    assert model.pairs_seen(1) == {p: 1.0 for p in clean}  # noisy dropped, none added yet
    assert model.pairs_seen(2) == {**{p: 1.0 for p in clean}, **{p: 0.5 for p in planted}}
    assert [h["epoch"] for h in br.history] == [1, 2]
    assert float(trainer.callback_metrics["back_retrieval/added"]) == 90.0
    assert float(trainer.callback_metrics["back_retrieval/same_style"]) == 1.0


# ----- the unpaired pool: a tiny pool with a known answer --------------------------------------


def test_pool_back_retrieval_on_a_tiny_pool():
    from lightning_app.callbacks.back_retrieval import pool_back_retrieve

    # videos: pool PV0 = e0, PV1 ~ e1 + .2 e2, PV2 = e3; training TV0 = e1, TV1 = e2
    videos = torch.stack([e(1, 0, 0, 0, 0), e(0, 1, .2, 0, 0), e(0, 0, 0, 1, 0),
                          e(0, 1, 0, 0, 0), e(0, 0, 1, 0, 0)])
    # songs: pool PS0 = e0 (PV0's hidden partner), PS1 ~ e3 + e4, PS2 ~ e2 + .1 e0;
    # training TS0 = e1, TS1 = e2
    songs = torch.stack([e(1, 0, 0, 0, 0), e(0, 0, 0, 1, 1), e(.1, 0, 1, 0, 0),
                         e(0, 1, 0, 0, 0), e(0, 0, 1, 0, 0)])

    def found(**kwargs):
        args = {"rank_tolerance": 1, "similarity_floor": -1.0, "max_new": None,
                "chunk_size": 2}
        r = pool_back_retrieve(videos, songs, 3, 3, **{**args, **kwargs})
        return r, list(zip(r.video_index.tolist(), r.music_index.tolist()))

    # PV0 <-> PS0 (found from both sides, once); PV2 -> PS1 -> PV2. PV1's top song TS0 ranks
    # TV0 first; PS2's top video TV1 ranks TS1 first: both need a tolerance of 2.
    r, got = found()
    assert got == [(0, 0), (2, 1)] and r.cycle_consistent == 2 and r.candidates == 2
    np.testing.assert_allclose(r.scores, [1.0, 0.5 ** 0.5], rtol=1e-6)
    _, got = found(rank_tolerance=2)
    assert got == [(0, 0), (4, 2), (1, 3), (2, 1)]  # best score first
    r, got = found(similarity_floor=0.8)
    assert got == [(0, 0)] and r.cycle_consistent == 2 and r.candidates == 1
    _, got = found(rank_tolerance=2, max_new=2)
    assert got == [(0, 0), (4, 2)]
    r = pool_back_retrieve(videos[3:], songs[3:], 0, 0, rank_tolerance=1,
                           similarity_floor=0.0, max_new=None)
    assert len(r.video_index) == 0 and r.cycle_consistent == 0


def test_source_unpaired_needs_an_unpaired_list(noisy):
    from lightning_app.callbacks.back_retrieval import check_source

    dm = noisy[0]  # HIMV-200K: no unpaired lists
    with pytest.raises(DataError, match="back_retrieval.source=split"):
        check_source("unpaired", dm)
    check_source("split", dm)
    with pytest.raises(ValueError, match="source"):
        BackRetrieval(source="elsewhere")


# ----- the candidate search through a FAISS index (back_retrieval.index) --------------------


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_choice_gives_the_exact_pairs_on_a_small_collection(kind):
    from lightning_app.ann_index import IndexParams

    # 5 items: ivf has one cell (all searched) and hnsw visits everything: exact here.
    index = IndexParams(kind)
    assert pairs(run(index=index)) == [(3, 1), (4, 3)]
    assert pairs(run(rank_tolerance=2, index=index)) == [(3, 1), (1, 2), (4, 3)]


def test_items_an_approximate_index_does_not_find_get_no_pair(monkeypatch):
    import lightning_app.callbacks.cycle_pairs as cycle_pairs
    from lightning_app.ann_index import IndexParams

    real = cycle_pairs.search

    def loses_video_3(queries, gallery, k, index, chunk_size):
        scores, found = real(queries, gallery, k, IndexParams("exact"), chunk_size)
        if queries is VIDEOS or len(queries) == 5:  # the videos' search: video 3 finds nothing
            scores[3], found[3] = float("-inf"), -1
        return scores, found

    monkeypatch.setattr(cycle_pairs, "search", loses_video_3)
    result = run(index=IndexParams("hnsw"))
    assert pairs(result) == [(4, 3)] and result.cycle_consistent == 3


def test_config_index_without_faiss_is_one_line(monkeypatch):
    import importlib.util

    from lightning_app.config import load_config
    from lightning_app.errors import ConfigError

    cfg = load_config("quickstart", ["back_retrieval.index=hnsw"])
    assert cfg.back_retrieval.index == "hnsw"  # FAISS is installed in the test environment
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "faiss" else real(name, *a))
    with pytest.raises(ConfigError, match=r"back_retrieval.index.*pip install 'vmr\[faiss\]'"):
        load_config("quickstart", ["back_retrieval.index=ivf"])
    with pytest.raises(ConfigError, match="back_retrieval.index"):
        load_config("quickstart", ["back_retrieval.index=annoy"])
