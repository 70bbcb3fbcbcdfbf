"""Transfer start of the regime sampler: other densities' finished cells predict the start."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from selection.replay import compare_samplers, prepare_table, replay_density
from selection.sampler import TransferPrior, transfer_prior
from selection.synthetic import PAPER_FINE_TEMPERATURES, paper_like_grid
from selection.tuner import create_sampler
from tracking import keys


def _cells(rows):
    return pd.DataFrame(rows, columns=[keys.TEMPERATURE, keys.DENSITY, keys.REGIME,
                                       keys.VAL_ACC])


def test_neighbours_predict_the_start_and_the_implied_regimes():
    temps = [10, 20, 40, 80, 160]
    rows = []
    # sparser 0.05: connected at 40 and hotter, best at 40; denser 0.2: best at 160 (coldest)
    for t in temps:
        rows.append((t, 0.05, "I" if t > 40 else "II-A", 0.8 - abs(t - 40) / 1000))
        rows.append((t, 0.2, "II-B", 0.9 + t / 10000))
    prior = transfer_prior(_cells(rows), 0.1, "epochs")
    # connected at 40 at a sparser density: 40 and hotter are connected at 0.1 too
    assert prior.regimes == {40.0: 1, 20.0: 1, 10.0: 1}
    # best ranks (cold -> hot) 2 (40) and 0 (160), 0.1 halfway in log density: rank 1 (80)
    assert max(prior.scores, key=prior.scores.get) == 80.0
    assert set(prior.densities) == {0.05, 0.2}
    study = optuna.create_study(direction="maximize", sampler=create_sampler(
        "regime", "epochs", 0, transfer=prior))
    trial = study.ask()
    assert trial.suggest_categorical(keys.TEMPERATURE, temps) == 80
    # without the prior the first trial is a middle of the range
    plain = optuna.create_study(direction="maximize",
                                sampler=create_sampler("regime", "epochs", 0)).ask()
    assert plain.suggest_categorical(keys.TEMPERATURE, temps) == 40


def test_denser_regime_i_implies_regime_i_here():
    rows = [(t, 0.2, "I" if t >= 80 else "II-B", 0.9) for t in (10, 20, 40, 80, 160)]
    prior = transfer_prior(_cells(rows), 0.1, "epochs")
    assert prior.regimes == {80.0: 0, 160.0: 0}
    assert transfer_prior(_cells([]), 0.1, "epochs") == TransferPrior({}, {}, ())


def test_replay_with_transfer_finds_the_best_cell_first_where_neighbours_agree():
    df = paper_like_grid(PAPER_FINE_TEMPERATURES, seed=0)
    cells, knob = prepare_table(df, relabel=True)
    # 0.06 lies between 0.05 and 0.07, whose best temperature (80) is its best too
    with_transfer = replay_density(cells, knob, 0.06, "regime", range(5), transfer=True)
    assert with_transfer.best_temperatures == [80.0]
    assert all(t[0] == 80.0 for t in with_transfer.trajectories)
    assert (with_transfer.trials_to_best == 1).all()
    without = replay_density(cells, knob, 0.06, "regime", range(5))
    assert float(pd.Series(without.trials_to_best).median()) > 1   # the middle start: slower


@pytest.mark.slow
def test_transfer_replay_beats_half_the_strongest_baseline_on_the_fine_grid():
    df = paper_like_grid(PAPER_FINE_TEMPERATURES, seed=0)
    cells, knob = prepare_table(df, relabel=True)
    densities = [0.05, 0.1, 0.4]
    results = compare_samplers(cells, knob, densities, ["regime", "tpe2", "gp"], repeats=10,
                               transfer=True)
    ratios = []
    for d in densities:
        s = {name: r.summary()["median_trials_to_best"] for name, r in results[d].items()}
        ratios.append(s["regime"] / min(s["tpe2"], s["gp"]))
    assert max(ratios) <= 1 and sum(ratios) / len(ratios) <= 0.5
