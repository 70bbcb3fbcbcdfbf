"""Curvature from Hessian-vector products against the exact Hessian of models small enough to
form it (torch.autograd.functional.hessian)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pipeline.curvature import hutchinson_trace, hvp_function, model_curvature, top_eigenvalue
from pipeline.models import build_model
from pipeline.specs import ModelSpec

torch.set_num_threads(1)


def exact_hessian(model: nn.Module, x, y, logits_fn) -> tuple[torch.Tensor, list[str]]:
    """The full Hessian (float64) of the eval-mode mean cross-entropy over all parameters."""
    m = copy.deepcopy(model).double().eval()
    names = [k for k, _ in m.named_parameters()]
    shapes = [p.shape for _, p in m.named_parameters()]
    sizes = [p.numel() for _, p in m.named_parameters()]
    buffers = dict(m.named_buffers())
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in m.named_parameters()])

    def loss(flat):
        params = {n: t.reshape(s) for n, t, s in zip(names, flat.split(sizes), shapes, strict=True)}
        logits = logits_fn(functional_call(m, {**params, **buffers}, (x.double(),)))
        return F.cross_entropy(logits, y)

    return torch.autograd.functional.hessian(loss, flat0), names


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 5)
        self.b = nn.Linear(5, 4)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _tiny_problem():
    torch.manual_seed(0)
    model = Tiny()
    x, y = torch.randn(40, 3), torch.randint(0, 4, (40,))
    return model, x, y


def test_hvp_equals_exact_hessian_times_v():
    model, x, y = _tiny_problem()
    h, _ = exact_hessian(model, x, y, lambda out: out)
    params = list(model.parameters())
    hvp = hvp_function(F.cross_entropy(model(x), y), params)
    v = [torch.randn_like(p) for p in params]
    got = torch.cat([t.reshape(-1) for t in hvp(v)])
    want = h.float() @ torch.cat([t.reshape(-1) for t in v])
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_hutchinson_trace_and_power_iteration_match_the_exact_hessian():
    model, x, y = _tiny_problem()
    h, _ = exact_hessian(model, x, y, lambda out: out)
    params = list(model.parameters())
    hvp = hvp_function(F.cross_entropy(model(x), y), params)
    g = torch.Generator().manual_seed(0)
    trace, stderr = hutchinson_trace(hvp, params, 2000, g)
    exact_trace = float(torch.trace(h))
    assert abs(trace - exact_trace) < 4 * stderr
    assert trace == pytest.approx(exact_trace, rel=0.05)
    eig = torch.linalg.eigvalsh(h)
    dominant = float(eig[eig.abs().argmax()])
    assert top_eigenvalue(hvp, params, 500, g) == pytest.approx(dominant, rel=1e-3)


def test_masked_curvature_is_the_kept_coordinates_hessian():
    model, x, y = _tiny_problem()
    h, names = exact_hessian(model, x, y, lambda out: out)
    torch.manual_seed(1)
    masks = {"a.weight": (torch.rand(5, 3) < 0.5).float(),
             "b.weight": (torch.rand(4, 5) < 0.5).float()}
    keep = torch.cat([masks.get(k, torch.ones_like(p)).reshape(-1)
                      for k, p in model.named_parameters()]).bool()
    sub = h[keep][:, keep]
    got = model_curvature(model, x, y, masks=masks, probes=3000, iterations=500)
    assert got.parameters == int(keep.sum())
    assert abs(got.trace - float(torch.trace(sub))) < 4 * got.trace_stderr
    eig = torch.linalg.eigvalsh(sub)
    assert got.top_eigenvalue == pytest.approx(float(eig[eig.abs().argmax()]), rel=1e-3)
    # the unmasked Hessian differs: the mask matters
    assert abs(float(torch.trace(h)) - float(torch.trace(sub))) > 5 * got.trace_stderr


def test_project_model_with_batchnorm_in_eval_mode():
    model = build_model(ModelSpec(name="cnn1d", width=0.1), (1, 40), 10, seed=0)
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 40), torch.randint(0, 10, (64,))
    with torch.no_grad():                 # non-trivial running statistics
        model.train()
        model(x)
    h, _ = exact_hessian(model, x, y, lambda out: out)
    got = model_curvature(model, x, y, probes=300, iterations=100, seed=3)
    assert model.training                 # the mode is restored
    assert got.examples == 64 and got.parameters == h.shape[0]
    assert abs(got.trace - float(torch.trace(h))) < 4 * got.trace_stderr
    eig = torch.linalg.eigvalsh(h)
    assert got.top_eigenvalue == pytest.approx(float(eig[eig.abs().argmax()]), rel=1e-2)
