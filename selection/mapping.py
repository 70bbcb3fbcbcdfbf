"""Adaptive regime mapping: the regime map and the best temperature per density from a
fraction of a grid's cells (active learning over the temperature x density grid).

A *point* is one (temperature, density) of the grid; running it runs its cell for every dense
seed of the config. The loop (ours; the paper runs every cell):

1. **Initial design**: the four corners of the grid, then cells spread by a max-min distance
   rule (each new cell the farthest from those chosen, ties broken by the seed), ``n_init``
   in all (default: max(5, 10% of the points)).
2. **Labels**: the finished cells are labelled by the project's labeller
   (:func:`label_points`: ``selection.regimes.label_grid`` with its resampled probabilities
   when available, else the rule labels with probabilities 0/1), on the finished cells only,
   relabelled every round as cells arrive; the labeller's pooled eps also counts the
   unfinished cells, their barriers predicted (:func:`label_points` with ``axes``).
3. **Models** over grid coordinates (x = rank of the temperature from cold 0 to hot 1,
   y = rank of the density from sparse 0 to dense 1: the grid's own spacing, so the model is
   the same for a log-spaced or a linear grid):
   - the regime, as two Gaussian-process regressions of soft indicators (fixed kernels, so
     that a fit is deterministic and the effect of one more observation is exact): ``I`` vs
     ``II`` on target ``2 p_I - 1`` and, among Regime-II cells, ``II-B`` vs ``II-A`` on
     ``2 p_IIB - 1`` (a cell's weight in the second falls with its p_I). A point's
     probability is ``Phi(mean / sqrt(var + KAPPA))``: far from every finished cell the mean
     reverts to 0 and the point is uncertain (0.5). A point is ``I`` iff ``p_I >= 0.5``, else
     ``II-B`` iff ``p_IIB >= 0.5``, else ``II-A`` (the labeller's own order).
   - the fine-tuned test accuracy, a Gaussian-process regression (density main effect plus a
     temperature x density term, fixed hyperparameters on standardised accuracies; the
     measurement noise, in accuracy units, the level of ``ACC_NOISE_LEVELS`` of highest
     marginal likelihood); the probability that each temperature is the best of its density
     is estimated by joint posterior samples of the cells' MEASURED values (noise included),
     in which finished cells keep their measured value. The reported best
     temperature of a density is the most probable among those RUN there (the measured
     best; an unrun temperature is only a prediction), with that probability as its
     support; with none run there, the most probable of the row.
4. **Next batch** (:func:`choose_batch`): each unfinished point scores its expected change of
   the map, ``sum over its possible labels (weighted by their probability) of the number of
   points whose predicted label would flip``, computed exactly by the rank-one GP update,
   plus the look-ahead relabelling (:func:`relabel_flips`: the expected number of FINISHED
   points the labeller would relabel once the candidate's cells arrive, its barrier drawn
   from a GP of the signed log barrier; the labeller judges a density by its whole column,
   so one cell can relabel finished cells that the GPs above take as fixed), plus its
   probability of being the best temperature of its density times the number of
   temperatures (a label is 1/cells of the map, a best temperature 1/densities of the best
   temperatures: so both goals weigh alike). That probability is exactly how much running
   the point lowers the chance that its density's best is missed (that an unrun cell beats
   every run one): the miss happens without it and not with it iff the point is the best.
   A density's reported best that the temperatures run there do not bracket (it is the
   coldest or the hottest of them, with an unrun temperature beyond it) is an
   extrapolation the accuracy model cannot be trusted with: an RBF GP reverts to its mean
   past its data and borrows the neighbouring densities' shape. The unrun temperature next
   to it on that side scores at least the best's own probability
   (:func:`best_scores`, ``UNBRACKETED_SHARE``).
   Batches are picked greedily (variances updated after each pick). With a knob other than
   ``epochs`` a batch that shares one dense run (one temperature) is preferred when it keeps
   at least ``1 - GROUP_SLACK`` of the best batch's score: its cells train from one
   checkpoint as one multi-member model. (With ``epochs`` every temperature is a checkpoint
   of one dense run.)
5. **Stop** at the budget, or when the map is settled (:class:`StopRule`): no predicted
   label and no density's reported best temperature changed for ``patience`` rounds, every
   unfinished point's label has probability >= ``1 - max_uncertainty``, and every density's
   best temperature has probability >= ``best_confidence``.

A point whose cells fail (a diverging fine-tune) is a *failed* point
(:attr:`MapPrediction.failed`): the loop goes on without it (never chosen again in that
process, never a best, not waited on by the stop rule; its label is predicted); running the
same map again retries it once. A replayed table's holes are failed points from the start.

The replay (:func:`replay`) runs the same loop on a finished table, one cell at a time
revealed from the table, against two orders of the same cells through the same models:
random, and coarse to fine (every other temperature and density first).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.linalg import cho_factor, cho_solve
from scipy.stats import norm
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from selection import regimes
from selection._validate import one_knob
from selection.regimes import REGIME_I, REGIME_II_A, REGIME_II_B, REGIMES, RegimeWarning
from tracking import keys
from tracking.knobs import cold_to_hot

__all__ = [
    "GridAxes", "MapPrediction", "MapResult", "StopRule", "Round", "ReplayCurves", "P_REGIME_I",
    "active_choices", "run_map", "plot_map", "plot_replay",
    "P_REGIME_IIB", "coarse_to_fine_order", "choose_batch", "default_batch_size",
    "default_n_init", "initial_design", "label_points", "predict_map", "relabel_flips",
    "replay", "expected_map_change", "predicted_barriers", "best_scores",
    "replay_summary", "best_reproducibility", "label_reproducibility",
]

P_REGIME_I = keys.P_REGIME_I       # probability of Regime I
P_REGIME_IIB = keys.P_REGIME_IIB   # probability of II-B among Regime II
P_LABEL = "p_label"                # column of the map: probability of the predicted label
LABEL_METHOD = "label_method"      # column of label_grid's table

# Regime model (ours, tuned by replay on the demo table and the finer synthetic grid of
# bench/map.py): kernel length scale in rank units, the noise of an observed indicator, and
# the calibration term of the probit link.
LENGTH_SCALE = 0.35
INDICATOR_NOISE = 0.05
KAPPA = 0.2
GROUP_SLACK = 0.25
BEST_SAMPLES = 256
# a cell's chance of deciding its density's best temperature, times the number of
# temperatures: the two goals weigh alike (a label is 1/cells of the map, a best temperature
# 1/densities of the best temperatures); BEST_WEIGHT scales that
BEST_WEIGHT = 1.0
# the accuracy GP's measurement noise (standard deviation, accuracy units): the level of
# ACC_NOISE_LEVELS (those below the cap, and the cap) of highest marginal likelihood, from
# ACC_NOISE_MIN_CELLS finished cells on; the cap and, with fewer cells, the noise:
# ACC_NOISE_DEFAULT x the accuracies' spread (uncapped, demo_fine's misfit passed for noise:
# 1.2 points, 20 seeds 53 -> 58.5 cells for both goals)
ACC_NOISE_LEVELS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02)
ACC_NOISE_MIN_CELLS = 5
ACC_NOISE_DEFAULT = 0.1         # the fallback and the cap: this fraction of the spread
# look-ahead relabelling (relabel_flips): its weight in the score, the barrier's scale of the
# signed log transform, the noise of the standardised barrier/CKA regressions
RELABEL_WEIGHT = 1.0
# 3-point Gauss-Hermite rule for an expectation over a normal: nodes (in standard deviations)
# and weights
RELABEL_NODES = ((-math.sqrt(3), 1 / 6), (0.0, 2 / 3), (math.sqrt(3), 1 / 6))
BARRIER_SCALE = 0.01
MEASURE_NOISE = 0.05
BEST_AMONG_RUN = True
# the unrun temperature just beyond a density's unbracketed reported best (see best_scores)
# scores this share of the best's probability at least (ours, by replay; cells for both goals,
# medians: the paper-like draws 1 / 2 / 3, 8 seeds, 34 / 45 / 41.5 of 90 without it and
# 29 / 33 / 36 with it; demo 18 -> 18, demo_fine 54.5 -> 53.5, 20 seeds; the same share for
# every unrun neighbour of the best, bracketed or not, cost demo 3 cells and demo_fine 2.5)
UNBRACKETED_SHARE = 1.0
BEST_CONFIDENCE = 0.8       # a reported best "found" at this probability (StopRule's default)
BEST_TOLERANCE = 0.002      # replay: "within" = test accuracy within 0.2 points of the best

# params of a map run (the MLflow run of run_map): the settings that steer it. Here, not in
# tracking.keys: only the map run has them (its knob, grid and dense seeds use tracking.keys)
PARAM_N_INIT = "n_init"
PARAM_BATCH_SIZE = "batch_size"     # points per round (not the training batch size knob)
PARAM_SEED = "seed"
PARAM_EPS = "eps"
PARAM_TAU = "tau"
PARAM_STOP_PATIENCE = "stop_patience"
PARAM_STOP_MAX_UNCERTAINTY = "stop_max_uncertainty"
PARAM_STOP_BEST_CONFIDENCE = "stop_best_confidence"
PARAM_LENGTH_SCALE = "length_scale"
PARAM_KAPPA = "kappa"


# --- the grid -------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridAxes:
    """The candidate points: temperatures (cold to hot) x densities (ascending).

    Point ``p`` is temperature ``temperatures[p // n_densities]`` at density
    ``densities[p % n_densities]``.
    """

    knob: str
    temperatures: tuple[float, ...]
    densities: tuple[float, ...]

    @classmethod
    def of(cls, knob: str, temperatures: Sequence[float], densities: Sequence[float]
           ) -> GridAxes:
        temps = tuple(float(t) for t in cold_to_hot(knob, sorted(set(map(float, temperatures)))))
        dens = tuple(sorted(set(map(float, densities))))
        if len(temps) < 2 or len(dens) < 2:
            raise ValueError(f"a map needs at least 2 temperatures and 2 densities; got "
                             f"{len(temps)} x {len(dens)}")
        return cls(knob, temps, dens)

    @classmethod
    def of_table(cls, df: pd.DataFrame, knob: str | None = None) -> GridAxes:
        knob = knob or one_knob(df, "a phase map", "choose one with --knob")
        df = df[df[keys.KNOB].astype(str) == knob]
        return cls.of(knob, df[keys.TEMPERATURE].tolist(), df[keys.DENSITY].tolist())

    @property
    def n(self) -> int:
        return len(self.temperatures) * len(self.densities)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.temperatures), len(self.densities)

    def point(self, p: int) -> tuple[float, float]:
        nd = len(self.densities)
        return self.temperatures[p // nd], self.densities[p % nd]

    def points(self) -> list[tuple[float, float]]:
        return [self.point(p) for p in range(self.n)]

    def density_points(self, di: int) -> np.ndarray:
        """The points of density ``densities[di]``, cold to hot."""
        return np.arange(di, self.n, len(self.densities))

    def temperature_neighbours(self, p: int) -> list[int]:
        """The points of ``p``'s density at the next colder and next hotter temperature."""
        ti, di = divmod(p, len(self.densities))
        return [t * len(self.densities) + di for t in (ti - 1, ti + 1)
                if 0 <= t < len(self.temperatures)]

    def has(self, temperature: float, density: float) -> bool:
        """Whether (temperature, density) is a point of the grid."""
        try:
            self.index(temperature, density)
        except ValueError:
            return False
        return True

    def index(self, temperature: float, density: float) -> int:
        ti = int(np.argmin(np.abs(np.array(self.temperatures) - float(temperature))))
        di = int(np.argmin(np.abs(np.array(self.densities) - float(density))))
        if not (math.isclose(self.temperatures[ti], temperature, rel_tol=1e-9, abs_tol=1e-12)
                and math.isclose(self.densities[di], density, rel_tol=1e-9, abs_tol=1e-12)):
            raise ValueError(f"({temperature}, {density}) is not a point of the grid")
        return ti * len(self.densities) + di

    def coords(self) -> np.ndarray:
        """(n, 2): hotness rank (0 coldest .. 1 hottest), density rank (0 sparsest .. 1)."""
        nt, nd = self.shape
        t, d = np.divmod(np.arange(self.n), nd)
        return np.column_stack([t / (nt - 1), d / (nd - 1)])

    def dense_group(self, p: int) -> float | None:
        """Points with the same group share one dense run (None: all share it, ``epochs``)."""
        return None if self.knob == "epochs" else self.point(p)[0]


def default_n_init(n: int) -> int:
    """Size of the initial design: the corners and a few spread points, max(5, 10%)."""
    return min(n, max(5, math.ceil(0.1 * n)))


def default_batch_size(n: int) -> int:
    """Points per round after the initial design: about sqrt(n) / 2 (3 on a 6 x 5 grid)."""
    return max(1, round(math.sqrt(n) / 2))


def _initial_size(axes: GridAxes, n_init: int | None) -> int:
    """Points of the initial design: the default for None, else checked (ValueError)."""
    n_init = default_n_init(axes.n) if n_init is None else int(n_init)
    if not 1 <= n_init <= axes.n:
        raise ValueError(f"n_init={n_init}: must be in [1, {axes.n}] (the grid's points)")
    return n_init


def _round_sizes(axes: GridAxes, batch_size: int | None, n_init: int | None
                 ) -> tuple[int, int]:
    """(points per round, points of the initial design): the defaults for None, else checked
    (ValueError naming the option and its range)."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1 (points per round)")
    return int(batch_size or default_batch_size(axes.n)), _initial_size(axes, n_init)


def initial_design(axes: GridAxes, n_init: int | None = None, seed: int = 0,
                   exclude: Sequence[int] = ()) -> list[int]:
    """The four corners, then max-min spread points (ties broken at random by ``seed``).
    ``exclude``: points that cannot be run (a replayed table's holes): never chosen; a
    corner among them is left out (the spread points start from the others)."""
    n_init = _initial_size(axes, n_init)
    excluded = {int(p) for p in exclude}
    n_init = min(n_init, axes.n - len(excluded))
    nt, nd = axes.shape
    corners = [0, nd - 1, (nt - 1) * nd, nt * nd - 1]
    chosen = [p for p in dict.fromkeys(corners) if p not in excluded][:n_init]
    rng = np.random.default_rng(seed)
    x = axes.coords()
    while len(chosen) < n_init:
        dist = (np.min(np.linalg.norm(x[:, None, :] - x[None, chosen, :], axis=2), axis=1)
                if chosen else np.zeros(axes.n))
        dist[chosen] = -1
        dist[list(excluded)] = -1
        best = np.flatnonzero(np.isclose(dist, dist.max()))
        chosen.append(int(rng.choice(best)))
    return chosen


def coarse_to_fine_order(axes: GridAxes, seed: int = 0) -> list[int]:
    """Every other temperature and density first (random order within a level), then the
    points between them: (even, even), then (even, odd) and (odd, even), then (odd, odd)."""
    rng = np.random.default_rng(seed)
    nt, nd = axes.shape
    levels: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for p in range(axes.n):
        t, d = divmod(p, nd)
        levels[(t % 2) + (d % 2)].append(p)
    order: list[int] = []
    for level in (0, 1, 2):
        order += [int(p) for p in rng.permutation(levels[level])]
    return order


# --- labels ---------------------------------------------------------------------------------

def label_points(table: pd.DataFrame, eps: float | None = None, tau: float | None = None,
                 *, seed: int = 0, n_resamples: int = 200, axes: GridAxes | None = None
                 ) -> pd.DataFrame:
    """Label the finished cells of ``table`` and aggregate them per point.

    Uses ``selection.regimes.label_grid`` (labels with resampled probabilities, eps-free when
    no threshold is given) when the project has it; otherwise ``label_regimes`` with
    probabilities 0/1 (``p_regime_IIB`` from the CKA threshold). Several dense seeds of a
    point: probabilities averaged, the label the most frequent.

    With ``axes`` (the whole grid the table is part of), the grid's unfinished points enter the
    labeller's pooled eps (``label_grid(pool=...)``) with their barriers predicted from the
    finished ones (:func:`predicted_barriers`): the cells an adaptive run has finished are
    not a random sample of the grid (it runs the deep-barrier corner first), and their
    barriers alone move the pooled eps (demo_fine at 35 of 70 cells: -0.024 instead of the
    full grid's -0.006, which relabelled a whole density).

    Returns one row per point: ``temperature``, ``density``, ``regime``, ``p_regime_I``,
    ``p_regime_IIB``, ``label_method``, plus ``test_acc`` when the table has it.
    """
    label_grid = getattr(regimes, "label_grid", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)
        if label_grid is not None:
            labelled, _ = label_grid(table, eps, tau, n_resamples=n_resamples, seed=seed,
                                     pool=_unfinished_barriers(table, axes, eps))
            if LABEL_METHOD not in labelled.columns:
                labelled[LABEL_METHOD] = "label_grid"
        else:
            labelled, thresholds = regimes.label_regimes(table, eps, tau)
            regime = labelled[keys.REGIME]
            labelled[P_REGIME_I] = (regime == REGIME_I).astype(float)
            tau_used = thresholds.tau
            cka = labelled[keys.CKA].to_numpy(dtype=float)
            labelled[P_REGIME_IIB] = (np.full(len(cka), 0.5) if math.isnan(tau_used)
                                      else (cka >= tau_used).astype(float))
            labelled[LABEL_METHOD] = f"rule eps={thresholds.eps:.4g} tau={tau_used:.4g}"
    columns = {P_REGIME_I: "mean", P_REGIME_IIB: "mean", LABEL_METHOD: "first",
               keys.REGIME: _majority}
    for column in (keys.TEST_ACC, keys.LMC_BARRIER, keys.CKA):
        if column in labelled.columns:
            columns[column] = "mean"
    out = labelled.groupby([keys.TEMPERATURE, keys.DENSITY], as_index=False).agg(columns)
    out[[P_REGIME_I, P_REGIME_IIB]] = out[[P_REGIME_I, P_REGIME_IIB]].astype(float).fillna(0.5)
    return out


def predicted_barriers(axes: GridAxes, run_idx: np.ndarray, barrier: np.ndarray) -> np.ndarray:
    """Every point's barrier: the measured mean at the finished points ``run_idx``
    (``barrier``), elsewhere the mean of a GP of the signed log barrier fitted to them
    (:func:`_measurement_posterior`), clipped to [-1, 1]."""
    z_mean, _ = _measurement_posterior(axes.coords(), run_idx, _signed_log(barrier))
    out = np.clip(_signed_exp(z_mean), -1.0, 1.0)
    out[run_idx] = barrier
    return out


def _unfinished_barriers(table: pd.DataFrame, axes: GridAxes | None, eps: float | None
                         ) -> np.ndarray | None:
    """The labeller's ``pool``: predicted barriers of the points of ``axes`` that ``table``
    has no row of. None without ``axes``, with ``eps`` given (the labeller has no pooled eps
    to estimate), with fewer than 3 finished points or a barrier missing (too little to
    predict from)."""
    if axes is None or eps is not None or keys.LMC_BARRIER not in table.columns:
        return None
    means = table.groupby([keys.TEMPERATURE, keys.DENSITY])[keys.LMC_BARRIER].mean()
    if len(means) < 3 or not np.isfinite(means.to_numpy(dtype=float)).all():
        return None
    run_idx = np.array([axes.index(t, d) for t, d in means.index], dtype=int)
    unrun = np.setdiff1d(np.arange(axes.n), run_idx)
    if len(unrun) == 0:
        return None
    return predicted_barriers(axes, run_idx, means.to_numpy(dtype=float))[unrun]


def _majority(labels: pd.Series) -> str:
    counts = labels.value_counts()
    return max(REGIMES, key=lambda r: (counts.get(r, 0), -REGIMES.index(r)))


def hierarchical_labels(p_i: np.ndarray, p_iib: np.ndarray) -> np.ndarray:
    """I iff p_I >= 0.5, else II-B iff p_IIB >= 0.5, else II-A."""
    return np.where(p_i >= 0.5, REGIME_I,
                    np.where(p_iib >= 0.5, REGIME_II_B, REGIME_II_A)).astype(object)


def _label_probability(labels: np.ndarray, p_i: np.ndarray, p_iib: np.ndarray) -> np.ndarray:
    return np.where(labels == REGIME_I, p_i,
                    np.where(labels == REGIME_II_B, (1 - p_i) * p_iib, (1 - p_i) * (1 - p_iib)))


# --- models ---------------------------------------------------------------------------------

def _regime_kernel():
    """The regime model's fixed unit-variance RBF over grid coordinates (the indicators', the
    measurements' and the look-ahead pool's GPs: one kernel, so the pool's update is exact)."""
    return ConstantKernel(1.0, "fixed") * RBF(LENGTH_SCALE, "fixed")


def _indicator_posterior(x_all: np.ndarray, run: np.ndarray, target: np.ndarray,
                         noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and covariance over every point of a GP fitted to ``target`` at the
    ``run`` points (fixed unit-variance RBF kernel, per-point noise ``noise``).

    Note: fixed, not fitted: length scales chosen by marginal likelihood made the replay
    worse (on the finer paper-like grid 65 cells to 95% agreement instead of 53, 2 seeds)."""
    kernel = _regime_kernel()
    if len(run) == 0:
        return np.zeros(len(x_all)), kernel(x_all)
    gp = GaussianProcessRegressor(kernel, alpha=noise, optimizer=None, normalize_y=False)
    gp.fit(x_all[run], target)
    mean, cov = gp.predict(x_all, return_cov=True)
    return mean, cov


def _probit(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return norm.cdf(mean / np.sqrt(np.maximum(var, 0) + KAPPA))


@dataclass
class MapPrediction:
    """The predicted map over every point of ``axes`` (arrays indexed by point)."""

    axes: GridAxes
    run: np.ndarray                     # bool: the point's cells are finished
    label: np.ndarray                   # I / II-A / II-B
    p_i: np.ndarray
    p_iib: np.ndarray
    p_label: np.ndarray
    # latent GP posteriors of the two indicators (for the expected change of the map)
    mean_i: np.ndarray
    cov_i: np.ndarray
    noise_i: np.ndarray
    mean_b: np.ndarray
    cov_b: np.ndarray
    noise_b: np.ndarray
    acc_mean: np.ndarray | None = None  # predicted test accuracy (measured where run)
    p_best: np.ndarray | None = None    # probability of being the best of its density
    best: dict[float, int] = field(default_factory=dict)   # density -> point of its best
    acc_noise: float | None = None      # the accuracy GP's noise (std, accuracy units)
    # the finished points as labelled (label_points' rows) and the thresholds: for the
    # look-ahead relabelling of choose_batch
    measured: pd.DataFrame | None = None
    eps: float | None = None
    tau: float | None = None
    # bool by point: tried and gave no result (its cells failed, e.g. a diverged fine-tune),
    # or absent from a replayed table: never chosen again and never a best; its label is
    # the map's prediction. None: no such point.
    failed: np.ndarray | None = None

    @property
    def open(self) -> np.ndarray:
        """bool by point: not run and not failed (the points a next round can choose)."""
        return ~self.run if self.failed is None else ~self.run & ~self.failed

    def frame(self) -> pd.DataFrame:
        """One row per point: temperature, density, regime, probabilities, run and failed
        flags, and the predicted test accuracy and probability of being its density's best."""
        t, d = zip(*self.axes.points(), strict=True)
        failed = np.zeros(self.axes.n, dtype=bool) if self.failed is None else self.failed
        out = pd.DataFrame({keys.KNOB: self.axes.knob, keys.TEMPERATURE: t, keys.DENSITY: d,
                            keys.REGIME: self.label, P_REGIME_I: self.p_i,
                            P_REGIME_IIB: self.p_iib, P_LABEL: self.p_label, "run": self.run,
                            "failed": failed})
        if self.acc_mean is not None:
            out["test_acc_predicted"] = self.acc_mean
            out["p_best"] = self.p_best
        return out

    def best_frame(self, confidence: float = BEST_CONFIDENCE) -> pd.DataFrame:
        """Per density: the predicted best temperature, its probability, whether it was run,
        how many points of that density were run (its support), and what the report can
        claim (``status``, see :meth:`best_status`)."""
        rows = []
        for di, density in enumerate(self.axes.densities):
            p = self.best.get(density)
            row_points = self.axes.density_points(di)
            rows.append({
                keys.KNOB: self.axes.knob, keys.DENSITY: density,
                keys.TEMPERATURE: None if p is None else self.axes.point(p)[0],
                "test_acc_predicted": None if p is None else float(self.acc_mean[p]),
                "p_best": None if p is None else float(self.p_best[p]),
                "best_run": bool(p is not None and self.run[p]),
                "cells_run_at_density": int(self.run[row_points].sum()),
                "status": self.best_status(density, confidence),
            })
        return pd.DataFrame(rows)

    def best_status(self, density: float, confidence: float = BEST_CONFIDENCE) -> str:
        """What the reported best of ``density`` is worth: ``not run`` (only a prediction),
        ``one cell run`` (a single cell at that density: a guess, not a search), ``not
        settled`` (the unrun temperatures of the density together have probability >= 1 -
        ``confidence`` of beating it, or a neighbouring temperature of it was not run: the
        smooth accuracy model cannot rule out a spike it has not seen), ``tied with T...``
        (the other RUN temperatures whose measured accuracy is within the accuracy model's
        noise of it: any of them is as good as the data can tell), else ``found``."""
        p = self.best.get(density)
        if p is None or self.p_best is None or not self.run[p]:
            return "not run"
        row = self.axes.density_points(self.axes.densities.index(density))
        if self.run[row].sum() <= 1:
            return "one cell run"
        if float(self.p_best[row[~self.run[row]]].sum()) >= 1 - confidence:
            return "not settled"
        # a maximum is not claimed before both neighbouring temperatures were measured: the
        # accuracy model is smooth and can rule out a spike it has never seen
        missing = [q for q in self.axes.temperature_neighbours(p) if self.open[q]]
        if missing:
            temps = ", ".join(f"{self.axes.point(q)[0]:g}" for q in missing)
            return f"not settled: neighbour {temps} not run"
        noise = self.acc_noise if self.acc_noise is not None else 0.0
        ties = [q for q in row[self.run[row]]
                if q != p and self.acc_mean[q] >= self.acc_mean[p] - noise]
        if ties:
            temps = ", ".join(f"{self.axes.point(q)[0]:g}" for q in ties)
            return f"tied with {temps}"
        return "found"


def predict_map(axes: GridAxes, labels: pd.DataFrame, *, seed: int = 0,
                with_best: bool = True, eps: float | None = None, tau: float | None = None,
                failed: Sequence[int] = ()) -> MapPrediction:
    """Fit the regime and accuracy models to the labelled points ``labels`` (one row per
    finished point, as :func:`label_points` returns) and predict every point of ``axes``.
    ``failed``: points that gave no result (see :attr:`MapPrediction.failed`)."""
    x = axes.coords()
    run_idx = np.array([axes.index(t, d) for t, d in
                        zip(labels[keys.TEMPERATURE], labels[keys.DENSITY], strict=True)],
                       dtype=int)
    p_i_run = labels[P_REGIME_I].to_numpy(dtype=float)
    p_b_run = labels[P_REGIME_IIB].to_numpy(dtype=float)
    noise_i = np.full(len(run_idx), INDICATOR_NOISE)
    noise_b = INDICATOR_NOISE / np.maximum(1 - p_i_run, 0.02)
    mean_i, cov_i = _indicator_posterior(x, run_idx, 2 * p_i_run - 1, noise_i)
    mean_b, cov_b = _indicator_posterior(x, run_idx, 2 * p_b_run - 1, noise_b)
    p_i = _probit(mean_i, np.diag(cov_i))
    p_iib = _probit(mean_b, np.diag(cov_b))
    run = np.zeros(axes.n, dtype=bool)
    run[run_idx] = True
    # finished points keep the labeller's own label and probabilities
    p_i[run_idx], p_iib[run_idx] = p_i_run, p_b_run
    label = hierarchical_labels(p_i, p_iib)
    label[run_idx] = labels[keys.REGIME].to_numpy(dtype=object)
    pred = MapPrediction(axes, run, label, p_i, p_iib, _label_probability(label, p_i, p_iib),
                         mean_i, cov_i, _full_noise(axes.n, run_idx, noise_i),
                         mean_b, cov_b, _full_noise(axes.n, run_idx, noise_b),
                         measured=labels, eps=eps, tau=tau)
    if len(failed):
        pred.failed = np.zeros(axes.n, dtype=bool)
        pred.failed[np.asarray(failed, dtype=int)] = True
        pred.failed[run_idx] = False        # a point with a result is not failed
    if with_best and keys.TEST_ACC in labels.columns and labels[keys.TEST_ACC].notna().any():
        _predict_best(pred, run_idx, labels[keys.TEST_ACC].to_numpy(dtype=float), seed)
    return pred


def _signed_log(barrier: np.ndarray) -> np.ndarray:
    return np.sign(barrier) * np.log1p(np.abs(barrier) / BARRIER_SCALE)


def _signed_exp(z: np.ndarray) -> np.ndarray:
    return np.sign(z) * np.expm1(np.abs(z)) * BARRIER_SCALE


def _measurement_posterior(x_all: np.ndarray, run: np.ndarray, y: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Predictive mean and standard deviation (noise included) over every point of a GP
    fitted to ``y`` at the ``run`` points (fixed RBF of the regime model's length scale on
    standardised values, noise MEASURE_NOISE)."""
    mu, sd = float(np.mean(y)), float(np.std(y)) or 1.0
    kernel = _regime_kernel()
    gp = GaussianProcessRegressor(kernel, alpha=MEASURE_NOISE, optimizer=None)
    gp.fit(x_all[run], (y - mu) / sd)
    mean, std = gp.predict(x_all, return_std=True)
    return mu + sd * mean, sd * np.sqrt(std ** 2 + MEASURE_NOISE)


def _full_noise(n: int, run_idx: np.ndarray, noise: np.ndarray) -> np.ndarray:
    out = np.full(n, INDICATOR_NOISE)
    out[run_idx] = noise
    return out


def _accuracy_kernel():
    # on standardised accuracies: a density main effect (constant along temperature), a
    # temperature x density term, and measurement noise. Fixed (ours, tuned by replay): a
    # marginal-likelihood fit on a handful of cells is unstable and 30x slower.
    return _accuracy_signal_kernel() + WhiteKernel(0.01, "fixed")


def _accuracy_signal_kernel():
    # the same without its noise term (the noise is chosen per fit, see _predict_best)
    return (ConstantKernel(1.0, "fixed") * RBF([1e3, 0.3], "fixed")
            + ConstantKernel(0.3, "fixed") * RBF([0.3, 0.3], "fixed"))


def _predict_best(pred: MapPrediction, run_idx: np.ndarray, acc: np.ndarray, seed: int) -> None:
    """Set ``pred``'s accuracy mean, each point's probability of being its density's best
    and the reported best per density, from the finished points' accuracies ``acc``."""
    axes = pred.axes
    ok = np.isfinite(acc)
    run_idx, acc = run_idx[ok], acc[ok]
    x = axes.coords()
    if len(run_idx) >= ACC_NOISE_MIN_CELLS and np.ptp(acc) > 0:
        # the measurement noise, in accuracy units, by marginal likelihood over a fixed set of
        # levels (the signal kernel stays fixed): the fixed fraction alone of the accuracies' spread
        # ties the noise to how far the worst cell falls (on the paper-like grid 2.2 points
        # for a true 0.1), and a seed's spread misses the dense checkpoint's own noise
        mu, scale = float(acc.mean()), float(acc.std())
        # never above the fixed default (ACC_NOISE_DEFAULT of the spread): the fixed kernel's
        # misfit (a cliff at the cold sparse corner) would pass for noise and blur the plateau
        cap = ACC_NOISE_DEFAULT * scale
        fits = []
        for level in [*(v for v in ACC_NOISE_LEVELS if v < cap), cap]:
            fit = GaussianProcessRegressor(_accuracy_signal_kernel(),
                                           alpha=(level / scale) ** 2, optimizer=None)
            fit.fit(x[run_idx], (acc - mu) / scale)
            fits.append((fit.log_marginal_likelihood_value_, level, fit))
        _, level, gp = max(fits, key=lambda f: f[0])
        pred.acc_noise = level
        mean, cov = gp.predict(x, return_cov=True)
        # an unrun cell's MEASURED value (what decides its density's best): noise included
        cov = scale ** 2 * (cov + np.eye(axes.n) * (level / scale) ** 2)
        mean = mu + scale * mean
    elif len(run_idx) >= 3 and np.ptp(acc) > 0:
        gp = GaussianProcessRegressor(_accuracy_kernel(), optimizer=None, normalize_y=True)
        gp.fit(x[run_idx], acc)
        mean, cov = gp.predict(x, return_cov=True)
    else:   # too few cells for a model: every unfinished point is as good as any other
        mean = np.full(axes.n, acc.mean() if len(acc) else 0.0)
        cov = np.eye(axes.n) * (np.var(acc) + 1e-4 if len(acc) else 1.0)
    mean = mean.copy()
    mean[run_idx] = acc
    unrun = np.setdiff1d(np.arange(axes.n), run_idx)
    rng = np.random.default_rng(seed)
    samples = np.tile(mean, (BEST_SAMPLES, 1))
    if len(unrun):
        # unfinished points drawn jointly, conditioned on nothing more than the fit
        sub = cov[np.ix_(unrun, unrun)] + 1e-10 * np.eye(len(unrun))
        samples[:, unrun] = rng.multivariate_normal(mean[unrun], sub, BEST_SAMPLES,
                                                    method="cholesky")
    p_best = np.zeros(axes.n)
    best = {}
    for di, density in enumerate(axes.densities):
        row = axes.density_points(di)
        if pred.failed is not None:     # a failed point has no accuracy: never a best
            row = row[~pred.failed[row]]
            if len(row) == 0:
                continue
        winners = row[np.argmax(samples[:, row], axis=1)]
        counts = np.bincount(winners, minlength=axes.n)[row] / BEST_SAMPLES
        p_best[row] = counts
        # the best is reported among the temperatures run at that density (the measured
        # best: an unrun one is only a prediction), with its probability of being the best
        # of the whole row; with none run, the most probable of the row
        run_row = row[np.isin(row, run_idx)] if BEST_AMONG_RUN else row[:0]
        pool = run_row if len(run_row) else row
        best[density] = int(pool[np.argmax(p_best[pool] + 1e-9 * mean[pool])])
    pred.acc_mean, pred.p_best, pred.best = mean, p_best, best


# --- choosing the next cells ----------------------------------------------------------------

def expected_map_change(pred: MapPrediction, candidates: np.ndarray,
                        cov_i: np.ndarray | None = None, cov_b: np.ndarray | None = None
                        ) -> np.ndarray:
    """For each candidate point: the expected number of points whose predicted label changes
    when its cells are run (the candidate itself included), over its possible labels."""
    cov_i = pred.cov_i if cov_i is None else cov_i
    cov_b = pred.cov_b if cov_b is None else cov_b
    out = np.zeros(len(candidates))
    current = pred.label
    others = ~pred.run
    for k, c in enumerate(candidates):
        gain_i = cov_i[:, c] / (cov_i[c, c] + pred.noise_i[c])
        gain_b = cov_b[:, c] / (cov_b[c, c] + INDICATOR_NOISE)
        var_i = np.diag(cov_i) - gain_i * cov_i[c, :]
        var_b = np.diag(cov_b) - gain_b * cov_b[c, :]
        p_i_c, p_b_c = pred.p_i[c], pred.p_iib[c]
        outcomes = ((REGIME_I, p_i_c, 1.0, None),
                    (REGIME_II_A, (1 - p_i_c) * (1 - p_b_c), -1.0, -1.0),
                    (REGIME_II_B, (1 - p_i_c) * p_b_c, -1.0, 1.0))
        expected = 0.0
        for regime, prob, y_i, y_b in outcomes:
            if prob <= 1e-6:
                continue
            m_i = pred.mean_i + gain_i * (y_i - pred.mean_i[c])
            if y_b is None:
                m_b, v_b = pred.mean_b, np.diag(cov_b)
            else:
                m_b, v_b = pred.mean_b + gain_b * (y_b - pred.mean_b[c]), var_b
            new = hierarchical_labels(_probit(m_i, var_i), _probit(m_b, v_b))
            flips = (new != current) & others
            flips[c] = regime != current[c]
            expected += prob * flips.sum()
        out[k] = expected
    return out


def _checked_labels(table: pd.DataFrame, eps, tau, *, pool=None) -> np.ndarray:
    """The same labels through the public label_grid (checks and info included): what the
    look-ahead called before; bench/lookahead.py times the two side by side."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)
        return regimes.label_grid(table, eps, tau, n_resamples=0, pool=pool)[0][
            keys.REGIME].to_numpy(dtype=object)


LOOKAHEAD_LABELS = regimes._labels_only     # the look-ahead's labeller (see relabel_flips)


def relabel_flips(pred: MapPrediction, candidates: np.ndarray, *, refit_pool: bool = False
                  ) -> np.ndarray:
    """For each candidate point: the mean number of FINISHED points whose label changes when
    the labeller sees the candidate's cells too, in expectation over its predicted barrier (a
    GP of the signed log barrier over the finished points, predictive noise included; the
    3-point Gauss-Hermite rule ``RELABEL_NODES``; CKA at its GP mean).

    Why: the labeller judges a density by its whole column (a jump along temperature needs
    every hotter cell shallower) and pools its thresholds over the table, so one more cell
    can relabel finished ones far from it, which the map's GPs cannot foresee (on the 10 x 7
    demo_fine grid, a jump that the 7% cells run so far showed vanished only when its
    hottest cells arrived). Zero without the barrier/CKA columns or with < 3 points.

    The labeller's pool (the other unfinished points' predicted barriers, as
    :func:`label_points` with ``axes`` has them) is the barrier GP refitted with the
    candidate's drawn value; that GP's mean is affine in the drawn value, so it is solved
    once per candidate (:func:`_pool_given_candidate`) instead of refitted per node, and the
    table's points are built once per candidate (``refit_pool=True``: the GP refitted and the
    table relabelled whole per node, the reference this is checked against)."""
    out = np.zeros(len(candidates))
    m = pred.measured
    if RELABEL_WEIGHT == 0 or m is None or len(m) < 3 or len(candidates) == 0 \
            or keys.LMC_BARRIER not in m.columns or keys.CKA not in m.columns:
        return out
    barrier = m[keys.LMC_BARRIER].to_numpy(dtype=float)
    cka = m[keys.CKA].to_numpy(dtype=float)
    if not (np.isfinite(barrier).all() and np.isfinite(cka).all()):
        return out
    axes = pred.axes
    x = axes.coords()
    run_idx = np.array([axes.index(t, d) for t, d in
                        zip(m[keys.TEMPERATURE], m[keys.DENSITY], strict=True)], dtype=int)
    z = _signed_log(barrier)
    z_mean, z_sd = _measurement_posterior(x, run_idx, z)
    c_mean, _ = _measurement_posterior(x, run_idx, cka)
    base = pd.DataFrame({keys.KNOB: axes.knob, keys.TEMPERATURE: m[keys.TEMPERATURE],
                         keys.DENSITY: m[keys.DENSITY], keys.LMC_BARRIER: barrier,
                         keys.CKA: cka})

    def labels_of(table: pd.DataFrame, pool: np.ndarray | None) -> np.ndarray:
        # label_grid's labels (the unfinished points in the pooled eps, as label_points(axes=)
        # has them), without its checks and info: the table is built here from checked values
        return LOOKAHEAD_LABELS(table, pred.eps, pred.tau, pool=pool)

    now = labels_of(base, _unfinished_barriers(base, axes, pred.eps))
    # the base table and one more row, the candidate's (its values set below)
    table = pd.concat([base, base.iloc[:1]], ignore_index=True)
    last = len(base)
    col = {c: table.columns.get_loc(c) for c in (keys.TEMPERATURE, keys.DENSITY,
                                                   keys.LMC_BARRIER, keys.CKA)}
    pooled = pred.eps is None       # the labeller estimates eps (else no pool: as label_points)
    fast = not refit_pool and LOOKAHEAD_LABELS is regimes._labels_only
    for k, c in enumerate(candidates):
        t, d = axes.point(int(c))
        table.iat[last, col[keys.TEMPERATURE]], table.iat[last, col[keys.DENSITY]] = t, d
        table.iat[last, col[keys.CKA]] = float(np.clip(c_mean[c], 0.0, 1.0))
        affine = None if refit_pool or not pooled else \
            _pool_given_candidate(x, run_idx, z, int(c))
        # the nodes change only the candidate's barrier: with the inner labeller, the
        # table's points are built once per candidate and that one value set per node
        points = regimes._points(table) if fast else None
        for node, weight in RELABEL_NODES:
            # a barrier is a train-error fraction: the labeller takes [-1, 1]
            drawn = float(np.clip(_signed_exp(z_mean[c] + node * z_sd[c]), -1.0, 1.0))
            if points is None or affine is None:    # the paths that read it from the table
                table.iat[last, col[keys.LMC_BARRIER]] = drawn
            if affine is None:
                pool = _unfinished_barriers(table, axes, pred.eps)
            else:
                a, b = affine
                pool = None if a is None else np.clip(
                    _signed_exp(a + b * _signed_log(np.array(drawn))), -1.0, 1.0)
            if points is None:
                labels = labels_of(table, pool)
            else:
                values = points.barrier.copy()
                values[points.row_point[last]] = drawn
                labels = regimes._labels_of_points(points, values, pred.eps, pred.tau,
                                                   pool=pool)
            out[k] += weight * float((labels[:last] != now).sum())
    return out


def _pool_given_candidate(x_all: np.ndarray, run: np.ndarray, z: np.ndarray, c: int
                          ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(a, b): the mean of :func:`_measurement_posterior`'s GP fitted to the signed log
    barriers ``z`` at the points ``run`` and a value ``z_c`` at the point ``c``, at every
    other unfinished point (ascending, as :func:`_unfinished_barriers` orders its pool), is
    ``a + b * z_c``. With the GP's standardisation (mean ``mu``, std ``sd`` of the values
    fitted) the mean is ``mu + k* (K + noise I)^-1 (y - mu)``: ``sd`` cancels and ``mu`` is
    affine in ``z_c``. (None, None) when no other point is unfinished."""
    fitted = np.append(run, c)
    rest = np.setdiff1d(np.arange(len(x_all)), fitted)
    if len(rest) == 0:
        return None, None
    kernel = _regime_kernel()
    gram = kernel(x_all[fitted]) + MEASURE_NOISE * np.eye(len(fitted))
    weights = cho_solve(cho_factor(gram, lower=True), kernel(x_all[fitted], x_all[rest])).T
    n = len(fitted)
    left = 1.0 - weights.sum(axis=1)         # 1 - w.1 per point
    a = left * float(np.sum(z)) / n + weights[:, :-1] @ z
    b = left / n + weights[:, -1]
    return a, b


def _condition(cov: np.ndarray, c: int, noise: float) -> np.ndarray:
    gain = cov[:, c] / (cov[c, c] + noise)
    return cov - np.outer(gain, cov[c, :])


def best_scores(pred: MapPrediction) -> tuple[np.ndarray, np.ndarray]:
    """(score, unbracketed) by point: the best-temperature term of :func:`choose_batch`
    before its weight, and whether the point is the unrun temperature just beyond its
    density's unbracketed reported best.

    The score is the point's probability of being its density's best (``p_best``). A
    density's reported best that no run temperature lies beyond, on its colder or its hotter
    side, while an unrun one does, is *unbracketed*: the accuracy model extrapolates there,
    and a fixed-kernel GP reverts to its mean past its data and borrows the shape of the
    neighbouring densities (on a paper-like grid, a 14 % density whose accuracy rises to the
    coldest temperature got p_best 0.01-0.05 there, beside a 10 % density that falls there).
    The next unrun temperature on that side scores at least ``UNBRACKETED_SHARE`` x the best's
    own probability; a failed point is skipped (it never gives an accuracy)."""
    axes = pred.axes
    if pred.p_best is None:
        return np.zeros(axes.n), np.zeros(axes.n, dtype=bool)
    score = pred.p_best.copy()
    flagged = np.zeros(axes.n, dtype=bool)
    if UNBRACKETED_SHARE <= 0:
        return score, flagged
    for di, density in enumerate(axes.densities):
        q = pred.best.get(density)
        if q is None or not pred.run[q]:
            continue
        row = list(axes.density_points(di))        # cold to hot
        k = row.index(q)
        for side in (row[:k][::-1], row[k + 1:]):   # colder (nearest first), hotter
            if any(pred.run[r] for r in side):
                continue                             # bracketed on this side
            nxt = next((r for r in side if pred.open[r]), None)
            if nxt is not None:
                score[nxt] = max(score[nxt], UNBRACKETED_SHARE * float(pred.p_best[q]))
                flagged[nxt] = True
    return score, flagged


def _greedy(pred: MapPrediction, allowed: np.ndarray, size: int, rng: np.random.Generator,
            relabel: np.ndarray, best: tuple[np.ndarray, np.ndarray]
            ) -> tuple[list[int], list[float], list[str]]:
    # relabel, best: relabel_flips and best_scores of pred, computed once per choose_batch
    cov_i, cov_b = pred.cov_i, pred.cov_b
    weight = BEST_WEIGHT * len(pred.axes.temperatures)
    p_best, unbracketed = best
    chosen: list[int] = []
    scores: list[float] = []
    why: list[str] = []
    jitter = rng.uniform(0, 1e-6, pred.axes.n)   # seeded tie-breaks
    for _ in range(size):
        candidates = np.flatnonzero(allowed & ~pred.run & ~np.isin(np.arange(pred.axes.n),
                                                                     chosen))
        if len(candidates) == 0:
            break
        change = expected_map_change(pred, candidates, cov_i, cov_b)
        best_score = weight * p_best[candidates]
        total = change + RELABEL_WEIGHT * relabel[candidates] + best_score + jitter[candidates]
        k = int(np.argmax(total))
        c = int(candidates[k])
        chosen.append(c)
        scores.append(float(total[k]))
        why.append(f"expected label changes {change[k]:.2f} (of finished points by the "
                   f"labeller {relabel[c]:.2f}), p(best of its density) "
                   f"{pred.p_best[c] if pred.p_best is not None else 0.0:.2f}"
                   + (f", next to its density's best beyond the temperatures run (scored "
                      f"{p_best[c]:.2f})" if unbracketed[c] else ""))
        cov_i = _condition(cov_i, c, pred.noise_i[c])
        cov_b = _condition(cov_b, c, INDICATOR_NOISE)
    return chosen, scores, why


def choose_batch(pred: MapPrediction, size: int, seed: int = 0
                 ) -> tuple[list[int], list[str]]:
    """The next ``size`` points to run and why each was chosen (see the module doc)."""
    rng = np.random.default_rng(seed)
    open_ = pred.open
    relabel = np.zeros(pred.axes.n)
    unrun = np.flatnonzero(open_)
    relabel[unrun] = relabel_flips(pred, unrun)
    best = best_scores(pred)
    chosen, scores, why = _greedy(pred, open_, size, rng, relabel, best)
    if pred.axes.knob == "epochs" or not chosen:
        return chosen, why
    groups = {pred.axes.dense_group(p) for p in unrun}
    best_group = None
    for group in sorted(groups):
        allowed = open_ & np.array([pred.axes.dense_group(p) == group
                                    for p in range(pred.axes.n)])
        g_chosen, g_scores, g_why = _greedy(pred, allowed, size, np.random.default_rng(seed),
                                          relabel, best)
        if len(g_chosen) == len(chosen) and (best_group is None or sum(g_scores) > best_group[0]):
            best_group = (sum(g_scores), g_chosen, g_why)
    if best_group is not None and best_group[0] >= (1 - GROUP_SLACK) * sum(scores):
        return best_group[1], [w + "; shares one dense run with the batch" for w in best_group[2]]
    return chosen, why


# --- stopping -------------------------------------------------------------------------------

@dataclass(frozen=True)
class StopRule:
    """The map has stopped changing: no predicted label changed for ``patience`` rounds, nor
    (when the best temperatures of the rounds are given) any density's reported best
    temperature, every unfinished point's label has probability >= 1 - ``max_uncertainty``,
    and every density's best temperature has probability >= ``best_confidence``."""

    patience: int = 2
    max_uncertainty: float = 0.1
    best_confidence: float = BEST_CONFIDENCE

    def settled(self, history: Sequence[np.ndarray], pred: MapPrediction,
                best_history: Sequence[dict[float, int]] | None = None) -> tuple[bool, str]:
        """(whether to stop, the reason or what is still open). ``best_history``: per round
        the reported best point of each density (``MapPrediction.best``), aligned with
        ``history``; a best that moved in the last ``patience`` rounds keeps the map open
        (its probability alone can be high by chance right after a new best was run)."""
        if len(history) < self.patience + 1:
            return False, f"fewer than {self.patience + 1} rounds"
        recent = history[-(self.patience + 1):]
        changed = sum(int((a != b).sum()) for a, b in zip(recent, recent[1:], strict=False))
        moved = 0
        if best_history is not None and len(best_history) >= self.patience + 1:
            bests = best_history[-(self.patience + 1):]
            moved = sum(sum(a.get(d) != b.get(d) for d in set(a) | set(b))
                        for a, b in zip(bests, bests[1:], strict=False))
        unrun = pred.open      # a failed point's label stays a prediction: not waited on
        uncertainty = float((1 - pred.p_label[unrun]).max()) if unrun.any() else 0.0
        weakest = min((pred.p_best[p] for p in pred.best.values()), default=1.0) \
            if pred.p_best is not None else 1.0
        state = (f"labels changed in the last {self.patience} rounds: {changed}; best "
                 f"temperatures moved: {moved}; max label uncertainty {uncertainty:.3f} "
                 f"(<= {self.max_uncertainty}); weakest best temperature probability "
                 f"{weakest:.2f} (>= {self.best_confidence})")
        ok = changed == 0 and moved == 0 and uncertainty <= self.max_uncertainty \
            and weakest >= self.best_confidence
        return ok, state


@dataclass
class Round:
    """One round of the loop: the points chosen, why, and the state that chose them."""

    number: int
    points: list[tuple[float, float]]
    reasons: list[str]
    cells_run_before: int
    labels_changed: int | None = None
    max_uncertainty: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return {"round": self.number, "points": [list(p) for p in self.points],
                "reasons": self.reasons, "cells_run_before": self.cells_run_before,
                "labels_changed": self.labels_changed, "max_uncertainty": self.max_uncertainty,
                "note": self.note}


# --- replay on a finished table -------------------------------------------------------------

STRATEGIES = ("active", "random", "coarse_to_fine")


@dataclass
class ReplayCurves:
    """Per strategy: agreement and best-found fraction after each number of cells run
    (``seeds`` x ``total_cells`` arrays, column k = k + 1 cells), and where the stopping rule
    would have stopped the active loop."""

    total_cells: int          # the grid's points with a result (replayed or not; holes not)
    agreement: dict[str, np.ndarray]
    best_found: dict[str, np.ndarray]
    best_within: dict[str, np.ndarray]       # found within BEST_TOLERANCE of the best
    stopped_at: list[int | None]
    reference: pd.DataFrame
    # how often a re-run of the whole grid keeps its best temperatures (best_reproducibility)
    best_reproducibility: dict | None = None
    # how far a re-measured grid's labels agree with the reference's (label_reproducibility)
    label_reproducibility: dict | None = None
    # the grid's holes: (temperature, density) of the points without a result in the table
    missing: list[tuple[float, float]] = field(default_factory=list)
    # found tied with the best within the table's noise (TIE_Z standard errors); None
    # without test_acc_std
    best_tied: dict[str, np.ndarray] | None = None

    @property
    def cells_replayed(self) -> int:
        """Cells each replay ran (the arrays' columns): ``total_cells`` unless ``max_cells``
        cut it short."""
        return int(next(iter(self.agreement.values())).shape[1])


class _Oracle:
    """The finished table as the source of cells, with label results cached by point set."""

    def __init__(self, table: pd.DataFrame, axes: GridAxes, eps, tau, n_resamples: int):
        self.axes = axes
        self.eps, self.tau, self.n_resamples = eps, tau, n_resamples
        idx = [axes.index(t, d) for t, d in zip(table[keys.TEMPERATURE], table[keys.DENSITY],
                                               strict=True)]
        self.table = table.assign(_point=idx)
        self._cache: dict[frozenset, pd.DataFrame] = {}

    def labels(self, points: Sequence[int]) -> pd.DataFrame:
        key = frozenset(points)
        if key not in self._cache:
            rows = self.table[self.table["_point"].isin(key)].drop(columns="_point")
            self._cache[key] = label_points(rows, self.eps, self.tau,
                                            n_resamples=self.n_resamples, axes=self.axes)
        return self._cache[key]


def point_regimes(labels: pd.DataFrame, axes: GridAxes) -> np.ndarray:
    """The ``regime`` of each point of ``axes`` from labelled rows (one per point, as
    :func:`label_points` returns them); None at a point without a row."""
    out = np.full(axes.n, None, dtype=object)
    for t, d, r in zip(labels[keys.TEMPERATURE], labels[keys.DENSITY], labels[keys.REGIME],
                       strict=True):
        out[axes.index(t, d)] = r
    return out


def _true_best(reference: pd.DataFrame, axes: GridAxes) -> tuple[dict[float, int], np.ndarray]:
    """Per density the point of the highest test accuracy (ties: the lower temperature, as
    ``tracking.tables.best_temperature_per_density``), and every point's accuracy."""
    best = {}
    acc = np.full(axes.n, np.nan)
    if keys.TEST_ACC not in reference.columns:      # a table without accuracies: no best
        return best, acc
    for t, d, a in zip(reference[keys.TEMPERATURE], reference[keys.DENSITY],
                       reference[keys.TEST_ACC], strict=True):
        acc[axes.index(t, d)] = a
    for density, rows in reference.groupby(keys.DENSITY):
        rows = rows.sort_values(keys.TEMPERATURE)
        top = rows.loc[rows[keys.TEST_ACC].idxmax()]
        best[float(density)] = axes.index(top[keys.TEMPERATURE], density)
    return best, acc


REPRODUCE_DRAWS = 20000
TIE_Z = 2.0                  # best_reproducibility: "tied with the best" within this many SEs
DEFAULT_COPIES = 3           # fine-tune copies per cell assumed when the table does not say


def _copies(table: pd.DataFrame) -> tuple[int, bool]:
    """(fine-tune copies behind one row's mean test accuracy, whether that was assumed): K
    from the K(K-1)/2 pairs of a row's ``pair_metrics`` (read as the labeller reads them), or
    a ``finetune_seeds`` column, else DEFAULT_COPIES."""
    from tracking.tables import PAIR_METRICS

    if PAIR_METRICS in table.columns:
        for raw in table[PAIR_METRICS]:
            pairs = regimes._row_pairs(raw)
            if pairs is None:
                continue
            k = (1 + math.isqrt(1 + 8 * len(pairs[0]))) // 2
            if k >= 2 and k * (k - 1) // 2 == len(pairs[0]):
                return k, False
    if keys.FINETUNE_SEEDS in table.columns:
        n = pd.to_numeric(table[keys.FINETUNE_SEEDS], errors="coerce").dropna()
        if len(n) and n.min() >= 1:
            return int(n.min()), False
    return DEFAULT_COPIES, True


LABEL_DRAWS = 400


def label_reproducibility(table: pd.DataFrame, *, eps: float | None = None,
                          tau: float | None = None, draws: int = LABEL_DRAWS, seed: int = 0
                          ) -> dict | None:
    """How far the labels of ``table`` would survive re-measuring the grid: the labeller's
    own resampling (each cell's pairs drawn with replacement, or its mean redrawn from its
    std; ``label_grid``'s ``resampled_agreement``), ``draws`` times, each resample's labels
    of every point against the table's. The ceiling on agreement with the full grid's
    labels, as :func:`best_reproducibility` is on the best temperature. None when no cell
    has per-pair values or a std (the labeller's ``pair_source`` is ``mean_only``: nothing
    to resample)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)
        _, info = regimes.label_grid(table, eps, tau, n_resamples=draws, seed=seed)
    if info["pair_source"] == "mean_only":
        return None
    return {**info["resampled_agreement"], "draws": int(draws),
            "pair_source": info["pair_source"]}


def _point_accuracy(table: pd.DataFrame, axes: GridAxes, copies: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, bool] | None:
    """(mean, se, rows, copies, copies_assumed) by point: the mean test accuracy over the
    point's rows (its dense seeds), the standard error of that mean from ``test_acc_std``
    (``sqrt(sum std^2 / rows / (copies * rows))``; 0 where a row has no std) and the rows.
    None without ``test_acc_std``."""
    if keys.TEST_ACC_STD not in table.columns or table[keys.TEST_ACC_STD].isna().all():
        return None
    n_copies, assumed = (copies, False) if copies is not None else _copies(table)
    mean, var, rows = np.zeros(axes.n), np.zeros(axes.n), np.zeros(axes.n)
    for t, d, a, s in zip(table[keys.TEMPERATURE], table[keys.DENSITY], table[keys.TEST_ACC],
                          table[keys.TEST_ACC_STD], strict=True):
        p = axes.index(t, d)
        mean[p] += a
        var[p] += 0.0 if not np.isfinite(s) else s ** 2
        rows[p] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean, se = mean / rows, np.sqrt(var / rows / (n_copies * rows))
    return mean, se, rows, int(n_copies), bool(assumed)


def _tied_with(best: float, best_se: float, acc, se):
    """Whether accuracies ``acc`` (standard errors ``se``) are tied with the ``best`` one
    (``best_se``): below it by at most ``TIE_Z`` standard errors of the difference. A NaN
    standard error (no std) counts as no noise: only an exact tie counts."""
    return best - acc <= TIE_Z * np.sqrt(np.nan_to_num(best_se ** 2 + se ** 2))


def best_reproducibility(table: pd.DataFrame, axes: GridAxes, *, copies: int | None = None,
                         draws: int = REPRODUCE_DRAWS, seed: int = 0) -> dict | None:
    """How often the WHOLE grid, run again with new fine-tune seeds, would name the same best
    temperature per density as ``table`` does: each point's mean test accuracy redrawn from
    a normal around its measured mean with the standard error ``test_acc_std / sqrt(copies *
    rows)`` (``rows``: its dense seeds), ``draws`` times. Only the fine-tune seeds' noise: a
    new dense run adds its own, so these are upper bounds. None without ``test_acc_std``.

    Returns ``{"per_density": {density: probability}, "every_density": probability that all
    densities keep their best at once, "copies": n, "copies_assumed": bool, "tied_with_best":
    ...}``: the ceiling on "finds the exact best" for any strategy that is judged against this
    table's argmax.

    ``tied_with_best`` counts, per density and in all (``cells``, with ``fraction`` of the
    points with an accuracy), the points whose mean accuracy lies within ``TIE_Z`` standard
    errors of the difference from their density's best (the best itself included): points the
    table's own noise cannot tell from the best. An order that names every exact best with
    fewer points run than ``cells`` has left out such a point, and was right about its
    density by luck: ``cells`` is the fewest points that can settle every best at that
    level (the agreement needs more)."""
    stats = _point_accuracy(table, axes, copies)
    if stats is None:
        return None
    mean, se, rows, n_copies, assumed = stats
    t, d = zip(*axes.points(), strict=True)
    true_best, _ = _true_best(pd.DataFrame({keys.TEMPERATURE: t, keys.DENSITY: d,
                                            keys.TEST_ACC: mean})[rows > 0], axes)
    rng = np.random.default_rng(seed)
    redrawn = mean + rng.standard_normal((draws, axes.n)) * se
    kept = np.ones(draws, dtype=bool)
    per_density, tied = {}, {}
    for di, density in enumerate(axes.densities):
        row = axes.density_points(di)
        row = row[rows[row] > 0]        # a grid's holes have no accuracy
        if len(row) == 0:
            continue
        same = row[np.argmax(redrawn[:, row], axis=1)] == true_best[density]
        per_density[density] = float(same.mean())
        kept &= same
        top = true_best[density]
        tied[density] = int(np.sum(_tied_with(mean[top], se[top], mean[row], se[row])))
    n_points = int(np.sum(rows > 0))
    return {"per_density": per_density, "every_density": float(kept.mean()),
            "copies": int(n_copies), "copies_assumed": bool(assumed),
            "tied_with_best": {"per_density": tied, "cells": int(sum(tied.values())),
                               "fraction": sum(tied.values()) / n_points, "z": TIE_Z}}


def _score(pred: MapPrediction, reference_labels: np.ndarray, true_best: dict[float, int],
           true_acc: np.ndarray, true_se: np.ndarray | None = None
           ) -> tuple[float, float, float, float]:
    """Agreement of the map; fraction of densities whose reported best temperature is the
    true best (and was run); the same within BEST_TOLERANCE of the true best accuracy; the
    same tied with the true best within the table's noise (``TIE_Z`` standard errors of the
    difference, ``true_se`` by point; NaN without it)."""
    known = np.array([r is not None for r in reference_labels])   # holes have no label
    agreement = float((pred.label[known] == reference_labels[known]).mean())
    if not true_best:                   # no test accuracy in the table: labels only
        return agreement, math.nan, math.nan, math.nan
    found, within, tied = [], [], []
    for d, p in true_best.items():
        q = pred.best.get(d)
        found.append(q == p and bool(pred.run[p]))
        reported = q is not None and bool(pred.run[q])
        within.append(reported and true_acc[q] >= true_acc[p] - BEST_TOLERANCE)
        if true_se is not None:
            tied.append(reported and bool(_tied_with(true_acc[p], true_se[p],
                                                     true_acc[q], true_se[q])))
    return (agreement, float(np.mean(found)), float(np.mean(within)),
            float(np.mean(tied)) if true_se is not None else math.nan)


def replay(table: pd.DataFrame, *, seeds: Sequence[int] = range(20), knob: str | None = None,
           eps: float | None = None, tau: float | None = None, batch_size: int | None = None,
           n_init: int | None = None, max_cells: int | None = None, n_resamples: int = 0,
           strategies: Sequence[str] = STRATEGIES, stop_rule: StopRule = StopRule(),
           progress: Callable[[str], None] | None = None, jobs: int = 1) -> ReplayCurves:
    """Replay the mapping loop and the baselines on finished ``table`` (see the module doc).

    The reference map is the labeller's labels of the WHOLE table; each prefix of cells is
    labelled by the same labeller on those cells only, and the map predicted from them.
    A grid with holes (points without a row, or whose barrier, CKA or test accuracy is
    missing: a failed or diverged cell) is replayed on the points it has: every order skips
    the holes, the active loop knows them from the start as failed points, and agreement and
    best temperatures are judged on the points with a result (``ReplayCurves.missing``).
    ``n_resamples``: the labeller's resamples for the label probabilities (default 0:
    probabilities 0/1; the labels themselves do not depend on it, and the live default of
    200 costs 200 relabellings per prefix). ``jobs``: seeds replayed in that many processes
    at once (one thread each; the same curves as ``jobs=1``).
    """
    from selection._validate import check_table
    from tracking.tables import require_columns

    check_table(table, (keys.KNOB, keys.TEMPERATURE, keys.DENSITY))
    axes = GridAxes.of_table(table, knob)
    table = table[table[keys.KNOB].astype(str) == axes.knob]
    # without test accuracies (a table of barriers and CKA only) the map is judged on its
    # labels alone: no best temperature to find, none scored
    with_acc = keys.TEST_ACC in table.columns and bool(table[keys.TEST_ACC].notna().any())
    if not with_acc:
        table = table.drop(columns=[keys.TEST_ACC, keys.TEST_ACC_STD], errors="ignore")
    measured = [keys.LMC_BARRIER, keys.CKA, *([keys.TEST_ACC] if with_acc else [])]
    require_columns(table, measured)        # before the NaN rows are dropped as holes
    # a row without a result (a failed or diverged cell: NaN) is a hole like a missing row;
    # what is left must be a valid table (text or an infinity in those columns is an error)
    table = table[table[measured].notna().all(axis=1)]
    check_table(table, (keys.KNOB, keys.TEMPERATURE, keys.DENSITY, *measured))
    present = {axes.index(t, d) for t, d in zip(table[keys.TEMPERATURE], table[keys.DENSITY],
                                                 strict=True)}
    holes = [p for p in range(axes.n) if p not in present]
    batch_size, n_init = _round_sizes(axes, batch_size, n_init)
    if len(present) < max(n_init, 4):
        raise ValueError(f"the table has a result at {len(present)} of the grid's {axes.n} "
                         f"points ({axes.shape[0]} temperatures x {axes.shape[1]} densities); "
                         f"a replay needs at least {max(n_init, 4)} (the initial design)")
    if int(jobs) < 1:
        raise ValueError(f"jobs={jobs}: must be >= 1 (processes replaying seeds at once)")
    oracle = _Oracle(table, axes, eps, tau, n_resamples)
    reference = oracle.labels(range(axes.n))
    ref = point_regimes(reference, axes)
    true_best, true_acc = _true_best(reference, axes)
    stats = _point_accuracy(table, axes)
    true_se = None if stats is None else stats[1]
    n_present = len(present)
    total = n_present if max_cells is None else min(n_present, int(max_cells))
    agreement = {s: np.full((len(seeds), total), np.nan) for s in strategies}
    found = {s: np.full((len(seeds), total), np.nan) for s in strategies}
    within = {s: np.full((len(seeds), total), np.nan) for s in strategies}
    tied = {s: np.full((len(seeds), total), np.nan) for s in strategies}
    stopped: list[int | None] = [None] * len(seeds)
    settings = (tuple(strategies), total, batch_size, n_init, stop_rule, ref, true_best,
                true_acc, tuple(holes), true_se)

    def collect(r: int, result: dict) -> None:
        for strategy, (a, f, w, t, stop) in result.items():
            agreement[strategy][r], found[strategy][r], within[strategy][r] = a, f, w
            tied[strategy][r] = t
            if strategy == "active":
                stopped[r] = stop
        if progress is not None:
            progress(f"seed {seeds[r]} done")

    jobs = max(1, min(int(jobs), len(seeds)))
    if jobs == 1:
        for r, seed in enumerate(seeds):
            collect(r, _replay_seed(oracle, seed, *settings))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # fresh interpreters (no inherited thread pools), one BLAS/OpenMP thread each: the
        # seeds are independent, so `jobs` processes share the cores without oversubscribing
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            futures = {pool.submit(_replay_seed_job, (table, axes, eps, tau, n_resamples),
                                   seed, *settings): r for r, seed in enumerate(seeds)}
            for future in as_completed(futures):
                collect(futures[future], future.result())
    return ReplayCurves(n_present, agreement, found, within,
                        stopped if "active" in strategies else [], reference,
                        best_reproducibility(table, axes),
                        label_reproducibility(table, eps=eps, tau=tau),
                        missing=[axes.point(p) for p in holes],
                        best_tied=tied if true_se is not None else None)


def _replay_seed(oracle: _Oracle, seed: int, strategies: tuple[str, ...], total: int,
                 batch_size: int, n_init: int, stop_rule: StopRule, ref: np.ndarray,
                 true_best: dict[float, int], true_acc: np.ndarray, holes: tuple[int, ...],
                 true_se: np.ndarray | None = None
                 ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                      int | None]]:
    """One seed of the replay: per strategy, the agreement, best-found, best-within and
    best-tied curves over the first ``total`` cells, and where the stop rule stopped (active
    only)."""
    axes = oracle.axes
    out = {}
    for strategy in strategies:
        order, stop = _replay_order(strategy, axes, oracle, seed, total, batch_size, n_init,
                                    stop_rule, holes)
        curves = np.full((4, total), np.nan)
        for k in range(1, total + 1):
            pred = predict_map(axes, oracle.labels(order[:k]), seed=seed, eps=oracle.eps,
                               tau=oracle.tau, failed=holes)
            curves[:, k - 1] = _score(pred, ref, true_best, true_acc, true_se)
        out[strategy] = (curves[0], curves[1], curves[2], curves[3], stop)
    return out


def _replay_seed_job(oracle_args: tuple, seed: int, *settings):
    # in a worker process: its own oracle (the label cache is per process)
    return _replay_seed(_Oracle(*oracle_args), seed, *settings)


def _one_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _replay_order(strategy: str, axes: GridAxes, oracle: _Oracle, seed: int, total: int,
                  batch_size: int, n_init: int, stop_rule: StopRule, holes: tuple[int, ...] = ()
                  ) -> tuple[list[int], int | None]:
    rng = np.random.default_rng(seed)
    hole = set(holes)
    if strategy == "random":
        return [int(p) for p in rng.permutation(axes.n) if p not in hole][:total], None
    if strategy == "coarse_to_fine":
        return [p for p in coarse_to_fine_order(axes, seed) if p not in hole][:total], None
    if strategy != "active":
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    order = initial_design(axes, min(n_init, total), seed, exclude=holes)
    history: list[np.ndarray] = []
    best_history: list[dict[float, int]] = []
    stop = None
    round_number = 0
    while len(order) < total:
        pred = predict_map(axes, oracle.labels(order), seed=seed, eps=oracle.eps,
                           tau=oracle.tau, failed=holes)
        history.append(pred.label.copy())
        best_history.append(dict(pred.best))
        if stop is None and stop_rule.settled(history, pred, best_history)[0]:
            stop = len(order)
        batch, _ = choose_batch(pred, min(batch_size, total - len(order)),
                                seed=seed * 1000 + round_number)
        round_number += 1
        if not batch:
            break
        order += batch
    return order, stop


def _cells_for(agreement_row: np.ndarray, level: float) -> int | None:
    """1-based cells run when agreement first reaches ``level`` and stays there."""
    below = np.flatnonzero(agreement_row < level - 1e-12)
    if len(below) == 0:
        return 1
    k = int(below[-1]) + 1          # the first index after the last one below
    return k + 1 if k < len(agreement_row) else None


def replay_summary(curves: ReplayCurves, level: float = 0.95,
                   budget_fraction: float = 0.4) -> dict:
    """The replay's figures, medians over seeds, per strategy: ``cells_for_95`` the cells run
    when agreement first reaches ``level`` and stays there (None if a majority of seeds
    never does), ``best_found_at_budget`` the fraction of densities whose best temperature is
    found at that point (``best_within_at_budget``: within ``BEST_TOLERANCE`` of the best
    accuracy), ``cells_for_goal`` the cells when agreement >= ``level`` and every density's
    best is found, both staying so, and the agreement and best-found fractions at
    ``budget_fraction`` of the cells; ``cells_for_goal_within`` the same as
    ``cells_for_goal`` with each best found within ``BEST_TOLERANCE``; with the table's
    ``test_acc_std``, ``cells_for_goal_tied`` / ``best_tied_at_budget`` the same with each
    reported best tied with the true one within the table's own noise (``TIE_Z`` standard
    errors of their difference: the noise-aware "found");
    ``fraction_of_seeds_meeting_goal_at_40pct`` the fraction of seeds whose ``cells_for_goal``
    is at most ``budget_fraction`` of the cells. ``best_scored`` is False for a table
    without test accuracies: its best-temperature figures and the goal are None (the labels
    alone are judged). With the table's
    ``test_acc_std``, ``reference_best_reproducibility`` says how often a re-run of the whole
    grid would keep its own best temperatures (:func:`best_reproducibility`): the ceiling on
    "found" when the best and the runner-up are closer than the seeds' noise;
    ``reference_label_reproducibility`` how far a re-measured grid's labels agree with the
    table's (:func:`label_reproducibility`), the same for the agreement.

    The LAST-line JSON of ``python -m selection map --replay --json`` is this dict.
    """
    def median_cells(cells: list[int | None]) -> float | None:
        median = float(np.median([np.inf if c is None else c for c in cells]))
        return median if math.isfinite(median) else None

    def figures(strategy: str) -> dict:
        agree = curves.agreement[strategy]
        cells = [_cells_for(row, level) for row in agree]
        reached = [c for c in cells if c is not None]
        last = curves.cells_replayed
        # the budget is a fraction of the whole grid; None when the replay stopped before it
        k = max(1, min(curves.total_cells, math.floor(budget_fraction * curves.total_cells)))
        pct = round(100 * budget_fraction)

        def at_budget(values: np.ndarray) -> float | None:
            return float(np.median(values[:, k - 1])) if k <= last else None

        def at_95(values: np.ndarray) -> float:
            # at the cells where agreement reached `level` (the last replayed if never)
            return float(np.median([values[r, (c or last) - 1] for r, c in enumerate(cells)]))

        def goal_cells(found: np.ndarray) -> list[int | None]:
            # per seed: >= level agreement AND every density's best found, staying so
            both = np.where((agree >= level - 1e-12) & (found >= 1 - 1e-12), 1.0, 0.0)
            return [_cells_for(row, 1.0) for row in both]

        out = {"cells_for_95": median_cells(cells),
               f"agreement_at_{pct}pct": at_budget(agree),
               "fraction_of_seeds_reaching_95": len(reached) / len(cells)}
        # the exact best; within BEST_TOLERANCE of the best accuracy; tied with it within the
        # table's noise (only with test_acc_std)
        kinds = {"found": curves.best_found[strategy], "within": curves.best_within[strategy]}
        if curves.best_tied is not None:
            kinds["tied"] = curves.best_tied[strategy]
        for kind, found in kinds.items():
            goal = goal_cells(found)
            suffix = "" if kind == "found" else f"_{kind}"
            out |= {f"best_{kind}_at_budget": at_95(found) if scored else None,
                    f"cells_for_goal{suffix}": median_cells(goal) if scored else None,
                    f"best_{kind}_at_{pct}pct": at_budget(found) if scored else None}
            if kind == "found":
                # a steadier figure than the median where the seeds split in two groups
                out[f"fraction_of_seeds_meeting_goal_at_{pct}pct"] = float(np.mean(
                    [c is not None and c <= k for c in goal])) if scored else None
        return out

    strategies = list(curves.agreement)
    # a table without test accuracies has no best temperatures: its best curves are NaN
    scored = not all(np.isnan(b).all() for b in curves.best_found.values())
    main = figures("active") if "active" in strategies else {}
    out = {"total_cells": curves.total_cells, "cells_replayed": curves.cells_replayed,
           "best_scored": scored, **main,
           "seeds": int(next(iter(curves.agreement.values())).shape[0]),
           "baselines": {s: figures(s) for s in strategies if s != "active"}}
    if curves.best_reproducibility is not None:
        out["reference_best_reproducibility"] = curves.best_reproducibility
    if curves.label_reproducibility is not None:
        out["reference_label_reproducibility"] = curves.label_reproducibility
    stops = [s for s in curves.stopped_at if s is not None]
    out["stopped_at_median"] = float(np.median(stops)) if stops else None
    if curves.missing:
        out["missing"] = [[float(t), float(d)] for t, d in curves.missing]
    return out


# --- the live loop: python -m selection map CONFIG --budget N -------------------------------

@dataclass
class MapResult:
    """What :func:`run_map` did: the map run, the rounds, the final prediction."""

    map_run_id: str
    axes: GridAxes
    rounds: list[Round]
    prediction: MapPrediction | None
    points_run: list[int]
    cells_computed: int
    cells_cached: int
    stop_reason: str
    seconds: float
    cell_seconds: float | None = None     # mean compute seconds of one cell (for time saved)
    agreement: float | None = None        # with the reference map, when one was available
    reference_source: str | None = None
    agreement_points: int | None = None   # the points it was judged on (the reference's)
    failed: list[tuple[str, str]] = field(default_factory=list)
    # the probability at which a best temperature counts as found (the stop rule's)
    best_confidence: float = BEST_CONFIDENCE
    # points whose cells failed in this process (not retried in it; left out of the rounds
    # that follow, their labels predicted)
    failed_points: list[int] = field(default_factory=list)

    def best_frame(self) -> pd.DataFrame | None:
        """The predicted best temperature per density with its status at this run's
        confidence (:meth:`MapPrediction.best_frame`); None before any cell finished."""
        if self.prediction is None:
            return None
        return self.prediction.best_frame(self.best_confidence)

    def lines(self) -> list[str]:
        n, total = len(self.points_run), self.axes.n
        out = [f"map: ran {n} of {total} points ({100 * n / total:.0f}% of the grid) in "
               f"{len(self.rounds)} round(s): {self.cells_computed} cell(s) computed now, "
               f"{self.cells_cached} finished before (cache); stopped: {self.stop_reason}; "
               f"{self.seconds:.1f} s"]
        if self.cell_seconds is not None:
            saved = (total - n) * self.cell_seconds
            out.append(f"time saved: {total - n} points not run, about {saved:.0f} s of cell "
                       f"compute at {self.cell_seconds:.1f} s per point (the dense runs are "
                       "shared, not counted)")
        if self.agreement is not None:
            over = "" if self.agreement_points in (None, total) else (
                f" (over the {self.agreement_points} of {total} points the reference has a "
                "result at)")
            out.append(f"agreement with the full grid's labels ({self.reference_source}): "
                       f"{100 * self.agreement:.1f}%{over}")
        best = self.best_frame()
        if best is not None and best[keys.TEMPERATURE].notna().any():
            out.append("predicted best temperature per density (p = probability it is the "
                       "best; run = its cell was run):")
            for _, row in best.iterrows():
                out.append(f"  density {row[keys.DENSITY]:g}: {self.axes.knob} "
                           f"{row[keys.TEMPERATURE]:g}, p {row['p_best']:.2f}, "
                           f"{'run' if row['best_run'] else 'predicted'}, "
                           f"{row['cells_run_at_density']} cell(s) run at this density: "
                           f"{row['status']}")
        if self.failed_points:
            named = ", ".join(f"{self.axes.knob}={t:g} d={d:g}"
                              for t, d in map(self.axes.point, self.failed_points))
            out.append(f"{len(self.failed_points)} point(s) failed and were left out of the "
                       f"map's later rounds (their labels are predicted): {named}; run the "
                       "same command again to retry them")
        out += [f"  FAILED {name}: {reason}" for name, reason in self.failed]
        return out


def map_key(cfg, *, n_init: int, batch_size: int, seed: int, eps, tau, stop_rule: StopRule
            ) -> str:
    """Identity of a map run: its candidate cells and every setting that steers the choice
    (not the budget: a larger budget continues the same map)."""
    import hashlib
    import json

    from pipeline.specs import cell_hash

    hashes = sorted(cell_hash(c, d) for d, c, _ in cfg.cells())
    settings = {"cells": hashes, "n_init": n_init, "batch_size": batch_size, "seed": seed,
                "eps": eps, "tau": tau, "stop": [stop_rule.patience, stop_rule.max_uncertainty,
                                                 stop_rule.best_confidence]}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def run_map(cfg, budget: int, *, experiment: str | None = None, batch_size: int | None = None,
            n_init: int | None = None, seed: int = 0, eps: float | None = None,
            tau: float | None = None, stop_rule: StopRule = StopRule(),
            executor: str = "serial", executor_options: dict | None = None,
            progress: bool = True, reference: pd.DataFrame | None = None,
            log: Callable[[str], None] = print) -> MapResult:
    """Map the regimes of grid config ``cfg`` running at most ``budget`` points.

    Every round is stored on the map run (``map/rounds.json``) BEFORE its cells run, so a
    killed run started again with the same settings finds its map run, reruns the unfinished
    cells of its last round (finished ones come from the cache) and goes on.
    ``reference``: a full-grid results table to report agreement against; without it, the
    experiment's finished cells are used when they cover the whole grid.

    Raises:
        ValueError: a budget smaller than the initial design (or < 1).
        RuntimeError: the same map is being run by another live process.
    """
    import time

    from pipeline.grid import GridRunner, cell_name
    from pipeline.specs import cell_hash
    from tracking.artifacts import CorruptArtifactError, load_file, log_files

    started = time.perf_counter()
    axes = GridAxes.of(cfg.knob, cfg.temperatures, cfg.densities)
    batch_size, n_init = _round_sizes(axes, batch_size, n_init)
    if budget < n_init:
        raise ValueError(f"budget {budget} is smaller than the initial design ({n_init} points: "
                         f"the 4 corners and {max(n_init - 4, 0)} spread points of the "
                         f"{axes.shape[0]} x {axes.shape[1]} grid); give --budget >= {n_init} "
                         "or a smaller --n-init")
    budget = min(int(budget), axes.n)
    cells_of = {p: [] for p in range(axes.n)}
    for dense, cell, s in cfg.cells():
        cells_of[axes.index(cell.temperature, cell.prune.density)].append((dense, cell, s))
    hash_to_point = {cell_hash(c, d): p for p, pts in cells_of.items() for d, c, _ in pts}
    name_to_point = {cell_name(c, s): p for p, pts in cells_of.items() for _, c, s in pts}

    runner = GridRunner(cfg, experiment, progress)
    client, cache = runner.client, runner.cache
    key = map_key(cfg, n_init=n_init, batch_size=batch_size, seed=seed, eps=eps, tau=tau,
                  stop_rule=stop_rule)
    entry = cache.lookup(key, keys.KIND_MAP)
    if entry.active is not None:
        raise RuntimeError(f"this map is being run by another live process (run "
                           f"{entry.active.info.run_id}); wait for it or stop it")
    existing = entry.finished or entry.resumable
    rounds: list[Round] = []
    if existing is not None:
        map_run = cache.reopen(existing)
        try:
            stored = load_file(client, map_run, keys.ARTIFACT_MAP_ROUNDS)
            rounds = [Round(r["round"], [tuple(p) for p in r["points"]], r["reasons"],
                            r["cells_run_before"], r.get("labels_changed"),
                            r.get("max_uncertainty"), r.get("note", ""))
                      for r in stored["rounds"]]
        except CorruptArtifactError:
            rounds = []     # killed before its first round was stored: start again
        log(f"map: resuming map run {map_run} ({len(rounds)} round(s) stored)")
    else:
        map_run = cache.start(key, keys.KIND_MAP,
                              f"map {cfg.knob} {axes.shape[0]}x{axes.shape[1]}",
                              params={keys.KNOB: cfg.knob, keys.DATASET: cfg.data.name,
                                      keys.MODEL: cfg.model.name,
                                      keys.TEMPERATURES: list(cfg.temperatures),
                                      keys.DENSITIES: list(cfg.densities),
                                      keys.DENSE_SEEDS: list(cfg.dense_seeds),
                                      PARAM_N_INIT: n_init, PARAM_BATCH_SIZE: batch_size,
                                      PARAM_SEED: seed, PARAM_EPS: eps, PARAM_TAU: tau,
                                      PARAM_STOP_PATIENCE: stop_rule.patience,
                                      PARAM_STOP_MAX_UNCERTAINTY: stop_rule.max_uncertainty,
                                      PARAM_STOP_BEST_CONFIDENCE: stop_rule.best_confidence,
                                      PARAM_LENGTH_SCALE: LENGTH_SCALE, PARAM_KAPPA: KAPPA})
        log(f"map: new map run {map_run}")
    cache.log(map_run, tags={keys.MAP_BUDGET: budget})
    result = MapResult(map_run, axes, rounds, None, [], 0, 0, "", 0.0,
                       best_confidence=stop_rule.best_confidence)

    def store_rounds() -> None:
        log_files(client, map_run, {keys.ARTIFACT_MAP_ROUNDS: {
            "rounds": [r.to_dict() for r in rounds], "budget": budget,
            "stop_rule": {"patience": stop_rule.patience,
                          "max_uncertainty": stop_rule.max_uncertainty,
                          "best_confidence": stop_rule.best_confidence}}})

    def finished_table() -> pd.DataFrame:
        from tracking.tables import results_table

        table = results_table(runner.experiment, client)
        return table[table[keys.SPEC_HASH].isin(hash_to_point)]

    def run_points(points: list[int]) -> None:
        todo = [cell for p in points for cell in cells_of[p]]
        summary = runner.run(todo, executor=executor, executor_options=executor_options,
                             parent_run_id=map_run)
        result.cells_computed += summary.computed
        result.failed += summary.failed
        # a point with a FAILED cell; one still computed by another process is not failed
        # (the next round's run waits for it again)
        failed_points.update(name_to_point[f.name] for f in summary.failed
                             if f.name in name_to_point)

    history: list[np.ndarray] = []
    best_history: list[dict[float, int]] = []
    pred: MapPrediction | None = None
    # points whose cells failed in this process: not retried here (a diverging fine-tune
    # fails again), left out of the next rounds; a new process retries them once
    failed_points: set[int] = set()
    try:
        with cache.computing(map_run):
            while True:
                chosen = [axes.index(t, d) for r in rounds for t, d in r.points]
                table = finished_table()
                pending = [p for p in chosen if p not in failed_points
                           and not _finished(p, cells_of, table)]
                if pending:     # this round's points, or those a killed run left unfinished
                    run_points(pending)
                    table = finished_table()
                done_points = [p for p in chosen if _finished(p, cells_of, table)]
                failed_points.difference_update(done_points)
                result.points_run = done_points
                result.failed_points = sorted(failed_points)
                if done_points:
                    rows = table[table[keys.SPEC_HASH].map(hash_to_point).isin(done_points)]
                    labels = label_points(rows, eps, tau, seed=seed, axes=axes)
                    pred = predict_map(axes, labels, seed=seed, eps=eps, tau=tau,
                                       failed=sorted(failed_points))
                    history.append(pred.label.copy())
                    best_history.append(dict(pred.best))
                if rounds:
                    last = rounds[-1]
                    if len(history) >= 2:
                        last.labels_changed = int((history[-1] != history[-2]).sum())
                    if pred is not None and pred.open.any():
                        last.max_uncertainty = float((1 - pred.p_label[pred.open]).max())
                    _log_round(cache, map_run, last, len(done_points))
                if rounds and pred is None:
                    result.stop_reason = (f"no point has a result: all {len(chosen)} run so far "
                                          "failed")
                    break
                if len(chosen) >= budget:
                    result.stop_reason = f"budget of {budget} points reached"
                    break
                if pred is not None and rounds:
                    settled, state = stop_rule.settled(history, pred, best_history)
                    if settled and len(rounds) > stop_rule.patience:
                        result.stop_reason = f"the map has stopped changing ({state})"
                        break
                if not rounds:
                    points = initial_design(axes, n_init, seed)
                    reasons = ["initial design: a corner" if i < 4 else
                               "initial design: spread (farthest from those chosen)"
                               for i in range(len(points))]
                else:
                    size = min(batch_size, budget - len(chosen))
                    points, reasons = choose_batch(pred, size, seed=seed * 1000 + len(rounds))
                    if not points:
                        result.stop_reason = "every point of the grid has been run" + (
                            f" ({len(failed_points)} failed)" if failed_points else "")
                        break
                rounds.append(Round(len(rounds), [axes.point(p) for p in points], reasons,
                                    len(done_points),
                                    note=_round_note(pred, stop_rule, history, best_history)))
                store_rounds()          # before running: a killed run resumes this round
                log(f"map round {rounds[-1].number}: {len(points)} point(s): " + ", ".join(
                    f"{cfg.knob}={t:g} d={d:g}" for t, d in rounds[-1].points))
            result.rounds = rounds
            result.prediction = pred
            # cells of the points used that were finished before this process computed any
            used = sum(len(cells_of[p]) for p in result.points_run)
            result.cells_cached = max(used - result.cells_computed, 0)
            _finish_outputs(result, cfg, client, cache, map_run, finished_table(),
                            reference, eps, tau, seed, hash_to_point)
            store_rounds()
    finally:
        result.seconds = time.perf_counter() - started
    return result


def _finished(p: int, cells_of: dict, table: pd.DataFrame) -> bool:
    from pipeline.specs import cell_hash

    finished = set(table[keys.SPEC_HASH])
    return all(cell_hash(c, d) in finished for d, c, _ in cells_of[p])


def _round_note(pred: MapPrediction | None, stop_rule: StopRule,
                history: list[np.ndarray], best_history: list[dict[float, int]]) -> str:
    if pred is None:
        return "no finished cell yet"
    return stop_rule.settled(history, pred, best_history)[1]


def _log_round(cache, map_run: str, r: Round, cells_run: int) -> None:
    metrics = {keys.MAP_CELLS_RUN: cells_run}
    if r.labels_changed is not None:
        metrics[keys.MAP_LABELS_CHANGED] = r.labels_changed
    if r.max_uncertainty is not None:
        metrics[keys.MAP_MAX_UNCERTAINTY] = r.max_uncertainty
    cache.log(map_run, metrics=metrics, step=r.number)


def _finish_outputs(result: MapResult, cfg, client, cache, map_run: str, table: pd.DataFrame,
                    reference: pd.DataFrame | None, eps, tau, seed: int,
                    hash_to_point: dict[str, int]) -> None:
    """Log the map, the best temperatures, the phase diagrams of the run cells; compare with
    the reference map when there is one."""
    import tempfile
    from pathlib import Path

    from tracking.artifacts import log_files
    from tracking.plots import phase_diagrams
    from tracking.store import with_retries
    from tracking.tables import RUN_ID

    pred, axes = result.prediction, result.axes
    run_rows = table[table[keys.SPEC_HASH].map(hash_to_point).isin(result.points_run)]
    if reference is None and len(table.groupby([keys.TEMPERATURE, keys.DENSITY])) == axes.n \
            and len(table) == len(hash_to_point):
        reference, result.reference_source = table, "the experiment's finished cells"
    elif reference is not None:
        result.reference_source = "the reference table"
    if pred is not None and reference is not None:
        rows = reference[reference[keys.KNOB].astype(str) == axes.knob]
        # the grid's own points with a result (a failed cell of the reference is a hole, as in
        # a replay: the points there are judged on the others, their barriers predicted)
        on_grid = [axes.has(t, d) for t, d in zip(rows[keys.TEMPERATURE], rows[keys.DENSITY],
                                                   strict=True)]
        rows = rows[on_grid]
        rows = rows[rows[[keys.LMC_BARRIER, keys.CKA]].notna().all(axis=1)]
        if len(rows):
            ref = label_points(rows, eps, tau, seed=seed, axes=axes)
            truth = {axes.index(t, d): r for t, d, r in zip(
                ref[keys.TEMPERATURE], ref[keys.DENSITY], ref[keys.REGIME], strict=True)}
            result.agreement = float(np.mean([pred.label[p] == truth[p] for p in truth]))
            result.agreement_points = len(truth)
            cache.log(map_run, metrics={keys.MAP_AGREEMENT: result.agreement},
                      step=len(result.rounds))
    if RUN_ID in run_rows.columns and len(run_rows):
        seconds = []
        for run_id in run_rows[RUN_ID].dropna():
            value = with_retries(client.get_run, run_id).data.metrics.get(keys.CELL_SECONDS)
            if value is not None:
                seconds.append(value)
        if seconds:
            per_point = len(run_rows) / max(len(result.points_run), 1)
            result.cell_seconds = float(np.mean(seconds)) * per_point
    files: dict[str, object] = {}
    if pred is not None:
        files[keys.ARTIFACT_MAP_TABLE] = pred.frame().to_csv(index=False)
        files[keys.ARTIFACT_MAP_BEST] = result.best_frame().to_csv(index=False)
    if files:
        log_files(client, map_run, files)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        if pred is not None:
            paths.append(plot_map(pred, Path(tmp) / keys.PLOT_MAP,
                                  title=f"{cfg.experiment}: predicted regime map"))
        if len(run_rows):
            paths += phase_diagrams(run_rows, Path(tmp) / "phase",
                                    title=f"{cfg.experiment} (cells run by the map)")
        for path in paths:
            with_retries(client.log_artifact, map_run, str(path), keys.ARTIFACT_PLOTS_DIR)
    cache.log(map_run, tags={keys.MAP_STOP_REASON: result.stop_reason[:4000]},
              metrics={keys.MAP_CELLS_RUN: len(result.points_run)}, step=len(result.rounds))


# --- pictures -------------------------------------------------------------------------------

def plot_map(pred: MapPrediction, path, title: str | None = None):
    """The predicted regime map: one colour per regime, faded where its probability is low,
    the cells that were run outlined, the best temperature of each density starred."""
    from pathlib import Path

    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    from selection.regime_map import REGIME_COLORS

    axes = pred.axes
    nt, nd = axes.shape
    # columns: temperatures ascending (as the phase diagrams), rows: densities ascending
    temps = sorted(axes.temperatures)
    fig = Figure(figsize=(4.5 + 0.55 * nt, 2.2 + 0.45 * nd), layout="constrained")
    ax = fig.add_subplot()
    best = set(pred.best.values())
    for p in range(axes.n):
        t, d = axes.point(p)
        col, row = temps.index(t), axes.densities.index(d)
        rgb = np.array(to_rgb(REGIME_COLORS[pred.label[p]]))
        strength = float(np.clip((pred.p_label[p] - 1 / 3) / (2 / 3), 0, 1))
        colour = 1 - (1 - rgb) * (0.25 + 0.75 * strength)
        ax.add_patch(Rectangle((col - 0.45, row - 0.45), 0.9, 0.9, facecolor=colour,
                               edgecolor="black" if pred.run[p] else "0.6",
                               linewidth=2.0 if pred.run[p] else 0.8,
                               linestyle="solid" if pred.run[p] else "dashed"))
        failed = pred.failed is not None and bool(pred.failed[p])
        if failed:          # tried, no result: hatched as in the legend, its label predicted
            ax.add_patch(Rectangle((col - 0.45, row - 0.45), 0.9, 0.9, fill=False, hatch="\\",
                                   edgecolor="0.6", linewidth=0))
        text = f"{pred.label[p]}\n{pred.p_label[p]:.2f}" + (" *" if p in best else "")
        ax.text(col, row, text + ("\nfailed" if failed else ""), ha="center", va="center",
                fontsize=7)
    ax.set_xlim(-0.5, nt - 0.5)
    ax.set_ylim(-0.5, nd - 0.5)
    ax.set_xticks(range(nt), labels=[f"{t:g}" for t in temps])
    ax.set_yticks(range(nd), labels=[f"{100 * d:g}%" for d in axes.densities])
    ax.set_xlabel(f"temperature: {axes.knob}")
    ax.set_ylabel("density (% of prunable weights kept)")
    ax.set_title(title or "Predicted regime map", fontsize=10)
    handles = [Patch(color=REGIME_COLORS[r], label=r) for r in REGIMES]
    handles += [Patch(facecolor="white", edgecolor="black", linewidth=2, label="cell run"),
                Patch(facecolor="white", edgecolor="0.6", linestyle="dashed",
                      label="predicted, not run"),
                *([Patch(facecolor="white", edgecolor="0.6", linestyle="dashed",
                         hatch="\\", label="failed: no result, predicted")]
                  if pred.failed is not None and pred.failed.any() else []),
                Patch(facecolor="white", edgecolor="none",
                      label="number: p(label); faded: uncertain; *: best temperature")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7,
              frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_replay(curves: dict[str, ReplayCurves], path, level: float = 0.95):
    """Agreement with the full grid's map against cells run, median over seeds with the
    25-75% band, one panel per table, the active loop against the baselines."""
    from pathlib import Path

    from matplotlib.figure import Figure

    cols = min(3, len(curves))                  # up to three panels a row
    rows = math.ceil(len(curves) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.8 * rows), layout="constrained")
    colours = {"active": "#1f77b4", "random": "#7f7f7f", "coarse_to_fine": "#ff7f0e"}
    for i, (name, c) in enumerate(curves.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        x = np.arange(1, c.cells_replayed + 1)
        for strategy, values in c.agreement.items():
            q25, med, q75 = np.nanpercentile(values, [25, 50, 75], axis=0)
            ax.plot(x, 100 * med, color=colours.get(strategy), label=strategy.replace("_", " "))
            ax.fill_between(x, 100 * q25, 100 * q75, color=colours.get(strategy), alpha=0.15)
        ax.axhline(100 * level, color="black", linestyle=":", linewidth=1)
        if 0.4 * c.total_cells <= c.cells_replayed:
            ax.axvline(0.4 * c.total_cells, color="black", linestyle="--", linewidth=0.8)
        ax.set_xlabel("cells run")
        ax.set_ylabel("agreement with the full grid's map (%)")
        replayed = "" if c.cells_replayed == c.total_cells else f", {c.cells_replayed} replayed"
        ax.set_title(f"{name} ({c.total_cells} cells{replayed}, "
                     f"{c.agreement['active'].shape[0]} seeds)",
                     fontsize=10)
        ax.set_ylim(0, 101)
        ax.legend(fontsize=8, loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def active_choices(table: pd.DataFrame, budget: int, *, seed: int = 0,
                   batch_size: int | None = None, n_init: int | None = None,
                   eps: float | None = None, tau: float | None = None,
                   stop_rule: StopRule = StopRule()
                   ) -> tuple[list[tuple[float, float]], int | None]:
    """The points the active loop runs, in order, when finished ``table`` serves the cells
    (the replay's loop), and the number of points at which the stop rule would have stopped
    it (None: not within ``budget``)."""
    axes = GridAxes.of_table(table)
    oracle = _Oracle(table, axes, eps, tau, 0)
    order, stop = _replay_order("active", axes, oracle, seed, min(budget, axes.n),
                                batch_size or default_batch_size(axes.n),
                                default_n_init(axes.n) if n_init is None else n_init, stop_rule)
    return [axes.point(p) for p in order], stop
