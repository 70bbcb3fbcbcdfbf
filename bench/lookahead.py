"""The map's look-ahead labelling, four ways: the public label_grid with the labeller's pool
refitted per node, the labeller's inner path with the pool refitted, the inner path with the
pool's rank-one update and the table's points built once per candidate, and that with the
two-cluster fits kept (what the map runs).

    python bench/lookahead.py [--table bench/data/demo_fine_grid.csv] [--cells 28] [--seeds 3]

``selection.mapping.relabel_flips`` relabels the finished cells once per candidate point and
quadrature node (3 x the unrun points per round): most of the active loop's time in a replay.
It labels through ``regimes._labels_only`` (no table check, no info, no warnings: the table is
built from checked values; before, ``label_grid``), and the labeller's pool of predicted
barriers comes from one solve per candidate (the GP's mean is affine in the candidate's
value; before, a GP refit per node), and ``regimes.two_cluster_split`` keeps its fits by
the sorted values (the same Regime-II CKA values recur across a candidate's nodes; before,
refitted every time). All sides in one run, on the prediction after ``--cells`` cells of the
replay's loop per seed, each side from an empty cache: the time of ``relabel_flips`` for
every unrun point, the same flips checked, the ratios printed. Take it on a quiet machine.
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

from selection import mapping, regimes  # noqa: E402


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
    kept = regimes._split_sorted
    sides = (("label_grid, refit", mapping._checked_labels, True, False),
             ("inner, refit", fast, True, False), ("inner, update", fast, False, False),
             ("inner, update, fits kept", fast, False, True))
    times = {name: 0.0 for name, *_ in sides}
    same = True
    for seed in range(args.seeds):
        order, _ = mapping._replay_order(
            "active", axes, oracle, seed, args.cells, mapping.default_batch_size(axes.n),
            mapping.default_n_init(axes.n), mapping.StopRule())
        pred = mapping.predict_map(axes, oracle.labels(order), seed=seed)
        unrun = np.flatnonzero(~pred.run)
        flips = []
        for name, labeller, refit, keep in sides:
            mapping.LOOKAHEAD_LABELS = labeller
            kept.cache_clear()
            regimes._split_sorted = kept if keep else kept.__wrapped__
            start = time.perf_counter()
            flips.append(mapping.relabel_flips(pred, unrun, refit_pool=refit))
            times[name] += time.perf_counter() - start
        mapping.LOOKAHEAD_LABELS, regimes._split_sorted = fast, kept
        same &= all(np.array_equal(flips[0], f) for f in flips[1:])
    print(f"{Path(args.table).name}: relabel_flips at {args.cells} cells, {args.seeds} seeds")
    now = times["inner, update, fits kept"]
    print(", ".join(f"{name} {t:.2f} s ({t / now:.2f}x)" for name, t in times.items())
          + f"; same flips: {same}")
    if not same:
        sys.exit("the labelling paths disagree")


if __name__ == "__main__":
    main()
