"""Several tuner processes on one study: Journal file and PostgreSQL Optuna storages.

Each worker is a real process running ``selection.tuner.tune`` with a fake cell lookup (a
table: the live lookup computes cells, which the grid tests cover). While untried
temperatures remain no temperature is tried twice, and every trial is one MLflow child run
of the study's run.
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import nullcontext

import optuna
import pytest
from helpers import REPO, cli_env, pg_url, postgres_database, wait_for
from mlflow import MlflowClient

from selection._tracking import MlflowTrialLogger
from selection.tuner import make_storage
from tracking import keys
from tracking.store import configure, experiment_id, search_all_runs

STUDY, EXPERIMENT, TRIALS_PER_WORKER, WORKERS = "parallel", "tune-parallel", 3, 2
TEMPERATURES = [1, 2, 3, 4, 5, 6, 7, 8]
STUDY_PARAMS = {keys.KNOB: "epochs", keys.DENSITY: 0.1, keys.SAMPLER: "regime"}

WORKER = f"""
import sys, time
from selection._tracking import MlflowTrialLogger
from selection.tuner import tune
from tracking.store import configure

storage, uri = sys.argv[1], sys.argv[2]
configure(uri)

def lookup(temperature, density):
    time.sleep(0.5)                     # a cell takes a while: the other worker samples meanwhile
    connected = temperature <= 4        # epochs: fewer is hotter; the hot cells are connected
    return {{"val_acc": 0.5 + 0.01 * temperature if connected else 0.4,
             "lmc_barrier": 0.0 if connected else -0.2, "cka": 0.9,
             "regime": "II-A" if connected else "I"}}

tune(lookup, density=0.1, temperature_space={TEMPERATURES}, knob="epochs",
     n_trials={TRIALS_PER_WORKER}, sampler="regime", seed=0, storage=storage, study_name="{STUDY}",
     logger=MlflowTrialLogger("{EXPERIMENT}", study_params={STUDY_PARAMS!r}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_parallel_tuners_share_one_study_without_duplicates(backend, tracking_uri, tmp_path):
    database = (postgres_database("three_regime_optuna") if backend == "postgresql"
                else nullcontext())
    with database as db:
        storage = pg_url(db) if db else str(tmp_path / "optuna.journal")
        # the init step: the study, the experiment and the study's run exist before any worker
        study = optuna.create_study(study_name=STUDY, storage=make_storage(storage),
                                    direction="maximize")
        configure(tracking_uri)
        study_run = MlflowTrialLogger(EXPERIMENT, study_params=STUDY_PARAMS).study_run_id(study)

        env = cli_env(tracking_uri, tmp_path / "mlruns")
        logs = [tmp_path / f"worker{i}.log" for i in range(WORKERS)]
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, storage, tracking_uri],
                                  env=env, cwd=REPO, stdout=open(log, "w"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT)
                 for log in logs]
        wait_for(lambda: all(p.poll() is not None for p in procs), 240, interval=0.5,
                 what="the tuners")
        assert [p.returncode for p in procs] == [0] * WORKERS, [log.read_text()[-3000:]
                                                                for log in logs]

        trials = optuna.load_study(study_name=STUDY, storage=make_storage(storage)).trials
        assert len(trials) == WORKERS * TRIALS_PER_WORKER
        assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
        tried = [t.params[keys.TEMPERATURE] for t in trials]
        assert len(set(tried)) == len(tried), ("duplicate temperatures while untried remain: "
                                               f"{tried}")

    client = MlflowClient(tracking_uri)
    runs = search_all_runs(client, [experiment_id(EXPERIMENT, client)],
                           f"tags.{keys.STUDY_NAME} = '{STUDY}'")
    study_runs = [r for r in runs if r.data.tags[keys.RUN_KIND] == keys.KIND_STUDY]
    trial_runs = [r for r in runs if r.data.tags[keys.RUN_KIND] == keys.KIND_TRIAL]
    assert [r.info.run_id for r in study_runs] == [study_run]
    numbers = sorted(int(r.data.tags[keys.TRIAL_NUMBER]) for r in trial_runs)
    assert numbers == list(range(len(trials)))
    assert {r.data.tags[keys.PARENT_RUN_ID] for r in trial_runs} == {study_run}
    by_number = {int(r.data.tags[keys.TRIAL_NUMBER]): r for r in trial_runs}
    for t in trials:       # the child run records the trial's own temperature and value
        run = by_number[t.number]
        assert float(run.data.params[keys.TEMPERATURE]) == t.params[keys.TEMPERATURE]
        assert run.data.metrics[keys.VAL_ACC] == pytest.approx(t.value)


@pytest.mark.slow
def test_a_bare_postgresql_url_opens_both_stores(tracking_uri, tmp_path):
    """``postgresql://`` (SQLAlchemy 2.1 maps it to psycopg 3, which the project installs) works
    for the MLflow tracking store and the Optuna storage, each in a database of its own."""
    with postgres_database("three_regime_bare_mlflow") as mlflow_db, \
            postgres_database("three_regime_bare_optuna") as optuna_db:
        bare = pg_url(mlflow_db).replace("postgresql+psycopg2://", "postgresql://")
        assert bare.startswith("postgresql://")
        configure(bare)
        client = MlflowClient()
        exp = client.create_experiment("bare-url")
        assert client.get_experiment(exp).name == "bare-url"
        storage = make_storage(pg_url(optuna_db).replace("postgresql+psycopg2://", "postgresql://"))
        study = optuna.create_study(storage=storage, study_name="bare")
        study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
        assert len(optuna.load_study(study_name="bare", storage=storage).trials) == 2
