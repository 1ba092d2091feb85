"""Frame-encoding throughput of `datamodules.extract.video_backbone` (standalone script).

What `vmr` extraction does per video file: 30-second clips decoded at 1 fps give 30 frames,
already resized to the CNN's input size by the decoding worker, and one `encode` call per file.
Random weights (nothing is downloaded), a warm-up (the first calls are slow: allocator and
oneDNN primitive set-up), then a few files timed. Prints frames/s and files/s per backbone.

    python bench/extract_video_throughput.py [--files 6] [--batch-size 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.extract.video_backbone import (  # noqa: E402
    BACKBONES,
    DEFAULT_IMAGE_SIZE,
    load_frame_encoder,
)

_BUILD = {
    "inception_v3": lambda: torchvision.models.inception_v3(weights=None, init_weights=False),
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
}


def random_state_dict(backbone: str) -> dict:
    """Random weights whose activations neither vanish nor explode (like trained ones), so
    no denormal or overflow arithmetic skews the timing."""
    model = _BUILD[backbone]()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.state_dict()


def measure(backbone: str, device: str, files: int, warmup: int, frames_per_file: int,
            frame_hw: tuple[int, int] | None, batch_size: int) -> dict:
    size = DEFAULT_IMAGE_SIZE[backbone]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / f"{backbone}.pth"
        torch.save(random_state_dict(backbone), weights)
        enc = load_frame_encoder(backbone, weights, device=device)
    h, w = frame_hw or (size, size)
    g = torch.Generator().manual_seed(0)
    clips = [torch.randint(0, 256, (frames_per_file, 3, h, w), dtype=torch.uint8, generator=g)
             for _ in range(2)]
    for i in range(warmup):
        enc.encode(clips[i % 2], batch_size=batch_size)
    if enc.device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    for i in range(files):
        start = time.perf_counter()
        enc.encode(clips[i % 2], batch_size=batch_size)  # returns on the CPU: synchronised
        times.append(time.perf_counter() - start)
    seconds, median = sum(times), statistics.median(times)
    return {"backbone": backbone, "image_size": size, "frame": f"{h}x{w}", "files": files,
            "seconds": seconds, "frames_per_s": files * frames_per_file / seconds,
            "files_per_s": files / seconds, "median_files_per_s": 1 / median}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--files", type=int, default=6, help="timed files (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed files first")
    ap.add_argument("--frames-per-file", type=int, default=30, help="30 s at 1 fps")
    ap.add_argument("--frame-size", default="", help="HxW of the decoded frames (default: "
                    "the CNN's input size, as the decoding workers deliver them)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    frame_hw = tuple(int(v) for v in args.frame_size.split("x")) if args.frame_size else None
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device {args.device} ({name}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {args.frames_per_file} frames per file, "
          f"batch size {args.batch_size}")
    for backbone in args.backbones:
        r = measure(backbone, args.device, args.files, args.warmup, args.frames_per_file,
                    frame_hw, args.batch_size)
        print(f"{r['backbone']:>12} @ {r['image_size']} (frames {r['frame']}): "
              f"{r['frames_per_s']:8.1f} frames/s  {r['files_per_s']:7.2f} files/s  "
              f"({r['files']} files in {r['seconds']:.2f} s; median file "
              f"{r['median_files_per_s']:.2f} files/s)")


if __name__ == "__main__":
    main()
