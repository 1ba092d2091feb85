"""What a media file holds, read from its header without decoding: streams, start, duration.

The one place that opens headers, so that every way a file can be unusable (missing, empty,
not media, corrupt, lacking the stream asked for) becomes a `MediaError` naming the file and
the reason. Files are recognised by their content (FFmpeg's format probing, as the `ffmpeg`
command does), never by their extension: a file named `clip.dat` that holds H.264 is a video,
and a `cover.jpg` is a still picture, not a video.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

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
    file lacks that stream or the header does not say. `*_start` is the time (s) at which a
    stream's first packet plays: frame and sample times count from there, since many files
    (MPEG-TS: 1.4 s, recordings cut from a broadcast: hours) do not start at 0.
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
    video_start: float = 0.0
    audio_start: float = 0.0
    video_duration: float | None = None  # the stream's own, else None
    audio_duration: float | None = None
    video_stream: int | None = None  # index in the file
    audio_stream: int | None = None


_CPP_PREFIX = re.compile(r"^.*?\.cpp:\d+,\s*")
_MAX_REASON = 160


def short_reason(exc: BaseException | str, path: Path) -> str:
    """A decoder's message without its C++ source location, the path or the bug-report text."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = _CPP_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
    text = text.replace(f"{path} ", "").replace(str(path), "").strip(" :,")
    text = re.sub(r"\s+", " ", text) or type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


@contextlib.contextmanager
def decoding(path: Path, reason: str | None = None) -> Iterator[None]:
    """Turn any decoder exception into MediaError: `reason` if given, else "cannot decode"."""
    try:
        yield
    except MediaError:
        raise
    except Exception as exc:  # torchcodec raises RuntimeError, ValueError, IndexError
        # A seek failure (e.g. a raw H.264 stream without timestamps) is named as such.
        what = "cannot seek" if "seek" in str(exc).lower() else "cannot decode"
        raise MediaError(path, reason or f"{what} ({short_reason(exc, path)})") from exc


def existing_file(path: str | os.PathLike) -> Path:
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

    with decoding(path, None):
        try:
            return get_container_metadata_from_header(str(path))
        except Exception as exc:
            if "Could not open input file" in str(exc):  # no format FFmpeg knows fits it
                raise MediaError(path, "cannot decode (not in any audio or video format FFmpeg "
                                 f"reads: {short_reason(exc, path).split(': ', 1)[-1]})") from exc
            raise


def _best(meta, index: int | None):
    return None if index is None else meta.streams[index]


def probe(path: str | os.PathLike) -> MediaInfo:
    """Streams, starts and duration of `path` from its header (fast: nothing is decoded)."""
    path = existing_file(path)
    meta = _header(path)
    video = _best(meta, meta.best_video_stream_index)
    audio = _best(meta, meta.best_audio_stream_index)
    if video is not None and is_still_picture(path, video):
        video = None
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
        video_start=float(getattr(video, "begin_stream_seconds_from_header", None) or 0.0),
        audio_start=float(getattr(audio, "begin_stream_seconds_from_header", None) or 0.0),
        video_duration=_stream_length(video, duration),
        audio_duration=_stream_length(audio, duration),
        video_stream=getattr(video, "stream_index", None),
        audio_stream=getattr(audio, "stream_index", None),
    )


def _stream_length(stream, container: float) -> float | None:
    """The stream's duration from its header, else the container's end minus the stream's
    start (Matroska states only the end: 1005.3 s for 5.3 s that start at 1000 s)."""
    if stream is None:
        return None
    if stream.duration_seconds_from_header:
        return float(stream.duration_seconds_from_header)
    start = stream.begin_stream_seconds_from_header or 0.0
    return container - start if container > start else None


# Codecs of single pictures: a stream of one is a photo or an album cover, not a video
# (motion JPEG in an AVI is a real video, told apart by its packet count).
_PICTURE_CODECS = {"mjpeg", "png", "bmp", "tiff", "webp", "jpeg2000", "jpegls", "gif", "qoi"}


def is_still_picture(path: Path, video) -> bool:
    """True for an image file or an audio file's cover art (attached picture, one frame)."""
    if video.codec not in _PICTURE_CODECS:
        return False
    exe = shutil.which("ffprobe")
    if exe is None:  # without ffprobe, trust the header: one frame or no duration is a picture
        return (video.num_frames_from_header or 0) <= 1
    cmd = [exe, "-v", "error", "-select_streams", f"{video.stream_index}", "-count_packets",
           "-show_entries", "stream=nb_read_packets:stream_disposition=attached_pic",
           "-of", "default=nw=1", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    packets = int(fields.get("nb_read_packets", "0") or 0)
    return fields.get("DISPOSITION:attached_pic") == "1" or packets <= 1


def media_reason(path: Path, need: str | None = None) -> str | None:
    """None if `path` is media with the stream `need` ("video", "audio" or None: either),
    else why not (for a folder listing's skipped files)."""
    try:
        info = probe(path)
    except MediaError as err:
        return err.reason
    if need == "video" and not info.has_video:
        return "no video stream" + (" (audio only)" if info.has_audio else "")
    if not (info.has_video or info.has_audio):
        return "no audio or video stream (e.g. a still picture, subtitles or data only)"
    return None
