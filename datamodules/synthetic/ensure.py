"""Synthetic data on first use: the one rule every DataModule with `synthetic=...` follows.

A data root is (re)generated when it is missing or empty, or when it is synthetic (has the
writer's `synth.json`) but was made with other settings. A non-empty folder without
`synth.json` is real data and is never touched.
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


def planted_spec(settings: Mapping[str, Any]) -> PlantedSpec:
    """PlantedSpec(**settings), with bad settings as a one-line DataError (data.synthetic)."""
    try:
        return PlantedSpec(**settings)
    except (TypeError, ValueError) as e:
        raise DataError(f"data.synthetic: {e}") from None


def ensure_synthetic(
    root: str | Path, wanted: Mapping[str, Any], write: Callable[[], Any], dataset: str
) -> bool:
    """Call `write()` unless `root` holds real data or synthetic data made with `wanted`.

    `wanted` are the settings the writer records in synth.json (every key must match).
    Returns True when the data was (re)written.
    """
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        marker = root / MARKER
        if not marker.exists():
            return False  # real data: never overwrite it
        try:
            have = json.loads(marker.read_text())
        except (OSError, ValueError):
            have = {}
        if isinstance(have, dict) and {k: have.get(k) for k in wanted} == dict(wanted):
            return False
        log.info("%s: synthetic settings changed; regenerating %s", dataset, root)
    write()
    return True
