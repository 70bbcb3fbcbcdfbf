"""Rule labels: recovery on tables with known regimes, threshold estimation, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from selection.regimes import (
    BARRIER_TOL,
    ESTIMATED,
    FALLBACK,
    GIVEN,
    REGIME_I,
    REGIME_II_A,
    REGIME_II_B,
    UNUSED,
    RegimeWarning,
    default_sensitivity_grid,
    label_regimes,
    regime_counts,
    sensitivity,
    two_cluster_split,
)
from selection.synthetic import BARRIER_RANGE, CKA_RANGE, TRUE_REGIME, synthetic_table
from tracking import keys


def _label(df, eps=None, tau=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)
        return label_regimes(df, eps, tau)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dense_seeds", [1, 3])
def test_known_regimes_recovered_exactly(seed, dense_seeds):
    df = synthetic_table(dense_seeds=dense_seeds, seed=seed)
    labelled, thresholds = _label(df)
    assert labelled[keys.REGIME].tolist() == labelled[TRUE_REGIME].tolist()
    assert thresholds.eps_source == ESTIMATED and thresholds.tau_source == ESTIMATED
    # the estimated thresholds lie between the clusters that generated the data
    assert BARRIER_RANGE[REGIME_I][1] < thresholds.eps < BARRIER_RANGE[REGIME_II_A][0]
    assert CKA_RANGE[REGIME_II_A][1] < thresholds.tau < CKA_RANGE[REGIME_II_B][0]
    assert set(regime_counts(labelled)) == {REGIME_I, REGIME_II_A, REGIME_II_B}


def test_labels_do_not_depend_on_row_order_and_input_is_not_modified():
    df = synthetic_table(seed=3)
    before = df.copy()
    labelled, thresholds = _label(df)
    shuffled, thresholds2 = _label(df.sample(frac=1, random_state=0))
    pd.testing.assert_frame_equal(df, before)
    assert thresholds2.eps == pytest.approx(thresholds.eps)
    assert thresholds2.tau == pytest.approx(thresholds.tau)
    assert (shuffled[keys.REGIME] == labelled.loc[shuffled.index, keys.REGIME]).all()


def test_wide_barrier_cluster_is_not_cut_by_the_split():
    # Tight connected cluster at 0, barrier cells spread over [-0.15, -0.04]: a split halfway
    # between the cluster means (k-means) would call -0.045 connected.
    rng = np.random.default_rng(0)
    connected = rng.uniform(-0.003, 0.002, 30)
    barriers = np.array([-0.15, -0.13, -0.11, -0.08, -0.06, -0.045])
    threshold, low_mean, high_mean = two_cluster_split(np.r_[connected, barriers])
    assert barriers.max() < threshold < connected.min()
    assert low_mean < barriers.max() and high_mean > connected.min()


def test_two_cluster_split_keeps_its_fit_by_the_sorted_values():
    from selection import regimes

    values = np.random.default_rng(1).uniform(0.8, 1.0, 25)
    fresh = regimes._split_sorted.__wrapped__(np.sort(values).tobytes(), True)
    regimes._split_sorted.cache_clear()
    assert two_cluster_split(values, equal_variance=True) == fresh
    assert two_cluster_split(values[::-1], equal_variance=True) == fresh   # the same fit
    assert regimes._split_sorted.cache_info().hits == 1
    assert two_cluster_split(values) != fresh          # free variances: a fit of its own
    assert two_cluster_split(np.r_[values, 0.5], equal_variance=True) != fresh


def test_two_cluster_split_needs_two_values():
    with pytest.raises(ValueError, match="two distinct values"):
        two_cluster_split([0.3, 0.3, 0.3])


def test_given_thresholds_are_used_and_recorded():
    df = synthetic_table(seed=1)
    labelled, thresholds = _label(df, eps=-0.02, tau=0.88)
    assert (thresholds.eps, thresholds.tau) == (-0.02, 0.88)
    assert thresholds.eps_source == thresholds.tau_source == GIVEN
    expected = np.where(df[keys.LMC_BARRIER] < -0.02, REGIME_I,
                        np.where(df[keys.CKA] >= 0.88, REGIME_II_B, REGIME_II_A))
    assert labelled[keys.REGIME].tolist() == expected.tolist()
    assert thresholds.params()[keys.REGIME_EPS] == "-0.02"


def test_all_connected_table_is_regime_ii_and_says_so():
    df = synthetic_table(seed=2)
    df[keys.LMC_BARRIER] = np.random.default_rng(0).uniform(-0.008, 0.004, len(df))
    with pytest.warns(RegimeWarning, match="one regime only: no barrier cluster found"):
        labelled, thresholds = label_regimes(df)
    assert thresholds.eps == -BARRIER_TOL and thresholds.eps_source == FALLBACK
    assert REGIME_I not in set(labelled[keys.REGIME])
    assert any("no barrier cluster" in w for w in thresholds.warnings)
    # the CKA split still separates II-A from II-B
    assert set(labelled[keys.REGIME]) == {REGIME_II_A, REGIME_II_B}


def test_all_barrier_table_is_regime_i_and_tau_unused():
    df = synthetic_table(seed=2)
    df[keys.LMC_BARRIER] = np.random.default_rng(0).uniform(-0.2, -0.05, len(df))
    with pytest.warns(RegimeWarning) as record:
        labelled, thresholds = label_regimes(df)
    assert any("one regime only: every cell has a barrier" in str(w.message) for w in record)
    assert set(labelled[keys.REGIME]) == {REGIME_I}
    assert math.isnan(thresholds.tau) and thresholds.tau_source == UNUSED
    assert thresholds.to_dict()["tau"] is None


def test_one_cka_cluster_makes_every_regime_ii_cell_ii_b():
    df = synthetic_table(seed=4)
    connected = df[keys.LMC_BARRIER] > -0.01
    df.loc[connected, keys.CKA] = np.linspace(0.95, 0.955, connected.sum())
    labelled, thresholds = _label(df)
    assert thresholds.tau_source == FALLBACK
    assert set(labelled.loc[connected, keys.REGIME]) == {REGIME_II_B}
    assert any("one Regime-II cluster only" in w for w in thresholds.warnings)


def test_single_row_table_does_not_crash():
    df = synthetic_table().head(1)
    labelled, thresholds = _label(df)
    assert len(labelled) == 1 and thresholds.warnings


def test_sensitivity_counts_changed_labels():
    df = synthetic_table(seed=5)
    reference, chosen = _label(df)
    grid = [chosen.eps, -0.5]
    table = sensitivity(df, eps_values=grid, tau_values=[chosen.tau, 0.0])
    assert len(table) == 4
    at_chosen = table[(table["eps"] == chosen.eps) & (table["tau"] == chosen.tau)]
    assert at_chosen["n_changed"].item() == 0
    # eps = -0.5 turns every Regime-I cell (barriers >= -0.15) into Regime II
    n_i = (reference[keys.REGIME] == REGIME_I).sum()
    moved = table[(table["eps"] == -0.5) & (table["tau"] == chosen.tau)]
    assert moved["n_I"].item() == 0
    assert moved["n_changed"].item() == n_i
    # tau = 0 turns every II-A cell into II-B
    all_b = table[(table["eps"] == chosen.eps) & (table["tau"] == 0.0)]
    assert all_b["n_II-A"].item() == 0
    assert all_b["n_changed"].item() == (reference[keys.REGIME] == REGIME_II_A).sum()
    assert (table[["n_I", "n_II-A", "n_II-B"]].sum(axis=1) == len(df)).all()


def test_default_sensitivity_grid_brackets_the_thresholds():
    df = synthetic_table(seed=5)
    chosen = _label(df)[1]
    eps_values, tau_values = default_sensitivity_grid(chosen)
    assert min(eps_values) < chosen.eps < max(eps_values) and chosen.eps in eps_values
    assert min(tau_values) < chosen.tau < max(tau_values) and chosen.tau in tau_values
    assert all(-1 <= e < 0 for e in eps_values) and all(0 <= t <= 1 for t in tau_values)
    table = sensitivity(df, eps_values, tau_values, chosen.eps, chosen.tau)
    assert len(table) == len(eps_values) * len(tau_values)


# --- bad input ---------------------------------------------------------------------------

def test_missing_column_is_named():
    df = synthetic_table().drop(columns=[keys.CKA])
    with pytest.raises(ValueError, match="lacks required column.*'cka'"):
        label_regimes(df)


def test_nan_metric_is_named_with_its_cell():
    df = synthetic_table()
    df.loc[4, keys.LMC_BARRIER] = np.nan
    with pytest.raises(ValueError, match=r"'lmc_barrier' has missing \(NaN\) values in row 4 "
                                         r"\(temperature="):
        label_regimes(df)


def test_empty_table():
    with pytest.raises(ValueError, match="empty"):
        label_regimes(synthetic_table().iloc[0:0])


def test_percent_barriers_are_refused_with_the_fix():
    df = synthetic_table()
    df[keys.LMC_BARRIER] *= 100
    with pytest.raises(ValueError, match="percent.*divide the column by 100"):
        label_regimes(df)


@pytest.mark.parametrize("column", [keys.TEST_ACC, keys.VAL_ACC, keys.DENSE_ACC])
def test_percent_accuracies_are_refused(column):
    df = synthetic_table()
    df[column] *= 100
    with pytest.raises(ValueError, match=f"{column}.*percent"):
        label_regimes(df)


def test_non_numeric_metric():
    df = synthetic_table()
    df[keys.CKA] = df[keys.CKA].astype(str)
    df.loc[0, keys.CKA] = "high"
    with pytest.raises(ValueError, match="'cka' must be numeric"):
        label_regimes(df)


@pytest.mark.parametrize("eps, tau, match", [(-5.0, None, "eps must"), (None, 1.5, "tau must"),
                                             (float("nan"), None, "eps must")])
def test_bad_given_thresholds(eps, tau, match):
    with pytest.raises(ValueError, match=match):
        label_regimes(synthetic_table(), eps, tau)
