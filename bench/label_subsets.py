"""How far the labeller's labels of a PART of a grid agree with its labels of the whole grid.

The phase map is judged against the full grid's labels, but while it runs it only has the
labels the labeller gives the cells run so far (``selection.mapping.label_points`` with the
grid's axes: the unfinished cells' barriers predicted and pooled, as the map runs it). A cell
whose label depends on which other cells were run caps the map's agreement, whatever cells
it chooses. This draws random subsets of ``--fraction`` of each table's points, labels each
subset, and prints per table the fraction of the subset's own points that keep their
full-grid label, and the agreement of the map predicted from the subset (median and worst
over ``--subsets`` subsets). Counts, not timings: no quiet machine needed.

``bench/label_stability.py`` asks the labeller alone (``label_grid`` without the pool) about
Regime I vs II, as a mean over subsets; this asks about the three labels as the map computes
them, with the worst subset beside the median, and about the map predicted from them.

    python bench/label_subsets.py [TABLE.csv ...] [--paper-like] [--fraction 0.4]
                                  [--subsets 20] [--seed 0]

Without tables: the measured demo grid (3 fine-tune copies), the same grid re-measured with
9 copies, and the measured 10 x 7 demo_fine grid, all under ``bench/data``. ``--paper-like``
adds the 10 x 9 paper-like synthetic grid that ``bench/map.py`` replays. The LAST line
printed is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from selection.mapping import GridAxes, _Oracle, point_regimes, predict_map  # noqa: E402
from selection.synthetic import PAPER_MAP_TEMPERATURES, paper_like_grid  # noqa: E402
from tracking.tables import read_table  # noqa: E402

PAPER_LIKE = "paper-like (synthetic, as bench/map.py)"
TABLES = ("bench/data/demo_grid.csv", "bench/data/demo_grid_9copies.csv",
          "bench/data/demo_fine_grid.csv")


def subset_agreement(path: str, fraction: float, subsets: int, seed: int) -> dict:
    if path == PAPER_LIKE:
        table = paper_like_grid(temperatures=PAPER_MAP_TEMPERATURES, seed=1).drop(
            columns="true_regime")
    else:
        table = read_table(path)
    axes = GridAxes.of_table(table)
    # the replay's source of labelled subsets: label_points(axes=) on the chosen points' rows
    oracle = _Oracle(table, axes, None, None, n_resamples=0)
    reference = point_regimes(oracle.labels(range(axes.n)), axes)
    k = max(3, int(fraction * axes.n))
    rng = np.random.default_rng(seed)
    kept, agreement = [], []
    for _ in range(subsets):
        chosen = rng.choice(axes.n, k, replace=False)
        labels = oracle.labels(chosen)
        pred = predict_map(axes, labels, with_best=False)
        own = point_regimes(labels, axes)
        kept.append(float(np.mean(own[chosen] == reference[chosen])))
        agreement.append(float(np.mean(pred.label == reference)))
    return {"table": path, "points": axes.n, "subset_points": k, "subsets": subsets,
            "kept_median": float(np.median(kept)), "kept_worst": float(np.min(kept)),
            "map_agreement_median": float(np.median(agreement)),
            "map_agreement_worst": float(np.min(agreement))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="*", help="results tables (default: the bench/data grids)")
    parser.add_argument("--paper-like", action="store_true",
                        help="also the paper-like synthetic grid of bench/map.py")
    parser.add_argument("--fraction", type=float, default=0.4, help="subset size, of the points")
    parser.add_argument("--subsets", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tables = args.tables or [str(ROOT / t) for t in TABLES]
    if args.paper_like:
        tables.append(PAPER_LIKE)
    figures = [subset_agreement(t, args.fraction, args.subsets, args.seed) for t in tables]
    for f in figures:
        name = f["table"] if f["table"] == PAPER_LIKE else Path(f["table"]).name
        print(f"{name}: {f['subset_points']} of {f['points']} points, "
              f"{f['subsets']} random subsets: the subset's own points keep their full-grid "
              f"label {100 * f['kept_median']:.1f}% (median; worst {100 * f['kept_worst']:.1f}%),"
              f" map agreement {100 * f['map_agreement_median']:.1f}% (worst "
              f"{100 * f['map_agreement_worst']:.1f}%)")
    print(json.dumps({"fraction": args.fraction, "tables": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
