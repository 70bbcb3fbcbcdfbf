"""Pruning: a contract suite run over every registered method, LAMP by hand, and the state
of the weights after fine-tuning a pruned model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.cell import run_cell
from pipeline.data import Dataset, load_dataset
from pipeline.dense import train_dense
from pipeline.generic import build_generic
from pipeline.models import build_model, stack_members
from pipeline.prune import (
    PRUNING_METHODS,
    lamp_scores,
    prune,
    realized_density,
    select_prunable,
)
from pipeline.specs import (
    CellSpec,
    DataSpec,
    DenseSpec,
    FinetuneSpec,
    MeasureSpec,
    ModelSpec,
    PruneSpec,
    TrainSpec,
)

torch.set_num_threads(1)

METHODS = PRUNING_METHODS.names()
# How each built-in method counts density: one global count, or per layer.
GLOBAL_COUNT = {"global", "lamp", "alpha"}
PER_LAYER = {"uniform", "random"}
DENSITIES = [0.01, 0.05, 0.1, 0.33, 0.8]


# --- user modules (any nn.Module, through pipeline.generic) -----------------------------------

class HeadFirstMLP(nn.Module):
    """LayerNorm, no BatchNorm; the output layer is defined first and named like nothing."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.zz = nn.Linear(32, classes)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(40, 64), nn.LayerNorm(64), nn.ReLU(),
                                  nn.Linear(64, 32), nn.LayerNorm(32), nn.ReLU())

    def forward(self, x):
        return self.zz(self.body(x))


def _user_cnn1d(classes: int = 10) -> nn.Module:
    """A 1-D CNN whose logits come from a 1x1 convolution, then global pooling."""
    return nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Conv1d(16, 16, 3, stride=2, padding=1), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Conv1d(16, classes, 1), nn.AdaptiveAvgPool1d(1), nn.Flatten())


def _resnet18(classes: int = 10) -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18(num_classes=classes)


# name -> (factory, input shape, the output layer's weight)
USER_MODULES = {"resnet18": (_resnet18, (3, 16, 16), "fc.weight"),
                "headfirst_mlp": (HeadFirstMLP, (1, 40), "zz.weight"),
                "user_cnn1d": (_user_cnn1d, (1, 40), "6.weight")}


def _user_model(name: str, members: int = 1, seed: int | None = 0):
    make, shape, _ = USER_MODULES[name]
    return build_generic(make, shape, 10, members, seed=seed)


def _weights(name: str) -> dict[str, torch.Tensor]:
    if name in USER_MODULES:
        model = _user_model(name)
    else:
        spec, shape = {"cnn1d": (ModelSpec(name="cnn1d"), (1, 40)),
                       "preresnet20": (ModelSpec(name="preresnet", width=0.5), (3, 32, 32))}[name]
        model = build_model(spec, shape, 10, seed=0)
    state = model.state_dict()
    return {k: state[k] for k in model.prunable_names()}


@pytest.fixture(scope="module", params=["cnn1d", "preresnet20", "headfirst_mlp", "user_cnn1d",
                                        pytest.param("resnet18", marks=pytest.mark.slow)])
def weights(request):
    return _weights(request.param)


def test_builtin_methods_are_registered():
    assert {"uniform", "global", "lamp", "random"} <= set(METHODS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("density", DENSITIES)
def test_exact_density(weights, method, density):
    masks = prune(weights, PruneSpec(density=density, method=method))
    assert set(masks) == set(weights)
    total = sum(w.numel() for w in weights.values())
    kept = {k: int(m.sum()) for k, m in masks.items()}
    # every method: exact to one weight per layer
    assert abs(sum(kept.values()) - density * total) <= len(weights)
    assert realized_density(masks) == pytest.approx(sum(kept.values()) / total)
    if method in GLOBAL_COUNT:
        assert sum(kept.values()) == round(density * total)
    elif method in PER_LAYER:
        for k, w in weights.items():
            assert abs(kept[k] - density * w.numel()) <= 1, k
            assert kept[k] >= 1, f"{k}: a layer pruned away entirely"
    else:
        pytest.fail(f"pruning method {method!r}: say in GLOBAL_COUNT or PER_LAYER how it "
                    "counts density")


@pytest.mark.parametrize("method", METHODS)
def test_masks_are_binary_and_saveable(weights, method, tmp_path):
    masks = prune(weights, PruneSpec(density=0.1, method=method))
    for k, m in masks.items():
        assert m.shape == weights[k].shape
        assert m.is_floating_point()
        assert torch.all((m == 0) | (m == 1))
    torch.save(masks, tmp_path / "mask.pt")
    loaded = torch.load(tmp_path / "mask.pt", weights_only=True)
    assert set(loaded) == set(masks)
    assert all(torch.equal(loaded[k], masks[k]) for k in masks)


@pytest.mark.parametrize("method", METHODS)
def test_density_one_keeps_everything(weights, method):
    masks = prune(weights, PruneSpec(density=1.0, method=method))
    assert realized_density(masks) == 1.0


def test_global_keeps_the_largest_magnitudes(weights):
    masks = prune(weights, PruneSpec(density=0.1, method="global"))
    pairs = list(zip(weights.values(), masks.values(), strict=True))
    kept = torch.cat([w[m == 1].abs() for w, m in pairs])
    dropped = torch.cat([w[m == 0].abs() for w, m in pairs])
    assert kept.min() >= dropped.max()


def test_uniform_keeps_the_largest_magnitudes_per_layer(weights):
    masks = prune(weights, PruneSpec(density=0.1, method="uniform"))
    for k, w in weights.items():
        assert w[masks[k] == 1].abs().min() >= w[masks[k] == 0].abs().max(), k


def test_lamp_scores_by_hand():
    w = torch.tensor([1.0, -3.0, 2.0, 0.5])
    # squares 1, 9, 4, .25; ascending .25, 1, 4, 9; tail sums 14.25, 14, 13, 9
    expected = torch.tensor([1 / 14, 9 / 9, 4 / 13, 0.25 / 14.25])
    assert torch.allclose(lamp_scores(w), expected)
    assert torch.allclose(lamp_scores(w.view(2, 2)), expected.view(2, 2))


def test_lamp_keeps_the_highest_scores(weights):
    masks = prune(weights, PruneSpec(density=0.1, method="lamp"))
    scores = {k: lamp_scores(w) for k, w in weights.items()}
    kept = torch.cat([scores[k][masks[k] == 1] for k in weights])
    dropped = torch.cat([scores[k][masks[k] == 0] for k in weights])
    assert kept.min() >= dropped.max()
    # LAMP's per-layer maximum score is 1, so no layer is emptied
    assert all(int(m.sum()) >= 1 for m in masks.values())


def test_random_depends_on_its_seed_only():
    w = _weights("cnn1d")
    a = prune(w, PruneSpec(density=0.2, method="random", seed=0))
    b = prune(w, PruneSpec(density=0.2, method="random", seed=0))
    c = prune(w, PruneSpec(density=0.2, method="random", seed=1))
    mag = prune(w, PruneSpec(density=0.2, method="uniform"))
    assert all(torch.equal(a[k], b[k]) for k in w)
    assert not all(torch.equal(a[k], c[k]) for k in w)
    assert not all(torch.equal(a[k], mag[k]) for k in w)


def test_unknown_method_names_the_field():
    with pytest.raises(ValueError, match="prune.method"):
        prune(_weights("cnn1d"), PruneSpec(method="snip"))


# --- after fine-tuning ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def dense_run():
    data = load_dataset(DataSpec(name="mnist1d", train_subset=600))
    dense = DenseSpec(data=DataSpec(name="mnist1d", train_subset=600), train=TrainSpec(epochs=2))
    state = train_dense(dense, data, keep_every_epoch=False)[0]
    return data, dense, state


def _cell(method: str, prune_classifier: bool = False) -> CellSpec:
    return CellSpec(knob="epochs", temperature=2, checkpoint_epoch=2,
                    prune=PruneSpec(density=0.2, method=method, prune_classifier=prune_classifier),
                    finetune=FinetuneSpec(train=TrainSpec(epochs=2), seeds=(0, 1), last_epochs=1),
                    measure=MeasureSpec(lmc_points=3, cka_examples=100))


@pytest.mark.parametrize("method", METHODS)
def test_finetuning_keeps_pruned_weights_zero_and_trains_the_rest(dense_run, method):
    data, dense, state = dense_run
    res = run_cell(_cell(method), dense, state, data)
    names = build_model(dense.model, data.input_shape, data.num_classes).prunable_names()
    assert set(res.mask) == set(names)                              # classifier not pruned
    total = sum(res.mask[k].numel() for k in names)
    assert abs(res.realized_density * total - 0.2 * total) <= len(names)
    for ft in res.finetuned:
        for k in names:
            pruned = res.mask[k] == 0
            assert torch.all(ft[k][pruned] == 0), f"{k}: a pruned weight moved"
            assert not torch.equal(ft[k][~pruned], state[k][~pruned]), (
                f"{k}: kept weights not trained")
        # unpruned layers train normally: classifier, BatchNorm affine and statistics
        for k in ("classifier.weight", "classifier.bias", "features.1.weight", "features.1.bias",
                  "features.1.running_mean"):
            assert not torch.equal(ft[k], state[k]), f"{k} did not change"
        assert int((ft["classifier.weight"] == 0).sum()) == 0
    assert not torch.equal(res.finetuned[0]["classifier.weight"],
                           res.finetuned[1]["classifier.weight"])


def test_prune_classifier_option(dense_run):
    data, dense, state = dense_run
    res = run_cell(_cell("global", prune_classifier=True), dense, state, data)
    assert "classifier.weight" in res.mask
    pruned = res.mask["classifier.weight"] == 0
    assert pruned.any()
    for ft in res.finetuned:
        assert torch.all(ft["classifier.weight"][pruned] == 0)
    assert math.isfinite(res.metrics()["test_acc"])


# --- user modules: what is prunable, globs, fine-tuning ------------------------------------

@pytest.mark.parametrize("name", sorted(USER_MODULES))
def test_user_module_prunes_every_conv_and_linear_but_the_output_layer(name):
    model = _user_model(name)
    output = USER_MODULES[name][2]
    layers = [f"{n}.weight" for n, m in model.named_modules()
              if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    assert output in layers
    assert model.prunable_names() == [n for n in layers if n != output]
    assert model.prunable_names(include_classifier=True) == layers
    assert select_prunable(model, PruneSpec(prune_classifier=True)) == layers


def test_prune_globs_override_the_default_set():
    model = _user_model("headfirst_mlp")
    default = ["body.1.weight", "body.4.weight"]
    assert select_prunable(model, PruneSpec()) == default
    assert select_prunable(model, PruneSpec(exclude=("body.4.*",))) == ["body.1.weight"]
    # include adds any parameter, in the model's parameter order
    assert select_prunable(model, PruneSpec(include=("zz.weight", "body.2.weight"))) == [
        "zz.weight", "body.1.weight", "body.2.weight", "body.4.weight"]
    # exclude everything, include some: exactly the included ones
    only = PruneSpec(exclude=("*",), include=("body.4.weight",))
    assert select_prunable(model, only) == ["body.4.weight"]
    with pytest.raises(ValueError, match=r"prune.include glob 'bdy\.\*' matches no parameter"):
        select_prunable(model, PruneSpec(include=("bdy.*",)))
    with pytest.raises(ValueError, match="prune.exclude.*leave no weight"):
        select_prunable(model, PruneSpec(exclude=("*",)))
    with pytest.raises(ValueError, match="prune.include"):
        PruneSpec(include="body.*")
    # the defaults leave every existing spec hash alone; a glob is part of the identity
    assert PruneSpec(include=(), exclude=()).spec_hash() == PruneSpec().spec_hash()
    assert "include" not in PruneSpec().identity()
    assert PruneSpec(exclude=("body.4.*",)).spec_hash() != PruneSpec().spec_hash()


def _random_data(shape, n=32, classes=10) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    return Dataset("random", x, y, x[:0], y[:0], x[:8], y[:8], classes)


@pytest.mark.parametrize("name", ["headfirst_mlp", "user_cnn1d"])
@pytest.mark.parametrize("method", METHODS)
def test_user_module_finetuning_keeps_pruned_weights_zero(name, method):
    from pipeline.train import train

    make, shape, output = USER_MODULES[name]
    model = _user_model(name, members=2, seed=1)
    plain = _user_model(name)
    names = plain.prunable_names()
    states = [{k: v.clone() for k, v in s.items()} for s in _split(model)]
    masks = [prune({k: s[k] for k in names}, PruneSpec(density=0.2, method=method, seed=i))
             for i, s in enumerate(states)]
    pruned = [{k: v * m[k] if k in m else v for k, v in s.items()}
              for s, m in zip(states, masks, strict=True)]
    model.load_state_dict(stack_members(pruned))
    stacked = {k: torch.cat([m[k] for m in masks]) for k in names}
    recipe = TrainSpec(epochs=2, batch_size=8, schedule="constant", lr=0.05)
    train(model, _random_data(shape), recipe, [0, 1], masks=stacked)
    for before, after, mask in zip(pruned, _split(model), masks, strict=True):
        total = sum(mask[k].numel() for k in names)
        assert abs(realized_density(mask) * total - 0.2 * total) <= len(names)
        for k in names:
            assert torch.all(after[k][mask[k] == 0] == 0), f"{k}: a pruned weight moved"
            kept = mask[k] == 1
            assert not torch.equal(after[k][kept], before[k][kept]), f"{k}: not trained"
        assert output not in mask
        assert not torch.equal(after[output], before[output]), "the output layer did not train"
        assert int((after[output] == 0).sum()) == 0


def _split(model):
    from pipeline.models import split_members

    return split_members(model.state_dict(), model.members)


def test_a_model_with_nothing_to_prune_says_to_name_weights():
    model = build_generic(lambda: nn.Sequential(nn.Flatten(), nn.Linear(40, 10)), (1, 40), 10)
    assert model.prunable_names() == []
    with pytest.raises(ValueError, match="prune.include"):
        select_prunable(model, PruneSpec())
    assert select_prunable(model, PruneSpec(include=("1.weight",))) == ["1.weight"]
