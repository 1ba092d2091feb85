"""MGSV-EC through the CLI: bad releases exit 2 with one line naming the file or row and leave
no store behind; `vmr synth --dataset mgsv_ec` writes the release's files, which pack; each
method's experiment takes the 512-d frames and 768-d windows."""

from __future__ import annotations

import csv
import dataclasses
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mgsv_release import COLUMNS, small_splits, write_release

from datamodules.errors import DataError
from datamodules.mgsv_ec import find_feature_dir
from datamodules.synthetic.mgsv_ec import ensure_synthetic_mgsv_ec
from lightning_app.cli import main


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("mgsv") / "MGSV", small_splits(), seed=1)


@pytest.fixture
def rel(pristine, tmp_path):
    root = tmp_path / "MGSV"
    shutil.copytree(pristine.root, root)
    return dataclasses.replace(pristine, root=root, csv_dir=root / "dataset" / "MGSV-EC",
                               features=root / "features" / "Kuai_feature")


def _fails_with(capsys, root: Path, *needles: str) -> None:
    assert main(["prepare", "--dataset", "mgsv_ec", "--src", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], err[0]
    assert not (root / "store").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".store")]


def _rewrite_csv(path: Path, edit) -> None:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    fields = edit(rows) or COLUMNS
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_prepare_happy_path(rel, capsys):
    assert main(["prepare", "--dataset", "mgsv_ec", "--src", str(rel.root)]) == 0
    assert "packed mgsv_ec" in capsys.readouterr().out
    assert (rel.root / "store" / "meta.json").is_file()


@pytest.mark.parametrize("side,kind", [("video", "feature"), ("video", "mask"),
                                       ("music", "feature"), ("music", "mask")])
def test_missing_tensor_file_names_the_row_and_file(rel, capsys, side, kind):
    key = "123456789014" if side == "video" else "4+5555555555"
    path = rel.pt(side, kind, key)
    path.unlink()
    _fails_with(capsys, rel.root, "test_data.csv:4", str(path))


def test_damaged_file(rel, capsys):
    path = rel.pt("video", "feature", "123456789013")
    path.write_bytes(path.read_bytes()[:200])
    _fails_with(capsys, rel.root, str(path), "cannot load")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_code_is_refused(rel, capsys):
    path = rel.pt("music", "mask", "8+5xbbbbbbbbbbbbb")
    with open(path, "wb") as f:  # a plain pickle of an arbitrary object: weights_only refuses
        pickle.dump(shutil.copytree, f)
    _fails_with(capsys, rel.root, str(path), "cannot load")


def test_not_a_tensor(rel, capsys):
    path = rel.pt("video", "feature", "99000000002")
    torch.save({"x": torch.zeros(50, 512)}, path)
    _fails_with(capsys, rel.root, str(path), "holds a dict")


@pytest.mark.parametrize("what,tensor,needle", [
    ("feature", torch.zeros(50, 256), "expected (frames, 512)"),
    ("mask", torch.ones(49), "expected (50,)"),
    ("mask", torch.zeros(50), "no valid frame"),
])
def test_wrong_shapes_and_empty_masks(rel, capsys, what, tensor, needle):
    path = rel.pt("video", what, "113722188303")
    torch.save(tensor, path)
    _fails_with(capsys, rel.root, str(path), needle)


def test_nan_in_a_valid_row(rel, capsys):
    path = rel.pt("music", "feature", "7+1000000001")
    x = torch.load(path, weights_only=True)
    x[0, 3] = float("nan")
    torch.save(x, path)
    _fails_with(capsys, rel.root, str(path), "NaN")


def test_row_without_features(rel, capsys):
    def add(rows):
        rows.append(dict(rows[0], video_id="55555555555", music_id="4+404"))
    _rewrite_csv(rel.csv_dir / "val_data.csv", add)
    _fails_with(capsys, rel.root, "val_data.csv:5", "55555555555")


def test_video_id_written_as_float(rel, capsys):
    def as_float(rows):
        rows[1]["video_id"] = "1.23456789013e+11"
    _rewrite_csv(rel.csv_dir / "test_data.csv", as_float)
    _fails_with(capsys, rel.root, "test_data.csv:3", "1.23456789013e+11", "float")


def test_header_without_a_required_column(rel, capsys):
    _rewrite_csv(rel.csv_dir / "train_data.csv",
                 lambda rows: [c for c in COLUMNS if c != "music_end"])
    _fails_with(capsys, rel.root, "train_data.csv:1", "music_end")


def test_no_feature_folders(rel, capsys):
    shutil.rmtree(rel.root / "features")
    _fails_with(capsys, rel.root, "vit_feature1", "MGSV_feature.zip")


def test_two_feature_folders_are_ambiguous(rel):
    shutil.rmtree(rel.root / "dataset")  # not needed to find the features
    (rel.root / "a" / "b").mkdir(parents=True)
    shutil.copytree(rel.features, rel.root / "a" / "b" / "copy")
    shutil.move(rel.root / "features", rel.root / "a" / "features")
    with pytest.raises(DataError, match="several MGSV-EC feature folders"):
        find_feature_dir(rel.root)


def test_synth_writes_the_release_layout(tmp_path):
    out = tmp_path / "syn"
    assert main(["synth", "--dataset", "mgsv_ec", "--out", str(out), "--pairs", "100",
                 "--val", "10", "--test", "10"]) == 0
    csv_dir = out / "dataset" / "MGSV-EC"
    rows = {s: list(csv.DictReader(open(csv_dir / f"{s}_data.csv", newline="")))
            for s in ("train", "val", "test")}
    assert open(csv_dir / "test_data.csv").readline().strip() == ",".join(COLUMNS)
    assert all(r["video_id"].isdigit() and len(r["video_id"]) == 12
               for rs in rows.values() for r in rs)
    assert len({r["music_id"] for r in rows["train"]}) <= len(rows["train"]) // 5
    for s in ("val", "test"):
        assert len({r["music_id"] for r in rows[s]}) == len(rows[s]) == 10
    feats = out / "features" / "Kuai_feature"
    pads = []
    for r in rows["test"][:3]:
        x = torch.load(feats / "vit_feature1/vit_feature" / f"{r['video_id']}.pt",
                       weights_only=True)
        mask = torch.load(feats / "vit_feature1/vit_mask" / f"{r['video_id']}.pt",
                          weights_only=True)
        m = torch.load(feats / "ast_feature2p5/ast_feature" / f"{r['music_id']}.pt",
                       weights_only=True)
        m_mask = torch.load(feats / "ast_feature2p5/ast_mask" / f"{r['music_id']}.pt",
                            weights_only=True)
        assert (x.shape, x.dtype, mask.shape, mask.dtype) == ((50, 512), torch.float32, (50,),
                                                              torch.float32)
        assert (m.shape, m_mask.shape, m.dtype) == ((96, 768), (96,), torch.float32)
        n = int(mask.sum())
        assert mask.tolist() == [1.0] * n + [0.0] * (50 - n)
        assert n == int(float(r["video_end"])) + 1
        assert int(m_mask.sum()) == int(float(r["music_total_duration"]) // 2.5) + 1
        pads.append(x[n:])
    assert pads[0].abs().sum() > 0 and torch.equal(pads[0][0], pads[1][0])  # constant, non-zero
    assert main(["prepare", "--dataset", "mgsv_ec", "--src", str(out)]) == 0


def test_synth_refuses_fixed_shape_flags(tmp_path, capsys):
    assert main(["synth", "--dataset", "mgsv_ec", "--out", str(tmp_path / "s"),
                 "--frames", "20"]) == 2
    assert "--frames is not supported for mgsv_ec" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_each_method_takes_clip_frames_and_ast_windows(tmp_path):
    """The three experiments' models embed a batch of 512-d frames / 768-d windows."""
    from lightning_app.config import load_config
    from lightning_app.registry import build_datamodule, build_model

    root = tmp_path / "syn"
    small = ["data.synthetic.pairs=60", "data.synthetic.val=10", "data.synthetic.test=10"]
    for name in ("vmnet_mgsv_ec", "iiclvm_mgsv_ec", "ssvmr_mgsv_ec"):
        cfg = load_config(f"{name}_synthetic", [f"data.root={root}", "data.batch_size=8", *small])
        dm = build_datamodule(cfg)
        dm.prepare_data()  # the first one writes the synthetic release, the others reuse it
        assert not ensure_synthetic_mgsv_ec(root, dm.synthetic)
        dm.setup()
        assert dm.dims == {"video": 512, "music": 768}
        model = build_model(cfg, dm.dims)
        batch = next(iter(dm.train_dataloader()))
        assert batch["video"].shape[-1] == 512 and batch["music"].shape[-1] == 768
        model.eval()
        with torch.no_grad():
            v, m = model.encode_video(batch), model.encode_music(batch)
        assert v.shape == m.shape and v.shape[0] == 8 and torch.isfinite(v).all(), name
        assert np.isfinite(float(model.loss(batch, v, m)["loss"].detach())), name
