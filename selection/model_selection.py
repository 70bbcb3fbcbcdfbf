"""Model selection by regime (paper Algorithms 2 and 2.1) and its baselines, with regret.

For a target density the candidates are the dense models of every temperature, each pruned
to that density: the table's cells of that density, one per temperature (dense seeds
averaged). The methods:

- ``alg2_val`` (Algorithm 2): discard candidates in Regime I, then take the best val_acc.
- ``alg2.1_cka`` (Algorithm 2.1): discard candidates in Regime I, then take the highest CKA.
- ``best_dense`` (baseline): the best dense model (max dense_acc), regime ignored.
- ``best_val`` (baseline): the best val_acc alone, regime ignored.
- ``oracle``: the best test_acc; regret of a method = oracle test_acc - its choice's test_acc.

Our choices (the paper is silent):
- Ties (exactly equal criterion values, within 1e-12) go to the COLDEST temperature, the
  paper's "coldest temperature that is still well connected".
- If every candidate of a density is Regime I, the filter leaves nothing: Algorithms 2 and 2.1
  then choose among all candidates by their criterion, and the row says ``fallback=True``.
- Cells with a missing metric (NaN) are left out of the candidates, with a warning.
- Regimes are labelled over all the table's cells at once by
  :func:`selection.regimes.label_grid` (the jump along temperature, or the given thresholds;
  ``labeller="grid"``, the default), or by the one-eps rule :func:`label_regimes` over the
  dense-seed averaged cells (``labeller="rule"``, the labels before issue 15: kept to compare).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from selection._validate import check_table, one_knob
from selection.regimes import REGIME_I, Thresholds, grid_thresholds, label_grid, label_regimes
from tracking import keys
from tracking.knobs import cold_to_hot

ALG2 = "alg2_val"
ALG2_1 = "alg2.1_cka"
BEST_DENSE = "best_dense"
BEST_VAL = "best_val"
ORACLE = "oracle"
METHODS = (ALG2, ALG2_1, BEST_DENSE, BEST_VAL, ORACLE)
_CRITERION = {ALG2: keys.VAL_ACC, ALG2_1: keys.CKA, BEST_DENSE: keys.DENSE_ACC,
              BEST_VAL: keys.VAL_ACC, ORACLE: keys.TEST_ACC}
_REGIME_AWARE = (ALG2, ALG2_1)
_TIE_ATOL = 1e-12

# the metrics every candidate needs; dense_acc only for the best_dense baseline, which is
# left out (with a note) when the table has no dense accuracy
METRIC_COLUMNS = (keys.LMC_BARRIER, keys.CKA, keys.TEST_ACC, keys.VAL_ACC)
SELECT_COLUMNS = (keys.KNOB, keys.TEMPERATURE, keys.DENSITY, *METRIC_COLUMNS)
TABLE_COLUMNS = ["density", "method", "temperature", "regime", "test_acc", "oracle_test_acc",
                 "regret", "criterion", "criterion_value", "fallback", "n_candidates",
                 "n_regime_I"]


class SelectionWarning(UserWarning):
    """Cells were left out, or a method fell back."""


@dataclass(frozen=True)
class SelectionResult:
    """What :func:`select_models` chose.

    Attributes:
        table: one row per (density, method): ``TABLE_COLUMNS``; ``regret`` is the oracle's
            test_acc minus the chosen cell's (a fraction; 0 = as good as the oracle).
        candidates: the cells considered (dense seeds averaged) with their ``regime``.
        thresholds: the regime thresholds used.
        warnings: cells left out, fallbacks, threshold remarks.
    """

    table: pd.DataFrame
    candidates: pd.DataFrame
    thresholds: Thresholds
    warnings: tuple[str, ...]

    def mean_regret(self) -> dict[str, float]:
        """Mean regret of each method run (best_dense only with dense_acc) over the
        selected densities."""
        present = set(self.table["method"])
        return (self.table.groupby("method")["regret"].mean()
                .reindex([m for m in METHODS if m in present]).to_dict())


def _match_densities(requested: Sequence[float] | None, available: np.ndarray) -> list[float]:
    if requested is None:
        return sorted(available.tolist())
    chosen = []
    for d in requested:
        hit = available[np.isclose(available, float(d), rtol=0, atol=1e-9)]
        if not hit.size:
            raise ValueError(f"density {d!r} is not in the table (after dropping incomplete "
                             f"cells); available: {sorted(available.tolist())}")
        chosen.append(float(hit[0]))
    return sorted(dict.fromkeys(chosen))


def _argmax_coldest(values: np.ndarray) -> int:
    """Index of the max of ``values`` (ordered cold to hot); ties go to the first, coldest."""
    return int(np.flatnonzero(values >= values.max() - _TIE_ATOL)[0])


LABELLERS = ("grid", "rule")


def select_models(df: pd.DataFrame, densities: Sequence[float] | None = None,
                  eps: float | None = None, tau: float | None = None,
                  labeller: str = "grid") -> SelectionResult:
    """Run Algorithms 2 and 2.1 and the baselines for each target density of ``df``.

    Args:
        df: a results table with ``knob`` (one knob), ``temperature``, ``density``,
            ``lmc_barrier``, ``cka``, ``test_acc``, ``val_acc`` and, for the ``best_dense``
            baseline, ``dense_acc`` (without it, or with it empty, that baseline is left out
            and a note says so).
        densities: target densities (matched to the table's to 1e-9); None = every density.
        eps, tau: regime thresholds (see :func:`label_grid`); eps-free jump / estimated tau
            when None.
        labeller: ``grid`` (:func:`label_grid`) or ``rule`` (:func:`label_regimes`).

    Raises:
        ValueError: missing columns, an empty table, units in percent, several knobs, an
            unknown density, or no complete cell.
    """
    check_table(df, SELECT_COLUMNS, allow_nan=True)
    if labeller not in LABELLERS:
        raise ValueError(f"labeller must be one of {LABELLERS}, got {labeller!r}")
    knob = one_knob(df, "model selection")
    notes: list[str] = []
    metric_columns, methods = list(METRIC_COLUMNS), list(METHODS)
    if keys.DENSE_ACC in df.columns and df[keys.DENSE_ACC].notna().any():
        metric_columns.append(keys.DENSE_ACC)
    else:
        methods.remove(BEST_DENSE)
        notes.append(f"no {keys.DENSE_ACC} in the table: the {BEST_DENSE} baseline (the best "
                     "dense model) is left out")
    incomplete = df[metric_columns].isna().any(axis=1)
    if incomplete.any():
        cells = df.loc[incomplete, [keys.TEMPERATURE, keys.DENSITY]].drop_duplicates()
        notes.append(f"{int(incomplete.sum())} row(s) with missing metrics left out: "
                     + ", ".join(f"(temperature={t}, density={d})"
                                 for t, d in cells.itertuples(index=False)))
    complete = df[~incomplete]
    if complete.empty:
        raise ValueError(f"no cell has all of {metric_columns}: nothing to select from")
    candidates = (complete.groupby([keys.TEMPERATURE, keys.DENSITY], as_index=False)
                  [metric_columns].mean())
    candidates[keys.KNOB] = knob
    with warnings.catch_warnings(record=True):  # recorded in thresholds.warnings instead
        if labeller == "rule":
            candidates, thresholds = label_regimes(candidates, eps, tau)
        else:
            # the rows (with their per-pair values), so that label_grid pools dense seeds
            labelled, info = label_grid(complete, eps, tau, n_resamples=0)
            thresholds = grid_thresholds(info)
            point = labelled.groupby([keys.TEMPERATURE, keys.DENSITY])[keys.REGIME].first()
            candidates[keys.REGIME] = [point[(t, d)] for t, d in zip(
                candidates[keys.TEMPERATURE], candidates[keys.DENSITY], strict=True)]
    notes.extend(thresholds.warnings)
    targets = _match_densities(densities, candidates[keys.DENSITY].unique())

    rows = []
    for density in targets:
        cells = candidates[candidates[keys.DENSITY] == density]
        order = cold_to_hot(knob, cells[keys.TEMPERATURE].tolist())
        cells = cells.set_index(keys.TEMPERATURE).loc[order].reset_index()
        oracle = float(cells[keys.TEST_ACC].max())
        connected = cells[cells[keys.REGIME] != REGIME_I]
        for method in methods:
            pool, fallback = cells, False
            if method in _REGIME_AWARE:
                if connected.empty:
                    fallback = True
                    notes.append(f"density {density:g}: every candidate is Regime I; {method} "
                                 "chose among all of them")
                else:
                    pool = connected
            criterion = _CRITERION[method]
            chosen = pool.iloc[_argmax_coldest(pool[criterion].to_numpy(dtype=float))]
            rows.append({
                "density": density, "method": method,
                "temperature": chosen[keys.TEMPERATURE], "regime": chosen[keys.REGIME],
                "test_acc": float(chosen[keys.TEST_ACC]), "oracle_test_acc": oracle,
                "regret": oracle - float(chosen[keys.TEST_ACC]), "criterion": criterion,
                "criterion_value": float(chosen[criterion]), "fallback": fallback,
                "n_candidates": len(cells), "n_regime_I": int(len(cells) - len(connected)),
            })
    for note in notes:
        warnings.warn(note, SelectionWarning, stacklevel=2)
    return SelectionResult(pd.DataFrame(rows, columns=TABLE_COLUMNS), candidates, thresholds,
                           tuple(notes))


def plot_regret(table: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Grouped bar chart of each method's regret (test-accuracy points) per density, as PNG."""
    methods = [m for m in METHODS if m != ORACLE and m in set(table["method"])]
    densities = sorted(table["density"].unique())
    regret = (table.pivot(index="density", columns="method", values="regret")
              .reindex(index=densities, columns=methods))
    fig = Figure(figsize=(max(5.0, 1.2 * len(densities) + 2), 3.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    x = np.arange(len(densities))
    for i, method in enumerate(methods):
        bars = ax.bar(x + (i - (len(methods) - 1) / 2) * width,
                      100 * regret[method].to_numpy(), width, label=method)
        ax.bar_label(bars, fmt="%.1f", fontsize=6)  # a zero-height bar is otherwise invisible
    ax.set_xticks(x, labels=[f"{100 * d:g}%" for d in densities])
    ax.set_xlabel("target density (% of prunable weights kept)")
    ax.set_ylabel("regret: oracle test acc - chosen (%-points)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.legend(fontsize=8)
    ax.set_title(title or "Model selection regret per density (lower is better)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
