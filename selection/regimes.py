"""Rule labels of the three regimes, with their thresholds.

The rules are those of docs/method.md#regimes-and-how-they-are-labelled.

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

import functools
import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from sklearn.mixture import GaussianMixture

from selection._validate import check_table
from tracking import keys
from tracking.knobs import cold_to_hot

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
    # a function of the sorted values alone: the map's look-ahead labels the same Regime-II
    # CKA values once per quadrature node of a candidate, so the fit is kept for them
    return _split_sorted(x.tobytes(), bool(equal_variance))


@functools.lru_cache(maxsize=256)
def _split_sorted(raw: bytes, equal_variance: bool) -> tuple[float, float, float]:
    x = np.frombuffer(raw, dtype=float)
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


# --- labels of a grid: the jump along temperature (ours) -----------------------------------
#
# The paper draws the I/II boundary by eye at the jump of the barrier along the temperature
# axis of each sparse density, not at one level of the barrier (docs/method.md#labels): a hot,
# very sparse corner with moderate barriers is drawn II-A, while a colder cell of the same
# density with a barrier only a few times deeper is Regime I. :func:`label_grid` follows that
# drawing; :func:`label_regimes` remains the rule with one eps for given thresholds.

JUMP = "jump"                # label_method: the cell's density has a jump along temperature
LEVEL = "level"              # no jump at that density: the barrier level of the grid's jumps
POOLED = "pooled"            # no jump anywhere: one eps estimated from the pooled barriers
THRESHOLDS = "thresholds"    # eps given
LABEL_METHODS = (JUMP, LEVEL, POOLED, THRESHOLDS)

P_REGIME_I = keys.P_REGIME_I        # column: probability of Regime I
P_REGIME_IIB = keys.P_REGIME_IIB    # column: probability of II-B given Regime II
LABEL_METHOD = "label_method"       # column: which rule produced the cell's I/II label

# A jump: at one density, the cells colder than the boundary have a mean barrier at least
# JUMP_RATIO times deeper than the hotter cells' mean, every colder cell is at least
# JUMP_SEPARATION times deeper than every hotter one and deeper than BARRIER_TOL, and the
# shift of the means is at least JUMP_Z standard errors (from the pair-level spread). "Deeper
# than BARRIER_TOL" becomes deeper than JUMP_SEPARATION x the table's median |barrier| (the
# grid's typical connected scale: the paper's Regime-II barriers reach -0.03, so a cold cell at
# -0.025 above hot ones at -0.005 is noise, not a jump), capped at JUMP_FLOOR_CAP (a barrier of
# 5 train-error points is never noise, so a grid whose median cell has a barrier keeps its
# jumps).
JUMP_RATIO = 2.0
JUMP_SEPARATION = 1.5
JUMP_Z = 2.0
# ... and a step explains the density's log barriers better than no step, by more than the
# two parameters it adds cost (the BIC: a log-likelihood gain of ln(n)): the scatter of the
# cells of each side is measured, so a density whose barriers jump around from cell to cell
# (one deep cold cell among scattered moderate ones) has no jump. Residual spreads are
# floored at JUMP_LOG_FLOOR (in log |barrier| units): two clean sides do not win by a zero
# variance alone.
JUMP_EVIDENCE = 1.0       # multiplier of the BIC penalty ln(n)
JUMP_LOG_FLOOR = 0.15
JUMP_FLOOR_CAP = 0.05
# Score a candidate jump with the connected side's cells about a line deepening towards the
# boundary where they follow one (the hot corner), not about their mean (_trend_score)
JUMP_HOT_TREND = True
# Pairs behind a row's lmc_barrier_std when the table has no per-pair values (K = 3 fine-tune
# seeds): used to turn a std into a standard error (a stated approximation).
ASSUMED_PAIRS = 3
# A label is uncertain when its probability is between these (the map marks such cells).
UNCERTAIN_LOW, UNCERTAIN_HIGH = 0.2, 0.8

_PAIRS, _MEAN_STD, _MEAN_ONLY = "pairs", "mean_std", "mean_only"


@dataclass
class _Points:
    """The table's (knob, density, temperature) points, with what resampling needs."""

    knob: np.ndarray          # per point
    density: np.ndarray
    temperature: np.ndarray
    hot_rank: np.ndarray      # rank of the temperature in its knob's cold -> hot order
    barrier: np.ndarray       # mean over the point's pairs (or rows)
    cka: np.ndarray
    se: np.ndarray            # standard error of the barrier mean
    pairs: list               # per point: (barriers, ckas) arrays, or None
    rows_mean_std: list       # per point: (barrier means, stds, cka means, stds) of its rows
    source: list              # per point: _PAIRS, _MEAN_STD or _MEAN_ONLY
    row_point: np.ndarray     # per row of the table: its point


def _row_pairs(value: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(barriers, ckas) of one row's ``pair_metrics`` JSON, matched by pair; None if absent."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = json.loads(value)
        barriers, ckas = parsed[keys.LMC_BARRIER], parsed[keys.CKA]
        common = sorted(set(barriers) & set(ckas))
        b = np.array([float(barriers[k]) for k in common])
        c = np.array([float(ckas[k]) for k in common])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    ok = np.isfinite(b) & np.isfinite(c)
    return (b[ok], c[ok]) if ok.any() else None


def _points(df: pd.DataFrame) -> _Points:
    from tracking.tables import PAIR_METRICS

    knob = df[keys.KNOB].astype(str).to_numpy()
    temperature = df[keys.TEMPERATURE].to_numpy(dtype=float)
    density = df[keys.DENSITY].to_numpy(dtype=float)
    barrier = df[keys.LMC_BARRIER].to_numpy(dtype=float)
    cka = df[keys.CKA].to_numpy(dtype=float)
    b_std = (df[keys.LMC_BARRIER_STD].to_numpy(dtype=float) if keys.LMC_BARRIER_STD in df
             else np.full(len(df), np.nan))
    c_std = (df[keys.CKA_STD].to_numpy(dtype=float) if keys.CKA_STD in df
             else np.full(len(df), np.nan))
    pair_values = (df[PAIR_METRICS].tolist() if PAIR_METRICS in df.columns
                   else [None] * len(df))
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(zip(knob, density.round(12), temperature, strict=True)):
        groups.setdefault(key, []).append(i)
    keys_sorted = sorted(groups)
    ranks = {}
    for k in set(knob):
        order = cold_to_hot(k, sorted({t for kk, _, t in keys_sorted if kk == k}))
        ranks.update({(k, float(t)): r for r, t in enumerate(order)})
    row_point = np.empty(len(df), dtype=int)
    out = {name: [] for name in ("knob", "density", "temperature", "hot_rank", "barrier", "cka",
                                 "se", "pairs", "rows", "source")}
    for p, key in enumerate(keys_sorted):
        rows = groups[key]
        row_point[rows] = p
        parsed = [_row_pairs(pair_values[i]) for i in rows]
        out["knob"].append(key[0])
        out["density"].append(density[rows[0]])
        out["temperature"].append(key[2])
        out["hot_rank"].append(ranks[(key[0], float(key[2]))])
        stds = np.nan_to_num(b_std[rows], nan=0.0)
        out["rows"].append((barrier[rows], stds, cka[rows], np.nan_to_num(c_std[rows], nan=0.0)))
        if all(x is not None for x in parsed):
            b = np.concatenate([x[0] for x in parsed])
            c = np.concatenate([x[1] for x in parsed])
            out["pairs"].append((b, c))
            out["source"].append(_PAIRS)
            out["barrier"].append(float(b.mean()))
            out["cka"].append(float(c.mean()))
            out["se"].append(float(b.std(ddof=1) / math.sqrt(len(b))) if len(b) > 1 else 0.0)
        else:
            out["pairs"].append(None)
            known = not np.isnan(b_std[rows]).all()
            out["source"].append(_MEAN_STD if known else _MEAN_ONLY)
            out["barrier"].append(float(barrier[rows].mean()))
            out["cka"].append(float(cka[rows].mean()))
            out["se"].append(float(math.sqrt(np.mean(stds ** 2) / (ASSUMED_PAIRS * len(rows)))))
    return _Points(np.array(out["knob"], dtype=object), np.array(out["density"]),
                   np.array(out["temperature"]), np.array(out["hot_rank"]),
                   np.array(out["barrier"]), np.array(out["cka"]), np.array(out["se"]),
                   out["pairs"], out["rows"], out["source"], row_point)


def _resample(points: _Points, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` resampled (barrier, cka) means per point: pairs drawn with replacement (barrier and
    CKA of one pair together), or, without per-pair values, each row's mean redrawn from a
    normal with its std over sqrt(ASSUMED_PAIRS) (a stated approximation: the pairs'
    distribution is taken as normal and their number as ASSUMED_PAIRS)."""
    barrier = np.empty((n, len(points.barrier)))
    cka = np.empty_like(barrier)
    for p in range(len(points.barrier)):
        pairs = points.pairs[p]
        if pairs is not None:
            b, c = pairs
            idx = rng.integers(0, len(b), size=(n, len(b)))
            barrier[:, p], cka[:, p] = b[idx].mean(axis=1), c[idx].mean(axis=1)
        else:
            bm, bs, cm, cs = points.rows_mean_std[p]
            scale = 1 / math.sqrt(ASSUMED_PAIRS)
            barrier[:, p] = rng.normal(bm, bs * scale, size=(n, len(bm))).mean(axis=1)
            cka[:, p] = rng.normal(cm, cs * scale, size=(n, len(cm))).mean(axis=1)
    return barrier, np.clip(cka, 0.0, 1.0)


def jump_floor(barriers: np.ndarray) -> float:
    """How deep every colder cell of a jump must be: JUMP_SEPARATION x the median |barrier| of
    the labelled cells, within [BARRIER_TOL, JUMP_FLOOR_CAP]."""
    typical = float(np.median(np.maximum(-np.asarray(barriers, dtype=float), 0.0)))
    return float(np.clip(JUMP_SEPARATION * typical, BARRIER_TOL, JUMP_FLOOR_CAP))


def _step_evidence(log_m: np.ndarray, s: int) -> float:
    """Log-likelihood gain of a step after the first ``s`` of ``log_m`` over one level
    (Gaussian residuals, one variance, floored at JUMP_LOG_FLOOR ** 2)."""
    n = len(log_m)
    floor = JUMP_LOG_FLOOR ** 2
    flat = max(float(np.var(log_m)), floor)
    stepped = max((float(np.var(log_m[:s])) * s + float(np.var(log_m[s:])) * (n - s)) / n,
                  floor)
    return n / 2 * math.log(flat / stepped)


def _trend_score(log_m: np.ndarray, x: np.ndarray, s: int) -> float | None:
    """The split after the first ``s`` of ``log_m`` (cold -> hot, at temperature positions
    ``x``) scored as the sum of squares it explains when the hot side follows a line that
    deepens towards the boundary and Regime I is a plateau; None when the hot side has no
    such trend (its line's slope is not deepening towards cold, or explains its cells no
    better than one level by the BIC price ``ln n_hot``)."""
    hot_log, hot_x = log_m[s:], x[s:]
    k = len(hot_log)
    if k < 3 or np.ptp(hot_x) == 0:
        return None
    coef = np.polyfit(hot_x, hot_log, 1)
    if coef[0] >= 0:                 # x grows towards hot: a corner's |barrier| falls with x
        return None
    floor = k * JUMP_LOG_FLOOR ** 2
    level = max(float(np.sum((hot_log - hot_log.mean()) ** 2)), floor)
    line = max(float(np.sum((hot_log - np.polyval(coef, hot_x)) ** 2)), floor)
    if k / 2 * math.log(level / line) <= math.log(k):
        return None
    within = float(np.sum((log_m[:s] - log_m[:s].mean()) ** 2)) + line
    return float(np.sum((log_m - log_m.mean()) ** 2)) - within


def _find_jump(m: np.ndarray, se: np.ndarray, ratio: float = JUMP_RATIO,
               separation: float = JUMP_SEPARATION, floor: float = BARRIER_TOL,
               x: np.ndarray | None = None) -> int:
    """Number of Regime-I cells at one density from its barrier magnitudes ``m`` (ordered cold
    -> hot): the boundary with the largest mean shift among those that are a jump (module
    constants JUMP_RATIO, JUMP_Z, JUMP_EVIDENCE; ``floor``: :func:`jump_floor` of the table);
    0 when there is none. With the cells' temperature positions ``x`` (cold -> hot ranks), a
    hot side that deepens along a line towards the boundary is scored about that line
    (:func:`_trend_score`): a partial column of a hot corner then keeps the jump that its
    whole column has, where the two sides' mean log shift alone put it inside the slope."""
    n = len(m)
    best, best_score = 0, 0.0
    log_m = np.log(m + BARRIER_TOL)   # barriers spread over decades: shifts scored in log
    for s in range(1, n):
        cold, hot = m[:s], m[s:]
        if (cold.min() <= floor or cold.min() < separation * hot.max()
                or cold.mean() < ratio * hot.mean()):
            continue
        shift = cold.mean() - hot.mean()
        noise = math.sqrt(np.mean(se[:s] ** 2) / s + np.mean(se[s:] ** 2) / (n - s))
        if shift < JUMP_Z * noise:
            continue
        if _step_evidence(log_m, s) < JUMP_EVIDENCE * math.log(n):
            continue
        # the connected side may deepen towards the boundary (the hot corner, where colder
        # training still helps): scored about a line where it follows one, else its mean
        score = _trend_score(log_m, x, s) if x is not None and JUMP_HOT_TREND else None
        if score is None:
            score = s * (n - s) / n * (log_m[:s].mean() - log_m[s:].mean()) ** 2
        if score > best_score:
            best, best_score = s, score
    return best


def _label_points(points: _Points, barrier: np.ndarray, cka: np.ndarray, eps: float | None,
                  tau: float | None, detail: bool = False, ratio: float = JUMP_RATIO,
                  separation: float = JUMP_SEPARATION, pool: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Regime and label method of every point for one set of (barrier, cka) values; ``pool``:
    barriers of the grid's other cells, counted in the pooled eps but not labelled."""
    n = len(barrier)
    is_i = np.zeros(n, dtype=bool)
    method = np.empty(n, dtype=object)
    info: dict = {}
    if eps is not None:
        is_i = barrier < eps
        method[:] = THRESHOLDS
    else:
        magnitude = np.maximum(-barrier, 0.0)
        groups: dict[tuple, np.ndarray] = {}
        for p in range(n):
            groups.setdefault((points.knob[p], points.density[p]), []).append(p)
        jumps, no_jump, deepest_shallow = {}, [], math.inf
        floor = jump_floor(barrier)
        for key in sorted(groups):
            idx = np.array(sorted(groups[key], key=lambda p: points.hot_rank[p]))
            s = _find_jump(magnitude[idx], points.se[idx], ratio, separation, floor,
                           points.hot_rank[idx].astype(float))
            if s:
                is_i[idx[:s]] = True
                method[idx] = JUMP
                jumps[key] = (idx, s)
                deepest_shallow = min(deepest_shallow, float(magnitude[idx[:s]].min()))
            else:
                no_jump.append((key, idx))
        pooled_eps, source = _estimate_eps(
            barrier if pool is None else np.concatenate([barrier, pool]), [])
        if jumps:
            # a density without a jump is Regime I where its barriers are at least as deep as
            # the shallowest barrier any jump called Regime I, or as the pooled eps where that
            # is shallower (but never shallower than the jump floor): the same level as with no
            # jump at all, so that one jump appearing does not relabel every other density
            level = min(deepest_shallow, max(-pooled_eps, floor))
            level_source = LEVEL
        else:
            level, level_source = -pooled_eps, POOLED
            info["pooled_eps_source"] = source
        for _, idx in no_jump:
            if level_source == POOLED:
                # no jump anywhere: Regime I = the run of cells from the coldest whose barriers
                # are below the pooled eps (noisy barriers, e.g. -0.21 .. -0.08 cold and -0.01
                # at one hot cell, keep their cold Regime-I block; hotter cells are II)
                below = barrier[idx] < -level
                run = int(np.argmin(below)) if not below.all() else len(idx)
                is_i[idx[:run]] = True
            else:
                # all or nothing: without a jump a density is Regime I only if even its most
                # connected cell is as deep as the level the jumps set
                is_i[idx] = magnitude[idx].min() >= level
            method[idx] = level_source
        # Denser is better connected: once a density has no Regime-I cell, no denser density
        # of the knob has one at a temperature as hot as that density's coldest cell or hotter.
        clipped = []
        for knob in sorted(set(points.knob)):
            limit = math.inf
            for key in sorted(k for k in groups if k[0] == knob):
                idx = np.array(groups[key])
                bad = idx[is_i[idx] & (points.hot_rank[idx] >= limit)]
                if bad.size:
                    is_i[bad] = False
                    clipped.extend(int(p) for p in bad)
                if not is_i[idx].any():
                    limit = min(limit, float(points.hot_rank[idx].min()))
        if detail:
            info["jump_floor"] = floor
            info["level"] = level
            info["level_source"] = level_source
            info["clipped_points"] = clipped
            info["jumps"] = jumps
    connected = ~is_i
    notes: list[str] = []
    if tau is None:
        tau_value, tau_source = _estimate_tau(cka[connected], notes)
    else:
        tau_value, tau_source = tau, GIVEN
    with np.errstate(invalid="ignore"):
        regime = np.where(is_i, REGIME_I,
                          np.where(cka >= tau_value, REGIME_II_B, REGIME_II_A)).astype(object)
    info.update(tau=tau_value, tau_source=tau_source, tau_notes=notes)
    return regime, method, info


def label_grid(df: pd.DataFrame, eps: float | None = None, tau: float | None = None, *,
               n_resamples: int = 200, seed: int = 0, pool: Iterable[float] | None = None
               ) -> tuple[pd.DataFrame, dict]:
    """Label every cell of a results table I / II-A / II-B, with label probabilities.

    Works on any subset of a grid (a whole grid, a few cells, cells arriving one by one) and
    on several knobs at once (each knob's temperatures ordered by its own direction).

    Without ``eps`` (the default), Regime I vs II follows the *jump* along temperature (ours,
    after how the paper drew its map): the cells of one knob and density are ordered from the
    coldest temperature to the hottest; a boundary is a jump when the colder cells' mean
    barrier is at least ``JUMP_RATIO`` (2) times the hotter cells' mean, every colder cell is
    at least ``JUMP_SEPARATION`` (1.5) times deeper than every hotter one and deeper than
    :func:`jump_floor` (1.5 x the table's median ``|barrier|``, within [0.01, 0.05]), the
    shift of the means is at least ``JUMP_Z`` (2) standard errors of the pair-level spread,
    and the step explains the density's ``log(|barrier| + BARRIER_TOL)`` better than one
    level by more than the BIC's price of its two parameters (log-likelihood gain >=
    ``JUMP_EVIDENCE * ln(n)``, residual spread floored at ``JUMP_LOG_FLOOR``): scattered
    barriers with one deep cold cell are no jump. Of several jumps the one with the largest
    shift of ``log(|barrier| + BARRIER_TOL)`` wins (score ``s (n - s) / n * shift**2``, ``s`` cells
    colder than it), and those ``s`` cells are Regime I (``label_method`` ``jump``). So each
    density is judged on its own barrier scale: a hot sparse corner with moderate barriers
    next to a much deeper cold block is II-A. A density without a jump is all Regime I iff
    even its most connected cell is at least as deep as the shallowest Regime-I barrier any
    jump found (or the pooled eps below, where shallower, but not shallower than the jump
    floor), else all Regime II (``level``); with no jump in the whole table, the level is
    the eps of :func:`label_regimes` estimated from the pooled barriers (``pooled``).
    Finally, denser is better connected: a density with no Regime-I cell
    forbids Regime I at every denser density of its knob at temperatures as hot as its
    coldest cell or hotter (those cells become Regime II; ``info["clipped_points"]``).

    With ``eps`` given, Regime I iff ``lmc_barrier < eps`` (``thresholds``), as
    :func:`label_regimes`. Among Regime-II cells, II-B iff ``cka >= tau``, ``tau`` given or
    estimated as in :func:`label_regimes` from the Regime-II cells of the table.

    Cells are the table's (knob, density, temperature) points: several rows of one point (dense
    seeds) are labelled together (their pairs pooled) and every row gets the point's label.

    Probabilities: the whole labelling (jumps, level, tau) is repeated ``n_resamples`` times
    on resampled barrier and CKA means: each point's per-pair values (column
    ``pair_metrics``, see ``tracking.tables.PAIR_METRICS``; K fine-tune seeds give K(K-1)/2
    pairs per dense seed) are drawn with replacement, a pair's barrier and CKA together. A row
    without per-pair values is redrawn from a normal with its ``lmc_barrier_std`` /
    ``cka_std`` over sqrt(ASSUMED_PAIRS) (3 pairs assumed; an approximation, stated in
    ``info["pair_source"]``); without stds it does not move. Deterministic given ``seed``.

    Args:
        df: a results table: ``knob``, ``temperature``, ``density``, ``lmc_barrier``, ``cka``
            (no NaN); optional ``lmc_barrier_std``, ``cka_std``, ``pair_metrics``.
        eps, tau: thresholds (None = eps-free jump / estimated tau).
        n_resamples: resamples for the probabilities (0: probabilities 0/1 from the labels).
        seed: seed of the resampling.
        pool: barriers of the grid's cells that are NOT in ``df`` (e.g. a model's predictions
            for the cells not run yet): they enter the pooled eps (the two-cluster split of
            the grid's barriers) beside the table's own barriers, and get no label. A partial
            grid is rarely a random sample of its grid (an adaptive run samples the sparse,
            deep-barrier cells first), and its own barriers alone move that split. The jump
            floor (a median) stays the table's own: predictions are smoother than cells and
            would lower it. Not resampled; ignored with ``eps`` given.

    Returns:
        ``(labelled, info)``. ``labelled`` is a copy of ``df`` with columns ``regime``,
        ``p_regime_I`` (probability of Regime I), ``p_regime_IIB`` (probability of II-B given
        Regime II; NaN when no resample put the cell in Regime II) and ``label_method``
        (``jump``, ``level``, ``pooled`` or ``thresholds``). ``info`` (JSON-ready) records
        ``method`` (``jump`` or ``thresholds``), ``eps``/``eps_source``, ``tau``/
        ``tau_source``, ``level``/``level_source`` (the level used at densities without a
        jump), ``parameters`` (JUMP_RATIO, JUMP_Z, BARRIER_TOL, JUMP_EVIDENCE,
        JUMP_LOG_FLOOR, the jump floor used), ``densities`` (per knob and
        density: its method, the number of Regime-I cells, the boundary = the coldest
        connected temperature, the hottest Regime-I temperature, the mean barrier on each
        side), ``clipped_points``, ``pair_source`` (``pairs``, ``mean_std``, ``mean_only`` or
        ``mixed``), ``n_resamples``, ``seed``, ``pool_size`` (barriers of ``pool`` used),
        with resamples ``resampled_agreement`` (the fraction of points whose label a resample
        keeps: ``median``, ``mean`` and ``at_least_95``, the share of resamples keeping >= 95%
        of the labels: how far a re-measured grid's labels would agree with these) and
        ``warnings``.

    Raises:
        ValueError: a column missing, NaN, an empty table, a table in percent, a threshold out
            of range, or ``n_resamples < 0``.
    """
    check_table(df, (keys.KNOB, keys.TEMPERATURE, keys.DENSITY, *LABEL_COLUMNS))
    if eps is not None:
        eps = _check_threshold("eps", eps, -1.0, 1.0, "a train-error fraction, not percent")
    if tau is not None:
        tau = _check_threshold("tau", tau, 0.0, 1.0, "a CKA value")
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples!r}")
    if pool is not None:
        pool = np.asarray(list(pool), dtype=float)
        if not np.isfinite(pool).all() or (np.abs(pool) > 1).any():
            raise ValueError("pool: barriers must be finite train-error fractions in [-1, 1]")
    points = _points(df)
    regime, method, detail = _label_points(points, points.barrier, points.cka, eps, tau,
                                           detail=True, pool=pool)
    if n_resamples:
        rng = np.random.default_rng(seed)
        barriers, ckas = _resample(points, n_resamples, rng)
        count_i = np.zeros(len(regime))
        count_ii = np.zeros(len(regime))
        count_iib = np.zeros(len(regime))
        agreement = np.empty(n_resamples)
        for r in range(n_resamples):
            labels, _, _ = _label_points(points, barriers[r], ckas[r], eps, tau, pool=pool)
            agreement[r] = float(np.mean(labels == regime))
            count_i += labels == REGIME_I
            count_ii += labels != REGIME_I
            count_iib += labels == REGIME_II_B
        p_i = count_i / n_resamples
        with np.errstate(invalid="ignore", divide="ignore"):
            p_iib = np.where(count_ii > 0, count_iib / np.maximum(count_ii, 1), np.nan)
    else:
        p_i = (regime == REGIME_I).astype(float)
        p_iib = np.where(regime == REGIME_I, np.nan, (regime == REGIME_II_B).astype(float))
    out = df.copy()
    rp = points.row_point
    out[keys.REGIME] = regime[rp]
    out[P_REGIME_I] = p_i[rp]
    out[P_REGIME_IIB] = p_iib[rp]
    out[LABEL_METHOD] = method[rp]
    info = _grid_info(points, regime, method, detail, eps, n_resamples, seed,
                      pool_size=0 if pool is None or eps is not None else len(pool),
                      agreement=agreement if n_resamples else None)
    for note in info["warnings"]:
        warnings.warn(note, RegimeWarning, stacklevel=2)
    return out, info


def _labels_only(df: pd.DataFrame, eps: float | None = None, tau: float | None = None, *,
                 pool: np.ndarray | None = None) -> np.ndarray:
    """:func:`label_grid`'s regime of every row of ``df``, alone: no checks of the table or
    the thresholds, no resampling, no info, no warnings. For a caller that builds the table
    from checked values and labels it many times (the map's look-ahead)."""
    points = _points(df)
    return _labels_of_points(points, points.barrier, eps, tau, pool=pool)


def _labels_of_points(points: _Points, barrier: np.ndarray, eps: float | None,
                      tau: float | None, *, pool: np.ndarray | None = None) -> np.ndarray:
    """:func:`_labels_only` on points built once (``_points``), with the per-point barriers
    ``barrier`` in place of theirs: the look-ahead labels one table at several values of
    one cell's barrier."""
    regime, _, _ = _label_points(points, barrier, points.cka, eps, tau, pool=pool)
    return regime[points.row_point]


def _grid_info(points: _Points, regime: np.ndarray, method: np.ndarray, detail: dict,
               eps: float | None, n_resamples: int, seed: int, *, pool_size: int = 0,
               agreement: np.ndarray | None = None) -> dict:
    """label_grid's info (see there); ``agreement``: each resample's fraction of the labels
    kept."""
    notes = list(detail.get("tau_notes", []))
    densities = []
    for key in sorted({(k, d) for k, d in zip(points.knob, points.density, strict=True)}):
        idx = [p for p in range(len(regime)) if (points.knob[p], points.density[p]) == key]
        idx.sort(key=lambda p: points.hot_rank[p])
        in_i = [p for p in idx if regime[p] == REGIME_I]
        connected = [p for p in idx if regime[p] != REGIME_I]
        densities.append({
            keys.KNOB: key[0], keys.DENSITY: float(key[1]), "method": str(method[idx[0]]),
            "n_cells": len(idx), "n_regime_I": len(in_i),
            "boundary_temperature": (float(points.temperature[connected[0]])
                                     if connected else None),
            "hottest_regime_I_temperature": (float(points.temperature[in_i[-1]])
                                             if in_i else None),
            "regime_I_mean_barrier": (float(points.barrier[in_i].mean()) if in_i else None),
            "connected_mean_barrier": (float(points.barrier[connected].mean())
                                       if connected else None),
        })
    sources = sorted(set(points.source))
    pair_source = sources[0] if len(sources) == 1 else "mixed"
    if _MEAN_STD in sources and n_resamples:
        notes.append(f"no per-pair values for some cells ({pair_source}): their probabilities "
                     f"come from mean and std, {ASSUMED_PAIRS} pairs assumed")
    if _MEAN_ONLY in sources and n_resamples:
        notes.append("no per-pair values and no stds for some cells: their probabilities are "
                     "0 or 1 (their labels), not measured")
    if eps is None and detail.get("level_source") == POOLED:
        notes.append("no jump along temperature at any density: Regime I by one eps estimated "
                     "from the pooled barriers")
    level = detail.get("level")
    tau = detail["tau"]
    info = {
        "method": THRESHOLDS if eps is not None else JUMP,
        "eps": eps, "eps_source": GIVEN if eps is not None else None,
        "level": None if level is None else float(level),
        "level_source": detail.get("level_source"),
        "tau": None if tau is None or math.isnan(tau) else float(tau),
        "tau_source": detail["tau_source"],
        "parameters": {"jump_ratio": JUMP_RATIO, "jump_z": JUMP_Z, "barrier_tol": BARRIER_TOL,
                       "jump_evidence": JUMP_EVIDENCE, "jump_log_floor": JUMP_LOG_FLOOR,
                       "jump_floor": detail.get("jump_floor")},
        "densities": densities,
        "clipped_points": [{keys.KNOB: str(points.knob[p]), keys.DENSITY: float(points.density[p]),
                            keys.TEMPERATURE: float(points.temperature[p])}
                           for p in detail.get("clipped_points", [])],
        "pair_source": pair_source, "n_resamples": int(n_resamples), "seed": int(seed),
        "pool_size": int(pool_size), "warnings": notes,
    }
    if agreement is not None:
        # how well the labels would survive re-measuring the grid: each resample's labels
        # (every point) against these
        info["resampled_agreement"] = {
            "median": float(np.median(agreement)), "mean": float(agreement.mean()),
            "at_least_95": float(np.mean(agreement >= 0.95))}
    return info


def uncertain(p: np.ndarray | pd.Series | float) -> np.ndarray:
    """True where a probability lies strictly between UNCERTAIN_LOW and UNCERTAIN_HIGH."""
    p = np.asarray(p, dtype=float)
    return (p > UNCERTAIN_LOW) & (p < UNCERTAIN_HIGH)


def grid_thresholds(info: dict) -> Thresholds:
    """The :class:`Thresholds` view of a :func:`label_grid` ``info`` (for logging and reports):
    eps is the given one, or NaN with source ``jump`` when the jump labelled Regime I."""
    eps = info["eps"] if info["eps"] is not None else math.nan
    tau = info["tau"] if info["tau"] is not None else math.nan
    notes = tuple(info.get("warnings", ()))
    return Thresholds(float(eps), float(tau), info["eps_source"] or info["method"],
                      info["tau_source"], notes)


def grid_sensitivity(df: pd.DataFrame, eps: float | None = None, tau: float | None = None,
                     ratios: Iterable[float] = (1.5, 2, 3, 4),
                     separations: Iterable[float] = (1.0, 1.25, 1.5, 2),
                     tau_factors: Iterable[float] = (0.5, 0.75, 1.5, 2)) -> pd.DataFrame:
    """How many labels of :func:`label_grid` change when its parameters move, one at a time.

    With ``eps`` given this is :func:`sensitivity` over :func:`default_sensitivity_grid`
    (columns ``eps``, ``tau``, ...). Without, the reference is ``label_grid(df, None, tau)``
    and each row moves one parameter: ``jump_ratio`` over ``ratios``, ``jump_separation`` over
    ``separations``, and tau (the dissimilarity ``1 - tau`` scaled by ``tau_factors``, as in
    :func:`default_sensitivity_grid`). Columns: ``parameter``, ``value``, ``n_changed``,
    ``frac_changed``, ``n_I``, ``n_II-A``, ``n_II-B`` (counts over the table's points).
    """
    if eps is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RegimeWarning)
            _, chosen = label_regimes(df, eps, tau)
        return sensitivity(df, *default_sensitivity_grid(chosen), eps,
                           None if math.isnan(chosen.tau) else chosen.tau)
    check_table(df, (keys.KNOB, keys.TEMPERATURE, keys.DENSITY, *LABEL_COLUMNS))
    points = _points(df)
    ref, _, detail = _label_points(points, points.barrier, points.cka, None, tau, detail=True)
    moves = [("jump_ratio", float(r), {"ratio": float(r)}) for r in ratios]
    moves += [("jump_separation", float(v), {"separation": float(v)}) for v in separations]
    if not math.isnan(detail["tau"]):
        moves += [("tau", float(np.clip(1 - (1 - detail["tau"]) * f, 0, 1)), None)
                  for f in tau_factors]
    rows = []
    for parameter, value, kwargs in moves:
        if kwargs is None:
            labels, _, _ = _label_points(points, points.barrier, points.cka, None, value)
        else:
            labels, _, _ = _label_points(points, points.barrier, points.cka, None, tau, **kwargs)
        changed = int((labels != ref).sum())
        row = {"parameter": parameter, "value": value, "n_changed": changed,
               "frac_changed": changed / len(ref)}
        row.update({f"n_{r}": int((labels == r).sum()) for r in REGIMES})
        rows.append(row)
    return pd.DataFrame(rows, columns=["parameter", "value", "n_changed", "frac_changed",
                                       *(f"n_{r}" for r in REGIMES)])
