"""Typed, frozen specs for every stage, and their content addresses.

A spec's hash is the SHA-256 of canonical JSON (sorted keys, exact float repr, a schema
version) of its *identity fields whose value differs from the field's default*, plus its
parent's hash. Hashing only non-default values is what lets a new field with a default be
added without changing any existing hash (open_lth's rule); the price is that changing a
default silently changes meaning, so a changed default must bump ``SCHEMA_VERSION``.

Fields marked ``identity=False`` (e.g. a data directory) never enter the hash: the same work
done from another path is the same work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field

SCHEMA_VERSION = 1
HASH_CHARS = 16


def _not_identity(default):
    return field(default=default, metadata={"identity": False})


class Spec:
    """Mixin: type coercion/validation of fields, canonical dict and hash."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            hint = hints[f.name]
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif hint is float and not isinstance(value, float):
                raise TypeError(f"{type(self).__name__}.{f.name} must be a number, got {value!r}")
            elif hint is int and (not isinstance(value, int) or isinstance(value, bool)):
                if isinstance(value, float) and value.is_integer():
                    object.__setattr__(self, f.name, int(value))
                else:
                    raise TypeError(f"{type(self).__name__}.{f.name} must be an integer, "
                                    f"got {value!r}")
            elif isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            current = getattr(self, f.name)
            if isinstance(current, float) and not math.isfinite(current):
                raise ValueError(f"{type(self).__name__}.{f.name} must be finite, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field, the value and what is allowed."""

    def identity(self) -> dict:
        """The fields that define this spec's identity, defaults omitted (see module doc)."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("identity", True):
                continue
            value = getattr(self, f.name)
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = dataclasses.MISSING
            if isinstance(value, Spec):
                nested = value.identity()
                if default is not dataclasses.MISSING and nested == default.identity():
                    continue
                out[f.name] = nested
            elif value != default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_dict(self) -> dict:
        """All fields (for logging the resolved spec)."""
        return dataclasses.asdict(self)

    def spec_hash(self, parent: str | None = None) -> str:
        payload = {"schema": SCHEMA_VERSION, "type": type(self).__name__, "fields": self.identity()}
        if parent is not None:
            payload["parent"] = parent
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def canonical_kwargs(value, where: str) -> str:
    """A factory's keyword arguments as canonical JSON text (sorted keys; "" when none), so
    that the same arguments in any order give the same spec hash. Accepts a mapping or text."""
    if isinstance(value, str):
        if not value:
            return ""
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{where}={value!r}: expected a mapping of keyword "
                             "arguments") from None
    if value is None:
        return ""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{where}={value!r}: expected a mapping of keyword arguments")
    if not value:
        return ""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}={value!r}: values must be plain data (numbers, strings, "
                         f"lists, mappings): {e}") from None


def _check_factory_fields(spec, where: str) -> None:
    # (kwargs without a factory are refused when a config is loaded: pipeline/factories.py)
    if not isinstance(spec.factory, str):
        raise ValueError(f"{where}.factory={spec.factory!r}: expected 'module:function'")


@dataclass(frozen=True)
class DataSpec(Spec):
    """Which dataset, how the validation split is carved, where files are read from."""

    name: str = "mnist1d"
    val_fraction: float = 0.1
    split_seed: int = 0
    train_subset: int = 0            # 0 = all; otherwise the first N training examples (tests)
    data_dir: str = _not_identity("")
    # A data factory "module:function" instead of a built-in name (pipeline/factories.py):
    factory: str = ""
    kwargs: str = ""                 # its keyword arguments as canonical JSON text ("" = none)
    fingerprint: str = ""            # sizes and checksum of its tensors, set by load_config
    code_dir: str = _not_identity("")   # a folder it may be imported from (the config's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", canonical_kwargs(self.kwargs, "data.kwargs"))
        super().__post_init__()

    def validate(self) -> None:
        _check_factory_fields(self, "data")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction={self.val_fraction!r}: must be in [0, 1)")
        if self.train_subset < 0:
            raise ValueError(f"data.train_subset={self.train_subset!r}: must be >= 0 (0 = all)")


@dataclass(frozen=True)
class ModelSpec(Spec):
    """Architecture. ``width`` multiplies every layer's channels; ``depth`` is model-specific."""

    name: str = "cnn1d"
    width: float = 1.0
    depth: int = 0                   # 0 = the model's default (PreResNet 20, VGG 16, MLP 2)
    # PreResNet only: what feeds the 1x1 shortcut of a stage's first block: "preact" =
    # relu(bn1(x)) (He et al.'s code), "raw" = the block's input x (the paper's code)
    shortcut: str = "preact"
    # A model factory "module:function" returning one plain nn.Module (pipeline/factories.py):
    factory: str = ""
    kwargs: str = ""                 # its keyword arguments as canonical JSON text ("" = none)
    fingerprint: str = ""            # the built module's structure and tensors, set by load_config
    code_dir: str = _not_identity("")   # a folder it may be imported from (the config's)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", canonical_kwargs(self.kwargs, "model.kwargs"))
        super().__post_init__()

    def validate(self) -> None:
        _check_factory_fields(self, "model")
        if self.factory and (self.width != 1.0 or self.depth != 0):
            raise ValueError(f"model.width={self.width!r}, model.depth={self.depth!r}: only "
                             f"built-in models have them; pass sizes to model.factory="
                             f"{self.factory!r} through model.kwargs")
        if self.width <= 0:
            raise ValueError(f"model.width={self.width!r}: must be > 0")
        if self.depth < 0:
            raise ValueError(f"model.depth={self.depth!r}: must be >= 0")
        if self.shortcut not in ("preact", "raw"):
            raise ValueError(f"model.shortcut={self.shortcut!r}: allowed: preact, raw")


@dataclass(frozen=True)
class TrainSpec(Spec):
    """An SGD recipe: shared by dense training and fine-tuning.

    The length is ``epochs``, or ``iterations`` when > 0 (fixed iteration budget, e.g. the
    batch-size knob). Step-schedule milestones are fractions of the length (paper: 0.5, 0.75
    of 160 epochs = epochs 80 and 120); with ``epochs`` the lr changes at epoch boundaries.
    ``sam_rho`` > 0 turns on SAM.
    """

    epochs: int = 160
    iterations: int = 0
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"           # step | cosine | constant
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    sam_rho: float = 0.0

    def validate(self) -> None:
        if self.epochs < 1 and self.iterations < 1:
            raise ValueError(f"train.epochs={self.epochs!r}: must be >= 1 (or set iterations)")
        if self.iterations < 0:
            raise ValueError(f"train.iterations={self.iterations!r}: must be >= 0")
        if self.batch_size < 1:
            raise ValueError(f"train.batch_size={self.batch_size!r}: must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"train.lr={self.lr!r}: must be > 0")
        if self.weight_decay < 0 or self.sam_rho < 0 or not 0 <= self.momentum < 1:
            raise ValueError("train.weight_decay and train.sam_rho must be >= 0, "
                             "momentum in [0, 1)")
        if self.schedule not in ("step", "cosine", "constant"):
            raise ValueError(f"train.schedule={self.schedule!r}: allowed: step, cosine, constant")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(f"train.milestones={self.milestones!r}: fractions in (0, 1)")


@dataclass(frozen=True)
class DenseSpec(Spec):
    """One dense training run: data, model, recipe, seed."""

    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    seed: int = 0


@dataclass(frozen=True)
class PruneSpec(Spec):
    """One-shot unstructured pruning to ``density`` (fraction of prunable weights kept)."""

    density: float = 0.1
    method: str = "global"
    prune_classifier: bool = False
    seed: int = 0                    # only the ``random`` method uses it
    # parameter-name globs (fnmatch) overriding the default prunable set (Conv/Linear weights
    # but the output layer's): prunable = (default - exclude matches) + include matches
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    # only the ``alpha`` method (AlphaPruning) uses it: per-layer densities span
    # [1 - alpha_eps, 1 + alpha_eps] x density before the rescaling to the exact total
    alpha_eps: float = 0.2

    def validate(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"prune.density={self.density!r}: must be in (0, 1] "
                             "(fraction of weights kept)")
        for where, globs in (("prune.include", self.include), ("prune.exclude", self.exclude)):
            if not isinstance(globs, tuple) or not all(isinstance(g, str) and g for g in globs):
                raise ValueError(f"{where}={globs!r}: expected a list of parameter-name globs, "
                                 f"e.g. ['layer1.*.weight']")
        if not 0.0 <= self.alpha_eps < 1.0:
            raise ValueError(f"prune.alpha_eps={self.alpha_eps!r}: must be in [0, 1)")


@dataclass(frozen=True)
class FinetuneSpec(Spec):
    """Fine-tuning with the mask fixed; one copy per seed, all from the same pruned weights.

    ``last_epochs``: reported accuracies are the mean over the last N epochs (paper: 5).
    """

    train: TrainSpec = TrainSpec()
    seeds: tuple[int, ...] = (0, 1, 2)
    last_epochs: int = 5
    recipe: str = "full"             # a readable name for the UI; part of the identity

    def validate(self) -> None:
        if len(self.seeds) < 1:
            raise ValueError(f"finetune.seeds={self.seeds!r}: need at least one fine-tune seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"finetune.seeds={self.seeds!r}: seeds must be distinct")
        if self.last_epochs < 1:
            raise ValueError(f"finetune.last_epochs={self.last_epochs!r}: must be >= 1")


@dataclass(frozen=True)
class MeasureSpec(Spec):
    """Landscape measurements on pairs of fine-tuned copies."""

    lmc_points: int = 11
    cka_examples: int = 6464
    bn_batch_size: int = 64
    metrics: tuple[str, ...] = ("lmc", "cka")
    # Weight spectra (pipeline/spectra.py) of the dense checkpoint and of the pruned model
    # before fine-tuning; layers with fewer eigenvalues than spectra_min_evals get NaN
    spectra: bool = False
    spectra_min_evals: int = 8
    # Curvature (pipeline/curvature.py) of the first fine-tuned copy's training loss on the
    # first hessian_examples training examples: Hutchinson trace, power-iteration top eigenvalue
    hessian: bool = False
    hessian_examples: int = 512
    hessian_probes: int = 32
    hessian_iterations: int = 20

    def validate(self) -> None:
        for name in ("spectra", "hessian"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"measure.{name}={getattr(self, name)!r}: must be true or false")
        for name in ("spectra_min_evals", "hessian_examples", "hessian_probes",
                     "hessian_iterations"):
            if getattr(self, name) < 1:
                raise ValueError(f"measure.{name}={getattr(self, name)!r}: must be >= 1")
        if self.lmc_points < 2:
            raise ValueError(f"measure.lmc_points={self.lmc_points!r}: must be >= 2")
        if self.cka_examples < 2:
            raise ValueError(f"measure.cka_examples={self.cka_examples!r}: must be >= 2")


@dataclass(frozen=True)
class CellSpec(Spec):
    """One grid cell: the dense checkpoint at ``checkpoint_epoch`` of a dense run, pruned,
    fine-tuned and measured. Its hash contains the dense run's hash (its parent)."""

    knob: str = "epochs"
    temperature: float = 0.0
    checkpoint_epoch: int = 0        # the dense run's epoch whose weights are pruned
    prune: PruneSpec = PruneSpec()
    finetune: FinetuneSpec = FinetuneSpec()
    measure: MeasureSpec = MeasureSpec()


def dense_hash(dense: DenseSpec) -> str:
    return dense.spec_hash()


def cell_hash(cell: CellSpec, dense: DenseSpec) -> str:
    return cell.spec_hash(parent=dense_hash(dense))


def spec_from_dict(cls: type, values: dict):
    """Rebuild a spec from ``to_dict()`` output (nested specs included); unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        hint = hints[f.name]
        if isinstance(hint, type) and issubclass(hint, Spec) and isinstance(value, dict):
            value = spec_from_dict(hint, value)
        kwargs[f.name] = value
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    return cls(**kwargs)
