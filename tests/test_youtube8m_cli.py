"""YouTube-8M through the `vmr` command: bad input exits 2 with one line; II-CLVTM learns."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_app.cli import main


@pytest.fixture(scope="module")
def y8m_source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("y8m") / "src"
    assert main(["synth", "--dataset", "youtube8m", "--out", str(out), "--pairs", "300",
                 "--val", "40", "--test", "40", "--frames", "8", "--shards", "2"]) == 0
    return out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_prepare_unknown_label_name(y8m_source, tmp_path, capsys):
    store = tmp_path / "store"
    code = main(["prepare", "--dataset", "youtube8m", "--src", str(y8m_source),
                 "--out", str(store), "--labels", "Musik video"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "Musik video" in line and "vocabulary.csv" in line
    assert not store.exists()


def test_prepare_corrupt_tfrecord_names_file_and_offset(y8m_source, tmp_path, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(y8m_source, src)
    shard = sorted((src / "frame").glob("train*.tfrecord"))[0]
    data = bytearray(shard.read_bytes())
    data[200] ^= 0xFF  # inside the first record's payload
    shard.write_bytes(bytes(data))
    code = main(["prepare", "--dataset", "youtube8m", "--src", str(src), "--out",
                 str(tmp_path / "store"), "--workers", "0"])
    assert code == 2
    line = _one_error_line(capsys)
    assert shard.name in line and "byte offset 0" in line
    assert not (tmp_path / "store").exists()
    assert not list(tmp_path.glob(".store*"))


def test_prepare_truncated_tfrecord(y8m_source, tmp_path, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(y8m_source, src)
    shard = sorted((src / "frame").glob("validate*.tfrecord"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    assert main(["prepare", "--dataset", "youtube8m", "--src", str(src)]) == 2
    line = _one_error_line(capsys)
    assert shard.name in line and "truncated" in line


def test_iiclvtm_learns_from_video_and_text(y8m_source, tmp_path):
    from lightning_app.config import load_config
    from lightning_app.train import train

    root = tmp_path / "text_src"
    assert main(["synth", "--dataset", "youtube8m", "--out", str(root), "--pairs", "900",
                 "--val", "100", "--test", "100", "--frames", "8", "--text"]) == 0
    cfg = load_config("iiclvtm_synthetic", [
        f"data.root={root}", "data.synthetic.enabled=false", f"run_dir={tmp_path / 'runs'}",
        "data.batch_size=100", "data.eval_batch_size=100", "data.frames=8",
        "trainer.max_epochs=4", "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled",
        "optim.warmup_steps=0",
    ])
    metrics, _ = train(cfg)
    assert metrics["test/gallery_size"] == 100
    # Chance R@10 on 100 items is 10 %.
    assert metrics["test/v2m/R@10"] >= 0.5 and metrics["test/m2v/R@10"] >= 0.5, metrics
    assert "test/loss" in metrics
