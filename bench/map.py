"""Replay benchmark of the adaptive regime mapping (``python -m selection map --replay``).

    python bench/map.py [--seeds 20] [--paper-seeds N] [--paper-grids 1,2,3] [--paper-full]
                        [--drawn-grids 1,2,...] [--drawn-seeds N] [--jobs J] [--quick]
                        [--out docs/map_replay.png]

Finished tables (five by default), the mapping loop against two orders of the same cells
(random; coarse to fine: every other temperature and density first), through the same
models, over ``--seeds`` seeds each:
  demo       -- ``bench/data/demo_grid.csv``: the MNIST-1D demo grid as measured (6 epochs x
                5 densities, 30 cells);
  demo_fine  -- ``bench/data/demo_fine_grid.csv``: the finer MNIST-1D grid as measured
                (10 epochs x 7 densities, 70 cells);
  paper_like -- a finer paper-like synthetic grid (``selection.synthetic.paper_like_grid``:
                CIFAR-10-like epochs grid with the barrier's jump at the first learning-rate
                decay and a hot sparse II-A corner), 10 temperatures (10..160 epochs) x 9
                densities (5..80 %), 90 cells; ``--paper-seeds`` seeds (default --seeds);
  paper_like_seed2, paper_like_seed3 -- the same generator with seeds 2 and 3
                (``--paper-grids 1,2,3``): other draws of the same shape, so that the
                figures are not those of one draw that the map's settings were tuned on.
With ``--paper-full`` also
  paper_16x9 -- the paper's own shape: its 16 temperatures (10, 20, ..., 160 epochs) x its
                9 densities, 144 cells (generator seed 1; ``--paper-seeds`` seeds; about
                1.6x a 90-cell paper-like replay per seed);
and with ``--drawn-grids 1,2,...``
  drawn_seed<g> -- ``selection.synthetic.drawn_grid(seed=g)``: 10 x 9 tables whose shape
                (boundaries, hot corner, II-B region, best temperatures) is drawn per
                generator seed, so that the map is judged on maps it was not tuned on;
                ``--drawn-seeds`` seeds each (default --paper-seeds).
The reference map is the labeller's labels of the whole table. Printed per table: agreement
and best-temperature figures at budgets, the cells to 95 % agreement (median over seeds) for
each order, and the goal (>= 95 % agreement and the best temperature at every density with
<= 40 % of the cells) met or not, the same with each best within 0.2 points of the best
accuracy, and how often a re-run of the WHOLE grid with new fine-tune seeds would keep its own
best temperatures (``selection.mapping.best_reproducibility``: the ceiling on "the exact best
found" when best and runner-up are closer than the seeds' noise), and how many of the full
grid's labels a re-measured grid keeps (``label_reproducibility``), the points tied with
their density's best within 2 standard errors (``tied_with_best``: on more than 40 % of the
points no order can settle every exact best within the goal's budget), and the goal with each
best counted found when tied with the true one (``cells_for_goal_tied``). The curve (agreement vs
cells run) goes to ``--out``. The LAST line printed is one JSON object: per table the
``--replay --json`` summary (the same figures as
``python -m selection map --table CSV --replay --json --seeds N``).

The tables are replayed in ``--jobs`` processes (default: up to 3, one per core). No timing
is taken: every figure is a count of cells, the same on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import pandas as pd  # noqa: E402

from selection.cli.map import format_summary  # noqa: E402
from selection.mapping import plot_replay, replay, replay_summary  # noqa: E402
from selection.synthetic import (  # noqa: E402
    PAPER_FINE_TEMPERATURES,
    drawn_grid,
    paper_like_grid,
)
from selection.synthetic import PAPER_MAP_TEMPERATURES as PAPER_TEMPERATURES  # noqa: E402

DEMO_TABLE = REPO_ROOT / "bench" / "data" / "demo_grid.csv"
DEMO_FINE_TABLE = REPO_ROOT / "bench" / "data" / "demo_fine_grid.csv"
PAPER_FULL = "paper_16x9"     # the paper's own 16 temperatures x 9 densities (--paper-full)
DRAWN = "drawn_seed"          # + the generator seed: selection.synthetic.drawn_grid (--drawn-grids)


def paper_name(generator_seed: int) -> str:
    """The table's name for a paper-like grid drawn with ``generator_seed`` (seed 1, the
    first one benchmarked, keeps the plain name)."""
    return "paper_like" if generator_seed == 1 else f"paper_like_seed{generator_seed}"


def table(name: str, quick: bool, generator_seed: int = 1) -> pd.DataFrame:
    """The finished table ``name``; a paper-like one drawn with ``generator_seed``."""
    if name == "demo":
        return pd.read_csv(DEMO_TABLE)
    if name == "demo_fine":
        return pd.read_csv(DEMO_FINE_TABLE)
    if name.startswith(DRAWN):
        return drawn_grid(seed=generator_seed).drop(columns="true_regime")
    if name == PAPER_FULL:
        return paper_like_grid(temperatures=PAPER_FINE_TEMPERATURES,
                               seed=generator_seed).drop(columns="true_regime")
    if quick:    # a smaller synthetic grid, so that the check runs in a minute
        grid = paper_like_grid(temperatures=PAPER_TEMPERATURES[::2] + (160,),
                               densities=(0.05, 0.07, 0.1, 0.2, 0.8), seed=generator_seed)
    else:
        grid = paper_like_grid(temperatures=PAPER_TEMPERATURES, seed=generator_seed)
    return grid.drop(columns="true_regime")


def _replay_one(job: tuple[str, int, bool, int]):
    os.environ["OMP_NUM_THREADS"] = "1"
    name, n_seeds, quick, generator_seed = job
    curves = replay(table(name, quick, generator_seed), seeds=range(n_seeds))
    return name, n_seeds, curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20, help="seeds per order (default 20)")
    ap.add_argument("--paper-seeds", type=int, help="seeds on the synthetic paper-like grid "
                    "(default: --seeds; it costs about 3x the demo's per seed)")
    ap.add_argument("--paper-grids", default="1,2,3",
                    help="generator seeds of the paper-like grids, comma-separated (default "
                    "1,2,3; 1 is 'paper_like')")
    ap.add_argument("--paper-full", action="store_true",
                    help="also the paper's own shape, 16 temperatures x 9 densities (144 cells)")
    ap.add_argument("--drawn-grids", default="",
                    help="generator seeds of drawn-shape grids (selection.synthetic.drawn_grid), "
                    "comma-separated (default: none)")
    ap.add_argument("--drawn-seeds", type=int,
                    help="seeds on each drawn-shape grid (default: --paper-seeds)")
    ap.add_argument("--jobs", type=int, default=min(3, os.cpu_count() or 1),
                    help="tables replayed at once (default: up to 3)")
    ap.add_argument("--quick", action="store_true", help="2 seeds, the demo and a smaller "
                    "synthetic grid: checks that the benchmark runs, its figures mean little")
    ap.add_argument("--out", default=str(REPO_ROOT / "docs" / "map_replay.png"),
                    help="the curve's PNG (default docs/map_replay.png)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.quick:
        jobs = [("demo", 2, True, 1), ("paper_like", 2, True, 1)]
    else:
        try:
            grids = [int(g) for g in args.paper_grids.split(",") if g.strip()]
            drawn = [int(g) for g in args.drawn_grids.split(",") if g.strip()]
        except ValueError:
            ap.error(f"--paper-grids {args.paper_grids!r} / --drawn-grids {args.drawn_grids!r}: "
                     "comma-separated integer seeds")
        jobs = [("demo", args.seeds, False, 1), ("demo_fine", args.seeds, False, 1),
                *((paper_name(g), args.paper_seeds or args.seeds, False, g) for g in grids)]
        if args.paper_full:
            jobs.append((PAPER_FULL, args.paper_seeds or args.seeds, False, 1))
        jobs += [(f"{DRAWN}{g}", args.drawn_seeds or args.paper_seeds or args.seeds, False, g)
                 for g in drawn]
    results, failed = [], []
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        futures = {pool.submit(_replay_one, job): job[0] for job in jobs}
        for future in as_completed(futures):
            try:
                results.append(future.result())
            except Exception as e:  # noqa: BLE001 - one table's failure keeps the others
                failed.append(futures[future])
                print(f"{futures[future]}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
    order = [job[0] for job in jobs]
    results.sort(key=lambda r: order.index(r[0]))
    curves, figures = {}, {}
    for name, n_seeds, c in results:
        curves[name], figures[name] = c, replay_summary(c)
        total = c.total_cells
        print(f"\n== {name}: {total} cells, {n_seeds} seeds")
        print("\n".join(format_summary(figures[name], c)))
        f = figures[name]
        goal = f["cells_for_goal"] is not None and f["cells_for_goal"] <= 0.4 * total
        print(f"goal (>= 95% agreement and every best temperature with <= 40% of the cells): "
              f"{'met' if goal else 'NOT met'}; median cells for it: {f['cells_for_goal']} "
              f"(met within 40% by {100 * f['fraction_of_seeds_meeting_goal_at_40pct']:.0f}% "
              "of the seeds); "
              f"at 40%: agreement {100 * f['agreement_at_40pct']:.0f}%, best found at "
              f"{100 * f['best_found_at_40pct']:.0f}% of densities "
              f"({100 * f['best_within_at_40pct']:.0f}% within 0.2 points)")
        for key, found in (("cells_for_goal_within",
                            "each best within 0.2 points of the best accuracy"),
                           ("cells_for_goal_tied", "each best tied with the true one within "
                            "the table's noise (2 standard errors)")):
            if key in f:        # the tied figure needs test_acc_std
                cells = f[key]
                met = cells is not None and cells <= 0.4 * total
                print(f"the same with {found}: {'met' if met else 'NOT met'}; median cells "
                      f"for it: {cells}")
    path = plot_replay(curves, args.out)
    print(f"\ncurve: {path}")
    print(json.dumps(figures, allow_nan=False))
    if failed:
        sys.exit(f"replay failed on: {', '.join(failed)}")


if __name__ == "__main__":
    main()
