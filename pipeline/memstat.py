"""Peak memory of this process, and varied model states to measure it on (benchmarks, tests).

``peak_rss_mb`` reads the kernel's high-water mark of this process's resident memory
(``VmHWM``). ``resource.getrusage(...).ru_maxrss`` is no substitute in a child process: a
forked child starts with its parent's resident size as its peak and keeps it across
``exec``, so inside a large parent (a full pytest run) a child's own smaller peak never shows.
"""

from __future__ import annotations

import resource
from pathlib import Path

import torch

from pipeline.models import build_model
from pipeline.specs import ModelSpec

_STATUS = Path("/proc/self/status")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (``VmHWM``; where /proc is missing,
    ``ru_maxrss``, which on Linux counts KiB and may include the parent's size at fork)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def varied_states(spec: ModelSpec, shape: tuple[int, ...], n: int, num_classes: int = 10,
                  bn_seed: int = 0) -> list[dict]:
    """``n`` single-model state_dicts, model ``s`` initialised with seed ``s`` and its BatchNorm
    scales drawn from N(1, 0.2) and shifts from N(0, 0.2) (generator seed ``bn_seed + s``), so
    that the models differ and their BatchNorm statistics matter."""
    states = []
    for s in range(n):
        model = build_model(spec, shape, num_classes, seed=s)
        g = torch.Generator().manual_seed(bn_seed + s)
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                    mod.weight.normal_(1, 0.2, generator=g)
                    mod.bias.normal_(0, 0.2, generator=g)
        states.append(model.state_dict())
    return states
