"""bench/map.py: the tables it replays, and one quick run end to end (its last-line JSON)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from selection.mapping import GridAxes

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_map", ROOT / "bench" / "map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_named_table_is_the_grid_it_says():
    bench = _bench()
    shapes = {"demo": (6, 5), "demo_fine": (10, 7), "paper_like": (10, 9),
              bench.PAPER_FULL: (16, 9), f"{bench.DRAWN}3": (10, 9)}
    for name, shape in shapes.items():
        table = bench.table(name, quick=False, generator_seed=3)
        assert GridAxes.of_table(table).shape == shape, name
        # the synthetic generators' truth is not handed to the replay
        assert "true_regime" not in table.columns, name
    # the drawn shape follows its generator seed; the quick paper-like grid is smaller
    one, two = (bench.table(f"{bench.DRAWN}{g}", False, g) for g in (1, 2))
    assert not one["lmc_barrier"].equals(two["lmc_barrier"])
    assert GridAxes.of_table(bench.table("paper_like", quick=True)).n < 90


def test_bad_grid_lists_are_a_usage_error():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "map.py"), "--drawn-grids",
                          "one,two"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--drawn-grids" in out.stderr


@pytest.mark.slow
def test_the_quick_benchmark_prints_every_tables_summary_last(tmp_path):
    png = tmp_path / "curve.png"
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "map.py"), "--quick",
                          "--jobs", "1", "--out", str(png)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(figures) == {"demo", "paper_like"}
    for name, summary in figures.items():
        assert set(summary["baselines"]) == {"random", "coarse_to_fine"}, name
        assert {"cells_for_goal", "cells_for_goal_within", "cells_for_goal_tied",
                "fraction_of_seeds_meeting_goal_at_40pct"} <= set(summary), name
        tied = summary["reference_best_reproducibility"]["tied_with_best"]
        assert tied["cells"] >= len(tied["per_density"]), name   # each best is tied with itself
    assert figures["demo"]["total_cells"] == 30 and figures["demo"]["seeds"] == 2
    assert "goal (>= 95% agreement" in out.stdout and png.stat().st_size > 0
