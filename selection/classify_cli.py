"""``python -m selection classify``: label regimes, fit, cross-validate, log and register the
regime classifiers, tag the cell runs, draw the regime map."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param
from sklearn.pipeline import Pipeline

from selection._cli import add_mlflow_options, add_table_source, fail, load_table, log_target
from selection._mlflow import child_run
from selection.classifier import (
    DEFAULT_ALIAS,
    FEATURE_SETS,
    PHASE,
    CVResult,
    LoggedClassifier,
    cross_validate,
    fit_classifier,
    log_classifier,
    tag_cell_runs,
)
from selection.regime_map import plot_regime_map
from selection.regimes import (
    RegimeWarning,
    Thresholds,
    grid_sensitivity,
    grid_thresholds,
    label_grid,
    regime_counts,
)
from tracking import keys
from tracking.store import get_client, with_retries
from tracking.tables import write_table

__all__ = ["CLASSIFY_COLUMNS", "ClassifyReport", "add_parser", "classify", "registered_names",
           "run_classify"]

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
    cv = {fs: cross_validate(labelled, fs, group_by_density=group_by_density)
          for fs in FEATURE_SETS}
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
        with child_run(experiment, keys.KIND_CLASSIFIER, "classify", grid_run_id) as run:
            _log_run(run.info.run_id, report, Path(tmp), drawn)
            for fs, model in models.items():
                report.logged[fs] = log_classifier(model, labelled, fs, names[fs], alias, cv[fs])
        report.run_id = run.info.run_id
        report.n_tagged = tag_cell_runs(labelled)
        if grid_run_id is not None:
            with_retries(get_client().log_artifact, grid_run_id, str(drawn),
                         keys.ARTIFACT_PLOTS_DIR)
    return report


def _log_run(run_id: str, report: ClassifyReport, folder: Path, regime_map: Path) -> None:
    labelled, thresholds = report.labelled, report.thresholds
    any_cv = next(iter(report.cv.values()))
    params = {**thresholds.params(), keys.CV_SPLITTER: any_cv.splitter,
              keys.CV_SPLITS: str(any_cv.n_splits),
              keys.REGIME_LABEL_METHOD: str(report.label_info.get("method", ""))}
    now = int(time.time() * 1000)
    counts = {keys.regime_count_metric(r): n for r, n in regime_counts(labelled).items()}
    with_retries(get_client().log_batch, run_id,
                 metrics=[Metric(k, float(v), now, 0) for k, v in counts.items()],
                 params=[Param(k, v) for k, v in params.items()])
    labels = write_table(labelled, folder / keys.ARTIFACT_REGIME_LABELS, CLASSIFY_COLUMNS)
    thresholds_json = folder / keys.ARTIFACT_REGIME_THRESHOLDS
    thresholds_json.write_text(json.dumps({**thresholds.to_dict(), "labels": report.label_info},
                                          indent=2, default=str))
    moved = folder / keys.ARTIFACT_REGIME_SENSITIVITY
    report.sensitivity.to_csv(moved, index=False)
    for path in (labels, thresholds_json, moved, regime_map):
        mlflow.log_artifact(str(path))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``classify`` subcommand."""
    parser = subparsers.add_parser(
        "classify", help="label regimes, fit + cross-validate + register the regime classifier",
        description="Label each cell I / II-A / II-B from its LMC barrier and CKA (thresholds "
                    "given or estimated), fit the landscape and phase classifiers, "
                    "cross-validate them, and log + register them in MLflow. Needs columns "
                    + ", ".join(CLASSIFY_COLUMNS) + ".")
    add_table_source(parser)
    parser.add_argument("--eps", type=float, help="LMC-barrier threshold, a train-error "
                        "fraction: Regime I iff lmc_barrier < eps (default: estimated)")
    parser.add_argument("--tau", type=float, help="CKA threshold: II-B iff cka >= tau among "
                        "the other cells (default: estimated)")
    parser.add_argument("--out", help="write the input rows with a 'regime' column to this CSV")
    parser.add_argument("--map", help="also write the regime map PNG here")
    parser.add_argument("--group-by-density", action="store_true",
                        help="cross-validate with GroupKFold over densities (predicts unseen "
                        "densities) instead of StratifiedKFold")
    parser.add_argument("--register-as", help="registered model name of the landscape "
                        "classifier; the phase one is NAME-phase (default: "
                        "<experiment>-regime-classifier)")
    parser.add_argument("--alias", default=DEFAULT_ALIAS,
                        help=f"alias set on the new model versions (default: {DEFAULT_ALIAS})")
    add_mlflow_options(parser)
    parser.set_defaults(func=run_classify)


def _summary(report: ClassifyReport) -> str:
    t = report.thresholds
    info = report.label_info
    if info.get("method") == "jump":
        level = info.get("level")
        lines = [f"Regime I: jump along temperature within each density (level for densities "
                 f"without a jump: {'-' if level is None else f'{-level:.4g}'}, "
                 f"{info.get('level_source')}), tau = {t.tau:.4g} ({t.tau_source})"]
        for d in info.get("densities", []):
            boundary = d["boundary_temperature"]
            lines.append(f"  density {d['density']:g}: {d['method']}, {d['n_regime_I']} of "
                         f"{d['n_cells']} Regime I, coldest connected temperature "
                         + ("-" if boundary is None else f"{boundary:g}"))
    else:
        lines = [f"eps = {t.eps:.4g} ({t.eps_source}), tau = {t.tau:.4g} ({t.tau_source})"]
    lines += [f"note: {w}" for w in t.warnings]
    counts = regime_counts(report.labelled)
    lines.append("cells per regime: " + ", ".join(f"{r}: {n}" for r, n in counts.items()))
    if "p_regime_I" in report.labelled.columns:
        from selection.regimes import uncertain

        unsure = uncertain(report.labelled["p_regime_I"]).sum()
        lines.append(f"uncertain labels (P(Regime I) in (0.2, 0.8)): {unsure} of "
                     f"{len(report.labelled)}")
    moved = report.sensitivity
    if "parameter" in moved.columns:
        parts = [f"{name} in [{rows['value'].min():.4g}, {rows['value'].max():.4g}]"
                 for name, rows in moved.groupby("parameter", sort=False)]
        lines.append(f"sensitivity: {', '.join(parts)} change at most "
                     f"{moved['n_changed'].max() if len(moved) else 0} labels (one at a time)")
    else:
        lines.append(f"sensitivity: eps in [{moved['eps'].min():.4g}, "
                     f"{moved['eps'].max():.4g}], tau in [{moved['tau'].min():.4g}, "
                     f"{moved['tau'].max():.4g}] change at most {moved['n_changed'].max()} of "
                     f"{len(report.labelled)} labels")
    for fs, result in report.cv.items():
        accuracy = "n/a" if result.accuracy != result.accuracy else f"{result.accuracy:.3f}"
        lines.append(f"{fs} classifier: CV accuracy {accuracy} ({result.splitter}, "
                     f"{result.n_splits} folds)" + "".join(f"; {n}" for n in result.notes))
    for fs, logged in report.logged.items():
        lines.append(f"{fs} model: {logged.model_uri}, registered {logged.registered_name} "
                     f"version {logged.version} @{logged.alias}")
    if report.run_id:
        nested = f" under grid run {report.grid_run_id}" if report.grid_run_id else ""
        lines.append(f"classifier run {report.run_id}{nested}; {report.n_tagged} cell runs "
                     "tagged")
    return "\n".join(lines)


def run_classify(args: argparse.Namespace) -> int:
    """Run the ``classify`` command."""
    try:
        df = load_table(args, CLASSIFY_COLUMNS)
        experiment, grid_run_id = log_target(args)
        report = classify(df, args.eps, args.tau, args.group_by_density, experiment,
                          grid_run_id, args.register_as, args.alias, args.map)
        if args.out:
            write_table(report.labelled, args.out, CLASSIFY_COLUMNS)
    except (ValueError, FileNotFoundError) as e:
        return fail(e)
    print(_summary(report))
    if args.out:
        print(f"labels written to {args.out}")
    return 0
