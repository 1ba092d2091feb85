"""Which files of a folder are media, recognised by their content.

A file whose extension names a common media format is taken as media (decoding then reports
what is wrong with it, if anything); every other file is probed by FFmpeg (its header only,
about 1 ms), so a `.ts`, `.mpg`, `.3gp`, `.wma`, `.aiff` or extension-less recording is found
like an `.mp4`, and a file that is not media (a picture, subtitles, notes, features) is
listed with the reason it was left out instead of being ignored in silence. Hidden files and
folders (a name starting with '.', e.g. `.vmr-cache`) are not looked at.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from datamodules.errors import DataError
from datamodules.extract.probe import media_reason

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS


@dataclasses.dataclass
class MediaScan:
    files: list[Path]  # sorted
    not_media: list[tuple[str, str]]  # (file, "file: reason") of those left out


def scan_media(source: Path, need: str | None = None) -> MediaScan:
    """Media files under a folder (recursively, sorted), or the single file given.

    `need="video"` keeps files with a video stream (a song is then "not media" for this
    purpose); None keeps any file with audio or video.
    """
    source = Path(source)
    if source.is_file():
        return MediaScan([source], [])
    if not source.is_dir():
        raise DataError(f"{source}: no such file or folder")
    known = VIDEO_EXTENSIONS if need == "video" else MEDIA_EXTENSIONS
    files, left_out = [], []
    for p in sorted(source.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(source).parts):
            continue
        reason = None if p.suffix.lower() in known else media_reason(p, need)
        if reason is None:
            files.append(p)
        else:
            left_out.append((str(p), f"{p}: {reason}"))
    if not files:
        what = "video" if need == "video" else "audio or video"
        if not left_out:
            raise DataError(f"{source}: no media files (the folder holds no files)")
        raise DataError(f"{source}: no media files: none of its {len(left_out)} files holds "
                        f"{what} (e.g. {left_out[0][1]})")
    return MediaScan(files, left_out)
