"""Tables the project has never seen (typed from a paper's figure, exported by other tools)
through the table-consuming commands: each works, or stops with one clear line naming the
fix, never a traceback. Every command runs in-process and off any tracking server."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from selection.__main__ import main
from selection.replay import prepare_table
from selection.synthetic import TRUE_REGIME, synthetic_table
from tracking import keys
from tracking.tables import read_table

PAPER = ["temperature", "density", "lmc_barrier", "cka", "test_acc"]   # a figure's numbers


@pytest.fixture(autouse=True)
def _no_store(tmp_path, monkeypatch):
    # a command that reached for a store would create this file: the tests check it never does
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    yield
    assert not (tmp_path / "never.db").exists()


def _write(tmp_path, df: pd.DataFrame, name: str = "table.csv") -> str:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


def _commands(path: str, knob: str | None = None, density: float = 0.05) -> dict[str, list]:
    k = ["--knob", knob] if knob else []
    return {
        "classify": ["classify", "--table", path, "--no-mlflow", *k],
        "select": ["select", "--table", path, "--no-mlflow", "--density", str(density), *k],
        "replay": ["replay", "--table", path, "--density", str(density), "--repeats", "1",
                   "--sampler", "regime", "--json", *k],
        "map": ["map", "--table", path, "--replay", "--seeds", "1", "--max-cells", "6",
                "--json", *k],
    }


def _run(capsys, argv) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _fails_with(capsys, argv, *fragments: str) -> str:
    rc, _, err = _run(capsys, argv)
    assert rc == 1, err
    assert "Traceback" not in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize("rename", [
    {"cka": "CKA", "lmc_barrier": "LMC_Barrier"},
    {"cka": " cka", "density": "density  "},
    {"test_acc": "Test Acc", "lmc_barrier": "LMC-barrier", "val_acc": "val  acc"},
])
def test_headers_typed_in_another_case_or_with_spaces_are_read(tmp_path, capsys, rename):
    df = synthetic_table(seed=1)
    path = _write(tmp_path, df.rename(columns=rename))
    for name, argv in _commands(path).items():
        rc, out, err = _run(capsys, argv)
        assert rc == 0, (name, err)
    labels = tmp_path / "labels.csv"
    assert main(["classify", "--table", path, "--no-mlflow", "--out", str(labels)]) == 0
    assert (pd.read_csv(labels)[keys.REGIME] == df[TRUE_REGIME]).all()


def test_two_headers_naming_one_column_fail(tmp_path, capsys):
    df = synthetic_table(seed=1).assign(CKA=0.5)
    _fails_with(capsys, _commands(_write(tmp_path, df))["classify"], "'CKA'", "keep one")


def test_knob_and_regime_values_are_tidied(tmp_path):
    df = synthetic_table(seed=1)
    df = df.assign(knob=" Epochs ", regime=df[TRUE_REGIME].str.lower() + " ")
    back = read_table(_write(tmp_path, df))
    assert (back[keys.KNOB] == "epochs").all()
    assert (back[keys.REGIME] == df[TRUE_REGIME]).all()


def test_a_paper_table_of_test_accuracy_only(tmp_path, capsys):
    # no knob, no stds, no pair_metrics, no val_acc, no dense_acc
    df = synthetic_table(seed=1)
    path = _write(tmp_path, df[PAPER])
    cmds = _commands(path, knob="epochs")
    rc, out, _ = _run(capsys, cmds["classify"])
    assert rc == 0 and "cells per regime" in out
    rc, out, _ = _run(capsys, cmds["map"])
    assert rc == 0 and '"total_cells"' in out.splitlines()[-1]
    # select and replay need a validation accuracy: they say so and why
    _fails_with(capsys, cmds["select"], "'val_acc'", "never by test", "classify")
    _fails_with(capsys, cmds["replay"], "'val_acc'", "objective")
    # without --knob every command asks for it
    for argv in _commands(path).values():
        _fails_with(capsys, argv, "--knob")


@pytest.mark.parametrize("knob, temperatures", [
    ("batch_size", (32, 64, 128, 256, 512)),        # log spaced, smaller = hotter
    ("lr", (0.01, 0.03, 0.1, 0.3, 1.0)),            # log spaced, larger = hotter
    ("lr", (0.02, 0.04, 0.06, 0.08, 0.1)),          # linear
    ("sam_rho", (0.0, 0.05, 0.1, 0.2, 0.4)),        # a zero temperature
])
def test_knobs_other_than_epochs(tmp_path, capsys, knob, temperatures):
    df = synthetic_table(temperatures=temperatures, knob=knob, seed=2)
    for name, argv in _commands(_write(tmp_path, df)).items():
        rc, out, err = _run(capsys, argv)
        assert rc == 0, (name, err)
    # typed without the knob column, --knob names it
    path = _write(tmp_path, df.drop(columns=[keys.KNOB]), "typed.csv")
    labels = tmp_path / "labels.csv"
    assert main(["classify", "--table", path, "--no-mlflow", "--knob", knob,
                 "--out", str(labels)]) == 0
    assert (pd.read_csv(labels)[keys.REGIME] == df[TRUE_REGIME]).all()


def test_knob_that_the_table_does_not_hold_is_an_error(tmp_path, capsys):
    # before: classify and select ignored --knob epochs on an lr table; map said "0 x 0"
    df = synthetic_table(temperatures=(0.01, 0.1, 1.0), knob="lr", seed=2)
    for argv in _commands(_write(tmp_path, df), knob="epochs").values():
        _fails_with(capsys, argv, "--knob epochs", "['lr']")


def test_knob_picks_the_rows_of_a_table_with_several(tmp_path, capsys):
    two = pd.concat([synthetic_table(seed=1),
                     synthetic_table(temperatures=(0.01, 0.1, 1.0), knob="lr", seed=2)],
                    ignore_index=True)
    path = _write(tmp_path, two)
    for name in ("classify", "select"):
        _fails_with(capsys, _commands(path)[name], "['epochs', 'lr']", "--knob")
    for name, argv in _commands(path, knob="lr").items():
        rc, out, err = _run(capsys, argv)
        assert rc == 0, (name, err)
    rc, out, _ = _run(capsys, _commands(path, knob="epochs")["select"])
    assert rc == 0 and "alg2_val" in out


@pytest.mark.parametrize("column", ["density", "test_acc", "cka"])
def test_percent_tables_fail_clearly(tmp_path, capsys, column):
    df = synthetic_table(seed=1)
    df[column] = df[column] * 100
    path = _write(tmp_path, df)
    for argv in _commands(path, density=0.05).values():
        _fails_with(capsys, argv, repr(column), "percent")


def test_percent_signs_and_units_in_cells_fail_clearly(tmp_path, capsys):
    df = synthetic_table(seed=1)[PAPER]
    df["density"] = (df["density"] * 100).map(lambda v: f"{v:g}%")
    _fails_with(capsys, _commands(_write(tmp_path, df), knob="epochs")["classify"],
                "'density' must be numeric", "'5%'")
    # before: a non-numeric test_acc (optional to replay) crashed its averaging with a traceback
    df = synthetic_table(seed=1).astype({"test_acc": object})
    df.loc[2, "test_acc"] = "0.5%"
    _fails_with(capsys, _commands(_write(tmp_path, df, "t.csv"))["replay"],
                "'test_acc' must be numeric")


@pytest.mark.parametrize("temperatures, densities, dense_seeds", [
    ((5, 80), (0.05, 0.8), 1),                       # 2 x 2
    (tuple(range(10, 161, 10)),
     (0.02, 0.03, 0.05, 0.07, 0.1, 0.14, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9), 1),   # 16 x 12
    ((2, 5, 10, 20, 40, 80), (0.05, 0.1, 0.2, 0.4, 0.8), 3),   # 3 dense seeds per cell
])
def test_grid_sizes(tmp_path, capsys, temperatures, densities, dense_seeds):
    df = synthetic_table(temperatures=temperatures, densities=densities,
                         dense_seeds=dense_seeds, seed=3)
    for name, argv in _commands(_write(tmp_path, df)).items():
        rc, out, err = _run(capsys, argv)
        assert rc == 0, (name, err)


@pytest.mark.parametrize("temperatures, densities", [((20,), (0.05,)), ((20,), (0.05, 0.8)),
                                                     ((5, 20, 80), (0.05,))])
def test_degenerate_grids(tmp_path, capsys, temperatures, densities):
    df = synthetic_table(temperatures=temperatures, densities=densities, seed=3)
    cmds = _commands(_write(tmp_path, df))
    for name in ("classify", "select", "replay"):
        rc, out, err = _run(capsys, cmds[name])
        assert rc == 0, (name, err)
        if name == "classify":
            # before: 1 temperature x 2 densities (one cell per regime) stopped classify with
            # scikit-learn's "k-fold cross-validation requires at least one train/test split"
            assert "landscape classifier: CV accuracy" in out
            if len(df) == 2:
                assert "no regime with two: cross-validation is impossible" in out
    _fails_with(capsys, cmds["map"], "at least 2 temperatures and 2 densities")


def test_a_hole_in_the_grid(tmp_path, capsys):
    df = synthetic_table(seed=1)
    holes = {tuple(df.loc[i, ["temperature", "density"]]) for i in (3, 10)}
    cmds = _commands(_write(tmp_path, df.drop(index=[3, 10])))
    for name in ("classify", "select", "replay", "map"):
        rc, out, err = _run(capsys, cmds[name])
        assert rc == 0, (name, err)
    # the map replays the points the grid has and names its holes
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["total_cells"] == len(df) - 2
    assert {tuple(p) for p in summary["missing"]} == holes


@pytest.mark.parametrize("column", ["lmc_barrier", "cka", "temperature", "density"])
def test_nan_in_a_labelling_column_names_the_cell(tmp_path, capsys, column):
    df = synthetic_table(seed=1)
    df.loc[4, column] = np.nan
    _fails_with(capsys, _commands(_write(tmp_path, df))["classify"], repr(column), "row 4")


def test_nan_in_an_accuracy_is_left_out_by_select(tmp_path, capsys):
    df = synthetic_table(seed=1)
    df.loc[4, "val_acc"] = np.nan
    rc, out, _ = _run(capsys, _commands(_write(tmp_path, df))["select"])
    assert rc == 0 and "missing metrics left out" in out


def test_duplicate_rows(tmp_path, capsys):
    df = synthetic_table(seed=1)
    path = _write(tmp_path, pd.concat([df, df.iloc[:2]], ignore_index=True))
    _fails_with(capsys, _commands(path)["classify"], "duplicate cells")
    # before: without a dense_seed column a pasted row was averaged in as a second dense seed
    path = _write(tmp_path, pd.concat([df[PAPER], df[PAPER].iloc[:2]], ignore_index=True),
                  "paper.csv")
    for name in ("classify", "map"):
        _fails_with(capsys, _commands(path, knob="epochs")[name], "identical rows [0, 1, 30, 31]",
                    "'dense_seed'")
    # rows of one cell with different values stay dense seeds, averaged
    seeds = synthetic_table(dense_seeds=3, seed=3)[PAPER]
    rc, out, err = _run(capsys, _commands(_write(tmp_path, seeds, "s.csv"), knob="epochs")["map"])
    assert rc == 0, err


def test_a_barrier_of_the_opposite_sign_is_caught(tmp_path, capsys):
    # before: every command labelled such a table all Regime II, silently
    df = synthetic_table(seed=1)
    flipped = df.assign(lmc_barrier=-df[keys.LMC_BARRIER])
    for argv in _commands(_write(tmp_path, flipped)).values():
        _fails_with(capsys, argv, "opposite sign", "negate the column")
    with pytest.raises(ValueError, match="opposite sign"):
        prepare_table(flipped)
    # positive values at noise level, as measured grids have, are fine
    small = df.assign(lmc_barrier=df[keys.LMC_BARRIER].where(df[keys.LMC_BARRIER] < -0.01, 0.004))
    rc, _, err = _run(capsys, _commands(_write(tmp_path, small, "small.csv"))["classify"])
    assert rc == 0, err


@pytest.mark.parametrize("value", [-0.1, 1.2])
def test_cka_outside_0_1(tmp_path, capsys, value):
    df = synthetic_table(seed=1)
    df.loc[3, "cka"] = value
    for argv in _commands(_write(tmp_path, df)).values():
        _fails_with(capsys, argv, "'cka' must lie in [0, 1.001]", str(value))


def test_a_table_with_its_own_regime_column(tmp_path, capsys):
    df = synthetic_table(seed=1)
    labelled = df.assign(regime=df[TRUE_REGIME])
    cmds = _commands(_write(tmp_path, labelled))
    rc, out, _ = _run(capsys, cmds["classify"])
    assert rc == 0 and "own 'regime' column (30 labelled rows) was replaced" in out
    for name in ("select", "replay", "map"):
        rc, out, err = _run(capsys, cmds[name])
        assert rc == 0, (name, err)
    # labels the replay cannot use are never dropped silently
    bad = _commands(_write(tmp_path, df.assign(regime="Regime I"), "bad.csv"))["replay"]
    _fails_with(capsys, bad, "unknown labels ['Regime I']", "--relabel")
    rc, _, err = _run(capsys, [*bad, "--relabel"])
    assert rc == 0, err


@pytest.mark.parametrize("sep, name", [(";", "';'"), ("\t", "tab")])
def test_a_spreadsheet_export_with_another_separator(tmp_path, capsys, sep, name):
    path = tmp_path / "table.csv"
    synthetic_table(seed=1).to_csv(path, index=False, sep=sep, decimal=",")
    for argv in _commands(str(path)).values():
        _fails_with(capsys, argv, f"{name}-separated", "comma-separated")


def test_trailing_empty_rows_and_a_folder(tmp_path, capsys):
    # before: a spreadsheet's trailing ',,,' row made select report knobs ['epochs', nan]
    df = synthetic_table(seed=1)
    path = tmp_path / "table.csv"
    path.write_text(df.to_csv(index=False) + "," * (len(df.columns) - 1) + "\n")
    for name, argv in _commands(str(path)).items():
        rc, _, err = _run(capsys, argv)
        assert rc == 0, (name, err)
    _fails_with(capsys, _commands(str(tmp_path))["classify"], "is a folder, not a CSV file")


@pytest.mark.parametrize("extra, message", [
    (["--budget", "-3"], "--budget must be >= 1"),              # was: negative dimensions ...
    (["--budget", "0"], "--budget must be >= 1"),               # was: silently the default
    (["--sampler", " , "], "--sampler names no sampler"),       # was: rc 0, nothing replayed
    (["--tolerance", "-1"], "--tolerance must be a fraction >= 0"),
    (["--objective-column", "cka"], "objective column 'cka'"),  # was: zip() argument 2 ...
])
def test_replay_options_out_of_range(tmp_path, capsys, extra, message):
    path = _write(tmp_path, synthetic_table(seed=1))
    argv = [a for a in _commands(path)["replay"] if a not in ("--sampler", "regime")]
    argv = [*argv, *(["--sampler", "regime"] if "--sampler" not in extra else []), *extra]
    _fails_with(capsys, argv, message)


def test_a_paper_s_own_axis_names_get_a_conversion_hint(tmp_path, capsys):
    # the paper's figures: epochs on the temperature axis, sparsity, test error
    df = synthetic_table(seed=1)[PAPER]
    df = df.rename(columns={"temperature": "Epochs"}).assign(
        sparsity=1 - df["density"], test_error=1 - df["test_acc"]).drop(
        columns=["density", "test_acc"])
    _fails_with(capsys, _commands(_write(tmp_path, df), knob="epochs")["map"],
                "column 'Epochs' is the temperature axis: rename it 'temperature'",
                "--knob epochs", "density = 1 - sparsity", "test_acc = 1 - test_error")


def test_select_on_a_table_with_validation_but_no_dense_accuracy(tmp_path, capsys):
    # a table from elsewhere: the algorithms need val_acc, only the best_dense baseline needs
    # dense_acc, so select runs without it and says what it left out
    df = synthetic_table(seed=1)
    path = _write(tmp_path, df[[*PAPER, "val_acc"]])
    rc, out, err = _run(capsys, _commands(path, knob="epochs")["select"])
    assert rc == 0, err
    assert "alg2_val" in out and "best_val" in out
    assert "best_dense" not in out.split("note:")[0]      # no row, no "best_dense nan" regret
    assert "note: no dense_acc in the table: the best_dense baseline" in out
