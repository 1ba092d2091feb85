"""`vmr extract --shard K/N`, `vmr extract-merge`, `vmr extract-slurm`: N shards together
write exactly the files of one unsharded run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from media import make_audio, make_video
from tiny_models import save_tiny_clip

from datamodules.extract.shards import shard_of
from lightning_app.cli import main

NAMES = [f"song_{i}" for i in range(5)]


@pytest.fixture(scope="module")
def music(tmp_path_factory):
    d = tmp_path_factory.mktemp("music")
    for i, name in enumerate(NAMES):
        make_audio(d / f"{name}.wav", seconds=0.6 + 0.3 * i, tone_hz=200 + 90 * i)
    return d


def _extract(src, out, *extra):
    return main(["extract", "audio", "--input", str(src), "--out", str(out), "--features",
                 "logmel", "--workers", "0", "--device", "cpu", *extra])


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.npy"))}


def test_shards_together_equal_one_run_and_merge(music, tmp_path, capsys):
    assert _extract(music, tmp_path / "one") == 0
    out = tmp_path / "sharded"
    for k in range(3):
        assert _extract(music, out, "--shard", f"{k}/3") == 0
        owned = {n for n in NAMES if shard_of(n, 3) == k}
        report = json.loads((out / f"extract-audio-report.shard-{k}-of-3.json").read_text())
        assert set(report["done"]) == owned
    one = _files(tmp_path / "one")
    assert len(one) == len(NAMES) and _files(out) == one  # same names, byte-identical
    capsys.readouterr()
    assert main(["extract-merge", str(out)]) == 0
    assert "audio logmel: 5 done, 0 skipped (output exists), 0 failed, 0 not media over 3 shards" \
        in capsys.readouterr().out
    merged = json.loads((out / "extract-audio-report.json").read_text())
    assert merged["done"] == sorted(NAMES) and merged["shards"] == 3
    # A re-run skips what its shard already wrote; the merge still covers every file.
    assert _extract(music, out, "--shard", "1/3") == 0
    assert "0 done" in capsys.readouterr().out
    assert main(["extract-merge", str(out)]) == 0
    merged = json.loads((out / "extract-audio-report.json").read_text())
    assert sorted(merged["done"] + merged["skipped"]) == sorted(NAMES)


def test_an_empty_shard_and_a_missing_report(music, tmp_path, capsys):
    empty = next(k for k in range(40) if all(shard_of(n, 40) != k for n in NAMES))
    assert _extract(music, tmp_path / "o", "--shard", f"{empty}/40") == 0
    assert "no file of" in capsys.readouterr().out
    assert main(["extract-merge", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmr: error: ") and "(39 of 40) missing" in err
    assert "\n" not in err


@pytest.mark.parametrize("bad", ["3", "a/b", "3/3", "0/0", "-1/2", "1/2/3"])
def test_bad_shard_values_give_one_line_and_exit_2(music, tmp_path, capsys, bad):
    assert _extract(music, tmp_path / "o", f"--shard={bad}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vmr: error: --shard") and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_clip_video_shards_equal_one_run(tmp_path, capsys):
    src = tmp_path / "videos"
    src.mkdir()
    for i, color in enumerate(("red", "green", "blue", "white")):
        make_video(src / f"v{i}.mp4", seconds=1.0 + i % 2, size=(48, 32), color=color)
    # A song and a text file are not media for video extraction: listed, never "failed".
    make_audio(src / "song.wav", seconds=0.5, tone_hz=300)
    (src / "notes.txt").write_text("not media")
    clip = save_tiny_clip(tmp_path / "clip")
    args = ["extract", "video", "--input", str(src), "--backbone", "clip_vit_b32",
            "--weights", str(clip), "--workers", "0", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    for k in range(2):
        assert main([*args, "--out", str(tmp_path / "two"), "--shard", f"{k}/2"]) == 0
    one = _files(tmp_path / "one")
    assert len(one) == 4 and _files(tmp_path / "two") == one
    assert main(["extract-merge", str(tmp_path / "two")]) == 0
    merged = json.loads((tmp_path / "two" / "extract-video-report.json").read_text())
    single = json.loads((tmp_path / "one" / "extract-video-report.json").read_text())
    assert merged["failed"] == single["failed"] == []
    listed = sorted(Path(f["file"]).name for f in merged["not_media"])
    assert listed == sorted(Path(f["file"]).name for f in single["not_media"])
    assert listed == ["notes.txt", "song.wav"]


def test_sharded_video_needs_one_projection_for_all_shards(music, tmp_path, capsys):
    assert main(["extract", "video", "--input", str(music), "--out", str(tmp_path / "v"),
                 "--backbone", "resnet50", "--weights", str(tmp_path / "w.pth"),
                 "--shard", "0/2"]) == 2
    assert "every shard must project with the same PCA" in capsys.readouterr().err


def test_slurm_dry_run_prints_an_array_script(music, tmp_path, capsys):
    out = tmp_path / "feats"
    assert main(["extract-slurm", "--shards", "4", "--gpus", "0", "--cpus", "2", "--dry-run",
                 "--", "audio", "--input", str(music), "--out", str(out), "--features",
                 "logmel"]) == 0
    text = capsys.readouterr().out
    assert "#SBATCH --array=0-3" in text and "#SBATCH --cpus-per-task=2" in text
    assert "--gres" not in text and "sweep-task" not in text and "@" not in text.split(
        "--signal")[0]
    assert f"vmr extract audio --input {music} --out {out} --features logmel" in text
    assert "--signal" not in text and f"cd {Path.cwd()}\n" in text  # relative paths hold
    assert '--shard "${SLURM_ARRAY_TASK_ID}/4"' in text
    script = next((out / "slurm").glob("extract-audio-*.sbatch"))
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert main(["extract-slurm", "--dry-run", "--", "audio", "--input", str(music), "--out",
                 str(out), "--shard", "0/2"]) == 2
    assert "leave --shard out" in capsys.readouterr().err
