"""Precomputed text embeddings (`text_emb`) stored with the features, for II-CLVTM.

Synthetic writer -> TFRecord context feature -> `prepare_youtube8m` store modality ->
batch["text_emb"] [B, D] -> registry dimension check -> a short training run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.errors import DataError
from datamodules.feature_store import StoreSplit, read_meta
from datamodules.pairs import PairDataset
from datamodules.sampling import SparseFrameDataset
from datamodules.synthetic.planted import PlantedBenchmark, PlantedSpec
from datamodules.synthetic.youtube8m import (
    MUSIC_VIDEO_LABEL,
    text_embeddings,
    write_youtube8m,
)
from datamodules.tfrecord import encode_sequence_example, read_frame_level, write_records
from datamodules.youtube8m import YouTube8MDataModule, prepare_youtube8m
from lightning_app.config import load_config
from lightning_app.errors import ConfigError
from lightning_app.registry import build_datamodule, build_model

SPEC = PlantedSpec(pairs=120, val=20, test=20, music_frames=6, video_frames=6, seed=3,
                   music_dim=128, video_dim=1024, text=True)
DIM = 64


def records(root: Path) -> list:
    return [r for f in sorted((root / "frame").glob("*.tfrecord")) for r in read_frame_level(f)]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Synthetic YouTube-8M with text and 64-d text embeddings (read-only for the tests)."""
    return write_youtube8m(SPEC, tmp_path_factory.mktemp("emb") / "src", shards=2, text=True,
                           progress=False)


@pytest.fixture(scope="module")
def store(source, tmp_path_factory) -> Path:
    return prepare_youtube8m(source, tmp_path_factory.mktemp("emb") / "store", workers=1,
                             progress=False)


# ------------------------------------------------------------------------------------- writer


def test_writer_writes_unit_norm_deterministic_text_emb(source, tmp_path):
    bench = PlantedBenchmark(SPEC)
    expected = text_embeddings(bench.text, DIM, SPEC.seed)
    recs = records(source)
    music = [r for r in recs if MUSIC_VIDEO_LABEL in r.labels]
    assert len(music) == SPEC.pairs
    for r in music:
        assert r.text_emb is not None and r.text_emb.dtype == np.float32
        assert r.text_emb.shape == (DIM,)
        np.testing.assert_array_equal(r.text_emb, expected[bench.ids.index(r.id)])
    emb = np.stack([r.text_emb for r in music])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert all(r.text_emb is None for r in recs if MUSIC_VIDEO_LABEL not in r.labels)
    assert json.loads((source / "synth.json").read_text())["text_emb_dim"] == DIM
    # Deterministic by seed: same bytes again; another seed, another projection.
    again = write_youtube8m(SPEC, tmp_path / "again", shards=2, text=True, progress=False)
    for f in sorted((source / "frame").iterdir()):
        assert f.read_bytes() == (again / "frame" / f.name).read_bytes()
    np.testing.assert_array_equal(text_embeddings(bench.text, DIM, SPEC.seed), expected)
    other = text_embeddings(bench.text, DIM, SPEC.seed + 1)
    assert np.abs(other - expected).max() > 0.1
    # A stand-in for a sentence encoder: texts of one style (shared tokens) are closer.
    sim = expected @ expected.T
    same = bench.style[:, None] == bench.style[None, :]
    off_diag = ~np.eye(len(sim), dtype=bool)
    assert sim[same & off_diag].mean() > sim[~same].mean() + 0.03


def test_writer_without_text_emb(tmp_path):
    out = write_youtube8m(SPEC, tmp_path / "none", shards=1, text=True, text_emb_dim=0,
                          progress=False)
    assert all(r.text_emb is None for r in records(out))
    assert "text_emb_dim" not in json.loads((out / "synth.json").read_text())
    with pytest.raises(ValueError, match="text_emb_dim=-1"):
        write_youtube8m(SPEC, tmp_path / "bad", text=True, text_emb_dim=-1, progress=False)


# ------------------------------------------------------------------------------------ prepare


def test_prepare_stores_text_emb_and_batches_return_it(source, store):
    by_id = {r.id: r.text_emb for r in records(source)}
    meta = read_meta(store)
    assert meta["modalities"]["text_emb"] == {"dim": DIM, "dtype": "float32", "dequantize": None}
    assert meta["source"]["text_emb_dim"] == DIM
    split = StoreSplit(store, "val")
    assert (split.lengths["text_emb"] == 1).all()
    picks = [0, 3, len(split) - 1]
    for ds in (PairDataset(split), SparseFrameDataset(split, frames=4)):
        batch = ds.__getitems__(picks)
        assert batch["text_emb"].shape == (3, DIM) and batch["text_emb"].dtype == torch.float32
        assert batch["video"].shape[-1] == 1024 and batch["music"].shape[-1] == 128
        for row, vid in enumerate(batch["video_id"]):
            np.testing.assert_array_equal(batch["text_emb"][row].numpy(), by_id[vid])
    assert PairDataset(split)[1]["text_emb"].shape == (DIM,)


def test_datamodule_batch_has_text_emb(source, store):
    by_id = {r.id: r.text_emb for r in records(source)}
    dm = YouTube8MDataModule(source, store, batch_size=16, eval_batch_size=20, frames=4,
                             workers=1)
    dm.prepare_data()  # current: kept as is
    dm.setup("fit")
    assert dm.dims == {"video": 1024, "music": 128, "text_emb": DIM}
    for loader in (dm.train_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert batch["text_emb"].shape == (len(batch["video_id"]), DIM)
        assert isinstance(batch["text"][0], str)
        for row, vid in enumerate(batch["video_id"][:5]):
            np.testing.assert_array_equal(batch["text_emb"][row].numpy(), by_id[vid])


def _record(vid: str, emb: list[float] | None) -> bytes:
    ctx: dict = {"id": vid, "labels": [MUSIC_VIDEO_LABEL]}
    if emb is not None:
        ctx["text_emb"] = np.asarray(emb, dtype=np.float32)
    return encode_sequence_example(ctx, {"rgb": [bytes(1024)] * 2, "audio": [bytes(128)] * 2})


@pytest.mark.parametrize("bad, what", [
    (None, "no 'text_emb'"),
    ([1.0, 2.0], "'text_emb' has 2 values"),
])
def test_prepare_rejects_mixed_text_emb(tmp_path, bad, what):
    src = tmp_path / "src"
    src.mkdir()
    payloads = [_record(f"v{k}", [0.0, 1.0, 0.0]) for k in range(4)]
    payloads.insert(2, _record("odd", bad))
    write_records(src / "part0.tfrecord", payloads)
    offset = sum(len(p) + 16 for p in payloads[:2])
    with pytest.raises(DataError) as e:
        prepare_youtube8m(src, tmp_path / "store", [MUSIC_VIDEO_LABEL], workers=1,
                          progress=False)
    msg = str(e.value)
    assert "\n" not in msg and what in msg and "part0.tfrecord" in msg
    assert f"byte offset {offset} (id odd)" in msg
    assert not (tmp_path / "store").exists()


def test_reader_rejects_non_float_text_emb(tmp_path):
    payload = encode_sequence_example(
        {"id": "v0", "labels": [MUSIC_VIDEO_LABEL], "text_emb": [1, 2, 3]},
        {"rgb": [bytes(1024)], "audio": [bytes(128)]},
    )
    write_records(tmp_path / "x.tfrecord", [payload])
    with pytest.raises(DataError, match="'text_emb' must be a non-empty float_list, found int64"):
        list(read_frame_level(tmp_path / "x.tfrecord"))


# ----------------------------------------------------------------------------------- registry


def _cfg(tmp_path: Path, root: Path, store: Path, *overrides: str):
    return load_config("iiclvtm_synthetic_precomputed", [
        f"data.root={root}", f"data.store={store}", "data.synthetic.enabled=false",
        f"run_dir={tmp_path / 'runs'}", "logger.wandb.mode=disabled", *overrides,
    ])


def test_registry_checks_text_emb_dim(source, store, tmp_path):
    cfg = _cfg(tmp_path, source, store)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    assert build_model(cfg, dm.dims).text_source == "precomputed"
    bad = _cfg(tmp_path, source, store, "model.iiclvm.text.dim=32")
    with pytest.raises(ConfigError) as e:
        build_model(bad, dm.dims)
    msg = str(e.value)
    assert "\n" not in msg
    assert "model.iiclvm.text.dim=32" in msg and "text_emb dimension 64" in msg
    with pytest.raises(ConfigError, match="store has no text_emb modality"):
        build_model(cfg, {"video": 1024, "music": 128})
    # Raw text needs no text_emb, and ignores one in the store.
    hashed = _cfg(tmp_path, source, store, "model.iiclvm.text.source=hashed")
    assert build_model(hashed, {"video": 1024, "music": 128}).text_source == "hashed"


def test_registry_asks_synthetic_data_for_text_emb_only_when_read(tmp_path):
    cfg = load_config("iiclvtm_synthetic_precomputed", [f"data.root={tmp_path}"])
    assert build_datamodule(cfg).synthetic["text_emb_dim"] == DIM
    cfg = load_config("iiclvtm_synthetic", [f"data.root={tmp_path}"])
    assert "text_emb_dim" not in build_datamodule(cfg).synthetic


# -------------------------------------------------------------------------------------- train


def test_iiclvtm_precomputed_learns(tmp_path):
    from lightning_app.train import train

    cfg = load_config("iiclvtm_synthetic_precomputed", [
        f"data.root={tmp_path / 'src'}", f"run_dir={tmp_path / 'runs'}",
        "data.synthetic.pairs=600", "data.synthetic.val=80", "data.synthetic.test=80",
        "data.synthetic.frames=8", "data.synthetic.shards=2", "data.frames=8",
        "data.batch_size=80", "data.eval_batch_size=80", "data.prepare_workers=1",
        "trainer.max_epochs=3", "trainer.enable_progress_bar=false",
        "logger.wandb.mode=disabled", "optim.warmup_steps=0",
    ])
    metrics, objects = train(cfg)
    assert objects["datamodule"].dims["text_emb"] == DIM
    assert objects["model"].text_source == "precomputed"
    assert metrics["test/gallery_size"] == 80
    # Chance R@10 on 80 items is 12.5 %.
    assert metrics["test/v2m/R@10"] >= 0.3 and metrics["test/m2v/R@10"] >= 0.3, metrics
