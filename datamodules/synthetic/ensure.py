"""Synthetic data on first use: the one rule every DataModule with `synthetic=...` follows.

A data root is (re)generated when it is missing or empty, or when it is synthetic (has the
writer's `synth.json`) but was made with other settings. A non-empty folder without
`synth.json` is real data and is never touched. Settings added after a root was written
(`ADDED_LATER`) compare as their defaults when its synth.json lacks them: those defaults
write exactly what the older writer wrote, so such a root is not regenerated for nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from datamodules.errors import DataError
from datamodules.synthetic.planted import PlantedSpec

log = logging.getLogger("vmr")

MARKER = "synth.json"
# Generator settings newer than some synth.json files, with the defaults that reproduce the
# older output byte for byte.
ADDED_LATER = {"filler": "same", "min_frames": 0, "unpaired_videos": 0, "unpaired_music": 0,
               "unpaired_linked": 0.5,
               # Benchmark conditions (datamodules.synthetic.conditions); HIMV-200K and
               # YouTube-8M only record shared_songs since it applies to them too.
               "share": 1.0, "train_pairs": 0, "near_duplicates": 0.0,
               "near_duplicate_scale": 0.1, "shared_songs": 0.0}


def planted_spec(settings: Mapping[str, Any]) -> PlantedSpec:
    """PlantedSpec(**settings), with bad settings as a one-line DataError (data.synthetic)."""
    try:
        return PlantedSpec(**settings)
    except (TypeError, ValueError) as e:
        raise DataError(f"data.synthetic: {e}") from None


def holds_other_data(root: Path) -> bool:
    """True for a non-empty folder (or a file) that no synthetic writer made: never replace it."""
    return root.exists() and not (root / MARKER).exists() and (
        not root.is_dir() or any(root.iterdir()))


def refuse_other_data(out: Path) -> None:
    """A writer's guard: a one-line DataError instead of replacing someone's data."""
    if holds_other_data(out):
        raise DataError(f"{out}: exists and is not a synthetic dataset (no {MARKER}); "
                        "refusing to replace it, choose another --out")


def write_marker(folder: Path, settings: Mapping[str, Any]) -> None:
    """Record the writer's settings; `ensure_synthetic` compares against them."""
    (folder / MARKER).write_text(json.dumps(dict(settings), indent=2) + "\n")


def ensure_synthetic(
    root: str | Path, wanted: Mapping[str, Any], write: Callable[[], Any], dataset: str
) -> bool:
    """Call `write()` unless `root` holds real data or synthetic data made with `wanted`.

    `wanted` are the settings the writer records in synth.json (every key must match).
    Returns True when the data was (re)written.
    """
    root = Path(root)
    if holds_other_data(root):
        return False  # real data: never overwrite it
    if root.exists() and any(root.iterdir()):
        try:
            have = json.loads((root / MARKER).read_text())
        except (OSError, ValueError):
            have = {}
        if isinstance(have, dict) and {
            k: have.get(k, ADDED_LATER.get(k)) for k in wanted
        } == dict(wanted):
            return False
        log.info("%s: synthetic settings changed; regenerating %s", dataset, root)
    write()
    return True
