"""The regime map: the grid it draws and the colours in the PNG."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from selection.regime_map import REGIME_COLORS, plot_regime_map, regime_grid
from selection.regimes import REGIME_I, REGIME_II_A, REGIME_II_B
from selection.synthetic import TRUE_REGIME, synthetic_table
from tracking import keys


def _truth(**kwargs):
    df = synthetic_table(**kwargs)
    df[keys.REGIME] = df[TRUE_REGIME]
    return df


def _has_colour(image: np.ndarray, colour: str) -> bool:
    return bool((np.abs(image[..., :3] - np.array(to_rgb(colour))).max(axis=-1) < 0.02).any())


def test_grid_layout_matches_the_phase_diagrams():
    df = _truth()
    grid = regime_grid(df)
    assert list(grid.index) == sorted(df[keys.DENSITY].unique())          # density upwards
    assert list(grid.columns) == sorted(df[keys.TEMPERATURE].unique())    # temperature ascending
    for row in df.itertuples(index=False):
        assert grid.loc[row.density, row.temperature] == row.regime
    # the phase structure: sparse + cold (80 epochs) is I, hot is II-A, dense + cold is II-B
    assert grid.loc[0.05, 80] == REGIME_I and grid.loc[0.8, 2] == REGIME_II_A
    assert grid.loc[0.8, 80] == REGIME_II_B


def test_majority_over_dense_seeds_and_missing_cells():
    df = _truth(dense_seeds=3)
    cell = (df[keys.TEMPERATURE] == 80) & (df[keys.DENSITY] == 0.05)
    df.loc[df.index[cell][:2], keys.REGIME] = REGIME_II_B  # 2 of 3 seeds say II-B
    df = df[~((df[keys.TEMPERATURE] == 2) & (df[keys.DENSITY] == 0.8))]
    grid = regime_grid(df)
    assert grid.loc[0.05, 80] == REGIME_II_B
    assert grid.loc[0.8, 2] is None


def test_png_shows_each_regime_in_its_colour(tmp_path):
    df = _truth()
    path = plot_regime_map(df, tmp_path / "map.png", title="test")
    image = imread(path)
    for regime in (REGIME_I, REGIME_II_A, REGIME_II_B):
        assert _has_colour(image, REGIME_COLORS[regime]), regime
    only_b = df.assign(**{keys.REGIME: REGIME_II_B})
    image = imread(plot_regime_map(only_b, tmp_path / "b.png"))
    # legend patches keep every colour present: check the plotting area's share instead
    b = np.abs(image[..., :3] - np.array(to_rgb(REGIME_COLORS[REGIME_II_B]))).max(axis=-1) < 0.02
    i = np.abs(image[..., :3] - np.array(to_rgb(REGIME_COLORS[REGIME_I]))).max(axis=-1) < 0.02
    assert b.sum() > 50 * i.sum()


def test_regime_map_errors(tmp_path):
    df = _truth()
    with pytest.raises(ValueError, match="lacks required column.*'regime'"):
        plot_regime_map(df.drop(columns=[keys.REGIME]), tmp_path / "x.png")
    bad = df.copy()
    bad.loc[0, keys.REGIME] = "III"
    with pytest.raises(ValueError, match="unknown labels"):
        plot_regime_map(bad, tmp_path / "x.png")
    two = df.copy()
    two.loc[0, keys.KNOB] = "lr"
    with pytest.raises(ValueError, match="one knob"):
        plot_regime_map(two, tmp_path / "x.png")


def test_uncertain_cells_are_marked():
    from selection.regime_map import uncertain_grid
    from selection.regimes import P_REGIME_I, P_REGIME_IIB

    df = synthetic_table(seed=0)
    df[keys.REGIME] = df[TRUE_REGIME]
    assert uncertain_grid(df) is None          # no probabilities: nothing to mark
    df[P_REGIME_I] = (df[keys.REGIME] == "I").astype(float)
    df[P_REGIME_IIB] = (df[keys.REGIME] == "II-B").astype(float)
    first, second = df.index[0], df.index[1]
    df.loc[first, P_REGIME_I] = 0.5 if df.loc[first, keys.REGIME] == "I" else 0.3
    if df.loc[second, keys.REGIME] != "I":
        df.loc[second, P_REGIME_IIB] = 0.6
    marked = uncertain_grid(df)
    expected = {(df.loc[first, keys.DENSITY], df.loc[first, keys.TEMPERATURE])}
    if df.loc[second, keys.REGIME] != "I":
        expected.add((df.loc[second, keys.DENSITY], df.loc[second, keys.TEMPERATURE]))
    got = {(d, t) for d in marked.index for t in marked.columns if marked.at[d, t]}
    assert got == expected
