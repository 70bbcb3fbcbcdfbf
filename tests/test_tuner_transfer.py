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
