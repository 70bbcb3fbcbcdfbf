"""A model and a dataset of one's own: factories named by import path.

Instead of a built-in name, a config may name a *factory*, a function found by its import path
``"package.module:function"`` and called with the config's ``kwargs``::

    model: {factory: "mylab.nets:make_net", kwargs: {num_classes: 10}}
    data:  {factory: "mylab.data:load", kwargs: {n: 2000}}

- A model factory returns ONE plain ``torch.nn.Module`` mapping a batch ``[B, *input]`` to
  logits ``[B, num_classes]``; the grid trains M copies of it side by side
  (:mod:`pipeline.generic`).
- A data factory returns a mapping with ``train`` and ``test`` (and optionally ``val``), each
  an ``(inputs, labels)`` pair of tensors (or arrays) or a ``torch.utils.data.Dataset`` of such
  pairs, ``num_classes``, and optionally ``augment``: a callable applied to a batch of
  training inputs on the compute device, ``augment(x, generator)`` (draw every random number
  from the ``torch.Generator`` given: each model copy has its own) or ``augment(x)`` (it is
  then run with torch's global generator seeded from that copy's generator, so it is
  reproducible too). Inputs are used as given (normalise them in the factory); float64 is
  stored as float32, labels as int64. Without ``val``, ``data.val_fraction`` of ``train`` is
  split off with ``data.split_seed``, as for the built-in datasets.

A factory's module is imported from the installed packages, the working directory or the
config's folder (``code_dir``, carried with the specs to every Dask worker).

Identity: the spec hash covers the factory path, its kwargs and a fingerprint computed when
the config is loaded: of the module (its printed structure, which shows layer settings such
as strides, and every parameter's and buffer's name, shape and dtype) and of the data (the
number of classes, every tensor's shape and dtype and a SHA-256 of its bytes, the augment
function's name). A changed architecture or dataset gets new cells; an unchanged one is found
in the cache. A change only inside a ``forward`` or an ``augment`` body is not seen: give the
factory a kwarg (e.g. ``version: 2``) to mark it.

Every check (import, kwargs, return types, label ranges, logits per class) runs when the
config is loaded: a bad factory is a ``ValueError`` naming the field before any compute.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import inspect
import json
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.specs import DataSpec, ModelSpec

#: factories given as Python callables that cannot be imported back by their path (defined in
#: a notebook or ``__main__``): this process resolves them by that path; other processes
#: (Dask workers) cannot.
_CALLABLES: dict[str, Callable] = {}

#: input shape and classes of the built-in datasets, so that a model factory's output can be
#: checked when the config is loaded without reading the dataset's files
BUILTIN_INPUTS: dict[str, tuple[tuple[int, ...], int]] = {
    "mnist1d": ((1, 40), 10), "digits": ((1, 8, 8), 10), "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100), "svhn": ((3, 32, 32), 10), "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
}

_DATA_KEYS = ("train", "val", "test", "num_classes", "augment")


# --- import paths ----------------------------------------------------------------------------

def factory_path(fn: Callable) -> str:
    """The import path ``module:qualname`` of a callable. One that cannot be imported back by
    it (defined in a notebook, in ``__main__`` or inside a function) is remembered in this
    process under that path."""
    if not callable(fn):
        raise ValueError(f"expected a factory function, got {fn!r}")
    path = f"{getattr(fn, '__module__', None)}:{getattr(fn, '__qualname__', type(fn).__name__)}"
    try:
        if _import_path(path, "factory", "") is fn:
            return path
    except ValueError:
        pass
    _CALLABLES[path] = fn
    return path


def importable(path: str) -> bool:
    """Whether ``path`` names a factory any process can import (not a remembered callable)."""
    return path not in _CALLABLES


def _search_dirs(code_dir: str) -> list[str]:
    return [d for d in (os.getcwd(), code_dir) if d]


def _add_search_dirs(code_dir: str) -> None:
    on_path = {os.path.abspath(p or os.curdir) for p in sys.path}
    for d in _search_dirs(code_dir):
        if os.path.abspath(d) not in on_path:
            # after the installed packages: never shadows them
            sys.path.append(os.path.abspath(d))
    importlib.invalidate_caches()


def load_factory(path: str, where: str, code_dir: str = "") -> Callable:
    """The callable at import path ``path`` (``where`` names the config field in errors)."""
    if path in _CALLABLES:
        return _CALLABLES[path]
    return _import_path(path, where, code_dir)


def _import_path(path: str, where: str, code_dir: str) -> Callable:
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{where}={path!r}: expected an import path 'module:function'")
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{where}={path!r}: expected an import path 'module:function', "
                         "e.g. 'torchvision.models:resnet18'")
    if module_name == "__main__" or "<locals>" in attr or "<lambda>" in attr:
        raise ValueError(f"{where}={path!r}: a callable defined in a notebook, a script's "
                         "__main__ or inside a function is known only to the process that "
                         "defined it (not to Dask workers or a later command): put it in a "
                         "module file next to the config and name it by that module")
    _add_search_dirs(code_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        looked = " and ".join(repr(d) for d in _search_dirs(code_dir))
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise ValueError(f"{where}={path!r}: no module named {e.name!r} (looked in the "
                             f"installed packages and {looked})") from None
        raise ValueError(f"{where}={path!r}: importing {module_name!r} failed: {e}") from e
    except Exception as e:  # noqa: BLE001 - any error while importing the user's module
        raise ValueError(f"{where}={path!r}: importing {module_name!r} failed: "
                         f"{type(e).__name__}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{where}={path!r}: module {module_name!r} "
                             f"({getattr(module, '__file__', '?')}) has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{where}={path!r} is a {type(obj).__name__}, not a callable")
    return obj


def call_factory(fn: Callable, path: str, kwargs: dict, section: str):
    """``fn(**kwargs)``; kwargs it does not accept, or any error it raises, are a ValueError
    naming ``<section>.factory`` / ``<section>.kwargs``."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None                # a builtin: its own TypeError says what is wrong
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError as e:
            accepted = [n for n, p in signature.parameters.items()
                        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            raise ValueError(
                f"{section}.kwargs={kwargs!r}: {section}.factory={path!r} does not accept them "
                f"({e}); it accepts: {', '.join(accepted) or 'no keyword arguments'}") from None
    try:
        return fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - reported with the field it came from
        raise ValueError(f"{section}.factory={path!r} called with {section}.kwargs={kwargs!r} "
                         f"raised {type(e).__name__}: {e}") from e


def _kwargs(spec) -> dict:
    return json.loads(spec.kwargs) if spec.kwargs else {}


# --- models -----------------------------------------------------------------------------------

def make_module(spec: ModelSpec) -> nn.Module:
    """One fresh plain module from the model factory of ``spec``."""
    fn = load_factory(spec.factory, "model.factory", spec.code_dir)
    module = call_factory(fn, spec.factory, _kwargs(spec), "model")
    if not isinstance(module, nn.Module):
        raise ValueError(f"model.factory={spec.factory!r} returned a {type(module).__name__}, "
                         "not a torch.nn.Module")
    return module


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def module_fingerprint(module: nn.Module) -> str:
    """A hash of the module's printed structure (layer types and settings, e.g. strides) and
    of every parameter's and buffer's name, shape and dtype (not their values)."""
    h = hashlib.sha256(_ADDRESS.sub("0x?", repr(module)).encode())
    for kind, items in (("param", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, t in items:
            lazy = isinstance(t, nn.parameter.UninitializedTensorMixin)
            shape = "uninitialized" if lazy else list(t.shape)
            h.update(f"{kind} {name} {shape} {t.dtype}\n".encode())
    return h.hexdigest()[:16]


def module_maker(spec: ModelSpec) -> Callable[[], nn.Module]:
    """A zero-argument function building one plain module of ``spec``; where ``spec`` carries
    a fingerprint, the first module built is checked against it (e.g. on a Dask worker whose
    copy of the factory's code differs)."""
    checked = [not spec.fingerprint]

    def make() -> nn.Module:
        module = make_module(spec)
        if not checked[0]:
            found = module_fingerprint(module)
            if found != spec.fingerprint:
                raise ValueError(
                    f"model.factory={spec.factory!r} now builds a different module (fingerprint "
                    f"{found}) than when the config was loaded ({spec.fingerprint}): its code "
                    "or a package it uses changed; load the config again")
            checked[0] = True
        return module

    return make


def build_factory_model(spec: ModelSpec, in_shape: tuple[int, ...], num_classes: int,
                        members: int = 1, seed: int | None = None):
    """``members`` copies of the factory's module as one ensemble (``pipeline.generic``)."""
    from pipeline.generic import build_generic

    return build_generic(module_maker(spec), tuple(in_shape), num_classes, members, seed)


def check_module_output(module: nn.Module, x: torch.Tensor, num_classes: int, path: str) -> None:
    """The module maps a batch ``x`` to ``[len(x), num_classes]`` logits, else a ValueError."""
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as e:  # noqa: BLE001 - the user's forward on a batch of the data
        raise ValueError(f"model.factory={path!r}: its module fails on a batch of inputs shaped "
                         f"{list(x.shape)}: {type(e).__name__}: {e}") from e
    expected = (len(x), num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model.factory={path!r}: its module maps inputs shaped "
                         f"{list(x.shape)} to {got}; expected one logit per class, "
                         f"{list(expected)} (the data has {num_classes} classes)")


def plain_state(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """A one-member ensemble's state_dict reshaped to the plain module's own shapes."""
    own = module.state_dict()
    return {k: (v.reshape(own[k].shape) if k in own and v.numel() == own[k].numel() else v)
            for k, v in state.items()}


def code_paths(path: str) -> list[str]:
    """The user's own code an MLflow model of factory ``path`` needs to load elsewhere: the
    file (or package folder) of its top-level module, unless that is an installed package
    (torchvision, this project) or part of Python."""
    if not importable(path):
        return []                     # a notebook's callable: cloudpickle stores it by value
    top = path.partition(":")[0].split(".")[0] if ":" in path else path.split(".")[0]
    module = sys.modules.get(top) or importlib.import_module(top)
    where = getattr(module, "__file__", None)
    if where is None:
        return []
    where = Path(where).resolve()
    target = where.parent if where.name == "__init__.py" else where
    paths = sysconfig.get_paths()
    installed = {Path(paths[k]).resolve() for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    project = Path(__file__).resolve().parent.parent
    if top in ("pipeline", "tracking", "selection") and where.is_relative_to(project):
        return []
    if any(target.is_relative_to(p) for p in installed):
        return []
    return [str(target)]


def plain_model(spec: ModelSpec, state: dict[str, torch.Tensor]) -> tuple[nn.Module, list[str]]:
    """The factory's plain module holding ``state`` (a one-member state_dict), in eval mode,
    and the code paths ``mlflow.pytorch.log_model`` needs to load it elsewhere."""
    module = make_module(spec)
    module.load_state_dict(plain_state(state, module))
    return module.eval(), code_paths(spec.factory)


def log_module(module: nn.Module, name: str, example, code_paths: list[str]):
    """``mlflow.pytorch.log_model`` of a user's plain module into the active run.

    MLflow's default format is ``pt2`` (``torch.export``: a graph that loads without the
    user's code). A module ``torch.export`` cannot trace (data-dependent Python control flow)
    is logged as a cloudpickle instead, with ``code_paths`` (the file or package defining it),
    which ``mlflow.pytorch.load_model`` puts on ``sys.path`` where it loads; one line says so.
    """
    import mlflow

    try:
        return mlflow.pytorch.log_model(module, name=name, input_example=example)
    except Exception as e:  # noqa: BLE001 - torch.export's errors have no common base class
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f"note: torch.export cannot trace {type(module).__name__} ({type(e).__name__}: "
              f"{reason}); logged as a pickle with its code instead", file=sys.stderr)
    return mlflow.pytorch.log_model(module, name=name, input_example=example,
                                    serialization_format="pickle", code_paths=code_paths or None)


# --- data -------------------------------------------------------------------------------------

@dataclass
class FactoryData:
    """A data factory's validated output (CPU tensors)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None
    fingerprint: str


def _tensor(value, where: str) -> torch.Tensor:
    try:
        t = torch.as_tensor(value)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{where}: not a tensor or array ({type(value).__name__}: {e})") from None
    return t.detach().cpu()


def _pair(value, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(value, torch.utils.data.Dataset) and not isinstance(value, (tuple, list)):
        try:
            items = [value[i] for i in range(len(value))]
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{where}: reading the torch Dataset failed: "
                             f"{type(e).__name__}: {e}") from e
        if not items:
            raise ValueError(f"{where}: the Dataset is empty")
        if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
            raise ValueError(f"{where}: a Dataset's items must be (input, label) pairs")
        x = torch.stack([_tensor(a, f"{where} inputs") for a, _ in items])
        y = torch.stack([_tensor(b, f"{where} labels") for _, b in items])
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        x, y = _tensor(value[0], f"{where} inputs"), _tensor(value[1], f"{where} labels")
    else:
        raise ValueError(f"{where}: expected an (inputs, labels) pair or a torch Dataset of "
                         f"(input, label) pairs, got {type(value).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{where}: inputs shaped {list(x.shape)}; expected [N, ...] with one "
                         "row per example")
    if y.dim() != 1:
        raise ValueError(f"{where}: labels shaped {list(y.shape)}; expected [N] class indices")
    if len(x) != len(y):
        raise ValueError(f"{where}: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise ValueError(f"{where}: no examples")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"{where}: labels are {y.dtype}; expected integer class indices")
    if x.dtype == torch.float64:
        x = x.float()
    return x.contiguous(), y.long()


def _adapt_augment(fn, path: str):
    """``augment(x, generator)`` from a user's ``(x, generator)`` or ``(x)`` callable."""
    if fn is None:
        return None
    if not callable(fn):
        raise ValueError(f"data.factory={path!r}: 'augment' is a {type(fn).__name__}, not a "
                         "callable")
    try:
        named = [p for p in inspect.signature(fn).parameters.values()
                 if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        named = []
    if len(named) >= 2:
        return fn

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # the global generator, seeded from this copy's own: reproducible, distinct per copy
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return fn(x)

    augment.__qualname__ = f"{getattr(fn, '__qualname__', type(fn).__name__)}[x only]"
    return augment


def _hash_tensor(h, t: torch.Tensor) -> None:
    h.update(f"{list(t.shape)} {t.dtype}\n".encode())
    h.update(memoryview(np.ascontiguousarray(t.numpy())).cast("B"))


_DATA_CACHE: dict[tuple, FactoryData] = {}


def load_factory_data(spec: DataSpec) -> FactoryData:
    """Call the data factory of ``spec`` (once per process and arguments) and validate it."""
    path = spec.factory
    fn = load_factory(path, "data.factory", spec.code_dir)
    key = (path, spec.kwargs, spec.code_dir, id(fn))     # a notebook may redefine the function
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    out = call_factory(fn, path, _kwargs(spec), "data")
    where = f"data.factory={path!r}"
    if not isinstance(out, Mapping):
        raise ValueError(f"{where} returned a {type(out).__name__}; expected a mapping with "
                         "'train', 'test' and 'num_classes' (optional: 'val', 'augment')")
    unknown = sorted(set(out) - set(_DATA_KEYS))
    if unknown:
        raise ValueError(f"{where} returned unknown key(s) {unknown}; allowed: "
                         f"{', '.join(_DATA_KEYS)}")
    for required in ("train", "test", "num_classes"):
        if out.get(required) is None:
            what = "the number of classes" if required == "num_classes" else "a set"
            raise ValueError(f"{where} returned no {required!r} ({what}); required: train, "
                             "test, num_classes (optional: val, augment)")
    k = out["num_classes"]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{where}: num_classes={k!r}; expected an integer >= 1")
    k = int(k)
    parts = {name: _pair(out[name], f"{where} {name}") for name in ("train", "val", "test")
             if out.get(name) is not None}
    shape = tuple(parts["train"][0].shape[1:])
    for name, (x, y) in parts.items():
        if tuple(x.shape[1:]) != shape:
            raise ValueError(f"{where} {name}: inputs shaped "
                             f"[N, {', '.join(map(str, x.shape[1:]))}]"
                             f" but train's are [N, {', '.join(map(str, shape))}]")
        low, high = int(y.min()), int(y.max())
        if low < 0 or high >= k:
            bad = low if low < 0 else high
            raise ValueError(f"{where} {name}: label {bad} is outside 0..{k - 1} "
                             f"(num_classes={k})")
    augment = _adapt_augment(out.get("augment"), path)
    h = hashlib.sha256(f"classes {k}\n".encode())
    for name, (x, y) in parts.items():
        h.update(f"{name}\n".encode())
        _hash_tensor(h, x)
        _hash_tensor(h, y)
    aug = out.get("augment")
    h.update(f"augment {getattr(aug, '__module__', '')}:{getattr(aug, '__qualname__', '')}".encode()
             if aug is not None else b"augment none")
    val = parts.get("val", (None, None))
    data = FactoryData(*parts["train"], *val, *parts["test"], k, augment, h.hexdigest()[:16])
    _DATA_CACHE[key] = data
    return data


def factory_dataset(spec: DataSpec, device: str | torch.device = "cpu"):
    """The :class:`pipeline.data.Dataset` of a data factory: ``val`` as given, else split off
    ``train`` as for the built-in datasets; ``train_subset`` keeps the first N of ``train``."""
    from pipeline.data import Dataset

    raw = load_factory_data(spec)
    if spec.fingerprint and raw.fingerprint != spec.fingerprint:
        raise ValueError(f"data.factory={spec.factory!r} now returns different data (fingerprint "
                         f"{raw.fingerprint}) than when the config was loaded "
                         f"({spec.fingerprint}): load the config again")
    x, y = raw.x_train, raw.y_train
    if spec.train_subset:
        x, y = x[: spec.train_subset], y[: spec.train_subset]
    if raw.x_val is not None:
        xv, yv = raw.x_val, raw.y_val
    else:
        perm = np.random.default_rng(spec.split_seed).permutation(len(x))
        n_val = int(round(spec.val_fraction * len(x)))
        val_idx = torch.from_numpy(np.sort(perm[:n_val]))
        train_idx = torch.from_numpy(np.sort(perm[n_val:]))
        x, y, xv, yv = x[train_idx], y[train_idx], x[val_idx], y[val_idx]
    return Dataset(name=spec.name, x_train=x, y_train=y, x_val=xv, y_val=yv,
                   x_test=raw.x_test, y_test=raw.y_test, num_classes=raw.num_classes,
                   augment=raw.augment).to(device)


# --- configs ----------------------------------------------------------------------------------

def resolve_factories(cfg, code_dir: str | Path | None = None):
    """``cfg`` with its factories checked and fingerprinted (see the module doc); a config
    without factories is returned unchanged. ``code_dir``: the config's folder."""
    data, model = cfg.data, cfg.model
    for section, spec in (("data", data), ("model", model)):
        if spec.kwargs and not spec.factory:
            raise ValueError(f"{section}.kwargs={json.loads(spec.kwargs)!r} is set but "
                             f"{section}.factory is not: kwargs are the factory's arguments")
    if not data.factory and not model.factory:
        return cfg
    folder = str(Path(code_dir).resolve()) if code_dir else ""
    sample = None
    num_classes = 0
    if data.factory:
        data = data.replace(code_dir=data.code_dir or folder)
        raw = load_factory_data(data)
        data = data.replace(fingerprint=raw.fingerprint,
                            name=data.factory if data.name == DataSpec.name else data.name)
        sample, num_classes = raw.x_train[:2], raw.num_classes
    elif data.name in BUILTIN_INPUTS:
        shape, num_classes = BUILTIN_INPUTS[data.name]
        sample = torch.zeros(2, *shape)
    if model.factory:
        model = model.replace(code_dir=model.code_dir or folder)
        module = make_module(model)
        fingerprint = module_fingerprint(module)
        if sample is not None:
            check_module_output(module, sample, num_classes, model.factory)
        model = model.replace(fingerprint=fingerprint,
                              name=model.factory if model.name == ModelSpec.name else model.name)
    return dataclasses.replace(cfg, data=data, model=model)


def run_config(config, *, model: Callable | str | None = None, data: Callable | str | None = None,
               model_kwargs: dict | None = None, data_kwargs: dict | None = None,
               overrides: list[str] | None = None, experiment: str | None = None,
               executor: str = "serial", executor_options: dict | None = None,
               tracking_uri: str | None = None, progress: bool = True):
    """Run (or resume) a grid from a config, with the model and/or data given as Python
    callables (e.g. in a notebook); returns the :class:`pipeline.grid.GridSummary`.

    Args:
        config: a YAML path or a config mapping (as the YAML would read).
        model, data: factory functions (or import paths) replacing the config's ``model`` and
            ``data`` sections; ``data`` keeps the config's ``val_fraction``, ``split_seed`` and
            ``train_subset``.
        model_kwargs, data_kwargs: their keyword arguments.
        overrides: ``key=value`` strings, as ``--set`` takes.

    A function defined in the notebook itself is known to this process only: it runs with the
    ``serial`` executor; for ``dask``, define it in a module file and pass it (or its path).
    """
    from pipeline.config import _safe_load, parse_config
    from pipeline.grid import GridRunner

    folder = None
    if isinstance(config, (str, Path)):
        folder = Path(config).resolve().parent
        raw = _safe_load(Path(config).read_text())
    else:
        raw = copy.deepcopy(dict(config))
    if model is not None:
        path = model if isinstance(model, str) else factory_path(model)
        raw["model"] = {"factory": path, "kwargs": model_kwargs or {}}
    if data is not None:
        path = data if isinstance(data, str) else factory_path(data)
        kept = {k: v for k, v in (raw.get("data") or {}).items()
                if k in ("val_fraction", "split_seed", "train_subset")}
        raw["data"] = {**kept, "factory": path, "kwargs": data_kwargs or {}}
    cfg = parse_config(raw, overrides, code_dir=folder)
    if executor != "serial":
        for section, spec in (("model", cfg.model), ("data", cfg.data)):
            if spec.factory and not importable(spec.factory):
                raise ValueError(f"{section}.factory={spec.factory!r} was defined in this process "
                                 f"(a notebook or __main__): executor {executor!r} runs cells in "
                                 "other processes, which cannot import it; put it in a module "
                                 "file, or use executor='serial'")
    runner = GridRunner(cfg, experiment, progress=progress, tracking_uri=tracking_uri)
    return runner.run(executor=executor, executor_options=executor_options)


# --- factories of ours ------------------------------------------------------------------------

def resnet18_cifar(num_classes: int = 10, **kwargs) -> nn.Module:
    """torchvision's ResNet-18 adapted to 32x32 inputs (CIFAR): a 3x3 stride-1 stem instead of
    the 7x7 stride-2 one, and no max-pool, so the last stage still sees 4x4 feature maps
    (the usual CIFAR form of ResNet-18). ``kwargs`` go to ``torchvision.models.resnet18``."""
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=num_classes, **kwargs)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
    net.maxpool = nn.Identity()
    return net
