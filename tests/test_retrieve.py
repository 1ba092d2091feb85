"""`vmr retrieve`: a checkpoint trained on built features recommends music for raw videos."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from media import make_audio, make_video

from datamodules.extract.build_dataset import build_dataset
from datamodules.extract.folders import PCAPlan
from datamodules.extract.specs import AudioSpec, VideoSpec
from lightning_app.cli import main
from lightning_app.config import load_config
from lightning_app.recommend import CACHE_DIR, Recommender, feature_batch
from lightning_app.train import train

COLORS = ("red", "green", "blue", "yellow", "cyan", "magenta", "white", "orange", "purple",
          "pink", "gray", "navy")


def tone(i: int) -> float:
    return 220.0 * 2 ** (i / 2)  # half an octave apart: distinct log-mel peaks


@pytest.fixture(scope="module")
def trained(tmp_path_factory, resnet50_weights):
    """12 colour/tone videos -> MVD layout -> a small SSVMR trained to pair them.

    The music library holds the same tones as separate .wav tracks, so a query video should
    find the track with its own tone (colour <-> tone is what the model memorised).
    """
    tmp = tmp_path_factory.mktemp("retrieve")
    videos, library = tmp / "videos", tmp / "library"
    videos.mkdir()
    library.mkdir()
    for i, c in enumerate(COLORS):
        make_video(videos / f"{c}.mp4", seconds=3.0, color=c, tone_hz=tone(i))
        make_audio(library / f"track_{c}.wav", seconds=4.0, tone_hz=tone(i))
    spec = VideoSpec(backbone="resnet50", weights=str(resnet50_weights), image_size=64)
    build_dataset(videos, tmp / "ds", "mvd", spec, AudioSpec("logmel"), PCAPlan(dim=8),
                  val_fraction=0.1, test_fraction=0.1, progress=False)
    cfg = load_config("ssvmr_videos", [
        f"data.root={tmp / 'ds'}", f"run_dir={tmp / 'runs'}", "data.batch_size=10",
        "data.eval_batch_size=16", "data.frames=3", "model.ssvmr.video_dim=8",
        "model.ssvmr.mixing.enabled=false", "trainer.max_epochs=60", "optim.lr=3e-3",
        "optim.warmup_steps=0", "optim.scheduler=constant", "checkpoint.monitor=train/loss",
        "checkpoint.mode=min", "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled",
        "trainer.check_val_every_n_epoch=60",
    ])
    torch.manual_seed(0)
    _, objects = train(cfg)
    ckpt = objects["run_dir"] / "checkpoints" / "last.ckpt"
    return {"tmp": tmp, "videos": videos, "library": library, "ckpt": ckpt, "cfg": cfg}


def test_checkpoint_carries_config_and_extractor_record(trained):
    ckpt = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    rec = ckpt["vmr"]
    assert rec["config"]["model"]["name"] == "ssvmr"
    assert rec["extractor"]["video"]["backbone"] == "resnet50"
    assert rec["extractor"]["music"]["features"] == "logmel"


def test_query_videos_find_their_own_tone_far_above_chance(trained):
    rec = Recommender.from_checkpoint(trained["ckpt"], device=torch.device("cpu"))
    hits = 0
    for c in COLORS:
        matches = rec.recommend("video", trained["videos"] / f"{c}.mp4", trained["library"],
                                k=3, progress=False)
        hits += matches[0].file == f"track_{c}.wav"
    # Chance top-1 is 1/12; the two held-out pairs are unseen pairings, so allow misses.
    assert hits >= 8, hits


def test_scores_are_the_models_cosines_on_independently_extracted_features(trained):
    """The ranking equals the model's own embeddings of features computed step by step."""
    from datamodules.extract.decode import decode_audio, decode_video_frames
    from datamodules.extract.logmel import LogMelExtractor
    from datamodules.extract.pca import PCAWhitening
    from datamodules.extract.video_backbone import load_frame_encoder

    rec = Recommender.from_checkpoint(trained["ckpt"], device=torch.device("cpu"))
    vspec = rec.specs["video"]
    enc = load_frame_encoder("resnet50", vspec.weights, device="cpu", image_size=64)
    frames = decode_video_frames(trained["videos"] / "blue.mp4", size=(64, 64))
    video = PCAWhitening.load(vspec.pca).transform(enc.encode(frames).numpy())
    logmel = LogMelExtractor(device=torch.device("cpu"))
    tracks = sorted(trained["library"].glob("*.wav"))
    music = [logmel(decode_audio(t, 16000)) for t in tracks]
    model = rec.model
    with torch.no_grad():
        x, m = feature_batch([video], frames=3)
        q = model.encode_video({"video": x, "video_mask": m})
        x, m = feature_batch(music, frames=3)
        g = model.encode_music({"music": x, "music_mask": m})
    expected = (q @ g.T)[0]
    matches = rec.recommend("video", trained["videos"] / "blue.mp4", trained["library"], k=12,
                            progress=False)
    names = [t.name for t in tracks]
    got = {mt.file: mt.score for mt in matches}
    assert [mt.score for mt in matches] == sorted(got.values(), reverse=True)
    for name, score in zip(names, expected.tolist()):
        assert got[name] == pytest.approx(score, abs=1e-4)


def test_library_cache_is_reused_and_rebuilt_when_files_or_checkpoint_change(trained, tmp_path):
    import shutil

    library = tmp_path / "lib"
    shutil.copytree(trained["library"], library)
    rec = Recommender.from_checkpoint(trained["ckpt"], device=torch.device("cpu"))
    names, emb = rec.library("music", library, progress=False)
    cache = library / CACHE_DIR
    (emb_file,) = cache.glob("embeddings-music-*.npz")
    features = {f: f.stat().st_mtime_ns for f in cache.rglob("features-*/*.npy")}
    assert len(features) == 12

    names2, emb2 = rec.library("music", library, progress=False)  # cached: nothing recomputed
    assert names2 == names and torch.equal(emb2, emb)
    assert {f: f.stat().st_mtime_ns for f in cache.rglob("features-*/*.npy")} == features
    assert list(cache.glob("embeddings-music-*.npz")) == [emb_file]

    # An edited track gets new features; the others are reused; the embeddings are redone.
    edited = library / "track_red.wav"
    make_audio(edited, seconds=4.0, tone_hz=tone(5))
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))
    names3, emb3 = rec.library("music", library, progress=False)
    after = {f: f.stat().st_mtime_ns for f in cache.rglob("features-*/*.npy")}
    assert len(after) == 12 and len(set(after) & set(features)) == 11  # one stale file removed
    assert list(cache.glob("embeddings-music-*.npz")) != [emb_file]
    i = names3.index("track_red.wav")
    assert not torch.allclose(emb3[i], emb[i])

    # Another checkpoint (different weights): new embeddings from the same cached features.
    other = tmp_path / "other.ckpt"
    ck = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    ck["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v
                        for k, v in ck["state_dict"].items()}
    torch.save(ck, other)
    rec2 = Recommender.from_checkpoint(other, device=torch.device("cpu"))
    _, emb4 = rec2.library("music", library, progress=False)
    assert not torch.allclose(emb4, emb3)
    assert {f: f.stat().st_mtime_ns for f in cache.rglob("features-*/*.npy")} == after


def test_cli_table_json_and_reverse_direction(trained, capsys):
    base = ["retrieve", "--ckpt", str(trained["ckpt"]), "--device", "cpu", "--workers", "0"]
    assert main([*base, "--library", str(trained["library"]), "--video",
                 str(trained["videos"] / "red.mp4"), "-k", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["direction"] == "video -> music" and [r["rank"] for r in out["results"]] == [
        1, 2, 3, 4, 5]
    scores = [r["score"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)

    assert main([*base, "--library", str(trained["library"]), "--video",
                 str(trained["videos"] / "red.mp4"), "-k", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["rank", "score", "file"] and len(table) == 5

    # Music -> videos: the library is the folder of videos.
    assert main([*base, "--library", str(trained["videos"]), "--music",
                 str(trained["library"] / "track_green.wav"), "-k", "12", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["direction"] == "music -> video" and len(out["results"]) == 12
    assert {r["file"] for r in out["results"]} == {f"{c}.mp4" for c in COLORS}


def test_cli_errors_are_one_line(trained, tmp_path, capsys):
    base = ["retrieve", "--device", "cpu", "--workers", "0", "--library", str(trained["library"])]
    silent = make_video(tmp_path / "silent.mp4", seconds=2.0, audio=False)
    cases = [
        ([*base, "--ckpt", str(tmp_path / "none.ckpt"), "--video", str(silent)],
         "none.ckpt: checkpoint not found"),
        ([*base, "--ckpt", str(trained["ckpt"]), "--music", str(silent)], "no audio stream"),
        ([*base, "--ckpt", str(trained["ckpt"]), "--video", str(tmp_path / "x.mp4")],
         "x.mp4"),
    ]
    stripped = tmp_path / "copied" / "checkpoints" / "bare.ckpt"
    stripped.parent.mkdir(parents=True)
    ck = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)
    del ck["vmr"]
    torch.save(ck, stripped)
    cases.append(([*base, "--ckpt", str(stripped), "--video", str(silent)],
                  "carries no config"))
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, (args, err)


def test_feature_batch_pads_or_samples_like_the_datamodules():
    a, b = np.ones((2, 3), np.float32), np.full((5, 3), 2, np.float32)
    x, m = feature_batch([a, b], frames=None)
    assert x.shape == (2, 5, 3) and m.tolist() == [[1, 1, 0, 0, 0], [1] * 5]
    x, m = feature_batch([a, b], frames=4)
    assert x.shape == (2, 4, 3) and m.tolist() == [[1, 1, 0, 0], [1] * 4]
    assert float(x[0, 2:].abs().sum()) == 0.0


def test_vmnet_on_a_built_himv200k_layout_recommends_from_raw_files(tmp_path, resnet50_weights,
                                                                     pca_1024, capsys):
    """HIMV-200K models see every frame (pooled by VM-NET) and one 1140-d vector per track."""
    videos, library = tmp_path / "videos", tmp_path / "library"
    videos.mkdir()
    library.mkdir()
    for i, c in enumerate(COLORS[:4]):
        make_video(videos / f"{c}.mp4", seconds=2.0, color=c, tone_hz=tone(i))
        make_audio(library / f"track_{c}.wav", seconds=2.0, tone_hz=tone(i))
    spec = VideoSpec(backbone="resnet50", weights=str(resnet50_weights), image_size=64,
                     pca=str(pca_1024))
    build_dataset(videos, tmp_path / "ds", "himv200k", spec, AudioSpec("vmnet"),
                  val_fraction=0.25, test_fraction=0.25, progress=False)
    cfg = load_config("vmnet_himv200k", [
        f"data.root={tmp_path / 'ds'}", f"run_dir={tmp_path / 'runs'}", "data.batch_size=2",
        "data.eval_batch_size=2", "loss.num_negatives=1", "loss.structure_k=2",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "logger.wandb.mode=disabled",
    ])
    _, objects = train(cfg)
    ckpt = objects["run_dir"] / "checkpoints" / "last.ckpt"
    capsys.readouterr()  # the training table
    assert main(["retrieve", "--ckpt", str(ckpt), "--library", str(library), "--video",
                 str(videos / "red.mp4"), "-k", "4", "--json", "--device", "cpu",
                 "--workers", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(r["file"] for r in out["results"]) == [f"track_{c}.wav" for c in
                                                          sorted(COLORS[:4])]

    # The same scores from the model on independently computed features (all frames pooled).
    from datamodules.extract.vmnet_audio import vmnet_features_from_file

    rec = Recommender.from_checkpoint(ckpt, device=torch.device("cpu"))
    frames = rec.extract("video", videos / "red.mp4")
    assert frames.shape == (2, 1024)
    np.testing.assert_allclose(
        frames, np.load(tmp_path / "ds" / "features" / "video" / "red.npy"), atol=1e-5)
    with torch.no_grad():
        q = rec.model.encode_video({"video": torch.from_numpy(frames)[None],
                                    "video_mask": torch.ones(1, 2, dtype=torch.bool)})
        m = torch.from_numpy(np.stack([vmnet_features_from_file(library / r["file"])
                                       for r in out["results"]]))[:, None, :]
        g = rec.model.encode_music({"music": m, "music_mask": torch.ones(4, 1, dtype=torch.bool)})
    np.testing.assert_allclose([r["score"] for r in out["results"]], (q @ g.T)[0].numpy(),
                               atol=1e-5)


def _retrieve_json(trained, library, capsys, *extra):
    args = ["retrieve", "--ckpt", str(trained["ckpt"]), "--device", "cpu", "--workers", "0",
            "--library", str(library), "--video", str(trained["videos"] / "red.mp4"),
            "-k", "12", "--json", *extra]
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cache_sees_same_size_same_mtime_replacement_and_rebuilds_damaged_files(
        trained, tmp_path, capsys):
    import shutil

    library = tmp_path / "lib"
    shutil.copytree(trained["library"], library)
    code, out, _ = _retrieve_json(trained, library, capsys)
    assert code == 0
    first = {r["file"]: r["score"] for r in json.loads(out)["results"]}

    # Another tone, same length (so the same size), and the old modification time put back.
    red = library / "track_red.wav"
    stat = red.stat()
    make_audio(red, seconds=4.0, tone_hz=tone(7))
    os.utime(red, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert red.stat().st_size == stat.st_size and red.stat().st_mtime_ns == stat.st_mtime_ns
    code, out, _ = _retrieve_json(trained, library, capsys)
    second = {r["file"]: r["score"] for r in json.loads(out)["results"]}
    assert code == 0 and second["track_red.wav"] != pytest.approx(first["track_red.wav"])
    assert {f: s for f, s in second.items() if f != "track_red.wav"} == pytest.approx(
        {f: s for f, s in first.items() if f != "track_red.wav"})

    # A truncated embeddings file and a truncated feature file: rebuilt, one warning each.
    cache = library / CACHE_DIR
    (emb_file,) = cache.glob("embeddings-music-*.npz")
    emb_file.write_bytes(emb_file.read_bytes()[:50])
    feature = sorted(cache.rglob("features-*/*.npy"))[0]
    feature.write_bytes(feature.read_bytes()[:100])
    code, out, err = _retrieve_json(trained, library, capsys)
    assert code == 0 and {r["file"]: r["score"] for r in json.loads(out)["results"]} == (
        pytest.approx(second))
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert "damaged cached feature file" in lines[0] and "damaged embeddings cache" in lines[1]
    assert np.load(feature).ndim >= 1 and len(list(cache.glob("embeddings-music-*.npz"))) == 1


@pytest.mark.slow
def test_cli_hnsw_index_is_built_cached_and_agrees_on_a_small_library(trained, tmp_path, capsys):
    import shutil

    library = tmp_path / "lib"
    shutil.copytree(trained["library"], library)
    code, out, _ = _retrieve_json(trained, library, capsys)
    exact = [r["file"] for r in json.loads(out)["results"]]
    # 12 items: HNSW with its default search width finds them all, in the exact order.
    # (flat and ivf: tests/test_ann_index.py, on the same code path.)
    code, out, _ = _retrieve_json(trained, library, capsys, "--index", "hnsw")
    assert code == 0 and [r["file"] for r in json.loads(out)["results"]] == exact
    assert len(list((library / CACHE_DIR).glob("index-music-hnsw-*.faiss"))) == 1


def test_cli_index_without_faiss_is_one_line(trained, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # as if FAISS were not installed
    code, out, err = _retrieve_json(trained, trained["library"], capsys, "--index", "hnsw")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "needs FAISS" in err and "pip install 'vmr[faiss]'" in err
