"""The cell-run record: what a cell's MLflow run holds, and the results-table row read from it.

Both directions live here, so the schema (docs/design.md#cell-run) is in one place: the grid
runner claims a cell run with a :class:`CellIdentity` and logs a computed cell with
:func:`log_cell`; :func:`run_row` reads a run back into a row of the results table
(``tracking/tables.py``). The values are plain (numbers, lists, dicts, state dicts): this
module knows nothing of the pipeline's types.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Run

from tracking import keys
from tracking.artifacts import log_files
from tracking.cache import RunCache

CELL_COLUMNS = [keys.KNOB, keys.TEMPERATURE, keys.DENSITY, keys.DENSE_SEED]  # a cell's identity
METRIC_COLUMNS = [keys.TEST_ACC, keys.TEST_ACC_STD, keys.VAL_ACC, keys.LMC_BARRIER,
                  keys.LMC_BARRIER_STD, keys.CKA, keys.CKA_STD, keys.PRUNED_ACC, keys.DENSE_ACC]
# Per-pair landscape values of a cell as JSON, ``{"lmc_barrier": {"0_1": v, ...}, "cka":
# {"0_1": v, ...}}`` (keys: the two fine-tune seeds of a pair): the spread the regime labeller
# resamples. Optional: tables from elsewhere may lack it (NaN = not known).
PAIR_METRICS = "pair_metrics"
_PAIR_BASES = (keys.LMC_BARRIER, keys.CKA)
# Metrics of optional measurements (measure.spectra, measure.hessian), after the columns above
OPTIONAL_COLUMNS = [*keys.SPECTRAL_COLUMNS, *keys.CURVATURE_COLUMNS]
# the step series of a cell: per fine-tuned copy, by the name the cell's curves carry
_CURVES = {"train_loss": keys.CURVE_TRAIN_LOSS, "val_acc": keys.CURVE_VAL_ACC,
           "test_acc": keys.CURVE_TEST_ACC}


def ui_number(value: float) -> int | float:
    """40.0 -> 40 for tags and names shown in the UI; other floats unchanged."""
    return int(value) if float(value).is_integer() else value


def cell_run_name(knob: str, temperature: float, density: float, dense_seed: int) -> str:
    """A readable run name for the MLflow UI, e.g. ``epochs=40 d=0.10 s=0``."""
    return f"{knob}={ui_number(temperature)} d={density:.2f} s={dense_seed}"


@dataclass(frozen=True)
class CellIdentity:
    """What a cell run is claimed with: its name, params and the UI's filter tags."""

    knob: str
    temperature: float
    density: float
    dense_seed: int
    finetune_seeds: tuple[int, ...]
    prune_method: str
    finetune_recipe: str
    finetune_epochs: int
    dataset: str
    model: str
    dense_spec_hash: str

    @property
    def run_name(self) -> str:
        return cell_run_name(self.knob, self.temperature, self.density, self.dense_seed)

    def claim(self, parent_run_id: str | None) -> dict:
        """The keyword arguments of :meth:`RunCache.start` for this cell's run."""
        params = {keys.KNOB: self.knob, keys.TEMPERATURE: self.temperature,
                  keys.DENSITY: self.density, keys.DENSE_SEED: self.dense_seed,
                  keys.FINETUNE_SEEDS: list(self.finetune_seeds),
                  keys.PRUNE_METHOD: self.prune_method,
                  keys.FINETUNE_RECIPE: self.finetune_recipe,
                  keys.FINETUNE_EPOCHS: self.finetune_epochs, keys.DATASET: self.dataset,
                  keys.MODEL: self.model, keys.DENSE_SPEC_HASH: self.dense_spec_hash}
        tags = {keys.KNOB: self.knob, keys.TEMPERATURE: ui_number(self.temperature),
                keys.DENSITY: self.density}
        return {"run_name": self.run_name, "parent_run_id": parent_run_id, "params": params,
                "tags": tags}


@dataclass(frozen=True)
class PairRecord:
    """One pair of fine-tuned copies, by their positions in the fine-tune seeds."""

    positions: tuple[int, int]
    lmc_barrier: float
    cka: float
    lmc_errors: list[float]        # train error at each interpolation point


@dataclass
class CellRecord:
    """What a computed cell logs: metrics, step series, a tag and artifacts."""

    spec: dict                     # the cell spec, as its ``to_dict()``
    dense: dict                    # the dense spec
    spec_hash: str
    seeds: Sequence[int]           # the fine-tune seeds, in order
    aggregates: dict[str, float]   # means and stds over seeds and pairs, optional measurements
    seconds: float
    test_acc: list[float]          # per fine-tuned copy
    val_acc: list[float]
    pairs: list[PairRecord]
    curves: dict[str, list[list[float]]]  # train_loss, val_acc, test_acc -> per copy, per epoch
    mask: Any
    finetuned: list[Any]           # state dicts, per copy
    dense_run_id: str              # the dense run its checkpoint came from
    spectra_csv: str | None = None

    def metrics(self) -> dict[str, float]:
        """Every metric of the run; NaN values are left out (never logged)."""
        out = dict(self.aggregates)
        out[keys.CELL_SECONDS] = self.seconds
        for k, seed in enumerate(self.seeds):
            out[keys.member_metric(keys.TEST_ACC, seed)] = self.test_acc[k]
            out[keys.member_metric(keys.VAL_ACC, seed)] = self.val_acc[k]
        for p in self.pairs:
            a, b = (self.seeds[i] for i in p.positions)
            out[keys.pair_metric(keys.LMC_BARRIER, a, b)] = p.lmc_barrier
            out[keys.pair_metric(keys.CKA, a, b)] = p.cka
        return {k: v for k, v in out.items() if not math.isnan(v)}

    def series(self) -> dict[str, list[float]]:
        """Step metrics (step = epoch), per fine-tuned copy."""
        return {keys.member_metric(base, seed): self.curves[name][k]
                for k, seed in enumerate(self.seeds) for name, base in _CURVES.items()}

    def files(self) -> dict[str, object]:
        out: dict[str, object] = {
            keys.ARTIFACT_SPEC: {"cell": self.spec, "dense": self.dense,
                                 "spec_hash": self.spec_hash},
            keys.ARTIFACT_MASK: self.mask,
            keys.ARTIFACT_LMC_CURVES: {f"{p.positions[0]}-{p.positions[1]}": p.lmc_errors
                                       for p in self.pairs},
        }
        for k, seed in enumerate(self.seeds):
            out[f"{keys.ARTIFACT_FINETUNED_DIR}/seed_{seed}.pt"] = self.finetuned[k]
        if self.spectra_csv is not None:
            out[keys.ARTIFACT_SPECTRA] = self.spectra_csv
        return out


def log_cell(cache: RunCache, run_id: str, record: CellRecord) -> None:
    """Write ``record`` into the (claimed, RUNNING) cell run ``run_id``."""
    # the dense run is a tag set now: it may have been replaced since the claim (a corrupt
    # checkpoint is recomputed in a new run)
    cache.log(run_id, metrics=record.metrics(), series=record.series(),
              tags={keys.DENSE_RUN_ID: record.dense_run_id})
    log_files(cache.client, run_id, record.files())


def run_row(run: Run) -> dict:
    """The results-table row of one cell run (docs/design.md#the-results-table)."""
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    row: dict = {c: params.get(c) for c in CELL_COLUMNS}
    row.update({c: metrics.get(c, math.nan) for c in METRIC_COLUMNS})
    row[keys.REGIME] = tags.get(keys.REGIME) or None
    row[keys.RUN_ID] = run.info.run_id
    row[keys.SPEC_HASH] = tags.get(keys.SPEC_HASH)
    row.update({c: metrics[c] for c in OPTIONAL_COLUMNS if c in metrics})
    row[PAIR_METRICS] = _pair_metrics(metrics)
    return row


def _pair_metrics(metrics: dict) -> str | float:
    """The run's per-pair metrics (``keys.pair_metric`` names) as JSON; NaN when it has none."""
    prefixes = {base: keys.pair_metric_prefix(base) for base in _PAIR_BASES}
    pairs = {base: {name[len(prefix):]: value for name, value in sorted(metrics.items())
                    if name.startswith(prefix) and math.isfinite(value)}
             for base, prefix in prefixes.items()}
    return json.dumps(pairs, sort_keys=True) if any(pairs.values()) else math.nan
