"""The process's one pool of worker threads for compiled CPU loops that release the GIL
(the host batch gather, datamodules.host_gather; the rank and top-k tiles,
lightning_app.cpu_workers)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)
_lock = threading.Lock()


def shared_executor(workers: int) -> ThreadPoolExecutor:
    """The pool, with at least `workers` threads (a new one after a fork: the parent's
    threads do not exist in a child process)."""
    global _pool
    pid = os.getpid()
    with _lock:
        if _pool is None or _pool[0] != pid or _pool[1] < workers:
            if _pool is not None and _pool[0] == pid:
                _pool[2].shutdown(wait=False)
            _pool = (pid, workers, ThreadPoolExecutor(workers, thread_name_prefix="vmr-cpu"))
        return _pool[2]
