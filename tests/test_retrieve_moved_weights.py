"""`vmr retrieve` after the extractor's weight files moved: the recorded path fails in one line
that names the option, `--video-weights/--video-pca/--audio-weights/--audio-pca` point at
the moved copies (checked against the recorded SHA-256) and then rank exactly as before."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from media import make_audio, make_video
from tiny_models import AST_DIM, CLIP_DIM, save_tiny_ast, save_tiny_clip

from datamodules.errors import DataError
from datamodules.extract.hf_weights import weights_sha256
from datamodules.extract.specs import AudioSpec, VideoSpec, record
from lightning_app.cli import main
from lightning_app.config import load_config, to_dict
from lightning_app.errors import ConfigError
from lightning_app.recommend import Recommender
from lightning_app.recommend_files import locate
from lightning_app.registry import build_model


def _checkpoint(path: Path, clip: Path, audio: AudioSpec, music_dim: int) -> Path:
    """An untrained VM-NET checkpoint whose record names tiny CLIP and `audio` weights."""
    cfg = load_config("vmnet_mgsv_ec", [f"model.vmnet.video_dim={CLIP_DIM}",
                                        f"model.vmnet.music_dim={music_dim}"])
    torch.manual_seed(0)
    model = build_model(cfg, {"video": CLIP_DIM, "music": music_dim})
    video = VideoSpec(backbone="clip_vit_b32", weights=str(clip),
                      weights_sha256=weights_sha256(clip))
    extractor = record(video, audio.resolved())
    torch.save({"state_dict": model.state_dict(),
                "vmr": {"config": to_dict(cfg), "extractor": extractor}}, path)
    return path


@pytest.fixture
def clip_ast(tmp_path) -> dict[str, Path]:
    weights = tmp_path / "weights"
    clip, ast = save_tiny_clip(weights / "clip"), save_tiny_ast(weights / "ast")
    ckpt = _checkpoint(tmp_path / "clip_ast.ckpt", clip, AudioSpec("ast", weights=str(ast)),
                       AST_DIM)
    make_video(tmp_path / "query.mp4", seconds=2.0, color="red", tone_hz=440.0)
    (tmp_path / "library").mkdir()
    for name, hz in (("a", 330.0), ("b", 440.0), ("c", 660.0)):
        make_audio(tmp_path / "library" / f"{name}.wav", seconds=3.0, tone_hz=hz)
    return {"tmp": tmp_path, "ckpt": ckpt, "clip": clip, "ast": ast}


def _retrieve(files: dict[str, Path], capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["retrieve", "--ckpt", str(files["ckpt"]), "--library",
                 str(files["tmp"] / "library"), "--video", str(files["tmp"] / "query.mp4"),
                 "--device", "cpu", "--workers", "0", "--json", *extra])
    out, err = capsys.readouterr()
    return code, out, err.strip()


def _moved(files: dict[str, Path]) -> Path:
    shutil.move(files["tmp"] / "weights", files["tmp"] / "moved")
    return files["tmp"] / "moved"


def test_moved_clip_and_ast_rank_as_before_with_the_options(clip_ast, capsys):
    code, before, _ = _retrieve(clip_ast, capsys)
    assert code == 0
    moved = _moved(clip_ast)
    code, _, err = _retrieve(clip_ast, capsys)
    assert code == 2 and err == (f"vmr: error: {clip_ast['clip']}: CLIP weights not found "
                                 "(moved? give its new path with --video-weights PATH)")
    code, _, err = _retrieve(clip_ast, capsys, "--video-weights", str(moved / "clip"))
    assert code == 2 and err == (f"vmr: error: {clip_ast['ast']}: ast weights not found "
                                 "(moved? give its new path with --audio-weights PATH)")
    code, after, _ = _retrieve(clip_ast, capsys, "--video-weights", str(moved / "clip"),
                               "--audio-weights", str(moved / "ast"))
    assert code == 0
    results = json.loads(after)["results"]
    assert results == json.loads(before)["results"]  # same files, same scores
    assert sorted(r["file"] for r in results) == ["a.wav", "b.wav", "c.wav"]


def test_other_content_or_a_missing_file_is_one_line(clip_ast, capsys):
    moved = _moved(clip_ast)
    other = save_tiny_ast(clip_ast["tmp"] / "other_ast", seed=1)  # same shapes, other values
    capsys.readouterr()  # transformers' progress lines while saving it
    clip = ["--video-weights", str(moved / "clip")]
    cases = [
        (["--audio-weights", str(other)],
         f"{other}: not the ast weights the training features were extracted with "
         f"(--audio-weights: SHA-256 {weights_sha256(other)[:12]}..., recorded "
         f"{weights_sha256(moved / 'ast')[:12]}... for {clip_ast['ast']})"),
        (["--audio-weights", str(moved / "nothing")],
         f"{moved / 'nothing'}: ast weights not found (--audio-weights)"),
        (["--audio-weights", str(moved / "ast"), "--audio-pca", str(other)],
         f"--audio-pca {other}: the checkpoint's music extractor (ast) reads no pca file"),
    ]
    for extra, message in cases:
        code, out, err = _retrieve(clip_ast, capsys, *clip, *extra)
        assert code == 2 and out == "" and err == f"vmr: error: {message}", extra
    assert not (clip_ast["tmp"] / "library" / ".vmr-cache").exists()  # refused before any work


def test_moved_vggish_and_its_pca(tmp_path):
    """Files are found and checked before anything loads them: stand-in bytes will do."""
    weights = tmp_path / "weights"
    clip, vggish, pca = save_tiny_clip(weights / "clip"), weights / "vggish.pt", weights / "pca.npz"
    vggish.write_bytes(b"VGGish weights")
    pca.write_bytes(b"VGGish PCA")
    ckpt = _checkpoint(tmp_path / "v.ckpt", clip, AudioSpec("vggish", weights=str(vggish),
                                                            pca=str(pca)), 128)
    shutil.move(weights, tmp_path / "moved")
    moved = tmp_path / "moved"
    with pytest.raises(DataError, match=r"pca.npz: VGGish PCA not found \(moved\? give its new "
                                        r"path with --audio-pca PATH\)$"):
        Recommender.from_checkpoint(ckpt, weights=moved / "clip", audio_weights=moved /
                                    "vggish.pt", device=torch.device("cpu"))
    rec = Recommender.from_checkpoint(ckpt, weights=moved / "clip", audio_weights=moved /
                                      "vggish.pt", audio_pca=moved / "pca.npz",
                                      device=torch.device("cpu"))
    music = rec.specs["music"]
    assert (music.weights, music.pca) == (str(moved / "vggish.pt"), str(moved / "pca.npz"))
    assert music.pca_sha256 == weights_sha256(moved / "pca.npz")  # the record's, unchanged
    assert rec.specs["video"].weights == str(moved / "clip")


def test_video_pca_and_weights_files_are_checked_too(tmp_path):
    cnn, pca, other = (tmp_path / n for n in ("cnn.pt", "pca.npz", "other.npz"))
    for path, data in ((cnn, b"cnn"), (pca, b"pca"), (other, b"other")):
        path.write_bytes(data)
    spec = VideoSpec(backbone="resnet50", weights=str(tmp_path / "old" / "cnn.pt"),
                     weights_sha256=weights_sha256(cnn), pca=str(tmp_path / "old" / "pca.npz"),
                     pca_sha256=weights_sha256(pca))
    found = locate({"video": spec}, {("video", "weights"): cnn, ("video", "pca"): pca})
    assert (found["video"].weights, found["video"].pca) == (str(cnn), str(pca))
    with pytest.raises(DataError, match=r"old/pca.npz: video PCA not found \(moved\? give its "
                                        r"new path with --video-pca PATH\)"):
        locate({"video": spec}, {("video", "weights"): cnn})
    with pytest.raises(DataError, match=r"other.npz: not the video PCA .* \(--video-pca: "):
        locate({"video": spec}, {("video", "weights"): cnn, ("video", "pca"): other})
    bare = VideoSpec(backbone="resnet50", weights=str(cnn), weights_sha256=weights_sha256(cnn))
    with pytest.raises(ConfigError, match=r"--video-pca .*pca.npz: the checkpoint's video "
                                          r"extractor \(resnet50\) reads no pca file"):
        locate({"video": bare}, {("video", "pca"): pca})
