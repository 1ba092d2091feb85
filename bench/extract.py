"""Group `extract`: end-to-end feature extraction from 30-second mp4 clips, files per second.

What `vmr extract audio|video` costs per file on this machine, and where the time goes, so a
user can tell how long a dataset takes and whether `--workers` helps. Inputs: N mp4 files
made once with the ffmpeg CLI (H.264 640x360 at 25 fps from lavfi `testsrc2`, AAC stereo
44.1 kHz of a Debian sound-theme-freedesktop recording looped to the clip length, a
different one per file). Features: `vmnet` audio (1140-d librosa statistics), `logmel`
audio (128-d per second), video `resnet50` at 224 and `inception_v3` at 299 at 1 fps
through a 1024-d PCA whitening fitted on random 2048-d data. The CNNs have random weights
(nothing is downloaded) with Kaiming-normal convolutions: activations keep their scale
(a too-small init makes them vanish into denormals, whose arithmetic is slow on CPUs).

Ours: `extract_audio` / `extract_video` (datamodules.extract.folders) over the N files,
timed by their `JobSummary.seconds` (worker start-up included; loading and hashing the
model, fixed per job, are not, and show in the notes), after one untimed file in this
process (librosa's numba kernels compile, oneDNN sets up its convolutions on first use).
The specs are subclassed only to clock when each file reaches the main process and the CNN
and PCA steps. References, measured on the same files in the same run: real time (one
clip's length per clip: the ratio is the real-time factor), and for `workers=2` the same
job with `workers=0` (the ratio is the speed-up; each worker runs one torch thread).
Inception-v3 is not timed with workers=2: like ResNet-50 it is CNN-bound in the main
process. A decode-only pass (decode_audio / decode_video_frames in this process) gives the
share of the `workers=0` time spent decoding. One pass each (the group's runtime is the
limit), so a loaded machine shows directly in the figures; the notes give the load average.
`--quick`: two 5-s clips, vmnet with workers=0 only, ResNet-50 at 64 px only.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import RATIO_RATE, check, log, row
from datamodules.extract.specs import AudioSpec, VideoSpec

GROUP = "extract"
SOUNDS = Path("/usr/share/sounds/freedesktop/stereo")
# audio: (features, also timed with workers=2); video: (backbone, image size, workers=2 too)
FULL = {"files": 6, "seconds": 30.0, "audio": (("vmnet", True), ("logmel", True)),
        "video": (("resnet50", 224, True), ("inception_v3", 299, False))}
QUICK = {"files": 2, "seconds": 5.0, "audio": (("vmnet", False), ("logmel", True)),
         "video": (("resnet50", 64, False),)}
_CLOCK: dict[str, Any] = {}


def _reset_clock() -> None:
    _CLOCK.update(arrivals=[], finish=0.0, cnn=0.0, pca=0.0, raw_std=[])


_reset_clock()


def make_clips(folder: Path, n: int, seconds: float) -> list[Path]:
    """n mp4 files: H.264 640x360 25 fps testsrc2 + AAC stereo 44.1 kHz of a looped sound."""
    sounds = sorted(SOUNDS.glob("*.oga"))
    if shutil.which("ffmpeg") is None or not sounds:
        raise RuntimeError("the extract group needs the ffmpeg CLI and the Debian package "
                           "sound-theme-freedesktop (make system-deps)")
    folder.mkdir(parents=True)
    files = []
    for i in range(n):
        path = folder / f"clip{i:02d}.mp4"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-stream_loop", "-1",
             "-i", str(sounds[(7 * i) % len(sounds)]), "-f", "lavfi", "-i",
             "testsrc2=size=640x360:rate=25", "-map", "1:v", "-map", "0:a", "-c:v", "libx264",
             "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
             "-ar", "44100", "-ac", "2", "-t", str(seconds), str(path)], check=True)
        files.append(path)
    return files


def random_state_dict(backbone: str) -> dict:
    """Random weights with Kaiming-normal convolutions (activations keep their scale)."""
    import torchvision

    with torch.random.fork_rng():  # the same weights every run
        torch.manual_seed(0)
        model = (torchvision.models.resnet50(weights=None) if backbone == "resnet50" else
                 torchvision.models.inception_v3(weights=None, init_weights=False))
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.state_dict()


class _Arrival:
    """A `finish` step that also records when each file reaches the main process."""

    def __init__(self, inner=None):
        self.inner = inner

    def __call__(self, x):
        t = time.perf_counter()
        out = x if self.inner is None else self.inner(x)
        _CLOCK["arrivals"].append(t)
        _CLOCK["finish"] += time.perf_counter() - t
        return out


@dataclasses.dataclass(frozen=True)
class ClockedAudio(AudioSpec):
    def finish(self, device=None):
        return _Arrival(super().finish(device))


@dataclasses.dataclass(frozen=True)
class ClockedVideo(VideoSpec):
    def encoder(self, device=None, loaded=None):
        encode = super().encoder(device, loaded)

        def run(frames):
            t = time.perf_counter()
            _CLOCK["arrivals"].append(t)
            out = encode(frames)
            _CLOCK["cnn"] += time.perf_counter() - t
            _CLOCK["raw_std"].append(float(out.std()))
            return out
        return run

    def project(self, codes=False):
        project = super().project(codes)

        def run(raw):
            t = time.perf_counter()
            out = project(raw)
            _CLOCK["pca"] += time.perf_counter() - t
            return out
        return run


def _job(spec: AudioSpec | VideoSpec, src: Path, out: Path, workers: int) -> dict[str, Any]:
    """One extraction job over `src` into the empty folder `out`, clocked."""
    from datamodules.extract import default_device, jobs
    from datamodules.extract.folders import extract_audio, extract_video

    _reset_clock()
    # Measure the workers even on a few files: the library would run so short a job in-process.
    jobs.MIN_TASKS_PER_WORKER = 0
    t0 = time.perf_counter()
    if isinstance(spec, VideoSpec):
        summary, _ = extract_video(src, out, spec, workers=workers, device=default_device(),
                                   progress=False)
    else:
        summary = extract_audio(src, out, spec, workers=workers, device=default_device(),
                                progress=False)
    start = time.perf_counter() - summary.seconds  # when run_jobs started, near enough
    return {"workers": workers, "seconds": summary.seconds, "done": len(summary.done),
            "failed": summary.failed, "setup_s": start - t0,
            "arrivals_s": [a - start for a in _CLOCK["arrivals"]],
            **{k: _CLOCK[k] for k in ("finish", "cnn", "pca", "raw_std")},
            "outputs": [np.load(f) for f in sorted(out.glob("*.npy"))]}


def _warm_and_decode(spec, files: list[Path]) -> tuple[float, float, float]:
    """After one untimed file: (decode-only seconds over `files`, CNN FLOPs per frame or 0,
    seconds of the log-mel step over `files` with one torch thread or 0)."""
    from torch.utils.flop_counter import FlopCounterMode

    from datamodules.extract import default_device
    from datamodules.extract.decode import decode_audio, decode_video_frames

    flops = one_thread = 0.0
    if isinstance(spec, VideoSpec):
        def decode(p):
            return decode_video_frames(p, fps=spec.fps, max_seconds=spec.max_seconds)
        frames = spec.prepare()(files[0])
        encode = spec.encoder(default_device())
        with FlopCounterMode(display=False) as counter:
            encode(frames[:1])
        flops = float(counter.get_total_flops())
        encode(frames)
    else:
        rate = 12000 if spec.features == "vmnet" else 16000
        def decode(p):
            return decode_audio(p, rate, max_seconds=None if rate == 12000 else spec.max_seconds)
        finish = spec.finish(default_device())
        prepared = spec.prepare()(files[0])
        if finish is not None:  # log-mel: also with one thread (tiny ops; see the notes)
            finish(prepared)
            waves, threads = [spec.prepare()(p) for p in files], torch.get_num_threads()
            torch.set_num_threads(1)
            t = time.perf_counter()
            for y in waves:
                finish(y)
            one_thread = time.perf_counter() - t
            torch.set_num_threads(threads)
    decode(files[0])
    t = time.perf_counter()
    for p in files:
        decode(p)
    return time.perf_counter() - t, flops, one_thread


def _rows(label: str, spec, files: list[Path], seconds: float, r0: dict, r2: dict | None,
          decode_s: float, flops: float, one_thread: float, expect: tuple[int, ...], ctx
          ) -> list[dict]:
    n, t0 = len(files), r0["seconds"]
    shapes = {o.shape for o in r0["outputs"]}
    ok = (r0["done"] == n and not r0["failed"] and shapes == {expect}
          and all(np.isfinite(o).all() for o in r0["outputs"]))
    detail = (f"{r0['done']} of {n} files done, {len(r0['failed'])} failed, output shapes "
              f"{sorted(shapes)} (expected {expect}), all finite")
    where = f"decoding {decode_s / t0:.0%} ({decode_s / n * 1e3:.0f} ms per file, one process)"
    if isinstance(spec, VideoSpec):
        frames = n * expect[0]
        gflops = flops * frames / r0["cnn"] / 1e9
        std = float(np.median(r0["raw_std"]))
        ok = ok and 1e-3 < std < 1e4
        detail += f"; raw CNN features median std {std:.3g} (not vanished)"
        rest = max(0.0, t0 - decode_s - r0["cnn"] - r0["pca"])  # decode: another pass
        above = ("; above 100%: oneDNN's convolutions outrun the MKL sgemm calibrated here"
                 if gflops > ctx.calibration["sgemm_gflops"] else "")
        where += (f", CNN {r0['cnn'] / t0:.0%} ({flops / 1e9:.1f} GFLOP per frame, "
                  f"{gflops:.0f} GFLOP/s = {gflops / ctx.calibration['sgemm_gflops']:.0%} of "
                  f"the sgemm rate here{above}), PCA {r0['pca'] / t0:.0%}, the rest (resize to "
                  f"{spec.size}, saving, queueing) {rest / t0:.0%}; model load and hashing "
                  f"{r0['setup_s']:.1f} s per job, not counted")
    elif spec.features == "vmnet":
        where += (", the rest librosa on the 29.12-s 12-kHz clip (HPSS, CQT chroma, STFT "
                  "features; NumPy/numba, mostly single-threaded)")
    else:
        where += (f", log-mel (torchaudio) {r0['finish'] / t0:.0%} ({r0['finish'] / n * 1e3:.0f} "
                  f"ms per file; {one_thread / n * 1e3:.0f} ms with one torch thread), the rest "
                  f"saving and queueing")
    rows = [row(GROUP, f"{label}, {n} x {seconds:.0f}-s mp4, workers=0: vs real time",
                n / t0, 1 / seconds, "files/s", RATIO_RATE,
                f"ratio = real-time factor (s of media per wall s); {t0 / n:.2f} s per file: "
                f"{where}", check=check(ok, detail), seconds=t0, decode_only_s=decode_s,
                cnn_s=r0["cnn"], pca_s=r0["pca"], finish_s=r0["finish"], setup_s=r0["setup_s"])]
    if r2 is not None:
        t2, arr = r2["seconds"], r2["arrivals_s"]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(r0["outputs"], r2["outputs"]))
        scale = max(float(np.abs(a).max()) for a in r0["outputs"])
        # two workers deliver files in pairs: from the 2nd arrival on, n - 2 files
        rate = (n - 2) / (arr[-1] - arr[1]) if n >= 4 and arr[-1] > arr[1] else None
        steady = (f", then {rate:.2f} files/s ({rate * t0 / n:.2f}x workers=0: the speed-up a "
                  f"long job approaches)" if rate else "")
        if rate and rate > n / t0:  # m files: startup + m / rate = m * t0 / n
            startup = arr[1] - 2 / rate
            steady += f"; break-even at about {startup / (t0 / n - 1 / rate):.0f} files"
        same = "identical" if diff == 0 else f"equal up to {diff:.2g} (max |x| {scale:.3g})"
        rows.append(row(
            GROUP, f"{label}, workers=2 vs workers=0 (same {n} files)", n / t2, n / t0,
            "files/s", RATIO_RATE,
            f"ratio = speed-up; workers=2 runs at {n * seconds / t2:.0f}x real time. The first "
            f"file reached the main process after {arr[0]:.1f} s (two workers spawned: Python "
            f"start, imports, first-use set-up, then one file each){steady}. The start-up is "
            f"paid once per job",
            check=check(r2["done"] == n and not r2["failed"] and diff <= 1e-4 * max(scale, 1),
                        f"workers=2: {r2['done']} of {n} files done, features {same} to "
                        f"workers=0's"),
            steady_files_per_s=rate, seconds=t2, arrivals_s=arr, max_abs_diff=diff))
    return rows


def run(ctx) -> dict[str, Any]:
    from datamodules.extract import default_device
    from datamodules.extract.pca import PCAWhitening

    s = QUICK if ctx.quick else FULL
    n, seconds = s["files"], s["seconds"]
    load = os.getloadavg()
    log(f"extract: making {n} x {seconds:.0f}-s mp4 clips with ffmpeg")
    src = ctx.tmp / "extract-clips"
    files = make_clips(src, n, seconds)
    pca = ctx.tmp / "extract-pca.npz"
    x = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    PCAWhitening.fit(x, dim=1024).save(pca)
    log("extract: clips and PCA ready")
    shape = {"vmnet": ("1140-d", (1140,)), "logmel": ("128-d per s", (int(seconds + .5), 128))}
    specs: list[tuple[str, Any, bool, tuple[int, ...]]] = [
        (f"{f} audio ({shape[f][0]})", ClockedAudio(f), both, shape[f][1])
        for f, both in s["audio"]]
    for backbone, size, both in s["video"]:
        weights = ctx.tmp / f"extract-{backbone}.pth"
        torch.save(random_state_dict(backbone), weights)
        spec = ClockedVideo(backbone=backbone, weights=str(weights), image_size=size,
                            pca=str(pca))
        specs.append((f"video {backbone} @ {size}, 1 fps, PCA 1024 ({default_device().type})",
                      spec, both, (int(np.ceil(seconds * spec.fps)), 1024)))
    rows = []
    for k, (label, spec, both, expect) in enumerate(specs):
        log(f"extract: {label}")
        decode_s, flops, one_thread = _warm_and_decode(spec, files)
        r0 = _job(spec, src, ctx.tmp / f"extract-out{k}-w0", 0)
        r2 = _job(spec, src, ctx.tmp / f"extract-out{k}-w2", 2) if both else None
        rows += _rows(label, spec, files, seconds, r0, r2, decode_s, flops, one_thread, expect,
                      ctx)
    notes = [f"1-minute load average {load[0]:.2f} when the group started and "
             f"{os.getloadavg()[0]:.2f} when it ended, on {os.cpu_count()} CPUs (a load near "
             f"the CPU count before the group means other work shared the machine)"]
    return {"rows": rows, "notes": notes, "settings": s}
