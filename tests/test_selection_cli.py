"""``python -m selection classify|select`` from a CSV and from an MLflow experiment."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from selection.__main__ import _COMMAND_MODULES, build_parser, main
from selection.mapping import replay, replay_summary
from selection.synthetic import TRUE_REGIME, synthetic_table
from tracking import keys
from tracking.store import REPO_ROOT
from tracking.tables import RUN_ID

PARAMS = (keys.KNOB, keys.TEMPERATURE, keys.DENSITY, keys.DENSE_SEED)
METRICS = (keys.TEST_ACC, keys.TEST_ACC_STD, keys.VAL_ACC, keys.LMC_BARRIER,
           keys.LMC_BARRIER_STD, keys.CKA, keys.CKA_STD, keys.PRUNED_ACC, keys.DENSE_ACC)


def small_table() -> pd.DataFrame:
    # 3 x 3 cells holding all three regimes (see selection.synthetic.true_regime)
    return synthetic_table(temperatures=(5, 20, 80), densities=(0.05, 0.2, 0.8), seed=0)


def store_grid(experiment: str, df: pd.DataFrame) -> tuple[str, dict[tuple, str]]:
    """Log ``df`` as FINISHED cell runs nested under a FINISHED grid parent run."""
    client = MlflowClient()
    experiment_id = client.create_experiment(experiment)
    grid = client.create_run(experiment_id, tags={keys.RUN_KIND: keys.KIND_GRID}).info.run_id
    runs = {}
    now = int(time.time() * 1000)
    for i, row in df.iterrows():
        run_id = client.create_run(experiment_id, tags={
            keys.RUN_KIND: keys.KIND_CELL, keys.SPEC_HASH: f"hash{i}",
            keys.PARENT_RUN_ID: grid}).info.run_id
        client.log_batch(run_id, metrics=[Metric(m, float(row[m]), now, 0) for m in METRICS],
                         params=[Param(p, str(row[p])) for p in PARAMS])
        client.set_terminated(run_id)
        runs[(row[keys.TEMPERATURE], row[keys.DENSITY])] = run_id
    client.set_terminated(grid)
    return grid, runs


def test_commands_are_registered_by_modules():
    assert all(hasattr(m, "add_parser") for m in _COMMAND_MODULES)
    parser = build_parser()
    assert parser.parse_args(["classify", "--table", "x.csv"]).func.__name__ == "run_classify"
    args = parser.parse_args(["select", "--table", "x.csv", "--density", "0.1",
                              "--density", "0.2"])
    assert args.density == ["0.1", "0.2"]
    with pytest.raises(SystemExit):
        parser.parse_args(["classify", "--table", "x.csv", "--experiment", "e"])
    with pytest.raises(SystemExit):
        parser.parse_args(["select", "--table", "x.csv"])  # --density is required


def test_python_m_selection_help():
    out = subprocess.run([sys.executable, "-m", "selection", "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "classify" in out and "select" in out


def test_classify_table_without_mlflow(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    df = synthetic_table(seed=1)
    table = tmp_path / "table.csv"
    # only the columns classify needs: the others are optional
    df[["knob", "temperature", "density", "lmc_barrier", "cka", TRUE_REGIME]].to_csv(
        table, index=False)
    out, regime_map = tmp_path / "labels.csv", tmp_path / "map.png"
    assert main(["classify", "--table", str(table), "--no-mlflow", "--out", str(out),
                 "--map", str(regime_map)]) == 0
    printed = capsys.readouterr().out
    assert "Regime I: jump along temperature" in printed and "cells per regime: I: " in printed
    assert "sensitivity: jump_ratio in [" in printed and "uncertain labels" in printed
    assert main(["classify", "--table", str(table), "--no-mlflow", "--eps", "-0.02"]) == 0
    assert "eps = -0.02 (given)" in capsys.readouterr().out
    assert "landscape classifier: CV accuracy" in printed
    labels = pd.read_csv(out)
    assert len(labels) == len(df)
    assert (labels[keys.REGIME] == labels[TRUE_REGIME]).all()
    assert regime_map.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda df: df.drop(columns=[keys.CKA]), "lacks required columns ['cka']"),
    (lambda df: df.assign(lmc_barrier=df[keys.LMC_BARRIER] * 100), "percent"),
    (lambda df: df.iloc[0:0], "empty"),
])
def test_classify_bad_tables_fail_clearly(tmp_path, capsys, edit, message):
    table = tmp_path / "table.csv"
    edit(synthetic_table()).to_csv(table, index=False)
    assert main(["classify", "--table", str(table), "--no-mlflow"]) == 1
    assert message in capsys.readouterr().err


def test_a_table_typed_from_a_paper_names_its_knob(tmp_path, capsys, monkeypatch):
    # a table of a figure's numbers: no knob column, no stds, no per-pair values
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    df = synthetic_table(seed=1)
    table = tmp_path / "figure.csv"
    df[["temperature", "density", "lmc_barrier", "cka", "test_acc", "val_acc", "dense_acc"]].to_csv(
        table, index=False)
    assert main(["classify", "--table", str(table), "--no-mlflow"]) == 1
    err = capsys.readouterr().err
    assert "without a 'knob' column" in err and "--knob epochs" in err
    assert main(["classify", "--table", str(table), "--no-mlflow", "--knob", "warmth"]) == 1
    err = capsys.readouterr().err
    assert "--knob='warmth': unknown knob" in err and "epochs" in err
    out = tmp_path / "labels.csv"
    assert main(["classify", "--table", str(table), "--no-mlflow", "--knob", "epochs",
                 "--out", str(out)]) == 0
    assert "no stds for some cells" in capsys.readouterr().out
    labels = pd.read_csv(out)
    assert (labels[keys.KNOB] == "epochs").all()
    assert (labels[keys.REGIME] == df[TRUE_REGIME]).all()
    assert main(["select", "--table", str(table), "--no-mlflow", "--knob", "epochs",
                 "--density", "0.05"]) == 0
    assert main(["replay", "--table", str(table), "--knob", "epochs", "--density", "0.05",
                 "--repeats", "2", "--sampler", "regime", "--json"]) == 0
    assert '"regime"' in capsys.readouterr().out.splitlines()[-1]
    assert main(["map", "--table", str(table), "--replay", "--knob", "epochs", "--seeds", "1",
                 "--max-cells", "8", "--json"]) == 0
    assert '"total_cells"' in capsys.readouterr().out.splitlines()[-1]


def test_a_table_of_barriers_and_cka_alone_is_replayed_on_its_labels(tmp_path, capsys):
    # a figure of LMC barriers and CKA without accuracies: the map is judged on its labels;
    # the best-temperature figures and the goal are unknown (None), never a NaN in the JSON
    df = synthetic_table(seed=1)[["temperature", "density", "lmc_barrier", "cka"]]
    table = tmp_path / "phase_only.csv"
    df.to_csv(table, index=False)
    args = ["map", "--table", str(table), "--replay", "--knob", "epochs", "--seeds", "2",
            "--max-cells", "12"]
    assert main([*args, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["best_scored"] is False and summary["total_cells"] == len(df)
    assert summary["cells_replayed"] == 12 and 0 < summary["agreement_at_40pct"] <= 1
    for figures in (summary, *summary["baselines"].values()):
        assert figures["cells_for_goal"] is None and figures["best_found_at_budget"] is None
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "the labels alone are judged" in out and "best temperature found there" not in out
    # a table with its accuracy as test error is not taken for one without accuracies
    df.assign(test_error=0.1).to_csv(table, index=False)
    assert main([*args, "--json"]) == 1
    assert "test_acc = 1 - test_error" in capsys.readouterr().err
    # an accuracy column with no value in it is the same as none
    df.assign(test_acc=float("nan")).to_csv(table, index=False)
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["best_scored"] is False
    # with accuracies the same table scores its bests
    curves = replay(synthetic_table(seed=1), seeds=[0], max_cells=12, strategies=("random",))
    assert replay_summary(curves)["best_scored"] is True
    assert not np.isnan(curves.best_found["random"]).all()


def test_missing_file_and_bad_density(tmp_path, capsys):
    assert main(["classify", "--table", str(tmp_path / "nope.csv"), "--no-mlflow"]) == 1
    assert "does not exist" in capsys.readouterr().err
    table = tmp_path / "table.csv"
    synthetic_table().to_csv(table, index=False)
    assert main(["select", "--table", str(table), "--density", "5", "--no-mlflow"]) == 1
    assert "fraction in (0, 1]" in capsys.readouterr().err
    assert main(["select", "--table", str(table), "--density", "0.3", "--no-mlflow"]) == 1
    assert "not in the table" in capsys.readouterr().err


def test_classify_and_select_on_an_experiment(tracking_uri, tmp_path, capsys):
    df = small_table()
    grid, runs = store_grid("demo", df)
    client = MlflowClient()

    out = tmp_path / "labels.csv"
    assert main(["classify", "--experiment", "demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"under grid run {grid}" in printed and "9 cell runs tagged" in printed
    labels = pd.read_csv(out)
    truth = {(t, d): r for t, d, r in df[[keys.TEMPERATURE, keys.DENSITY, TRUE_REGIME]]
             .itertuples(index=False)}
    assert {(t, d): r for t, d, r in labels[[keys.TEMPERATURE, keys.DENSITY, keys.REGIME]]
            .itertuples(index=False)} == truth
    assert set(labels[RUN_ID]) == set(runs.values())
    # the regime is a tag of each cell run
    for cell, run_id in runs.items():
        run = client.get_run(run_id)
        assert run.data.tags[keys.REGIME] == truth[cell]
        # and its label probability (clear cells here) and the rule that produced it
        assert run.data.metrics[keys.P_REGIME_I] == (1.0 if truth[cell] == "I" else 0.0)
        assert run.data.tags[keys.REGIME_LABEL_METHOD] in ("jump", "level")
    # both classifiers registered with the alias, the regime map on the grid run
    for name in ("demo-regime-classifier", "demo-regime-classifier-phase"):
        version = client.get_model_version_by_alias(name, "champion")
        classifier_run = client.get_run(version.run_id)
        assert classifier_run.data.tags[keys.RUN_KIND] == keys.KIND_CLASSIFIER
        assert classifier_run.data.tags[keys.PARENT_RUN_ID] == grid
    assert classifier_run.data.metrics[keys.regime_count_metric("I")] == 3
    plots = {a.path for a in client.list_artifacts(grid, keys.ARTIFACT_PLOTS_DIR)}
    assert f"{keys.ARTIFACT_PLOTS_DIR}/{keys.PLOT_REGIME_MAP}" in plots
    run_artifacts = {a.path for a in client.list_artifacts(classifier_run.info.run_id)}
    assert {keys.ARTIFACT_REGIME_LABELS, keys.ARTIFACT_REGIME_THRESHOLDS,
            keys.ARTIFACT_REGIME_SENSITIVITY, keys.PLOT_REGIME_MAP} <= run_artifacts

    choices = tmp_path / "choices.csv"
    assert main(["select", "--experiment", "demo", "--density", "0.05", "--density", "0.8",
                 "--out", str(choices)]) == 0
    printed = capsys.readouterr().out
    assert "alg2_val" in printed and "mean regret" in printed
    assert f"under grid run {grid}" in printed
    table = pd.read_csv(choices)
    assert set(table["density"]) == {0.05, 0.8} and len(table) == 10
    selection_runs = client.search_runs(
        [client.get_experiment_by_name("demo").experiment_id],
        f"tags.{keys.RUN_KIND} = '{keys.KIND_SELECTION}'")
    assert len(selection_runs) == 1
    assert selection_runs[0].data.tags[keys.PARENT_RUN_ID] == grid


def test_classify_unknown_experiment(tracking_uri, capsys):
    assert main(["classify", "--experiment", "nope"]) == 1
    assert "unknown experiment 'nope'" in capsys.readouterr().err
