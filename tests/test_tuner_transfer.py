"""Transfer start of the regime sampler: other densities' finished cells predict the start."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from selection.replay import compare_samplers, prepare_table, replay_density
from selection.sampler import TransferPrior, transfer_prior
from selection.synthetic import (
    MNIST1D_FINE_TEMPERATURES,
    PAPER_FINE_TEMPERATURES,
    mnist1d_like_grid,
    paper_like_grid,
)
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
    # both neighbours' best is their coldest connected temperature: Algorithm 1's rule holds
    assert prior.rule_holds
    study = optuna.create_study(direction="maximize", sampler=create_sampler(
        "regime", "epochs", 0, transfer=prior))
    trial = study.ask()
    assert trial.suggest_categorical(keys.TEMPERATURE, temps) == 80
    # without the prior the first trial is a middle of the range
    plain = optuna.create_study(direction="maximize",
                                sampler=create_sampler("regime", "epochs", 0)).ask()
    assert plain.suggest_categorical(keys.TEMPERATURE, temps) == 40


def _first_two(prior, temps):
    study = optuna.create_study(direction="maximize", sampler=create_sampler(
        "regime", "epochs", 0, transfer=prior))
    chosen = []
    for _ in range(2):
        trial = study.ask()
        t = trial.suggest_categorical(keys.TEMPERATURE, temps)
        trial.set_user_attr(keys.REGIME, "II-B")
        study.tell(trial, 0.9)
        chosen.append(t)
    return chosen


def test_agreeing_neighbours_rank_the_temperatures_by_their_values():
    temps = [10, 20, 40, 80, 160]
    # every cell connected; the best is not the coldest (160) at either neighbour, and each
    # neighbour's best is near the top of the other: they agree on a flat top around 40-80
    val = {0.05: {10: 0.80, 20: 0.82, 40: 0.86, 80: 0.855, 160: 0.83},
           0.2: {10: 0.90, 20: 0.91, 40: 0.948, 80: 0.95, 160: 0.93}}
    rows = [(t, d, "II-B", v) for d, by_t in val.items() for t, v in by_t.items()]
    prior = transfer_prior(_cells(rows), 0.1, "epochs")
    assert not prior.rule_holds
    # best ranks 2 (40) and 1 (80) interpolate to a tie; the values break it: 40 is closer to
    # the top at 0.2 (0.948 of 0.95) than 80 is at 0.05 (0.855 of 0.86)
    assert max(prior.scores, key=prior.scores.get) == 40.0
    assert prior.scores[40.0] > prior.scores[80.0] > prior.scores[160.0]
    # the second trial is the next best scored, not the coldest that Algorithm 1 would bisect to
    assert _first_two(prior, temps) == [40, 80]


def test_neighbours_that_disagree_fall_back_on_their_best_ranks():
    temps = [10, 20, 40, 80, 160]
    # 0.05 peaks hot (20), 0.2 cold (160), each one's best is far below the top of the other
    val = {0.05: {10: 0.80, 20: 0.86, 40: 0.84, 80: 0.82, 160: 0.78},
           0.2: {10: 0.88, 20: 0.89, 40: 0.91, 80: 0.93, 160: 0.95}}
    rows = [(t, d, "II-A", v) for d, by_t in val.items() for t, v in by_t.items()]
    prior = transfer_prior(_cells(rows), 0.1, "epochs")
    # ranks 3 (20) and 0 (160) halfway: 1.5, a tie of 80 and 40 by rank alone
    assert prior.scores[80.0] == pytest.approx(prior.scores[40.0])
    assert max(prior.scores.values()) == pytest.approx(prior.scores[80.0])
    # equal scores: the colder first
    assert _first_two(prior, temps)[0] == 80


def test_all_regime_i_implied_starts_from_the_neighbours_best():
    temps = [10, 20, 40, 80, 160]
    # the denser neighbour is Regime I everywhere: every temperature is Regime I here too, so
    # no temperature can be the coldest connected one; its values pick the start (40), not the
    # hottest end
    rows = [(t, 0.2, "I", 0.8 - abs(t - 40) / 1000) for t in temps]
    prior = transfer_prior(_cells(rows), 0.1, "epochs")
    assert set(prior.regimes.values()) == {0} and not prior.rule_holds
    assert _first_two(prior, temps)[0] == 40


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


def test_after_a_connected_start_the_cold_end_comes_before_the_predicted_side():
    df = mnist1d_like_grid(MNIST1D_FINE_TEMPERATURES, seed=0)
    cells, knob = prepare_table(df, relabel=True)
    # 0.1 between 0.05 (best 12 epochs) and 0.2 (best 80, the coldest): ranks 5 and 0
    # interpolate to 2.5, a tie of 40 and 30 taken colder; 40 is connected, so the boundary is
    # at 40 or colder: of the two middles of {80, 60} the one at the grid's cold end (80, the
    # best) comes first, not the one nearer the prediction (60)
    result = replay_density(cells, knob, 0.1, "regime", range(3), transfer=True)
    assert result.best_temperatures == [80.0]
    assert all(t[:2] == [40.0, 80.0] for t in result.trajectories)


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


def test_tune_reads_other_densities_from_the_store(tracking_uri):
    import json
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from selection.cli.tune import _grid_context
    from tracking.tables import PAIR_METRICS, results_table

    df = paper_like_grid(seed=0)
    client = MlflowClient()
    experiment_id = client.create_experiment("grid")
    now = int(time.time() * 1000)
    for i, row in df.iterrows():
        run_id = client.create_run(experiment_id, tags={keys.RUN_KIND: keys.KIND_CELL,
                                                        keys.SPEC_HASH: f"h{i}"}).info.run_id
        pairs = json.loads(row[PAIR_METRICS])
        metrics = {m: row[m] for m in (keys.VAL_ACC, keys.TEST_ACC, keys.LMC_BARRIER,
                                       keys.LMC_BARRIER_STD, keys.CKA, keys.CKA_STD)}
        for base in (keys.LMC_BARRIER, keys.CKA):
            metrics.update({keys.pair_metric(base, *map(int, k.split("_"))): v
                            for k, v in pairs[base].items()})
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                         params=[Param(p, str(row[p])) for p in (keys.KNOB, keys.TEMPERATURE,
                                                                  keys.DENSITY, keys.DENSE_SEED)])
        client.set_terminated(run_id)
    # the per-pair metrics of the cell runs come back as the table's pair_metrics column
    table = results_table("grid")
    back = json.loads(table.loc[0, PAIR_METRICS])
    assert len(back[keys.LMC_BARRIER]) == 3 and set(back) == {keys.LMC_BARRIER, keys.CKA}
    context, transfer = _grid_context("grid", "epochs", 0.06, True, None, None)
    assert len(context) == len(df) - 6 and not (context[keys.DENSITY] == 0.06).any()
    assert max(transfer.scores, key=transfer.scores.get) == 70.0   # the neighbours' best
    assert _grid_context("nope", "epochs", 0.06, True, None, None) == (None, None)


def test_closeness_to_the_top_of_a_density():
    from selection.sampler import _closeness_to_top

    values = pd.Series([0.80, 0.84, 0.88, 0.90], index=[10, 20, 40, 80])
    # median 0.86: 1 at the top, 0 at the median and below, linear in between
    assert _closeness_to_top(values) == pytest.approx({10.0: 0.0, 20.0: 0.0, 40.0: 0.5,
                                                       80.0: 1.0})
    # half the cells tied at the top: the spread down to the worst is the scale
    tied = pd.Series([0.9, 0.9, 0.9, 0.5], index=[10, 20, 40, 80])
    assert _closeness_to_top(tied) == {10.0: 1.0, 20.0: 1.0, 40.0: 1.0, 80.0: 0.0}


def _trajectory(prior, temps, value_of, until):
    """Temperatures a transfer study tries (every cell II-B, objective ``value_of``) up to and
    including ``until``, at most ``len(temps)`` trials."""
    study = optuna.create_study(direction="maximize", sampler=create_sampler(
        "regime", "epochs", 0, transfer=prior))
    chosen = []
    for _ in temps:
        trial = study.ask()
        t = trial.suggest_categorical(keys.TEMPERATURE, temps)
        trial.set_user_attr(keys.REGIME, "II-B")
        study.tell(trial, value_of[t])
        chosen.append(t)
        if t == until:
            break
    return chosen


def test_the_study_s_own_values_correct_the_neighbours_ranking():
    temps = [10, 20, 40, 80, 160]
    # both neighbours rank 40 > 80 > 20 > 160 > 10 (every cell connected, the coldest, 160,
    # not their best: Algorithm 1's rule does not hold)
    shape = {10: 0.0, 20: 0.6, 40: 1.0, 80: 0.9, 160: 0.4}
    rows = [(t, d, "II-B", base + 0.01 * z) for d, base in ((0.05, 0.8), (0.2, 0.9))
            for t, z in shape.items()]
    prior = transfer_prior(_cells(rows), 0.1, "epochs")
    assert not prior.rule_holds and prior.curve
    assert sorted(prior.curve, key=prior.curve.get, reverse=True) == [40.0, 80.0, 20.0, 160.0,
                                                                     10.0]
    # here the top has moved colder: 40 measures far below what the neighbours predict (their
    # level 0.856, spread 0.004), 80 above, and 160, next to 80 and away from 40, is the best;
    # the neighbours' ranking alone would try 20 third
    here = {10: 0.850, 20: 0.853, 40: 0.852, 80: 0.860, 160: 0.861}
    assert _trajectory(prior, temps, here, until=160) == [40, 80, 160]
    # the same start where the study's values agree with the neighbours: their ranking
    agree = {t: 0.85 + 0.01 * z for t, z in shape.items()}
    assert _trajectory(prior, temps, agree, until=40) == [40]


def test_the_curve_averages_every_other_density_by_closeness_in_log_density():
    # the nearest densities (0.08, 0.12) put their top at 20, two far ones at 40: the near ones
    # weigh more, and each density counts on its own scale (top 1, median 0, floor -1)
    val = {0.01: {10: 0.5, 20: 0.6, 40: 0.7}, 0.08: {10: 0.80, 20: 0.83, 40: 0.82},
           0.12: {10: 0.85, 20: 0.87, 40: 0.86}, 0.9: {10: 0.90, 20: 0.91, 40: 0.92}}
    rows = [(t, d, "II-B", v) for d, by_t in val.items() for t, v in by_t.items()]
    prior = transfer_prior(_cells(rows), 0.1, "epochs")
    assert max(prior.curve, key=prior.curve.get) == 20.0
    assert set(prior.curve) == {10.0, 20.0, 40.0}
    assert all(-1.0 <= v <= 1.0 for v in prior.curve.values())
    # the study's values go on the same scale: its level and spread from the nearest densities
    assert 0.80 < prior.center < 0.87 and 0 < prior.scale < 0.1


def test_trials_to_within_another_tolerance_and_the_bench_noise():
    import importlib.util
    from pathlib import Path

    import numpy as np

    path = Path(__file__).resolve().parent.parent / "bench" / "replay.py"
    spec = importlib.util.spec_from_file_location("bench_replay", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    df = paper_like_grid(seed=0)
    cells, knob = prepare_table(df, relabel=True)
    result = replay_density(cells, knob, 0.1, "random", range(4))
    # at the replay's own tolerance the figure is the replay's, recomputed from trajectories
    np.testing.assert_array_equal(result.trials_to_within_of(result.tolerance),
                                  result.trials_to_within)
    # within any tolerance the first trial counts; within none, the first at a best cell
    assert (result.trials_to_within_of(1.0) == 1).all()
    np.testing.assert_array_equal(result.trials_to_within_of(0.0), result.trials_to_best)
    # the noise: the objective's own std first, else the test accuracy's
    assert bench.noise_tolerance(df) == pytest.approx(df[keys.TEST_ACC_STD].median())
    both = df.assign(**{keys.VAL_ACC_STD: 0.5})
    assert bench.noise_tolerance(both) == 0.5
    assert bench.noise_tolerance(df.drop(columns=[keys.TEST_ACC_STD])) is None


def test_a_minimised_objective_is_corrected_the_same_way():
    temps = [10, 20, 40, 80, 160]
    # the maximised case above as a loss (1 - value): same neighbours, same study values
    shape = {10: 0.0, 20: 0.6, 40: 1.0, 80: 0.9, 160: 0.4}
    rows = [(t, d, "II-B", 1 - base - 0.01 * z) for d, base in ((0.05, 0.8), (0.2, 0.9))
            for t, z in shape.items()]
    prior = transfer_prior(_cells(rows), 0.1, "epochs", maximize=False)
    assert max(prior.curve, key=prior.curve.get) == 40.0
    loss = {10: 0.150, 20: 0.147, 40: 0.148, 80: 0.140, 160: 0.139}
    study = optuna.create_study(direction="minimize", sampler=create_sampler(
        "regime", "epochs", 0, transfer=prior))
    chosen = []
    while not chosen or chosen[-1] != 160:
        trial = study.ask()
        t = trial.suggest_categorical(keys.TEMPERATURE, temps)
        trial.set_user_attr(keys.REGIME, "II-B")
        study.tell(trial, loss[t])
        chosen.append(t)
        assert len(chosen) <= len(temps)
    assert chosen == [40, 80, 160]


def test_at_an_end_of_the_grid_two_densities_must_confirm_the_rule():
    temps = [10, 20, 40, 80, 160]

    def rows(second_best):
        # densities 0.2 and 0.4, both sparser than the target 0.8 (an end of the grid): all
        # connected; at 0.4, the nearest, the coldest (160) is the best; at 0.2 ``second_best``
        out = [(t, 0.4, "II-B", 0.9 + t / 10000) for t in temps]
        out += [(t, 0.2, "II-B", 0.85 + (0.01 if t == second_best else 0.0)) for t in temps]
        return _cells(out)

    confirmed = transfer_prior(rows(160), 0.8, "epochs")
    assert confirmed.densities == (0.4,) and confirmed.rule_holds
    # the second nearest had its best elsewhere: one density is not enough to extrapolate
    # Algorithm 1's premise, the curve leads
    assert not transfer_prior(rows(40), 0.8, "epochs").rule_holds
