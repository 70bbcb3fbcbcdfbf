"""Landscape metrics: the LMC barrier and linear CKA identities, batched = plain, and the
BatchNorm re-estimation protocol."""

from __future__ import annotations

import pytest
import torch

from pipeline.data import load_dataset
from pipeline.landscape import (
    all_pairs,
    interpolate,
    lmc_barrier_from_curve,
    lmc_curves,
    measure_pairs,
    reestimate_bn,
    softmax_outputs,
)
from pipeline.landscape import linear_cka as cka
from pipeline.models import build_model, split_members, stack_members
from pipeline.specs import DataSpec, MeasureSpec, ModelSpec, TrainSpec
from pipeline.train import evaluate, train

torch.set_num_threads(1)

MODEL = ModelSpec(name="cnn1d")


@pytest.fixture(scope="module")
def trained():
    """Three cnn1d models trained independently (different inits and data orders) on MNIST-1D."""
    data = load_dataset(DataSpec(name="mnist1d"))
    inits = [build_model(MODEL, data.input_shape, 10, seed=100 + s).state_dict() for s in range(3)]
    model = build_model(MODEL, data.input_shape, 10, members=3)
    model.load_state_dict(stack_members(inits))
    train(model, data, TrainSpec(epochs=3, batch_size=64, lr=0.1), [0, 1, 2])
    states = split_members({k: v.detach() for k, v in model.state_dict().items()}, 3)
    return data, states


def _build(data):
    return lambda members: build_model(MODEL, data.input_shape, data.num_classes, members)


# --- the barrier formula -------------------------------------------------------------------

@pytest.mark.parametrize("curve, expected", [
    ([0.1, 0.1, 0.1], 0.0),                             # flat: connected
    ([0.1, 0.2, 0.3, 0.2, 0.1], -0.2),                  # a bump in the middle
    ([0.1, 0.3, 0.2], -0.15),                           # a bump over unequal endpoints
    ([0.2, 0.1, 0.2], 0.1),                             # the path is better than its ends
    ([0.1, 0.12, 0.5, 0.13, 0.1], -0.4),
    ([0.1, 0.05, 0.0], -0.05),                          # monotone down: -|e1 - e0| / 2
    ([0.0, 0.05, 0.1], -0.05),                          # monotone up: the same (docs/method.md)
    ([0.123, 0.15, 0.2], -0.0385),                      # monotone, not exactly representable
    ([0.2, 0.15, 0.123], -0.0385),
])
def test_barrier_from_curve(curve, expected):
    assert lmc_barrier_from_curve(curve) == pytest.approx(expected, abs=1e-12)


def test_interpolate_endpoints_and_midpoint(trained):
    _, states = trained
    a, b = states[0], states[1]
    for t, want in ((0.0, a), (1.0, b)):
        got = interpolate(a, b, t)
        assert all(torch.allclose(got[k].float(), want[k].float())
                   for k in a if a[k].is_floating_point())
    mid = interpolate(a, b, 0.5)
    k = "classifier.weight"
    assert torch.allclose(mid[k], (a[k] + b[k]) / 2)


def test_barrier_of_a_model_with_itself_is_zero(trained):
    data, states = trained
    x, y = data.x_train[:1000], data.y_train[:1000]
    curves = lmc_curves(_build(data), [states[0], states[0]], [(0, 1)], x, y, points=7)
    assert len(curves[0]) == 7
    assert max(curves[0]) - min(curves[0]) < 1e-3
    assert lmc_barrier_from_curve(curves[0]) == pytest.approx(0.0, abs=1e-3)
    res = measure_pairs(_build(data), [states[0], states[0]], [(0, 1)], x, y,
                        MeasureSpec(lmc_points=5, cka_examples=500))
    assert res[0].lmc_barrier == pytest.approx(0.0, abs=1e-3)
    assert res[0].cka == pytest.approx(1.0, abs=1e-9)


def test_independent_models_have_a_barrier(trained):
    data, states = trained
    x, y = data.x_train[:1500], data.y_train[:1500]
    res = measure_pairs(_build(data), states, all_pairs(3), x, y,
                        MeasureSpec(lmc_points=11, cka_examples=1500))
    assert [r.pair for r in res] == [(0, 1), (0, 2), (1, 2)]
    for r in res:
        e = r.lmc_errors
        assert len(e) == 11 and all(0 <= v <= 1 for v in e)
        assert r.lmc_barrier == pytest.approx(lmc_barrier_from_curve(e))
        assert r.lmc_barrier < -0.1, f"pair {r.pair}: curve {e}"           # midpoint much worse
        assert max(e[3:8]) > max(e[0], e[-1]) + 0.1
        assert 0.0 < r.cka < 0.999


def test_endpoints_use_reestimated_bn_statistics(trained):
    data, states = trained
    x, y = data.x_train[:1000], data.y_train[:1000]
    curve = lmc_curves(_build(data), states[:2], [(0, 1)], x, y, points=3)[0]
    for i, st in ((0, states[0]), (-1, states[1])):
        model = _build(data)(1)
        model.load_state_dict(st)
        reestimate_bn(model, x, 64)
        assert curve[i] == pytest.approx(1 - float(evaluate(model, x, y)[0]), abs=1e-6)


@pytest.mark.parametrize("max_members, workers", [(5, 1), (64, 1), (5, 2)])
def test_batched_lmc_equals_plain(trained, max_members, workers):
    data, states = trained
    x, y = data.x_train[:1000], data.y_train[:1000]
    pairs = all_pairs(3)
    plain = lmc_curves(_build(data), states, pairs, x, y, points=5, max_members=1)
    batched = lmc_curves(_build(data), states, pairs, x, y, points=5, max_members=max_members,
                         workers=workers)
    for p, b in zip(plain, batched, strict=True):
        assert b == pytest.approx(p, abs=1e-6)


def test_batched_softmax_outputs_equal_plain(trained):
    data, states = trained
    x = data.x_train[:500]
    plain = softmax_outputs(_build(data), states, x, max_members=1)
    batched = softmax_outputs(_build(data), states, x, max_members=64)
    side_by_side = softmax_outputs(_build(data), states, x, max_members=2, workers=2)
    for p, b, s in zip(plain, batched, side_by_side, strict=True):
        assert torch.allclose(p, s, atol=1e-6)
        assert p.shape == (500, 10)
        assert torch.allclose(p.sum(1), torch.ones(500), atol=1e-5)
        assert torch.allclose(p, b, atol=1e-6)


# --- BatchNorm re-estimation ---------------------------------------------------------------

def test_bn_reestimation_is_the_batch_weighted_mean(trained):
    """Running mean = size-weighted mean of per-batch means; running var = size-weighted mean
    of per-batch unbiased variances (the authors' protocol), per member."""
    data, states = trained
    x = data.x_train[:200]                                       # batches of 64, 64, 64, 8
    model = _build(data)(2)
    model.load_state_dict(stack_members(states[:2]))
    with torch.no_grad():                                        # garbage must not leak in
        model.features[1].running_mean.fill_(5.0)
        model.features[1].running_var.fill_(7.0)
    reestimate_bn(model, x, batch_size=64)
    assert not model.training
    got = split_members({k: v for k, v in model.state_dict().items()}, 2)
    for m in range(2):
        plain = _build(data)(1)
        plain.load_state_dict(states[m])
        conv = plain.features[0]
        means, variances, sizes = [], [], []
        with torch.no_grad():
            for start in range(0, len(x), 64):
                h = conv(x[start:start + 64]).double()            # [b, C, L]
                means.append(h.mean((0, 2)))
                variances.append(h.var((0, 2), unbiased=True))
                sizes.append(len(h))
        w = torch.tensor(sizes, dtype=torch.float64) / sum(sizes)
        exp_mean = (torch.stack(means) * w[:, None]).sum(0)
        exp_var = (torch.stack(variances) * w[:, None]).sum(0)
        assert torch.allclose(got[m]["features.1.running_mean"].double(), exp_mean,
                              atol=1e-5, rtol=1e-5)
        assert torch.allclose(got[m]["features.1.running_var"].double(), exp_var,
                              atol=1e-5, rtol=1e-4)
        # not the full-data variance (which would differ when batch means differ)
        h_all = conv(x).double().detach()
        assert not torch.allclose(exp_var, h_all.var((0, 2)), rtol=1e-4)


def test_bn_reestimation_keeps_the_models_momentum(trained):
    data, states = trained
    model = _build(data)(1)
    model.load_state_dict(states[0])
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for i, bn in enumerate(bns):
        bn.momentum = None if i == 0 else 0.01 * (i + 1)
    reestimate_bn(model, data.x_train[:200], batch_size=64)
    assert [bn.momentum for bn in bns] == [None] + [0.01 * (i + 1) for i in range(1, len(bns))]


def test_bn_reestimation_with_a_last_batch_of_one_example():
    """An MLP's BatchNorm1d cannot take a batch of one in train mode: 65 examples in batches
    of 64 must still give finite statistics (e.g. by merging or skipping that batch)."""
    data = load_dataset(DataSpec(name="digits", train_subset=200))
    model = build_model(ModelSpec(name="mlp", width=0.1), data.input_shape, 10, seed=0)
    reestimate_bn(model, data.x_train[:65], batch_size=64)
    bn = model.features[1]
    assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()


# --- CKA -----------------------------------------------------------------------------------

def _cka_gram_reference(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA via centred Gram matrices and the biased HSIC, in float64."""
    x, y = x.double(), y.double()
    n = len(x)
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l_ = x @ x.t(), y @ y.t()

    def hsic(a, b):
        return torch.trace(a @ h @ b @ h) / (n - 1) ** 2

    return float(hsic(k, l_) / torch.sqrt(hsic(k, k) * hsic(l_, l_)))


def _reps(seed: int, n: int = 200, d: int = 10) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cka_identities():
    x, y = _reps(0), _reps(1)
    y = y + 0.5 * x                                               # related, not equal
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert cka(x, y) == pytest.approx(cka(y, x), abs=1e-12)
    assert 0 < cka(x, y) < 1
    assert cka(x, 3.7 * y) == pytest.approx(cka(x, y), abs=1e-12)             # isotropic scaling
    assert cka(x + 4.0, y - 2.0) == pytest.approx(cka(x, y), abs=1e-12)       # centring
    q, _ = torch.linalg.qr(_reps(2, n=10))
    assert cka(x @ q, y) == pytest.approx(cka(x, y), abs=1e-10)               # orthogonal maps
    # not invariant to anisotropic scaling (it is not a trivial constant)
    assert cka(x * torch.linspace(0.1, 3, 10), y) != pytest.approx(cka(x, y), abs=1e-3)


@pytest.mark.parametrize("seeds", [(0, 1), (3, 4)])
def test_cka_matches_the_gram_reference(seeds):
    x, y = _reps(seeds[0]), _reps(seeds[1], d=7)
    y = torch.cat([y, x[:, :3]], 1)                               # different widths are allowed
    assert cka(x, y) == pytest.approx(_cka_gram_reference(x, y), abs=1e-10)


def test_cka_on_softmax_outputs_matches_the_reference(trained):
    data, states = trained
    outs = softmax_outputs(_build(data), states[:2], data.x_train[:300])
    assert cka(outs[0], outs[1]) == pytest.approx(_cka_gram_reference(outs[0], outs[1]), abs=1e-10)


def test_unknown_metric_names_the_field(trained):
    data, states = trained
    with pytest.raises(ValueError, match="measure.metrics"):
        measure_pairs(_build(data), states, [(0, 1)], data.x_train, data.y_train,
                      MeasureSpec(metrics=("lmc", "hessian")))
