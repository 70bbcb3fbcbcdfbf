"""Training: the SAM step by hand, determinism, batched members = separate runs, masks,
learning-rate schedules, iteration budgets, divergence and resume."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pipeline.data import Dataset, load_dataset, random_crop_flip
from pipeline.dense import train_dense
from pipeline.models import build_model, split_members, stack_members
from pipeline.prune import prune
from pipeline.specs import DataSpec, DenseSpec, ModelSpec, PruneSpec, TrainSpec
from pipeline.train import DivergedError, lr_at, total_epochs, train

torch.set_num_threads(1)


def _max_rel_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max())
               / max(1.0, float(b[k].abs().max()))
               for k in a if a[k].is_floating_point())


# --- SAM -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_name", ["mlp", "cnn1d"])
def test_sam_step_matches_a_hand_computed_step(model_name):
    """One full-batch step, momentum 0, weight decay 0: w <- w - lr * grad L(w + rho g/||g||)."""
    name = "digits" if model_name == "mlp" else "mnist1d"
    data = load_dataset(DataSpec(name=name, train_subset=120, val_fraction=0.0))
    lr, rho = 0.5, 0.05
    spec = TrainSpec(epochs=1, batch_size=10_000, lr=lr, momentum=0.0, weight_decay=0.0,
                     schedule="constant", sam_rho=rho)
    model = build_model(ModelSpec(name=model_name, width=0.25), data.input_shape, 10, seed=0)
    ref = copy.deepcopy(model)
    w0 = {k: v.detach().clone() for k, v in ref.named_parameters()}
    train(model, data, spec, [0])

    ref.train()
    params = list(ref.parameters())
    g = torch.autograd.grad(F.cross_entropy(ref(data.x_train), data.y_train), params)
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
    with torch.no_grad():
        for p, gi in zip(params, g, strict=True):
            p.add_(rho * gi / norm)
    g2 = torch.autograd.grad(F.cross_entropy(ref(data.x_train), data.y_train), params)
    names = [k for k, _ in ref.named_parameters()]
    expected = {k: w0[k] - lr * gi for k, gi in zip(names, g2, strict=True)}
    plain_sgd = {k: w0[k] - lr * gi for k, gi in zip(names, g, strict=True)}
    got = dict(model.named_parameters())
    got = {k: got[k].detach() for k in names}
    assert _max_rel_diff(got, expected) < 1e-5
    assert _max_rel_diff(plain_sgd, expected) > 1e-3, "the test cannot tell SAM from SGD"


def test_sam_does_not_move_bn_statistics_twice():
    """The perturbed pass must not update BatchNorm's running statistics."""
    data = load_dataset(DataSpec(name="mnist1d", train_subset=120, val_fraction=0.0))
    base = TrainSpec(epochs=1, batch_size=10_000, lr=0.1, momentum=0.0, weight_decay=0.0,
                     schedule="constant")
    a = build_model(ModelSpec(name="cnn1d"), data.input_shape, 10, seed=0)
    b = copy.deepcopy(a)
    train(a, data, base, [0])
    train(b, data, base.replace(sam_rho=0.05), [0])
    # one full-batch step: running stats come from the unperturbed weights in both runs
    rm = "features.1.running_mean"
    assert torch.allclose(a.state_dict()[rm], b.state_dict()[rm], atol=1e-6)


# --- determinism and batching --------------------------------------------------------------

def test_dense_training_is_deterministic():
    data = load_dataset(DataSpec(name="mnist1d", train_subset=300))
    spec = DenseSpec(data=DataSpec(name="mnist1d", train_subset=300), train=TrainSpec(epochs=2))
    a = train_dense(spec, data, keep_every_epoch=True)
    b = train_dense(spec, data, keep_every_epoch=True)
    c = train_dense(spec.replace(seed=1), data, keep_every_epoch=True)
    assert sorted(a) == [1, 2]
    assert all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    assert not torch.equal(a[2]["classifier.weight"], c[2]["classifier.weight"])
    assert not torch.equal(a[1]["classifier.weight"], a[2]["classifier.weight"])


def _augmented_digits() -> Dataset:
    d = load_dataset(DataSpec(name="digits", train_subset=200))
    aug = lambda x, g: random_crop_flip(x, g, pad=1)  # noqa: E731
    return Dataset(d.name, d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test,
                   d.num_classes, aug)


@pytest.mark.parametrize("case", ["cnn1d-masks", "mlp-augment-sam"])
def test_batched_members_equal_separate_runs(case):
    """M members trained together follow the trajectories of M single-model runs."""
    if case == "cnn1d-masks":
        data = load_dataset(DataSpec(name="mnist1d", train_subset=300))
        mspec = ModelSpec(name="cnn1d")
        spec = TrainSpec(epochs=2, batch_size=32, lr=0.05)
    else:
        data = _augmented_digits()
        mspec = ModelSpec(name="mlp", width=0.25)
        spec = TrainSpec(epochs=2, batch_size=32, lr=0.05, sam_rho=0.05)
    seeds = [0, 1, 2]
    inits = [build_model(mspec, data.input_shape, 10, seed=10 + s).state_dict() for s in seeds]
    names = build_model(mspec, data.input_shape, 10).prunable_names()
    masks = [prune({k: st[k] for k in names}, PruneSpec(density=0.3, method="random", seed=s))
             if case == "cnn1d-masks" else None for s, st in zip(seeds, inits, strict=True)]

    singles = []
    for s, st, m in zip(seeds, inits, masks, strict=True):
        model = build_model(mspec, data.input_shape, 10)
        model.load_state_dict(st)
        train(model, data, spec, [s], masks=m)
        singles.append(model.state_dict())

    batched = build_model(mspec, data.input_shape, 10, members=3)
    batched.load_state_dict(stack_members(inits))
    stacked_masks = {k: torch.cat([m[k] for m in masks]) for k in names} if masks[0] else None
    train(batched, data, spec, seeds, masks=stacked_masks)
    for got, want in zip(split_members(batched.state_dict(), 3), singles, strict=True):
        assert _max_rel_diff(got, want) < 1e-5
    # and the members really are different runs
    assert _max_rel_diff(singles[0], singles[1]) > 1e-2


def test_seed_count_must_match_members():
    data = load_dataset(DataSpec(name="digits", train_subset=50))
    model = build_model(ModelSpec(name="mlp", width=0.1), data.input_shape, 10, members=2)
    with pytest.raises(ValueError, match="seeds"):
        train(model, data, TrainSpec(epochs=1), [0])


# --- masks ---------------------------------------------------------------------------------

def test_masks_keep_pruned_weights_exactly_zero():
    data = load_dataset(DataSpec(name="mnist1d", train_subset=300))
    model = build_model(ModelSpec(name="cnn1d"), data.input_shape, 10, seed=0)
    names = model.prunable_names()
    masks = prune({k: model.state_dict()[k] for k in names},
                  PruneSpec(density=0.1, method="uniform"))
    spec = TrainSpec(epochs=3, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(start[k][masks[k] == 0].abs().sum() > 0 for k in names)   # zeroed by train()
    seen = []

    def check(report, m, _snapshot):
        st = m.state_dict()
        for k in names:
            assert torch.all(st[k][masks[k] == 0] == 0), f"epoch {report.epoch}: {k}"
        seen.append(report.epoch)

    train(model, data, spec, [0], masks=masks, on_epoch_end=check)
    assert seen == [1, 2, 3]
    st = model.state_dict()
    for k in names:
        kept = masks[k] == 1
        assert not torch.equal(st[k][kept], start[k][kept])


# --- schedules -----------------------------------------------------------------------------

def test_step_schedule_by_epochs():
    spec = TrainSpec(epochs=160, lr=0.1)                 # paper: x0.1 at epochs 80 and 120
    n = 5000
    assert lr_at(spec, 0, 0, n) == pytest.approx(0.1)
    assert lr_at(spec, 79, 0, n) == pytest.approx(0.1)
    assert lr_at(spec, 80, 0, n) == pytest.approx(0.01)
    assert lr_at(spec, 119, 0, n) == pytest.approx(0.01)
    assert lr_at(spec, 120, 0, n) == pytest.approx(0.001)
    assert lr_at(spec, 159, 0, n) == pytest.approx(0.001)


def test_step_schedule_by_iterations():
    spec = TrainSpec(iterations=62400, batch_size=64, lr=0.1)   # paper's batch-size knob budget
    n = 50000
    assert lr_at(spec, 0, 31199, n) == pytest.approx(0.1)
    assert lr_at(spec, 0, 31200, n) == pytest.approx(0.01)
    assert lr_at(spec, 0, 46799, n) == pytest.approx(0.01)
    assert lr_at(spec, 0, 46800, n) == pytest.approx(0.001)
    assert total_epochs(spec, n) == 80                           # 782 steps per epoch


def test_cosine_and_constant_schedules():
    n, bs = 640, 64                                              # 10 steps per epoch
    cos = TrainSpec(epochs=10, batch_size=bs, lr=0.2, schedule="cosine")
    assert lr_at(cos, 0, 0, n) == pytest.approx(0.2)
    assert lr_at(cos, 5, 50, n) == pytest.approx(0.1)
    assert lr_at(cos, 2, 25, n) == pytest.approx(0.1 * (1 + 2 ** -0.5))
    assert lr_at(cos, 9, 100, n) == pytest.approx(0.0, abs=1e-12)
    const = TrainSpec(epochs=10, lr=0.2, schedule="constant")
    assert {lr_at(const, e, 10 * e, n) for e in range(10)} == {0.2}


def test_trainer_follows_the_schedule_and_the_iteration_budget():
    data = load_dataset(DataSpec(name="mnist1d", train_subset=300))   # 270 train: 9 steps/epoch
    model = build_model(ModelSpec(name="cnn1d", width=0.5), data.input_shape, 10, seed=0)
    lrs, iters = [], []

    def record(report, _m, snapshot):
        lrs.append(snapshot().optimizer["param_groups"][0]["lr"])
        iters.append(report.iteration)

    train(model, data, TrainSpec(epochs=4, batch_size=32, lr=0.1), [0], on_epoch_end=record)
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert iters == [9, 18, 27, 36]
    lrs.clear()
    iters.clear()
    train(model, data, TrainSpec(iterations=25, batch_size=32, lr=0.1), [0], on_epoch_end=record)
    assert iters == [9, 18, 25]                                   # stops inside the last epoch
    assert lrs == pytest.approx([0.1, 0.01, 0.001])               # steps at 12 and 19 (of 25)


def test_a_last_batch_of_one_example_does_not_crash_an_mlp():
    """65 training examples in batches of 64 leave a last batch of one: BatchNorm1d over
    [1, features] cannot compute batch statistics, so it must not be fed alone."""
    data = load_dataset(DataSpec(name="digits", train_subset=65, val_fraction=0.0))
    model = build_model(ModelSpec(name="mlp", width=0.1), data.input_shape, 10, seed=0)
    train(model, data, TrainSpec(epochs=1, batch_size=64), [0])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_iteration_budget_is_kept_when_a_batch_of_one_is_skipped():
    """65 examples in batches of 64: if the trailing one-example batch is skipped, the
    iteration budget must still be met (steps per epoch and the epoch count must agree)."""
    data = load_dataset(DataSpec(name="digits", train_subset=65, val_fraction=0.0))
    model = build_model(ModelSpec(name="mlp", width=0.1), data.input_shape, 10, seed=0)
    iters = []
    train(model, data, TrainSpec(iterations=6, batch_size=64), [0],
          on_epoch_end=lambda r, _m, _s: iters.append(r.iteration))
    assert iters[-1] == 6


def test_divergence_raises():
    data = load_dataset(DataSpec(name="mnist1d", train_subset=300))
    model = build_model(ModelSpec(name="cnn1d"), data.input_shape, 10, seed=0)
    with pytest.raises(DivergedError, match="non-finite"):
        train(model, data, TrainSpec(epochs=3, lr=1e6), [0])


def test_resume_continues_exactly():
    data = load_dataset(DataSpec(name="mnist1d", train_subset=300))
    spec = TrainSpec(epochs=4, batch_size=32, lr=0.1)
    init = build_model(ModelSpec(name="cnn1d"), data.input_shape, 10, seed=0).state_dict()
    straight = build_model(ModelSpec(name="cnn1d"), data.input_shape, 10)
    straight.load_state_dict(init)
    snaps = {}
    train(straight, data, spec, [7],
          on_epoch_end=lambda r, m, snap: snaps.__setitem__(r.epoch, snap()))
    resumed = build_model(ModelSpec(name="cnn1d"), data.input_shape, 10)
    train(resumed, data, spec, [7], resume=snaps[2])
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
