"""One-shot unstructured pruning methods (a registry) producing exact-density masks.

A method maps the prunable weights of ONE model (name -> tensor) and a density to masks
(name -> float {0,1} tensor of the same shape). Density is the kept fraction of all
prunable weights; per-layer methods round per layer (exact to one weight per layer),
global methods keep exactly round(density * total) weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.specs import PruneSpec

Masks = dict[str, torch.Tensor]
_METHODS: dict[str, Callable[[dict[str, torch.Tensor], float, int], Masks]] = {}


def register_pruning(name: str):
    def deco(fn):
        if name in _METHODS:
            raise ValueError(f"pruning method {name!r} is already registered")
        _METHODS[name] = fn
        return fn
    return deco


def list_pruning_methods() -> list[str]:
    return sorted(_METHODS)


def check_pruning(spec: PruneSpec) -> None:
    if spec.method not in _METHODS:
        raise ValueError(f"prune.method={spec.method!r}: unknown pruning method; "
                         f"allowed: {', '.join(list_pruning_methods())}")


def prune(weights: dict[str, torch.Tensor], spec: PruneSpec) -> Masks:
    """Masks for ``weights`` (the prunable weights of one model) under ``spec``."""
    check_pruning(spec)
    if spec.density == 1.0:
        return {k: torch.ones_like(w) for k, w in weights.items()}
    return _METHODS[spec.method]({k: w.detach().float() for k, w in weights.items()}, spec.density, spec.seed)


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


@register_pruning("uniform")
def _uniform(weights, density, seed):
    """The same density in every prunable layer (the paper's default)."""
    return _per_layer({k: w.abs() for k, w in weights.items()}, density)


@register_pruning("global")
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


@register_pruning("lamp")
def _lamp(weights, density, seed):
    """LAMP scores, then one global threshold."""
    return _global({k: lamp_scores(w) for k, w in weights.items()}, density)


@register_pruning("random")
def _random(weights, density, seed):
    """A baseline: random weights kept, the same density in every layer."""
    g = torch.Generator().manual_seed(seed)
    return _per_layer({k: torch.rand(w.shape, generator=g) for k, w in weights.items()}, density)
