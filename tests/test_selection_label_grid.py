"""Grid labels (selection.regimes.label_grid): the jump along temperature, probabilities from
resampled pairs, partial grids, given thresholds."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from selection import regimes
from selection.regimes import (
    JUMP,
    LABEL_METHOD,
    LEVEL,
    P_REGIME_I,
    P_REGIME_IIB,
    POOLED,
    REGIME_I,
    REGIME_II_A,
    REGIME_II_B,
    THRESHOLDS,
    RegimeWarning,
    label_grid,
    label_regimes,
)
from selection.synthetic import (
    MNIST1D_FINE_TEMPERATURES,
    PAPER_FINE_TEMPERATURES,
    PAPER_MAP_TEMPERATURES,
    TRUE_REGIME,
    drawn_grid,
    mnist1d_like_grid,
    paper_like_grid,
    synthetic_table,
)
from tracking import keys
from tracking.tables import PAIR_METRICS

DEMO_TABLE = Path(__file__).resolve().parent.parent / "bench" / "data" / "demo_grid.csv"


def _grid(df, eps=None, tau=None, **kw):
    kw.setdefault("n_resamples", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)
        return label_grid(df, eps, tau, **kw)


def _i_agreement(labelled: pd.DataFrame, truth: pd.Series) -> float:
    return float(((labelled[keys.REGIME] == REGIME_I) == (truth == REGIME_I)).mean())


@pytest.mark.parametrize("temperatures", [None, PAPER_FINE_TEMPERATURES], ids=["6T", "16T"])
def test_paper_like_grid_labels_follow_the_drawn_map(temperatures):
    args = () if temperatures is None else (temperatures,)
    agreements, pooled = [], []
    for seed in range(10):
        df = paper_like_grid(*args, seed=seed)
        labelled, info = _grid(df)
        agreements.append(_i_agreement(labelled, df[TRUE_REGIME]))
        assert info["method"] == JUMP
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RegimeWarning)
            pooled.append(_i_agreement(label_regimes(df)[0], df[TRUE_REGIME]))
    assert min(agreements) >= 0.95 and np.mean(agreements) >= 0.98
    # one eps over the pooled barriers cannot draw this map (the reason for the jump)
    assert np.mean(pooled) < 0.95


def test_labels_follow_maps_of_drawn_shapes():
    # boundaries, corners, II-B regions and depths drawn per table: the labeller is not
    # tuned to the one map of paper_like_grid
    maps = set()
    for seed in range(1, 13):
        df = drawn_grid(seed=seed)
        labelled, _ = _grid(df)
        assert (labelled[keys.REGIME] == df[TRUE_REGIME]).mean() >= 0.95, seed
        maps.add(tuple(df[TRUE_REGIME]))
    assert len(maps) == 12                       # twelve different maps
    assert drawn_grid(seed=3).equals(drawn_grid(seed=3))


def test_hot_sparse_corner_is_connected_and_cold_block_is_regime_i():
    df = paper_like_grid(seed=3)
    labelled, info = _grid(df)
    corner = labelled[(labelled[keys.DENSITY] <= 0.06) & (labelled[keys.TEMPERATURE] <= 70)]
    assert (corner[keys.LMC_BARRIER] < -0.03).all()          # moderate barriers ...
    assert (corner[keys.REGIME] == REGIME_II_A).all()        # ... drawn II-A
    by_density = {d["density"]: d for d in info["densities"]}
    for density in (0.05, 0.06, 0.07, 0.08):
        entry = by_density[density]
        assert entry["method"] == JUMP and entry["n_regime_I"] == 3
        assert entry["boundary_temperature"] == 70 and entry["hottest_regime_I_temperature"] == 100
    assert by_density[0.1]["n_regime_I"] == 2 and by_density[0.1]["boundary_temperature"] == 100
    assert by_density[0.8]["n_regime_I"] == 0 and by_density[0.8]["method"] == LEVEL
    json.dumps(info, allow_nan=False)   # JSON-ready


@pytest.mark.parametrize("temperatures", [None, MNIST1D_FINE_TEMPERATURES], ids=["6T", "10T"])
def test_mnist1d_like_grid_keeps_the_demo_behaviour(temperatures):
    args = () if temperatures is None else (temperatures,)
    for seed in range(10):
        df = mnist1d_like_grid(*args, seed=seed)
        labelled, _ = _grid(df)
        regime = labelled[keys.REGIME]
        cold_sparse = (df[keys.DENSITY] <= 0.05) & (df[keys.LMC_BARRIER] <= -0.07)
        assert cold_sparse.sum() >= 3 and (regime[cold_sparse] == REGIME_I).all()
        flat_dense = (df[keys.DENSITY] >= 0.2) & (df[keys.LMC_BARRIER].abs() < 0.001)
        assert flat_dense.any() and not (regime[flat_dense] == REGIME_I).any()
        assert _i_agreement(labelled, df[TRUE_REGIME]) == 1.0


def test_demo_table_cold_sparse_cells_are_regime_i_and_dense_ones_are_not():
    df = pd.read_csv(DEMO_TABLE)
    labelled, info = _grid(df, n_resamples=50)
    regime = labelled[keys.REGIME]
    cold = (df[keys.DENSITY] <= 0.05) & (df[keys.TEMPERATURE] >= 20)
    assert (df.loc[cold, keys.LMC_BARRIER] < -0.07).all() and (regime[cold] == REGIME_I).all()
    assert not (regime[df[keys.DENSITY] >= 0.2] == REGIME_I).any()
    # no per-pair values in this table: mean and std, and it says so
    assert info["pair_source"] == "mean_std"
    assert any("3 pairs assumed" in w for w in info["warnings"])


def test_the_older_synthetic_table_is_recovered_exactly():
    for seed in range(8):
        for dense_seeds in (1, 3):
            df = synthetic_table(dense_seeds=dense_seeds, seed=seed)
            labelled, _ = _grid(df)
            assert labelled[keys.REGIME].tolist() == df[TRUE_REGIME].tolist()


def test_probabilities_are_reproducible_and_near_0_or_1_for_clear_cells():
    df = paper_like_grid(seed=1)
    a, _ = _grid(df, n_resamples=100, seed=7)
    b, _ = _grid(df, n_resamples=100, seed=7)
    pd.testing.assert_frame_equal(a, b)
    deep = (df[TRUE_REGIME] == REGIME_I) & (df[keys.LMC_BARRIER] < -0.1)  # cold sparse block
    assert (a.loc[deep, P_REGIME_I] >= 0.95).all()
    dense = df[keys.DENSITY] >= 0.2
    assert (a.loc[dense, P_REGIME_I] <= 0.05).all()
    # II-B given II: clear for the cold dense cells, NaN where no resample is Regime II
    cold_dense = dense & (df[keys.TEMPERATURE] >= 100)
    assert (a.loc[cold_dense, P_REGIME_IIB] >= 0.95).all()
    assert a.loc[deep, P_REGIME_IIB].isna().all()
    assert a[P_REGIME_I].between(0, 1).all()


def test_probabilities_move_with_the_pair_spread():
    # one density whose jump is small against the spread of its pairs: uncertain labels
    rows = []
    for t, mean in zip((10, 20, 40, 80), (-0.004, -0.005, -0.03, -0.035), strict=True):
        pairs = mean + np.array([-0.03, 0.0, 0.03]) if t >= 40 else mean + np.zeros(3)
        rows.append({keys.KNOB: "epochs", keys.TEMPERATURE: t, keys.DENSITY: 0.1,
                     keys.DENSE_SEED: 0, keys.LMC_BARRIER: float(np.mean(pairs)),
                     keys.CKA: 0.9,
                     PAIR_METRICS: json.dumps({keys.LMC_BARRIER: {"0_1": pairs[0], "0_2": pairs[1],
                                                                  "1_2": pairs[2]},
                                               keys.CKA: {"0_1": 0.9, "0_2": 0.9, "1_2": 0.9}})})
    labelled, _ = _grid(pd.DataFrame(rows), n_resamples=300, seed=0)
    cold = labelled[keys.TEMPERATURE] >= 40
    # the spread moves a cold cell's probability well away from certainty (without it: 1.0)
    assert (labelled.loc[cold, P_REGIME_I] <= 0.85).any()


def test_mean_and_std_fallback_without_pair_values():
    df = paper_like_grid(seed=2).drop(columns=[PAIR_METRICS])
    labelled, info = _grid(df, n_resamples=100)
    assert info["pair_source"] == "mean_std"
    deep = (df[TRUE_REGIME] == REGIME_I) & (df[keys.LMC_BARRIER] < -0.1)
    assert (labelled.loc[deep, P_REGIME_I] >= 0.95).all()
    assert _i_agreement(labelled, df[TRUE_REGIME]) >= 0.95


@pytest.mark.parametrize("seed", range(5))
def test_partial_grids_of_three_or_four_cells(seed):
    df = paper_like_grid(seed=seed)
    rng = np.random.default_rng(seed)
    for size in (1, 3, 4, 8):
        subset = df.iloc[rng.choice(len(df), size, replace=False)]
        labelled, info = _grid(subset, n_resamples=20)
        assert len(labelled) == size and labelled[keys.REGIME].notna().all()
        assert set(labelled[LABEL_METHOD]) <= {JUMP, LEVEL, POOLED}
    # a density with a clear jump is labelled by it even with two cells there
    chosen = [(0.05, 70), (0.05, 100), (0.8, 160)]
    subset = pd.concat([df[(df[keys.DENSITY] == d) & (df[keys.TEMPERATURE] == t)]
                        for d, t in chosen])
    labelled, info = _grid(subset)
    assert labelled[keys.REGIME].tolist() == [REGIME_II_A, REGIME_I, REGIME_II_B]
    assert labelled[LABEL_METHOD].tolist() == [JUMP, JUMP, LEVEL]


def test_given_eps_is_the_threshold_rule():
    df = paper_like_grid(seed=0)
    labelled, info = _grid(df, eps=-0.05, tau=0.92)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegimeWarning)
        rule, _ = label_regimes(df, -0.05, 0.92)
    assert labelled[keys.REGIME].tolist() == rule[keys.REGIME].tolist()
    assert info["method"] == THRESHOLDS and info["eps"] == -0.05 and info["tau"] == 0.92
    assert (labelled[LABEL_METHOD] == THRESHOLDS).all()


def test_labels_do_not_depend_on_row_order_and_dense_seeds_share_a_label():
    df = paper_like_grid(seed=4, dense_seeds=3)
    before = df.copy()
    labelled, _ = _grid(df)
    shuffled, _ = _grid(df.sample(frac=1, random_state=0))
    pd.testing.assert_frame_equal(df, before)
    assert (shuffled[keys.REGIME] == labelled.loc[shuffled.index, keys.REGIME]).all()
    per_point = labelled.groupby([keys.DENSITY, keys.TEMPERATURE])[keys.REGIME].nunique()
    assert (per_point == 1).all()
    assert _i_agreement(labelled, df[TRUE_REGIME]) >= 0.95


def test_denser_is_better_connected_clips_a_lone_dense_jump():
    df = paper_like_grid(seed=0)
    # a cold cell at 40 % density with a barrier far deeper than its neighbours: a "jump"
    # there, but 14 % and 20 % are connected at every temperature
    hit = (df[keys.DENSITY] == 0.4) & (df[keys.TEMPERATURE] == 160)
    df.loc[hit, keys.LMC_BARRIER] = -0.2
    df.loc[hit, PAIR_METRICS] = np.nan
    labelled, info = _grid(df)
    assert labelled.loc[hit, keys.REGIME].item() != REGIME_I
    assert {"knob": "epochs", "density": 0.4, "temperature": 160.0} in info["clipped_points"]


DEMO_FINE_TABLE = DEMO_TABLE.with_name("demo_fine_grid.csv")


def test_leaving_out_one_cell_of_the_measured_fine_grid_relabels_no_other_cell():
    # the 10 x 7 measured MNIST-1D grid: without the step's evidence test, leaving out the cell
    # 10 epochs / 5 % made a one-cell jump appear at 5 % and relabelled 18 other cells
    df = pd.read_csv(DEMO_FINE_TABLE)
    reference = _grid(df)[0][keys.REGIME].to_numpy() == REGIME_I
    flips = []
    for left_out in range(len(df)):
        keep = np.arange(len(df)) != left_out
        labels = _grid(df[keep].reset_index(drop=True))[0][keys.REGIME].to_numpy()
        flips.append(int(((labels == REGIME_I) != reference[keep]).sum()))
    assert max(flips) <= 1, flips


def _one_density(magnitudes, connected_density=0.8):
    """A table of one sparse density (temperatures = epochs, cold = many) with the given
    barrier magnitudes cold -> hot, beside a connected dense density."""
    epochs = [2.0 ** (len(magnitudes) - i) for i in range(len(magnitudes))]   # cold -> hot
    rows = [{keys.KNOB: "epochs", keys.TEMPERATURE: e, keys.DENSITY: 0.05,
             keys.LMC_BARRIER: -m, keys.CKA: 0.9}
            for e, m in zip(epochs, magnitudes, strict=True)]
    rows += [{keys.KNOB: "epochs", keys.TEMPERATURE: e, keys.DENSITY: connected_density,
              keys.LMC_BARRIER: -0.001, keys.CKA: 0.95} for e in epochs]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("hot_trend", [True, False], ids=["trend", "means-only"])
def test_a_partial_column_whose_hot_cells_deepen_towards_the_boundary_keeps_its_jump(
        hot_trend, monkeypatch):
    # a sparse column as the paper draws it: hot II-A cells deepening steadily towards the
    # boundary (-0.05 .. -0.26), then the jump to a Regime-I block near -0.6 (drawn_grid seed
    # 6, 5 %). Scored by the shift of the two sides' mean log barrier alone, the column with
    # three cells not run yet (one of them in the block) put the jump inside the slope
    monkeypatch.setattr(regimes, "JUMP_HOT_TREND", hot_trend)
    column = [0.622, 0.600, 0.541, 0.584, 0.255, 0.241, 0.176, 0.113, 0.103, 0.051]
    full = _one_density(column)
    full_labels, info = _grid(full)
    sparse = next(d for d in info["densities"] if d["density"] == 0.05)
    assert sparse["method"] == JUMP and sparse["n_regime_I"] == 4
    epochs = sorted(full[keys.TEMPERATURE].unique(), reverse=True)       # cold -> hot
    not_run = (full[keys.DENSITY] == 0.05) & full[keys.TEMPERATURE].isin(
        [epochs[1], epochs[2], epochs[7]])
    part_labels, info = _grid(full[~not_run].reset_index(drop=True))
    sparse = next(d for d in info["densities"] if d["density"] == 0.05)
    kept = part_labels[keys.REGIME].tolist() == full_labels[~not_run][keys.REGIME].tolist()
    # without the trend the jump falls inside the slope (the case this guards against)
    assert kept == hot_trend and (sparse["n_regime_I"] == 2) == hot_trend


def test_one_deep_cold_cell_among_scattered_barriers_is_no_jump():
    cold = 0.21
    scattered = [0.11, 0.077, 0.042, 0.06, 0.012, 0.015, 0.083, 0.074]   # measured, 5 %
    _, info = _grid(_one_density([cold, *scattered]))
    sparse = next(d for d in info["densities"] if d["density"] == 0.05)
    assert sparse["method"] != JUMP
    # the same deep cold cell above tightly grouped hot barriers is a jump at the same place
    tight = [0.03, 0.028, 0.032, 0.03, 0.029, 0.031, 0.03, 0.03]
    _, info = _grid(_one_density([cold, *tight]))
    sparse = next(d for d in info["densities"] if d["density"] == 0.05)
    assert sparse["method"] == JUMP and sparse["n_regime_I"] == 1
    assert info["parameters"]["jump_evidence"] > 0


def test_half_of_a_paper_like_grid_keeps_the_full_grids_labels():
    # partial grids, as a map run labels them: a cold cell at -0.02 .. -0.03 above hot ones
    # near 0 (Regime-II noise at 10-14 % density) must not read as a jump
    df = paper_like_grid(PAPER_MAP_TEMPERATURES, seed=1)
    full = _grid(df)[0][keys.REGIME].to_numpy() == REGIME_I
    rng = np.random.default_rng(0)
    agreements = []
    for _ in range(10):
        idx = np.sort(rng.choice(len(df), len(df) // 2, replace=False))
        labels = _grid(df.iloc[idx].reset_index(drop=True))[0][keys.REGIME].to_numpy()
        agreements.append(float(((labels == REGIME_I) == full[idx]).mean()))
    assert np.mean(agreements) >= 0.98 and min(agreements) >= 0.9, agreements


def test_a_shallow_cold_step_at_the_tables_noise_scale_is_no_jump():
    # a grid whose connected barriers reach -0.03: a step from -0.005 hot to -0.025 cold is
    # noise; the same step at a grid whose barriers sit near 0 is a jump
    noisy = _one_density([0.025, 0.025, 0.005, 0.004, 0.005, 0.006])
    noisy.loc[noisy[keys.DENSITY] == 0.8, keys.LMC_BARRIER] = [-0.02, -0.03, -0.025, -0.02,
                                                              -0.03, -0.025]
    _, info = _grid(noisy)
    assert info["parameters"]["jump_floor"] > 0.025
    assert next(d for d in info["densities"] if d["density"] == 0.05)["method"] != JUMP
    quiet = _one_density([0.025, 0.025, 0.005, 0.004, 0.005, 0.006])
    _, info = _grid(quiet)
    sparse = next(d for d in info["densities"] if d["density"] == 0.05)
    assert sparse["method"] == JUMP and sparse["n_regime_I"] == 2


def test_bad_input():
    df = paper_like_grid(seed=0)
    with pytest.raises(ValueError, match="n_resamples"):
        label_grid(df, n_resamples=-1)
    with pytest.raises(ValueError, match="eps"):
        label_grid(df, eps=-5)
    with pytest.raises(ValueError, match="lacks required columns"):
        label_grid(df.drop(columns=[keys.CKA]))


def test_a_pool_of_the_missing_cells_gives_a_biased_part_the_full_grids_thresholds():
    # the three sparsest densities of the measured 10 x 7 grid: a sample of the deep-barrier
    # cells only, so its own pooled split falls deeper than the full grid's and their I/II
    # labels move; with the other cells' barriers in the pool they are the full grid's
    table = pd.read_csv(DEMO_FINE_TABLE)
    part = table[keys.DENSITY].isin((0.05, 0.07, 0.1))
    full = _grid(table)[0][part.to_numpy()]
    alone, _ = _grid(table[part])
    pool = table[~part].groupby([keys.TEMPERATURE, keys.DENSITY])[keys.LMC_BARRIER].mean()
    pooled, info = _grid(table[part], pool=pool.to_numpy())
    in_i = full[keys.REGIME].to_numpy() == REGIME_I
    assert ((alone[keys.REGIME].to_numpy() == REGIME_I) != in_i).sum() >= 10
    assert ((pooled[keys.REGIME].to_numpy() == REGIME_I) == in_i).all()
    assert info["pool_size"] == len(pool) and info["level_source"] == POOLED
    # the pool is only for the estimated thresholds: with eps given it changes nothing
    given = _grid(table[part], eps=-0.02, pool=pool.to_numpy())
    assert given[1]["pool_size"] == 0
    assert (given[0][keys.REGIME] == _grid(table[part], eps=-0.02)[0][keys.REGIME]).all()
    with pytest.raises(ValueError, match="pool"):
        label_grid(table[part], pool=[np.nan])
    with pytest.raises(ValueError, match="pool"):
        label_grid(table[part], pool=[-3.0])      # percent, not a fraction
