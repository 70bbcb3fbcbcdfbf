"""The regime classifier: a scikit-learn pipeline fitted on labelled cells, logged to MLflow.

Two feature sets:
- ``landscape``: temperature, density, LMC barrier and CKA. The rule labels are a function of
  the last two, so this model mostly re-learns the thresholds; it labels new measured cells.
- ``phase``: temperature and density only. It predicts the regime of a cell that has never
  been run (the phase map), which is what a tuner needs.

Model: log(density) and the knob-oriented temperature ("heat": larger = hotter; log scale when
every temperature is positive, since knob grids are geometric: epochs 10..160, batch sizes,
learning rates), standardised, then a multinomial logistic regression. Why not gradient
boosting: a grid has tens of cells, and regime boundaries in (log temperature, log density)
are close to straight lines (docs/method.md#the-idea: I at low density and cold, II-A hot,
II-B dense and cold), which a linear softmax model draws as three sectors with smooth, extrapolating
boundaries; trees give axis-aligned steps that do not extrapolate to unseen densities.
Everything is a stock sklearn object, so the model is saved in MLflow's safe ``skops`` format.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from selection._validate import check_labels, check_table, one_knob
from selection.regimes import REGIMES
from tracking import keys
from tracking.knobs import hotter_is_lower
from tracking.store import with_retries

LANDSCAPE = "landscape"
PHASE = "phase"
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    LANDSCAPE: (keys.TEMPERATURE, keys.DENSITY, keys.LMC_BARRIER, keys.CKA),
    PHASE: (keys.TEMPERATURE, keys.DENSITY),
}
MODEL_NAMES = {LANDSCAPE: keys.MODEL_LANDSCAPE, PHASE: keys.MODEL_PHASE}
STRATIFIED = "stratified"
GROUP_BY_DENSITY = "group_by_density"
NO_CV = "none"
DEFAULT_ALIAS = "champion"


def _check_feature_set(feature_set: str) -> tuple[str, ...]:
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; allowed: {sorted(FEATURE_SETS)}")
    return FEATURE_SETS[feature_set]


def _one_knob(df: pd.DataFrame) -> str:
    knob = one_knob(df, "a regime classifier")
    hotter_is_lower(knob)  # fails on an unknown knob, listing the known ones
    return knob


def build_pipeline(feature_set: str, knob: str, log_temperature: bool, n_classes: int
                   ) -> Pipeline:
    """The unfitted pipeline: features -> StandardScaler -> LogisticRegression.

    With fewer than two classes the last step is a constant ``DummyClassifier`` instead
    (a logistic regression cannot be fitted on one class).
    """
    features = _check_feature_set(feature_set)
    heat_steps = []
    if log_temperature:
        heat_steps.append(("log", FunctionTransformer(np.log, feature_names_out="one-to-one")))
    if hotter_is_lower(knob):
        heat_steps.append(("hotter", FunctionTransformer(np.negative,
                                                         feature_names_out="one-to-one")))
    heat = Pipeline(heat_steps) if heat_steps else "passthrough"
    transformers = [
        ("heat", heat, [keys.TEMPERATURE]),
        ("log_density", FunctionTransformer(np.log, feature_names_out="one-to-one"),
         [keys.DENSITY]),
    ]
    metrics = [c for c in features if c not in (keys.TEMPERATURE, keys.DENSITY)]
    if metrics:
        transformers.append(("landscape", "passthrough", metrics))
    model = (LogisticRegression(C=1.0, max_iter=2000) if n_classes >= 2
             else DummyClassifier(strategy="most_frequent"))
    return Pipeline([("features", ColumnTransformer(transformers)),
                     ("scale", StandardScaler()), ("model", model)])


def _xy(df: pd.DataFrame, feature_set: str) -> tuple[pd.DataFrame, np.ndarray]:
    features = _check_feature_set(feature_set)
    check_table(df, (keys.KNOB, *features, keys.REGIME))
    check_labels(df)
    return df[list(features)].astype(float), df[keys.REGIME].astype(str).to_numpy()


def _fit(template: Pipeline, X: pd.DataFrame, y: np.ndarray, feature_set: str, knob: str,
         log_temperature: bool) -> Pipeline:
    if len(np.unique(y)) < 2:
        template = build_pipeline(feature_set, knob, log_temperature, 1)
    return clone(template).fit(X, y)


def fit_classifier(df: pd.DataFrame, feature_set: str = LANDSCAPE) -> Pipeline:
    """Fit the regime classifier on the labelled table ``df`` (column ``regime``).

    Needs ``knob`` (one knob only), ``regime`` and the columns of ``feature_set``. Predict
    with :func:`predict_regimes` (or ``model.predict(df[model.feature_names_in_])``).

    Note: temperature is log-scaled when every temperature of ``df`` is positive; such a
    model then cannot take a temperature <= 0 (e.g. SAM rho 0) at prediction time.
    """
    X, y = _xy(df, feature_set)
    knob = _one_knob(df)
    log_temperature = bool((X[keys.TEMPERATURE] > 0).all())
    template = build_pipeline(feature_set, knob, log_temperature, len(np.unique(y)))
    return _fit(template, X, y, feature_set, knob, log_temperature)


def predict_regimes(model: Pipeline, df: pd.DataFrame) -> np.ndarray:
    """Regime labels predicted by ``model`` for the rows of ``df`` (extra columns ignored)."""
    columns = list(model.feature_names_in_)
    check_table(df, columns)
    return model.predict(df[columns].astype(float))


@dataclass(frozen=True)
class CVResult:
    """Cross-validated accuracy of a feature set.

    Attributes:
        accuracy: pooled out-of-fold accuracy (each cell predicted once by a model that did not
            see it); NaN when cross-validation is impossible (see ``notes``).
        fold_accuracies: accuracy of each fold.
        n_splits: folds used (may be fewer than asked: see ``notes``).
        splitter: ``stratified``, ``group_by_density`` or ``none``.
        notes: why folds were reduced or CV skipped.
    """

    feature_set: str
    accuracy: float
    fold_accuracies: tuple[float, ...]
    n_splits: int
    splitter: str
    notes: tuple[str, ...] = ()


def cross_validate(df: pd.DataFrame, feature_set: str = LANDSCAPE, n_splits: int = 5,
                   group_by_density: bool = False, seed: int = 0) -> CVResult:
    """Cross-validated accuracy of :func:`fit_classifier` on the labelled table ``df``.

    Stratified folds (``StratifiedGroupKFold`` shuffled with ``seed``, grouped by cell so that
    the dense seeds of one (temperature, density) cell are never split: otherwise the phase
    model would be tested on the very cells it was fitted on) by default; with
    ``group_by_density``, ``GroupKFold`` over densities, so a density's cells are never split
    across training and test (this measures prediction at densities never run).

    Fewer folds are used when the data cannot fill ``n_splits`` (no more folds than the largest
    class has members, than there are cells, or than there are densities); a class with fewer
    members than folds is allowed (some folds then lack it) and noted. With one class, or one
    density when grouping, CV is impossible: ``accuracy`` is NaN and ``notes`` says why. A
    training fold holding one class only gets a constant classifier.
    """
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}")
    X, y = _xy(df, feature_set)
    knob = _one_knob(df)
    log_temperature = bool((X[keys.TEMPERATURE] > 0).all())
    classes, counts = np.unique(y, return_counts=True)
    notes: list[str] = []
    splitter = GROUP_BY_DENSITY if group_by_density else STRATIFIED
    if len(classes) < 2:
        notes.append(f"one class only ({classes[0]}): cross-validation is not meaningful")
        return CVResult(feature_set, float("nan"), (), 0, NO_CV, tuple(notes))
    if group_by_density:
        groups = df[keys.DENSITY].to_numpy()
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            notes.append("one density only: cross-validation grouped by density is impossible")
            return CVResult(feature_set, float("nan"), (), 0, NO_CV, tuple(notes))
        k = min(n_splits, n_groups)
        if k < n_splits:
            notes.append(f"{k} folds: only {n_groups} densities")
        folds = list(GroupKFold(n_splits=k).split(X, y, groups))
    else:
        cells = pd.factorize(pd.MultiIndex.from_frame(df[[keys.TEMPERATURE, keys.DENSITY]]))[0]
        n_cells = int(cells.max()) + 1
        k = min(n_splits, int(counts.max()), n_cells)
        if k < n_splits:
            notes.append(f"{k} folds: the largest class has {counts.max()} members, "
                         f"the table {n_cells} cells")
        rare = [f"{c} ({n})" for c, n in zip(classes, counts, strict=True) if n < k]
        if rare:
            notes.append(f"classes with fewer members than folds: {', '.join(rare)}; some test "
                         "folds lack them")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The least populated class",
                                    category=UserWarning)
            folds = list(StratifiedGroupKFold(k, shuffle=True, random_state=seed)
                         .split(X, y, cells))
    template = build_pipeline(feature_set, knob, log_temperature, len(classes))
    predicted = np.empty(len(y), dtype=object)
    fold_accuracies = []
    for train, test in folds:
        model = _fit(template, X.iloc[train], y[train], feature_set, knob, log_temperature)
        predicted[test] = model.predict(X.iloc[test])
        fold_accuracies.append(float((predicted[test] == y[test]).mean()))
    accuracy = float((predicted == y).mean())
    return CVResult(feature_set, accuracy, tuple(fold_accuracies), len(folds), splitter,
                    tuple(notes))


@dataclass(frozen=True)
class LoggedClassifier:
    """Where :func:`log_classifier` put a model: its run, URI and registered version."""

    run_id: str
    model_uri: str
    registered_name: str | None
    version: str | None
    alias: str | None


def _pip_requirements() -> list[str]:
    # Given explicitly: MLflow's inference imports the model in a subprocess (~6 s per model).
    return [*mlflow.sklearn.get_default_pip_requirements(include_skops=True),
            f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]


def log_classifier(model: Pipeline, df: pd.DataFrame, feature_set: str = LANDSCAPE,
                   registered_name: str | None = None, alias: str | None = DEFAULT_ALIAS,
                   cv: CVResult | None = None) -> LoggedClassifier:
    """Log ``model`` with ``mlflow.sklearn.log_model`` (signature + input example from ``df``).

    Logged into the active MLflow run, or, with none active, into a new run (tag
    ``run_kind=classifier``) of the current experiment, ended before returning. The model's
    name in the run is ``keys.MODEL_LANDSCAPE`` or ``keys.MODEL_PHASE``; its metadata records
    the feature set, knob, classes and the CV result. ``cv`` also becomes the metric
    ``cv_accuracy_<feature_set>``. With ``registered_name`` the model is registered as a new
    version of that registered model and ``alias`` (default ``champion``) is pointed at it;
    stages are never used. The registered model and the version get the descriptions of
    :func:`registered_model_description` and :func:`model_version_description` (shown in the
    MLflow UI's Model registry).

    Note: the signature types every input column as double. Through ``mlflow.pyfunc`` an
    integer column (e.g. epochs) is refused ("can not safely convert int64 to float64"):
    pass ``df[columns].astype(float)``. :func:`load_classifier` returns the sklearn pipeline,
    which takes either.
    """
    features = list(_check_feature_set(feature_set))
    if list(model.feature_names_in_) != features:
        raise ValueError(f"model takes {list(model.feature_names_in_)}, not the {feature_set!r} "
                         f"features {features}")
    example = df[features].astype(float).head(5)
    signature = infer_signature(example, model.predict(example))
    metadata = {keys.FEATURE_SET: feature_set, keys.KNOB: _one_knob(df),
                "classes": [str(c) for c in model.classes_]}
    if cv is not None:
        metadata.update(cv_accuracy=cv.accuracy, cv_splitter=cv.splitter, cv_splits=cv.n_splits)
    own_run = mlflow.active_run() is None
    run = mlflow.start_run(tags={keys.RUN_KIND: keys.KIND_CLASSIFIER}) if own_run else (
        mlflow.active_run())
    try:
        info = mlflow.sklearn.log_model(
            model, name=MODEL_NAMES[feature_set], signature=signature, input_example=example,
            registered_model_name=registered_name, metadata=metadata,
            pip_requirements=_pip_requirements())
        if cv is not None and not np.isnan(cv.accuracy):
            mlflow.log_metric(keys.cv_accuracy_metric(feature_set), cv.accuracy)
    finally:
        if own_run:
            mlflow.end_run()
    version = None
    if registered_name is not None:
        version = str(info.registered_model_version)
        client = MlflowClient()
        with_retries(client.set_model_version_tag, registered_name, version, keys.FEATURE_SET,
                     feature_set)
        # descriptions are what the Model registry page shows: what the model is, how to use it
        with_retries(client.update_registered_model, registered_name,
                     registered_model_description(feature_set, registered_name, alias))
        with_retries(client.update_model_version, registered_name, version,
                     model_version_description(df, feature_set, run.info.run_id, cv))
        if alias:
            with_retries(client.set_registered_model_alias, registered_name, alias, version)
    return LoggedClassifier(run.info.run_id, info.model_uri, registered_name, version,
                            alias if registered_name else None)


def registered_model_description(feature_set: str, name: str, alias: str | None) -> str:
    """The Model registry description of a regime classifier of ``feature_set``."""
    features = ", ".join(_check_feature_set(feature_set))
    use = (f"Load it with `mlflow.sklearn.load_model('models:/{name}@{alias}')` or "
           f"`python -m selection tune --classifier {name}@{alias} ...`." if alias else "")
    purpose = ("labels measured cells" if feature_set == LANDSCAPE
               else "predicts the regime of cells never run (the phase map)")
    return (f"Regime classifier (I / II-A / II-B) of the three-regime model of pruning, "
            f"feature set `{feature_set}` ({features}): it {purpose}. Scaled features "
            f"(log density, knob-oriented temperature) -> multinomial logistic regression. "
            f"{use}").strip()


def model_version_description(df: pd.DataFrame, feature_set: str, run_id: str,
                              cv: CVResult | None) -> str:
    """The description of one registered version: its data, CV accuracy and source run."""
    counts = df[keys.REGIME].value_counts() if keys.REGIME in df.columns else None
    regimes = "" if counts is None else " (" + ", ".join(
        f"{r}: {int(counts.get(r, 0))}" for r in REGIMES) + ")"
    if cv is None:
        accuracy = "not cross-validated"
    elif np.isnan(cv.accuracy):
        accuracy = "cross-validation not possible (" + "; ".join(cv.notes) + ")"
    else:
        accuracy = f"CV accuracy {cv.accuracy:.3f} ({cv.splitter}, {cv.n_splits} folds)"
    return (f"Fitted on {len(df)} labelled cells of knob `{_one_knob(df)}`{regimes}; "
            f"{accuracy}; logged by run {run_id}.")


def load_classifier(name: str, alias: str = DEFAULT_ALIAS) -> Pipeline:
    """The registered classifier ``name`` at ``alias``, loaded from ``models:/name@alias``."""
    return mlflow.sklearn.load_model(f"models:/{name}@{alias}")
