"""Models, built so that one module can hold M independent copies ("members").

Every layer keeps its members side by side on the channel axis: a convolution over M members
is one grouped convolution (``groups=M``), a BatchNorm over M members is one BatchNorm over
M*C channels (per-channel statistics are per-member statistics), a linear layer is a batched
matmul. With ``members=1`` each layer is exactly the plain PyTorch layer, and its state_dict
has the plain shapes, so ``split_members``/``stack_members`` convert between a batch of
models and ordinary single-model state_dicts by slicing/concatenating dim 0.

Activations are laid out ``[B, M*C, *spatial]``: member m sees channels m*C:(m+1)*C, so
each member can be fed its own examples (its own data order and augmentation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.specs import ModelSpec


class EConv(nn.Module):
    """M independent convolutions (1-D or 2-D) as one grouped convolution."""

    def __init__(self, members: int, dims: int, cin: int, cout: int, kernel: int,
                 stride: int = 1, padding: int = 0, bias: bool = False):
        super().__init__()
        self.members, self.dims, self.stride, self.padding = members, dims, stride, padding
        self.weight = nn.Parameter(torch.empty(members * cout, cin, *([kernel] * dims)))
        self.bias = nn.Parameter(torch.empty(members * cout)) if bias else None
        fan_in = cin * kernel ** dims
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = F.conv1d if self.dims == 1 else F.conv2d
        return conv(x, self.weight, self.bias, self.stride, self.padding, groups=self.members)


class ELinear(nn.Module):
    """M independent linear layers; input ``[B, M*in]``, output ``[B, M*out]``."""

    def __init__(self, members: int, fin: int, fout: int):
        super().__init__()
        self.members, self.fin, self.fout = members, fin, fout
        self.weight = nn.Parameter(torch.empty(members * fout, fin))
        self.bias = nn.Parameter(torch.empty(members * fout))
        bound = 1 / math.sqrt(fin)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.members == 1:
            return F.linear(x, self.weight, self.bias)
        b = x.shape[0]
        w = self.weight.view(self.members, self.fout, self.fin)
        out = torch.baddbmm(self.bias.view(self.members, 1, self.fout),
                            x.view(b, self.members, self.fin).transpose(0, 1), w.transpose(1, 2))
        return out.transpose(0, 1).reshape(b, self.members * self.fout)


def _bn(members: int, dims: int, channels: int) -> nn.Module:
    return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(members * channels)


def _flatten(x: torch.Tensor, members: int) -> torch.Tensor:
    """[B, M*C, *spatial] -> [B, M*(C*prod(spatial))], member-major like a plain flatten."""
    return x.reshape(x.shape[0], -1)


class EnsembleModel(nn.Module):
    """Base class: ``members`` copies; the final layer is ``self.classifier`` (an ELinear)."""

    members: int
    num_classes: int
    classifier: ELinear

    def prunable_names(self, include_classifier: bool = False) -> list[str]:
        """Names of the prunable weights: conv and linear weights, the classifier optional."""
        names = []
        for name, module in self.named_modules():
            if isinstance(module, (EConv, ELinear)):
                if module is self.classifier and not include_classifier:
                    continue
                names.append(f"{name}.weight")
        return names

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, M*C, ...]``; returns ``[B, M, classes]``."""
        return self(x).view(x.shape[0], self.members, self.num_classes)


class CNN1D(EnsembleModel):
    """Small 1-D CNN with BatchNorm for MNIST-1D (about 8k parameters at width 1).

    A stem convolution, three stride-2 convolutions (40 -> 20 -> 10 -> 5 positions), each
    followed by BatchNorm and ReLU, then a linear classifier over the flattened features.
    """

    def __init__(self, members: int, in_shape: tuple[int, ...], num_classes: int, width: float = 1.0):
        super().__init__()
        c = max(1, round(21 * width))
        cin, length = in_shape
        self.members, self.num_classes = members, num_classes
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [EConv(members, 1, cin if i == 0 else c, c, 5, stride=1 if i == 0 else 2, padding=2),
                       _bn(members, 1, c), nn.ReLU(inplace=True)]
            if i > 0:
                length = (length + 1) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = ELinear(members, c * length, num_classes)

    def forward(self, x):
        return self.classifier(_flatten(self.features(x), self.members))


class MLP(EnsembleModel):
    """Multi-layer perceptron with BatchNorm; ``depth`` hidden layers of 256*width units."""

    def __init__(self, members: int, in_shape: tuple[int, ...], num_classes: int,
                 width: float = 1.0, depth: int = 2):
        super().__init__()
        h = max(1, round(256 * width))
        self.members, self.num_classes = members, num_classes
        layers: list[nn.Module] = []
        fin = math.prod(in_shape)
        for _ in range(depth or 2):
            layers += [ELinear(members, fin, h), _bn(members, 1, h), nn.ReLU(inplace=True)]
            fin = h
        self.features = nn.Sequential(*layers)
        self.classifier = ELinear(members, fin, num_classes)

    def forward(self, x):
        return self.classifier(self.features(_flatten(x, self.members)))


class PreActBlock(nn.Module):
    def __init__(self, members: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = _bn(members, 2, cin)
        self.conv1 = EConv(members, 2, cin, cout, 3, stride, 1)
        self.bn2 = _bn(members, 2, cout)
        self.conv2 = EConv(members, 2, cout, cout, 3, 1, 1)
        self.shortcut = EConv(members, 2, cin, cout, 1, stride, 0) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = F.relu(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreResNet(EnsembleModel):
    """Pre-activation ResNet for 32x32 images (He et al. 2016), depth 6n+2 (20, 56, ...).

    Three stages of 16, 32, 64 channels (times ``width``); 1x1 convolution shortcuts where the
    shape changes, applied after the block's first BN-ReLU as in the paper's code. With depth
    20 the prunable convolutions are 21 (stem, 18 block convs, 2 shortcuts).
    """

    def __init__(self, members: int, in_shape: tuple[int, ...], num_classes: int,
                 width: float = 1.0, depth: int = 20):
        super().__init__()
        depth = depth or 20
        if (depth - 2) % 6:
            raise ValueError(f"model.depth={depth}: PreResNet depth must be 6n+2 (20, 32, 44, 56, ...)")
        n = (depth - 2) // 6
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.members, self.num_classes = members, num_classes
        self.conv = EConv(members, 2, in_shape[0], widths[0], 3, 1, 1)
        blocks, cin = [], widths[0]
        for stage, cout in enumerate(widths):
            for i in range(n):
                blocks.append(PreActBlock(members, cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = _bn(members, 2, cin)
        self.classifier = ELinear(members, cin, num_classes)

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv(x))))
        return self.classifier(F.adaptive_avg_pool2d(out, 1).flatten(1))


_VGG_CFG = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


class VGG(EnsembleModel):
    """VGG with BatchNorm for 32x32 images (depth 11, 16 or 19); one linear classifier."""

    def __init__(self, members: int, in_shape: tuple[int, ...], num_classes: int,
                 width: float = 1.0, depth: int = 16):
        super().__init__()
        depth = depth or 16
        if depth not in _VGG_CFG:
            raise ValueError(f"model.depth={depth}: VGG depth must be one of {sorted(_VGG_CFG)}")
        self.members, self.num_classes = members, num_classes
        layers: list[nn.Module] = []
        cin, size = in_shape[0], in_shape[1]
        for v in _VGG_CFG[depth]:
            if v == "M":
                if size > 1:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                c = max(1, round(v * width))
                layers += [EConv(members, 2, cin, c, 3, 1, 1), _bn(members, 2, c), nn.ReLU(inplace=True)]
                cin = c
        self.features = nn.Sequential(*layers)
        self.classifier = ELinear(members, cin, num_classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


_MODELS: dict[str, Callable[..., EnsembleModel]] = {}


def register_model(name: str, builder: Callable[..., EnsembleModel]) -> None:
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = builder


def list_models() -> list[str]:
    return sorted(_MODELS)


def check_model(spec: ModelSpec) -> None:
    if spec.name not in _MODELS:
        raise ValueError(f"model.name={spec.name!r}: unknown model; allowed: {', '.join(list_models())}")


register_model("cnn1d", lambda m, s, k, spec: CNN1D(m, s, k, spec.width))
register_model("mlp", lambda m, s, k, spec: MLP(m, s, k, spec.width, spec.depth))
register_model("preresnet", lambda m, s, k, spec: PreResNet(m, s, k, spec.width, spec.depth))
register_model("vgg", lambda m, s, k, spec: VGG(m, s, k, spec.width, spec.depth))


def build_model(spec: ModelSpec, in_shape: tuple[int, ...], num_classes: int, members: int = 1,
                seed: int | None = None) -> EnsembleModel:
    """Build ``members`` copies of the model of ``spec`` (initialised from ``seed`` if given)."""
    check_model(spec)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return _MODELS[spec.name](members, tuple(in_shape), num_classes, spec)
    return _MODELS[spec.name](members, tuple(in_shape), num_classes, spec)


# --- members <-> plain state_dicts -------------------------------------------------------

def _is_shared(name: str) -> bool:
    return name.endswith("num_batches_tracked")


def stack_members(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate single-model state_dicts into the state_dict of an M-member model."""
    return {k: (states[0][k].clone() if _is_shared(k) else torch.cat([s[k] for s in states]))
            for k in states[0]}


def split_members(state: dict[str, torch.Tensor], members: int) -> list[dict[str, torch.Tensor]]:
    """Slice an M-member state_dict into M single-model state_dicts (copies)."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(members)]
    for k, v in state.items():
        for m in range(members):
            out[m][k] = v.clone() if _is_shared(k) else v.view(members, -1, *v.shape[1:])[m].clone()
    return out


def stack_inputs(x: torch.Tensor) -> torch.Tensor:
    """Per-member batches ``[M, B, C, ...]`` -> model input ``[B, M*C, ...]``."""
    m, b = x.shape[:2]
    return x.transpose(0, 1).reshape(b, m * x.shape[2], *x.shape[3:])


def repeat_input(x: torch.Tensor, members: int) -> torch.Tensor:
    """The same batch ``[B, C, ...]`` for every member -> ``[B, M*C, ...]``."""
    return x.repeat(1, members, *([1] * (x.dim() - 2))) if members > 1 else x
