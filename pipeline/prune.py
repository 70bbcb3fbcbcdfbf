"""One-shot unstructured pruning methods (a registry) producing exact-density masks.

A method maps the prunable weights of ONE model (name -> tensor) and a density to masks
(name -> float {0,1} tensor of the same shape). Density is the kept fraction of all
prunable weights; per-layer methods round per layer (exact to one weight per layer),
global methods keep exactly round(density * total) weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fnmatch import fnmatchcase

import torch

from pipeline.specs import PruneSpec
from tracking.registries import Registry

Masks = dict[str, torch.Tensor]
# a method: (prunable weights, density, seed, **options) -> masks
PruningMethod = Callable[..., Masks]
PRUNING_METHODS: Registry[PruningMethod] = Registry("pruning method")


def check_pruning(spec: PruneSpec) -> None:
    """Fail fast (before any compute) on an unknown pruning method."""
    PRUNING_METHODS.get(spec.method, field="prune.method")


def prune(weights: dict[str, torch.Tensor], spec: PruneSpec) -> Masks:
    """Masks for ``weights`` (the prunable weights of one model) under ``spec``."""
    method = PRUNING_METHODS.get(spec.method, field="prune.method")
    if spec.density == 1.0:
        return {k: torch.ones_like(w) for k, w in weights.items()}
    return method({k: w.detach().float() for k, w in weights.items()}, spec.density, spec.seed,
                  **_method_options(spec))


def select_prunable(model: torch.nn.Module, spec: PruneSpec) -> list[str]:
    """Names of the weights ``spec`` prunes in ``model`` (an ``EnsembleModel``), in the
    model's parameter order: the model's default set (its Conv/Linear weights, the output
    layer's only with ``prune_classifier``) less the names matching a ``prune.exclude`` glob,
    plus every parameter matching a ``prune.include`` glob (``fnmatch``: ``*`` crosses dots).
    So ``exclude: ['*']`` with ``include: [...]`` prunes exactly the included weights.

    Raises:
        ValueError: a glob matches no parameter (a typo), or nothing is left to prune.
    """
    default = model.prunable_names(include_classifier=spec.prune_classifier)
    if not spec.include and not spec.exclude:
        if not default:
            raise ValueError("the model has no Conv/Linear weight to prune besides its output "
                             "layer: name the weights to prune with prune.include")
        return default
    names = [n for n, _ in model.named_parameters()]
    for where, globs in (("prune.include", spec.include), ("prune.exclude", spec.exclude)):
        for g in globs:
            if not any(fnmatchcase(n, g) for n in names):
                more = " ..." if len(names) > 12 else ""
                raise ValueError(f"{where} glob {g!r} matches no parameter of the model; its "
                                 f"parameters: {', '.join(names[:12])}{more}")
    chosen = {n for n in default if not any(fnmatchcase(n, g) for g in spec.exclude)}
    chosen |= {n for n in names if any(fnmatchcase(n, g) for g in spec.include)}
    if not chosen:
        raise ValueError(f"prune.include={list(spec.include)} / prune.exclude={list(spec.exclude)} "
                         "leave no weight to prune")
    return [n for n in names if n in chosen]


def apply_masks(state: dict[str, torch.Tensor], masks: Masks) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with the pruned weights zeroed (entries without a mask copied)."""
    return {k: (v * masks[k] if k in masks else v.clone()) for k, v in state.items()}


def realized_density(masks: Masks) -> float:
    kept = sum(int(m.sum().item()) for m in masks.values())
    return kept / sum(m.numel() for m in masks.values())


def _keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), device=scores.device)
    if k > 0:
        mask[torch.topk(scores.reshape(-1), k, sorted=False).indices] = 1.0
    return mask.view(scores.shape)


def _per_layer(scores: dict[str, torch.Tensor], density: float) -> Masks:
    return {k: _keep_top(s, max(1, round(density * s.numel()))) for k, s in scores.items()}


def _global(scores: dict[str, torch.Tensor], density: float) -> Masks:
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    keep = _keep_top(flat, round(density * flat.numel()))
    out, start = {}, 0
    for k, s in scores.items():
        out[k] = keep[start:start + s.numel()].view(s.shape)
        start += s.numel()
    return out


@PRUNING_METHODS.register("uniform")
def _uniform(weights, density, seed):
    """The same density in every prunable layer (the paper's default)."""
    return _per_layer({k: w.abs() for k, w in weights.items()}, density)


@PRUNING_METHODS.register("global")
def _global_magnitude(weights, density, seed):
    """One magnitude threshold over all prunable weights."""
    return _global({k: w.abs() for k, w in weights.items()}, density)


def lamp_scores(w: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021): w_u^2 / sum_{v >= u} w_v^2 over the layer sorted by |w| ascending."""
    sq = w.reshape(-1).pow(2)
    order = torch.argsort(sq)
    sorted_sq = sq[order]
    tail = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])   # sum_{v >= u}
    scores = torch.empty_like(sq)
    scores[order] = sorted_sq / tail.clamp_min(1e-30)
    return scores.view(w.shape)


@PRUNING_METHODS.register("lamp")
def _lamp(weights, density, seed):
    """LAMP scores, then one global threshold."""
    return _global({k: lamp_scores(w) for k, w in weights.items()}, density)


@PRUNING_METHODS.register("random")
def _random(weights, density, seed):
    """A baseline: random weights kept, the same density in every layer."""
    g = torch.Generator().manual_seed(seed)
    return _per_layer({k: torch.rand(w.shape, generator=g) for k, w in weights.items()}, density)


# --- AlphaPruning (Lu et al., NeurIPS 2024): per-layer densities from heavy-tailed spectra ------

def _method_options(spec: PruneSpec) -> dict:
    """Extra keyword arguments a method takes from its spec (most take none)."""
    return {"eps": spec.alpha_eps} if spec.method == "alpha" else {}


def alpha_layer_densities(alphas: dict[str, float], sizes: dict[str, int], density: float,
                          eps: float) -> dict[str, int]:
    """Weights to keep per layer, from per-layer alpha (AlphaPruning's allocation).

    Alphas are mapped linearly onto [1 + eps, 1 - eps] (the smallest alpha, the best-trained
    layer, to 1 + eps; the largest to 1 - eps) and multiplied by ``density``; the factors are
    then rescaled so that the kept weights total exactly round(density * total), with a layer
    that would exceed density 1 held at 1 and its excess spread over the others. Each layer
    keeps at least one weight. A NaN alpha (a layer too small to fit) counts as the mean of
    the others; without two distinct finite alphas every layer gets ``density``.

    The paper maps the per-layer *sparsity* (pruned fraction) into [1 - eps, 1 + eps] x target;
    at the low densities of this project's grids (sparsity 0.8-0.95) that leaves (0, 1], so we
    map the kept fraction instead (ours). Both prune layers with larger alpha more.
    """
    names = list(sizes)
    finite = [a for a in (alphas.get(k, math.nan) for k in names) if math.isfinite(a)]
    mean = sum(finite) / len(finite) if finite else 0.0
    a = {k: (alphas[k] if math.isfinite(alphas.get(k, math.nan)) else mean) for k in names}
    lo, hi = min(a.values()), max(a.values())
    factor = {k: (1.0 + eps - 2.0 * eps * (a[k] - lo) / (hi - lo)) if hi > lo else 1.0
              for k in names}
    total = sum(sizes.values())
    target = round(density * total)
    # water-filling: scale the free layers so the total is exact, holding layers at density 1
    full: set[str] = set()
    while True:
        free = [k for k in names if k not in full]
        room = target - sum(sizes[k] for k in full)
        weight = sum(factor[k] * sizes[k] for k in free)
        scale = room / weight if weight > 0 else 0.0
        over = {k for k in free if scale * factor[k] >= 1.0}
        if not over:
            break
        full |= over
    want = {k: (float(sizes[k]) if k in full else scale * factor[k] * sizes[k]) for k in names}
    keep = {k: min(sizes[k], max(1, math.floor(want[k]))) for k in names}
    # largest remainders first until the total is exact (to the weight)
    order = sorted(names, key=lambda k: want[k] - math.floor(want[k]), reverse=True)
    gap = target - sum(keep.values())
    while gap != 0:
        moved = False
        for k in (order if gap > 0 else reversed(order)):
            if gap > 0 and keep[k] < sizes[k]:
                keep[k] += 1
                gap -= 1
                moved = True
            elif gap < 0 and keep[k] > 1:
                keep[k] -= 1
                gap += 1
                moved = True
            if gap == 0:
                break
        if not moved:
            break      # fewer weights than layers: each layer keeps one
    return keep


@PRUNING_METHODS.register("alpha")
def _alpha(weights, density, seed, eps=0.2):
    """AlphaPruning: per-layer densities from the layers' WeightWatcher alpha (larger alpha,
    less well trained, pruned more), then magnitude pruning within each layer."""
    from pipeline.spectra import layer_spectra

    alphas = {k: s.alpha for k, s in layer_spectra(weights).items()}
    keep = alpha_layer_densities(alphas, {k: w.numel() for k, w in weights.items()}, density, eps)
    return {k: _keep_top(w.abs(), keep[k]) for k, w in weights.items()}
