"""SSVMR self-training callback: flags, actions, pseudo-label files, resume, inside fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pair_tables import TableModel, fake_trainer, loader_pairs, noisy_himv

from datamodules.errors import DataError
from datamodules.pseudo_labels import read_header, read_pseudo_labels
from lightning_app.callbacks import SelfTraining
from lightning_app.callbacks.self_training import clean_pairs

# ----- the decision rule on hand-made embeddings ---------------------------------------------

# Songs (by key): 0 = [1, 0] (row 0); 1 = [0, 1] (rows 1, 2, 4 share it); 2 = [.8, .6] (row 3).
MUSIC = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.8, 0.6], [0.0, 1.0]])
KEYS = torch.tensor([0, 1, 1, 2, 1])
# Row 2's paired song scores 0 (rank 3, top = song 0 by 1.0); row 4's scores .8 (rank 2,
# top = song 2 by .16); the others rank their song first.
VIDEO = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [0.6, 0.8]])


def clean(**kwargs):
    args = {"rank_threshold": 1, "action": "drop", "downweight": 0.25, "reassign_margin": 0.5,
            "fallback": "downweight", "chunk_size": 2}
    return clean_pairs(VIDEO, MUSIC, KEYS, **{**args, **kwargs})


def test_ranks_and_flags():
    result = clean()
    assert result.ranks.tolist() == [1, 1, 3, 1, 2]
    assert np.flatnonzero(result.flagged).tolist() == [2, 4]
    assert np.flatnonzero(clean(rank_threshold=2).flagged).tolist() == [2]


def test_drop_and_downweight():
    dropped = clean(action="drop")
    assert dropped.pairs.video_rows.tolist() == [0, 1, 3]
    assert dropped.pairs.music_rows.tolist() == [0, 1, 3]
    assert dropped.counts() == {"flagged": 2, "kept": 3, "downweighted": 0, "dropped": 2,
                                "reassigned": 0}
    light = clean(action="downweight")
    assert light.pairs.video_rows.tolist() == [0, 1, 2, 3, 4]
    assert light.pairs.weights.tolist() == [1.0, 1.0, 0.25, 1.0, 0.25]
    assert light.status == ["kept", "kept", "downweighted", "kept", "downweighted"]


@pytest.mark.parametrize("fallback,rows,music,weights,row4", [
    ("downweight", [0, 1, 2, 3, 4], [0, 1, 0, 3, 4], [1, 1, 1, 1, 0.25], "downweighted"),
    ("drop", [0, 1, 2, 3], [0, 1, 0, 3], [1, 1, 1, 1], "dropped"),
    ("keep", [0, 1, 2, 3, 4], [0, 1, 0, 3, 4], [1, 1, 1, 1, 1], "kept"),
])
def test_reassign_needs_the_margin_else_fallback(fallback, rows, music, weights, row4):
    result = clean(action="reassign", reassign_margin=0.5, fallback=fallback)
    assert result.outcome[2] == "reassigned" and result.outcome[4] == row4
    assert result.pairs.video_rows.tolist() == rows
    assert result.pairs.music_rows.tolist() == music
    assert result.pairs.weights.tolist() == weights


def test_reassign_small_margin_moves_both_to_the_first_row_of_the_top_song():
    result = clean(action="reassign", reassign_margin=0.1)
    assert result.pairs.music_rows.tolist() == [0, 1, 0, 3, 3]
    assert result.counts()["reassigned"] == 2


def test_constructor_rejects_bad_settings(tmp_path):
    for kwargs, match in [({"action": "swap"}, "action"), ({"fallback": "reassign"}, "fallback"),
                          ({"rank_threshold": 0}, "rank_threshold"),
                          ({"epochs_per_round": 0}, "epochs_per_round"),
                          ({"downweight": -1.0}, "downweight"),
                          ({"reassign_margin": float("nan")}, "reassign_margin")]:
        with pytest.raises(ValueError, match=match):
            SelfTraining(out_dir=tmp_path, **kwargs)


# ----- a round on a noisy synthetic HIMV-200K --------------------------------------------------


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    dm, truth = noisy_himv(tmp_path_factory.mktemp("st") / "himv")
    rows = {r["id"]: r for r in truth}
    train = dm.datasets["train"]
    noisy_rows = {i for i, v in enumerate(train.ids) if rows[v]["noisy"] == "True"}
    # The train row whose music file really holds video v's song.
    true_row = {rows[m]["written_music_id"]: k for k, m in enumerate(train.music_ids)}
    return dm, truth, rows, noisy_rows, true_row


def fresh(noisy):
    dm = noisy[0]
    dm.set_train_pairs(None)
    dm.set_extra_pairs(None)
    return noisy


def test_round_flags_exactly_the_noisy_pairs_and_reassigns_them_correctly(noisy, tmp_path):
    dm, truth, rows, noisy_rows, true_row = fresh(noisy)
    train = dm.datasets["train"]
    assert len(train) == 300 and len(noisy_rows) == 90
    cb = SelfTraining(rank_threshold=1, action="reassign", out_dir=tmp_path, batch_size=64,
                      chunk_size=50)
    metrics = cb.run_round(fake_trainer(dm, epoch=4, step=7), TableModel(truth))
    assert set(np.flatnonzero(cb.last_result.flagged)) == noisy_rows
    assert metrics["flagged"] == 90 and metrics["reassigned"] == 90 and metrics["kept"] == 210
    assert metrics["flag_precision"] == 1.0 and metrics["flag_recall"] == 1.0
    assert metrics["reassign_accuracy"] == 1.0 and metrics["round"] == 1
    assert cb.round == 1 and cb.history[0]["epoch"] == 4 and cb.history[0]["global_step"] == 7

    path = tmp_path / "round_1.jsonl"
    assert cb.current_file == str(path.resolve())
    header = read_header(path)
    assert header["round"] == 1 and header["count"] == 300
    assert header["store_fingerprint"] == dm.store_fingerprint
    lines = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    want = {train.ids[i]: train.music_ids[true_row[train.ids[i]]] for i in noisy_rows}
    got = {r["video_id"]: r["music_id"] for r in lines if r["status"] == "reassigned"}
    assert got == want

    # Applied: the datamodule's pairs and the next train loader follow the file.
    pairs = dm.train_pairs
    assert pairs.music_rows.tolist() == [true_row[v] for v in train.ids]
    dm.batch_size = 1000
    assert loader_pairs(dm) == {(v, train.music_ids[true_row[v]]): 1.0 for v in train.ids}


def test_rank_threshold_flags_only_pairs_ranked_beyond_it(noisy, tmp_path):
    dm, truth, rows, noisy_rows, _ = fresh(noisy)
    train = dm.datasets["train"]
    # Music from another style scores 0 and ranks last (300); same style scores .2 (rank < 50).
    other_style = {i for i in noisy_rows if rows[train.ids[i]]["style"]
                   != rows[rows[train.ids[i]]["written_music_id"]]["style"]}
    assert 0 < len(other_style) < len(noisy_rows)
    cb = SelfTraining(rank_threshold=299, action="drop", out_dir=tmp_path)
    metrics = cb.run_round(fake_trainer(dm), TableModel(truth))
    assert set(np.flatnonzero(cb.last_result.ranks == 300)) == other_style
    assert set(np.flatnonzero(cb.last_result.flagged)) == other_style
    assert metrics["flag_precision"] == 1.0
    assert metrics["flag_recall"] == pytest.approx(len(other_style) / 90)
    assert metrics["dropped"] == len(other_style)
    kept = set(dm.train_pairs.video_rows.tolist())
    assert kept == set(range(300)) - other_style
    assert (dm.train_pairs.video_rows == dm.train_pairs.music_rows).all()


def test_downweight_and_margin_fallback(noisy, tmp_path):
    dm, truth, rows, noisy_rows, true_row = fresh(noisy)
    train = dm.datasets["train"]
    same_style = {i for i in noisy_rows if rows[train.ids[i]]["style"]
                  == rows[rows[train.ids[i]]["written_music_id"]]["style"]}
    # The true song beats another style's by 1.0 but the same style's only by 0.8.
    cb = SelfTraining(rank_threshold=1, action="reassign", reassign_margin=0.9,
                      fallback="downweight", downweight=0.3, out_dir=tmp_path)
    metrics = cb.run_round(fake_trainer(dm), TableModel(truth))
    assert metrics["reassigned"] == 90 - len(same_style)
    assert metrics["downweighted"] == len(same_style) > 0
    pairs = read_pseudo_labels(tmp_path / "round_1.jsonl", train, dm.store_fingerprint)
    for v, m, w in zip(pairs.video_rows, pairs.music_rows, pairs.weights):
        if v in same_style:
            assert (m, w) == (v, pytest.approx(0.3))
        elif v in noisy_rows:
            assert (m, w) == (true_row[train.ids[v]], 1.0)
        else:
            assert (m, w) == (v, 1.0)


def test_state_round_trip_resume_and_foreign_store(noisy, tmp_path):
    dm, truth, *_ = fresh(noisy)
    cb = SelfTraining(rank_threshold=1, action="drop", out_dir=tmp_path / "labels")
    cb.run_round(fake_trainer(dm), TableModel(truth))
    state = cb.state_dict()
    assert state["round"] == 1 and state["current_file"] == cb.current_file
    assert state["history"] == cb.history and state["settings"]["action"] == "drop"

    dm.set_train_pairs(None)
    again = SelfTraining(rank_threshold=1, action="drop", out_dir=tmp_path / "labels")
    again.load_state_dict(state)
    assert again.round == 1 and again.history == cb.history
    again.on_fit_start(fake_trainer(dm), None)  # re-applies the file
    assert len(dm.train_pairs) == 210

    other, _ = noisy_himv(tmp_path / "other", seed=12)
    foreign = SelfTraining(rank_threshold=1, action="drop")
    foreign.load_state_dict(state)
    with pytest.raises(DataError, match="made for store"):
        foreign.on_fit_start(fake_trainer(other), None)


def test_reloading_must_be_on(noisy, tmp_path):
    dm = fresh(noisy)[0]
    trainer = fake_trainer(dm)
    trainer.reload_dataloaders_every_n_epochs = 0
    with pytest.raises(RuntimeError, match="reload_dataloaders_every_n_epochs=1"):
        SelfTraining(out_dir=tmp_path).on_fit_start(trainer, None)
    trainer.datamodule = None
    with pytest.raises(RuntimeError, match="datamodule"):
        SelfTraining(out_dir=tmp_path).on_fit_start(trainer, None)


# ----- inside trainer.fit, and resuming from its checkpoint -----------------------------------


def trainer_for(cb, epochs):
    return pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                      reload_dataloaders_every_n_epochs=1, callbacks=[cb])


def test_rounds_inside_fit_change_the_pairs_trained_on_and_resume(noisy, tmp_path):
    dm, truth, rows, noisy_rows, true_row = fresh(noisy)
    dm.batch_size = 1000  # one step per epoch, no ragged batch dropped
    train = dm.datasets["train"]
    identity = {(v, v): 1.0 for v in train.ids}
    cleaned = {(v, train.music_ids[true_row[v]]): 1.0 for v in train.ids}

    model = TableModel(truth)
    cb = SelfTraining(epochs_per_round=1, rounds=2, rank_threshold=1, action="reassign",
                      out_dir=tmp_path / "labels", batch_size=128)
    trainer = trainer_for(cb, 3)
    trainer.fit(model, datamodule=dm)
    assert model.pairs_seen(0) == identity
    assert model.pairs_seen(1) == cleaned and model.pairs_seen(2) == cleaned
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["round_1.jsonl",
                                                                        "round_2.jsonl"]
    assert [h["epoch"] for h in cb.history] == [0, 1] and cb.round == 2
    # Every round scores the ORIGINAL pairs: round 2 flags the same 90 again.
    assert [h["flag_recall"] for h in cb.history] == [1.0, 1.0]
    assert [h["flagged"] for h in cb.history] == [90, 90]
    logged = trainer.callback_metrics
    assert float(logged["self_training/round"]) == 2.0
    assert float(logged["self_training/flag_precision"]) == 1.0
    assert float(logged["self_training/reassign_accuracy"]) == 1.0
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    # Resume in a fresh process state: new datamodule (identity pairs), new callback.
    dm.set_train_pairs(None)
    model2 = TableModel(truth)
    cb2 = SelfTraining(epochs_per_round=1, rounds=2, rank_threshold=1, action="reassign",
                       out_dir=tmp_path / "labels")
    trainer_for(cb2, 4).fit(model2, datamodule=dm, ckpt_path=ckpt)
    assert cb2.round == 2 and len(cb2.history) == 2
    assert [s["epoch"] for s in model2.seen] == [3]
    assert model2.pairs_seen(3) == cleaned


class DumpingTableModel(TableModel):
    """Writes what this rank trained on, and the callbacks' history, to a JSON file."""

    def __init__(self, truth, out):
        super().__init__(truth, style_weight=0.0)
        self.out = str(out)

    def on_train_end(self):
        cbs = {type(c).__name__: c.history for c in self.trainer.callbacks
               if hasattr(c, "history")}
        seen = [[s["epoch"], v, m, w] for s in self.seen
                for v, m, w in zip(s["video_id"], s["music_id"], s["weight"] or [1.0] * 999)]
        path = f"{self.out}/rank{self.global_rank}.json"
        with open(path, "w") as f:
            json.dump({"seen": seen, "history": cbs}, f)


@pytest.mark.slow
def test_two_process_ddp_rounds_agree_across_ranks(noisy, tmp_path):
    from lightning_app.callbacks import BackRetrieval

    dm, truth, rows, noisy_rows, true_row = fresh(noisy)
    dm.batch_size = 1000
    train = dm.datasets["train"]
    noisy_ids = {train.ids[i] for i in noisy_rows}
    st = SelfTraining(rank_threshold=1, action="drop", out_dir=tmp_path / "labels",
                      batch_size=37)
    br = BackRetrieval(start_epoch=1, weight=0.5, batch_size=41)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=3,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, reload_dataloaders_every_n_epochs=1,
                         callbacks=[st, br])
    trainer.fit(DumpingTableModel(truth, tmp_path), datamodule=dm)
    dumps = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert dumps[0]["history"] == dumps[1]["history"]
    history = dumps[0]["history"]
    assert history["SelfTraining"][0]["flag_precision"] == 1.0
    assert history["SelfTraining"][0]["flag_recall"] == 1.0
    assert [h["added"] for h in history["BackRetrieval"]] == [90.0, 90.0]
    per_epoch = {}
    for d in dumps:
        for epoch, v, m, w in d["seen"]:
            per_epoch.setdefault(epoch, []).append((v, m, w))
    assert len(per_epoch[0]) == 300
    assert sorted(per_epoch[1]) == sorted((v, v, 1.0) for v in train.ids if v not in noisy_ids)
    added = [(v, m) for v, m, w in per_epoch[2] if w == 0.5]
    assert len(per_epoch[2]) == 300 and len(added) == 90
    assert {v for v, _ in added} == noisy_ids
    assert all(rows[m]["written_music_id"] == v for v, m in added)
