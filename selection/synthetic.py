"""Synthetic results tables with known regimes, for tests, examples and benchmarks.

The layout mimics the phase structure of SCIENCE.md: Regime I at low density with cold
training (a clear barrier, low CKA), II-A at hot training (connected, lower CKA), II-B at high
density with cold training (connected, high CKA). The truth is in column ``true_regime``;
``regime`` is left empty, as in a fresh results table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from selection._knob import cold_to_hot
from selection.regimes import REGIME_I, REGIME_II_A, REGIME_II_B
from tracking import keys
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
    """A results table (DESIGN.md columns plus ``true_regime``) with a known regime per cell.

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
