"""Regime-guided Optuna sampler for the training temperature (paper Algorithm 1).

Along one density the regimes are ordered cold -> hot (Regime I, then connected: II-A or II-B)
and the best temperature is the coldest connected one. Instead of stepping one temperature at a
time, the sampler keeps the boundaries that contradict the fewest finished trials and bisects
the untried temperatures among them (about log2(n + 1) trials on n temperatures), then exploits
near the best objective. II-B counts as connected, not as a stop. With finished cells at
neighbouring densities (``transfer``), the first trial is the temperature they predict instead
of the middle, and where the coldest connected temperature was not their best, their objective
curve (every other density, weighted by closeness in log density), corrected by the study's own
finished trials, leads every trial. A choice depends only on the earlier trials and on
tie-breaks seeded by the seed and the trial number, so concurrent workers replay each other's
choices instead of duplicating them. The rules and their reasons:
docs/method.md#how-the-sampler-chooses-a-temperature, docs/design.md#optuna-studies-and-workers.
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from pipeline.knobs import HOTTER_HIGHER, Knob, get_knob
from selection.regimes import REGIME_I, REGIME_II_A, REGIME_II_B
from tracking.knobs import cold_to_hot

__all__ = ["RegimeGuidedSampler", "TransferPrior", "transfer_prior"]

CONNECTED_REGIMES = (REGIME_II_A, REGIME_II_B)

# A stepped distribution with more values than this is bisected as a continuous interval and
# rounded to its step, rather than enumerated.
_MAX_ENUMERATED = 10_000
# Points at which a regime predictor is queried inside a continuous interval.
_PREDICTOR_POINTS = 17
# A density's objective on the transfer curve's scale counts no lower than this (its median is
# 0, its top 1): how bad the bad half is says nothing about where the top is.
_CURVE_FLOOR = -1.0


@dataclass(frozen=True)
class _Observation:
    coord: float            # the trial's temperature on the cold -> hot axis
    label: int | None       # 0 = Regime I, 1 = connected (II-A/II-B), None = unknown
    value: float | None     # the objective of a COMPLETE trial
    pending: bool           # RUNNING or WAITING: value and regime still to come


class RegimeGuidedSampler(BaseSampler):
    """Optuna sampler that moves the temperature by the regimes of finished trials.

    Args:
        temperature_param: name of the parameter that is the temperature.
        knob: the temperature knob (a ``Knob`` or its registered name); its ``hotter`` direction
            turns "hotter"/"colder" into larger/smaller parameter values.
        inner: sampler for every other parameter (default ``TPESampler(seed=seed)``).
        seed: seed of the tie-breaking random generator.
        regime_predictor: optional callable ``temperature -> regime`` ("I", "II-A", "II-B" or
            ``None`` when it cannot tell) for temperatures not tried yet, e.g. a registered
            regime classifier evaluated at the study's density.
        regime_attr: the trial user attribute holding a trial's regime.
        resolution: for a continuous temperature, the fraction of the range below which the
            interval counts as pinned down and the sampler switches to exploitation.
        transfer: finished cells at other densities that steer the first choices.
        choice_wait_s: how long to wait for an earlier trial of another worker that is
            choosing its temperature at the same moment before replaying its choice.

    Note:
        The regime must be stored on the trial (``trial.set_user_attr(regime_attr, ...)``) by
        the objective; trials without it count as tried but carry no direction. FAILED trials
        are not repeated while untried temperatures remain (a cell that failed would likely
        fail again); PRUNED trials contribute their regime if they have one. RUNNING trials of
        other workers are never duplicated on a discrete space and split the interval, so that
        parallel workers bisect different pieces; a RUNNING trial that has not chosen its
        temperature yet (a worker choosing at the same moment) is waited for, up to
        ``choice_wait_s``, then has its choice replayed.
    """

    def __init__(
        self,
        temperature_param: str = "temperature",
        knob: Knob | str = "epochs",
        inner: BaseSampler | None = None,
        seed: int | None = None,
        regime_predictor: Callable[[float], str | None] | None = None,
        regime_attr: str = "regime",
        resolution: float = 0.01,
        transfer: TransferPrior | None = None,
        choice_wait_s: float = 5.0,
    ) -> None:
        self.temperature_param = temperature_param
        self.knob = get_knob(knob) if isinstance(knob, str) else knob
        self._inner = inner if inner is not None else TPESampler(seed=seed)
        self._seed = seed
        self._local = threading.local()      # the tie-breaking generator of the current choice
        self.regime_predictor = regime_predictor
        self.regime_attr = regime_attr
        if not 0 < resolution < 1:
            raise ValueError(f"resolution must be in (0, 1), got {resolution!r}")
        self.resolution = resolution
        self.transfer = transfer
        self.choice_wait_s = choice_wait_s

    # --- delegation ---------------------------------------------------------------------
    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The inner sampler's relative space without the temperature (sampled here)."""
        space = self._inner.infer_relative_search_space(study, trial)
        return {k: v for k, v in space.items() if k != self.temperature_param}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        return self._inner.sample_relative(study, trial, search_space)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        # Our tie-breaks already differ per trial (seeded by the trial number) and must stay
        # the same in every worker, so that a worker can replay another's choice: only the
        # inner sampler is reseeded.
        self._inner.reseed_rng()

    @property
    def _rng(self) -> np.random.RandomState:
        return self._local.rng

    def _rng_for(self, study: optuna.Study, number: int) -> np.random.RandomState:
        """The tie-breaking generator of trial ``number``: the same in every worker process
        (seeded by the sampler's seed, or by the study's name when it has none)."""
        base = self._seed if self._seed is not None else zlib.crc32(study.study_name.encode())
        state = np.random.SeedSequence([int(base) % 2**32, number]).generate_state(1)[0]
        return np.random.RandomState(int(state))

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if param_name != self.temperature_param:
            return self._inner.sample_independent(study, trial, param_name, param_distribution)
        self._raise_error_if_multi_objective(study)
        maximize = study.direction == StudyDirection.MAXIMIZE
        space = _Space.of(param_distribution, self.knob, self.temperature_param)
        self._wait_for_earlier_choices(study, trial)
        # ONE pass over the trials for both the history and who is choosing now: with two
        # reads, a trial storing its temperature between them would be in neither list
        history, choosing = self._observations(study.get_trials(deepcopy=False), trial, space)
        choose = self._sample_discrete if space.values is not None else self._sample_continuous

        def choice_of(number: int) -> Any:
            # A trial's choice depends only on the trials asked before it (lower numbers) and
            # on its own tie-breaks, so any worker can replay it.
            self._local.rng = self._rng_for(study, number)
            return choose(space, [obs for n, obs in history if n < number], maximize)

        # Workers that asked for their trials before this one and have not chosen a temperature
        # yet are choosing it now from the same history: replay their choices in trial order and
        # count them as running, so that simultaneous workers take the 1st, 2nd, ... choice
        # instead of all taking the same one.
        for number in choosing:
            coord = space.coord_of(float(choice_of(number)))
            if coord is not None:
                history.append((number, _Observation(coord, None, None, True)))
        return choice_of(trial.number)

    def _wait_for_earlier_choices(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Give workers that asked before ``trial`` and are choosing now time to store it.

        A choice takes milliseconds; waiting for it (bounded by ``choice_wait_s``) makes the
        history exact. Replaying alone is not enough: between the other worker's read and
        ours an earlier trial may have finished, so our replay of its choice, made from a
        newer history, can differ from the choice it made (seen on PostgreSQL: two workers
        took the same temperature). Trials still choosing after the wait (a crashed worker)
        are replayed.
        """
        deadline = time.monotonic() + self.choice_wait_s
        while self._choosing_now(study, trial) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _choosing_now(self, study: optuna.Study, trial: FrozenTrial) -> list[int]:
        """Numbers of the RUNNING trials before ``trial`` without a temperature yet.

        (A trial left RUNNING by a crashed worker before it chose counts too, until it is
        marked FAILED: it costs the later trials their first choice, never a duplicate.)
        """
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return sorted(t.number for t in running if self._is_choosing(t, trial))

    def _is_choosing(self, other: FrozenTrial, trial: FrozenTrial) -> bool:
        """``other`` asked before ``trial``, is RUNNING and has no temperature yet."""
        return (other.state == TrialState.RUNNING and other.number < trial.number
                and self.temperature_param not in other.params)

    # --- reading the history ------------------------------------------------------------
    def _observations(
        self, trials: Sequence[FrozenTrial], trial: FrozenTrial, space: _Space
    ) -> tuple[list[tuple[int, _Observation]], list[int]]:
        """Every other trial of ``trials`` with a temperature in ``space``, with its number;
        and, from the same pass, the numbers of the RUNNING trials before ``trial`` that have
        no temperature yet (see :meth:`_choosing_now`)."""
        observations, choosing = [], []
        for other in trials:
            if other.number == trial.number:
                continue
            if self._is_choosing(other, trial):
                choosing.append(other.number)
            value = other.params.get(self.temperature_param)
            if value is None and other.state == TrialState.WAITING:
                value = other.system_attrs.get("fixed_params", {}).get(self.temperature_param)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            coord = space.coord_of(float(value))
            if coord is None:
                continue
            regime = other.user_attrs.get(self.regime_attr)
            label = 0 if regime == REGIME_I else 1 if regime in CONNECTED_REGIMES else None
            pending = other.state in (TrialState.RUNNING, TrialState.WAITING)
            objective = other.value if other.state == TrialState.COMPLETE else None
            if objective is not None and not math.isfinite(objective):
                objective = None
            observations.append((other.number, _Observation(coord, None if pending else label,
                                                            objective, pending)))
        return observations, sorted(choosing)

    def _predict(self, temperature: float) -> int | None:
        regime = self.regime_predictor(temperature) if self.regime_predictor else None
        return 0 if regime == REGIME_I else 1 if regime in CONNECTED_REGIMES else None

    # --- discrete temperatures ----------------------------------------------------------
    def _sample_discrete(
        self, space: _Space, observations: list[_Observation], maximize: bool
    ) -> Any:
        n = len(space.values)
        positions = {obs.coord for obs in observations}
        free = [p for p in range(n) if p not in positions]
        if not free:
            # Everything is tried or running: re-evaluate the best (a cache hit in live tuning).
            best = self._best_position(observations, maximize)
            return space.values[best if best is not None else self._rng.randint(n)]
        # Boundary s in 0..n: positions < s are Regime I; the optimum for s is min(s, n - 1).
        kept = _min_disagreement_splits(observations, n)
        scores = None
        if self.transfer is not None:
            pseudo, scores = self.transfer.on(space)
            # what the other densities imply steers; the study's own trials decide
            costs = {s: _disagreements(pseudo, s) for s in kept}
            kept = [s for s in kept if costs[s] == min(costs.values())]
            if self.transfer.curve and not self.transfer.rule_holds:
                # the coldest connected temperature was not the best at the other densities:
                # their curve, corrected by this study's own values, ranks the temperatures
                predicted = self.transfer.predict(space, observations, maximize)
                allowed = [p for p in free if p >= min(kept) and p in predicted]
                allowed = allowed or [p for p in free if p in predicted]
                if allowed:
                    top = max(predicted[p] for p in allowed)
                    # equal predictions: the colder (colder training helps a connected cell)
                    return space.values[min(p for p in allowed
                                            if math.isclose(predicted[p], top))]
            if scores and not self.transfer.rule_holds:
                # (a prior without a curve) the neighbours' scores rank the temperatures
                allowed = [p for p in free if p >= min(kept) and p in scores]
                allowed = allowed or [p for p in free if p in scores]
                if allowed:
                    top = max(scores[p] for p in allowed)
                    # equal scores: the colder (colder training helps a connected cell)
                    return space.values[min(p for p in allowed if math.isclose(scores[p], top))]
            if scores and not any(obs.value is not None or obs.label is not None
                                  for obs in observations):
                # the start: the temperature the other densities predict best, among those
                # the kept boundaries allow to be connected
                allowed = [p for p in free if p >= min(kept) and p in scores]
                allowed = allowed or [p for p in free if p in scores]
                if allowed:
                    top = max(scores[p] for p in allowed)
                    # equal scores: the colder (colder training helps a connected cell)
                    return space.values[min(p for p in allowed if math.isclose(scores[p], top))]
        targets = {min(s, n - 1) for s in kept}
        candidates = [p for p in free if p in targets]
        if candidates:
            if self.regime_predictor is not None:
                choice = self._predicted_discrete(space, candidates, kept, observations)
                if choice is not None:
                    return space.values[choice]
            return space.values[self._bisect_discrete(space, candidates, scores)]
        return space.values[self._exploit_discrete(space, observations, free, maximize, scores)]

    def _bisect_discrete(self, space: _Space, candidates: list[int],
                         scores: dict[int, float] | None = None) -> int:
        pieces: list[list[int]] = []
        for p in sorted(candidates):
            if pieces and pieces[-1][-1] == p - 1:
                pieces[-1].append(p)
            else:
                pieces.append([p])
        longest = max(len(piece) for piece in pieces)
        piece = pieces[self._pick([i for i, pc in enumerate(pieces) if len(pc) == longest])]
        middle = (space.coords[piece[0]] + space.coords[piece[-1]]) / 2
        gaps = [abs(space.coords[p] - middle) for p in piece]
        ties = [piece[i] for i, g in enumerate(gaps) if math.isclose(g, min(gaps))]
        # Two middles: on a piece at one end of the grid take the one nearer that end. It costs
        # nothing on average and puts the end cell (the optimum at very low density, hottest,
        # or at high density, coldest) one trial earlier.
        cold_end, hot_end = piece[0] == 0, piece[-1] == len(space.values) - 1
        if len(ties) > 1 and cold_end != hot_end:
            return ties[0] if cold_end else ties[-1]
        if scores and len(ties) > 1 and any(p in scores for p in ties):
            # two middles inside the grid: the one the grid's other densities predict better
            top = max(scores.get(p, -math.inf) for p in ties)
            ties = [p for p in ties if math.isclose(scores.get(p, -math.inf), top)]
        return ties[self._pick(list(range(len(ties))))]

    def _predicted_discrete(
        self,
        space: _Space,
        candidates: list[int],
        kept: list[int],
        observations: list[_Observation],
    ) -> int | None:
        predicted = [
            _Observation(float(p), self._predict(space.values[p]), None, False)
            for p in candidates
        ]
        if all(obs.label is None for obs in predicted):
            return None
        # Among the boundaries the observations allow, the one the predictions contradict least.
        costs = {s: _disagreements(predicted, s) for s in kept}
        best = min(costs.values())
        chosen = sorted({min(s, len(space.values) - 1) for s, c in costs.items() if c == best})
        chosen = [p for p in chosen if p in candidates]
        if not chosen:
            return None
        return self._bisect_discrete(space, chosen)

    def _exploit_discrete(
        self, space: _Space, observations: list[_Observation], free: list[int], maximize: bool,
        scores: dict[int, float] | None = None,
    ) -> int:
        best = self._best_position(observations, maximize)
        if best is None:
            return free[self._pick(list(range(len(free))))]
        distance = [abs(space.coords[p] - space.coords[best]) for p in free]
        nearest = [i for i, d in enumerate(distance) if math.isclose(d, min(distance))]
        if scores and len(nearest) > 1 and any(free[i] in scores for i in nearest):
            # two neighbours of the best: the one the other densities predict better
            top = max(scores.get(free[i], -math.inf) for i in nearest)
            nearest = [i for i in nearest if math.isclose(scores.get(free[i], -math.inf), top)]
        return free[self._pick(nearest)]

    def _best_position(self, observations: list[_Observation], maximize: bool) -> int | None:
        scored = [obs for obs in observations if obs.value is not None]
        if not scored:
            return None
        sign = 1.0 if maximize else -1.0
        top = max(sign * obs.value for obs in scored)
        tied = sorted({int(obs.coord) for obs in scored if sign * obs.value == top})
        return tied[self._pick(list(range(len(tied))))]

    # --- continuous temperatures --------------------------------------------------------
    def _sample_continuous(
        self, space: _Space, observations: list[_Observation], maximize: bool
    ) -> float:
        lo, hi = space.lo, space.hi
        min_width = self.resolution * (hi - lo)
        known = sorted({obs.coord for obs in observations})
        gaps = _continuous_gaps(observations, known, lo, hi)
        # Split the kept gaps at every tried or running coordinate: pieces to bisect.
        pieces = []
        for a, b in gaps:
            cuts = [a] + [c for c in known if a < c < b] + [b]
            pieces.extend((x, y) for x, y in zip(cuts, cuts[1:], strict=False) if y - x > 0)
        pieces = [(a, b) for a, b in pieces if b - a >= min_width]
        if pieces:
            if self.regime_predictor is not None:
                coord = self._predicted_continuous(space, pieces)
                if coord is not None:
                    return space.value_of(coord)
            widest = max(b - a for a, b in pieces)
            ties = [i for i, (a, b) in enumerate(pieces) if math.isclose(b - a, widest)]
            a, b = pieces[self._pick(ties)]
            return space.value_of((a + b) / 2)
        scored = [obs for obs in observations if obs.value is not None]
        if not scored:
            return space.value_of(self._rng.uniform(lo, hi))
        sign = 1.0 if maximize else -1.0
        best = max(scored, key=lambda obs: sign * obs.value).coord
        return space.value_of(float(np.clip(best + self._rng.uniform(-1, 1) * min_width, lo, hi)))

    def _predicted_continuous(
        self, space: _Space, pieces: list[tuple[float, float]]
    ) -> float | None:
        points = sorted(
            a + (b - a) * (k + 0.5) / _PREDICTOR_POINTS
            for a, b in pieces for k in range(_PREDICTOR_POINTS)
        )
        predicted = [_Observation(float(i), self._predict(space.value_of(c)), None, False)
                     for i, c in enumerate(points)]
        if all(obs.label is None for obs in predicted):
            return None
        costs = [_disagreements(predicted, s) for s in range(len(points) + 1)]
        best = [s for s, c in enumerate(costs) if c == min(costs)]
        s = best[len(best) // 2]
        return points[min(s, len(points) - 1)]

    def _pick(self, options: list[int]) -> int:
        """One of ``options`` (indices), uniformly with the seeded generator; no draw for one."""
        return options[0] if len(options) == 1 else options[self._rng.randint(len(options))]


@dataclass
class _Space:
    """A temperature distribution seen on the cold -> hot axis.

    Discrete spaces (categorical, or stepped with at most ``_MAX_ENUMERATED`` values) list their
    values from the coldest to the hottest; ``coords`` are positions (categorical: the index, so
    bisection follows the user's own grid spacing) or the cold->hot oriented (log) value.
    Continuous spaces have ``values=None`` and an oriented coordinate interval [lo, hi].
    """

    distribution: BaseDistribution
    sign: float                 # +1 if larger values are hotter, else -1
    log: bool
    values: list | None
    coords: list[float] | None
    lo: float
    hi: float

    @classmethod
    def of(cls, dist: BaseDistribution, knob: Knob, name: str) -> _Space:
        sign = 1.0 if knob.hotter == HOTTER_HIGHER else -1.0
        if isinstance(dist, CategoricalDistribution):
            bad = [c for c in dist.choices
                   if isinstance(c, bool) or not isinstance(c, (int, float))]
            if bad:
                raise ValueError(
                    f"temperature parameter {name!r} must have numeric choices; got {bad!r}")
            values = cold_to_hot(knob.name, dist.choices)
            coords = [float(i) for i in range(len(values))]
            return cls(dist, sign, False, values, coords, 0.0, float(len(values) - 1))
        if not isinstance(dist, (FloatDistribution, IntDistribution)):
            raise ValueError(f"unsupported distribution for {name!r}: {dist!r}")
        log = bool(dist.log)
        step = dist.step
        ends = [cls._oriented(sign, log, dist.low), cls._oriented(sign, log, dist.high)]
        lo, hi = min(ends), max(ends)
        if step is not None:
            count = int(round((dist.high - dist.low) / step)) + 1
            if count <= _MAX_ENUMERATED:
                raw = [min(dist.low + k * step, dist.high) for k in range(count)]
                kind = int if isinstance(dist, IntDistribution) else float
                values = cold_to_hot(knob.name, [kind(v) for v in raw])
                coords = [cls._oriented(sign, log, v) for v in values]
                return cls(dist, sign, log, values, coords, lo, hi)
        return cls(dist, sign, log, None, None, lo, hi)

    @staticmethod
    def _oriented(sign: float, log: bool, value: float) -> float:
        return sign * (math.log(value) if log else value)

    def coord_of(self, value: float) -> float | None:
        """Position (discrete) or coordinate (continuous) of a value; ``None`` if not in space."""
        if self.values is not None:
            for i, v in enumerate(self.values):
                if math.isclose(float(v), value, rel_tol=1e-9, abs_tol=1e-12):
                    return float(i)
            return None
        if self.log and value <= 0:
            return None
        coord = self._oriented(self.sign, self.log, value)
        return coord if self.lo - 1e-12 <= coord <= self.hi + 1e-12 else None

    def value_of(self, coord: float) -> float:
        """The distribution's value at a continuous coordinate, rounded to its step, in range."""
        dist = self.distribution
        x = coord * self.sign
        value = math.exp(x) if self.log else x
        if dist.step is not None:
            value = dist.low + round((value - dist.low) / dist.step) * dist.step
        value = min(max(value, dist.low), dist.high)
        return int(round(value)) if isinstance(dist, IntDistribution) else float(value)


def _disagreements(observations: Sequence[_Observation], split: float) -> int:
    """Labelled observations contradicting the boundary ``split`` (I below, connected above)."""
    return sum(
        1 for obs in observations
        if obs.label is not None and (obs.label == 1) != (obs.coord >= split)
    )


def _min_disagreement_splits(observations: Sequence[_Observation], n: int) -> list[int]:
    costs = [_disagreements(observations, s) for s in range(n + 1)]
    return [s for s, c in enumerate(costs) if c == min(costs)]


def _continuous_gaps(
    observations: Sequence[_Observation], known: list[float], lo: float, hi: float
) -> list[tuple[float, float]]:
    """The coordinate intervals in which a boundary contradicts the fewest labelled trials."""
    edges = [lo] + [c for c in known if lo < c < hi] + [hi]
    gaps = list(zip(edges, edges[1:], strict=False))
    # A boundary inside (a, b) counts a trial at b as connected-side, one at a as Regime-I side.
    costs = [_disagreements(observations, (a + b) / 2) for a, b in gaps]
    best = min(costs)
    return [gap for gap, c in zip(gaps, costs, strict=True) if c == best]


# --- transfer from the other densities of a grid ------------------------------------------

@dataclass(frozen=True)
class TransferPrior:
    """What the finished cells of a grid's other densities say about a target density.

    Attributes:
        regimes: temperature -> 0 (Regime I) or 1 (connected), where the other densities
            imply it under "denser is better connected" (the coldest connected temperature
            moves monotonically with density): a connected cell at a sparser density makes
            every temperature as hot or hotter connected here, a Regime-I cell at a denser
            density makes every temperature as cold or colder Regime I here.
        scores: temperature -> score in [0, 1] of being the best here, from the nearest sparser
            and the nearest denser density (weights linear in log density; one side only at
            an end of the grid): with a = how well the two agree on the top (the smaller of
            each one's closeness to its top at the other's best temperature), a x their
            weighted closeness to their top at the temperature + (1 - a) x its closeness to
            their best ranks (cold -> hot) interpolated in log density (1 there, falling
            linearly to 0 at the far end of the axis). A density's closeness to its top is 1
            at its best objective and falls linearly to 0 at its median objective.
        densities: the densities the prediction came from.
        rule_holds: whether at each of them (at an end of the grid: at the two nearest
            densities) the coldest connected temperature was a best one (Algorithm 1's
            premise); if not, the sampler follows ``curve`` (or, without one,
            the scores) instead of bisecting towards the coldest connected temperature.
        curve: temperature -> the prior mean of the target density's objective on a common
            scale: every other density's objective as (value - its median) / (its top - its
            median), floored at -1 (only the top half matters), averaged over ALL the other
            densities with Gaussian weights in log density (bandwidth: the grid's median
            step in log density). Averaging several densities smooths the seed noise that
            decides the best cell of any single one.
        center, scale: the weighted median and (geometric) top-minus-median of the other
            densities: they put the study's own values on the curve's scale.
    """

    regimes: dict[float, int]
    scores: dict[float, float]
    densities: tuple[float, ...] = ()
    rule_holds: bool = True
    curve: dict[float, float] = field(default_factory=dict)
    center: float = 0.0
    scale: float = 1.0

    def on(self, space: _Space) -> tuple[list[_Observation], dict[int, float]]:
        """Pseudo-observations of the implied regimes and the scores, by position of a
        discrete ``space``."""
        pseudo, scores = [], {}
        for t, label in self.regimes.items():
            coord = space.coord_of(float(t))
            if coord is not None:
                pseudo.append(_Observation(coord, label, None, False))
        for t, score in self.scores.items():
            coord = space.coord_of(float(t))
            if coord is not None:
                scores[int(coord)] = float(score)
        return pseudo, scores

    def predict(self, space: _Space, observations: Sequence[_Observation],
                maximize: bool = True) -> dict[int, float]:
        """The target's objective (on the curve's scale, higher is better) per position of a
        discrete ``space``: ``curve`` plus a correction fitted to the study's finished trials.

        The correction is the posterior mean of a Gaussian process on the position (cold ->
        hot) made of four equal parts: a constant (the target's level, which the other
        densities only estimate), a linear trend over the range (the top moved colder or
        hotter than at the other densities), a smooth part (squared-exponential, one position)
        that moves neighbouring temperatures together, and a per-cell part (seed noise); only
        their ratios matter for the mean. Without finished trials it is ``curve`` itself. A
        trial that measured less than predicted lowers its neighbours most, and the rest
        through the level and the trend; one that measured more raises them.
        """
        mean: dict[int, float] = {}
        for t, value in self.curve.items():
            coord = space.coord_of(float(t))
            if coord is not None:
                mean[int(coord)] = float(value)
        sign = 1.0 if maximize else -1.0
        measured: dict[int, list[float]] = {}
        for obs in observations:
            if obs.value is not None and int(obs.coord) in mean:
                z = max(_CURVE_FLOOR, (sign * obs.value - self.center) / self.scale)
                measured.setdefault(int(obs.coord), []).append(z)
        if not measured:
            return mean
        tried = sorted(measured)
        residual = np.array([np.mean(measured[p]) - mean[p] for p in tried])

        middle = (min(mean) + max(mean)) / 2
        half = max((max(mean) - min(mean)) / 2, 1.0)

        def kernel(a: int, b: int) -> float:
            return (1.0 + math.exp(-0.5 * (a - b) ** 2)
                    + (a - middle) * (b - middle) / half ** 2)

        gram = np.array([[kernel(a, b) for b in tried] for a in tried])
        gram += np.diag([1.0 / len(measured[p]) for p in tried])
        weights = np.linalg.solve(gram, residual)
        return {p: m + float(sum(kernel(p, b) * w for b, w in zip(tried, weights, strict=True)))
                for p, m in mean.items()}


def _top_median_scale(values: Any) -> tuple[float, float, float]:
    """One density's best and median objective and its own scale: the spread above the
    median, or above the worst where half the cells tie at the top (0 when all tie)."""
    top, middle = float(values.max()), float(values.median())
    return top, middle, top - middle if top > middle else top - float(values.min())


def _closeness_to_top(values: Any) -> dict[float, float]:
    """Per temperature of one density: 1 at its best objective, falling linearly to 0 at the
    median objective and below (the spread above the median is the density's own scale; the
    spread above the worst where half the cells tie at the top; all 1 when all tie)."""
    top, middle, scale = _top_median_scale(values)
    if not scale > 0:
        return {float(t): 1.0 for t in values.index}
    return {float(t): float(min(1.0, max(0.0, 1.0 + (v - top) / scale)))
            for t, v in values.items()}


def transfer_prior(cells: Any, density: float, knob: Knob | str,
                   objective_column: str = "val_acc", maximize: bool = True) -> TransferPrior:
    """A :class:`TransferPrior` for ``density`` from finished cells of other densities.

    ``cells``: a DataFrame (or records) with ``temperature``, ``density``, ``regime`` (I, II-A,
    II-B or missing) and ``objective_column``; rows at ``density`` itself are ignored (the
    study's own trials cover them), rows of one (temperature, density) are averaged.
    """
    import pandas as pd

    knob = get_knob(knob) if isinstance(knob, str) else knob
    df = pd.DataFrame(cells)
    if df.empty:
        return TransferPrior({}, {}, ())
    others = df[~np.isclose(df["density"].to_numpy(dtype=float), float(density))]
    order = {float(t): i for i, t in enumerate(cold_to_hot(knob.name, sorted(
        {float(t) for t in df["temperature"]})))}
    regimes: dict[float, int] = {}
    connected_at = {}   # per sparser density: the coldest connected rank
    regime_i_at = {}    # per denser density: the hottest Regime-I rank
    for d, rows in others.groupby("density"):
        labels = rows.dropna(subset=["regime"])
        ranks_c = [order[float(t)] for t, r in zip(labels["temperature"], labels["regime"],
                                                    strict=True) if r in CONNECTED_REGIMES]
        ranks_i = [order[float(t)] for t, r in zip(labels["temperature"], labels["regime"],
                                                    strict=True) if r == REGIME_I]
        if d < density and ranks_c:
            connected_at[d] = min(ranks_c)
        if d > density and ranks_i:
            regime_i_at[d] = max(ranks_i)
    if connected_at:
        coldest = min(connected_at.values())
        regimes.update({t: 1 for t, r in order.items() if r >= coldest})
    if regime_i_at:
        hottest = max(regime_i_at.values())
        for t, r in order.items():
            if r <= hottest:
                regimes[t] = 0 if t not in regimes else regimes[t]
    sign = 1.0 if maximize else -1.0
    best_rank: dict[float, float] = {}
    closeness: dict[float, dict[float, float]] = {}
    rule_at: dict[float, bool] = {}
    for d in sorted(float(d) for d in others["density"].unique()):
        rows = others[np.isclose(others["density"].to_numpy(dtype=float), d)]
        values = rows.groupby("temperature")[objective_column].mean().dropna() * sign
        if len(values) < 2:
            continue
        top = values.max()
        # the density's best temperature (ties: the coldest), as a rank on the cold -> hot axis
        best_rank[d] = float(min(order[float(t)] for t, v in values.items() if v == top))
        closeness[d] = _closeness_to_top(values)
        labels = rows.dropna(subset=["regime"]).groupby("temperature")["regime"].first()
        connected = [float(t) for t, r in labels.items() if r in CONNECTED_REGIMES]
        coldest = min(connected, key=lambda t: order[t]) if connected else None
        # does "the best is the coldest connected temperature" pick this density's best?
        rule_at[d] = coldest is not None and closeness[d].get(coldest, 0.0) == 1.0
    sparser = [d for d in best_rank if d < density]
    denser = [d for d in best_rank if d > density]
    if sparser and denser:
        s_d, d_d = max(sparser), min(denser)
        x = math.log(density / s_d) / math.log(d_d / s_d)
        predicted = best_rank[s_d] + x * (best_rank[d_d] - best_rank[s_d])
        weights = {s_d: 1.0 - x, d_d: x}
        # do the two neighbours agree on where the top is? each one's closeness to the top at
        # the other's best temperature (1: the other's best is as good as its own)
        best_t = {d: min((t for t in closeness[d] if closeness[d][t] == 1.0),
                         key=lambda t: order[float(t)]) for d in (s_d, d_d)}
        agreement = min(closeness[s_d].get(best_t[d_d], 0.0),
                        closeness[d_d].get(best_t[s_d], 0.0))
    elif sparser or denser:
        nearest = max(sparser) if sparser else min(denser)
        predicted, weights, agreement = best_rank[nearest], {nearest: 1.0}, 1.0
    else:
        return TransferPrior(regimes, {}, ())
    used = list(weights)
    curve, center, scale = _transfer_curve(others, density, objective_column, sign)
    span = max(len(order) - 1, 1)
    scores = {}
    for t, r in order.items():
        by_rank = 1.0 - abs(r - predicted) / span
        by_value = sum(w * closeness[d].get(t, 0.0) for d, w in weights.items())
        scores[t] = agreement * by_value + (1.0 - agreement) * by_rank
    # Algorithm 1's premise needs two densities that confirm it: the two around the target, or
    # at an end of the grid (an extrapolation) the two nearest on its one side
    side = sorted(sparser or denser, key=lambda d: abs(math.log(d / density)))
    confirming = used if len(used) > 1 else side[:2]
    return TransferPrior(regimes, scores, tuple(used), all(rule_at[d] for d in confirming),
                         curve, center, scale)


def _transfer_curve(others: Any, density: float, objective_column: str,
                    sign: float) -> tuple[dict[float, float], float, float]:
    """``TransferPrior.curve``, ``center`` and ``scale`` from the other densities' rows."""
    levels: dict[float, tuple[float, float, Any]] = {}
    for d, rows in others.groupby("density"):
        values = rows.groupby("temperature")[objective_column].mean().dropna() * sign
        if len(values) < 2:
            continue
        _, middle, scale = _top_median_scale(values)
        if scale > 0:
            levels[float(d)] = (middle, scale, ((values - middle) / scale).clip(
                lower=_CURVE_FLOOR))
    if not levels:
        return {}, 0.0, 1.0
    logs = np.log(sorted({*levels, float(density)}))
    steps = np.diff(logs)
    bandwidth = float(np.median(steps[steps > 0])) if (steps > 0).any() else 1.0
    weight = {d: math.exp(-0.5 * (math.log(d / density) / bandwidth) ** 2) for d in levels}
    if not sum(weight.values()) > 0:      # all far beyond the bandwidth: the nearest alone
        nearest = min(levels, key=lambda d: abs(math.log(d / density)))
        weight = {d: float(d == nearest) for d in levels}
    total: dict[float, float] = {}
    norm: dict[float, float] = {}
    for d, (_, _, z) in levels.items():
        for t, v in z.items():
            total[float(t)] = total.get(float(t), 0.0) + weight[d] * float(v)
            norm[float(t)] = norm.get(float(t), 0.0) + weight[d]
    curve = {t: total[t] / norm[t] for t in total if norm[t] > 0}
    w_sum = sum(weight.values())
    center = sum(weight[d] * levels[d][0] for d in levels) / w_sum
    scale = math.exp(sum(weight[d] * math.log(levels[d][1]) for d in levels) / w_sum)
    return curve, center, scale
