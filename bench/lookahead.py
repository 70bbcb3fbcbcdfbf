"""The map's look-ahead labelling: the labeller's inner path against the public label_grid.

    python bench/lookahead.py [--table bench/data/demo_fine_grid.csv] [--cells 28] [--seeds 3]

``selection.mapping.relabel_flips`` relabels the finished cells once per candidate point and
quadrature node (3 x the unrun points per round): most of the active loop's time in a replay.
It labels through ``regimes._labels_only`` (no table check, no info, no warnings: the table is
built from checked values); before, it called ``label_grid``. Both sides in one run, on the
prediction after ``--cells`` cells of the replay's loop per seed: the time of
``relabel_flips`` for every unrun point, the same flips checked, the ratio printed. Take it
on a quiet machine.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from selection import mapping  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default=str(REPO_ROOT / "bench" / "data" / "demo_fine_grid.csv"))
    ap.add_argument("--cells", type=int, default=28)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    table = pd.read_csv(args.table)
    axes = mapping.GridAxes.of_table(table)
    oracle = mapping._Oracle(table, axes, None, None, 0)
    fast = mapping.LOOKAHEAD_LABELS
    times = {"label_grid": 0.0, "inner": 0.0}
    same = True
    for seed in range(args.seeds):
        order, _ = mapping._replay_order(
            "active", axes, oracle, seed, args.cells, mapping.default_batch_size(axes.n),
            mapping.default_n_init(axes.n), mapping.StopRule())
        pred = mapping.predict_map(axes, oracle.labels(order), seed=seed)
        unrun = np.flatnonzero(~pred.run)
        flips = {}
        for side, labeller in (("label_grid", mapping._checked_labels), ("inner", fast)):
            mapping.LOOKAHEAD_LABELS = labeller
            start = time.perf_counter()
            flips[side] = mapping.relabel_flips(pred, unrun)
            times[side] += time.perf_counter() - start
        mapping.LOOKAHEAD_LABELS = fast
        same &= bool(np.array_equal(flips["label_grid"], flips["inner"]))
    print(f"{Path(args.table).name}: relabel_flips at {args.cells} cells, {args.seeds} seeds")
    print(f"label_grid {times['label_grid']:.2f} s, inner {times['inner']:.2f} s: "
          f"{times['label_grid'] / times['inner']:.2f}x; same flips: {same}")
    if not same:
        sys.exit("the two labelling paths disagree")


if __name__ == "__main__":
    main()
