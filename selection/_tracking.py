"""Everything the selection layer writes to MLflow, in one place.

- the grid parent run that results nest under (:func:`grid_parent_run_id`) and the runs
  nested under it (:func:`child_run`);
- the ``classify`` run (:func:`log_classification`) and the regime tags of the cell runs
  (:func:`tag_cell_runs`), the ``select`` run (:func:`log_selection`), and the tuner's study
  and trial runs (:class:`MlflowTrialLogger`).

A classifier's model and its registry versions are logged by
:func:`selection.classifier.log_classifier` (``mlflow.sklearn``), the adaptive map's run by
:mod:`selection.mapping`.

Params, metrics and tags go through ``tracking``'s batch logger (:meth:`RunCache.log
<tracking.cache.RunCache.log>`: one ``log_batch`` call, with retries), never through a
hand-built ``log_batch``. What each run holds: docs/design.md#records-what-each-run-holds.
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from selection._validate import check_table
from tracking import keys
from tracking.cache import RunCache
from tracking.store import (
    experiment_id,
    get_client,
    init_experiment,
    latest_finished_run,
    search_all_runs,
    with_retries,
)
from tracking.tables import RUN_ID

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from selection.classify import ClassifyReport
    from selection.model_selection import SelectionResult


# --- the runs ------------------------------------------------------------------------------

def grid_parent_run_id(experiment: str, client: MlflowClient | None = None) -> str | None:
    """Id of the most recent FINISHED grid parent run of ``experiment`` (the run that
    ``tracking``'s report logs to), or None if it has none."""
    client = client or get_client()
    run = latest_finished_run(client, experiment_id(experiment, client), keys.KIND_GRID)
    return run.info.run_id if run is not None else None


@contextmanager
def child_run(experiment: str, kind: str, run_name: str, parent_run_id: str | None = None
              ) -> Iterator[mlflow.ActiveRun]:
    """An active MLflow run of ``experiment`` (created if missing) tagged ``run_kind=kind``,
    nested under ``parent_run_id`` when given.

    Note: the parent is attached by the ``mlflow.parentRunId`` tag, not by
    ``mlflow.start_run(parent_run_id=...)``, which requires the parent to be still running.
    """
    tags = {keys.RUN_KIND: kind}
    if parent_run_id is not None:
        tags[keys.PARENT_RUN_ID] = parent_run_id
    get_client()  # sets the tracking URI explicitly if nobody has
    with mlflow.start_run(experiment_id=init_experiment(experiment), run_name=run_name,
                          tags=tags) as run:
        yield run


def _log_values(run: mlflow.ActiveRun, params: Mapping[str, Any] | None = None,
                metrics: Mapping[str, float] | None = None) -> None:
    """Params and metrics (step 0) of an active run, in one batch."""
    RunCache(get_client(), run.info.experiment_id).log(run.info.run_id, params=dict(params or {}),
                                                       metrics=dict(metrics or {}))


def _log_files(paths: Iterable[Path]) -> None:
    """Files as artifacts of the active run, at its root."""
    for path in paths:
        mlflow.log_artifact(str(path))


# --- classify ------------------------------------------------------------------------------

def log_classification(report: ClassifyReport, experiment: str, names: Mapping[str, str],
                       alias: str, folder: Path, regime_map: Path) -> None:
    """Log a :class:`~selection.classify.ClassifyReport` and fill in its MLflow fields.

    A ``run_kind=classifier`` run of ``experiment`` nested under ``report.grid_run_id``: the
    thresholds and the CV set-up (params), the regime counts (metrics), the labels CSV, the
    thresholds JSON, the sensitivity table and ``regime_map`` (artifacts, written to
    ``folder`` first) and both models, registered as ``names[feature set]`` with ``alias``.
    Then each cell run gets its ``regime`` tag, and the regime map is also logged under
    ``plots/`` of the grid run.
    """
    from selection.classifier import log_classifier
    from selection.classify import CLASSIFY_COLUMNS
    from selection.regimes import regime_counts
    from tracking.tables import write_table

    labelled, thresholds = report.labelled, report.thresholds
    with child_run(experiment, keys.KIND_CLASSIFIER, "classify", report.grid_run_id) as run:
        any_cv = next(iter(report.cv.values()))
        params = {**thresholds.params(), keys.CV_SPLITTER: any_cv.splitter,
                  keys.CV_SPLITS: str(any_cv.n_splits),
                  keys.REGIME_LABEL_METHOD: str(report.label_info.get("method", ""))}
        counts = {keys.regime_count_metric(r): n for r, n in regime_counts(labelled).items()}
        _log_values(run, params, counts)
        labels = write_table(labelled, folder / keys.ARTIFACT_REGIME_LABELS, CLASSIFY_COLUMNS)
        thresholds_json = folder / keys.ARTIFACT_REGIME_THRESHOLDS
        thresholds_json.write_text(json.dumps({**thresholds.to_dict(),
                                               "labels": report.label_info},
                                              indent=2, default=str))
        moved = folder / keys.ARTIFACT_REGIME_SENSITIVITY
        report.sensitivity.to_csv(moved, index=False)
        _log_files((labels, thresholds_json, moved, regime_map))
        for fs, model in report.models.items():
            report.logged[fs] = log_classifier(model, labelled, fs, names[fs], alias,
                                               report.cv[fs])
    report.run_id = run.info.run_id
    report.n_tagged = tag_cell_runs(labelled)
    if report.grid_run_id is not None:
        with_retries(get_client().log_artifact, report.grid_run_id, str(regime_map),
                     keys.ARTIFACT_PLOTS_DIR)


def tag_cell_runs(df: pd.DataFrame, client: MlflowClient | None = None) -> int:
    """Write each row's ``regime`` as the ``regime`` tag of its cell run (column ``run_id``).

    With the columns of ``selection.regimes.label_grid``, the run also gets the metrics
    ``p_regime_I`` and ``p_regime_IIB`` (when not NaN) and the tag ``regime_label_method``.
    Rows without a run id or a regime are skipped; so are run ids unknown to this tracking
    store (a table from elsewhere), with a warning. Returns the number of runs tagged.
    """
    check_table(df, (keys.REGIME,), allow_nan=True)
    if RUN_ID not in df.columns:
        return 0
    # the batch logger writes to any run by its id; its experiment is for lookups, unused here
    runs = RunCache(client or get_client(), experiment_id="")
    rows = df[df[RUN_ID].notna() & df[keys.REGIME].notna()]
    tagged, unknown = 0, []
    for _, row in rows.iterrows():
        run_id = str(row[RUN_ID])
        tags = {keys.REGIME: str(row[keys.REGIME])}
        if isinstance(row.get("label_method"), str):
            tags[keys.REGIME_LABEL_METHOD] = row["label_method"]
        metrics = {name: row[name] for name in (keys.P_REGIME_I, keys.P_REGIME_IIB)
                   if name in row.index and pd.notna(row[name])}
        try:
            runs.log(run_id, metrics=metrics, tags=tags)
            tagged += 1
        except MlflowException as e:
            if e.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
            unknown.append(str(run_id))
    if unknown:
        warnings.warn(f"{len(unknown)} run ids of the table are not in this tracking store, "
                      f"not tagged: {unknown[:5]}", stacklevel=2)
    return tagged


# --- select --------------------------------------------------------------------------------

def log_selection(result: SelectionResult, experiment: str,
                  parent_run_id: str | None = None) -> str:
    """Log ``result`` as a run (``run_kind=selection``) of ``experiment``, nested under
    ``parent_run_id`` (e.g. the grid parent run) when given; return the run id.

    Logged: the thresholds and target densities as params, the mean regret of each method as
    metrics, and the artifacts ``keys.ARTIFACT_SELECTION_TABLE`` (CSV),
    ``keys.PLOT_SELECTION_REGRET`` and ``keys.ARTIFACT_REGIME_THRESHOLDS``.
    """
    from selection.model_selection import plot_regret

    densities = sorted(result.table["density"].unique())
    with child_run(experiment, keys.KIND_SELECTION, "select", parent_run_id) as run, \
            tempfile.TemporaryDirectory() as tmp:
        params = {**result.thresholds.params(),
                  keys.SELECTION_DENSITIES: json.dumps([float(d) for d in densities])}
        metrics = {keys.mean_regret_metric(m): v for m, v in result.mean_regret().items()
                   if not np.isnan(v)}
        _log_values(run, params, metrics)
        folder = Path(tmp)
        result.table.to_csv(folder / keys.ARTIFACT_SELECTION_TABLE, index=False)
        (folder / keys.ARTIFACT_REGIME_THRESHOLDS).write_text(result.thresholds.to_json())
        plot_regret(result.table, folder / keys.PLOT_SELECTION_REGRET)
        _log_files(folder / name for name in (keys.ARTIFACT_SELECTION_TABLE,
                                              keys.ARTIFACT_REGIME_THRESHOLDS,
                                              keys.PLOT_SELECTION_REGRET))
        return run.info.run_id


# --- tune ----------------------------------------------------------------------------------

class MlflowTrialLogger:
    """Optuna callback logging a study to MLflow: one parent run, one child run per trial.

    The study run (tag ``run_kind=study``, ``study_name``) is found by its tags or created on
    the first trial, so several worker processes of one study (and a resumed study) share it.
    Each finished trial becomes a child run (``run_kind=trial``, ``mlflow.parentRunId``, tags
    ``study_name``, ``trial_number``, ``regime``, ``cell_run_id``, ``trial_state``; params
    temperature, density, knob and the trial's own params; metrics the objective, LMC barrier
    and CKA), written with one ``log_batch`` call.

    Args:
        experiment: the MLflow experiment (created if missing).
        objective_name: metric name of the trial value.
        study_params: params of the study run (knob, density, sampler, ...), logged once.
        register_best: hook called by :meth:`on_study_end` as
            ``register_best(study, best_trial, study_run_id)``, e.g. to register the best
            trial's pruned model (its cell run is the trial's ``run_id`` attribute) with an
            alias. Not set here: the pipeline layer owns the models.

    Note:
        Set the tracking URI before (``tracking.store.configure``); this class never relies on
        MLflow's implicit default.
    """

    def __init__(
        self,
        experiment: str,
        *,
        objective_name: str = keys.VAL_ACC,
        study_params: Mapping[str, Any] | None = None,
        register_best: Callable[[optuna.Study, FrozenTrial, str], None] | None = None,
    ) -> None:
        self.client = get_client()
        self.experiment_id = init_experiment(experiment)
        self.objective_name = objective_name
        self.study_params = dict(study_params or {})
        self.register_best = register_best
        self._runs = RunCache(self.client, self.experiment_id)
        self._study_runs: dict[str, str] = {}

    def study_run_id(self, study: optuna.Study) -> str:
        """Id of the study's parent run, created on first use."""
        name = study.study_name
        if name in self._study_runs:
            return self._study_runs[name]

        def first_study_run() -> str | None:
            runs = search_all_runs(
                self.client, [self.experiment_id],
                f"tags.{keys.RUN_KIND} = '{keys.KIND_STUDY}' "
                f"and tags.{keys.STUDY_NAME} = '{name}'",
                order_by=["attributes.start_time ASC"])
            first = min(runs, key=lambda r: (r.info.start_time, r.info.run_id), default=None)
            return first.info.run_id if first is not None else None

        run_id = first_study_run()
        if run_id is None:
            run = with_retries(self.client.create_run, self.experiment_id, run_name=name,
                               tags={keys.RUN_KIND: keys.KIND_STUDY, keys.STUDY_NAME: name})
            # Workers starting at the same moment may each have created one: every worker keeps
            # the earliest (start time, then id) and the others delete their own.
            run_id = first_study_run() or run.info.run_id
            if run_id != run.info.run_id:
                with_retries(self.client.delete_run, run.info.run_id)
            else:
                self._runs.log(run_id, params=dict(sorted(self.study_params.items())))
        self._study_runs[name] = run_id
        return run_id

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from optuna.trial import TrialState

        from selection.tuner import _number

        parent = self.study_run_id(study)
        attrs = trial.user_attrs
        tags = {
            keys.PARENT_RUN_ID: parent, keys.RUN_KIND: keys.KIND_TRIAL,
            keys.STUDY_NAME: study.study_name, keys.TRIAL_NUMBER: str(trial.number),
            keys.TRIAL_STATE: trial.state.name,
        }
        if attrs.get(keys.REGIME):
            tags[keys.REGIME] = str(attrs[keys.REGIME])
        if attrs.get(RUN_ID):
            tags[keys.CELL_RUN_ID] = str(attrs[RUN_ID])
        run = with_retries(self.client.create_run, self.experiment_id,
                           run_name=f"{study.study_name}/trial-{trial.number}", tags=tags)
        params = {k: v for k, v in self.study_params.items() if k != keys.TEMPERATURE}
        params.update(trial.params)
        for name in (keys.TEMPERATURE, keys.DENSITY):
            if attrs.get(name) is not None:
                params[name] = attrs[name]
        metrics = {}
        if trial.value is not None and math.isfinite(trial.value):
            metrics[self.objective_name] = trial.value
        for name in (keys.LMC_BARRIER, keys.CKA):
            if _number(attrs.get(name)) is not None:
                metrics[name] = attrs[name]
        self._runs.log(run.info.run_id, params=dict(sorted(params.items())), metrics=metrics)
        status = "FINISHED" if trial.state == TrialState.COMPLETE else (
            "KILLED" if trial.state == TrialState.PRUNED else "FAILED")
        with_retries(self.client.set_terminated, run.info.run_id, status)

    def on_study_end(self, study: optuna.Study) -> str:
        """Log the best trial on the study run, call ``register_best``, end the run.

        Returns the study run id.
        """
        from optuna.trial import TrialState

        from selection.tuner import _number

        parent = self.study_run_id(study)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            best = study.best_trial
            metrics = {keys.BEST_VALUE: best.value}
            temperature = _number(best.user_attrs.get(keys.TEMPERATURE))
            if temperature is not None:
                metrics[keys.BEST_TEMPERATURE] = temperature
            tags = {keys.BEST_TRIAL_NUMBER: str(best.number)}
            if best.user_attrs.get(RUN_ID):
                tags[keys.CELL_RUN_ID] = str(best.user_attrs[RUN_ID])
            self._runs.log(parent, metrics=metrics, tags=tags, step=len(study.trials))
            if self.register_best is not None:
                self.register_best(study, best, parent)
        with_retries(self.client.set_terminated, parent, "FINISHED")
        return parent
