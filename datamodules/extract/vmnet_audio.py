"""VM-NET's 1140-d music vector: librosa statistics of a 29.12-s clip at 12 kHz.

A re-implementation of the authors' `data/audio_feature_extractor/librosa_feature.py`
(csehong/VM-NET) with today's librosa (see docs/methods.md): centre crop or zero pad
to 29.12 s, harmonic/percussive separation, 13 frame-wise features per part (190 rows),
each matrix on a dB scale relative to its own maximum, both parts stacked (380 rows), then
mean, variance and maximum over the 1366 frames.

Where today's librosa differs from the authors' (0.4-era: `logamplitude(ref_power=np.max)`,
`rmse(n_fft=...)`), the modern call is used: `power_to_db(np.abs(S), ref=np.max,
amin=1e-10, top_db=80)` is the same formula; `rms(frame_length=512)` is a time-domain frame
RMS where the old `rmse` took the RMS of the STFT magnitude over frequency; STFT padding,
CQT and delta edge handling also changed between versions. Bit-for-bit equality with
features made in 2017 is therefore not a goal; equality with this procedure is.

Layout of the 1140 entries (`FEATURE_NAMES` spells out every one):
    [mean(380 rows), var(380 rows), max(380 rows)], rows = [harmonic 190, percussive 190],
    each part = chroma_stft 12, chroma_cens 12, melspectrogram 96, mfcc 20, mfcc_delta 20,
    mfcc_delta2 20, rms 1, spectral_centroid 1, spectral_bandwidth 1, spectral_rolloff 1,
    poly_features_1 2, poly_features_2 3, zero_crossing_rate 1.
"""

from __future__ import annotations

import os

import librosa
import numpy as np

from datamodules.errors import DataError
from datamodules.extract.decode import check_waveform, decode_audio

SAMPLE_RATE = 12000
CLIP_SECONDS = 29.12
N_FFT = 512
HOP = 256
N_MELS = 96
DIM = 1140
# The original called melspectrogram without sr, so librosa built its filterbank for its
# default rate; `mel_sr_quirk=True` reproduces that.
QUIRK_MEL_SR = 22050

BLOCKS: tuple[tuple[str, int], ...] = (
    ("chroma_stft", 12),
    ("chroma_cens", 12),
    ("melspectrogram", N_MELS),
    ("mfcc", 20),
    ("mfcc_delta", 20),
    ("mfcc_delta2", 20),
    ("rms", 1),
    ("spectral_centroid", 1),
    ("spectral_bandwidth", 1),
    ("spectral_rolloff", 1),
    ("poly_features_1", 2),
    ("poly_features_2", 3),
    ("zero_crossing_rate", 1),
)
PARTS = ("harmonic", "percussive")
STATS = ("mean", "var", "max")
ROW_NAMES: tuple[str, ...] = tuple(
    f"{part}/{block}/{i}" for part in PARTS for block, n in BLOCKS for i in range(n)
)
FEATURE_NAMES: tuple[str, ...] = tuple(f"{stat}/{row}" for stat in STATS for row in ROW_NAMES)
assert len(ROW_NAMES) * len(STATS) == len(FEATURE_NAMES) == DIM


def feature_indices(block: str, part: str | None = None, stat: str | None = None) -> np.ndarray:
    """Positions in the 1140-d vector of `block`'s rows (all parts/stats unless narrowed)."""
    if block not in dict(BLOCKS):
        raise KeyError(f"unknown block {block!r} (blocks: {', '.join(b for b, _ in BLOCKS)})")
    return np.array([
        i for i, name in enumerate(FEATURE_NAMES)
        if name.split("/")[2] == block
        and (part is None or name.split("/")[1] == part)
        and (stat is None or name.split("/")[0] == stat)
    ])  # fmt: skip


def crop_or_pad(y: np.ndarray, sr: int = SAMPLE_RATE, seconds: float = CLIP_SECONDS) -> np.ndarray:
    """Exactly round(seconds * sr) samples: the centre of a longer input, or zeros appended.

    As in the original: a longer input keeps samples [(n - w) // 2, (n - w) // 2 + w)
    (Python 2's floor division: when n - w is odd, the end loses one sample more than the
    start), a shorter one is padded with zeros at the END, not centred. The original
    truncated with int(); round() gives the same 349440 samples for 29.12 s at 12 kHz and
    does not lose a sample to float error at other rates.
    """
    y = np.asarray(y)
    want = int(round(seconds * sr))
    n = y.shape[-1]
    if n > want:
        start = (n - want) // 2
        return y[..., start : start + want]
    if n < want:
        return np.concatenate([y, np.zeros((*y.shape[:-1], want - n), dtype=y.dtype)], axis=-1)
    return y


def _db(S: np.ndarray) -> np.ndarray:
    """The original's `logamplitude(S, ref_power=np.max)` in today's librosa."""
    return librosa.power_to_db(np.abs(S), ref=np.max, amin=1e-10, top_db=80.0)


def _part_rows(y: np.ndarray, sr: int, mel_sr: int) -> list[np.ndarray]:
    """The 190 rows of one HPSS part, in BLOCKS order, each block on its own dB scale."""
    feat = librosa.feature
    stft = {"sr": sr, "hop_length": HOP, "n_fft": N_FFT}
    mfcc = feat.mfcc(y=y, sr=sr, hop_length=HOP)  # n_fft 2048, 128 mels: librosa's defaults
    return [
        _db(feat.chroma_stft(y=y, **stft)),
        _db(feat.chroma_cens(y=y, sr=sr, hop_length=HOP)),
        _db(feat.melspectrogram(y=y, sr=mel_sr, hop_length=HOP, n_fft=N_FFT, n_mels=N_MELS)),
        _db(mfcc),
        _db(feat.delta(mfcc)),
        _db(feat.delta(mfcc, order=2)),
        _db(feat.rms(y=y, hop_length=HOP, frame_length=N_FFT)),
        _db(feat.spectral_centroid(y=y, **stft)),
        _db(feat.spectral_bandwidth(y=y, **stft)),
        _db(feat.spectral_rolloff(y=y, **stft)),
        _db(feat.poly_features(y=y, **stft)),
        _db(feat.poly_features(y=y, **stft, order=2)),
        _db(feat.zero_crossing_rate(y=y, hop_length=HOP, frame_length=N_FFT)),
    ]


def vmnet_features(
    y: np.ndarray, sr: int = SAMPLE_RATE, mel_sr_quirk: bool = False, source: str = "waveform"
) -> np.ndarray:
    """The 1140-d float32 VM-NET music vector of mono waveform `y` (any length) at `sr` Hz.

    `y` is first cropped or padded to CLIP_SECONDS (`crop_or_pad`). `mel_sr_quirk=True`
    builds the 96-band mel filterbank for 22050 Hz as the original code did (its mel rows
    then describe wrongly labelled frequencies); the default uses the true rate. Only the
    melspectrogram entries differ between the two. `source` names the input in errors.
    Computed in float32, like librosa.load's output.
    """
    y = crop_or_pad(check_waveform(y, source), sr)
    harmonic, percussive = librosa.effects.hpss(y)
    mel_sr = QUIRK_MEL_SR if mel_sr_quirk else sr
    rows = np.vstack([m for part in (harmonic, percussive) for m in _part_rows(part, sr, mel_sr)])
    if rows.shape[0] != len(ROW_NAMES):
        raise AssertionError(f"{rows.shape[0]} feature rows, expected {len(ROW_NAMES)}")
    out = np.concatenate([rows.mean(axis=1), rows.var(axis=1), rows.max(axis=1)])
    out = out.astype(np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{source}: VM-NET features are not finite")
    return out


def vmnet_features_from_file(path: str | os.PathLike, mel_sr_quirk: bool = False) -> np.ndarray:
    """`vmnet_features` of the whole audio track of `path`, decoded mono at 12 kHz.

    Raises MediaError (a DataError) for a file that cannot be decoded.
    """
    y = decode_audio(path, SAMPLE_RATE)
    return vmnet_features(y, SAMPLE_RATE, mel_sr_quirk=mel_sr_quirk, source=str(path))
