"""The retrieve cache's trust checks: a content fingerprint per library file, and cached
features / embeddings that cannot be read back are rebuilt (one warning), never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("vmr")

FINGERPRINT_BYTES = 64 * 1024


def file_key(path: Path, rel: str) -> str:
    """Changes when the file is replaced or edited, so its features are redone.

    Size and mtime, plus a cheap content fingerprint (the first, middle and last 64 KiB):
    a file replaced by another of the same size and modification time (a copy with
    preserved times, a restored backup) gets a new key too.
    """
    st = path.stat()
    h = hashlib.sha1(f"{rel}|{st.st_size}|{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, st.st_size // 2 - FINGERPRINT_BYTES // 2),
                              max(0, st.st_size - FINGERPRINT_BYTES)}):
            f.seek(offset)
            h.update(f.read(FINGERPRINT_BYTES))
    return h.hexdigest()[:20]


def drop_damaged(paths: Iterable[Path]) -> None:
    """Delete cached feature files NumPy cannot read back (truncated, overwritten)."""
    damaged = []
    for path in paths:
        if not path.exists():
            continue
        try:
            # mmap: the header is parsed and the size checked against it, nothing read.
            np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            damaged.append((path, e))
    for path, _ in damaged:
        path.unlink(missing_ok=True)
    if damaged:
        path, e = damaged[0]
        log.warning("%d damaged cached feature file(s) (e.g. %s: %s); extracting them again",
                    len(damaged), path, str(e).splitlines()[0][:200] if str(e) else
                    type(e).__name__)


def read_embeddings(path: Path, count: int) -> tuple[list[str], torch.Tensor] | None:
    """The cached (names, embeddings), or None (and the file removed) when it is damaged."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names, emb = [str(n) for n in z["names"]], z["embeddings"]
        if emb.ndim != 2 or len(names) != count or emb.shape[0] != count:
            raise ValueError(f"holds {len(names)} names and embeddings of shape {emb.shape}, "
                             f"expected {count} items")
        if emb.dtype != np.float32 or not np.isfinite(emb).all():
            raise ValueError("embeddings are not finite float32")
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        log.warning("%s: damaged embeddings cache (%s); embedding the library again", path,
                    reason)
        path.unlink(missing_ok=True)
        return None
    return names, torch.from_numpy(emb)
