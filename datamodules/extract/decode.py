"""Decode video frames and audio samples from a media file with torchcodec.

The one place that talks to the decoder, so that every way a file can be unusable (missing,
empty, corrupt, lacking the stream asked for, holding no frames) becomes a `MediaError`
naming the file and the reason: a batch job then lists the file and carries on, and the CLI
prints one line. No exception of torchcodec's escapes from here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torchcodec.decoders import AudioDecoder, VideoDecoder
from torchcodec.transforms import Resize

from datamodules.errors import DataError


class MediaError(DataError):
    """A media file that cannot be used; the message is "PATH: reason"."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class MediaInfo:
    """What a file's header says, read without decoding anything.

    `duration` is the container's duration, else the longest stream's, else 0.0 (a header
    that states none, e.g. a stream without frames); the per-stream fields are None when the
    file lacks that stream or the header does not say.
    """

    path: str
    has_video: bool
    has_audio: bool
    duration: float
    video_frames: int | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    video_codec: str | None = None
    sample_rate: int | None = None
    num_channels: int | None = None
    audio_codec: str | None = None


_CPP_PREFIX = re.compile(r"^.*?\.cpp:\d+,\s*")
_MAX_REASON = 160


def _short(exc: BaseException, path: Path) -> str:
    """torchcodec's message without its C++ source location, the path or the bug-report text."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = _CPP_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    text = text.replace(f"{path} ", "").replace(str(path), "").strip(" :,")
    text = re.sub(r"\s+", " ", text) or type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


@contextlib.contextmanager
def _decoding(path: Path, reason: str | None = None) -> Iterator[None]:
    """Turn any decoder exception into MediaError: `reason` if given, else "cannot decode"."""
    try:
        yield
    except MediaError:
        raise
    except Exception as exc:  # torchcodec raises RuntimeError, ValueError, IndexError
        raise MediaError(path, reason or f"cannot decode ({_short(exc, path)})") from exc


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file not found")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    return path


def _header(path: Path):
    # torchcodec's public decoders open one stream and fail when it is absent; the header
    # reader (torchcodec._core, pinned <0.12 in pyproject.toml) lists every stream without
    # decoding, which is what tells "no audio stream" apart from "cannot decode".
    from torchcodec._core import get_container_metadata_from_header

    with _decoding(path):
        return get_container_metadata_from_header(str(path))


def _best(meta, index: int | None):
    return None if index is None else meta.streams[index]


def probe(path: str | os.PathLike) -> MediaInfo:
    """Streams and duration of `path` from its header (fast: nothing is decoded)."""
    path = _existing_file(path)
    meta = _header(path)
    video = _best(meta, meta.best_video_stream_index)
    audio = _best(meta, meta.best_audio_stream_index)
    streams = [s.duration_seconds_from_header or 0.0 for s in meta.streams]
    duration = meta.duration_seconds_from_header or max(streams, default=0.0)
    return MediaInfo(
        path=str(path),
        has_video=video is not None,
        has_audio=audio is not None,
        duration=float(duration),
        video_frames=getattr(video, "num_frames_from_header", None),
        fps=getattr(video, "average_fps_from_header", None),
        width=getattr(video, "width", None),
        height=getattr(video, "height", None),
        video_codec=getattr(video, "codec", None),
        sample_rate=getattr(audio, "sample_rate", None),
        num_channels=getattr(audio, "num_channels", None),
        audio_codec=getattr(audio, "codec", None),
    )


def frame_times(stop: float, fps: float) -> list[float]:
    """t_k = k / fps for every k >= 0 with t_k < stop, and at least t_0 = 0."""
    n = max(1, math.ceil(stop * fps))
    while n > 1 and (n - 1) / fps >= stop:  # guard against ceil() of a rounding error
        n -= 1
    while n / fps < stop:
        n += 1
    return [k / fps for k in range(n)]


def decode_video_frames(
    path: str | os.PathLike,
    fps: float = 1.0,
    max_seconds: float = 360.0,
    seek_mode: str = "exact",
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Frames played at t_k = k / fps, for t_k < min(duration, max_seconds): uint8 [T, 3, H, W].

    A video with any frame gives at least one. The frames come from one batched call
    (`get_frames_played_at`). `seek_mode="exact"` (default) scans the file's packet index
    once, without decoding, so the duration and frame times are the real ones even where a
    header is wrong or the frame rate varies; "approximate" trusts the header and skips the
    scan. The scan is cheap next to decoding: on a 6-minute 320x240 30-fps H.264 file both
    modes took 0.87 s for the 360 frames at 1 fps (2-core CPU). `size=(height, width)` has
    the decoder resize each frame (bilinear with antialiasing, like torchvision's Resize),
    so six minutes of HD video never sit in memory at full size (360 1080p frames: 2.2 GB).
    """
    if not fps > 0 or not max_seconds > 0:
        raise ValueError(f"fps and max_seconds must be positive, got {fps} and {max_seconds}")
    path = _existing_file(path)
    info = probe(path)
    if not info.has_video:
        raise MediaError(path, "no video stream")
    if info.video_frames == 0:
        raise MediaError(path, "zero length (no video frames)")
    # A stream the header gives neither duration nor frames and that cannot be opened is a
    # stream without frames (e.g. an AVI header with no packets), not a corrupt file.
    empty = "zero length (no video frames)" if not (info.duration or info.video_frames) else None
    with _decoding(path, empty):
        decoder = VideoDecoder(str(path), seek_mode=seek_mode, dimension_order="NCHW",
                               transforms=None if size is None else [Resize(tuple(size))])
    meta = decoder.metadata
    begin = meta.begin_stream_seconds or 0.0
    end = meta.end_stream_seconds
    if len(decoder) == 0 or end is None or not end > begin:
        raise MediaError(path, "zero length (no video frames)")
    # A stream starting after 0 s shows its first frame at those earlier times.
    times = [max(t, begin) for t in frame_times(min(end, max_seconds), fps)]
    with _decoding(path):
        frames = decoder.get_frames_played_at(times).data
    return frames.contiguous()


def check_waveform(y: np.ndarray | torch.Tensor, source: str = "waveform") -> np.ndarray:
    """`y` as a float32 1-D numpy array; DataError naming `source` if empty or not finite."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise DataError(f"{source}: expected a mono waveform [samples], got shape {y.shape}")
    if y.size == 0:
        raise DataError(f"{source}: empty waveform (no samples)")
    if not np.isfinite(y).all():
        raise DataError(f"{source}: waveform holds NaN or infinite samples")
    return y


def decode_audio(
    path: str | os.PathLike, sample_rate: int, max_seconds: float | None = None
) -> np.ndarray:
    """The file's audio as float32 mono [N] (nominally in [-1, 1]) at `sample_rate` Hz.

    The rate is converted by torchcodec (FFmpeg's swresample); channels are then averaged,
    as librosa.load(mono=True) does. (torchcodec's own `num_channels=1`, like `ffmpeg -ac 1`,
    mixes stereo as 0.707 L + 0.707 R: 3 dB louder than the mean, and beyond [-1, 1] for a
    loud correlated pair.) `max_seconds` stops decoding there (the rest of the file is not
    read). As with the ffmpeg CLI, a lossy codec's end padding is kept: an AAC track may
    end with up to one codec frame (1024 source samples) more than its nominal duration.
    """
    if not (isinstance(sample_rate, int) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive or None, got {max_seconds}")
    path = _existing_file(path)
    info = probe(path)
    if not info.has_audio:
        raise MediaError(path, "no audio stream")
    with _decoding(path):
        decoder = AudioDecoder(str(path), sample_rate=sample_rate)
    try:
        samples = decoder.get_samples_played_in_range(0.0, max_seconds)
    except Exception as exc:
        if "No audio frames were decoded" in str(exc):
            raise MediaError(path, "zero length (no audio samples)") from exc
        raise MediaError(path, f"cannot decode ({_short(exc, path)})") from exc
    if samples.data.numel() == 0:
        raise MediaError(path, "zero length (no audio samples)")
    data = samples.data.numpy()
    # numpy, not torch: torch's threaded reduction stalled 2x on a busy 2-core machine.
    y = (data[0] if data.shape[0] == 1 else data.mean(axis=0)).astype(np.float32, copy=False)
    if not np.isfinite(y).all():
        raise MediaError(path, "cannot decode (the decoder returned NaN or infinite samples)")
    return y
