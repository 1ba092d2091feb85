"""Decode video frames and audio samples from a media file, never silently short.

torchcodec decodes first; its result is checked against the duration the file's header
states for that stream, and a decode more than 2 % (and 50 ms) short, or one torchcodec
cannot do at all, is done again with the `ffmpeg` program (datamodules/extract/ffmpeg_cli.py).
If that is short too, the file fails with both lengths in its reason. Frame and sample times
count from the stream's own start. Every way a file can be unusable becomes a `MediaError`
naming the file and the reason (probe.py); no decoder exception escapes from here.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from torchcodec.decoders import AudioDecoder, VideoDecoder
from torchcodec.transforms import Resize

from datamodules.errors import DataError
from datamodules.extract.ffmpeg_cli import ffmpeg_audio, ffmpeg_frames, packet_count
from datamodules.extract.probe import (
    MediaError,
    MediaInfo,
    decoding,
    existing_file,
    probe,
    short_reason,
)

__all__ = ["MediaError", "MediaInfo", "probe", "frame_times", "decode_video_frames",
           "decode_audio", "check_waveform", "is_short"]

log = logging.getLogger("vmr")

SHORT_FRACTION = 0.02  # a decode this much shorter than the header's duration is short ...
SHORT_SECONDS = 0.05  # ... if also this many seconds short (a codec's end trimming is less)


def is_short(decoded: float, expected: float | None) -> bool:
    """True when `decoded` seconds fall short of `expected` by > 2 % and > 50 ms."""
    if not expected:
        return False
    return expected - decoded > max(SHORT_FRACTION * expected, SHORT_SECONDS)


def frame_times(stop: float, fps: float) -> list[float]:
    """t_k = k / fps for every k >= 0 with t_k < stop, and at least t_0 = 0."""
    n = max(1, math.ceil(stop * fps))
    while n > 1 and (n - 1) / fps >= stop:  # guard against ceil() of a rounding error
        n -= 1
    while n / fps < stop:
        n += 1
    return [k / fps for k in range(n)]


def _check_args(fps: float, max_seconds: float | None) -> None:
    if not fps > 0 or (max_seconds is not None and not max_seconds > 0):
        raise ValueError(f"fps and max_seconds must be positive, got {fps} and {max_seconds}")


def decode_video_frames(
    path: str | os.PathLike,
    fps: float = 1.0,
    max_seconds: float = 360.0,
    seek_mode: str = "exact",
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Frames played at start + k / fps, for k / fps < min(length, max_seconds): uint8
    [T, 3, H, W], where start is the stream's first time (not 0: an MPEG-TS starts at 1.4 s).

    A video with any frame gives at least one. The frames come from one batched call
    (`get_frames_played_at`). `seek_mode="exact"` (default) scans the file's packet index
    once, without decoding, so the length and frame times are the real ones even where a
    header is wrong or the frame rate varies; "approximate" trusts the header. On a 6-minute
    320x240 30-fps H.264 file both took 0.87 s for the 360 frames at 1 fps (2-core CPU).
    `size=(height, width)` has the decoder resize each frame (bilinear with antialiasing),
    so six minutes of HD video never sit in memory at full size (360 1080p frames: 2.2 GB).
    A stream torchcodec finds shorter than its header says, or cannot seek in, is decoded
    again by the ffmpeg program.
    """
    _check_args(fps, max_seconds)
    path = existing_file(path)
    info = probe(path)
    if not info.has_video:
        raise MediaError(path, "no video stream")
    if info.video_frames == 0:
        raise MediaError(path, "zero length (no video frames)")
    try:
        frames, span = _torchcodec_frames(path, info, fps, max_seconds, seek_mode, size)
    except MediaError as err:
        if err.reason.startswith("zero length") and not info.duration:
            raise
        return _recover_frames(path, info, fps, max_seconds, size, err.reason, None)
    if is_short(span, info.video_duration):
        return _recover_frames(path, info, fps, max_seconds, size, None, span)
    return frames


def _torchcodec_frames(path, info: MediaInfo, fps, max_seconds, seek_mode, size):
    """(frames, the stream's length in seconds as torchcodec found it)."""
    with decoding(path):
        decoder = VideoDecoder(str(path), stream_index=info.video_stream, seek_mode=seek_mode,
                               dimension_order="NCHW",
                               transforms=None if size is None else [Resize(tuple(size))])
    meta = decoder.metadata
    begin = meta.begin_stream_seconds or 0.0
    end = meta.end_stream_seconds
    if len(decoder) == 0 or end is None or not end > begin:
        raise MediaError(path, "zero length (no video frames)")
    span = end - begin
    if seek_mode == "approximate" and info.video_duration:
        # from the header only: Matroska's end counts from 0, not from a late start
        span = min(span, info.video_duration)
    times = [begin + t for t in frame_times(min(span, max_seconds), fps)]
    try:
        frames = decoder.get_frames_played_at(times).data
    except Exception as exc:  # noqa: BLE001 - the reason travels in the MediaError
        raise MediaError(path, f"cannot seek to the frames at {times[0]:.2f}-{times[-1]:.2f} s "
                         f"({short_reason(exc, path)})") from exc
    return frames.contiguous(), span


def _recover_frames(path, info: MediaInfo, fps, max_seconds, size, error, span) -> torch.Tensor:
    """The frames through the ffmpeg program, after torchcodec failed (`error`) or found
    only `span` seconds; MediaError naming both results if ffmpeg does no better."""
    length = info.video_duration or info.duration
    first = error or f"torchcodec found {span:.2f} s of the {length:.2f} s in the header"
    # Without a length in the header (a raw H.264 stream), as many frames as there are.
    expected = len(frame_times(min(length, max_seconds) if length else max_seconds, fps))
    hw = tuple(size) if size is not None else (info.height or 0, info.width or 0)
    if not all(hw):
        raise MediaError(path, first)
    try:
        pixels = ffmpeg_frames(path, info.video_stream, fps, expected, hw)
    except MediaError as err:
        pixels, first = None, f"{first}; {err.reason}"
    if pixels is None or len(pixels) == 0:
        if packet_count(path, info.video_stream) == 0:  # the real cause of either failure
            raise MediaError(path, "zero length (no video frames)")
        raise MediaError(path, f"{first}; the ffmpeg program decoded no frames either")
    if is_short(len(pixels) / fps, min(length, max_seconds) if length else None):
        raise MediaError(path, f"{first}; the ffmpeg program decoded {len(pixels)} of "
                         f"{expected} frames (damaged or truncated file?)")
    log.info("%s: %s; decoded with the ffmpeg program instead", path, first)
    return torch.from_numpy(pixels)


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

    The rate is converted by FFmpeg's swresample; channels are then averaged, as
    librosa.load(mono=True) does. (torchcodec's own `num_channels=1`, like `ffmpeg -ac 1`,
    mixes stereo as 0.707 L + 0.707 R: 3 dB louder than the mean, and beyond [-1, 1] for a
    loud correlated pair.) Samples count from the stream's start; `max_seconds` stops
    decoding there (the rest of the file is not read). As with the ffmpeg CLI, a lossy
    codec's end padding is kept: an AAC track may end with up to one codec frame (1024
    source samples) more than its nominal duration. A decode shorter than the header's
    duration is done again by the ffmpeg program (see the module's docstring).
    """
    if not (isinstance(sample_rate, int) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    _check_args(1.0, max_seconds)
    path = existing_file(path)
    info = probe(path)
    if not info.has_audio:
        raise MediaError(path, "no audio stream")
    length = info.audio_duration or info.duration
    expected = min(length, max_seconds) if max_seconds is not None else length
    first = None
    try:
        data = _torchcodec_samples(path, info, sample_rate, max_seconds)
        got = data.shape[1] / sample_rate
        if is_short(got, expected):
            first = f"torchcodec decoded {got:.2f} s of the {expected:.2f} s in the header"
    except MediaError as err:
        first = err.reason
    if first is not None:
        data = _recover_samples(path, info, sample_rate, max_seconds, first, expected)
    if data.shape[1] == 0:
        raise MediaError(path, "zero length (no audio samples)")
    # numpy, not torch: torch's threaded reduction stalled 2x on a busy 2-core machine.
    y = (data[0] if data.shape[0] == 1 else data.mean(axis=0)).astype(np.float32, copy=False)
    if not np.isfinite(y).all():
        raise MediaError(path, "cannot decode (the decoder returned NaN or infinite samples)")
    return y


def _torchcodec_samples(path, info: MediaInfo, sample_rate, max_seconds) -> np.ndarray:
    with decoding(path):
        decoder = AudioDecoder(str(path), stream_index=info.audio_stream,
                               sample_rate=sample_rate)
    begin = decoder.metadata.begin_stream_seconds or 0.0
    stop = None if max_seconds is None else begin + max_seconds
    try:
        samples = decoder.get_samples_played_in_range(begin, stop)
    except Exception as exc:  # noqa: BLE001 - the reason travels in the MediaError
        if "No audio frames were decoded" in str(exc):
            raise MediaError(path, f"zero length (no audio samples from {begin:.2f} s)") from exc
        raise MediaError(path, f"cannot decode ({short_reason(exc, path)})") from exc
    return samples.data.numpy()


def _recover_samples(path, info: MediaInfo, sample_rate, max_seconds, first, expected):
    """[C, N] samples from the ffmpeg program; MediaError naming both results if short."""
    try:
        data = ffmpeg_audio(path, info.audio_stream, sample_rate, info.num_channels or 1,
                            max_seconds)
    except MediaError as err:
        raise MediaError(path, f"{first}; {err.reason}") from err
    got = data.shape[1] / sample_rate
    if data.shape[1] == 0 and first.startswith("zero length"):
        raise MediaError(path, first)
    if is_short(got, expected):
        raise MediaError(path, f"{first}; the ffmpeg program decoded {got:.2f} s (damaged or "
                         "truncated file?)")
    log.info("%s: %s; decoded with the ffmpeg program instead", path, first)
    return data
