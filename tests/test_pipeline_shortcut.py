"""PreResNet's two shortcut variants: which tensor feeds the 1x1 downsample shortcut.

``raw`` (the pruning paper's authors' code) feeds the block's input x, ``preact`` (He et al.'s
official code, our default) feeds relu(bn1(x)); identity shortcuts add x in both.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import load_config
from pipeline.models import PreActBlock, build_model, repeat_input
from pipeline.specs import ModelSpec

torch.set_num_threads(1)
SHAPE = (3, 16, 16)


def _spec(shortcut: str) -> ModelSpec:
    return ModelSpec(name="preresnet", depth=20, width=0.25, shortcut=shortcut)


def _randomise_bn(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm affine maps and statistics, so that relu(bn1(x)) differs from x."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.normal_(0, 0.5, generator=g)
                mod.running_var.uniform_(0.5, 2.0, generator=g)
                mod.weight.normal_(1, 0.3, generator=g)
                mod.bias.normal_(0, 0.3, generator=g)


def _shortcut_inputs(model: torch.nn.Module, x: torch.Tensor, mode: str):
    """(block, the block's input, the shortcut conv's input) for every downsampling block."""
    seen = []
    hooks = []
    for block in model.modules():
        if isinstance(block, PreActBlock) and block.shortcut is not None:
            record = {"block": block}
            hooks.append(block.register_forward_pre_hook(
                lambda mod, args, r=record: r.__setitem__("x", args[0].detach().clone())))
            hooks.append(block.shortcut.register_forward_pre_hook(
                lambda mod, args, r=record: r.__setitem__("s", args[0].detach().clone())))
            seen.append(record)
    getattr(model, mode)()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("members", [1, 3])
def test_the_chosen_input_feeds_the_shortcut(mode, members):
    torch.manual_seed(0)
    models = {s: build_model(_spec(s), SHAPE, 10, members=members, seed=1)
              for s in ("raw", "preact")}
    _randomise_bn(models["raw"])
    models["preact"].load_state_dict(models["raw"].state_dict())       # identical weights
    x = torch.randn(4, members * SHAPE[0], *SHAPE[1:])
    for variant, model in models.items():
        records = _shortcut_inputs(model, x, mode)
        assert len(records) == 2                                          # stages 2 and 3
        for r in records:
            block, xin, sin = r["block"], r["x"], r["s"]
            if variant == "raw":
                assert torch.equal(sin, xin)
            else:
                # the block's own bn1 (eval: running statistics; train: the batch's, and the
                # hook ran before the block's forward updated anything observable here)
                bn = block.bn1
                if mode == "eval":
                    want = F.relu(F.batch_norm(xin, bn.running_mean, bn.running_var, bn.weight,
                                               bn.bias, False, 0.0, bn.eps))
                else:
                    want = F.relu(F.batch_norm(xin, None, None, bn.weight, bn.bias, True, 0.0,
                                               bn.eps))
                assert torch.allclose(sin, want, atol=1e-5)
                assert not torch.allclose(sin, xin, atol=1e-3)


def test_the_variants_compute_different_functions_on_the_same_weights():
    raw = build_model(_spec("raw"), SHAPE, 10, seed=2)
    _randomise_bn(raw)
    preact = build_model(_spec("preact"), SHAPE, 10)
    preact.load_state_dict(raw.state_dict())
    assert raw.state_dict().keys() == preact.state_dict().keys()          # same checkpoint format
    x = torch.randn(6, *SHAPE)
    raw.eval()
    preact.eval()
    with torch.no_grad():
        a, b = raw(x), preact(x)
        assert (a - b).abs().max() > 1e-2
        # without downsampling shortcuts nothing would differ: the identity blocks are equal
        block_r, block_p = raw.blocks[0], preact.blocks[0]
        assert block_r.shortcut is None
        h = torch.randn(2, block_r.bn1.num_features, *SHAPE[1:])
        assert torch.equal(block_r(h), block_p(h))


def test_members_and_shared_inputs_keep_the_variant():
    """An M-member raw model is M plain raw models, on per-member and on shared inputs."""
    m = 3
    plains = [build_model(_spec("raw"), SHAPE, 10, seed=s) for s in range(m)]
    for p in plains:
        _randomise_bn(p)
        p.eval()
    from pipeline.models import stack_members

    batched = build_model(_spec("raw"), SHAPE, 10, members=m)
    batched.load_state_dict(stack_members([p.state_dict() for p in plains]))
    batched.eval()
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        want = torch.stack([p(x) for p in plains])                         # [M, B, K]
        assert torch.allclose(batched.logits_shared(x), want, atol=1e-4)
        assert torch.allclose(batched.logits(repeat_input(x, m)).transpose(0, 1), want, atol=1e-4)


def test_default_is_preact_and_leaves_hashes_unchanged():
    spec = ModelSpec(name="preresnet", depth=20)
    assert spec.shortcut == "preact"
    assert "shortcut" not in spec.identity()
    assert spec.spec_hash() == ModelSpec(name="preresnet", depth=20, shortcut="preact").spec_hash()
    assert spec.spec_hash() != ModelSpec(name="preresnet", depth=20, shortcut="raw").spec_hash()


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "preresnet", "shortcut": "identity"}, "model.shortcut='identity'.*preact, raw"),
    ({"name": "vgg", "shortcut": "raw"}, "model.shortcut='raw'.*preresnet"),
])
def test_bad_shortcut_names_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(ModelSpec(**kwargs), SHAPE, 10)


def test_paper_configs_use_the_authors_variant(tmp_path):
    from pathlib import Path

    paths = sorted(Path(__file__).resolve().parent.parent.glob("configs/paper/*.yaml"))
    assert paths
    for path in paths:
        cfg = load_config(path, ["runtime.device=cpu", f"data.data_dir={tmp_path}"])
        assert cfg.model.name == "preresnet" and cfg.model.shortcut == "raw", path.name
