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

from pipeline.parallel import Budget
from pipeline.specs import ModelSpec
from tracking.registries import Registry


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


def _flatten(x: torch.Tensor) -> torch.Tensor:
    """[B, M*C, *spatial] -> [B, M*(C*prod(spatial))], member-major like a plain flatten."""
    return x.reshape(x.shape[0], -1)


# --- member-major evaluation -----------------------------------------------------------------
# Forward-only work on many members (LMC paths, CKA outputs) runs faster with the members on
# the LEADING axis and channels last, ``[M, B, *spatial, C]``: a convolution is then an im2col
# copy and ONE batched matmul over members (``torch.bmm``, BLAS), 2-3x the FLOP rate of
# oneDNN's grouped convolution over 21-channel groups on these CPUs (bench/cell.py). The
# parameters are the model's own (same state_dict): only the activation layout differs.


def _conv_mm(conv: EConv, h: torch.Tensor, fold: nn.Module | None = None) -> torch.Tensor:
    """``h [M, B, *spatial, Cin]``, ALREADY zero-padded by ``conv.padding`` on each spatial
    side -> ``[M, B, *spatial', Cout]``, exactly the grouped convolution; ``fold``: an
    eval-mode BatchNorm applied to the output, folded into the weights and bias."""
    m, b, s = conv.members, h.shape[1], conv.stride
    k = conv.weight.shape[-1]
    cout = conv.weight.shape[0] // m
    for d in range(conv.dims):
        h = h.unfold(2 + d, k, s)                    # [M, B, *out, Cin, k, ...]
    out_sizes = h.shape[2:2 + conv.dims]
    # (k..., cin) order: the copy below then moves runs of Cin contiguous floats
    h = h.permute(*range(2 + conv.dims), *range(3 + conv.dims, h.dim()), 2 + conv.dims)
    cols = h.reshape(m, -1, conv.weight[0].numel())
    w = conv.weight.view(m, cout, -1, *([k] * conv.dims))
    w = w.permute(0, *range(3, w.dim()), 2, 1).reshape(m, -1, cout)
    bias = conv.bias
    if fold is not None:
        scale = fold.weight * torch.rsqrt(fold.running_var + fold.eps)
        shift = fold.bias - fold.running_mean * scale
        w = w * scale.view(m, 1, cout)
        bias = shift if bias is None else shift + bias * scale
    y = torch.bmm(cols, w) if bias is None else torch.baddbmm(bias.view(m, 1, cout), cols, w)
    return y.view(m, b, *out_sizes, cout)


def _padded(h: torch.Tensor, pad: int, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero buffer ``h``'s shape plus ``pad`` on each side of the ``dims`` spatial axes, and
    its interior view (where the previous layer writes its output directly)."""
    if not pad:
        out = torch.empty_like(h)
        return out, out
    shape = list(h.shape)
    for d in range(dims):
        shape[2 + d] += 2 * pad
    buf = h.new_empty(shape)
    for d in range(dims):               # zero the borders only; the interior is written next
        buf.narrow(2 + d, 0, pad).zero_()
        buf.narrow(2 + d, shape[2 + d] - pad, pad).zero_()
    inner = buf[(slice(None), slice(None)) + (slice(pad, -pad),) * dims]
    return buf, inner


def _bn_mm(bn: nn.modules.batchnorm._BatchNorm, h: torch.Tensor, members: int) -> torch.Tensor:
    """BatchNorm over ``h [M, B, *spatial, C]`` with nn.BatchNorm's train/eval semantics.

    Train mode normalises with the batch statistics and updates the running ones the way
    PyTorch does (``momentum``, or the cumulative average when it is None; unbiased variance).
    """
    c = h.shape[-1]
    shape = (members,) + (1,) * (h.dim() - 2) + (c,)
    if bn.training:
        dims = tuple(range(1, h.dim() - 1))
        n = h[0, ..., 0].numel()
        # two passes (mean, then the centred squares): torch.var_mean's Welford reduction over
        # non-trailing axes is 4x slower here, and E[x^2] - E[x]^2 loses float32 precision
        mean = h.mean(dims, keepdim=True)
        var = torch.linalg.vector_norm(h - mean, 2, dims, keepdim=True).square_().div_(n)
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            mom = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - mom).add_(mean.reshape(-1), alpha=mom)
            bn.running_var.mul_(1 - mom).add_(var.reshape(-1) * (n / max(n - 1, 1)), alpha=mom)
    else:
        mean, var = bn.running_mean.view(shape), bn.running_var.view(shape)
    scale = torch.rsqrt(var + bn.eps) * bn.weight.view(shape)
    return torch.addcmul(bn.bias.view(shape) - mean * scale, h, scale)


def _linear_mm(lin: ELinear, h: torch.Tensor) -> torch.Tensor:
    """``h [M, B, fin]`` -> ``[M, B, fout]``."""
    w = lin.weight.view(lin.members, lin.fout, lin.fin).transpose(1, 2)
    return torch.baddbmm(lin.bias.view(lin.members, 1, lin.fout), h, w)


def _classifier_mm(lin: ELinear, h: torch.Tensor) -> torch.Tensor:
    """Flatten ``h [M, B, *spatial, C]`` and classify; the weight's columns are permuted from the
    plain channel-major flatten order ``(c, *spatial)`` to the layout's ``(*spatial, c)``."""
    m, b = h.shape[:2]
    if h.dim() == 3:
        return _linear_mm(lin, h)
    c, spatial = h.shape[-1], h.shape[2:-1]
    w = (lin.weight.view(m, lin.fout, c, *spatial).movedim(2, -1)
         .reshape(m, lin.fout, -1).transpose(1, 2))
    return torch.baddbmm(lin.bias.view(m, 1, lin.fout), h.reshape(m, b, -1), w)


class EnsembleModel(nn.Module):
    """Base class: ``members`` copies; the final layer is ``self.classifier`` (an ELinear)."""

    members: int
    num_classes: int
    classifier: ELinear
    #: whether ``logits_shared`` can run member-major (a Sequential ``features`` of EConv,
    #: ELinear, BatchNorm and ReLU, then a flatten and the classifier).
    member_major: bool = False
    #: the member-major path flattens the input before ``features`` (an MLP) or not (a CNN).
    _flatten_input: bool = False

    def logits_shared(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[M, B, classes]`` of every member on the SAME batch ``x [B, C, ...]``.

        Equal to ``logits(repeat_input(x, M)).transpose(0, 1)``; runs member-major (bmm)
        where ``member_major`` is set, which is several times faster on CPUs for M > 1.
        """
        m = self.members
        if not self.member_major or m == 1:
            return self.logits(repeat_input(x, m)).transpose(0, 1)
        layers = list(self.features)
        # each layer's output goes straight into the zero-padded buffer the next conv reads
        pads = [0] * (len(layers) + 1)
        for i in range(len(layers) - 1, -1, -1):
            pads[i] = layers[i].padding if isinstance(layers[i], EConv) else pads[i + 1]
        dims = x.dim() - 2
        if self._flatten_input:
            h, dims = x.reshape(x.shape[0], -1), 0
        else:
            h = x.movedim(1, -1)
        h = h.unsqueeze(0).expand(m, *h.shape)
        if pads[0]:
            buf, inner = _padded(h, pads[0], dims)
            inner.copy_(h)
            h = buf
        i = 0
        bn_type = nn.modules.batchnorm._BatchNorm
        while i < len(layers):
            layer = layers[i]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, EConv) and isinstance(nxt, bn_type) and not nxt.training:
                # eval mode: the BatchNorm is an affine map per channel, folded into the conv
                h = _conv_mm(layer, h, fold=nxt)
                i += 1
            elif isinstance(layer, EConv):
                h = _conv_mm(layer, h)
            elif isinstance(layer, ELinear):
                h = _linear_mm(layer, h)
            elif isinstance(layer, bn_type):
                h = _bn_mm(layer, h, m)
            elif isinstance(layer, nn.ReLU):
                h = torch.relu(h)
            else:
                raise TypeError(f"no member-major form for {type(layer).__name__}")
            i += 1
            if i < len(layers) and isinstance(layers[i], nn.ReLU):
                # the ReLU writes straight into the zero-padded buffer the next conv reads
                buf, inner = _padded(h, pads[i + 1], dims)
                torch.clamp_min(h, 0, out=inner)
                h = buf
                i += 1
        return _classifier_mm(self.classifier, h)

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

    member_major = True

    def __init__(self, members: int, in_shape: tuple[int, ...], num_classes: int,
                 width: float = 1.0):
        super().__init__()
        c = max(1, round(21 * width))
        cin, length = in_shape
        self.members, self.num_classes = members, num_classes
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [EConv(members, 1, cin if i == 0 else c, c, 5,
                             stride=1 if i == 0 else 2, padding=2),
                       _bn(members, 1, c), nn.ReLU(inplace=True)]
            if i > 0:
                length = (length + 1) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = ELinear(members, c * length, num_classes)

    def forward(self, x):
        return self.classifier(_flatten(self.features(x)))


class MLP(EnsembleModel):
    """Multi-layer perceptron with BatchNorm; ``depth`` hidden layers of 256*width units."""

    member_major = True
    _flatten_input = True

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
        return self.classifier(self.features(_flatten(x)))


SHORTCUTS = ("preact", "raw")


class PreActBlock(nn.Module):
    """Pre-activation residual block: BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus a shortcut.

    Where the shape changes the shortcut is a 1x1 convolution, fed by ``shortcut``:
    ``"preact"`` = the block's pre-activated input ``relu(bn1(x))`` (He et al.'s code),
    ``"raw"`` = its raw input ``x`` (the code of the pruning paper's authors). An identity
    shortcut always adds the raw ``x``.
    """

    def __init__(self, members: int, cin: int, cout: int, stride: int, shortcut: str = "preact"):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"model.shortcut={shortcut!r}: allowed: {', '.join(SHORTCUTS)}")
        self.raw_shortcut = shortcut == "raw"
        self.bn1 = _bn(members, 2, cin)
        self.conv1 = EConv(members, 2, cin, cout, 3, stride, 1)
        self.bn2 = _bn(members, 2, cout)
        self.conv2 = EConv(members, 2, cout, cout, 3, 1, 1)
        self.shortcut = (EConv(members, 2, cin, cout, 1, stride, 0)
                         if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        if self.shortcut is None:
            short = x
        else:
            short = self.shortcut(x if self.raw_shortcut else out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class PreResNet(EnsembleModel):
    """Pre-activation ResNet for 32x32 images (He et al. 2016), depth 6n+2 (20, 56, ...).

    Three stages of 16, 32, 64 channels (times ``width``); 1x1 convolution shortcuts where the
    shape changes (the first block of stages 2 and 3). ``shortcut`` says what feeds them:
    ``"raw"``, the block's input ``x``, is the pruning paper's own network (its authors' code;
    ``configs/paper/*.yaml`` use it); ``"preact"`` (the default, kept so that existing spec
    hashes keep their meaning), the block's ``relu(bn1(x))``, is He et al.'s official
    pre-activation ResNet. The two compute different functions on the same weights. With
    depth 20 the prunable convolutions are 21 (stem, 18 block convs, 2 shortcuts).
    """

    def __init__(self, members: int, in_shape: tuple[int, ...], num_classes: int,
                 width: float = 1.0, depth: int = 20, shortcut: str = "preact"):
        super().__init__()
        depth = depth or 20
        if (depth - 2) % 6:
            raise ValueError(f"model.depth={depth}: PreResNet depth must be 6n+2 "
                             "(20, 32, 44, 56, ...)")
        n = (depth - 2) // 6
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.members, self.num_classes = members, num_classes
        self.conv = EConv(members, 2, in_shape[0], widths[0], 3, 1, 1)
        blocks, cin = [], widths[0]
        for stage, cout in enumerate(widths):
            for i in range(n):
                blocks.append(PreActBlock(members, cin, cout, 2 if stage > 0 and i == 0 else 1,
                                          shortcut))
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
                layers += [EConv(members, 2, cin, c, 3, 1, 1), _bn(members, 2, c),
                           nn.ReLU(inplace=True)]
                cin = c
        self.features = nn.Sequential(*layers)
        self.classifier = ELinear(members, cin, num_classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# name -> builder(members, in_shape, num_classes, spec) of that architecture
MODELS: Registry[Callable[..., EnsembleModel]] = Registry("model")


def check_model(spec: ModelSpec) -> None:
    """Fail fast (before any compute) on an unknown model or a shortcut it does not have."""
    if spec.factory:
        return      # a model factory: checked when the config is loaded (pipeline.factories)
    MODELS.get(spec.name, field="model.name")
    if spec.shortcut != "preact" and spec.name != "preresnet":
        raise ValueError(f"model.shortcut={spec.shortcut!r}: only model.name=preresnet has a "
                         f"shortcut choice (got model.name={spec.name!r})")


@MODELS.register("cnn1d")
def _cnn1d(members: int, in_shape: tuple[int, ...], num_classes: int, spec: ModelSpec) -> CNN1D:
    return CNN1D(members, in_shape, num_classes, spec.width)


@MODELS.register("mlp")
def _mlp(members: int, in_shape: tuple[int, ...], num_classes: int, spec: ModelSpec) -> MLP:
    return MLP(members, in_shape, num_classes, spec.width, spec.depth)


@MODELS.register("preresnet")
def _preresnet(members: int, in_shape: tuple[int, ...], num_classes: int,
               spec: ModelSpec) -> PreResNet:
    return PreResNet(members, in_shape, num_classes, spec.width, spec.depth, spec.shortcut)


@MODELS.register("vgg")
def _vgg(members: int, in_shape: tuple[int, ...], num_classes: int, spec: ModelSpec) -> VGG:
    return VGG(members, in_shape, num_classes, spec.width, spec.depth)


def build_model(spec: ModelSpec, in_shape: tuple[int, ...], num_classes: int, members: int = 1,
                seed: int | None = None) -> EnsembleModel:
    """Build ``members`` copies of the model of ``spec`` (initialised from ``seed`` if given)."""
    if spec.factory:       # a plain module of the user's, ensembled generically
        from pipeline.factories import build_factory_model

        return build_factory_model(spec, in_shape, num_classes, members, seed)
    check_model(spec)
    build = MODELS.get(spec.name)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build(members, tuple(in_shape), num_classes, spec)
    return build(members, tuple(in_shape), num_classes, spec)


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


def eval_batch_size(model: EnsembleModel, x: torch.Tensor, budget: Budget | None = None,
                    example_bytes: float = 0.0) -> int:
    """Examples per forward for evaluation: large for one model (fewer, bigger ops), small for
    many members on a CPU (the member-major im2col buffers then stay in cache: 64 examples x
    27 members ran 1.5x faster per example than 256); with a ``budget``, no more than fit
    (``example_bytes``: activation memory per member and example, ``parallel.activation_size``).
    """
    if model.members > 1 and model.member_major and x.device.type == "cpu":
        size = 64
    else:
        size = 1000
    if budget is None:
        return size
    return budget.fit(example_bytes * model.members, size)


def repeat_input(x: torch.Tensor, members: int) -> torch.Tensor:
    """The same batch ``[B, C, ...]`` for every member -> ``[B, M*C, ...]``."""
    return x.repeat(1, members, *([1] * (x.dim() - 2))) if members > 1 else x
