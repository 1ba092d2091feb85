"""Throughput of the transformer-era extractors on 30-s clips: CLIP ViT-B/32, AST, VGGish.

    python -m bench.extract_models [--files 3] [--seconds 30] [--workers 0] [--threads N]
                                   [--device cpu] [--out DIR]

Real model sizes (ViT-B/32: 88 M parameters in the image tower; AST-base: 86 M, 12 layers,
1214 tokens a window; VGGish: 72 M) with random weights saved locally (speed does not
depend on the values; nothing is downloaded). Clips are bench.extract's (H.264 640x360 25
fps + AAC stereo, made with the ffmpeg CLI). Each extractor runs `vmr extract`'s code path
(`extract_video` / `extract_audio`) over the clips after one untimed warm-up file; the time
is the job's own clock (decoding, preprocessing, the network, writing), model loading
excluded. Real-time factor = seconds of media per second of processing (above 1: faster
than real time). Not part of `make bench` (minutes on a CPU): run it where extraction runs.
Writes extract_models.{json,md} to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.common import set_threads
from bench.extract import make_clips


def _save_models(folder: Path) -> dict[str, Path]:
    from transformers import ASTConfig, ASTModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from datamodules.extract.vggish import VGGishNetwork

    torch.manual_seed(0)
    paths = {"clip": folder / "clip", "ast": folder / "ast", "vggish": folder / "vggish.pth"}
    CLIPVisionModelWithProjection(CLIPVisionConfig()).save_pretrained(paths["clip"])
    ASTModel(ASTConfig()).save_pretrained(paths["ast"])
    torch.save(VGGishNetwork().state_dict(), paths["vggish"])
    return paths


def _run(name: str, files: list[Path], work: Path, job, seconds: float) -> dict:
    job([files[0]], work / f"{name}-warm")  # first-use setup (oneDNN, fbank tables) untimed
    src = work / f"{name}-src"
    src.mkdir()
    for f in files:
        (src / f.name).symlink_to(f)
    summary = job(src, work / name)
    assert not summary.failed, summary.failed
    n = len(summary.done)
    return {"extractor": name, "files": n, "seconds": round(summary.seconds, 2),
            "files_per_s": round(n / summary.seconds, 4),
            "real_time_factor": round(n * seconds / summary.seconds, 2),
            "seconds_per_file": round(summary.seconds / n, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.extract_models", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--workers", type=int, default=0, help="decoding workers")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--device", default="cpu")
    p.add_argument("--only", action="append", choices=("clip", "ast", "vggish"))
    p.add_argument("--out", type=Path, default=Path("bench"))
    args = p.parse_args(argv)
    set_threads(args.threads)
    from datamodules.extract.folders import PCAPlan, extract_audio, extract_video
    from datamodules.extract.specs import AudioSpec, VideoSpec

    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="vmr-bench-models-") as tmp:
        work = Path(tmp)
        files = make_clips(work / "clips", args.files + 1, args.seconds)
        models = _save_models(work / "models")
        clip = VideoSpec(backbone="clip_vit_b32", weights=str(models["clip"]))
        jobs = {
            "clip": lambda s, o: extract_video(Path(s) if not isinstance(s, list) else s[0],
                                               o, clip, PCAPlan(dim=0), args.workers, device,
                                               progress=False)[0],
            "ast": lambda s, o: extract_audio(Path(s) if not isinstance(s, list) else s[0], o,
                                              AudioSpec("ast", max_seconds=240.0,
                                                        weights=str(models["ast"])),
                                              args.workers, device, progress=False),
            "vggish": lambda s, o: extract_audio(Path(s) if not isinstance(s, list) else s[0],
                                                 o, AudioSpec("vggish",
                                                              weights=str(models["vggish"])),
                                                 args.workers, device, progress=False),
        }
        for name in args.only or ("clip", "ast", "vggish"):
            start = time.perf_counter()
            rows.append(_run(name, files[1:], work, jobs[name], args.seconds))
            print(json.dumps(rows[-1]), f"(with warm-up {time.perf_counter() - start:.0f} s)",
                  flush=True)
    load = os.getloadavg()
    meta = {"threads": args.threads, "workers": args.workers, "device": args.device,
            "clip_seconds": args.seconds, "loadavg": [round(x, 2) for x in load],
            "cpus": os.cpu_count()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "extract_models.json").write_text(json.dumps({"meta": meta, "rows": rows},
                                                             indent=1))
    lines = ["| extractor | files | s/file | files/s | real-time factor |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['extractor']} | {r['files']} | {r['seconds_per_file']} | "
              f"{r['files_per_s']} | {r['real_time_factor']}x |" for r in rows]
    lines.append(f"\n{args.seconds:g}-s clips, {args.threads} threads, workers={args.workers}, "
                 f"device {args.device}, load average {load[0]:.1f} / {load[1]:.1f} / "
                 f"{load[2]:.1f} on {os.cpu_count()} CPUs")
    (args.out / "extract_models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
