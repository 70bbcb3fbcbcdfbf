"""M copies of ANY ``nn.Module`` as one ``EnsembleModel``, with ``torch.func``.

``GenericEnsemble`` keeps one structural copy of the user's module (the template) whose
parameters and buffers are replaced by the M members' tensors concatenated along dim 0
(``[M*d0, *rest]``) under the module's OWN names: its state_dict is the M-member state_dict
of ``pipeline.models`` (``stack_members``/``split_members`` convert it, masks and SAM see
member-major tensors), and its BatchNorms are the template's own modules (``reestimate_bn``
finds them and sets their momentum). A forward views every tensor as ``[M, d0, *rest]`` and
runs ``torch.func.vmap(functional_call(template, ...), randomness="different")`` over the
members: each member computes with its own weights, updates its own BatchNorm running
statistics in place (train mode) and normalises with its own (eval mode), and draws its own
dropout masks. ``num_batches_tracked`` is one tensor shared by all members (as in
``stack_members``); non-persistent buffers are not member state and are shared as well.

Where vmap cannot run a module (data-dependent Python control flow, an in-place op it
refuses, outputs that differ from one member at a time), the members run one at a time with
``functional_call``: the same numbers, slower. That is decided once per module structure by
a probe on a small example batch at construction, and said in one printed line.

Notes:
    A 0-dim parameter or buffer is stored as ``[M]`` (each member's value a ``[1]`` slice in
    ``split_members``); ``member_module`` gives back plain modules with the plain shapes.
    The module's ``forward`` must take one input batch ``[B, *in_shape]`` and return logits
    ``[B, num_classes]``.
    One at a time, a member whose forward skips a parameter that another member's uses (data-
    dependent branches) gets a zero gradient for it where a plain loop gets None: SGD then
    still applies weight decay and momentum to that member's slice. vmap cannot take such
    branches, so this only concerns the fallback.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from pipeline.models import EConv, ELinear, EnsembleModel, _is_shared

#: layer types whose weights are prunable by default (the output layer excepted); the
#: built-in models' one-member layers count as the convolutions and linear layers they are
LINEAR_TYPES = (nn.Linear, ELinear)
PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, EConv, *LINEAR_TYPES)

# probe results per module structure: (why vmap cannot run it or None, output layer names)
_PROBED: dict[tuple, tuple[str | None, tuple[str, ...]]] = {}
_SAID: set[tuple] = set()
_PROBE_BATCH = 2


def build_generic(make: Callable[[], nn.Module], in_shape: tuple[int, ...], num_classes: int,
                  members: int = 1, seed: int | None = None) -> GenericEnsemble:
    """``members`` copies of the module ``make()`` returns, as one ``GenericEnsemble``.

    Args:
        make: zero-argument callable returning ONE plain ``nn.Module`` (the same architecture
            every call), e.g. ``lambda: torchvision.models.resnet18(num_classes=10)``.
        in_shape: one example's input shape ``(C, *spatial)``.
        num_classes: logits per example the module must return.
        seed: given: member m is the m-th ``make()`` after ``torch.manual_seed(seed)``
            (``members=1`` is then exactly the plain module built under that seed), the
            global RNG untouched. None: ``make()`` is called ONCE and every member starts as
            that copy (the callers that pass no seed load a state next; building M copies of
            a large module would be wasted).

    Raises:
        ValueError: ``make()`` does not return an ``nn.Module``, or the module fails on an
            input of ``in_shape`` or does not return one logit per class.

    This is all ``build_model`` needs for a ``model.factory`` spec.
    """
    if seed is None:
        return GenericEnsemble([_checked(make())], in_shape, num_classes, members)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        copies = [_checked(make()) for _ in range(members)]
    return GenericEnsemble(copies, in_shape, num_classes, members)


def _checked(module) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise ValueError(f"model.factory returned {type(module).__name__}, not a torch.nn.Module")
    return module


class GenericEnsemble(EnsembleModel):
    """``members`` copies of one module architecture (see the module docstring).

    Args:
        copies: one module per member, or ONE module that every member starts as.
    """

    def __init__(self, copies: list[nn.Module], in_shape: tuple[int, ...], num_classes: int,
                 members: int):
        super().__init__()
        if len(copies) not in (1, members):
            raise ValueError(f"{len(copies)} module copies for {members} members")
        template = copies[0]
        self.members, self.num_classes, self.in_shape = members, num_classes, tuple(in_shape)
        self._stack_into(template, copies)
        # one member with no 0-dim tensor: the template's tensors have the plain shapes
        self._direct = members == 1 and all(len(s) for s in self._plain_shapes.values())
        # the ensemble IS the template's tree under the template's names: the same dicts of
        # children, parameters and buffers, so state_dict keys are the plain module's keys and
        # .to()/.train() reach the modules functional_call runs.
        for attr in ("_modules", "_parameters", "_buffers", "_non_persistent_buffers_set"):
            object.__setattr__(self, attr, getattr(template, attr))
        object.__setattr__(self, "_template", template)
        self._vmap_refused, self.output_layers = self._probe()

    # --- construction -------------------------------------------------------------------

    def _stack_into(self, template: nn.Module, copies: list[nn.Module]) -> None:
        """Replace the template's tensors by the members' tensors stacked along dim 0."""
        m = self.members
        per_copy = [dict(c.named_parameters(remove_duplicate=False)) |
                    dict(c.named_buffers(remove_duplicate=False)) for c in copies]
        stacked: dict[int, torch.Tensor] = {}      # id(template tensor) -> stacked (ties kept)
        #: name -> the plain per-member shape of every tensor vmap maps over
        self._plain_shapes: dict[str, torch.Size] = {}
        self._shared_names: set[str] = set()
        for owner_name, owner in template.named_modules(remove_duplicate=False):
            prefix = f"{owner_name}." if owner_name else ""
            for kind in ("_parameters", "_buffers"):
                slots = getattr(owner, kind)
                for local, t in list(slots.items()):
                    if t is None:
                        continue
                    name = prefix + local
                    shared = kind == "_buffers" and (
                        _is_shared(name) or local in owner._non_persistent_buffers_set)
                    if shared:
                        self._shared_names.add(name)
                        continue
                    self._plain_shapes[name] = t.shape
                    if id(t) not in stacked:
                        with torch.no_grad():
                            parts = [per_copy[i % len(copies)][name].detach() for i in range(m)]
                            data = torch.cat([p.reshape(1) if p.dim() == 0 else p for p in parts])
                        stacked[id(t)] = (nn.Parameter(data, requires_grad=t.requires_grad)
                                          if kind == "_parameters" else data)
                    slots[local] = stacked[id(t)]

    def _probe(self) -> tuple[str | None, tuple[str, ...]]:
        """Run the members on a small example batch: whether vmap runs them (eval and train
        mode, per-member and shared inputs, a backward) with the outputs of one member at a
        time, and which layer produces the logits. State and RNG are left as they were."""
        template = self._template
        key = (type(template).__module__, type(template).__qualname__, self.members > 1,
               self.in_shape, self.num_classes,
               tuple((k, tuple(v.shape), v.dtype) for k, v in self.state_dict().items()))
        if key in _PROBED:
            return _PROBED[key]
        ref = next(iter(self._tensors().values()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
        saved = {k: v.detach().clone() for k, v in self.state_dict().items()}
        was_training = self.training
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(self.members, _PROBE_BATCH, *self.in_shape, generator=gen).to(device, dtype)
        refused = None
        devices = [device.index or 0] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                self.eval()
                looped, output_layers = self._looped_with_output_layers(x)
                if self.members > 1:
                    refused = self._vmap_refusal(x, looped)
        finally:
            with torch.no_grad():
                for k, v in self.state_dict().items():
                    v.copy_(saved[k])
            self.train(was_training)
        _PROBED[key] = (refused, output_layers)
        if refused is not None and key[:2] not in _SAID:
            _SAID.add(key[:2])
            print(f"generic ensemble: torch.func.vmap cannot run {type(template).__name__} "
                  f"({refused}); its members run one at a time", file=sys.stderr)
        return refused, output_layers

    def _looped_with_output_layers(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[str, ...]]:
        """Eval-mode outputs one member at a time ``[M, B, K]``, and the output layers: in
        each member's forward, the last Conv/Linear run whose output carries the logits (it
        is the output, or has one feature per class, where a Conv's may still be pooled).
        More than one only where members take different paths (data-dependent control flow)."""
        runs: list[tuple[str, nn.Module, torch.Tensor]] = []
        def record(name):
            return lambda mod, _, out: runs.append((name, mod, out))

        hooks = [mod.register_forward_hook(record(name))
                 for name, mod in self._template.named_modules() if isinstance(mod, PRUNABLE_TYPES)]
        outs, found = [], []
        try:
            for m in range(self.members):
                runs.clear()
                out = self._call_one_checked(m, x[m])
                layer = None
                for name, mod, h in runs:
                    axis = -1 if isinstance(mod, LINEAR_TYPES) else 1
                    if h is out or (isinstance(h, torch.Tensor) and h.dim() > 1 and h.shape[0]
                                    == x.shape[1] and h.shape[axis] == self.num_classes):
                        layer = name
                if layer is not None and layer not in found:
                    found.append(layer)
                outs.append(out)
        finally:
            for h in hooks:
                h.remove()
        return torch.stack(outs), tuple(found)

    def _call_one_checked(self, m: int, x: torch.Tensor) -> torch.Tensor:
        name = type(self._template).__name__
        try:
            out = self._call_one(self._member_tensors(m), x)
        except Exception as e:
            raise ValueError(f"model.factory: {name} fails on an input of shape {list(x.shape)}: "
                             f"{_first_line(e)}") from e
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (x.shape[0], self.num_classes):
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"model.factory: {name} must return logits [batch, num_classes] = "
                             f"{[x.shape[0], self.num_classes]}, got {got}")
        return out

    def _vmap_refusal(self, x: torch.Tensor, looped: torch.Tensor) -> str | None:
        """Why vmap cannot stand in for one member at a time, or None."""
        try:
            out = self._vmapped(x, 0)
            tol = 1e-4 * max(1.0, float(looped.abs().max()))
            diff = float((out - looped).abs().max())
            if not diff <= tol:
                return f"its outputs differ from one member at a time by {diff:.3g}"
            self.train()
            self._vmapped(x[0], None)
            with torch.enable_grad():
                params = [p for p in self.parameters() if p.requires_grad]
                loss = self._vmapped(x, 0).float().square().mean()
                if params and loss.requires_grad:
                    torch.autograd.grad(loss, params, allow_unused=True)
        except Exception as e:
            return _first_line(e)
        return None

    # --- forward ------------------------------------------------------------------------

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {n: t for n, t in self.named_parameters()} | {n: t for n, t in self.named_buffers()}

    def _member_views(self) -> tuple[dict[str, torch.Tensor], dict[str, int | None]]:
        tensors, dims = {}, {}
        for name, t in self._tensors().items():
            if name in self._shared_names:
                tensors[name], dims[name] = t, None
            else:
                tensors[name], dims[name] = t.view(self.members, *self._plain_shapes[name]), 0
        return tensors, dims

    def _member_tensors(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's tensors; the shared ones as they are for member 0 and as copies for the
        others (one forward per member must count one batch in num_batches_tracked, not M)."""
        views, dims = self._member_views()
        return {k: (v[m] if dims[k] == 0 else v if m == 0 else v.clone()) for k, v in views.items()}

    def _call_one(self, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._template, tensors, (x,))

    def _vmapped(self, x: torch.Tensor, x_dim: int | None) -> torch.Tensor:
        tensors, dims = self._member_views()
        fn = vmap(self._call_one, in_dims=(dims, x_dim), randomness="different")
        return fn(tensors, x)

    def _run(self, x: torch.Tensor, x_dim: int | None) -> torch.Tensor:
        """Logits ``[M, B, K]`` of inputs ``[M, B, ...]`` (x_dim 0) or ``[B, ...]`` (None)."""
        if self._direct:
            return self._template(x[0] if x_dim == 0 else x).unsqueeze(0)
        if self.members > 1 and self._vmap_refused is None:
            return self._vmapped(x, x_dim)
        # every member's tensors before any forward: the copies of the shared buffers are
        # taken before member 0 counts its batch in them
        tensors = [self._member_tensors(m) for m in range(self.members)]
        return torch.stack([self._call_one(t, x[m] if x_dim == 0 else x)
                            for m, t in enumerate(tensors)])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[B, M*C, ...]`` (``stack_inputs``); returns ``[B, M, classes]``."""
        b = x.shape[0]
        per_member = x.view(b, self.members, -1, *x.shape[2:]).transpose(0, 1)
        return self._run(per_member, 0).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).reshape(x.shape[0], self.members * self.num_classes)

    def logits_shared(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[M, B, classes]`` of every member on the same batch ``x [B, C, ...]``."""
        return self._run(x, None)

    def train(self, mode: bool = True) -> GenericEnsemble:
        super().train(mode)
        self._template.training = mode      # its children are ours; itself is not a child
        return self

    # --- pruning and export -------------------------------------------------------------

    def prunable_names(self, include_classifier: bool = False) -> list[str]:
        """Weights of every Conv1d/2d/3d and Linear; the output layer's (the layer producing
        the logits, found by the construction probe) only with ``include_classifier``."""
        canonical = {id(p): n for n, p in self.named_parameters()}
        names: list[str] = []
        for name, mod in self._template.named_modules():
            if not isinstance(mod, PRUNABLE_TYPES) or getattr(mod, "weight", None) is None:
                continue
            if name in self.output_layers and not include_classifier:
                continue
            pname = canonical.get(id(mod.weight))
            if pname is not None and pname not in names:
                names.append(pname)
        return names

    def member_module(self, m: int) -> nn.Module:
        """Member ``m`` as a plain module of the user's class (its own tensors, plain shapes,
        tied weights still tied)."""
        plain = copy.deepcopy(self._template)
        replaced: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for owner_name, owner in plain.named_modules(remove_duplicate=False):
                prefix = f"{owner_name}." if owner_name else ""
                for kind in ("_parameters", "_buffers"):
                    slots = getattr(owner, kind)
                    for local, t in list(slots.items()):
                        name = prefix + local
                        if t is None or name in self._shared_names:
                            continue
                        if id(t) not in replaced:
                            shape = self._plain_shapes[name]
                            value = t.detach().view(self.members, *shape)[m].clone()
                            replaced[id(t)] = (nn.Parameter(value, requires_grad=t.requires_grad)
                                               if kind == "_parameters" else value)
                        slots[local] = replaced[id(t)]
        return plain.train(self.training)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
