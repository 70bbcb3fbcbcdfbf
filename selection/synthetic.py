"""Synthetic results tables with known regimes, for tests, examples and benchmarks.

The layout mimics the phase structure of docs/method.md#the-idea: Regime I at low density with cold
training (a clear barrier, low CKA), II-A at hot training (connected, lower CKA), II-B at high
density with cold training (connected, high CKA). The truth is in column ``true_regime``;
``regime`` is left empty, as in a fresh results table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from selection.regimes import REGIME_I, REGIME_II_A, REGIME_II_B
from tracking import keys
from tracking.knobs import cold_to_hot
from tracking.tables import RESULT_COLUMNS, RUN_ID

TRUE_REGIME = "true_regime"

# Metric ranges per regime: far apart, so a correct labeller recovers the truth exactly.
BARRIER_RANGE = {REGIME_I: (-0.15, -0.04), REGIME_II_A: (-0.004, 0.002),
                 REGIME_II_B: (-0.004, 0.002)}
CKA_RANGE = {REGIME_I: (0.55, 0.70), REGIME_II_A: (0.74, 0.84), REGIME_II_B: (0.90, 0.97)}


def true_regime(hotness: float, sparsity: float) -> str:
    """Regime of a cell from its ranks in [0, 1]: ``hotness`` 0 = coldest temperature,
    ``sparsity`` 1 = lowest density."""
    if hotness < sparsity - 0.4:
        return REGIME_I
    return REGIME_II_A if hotness > 0.5 else REGIME_II_B


def synthetic_table(temperatures: Sequence[float] = (2, 5, 10, 20, 40, 80),
                    densities: Sequence[float] = (0.05, 0.1, 0.2, 0.4, 0.8),
                    knob: str = "epochs", dense_seeds: int = 1, seed: int = 0) -> pd.DataFrame:
    """A results table with a known regime per cell.

    Its columns are those of docs/design.md#the-results-table plus ``true_regime``.

    Test accuracy is highest at the coldest temperature that is not Regime I, falling by two
    points per temperature step away from it; validation accuracy tracks it with noise of
    0.1 point; dense accuracy rises as training gets colder. Deterministic given ``seed``.
    """
    rng = np.random.default_rng(seed)
    cold_to_hot_values = cold_to_hot(knob, temperatures)
    hot_rank = {t: i / max(len(cold_to_hot_values) - 1, 1)
                for i, t in enumerate(cold_to_hot_values)}
    sparse_to_dense = sorted(densities)
    sparsity = {d: 1 - i / max(len(sparse_to_dense) - 1, 1) for i, d in enumerate(sparse_to_dense)}
    rows = []
    for density in sparse_to_dense:
        regimes = {t: true_regime(hot_rank[t], sparsity[density]) for t in cold_to_hot_values}
        best = next((i for i, t in enumerate(cold_to_hot_values) if regimes[t] != REGIME_I), 0)
        for i, temperature in enumerate(cold_to_hot_values):
            regime = regimes[temperature]
            for dense_seed in range(dense_seeds):
                test_acc = 0.9 - 0.3 * sparsity[density] - 0.02 * abs(i - best)
                dense_acc = 0.95 - 0.1 * hot_rank[temperature]
                rows.append({
                    keys.KNOB: knob, keys.TEMPERATURE: temperature, keys.DENSITY: density,
                    keys.DENSE_SEED: dense_seed,
                    keys.TEST_ACC: test_acc + rng.normal(0, 0.001),
                    keys.TEST_ACC_STD: 0.002,
                    keys.VAL_ACC: test_acc + rng.normal(0, 0.001),
                    keys.LMC_BARRIER: rng.uniform(*BARRIER_RANGE[regime]),
                    keys.LMC_BARRIER_STD: 0.003,
                    keys.CKA: rng.uniform(*CKA_RANGE[regime]), keys.CKA_STD: 0.01,
                    keys.PRUNED_ACC: 0.1 + 0.8 * dense_acc * (1 - sparsity[density]),
                    keys.DENSE_ACC: dense_acc + rng.normal(0, 0.001),
                    keys.REGIME: None, RUN_ID: None, keys.SPEC_HASH: None,
                    TRUE_REGIME: regime,
                })
    return pd.DataFrame(rows, columns=[*RESULT_COLUMNS, TRUE_REGIME])


# --- grids shaped like measured ones: a jump along temperature ------------------------------
#
# Both generators below build a table from a *drawn* map (the regime every cell is meant to
# have, in column ``true_regime``) and per-pair landscape values (column ``pair_metrics``,
# K fine-tune seeds give K(K-1)/2 pairs per row) whose means are the row's ``lmc_barrier`` and
# ``cka``. The barrier of a cell is a continuous function of its temperature, so the same
# generator serves a coarse grid and a finer one. Magnitudes are drawn per seed inside the
# ranges given below, so a labeller is tested on a family of grids, not one table.

PAPER_TEMPERATURES = (10, 40, 70, 100, 130, 160)      # epochs of a 160-epoch run
PAPER_FINE_TEMPERATURES = tuple(range(10, 161, 10))   # the paper's own 16 temperatures
# the 10 x 9 paper-like grid that bench/map.py, bench/label_stability.py and
# bench/label_subsets.py replay (with seed=1)
PAPER_MAP_TEMPERATURES = (10, 20, 30, 40, 60, 80, 100, 120, 140, 160)
PAPER_DENSITIES = (0.05, 0.06, 0.07, 0.08, 0.1, 0.14, 0.2, 0.4, 0.8)
PAPER_FIRST_DECAY = 80                                # epoch of the first learning-rate decay

MNIST1D_TEMPERATURES = (2, 5, 10, 20, 40, 80)         # the demo grid's epochs
MNIST1D_FINE_TEMPERATURES = (2, 3, 5, 8, 12, 20, 30, 40, 60, 80)
MNIST1D_DENSITIES = (0.05, 0.1, 0.2, 0.4, 0.8)

# Paper-like grid (CIFAR-10 PreResNet-20, epochs knob, Figure 2 of the paper as drawn):
# Regime I = colder than the boundary epoch at the sparse densities, the barrier depth there
# drawn from these ranges (train-error fractions) ...
_PAPER_BOUNDARY = {0.05: 80, 0.06: 80, 0.07: 80, 0.08: 80, 0.1: 115}
_PAPER_DEPTH = {0.05: (0.60, 0.66), 0.06: (0.45, 0.55), 0.07: (0.30, 0.40),
                0.08: (0.15, 0.25), 0.1: (0.06, 0.10)}
# ... the hot sparse corner (drawn II-A): barrier magnitude rising linearly from the hottest
# temperature (10 epochs) to the boundary, between these ranges ...
_PAPER_CORNER = {0.05: ((0.04, 0.08), (0.20, 0.25)), 0.06: ((0.04, 0.06), (0.09, 0.14))}
# ... every other cell connected, barrier in [-0.03, 0.003].
_PAPER_CONNECTED = (-0.03, 0.003)


def _pair_json(barriers: np.ndarray, ckas: np.ndarray, seeds: int) -> str:
    import json
    from itertools import combinations

    pairs = [f"{a}_{b}" for a, b in combinations(range(seeds), 2)]
    return json.dumps({keys.LMC_BARRIER: dict(zip(pairs, map(float, barriers), strict=True)),
                       keys.CKA: dict(zip(pairs, map(float, ckas), strict=True))},
                      sort_keys=True)


def _grid_rows(knob: str, cells: list[dict], rng: np.random.Generator, dense_seeds: int,
               finetune_seeds: int, pair_noise: float) -> pd.DataFrame:
    """Rows of a results table from cells ``{temperature, density, regime, barrier, cka,
    acc}`` (the cell's true means): per dense seed, per-pair values around the means."""
    from tracking.tables import PAIR_METRICS

    n_pairs = finetune_seeds * (finetune_seeds - 1) // 2
    rows = []
    for cell in cells:
        for dense_seed in range(dense_seeds):
            scale = pair_noise * abs(cell["barrier"]) + 0.002
            barriers = np.minimum(cell["barrier"] + rng.normal(0, scale, n_pairs), 0.005)
            ckas = np.clip(cell["cka"] + rng.normal(0, 0.01, n_pairs), 0.0, 1.0)
            test_acc = cell["acc"] + rng.normal(0, 0.001)
            rows.append({
                keys.KNOB: knob, keys.TEMPERATURE: cell["temperature"],
                keys.DENSITY: cell["density"], keys.DENSE_SEED: dense_seed,
                keys.TEST_ACC: test_acc, keys.TEST_ACC_STD: 0.002,
                keys.VAL_ACC: cell["acc"] + rng.normal(0, 0.001),
                keys.LMC_BARRIER: float(barriers.mean()),
                keys.LMC_BARRIER_STD: float(barriers.std()),
                keys.CKA: float(ckas.mean()), keys.CKA_STD: float(ckas.std()),
                keys.PRUNED_ACC: 0.1, keys.DENSE_ACC: cell.get("dense_acc", 0.9),
                keys.REGIME: None, RUN_ID: None, keys.SPEC_HASH: None,
                PAIR_METRICS: _pair_json(barriers, ckas, finetune_seeds),
                TRUE_REGIME: cell["regime"],
            })
    return pd.DataFrame(rows, columns=[*RESULT_COLUMNS, TRUE_REGIME])


def paper_like_regime(epochs: float, density: float) -> str:
    """The regime the paper-like grid means a cell to have (its drawn map).

    Regime I: colder (more epochs) than the boundary, 80 epochs (the first learning-rate
    decay) at densities <= 8 %, 115 at 10 %, none above. II-B: connected, >= 70 epochs and
    >= 7 % density (dense and cold). II-A: the rest (hot, and the hot sparse corner).
    """
    boundary = _PAPER_BOUNDARY.get(_nearest(density, _PAPER_BOUNDARY), math.inf)
    if density <= 0.1 + 1e-9 and epochs > boundary:
        return REGIME_I
    return REGIME_II_B if epochs >= 70 and density >= 0.07 - 1e-9 else REGIME_II_A


def _nearest(value: float, table: dict) -> float:
    return min(table, key=lambda k: abs(k - value))


def paper_like_grid(temperatures: Sequence[float] = PAPER_TEMPERATURES,
                    densities: Sequence[float] = PAPER_DENSITIES, *, seed: int = 0,
                    dense_seeds: int = 1, finetune_seeds: int = 3,
                    pair_noise: float = 0.1) -> pd.DataFrame:
    """A results table shaped like the paper's CIFAR-10 epochs grid (Figure 2), with the
    paper's drawn regions as ``true_regime`` (:func:`paper_like_regime`).

    Barriers (train-error fractions): Regime I from about -0.06 (10 % density) down to
    -0.66 (5 %); the hot sparse corner (5-6 %, <= 80 epochs) -0.04 to -0.25, deepening towards
    the boundary, drawn II-A; every other cell in [-0.03, 0.003]. So along the temperature
    axis of a sparse density the barrier collapses at the boundary (e.g. -0.25 -> -0.63),
    while one level of the barrier cannot separate the regimes. CKA: I 0.55-0.75, II-A
    0.80-0.90, II-B 0.93-0.98. Test accuracy peaks at the coldest connected temperature of
    each density (the coldest temperature where no cell is Regime I), falling 1 point per
    temperature step hotter and 2 per step colder, plus noise; validation accuracy alike.
    Per-pair values (``pair_metrics``) scatter around the means with a standard deviation of
    ``pair_noise`` x |barrier| + 0.002 (CKA 0.01). Deterministic given ``seed``.
    """
    rng = np.random.default_rng(seed)
    temps = cold_to_hot("epochs", temperatures)[::-1]          # hot -> cold
    cells = []
    for density in sorted(densities):
        key = _nearest(density, _PAPER_DEPTH)
        sparse = density <= 0.1 + 1e-9
        depth = rng.uniform(*_PAPER_DEPTH[key]) if sparse else 0.0
        corner = _PAPER_CORNER.get(_nearest(density, _PAPER_CORNER)) if density <= 0.06 + 1e-9 \
            else None
        low, high = (rng.uniform(*corner[0]), rng.uniform(*corner[1])) if corner else (0, 0)
        regimes = [paper_like_regime(t, density) for t in temps]
        connected = [i for i, r in enumerate(regimes) if r != REGIME_I]
        best = connected[-1] if connected else 0           # the coldest connected temperature
        for i, (t, regime) in enumerate(zip(temps, regimes, strict=True)):
            if regime == REGIME_I:
                barrier = -depth * (1 + 0.05 * rng.uniform(-1, 1))
                cka = rng.uniform(0.55, 0.75)
            elif corner:
                frac = (t - 10) / (PAPER_FIRST_DECAY - 10)
                barrier = -(low + (high - low) * min(max(frac, 0), 1))
                cka = rng.uniform(0.80, 0.90)
            else:
                barrier = rng.uniform(*_PAPER_CONNECTED)
                cka = rng.uniform(0.80, 0.90) if regime == REGIME_II_A else rng.uniform(0.93, 0.98)
            steps = (best - i) if i <= best else 2 * (i - best)
            acc = 0.93 - 0.25 * (0.1 / max(density, 0.05)) ** 1.5 - 0.01 * steps
            cells.append({"temperature": t, "density": density, "regime": regime,
                          "barrier": barrier, "cka": cka, "acc": acc})
    return _grid_rows("epochs", cells, rng, dense_seeds, finetune_seeds, pair_noise)


def mnist1d_like_regime(epochs: float, density: float) -> str:
    """The regime the MNIST-1D-like grid means a cell to have: Regime I at <= 5 % density and
    >= 15 epochs (cold); II-B connected at >= 10 % density and >= 10 epochs; II-A the rest."""
    if density <= 0.05 + 1e-9 and epochs >= 15:
        return REGIME_I
    return REGIME_II_B if density >= 0.1 - 1e-9 and epochs >= 10 else REGIME_II_A


def mnist1d_like_grid(temperatures: Sequence[float] = MNIST1D_TEMPERATURES,
                      densities: Sequence[float] = MNIST1D_DENSITIES, *, seed: int = 0,
                      dense_seeds: int = 1, finetune_seeds: int = 3,
                      pair_noise: float = 0.1) -> pd.DataFrame:
    """A results table shaped like the MNIST-1D demo grid (``bench/data/demo_grid.csv``):
    ``true_regime`` from :func:`mnist1d_like_regime`.

    Barriers: at 5 % density the cold cells (>= 15 epochs) -0.15 to -0.27, the hot ones
    -0.015 to -0.06 (a jump at the boundary); at 10 % -0.002 to -0.012 (no barrier); from
    20 % on within 0.005 of 0 (most within 0.001 at >= 40 %). CKA: I 0.84-0.89, II-A
    0.92-0.97, II-B 0.985-0.9995. Test accuracy: the coldest connected temperature is the best
    at every density (by 0.5 point per step of the temperature order), Regime-I cells worse.
    """
    rng = np.random.default_rng(seed)
    temps = cold_to_hot("epochs", temperatures)[::-1]          # hot -> cold
    cells = []
    for density in sorted(densities):
        regimes = [mnist1d_like_regime(t, density) for t in temps]
        connected = [i for i, r in enumerate(regimes) if r != REGIME_I]
        best = connected[-1] if connected else 0
        for i, (t, regime) in enumerate(zip(temps, regimes, strict=True)):
            if regime == REGIME_I:
                barrier, cka = -rng.uniform(0.15, 0.27), rng.uniform(0.84, 0.89)
            elif density <= 0.05 + 1e-9:
                barrier, cka = -rng.uniform(0.015, 0.06), rng.uniform(0.92, 0.97)
            elif density <= 0.1 + 1e-9:
                barrier = -rng.uniform(0.002, 0.012)
                cka = (rng.uniform(0.92, 0.97) if regime == REGIME_II_A
                       else rng.uniform(0.985, 0.995))
            else:
                spread = 0.005 if density < 0.4 else 0.001
                barrier = -rng.uniform(0, spread)
                cka = (rng.uniform(0.92, 0.97) if regime == REGIME_II_A
                       else rng.uniform(0.99, 0.9995))
            steps = (best - i) if i <= best else 2 * (i - best)
            acc = 0.97 - 0.1 * (0.05 / density) ** 1.5 - 0.005 * steps
            cells.append({"temperature": t, "density": density, "regime": regime,
                          "barrier": barrier, "cka": cka, "acc": acc})
    return _grid_rows("epochs", cells, rng, dense_seeds, finetune_seeds, pair_noise)


def drawn_grid(temperatures: Sequence[float] = PAPER_MAP_TEMPERATURES,
               densities: Sequence[float] = PAPER_DENSITIES, *, seed: int = 0,
               dense_seeds: int = 1, finetune_seeds: int = 3,
               pair_noise: float = 0.1) -> pd.DataFrame:
    """A results table of the three regimes whose SHAPE is drawn from ``seed``, for checking
    that what holds on :func:`paper_like_grid` is not tied to its one drawn map.

    Drawn per table, within the paper's typology (Regime I cold and sparse, II-A hot, II-B
    cold and dense): how many of the sparsest densities have a Regime I (1 to about half);
    the boundary at the sparsest (the first Regime-I temperature lies 20 to 70 % of the way
    from the cold end to the hot end), moving 0 to 2 temperatures colder per denser density;
    whether the sparsest one or two densities have a hot corner drawn II-A (barriers
    deepening towards the boundary to at most half the Regime-I depth: a jump, as in the
    paper); the II-B region (from a drawn density on, the coldest 40 to 70 % of the
    temperatures). Regime-I depth falls with density (0.6 to 0.08, as the paper-like grid's
    5 to 10 %). CKA rises smoothly towards cold and dense within each regime's range (I
    0.55-0.75 at random, II-A 0.80-0.90, II-B 0.93-0.98; noise 0.01). Test accuracy per
    density peaks at a temperature that moves smoothly with density: 0 to 2 steps hotter
    than the coldest connected one where there is a Regime I, else a drawn cold temperature
    moving at most one step per density; it falls 0.3 to 1.5 points per step hotter and 0.5
    to 3 per step colder (slopes drawn per table), plus the rows' noise (0.1 point). Pairs
    and noise as :func:`paper_like_grid`. ``true_regime``: the drawn map. Deterministic given
    ``seed``.
    """
    rng = np.random.default_rng(seed)
    temps = cold_to_hot("epochs", temperatures)[::-1]          # hot -> cold
    dens = sorted(densities)
    nt, nd = len(temps), len(dens)
    n_sparse = int(rng.integers(1, max(2, nd // 2) + 1))      # densities with a Regime I
    first_cold = int(round(rng.uniform(0.2, 0.7) * (nt - 1)))  # from the cold end
    corner_rows = int(rng.choice([0, 1, 2]))
    b_density = int(rng.integers(1, max(2, nd - 2)))           # II-B from this density on ...
    b_temp = nt - max(2, int(round(rng.uniform(0.4, 0.7) * nt)))   # ... and this index on
    hot_slope, cold_slope = rng.uniform(0.003, 0.015), rng.uniform(0.005, 0.03)
    best_offset = int(rng.integers(0, 3))                      # steps hotter than the boundary
    free_best = int(rng.integers(nt // 2, nt))                 # a best without a Regime I
    cells = []
    boundary = nt - 1 - first_cold                             # first Regime-I index, hot->cold
    for di, density in enumerate(dens):
        if di > 0:
            boundary += int(rng.integers(0, 3))                # colder with density
        edge = min(nt, max(1, boundary)) if di < n_sparse else nt
        depth = 0.6 * (0.08 / 0.6) ** (di / max(1, n_sparse - 1)) if n_sparse > 1 else 0.3
        depth *= rng.uniform(0.85, 1.15)
        corner = di < min(corner_rows, n_sparse)
        if edge < nt:
            best = max(0, edge - 1 - best_offset)
        else:
            free_best = int(np.clip(free_best + rng.integers(-1, 2), 0, nt - 1))
            best = free_best
        for i, t in enumerate(temps):
            cold, dense = i / max(1, nt - 1), di / max(1, nd - 1)    # 0..1 towards cold/dense
            if i >= edge:
                regime = REGIME_I
                barrier = -depth * (1 + 0.05 * rng.uniform(-1, 1))
                cka = rng.uniform(0.55, 0.75)
            else:
                regime = REGIME_II_B if (di >= b_density and i >= b_temp) else REGIME_II_A
                if corner:
                    barrier = -depth * (0.1 + 0.35 * i / max(1, edge - 1))
                else:
                    barrier = rng.uniform(*_PAPER_CONNECTED)
                low, high = (0.80, 0.90) if regime == REGIME_II_A else (0.93, 0.98)
                cka = float(np.clip(low + (high - low) * (0.5 * cold + 0.5 * dense)
                                    + rng.normal(0, 0.01), low - 0.01, high + 0.01))
            steps = hot_slope * (best - i) if i <= best else cold_slope * (i - best)
            acc = 0.93 - 0.25 * (0.1 / max(density, 0.05)) ** 1.5 - steps
            cells.append({"temperature": t, "density": density, "regime": regime,
                          "barrier": barrier, "cka": cka, "acc": acc})
    return _grid_rows("epochs", cells, rng, dense_seeds, finetune_seeds, pair_noise)
