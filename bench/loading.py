"""Group `loading`: training pairs per second, YouTube-8M feature store vs source TFRecords.

Data: planted synthetic YouTube-8M frame-level TFRecords (`write_youtube8m`, 4 shards per
split, 60 one-second frames, plus the usual 25 % non-music records to filter out), written
to a temporary folder and packed once into the feature store (that one-off cost is reported
in the notes, not in the ratio).

Ours: one epoch of `YouTube8MDataModule.train_dataloader()` (SparseFrameDataset: shuffled,
Global Sparse sampling of `frames` frames per modality, dequantised float32 batches), in
three places the split can live (`data.cache`): `host` (the split in RAM as stored, uint8,
batched by one fused numba pass per modality into recycled arrays: datamodules.device_store,
host_gather, batch_buffers; bench/loading_parts.py times its parts), `device` (the same on
the GPU with torch ops; only when `ctx.device` is a CUDA device, `--gpu`) and `none`
(memory-mapped .npy files batched in NumPy, the loader before data.cache existed). The
in-memory batches are checked bit-identical to the memory-mapped ones (a whole training
epoch, same seed).
Reference: the same epoch read straight from the train TFRecords with
`datamodules.tfrecord.read_frame_level` (CRC checks, protobuf parse, "Music video" label
filter), the same `global_sparse_batch` sampling, the same dequantisation and batching in
Python; it streams the files in order (shuffling would need a buffer on top). Both run in
one process (num_workers=0) from the page cache (the files were just written).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RATIO_RATE, best_of, check, log, row
from bench.loading_parts import host_parts, parts_note

GROUP = "loading"
FULL = {"train": 4000, "val": 200, "test": 200, "source_frames": 60, "frames": 32,
        "batch": 256, "repeats": 3}
QUICK = {"train": 400, "val": 50, "test": 50, "source_frames": 60, "frames": 32,
         "batch": 64, "repeats": 2}


def _collate(records: list, frames: int, train: bool, rng: np.random.Generator | None
             ) -> dict[str, Any]:
    from datamodules.sampling import global_sparse_batch
    from datamodules.tfrecord import AUDIO_DIM, DEQUANTIZE, RGB_DIM

    scale, offset = (np.float32(v) for v in DEQUANTIZE)
    batch: dict[str, Any] = {"video_id": [r.id for r in records]}
    for name, attr, dim in (("video", "rgb", RGB_DIM), ("music", "audio", AUDIO_DIM)):
        seqs = [getattr(r, attr) for r in records]
        rel, mask = global_sparse_batch(np.array([len(s) for s in seqs]), frames, train, rng)
        x = np.zeros((len(records), frames, dim), dtype=np.float32)
        for i, s in enumerate(seqs):
            x[i, mask[i]] = s[rel[i, mask[i]]]
        x[mask] = x[mask] * scale + offset  # as the store loader: padding stays zero
        batch[name], batch[f"{name}_mask"] = torch.from_numpy(x), torch.from_numpy(mask)
    return batch


def tfrecord_batches(files: list[Path], label_ids: list[int], frames: int, batch_size: int,
                     train: bool = True, rng: np.random.Generator | None = None,
                     drop_last: bool = True) -> Iterator[dict[str, Any]]:
    """Batches straight from frame-level TFRecords (the reference loader)."""
    from datamodules.tfrecord import read_frame_level

    buf: list = []
    for path in files:
        for rec in read_frame_level(path, labels=label_ids, skips=Counter()):
            buf.append(rec)
            if len(buf) == batch_size:
                yield _collate(buf, frames, train, rng)
                buf = []
    if buf and not drop_last:
        yield _collate(buf, frames, train, rng)


def _same_features(store: Path, files: list[Path], label_ids: list[int], frames: int,
                   batch: int) -> dict:
    """Evaluation sampling (segment centres, deterministic) gives identical batches."""
    from datamodules.feature_store import StoreSplit
    from datamodules.sampling import SparseFrameDataset

    ref = next(tfrecord_batches(files, label_ids, frames, batch, train=False))
    ds = SparseFrameDataset(StoreSplit(store, "train"), frames, train=False)
    where = {vid: i for i, vid in enumerate(ds.ids)}
    ours = ds.__getitems__([where[v] for v in ref["video_id"]])
    same = all(torch.equal(ours[k], ref[k]) for k in ("video", "music", "video_mask",
                                                      "music_mask"))
    return check(same, f"store and TFRecord loaders give bit-identical dequantised batches "
                       f"(first {len(ref['video_id'])} train records, centre-frame sampling)")


def run(ctx) -> dict[str, Any]:
    from datamodules.synthetic.planted import PlantedSpec
    from datamodules.synthetic.youtube8m import MUSIC_VIDEO_LABEL, write_youtube8m
    from datamodules.youtube8m import YouTube8MDataModule

    s = QUICK if ctx.quick else FULL
    root = ctx.tmp / "youtube8m"
    spec = PlantedSpec(pairs=s["train"] + s["val"] + s["test"], val=s["val"], test=s["test"],
                       music_dim=128, video_dim=1024, music_frames=s["source_frames"],
                       video_frames=s["source_frames"], seed=0)
    log(f"loading: writing {spec.pairs} synthetic YouTube-8M pairs ({s['source_frames']} frames)")
    t = time.perf_counter()
    write_youtube8m(spec, root, shards=4, progress=False)
    t_write = time.perf_counter() - t
    dm = YouTube8MDataModule(root, batch_size=s["batch"], frames=s["frames"], num_workers=0,
                             workers=min(2, ctx.threads))
    t = time.perf_counter()
    dm.prepare_data()
    t_store = time.perf_counter() - t
    dm.configure_cache("none")
    dm.setup("fit")
    loader = dm.train_dataloader()
    held = _held_loaders(ctx, root, s, dm)
    files = sorted((root / "frame").glob("train*.tfrecord"))
    labels = [MUSIC_VIDEO_LABEL]
    counts: dict[str, int] = {}

    def ours() -> None:
        counts["ours"] = sum(b["video"].shape[0] for b in loader)

    def reference() -> None:
        rng = np.random.default_rng(0)
        counts["reference"] = sum(
            b["video"].shape[0]
            for b in tfrecord_batches(files, labels, s["frames"], s["batch"], True, rng))

    def decode_only() -> None:
        from datamodules.tfrecord import read_frame_level

        counts["decoded"] = sum(1 for p in files
                                for _ in read_frame_level(p, labels=labels, skips=Counter()))

    log("loading: store loader epochs")
    t_ours, ours_times = best_of(ours, s["repeats"])
    held_times, parts = {}, {}
    for place, (held_loader, _) in held.items():
        log(f"loading: store in {place} memory, epochs")
        held_times[place] = best_of(lambda hl=held_loader: _epoch_pairs(hl), s["repeats"])
        if place == "host":
            parts = host_parts(held_loader, s["frames"], s["repeats"])
    log("loading: TFRecord reference epochs")
    t_ref, ref_times = best_of(reference, s["repeats"])
    t_decode, _ = best_of(decode_only, 1)
    same = _same_features(dm.store_path, files, labels, s["frames"], s["batch"])
    n_ours, n_ref = counts["ours"], counts["reference"]
    count_ok = n_ours == n_ref and counts["decoded"] == len(dm.datasets["train"])
    checks = check(same["ok"] and count_ok,
                   f"{same['detail']}; pairs per epoch ours {n_ours} vs reference {n_ref} "
                   f"(drop_last), {counts['decoded']} music-video train records in the "
                   f"TFRecords = {len(dm.datasets['train'])} in the store")
    rate_ours, rate_ref = n_ours / t_ours, n_ref / t_ref
    out_bytes = s["frames"] * (1024 + 128) * 4  # float32 per pair
    saved = t_ref - t_ours
    breakeven = f"{t_store / saved:.1f}" if saved > 0 else "never"
    notes = (
        f"ours: {1e6 / rate_ours:.0f} us per pair, {rate_ours * out_bytes / 1e9:.2f} GB/s of "
        f"float32 batches: a shuffled fancy-index gather from the uint8 memmap, cast and "
        f"dequantise in NumPy (memory-bound NumPy passes plus per-batch Python). reference: "
        f"{1e6 / rate_ref:.0f} us per pair, {t_decode / t_ref:.0%} of it reading records "
        f"(CRC-32C, protobuf parse of {s['source_frames']} x 2 steps, uint8 copy; "
        f"non-music records decoded and dropped too), the rest sampling and batching: "
        f"protobuf-decode and Python bound. One-off store build {t_store:.1f} s "
        f"(break-even after {breakeven} epochs)")
    rows = [row(GROUP, f"YouTube-8M train epoch, {s['train']} pairs x {s['source_frames']} "
                f"frames, GS {s['frames']} frames, batch {s['batch']}: memory-mapped store "
                f"(data.cache=none) vs TFRecords", rate_ours, rate_ref, "pairs/s", RATIO_RATE,
                notes, check=checks,
                ours_epoch_s=ours_times, reference_epoch_s=ref_times, decode_only_s=t_decode,
                store_build_s=t_store, synth_write_s=t_write, pairs_per_epoch=n_ours)]
    for place, (held_loader, same_held) in held.items():
        t_held, held_epochs = held_times[place]
        n_held = len(held_loader) * s["batch"]
        rate_held = n_held / t_held
        held_check = check(same_held["ok"] and same["ok"] and n_held == n_ref,
                           f"{same_held['detail']}; {same['detail']}; pairs per epoch "
                           f"{n_held} vs reference {n_ref}")
        where = (parts_note(1 / rate_held, parts, s["batch"]) if place == "host" else
                 f"{1e6 / rate_held:.1f} us per pair: per batch one row gather per modality "
                 f"from the uint8 split in device memory, then cast, dequantise and zero the "
                 f"padding (CUDA kernels; the time includes a synchronize per batch)")
        held_notes = (
            f"{where}; {rate_held * out_bytes / 1e9:.2f} GB/s of float32 batches, "
            f"{rate_held / rate_ours:.1f}x the memory-mapped loader ({rate_ours:,.0f} "
            f"pairs/s). Reference as in the row above")
        rows.insert(0, row(
            GROUP, f"YouTube-8M train epoch, {s['train']} pairs x {s['source_frames']} frames, "
            f"GS {s['frames']} frames, batch {s['batch']}: store in {place} memory "
            f"(data.cache={place}) vs TFRecords", rate_held, rate_ref, "pairs/s", RATIO_RATE,
            held_notes, check=held_check, ours_epoch_s=held_epochs, reference_epoch_s=ref_times,
            pairs_per_epoch=n_held, device=str(held_loader.dataset.cache.device)))
    return {"rows": rows, "notes": [
        "loading: the memory-mapped row is the loader before data.cache (today's default is "
        "auto: device memory when the splits fit, else host memory)"], "settings": dict(s)}


def _epoch_pairs(loader) -> int:
    n = 0
    for batch in loader:
        n += batch["video"].shape[0]
    if batch["video"].is_cuda:
        torch.cuda.synchronize(batch["video"].device)
    return n


def _held_loaders(ctx, root: Path, s: dict, plain) -> dict[str, tuple[Any, dict]]:
    """{place: (train loader with the split in that memory, bit-identity check)}."""
    from datamodules.youtube8m import YouTube8MDataModule

    device = torch.device(getattr(ctx, "device", "cpu"))
    places = {"host": torch.device("cpu")}
    if device.type == "cuda":
        places["device"] = device
    out = {}
    for place, where in places.items():
        dm = YouTube8MDataModule(root, batch_size=s["batch"], frames=s["frames"], num_workers=0)
        dm.configure_cache(place)
        dm.trainer = _Where(where)  # the device a Trainer would give setup()
        dm.setup("fit")
        loader = dm.train_dataloader()
        out[place] = (loader, _same_epoch(plain.train_dataloader(), loader, place))
    return out


class _Where:
    """Stands in for a Trainer in `setup`: only its strategy's root device is read."""

    def __init__(self, device: torch.device):
        self.strategy = type("Strategy", (), {"root_device": device})()
        self.world_size, self.current_epoch = 1, 0


def _same_epoch(plain, held, place: str) -> dict:
    torch.manual_seed(0)
    ref = list(plain)
    torch.manual_seed(0)
    same = True
    count = 0
    for a, b in zip(ref, held, strict=True):
        for key in ("video", "music", "video_mask", "music_mask", "index", "video_key"):
            same &= torch.equal(a[key], b[key].cpu())
        count += 1
    return check(same and count == len(ref),
                 f"store in {place} memory gives bit-identical training batches to the "
                 f"memory-mapped store ({count} batches of one epoch, same seed)")
