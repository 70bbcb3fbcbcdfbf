"""Generic ensembles of any nn.Module (pipeline/generic.py): M members trained side by side
equal M plain PyTorch loops, BatchNorm statistics included; dropout masks per member; the
one-at-a-time fallback; LMC, CKA, evaluation and SAM on user modules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline import generic
from pipeline.data import Dataset
from pipeline.generic import build_generic
from pipeline.landscape import (
    linear_cka,
    lmc_barrier_from_curve,
    lmc_curves,
    reestimate_bn,
    softmax_outputs,
)
from pipeline.models import MODELS, build_model, split_members, stack_inputs, stack_members
from pipeline.specs import ModelSpec, TrainSpec
from pipeline.train import derive_seed, evaluate, train

torch.set_num_threads(1)
K = 3


def _resnet18():
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18(num_classes=K)


class LayerNormMLP(nn.Module):
    """No BatchNorm at all; the output layer is defined FIRST (found from the forward)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, K)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.LayerNorm(16), nn.GELU(),
                                  nn.Linear(16, 16), nn.LayerNorm(16), nn.GELU())

    def forward(self, x):
        return self.head(self.body(x))


def _cnn1d():
    # one BatchNorm with momentum None: PyTorch's cumulative average, from num_batches_tracked
    return nn.Sequential(nn.Conv1d(1, 6, 5, padding=2), nn.BatchNorm1d(6), nn.ReLU(inplace=True),
                         nn.Conv1d(6, 6, 3, stride=2, padding=1), nn.BatchNorm1d(6, momentum=None),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 10, K))


class DropoutMLP(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(20, 32), nn.ReLU(), nn.Dropout(p),
                                 nn.Linear(32, K))

    def forward(self, x):
        return self.net(x)


class Branchy(nn.Module):
    """Data-dependent Python control flow: vmap cannot run it. (Both branches use every
    parameter: see the Note in pipeline/generic.py on parameters some members leave unused.)"""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(20, K)

    def forward(self, x):
        x = x.flatten(1)
        return self.a(x) if x.sum() > 0 else torch.tanh(self.a(x))


SHAPES = {"resnet18": (3, 16, 16), "layernorm": (1, 20), "cnn1d": (1, 20), "dropout0": (1, 20),
          "branchy": (1, 20)}
MAKERS = {"resnet18": _resnet18, "layernorm": LayerNormMLP, "cnn1d": _cnn1d,
          "dropout0": lambda: DropoutMLP(0.0), "branchy": Branchy}


def _data(shape, n=16, seed=0, dtype=torch.float32) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g).to(dtype)
    y = torch.randint(0, K, (n,), generator=g)
    return Dataset("random", x, y, x[:0], y[:0], x[:8], y[:8], K)


# 4 steps per epoch x 5 epochs = 20 SGD steps
RECIPE = TrainSpec(epochs=5, batch_size=4, lr=0.05, momentum=0.9, weight_decay=5e-4,
                   schedule="constant")


def _plain_train(module: nn.Module, data: Dataset, spec: TrainSpec, seed: int, stream: str) -> None:
    """The single-model loop in plain PyTorch: the reference a generic ensemble must match."""
    opt = torch.optim.SGD(module.parameters(), lr=spec.lr, momentum=spec.momentum,
                          weight_decay=spec.weight_decay)
    gen = torch.Generator().manual_seed(derive_seed(stream, seed))
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    n = len(data.x_train)
    module.train()
    for _ in range(spec.epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, spec.batch_size):
            idx = perm[start:start + spec.batch_size]
            xb, yb = data.x_train[idx], data.y_train[idx]
            loss = F.cross_entropy(module(xb), yb)
            opt.zero_grad()
            if spec.sam_rho > 0:
                params = [p for p in module.parameters() if p.requires_grad]
                grads = torch.autograd.grad(loss, params)
                norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
                eps = [spec.sam_rho * g / (norm + 1e-12) for g in grads]
                with torch.no_grad():
                    for p, e in zip(params, eps, strict=True):
                        p.add_(e)
                saved = [b.momentum for b in bns]
                for b in bns:
                    b.momentum = 0.0
                F.cross_entropy(module(xb), yb).backward()
                for b, mom in zip(bns, saved, strict=True):
                    b.momentum = mom
                with torch.no_grad():
                    for p, e in zip(params, eps, strict=True):
                        p.sub_(e)
            else:
                loss.backward()
            opt.step()


def _plain_copies(make, members: int, seed: int) -> list[nn.Module]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [make() for _ in range(members)]


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    if not a.is_floating_point():
        return torch.equal(a, b)
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def _assert_trains_like_plain_loops(case: str, members: int, spec: TrainSpec = RECIPE,
                                    dtype: torch.dtype = torch.float32, n: int = 16):
    shape = SHAPES[case]
    make = MAKERS[case] if dtype == torch.float32 else (lambda: MAKERS[case]().to(dtype))
    data = _data(shape, n=n, dtype=dtype)
    seeds = [3, 7, 11][:members]
    model = build_generic(make, shape, K, members, seed=5)
    plains = _plain_copies(make, members, seed=5)
    # member m starts as the m-th module built under the seed, under the module's own names
    for state, plain in zip(split_members(model.state_dict(), members), plains, strict=True):
        assert state.keys() == plain.state_dict().keys()
        # (a 0-dim tensor is a [1] slice of the members' [M])
        assert all(torch.equal(state[k].view(v.shape), v) for k, v in plain.state_dict().items())
    train(model, data, spec, seeds, stream="finetune")
    for plain, s in zip(plains, seeds, strict=True):
        _plain_train(plain, data, spec, s, "finetune")
    trained = split_members(model.state_dict(), members)
    for m, plain in enumerate(plains):
        for k, v in plain.state_dict().items():
            assert _close(trained[m][k].view(v.shape), v), f"member {m}, {k}: not its plain loop's"
    # the members really are different models (own data order), and they moved
    first = next(iter(plains[0].state_dict()))
    if members > 1:
        assert not torch.equal(trained[0][first], trained[1][first])
    return model, plains


@pytest.mark.parametrize("case", ["layernorm", "cnn1d", "dropout0"])
def test_generic_ensemble_equals_separate_plain_loops(case):
    model, plains = _assert_trains_like_plain_loops(case, members=3)
    assert model._vmap_refused is None, "vmap should run this module"


def test_generic_resnet18_one_step_equals_plain_modules():
    """Train-mode logits, gradients and BatchNorm statistics of one step, float32 (the
    gradients through 18 layers differ by float32 summation order: up to 1e-5 of the largest
    over 12 inputs, hence 3e-5; a wrong gradient is off by its own size)."""
    make, shape = MAKERS["resnet18"], SHAPES["resnet18"]
    model = build_generic(make, shape, K, 2, seed=5)
    plains = _plain_copies(make, 2, seed=5)
    x = torch.randn(2, 8, *shape, generator=torch.Generator().manual_seed(0))
    model.train()
    out = model.logits(stack_inputs(x)).transpose(0, 1)
    out.square().sum().backward()
    state = split_members(model.state_dict(), 2)
    grads = split_members({k: p.grad for k, p in model.named_parameters()}, 2)
    for m, plain in enumerate(plains):
        ref = plain.train()(x[m])
        ref.square().sum().backward()
        assert _close(out[m], ref)
        for k, p in plain.named_parameters():
            assert _close(grads[m][k], p.grad, 3e-5), (m, k)
        for k, b in plain.named_buffers():
            assert _close(state[m][k], b), (m, k)


@pytest.mark.slow
def test_generic_resnet18_equals_separate_plain_loops():
    # float64: SGD on ResNet-18 with 16x16 random images in small batches is chaotic: two
    # PLAIN float32 loops whose initial weights differ by 1e-7 differ by 1e-3 after 4 steps of
    # batches of 8 (lr 0.002). In float64, with these settings, a 1e-12 change grows to 6e-7
    # in 20 steps, so rounding stays far below 1e-5.
    model, plains = _assert_trains_like_plain_loops(
        "resnet18", members=2, spec=RECIPE.replace(batch_size=8, lr=0.01), dtype=torch.float64,
        n=32)
    assert model._vmap_refused is None
    # BatchNorm buffers were compared above; check they are really per member
    state = split_members(model.state_dict(), 2)
    key = "layer1.0.bn1.running_mean"
    assert not torch.equal(state[0][key], state[1][key])
    assert int(state[0]["bn1.num_batches_tracked"]) == 20


def test_one_member_is_the_plain_module():
    model, plains = _assert_trains_like_plain_loops("cnn1d", members=1)
    assert model._direct


def test_eval_mode_uses_each_members_own_statistics():
    make, shape = MAKERS["cnn1d"], SHAPES["cnn1d"]
    data = _data(shape)
    model = build_generic(make, shape, K, 3, seed=1)
    train(model, data, RECIPE, [0, 1, 2])
    x = data.x_test
    model.eval()
    shared = model.logits_shared(x)                                   # [M, B, K]
    per_member = model.logits(stack_inputs(x.unsqueeze(0).expand(3, *x.shape))).transpose(0, 1)
    for m in range(3):
        plain = model.member_module(m).eval()
        assert not plain.training
        with torch.no_grad():
            ref = plain(x)
        assert _close(shared[m], ref) and _close(per_member[m], ref)
    acc = evaluate(model, data.x_test, data.y_test)
    for m in range(3):
        with torch.no_grad():
            pred = model.member_module(m).eval()(data.x_test).argmax(1)
        assert float(acc[m]) == pytest.approx(float((pred == data.y_test).float().mean()))


def test_dropout_each_member_draws_its_own_masks():
    shape = SHAPES["dropout0"]
    # seed None: every member starts as the same module, so only the masks can differ
    model = build_generic(lambda: DropoutMLP(0.5), shape, K, 4)
    x = torch.randn(8, *shape)
    model.eval()
    out = model.logits_shared(x)
    assert all(torch.equal(out[0], out[m]) for m in range(4)), "eval mode: no dropout"
    model.train()
    out = model.logits_shared(x)
    assert all(not torch.equal(out[0], out[m]) for m in range(1, 4)), "members shared a mask"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        a = model.logits_shared(x)
        torch.manual_seed(0)
        b = model.logits_shared(x)
    assert torch.equal(a, b), "dropout draws come from torch's RNG"


def test_unsupported_control_flow_falls_back_one_member_at_a_time(monkeypatch, capsys):
    monkeypatch.setattr(generic, "_PROBED", {})
    monkeypatch.setattr(generic, "_SAID", set())
    model, _ = _assert_trains_like_plain_loops("branchy", members=2)
    out = capsys.readouterr().err.strip().splitlines()
    said = [line for line in out if "generic ensemble" in line]
    assert len(said) == 1, out
    assert "Branchy" in said[0] and "one at a time" in said[0] and "control flow" in said[0]
    assert model._vmap_refused is not None
    # a second model of the same structure does not say it again
    build_generic(Branchy, SHAPES["branchy"], K, 3)
    assert "generic ensemble" not in capsys.readouterr().err


def test_fallback_counts_one_batch_per_forward_for_every_member(monkeypatch):
    """Members run one at a time share num_batches_tracked: it counts each forward once, so
    a BatchNorm with momentum None averages the same way as under vmap."""
    class BranchyBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(20, momentum=None)
            self.fc = nn.Linear(20, K)

        def forward(self, x):
            x = self.bn(x.flatten(1))
            return self.fc(x) if x.sum() > -1e9 else -self.fc(x)

    monkeypatch.setattr(generic, "_SAID", set())
    model = build_generic(BranchyBN, (1, 20), K, 3, seed=0)
    assert model._vmap_refused is not None
    data = _data((1, 20))
    plains = _plain_copies(BranchyBN, 3, seed=0)
    train(model, data, RECIPE, [0, 1, 2])
    for plain, s in zip(plains, [0, 1, 2], strict=True):
        _plain_train(plain, data, RECIPE, s, "train")
    for m, state in enumerate(split_members(model.state_dict(), 3)):
        for k, v in plains[m].state_dict().items():
            assert _close(state[k], v), (m, k)


def test_module_output_must_be_one_logit_per_class():
    with pytest.raises(ValueError, match=r"model.factory.*logits \[batch, num_classes\]"):
        build_generic(lambda: nn.Sequential(nn.Flatten(), nn.Linear(20, 5)), (1, 20), K, 2)
    with pytest.raises(ValueError, match="model.factory.*fails on an input"):
        build_generic(lambda: nn.Linear(7, K), (1, 20), K, 2)
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        build_generic(lambda: "a string", (1, 20), K, 2)


def test_zero_dim_parameters_and_tied_weights():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(2.0))
            self.enc = nn.Linear(20, 20)
            self.dec = nn.Linear(20, 20)
            self.dec.weight = self.enc.weight           # tied
            self.out = nn.Linear(20, K)

        def forward(self, x):
            return self.out(torch.relu(self.dec(self.enc(x.flatten(1))))) * self.scale

    model, plains = _assert_trains_like_plain_loops_for(Odd, (1, 20), members=2)
    assert model.state_dict()["scale"].shape == (2,)
    plain = model.member_module(1)
    assert plain.scale.shape == () and plain.dec.weight is plain.enc.weight
    assert plain.scale.item() == pytest.approx(plains[1].scale.item(), abs=1e-6)
    assert model.prunable_names() == ["enc.weight"]            # out is the output layer


def _assert_trains_like_plain_loops_for(make, shape, members):
    MAKERS["_tmp"], SHAPES["_tmp"] = make, shape
    try:
        return _assert_trains_like_plain_loops("_tmp", members)
    finally:
        del MAKERS["_tmp"], SHAPES["_tmp"]


def test_sam_equals_plain_sam_loops():
    _assert_trains_like_plain_loops("cnn1d", members=2, spec=RECIPE.replace(sam_rho=0.05, epochs=2))


# --- landscape: LMC, BatchNorm re-estimation, CKA ---------------------------------------------

def _build(case):
    return lambda members: build_generic(MAKERS[case], SHAPES[case], K, members)


def _trained_states(case, members=2):
    data = _data(SHAPES[case], n=40)
    model = build_generic(MAKERS[case], SHAPES[case], K, members, seed=2)
    train(model, data, RECIPE.replace(epochs=2), list(range(members)))
    return data, split_members(model.state_dict(), members)


@pytest.mark.parametrize("case", ["cnn1d", "layernorm", "dropout0"])   # BN, LayerNorm, none
def test_lmc_barrier_of_a_model_with_itself_is_zero(case):
    data, states = _trained_states(case)
    curves = lmc_curves(_build(case), [states[0], states[0]], [(0, 1)], data.x_train, data.y_train,
                        points=5, bn_batch_size=16)
    assert lmc_barrier_from_curve(curves[0]) == 0.0
    assert len(set(curves[0])) == 1
    # and between two different members the curve is a real measurement
    other = lmc_curves(_build(case), states, [(0, 1)], data.x_train, data.y_train, points=5,
                       bn_batch_size=16)[0]
    assert all(0.0 <= e <= 1.0 for e in other)


def test_reestimate_bn_matches_per_member_plain_reestimation():
    case = "cnn1d"
    data, states = _trained_states(case, members=3)
    model = _build(case)(3)
    model.load_state_dict(stack_members(states))
    reestimate_bn(model, data.x_train, batch_size=16)
    got = split_members(model.state_dict(), 3)
    for m in range(3):
        plain = MAKERS[case]()
        plain.load_state_dict(states[m])
        bns = [b for b in plain.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
        for b in bns:
            b.reset_running_stats()
        plain.train()
        seen = 0
        with torch.no_grad():
            for start in range(0, len(data.x_train), 16):
                xb = data.x_train[start:start + 16]
                for b in bns:
                    b.momentum = len(xb) / (seen + len(xb))
                plain(xb)
                seen += len(xb)
        for k, v in plain.state_dict().items():
            if "running" in k:
                assert _close(got[m][k], v), (m, k)
                assert not torch.equal(got[m][k], states[m][k]), f"{k} was not re-estimated"
    # the modules' own momenta are restored (one of them is None)
    assert [b.momentum for b in model.modules() if isinstance(b, nn.BatchNorm1d)] == [0.1, None]


@pytest.mark.parametrize("case", ["cnn1d", "layernorm"])
def test_cka_of_a_model_with_itself_is_one(case):
    data, states = _trained_states(case)
    outs = softmax_outputs(_build(case), [states[0], states[0], states[1]], data.x_train)
    assert linear_cka(outs[0], outs[1]) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(outs[0], outs[2]) < 1.0
    plain = MAKERS[case]()
    plain.load_state_dict(states[1])
    with torch.no_grad():
        assert _close(outs[2], plain.eval()(data.x_train).softmax(-1))


# --- the built-in models through the generic path (bench/generic.py compares their speed) ------

BUILTIN = {"cnn1d": (ModelSpec(name="cnn1d"), (1, 40)),
           "mlp": (ModelSpec(name="mlp", width=0.25), (1, 40)),
           "preresnet": (ModelSpec(name="preresnet", width=0.25), (3, 32, 32)),
           "vgg": (ModelSpec(name="vgg", depth=11, width=0.125), (3, 32, 32))}


@pytest.mark.parametrize("name", MODELS.names())
def test_builtin_one_member_model_through_the_generic_path(name):
    """A built-in with one member is a plain module: M generic copies of it are the hand-written
    M-member model (same state_dict, same logits in both modes, same prunable weights)."""
    spec, shape = BUILTIN[name]
    hand = build_model(spec, shape, 10, 3, seed=0)
    gen = build_generic(lambda: build_model(spec, shape, 10, 1), shape, 10, 3)
    gen.load_state_dict(hand.state_dict())
    assert gen.prunable_names() == hand.prunable_names()
    everything = hand.prunable_names(include_classifier=True)
    assert gen.prunable_names(include_classifier=True) == everything
    x = torch.randn(3, 4, *shape)
    for mode in ("eval", "train"):
        getattr(hand, mode)()
        getattr(gen, mode)()
        assert _close(gen.logits(stack_inputs(x)), hand.logits(stack_inputs(x)))
        with torch.no_grad():       # as LMC and CKA run it (the member-major path needs it)
            assert _close(gen.logits_shared(x[0]), hand.logits_shared(x[0]))
    for k, v in hand.state_dict().items():      # the train-mode passes updated the same statistics
        assert _close(gen.state_dict()[k], v), k
