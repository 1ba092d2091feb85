"""Progress bars for long data jobs (synth, prepare, extract)."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm


def progress_bar(enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar shown only on a terminal, so logs and captured stderr stay clean."""
    return tqdm(disable=None if enabled else True, **kwargs)
