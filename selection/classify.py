"""Label regimes, fit and cross-validate the regime classifiers, and (with MLflow) log and
register them, tag the cell runs and draw the regime map: what ``python -m selection
classify`` runs (:func:`classify`) and what it reports (:class:`ClassifyReport`)."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from sklearn.pipeline import Pipeline

from selection._tracking import log_classification
from selection.classifier import (
    DEFAULT_ALIAS,
    FEATURE_SETS,
    NO_CV,
    PHASE,
    CVResult,
    LoggedClassifier,
    cross_validate,
    fit_classifier,
)
from selection.regime_map import plot_regime_map
from selection.regimes import (
    RegimeWarning,
    Thresholds,
    grid_sensitivity,
    grid_thresholds,
    label_grid,
    regime_counts,
    uncertain,
)
from tracking import keys

__all__ = ["CLASSIFY_COLUMNS", "ClassifyReport", "classify", "registered_names"]

CLASSIFY_COLUMNS = (keys.KNOB, keys.TEMPERATURE, keys.DENSITY, keys.LMC_BARRIER, keys.CKA)


def registered_names(base: str) -> dict[str, str]:
    """Registered model names per feature set: ``base`` (landscape) and ``base-phase``."""
    return {fs: base if fs != PHASE else f"{base}-{PHASE}" for fs in FEATURE_SETS}


@dataclass
class ClassifyReport:
    """What :func:`classify` produced (``logged`` and the run ids are empty without MLflow)."""

    labelled: pd.DataFrame
    thresholds: Thresholds
    models: dict[str, Pipeline]
    cv: dict[str, CVResult]
    sensitivity: pd.DataFrame
    logged: dict[str, LoggedClassifier] = field(default_factory=dict)
    run_id: str | None = None
    grid_run_id: str | None = None
    n_tagged: int = 0
    label_info: dict = field(default_factory=dict)   # label_grid's info: method and values

    def summary(self) -> str:
        """What was labelled, fitted and logged, as lines of text (the command's output)."""
        t = self.thresholds
        info = self.label_info
        if info.get("method") == "jump":
            level = info.get("level")
            lines = [f"Regime I: jump along temperature within each density (level for "
                     f"densities without a jump: {'-' if level is None else f'{-level:.4g}'}, "
                     f"{info.get('level_source')}), tau = {t.tau:.4g} ({t.tau_source})"]
            for d in info.get("densities", []):
                boundary = d["boundary_temperature"]
                lines.append(f"  density {d['density']:g}: {d['method']}, "
                             f"{d['n_regime_I']} of {d['n_cells']} Regime I, coldest "
                             "connected temperature "
                             + ("-" if boundary is None else f"{boundary:g}"))
        else:
            lines = [f"eps = {t.eps:.4g} ({t.eps_source}), "
                     f"tau = {t.tau:.4g} ({t.tau_source})"]
        lines += [f"note: {w}" for w in t.warnings]
        counts = regime_counts(self.labelled)
        lines.append("cells per regime: "
                     + ", ".join(f"{r}: {n}" for r, n in counts.items()))
        if "p_regime_I" in self.labelled.columns:
            unsure = uncertain(self.labelled["p_regime_I"]).sum()
            lines.append(f"uncertain labels (P(Regime I) in (0.2, 0.8)): {unsure} of "
                         f"{len(self.labelled)}")
        moved = self.sensitivity
        if "parameter" in moved.columns:
            parts = [f"{name} in [{rows['value'].min():.4g}, {rows['value'].max():.4g}]"
                     for name, rows in moved.groupby("parameter", sort=False)]
            most = moved['n_changed'].max() if len(moved) else 0
            lines.append(f"sensitivity: {', '.join(parts)} change at most "
                         f"{most} labels (one at a time)")
        else:
            lines.append(f"sensitivity: eps in [{moved['eps'].min():.4g}, "
                         f"{moved['eps'].max():.4g}], tau in [{moved['tau'].min():.4g}, "
                         f"{moved['tau'].max():.4g}] change at most "
                         f"{moved['n_changed'].max()} of {len(self.labelled)} labels")
        for fs, result in self.cv.items():
            accuracy = ("n/a" if result.accuracy != result.accuracy
                        else f"{result.accuracy:.3f}")
            lines.append(f"{fs} classifier: CV accuracy {accuracy} ({result.splitter}, "
                         f"{result.n_splits} folds)" + "".join(f"; {n}" for n in result.notes))
        for fs, logged in self.logged.items():
            lines.append(f"{fs} model: {logged.model_uri}, registered "
                         f"{logged.registered_name} version {logged.version} @{logged.alias}")
        if self.run_id:
            nested = f" under grid run {self.grid_run_id}" if self.grid_run_id else ""
            lines.append(f"classifier run {self.run_id}{nested}; {self.n_tagged} cell runs "
                         "tagged")
        return "\n".join(lines)


def classify(df: pd.DataFrame, eps: float | None = None, tau: float | None = None,
             group_by_density: bool = False, experiment: str | None = None,
             grid_run_id: str | None = None, register_as: str | None = None,
             alias: str = DEFAULT_ALIAS, map_path: str | Path | None = None) -> ClassifyReport:
    """Label ``df``, fit and cross-validate both classifiers; with ``experiment``, log them.

    With ``experiment`` (MLflow): a ``run_kind=classifier`` run nested under ``grid_run_id``
    holds the thresholds (params), regime counts and CV accuracies (metrics), the labels CSV,
    the thresholds JSON, the sensitivity table (:func:`~selection.regimes.sensitivity` over
    :func:`~selection.regimes.default_sensitivity_grid`), the regime map and both models,
    registered as :func:`registered_names` of ``register_as`` (default
    ``<experiment>-regime-classifier``) with ``alias``; each cell run gets its ``regime`` tag;
    the regime map is also logged under ``plots/`` of the grid run. ``map_path`` keeps a copy
    of the map.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)  # kept in thresholds.warnings
        labelled, info = label_grid(df, eps, tau)
    thresholds = grid_thresholds(info)
    models = {fs: fit_classifier(labelled, fs) for fs in FEATURE_SETS}
    cv = {fs: _cross_validate(labelled, fs, group_by_density) for fs in FEATURE_SETS}
    moved = grid_sensitivity(df, eps, tau)
    report = ClassifyReport(labelled, thresholds, models, cv, moved, grid_run_id=grid_run_id,
                            label_info=info)
    with tempfile.TemporaryDirectory() as tmp:
        drawn = plot_regime_map(labelled, Path(tmp) / keys.PLOT_REGIME_MAP,
                                title=f"Regime map: {experiment}" if experiment else None)
        if map_path is not None:
            Path(map_path).parent.mkdir(parents=True, exist_ok=True)
            Path(map_path).write_bytes(drawn.read_bytes())
        if experiment is None:
            return report
        names = registered_names(register_as or f"{experiment}-regime-classifier")
        log_classification(report, experiment, names, alias, Path(tmp), drawn)
    return report


def _cross_validate(labelled: pd.DataFrame, feature_set: str, group_by_density: bool
                    ) -> CVResult:
    """:func:`cross_validate`, or no CV (NaN, with a note) for a table too small for two
    stratified folds: several regimes but none with two cells (e.g. one temperature at two
    densities), where scikit-learn would stop with a message about ``n_splits``."""
    counts = labelled[keys.REGIME].value_counts()
    n_cells = len(labelled[[keys.TEMPERATURE, keys.DENSITY]].drop_duplicates())
    if not group_by_density and len(counts) > 1 and min(int(counts.max()), n_cells) < 2:
        return CVResult(feature_set, float("nan"), (), 0, NO_CV,
                        (f"{n_cells} cells, no regime with two: cross-validation is "
                         "impossible",))
    return cross_validate(labelled, feature_set, group_by_density=group_by_density)
