"""Phase diagrams: the numbers they show and the PNGs they write."""

from __future__ import annotations

import math

import matplotlib.image
import pandas as pd
import pytest

from tracking import keys
from tracking.plots import phase_diagrams, phase_grids

ALL_PLOTS = [keys.PLOT_TEST_ERROR, keys.PLOT_TEST_ERROR_NORMALIZED, keys.PLOT_LMC_BARRIER,
             keys.PLOT_CKA, keys.PLOT_PHASE_DIAGRAMS]


def _table(knob="epochs", seeds=(0, 1), skip=((10, 0.2),)) -> pd.DataFrame:
    """3 temperatures x 2 densities x seeds, rows shuffled, one cell left out."""
    rows = []
    for seed in seeds:
        for temperature in (40, 5, 10):
            for density in (0.2, 0.05):
                if (temperature, density) in skip:
                    continue
                rows.append({
                    keys.KNOB: knob, keys.TEMPERATURE: temperature, keys.DENSITY: density,
                    keys.DENSE_SEED: seed,
                    keys.TEST_ACC: 0.9 - temperature / 1000 - density / 10 + seed / 100,
                    keys.LMC_BARRIER: -temperature / 1000 + seed / 1000,
                    keys.CKA: 0.5 + density + seed / 10,
                })
    return pd.DataFrame(rows)


def test_phase_grids_numbers():
    grids = phase_grids(_table(), "epochs")

    assert set(grids) == {"test_error", "test_error_normalized", "lmc_barrier", "cka"}
    for grid in grids.values():
        assert list(grid.columns) == [5, 10, 40]
        assert list(grid.index) == [0.05, 0.2]
        assert math.isnan(grid.loc[0.2, 10])          # the missing cell stays missing
    # mean over dense seeds 0 and 1, in percent
    expected = 100 * (1 - (0.9 - 0.040 - 0.005 + 0.005))
    assert grids["test_error"].loc[0.05, 40] == pytest.approx(expected)
    assert grids["lmc_barrier"].loc[0.05, 40] == pytest.approx(100 * (-0.040 + 0.0005))
    assert grids["cka"].loc[0.2, 5] == pytest.approx(0.5 + 0.2 + 0.05)
    normalized = grids["test_error_normalized"]
    assert normalized.min(axis=1).tolist() == pytest.approx([0.0, 0.0])
    # error grows with temperature here, so the coldest (largest) epochs value is worst
    assert normalized.loc[0.05, 40] == pytest.approx(
        grids["test_error"].loc[0.05, 40] - grids["test_error"].loc[0.05, 5])


def test_phase_grids_unknown_knob():
    with pytest.raises(ValueError, match="no cell of knob 'lr'"):
        phase_grids(_table(), "lr")


def test_phase_diagrams_write_nonempty_pngs(tmp_path):
    paths = phase_diagrams(_table(), tmp_path / "plots", title="my grid")

    assert [p.name for p in paths] == ALL_PLOTS
    for path in paths:
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0.01              # not a blank canvas


def test_phase_diagrams_skip_absent_metrics_and_split_knobs(tmp_path):
    table = pd.concat([_table("epochs", seeds=(0,)), _table("batch_size", seeds=(0,), skip=())])
    paths = phase_diagrams(table.drop(columns=[keys.CKA]), tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{knob}_{name}" for knob in ("epochs", "batch_size")
                           for name in ALL_PLOTS if name != keys.PLOT_CKA)
    assert all(p.stat().st_size > 0 for p in paths)


def test_phase_diagrams_reject_unusable_tables(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        phase_diagrams(_table().iloc[:0], tmp_path)
    with pytest.raises(ValueError, match="lacks required columns.*test_acc"):
        phase_diagrams(_table().drop(columns=[keys.TEST_ACC]), tmp_path)
    assert list(tmp_path.iterdir()) == []
