"""`vmr build-dataset` / `vmr extract`: raw videos -> a layout the DataModules read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from media import make_corrupt, make_video

from datamodules.errors import DataError
from datamodules.extract.build_dataset import build_dataset, split_ids
from datamodules.extract.folders import PCAPlan
from datamodules.extract.specs import AudioSpec, VideoSpec, read_record
from datamodules.feature_store import sha256_file
from datamodules.himv200k import pack_himv200k
from datamodules.mvd import pack_mvd, read_splits
from lightning_app.cli import main

COLORS = ("red", "green", "blue", "yellow", "cyan", "magenta", "white", "orange")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """8 good videos (colour + tone), one without audio, one corrupt file."""
    d = tmp_path_factory.mktemp("videos")
    for i, c in enumerate(COLORS):
        make_video(d / f"clip_{c}.mp4", seconds=3.0, color=c, tone_hz=250 + 110 * i)
    make_video(d / "silent.mp4", seconds=2.0, audio=False)
    make_corrupt(d / "broken.mp4")
    return d


def _spec(weights, **kw):
    return VideoSpec(backbone="resnet50", weights=str(weights), image_size=64, **kw)


def test_split_ids_is_deterministic_disjoint_and_order_free():
    ids = [f"id{i}" for i in range(50)]
    a = split_ids(ids, 0.1, 0.2, where="x")
    b = split_ids(list(reversed(ids)), 0.1, 0.2, where="x")
    assert a == b
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (35, 5, 10)
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(ids)
    with pytest.raises(DataError, match="x: 2 usable videos cannot make 1 test, 1 validation"):
        split_ids(ids[:2], 0.1, 0.1, where="x")
    with pytest.raises(DataError, match="val_fraction=0.5, test_fraction=0.5"):
        split_ids(ids, 0.5, 0.5, where="x")


@pytest.fixture(scope="module")
def mvd_dataset(videos, resnet50_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "mvd"
    report = build_dataset(videos, out, "mvd", _spec(resnet50_weights), AudioSpec("logmel"),
                           PCAPlan(dim=8), val_fraction=0.15, test_fraction=0.15,
                           progress=False)
    return out, report


def test_mvd_layout_is_complete_and_packs(mvd_dataset, resnet50_weights):
    out, report = mvd_dataset
    good = sorted(f"clip_{c}" for c in COLORS)
    splits = read_splits(out)
    listed = sorted(r.video_id for rows in splits.values() for r in rows)
    assert listed == good  # the silent and the broken file are left out
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "val": 1, "test": 1}
    assert all(r.video_id == r.music_id for rows in splits.values() for r in rows)
    for vid in good:
        v = np.load(out / "features" / "video" / f"{vid}.npy")
        m = np.load(out / "features" / "music" / f"{vid}.npy")
        assert v.shape == (3, 8) and v.dtype == np.float32 and np.isfinite(v).all()
        assert m.shape == (3, 128) and m.dtype == np.float32
    assert not (out / "features" / "video" / ".raw").exists()  # raw CNN features cleaned up
    store = pack_mvd(out, progress=False)
    assert json.loads((store / "meta.json").read_text())["modalities"]["video"]["dim"] == 8

    rec = read_record(out / "extractor.json")
    assert rec["layout"] == "mvd" and rec["music"]["features"] == "logmel"
    assert rec["video"]["weights_sha256"] == sha256_file(resnet50_weights)
    assert rec["video"]["pca_sha256"] == sha256_file(rec["video"]["pca"])

    failed = json.loads((out / "build-report.json").read_text())
    music_failures = {f["file"].rsplit("/", 1)[1]: f["reason"] for f in failed["music"]["failed"]}
    video_failures = {f["file"].rsplit("/", 1)[1]: f["reason"] for f in failed["video"]["failed"]}
    assert "no audio stream" in music_failures["silent.mp4"]
    assert "cannot decode" in music_failures["broken.mp4"]
    assert set(video_failures) == {"broken.mp4"}
    assert "8 pairs (train 6, val 1, test 1)" in report.text()


def test_whitened_features_come_from_the_saved_pca(mvd_dataset, resnet50_weights, videos):
    """The stored features are exactly PCA(CNN(frames)) with the saved PCA: recomputed here."""
    from datamodules.extract.decode import decode_video_frames
    from datamodules.extract.pca import PCAWhitening
    from datamodules.extract.video_backbone import load_frame_encoder

    out, _ = mvd_dataset
    rec = read_record(out / "extractor.json")
    pca = PCAWhitening.load(rec["video"]["pca"])
    enc = load_frame_encoder("resnet50", resnet50_weights, device="cpu", image_size=64)
    frames = decode_video_frames(videos / "clip_red.mp4", size=(64, 64))
    expected = pca.transform(enc.encode(frames).numpy())
    np.testing.assert_allclose(np.load(out / "features" / "video" / "clip_red.npy"), expected,
                               rtol=1e-4, atol=1e-4)


def test_rerunning_a_build_resumes_without_recomputing(mvd_dataset, videos, resnet50_weights):
    out, _ = mvd_dataset
    files = sorted((out / "features").rglob("*.npy"))
    before = {f: f.stat().st_mtime_ns for f in files}
    report = build_dataset(videos, out, "mvd", _spec(resnet50_weights), AudioSpec("logmel"),
                           PCAPlan(dim=8), val_fraction=0.15, test_fraction=0.15,
                           progress=False)
    assert report.video.done == [] and len(report.video.skipped) == 9  # 8 clips + silent
    assert report.music.done == [] and len(report.music.skipped) == 8
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert report.pairs == {"train": 6, "val": 1, "test": 1}


def test_himv200k_layout_with_a_given_pca_and_vmnet_music(videos, resnet50_weights, pca_1024,
                                                         tmp_path):
    out = tmp_path / "himv"
    few = tmp_path / "few"
    few.mkdir()
    for c in COLORS[:3]:
        (few / f"clip_{c}.mp4").symlink_to(videos / f"clip_{c}.mp4")
    build_dataset(few, out, "himv200k", _spec(resnet50_weights, pca=str(pca_1024)),
                  AudioSpec("vmnet"), val_fraction=0.3, test_fraction=0.3, progress=False)
    ids = (out / "Youtube_ID.txt").read_text().split()
    assert ids == sorted(f"clip_{c}" for c in COLORS[:3])
    assert np.load(out / "features" / "music" / f"{ids[0]}.npy").shape == (1140,)
    assert np.load(out / "features" / "video" / f"{ids[0]}.npy").shape == (3, 1024)
    assert sorted(p.name for p in (out / "splits").iterdir()) == ["test.txt", "train.txt",
                                                                  "val.txt"]
    store = pack_himv200k(out)
    assert (store / "meta.json").exists()


def test_himv200k_layout_refuses_features_it_cannot_read(videos, resnet50_weights, tmp_path):
    with pytest.raises(DataError, match="layout himv200k stores VM-NET music statistics"):
        build_dataset(videos, tmp_path / "h", "himv200k", _spec(resnet50_weights),
                      AudioSpec("logmel"), PCAPlan(dim=1024), progress=False)
    with pytest.raises(DataError, match="PCA dimension 8 does not fit"):
        build_dataset(videos, tmp_path / "h", "himv200k", _spec(resnet50_weights),
                      AudioSpec("vmnet"), PCAPlan(dim=8), progress=False)
    assert not (tmp_path / "h").exists()


def test_pca_needs_enough_frames_and_says_so(videos, resnet50_weights, tmp_path, capsys):
    rc = main(["extract", "video", "--input", str(videos / "clip_red.mp4"), "--out",
               str(tmp_path / "v"), "--backbone", "resnet50", "--weights", str(resnet50_weights),
               "--image-size", "64", "--pca-dim", "16", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "16" in err and "3" in err, err
    assert not list((tmp_path / "v").glob("*.npy"))


def test_extract_video_cli_quantised_codes_and_resume(videos, resnet50_weights, tmp_path,
                                                       capsys):
    from datamodules.tfrecord import dequantize

    args = ["extract", "video", "--input", str(videos), "--out", str(tmp_path / "v"),
            "--backbone", "resnet50", "--weights", str(resnet50_weights), "--image-size", "64",
            "--pca-dim", "4", "--quantize", "--workers", "2", "--keep-raw"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "9 done, 0 skipped (output exists), 1 failed" in out and "broken.mp4" in out
    codes = np.load(tmp_path / "v" / "clip_red.npy")
    assert codes.dtype == np.uint8 and codes.shape == (3, 4)
    from datamodules.extract.pca import PCAWhitening

    raw = np.load(tmp_path / "v" / ".raw" / "clip_red.npy")
    whitened = PCAWhitening.load(tmp_path / "v" / "pca.npz").transform(raw)
    assert np.abs(dequantize(codes) - np.clip(whitened, -2, 2)).max() <= 4 / 255 / 2 + 1e-6
    report = json.loads((tmp_path / "v" / "extract-video-report.json").read_text())
    assert len(report["done"]) == 9 and report["failed"][0]["file"].endswith("broken.mp4")
    assert main(args) == 0
    assert "0 done, 9 skipped" in capsys.readouterr().out


@pytest.mark.parametrize("problem, message", [
    ("missing", "weights file not found"),
    ("text", "resnet50_bad.pth"),
])
def test_bad_weights_exit_2_with_one_line_and_write_nothing(videos, tmp_path, capsys, problem,
                                                            message):
    weights = tmp_path / "resnet50_bad.pth"
    if problem == "text":
        weights.write_text("not a checkpoint")
    rc = main(["build-dataset", "--videos", str(videos), "--out", str(tmp_path / "ds"),
               "--layout", "mvd", "--backbone", "resnet50", "--weights", str(weights),
               "--pca-dim", "4", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "ds").exists()


def test_extract_audio_cli_vmnet_writes_1140_vectors(videos, tmp_path, capsys):
    rc = main(["extract", "audio", "--input", str(videos / "clip_red.mp4"), "--out",
               str(tmp_path / "a"), "--features", "vmnet", "--workers", "0"])
    assert rc == 0
    x = np.load(tmp_path / "a" / "clip_red.npy")
    assert x.shape == (1140,) and x.dtype == np.float32 and np.isfinite(x).all()
    assert "1 done" in capsys.readouterr().out


def test_extract_audio_cli_with_only_bad_files_exits_2(videos, tmp_path, capsys):
    rc = main(["extract", "audio", "--input", str(videos / "silent.mp4"), "--out",
               str(tmp_path / "a"), "--features", "logmel", "--workers", "0"])
    captured = capsys.readouterr()
    assert rc == 2
    assert "no file could be extracted" in captured.err and "no audio stream" in captured.out
