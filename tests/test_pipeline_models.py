"""Models: forward shapes of every registered model, the paper's PreResNet-20, and the
equality of an M-member model with M plain models."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import (
    MODELS,
    build_model,
    repeat_input,
    split_members,
    stack_inputs,
    stack_members,
)
from pipeline.specs import ModelSpec

torch.set_num_threads(1)

# (spec, input shape, classes): every registered model on its dataset's input
CASES = {
    "cnn1d": [(ModelSpec(name="cnn1d"), (1, 40), 10)],
    "mlp": [(ModelSpec(name="mlp"), (1, 40), 10),
            (ModelSpec(name="mlp", depth=3, width=0.25), (1, 8, 8), 10)],
    "preresnet": [(ModelSpec(name="preresnet", depth=20, width=0.25), (3, 32, 32), 10),
                  (ModelSpec(name="preresnet", depth=56, width=0.25), (3, 32, 32), 100)],
    "vgg": [(ModelSpec(name="vgg", width=0.25), (3, 32, 32), 10),
            (ModelSpec(name="vgg", depth=11, width=0.125), (3, 32, 32), 100)],
}
ALL_CASES = [c for name in sorted(CASES) for c in CASES[name]]


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """Equal up to float error relative to the outputs' scale (deep untrained nets in eval
    mode with made-up BN statistics produce logits in the hundreds)."""
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def _id(case):
    spec, shape, k = case
    return f"{spec.name}-d{spec.depth}-w{spec.width}-{k}"


def test_every_model_has_a_test_case():
    assert set(MODELS.names()) == set(CASES)


@pytest.mark.parametrize("case", ALL_CASES, ids=_id)
def test_forward_shape(case):
    spec, shape, k = case
    model = build_model(spec, shape, k, seed=0)
    x = torch.randn(4, *shape)
    model.eval()
    assert model(x).shape == (4, k)
    assert model.logits(x).shape == (4, 1, k)
    model.train()
    assert torch.isfinite(model(x)).all()


def _convs_and_linears(model):
    return [n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() >= 2]


@pytest.mark.parametrize("case", ALL_CASES, ids=_id)
def test_prunable_layers_are_convs_and_linears_but_not_the_classifier(case):
    spec, shape, k = case
    model = build_model(spec, shape, k)
    names = model.prunable_names()
    assert "classifier.weight" not in names
    assert set(names) == set(_convs_and_linears(model)) - {"classifier.weight"}
    assert model.prunable_names(include_classifier=True) == names + ["classifier.weight"]


def test_preresnet20_matches_the_paper():
    model = build_model(ModelSpec(name="preresnet", depth=20), (3, 32, 32), 10)
    names = model.prunable_names()
    assert len(names) == 21                         # stem, 18 block convs, 2 shortcuts
    assert sum(1 for n in names if "shortcut" in n) == 2
    shapes = dict(model.named_parameters())
    assert sorted(tuple(shapes[n].shape[2:]) for n in names if "shortcut" in n) == [(1, 1), (1, 1)]
    params = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < params < 0.28e6, params                        # ~0.27M
    with pytest.raises(ValueError, match="depth"):
        build_model(ModelSpec(name="preresnet", depth=21), (3, 32, 32), 10)


def test_cnn1d_has_about_8k_parameters():
    model = build_model(ModelSpec(name="cnn1d"), (1, 40), 10)
    assert 7000 < sum(p.numel() for p in model.parameters()) < 9000


def test_unknown_model_names_the_field():
    with pytest.raises(ValueError, match="model.name"):
        build_model(ModelSpec(name="resnet9000"), (1, 40), 10)


def test_seeded_builds_are_reproducible():
    spec = ModelSpec(name="cnn1d")
    a, b = build_model(spec, (1, 40), 10, seed=3), build_model(spec, (1, 40), 10, seed=3)
    c = build_model(spec, (1, 40), 10, seed=4)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.state_dict()["classifier.weight"], c.state_dict()["classifier.weight"])


@pytest.mark.parametrize("case", ALL_CASES, ids=_id)
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_members_equal_plain_models(case, mode):
    """An M-member model is M plain models: same outputs on per-member inputs."""
    spec, shape, k = case
    m = 3
    plains = [build_model(spec, shape, k, seed=s) for s in range(m)]
    with torch.no_grad():                                          # non-trivial BN statistics
        for s, p in enumerate(plains):
            for name, buf in p.named_buffers():
                if name.endswith("running_mean"):
                    buf.normal_(0, 0.1, generator=torch.Generator().manual_seed(s))
                elif name.endswith("running_var"):
                    buf.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(s))
    states = [p.state_dict() for p in plains]
    batched = build_model(spec, shape, k, members=m)
    batched.load_state_dict(stack_members(states))
    xs = torch.randn(m, 5, *shape)                                 # each member its own batch
    for p in [*plains, batched]:
        p.train(mode == "train")
    with torch.no_grad():
        expected = torch.stack([p(xs[i]) for i, p in enumerate(plains)], 1)     # [B, M, K]
        got = batched.logits(stack_inputs(xs))
    assert got.shape == (5, m, k)
    assert _close(got, expected)
    if mode == "train":                                            # per-member running statistics
        batched_states = split_members(batched.state_dict(), m)
        for i, p in enumerate(plains):
            for name, buf in p.named_buffers():
                if name.endswith("running_mean"):
                    assert _close(batched_states[i][name], buf)
    # the same batch for every member
    with torch.no_grad():
        same = batched.logits(repeat_input(xs[0], m))
        for i, p in enumerate(plains):
            assert _close(same[:, i], p(xs[0]))


def test_stack_split_round_trip():
    spec = ModelSpec(name="preresnet", depth=20, width=0.25)
    states = [build_model(spec, (3, 32, 32), 10, seed=s).state_dict() for s in range(3)]
    stacked = stack_members(states)
    batched = build_model(spec, (3, 32, 32), 10, members=3)
    batched.load_state_dict(stacked)                               # shapes fit an M-member model
    back = split_members(batched.state_dict(), 3)
    for s, b in zip(states, back, strict=True):
        assert set(s) == set(b)
        for k in s:
            assert b[k].shape == s[k].shape and torch.equal(b[k], s[k]), k
    # split returns copies: changing one does not change the batched model
    back[0]["conv.weight"].zero_()
    assert batched.state_dict()["conv.weight"].abs().sum() > 0


def _randomise_bn(model: torch.nn.Module) -> None:
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.normal_()
            mod.bias.data.normal_()


@pytest.mark.parametrize("case", ALL_CASES, ids=_id)
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_shared_input_logits_equal_the_grouped_forward(case, mode, momentum):
    """``logits_shared`` (member-major bmm where the model supports it) gives the grouped
    forward's logits and, in train mode, the same BatchNorm running statistics."""
    spec, shape, k = case
    grouped = build_model(spec, shape, k, members=4, seed=3)
    _randomise_bn(grouped)
    for mod in grouped.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = momentum
    shared = build_model(spec, shape, k, members=4)
    shared.load_state_dict(grouped.state_dict())
    for mod_g, mod_s in zip(grouped.modules(), shared.modules(), strict=True):
        if isinstance(mod_g, torch.nn.modules.batchnorm._BatchNorm):
            mod_s.momentum = mod_g.momentum
    x = torch.randn(9, *shape)
    getattr(grouped, mode)()
    getattr(shared, mode)()
    with torch.no_grad():
        for _ in range(2):               # twice: the second pass sees updated running stats
            want = grouped.logits(repeat_input(x, 4)).transpose(0, 1)
            got = shared.logits_shared(x)
            assert got.shape == (4, 9, k)
            assert _close(got, want)
    sg, ss = grouped.state_dict(), shared.state_dict()
    for name in sg:
        assert _close(ss[name].float(), sg[name].float()), name


def test_cnn1d_and_mlp_take_the_member_major_path():
    """The fast path is in use for the demo's models (a refactor must not drop it silently)."""
    for name in ("cnn1d", "mlp"):
        assert build_model(ModelSpec(name=name), (1, 40), 10, members=3).member_major


@pytest.mark.parametrize("stride, padding, bias", [(1, 0, False), (2, 1, True), (1, 2, True)])
def test_member_major_2d_convolution_equals_grouped(stride, padding, bias):
    from pipeline.models import EConv, _conv_mm

    conv = EConv(3, 2, 4, 6, 3, stride, padding, bias=bias)
    x = torch.randn(5, 3 * 4, 9, 9)
    want = conv(x)                                                   # [B, M*C, H, W]
    h = x.view(5, 3, 4, 9, 9).permute(1, 0, 3, 4, 2)                 # [M, B, H, W, C]
    h = torch.nn.functional.pad(h, (0, 0) + (padding, padding) * 2)
    got = _conv_mm(conv, h)                                          # [M, B, H', W', C']
    got = got.permute(1, 0, 4, 2, 3).reshape(want.shape)
    assert _close(got, want)
