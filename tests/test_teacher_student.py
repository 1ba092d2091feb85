"""Teacher/student self-training: the cycle rule, the EMA teacher, re-initialised students."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pair_tables import TableModel, fake_trainer, noisy_himv

from lightning_app.callbacks import SelfTraining
from lightning_app.callbacks.pair_cleaning import clean_pairs, cycle_closes
from lightning_app.callbacks.teacher import EMATeacher, swapped_in

# ----- pseudo-labels by cycle consistency, on hand-made embeddings -----------------------------

S = torch.nn.functional.normalize
# Songs (one per row): s0 = x, s1 = y, s2 = z, s3 = (x + y) / sqrt 2.
MUSIC = S(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]]), dim=1)
# v0 = x (clean); v1 = z, paired with s1 (noisy: its top song s2 has v1 as top video, the
# cycle closes); v2 ~ z (clean, ranks s2 first); v3 ~ x + .2 y, paired with s3 (noisy: s3
# scores .83, its top song s0 .98, but s0's top video is v0: the cycle does not close).
VIDEO = S(torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0.1, 0, 0.9], [1.0, 0.2, 0]]), dim=1)
KEYS = torch.arange(4)


def decide(**kwargs):
    args = {"rank_threshold": 1, "action": "reassign", "downweight": 0.25,
            "reassign_margin": 0.5, "fallback": "downweight", "chunk_size": 3}
    return clean_pairs(VIDEO, MUSIC, KEYS, **{**args, **kwargs})


def test_cycle_closes_on_hand_made_embeddings():
    top = torch.tensor([0, 2, 2, 0])
    assert cycle_closes(VIDEO, MUSIC, top).tolist() == [True, True, False, False]
    # the same video twice (rows 0 and 2 share a key): one item, represented by row 0
    dup = torch.tensor([0, 1, 0, 3])
    assert cycle_closes(VIDEO, MUSIC, torch.tensor([2, 2, 2, 2]), dup).tolist() == [
        False, True, False, False]


def test_cycle_rule_reassigns_only_closed_cycles():
    cycle = decide(rule="cycle")
    assert np.flatnonzero(cycle.flagged).tolist() == [1, 3]
    assert cycle.outcome.tolist() == ["kept", "reassigned", "kept", "downweighted"]
    assert cycle.pairs.music_rows.tolist() == [0, 2, 2, 3]
    assert cycle.pairs.weights.tolist() == [1.0, 1.0, 1.0, 0.25]
    margin = decide(rule="margin", reassign_margin=0.1)  # both beat the paired song by > .1
    assert margin.outcome.tolist() == ["kept", "reassigned", "kept", "reassigned"]
    assert margin.pairs.music_rows.tolist() == [0, 2, 2, 0]
    with pytest.raises(ValueError, match="rule"):
        decide(rule="vote")


# ----- the EMA teacher ------------------------------------------------------------------------


def test_ema_teacher_update_equals_a_hand_computation():
    lin = torch.nn.Linear(2, 1)
    lin.register_buffer("steps", torch.tensor(0))
    teacher = EMATeacher(0.75)
    values = [torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, -1.0]]), torch.tensor([[0.0, 4.0]])]
    for k, w in enumerate(values):
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.steps.fill_(k + 1)
        teacher.update(lin)
    want = 0.75 * (0.75 * values[0] + 0.25 * values[1]) + 0.25 * values[2]
    torch.testing.assert_close(teacher.state["weight"], want)
    assert int(teacher.state["steps"]) == 3 and teacher.updates == 3
    # the module keeps its own weights; swapped_in lends the teacher's for a block
    with swapped_in(lin, teacher.state):
        torch.testing.assert_close(lin.weight.detach(), want)
    torch.testing.assert_close(lin.weight.detach(), values[2])
    again = EMATeacher(0.75)
    again.load_state_dict(teacher.state_dict())
    torch.testing.assert_close(again.state["weight"], want)
    assert again.updates == 3
    with pytest.raises(ValueError, match="ema_decay"):
        EMATeacher(1.0)


# ----- inside a round and inside fit ----------------------------------------------------------


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    dm, truth = noisy_himv(tmp_path_factory.mktemp("ts") / "himv")
    return dm, truth


def fresh(noisy):
    dm, truth = noisy
    dm.set_train_pairs(None)
    dm.set_extra_pairs(None)
    return dm, truth


def test_ema_teacher_scores_the_round(noisy, tmp_path):
    """The teacher's tables (a clean copy) decide, not the student's (scrambled) ones."""
    dm, truth = fresh(noisy)
    student = TableModel(truth)
    cb = SelfTraining(rank_threshold=1, action="drop", out_dir=tmp_path, student="ema",
                      ema_decay=0.5)
    cb.teacher.update(student)  # the teacher copies the clean tables
    with torch.no_grad():
        student.table.copy_(student.table[torch.randperm(len(student.table))])
    scrambled = student.table.clone()
    metrics = cb.run_round(fake_trainer(dm), student)
    assert metrics["flag_precision"] == 1.0 and metrics["flag_recall"] == 1.0
    assert torch.equal(student.table, scrambled)  # the student's weights are back


def trainer_for(cb, epochs):
    return pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                      reload_dataloaders_every_n_epochs=1, callbacks=[cb])


class MomentumTable(TableModel):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


def test_reinit_restarts_the_student_and_its_optimizer(noisy, tmp_path):
    dm, truth = fresh(noisy)
    dm.batch_size = 1000  # one step an epoch
    weights = {}

    def run(student, epochs):
        model = MomentumTable(truth)
        name = f"{student}{epochs}"
        cb = SelfTraining(epochs_per_round=1, rounds=1, rank_threshold=1, action="drop",
                          out_dir=tmp_path / name, student=student)
        trainer_for(cb, epochs).fit(model, datamodule=fresh(noisy)[0])
        weights[name] = float(model.w.detach())
        return cb

    run("continue", 2)
    cb = run("reinit", 2)
    one = run("continue", 1)
    # one SGD step from w = 0 on (w - 1)^2 with lr .01: w = .02; a restarted student with a
    # cleared momentum buffer repeats exactly that step; continuing takes a momentum step
    assert weights["continue1"] == pytest.approx(0.02)
    assert weights["continue2"] == pytest.approx(0.02 + 0.01 * (0.9 * 2 + 2 * (1 - 0.02)))
    assert weights["reinit2"] == pytest.approx(0.02)
    assert one.history[0]["flagged"] == cb.history[0]["flagged"] == 90
    state = cb.state_dict()
    assert state["settings"]["student"] == "reinit"
    assert float(state["initial"]["w"]) == 0.0
    restored = SelfTraining(student="reinit", out_dir=tmp_path)
    restored.load_state_dict(state)
    assert float(restored.initial["w"]) == 0.0


def test_constructor_rejects_unknown_student_and_rule(tmp_path):
    with pytest.raises(ValueError, match="student"):
        SelfTraining(out_dir=tmp_path, student="twin")
    with pytest.raises(ValueError, match="rule"):
        SelfTraining(out_dir=tmp_path, rule="vote")
