"""Rule labels of the three regimes (SCIENCE.md section 3), with their thresholds.

Regime I iff ``lmc_barrier < eps`` (a barrier: poorly connected); among the other cells II-B
iff ``cka >= tau`` (relatively similar outputs), else II-A. Barriers are train-error fractions
(negative = a barrier), CKA is in [0, 1].

Threshold estimation (ours; the paper draws boundaries by hand):
- eps: a two-component 1-D Gaussian mixture of the barriers, each component with its own
  variance, fitted by EM from the best hard split; eps is where the two weighted component
  densities cross between the two means (:func:`two_cluster_split`). Not k-means / Otsu:
  connected cells sit tightly around 0 while barrier cells spread widely, and a boundary
  halfway between the means cuts into the wide cluster; the mixture puts it at the edge of
  the tight one.
  A barrier within :data:`BARRIER_TOL` of 0 is never a barrier, so an estimated eps is at most
  ``-BARRIER_TOL``; a table whose barriers are all ``>= -BARRIER_TOL`` (no barrier cluster) is
  all Regime II, one whose barriers are all ``< -BARRIER_TOL`` is all Regime I; both say so.
- tau: the same split over the CKA values of the Regime-II cells, with one shared variance
  (II-A and II-B spread alike; free variances would make any tight sub-group a cluster).
  When their spread is below :data:`CKA_TOL` there is one cluster: all of them are II-B
  (tau = their minimum), since II-A is defined as *relatively* low CKA and nothing is lower
  than the rest.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from sklearn.mixture import GaussianMixture

from selection._validate import check_table
from tracking import keys

REGIME_I = "I"
REGIME_II_A = "II-A"
REGIME_II_B = "II-B"
REGIMES = (REGIME_I, REGIME_II_A, REGIME_II_B)

BARRIER_TOL = 0.01  # train-error fraction (1 %-point): |barrier| below this counts as ~0
CKA_TOL = 0.01      # a CKA spread below this among Regime-II cells is one cluster
_VAR_FLOOR = 1e-6   # added to cluster variances (as sklearn's reg_covar): a std of >= 0.001

GIVEN = "given"
ESTIMATED = "estimated"
FALLBACK = "fallback"   # estimation impossible (one cluster): the documented default was used
UNUSED = "unused"       # tau when no cell is in Regime II

LABEL_COLUMNS = (keys.LMC_BARRIER, keys.CKA)


class RegimeWarning(UserWarning):
    """Labels were computed, but something about the thresholds deserves a look."""


@dataclass(frozen=True)
class Thresholds:
    """The thresholds used to label a table and how each was obtained.

    Attributes:
        eps: Regime I iff ``lmc_barrier < eps`` (train-error fraction).
        tau: II-B iff ``cka >= tau`` among non-Regime-I cells; NaN when no cell is in Regime II.
        eps_source, tau_source: ``given``, ``estimated``, ``fallback`` (one cluster only, the
            documented default was used) or, for tau, ``unused``.
        warnings: human-readable remarks, e.g. ``one regime only: no barrier cluster found``.
    """

    eps: float
    tau: float
    eps_source: str
    tau_source: str
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN tau as None)."""
        d = asdict(self)
        d["warnings"] = list(self.warnings)
        d["tau"] = None if math.isnan(self.tau) else self.tau
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def params(self) -> dict[str, str]:
        """The thresholds as MLflow params."""
        return {keys.REGIME_EPS: repr(self.eps), keys.REGIME_TAU: repr(self.tau),
                keys.REGIME_EPS_SOURCE: self.eps_source, keys.REGIME_TAU_SOURCE: self.tau_source}


def _best_contiguous_split(x: np.ndarray, equal_variance: bool) -> int:
    """Size of the lower cluster of the best split of sorted ``x`` into two runs (hard
    assignment, maximum classification likelihood of two Gaussians)."""
    n = len(x)
    k = np.arange(1, n)
    csum, csq = np.cumsum(x), np.cumsum(x * x)
    low_sum, low_sq = csum[:-1], csq[:-1]
    high_sum, high_sq = csum[-1] - low_sum, csq[-1] - low_sq
    low_var = np.maximum(low_sq / k - (low_sum / k) ** 2, 0)
    high_var = np.maximum(high_sq / (n - k) - (high_sum / (n - k)) ** 2, 0)
    if equal_variance:   # = exact 1-D 2-means (Otsu without binning)
        score = -(k * low_var + (n - k) * high_var)
    else:
        score = (k * (np.log(k / n) - 0.5 * np.log(low_var + _VAR_FLOOR))
                 + (n - k) * (np.log((n - k) / n) - 0.5 * np.log(high_var + _VAR_FLOOR)))
    # a split must fall between distinct values; two points per side where possible, since a
    # lone point has no variance and would win the likelihood by its variance floor alone
    distinct = x[:-1] < x[1:]
    sized = distinct & (k >= 2) & (n - k >= 2)
    allowed = sized if sized.any() else distinct
    return int(k[np.argmax(np.where(allowed, score, -np.inf))])


def two_cluster_split(values: Iterable[float], equal_variance: bool = False
                      ) -> tuple[float, float, float]:
    """Split 1-D ``values`` into two clusters: ``(threshold, lower_mean, upper_mean)``.

    A two-component 1-D Gaussian mixture, each component with its own variance (or one shared
    variance when ``equal_variance``), fitted by EM from the best hard split of the sorted
    values. ``threshold`` is where the two weighted component densities cross between the
    means (their midpoint if they do not cross), so ``value < threshold`` means "more likely
    the lower cluster". Deterministic: no random initialisation.

    Note: why not plain k-means / Otsu for barriers: connected cells sit tightly around 0
    while barrier cells spread over tens of points; a boundary halfway between the means cuts
    into the wide cluster. Why a shared variance for CKA: with free variances, any tight
    sub-group of similar values becomes a component of its own.

    Raises:
        ValueError: fewer than two distinct values.
    """
    x = np.sort(np.asarray(list(values), dtype=float))
    if len(np.unique(x)) < 2:
        raise ValueError("two clusters need at least two distinct values")
    n = len(x)
    k = _best_contiguous_split(x, equal_variance)
    low, high = x[:k], x[k:]
    means = np.array([[low.mean()], [high.mean()]])
    weights = np.array([k / n, (n - k) / n])
    if equal_variance:
        shared = (k * low.var() + (n - k) * high.var()) / n + _VAR_FLOOR
        mixture = GaussianMixture(2, covariance_type="tied", weights_init=weights,
                                  means_init=means, precisions_init=np.array([[1 / shared]]))
    else:
        precisions = 1 / (np.array([low.var(), high.var()]) + _VAR_FLOOR)
        mixture = GaussianMixture(2, covariance_type="full", weights_init=weights,
                                  means_init=means, precisions_init=precisions[:, None, None])
    mixture.fit(x[:, None])
    order = np.argsort(mixture.means_.ravel())
    mu = mixture.means_.ravel()[order]
    variances = np.broadcast_to(np.ravel(mixture.covariances_), (2,))
    variances = variances if equal_variance else variances[order]
    log_weights = np.log(mixture.weights_[order])

    def upper_minus_lower(v: float) -> float:
        log_density = log_weights - 0.5 * np.log(variances) - (v - mu) ** 2 / (2 * variances)
        return float(log_density[1] - log_density[0])

    if upper_minus_lower(mu[0]) < 0 < upper_minus_lower(mu[1]):
        threshold = brentq(upper_minus_lower, mu[0], mu[1], xtol=1e-12)
    else:
        threshold = (mu[0] + mu[1]) / 2
    return float(threshold), float(mu[0]), float(mu[1])


def _estimate_eps(barriers: np.ndarray, notes: list[str]) -> tuple[float, str]:
    if barriers.min() >= -BARRIER_TOL:
        notes.append(f"one regime only: no barrier cluster found (every lmc_barrier >= "
                     f"{-BARRIER_TOL:g}); every cell is Regime II (eps = {-BARRIER_TOL:g})")
        return -BARRIER_TOL, FALLBACK
    if barriers.max() < -BARRIER_TOL:
        notes.append(f"one regime only: every cell has a barrier (every lmc_barrier < "
                     f"{-BARRIER_TOL:g}); every cell is Regime I (eps = {-BARRIER_TOL:g})")
        return -BARRIER_TOL, FALLBACK
    split, _, upper_mean = two_cluster_split(barriers)
    if upper_mean < -BARRIER_TOL:
        notes.append(f"the upper barrier cluster is centred at {upper_mean:.4f}, not near 0: the "
                     "split may divide barrier cells among themselves; check eps or give it")
    # the crossing usually sits at the edge of the tight connected cluster: never let it call
    # a barrier within BARRIER_TOL of 0 a barrier
    return min(split, -BARRIER_TOL), ESTIMATED


def _estimate_tau(cka: np.ndarray, notes: list[str]) -> tuple[float, str]:
    if cka.size == 0:
        notes.append("no Regime-II cells: tau not estimated (unused)")
        return math.nan, UNUSED
    if cka.max() - cka.min() < CKA_TOL:
        notes.append(f"one Regime-II cluster only: CKA spread {cka.max() - cka.min():.4f} < "
                     f"{CKA_TOL:g}; every Regime-II cell is II-B (tau = min CKA = {cka.min():.4f})")
        return float(cka.min()), FALLBACK
    return two_cluster_split(cka, equal_variance=True)[0], ESTIMATED


def _check_threshold(name: str, value: float, low: float, high: float, unit: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be a finite number in [{low:g}, {high:g}] ({unit}), "
                         f"got {value!r}")
    return value


def _label(barrier: np.ndarray, cka: np.ndarray, eps: float, tau: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # tau NaN only when no cell is Regime II
        return np.where(barrier < eps, REGIME_I,
                        np.where(cka >= tau, REGIME_II_B, REGIME_II_A)).astype(object)


def label_regimes(df: pd.DataFrame, eps: float | None = None, tau: float | None = None
                  ) -> tuple[pd.DataFrame, Thresholds]:
    """Label each row of results table ``df`` with its regime.

    Args:
        df: needs ``lmc_barrier`` (train-error fraction) and ``cka``; other columns are kept.
        eps: barrier threshold (Regime I iff ``lmc_barrier < eps``); estimated when None.
        tau: CKA threshold (II-B iff ``cka >= tau``); estimated from the non-Regime-I cells
            when None.

    Returns:
        A copy of ``df`` with a ``regime`` column (``I``, ``II-A`` or ``II-B``; an existing one
        is replaced) and the :class:`Thresholds` used. Each remark in ``Thresholds.warnings``
        is also issued as a :class:`RegimeWarning`.

    Raises:
        ValueError: a column missing, NaN, an empty table, a table in percent, or a given
            threshold out of range; the message names the column or value.

    Note: estimated thresholds depend on the whole table: label a whole grid at once, not one
    density at a time, and pass the recorded eps and tau when labelling more cells later.
    """
    check_table(df, LABEL_COLUMNS)
    barrier = df[keys.LMC_BARRIER].to_numpy(dtype=float)
    cka = df[keys.CKA].to_numpy(dtype=float)
    notes: list[str] = []
    if eps is None:
        eps, eps_source = _estimate_eps(barrier, notes)
    else:
        eps = _check_threshold("eps", eps, -1.0, 1.0, "a train-error fraction, not percent")
        eps_source = GIVEN
    connected = barrier >= eps
    if tau is None:
        tau, tau_source = _estimate_tau(cka[connected], notes)
    else:
        tau = _check_threshold("tau", tau, 0.0, 1.0, "a CKA value")
        tau_source = GIVEN
    labels = _label(barrier, cka, eps, tau)
    present = sorted(set(labels), key=REGIMES.index)
    if len(present) == 1 and not any(n.startswith("one regime only") for n in notes):
        notes.append(f"one regime only: every cell is Regime {present[0]}")
    for note in notes:
        warnings.warn(note, RegimeWarning, stacklevel=2)
    out = df.copy()
    out[keys.REGIME] = labels
    return out, Thresholds(eps, tau, eps_source, tau_source, tuple(notes))


def regime_counts(df: pd.DataFrame) -> dict[str, int]:
    """Number of rows of each regime (all three keys, zeros included) of a labelled table."""
    counts = df[keys.REGIME].value_counts()
    return {r: int(counts.get(r, 0)) for r in REGIMES}


def default_sensitivity_grid(thresholds: Thresholds,
                             factors: Iterable[float] = (0.5, 0.75, 1, 1.5, 2)
                             ) -> tuple[list[float], list[float]]:
    """Thresholds around ``thresholds``, each scaled on its natural scale by ``factors``.

    eps values are ``eps * f`` (the barrier height scaled); tau values are
    ``1 - (1 - tau) * f`` (the dissimilarity 1 - CKA scaled: CKA of fine-tuned copies sits
    close to 1, where an absolute step such as 0.02 would sweep over every cell). With no tau
    (no Regime-II cell) the tau values are 0.8, 0.9 and 0.95.
    """
    factors = list(factors)
    eps_values = sorted({float(np.clip(thresholds.eps * f, -1, 1)) for f in factors})
    if math.isnan(thresholds.tau):
        return eps_values, [0.8, 0.9, 0.95]
    tau_values = sorted({float(np.clip(1 - (1 - thresholds.tau) * f, 0, 1)) for f in factors})
    return eps_values, tau_values


def sensitivity(df: pd.DataFrame, eps_values: Iterable[float], tau_values: Iterable[float],
                eps: float | None = None, tau: float | None = None) -> pd.DataFrame:
    """How many labels change when the thresholds move over a grid.

    The reference labels are those of ``label_regimes(df, eps, tau)`` (thresholds estimated
    when None). For every pair in ``eps_values`` x ``tau_values`` the table is relabelled.

    Returns:
        One row per (eps, tau) pair: ``eps``, ``tau``, ``n_changed`` (rows whose label differs
        from the reference), ``frac_changed``, and the count of each regime ``n_I``,
        ``n_II-A``, ``n_II-B``. ``df.attrs["thresholds"]`` holds the reference thresholds.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)
        reference, chosen = label_regimes(df, eps, tau)
    barrier = df[keys.LMC_BARRIER].to_numpy(dtype=float)
    cka = df[keys.CKA].to_numpy(dtype=float)
    ref = reference[keys.REGIME].to_numpy()
    rows = []
    for e in eps_values:
        e = _check_threshold("eps", e, -1.0, 1.0, "a train-error fraction, not percent")
        for t in tau_values:
            t = _check_threshold("tau", t, 0.0, 1.0, "a CKA value")
            labels = _label(barrier, cka, e, t)
            changed = int((labels != ref).sum())
            row = {"eps": e, "tau": t, "n_changed": changed, "frac_changed": changed / len(ref)}
            row.update({f"n_{r}": int((labels == r).sum()) for r in REGIMES})
            rows.append(row)
    out = pd.DataFrame(rows, columns=["eps", "tau", "n_changed", "frac_changed",
                                      *(f"n_{r}" for r in REGIMES)])
    out.attrs["thresholds"] = chosen
    return out
