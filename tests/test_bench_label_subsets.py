"""bench/label_subsets.py: a whole grid as its own subset keeps every label; parts may not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("label_subsets",
                                                  ROOT / "bench" / "label_subsets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_whole_grid_keeps_its_labels_and_parts_are_scored(capsys):
    bench = _bench()
    table = str(ROOT / "bench" / "data" / "demo_grid.csv")
    whole = bench.subset_agreement(table, 1.0, 2, seed=0)
    assert whole["subset_points"] == whole["points"] == 30
    assert whole["kept_worst"] == 1.0 and whole["map_agreement_worst"] == 1.0
    part = bench.subset_agreement(table, 0.4, 3, seed=0)
    assert part["subset_points"] == 12
    assert 0.0 <= part["kept_worst"] <= part["kept_median"] <= 1.0
    assert 0.0 <= part["map_agreement_worst"] <= part["map_agreement_median"] <= 1.0
    assert bench.main([table, "--subsets", "2"]) == 0
    assert '"tables"' in capsys.readouterr().out.splitlines()[-1]
