"""The raw-media commands of `vmr`: extract, build-dataset, retrieve.

    vmr extract audio --input DIR --out DIR --features vmnet|logmel|ast|vggish
                      [--weights W] [--pca FILE] [--workers N] [--shard K/N]
    vmr extract video --input DIR --out DIR --backbone inception_v3|resnet50|clip_vit_b32
                      --weights W [--pca FILE | --pca-dim 1024] [--quantize] [--shard K/N]
    vmr extract-merge DIR                      (the shard reports -> one summary)
    vmr extract-slurm --shards N [--dry-run] -- audio|video ARGS   (a SLURM job array)
    vmr build-dataset --videos DIR --out DIR --layout himv200k|mvd|mgsv_ec --weights W ...
    vmr retrieve --ckpt CKPT --library DIR (--video FILE | --music FILE) [-k 10] [--json]
                 [--index exact|flat|ivf|hnsw] [--video-weights W] [--video-pca FILE]
                 [--audio-weights W] [--audio-pca FILE]   (moved files the record names)

Batch jobs never stop at a bad file: it is listed (with its reason) in the summary and in
the report written next to the outputs. They exit 0 when at least one file was usable.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from datamodules.errors import DataError
from lightning_app.cli_shards import add_shard_commands


def _device(name: str | None):
    import torch

    from datamodules.extract import default_device

    return torch.device(name) if name else default_device()


def _video_spec(args: argparse.Namespace):
    from datamodules.extract.specs import VideoSpec

    return VideoSpec(backbone=args.backbone, weights=str(args.weights),
                     image_size=args.image_size, fps=args.fps,
                     max_seconds=360.0 if args.max_seconds is None else args.max_seconds,
                     pca=str(args.pca) if args.pca else "", quantize=args.quantize,
                     batch_size=args.batch_size)


def _audio_spec(args: argparse.Namespace, features: str, weights: Path | None,
                pca: Path | None):
    from datamodules.extract.specs_audio import DEFAULT_MAX_SECONDS, AudioSpec

    seconds = args.max_seconds
    if seconds is None:
        seconds = DEFAULT_MAX_SECONDS.get(features, 360.0)
    return AudioSpec(features=features, mel_sr_quirk=args.mel_sr_quirk, max_seconds=seconds,
                     weights=str(weights) if weights else "", hop_seconds=args.hop_seconds,
                     pca=str(pca) if pca else "").resolved()


def _pca_plan(args: argparse.Namespace):
    from datamodules.extract.folders import PCAPlan

    dim = args.pca_dim
    if dim is None:
        dim = 0 if args.backbone == "clip_vit_b32" else 1024
    return PCAPlan(dim=dim, sample=args.pca_sample, seed=args.seed)


def _finish(summary, out: Path, report: str) -> int:
    summary.write(out / report)
    print(summary.report())
    if not summary.done and not summary.skipped:
        reasons = [r for _, r in summary.failed + summary.not_media]
        more = f" (and {len(reasons) - 1} more, in {out / report})" if len(reasons) > 1 else ""
        first = f": {reasons[0]}" if reasons else ""
        raise DataError(f"{out}: no file could be extracted{first}{more}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from datamodules.extract.folders import extract_audio, extract_video
    from datamodules.extract.shards import parse_shard

    shard = parse_shard(args.shard) if args.shard is not None else None
    if shard is not None:
        return _extract_shard(args, shard)
    if args.modality == "audio":
        spec = _audio_spec(args, args.features, args.weights, args.pca)
        summary = extract_audio(args.input, args.out, spec, workers=args.workers,
                                device=_device(args.device))
    else:
        summary, _ = extract_video(args.input, args.out, _video_spec(args), _pca_plan(args),
                                   workers=args.workers, device=_device(args.device),
                                   codes=args.quantize, keep_raw=args.keep_raw)
    return _finish(summary, args.out, f"extract-{args.modality}-report.json")


def _extract_shard(args: argparse.Namespace, shard) -> int:
    from datamodules.extract.shards import extract_audio_shard, extract_video_shard

    if args.modality == "audio":
        spec = _audio_spec(args, args.features, args.weights, args.pca)
        summary = extract_audio_shard(args.input, args.out, spec, shard, workers=args.workers,
                                      device=_device(args.device))
    else:
        if args.keep_raw:
            raise DataError("--keep-raw: raw features are kept only while fitting a PCA, "
                            "which a sharded run does not do")
        summary = extract_video_shard(args.input, args.out, _video_spec(args),
                                      _pca_plan(args).dim, shard, workers=args.workers,
                                      device=_device(args.device), codes=args.quantize)
    if not (summary.done or summary.skipped or summary.failed):
        summary.write(args.out / shard.report_name(args.modality))
        print(f"{summary.what}: no file of {args.input} falls in this shard")
        return 0
    return _finish(summary, args.out, shard.report_name(args.modality))


def _cmd_build_dataset(args: argparse.Namespace) -> int:
    from datamodules.extract.build_dataset import DEFAULT_AUDIO, build_dataset

    features = args.audio_features or DEFAULT_AUDIO[args.layout]
    audio = _audio_spec(args, features, args.audio_weights, args.audio_pca)
    report = build_dataset(args.videos, args.out, args.layout, _video_spec(args), audio,
                           _pca_plan(args), val_fraction=args.val_fraction,
                           test_fraction=args.test_fraction, workers=args.workers,
                           device=_device(args.device))
    print(report.text())
    print(f"next: vmr prepare --dataset {args.layout} --src {args.out}")
    return 0


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from datamodules.extract.specs import read_record
    from lightning_app.ann_index import IndexParams, require_faiss
    from lightning_app.recommend import Recommender, format_matches, matches_json

    if args.k < 1:
        raise DataError(f"-k {args.k}: must be >= 1")
    index = IndexParams(args.index, nprobe=args.nprobe, ef_search=args.ef_search)
    if index.kind != "exact":
        require_faiss(index.kind)  # before any work: one line saying what to install
    if args.json:  # stdout carries only the JSON document
        logging.getLogger("vmr").setLevel(logging.WARNING)
    extractor = read_record(args.extractor) if args.extractor else None
    rec = Recommender.from_checkpoint(args.ckpt, extractor=extractor, weights=args.weights,
                                      pca=args.pca, device=_device(args.device),
                                      audio_weights=args.audio_weights, audio_pca=args.audio_pca)
    side, query = ("video", args.video) if args.video else ("music", args.music)
    direction = "video -> music" if side == "video" else "music -> video"
    matches = rec.recommend(side, query, args.library, k=args.k, workers=args.workers,
                            progress=not args.json, index=index)
    if args.json:
        print(matches_json(matches, query, direction, args.ckpt))
    else:
        print(format_matches(matches, query, direction))
    return 0


def _video_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--backbone", choices=("inception_v3", "resnet50", "clip_vit_b32"),
                   default="inception_v3")
    p.add_argument("--weights", type=Path, required=required,
                   help="local weights: the CNN's torchvision state dict; for clip_vit_b32 a "
                   "transformers folder (save_pretrained) or a state dict file")
    p.add_argument("--image-size", type=int, default=0,
                   help="CNN input size (0: 299 for inception_v3, 224 for resnet50)")
    p.add_argument("--fps", type=float, default=1.0, help="frames decoded per second")
    p.add_argument("--pca", type=Path, default=None,
                   help="an existing PCA whitening file (.npz) instead of fitting one")
    p.add_argument("--pca-dim", type=int, default=None,
                   help="PCA whitening dimension when fitting (0: raw features; default 1024 "
                   "for the CNNs, 0 for clip_vit_b32)")
    p.add_argument("--pca-sample", type=int, default=100_000, help="frames sampled to fit PCA")
    p.add_argument("--quantize", action="store_true",
                   help="YouTube-8M uint8 quantisation of the whitened features")
    p.add_argument("--batch-size", type=int, default=64, help="frames per CNN batch")
    p.add_argument("--seed", type=int, default=0, help="seed of the PCA sample")


def _audio_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hop-seconds", type=float, default=2.5,
                   help="ast: a 10-s window every this many seconds")


def _shard_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="extract only shard K of N (K from 0; by a hash of each file's id); "
                   "the N shards' outputs together equal one unsharded run's")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=2, help="files decoded in parallel")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if any)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="seconds of each file used (default 240 for ast audio, else 360)")


def add_media_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract features from a folder of media files")
    modality = p.add_subparsers(dest="modality", required=True)
    a = modality.add_parser("audio", help="music features (VM-NET statistics or log-mel)")
    a.add_argument("--input", type=Path, required=True, help="a media file or folder")
    a.add_argument("--out", type=Path, required=True, help="folder for <id>.npy files")
    a.add_argument("--features", choices=("vmnet", "logmel", "ast", "vggish"), default="vmnet")
    a.add_argument("--mel-sr-quirk", action="store_true",
                   help="vmnet: the original code's 22050-Hz mel filterbank")
    a.add_argument("--weights", type=Path, default=None,
                   help="ast: transformers folder (or file); vggish: state dict file")
    a.add_argument("--pca", type=Path, default=None,
                   help="vggish: YouTube-8M PCA parameters (.npz); output PCA'd + quantised")
    _audio_options(a)
    _shard_option(a)
    _common(a)
    a.set_defaults(func=_cmd_extract)
    v = modality.add_parser("video", help="CNN frame features, PCA-whitened")
    v.add_argument("--input", type=Path, required=True, help="a video file or folder")
    v.add_argument("--out", type=Path, required=True, help="folder for <id>.npy files")
    v.add_argument("--keep-raw", action="store_true", help="keep the raw CNN features")
    _video_options(v, required=True)
    _shard_option(v)
    _common(v)
    v.set_defaults(func=_cmd_extract)

    add_shard_commands(sub)

    p = sub.add_parser("build-dataset", help="a folder of videos -> a dataset folder")
    p.add_argument("--videos", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--layout", choices=("himv200k", "mvd", "mgsv_ec"), required=True)
    p.add_argument("--audio-features", choices=("vmnet", "logmel", "ast", "vggish"),
                   default=None, help="music features (default: vmnet for himv200k, logmel "
                   "for mvd, ast for mgsv_ec)")
    p.add_argument("--audio-weights", type=Path, default=None,
                   help="ast / vggish: the audio model's local weights")
    p.add_argument("--audio-pca", type=Path, default=None,
                   help="vggish: YouTube-8M PCA parameters (.npz)")
    _audio_options(p)
    p.add_argument("--mel-sr-quirk", action="store_true")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    _video_options(p, required=True)
    _common(p)
    p.set_defaults(func=_cmd_build_dataset)

    p = sub.add_parser("retrieve", help="recommend music for a video (or videos for music)")
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--library", type=Path, required=True,
                   help="folder of music (for --video) or of videos (for --music)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--video", type=Path, help="query video file")
    q.add_argument("--music", type=Path, help="query music file")
    p.add_argument("-k", type=int, default=10, help="how many results")
    p.add_argument("--index", choices=("exact", "flat", "ivf", "hnsw"), default="exact",
                   help="exact search (default), or a FAISS index cached with the library: "
                        "flat (exact), ivf or hnsw (approximate; pip install 'vmr[faiss]')")
    p.add_argument("--nprobe", type=int, default=0,
                   help="ivf: cells searched per query (0: nlist / 16, at least 8)")
    p.add_argument("--ef-search", type=int, default=128, help="hnsw: candidates kept per query")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--extractor", type=Path, default=None,
                   help="extractor.json to use instead of the checkpoint's record")
    # Files the extractor record names, moved since: checked against the recorded SHA-256.
    p.add_argument("--video-weights", "--weights", dest="weights", type=Path, default=None,
                   help="moved copy of the video network's weights (CNN file, CLIP folder)")
    p.add_argument("--video-pca", "--pca", dest="pca", type=Path, default=None,
                   help="moved copy of the video PCA file")
    p.add_argument("--audio-weights", type=Path, default=None,
                   help="moved copy of the music network's weights (AST folder, VGGish file)")
    p.add_argument("--audio-pca", type=Path, default=None,
                   help="moved copy of the VGGish PCA file")
    p.add_argument("--workers", type=int, default=2, help="library files decoded in parallel")
    p.add_argument("--device", default=None)
    p.set_defaults(func=_cmd_retrieve)
