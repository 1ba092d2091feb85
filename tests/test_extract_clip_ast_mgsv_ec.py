"""`vmr build-dataset --layout mgsv_ec`: raw videos -> the MGSV-EC release layout (CLIP frames,
AST windows, padded .pt tensors with masks, 16-column CSVs) that `vmr prepare` reads, and an
extractor.json from which retrieval rebuilds the same CLIP and AST extractors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from media import make_video
from tiny_models import save_tiny_ast, save_tiny_clip

from datamodules.extract.specs import read_record, specs_from_record
from datamodules.mgsv_ec_csv import read_splits
from datamodules.mgsv_ec_layout import FEATURE_PARENT, feature_path
from lightning_app.cli import main

# End to end (ffmpeg, two models, vmr prepare): about 8 s on a loaded 2-core machine.
pytestmark = pytest.mark.slow

SECONDS = {"red": 3.0, "green": 2.2, "blue": 5.5, "white": 3.6, "cyan": 2.0}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("mgsv_build")
    videos = root / "videos"
    videos.mkdir()
    for i, (color, seconds) in enumerate(SECONDS.items()):
        make_video(videos / f"v_{color}.mp4", seconds=seconds, color=color, tone_hz=300 + 80 * i)
    make_video(videos / "mute.mp4", seconds=2.0, audio=False)
    clip = save_tiny_clip(root / "clip", dim=512)
    ast = save_tiny_ast(root / "ast", dim=768)
    out = root / "mgsv"
    rc = main(["build-dataset", "--videos", str(videos), "--out", str(out), "--layout",
               "mgsv_ec", "--backbone", "clip_vit_b32", "--weights", str(clip),
               "--audio-weights", str(ast), "--val-fraction", "0.2", "--test-fraction", "0.2",
               "--workers", "0", "--device", "cpu"])
    return rc, videos, out


def test_release_layout_with_masks_and_csvs(built):
    rc, _, out = built
    assert rc == 0
    _, splits = read_splits(out)  # the MGSV-EC reader's own CSV parser
    rows = [r for s in ("train", "val", "test") for r in splits[s]]
    assert len(rows) == 5 and all(len(s) >= 1 for s in splits.values())  # mute.mp4 left out
    parent = out / FEATURE_PARENT
    for row in rows:
        assert len(row.video_id) == 12 and row.video_id.isdigit()
        seconds = SECONDS[row.music_id.removeprefix("v_")]
        assert row.meta["music_total_duration"] == pytest.approx(seconds, abs=0.1)
        feat = torch.load(feature_path(parent, "video", "feature", row.video_id),
                          weights_only=True)
        mask = torch.load(feature_path(parent, "video", "mask", row.video_id), weights_only=True)
        assert feat.shape == (50, 512) and mask.shape == (50,) and feat.dtype == torch.float32
        assert int(mask.sum()) == math.ceil(seconds - 1e-6)  # frames at 0, 1, ... s
        assert (mask[: int(mask.sum())] == 1).all() and (feat[int(mask.sum()):] == 0).all()
        music = torch.load(feature_path(parent, "music", "feature", row.music_id),
                           weights_only=True)
        mmask = torch.load(feature_path(parent, "music", "mask", row.music_id),
                           weights_only=True)
        assert music.shape == (96, 768) and int(mmask.sum()) == int(seconds // 2.5) + 1


def test_prepare_packs_it(built, tmp_path, capsys):
    _, _, out = built
    assert main(["prepare", "--dataset", "mgsv_ec", "--src", str(out), "--out",
                 str(tmp_path / "store")]) == 0
    assert (tmp_path / "store").is_dir()


def test_record_rebuilds_the_same_extractors(built):
    _, videos, out = built
    rec = read_record(out / "extractor.json")
    video, audio = specs_from_record(rec, "x")
    assert (video.backbone, audio.features, rec["layout"]) == ("clip_vit_b32", "ast", "mgsv_ec")
    assert len(video.weights_sha256) == 64 and len(audio.weights_sha256) == 64
    assert (video.max_seconds, audio.max_seconds, audio.hop_seconds) == (50.0, 240.0, 2.5)
    cpu = torch.device("cpu")
    src = videos / "v_blue.mp4"
    stored = np.load(out / "features" / "extracted" / "video" / "v_blue.npy")
    np.testing.assert_allclose(video.finish(cpu)(video.prepare()(src)), stored, atol=1e-5)
    stored = np.load(out / "features" / "extracted" / "music" / "v_blue.npy")
    np.testing.assert_allclose(audio.finish(cpu)(audio.prepare()(src)), stored, atol=1e-5)
    report = json.loads((out / "build-report.json").read_text())
    assert [f["file"].endswith("mute.mp4") for f in report["music"]["failed"]] == [True]


def test_wrong_extractors_for_the_layout_give_one_line(built, tmp_path, capsys):
    _, videos, out = built
    assert main(["build-dataset", "--videos", str(videos), "--out", str(tmp_path / "x"),
                 "--layout", "mgsv_ec", "--backbone", "clip_vit_b32", "--weights",
                 str(out.parent / "clip"), "--audio-features", "logmel"]) == 2
    err = capsys.readouterr().err.strip()
    assert "layout mgsv_ec stores CLIP frame and AST music features" in err and "\n" not in err
    assert not (tmp_path / "x").exists()
