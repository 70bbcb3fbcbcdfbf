"""Loss-landscape metrics on pairs of fine-tuned copies: the LMC barrier and linear CKA.

Both evaluate many models on the same examples, so both run as one M-member model
(``pipeline.models``): every interpolation point of every pair is one member, BatchNorm
statistics of all of them are re-estimated in ONE pass over the training set, and their
train errors in another. All members see the same examples, so the forward runs
``EnsembleModel.logits_shared`` (member-major batched matmuls on CPUs). ``max_members``
bounds the members evaluated at once; ``max_members=1`` is the plain one-model-at-a-time
computation. A memory ``Budget`` (``pipeline.parallel``; by default half the free memory of
the data's device) bounds them further and sizes the evaluation batches, from a probe of the
model's activation memory per example; no result depends on either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.models import EnsembleModel, eval_batch_size, stack_members
from pipeline.parallel import Budget, activation_size, map_chunks, split
from pipeline.specs import MeasureSpec
from pipeline.train import correct_counts
from tracking.registries import Registry

State = dict[str, torch.Tensor]


@dataclass
class PairMetrics:
    pair: tuple[int, int]
    lmc_barrier: float = float("nan")
    lmc_errors: list[float] | None = None      # train error at each t
    cka: float = float("nan")


def lmc_barrier_from_curve(errors: list[float]) -> float:
    """barrier = e_bar - e(t*), e_bar = (e(0)+e(1))/2, t* = argmax_t |e_bar - e(t)|.

    Negative = a barrier (the path's error rises above the endpoints' mean); ~0 = connected.
    Note: t* may be an endpoint, so a monotone path gives -|e(1) - e(0)| / 2.
    """
    e = torch.tensor(errors, dtype=torch.float64)
    dev = (e[0] + e[-1]) / 2 - e
    # |e_bar - e(0)| = |e_bar - e(1)| always: on a tie the endpoint below e_bar wins, so a
    # monotone path reads -|e(1) - e(0)| / 2 as in the authors' code, whichever way it runs.
    top = dev.abs().max()
    return float(dev[dev.abs() >= top - 1e-12].min())


def interpolate(a: State, b: State, t: float) -> State:
    """(1-t) a + t b over every float tensor; integer buffers taken from ``a``.

    BatchNorm running statistics are interpolated too, but they are re-estimated afterwards.
    """
    return {k: ((1 - t) * a[k] + t * b[k]) if a[k].is_floating_point() else a[k].clone() for k in a}


@torch.no_grad()
def reestimate_bn(model: EnsembleModel, x: torch.Tensor, batch_size: int = 64) -> None:
    """Re-estimate every BatchNorm's running statistics over ``x`` (unshuffled), exactly.

    Train-mode passes over batches of ``batch_size``; each batch's mean and unbiased variance
    are averaged weighted by the batch size (the authors' protocol: the running variance is
    the mean of per-batch variances, not the full-data variance). The weighting is done by
    PyTorch's own update ``r <- (1-m) r + m s`` with ``m = b / (seen + b)``.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
    model.train()
    seen = 0
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        b = len(xb)
        if b < 2:
            continue    # a trailing batch of one has no variance (and BatchNorm1d rejects it)
        for bn in bns:
            bn.momentum = b / (seen + b)
        model.logits_shared(xb)
        seen += b
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum
    model.eval()


def example_bytes(build: Callable[[int], EnsembleModel], x: torch.Tensor, budget: Budget) -> float:
    """Evaluation activation memory per member and example (0 where the budget is unbounded)."""
    if budget.total == float("inf"):
        return 0.0
    probe = build(1)
    return activation_size(probe, x[:2], im2col=getattr(probe, "member_major", False)).eval


def lmc_curves(build: Callable[[int], EnsembleModel], states: list[State],
               pairs: list[tuple[int, int]], x: torch.Tensor, y: torch.Tensor, points: int = 11,
               bn_batch_size: int = 64, max_members: int = 64, workers: int = 1,
               memory: Budget | None = None) -> list[list[float]]:
    """Train error along the linear path of each pair, BN re-estimated at every point.

    Args:
        build: members -> a fresh model with that many members (on the data's device).
        states: single-model state_dicts of the fine-tuned copies.
        x, y: the NON-augmented training set (all of it: the average is exact).
        memory: bounds the members of a chunk (BN re-estimation takes batches of exactly
            ``bn_batch_size``, the protocol) and the counting pass's batches; None: the
            default budget of ``x``'s device.
    """
    budget = (memory or Budget.for_device(x.device)).shared_by(workers)
    per_example = example_bytes(build, x, budget)
    ts = torch.linspace(0, 1, points).tolist()
    # The endpoints of pairs that share a copy are the same model (t=0 gives a exactly, t=1 gives
    # b exactly) with the same re-estimated statistics: evaluate each distinct point once.
    # K=3 copies in 3 pairs: 27 distinct models instead of 33.
    keys: dict[tuple, int] = {}
    where: list[list[int]] = []
    for a, b in pairs:
        row = []
        for i in range(points):
            key = ("copy", a) if i == 0 else ("copy", b) if i == points - 1 else ("path", a, b, i)
            row.append(keys.setdefault(key, len(keys)))
        where.append(row)
    jobs = list(keys)
    errors = [float("nan")] * len(jobs)

    def state_of(key: tuple) -> State:
        if key[0] == "copy":
            return states[key[1]]
        return interpolate(states[key[1]], states[key[2]], ts[key[3]])

    def run(chunk_range: range) -> None:
        model = build(len(chunk_range))
        model.load_state_dict(stack_members([state_of(jobs[j]) for j in chunk_range]))
        reestimate_bn(model, x, bn_batch_size)
        batch = eval_batch_size(model, x, budget, per_example)
        errors_now = (len(x) - correct_counts(model, x, y, batch)).double() / len(x)
        for j, e in zip(chunk_range, errors_now.tolist(), strict=True):
            errors[j] = e

    chunk = budget.fit(per_example * min(bn_batch_size, len(x)), max_members)
    map_chunks(run, split(len(jobs), chunk, workers), workers)
    return [[errors[j] for j in row] for row in where]


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of two representations ``[n, d]`` (biased HSIC).

    Computed in float64 with the feature-space identity
    ||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F) on centred A, B.
    """
    a = a.double() - a.double().mean(0, keepdim=True)
    b = b.double() - b.double().mean(0, keepdim=True)
    num = (b.t() @ a).pow(2).sum()
    den = (a.t() @ a).pow(2).sum().sqrt() * (b.t() @ b).pow(2).sum().sqrt()
    return float(num / den) if den > 0 else float("nan")


@torch.no_grad()
def softmax_outputs(build: Callable[[int], EnsembleModel], states: list[State], x: torch.Tensor,
                    max_members: int = 64, batch_size: int | None = None, workers: int = 1,
                    memory: Budget | None = None) -> list[torch.Tensor]:
    """Softmax outputs ``[n, classes]`` of each model in eval mode with its own BN statistics.

    ``memory`` bounds the members of a chunk (to those that take a batch of 64 examples) and
    the batches (None: the default budget of ``x``'s device)."""
    budget = (memory or Budget.for_device(x.device)).shared_by(workers)
    per_example = example_bytes(build, x, budget)
    @torch.no_grad()   # grad mode is per thread: the decorator above does not reach workers
    def run(chunk_range: range) -> list[torch.Tensor]:
        chunk = [states[j] for j in chunk_range]
        model = build(len(chunk))
        model.load_state_dict(stack_members(chunk))
        model.eval()
        bs = batch_size or eval_batch_size(model, x, budget, per_example)
        parts = [model.logits_shared(x[i:i + bs]).softmax(-1) for i in range(0, len(x), bs)]
        probs = torch.cat(parts, 1)                               # [M, n, K]
        return [probs[m].cpu() for m in range(len(chunk))]

    chunk = budget.fit(per_example * min(64, len(x)), max_members)
    chunks = split(len(states), chunk, workers)
    return [o for outs in map_chunks(run, chunks, workers) for o in outs]


# --- metric registry -----------------------------------------------------------------------

MetricFn = Callable[..., None]
METRICS: Registry[MetricFn] = Registry("metric")


def check_metrics(spec: MeasureSpec) -> None:
    """Fail fast (before any compute) on an unknown metric name."""
    for i, m in enumerate(spec.metrics):
        METRICS.get(m, field=f"measure.metrics[{i}]")


@METRICS.register("lmc")
def _lmc_metric(results, build, states, x, y, spec: MeasureSpec, max_members, workers, memory=None):
    curves = lmc_curves(build, states, [r.pair for r in results], x, y, spec.lmc_points,
                        spec.bn_batch_size, max_members, workers, memory)
    for r, c in zip(results, curves, strict=True):
        r.lmc_errors, r.lmc_barrier = c, lmc_barrier_from_curve(c)


@METRICS.register("cka")
def _cka_metric(results, build, states, x, y, spec: MeasureSpec, max_members, workers, memory=None):
    outs = softmax_outputs(build, states, x[: spec.cka_examples], max_members, workers=workers,
                           memory=memory)
    for r in results:
        r.cka = linear_cka(outs[r.pair[0]], outs[r.pair[1]])


def all_pairs(n: int) -> list[tuple[int, int]]:
    """Every pair (i < j) of n copies: K=3 gives 3 pairs."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def measure_pairs(build: Callable[[int], EnsembleModel], states: list[State],
                  pairs: list[tuple[int, int]], x: torch.Tensor, y: torch.Tensor,
                  spec: MeasureSpec, max_members: int = 64, workers: int = 1,
                  memory: Budget | None = None) -> list[PairMetrics]:
    """Every metric of ``spec`` on each pair of indices into ``states``.

    The pairs may come from many cells: all of them are measured together. ``memory``: see
    ``lmc_curves`` (None: the default budget of ``x``'s device).
    """
    memory = memory or Budget.for_device(x.device)
    check_metrics(spec)
    results = [PairMetrics(p) for p in pairs]
    for name in spec.metrics:
        METRICS.get(name)(results, build, states, x, y, spec, max_members, workers, memory=memory)
    return results
