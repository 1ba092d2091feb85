"""Run a function over shares of a list on `torch.get_num_threads()` Python threads, each
limited to one OpenMP thread.

For CPU kernels that interleave torch ops (OpenMP inside) with compiled loops that release
the GIL (numba `nogil`): each thread does both on its own share, so nothing waits at an
OpenMP barrier for a core another process took, and the compiled loops run in parallel
too. The OpenMP limit is per thread (`omp_set_num_threads` sets the calling thread's
setting, threadpoolctl restores it), so torch elsewhere in the process keeps its threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from datamodules.thread_pool import shared_executor

T = TypeVar("T")
R = TypeVar("R")


def run_split(fn: Callable[[list[T]], R], items: Sequence[T]) -> list[R]:
    """`[fn(share) for share in shares]` where shares deal `items` out round-robin to the
    threads; in the calling thread when there is one thread or one item."""
    workers = min(torch.get_num_threads(), len(items))
    if workers <= 1:
        return [fn(list(items))]
    executor = shared_executor(workers)
    futures = [executor.submit(_one_openmp_thread, fn, list(items[w::workers]))
               for w in range(workers)]
    return [f.result() for f in futures]


def _one_openmp_thread(fn: Callable[[list[T]], R], share: list[T]) -> R:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="openmp"):
        return fn(share)
