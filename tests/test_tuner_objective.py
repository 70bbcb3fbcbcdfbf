"""CellObjective, sampler factory and storage of selection.tuner (no MLflow, no training)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from selection.tuner import (
    SAMPLER_NAMES,
    TEMPERATURE_INDEX_PARAM,
    CellObjective,
    create_sampler,
    default_storage_path,
    make_storage,
    sampler_encoding,
    tune,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

TEMPS = [2, 5, 10, 20, 40, 80]


class PoisonedRow(Mapping):
    """A results-table row whose test accuracy explodes when anything reads it."""

    def __init__(self, values: dict) -> None:
        self._values = values

    def __getitem__(self, key):
        if key.startswith("test_acc"):
            raise AssertionError(f"the objective read {key!r}")
        return self._values[key]

    def __iter__(self) -> Iterator:
        raise AssertionError("the objective iterated over the whole row (test_acc included)")

    def __len__(self) -> int:
        return len(self._values) + 1


def _row(t: float, d: float) -> dict:
    barrier = -0.08 if t >= 40 else 0.0
    return {"val_acc": 0.7 - abs(math.log(t / 20)) / 10, "lmc_barrier": barrier,
            "cka": 0.95 if 10 <= t else 0.8, "regime": None, "run_id": f"run-{t}"}


def poisoned_lookup(t: float, d: float) -> Mapping:
    return PoisonedRow(_row(t, d))


def test_objective_returns_val_acc_and_stores_attrs_without_reading_test_acc():
    objective = CellObjective(poisoned_lookup, 0.1, TEMPS, "epochs", eps=-0.02, tau=0.9)
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=4)
    for trial in study.trials:
        t = trial.user_attrs["temperature"]
        assert trial.value == pytest.approx(_row(t, 0.1)["val_acc"])
        assert trial.user_attrs["regime"] == ("I" if t >= 40 else "II-B" if t >= 10 else "II-A")
        assert trial.user_attrs["run_id"] == f"run-{t}"
        assert trial.user_attrs["lmc_barrier"] == _row(t, 0.1)["lmc_barrier"]
        assert trial.user_attrs["regime_thresholds"]["eps"] == -0.02
        assert not any(k.startswith("test") for k in trial.user_attrs)


def test_test_accuracy_is_never_an_objective():
    with pytest.raises(ValueError, match="never"):
        CellObjective(poisoned_lookup, 0.1, TEMPS, "epochs", objective_column="test_acc")


def test_row_regime_used_when_no_thresholds_and_relabelled_when_given():
    def lookup(t, d):
        return {**_row(t, d), "regime": "II-A"}

    study = optuna.create_study()
    study.optimize(CellObjective(lookup, 0.1, [80], "epochs"), n_trials=1)
    assert study.trials[0].user_attrs["regime"] == "II-A"
    study = optuna.create_study()
    study.optimize(CellObjective(lookup, 0.1, [80], "epochs", eps=-0.02, tau=0.9), n_trials=1)
    assert study.trials[0].user_attrs["regime"] == "I"   # barrier -0.08 < eps


def test_estimated_thresholds_use_the_study_cells():
    study = optuna.create_study(direction="maximize")
    objective = CellObjective(poisoned_lookup, 0.1, TEMPS, "epochs")
    study.enqueue_trial({"temperature": 80})
    study.enqueue_trial({"temperature": 5})
    study.optimize(objective, n_trials=2)
    regimes = [t.user_attrs["regime"] for t in study.trials]
    assert regimes == ["I", "II-B"]   # a lone barrier -0.08 < -0.01 is Regime I
    labels = study.trials[1].user_attrs["regime_thresholds"]
    assert labels["method"] == "jump" and labels["n_cells"] == 2
    assert labels["n_context_cells"] == 0
    assert [t.user_attrs["regime_source"] for t in study.trials] == ["grid", "grid"]


def test_finished_cells_of_other_densities_label_the_trial():
    from selection.synthetic import TRUE_REGIME, paper_like_grid
    from tracking import keys

    grid = paper_like_grid(seed=0)
    here = grid[(grid[keys.DENSITY] == 0.14) & (grid[keys.TEMPERATURE] == 100)]
    assert here[keys.LMC_BARRIER].item() < -0.02 and here[TRUE_REGIME].item() == "II-B"
    row = here.iloc[0].drop(labels=[keys.REGIME, TRUE_REGIME]).to_dict()

    def lookup(t, d):
        return row

    alone, with_grid = (optuna.create_study(direction="maximize") for _ in range(2))
    alone.optimize(CellObjective(lookup, 0.14, [100], "epochs"), n_trials=1)
    assert alone.trials[0].user_attrs["regime"] == "I"   # one cell: the pooled level
    with_grid.optimize(CellObjective(lookup, 0.14, [100], "epochs",
                                     context=grid.drop(columns=[TRUE_REGIME])), n_trials=1)
    trial = with_grid.trials[0]
    assert trial.user_attrs["regime"] == "II-B"           # the grid's jumps say connected
    assert trial.user_attrs["regime_thresholds"]["n_context_cells"] == len(grid) - 6
    assert trial.user_attrs["regime_source"] == "grid"
    given = optuna.create_study(direction="maximize")
    given.optimize(CellObjective(lookup, 0.14, [100], "epochs", eps=-0.05, tau=0.9), n_trials=1)
    assert given.trials[0].user_attrs["regime_source"] == "thresholds"


def test_nan_objective_fails_the_trial():
    def lookup(t, d):
        return {**_row(t, d), "val_acc": float("nan")}

    study = optuna.create_study()
    study.optimize(CellObjective(lookup, 0.1, TEMPS, "epochs", eps=-0.02, tau=0.9), n_trials=1)
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[0].user_attrs["regime"] in ("I", "II-A", "II-B")


def test_index_encoding_counts_from_the_coldest():
    objective = CellObjective(poisoned_lookup, 0.1, TEMPS, "epochs", encoding="index")
    study = optuna.create_study()
    study.enqueue_trial({TEMPERATURE_INDEX_PARAM: 0})
    study.enqueue_trial({TEMPERATURE_INDEX_PARAM: 5})
    study.optimize(objective, n_trials=2)
    assert [t.user_attrs["temperature"] for t in study.trials] == [80, 2]
    rho = CellObjective(poisoned_lookup, 0.1, [0.5, 0.0, 0.1], "sam_rho", encoding="index")
    assert rho.temperatures == [0.0, 0.1, 0.5]


def test_continuous_temperature_space():
    objective = CellObjective(poisoned_lookup, 0.1, FloatDistribution(2, 80, log=True), "epochs")
    study = optuna.create_study(direction="maximize", sampler=create_sampler("regime", "epochs"))
    study.optimize(objective, n_trials=3)
    assert all(2 <= t.params["temperature"] <= 80 for t in study.trials)
    with pytest.raises(ValueError, match="grid"):
        CellObjective(poisoned_lookup, 0.1, FloatDistribution(2, 80), "epochs", encoding="index")


def test_bad_inputs_fail_fast():
    with pytest.raises(ValueError, match="density"):
        CellObjective(poisoned_lookup, 1.5, TEMPS, "epochs")
    with pytest.raises(ValueError, match="unknown knob"):
        CellObjective(poisoned_lookup, 0.1, TEMPS, "temperature_of_the_room")
    with pytest.raises(ValueError, match="numbers"):
        CellObjective(poisoned_lookup, 0.1, ["hot"], "epochs")
    with pytest.raises(ValueError, match="unknown sampler"):
        create_sampler("cmaes", "epochs")
    with pytest.raises(ValueError, match="temperatures"):
        create_sampler("grid", "epochs")


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_runs_a_short_study(name):
    study = tune(poisoned_lookup, density=0.1, temperature_space=TEMPS, knob="epochs",
                 n_trials=3, sampler=name, seed=1, storage="memory", eps=-0.02, tau=0.9)
    assert len(study.trials) == 3
    assert all(t.user_attrs["temperature"] in TEMPS for t in study.trials)
    param = TEMPERATURE_INDEX_PARAM if sampler_encoding(name) == "index" else "temperature"
    assert all(param in t.params for t in study.trials)


def test_storage_urls(tmp_path, monkeypatch):
    journal = make_storage(str(tmp_path / "sub" / "t.journal"))
    assert isinstance(journal, optuna.storages.JournalStorage)
    assert (tmp_path / "sub").is_dir()
    assert isinstance(make_storage("memory"), optuna.storages.InMemoryStorage)
    assert isinstance(make_storage(f"sqlite:///{tmp_path / 'o.db'}"), optuna.storages.RDBStorage)
    with pytest.raises(ValueError, match="journal"):
        make_storage("somewhere")
    assert default_storage_path().name == "optuna.journal"
    # an unreachable server: one error saying what to try, the password not echoed (the
    # bounded wait itself: tests/test_faults_unreachable.py)
    monkeypatch.setenv("THREE_REGIME_STORE_TIMEOUT", "1")
    with pytest.raises(RuntimeError, match=r"Optuna storage postgresql://alice:\*\*\*@"
                       r"127\.0\.0\.1:9/optuna unreachable .*createdb") as err:
        make_storage("postgresql://alice:hunter2@127.0.0.1:9/optuna")
    assert "hunter2" not in str(err.value)
    assert (default_storage_path().parent / "selection").is_dir()


def test_journal_study_is_resumed_by_name(tmp_path):
    storage = str(tmp_path / "optuna.journal")
    kwargs = dict(density=0.1, temperature_space=TEMPS, knob="epochs", storage=storage,
                  study_name="s", eps=-0.02, tau=0.9)
    tune(poisoned_lookup, n_trials=2, **kwargs)
    study = tune(poisoned_lookup, n_trials=2, **kwargs)
    temps = [t.user_attrs["temperature"] for t in study.trials]
    assert len(temps) == 4 and len(set(temps)) == 4   # the regime sampler saw the first two


def test_classifier_callables_phase_predicts_and_landscape_labels():
    from selection.classifier import LANDSCAPE, PHASE, fit_classifier
    from selection.regimes import label_regimes
    from selection.synthetic import synthetic_table
    from selection.tuner import classifier_callables

    table, _ = label_regimes(synthetic_table(seed=0))
    at = table[table.density == 0.05]
    predictor, labeller = classifier_callables(fit_classifier(table, PHASE), 0.05)
    assert labeller is None
    predicted = [predictor(t) for t in at.temperature]
    assert predicted == at.regime.tolist()   # the phase map of a clean table is learnable
    predictor, labeller = classifier_callables(fit_classifier(table, LANDSCAPE), 0.05)
    assert predictor is None
    rows = at.to_dict("records")
    assert [labeller(r) for r in rows] == at.regime.tolist()
    assert labeller({"temperature": 2.0, "density": 0.05}) is None   # no metrics: no label
