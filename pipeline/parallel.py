"""Run independent chunks of model work side by side on the cores of one process.

Small models leave most of a core idle inside one op (a 21-channel grouped convolution
uses a fraction of a core's vector units), and two torch threads in ONE op help little;
two Python threads each running its own chunk of members with one torch thread each keep
both cores busy (ops release the GIL). Results do not depend on the number of workers:
each chunk's members carry their own seeds.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")
_lock = threading.Lock()


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@contextmanager
def torch_threads(n: int):
    """Temporarily set torch's intra-op threads (process-wide)."""
    with _lock:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
    try:
        yield
    finally:
        with _lock:
            torch.set_num_threads(before)


def split(n_items: int, max_size: int, workers: int) -> list[range]:
    """Contiguous chunks of at most ``max_size`` items, of nearly equal sizes, their number a
    multiple of ``workers`` where there are enough items (3 chunks on 2 workers would leave
    one worker idle a third of the time)."""
    if n_items == 0:
        return []
    chunks = max(-(-n_items // max_size), min(workers, n_items))
    if workers > 1 and chunks % workers:
        chunks = min(n_items, chunks + workers - chunks % workers)
    base, extra = divmod(n_items, chunks)
    out, start = [], 0
    for i in range(chunks):
        size = base + (i < extra)
        out.append(range(start, start + size))
        start += size
    return out


def map_chunks(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]``, with up to ``workers`` running at once (one torch thread each)."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with torch_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
