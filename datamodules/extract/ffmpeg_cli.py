"""The second decoding path: the `ffmpeg` command line, piping raw samples or pixels.

torchcodec (FFmpeg's libraries driven frame by frame) loses audio in some real files: e.g.
Microsoft ADPCM in WAV (pygame's `secosmic_lo.wav`: 0.23 s of 3.31 s) packs many codec
frames into one packet and only the first carries a timestamp; torchcodec keeps only frames
with one. The `ffmpeg` program decodes such streams whole, so decode.py falls back to it
when torchcodec's result is shorter than the container says. Output times count from the
stream's own start, like the first path.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from datamodules.extract.probe import MediaError

_TIMEOUT_S = 600


def _ffmpeg(path: Path) -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise MediaError(path, "the ffmpeg program is not installed (needed to decode this "
                         "file: apt-get install ffmpeg)")
    return exe


def _run(path: Path, args: list[str]) -> bytes:
    cmd = [_ffmpeg(path), "-nostdin", "-hide_banner", "-loglevel", "error", *args]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(path, f"ffmpeg did not finish within {_TIMEOUT_S} s") from exc
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        why = lines[-1].replace(str(path), "").strip(" :") if lines else "no message"
        raise MediaError(path, f"cannot decode (ffmpeg: {why[:160]})")
    return done.stdout


def packet_count(path: Path, stream: int) -> int | None:
    """Packets of stream `stream` (read, not decoded), or None when ffprobe cannot say."""
    exe = shutil.which("ffprobe")
    if exe is None:
        return None
    cmd = [exe, "-v", "error", "-select_streams", str(stream), "-count_packets",
           "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    value = done.stdout.strip()
    if done.returncode != 0 or not value:
        return None
    return 0 if value == "N/A" else int(value)  # ffprobe writes N/A for none counted


def ffmpeg_audio(path: Path, stream: int, sample_rate: int, channels: int,
                 max_seconds: float | None = None) -> np.ndarray:
    """Stream `stream` (file index) as float32 [channels, N] at `sample_rate` Hz."""
    limit = ["-t", f"{max_seconds:.6f}"] if max_seconds is not None else []
    raw = _run(path, ["-i", str(path), "-map", f"0:{stream}", *limit, "-f", "f32le",
                      "-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(sample_rate),
                      "-"])
    data = np.frombuffer(raw, dtype="<f4")
    n = len(data) // channels
    return data[: n * channels].reshape(n, channels).T.astype(np.float32)


def ffmpeg_frames(path: Path, stream: int, fps: float, count: int,
                  size: tuple[int, int]) -> np.ndarray:
    """`count` frames of stream `stream` at `fps` from its start, uint8 [count, 3, H, W].

    With `round=up` a frame at time p is placed at tick ceil(p * fps), so the fps filter
    gives at each tick t the last frame with p <= t: the frame on screen at t, as torchcodec's
    `get_frames_played_at` does (measured on the corpus: within 2 grey levels of it, the
    difference being the resize filter). `size=(height, width)`. A stream that ends early
    gives fewer frames (the caller checks).
    """
    h, w = size
    vf = f"fps=fps={fps}:round=up,scale={w}:{h}:flags=bilinear"
    raw = _run(path, ["-i", str(path), "-map", f"0:{stream}", "-vf", vf,
                      "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
    frame = h * w * 3
    n = len(raw) // frame
    pixels = np.frombuffer(raw[: n * frame], dtype=np.uint8).reshape(n, h, w, 3)
    return np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
