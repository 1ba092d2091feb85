"""The planted synthetic benchmark and its HIMV-200K writer."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat

import numpy as np
import pytest

import datamodules.synthetic.himv200k as synth_himv
from datamodules.errors import DataError
from datamodules.himv200k import pack_himv200k
from datamodules.safe_pickle import load_array_pickle
from datamodules.synthetic.himv200k import write_himv200k
from datamodules.synthetic.planted import PlantedBenchmark, PlantedSpec
from datamodules.synthetic.truth import TRUTH_FILE, read_truth

SMALL = PlantedSpec(pairs=300, val=50, test=50, seed=0)
# Small dimensions keep the pure-generator tests fast; the writer forces 1140/1024.
TINY = dataclasses.replace(SMALL, music_dim=24, video_dim=20, hidden_dim=16)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- spec validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pairs": 100, "val": 50, "test": 50},
         "pairs=100 leaves no training pairs after val=50 and test=50"),
        ({"val": 0}, "val=0 and test=50 must both be >= 1"),
        ({"test": -3}, "val=50 and test=-3 must both be >= 1"),
        ({"noise": 1.0}, "noise=1.0 must be in [0, 1)"),
        ({"noise": -0.1}, "noise=-0.1 must be in [0, 1)"),
        ({"span": 0.0}, "span=0.0 must be in (0, 1]"),
        ({"span": 1.5}, "span=1.5 must be in (0, 1]"),
        ({"styles": 0}, "styles and frame counts must be >= 1"),
        ({"video_frames": 0}, "styles and frame counts must be >= 1"),
        ({"feature_noise": -1.0}, "tau=0.6 and feature_noise=-1.0 must be >= 0"),
        ({"tau": -0.5}, "tau=-0.5 and feature_noise=0.5 must be >= 0"),
        ({"music_dim": 0}, "content_dim, hidden_dim, music_dim and video_dim must be >= 1"),
        ({"text": True, "text_length": 0},
         "text_vocab, text_style_tokens and text_length must be >= 1"),
    ],
)
def test_spec_validation(kwargs, message):
    base = {"pairs": 300, "val": 50, "test": 50}
    with pytest.raises(ValueError) as e:
        PlantedSpec(**{**base, **kwargs})
    assert str(e.value) == message


def test_smallest_valid_spec():
    bench = PlantedBenchmark(PlantedSpec(pairs=3, val=1, test=1, music_dim=4, video_dim=4))
    assert list(bench.split) == ["train", "val", "test"]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_data():
    a, b = PlantedBenchmark(TINY), PlantedBenchmark(TINY)
    idx = np.arange(0, 300, 7)
    assert a.ids == b.ids
    assert len(set(a.ids)) == 300 and all(re.fullmatch(r"[A-Za-z0-9_-]{11}", i) for i in a.ids)
    np.testing.assert_array_equal(a.content, b.content)
    np.testing.assert_array_equal(a.span_start, b.span_start)
    np.testing.assert_array_equal(a.music_source, b.music_source)
    np.testing.assert_array_equal(a.video_frames(idx), b.video_frames(idx))
    np.testing.assert_array_equal(a.music_vectors(idx), b.music_vectors(idx))
    assert a.truth_rows() == b.truth_rows()


def test_different_seed_gives_different_data():
    a = PlantedBenchmark(TINY)
    b = PlantedBenchmark(dataclasses.replace(TINY, seed=1))
    idx = np.arange(10)
    assert set(a.ids).isdisjoint(b.ids)
    assert not np.allclose(a.video_vectors(idx), b.video_vectors(idx))
    assert not np.allclose(a.music_map.W, b.music_map.W)
    assert not np.array_equal(a.style, b.style)


def test_components_are_independent_streams():
    a = PlantedBenchmark(TINY)
    more = PlantedBenchmark(dataclasses.replace(TINY, pairs=400))
    # Changing the number of pairs keeps the feature maps and the style centres.
    np.testing.assert_array_equal(a.music_map.W, more.music_map.W)
    np.testing.assert_array_equal(a.music_map.A, more.music_map.A)
    np.testing.assert_array_equal(a.video_map.W, more.video_map.W)
    np.testing.assert_array_equal(a.style_centres, more.style_centres)
    # Turning on text or label noise changes nothing else.
    idx = np.arange(20)
    other = PlantedBenchmark(dataclasses.replace(TINY, text=True, noise=0.0))
    np.testing.assert_array_equal(a.content, other.content)
    np.testing.assert_array_equal(a.video_vectors(idx), other.video_vectors(idx))
    noisy = PlantedBenchmark(dataclasses.replace(TINY, noise=0.3))
    assert a.ids == noisy.ids
    np.testing.assert_array_equal(a.span_length, noisy.span_length)
    np.testing.assert_array_equal(a.video_vectors(idx), noisy.video_vectors(idx))


def test_features_do_not_depend_on_chunking():
    bench = PlantedBenchmark(TINY)
    idx = np.array([5, 17, 250])
    together = bench.video_vectors(idx)
    for row, i in enumerate(idx):
        np.testing.assert_array_equal(together[row], bench.video_vectors(np.array([i]))[0])
    np.testing.assert_array_equal(bench.music_frames(idx)[1], bench.music_frames(np.array([17]))[0])


# ----------------------------------------------------------------------------- label noise


def test_label_noise_is_an_exact_fraction_of_train_and_a_derangement():
    spec = dataclasses.replace(TINY, noise=0.2)
    bench = PlantedBenchmark(spec)
    train = np.flatnonzero(bench.split == "train")
    assert len(train) == 200
    noisy = np.flatnonzero(bench.noisy)
    assert len(noisy) == round(0.2 * 200) == 40
    assert set(noisy) <= set(train)
    assert not bench.noisy[bench.split != "train"].any()
    src = bench.music_source[noisy]
    assert sorted(src) == sorted(noisy)  # a permutation of the noisy set ...
    assert (src != noisy).all()  # ... with no fixed point
    clean = np.flatnonzero(~bench.noisy)
    np.testing.assert_array_equal(bench.music_source[clean], clean)


def test_one_noisy_pair_still_gets_foreign_music():
    # round(0.005 * 200) = 1: a single pair cannot be deranged among itself.
    bench = PlantedBenchmark(dataclasses.replace(TINY, noise=0.005))
    noisy = np.flatnonzero(bench.noisy)
    assert len(noisy) == 1
    i = noisy[0]
    assert bench.split[i] == "train" and bench.split[bench.music_source[i]] == "train"
    assert bench.music_source[i] != i


def test_no_noise_means_identity_pairing():
    bench = PlantedBenchmark(TINY)
    np.testing.assert_array_equal(bench.music_source, np.arange(300))
    assert not any(r["noisy"] for r in bench.truth_rows())


def test_written_music_follows_the_noise_and_truth_records_it():
    bench = PlantedBenchmark(dataclasses.replace(TINY, noise=0.2, feature_noise=0.0))
    i = int(np.flatnonzero(bench.noisy)[0])
    j = int(bench.music_source[i])
    mm = bench.music_map
    expected = mm.output(mm.hidden(bench.content[[j]]))
    np.testing.assert_allclose(bench.music_vectors(np.array([i])), expected, rtol=1e-5, atol=1e-5)
    row = bench.truth_rows()[i]
    assert row["noisy"] is True
    assert row["true_music_id"] == bench.ids[i]
    assert row["written_music_id"] == bench.ids[j]


# ----------------------------------------------------------------------------- vectors vs frames


def test_vectors_are_exactly_the_frame_mean_without_noise():
    bench = PlantedBenchmark(dataclasses.replace(TINY, feature_noise=0.0))
    idx = np.arange(0, 300, 3)
    np.testing.assert_allclose(
        bench.video_vectors(idx), bench.video_frames(idx).mean(axis=1), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        bench.music_vectors(idx), bench.music_frames(idx).mean(axis=1), rtol=1e-5, atol=1e-5
    )


def test_vector_noise_has_the_spread_of_a_frame_mean():
    spec = dataclasses.replace(TINY, music_dim=200, video_dim=200, feature_noise=0.5)
    bench = PlantedBenchmark(spec)
    clean = PlantedBenchmark(dataclasses.replace(spec, feature_noise=0.0))
    idx = np.arange(100)
    scale = bench.video_map.scale
    frame_resid = (bench.video_frames(idx) - clean.video_frames(idx)) / scale
    vector_resid = (bench.video_vectors(idx) - clean.video_vectors(idx)) / scale
    assert frame_resid.std() == pytest.approx(0.5, rel=0.03)
    assert vector_resid.std() == pytest.approx(0.5 / np.sqrt(12), rel=0.03)
    assert frame_resid.mean(axis=1).std() == pytest.approx(0.5 / np.sqrt(12), rel=0.03)


# ----------------------------------------------------------------------------- spans


def test_spans_lie_inside_the_video():
    for frames in (1, 5, 12):
        bench = PlantedBenchmark(dataclasses.replace(TINY, video_frames=frames, span=0.3))
        start, length = bench.span_start, bench.span_length
        assert (length >= 1).all() and (start >= 0).all()
        assert (start + length <= frames).all()
    bench = PlantedBenchmark(dataclasses.replace(TINY, span=1.0))
    assert (bench.span_length[bench.span_length == 12] == 12).any()


def test_salient_content_only_inside_the_span():
    bench = PlantedBenchmark(dataclasses.replace(TINY, feature_noise=0.0))
    vm = bench.video_map
    frames = bench.video_frames(np.arange(30))
    for i in range(30):
        a, n = int(bench.span_start[i]), int(bench.span_length[i])
        salient = vm.output(vm.hidden(bench.content[i]))
        distract = vm.output(vm.hidden(bench.distractor[i]))
        inside = np.zeros(12, dtype=bool)
        inside[a : a + n] = True
        np.testing.assert_allclose(frames[i][inside], np.broadcast_to(salient, (n, 20)), atol=1e-4)
        np.testing.assert_allclose(frames[i][~inside],
                                   np.broadcast_to(distract, (12 - n, 20)), atol=1e-4)


# ----------------------------------------------------------------------------- text


def test_no_text_unless_asked():
    bench = PlantedBenchmark(TINY)
    assert bench.text is None and bench.style_vocab is None


def test_text_tokens_come_from_the_style_vocabulary():
    spec = dataclasses.replace(TINY, text=True, text_vocab=100, text_style_tokens=6, text_length=8)
    bench = PlantedBenchmark(spec)
    assert len(bench.text) == 300
    assert bench.style_vocab.shape == (spec.styles, 6)
    for i, text in enumerate(bench.text):
        tokens = text.split()
        assert len(tokens) == 8
        assert all(re.fullmatch(r"w\d+", t) for t in tokens)
        ids = [int(t[1:]) for t in tokens]
        assert all(0 <= t < 100 for t in ids)
        vocab = set(bench.style_vocab[bench.style[i]].tolist())
        assert sum(t in vocab for t in ids) >= 4  # (text_length + 1) // 2 style tokens
    assert PlantedBenchmark(spec).text == bench.text


# ----------------------------------------------------------------------------- HIMV-200K writer


def test_write_himv200k_layout(tmp_path):
    out = write_himv200k(SMALL, tmp_path / "h", progress=False)
    bench = PlantedBenchmark(SMALL)
    assert sorted(p.name for p in out.iterdir()) == [
        "Youtube_ID.txt", "features", "splits", "synth.json", TRUTH_FILE,
    ]
    assert (out / "Youtube_ID.txt").read_text().splitlines() == bench.ids
    splits = {s: (out / "splits" / f"{s}.txt").read_text().splitlines()
              for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 200, "val": 50, "test": 50}
    assert splits["train"] + splits["val"] + splits["test"] == bench.ids
    music = sorted(p.name for p in (out / "features" / "music").iterdir())
    video = sorted(p.name for p in (out / "features" / "video").iterdir())
    assert music == video == sorted(f"{i}.npy" for i in bench.ids)
    for i in (0, 123, 299):
        vid = bench.ids[i]
        v = np.load(out / "features" / "video" / f"{vid}.npy")
        m = np.load(out / "features" / "music" / f"{vid}.npy")
        assert v.shape == (1024,) and v.dtype == np.float32
        assert m.shape == (1140,) and m.dtype == np.float32
        np.testing.assert_array_equal(v, bench.video_vectors(np.array([i]))[0])
        np.testing.assert_array_equal(m, bench.music_vectors(np.array([i]))[0])
    settings = json.loads((out / "synth.json").read_text())
    assert settings == {"dataset": "himv200k", "missing": 0.0, "shared_songs": 0.0,
                        **dataclasses.asdict(SMALL)}


def test_write_himv200k_forces_the_real_dimensions(tmp_path):
    out = write_himv200k(TINY, tmp_path / "h", progress=False)
    vid = (out / "Youtube_ID.txt").read_text().split()[0]
    assert np.load(out / "features" / "music" / f"{vid}.npy").shape == (1140,)
    assert json.loads((out / "synth.json").read_text())["video_dim"] == 1024


def test_missing_fraction_deletes_both_feature_files(tmp_path):
    out = write_himv200k(SMALL, tmp_path / "h", missing=0.1, progress=False)
    ids = (out / "Youtube_ID.txt").read_text().split()
    assert len(ids) == 300  # the id list keeps deleted videos, as the real one does
    music = {p.stem for p in (out / "features" / "music").iterdir()}
    video = {p.stem for p in (out / "features" / "video").iterdir()}
    assert music == video
    gone = 300 - len(video)
    assert 15 <= gone <= 45  # about 10 %
    again = write_himv200k(SMALL, tmp_path / "h2", missing=0.1, progress=False)
    assert {p.stem for p in (again / "features" / "video").iterdir()} == video
    assert json.loads((out / "synth.json").read_text())["missing"] == 0.1


def test_truth_file_is_complete_and_never_read_by_the_loader(tmp_path):
    spec = dataclasses.replace(SMALL, noise=0.1)
    out = write_himv200k(spec, tmp_path / "h", progress=False)
    rows = read_truth(out)
    expected = PlantedBenchmark(spec).truth_rows()
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    assert sum(r["noisy"] == "True" for r in rows) == 20
    assert rows[0] == {k: str(v) for k, v in expected[0].items()}
    # A loader that opened truth.tsv would now fail.
    (out / TRUTH_FILE).unlink()
    (out / TRUTH_FILE).mkdir()
    store = pack_himv200k(out)
    first = json.loads((store / "train" / "index.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "music_id", "video_offset", "video_length", "music_offset",
                          "music_length"}


def test_pickle_music_format(tmp_path):
    out = write_himv200k(SMALL, tmp_path / "h", music_format="pkl", progress=False)
    bench = PlantedBenchmark(SMALL)
    names = {p.suffix for p in (out / "features" / "music").iterdir()}
    assert names == {".pkl"}
    vid = bench.ids[7]
    arr = load_array_pickle(out / "features" / "music" / f"{vid}.pkl")
    assert arr.shape == (1140,) and arr.dtype == np.float64
    np.testing.assert_array_equal(arr, bench.music_vectors(np.array([7]))[0].astype(np.float64))


def test_bad_writer_arguments(tmp_path):
    message = "music_format must be 'npy' or 'pkl', got 'h5'"
    with pytest.raises(ValueError, match=re.escape(message)):
        write_himv200k(SMALL, tmp_path / "h", music_format="h5", progress=False)
    with pytest.raises(ValueError, match=re.escape("missing=1.0 must be in [0, 1)")):
        write_himv200k(SMALL, tmp_path / "h", missing=1.0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_written_folder_is_atomic_with_no_leftovers(tmp_path):
    out = write_himv200k(SMALL, tmp_path / "h", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["h"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()


def test_a_failed_write_leaves_the_previous_folder_untouched(tmp_path, monkeypatch):
    out = write_himv200k(SMALL, tmp_path / "h", progress=False)
    before = (out / "synth.json").read_text()

    def boom(bench):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth_himv, "truth_tsv", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_himv200k(dataclasses.replace(SMALL, seed=5), out, progress=False)
    assert (out / "synth.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["h"]
    with pytest.raises(RuntimeError, match="disk full"):
        write_himv200k(SMALL, tmp_path / "fresh", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["h"]


def test_rewriting_replaces_an_earlier_synthetic_folder(tmp_path):
    out = write_himv200k(SMALL, tmp_path / "h", progress=False)
    write_himv200k(dataclasses.replace(SMALL, seed=1), out, progress=False)
    ids = (out / "Youtube_ID.txt").read_text().split()
    assert ids == PlantedBenchmark(dataclasses.replace(SMALL, seed=1)).ids
    assert len(list((out / "features" / "video").iterdir())) == 300
    assert [p.name for p in tmp_path.iterdir()] == ["h"]


def test_never_replaces_a_folder_of_other_data(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "Youtube_ID.txt").write_text("dQw4w9WgXcQ\n")
    with pytest.raises(DataError) as e:
        write_himv200k(SMALL, real, progress=False)
    assert str(e.value) == (
        f"{real}: exists and is not a synthetic dataset (no synth.json); "
        "refusing to replace it, choose another --out"
    )
    assert [p.name for p in real.iterdir()] == ["Youtube_ID.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (write_himv200k(SMALL, empty, progress=False) / "synth.json").exists()
