"""Run independent chunks of model work side by side on the cores of one process.

Small models leave most of a core idle inside one op (a 21-channel grouped convolution
uses a fraction of a core's vector units), and two torch threads in ONE op help little;
two Python threads each running its own chunk of members with one torch thread each keep
both cores busy (ops release the GIL). Results do not depend on the number of workers:
each chunk's members carry their own seeds.

How many members a chunk holds and how many examples a forward takes are sized from a memory
``Budget`` (``runtime.memory_gb``) and a probe of the model's activation memory per example
(``activation_size``); neither changes any result.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")
R = TypeVar("R")
_lock = threading.Lock()


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


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
    """``[fn(x) for x in items]``, with up to ``workers`` running at once.

    Each runs with one torch thread.
    """
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with torch_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


# --- memory budget -----------------------------------------------------------------------

#: share of the device's free memory a budget takes when ``runtime.memory_gb`` is 0
DEFAULT_SHARE = 0.5
#: on a CPU, the most activation memory one evaluation forward of a chunk takes: larger
#: batches of members x examples run no faster there (the data no longer fit any cache;
#: bench/memory.py measures it), they only use more memory
CPU_FORWARD_BYTES = 128 * 2 ** 20
GIB = 2 ** 30


def _cgroup_free() -> float:
    """Memory left under this process's cgroup (v2) limit, inf where none is set."""
    base = Path("/sys/fs/cgroup")
    try:
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return math.inf
        return float(limit) - float((base / "memory.current").read_text())
    except (OSError, ValueError):
        return math.inf


def free_memory(device: torch.device | str) -> float:
    """Bytes of memory free for new work on ``device``: for a CUDA GPU the driver's free memory
    plus what PyTorch's cache holds unused; otherwise the system's available RAM (within a
    cgroup limit, if any)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return float(free + cached)
    try:
        import psutil

        available = float(psutil.virtual_memory().available)
    except ImportError:
        available = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(available, _cgroup_free())


@dataclass(frozen=True)
class Budget:
    """Work memory (bytes) for the activations of the members computed at once, all worker
    threads together. ``total=inf``: no budget (every chunk as large as ``max_members``
    allows and the callers' default batch sizes, as before budgets existed)."""

    total: float
    device_type: str = "cpu"

    @classmethod
    def for_device(cls, device: torch.device | str, memory_gb: float = 0.0) -> Budget:
        """``memory_gb`` GiB, or where it is 0 ``DEFAULT_SHARE`` of the device's free memory now."""
        device = torch.device(device)
        total = memory_gb * GIB if memory_gb else DEFAULT_SHARE * free_memory(device)
        return cls(float(total), device.type)

    def shared_by(self, workers: int) -> Budget:
        """Each of ``workers`` chunks computed side by side gets an equal share."""
        return Budget(self.total / max(1, workers), self.device_type)

    @property
    def forward_bytes(self) -> float:
        """The most activation memory for one evaluation forward (see ``CPU_FORWARD_BYTES``)."""
        if self.device_type == "cpu" and math.isfinite(self.total):
            return min(self.total, CPU_FORWARD_BYTES)
        return self.total

    def fit(self, item_bytes: float, cap: int, train: bool = False) -> int:
        """How many items of ``item_bytes`` each fit (at least 1, at most ``cap``): in one
        evaluation forward, or with ``train`` in one training step (no CPU cap: a smaller
        chunk of fine-tunes takes more passes)."""
        room = self.total if train else self.forward_bytes
        if not math.isfinite(room):
            return cap
        return max(1, min(cap, int(room // max(item_bytes, 1.0))))


@dataclass(frozen=True)
class ActivationSize:
    """Bytes per example, for the model as built (all its members), of a no-grad forward's
    live activations (``eval``) and of a training step's saved ones (``train``); estimates
    from the sizes of every leaf module's inputs and outputs, on the generous side."""

    eval: int
    train: int
    parameters: int      # bytes of parameters and buffers


def activation_size(model: nn.Module, x: torch.Tensor, im2col: bool = False) -> ActivationSize:
    """Probe ``model`` with a forward on ``x`` (a few examples, no grad, eval mode, the mode
    restored) and estimate its activation memory per example (per member where ``model`` has
    one member, as the callers probe it).

    Eval: the input, plus three times the largest (input + output) of any leaf module: a
    layer's input and output are live together, and a residual branch, the functional ReLU
    between modules or the zero-padded copy of a member-major convolution more of that size;
    with ``im2col`` (the member-major path of ``pipeline.models``, which unfolds a whole
    batch) a convolution's unfolded columns count as well. Train: three times the sum of the
    leaf outputs (autograd saves the inputs of convolutions, BatchNorms and ReLUs; functional
    ReLUs and additions between modules are not leaves) plus the eval figure for the
    backward's transients. Calibrated against peak RSS on PreResNet-20 and the 1-D CNN.
    """
    n = max(1, len(x))
    largest, total = 0, 0

    def nbytes(t) -> int:
        if isinstance(t, torch.Tensor):
            return t.numel() * t.element_size()
        if isinstance(t, (tuple, list)):
            return sum(nbytes(v) for v in t)
        return 0

    def hook(module, args, out) -> None:
        nonlocal largest, total
        o = nbytes(out)
        cols = 0
        weight = getattr(module, "weight", None)
        if im2col and isinstance(weight, torch.Tensor) and weight.dim() >= 3 \
                and isinstance(out, torch.Tensor):
            cols = out.numel() // max(1, weight.shape[0]) * weight[0].numel() * out.element_size()
        largest = max(largest, nbytes(args) + o + cols)
        total += o

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    eval_bytes = (nbytes(x) + 3 * largest) // n
    params = sum(nbytes(t) for t in model.state_dict().values())
    return ActivationSize(eval=int(eval_bytes), train=int(3 * total // n + eval_bytes),
                          parameters=params)
