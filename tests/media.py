"""Small media fixtures for the extraction tests, made with the ffmpeg CLI.

Not a test module: tests import it (`from media import make_video`). Every helper writes one
small file (a few seconds, tiny frames) and returns its path; a missing tool or fixture raises
loudly instead of skipping, so a broken environment fails the suite.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

DEBIAN_SOUNDS = Path("/usr/share/sounds/freedesktop/stereo")


def ffmpeg(*args: str) -> None:
    """Run `ffmpeg -y -loglevel error ARGS`; raise RuntimeError with its stderr on failure."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise RuntimeError("ffmpeg not found on PATH: install the Debian package ffmpeg")
    done = subprocess.run(
        [exe, "-nostdin", "-y", "-loglevel", "error", *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {done.stderr.strip()}")


def _sine(seconds: float, tone_hz: float, sample_rate: int) -> list[str]:
    spec = f"sine=frequency={tone_hz}:sample_rate={sample_rate}:duration={seconds}"
    return ["-f", "lavfi", "-i", spec]


def _picture(seconds: float, size: tuple[int, int], fps: float, color: str | None) -> list[str]:
    w, h = size
    if color is None:
        spec = f"testsrc2=size={w}x{h}:rate={fps}:duration={seconds}"
    else:
        spec = f"color=c={color}:size={w}x{h}:rate={fps}:duration={seconds}"
    return ["-f", "lavfi", "-i", spec]


_H264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"]


def make_video(
    path: str | Path,
    seconds: float = 3.0,
    size: tuple[int, int] = (64, 48),
    fps: float = 10,
    audio: bool = True,
    video: bool = True,
    tone_hz: float = 440.0,
    color: str | None = None,
    sample_rate: int = 44100,
) -> Path:
    """An H.264 + AAC file (mp4 by default, container from the extension).

    The picture is `testsrc2`, or a flat `color` (an ffmpeg colour name) when given; the sound
    is a sine of `tone_hz`. `video=False` gives an audio-only file (AAC only, e.g. .m4a),
    `audio=False` a video-only one.
    """
    if not (audio or video):
        raise ValueError("make_video needs audio or video")
    path = Path(path)
    inputs: list[str] = []
    codecs: list[str] = []
    if video:
        inputs += _picture(seconds, size, fps, color)
        codecs += _H264
    if audio:
        inputs += _sine(seconds, tone_hz, sample_rate)
        codecs += ["-c:a", "aac", "-b:a", "96k"]
    ffmpeg(*inputs, *codecs, "-t", str(seconds), str(path))
    return path


def make_color_steps(
    path: str | Path,
    colors: tuple[str, ...] = ("red", "lime", "blue"),
    seconds_each: float = 1.0,
    size: tuple[int, int] = (64, 48),
    fps: float = 10,
) -> Path:
    """A video-only H.264 mp4 showing each of `colors` for `seconds_each`, in order.

    Which colour a decoded frame shows tells the time it was taken from.
    """
    path = Path(path)
    inputs: list[str] = []
    for color in colors:
        inputs += _picture(seconds_each, size, fps, color)
    chain = "".join(f"[{i}:v]" for i in range(len(colors))) + f"concat=n={len(colors)}:v=1:a=0"
    ffmpeg(*inputs, "-filter_complex", chain, *_H264, str(path))
    return path


def make_audio(
    path: str | Path, seconds: float = 3.0, tone_hz: float = 440.0, sample_rate: int = 44100
) -> Path:
    """A mono sine of `tone_hz`; the codec follows the extension (.wav is 16-bit PCM)."""
    path = Path(path)
    ffmpeg(*_sine(seconds, tone_hz, sample_rate), "-ac", "1", str(path))
    return path


def make_empty(path: str | Path) -> Path:
    """A zero-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_corrupt(path: str | Path, size: int = 4096, seed: int = 0) -> Path:
    """`size` random bytes (seeded), e.g. named .mp4 to look like a video."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def make_zero_length_video(path: str | Path) -> Path:
    """A valid container with one H.264 video stream and no frames.

    Written as AVI whatever the extension says (use .avi): the mp4/mov and Matroska muxers
    drop a track that never received a packet (mp4) or write an unreadable file (mkv),
    while AVI keeps the stream header.
    """
    path = Path(path)
    ffmpeg(*_picture(1.0, (64, 48), 10, None), "-frames:v", "0", *_H264, "-f", "avi", str(path))
    return path


def make_zero_length_audio(path: str | Path) -> Path:
    """A valid WAV file (PCM header, one audio stream) holding no samples."""
    path = Path(path)
    ffmpeg(*_sine(1.0, 440.0, 44100), "-frames:a", "0", "-f", "wav", str(path))
    return path


def debian_sound(name: str = "audio-test-signal.oga") -> Path:
    """A real recorded sound shipped by Debian's sound-theme-freedesktop (Ogg Vorbis)."""
    path = DEBIAN_SOUNDS / name
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing: install the Debian package sound-theme-freedesktop "
            "(make system-deps)"
        )
    return path


def mp4_with_debian_sound(
    path: str | Path, name: str = "audio-test-signal.oga", seconds: float | None = None
) -> Path:
    """An mp4 with a small H.264 picture and the Debian sound `name` as AAC audio.

    `seconds` loops the sound to that length (trimmed); None keeps its own length. The
    picture lasts as long as the sound (`-shortest`).
    """
    path = Path(path)
    sound = debian_sound(name)
    loop = [] if seconds is None else ["-stream_loop", "-1"]
    trim = [] if seconds is None else ["-t", str(seconds)]
    ffmpeg(
        *loop, "-i", str(sound),
        "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10",
        "-map", "1:v", "-map", "0:a", *_H264, "-c:a", "aac", "-b:a", "128k",
        *trim, "-shortest", str(path),
    )  # fmt: skip
    return path
