"""Curvature of a model's training loss from Hessian-vector products (no Hessian is formed).

- Trace: Hutchinson's estimator, the mean of v^T H v over Rademacher probes v (entries +-1),
  with its standard error over the probes.
- Top eigenvalue: power iteration on H (the Rayleigh quotient v^T H v of the last iterate;
  it converges to the eigenvalue of largest magnitude, at a minimum the largest).

A Hessian-vector product is a double backward pass (``torch.autograd.grad`` of the gradient
against ``v``): the gradient's graph is built once and reused for every product.

What the loss is (ours): mean cross-entropy, no weight decay, over a fixed subset of training
examples (the first N, not augmented), with the model in eval mode so that BatchNorm uses its
running statistics and the loss is a function of the parameters alone. With masks (a pruned
model) the Hessian is that of the sparse model: restricted to the weights that are kept,
every other float parameter (BatchNorm, biases, the classifier) included. Estimates on small
subsets vary, so the subset size is part of the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

Vector = list[torch.Tensor]


@dataclass
class Curvature:
    trace: float
    trace_stderr: float          # standard error of the Hutchinson mean over the probes
    top_eigenvalue: float
    examples: int                # training examples the loss is taken over
    probes: int
    iterations: int
    parameters: int              # dimension of the Hessian (kept coordinates)

    def as_dict(self) -> dict:
        return asdict(self)


def hvp_function(loss: torch.Tensor, params: list[torch.Tensor]) -> Callable[[Vector], Vector]:
    """v -> H v for the Hessian of ``loss`` (a scalar built from ``params``)."""
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(v: Vector) -> Vector:
        out = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        return [o.detach() for o in out]

    return hvp


def _dot(a: Vector, b: Vector) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def _masked(v: Vector, masks: Vector | None) -> Vector:
    return v if masks is None else [x * m for x, m in zip(v, masks, strict=True)]


def hutchinson_trace(hvp: Callable[[Vector], Vector], like: Vector, probes: int,
                     generator: torch.Generator,
                     masks: Vector | None = None) -> tuple[float, float]:
    """(mean, standard error) of v^T H v over ``probes`` Rademacher vectors shaped ``like``."""
    samples = []
    for _ in range(probes):
        v = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in like]
        v = _masked(v, masks)
        samples.append(float(_dot(v, hvp(v))))
    mean = math.fsum(samples) / len(samples)
    if len(samples) < 2:
        return mean, math.nan
    var = math.fsum((s - mean) ** 2 for s in samples) / (len(samples) - 1)
    return mean, math.sqrt(var / len(samples))


def top_eigenvalue(hvp: Callable[[Vector], Vector], like: Vector, iterations: int,
                   generator: torch.Generator, masks: Vector | None = None,
                   rtol: float = 1e-6) -> float:
    """Power iteration from a random start: the Rayleigh quotient of the last iterate."""
    v = _masked([torch.randn(p.shape, generator=generator).to(p) for p in like], masks)
    norm = torch.sqrt(_dot(v, v))
    v = [x / norm for x in v]
    value = math.nan
    for _ in range(iterations):
        hv = _masked(hvp(v), masks)
        new = float(_dot(v, hv))
        norm = torch.sqrt(_dot(hv, hv))
        if norm == 0:
            return 0.0
        v = [x / norm for x in hv]
        if math.isfinite(value) and abs(new - value) <= rtol * max(abs(new), 1e-30):
            return new
        value = new
    return value


def model_curvature(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    masks: dict[str, torch.Tensor] | None = None, probes: int = 32,
                    iterations: int = 20, seed: int = 0) -> Curvature:
    """Curvature of the mean cross-entropy of ``model`` (an ``EnsembleModel`` of one member, or
    any module returning ``[B, classes]`` logits) on ``(x, y)``, eval mode (see module doc).

    ``masks`` (parameter name -> {0, 1} tensor) restrict the Hessian to the kept weights.
    """
    was_training = model.training
    model.eval()
    try:
        named = [(k, p) for k, p in model.named_parameters()
                 if p.requires_grad and p.is_floating_point()]
        params = [p for _, p in named]
        mask_list = None
        if masks:
            mask_list = [masks[k].to(p) if k in masks else torch.ones_like(p) for k, p in named]
        logits = model.logits(x)[:, 0] if hasattr(model, "logits") else model(x)
        loss = F.cross_entropy(logits, y)
        hvp = hvp_function(loss, params)
        g = torch.Generator().manual_seed(seed)
        trace, stderr = hutchinson_trace(hvp, params, probes, g, mask_list)
        top = top_eigenvalue(hvp, params, iterations, g, mask_list)
        dim = int(sum(m.sum() for m in mask_list)) if mask_list else sum(p.numel() for p in params)
        return Curvature(trace=trace, trace_stderr=stderr, top_eigenvalue=top, examples=len(x),
                         probes=probes, iterations=iterations, parameters=dim)
    finally:
        model.train(was_training)
