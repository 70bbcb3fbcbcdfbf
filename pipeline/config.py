"""Grid configs: YAML -> validated specs, with ``--set key=value`` overrides.

Every error names the field, the value and what is allowed, and is raised before any
compute. Unknown keys (typos) are errors, not silently ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.dense import dense_for
from pipeline.knobs import get_knob
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


@dataclass(frozen=True)
class Runtime:
    """Where and how to compute; never part of any spec hash."""

    device: str = "cpu"
    threads: int = 0                 # torch threads; 0 = leave PyTorch's default
    workers: int = 0                 # chunks of models computed side by side; 0 = one per core
    max_members: int = 64            # model copies trained/evaluated at once
    batch_cells: bool = True         # fine-tune several cells of one dense run together
    # GiB of work memory for the members computed at once (their activations); chunks of
    # members and evaluation batches are sized to fit (pipeline/parallel.py Budget). 0 = half
    # the device's free memory at the start of each batch of cells
    memory_gb: float = 0.0

    def resolved_workers(self) -> int:
        from pipeline.parallel import default_workers

        return self.workers or default_workers()

    def __post_init__(self) -> None:
        for name, low in (("threads", 0), ("max_members", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"runtime.{name}={value!r}: must be an integer >= {low}")
        if isinstance(self.memory_gb, bool) or not isinstance(self.memory_gb, (int, float)) \
                or not 0 <= self.memory_gb < float("inf"):
            raise ValueError(f"runtime.memory_gb={self.memory_gb!r}: must be a number >= 0 "
                             "(GiB; 0 = half the device's free memory)")
        if not isinstance(self.device, str) \
                or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"runtime.device={self.device!r}: allowed: cpu, cuda, cuda:N, mps")


@dataclass(frozen=True)
class GridConfig:
    experiment: str
    knob: str
    temperatures: tuple[float, ...]
    densities: tuple[float, ...]
    dense_seeds: tuple[int, ...] = (0,)
    description: str = ""
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    dense: TrainSpec = TrainSpec()
    prune: PruneSpec = PruneSpec()
    finetune: FinetuneSpec = FinetuneSpec()
    measure: MeasureSpec = MeasureSpec()
    runtime: Runtime = field(default_factory=Runtime)

    def base_dense(self, seed: int) -> DenseSpec:
        return DenseSpec(data=self.data, model=self.model, train=self.dense, seed=seed)

    def cell(self, temperature: float, density: float, dense_seed: int
             ) -> tuple[DenseSpec, CellSpec]:
        """The dense run and the cell spec of one grid point."""
        dense, epoch = dense_for(self.knob, temperature, self.base_dense(dense_seed))
        cell = CellSpec(knob=self.knob, temperature=float(temperature), checkpoint_epoch=epoch,
                        prune=self.prune.replace(density=float(density)),
                        finetune=self.finetune, measure=self.measure)
        return dense, cell

    def cells(self) -> list[tuple[DenseSpec, CellSpec, int]]:
        """Every (dense spec, cell spec, dense seed) of the grid, coldest temperature first."""
        knob = get_knob(self.knob)
        return [(*self.cell(t, d, s), s) for s in self.dense_seeds
                for t in knob.sort_cold_to_hot(self.temperatures) for d in sorted(self.densities)]


class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python objects) that also reads ``1e9`` as a float, as YAML 1.2
    does: PyYAML follows YAML 1.1, where a float needs a dot (``1.0e9``), and ``lr: 1e9`` would
    be the string '1e9'."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _safe_load(text: str):
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass


_SECTIONS = {"data": DataSpec, "model": ModelSpec, "dense": TrainSpec, "prune": PruneSpec,
             "measure": MeasureSpec, "runtime": Runtime}


def _reject_unknown_keys(values: dict, allowed, where: str) -> None:
    """A typo in a key is an error naming it and every allowed key, never ignored."""
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    _reject_unknown_keys(values, _fields(cls), where)
    try:
        return cls(**values)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def _finetune(values: dict) -> FinetuneSpec:
    if not isinstance(values, dict):
        raise ValueError(f"finetune: expected a mapping, got {values!r}")
    values = dict(values)
    own_names = ("seeds", "last_epochs", "recipe")
    _reject_unknown_keys(values, [*own_names, *_fields(TrainSpec)], "finetune")
    own = {k: values.pop(k) for k in own_names if k in values}
    return _build(FinetuneSpec, {**own, "train": _build(TrainSpec, values, "finetune")}, "finetune")


def _set(tree: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = _safe_load(raw)


def parse_config(raw: dict, overrides: list[str] | None = None,
                 code_dir: str | Path | None = None) -> GridConfig:
    """Validate a config mapping (as read from YAML) into a GridConfig. Model and data
    factories are imported (also from ``code_dir``, the config's folder), checked and
    fingerprinted here (``pipeline.factories``)."""
    raw = copy.deepcopy(raw or {})       # --set must not write into the caller's mapping
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set finetune.epochs=5")
        key, value = item.split("=", 1)
        _set(raw, key.strip(), value)
    _reject_unknown_keys(raw, _fields(GridConfig), "config")
    for required in ("experiment", "knob", "temperatures", "densities"):
        if required not in raw:
            raise ValueError(f"config: missing required key {required!r}")
    get_knob(raw["knob"])
    kwargs = {k: (_build(_SECTIONS[k], v, k) if k in _SECTIONS else v) for k, v in raw.items()}
    if "finetune" in raw:
        kwargs["finetune"] = _finetune(raw["finetune"])
    for key in ("temperatures", "densities", "dense_seeds"):
        if key in kwargs:
            value = kwargs[key]
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"config.{key}={value!r}: must be a non-empty list")
            kwargs[key] = tuple(value)
    for d in kwargs["densities"]:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 1:
            raise ValueError(f"config.densities contains {d!r}: densities must be in (0, 1] "
                             "(fraction kept)")
    seed_lists = [("config.dense_seeds", kwargs.get("dense_seeds", ()))]
    if "finetune" in kwargs:
        seed_lists.append(("finetune.seeds", kwargs["finetune"].seeds))
    for where, seeds in seed_lists:
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
        if bad:
            raise ValueError(f"{where}={list(seeds)!r}: seeds must be integers >= 0; got {bad!r}")
    if len(set(kwargs.get("dense_seeds", (0,)))) != len(kwargs.get("dense_seeds", (0,))):
        raise ValueError(f"config.dense_seeds={kwargs['dense_seeds']!r}: seeds must be distinct")
    cfg = GridConfig(**kwargs)
    from pipeline.factories import resolve_factories

    cfg = resolve_factories(cfg, code_dir)
    validate(cfg)
    return cfg


def validate(cfg: GridConfig) -> None:
    """Check every name against its registry and every temperature against the schedule."""
    from pipeline.data import check_dataset
    from pipeline.landscape import check_metrics
    from pipeline.models import check_model
    from pipeline.prune import check_pruning

    check_dataset(cfg.data)
    if cfg.runtime.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"runtime.device={cfg.runtime.device!r} but no CUDA GPU is visible; "
                             "allowed here: cpu (--set runtime.device=cpu)")
    check_model(cfg.model)
    check_pruning(cfg.prune)
    check_metrics(cfg.measure)
    for t in cfg.temperatures:
        cfg.cell(t, cfg.densities[0], cfg.dense_seeds[0])


def load_config(path: str | Path, overrides: list[str] | None = None) -> GridConfig:
    """Read and validate a YAML grid config (safe loading: no Python objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    try:
        raw = _safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config file {str(path)!r}: expected a mapping at the top level")
    return parse_config(raw, overrides, code_dir=path.parent)
