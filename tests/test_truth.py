"""Measuring against planted truth works for both ways datasets name their music."""

from __future__ import annotations

import numpy as np

from lightning_app.callbacks.self_training import Cleaning, measure
from lightning_app.callbacks.truth import PairTruth

# Pairs a, b, c; b and c are noisy: b was written c's song, c was written b's song.
ROWS = {
    "a": {"style": "0", "true_music_id": "a", "written_music_id": "a", "noisy": "False"},
    "b": {"style": "1", "true_music_id": "b", "written_music_id": "c", "noisy": "True"},
    "c": {"style": "2", "true_music_id": "c", "written_music_id": "b", "noisy": "True"},
}


def _reassign_b_to_row_of(music_row: int) -> Cleaning:
    return Cleaning(ranks=np.array([1, 3, 3]), flagged=np.array([False, True, True]),
                    outcome=np.array(["kept", "reassigned", "downweighted"], dtype=object),
                    music_rows=np.array([0, music_row, 2]), weights=np.ones(3, np.float32))


def test_music_named_after_the_pair_himv_convention():
    ids, music_ids = ["a", "b", "c"], ["a", "b", "c"]  # row b's file holds song c
    truth = PairTruth(ROWS, ids, music_ids)
    assert truth.song("b") == "c" and truth.song("c") == "b"
    # Video b's true song (b) is held by row c's music file.
    got = measure(_reassign_b_to_row_of(2), ids, music_ids, truth)
    assert got["reassign_accuracy"] == 1.0
    assert (got["flag_precision"], got["flag_recall"]) == (1.0, 1.0)


def test_music_named_after_the_song_mvd_convention():
    ids, music_ids = ["a", "b", "c"], ["a", "c", "b"]  # row b names song c directly
    truth = PairTruth(ROWS, ids, music_ids)
    assert truth.song("c") == "c" and truth.song("b") == "b"
    assert measure(_reassign_b_to_row_of(2), ids, music_ids, truth)["reassign_accuracy"] == 1.0
    assert measure(_reassign_b_to_row_of(0), ids, music_ids, truth)["reassign_accuracy"] == 0.0
