"""A digest of a synthetic dataset folder that is stable across processes.

TFRecords are hashed by their decoded content (protobuf map order varies with Python's hash
seed), truth.tsv by the columns it had before the benchmark-condition columns were added,
and synth.json not at all (it lists every generator setting, so it grows with new ones).
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from datamodules.tfrecord import iter_records, parse_sequence_example

OLD_TRUTH_COLUMNS = ("id", "split", "style", "true_music_id", "written_music_id", "noisy",
                     "span_start", "span_length")


def folder_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name == "synth.json":
            continue
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        if p.suffix == ".tfrecord":
            for _, payload in iter_records(p):
                ctx, lists = parse_sequence_example(payload)
                h.update(repr((sorted(ctx.items()), sorted(lists.items()))).encode())
        elif p.name == "truth.tsv":
            rows = list(csv.DictReader(io.StringIO(p.read_text()), delimiter="\t"))
            h.update(repr([[r[c] for c in OLD_TRUTH_COLUMNS] for r in rows]).encode())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()
