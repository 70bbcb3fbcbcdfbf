"""Results tables from a fake experiment logged straight through MlflowClient; CLI table/report."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from tracking import keys
from tracking.__main__ import main
from tracking.store import REPO_ROOT, init_experiment
from tracking.tables import (
    BEST_COLUMNS,
    RESULT_COLUMNS,
    best_temperature_per_density,
    format_best_temperatures,
    read_table,
    results_table,
    validate_table,
    write_table,
)

EXPERIMENT = "fake-grid"
TEMPERATURES = [40, 5, 10]          # logged out of order on purpose
DENSITIES = [0.8, 0.1]


def _metrics(temperature: float, density: float, seed: int) -> dict[str, float]:
    """Distinct, recognisable values for every cell so that a mix-up shows."""
    test_acc = 0.5 + density / 4 + temperature / 1000 + seed / 100
    return {
        keys.TEST_ACC: test_acc, keys.TEST_ACC_STD: 0.01, keys.VAL_ACC: test_acc - 0.01,
        keys.VAL_ACC_STD: 0.02, keys.LMC_BARRIER: -temperature / 1000 * (1 - density),
        keys.LMC_BARRIER_STD: 0.003, keys.CKA: 0.5 + density / 2, keys.CKA_STD: 0.01,
        keys.PRUNED_ACC: 0.1 + density / 10, keys.DENSE_ACC: 0.9 - temperature / 1000,
    }


def log_run(client: MlflowClient, exp_id: str, kind: str, *, parent: str | None = None,
            params: dict | None = None, metrics: dict | None = None, tags: dict | None = None,
            status: str = "FINISHED", end_time: int | None = None) -> str:
    """One run as the pipeline would log it: tags, a batch of params and metrics, a status."""
    all_tags = {keys.RUN_KIND: kind, **(tags or {})}
    if parent:
        all_tags[keys.PARENT_RUN_ID] = parent
    run_id = client.create_run(exp_id, tags=all_tags).info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in (metrics or {}).items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
        tags=[RunTag(k, v) for k, v in all_tags.items()])
    if status != "RUNNING":
        client.set_terminated(run_id, status, end_time=end_time)
    return run_id


def log_cell(client, exp_id, parent, temperature, density, seed=0, *, metrics=None,
             spec_hash=None, regime=None, **kw) -> str:
    tags = {keys.SPEC_HASH: spec_hash or f"h-{temperature}-{density}-{seed}"}
    if regime:
        tags[keys.REGIME] = regime
    params = {keys.KNOB: "epochs", keys.TEMPERATURE: temperature, keys.DENSITY: density,
              keys.DENSE_SEED: seed, keys.PRUNE_METHOD: "global"}
    return log_run(client, exp_id, keys.KIND_CELL, parent=parent, params=params, tags=tags,
                   metrics=_metrics(temperature, density, seed) if metrics is None else metrics,
                   **kw)


@pytest.fixture
def grid(tracking_uri):
    """A finished grid parent with 3 x 2 finished cells (one labelled) and one dense run."""
    client = MlflowClient()
    exp_id = init_experiment(EXPERIMENT)
    parent = log_run(client, exp_id, keys.KIND_GRID)
    log_run(client, exp_id, keys.KIND_DENSE, parent=parent, params={keys.KNOB: "epochs"},
            metrics={keys.TEST_ACC: 0.99})
    for t in TEMPERATURES:
        for d in DENSITIES:
            log_cell(client, exp_id, parent, t, d, regime="II-B" if (t, d) == (40, 0.8) else None)
    return client, exp_id, parent


def test_table_has_exact_columns_sorted_rows_and_logged_values(grid):
    df = results_table(EXPERIMENT)

    assert list(df.columns) == RESULT_COLUMNS
    assert len(df) == len(TEMPERATURES) * len(DENSITIES)
    assert list(zip(df[keys.TEMPERATURE], df[keys.DENSITY], strict=True)) == [
        (t, d) for t in sorted(TEMPERATURES) for d in sorted(DENSITIES)]
    assert pd.api.types.is_integer_dtype(df[keys.TEMPERATURE])
    assert pd.api.types.is_integer_dtype(df[keys.DENSE_SEED])
    assert (df[keys.KNOB] == "epochs").all()
    for row in df.itertuples():
        expected = _metrics(row.temperature, row.density, row.dense_seed)
        for column in RESULT_COLUMNS[4:13]:
            assert getattr(row, column) == pytest.approx(expected[column]), column
        assert row.spec_hash == f"h-{row.temperature}-{row.density}-{row.dense_seed}"
    labelled = df[df[keys.REGIME].notna()]
    assert list(zip(labelled[keys.TEMPERATURE], labelled[keys.DENSITY],
                    labelled[keys.REGIME], strict=True)) == [(40, 0.8, "II-B")]
    client = grid[0]
    for run_id in df["run_id"]:
        assert client.get_run(run_id).data.tags[keys.RUN_KIND] == keys.KIND_CELL


def test_duplicate_spec_hash_keeps_the_run_that_ended_last(grid):
    client, exp_id, parent = grid
    late = {**_metrics(5, 0.1, 0), keys.TEST_ACC: 0.123}
    early = {**_metrics(5, 0.1, 0), keys.TEST_ACC: 0.456}
    # logged in the opposite order of their end times, so creation order cannot decide
    late_id = log_cell(client, exp_id, parent, 5, 0.1, spec_hash="dup", metrics=late,
                       end_time=4_000_000_000_000)
    log_cell(client, exp_id, parent, 5, 0.1, spec_hash="dup", metrics=early,
             end_time=3_000_000_000_000)

    df = results_table(EXPERIMENT)

    dup = df[df[keys.SPEC_HASH] == "dup"]
    assert dup["run_id"].tolist() == [late_id]
    assert dup[keys.TEST_ACC].tolist() == [0.123]
    assert len(df) == len(TEMPERATURES) * len(DENSITIES) + 1


def test_unfinished_and_deleted_runs_and_missing_metrics(grid):
    client, exp_id, parent = grid
    log_cell(client, exp_id, parent, 80, 0.1, status="FAILED")
    log_cell(client, exp_id, parent, 80, 0.8, status="RUNNING")
    client.delete_run(log_cell(client, exp_id, parent, 80, 0.4))
    sparse_id = log_cell(client, exp_id, parent, 20, 0.5,
                         metrics={keys.TEST_ACC: 0.7, keys.VAL_ACC: 0.69})

    df = results_table(EXPERIMENT)

    assert 80 not in df[keys.TEMPERATURE].tolist()
    sparse = df[df["run_id"] == sparse_id].iloc[0]
    assert sparse[keys.TEST_ACC] == 0.7
    for column in (keys.LMC_BARRIER, keys.CKA, keys.CKA_STD, keys.PRUNED_ACC):
        assert math.isnan(sparse[column]), column


def test_empty_and_unknown_experiments(tracking_uri):
    init_experiment("empty")
    df = results_table("empty")
    assert df.empty and list(df.columns) == RESULT_COLUMNS
    with pytest.raises(ValueError, match=r"unknown experiment 'nope'.*empty"):
        results_table("nope")


def test_csv_round_trip(grid, tmp_path):
    df = results_table(EXPERIMENT)
    df["predicted"] = "x"   # extra columns survive, after the contract's
    path = write_table(df[list(reversed(df.columns))], tmp_path / "out" / "results.csv")

    back = read_table(path)

    assert list(back.columns) == [*RESULT_COLUMNS, "predicted"]
    pd.testing.assert_frame_equal(back, df, check_dtype=False)


def _valid_table() -> pd.DataFrame:
    rows = [{keys.KNOB: "epochs", keys.TEMPERATURE: t, keys.DENSITY: d, keys.DENSE_SEED: 0,
             **_metrics(t, d, 0), keys.REGIME: None, "run_id": f"r{t}{d}",
             keys.SPEC_HASH: f"h{t}{d}"} for t in (5, 10) for d in (0.1, 0.5)]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda df: df.drop(columns=[keys.CKA, keys.DENSITY]),
     r"lacks required columns \['density', 'cka'\]"),
    (lambda df: df.iloc[:0], "empty"),
    (lambda df: df.assign(test_acc=df[keys.TEST_ACC] * 100),
     r"'test_acc' must lie in \[0, 1\].*percent"),
    (lambda df: df.assign(density=0.0), r"'density' must lie in \(0, 1\]"),
    (lambda df: df.assign(lmc_barrier=-3.0), "'lmc_barrier' must lie in"),
    (lambda df: df.assign(temperature="hot"), r"'temperature' must be numeric.*hot"),
    (lambda df: pd.concat([df, df.iloc[[1]]], ignore_index=True), r"duplicate cells.*\[1, 4\]"),
])
def test_validate_table_names_the_problem(mutate, message):
    validate_table(_valid_table())
    with pytest.raises(ValueError, match=message):
        validate_table(mutate(_valid_table()))


def test_validate_table_checks_only_what_is_required():
    df = _valid_table().drop(columns=[keys.CKA, keys.PRUNED_ACC]).assign(lmc_barrier=-3.0)
    needed = [keys.TEMPERATURE, keys.DENSITY, keys.TEST_ACC]
    validate_table(df, needed)     # a bad barrier and missing CKA do not matter here ...
    with pytest.raises(ValueError, match="'lmc_barrier' must lie in"):
        validate_table(df, [*needed, keys.LMC_BARRIER])   # ... only once they are required
    with pytest.raises(ValueError, match=r"lacks required columns \['cka'\]"):
        validate_table(df, [*needed, keys.CKA])


def test_read_table_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_table(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.csv"):
        read_table(empty)
    partial = tmp_path / "partial.csv"
    _valid_table()[[keys.TEMPERATURE, keys.DENSITY, keys.TEST_ACC]].to_csv(partial, index=False)
    with pytest.raises(ValueError, match="partial.csv.*lacks required columns"):
        read_table(partial)
    assert len(read_table(partial, [keys.TEMPERATURE, keys.DENSITY, keys.TEST_ACC])) == 4


def test_cli_table(grid, tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main(["table", "--experiment", EXPERIMENT, "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_table(out), results_table(EXPERIMENT), check_dtype=False)


def test_cli_store_options_before_or_after_the_subcommand(grid, tracking_uri, tmp_path,
                                                          capsys, monkeypatch):
    """``--tracking-uri`` reaches the store wherever it stands; a wrong one after the
    subcommand overrides a right one before it."""
    uri = tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///" + str(tmp_path / "elsewhere.db"))
    for argv in (["--tracking-uri", uri, "table"], ["table", "--tracking-uri", uri]):
        out = tmp_path / f"{len(capsys.readouterr().out)}.csv"
        assert main([*argv, "--experiment", EXPERIMENT, "--out", str(out)]) == 0, argv
        assert len(read_table(out)) == 6
    assert main(["--tracking-uri", uri, "table", "--tracking-uri", "sqlite:///"
                 + str(tmp_path / "empty.db"), "--experiment", EXPERIMENT,
                 "--out", str(tmp_path / "x.csv")]) == 1
    assert "unknown experiment" in capsys.readouterr().err


def test_cli_report_logs_to_the_latest_finished_grid_run(grid, tmp_path, capsys):
    client, exp_id, parent = grid
    log_run(client, exp_id, keys.KIND_GRID, status="FAILED")   # newer, but not FINISHED
    out = tmp_path / "report"

    assert main(["report", "--experiment", EXPERIMENT, "--out", str(out)]) == 0

    printed = capsys.readouterr().out
    assert parent in printed and str(out / keys.PLOT_LMC_BARRIER) in printed
    plots = [keys.PLOT_TEST_ERROR, keys.PLOT_TEST_ERROR_NORMALIZED, keys.PLOT_LMC_BARRIER,
             keys.PLOT_CKA, keys.PLOT_PHASE_DIAGRAMS]
    for name in plots:
        assert (out / name).stat().st_size > 0
    assert len(read_table(out / keys.ARTIFACT_RESULTS_CSV)) == 6
    logged = {a.path for a in client.list_artifacts(parent, keys.ARTIFACT_PLOTS_DIR)}
    assert logged == {f"{keys.ARTIFACT_PLOTS_DIR}/{name}" for name in plots}
    assert keys.ARTIFACT_RESULTS_CSV in {a.path for a in client.list_artifacts(parent)}


def test_cli_report_without_grid_run_only_writes_files(tracking_uri, tmp_path, capsys):
    client = MlflowClient()
    exp_id = init_experiment(EXPERIMENT)
    log_cell(client, exp_id, None, 5, 0.1)
    assert main(["report", "--experiment", EXPERIMENT, "--out", str(tmp_path)]) == 0
    assert "no FINISHED grid run" in capsys.readouterr().out
    assert (tmp_path / keys.PLOT_PHASE_DIAGRAMS).stat().st_size > 0


def test_cli_errors_are_clear(tracking_uri, tmp_path, capsys):
    init_experiment("other")
    assert main(["table", "--experiment", "nope", "--out", str(tmp_path / "t.csv")]) == 1
    assert "unknown experiment 'nope'" in capsys.readouterr().err
    assert main(["report", "--experiment", "other", "--out", str(tmp_path)]) == 1
    assert "no FINISHED cell runs" in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_cli_init_as_a_module(tracking_uri):
    result = subprocess.run(
        [sys.executable, "-m", "tracking", "init", "--experiment", "from-cli",
         "--description", "made by the CLI"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "from-cli" in result.stdout
    experiment = MlflowClient().get_experiment_by_name("from-cli")
    assert experiment.tags[keys.NOTE] == "made by the CLI"


def _cells(rows: list[tuple]) -> pd.DataFrame:
    """A hand-built results table: (temperature, density, dense seed, test_acc, regime)."""
    return pd.DataFrame(rows, columns=[keys.TEMPERATURE, keys.DENSITY, keys.DENSE_SEED,
                                       keys.TEST_ACC, keys.REGIME]).assign(**{keys.KNOB: "epochs"})


def test_best_temperature_per_density_averages_dense_seeds_and_keeps_the_regime():
    df = _cells([
        # density 0.1: T=5 wins on the mean over seeds (0.70) though T=40 has the best seed
        (5, 0.1, 0, 0.70, "II-A"), (5, 0.1, 1, 0.70, "II-A"),
        (40, 0.1, 0, 0.90, "I"), (40, 0.1, 1, 0.40, "I"),
        # density 0.8: cold is best; the two dense seeds disagree on the regime
        (5, 0.8, 0, 0.80, "II-A"), (5, 0.8, 1, 0.80, "II-A"),
        (40, 0.8, 0, 0.85, "II-B"), (40, 0.8, 1, 0.87, "II-A"),
        # density 0.5: a tie goes to the lower temperature; a NaN cell is left out
        (5, 0.5, 0, 0.60, None), (10, 0.5, 0, 0.60, None), (40, 0.5, 0, math.nan, "II-B"),
    ])
    before = df.copy()
    best = best_temperature_per_density(df)
    pd.testing.assert_frame_equal(df, before)                     # pure: the input is unchanged
    assert list(best.columns) == [*BEST_COLUMNS, keys.REGIME]
    assert best[keys.DENSITY].tolist() == [0.1, 0.5, 0.8]
    assert best[keys.TEMPERATURE].tolist() == [5, 5, 40]
    assert best[keys.TEST_ACC].tolist() == pytest.approx([0.70, 0.60, 0.86])
    assert best["cells"].tolist() == [2, 1, 2]
    assert best[keys.REGIME].tolist() == ["II-A", "", "II-A/II-B"]

    lines = format_best_temperatures(best)
    assert lines[0].startswith("best temperature per density")
    assert lines[1].split() == ["density", "epochs", "test_acc", "regime"]
    assert lines[2].split() == ["0.1", "5", "0.7000", "II-A"]
    assert lines[3].split() == ["0.5", "5", "0.6000", "-"]


def test_best_temperature_per_density_without_regimes_or_rows():
    df = _cells([(5, 0.1, 0, 0.5, None), (10, 0.1, 0, 0.6, None)]).drop(columns=keys.REGIME)
    best = best_temperature_per_density(df)
    assert list(best.columns) == BEST_COLUMNS               # no labels: no regime column
    assert best[keys.TEMPERATURE].tolist() == [10]
    assert format_best_temperatures(best)[1].split() == ["density", "epochs", "test_acc"]
    unlabelled = _cells([(5, 0.1, 0, 0.5, "")])
    assert keys.REGIME not in best_temperature_per_density(unlabelled).columns
    with pytest.raises(ValueError, match="empty"):
        best_temperature_per_density(df.iloc[:0])
    with pytest.raises(ValueError, match="test_acc"):
        best_temperature_per_density(df.drop(columns=keys.TEST_ACC))


def test_the_tracking_layers_regime_labels_are_the_labellers():
    # tracking cannot import selection, so read_table keeps its own copy of the labels it tidies
    from selection.regimes import REGIMES
    from tracking.tables import _REGIME_LABELS

    assert tuple(_REGIME_LABELS) == tuple(REGIMES)
