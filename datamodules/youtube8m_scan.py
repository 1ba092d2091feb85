"""Reading YouTube-8M frame-level files in parallel: kept records' codes to spill files.

One worker per file: the selected records' `rgb` / `audio` codes are appended to
`<spill>.video` / `<spill>.music` (uint8, one row per frame), and the rest of each record
(id, labels, text, text_emb, where its frames are) comes back as a row; skipped records are
counted by reason (youtube8m_records). Results are in file order whatever the worker count.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing
from collections import Counter
from pathlib import Path

from datamodules.progress import progress_bar
from datamodules.tfrecord_compression import detect_compression
from datamodules.youtube8m_records import read_frame_level


@dataclasses.dataclass
class Scan:
    """What one worker found in one file; the frames went to spill files."""

    rows: list[dict]
    skips: Counter
    frames: dict[str, int]  # frames written per modality
    compression: str | None  # of the file: offsets in rows count decompressed bytes if set

    @property
    def records(self) -> int:
        return len(self.rows) + sum(self.skips.values())


def scan_file(path: Path, spill: Path, label_ids: list[int]) -> Scan:
    skips: Counter = Counter()
    rows: list[dict] = []
    frames = {"video": 0, "music": 0}  # text_emb stays in the rows (one small vector each)
    with open(f"{spill}.video", "wb") as fv, open(f"{spill}.music", "wb") as fm:
        for rec in read_frame_level(path, labels=label_ids, skips=skips):
            row = {"id": rec.id, "labels": rec.labels, "text": rec.text, "offset": rec.offset,
                   "text_emb": rec.text_emb}
            for name, arr, f in (("video", rec.rgb, fv), ("music", rec.audio, fm)):
                row[name] = (frames[name], len(arr))
                f.write(arr.tobytes())
                frames[name] += len(arr)
            rows.append(row)
    return Scan(rows, skips, frames, detect_compression(path))


def scan_all(files: list[Path], spill: Path, label_ids: list[int], workers: int,
             progress: bool) -> list[Scan]:
    bar = progress_bar(progress, total=len(files), desc="prepare youtube8m", unit="file")
    try:
        if workers <= 1:
            scans = []
            for k, path in enumerate(files):
                scans.append(scan_file(path, spill / str(k), label_ids))
                bar.update(1)
            return scans
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        results: list[Scan | None] = [None] * len(files)
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(scan_file, path, spill / str(k), label_ids): k
                       for k, path in enumerate(files)}
            try:
                for fut in cf.as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update(1)
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
        return results  # type: ignore[return-value]
    finally:
        bar.close()
