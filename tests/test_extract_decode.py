"""datamodules.extract.decode: frames at 1 fps, audio at a given rate, one clear MediaError.

Fixtures are tiny files made with the ffmpeg CLI (tests/media.py) once per module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from media import (
    debian_sound,
    make_audio,
    make_color_steps,
    make_corrupt,
    make_empty,
    make_video,
    make_zero_length_audio,
    make_zero_length_video,
)

from datamodules.errors import DataError
from datamodules.extract.decode import (
    MediaError,
    check_waveform,
    decode_audio,
    decode_video_frames,
    frame_times,
    probe,
)

TONE_HZ = 440.0
AAC_FRAME = 1024  # samples at the source rate: AAC end padding is at most one frame


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {
        "av": make_video(d / "av.mp4", seconds=3.0, tone_hz=TONE_HZ),
        "red": make_video(d / "red.mp4", seconds=2.0, color="red", audio=False),
        "blue": make_video(d / "blue.mp4", seconds=2.0, color="blue", audio=False),
        "steps": make_color_steps(d / "steps.mp4", ("red", "lime", "blue")),
        "video_only": make_video(d / "video_only.mp4", audio=False),
        "audio_only": make_video(d / "audio_only.m4a", video=False),
        "wav": make_audio(d / "tone.wav", seconds=2.0, tone_hz=1000.0, sample_rate=22050),
        "empty": make_empty(d / "empty.mp4"),
        "corrupt": make_corrupt(d / "corrupt.mp4"),
        "no_frames": make_zero_length_video(d / "no_frames.avi"),
        "no_samples": make_zero_length_audio(d / "no_samples.wav"),
    }


def dominant_hz(y: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1 / sr)[np.argmax(spectrum)])


# ----- probe and frame times -----------------------------------------------------------------


def test_probe_reads_streams_and_duration(media):
    info = probe(media["av"])
    assert info.has_video and info.has_audio
    assert info.duration == pytest.approx(3.0, abs=0.05)
    assert (info.width, info.height, info.fps, info.video_frames) == (64, 48, 10, 30)
    assert (info.sample_rate, info.num_channels) == (44100, 1)
    audio_only = probe(media["audio_only"])
    assert (audio_only.has_video, audio_only.has_audio) == (False, True)
    assert audio_only.width is None


def test_frame_times():
    assert frame_times(3.0, 1.0) == [0.0, 1.0, 2.0]
    assert frame_times(3.01, 1.0) == [0.0, 1.0, 2.0, 3.0]
    assert frame_times(0.2, 1.0) == [0.0]  # at least one frame
    assert frame_times(1.0, 3.0) == [0.0, 1 / 3, 2 / 3]  # 3 * (1/3) is not < 1
    assert len(frame_times(360.0, 1.0)) == 360


# ----- video --------------------------------------------------------------------------------


def test_one_frame_per_second(media):
    frames = decode_video_frames(media["av"])
    assert frames.shape == (3, 3, 48, 64) and frames.dtype == torch.uint8
    assert decode_video_frames(media["av"], max_seconds=2.0).shape[0] == 2
    assert decode_video_frames(media["av"], fps=2.0).shape[0] == 6
    assert decode_video_frames(media["av"], fps=0.5).shape[0] == 2  # t = 0, 2
    approx = decode_video_frames(media["av"], seek_mode="approximate")
    assert torch.equal(approx, frames)


@pytest.mark.parametrize(("name", "rgb"), [("red", (255, 0, 0)), ("blue", (0, 0, 255))])
def test_colour_video_decodes_to_its_colour(media, name, rgb):
    frames = decode_video_frames(media[name])
    assert frames.shape == (2, 3, 48, 64)
    mean = frames.float().mean(dim=(0, 2, 3))
    # H.264 stores YUV 4:2:0 with limited range: a pure colour comes back within a few levels.
    assert torch.allclose(mean, torch.tensor(rgb, dtype=torch.float32), atol=6)
    assert frames.float().std(dim=(2, 3)).max() < 3  # flat picture


def test_decoder_resizes_when_asked(media):
    frames = decode_video_frames(media["red"], size=(24, 32))
    assert frames.shape == (2, 3, 24, 32) and frames.dtype == torch.uint8
    assert torch.allclose(frames.float().mean(dim=(0, 2, 3)), torch.tensor([255.0, 0, 0]), atol=6)


def test_frames_are_taken_at_their_timestamps(media):
    colours = torch.tensor([(255, 0, 0), (0, 255, 0), (0, 0, 255)], dtype=torch.float32)

    def nearest(frames: torch.Tensor) -> list[int]:
        means = frames.float().mean(dim=(2, 3))
        return torch.cdist(means, colours).argmin(dim=1).tolist()

    assert nearest(decode_video_frames(media["steps"])) == [0, 1, 2]
    assert nearest(decode_video_frames(media["steps"], fps=2.0)) == [0, 0, 1, 1, 2, 2]
    assert nearest(decode_video_frames(media["steps"], fps=1.0, max_seconds=1.5)) == [0, 1]


# ----- audio --------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 12000, 44100])
def test_audio_length_and_tone(media, rate):
    y = decode_audio(media["av"], rate)
    assert y.dtype == np.float32 and y.ndim == 1
    # 3 s of samples; the AAC track may carry up to one codec frame of end padding.
    assert 3.0 * rate - 2 <= len(y) <= 3.0 * rate + AAC_FRAME * rate / 44100 + 2
    assert dominant_hz(y[: 3 * rate], rate) == pytest.approx(TONE_HZ, abs=1.0)
    assert np.abs(y).max() <= 1.0


def test_audio_from_wav_is_sample_exact(media):
    y = decode_audio(media["wav"], 8000)
    assert abs(len(y) - 16000) <= 1
    assert dominant_hz(y, 8000) == pytest.approx(1000.0, abs=1.0)
    assert abs(len(decode_audio(media["wav"], 8000, max_seconds=0.5)) - 4000) <= 1
    assert abs(len(decode_audio(media["audio_only"], 16000, max_seconds=1.0)) - 16000) <= 1


def test_stereo_is_averaged_like_librosa():
    # torchcodec's num_channels=1 (FFmpeg's default matrix) gives 0.707 (L + R); we average.
    path = debian_sound("phone-incoming-call.oga")  # stereo, 44.1 kHz
    stereo, sr = soundfile.read(path, dtype="float32", always_2d=True)
    assert stereo.shape[1] == 2 and sr == 44100
    y = decode_audio(path, sr)  # no rate change: only decoding and the downmix
    assert len(y) == len(stereo)
    np.testing.assert_allclose(y, stereo.mean(axis=1), atol=1e-5)


def test_check_waveform():
    assert check_waveform(torch.ones(5, dtype=torch.float64)).dtype == np.float32
    for bad, why in [(np.zeros(0), "empty"), (np.array([0.0, np.nan]), "NaN"),
                     (np.array([np.inf]), "NaN or infinite"), (np.zeros((2, 3)), "mono")]:
        with pytest.raises(DataError, match=why):
            check_waveform(bad, "clip.wav")


# ----- failures -----------------------------------------------------------------------------


def _raises(call, path: Path, reason: str) -> MediaError:
    with pytest.raises(MediaError) as info:
        call(path)
    err = info.value
    assert isinstance(err, DataError)
    assert str(err).startswith(f"{path}: ") and reason in str(err)
    assert "\n" not in str(err)
    return err


ALL_CALLS = {
    "probe": probe,
    "video": decode_video_frames,
    "audio": lambda p: decode_audio(p, 16000),
}


@pytest.mark.parametrize("call", ALL_CALLS.values(), ids=ALL_CALLS.keys())
def test_missing_empty_and_corrupt_files(media, tmp_path, call):
    _raises(call, tmp_path / "nope.mp4", "file not found")
    _raises(call, media["empty"], "empty file (0 bytes)")
    err = _raises(call, media["corrupt"], "cannot decode (")
    assert ".cpp" not in str(err) and "report an issue" not in str(err)


def test_missing_streams(media):
    _raises(lambda p: decode_audio(p, 16000), media["video_only"], "no audio stream")
    _raises(decode_video_frames, media["audio_only"], "no video stream")
    _raises(decode_video_frames, media["wav"], "no video stream")


def test_zero_length_streams(media):
    _raises(decode_video_frames, media["no_frames"], "zero length")
    _raises(lambda p: decode_audio(p, 16000), media["no_samples"], "zero length")


def test_a_seek_failure_is_named_as_one():
    from datamodules.extract.probe import decoding

    where = Path("clip.mpg")
    with pytest.raises(MediaError) as info:
        with decoding(where):
            raise RuntimeError("scanFileAndUpdateMetadataAndIndex, /x/SingleStreamDecoder.cpp:357,"
                               " Could not seek file to pts=0: Operation not permitted")
    assert str(info.value) == ("clip.mpg: cannot seek (Could not seek file to pts=0: Operation "
                               "not permitted)")
