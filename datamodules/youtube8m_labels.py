"""YouTube-8M labels: vocabulary.csv and the selection of labels by name or id."""

from __future__ import annotations

import csv
import difflib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datamodules.errors import DataError

VOCABULARY = "vocabulary.csv"


def read_vocabulary(path: Path) -> dict[str, int]:
    """Label name -> index from a YouTube-8M vocabulary.csv."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not {"Index", "Name"} <= set(reader.fieldnames or ()):
                raise DataError(f"{path}: needs the columns Index and Name (YouTube-8M format)")
            vocab = {}
            for row in reader:
                try:
                    vocab[row["Name"]] = int(row["Index"])
                except (TypeError, ValueError):
                    raise DataError(
                        f"{path}:{reader.line_num}: bad Index {row.get('Index')!r}"
                    ) from None
    except FileNotFoundError:
        raise DataError(f"{path}: not found (needed to select labels by name)") from None
    return vocab


def resolve_labels(root: str | Path, labels: Sequence[str | int] | str | int) -> list[int]:
    """Label ids for `labels`: ints (or digit strings) as given, names via vocabulary.csv."""
    if isinstance(labels, (str, int)):
        labels = [labels]
    ids, names = set(), []
    for label in labels:
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            ids.add(int(label))
        elif isinstance(label, str) and label.strip().isdigit():
            ids.add(int(label))
        elif isinstance(label, str) and label.strip():
            names.append(label.strip())
        else:
            raise DataError(f"labels: {label!r} is neither a label id nor a label name")
    if names:
        path = Path(root) / VOCABULARY
        vocab = read_vocabulary(path)
        folded = {k.casefold(): v for k, v in vocab.items()}
        for name in names:
            if name.casefold() not in folded:
                close = difflib.get_close_matches(name, list(vocab), n=3, cutoff=0.6)
                hint = f" (close matches: {', '.join(map(repr, close))})" if close else ""
                raise DataError(f"{path}: no label named {name!r}{hint}")
            ids.add(folded[name.casefold()])
    if not ids:
        raise DataError("labels: no label selected")
    return sorted(ids)
