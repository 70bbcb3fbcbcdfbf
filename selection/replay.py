"""Replay benchmark: compare temperature samplers on a finished grid at no training cost.

A finished results table is a tabular objective: a trial looks up the cell (suggested
temperature, target density) instead of running it. Each sampler is run on an in-memory
Optuna study with the same :class:`~selection.tuner.CellObjective` as live tuning, once per
seed, and the trajectories are scored.

Definitions (ours):
- The table needs ``knob, temperature, density``, the objective column (``val_acc`` by
  default), ``lmc_barrier`` and ``cka``; ``test_acc`` is optional (test regret). Rows of one
  cell over several dense seeds are averaged (the regime of the averaged cell is its most
  frequent label). Without a ``regime`` column, with ``eps``/``tau`` given, or with
  ``relabel``, the cells are labelled by :func:`selection.regimes.label_grid` over the WHOLE
  table (all densities at once): the replay then stands for tuning with the labels of a
  finished grid.
- The best cell of a density is the temperature with the highest objective there (ties: any
  of them counts). Trials to best = the 1-based number of the first trial at a best cell;
  trials to within ``tolerance`` (0.002 = 0.2 accuracy points) = the first trial whose
  objective is at least best - tolerance. A run that never gets there within the budget counts
  as ``budget + 1`` (censored), so medians stay finite; ``fraction_reached_best`` says how often
  that happened.
- A trial at a temperature already tried costs nothing here (the cell is cached in live tuning
  too) but still counts as a trial: a sampler that repeats itself is slower to find new cells.
- Regret after k trials = best objective - best objective among the first k trials (in the
  objective's units, a fraction). With ``test_acc`` in the table, test regret after k trials =
  best test accuracy of the density - test accuracy of the cell with the best objective among
  the first k trials (the one a user would pick). Test accuracy never reaches the study.
- The grid sampler stops after one pass over the grid; its scores after that stay constant.
- ``transfer=True``: the regime sampler of each density is given the table's OTHER densities
  as finished cells of the same grid (:func:`selection.sampler.transfer_prior`: their
  regimes and objective values, never test accuracy), as a grid tuned one density after
  another would have them. The Optuna baselines do not use other densities.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from pipeline.knobs import get_knob
from selection._validate import check_objective, check_table, one_knob
from selection.regimes import REGIMES, RegimeWarning, label_grid
from selection.sampler import TransferPrior, transfer_prior
from selection.tuner import (
    SAMPLER_NAMES,
    CellObjective,
    create_sampler,
    sampler_encoding,
)
from tracking import keys
from tracking.knobs import cold_to_hot
from tracking.tables import check_barrier_sign, fill_knob, read_table

__all__ = ["ReplayResult", "prepare_table", "replay_density", "compare_samplers",
           "format_results", "plot_results", "results_json"]

DEFAULT_TOLERANCE = 0.002  # 0.2 accuracy points, as a fraction
REGRET_REPORT_AT = (1, 3, 5, 10)


@dataclass
class ReplayResult:
    """Scores of one sampler at one density over ``len(seeds)`` replays."""

    sampler: str
    density: float
    budget: int
    seeds: list[int]
    tolerance: float
    best_temperatures: list[float]
    trajectories: list[list[float]]      # temperatures tried, per seed
    trials_to_best: np.ndarray           # per seed; budget + 1 when never reached
    trials_to_within: np.ndarray
    regret: np.ndarray                   # seeds x budget
    test_regret: np.ndarray | None       # seeds x budget, when the table has test_acc
    objectives: dict[float, float] = field(default_factory=dict)   # temperature -> objective

    def trials_to_within_of(self, tolerance: float) -> np.ndarray:
        """Per seed: the 1-based first trial whose objective is at least the density's best
        minus ``tolerance`` (``budget + 1`` when none); ``trials_to_within`` at another
        tolerance, from the trajectories (no second replay)."""
        return _trials_to_within(self.trajectories, self.objectives, tolerance, self.budget)

    def summary(self) -> dict[str, Any]:
        """The figures of this result as plain JSON-ready numbers."""
        q25, med, q75 = np.percentile(self.trials_to_best, [25, 50, 75])
        w25, wmed, w75 = np.percentile(self.trials_to_within, [25, 50, 75])
        out = {
            "density": self.density, "budget": self.budget, "repeats": len(self.seeds),
            "best_temperatures": self.best_temperatures,
            "median_trials_to_best": float(med), "iqr_trials_to_best": float(q75 - q25),
            "q25_trials_to_best": float(q25), "q75_trials_to_best": float(q75),
            "mean_trials_to_best": float(self.trials_to_best.mean()),
            "fraction_reached_best": float((self.trials_to_best <= self.budget).mean()),
            f"median_trials_to_within_{self.tolerance * 100:g}": float(wmed),
            f"iqr_trials_to_within_{self.tolerance * 100:g}": float(w75 - w25),
            "mean_regret_by_trial": [float(x) for x in self.regret.mean(axis=0)],
        }
        if self.test_regret is not None:
            out["mean_test_regret_by_trial"] = [float(x) for x in self.test_regret.mean(axis=0)]
        return out


def prepare_table(
    table: pd.DataFrame | str | Path,
    *,
    objective_column: str = keys.VAL_ACC,
    knob: str | None = None,
    eps: float | None = None,
    tau: float | None = None,
    relabel: bool = False,
) -> tuple[pd.DataFrame, str]:
    """One row per (temperature, density) of one knob, with a ``regime``; and the knob.

    The table's own ``regime`` column is used when every row has one, unless ``relabel`` or
    a threshold is given: then the rows are labelled by
    :func:`selection.regimes.label_grid` (with ``eps``/``tau`` when given), all densities at
    once, and each cell gets its point's label.

    Raises:
        ValueError: a required column missing, several knobs without ``knob``, an unknown knob,
            a test-accuracy objective, or a table the labeller rejects.
    """
    check_objective(objective_column)
    if objective_column in (keys.KNOB, keys.TEMPERATURE, keys.DENSITY, keys.LMC_BARRIER,
                            keys.CKA, keys.REGIME):
        raise ValueError(f"objective column {objective_column!r}: the sampler reads it as a "
                         "cell's coordinate or landscape; the objective is an accuracy "
                         "(val_acc)")
    required = [keys.KNOB, keys.TEMPERATURE, keys.DENSITY, objective_column,
                keys.LMC_BARRIER, keys.CKA]
    df = None
    try:
        if isinstance(table, (str, Path)):
            # headers matched ignoring case and spaces, --knob filled or picked, sign checked
            df = read_table(table, required, knob=knob)
        else:
            df = fill_knob(table.copy(), knob)  # a table without a knob column: --knob names it
            check_barrier_sign(df)
        # test accuracy is optional, but when present it is averaged: it must be numeric too
        checked = [*required, *([keys.TEST_ACC] if keys.TEST_ACC in df.columns else [])]
        check_table(df, checked, allow_nan=True)
    except ValueError as e:
        missing = df is None or objective_column not in df.columns
        hint = (f" ({objective_column} is the replay's objective: --objective-column names "
                "another, never a test column)" if missing and objective_column in str(e)
                else "")
        raise ValueError(f"{e}{hint}") from e
    if knob is None:
        knob = one_knob(df.dropna(subset=[keys.KNOB]), "the replay", "choose one with --knob")
    knobs = sorted(df[keys.KNOB].dropna().astype(str).unique())
    if knob not in knobs:
        raise ValueError(f"knob {knob!r} is not in the table; it has {knobs}")
    get_knob(knob)
    df = df[df[keys.KNOB].astype(str) == knob]
    numeric = [objective_column, keys.LMC_BARRIER, keys.CKA]
    if keys.TEST_ACC in df.columns:
        numeric.append(keys.TEST_ACC)
    cells = df.groupby([keys.TEMPERATURE, keys.DENSITY], as_index=False)[numeric].mean()
    has_regime = keys.REGIME in df.columns and df[keys.REGIME].isin(REGIMES).all()
    if (keys.REGIME in df.columns and not has_regime and eps is None and tau is None
            and not relabel):
        given = df[keys.REGIME].dropna()
        unknown = sorted(set(given.astype(str).str.strip()) - set(REGIMES) - {""})
        if unknown:   # labels the user gave, not a table still unlabelled: never ignore them
            raise ValueError(f"column {keys.REGIME!r} has unknown labels {unknown[:5]} "
                             f"(allowed: {list(REGIMES)}); fix them, or pass --relabel to "
                             "label the table with the grid labeller instead")
    if not (has_regime and eps is None and tau is None and not relabel):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RegimeWarning)
            df, _ = label_grid(df.dropna(subset=[keys.LMC_BARRIER, keys.CKA]), eps, tau,
                               n_resamples=0)
    mode = (df.groupby([keys.TEMPERATURE, keys.DENSITY])[keys.REGIME]
            .agg(lambda s: s.value_counts().index[0]).reset_index())
    cells = cells.merge(mode, on=[keys.TEMPERATURE, keys.DENSITY])
    cells[keys.KNOB] = knob
    return cells.reset_index(drop=True), knob


class _TableLookup:
    """``lookup(temperature, density)`` over a prepared table; rows WITHOUT test accuracy."""

    def __init__(self, cells: pd.DataFrame, objective_column: str) -> None:
        columns = [objective_column, keys.LMC_BARRIER, keys.CKA, keys.REGIME]
        self.rows = {
            (float(t), float(d)): dict(zip(columns, values, strict=True))
            for t, d, *values in cells[[keys.TEMPERATURE, keys.DENSITY, *columns]].itertuples(
                index=False)
        }

    def __call__(self, temperature: float, density: float) -> Mapping[str, Any]:
        return self.rows[(float(temperature), float(density))]


def replay_density(
    cells: pd.DataFrame,
    knob: str,
    density: float,
    sampler: str,
    seeds: Sequence[int],
    *,
    budget: int | None = None,
    objective_column: str = keys.VAL_ACC,
    tolerance: float = DEFAULT_TOLERANCE,
    transfer: bool = False,
) -> ReplayResult:
    """Replay ``sampler`` once per seed on the cells of ``density`` of a prepared table
    (with ``transfer``, the regime sampler knows the other densities' cells)."""
    at = cells[np.isclose(cells[keys.DENSITY].to_numpy(dtype=float), density)]
    if at.empty:
        densities = sorted(cells[keys.DENSITY].unique().tolist())
        raise ValueError(f"density {density!r} is not in the table; it has {densities}")
    density = float(at[keys.DENSITY].iloc[0])
    temperatures = cold_to_hot(knob, at[keys.TEMPERATURE].tolist())
    budget = budget or 2 * len(temperatures)
    objective_of = dict(zip(at[keys.TEMPERATURE].astype(float),
                            at[objective_column].astype(float), strict=True))
    best_value = max(v for v in objective_of.values() if math.isfinite(v))
    best = sorted(t for t, v in objective_of.items() if v == best_value)
    test_of = (dict(zip(at[keys.TEMPERATURE].astype(float), at[keys.TEST_ACC].astype(float),
                        strict=True))
               if keys.TEST_ACC in at.columns and at[keys.TEST_ACC].notna().all() else None)
    lookup = _TableLookup(at, objective_column)
    prior = None
    if transfer and sampler == "regime":
        others = cells[~np.isclose(cells[keys.DENSITY].to_numpy(dtype=float), density)]
        prior = transfer_prior(others[[keys.TEMPERATURE, keys.DENSITY, keys.REGIME,
                                       objective_column]], density, knob, objective_column)

    trajectories = []
    to_best = []
    regret = np.zeros((len(seeds), budget))
    test_regret = np.zeros((len(seeds), budget)) if test_of is not None else None
    for r, seed in enumerate(seeds):
        tried = _replay_once(lookup, temperatures, knob, density, sampler, seed, budget,
                             objective_column, prior)
        trajectories.append(tried)
        values = [objective_of[t] for t in tried]
        to_best.append(next((k + 1 for k, t in enumerate(tried) if t in best), budget + 1))
        incumbent, top = None, -math.inf
        for k in range(budget):
            if k < len(tried) and math.isfinite(values[k]) and values[k] > top:
                incumbent, top = tried[k], values[k]
            regret[r, k] = best_value - top if incumbent is not None else best_value
            if test_regret is not None:
                oracle = max(test_of.values())
                # before any finite objective nothing is chosen: the worst cell's test regret
                chosen = test_of[incumbent] if incumbent is not None else min(test_of.values())
                test_regret[r, k] = oracle - chosen
    return ReplayResult(
        sampler=sampler, density=density, budget=budget, seeds=list(seeds), tolerance=tolerance,
        best_temperatures=best, trajectories=trajectories,
        trials_to_best=np.array(to_best),
        trials_to_within=_trials_to_within(trajectories, objective_of, tolerance, budget),
        regret=regret, test_regret=test_regret, objectives=objective_of)


def _trials_to_within(trajectories: Sequence[Sequence[float]], objective_of: Mapping[float, float],
                      tolerance: float, budget: int) -> np.ndarray:
    """Per trajectory: the 1-based first trial whose objective is at least the best of
    ``objective_of`` minus ``tolerance``; ``budget + 1`` when none is."""
    best_value = max(v for v in objective_of.values() if math.isfinite(v))
    return np.array([next((k + 1 for k, t in enumerate(tried)
                           if objective_of[t] >= best_value - tolerance), budget + 1)
                     for tried in trajectories])


def _replay_once(lookup: _TableLookup, temperatures: list, knob: str, density: float,
                 sampler: str, seed: int, budget: int, objective_column: str,
                 prior: TransferPrior | None = None) -> list[float]:
    objective = CellObjective(lookup, density, temperatures, knob,
                              encoding=sampler_encoding(sampler), objective_column=objective_column)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one log line per trial otherwise
    try:
        with warnings.catch_warnings():
            # GP/TPE warn about experimental features and repeated points: expected here
            warnings.simplefilter("ignore")
            study = optuna.create_study(
                direction="maximize", storage=optuna.storages.InMemoryStorage(),
                sampler=create_sampler(sampler, knob, seed, temperatures=temperatures,
                                       transfer=prior))
            study.optimize(objective, n_trials=budget)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return [float(t.user_attrs[keys.TEMPERATURE]) for t in study.trials]


def compare_samplers(
    cells: pd.DataFrame,
    knob: str,
    densities: Sequence[float],
    samplers: Sequence[str] = SAMPLER_NAMES,
    *,
    repeats: int = 50,
    seed: int = 0,
    budget: int | None = None,
    objective_column: str = keys.VAL_ACC,
    tolerance: float = DEFAULT_TOLERANCE,
    transfer: bool = False,
) -> dict[float, dict[str, ReplayResult]]:
    """Replay every sampler at every density with seeds ``seed .. seed + repeats - 1``
    (``transfer``: see :func:`replay_density`).

    Deterministic for a given ``seed``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    unknown = [s for s in samplers if s not in SAMPLER_NAMES]
    if unknown:
        raise ValueError(f"unknown sampler(s) {unknown}; allowed: {', '.join(SAMPLER_NAMES)}")
    seeds = list(range(seed, seed + repeats))
    return {float(d): {s: replay_density(cells, knob, d, s, seeds, budget=budget,
                                         objective_column=objective_column, tolerance=tolerance,
                                         transfer=transfer)
                       for s in samplers}
            for d in densities}


def results_json(results: Mapping[str, ReplayResult]) -> dict[str, dict[str, Any]]:
    """One density's results as ``{sampler: summary}`` (the CLI's ``--json`` object)."""
    return {name: result.summary() for name, result in results.items()}


def format_results(results: Mapping[float, Mapping[str, ReplayResult]]) -> str:
    """A plain-text table: one line per density and sampler."""
    any_result = next(iter(next(iter(results.values())).values()))
    within = f"to within {any_result.tolerance * 100:g}"
    ks = [k for k in REGRET_REPORT_AT if k <= any_result.budget]
    header = (f"{'density':>8} {'sampler':>8} {'to best: median [q25, q75]':>27} "
              f"{'reached':>8} {within + ': median':>19} "
              + " ".join(f"{f'regret@{k}':>9}" for k in ks))
    lines = [header, "-" * len(header)]
    for density, by_sampler in results.items():
        for name, result in by_sampler.items():
            s = result.summary()
            span = (f"{s['median_trials_to_best']:g} [{s['q25_trials_to_best']:g}, "
                    f"{s['q75_trials_to_best']:g}]")
            regrets = " ".join(f"{result.regret[:, k - 1].mean():9.4f}" for k in ks)
            lines.append(
                f"{density:>8g} {name:>8} {span:>27} {s['fraction_reached_best']:>8.0%} "
                f"{float(np.median(result.trials_to_within)):>19g} {regrets}")
    return "\n".join(lines)


def plot_results(results: Mapping[float, Mapping[str, ReplayResult]], path: str | Path) -> Path:
    """Per density: mean regret vs. trial (top) and trials to best as box plots (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    densities = list(results)
    fig, axes = plt.subplots(2, len(densities), figsize=(3.4 * len(densities), 6.4),
                             squeeze=False)
    for col, density in enumerate(densities):
        by_sampler = results[density]
        top, bottom = axes[0, col], axes[1, col]
        for name, result in by_sampler.items():
            k = np.arange(1, result.budget + 1)
            top.plot(k, result.regret.mean(axis=0), marker=".", label=name)
        top.set_title(f"density {density:g}")
        top.set_xlabel("trial")
        top.set_yscale("symlog", linthresh=1e-3)
        bottom.boxplot([r.trials_to_best for r in by_sampler.values()],
                       tick_labels=list(by_sampler), showmeans=True)
        bottom.set_ylabel("trials to best cell")
        bottom.tick_params(axis="x", rotation=45)
    axes[0, 0].set_ylabel("mean regret (objective)")
    axes[0, -1].legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
