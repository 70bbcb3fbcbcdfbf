"""Regime classifier: fit, cross-validation, MLflow logging/registration/reload, run tags."""

from __future__ import annotations

import warnings

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from selection._tracking import tag_cell_runs
from selection.classifier import (
    GROUP_BY_DENSITY,
    LANDSCAPE,
    NO_CV,
    PHASE,
    STRATIFIED,
    cross_validate,
    fit_classifier,
    load_classifier,
    log_classifier,
    predict_regimes,
)
from selection.regimes import REGIME_I, REGIME_II_A, REGIME_II_B, RegimeWarning, label_regimes
from selection.synthetic import synthetic_table
from tracking import keys
from tracking.tables import RUN_ID


def _labelled(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)
        return label_regimes(synthetic_table(**kwargs))[0]


@pytest.fixture(scope="module")
def labelled():
    return _labelled(dense_seeds=2, seed=0)


def test_landscape_classifier_learns_the_rule(labelled):
    model = fit_classifier(labelled, LANDSCAPE)
    assert list(model.feature_names_in_) == [keys.TEMPERATURE, keys.DENSITY, keys.LMC_BARRIER,
                                             keys.CKA]
    assert (predict_regimes(model, labelled) == labelled[keys.REGIME]).all()
    cv = cross_validate(labelled, LANDSCAPE)
    assert cv.splitter == STRATIFIED and cv.n_splits == 5 and len(cv.fold_accuracies) == 5
    assert cv.accuracy >= 0.95


def test_phase_classifier_predicts_from_temperature_and_density(labelled):
    model = fit_classifier(labelled, PHASE)
    assert list(model.feature_names_in_) == [keys.TEMPERATURE, keys.DENSITY]
    # the phase structure: sparse + cold is I, hot is II-A, dense + cold is II-B
    unseen = labelled.head(3).copy()
    unseen[keys.TEMPERATURE] = [160, 1, 160]
    unseen[keys.DENSITY] = [0.03, 0.5, 0.9]
    assert predict_regimes(model, unseen).tolist() == [REGIME_I, REGIME_II_A, REGIME_II_B]
    cv = cross_validate(labelled, PHASE, group_by_density=True)
    assert cv.splitter == GROUP_BY_DENSITY and cv.n_splits == 5
    assert 0.7 <= cv.accuracy <= 1.0


def test_grouped_cv_never_splits_a_density(labelled, monkeypatch):
    from selection import classifier

    seen = []
    original = classifier._fit

    def spy(template, X, y, *args):
        seen.append(set(X[keys.DENSITY]))
        return original(template, X, y, *args)

    monkeypatch.setattr(classifier, "_fit", spy)
    cv = cross_validate(labelled, PHASE, n_splits=3, group_by_density=True)
    densities = set(labelled[keys.DENSITY])
    assert cv.n_splits == len(seen) == 3
    # each fold trains on whole densities and leaves whole densities out
    assert all(0 < len(train) < len(densities) for train in seen)
    held_out = [densities - train for train in seen]
    assert set().union(*held_out) == densities
    assert sum(len(h) for h in held_out) == len(densities)


def test_stratified_cv_keeps_the_dense_seeds_of_a_cell_together(labelled, monkeypatch):
    from selection import classifier

    trained = []
    original = classifier._fit

    def spy(template, X, y, *args):
        trained.append((set(zip(X[keys.TEMPERATURE], X[keys.DENSITY], strict=True)), len(X)))
        return original(template, X, y, *args)

    monkeypatch.setattr(classifier, "_fit", spy)
    cv = cross_validate(labelled, PHASE)  # 2 dense seeds per cell
    assert cv.splitter == STRATIFIED and len(trained) == cv.n_splits == 5
    cells = labelled.groupby([keys.TEMPERATURE, keys.DENSITY])
    for train, n_rows in trained:
        # a cell is either in training with both its rows, or out of it with both
        assert n_rows == 2 * len(train)
    held_out = [set(cells.groups) - train for train, _ in trained]
    assert sum(len(h) for h in held_out) == len(cells)


def test_cv_with_one_class_reports_nan():
    df = _labelled(seed=0)
    df[keys.REGIME] = REGIME_II_B
    cv = cross_validate(df, PHASE)
    assert np.isnan(cv.accuracy) and cv.splitter == NO_CV and "one class" in cv.notes[0]
    model = fit_classifier(df, PHASE)  # a constant classifier, not a crash
    assert set(predict_regimes(model, df)) == {REGIME_II_B}


def test_cv_with_a_rare_class_still_runs():
    df = _labelled(seed=0)
    rare = df.index[df[keys.REGIME] == REGIME_I][1:]
    df.loc[rare, keys.REGIME] = REGIME_II_A  # one Regime-I cell left
    cv = cross_validate(df, LANDSCAPE)
    assert cv.n_splits == 5 and 0 <= cv.accuracy <= 1
    assert any("fewer members than folds" in n and "I (1)" in n for n in cv.notes)


def test_grouped_cv_with_one_density():
    df = _labelled(densities=(0.05,), seed=0)
    cv = cross_validate(df, PHASE, group_by_density=True)
    assert np.isnan(cv.accuracy) and "one density" in cv.notes[0]


def test_classifier_input_errors(labelled):
    with pytest.raises(ValueError, match="unknown feature set"):
        fit_classifier(labelled, "everything")
    with pytest.raises(ValueError, match="lacks required column.*'regime'"):
        fit_classifier(labelled.drop(columns=[keys.REGIME]))
    two_knobs = labelled.copy()
    two_knobs.loc[:5, keys.KNOB] = "batch_size"
    with pytest.raises(ValueError, match="one knob"):
        fit_classifier(two_knobs)
    bad = labelled.copy()
    bad.loc[0, keys.REGIME] = "III"
    with pytest.raises(ValueError, match="unknown labels"):
        fit_classifier(bad)


def test_log_register_reload_by_alias_predicts_the_same(tracking_uri, labelled):
    client = MlflowClient()
    mlflow.set_experiment("classifier-test")
    predictions = {}
    for feature_set in (LANDSCAPE, PHASE):
        model = fit_classifier(labelled, feature_set)
        cv = cross_validate(labelled, feature_set)
        name = f"regimes-{feature_set}"
        logged = log_classifier(model, labelled, feature_set, registered_name=name, cv=cv)
        assert (logged.registered_name, logged.version, logged.alias) == (name, "1", "champion")
        run = client.get_run(logged.run_id)
        assert run.data.tags[keys.RUN_KIND] == keys.KIND_CLASSIFIER
        assert run.data.metrics[keys.cv_accuracy_metric(feature_set)] == pytest.approx(
            cv.accuracy)
        version = client.get_model_version_by_alias(name, "champion")
        assert str(version.version) == "1" and version.current_stage == "None"
        assert version.tags[keys.FEATURE_SET] == feature_set
        info = mlflow.models.get_model_info(f"models:/{name}@champion")
        assert info.signature is not None and info.saved_input_example_info is not None
        assert info.signature.inputs.input_names() == list(model.feature_names_in_)

        reloaded = load_classifier(name)
        predictions[feature_set] = predict_regimes(reloaded, labelled)
        assert (predictions[feature_set] == predict_regimes(model, labelled)).all()
    assert (predictions[LANDSCAPE] == labelled[keys.REGIME]).all()

    # a second registration gets version 2 and the alias moves to it
    model = fit_classifier(labelled.iloc[::-1], PHASE)
    again = log_classifier(model, labelled, PHASE, registered_name=f"regimes-{PHASE}")
    assert again.version == "2"
    assert str(client.get_model_version_by_alias(f"regimes-{PHASE}", "champion").version) == "2"


def test_log_classifier_refuses_a_mismatched_feature_set(tracking_uri, labelled):
    with pytest.raises(ValueError, match="not the 'landscape' features"):
        log_classifier(fit_classifier(labelled, PHASE), labelled, LANDSCAPE)


def test_tag_cell_runs(tracking_uri, labelled):
    client = MlflowClient()
    experiment_id = client.create_experiment("tags")
    df = labelled.head(4).copy()
    run_ids = [client.create_run(experiment_id).info.run_id for _ in range(3)]
    df[RUN_ID] = [*run_ids, None]  # the last row has no run
    assert tag_cell_runs(df, client) == 3
    for run_id, regime in zip(run_ids, df[keys.REGIME], strict=False):
        assert client.get_run(run_id).data.tags[keys.REGIME] == regime

    df[RUN_ID] = [run_ids[0], "0" * 32, None, None]
    with pytest.warns(UserWarning, match="not in this tracking store"):
        assert tag_cell_runs(df, client) == 1
