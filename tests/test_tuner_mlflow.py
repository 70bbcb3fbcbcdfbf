"""MLflow logging of a study (MlflowTrialLogger) and the ``tune`` command with a fake cell
lookup in place of the pipeline."""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna
from mlflow import MlflowClient

from selection._tracking import MlflowTrialLogger
from selection.cli.tune import add_parser, run_tune
from selection.tuner import tune
from tracking import keys

optuna.logging.set_verbosity(optuna.logging.WARNING)

TEMPS = [2, 5, 10, 20, 40, 80]
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def fake_lookup(t: float, d: float) -> dict:
    connected = t <= 10
    return {"val_acc": 0.5 + t / 1000 if connected else 0.4, "test_acc": 0.99,
            "lmc_barrier": 0.0 if connected else -0.1, "cka": 0.9, "run_id": f"cell-{t}"}


def _runs(client: MlflowClient, experiment: str, kind: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.{keys.RUN_KIND} = '{kind}'")


def test_one_child_run_per_trial_under_the_study_run(tracking_uri, tmp_path):
    registered = []
    logger = MlflowTrialLogger("tune-test", study_params={keys.KNOB: "epochs"},
                               register_best=lambda s, t, run: registered.append((t.number, run)))
    storage = str(tmp_path / "optuna.journal")
    kwargs = dict(density=0.1, temperature_space=TEMPS, knob="epochs", storage=storage,
                  study_name="s1", eps=-0.02, tau=0.5, logger=logger)
    study = tune(fake_lookup, n_trials=3, **kwargs)
    client = MlflowClient(tracking_uri)
    (parent,) = _runs(client, "tune-test", keys.KIND_STUDY)
    children = _runs(client, "tune-test", keys.KIND_TRIAL)
    assert len(children) == 3
    assert {c.data.tags[keys.PARENT_RUN_ID] for c in children} == {parent.info.run_id}
    assert {c.data.tags[keys.TRIAL_NUMBER] for c in children} == {"0", "1", "2"}
    assert {c.data.tags[keys.STUDY_NAME] for c in children} == {"s1"}
    for child in children:
        number = int(child.data.tags[keys.TRIAL_NUMBER])
        trial = study.trials[number]
        assert child.data.metrics[keys.VAL_ACC] == trial.value
        assert child.data.tags[keys.REGIME] == trial.user_attrs["regime"]
        assert child.data.tags[keys.CELL_RUN_ID] == trial.user_attrs["run_id"]
        assert float(child.data.params[keys.TEMPERATURE]) == trial.user_attrs["temperature"]
        assert "test_acc" not in child.data.metrics
        assert child.info.status == "FINISHED"
    assert parent.data.metrics[keys.BEST_VALUE] == study.best_value
    assert parent.data.tags[keys.BEST_TRIAL_NUMBER] == str(study.best_trial.number)
    assert parent.data.params[keys.KNOB] == "epochs"
    assert parent.info.status == "FINISHED"
    assert registered == [(study.best_trial.number, parent.info.run_id)]

    # resuming the study (another process, a later day) adds children to the same study run
    logger2 = MlflowTrialLogger("tune-test", study_params={keys.KNOB: "epochs"})
    tune(fake_lookup, n_trials=2, **{**kwargs, "logger": logger2})
    assert len(_runs(client, "tune-test", keys.KIND_STUDY)) == 1
    assert len(_runs(client, "tune-test", keys.KIND_TRIAL)) == 5


def test_failed_trial_is_a_failed_child_run(tracking_uri):
    def lookup(t, d):
        return {**fake_lookup(t, d), "val_acc": float("nan")}

    logger = MlflowTrialLogger("tune-fail")
    tune(lookup, density=0.1, temperature_space=TEMPS, knob="epochs", n_trials=1,
         storage="memory", eps=-0.02, tau=0.5, logger=logger)
    (child,) = _runs(MlflowClient(tracking_uri), "tune-fail", keys.KIND_TRIAL)
    assert child.info.status == "FAILED"
    assert child.data.tags[keys.TRIAL_STATE] == "FAIL"


def test_tune_command_with_a_fake_lookup(tracking_uri, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([
        "tune", "--config", str(DEMO_CONFIG), "--density", "0.1", "--n-trials", "4",
        "--storage", str(tmp_path / "o.journal"), "--study", "cli", "--eps", "-0.02",
        "--tau", "0.5", "--experiment", "tune-cli", "--tracking-uri", tracking_uri])
    assert args.func is run_tune
    assert run_tune(args, lookup=fake_lookup) == 0
    out = capsys.readouterr().out
    assert "best: temperature 10" in out     # the coldest connected temperature of the grid
    children = _runs(MlflowClient(tracking_uri), "tune-cli", keys.KIND_TRIAL)
    assert len(children) == 4


def test_tune_command_reports_a_bad_config(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tune", "--config", str(tmp_path / "none.yaml"), "--density",
                              "0.1", "--n-trials", "1", "--no-mlflow"])
    assert run_tune(args, lookup=fake_lookup) == 1
    assert "not found" in capsys.readouterr().err



def test_workers_creating_the_study_run_at_the_same_moment_share_one(tracking_uri, monkeypatch):
    """Workers A and B both search before either has created the study run (the race): each
    creates one; both end up on the earliest, the other is deleted."""
    import selection._tracking as tracking_mod

    real_search = tracking_mod.search_all_runs
    calls = []

    def search(*args, **kwargs):
        calls.append(1)
        # call 1: A's first look, call 3: B's first look -- both before any run existed
        return [] if len(calls) in (1, 3) else real_search(*args, **kwargs)

    monkeypatch.setattr(tracking_mod, "search_all_runs", search)
    study = optuna.create_study(study_name="race", direction="maximize")
    a = MlflowTrialLogger("race-exp", study_params={keys.DENSITY: 0.1})
    b = MlflowTrialLogger("race-exp", study_params={keys.DENSITY: 0.1})
    id_a = a.study_run_id(study)
    id_b = b.study_run_id(study)
    assert len(calls) == 4
    assert id_a == id_b
    live = _runs(MlflowClient(tracking_uri), "race-exp", keys.KIND_STUDY)
    assert [r.info.run_id for r in live] == [id_a]
    assert live[0].data.params[keys.DENSITY] == "0.1"
