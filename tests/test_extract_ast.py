"""AST music features (`vmr extract audio --features ast`) against transformers run directly
on the same local weights, with MGSV-EC's windows written out independently here."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from media import make_audio
from tiny_models import AST_DIM, save_tiny_ast

from datamodules.errors import DataError
from datamodules.extract.ast_audio import ASTPrepare, load_ast_encoder, window_bounds
from datamodules.extract.decode import decode_audio
from datamodules.extract.specs import AudioSpec
from lightning_app.cli import main

SR = 16_000


@pytest.fixture(scope="module")
def ast_dir(tmp_path_factory):
    return save_tiny_ast(tmp_path_factory.mktemp("ast") / "tiny-ast")


def _reference_windows(y: np.ndarray, hop: float, max_seconds: float) -> list[np.ndarray]:
    """Window k: [2.5k - 5, 2.5k + 5] s cut to [0, max], silence past the end of the track."""
    duration = len(y) / SR
    count = min(int(duration // hop) + 1, int(max_seconds // hop))
    padded = np.concatenate([y, np.zeros(int(max_seconds * SR), np.float32)])
    out = []
    for k in range(count):
        a, b = max(0.0, k * hop - 5.0), min(max_seconds, k * hop + 5.0)
        out.append(padded[int(round(a * SR)) : int(round(b * SR))])
    return out


def _reference(ast_dir, windows: list[np.ndarray]) -> np.ndarray:
    from transformers import ASTFeatureExtractor, ASTModel

    fe = ASTFeatureExtractor()  # the published defaults: 128 bins, 1024 frames, AudioSet stats
    model = ASTModel.from_pretrained(ast_dir, local_files_only=True).eval()
    x = fe(windows, sampling_rate=SR, return_tensors="pt")["input_values"]
    with torch.no_grad():
        return model(x).pooler_output.numpy()


def test_window_counts_follow_the_mgsv_masks():
    # min(floor(d / 2.5) + 1, 96) valid windows for a d-second track, 240 s at most.
    for seconds, count in ((30.10, 13), (139.7, 56), (239.91, 96), (400.0, 96), (1.0, 1)):
        assert len(window_bounds(round(seconds * SR))) == count
    assert window_bounds(20 * SR)[:3] == [(0, 5 * SR), (0, int(7.5 * SR)), (0, 10 * SR)]
    assert window_bounds(20 * SR)[3] == (int(2.5 * SR), int(12.5 * SR))


def test_features_equal_transformers_on_the_same_weights(ast_dir):
    y = np.random.default_rng(0).uniform(-0.5, 0.5, int(7.3 * SR)).astype(np.float32)
    fbanks = ASTPrepare(str(ast_dir), max_seconds=240.0).fbanks(y)
    assert fbanks.shape == (3, 1024, 128)
    ours = load_ast_encoder(ast_dir, device="cpu", batch_size=2)(fbanks)
    assert ours.shape == (3, AST_DIM)
    np.testing.assert_allclose(ours, _reference(ast_dir, _reference_windows(y, 2.5, 240.0)),
                               rtol=1e-4, atol=1e-4)


def test_extract_audio_cli_and_a_plain_model_folder(ast_dir, tmp_path, capsys):
    src = tmp_path / "music"
    src.mkdir()
    make_audio(src / "song.wav", seconds=6.0)
    out = tmp_path / "out"
    assert main(["extract", "audio", "--input", str(src), "--out", str(out), "--features",
                 "ast", "--weights", str(ast_dir), "--workers", "0", "--device", "cpu"]) == 0
    assert "audio ast: 1 done" in capsys.readouterr().out
    got = np.load(out / "song.npy")
    y = decode_audio(src / "song.wav", SR)
    np.testing.assert_allclose(got, _reference(ast_dir, _reference_windows(y, 2.5, 240.0)),
                               rtol=1e-4, atol=1e-4)
    assert got.shape == (3, AST_DIM)  # centres 0, 2.5, 5 s


def test_checkpoints_with_the_older_key_names_load_the_same(ast_dir, tmp_path):
    """Published AST checkpoints predate transformers 5's `layers.N` names (`encoder.layer.N`)."""
    from safetensors.torch import load_file

    state = load_file(ast_dir / "model.safetensors")
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(ast_dir / "config.json", old / "config.json")
    torch.save({k.replace(".layers.", ".encoder.layer."): v for k, v in state.items()},
               old / "pytorch_model.bin")
    assert any(".encoder.layer." in k for k in torch.load(old / "pytorch_model.bin",
                                                          weights_only=True))
    x = np.random.default_rng(0).standard_normal((2, 1024, 128)).astype(np.float32)
    np.testing.assert_array_equal(load_ast_encoder(old, device="cpu")(x),
                                  load_ast_encoder(ast_dir, device="cpu")(x))


@pytest.mark.slow
def test_a_single_state_dict_file_gets_ast_base_sizes(tmp_path):
    """No config.json: AST-base (768-d, 12 layers); the file wrapped under "state_dict"."""
    from transformers import ASTConfig, ASTModel

    torch.manual_seed(0)
    reference = ASTModel(ASTConfig()).eval()
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "ast_base.pt")
    x = torch.randn(1, 1024, 128)
    ours = load_ast_encoder(tmp_path / "ast_base.pt", device="cpu")(x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(ours, reference(x).pooler_output.numpy(), atol=1e-5)
    assert ours.shape == (1, 768)


def test_weights_that_do_not_fit_give_one_line(ast_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(ast_dir / "config.json", bad / "config.json")
    torch.save({"embeddings.cls_token": torch.zeros(1, 1, 7)}, bad / "pytorch_model.bin")
    with pytest.raises(DataError, match="bad: does not fit the AST model"):
        load_ast_encoder(bad, device="cpu")
    changed = AudioSpec("ast", weights=str(ast_dir), weights_sha256="0" * 64)
    with pytest.raises(DataError, match="ast weights file changed since the features were "):
        changed.finish(torch.device("cpu"))
    src = tmp_path / "m"
    src.mkdir()
    make_audio(src / "x.wav", seconds=1.0)
    assert main(["extract", "audio", "--input", str(src), "--out", str(tmp_path / "o"),
                 "--features", "ast"]) == 2
    assert "ast: give the model's local weights (--weights)" in capsys.readouterr().err
