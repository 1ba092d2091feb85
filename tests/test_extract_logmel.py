"""Per-second log-mel features against a numpy reference written here.

The reference frames the signal by hand (zero padding, a periodic Hann window of 400
samples centred in 512, numpy's rfft, librosa's Slaney mel filterbank), takes
log(mel + 1e-6) in float64 and averages per second by its own loop: no torchaudio.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
from media import debian_sound, make_video, mp4_with_debian_sound

from datamodules.errors import DataError
from datamodules.extract import logmel
from datamodules.extract.logmel import (
    LOGMEL_DIM,
    LOGMEL_SAMPLE_RATE,
    LogMelExtractor,
    logmel_features_from_file,
    n_rows,
)

SR = 16000
SOUNDS = ("alarm-clock-elapsed.oga", "phone-incoming-call.oga")  # 6.1 s 48 kHz, 1.5 s 44.1 kHz

pytestmark = pytest.mark.filterwarnings("ignore:'(aifc|audioop|sunau)' is deprecated")


def reference_frames(y: np.ndarray) -> np.ndarray:
    """log(mel power + 1e-6) of 10-ms frames centred at i * 160 samples: [1 + n // 160, 128]."""
    y = np.asarray(y, dtype=np.float64)
    padded = np.concatenate([np.zeros(256), y, np.zeros(256)])
    window = np.zeros(512)
    window[56:456] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    frames = np.stack([padded[i * 160 : i * 160 + 512] * window
                       for i in range(1 + len(y) // 160)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = librosa.filters.mel(sr=SR, n_fft=512, n_mels=128, fmin=0.0, fmax=8000.0)
    return np.log(power @ mel.T + 1e-6)


def reference_rows(y: np.ndarray) -> np.ndarray:
    frames = reference_frames(y)
    seconds = len(y) / SR
    rows = int(seconds) + (1 if seconds - int(seconds) >= 0.5 else 0)
    return np.stack([frames[100 * r : 100 * r + 100].mean(axis=0) for r in range(max(rows, 1))])


def band_upper_edges() -> np.ndarray:
    return librosa.mel_frequencies(128 + 2, fmin=0.0, fmax=8000.0)[2:]


def independent_decode(path: Path) -> np.ndarray:
    """16-kHz mono without torchcodec or swresample (soundfile or ffmpeg CLI, then soxr)."""
    if path.suffix == ".oga":
        return librosa.load(path, sr=SR, mono=True)[0]
    info = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         "stream=sample_rate,channels", "-of", "json", str(path)],
        check=True, capture_output=True, text=True).stdout)["streams"][0]
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path),
                          "-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le", "-"],
                         check=True, capture_output=True).stdout
    y = np.frombuffer(raw, np.float32).reshape(-1, int(info["channels"])).mean(axis=1)
    return librosa.resample(y, orig_sr=int(info["sample_rate"]), target_sr=SR,
                            res_type="soxr_hq")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These tensors are tiny; with a second process busy on a 2-core machine, torch's
    OpenMP pool made each call ~100x slower (0.13 s instead of 1 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def extractor() -> LogMelExtractor:
    return LogMelExtractor(device="cpu")


@pytest.fixture(scope="module")
def sound_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    files = {name: debian_sound(name) for name in SOUNDS}
    files["mp4"] = mp4_with_debian_sound(tmp_path_factory.mktemp("logmel") / "alarm.mp4",
                                         "alarm-clock-elapsed.oga")
    return files


@pytest.mark.parametrize("name", SOUNDS)
def test_matches_reference_on_the_same_waveform(extractor, name):
    y = librosa.load(debian_sound(name), sr=SR, mono=True)[0]
    frames = extractor.frames(y).numpy()
    # float32 torch vs float64 numpy: ~3e-4 at worst on single frames (quiet bins, log scale),
    # ~6e-5 after the per-second mean.
    np.testing.assert_allclose(frames, reference_frames(y), atol=2e-3)
    out = extractor(y)
    assert out.dtype == np.float32 and out.shape == (n_rows(len(y)), LOGMEL_DIM)
    np.testing.assert_allclose(out, reference_rows(y), atol=5e-4)


@pytest.mark.parametrize("name", [*SOUNDS, "mp4"])
def test_from_file_matches_reference_on_an_independent_decode(sound_files, extractor, name):
    path = sound_files[name]
    ours = logmel_features_from_file(path, extractor)
    ref = reference_rows(independent_decode(path))
    assert ours.shape == ref.shape and np.isfinite(ours).all()
    # The resamplers (swresample here, soxr_hq in the reference) differ only near the new
    # Nyquist: measured <= 0.03 (natural log units, ~0.1 dB) in every band ending below
    # 7 kHz, but up to 3.5 in the six bands reaching 7-8 kHz, which are not compared.
    below = band_upper_edges() <= 7000.0
    np.testing.assert_allclose(ours[:, below], ref[:, below], atol=0.05)


def test_rows_follow_whole_seconds(extractor):
    rng = np.random.default_rng(0)
    cases = {1: 1, 7999: 1, 8000: 1, 16000: 1, 23999: 1, 24000: 2, 32000: 2, 40000: 3}
    for samples, rows in cases.items():
        assert n_rows(samples) == rows
        y = rng.standard_normal(samples).astype(np.float32) * 0.1
        out = extractor(y)
        assert out.shape == (rows, LOGMEL_DIM), samples
        frames = extractor.frames(y).numpy()
        assert len(frames) == 1 + samples // 160
        for r in range(rows):  # row r: the mean of the frames centred in [r, r + 1) s
            np.testing.assert_allclose(out[r], frames[100 * r : 100 * r + 100].mean(axis=0),
                                       rtol=1e-5, atol=1e-5)


def test_batch_equals_one_at_a_time(extractor):
    rng = np.random.default_rng(1)
    ys = [rng.standard_normal(n).astype(np.float32) for n in (40000, 1000, 16000, 24321)]
    for one, many in zip([extractor(y) for y in ys], extractor.batch(ys)):
        np.testing.assert_allclose(many, one, atol=1e-4)
    assert extractor.batch([]) == []


@pytest.mark.parametrize("tone_hz", [440.0, 1000.0, 3000.0])
def test_tone_peaks_in_its_mel_band(extractor, tone_hz):
    t = np.arange(2 * SR) / SR
    out = extractor(0.5 * np.sin(2 * np.pi * tone_hz * t).astype(np.float32))
    edges = librosa.mel_frequencies(128 + 2, fmin=0.0, fmax=8000.0)
    for k in out.argmax(axis=1):
        assert edges[k] <= tone_hz <= edges[k + 2]


def test_tone_inside_an_mp4(tmp_path, extractor):
    path = make_video(tmp_path / "tone.mp4", seconds=3.0, tone_hz=1000.0)
    out = logmel_features_from_file(path, extractor)
    assert out.shape == (3, LOGMEL_DIM)
    edges = librosa.mel_frequencies(128 + 2, fmin=0.0, fmax=8000.0)
    assert all(edges[k] <= 1000.0 <= edges[k + 2] for k in out.argmax(axis=1))


def test_device_argument(monkeypatch):
    ex = LogMelExtractor(device="cpu")
    assert ex.device == torch.device("cpu")
    assert all(b.device.type == "cpu" for b in ex.mel.buffers())
    y = torch.zeros(SR)
    assert ex(y).shape == (1, LOGMEL_DIM) and isinstance(ex(y), np.ndarray)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert LogMelExtractor().device == torch.device("cpu")


def test_bad_input_raises_data_error(extractor):
    for bad, why in [(np.array([0.0, np.nan]), "NaN"), (np.zeros(0), "empty"),
                     (torch.tensor([np.inf]), "infinite"), (np.zeros((2, 100)), "mono")]:
        with pytest.raises(DataError, match=why):
            extractor(bad)


def test_constants():
    assert (LOGMEL_SAMPLE_RATE, LOGMEL_DIM, logmel.HOP, logmel.WIN_LENGTH) == (16000, 128, 160, 400)
