"""RegimeGuidedSampler: direction per knob, bounds, failures, parallel workers, reproducibility."""

from __future__ import annotations

import math
import threading

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from pipeline.knobs import get_knob
from selection.sampler import RegimeGuidedSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)

EPOCHS = [2, 3, 5, 8, 12, 20, 30, 40, 60, 80]          # hotter = fewer epochs
RHOS = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]  # hotter = larger rho
SPACES = {"epochs": EPOCHS, "sam_rho": RHOS}


def _cold_to_hot(knob: str) -> list:
    # independent of the code under test: by the knob's own hotter_than
    k = get_knob(knob)
    values = SPACES[knob]
    return sorted(values, key=lambda v: sum(k.hotter_than(v, w) for w in values))


def _study(knob: str, history, seed: int = 0, **kwargs) -> optuna.Study:
    """A study whose finished trials are ``history``: (temperature, regime, value[, state])."""
    sampler = RegimeGuidedSampler("temperature", knob, seed=seed, **kwargs)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dist = CategoricalDistribution(SPACES[knob])
    for temperature, regime, value, *state in history:
        state = state[0] if state else TrialState.COMPLETE
        study.add_trial(create_trial(
            state=state, value=value if state == TrialState.COMPLETE else None,
            params={"temperature": temperature}, distributions={"temperature": dist},
            user_attrs={} if regime is None else {"regime": regime}))
    return study


def _next(study: optuna.Study, knob: str):
    trial = study.ask()
    return trial.suggest_categorical("temperature", SPACES[knob])


@pytest.mark.parametrize("knob", ["epochs", "sam_rho"])
@pytest.mark.parametrize("seed", range(5))
def test_regime_one_goes_hotter_and_two_a_goes_colder(knob, seed):
    k = get_knob(knob)
    order = _cold_to_hot(knob)
    middle = order[len(order) // 2]
    hotter = _next(_study(knob, [(middle, "I", 0.5)], seed), knob)
    assert k.hotter_than(hotter, middle), (knob, middle, hotter)
    colder = _next(_study(knob, [(middle, "II-A", 0.5)], seed), knob)
    assert k.hotter_than(middle, colder), (knob, middle, colder)
    colder = _next(_study(knob, [(middle, "II-B", 0.5)], seed), knob)
    assert k.hotter_than(middle, colder), (knob, middle, colder)


@pytest.mark.parametrize("knob", ["epochs", "sam_rho"])
@pytest.mark.parametrize("seed", range(5))
def test_suggestion_stays_inside_the_interval(knob, seed):
    k = get_knob(knob)
    order = _cold_to_hot(knob)
    cold_end, hot_end = order[1], order[6]   # I at cold_end, II-A at hot_end
    got = _next(_study(knob, [(cold_end, "I", 0.5), (hot_end, "II-A", 0.6)], seed), knob)
    assert k.hotter_than(got, cold_end) and k.hotter_than(hot_end, got), got


def test_all_regime_one_goes_hotter_than_every_trial():
    k = get_knob("epochs")
    history = [(80, "I", 0.4), (60, "I", 0.41), (20, "I", 0.45)]
    for seed in range(5):
        got = _next(_study("epochs", history, seed), "epochs")
        assert all(k.hotter_than(got, t) for t, *_ in history), got


def test_all_connected_goes_colder_than_every_trial():
    k = get_knob("epochs")
    history = [(2, "II-A", 0.4), (3, "II-A", 0.41), (8, "II-B", 0.45)]
    for seed in range(5):
        got = _next(_study("epochs", history, seed), "epochs")
        assert all(k.hotter_than(t, got) for t, *_ in history), got


def test_boundary_found_then_exploits_the_neighbour_of_the_best():
    # I at 20, connected at 12: the boundary is pinned down; 12 is the best so far.
    history = [(20, "I", 0.50), (12, "II-B", 0.60), (2, "II-A", 0.40)]
    got = _next(_study("epochs", history), "epochs")
    assert got == 8  # nearest untried to 12 (20 is tried)


def test_failed_trial_is_not_repeated_and_gives_no_direction():
    k = get_knob("epochs")
    for seed in range(8):
        study = _study("epochs", [(20, None, None, TrialState.FAIL)], seed)
        got = _next(study, "epochs")
        assert got != 20
    # A FAIL next to an I trial: still hotter than the I trial, never the failed value.
    for seed in range(8):
        study = _study("epochs", [(40, "I", 0.4), (12, None, None, TrialState.FAIL)], seed)
        got = _next(study, "epochs")
        assert got != 12 and k.hotter_than(got, 40)


def test_pruned_trial_with_a_regime_counts_as_direction():
    k = get_knob("epochs")
    study = _study("epochs", [(20, "I", None, TrialState.PRUNED)])
    got = _next(study, "epochs")
    assert k.hotter_than(got, 20)


def test_conflicting_regimes_still_give_an_untried_value_in_space():
    # II-A colder than an I: the labels contradict the monotone model
    history = [(40, "II-A", 0.5), (5, "I", 0.6)]
    for seed in range(8):
        got = _next(_study("epochs", history, seed), "epochs")
        assert got in EPOCHS and got not in (40, 5)


def _run(seed: int, temps: list, regime_of, value_of, n_trials: int) -> list:
    """Temperatures tried by a fresh regime sampler against a labelled objective."""
    sampler = RegimeGuidedSampler("temperature", "epochs", seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    tried = []

    def objective(trial):
        t = trial.suggest_categorical("temperature", temps)
        tried.append(t)
        trial.set_user_attr("regime", regime_of(t, len(tried)))
        return value_of(t)

    study.optimize(objective, n_trials=n_trials)
    return tried


def test_never_repeats_until_every_value_is_tried_then_stays_in_space():
    for seed in range(3):
        # adversarial labels: alternate regimes regardless of temperature
        seen = _run(seed, EPOCHS, lambda t, k: "I" if k % 2 else "II-A",
                    lambda t: -abs(math.log(t) - math.log(10)), len(EPOCHS) + 5)
        assert sorted(seen[:len(EPOCHS)]) == sorted(EPOCHS)
        assert set(seen) <= set(EPOCHS)


def test_running_trials_of_other_workers_are_not_duplicated_and_split_the_interval():
    sampler = RegimeGuidedSampler("temperature", "epochs", seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    # cold -> hot: 80 60 40 30 20 | 12 8 5 3 2 ; another worker is running 20 (position 4)
    study.enqueue_trial({"temperature": 20})
    running = study.ask()
    assert running.suggest_categorical("temperature", EPOCHS) == 20
    got = _next(study, "epochs")
    # the larger piece is positions 5..9 (12 .. 2); its middle is position 7 (= 5 epochs)
    assert got == 5


@pytest.mark.parametrize("seed", [0, 1, None])
@pytest.mark.parametrize("space", ["discrete", "continuous"])
def test_workers_choosing_at_the_same_time_take_different_temperatures(tmp_path, seed, space):
    """Four workers (separate samplers, one shared storage) each ask for a trial before any
    of them has chosen: they replay each other's choices and take four different ones; the
    first to ask gets what it would have got alone, whoever chooses first."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal")))
    name = "simultaneous"
    optuna.create_study(study_name=name, storage=storage, direction="maximize")

    def suggest(trial):
        if space == "discrete":
            return trial.suggest_categorical("temperature", EPOCHS)
        return trial.suggest_float("temperature", 1.0, 100.0, log=True)

    # (choice_wait_s=0: one thread asks for all four, so nobody else stores a choice meanwhile)
    workers = [optuna.load_study(study_name=name, storage=storage,
                                 sampler=RegimeGuidedSampler("temperature", "epochs", seed=seed,
                                                             choice_wait_s=0))
               for _ in range(4)]
    trials = [w.ask() for w in workers]                 # all RUNNING, none has a temperature
    got = {t.number: suggest(t) for t in reversed(trials)}   # the last to ask chooses first
    assert len(set(got.values())) == 4, got
    alone = optuna.create_study(direction="maximize",
                                sampler=RegimeGuidedSampler("temperature", "epochs", seed=seed),
                                study_name=name)
    assert got[trials[0].number] == suggest(alone.ask())


@pytest.mark.parametrize("wait_s", [5.0, 0.0])
def test_a_worker_waits_for_an_earlier_choice_made_from_an_older_history(tmp_path, wait_s):
    """Worker A reads the history while trial 0 is running, then trial 0 finishes, then B
    chooses while A is still choosing: B's replay of A's choice (from the newer history) would
    differ from A's; waiting for A's stored choice keeps them apart. With no wait they can collide
    (the failure seen with two tuners on PostgreSQL)."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal")))
    name = "older-history"
    optuna.create_study(study_name=name, storage=storage, direction="maximize")

    def worker(**kw):
        sampler = RegimeGuidedSampler("temperature", "epochs", seed=0, choice_wait_s=wait_s, **kw)
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)

    first = worker().ask()
    t0 = first.suggest_categorical("temperature", EPOCHS)
    a_read, a_may_choose = threading.Event(), threading.Event()
    slow = worker()
    read = slow.sampler._observations

    def read_then_stall(*args):
        history = read(*args)
        a_read.set()
        a_may_choose.wait(10)
        return history

    slow.sampler._observations = read_then_stall
    a_trial, b_trial = slow.ask(), worker().ask()      # trials 1 (A) and 2 (B)
    got = {}
    thread = threading.Thread(target=lambda: got.update(a=a_trial.suggest_categorical(
        "temperature", EPOCHS)))
    thread.start()
    assert a_read.wait(10)
    first.set_user_attr("regime", "II-A")                # trial 0 finishes: connected
    worker().tell(first, 0.1)
    b_study = worker()
    choices = []                                         # B's replays, then its own choice
    choose = b_study.sampler._sample_discrete
    b_study.sampler._sample_discrete = lambda *a: choices.append(choose(*a)) or choices[-1]
    if wait_s:                                           # A stores its choice while B waits
        threading.Timer(0.3, a_may_choose.set).start()
    got["b"] = b_study.sampler.sample_independent(
        b_study, b_study._storage.get_trial(b_trial._trial_id), "temperature",
        CategoricalDistribution(EPOCHS))
    a_may_choose.set()
    thread.join(10)
    assert t0 not in (got["a"], got["b"]) and got["a"] != got["b"], got
    if wait_s:
        assert choices == [got["b"]]                     # A's real choice was read, not replayed
    else:
        # the replay is made from the newer history and misses A's real choice: B avoids a
        # temperature A did not take, and could take A's (the collision seen on PostgreSQL)
        assert choices[0] != got["a"], (choices, got)


def test_a_choice_stored_between_two_reads_is_not_missed(tmp_path):
    """B reads the history while A is choosing; A then stores its choice before B looks for
    the trials still choosing. From two separate reads A is in neither list and B takes A's
    temperature; one read of the trials for both keeps A (replayed) and B apart."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal")))
    name = "between-reads"
    optuna.create_study(study_name=name, storage=storage, direction="maximize")

    def worker():
        sampler = RegimeGuidedSampler("temperature", "epochs", seed=0, choice_wait_s=0)
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)

    first = worker().ask()
    first.suggest_categorical("temperature", EPOCHS)
    first.set_user_attr("regime", "II-A")
    worker().tell(first, 0.1)
    a_trial, b_study = worker().ask(), worker()
    b_trial = b_study.ask()
    got = {}
    read = b_study.sampler._observations

    def read_then_let_a_choose(*args):
        history = read(*args)
        got["a"] = a_trial.suggest_categorical("temperature", EPOCHS)   # A stores it now
        return history

    b_study.sampler._observations = read_then_let_a_choose
    got["b"] = b_trial.suggest_categorical("temperature", EPOCHS)
    assert got["a"] != got["b"], got


@pytest.mark.parametrize("n", [1, 2, 6, 10, 16])
def test_bisection_reaches_the_boundary_in_log_trials(n):
    """On a monotone grid the best cell (coldest connected) is reached within
    ceil(log2(n + 1)) trials for every boundary position and seed."""
    temps = list(range(1, n + 1))  # epochs: n is the coldest
    limit = math.ceil(math.log2(n + 1))
    for boundary in range(n + 1):       # cells with epochs > n - boundary are Regime I
        regime_one = set(temps[n - boundary:]) if boundary else set()
        connected = [t for t in temps if t not in regime_one]
        best = max(connected) if connected else min(temps)
        for seed in range(3):
            tried = _run(seed, temps, lambda t, k, one=regime_one: "I" if t in one else "II-A",
                         lambda t, b=best: -abs(t - b), limit)
            assert best in tried, (n, boundary, seed, tried)


def test_reproducible_for_a_seed():
    def run(seed):
        sampler = RegimeGuidedSampler("temperature", "epochs", seed=seed)
        study = optuna.create_study(direction="maximize", sampler=sampler)

        def objective(trial):
            t = trial.suggest_categorical("temperature", EPOCHS)
            lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
            trial.set_user_attr("regime", "I" if t >= 30 else "II-A")
            return -abs(t - 20) + lr

        study.optimize(objective, n_trials=8)
        return [(t.params["temperature"], t.params["lr"]) for t in study.trials]

    assert run(3) == run(3)
    assert {tuple(run(s)) for s in range(6)} != {tuple(run(0))}


def test_other_parameters_are_delegated_to_the_inner_sampler():
    inner = optuna.samplers.RandomSampler(seed=11)
    sampler = RegimeGuidedSampler("temperature", "epochs", inner=inner, seed=0)
    study = optuna.create_study(sampler=sampler)
    trial = study.ask()
    lr = trial.suggest_float("lr", 0.0, 1.0)
    expected = optuna.samplers.RandomSampler(seed=11)
    reference = optuna.create_study(sampler=expected).ask().suggest_float("lr", 0.0, 1.0)
    assert lr == reference


@pytest.mark.parametrize("knob", ["epochs", "sam_rho"])
def test_continuous_space_bounds_and_direction(knob):
    k = get_knob(knob)
    low, high = (2.0, 80.0) if knob == "epochs" else (0.01, 1.0)
    sampler = RegimeGuidedSampler("temperature", knob, seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    boundary = 20.0 if knob == "epochs" else 0.2   # colder than this: Regime I
    values = []

    def objective(trial):
        t = trial.suggest_float("temperature", low, high, log=True)
        values.append(t)
        regime = "II-A" if (k.hotter_than(t, boundary) or t == boundary) else "I"
        trial.set_user_attr("regime", regime)
        return -abs(math.log(t) - math.log(boundary))

    study.optimize(objective, n_trials=25)
    assert all(low <= v <= high for v in values)
    # bisection homes in on the boundary: the last ten are within 10 % (log) of it
    assert all(abs(math.log(v) - math.log(boundary)) < 0.1 for v in values[-10:]), values


def test_int_space_with_step_is_enumerated_and_bisected():
    sampler = RegimeGuidedSampler("temperature", "batch_size", seed=0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen = []

    def objective(trial):
        t = trial.suggest_int("temperature", 16, 512, step=16)
        seen.append(t)
        trial.set_user_attr("regime", "I" if t > 200 else "II-A")  # large batch = cold
        return -abs(t - 200)

    study.optimize(objective, n_trials=8)
    assert all(t % 16 == 0 and 16 <= t <= 512 for t in seen)
    assert len(set(seen)) == len(seen)
    assert 192 in seen   # the coldest connected batch size, found by bisection


def test_single_value_space_and_one_trial():
    study = optuna.create_study(sampler=RegimeGuidedSampler("temperature", "epochs", seed=0))
    assert study.ask().suggest_categorical("temperature", [40]) == 40
    study = optuna.create_study(sampler=RegimeGuidedSampler("temperature", "epochs", seed=0))
    first = study.ask().suggest_categorical("temperature", EPOCHS)
    assert first in (20, 12)  # the middle of the cold -> hot order


def test_predictor_steers_inside_the_observed_interval():
    boundary_one = {80, 60, 40, 30, 20, 12}      # predicted Regime I
    predictor = lambda t: "I" if t in boundary_one else "II-A"  # noqa: E731
    sampler = RegimeGuidedSampler("temperature", "epochs", seed=0, regime_predictor=predictor)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    assert study.ask().suggest_categorical("temperature", EPOCHS) == 8
    # an observation contradicting the prediction wins: II-A at 30 means colder than 30
    study = _study("epochs", [(30, "II-A", 0.5)], regime_predictor=predictor)
    got = _next(study, "epochs")
    assert got in (80, 60, 40)


def test_rejects_non_numeric_categorical_temperature():
    study = optuna.create_study(sampler=RegimeGuidedSampler("temperature", "epochs", seed=0))
    with pytest.raises(ValueError, match="numeric"):
        study.ask().suggest_categorical("temperature", ["hot", "cold"])


def test_float_distribution_with_step_and_int_distribution_objects():
    for dist in (FloatDistribution(0.0, 1.0, step=0.25), IntDistribution(1, 9, step=2)):
        study = optuna.create_study(sampler=RegimeGuidedSampler("temperature", "sam_rho", seed=0))
        for _ in range(dist_size(dist) + 2):
            trial = study.ask()
            if isinstance(dist, FloatDistribution):
                value = trial.suggest_float("temperature", dist.low, dist.high, step=dist.step)
            else:
                value = trial.suggest_int("temperature", dist.low, dist.high, step=dist.step)
            assert dist._contains(dist.to_internal_repr(value)), value
            study.tell(trial, 0.0)


def dist_size(dist) -> int:
    return int(round((dist.high - dist.low) / dist.step)) + 1
