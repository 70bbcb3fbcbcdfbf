"""Replay benchmark (selection.replay and the ``replay`` command): determinism, scoring,
and that test accuracy never reaches a sampler."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest

from selection.cli.replay import add_parser
from selection.replay import compare_samplers, prepare_table, replay_density, results_json

TEMPS = [2, 3, 5, 8, 12, 20, 30, 40, 60, 80]
CHEAP = ["regime", "tpe", "tpe2", "random", "grid"]  # gp is slow; it has its own smoke test


def _table(with_regime: bool = True) -> pd.DataFrame:
    """Two densities; at 0.05 the boundary is between 5 (connected) and 8 (Regime I)."""
    rows = []
    for density, boundary in ((0.05, 5), (0.5, 80)):
        for t in TEMPS:
            connected = t <= boundary
            val = 0.6 + 0.02 * math.log(min(t, boundary)) - (0 if connected else 0.05)
            rows.append({"knob": "epochs", "temperature": t, "density": density,
                         "val_acc": val + 0.0001 * t / 80,  # unique best
                         "test_acc": val, "lmc_barrier": 0.0 if connected else -0.08,
                         "cka": 0.95 if t >= 20 and connected else 0.8,
                         "regime": ("II-B" if t >= 20 else "II-A") if connected else "I"})
    df = pd.DataFrame(rows)
    return df if with_regime else df.drop(columns="regime")


def test_deterministic_for_a_seed():
    cells, knob = prepare_table(_table())
    a = compare_samplers(cells, knob, [0.05], CHEAP, repeats=4, seed=7)
    b = compare_samplers(cells, knob, [0.05], CHEAP, repeats=4, seed=7)
    for name in CHEAP:
        assert a[0.05][name].trajectories == b[0.05][name].trajectories
        assert results_json(a[0.05])[name] == results_json(b[0.05])[name]
    c = compare_samplers(cells, knob, [0.05], ["random"], repeats=4, seed=8)
    assert c[0.05]["random"].trajectories != a[0.05]["random"].trajectories


@pytest.mark.parametrize("poison", ["reversed", "absent", "nan"])
def test_test_accuracy_never_reaches_the_samplers(poison):
    clean = _table()
    poisoned = clean.copy()
    if poison == "reversed":
        poisoned["test_acc"] = 1 - poisoned["test_acc"]
    elif poison == "absent":
        poisoned = poisoned.drop(columns="test_acc")
    else:
        poisoned["test_acc"] = np.nan
    ca, knob = prepare_table(clean)
    cb, _ = prepare_table(poisoned)
    a = compare_samplers(ca, knob, [0.05], CHEAP, repeats=3)
    b = compare_samplers(cb, knob, [0.05], CHEAP, repeats=3)
    for name in CHEAP:
        assert a[0.05][name].trajectories == b[0.05][name].trajectories, name
    if poison != "reversed":
        assert b[0.05]["regime"].test_regret is None   # nothing to report regret with


def test_scores_against_a_hand_computed_trajectory():
    cells, knob = prepare_table(_table())
    result = replay_density(cells, knob, 0.05, "regime", [0], budget=6)
    tried = result.trajectories[0]
    values = dict(zip(cells[cells.density == 0.05].temperature,
                      cells[cells.density == 0.05].val_acc, strict=True))
    best = max(values.values())
    assert result.best_temperatures == [5.0]
    assert result.trials_to_best[0] == tried.index(5.0) + 1
    running = np.maximum.accumulate([values[t] for t in tried])
    np.testing.assert_allclose(result.regret[0, :len(tried)], best - running)
    # bisection: the boundary of a 10-temperature grid within ceil(log2(11)) = 4 trials
    assert result.trials_to_best[0] <= 4
    summary = result.summary()
    for key in ("median_trials_to_best", "iqr_trials_to_best", "median_trials_to_within_0.2",
                "mean_regret_by_trial", "mean_test_regret_by_trial"):
        assert key in summary
    assert len(summary["mean_regret_by_trial"]) == 6


def test_grid_sampler_stops_after_one_pass_and_unreached_is_censored():
    cells, knob = prepare_table(_table())
    result = replay_density(cells, knob, 0.05, "grid", [0, 1], budget=15)
    assert all(sorted(t) == sorted(float(x) for x in TEMPS) for t in result.trajectories)
    assert (result.regret[:, -1] == 0).all()
    short = replay_density(cells, knob, 0.05, "grid", list(range(10)), budget=1)
    assert set(short.trials_to_best) <= {1, 2}   # 2 = budget + 1: never reached
    assert 2 in set(short.trials_to_best)


def test_table_without_regime_is_labelled_and_dense_seeds_are_averaged():
    df = _table(with_regime=False)
    twice = pd.concat([df.assign(dense_seed=0), df.assign(dense_seed=1, val_acc=df.val_acc + 0.01)])
    cells, knob = prepare_table(twice)
    assert knob == "epochs" and len(cells) == len(df)
    assert set(cells.regime) <= {"I", "II-A", "II-B"}
    at = cells[(cells.density == 0.05) & (cells.temperature == 80)]
    assert at.regime.item() == "I"
    assert at.val_acc.item() == pytest.approx(df[(df.density == 0.05) & (df.temperature == 80)]
                                              .val_acc.item() + 0.005)


def test_prepare_table_errors():
    with pytest.raises(ValueError, match="test accuracy"):
        prepare_table(_table(), objective_column="test_acc")
    with pytest.raises(ValueError, match="lmc_barrier"):
        prepare_table(_table().drop(columns="lmc_barrier"))
    two = pd.concat([_table(), _table().assign(knob="batch_size")])
    with pytest.raises(ValueError, match="--knob"):
        prepare_table(two)
    cells, knob = prepare_table(two, knob="batch_size")
    assert knob == "batch_size"
    with pytest.raises(ValueError, match="density"):
        replay_density(cells, knob, 0.3, "regime", [0])


def _cli(argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_replay_command_json(tmp_path, capsys):
    table = tmp_path / "grid.csv"
    _table().to_csv(table, index=False)
    code = _cli(["replay", "--table", str(table), "--density", "0.05", "--sampler",
                 "regime,random", "--repeats", "3", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"regime", "random"}
    for figures in out.values():
        assert {"median_trials_to_best", "iqr_trials_to_best", "median_trials_to_within_0.2",
                "mean_regret_by_trial"} <= set(figures)
        assert len(figures["mean_regret_by_trial"]) == 2 * len(TEMPS)


def test_replay_command_table_and_plot(tmp_path, capsys):
    table = tmp_path / "grid.csv"
    _table(with_regime=False).to_csv(table, index=False)
    code = _cli(["replay", "--table", str(table), "--density", "0.5", "--sampler",
                 "regime,grid", "--repeats", "2", "--budget", "5", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "regime" in out and "grid" in out
    assert (tmp_path / "replay_epochs_d0.5.png").stat().st_size > 0
    assert _cli(["replay", "--table", str(tmp_path / "missing.csv"), "--density", "0.5"]) == 1


def test_gp_sampler_replays():
    cells, knob = prepare_table(_table())
    result = replay_density(cells, knob, 0.05, "gp", [0], budget=3)  # 2 random, 1 GP
    assert len(result.trajectories[0]) == 3
    assert set(result.trajectories[0]) <= {float(t) for t in TEMPS}
