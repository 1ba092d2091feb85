"""`vmr synth` (the planted benchmark in a dataset's files) and `vmr prepare` (a dataset's
files packed into the feature store; `--verify` checks a store's SHA-256s)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from lightning_app.errors import ConfigError

DATASETS = ("himv200k", "youtube8m", "mvd", "mgsv_ec")


def _cmd_synth(args: argparse.Namespace) -> int:
    from datamodules.synthetic.himv200k import write_himv200k
    from datamodules.synthetic.planted import PlantedSpec

    try:
        spec = PlantedSpec(pairs=args.pairs, val=args.val, test=args.test, styles=args.styles,
                           tau=args.tau, noise=args.noise, seed=args.seed,
                           music_frames=args.frames, video_frames=args.frames, span=args.span,
                           feature_noise=args.feature_noise, text=args.text,
                           filler=args.filler, min_frames=args.min_frames, share=args.share,
                           train_pairs=args.train_pairs, near_duplicates=args.near_duplicates,
                           near_duplicate_scale=args.near_duplicate_scale)
    except ValueError as e:
        raise ConfigError(f"vmr synth: {e}") from None
    shared = args.shared_songs
    if shared is None:
        from datamodules.synthetic.mvd import SHARED_SONGS

        shared = SHARED_SONGS if args.dataset == "mvd" else 0.0
        if args.dataset == "mgsv_ec":
            from datamodules.synthetic.mgsv_ec import SHARED_SONGS as MGSV_SHARED_SONGS

            shared = MGSV_SHARED_SONGS
    if not 0.0 <= shared < 1.0:
        raise ConfigError(f"vmr synth: --shared-songs={shared} must be in [0, 1)")
    if not 0.0 <= args.missing < 1.0:
        raise ConfigError(f"vmr synth: --missing={args.missing} must be in [0, 1)")
    if args.dataset != "mvd" and (args.unpaired_videos or args.unpaired_music):
        raise ConfigError("vmr synth: --unpaired-videos/--unpaired-music need --dataset mvd "
                          "(only its layout has an unpaired pool)")
    if args.dataset == "youtube8m" and args.min_frames:
        raise ConfigError("vmr synth: --min-frames is not supported for youtube8m (its writer "
                          "draws its own video lengths)")
    if args.dataset == "youtube8m":
        from datamodules.synthetic.youtube8m import write_youtube8m

        spec = dataclasses.replace(spec, music_dim=128, video_dim=1024)
        out = write_youtube8m(spec, args.out, shards=args.shards, text=args.text,
                              non_music=args.non_music, missing=args.missing,
                              shared_songs=shared)
    elif args.dataset == "mgsv_ec":
        out = _synth_mgsv_ec(args, spec, shared)
    elif args.dataset == "mvd":
        from datamodules.synthetic.mvd import MUSIC_DIM, VIDEO_DIM, write_mvd

        if args.missing:
            raise ConfigError("vmr synth: --missing is not supported for mvd (it is curated)")
        spec = dataclasses.replace(spec, music_dim=MUSIC_DIM, video_dim=VIDEO_DIM)
        try:
            out = write_mvd(spec, args.out, shared_songs=shared,
                            unpaired_videos=args.unpaired_videos,
                            unpaired_music=args.unpaired_music,
                            unpaired_linked=args.unpaired_linked)
        except ValueError as e:
            raise ConfigError(f"vmr synth: {e}") from None
    else:
        out = write_himv200k(spec, args.out, missing=args.missing, music_format=args.music_format,
                             shared_songs=shared)
    written = args.val + args.test + (args.train_pairs or args.pairs - args.val - args.test)
    print(f"wrote synthetic {args.dataset} ({written} pairs, seed {args.seed}) to {out}")
    return 0


def _synth_mgsv_ec(args: argparse.Namespace, spec, shared: float) -> Path:
    """The MGSV-EC release's fixed shapes (50 frames, 96 windows); no --frames/--missing."""
    from datamodules.synthetic.mgsv_ec import mgsv_settings, write_mgsv_ec
    from datamodules.synthetic.planted import PlantedSpec

    for flag, value, default in (("--frames", args.frames, 12), ("--min-frames",
                                 args.min_frames, 0), ("--missing", args.missing, 0.0),
                                 ("--train-pairs", args.train_pairs, 0)):
        if value != default:
            raise ConfigError(f"vmr synth: {flag} is not supported for mgsv_ec (the release's "
                              "shapes are fixed; every listed id has features)")
    try:
        spec = PlantedSpec(**mgsv_settings(dataclasses.asdict(spec)))
        return write_mgsv_ec(spec, args.out, shared_songs=shared)
    except ValueError as e:
        raise ConfigError(f"vmr synth: {e}") from None


def _cmd_prepare(args: argparse.Namespace) -> int:
    if args.verify:
        if args.out is None and args.src is None:
            raise ConfigError("vmr prepare --verify: give the store (--out STORE) or the "
                              "dataset folder whose store it is (--src DIR)")
        return _verify_store(args.out or args.src / "store")
    for flag, value in (("--dataset", args.dataset), ("--src", args.src)):
        if value is None:
            raise ConfigError(f"vmr prepare: {flag} is required (only --verify works without)")
    if args.dataset == "mgsv_ec":
        from datamodules.mgsv_ec import pack_mgsv_ec

        out = pack_mgsv_ec(args.src, args.out)
    elif args.dataset == "mvd":
        from datamodules.mvd import pack_mvd

        out = pack_mvd(args.src, args.out)
    elif args.dataset == "youtube8m":
        from datamodules.youtube8m import prepare_youtube8m

        labels = [int(x) if x.isdigit() else x for x in args.labels]
        out = prepare_youtube8m(args.src, args.out, labels=labels, workers=args.workers,
                                val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                                split_seed=args.split_seed)
    else:
        from datamodules.himv200k import pack_himv200k

        out = pack_himv200k(args.src, args.out, val_size=args.val_size, test_size=args.test_size)
    print(f"packed {args.dataset} from {args.src} into {out}")
    return 0


def _verify_store(store: Path) -> int:
    """`vmr prepare --verify`: sizes, index and SHA-256s; one line per bad file, exit 2."""
    from datamodules.store_check import verify_store

    problems, checked = verify_store(store)
    for line in problems:
        print(f"vmr: error: {line}", file=sys.stderr)
    if problems:
        return 2
    print(f"{store}: store verified ({checked} files match their SHA-256)")
    return 0


def add_data_commands(sub) -> None:
    p = sub.add_parser("synth", help="write the planted synthetic benchmark in a dataset's format")
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--pairs", type=int, default=6000)
    p.add_argument("--val", type=int, default=1000, help="validation pairs")
    p.add_argument("--test", type=int, default=1000, help="test pairs")
    p.add_argument("--styles", type=int, default=16, help="style clusters")
    p.add_argument("--tau", type=float, default=0.6,
                   help="within-style spread (small: many false negatives)")
    p.add_argument("--noise", type=float, default=0.0,
                   help="label-noise fraction of training pairs")
    p.add_argument("--missing", type=float, default=0.0, help="fraction of ids without features")
    p.add_argument("--frames", type=int, default=12, help="frames per sequence before pooling")
    p.add_argument("--span", type=float, default=0.5, help="mean salient fraction of video frames")
    p.add_argument("--feature-noise", type=float, default=0.5)
    p.add_argument("--text", action="store_true", help="also draw per-video text")
    p.add_argument("--music-format", choices=("npy", "pkl"), default="npy",
                   help="pkl writes the VM-NET authors' per-track pickles")
    p.add_argument("--shards", type=int, default=4, help="youtube8m: TFRecord files per split")
    p.add_argument("--non-music", type=float, default=0.25,
                   help="youtube8m: extra records without the music-video label (fraction)")
    p.add_argument("--shared-songs", type=float, default=None,
                   help="fraction of videos whose song is another pair's (default: 0.1 for "
                        "mvd, 0 otherwise)")
    p.add_argument("--share", type=float, default=1.0,
                   help="pair-specific content video and music share (1: all; 0: only the "
                        "style, same-style items interchangeable)")
    p.add_argument("--train-pairs", type=int, default=0,
                   help="training pairs written (0: pairs - val - test); val/test unchanged")
    p.add_argument("--near-duplicates", type=float, default=0.0,
                   help="fraction of each split's pairs that nearly copy another pair")
    p.add_argument("--near-duplicate-scale", type=float, default=0.1,
                   help="a near copy's deviation, in units of --tau")
    p.add_argument("--filler", choices=("same", "background"), default="same",
                   help="what non-salient video frames show: other song content (same) or "
                        "content no song uses (background)")
    p.add_argument("--min-frames", type=int, default=0,
                   help="video lengths uniform in [MIN_FRAMES, --frames] (0: all full length)")
    p.add_argument("--unpaired-videos", type=int, default=0,
                   help="mvd: videos in no split (splits/unpaired_videos.csv)")
    p.add_argument("--unpaired-music", type=int, default=0,
                   help="mvd: songs in no split (splits/unpaired_music.csv)")
    p.add_argument("--unpaired-linked", type=float, default=0.5,
                   help="mvd: fraction of the smaller pool that forms hidden pairs")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("prepare", help="pack a dataset into the feature store")
    p.add_argument("--dataset", choices=DATASETS, help="required unless --verify")
    p.add_argument("--src", type=Path, help="the dataset folder (required unless --verify)")
    p.add_argument("--out", type=Path, default=None, help="store folder (default SRC/store)")
    p.add_argument("--verify", action="store_true",
                   help="check the store's files against the SHA-256s in its meta.json")
    p.add_argument("--val-size", type=int, default=4000, help="used only when SRC has no splits/")
    p.add_argument("--test-size", type=int, default=1000, help="used only when SRC has no splits/")
    p.add_argument("--labels", nargs="+", default=["Music video"],
                   help="youtube8m: label names (vocabulary.csv) or ids of the subset")
    p.add_argument("--workers", type=int, default=2, help="youtube8m: files read in parallel")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="youtube8m: share of records for val by id hash (default 0.1) when the "
                        "files carry no partition names; needed to split a folder of train* "
                        "files only (else val/test come from validate*)")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="youtube8m: share for test, as --val-fraction (default 0.1)")
    p.add_argument("--split-seed", type=int, default=0,
                   help="youtube8m: seed of the id-hash split (0: the historical hash)")
    p.set_defaults(func=_cmd_prepare)
