"""VGGish (`vmr extract audio --features vggish`): torchaudio 2.11 no longer ships its VGGish
pipeline, so the input processing and the network are checked against an independent NumPy /
functional transcription of the AudioSet release (mel_features.py, vggish_slim.py,
vggish_postprocess.py), on random weights saved locally."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from media import make_audio
from tiny_models import save_random_vggish

from datamodules.errors import DataError
from datamodules.extract.decode import decode_audio
from datamodules.extract.specs import AudioSpec
from datamodules.extract.vggish import canonical_name, load_vggish, vggish_examples
from datamodules.tfrecord import dequantize
from lightning_app.cli import main

SR = 16_000


def _np_examples(y: np.ndarray) -> np.ndarray:
    """mel_features.log_mel_spectrogram + vggish_input.waveform_to_examples, in NumPy."""
    win, hop, fft = 400, 160, 512
    n = 1 + (len(y) - win) // hop
    frames = np.stack([y[i * hop : i * hop + win] for i in range(n)]).astype(np.float64)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    spec = np.abs(np.fft.rfft(frames * window, fft))
    mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)  # noqa: E731
    bins = mel(np.linspace(0, SR / 2, fft // 2 + 1))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    weights = np.zeros((fft // 2 + 1, 64))
    for i in range(64):
        lo, c, hi = edges[i : i + 3]
        weights[:, i] = np.maximum(0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    weights[0] = 0.0
    log_mel = np.log(spec @ weights + 0.01)
    k = (len(log_mel) - 96) // 96 + 1
    return log_mel[: k * 96].reshape(k, 1, 96, 64)


def _functional_vggish(state: dict, x: torch.Tensor) -> torch.Tensor:
    """vggish_slim's network written with torch.nn.functional from the raw parameters."""
    convs = [0, 3, 6, 8, 11, 13]
    for j, i in enumerate(convs):
        x = F.relu(F.conv2d(x, state[f"features_network.{i}.weight"],
                            state[f"features_network.{i}.bias"], padding=1))
        if j in (0, 1, 3, 5):
            x = F.max_pool2d(x, 2)
    x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # TensorFlow flattens NHWC
    for i in (0, 2, 4):
        x = F.relu(F.linear(x, state[f"embedding_network.{i}.weight"],
                            state[f"embedding_network.{i}.bias"]))
    return x


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_vggish(tmp_path_factory.mktemp("vggish") / "vggish.pth")


@pytest.fixture(scope="module")
def pca_file(tmp_path_factory):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((128, 128)))
    path = tmp_path_factory.mktemp("pca") / "vggish_pca_params.npz"
    np.savez(path, pca_eigen_vectors=q * 3.0, pca_means=rng.uniform(0, 0.5, (128, 1)))
    return path


def test_input_examples_equal_the_numpy_transcription():
    y = np.random.default_rng(0).uniform(-1, 1, int(3.3 * SR)).astype(np.float32)
    ours = vggish_examples(y).numpy()
    assert ours.shape == (3, 1, 96, 64)
    np.testing.assert_allclose(ours, _np_examples(y), rtol=1e-4, atol=1e-4)
    assert vggish_examples(y[: SR // 2]).shape == (1, 1, 96, 64)  # short: padded to one


def test_network_equals_the_functional_transcription(weights):
    model, digest = load_vggish(weights, device="cpu")
    state = torch.load(weights, weights_only=True)
    x = torch.as_tensor(_np_examples(
        np.random.default_rng(2).uniform(-1, 1, 2 * SR).astype(np.float32)), dtype=torch.float32)
    with torch.no_grad():
        ours = model(x)
    ref = _functional_vggish(state, x)
    assert ours.shape == (2, 128) and (ref > 0).any()
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    # torchvggish's parameter names map onto the same parameters
    assert canonical_name("features.13.bias") == "features_network.13.bias"
    assert canonical_name("embeddings.4.weight") == "embedding_network.4.weight"
    assert len(digest) == 64


def test_cli_with_pca_writes_youtube8m_audio_features(weights, pca_file, tmp_path, capsys):
    src = tmp_path / "music"
    src.mkdir()
    make_audio(src / "song.wav", seconds=3.0)
    out = tmp_path / "out"
    assert main(["extract", "audio", "--input", str(src), "--out", str(out), "--features",
                 "vggish", "--weights", str(weights), "--pca", str(pca_file), "--workers", "0",
                 "--device", "cpu"]) == 0
    assert "audio vggish: 1 done" in capsys.readouterr().out
    got = np.load(out / "song.npy")
    y = decode_audio(src / "song.wav", SR)
    emb = _functional_vggish(torch.load(weights, weights_only=True),
                             torch.as_tensor(_np_examples(y), dtype=torch.float32)).numpy()
    params = np.load(pca_file)
    pca = (emb - params["pca_means"].reshape(1, -1)) @ params["pca_eigen_vectors"].T
    clipped = np.clip(pca, -2.0, 2.0)
    assert got.shape == (3, 128)
    # 256 levels over [-2, 2]: within half a level of the clipped PCA output
    step = 4.0 / 255
    assert np.abs(got - clipped).max() <= step / 2 + 1e-3
    levels = dequantize(np.arange(256, dtype=np.uint8))
    assert np.isin(got, levels.astype(np.float32)).all()


def test_bad_files_give_one_line(weights, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, pca_means=np.zeros(128))
    spec = AudioSpec("vggish", weights=str(weights), pca=str(bad))
    with pytest.raises(DataError, match="bad.npz: not a VGGish PCA file: no 'pca_eigen_vectors'"):
        spec.finish(torch.device("cpu"))
    torch.save({"features_network.0.weight": torch.zeros(64, 1, 3, 3)}, tmp_path / "part.pth")
    with pytest.raises(DataError, match=r"part.pth: does not fit VGGish: \d+ missing keys"):
        load_vggish(tmp_path / "part.pth", device="cpu")
    with pytest.raises(DataError, match="audio features logmel: a PCA file applies to vggish"):
        AudioSpec("logmel", pca=str(bad))
