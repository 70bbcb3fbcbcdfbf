"""Replay benchmark of the temperature samplers (issue 6): regime-guided vs. Optuna's own.

    python bench/replay.py [--table CSV] [--quick] [--repeats R] [--out DIR]

Replays a finished grid table (default ``bench/data/demo_grid.csv`` when present, else a
synthetic three-regime table generated here) at every density, for the samplers regime, tpe,
tpe2, gp, random and grid, and prints per density: trials to the best cell (median and
quartiles), trials to within 0.2 accuracy points, mean regret after k trials, and the ratio of
the regime sampler's median trials-to-best to the strongest baseline's (the lowest median among
tpe, tpe2, gp and random; docs/method.md#baselines-and-replay). Beside it, the same ratio for
trials to within the seed noise of the best (tolerance: the table's median ``val_acc_std``, else
its median ``test_acc_std``): where the best cell of a density beats the runner-up by less than
the noise, which of the two is "the best" is luck. The LAST line printed is one JSON object of
the figures.

The synthetic table (ours; it mimics the MNIST-1D measurements in
docs/method.md#the-small-default-mnist-1d): at
each density d the cells colder than a boundary epoch T_b(d) are poorly connected (a barrier
growing with log-distance past T_b, low CKA), the others connected (CKA rising as training gets
colder: II-B cold, II-A hot). T_b is 4 epochs at d = 0.05, 9 at 0.1 and beyond the grid from
d = 0.2 on (log-linear in between), so the best temperature is hot at low density and the
coldest at high density. Validation accuracy rises with log epochs up to T_b and falls with
the barrier beyond it, plus 0.3-point noise; test accuracy has its own noise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from selection.replay import (  # noqa: E402
    compare_samplers,
    format_results,
    plot_results,
    prepare_table,
)
from tracking import keys  # noqa: E402
from tracking.tables import RESULT_COLUMNS, RUN_ID  # noqa: E402

DEMO_TABLE = REPO_ROOT / "bench" / "data" / "demo_grid.csv"
SAMPLERS = ("regime", "tpe", "tpe2", "gp", "random", "grid")
# the strongest is the bar (docs/method.md#baselines-and-replay)
BASELINES = ("tpe", "tpe2", "gp", "random")
TEMPERATURES = (2, 3, 5, 8, 12, 20, 30, 40, 60, 80)
DENSITIES = (0.05, 0.07, 0.1, 0.14, 0.2, 0.4, 0.8)
LOW_DENSITY = 0.1  # "low densities", where hotter is better: d <= this

# Boundary epoch T_b(d) anchors, interpolated in log-log; past the last one: no barrier at all.
_BOUNDARY = ((0.05, 4.0), (0.1, 9.0), (0.2, 120.0))


def _interp_loglog(x: float, anchors: tuple[tuple[float, float], ...]) -> float:
    xs = np.log([a for a, _ in anchors])
    ys = np.log([b for _, b in anchors])
    if x >= anchors[-1][0]:
        return float("inf")
    return float(np.exp(np.interp(np.log(x), xs, ys)))


def synthetic_grid(temperatures=TEMPERATURES, densities=DENSITIES, seed: int = 0) -> pd.DataFrame:
    """A three-regime results table (epochs knob), deterministic for ``seed``; no regime column
    values (the replay labels it)."""
    rng = np.random.default_rng(seed)
    log_max = np.log(max(temperatures))
    rows = []
    for d in densities:
        boundary = _interp_loglog(d, _BOUNDARY)
        depth = float(np.interp(np.log(d), np.log([0.05, 0.1, 0.2]), [0.07, 0.16, 0.005]))
        base = 0.78 - 0.26 * np.exp(-(d - 0.05) / 0.12)
        for t in temperatures:
            past = max(0.0, np.log(t) - np.log(boundary)) if np.isfinite(boundary) else 0.0
            barrier = -depth * np.tanh(past)
            connected_cka = 0.74 + 0.22 / (1 + np.exp(-2 * (np.log(t) - np.log(12))))
            cka = connected_cka - 3 * abs(barrier)
            true_acc = (base + 0.08 * min(np.log(t), np.log(boundary)) / log_max
                        - 1.0 * abs(barrier))
            rows.append({
                keys.KNOB: "epochs", keys.TEMPERATURE: t, keys.DENSITY: d, keys.DENSE_SEED: 0,
                keys.TEST_ACC: true_acc + rng.normal(0, 0.003), keys.TEST_ACC_STD: 0.003,
                keys.VAL_ACC: true_acc + rng.normal(0, 0.003),
                keys.LMC_BARRIER: min(barrier + rng.normal(0, 0.002), 0.003),
                keys.LMC_BARRIER_STD: 0.002,
                keys.CKA: float(np.clip(cka + rng.normal(0, 0.01), 0.3, 0.99)),
                keys.CKA_STD: 0.01, keys.PRUNED_ACC: 0.1, keys.DENSE_ACC: 0.8,
                keys.REGIME: None, RUN_ID: None, keys.SPEC_HASH: None,
            })
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def noise_tolerance(table: pd.DataFrame) -> float | None:
    """The table's seed noise: median of ``val_acc_std`` (the objective's), else of
    ``test_acc_std``; ``None`` when it has neither (or no positive value)."""
    for column in (keys.VAL_ACC_STD, keys.TEST_ACC_STD):
        if column in table.columns:
            std = pd.to_numeric(table[column], errors="coerce").dropna()
            std = std[std > 0]
            if len(std):
                return float(std.median())
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", help="results table CSV (default: the demo grid if present, "
                        "else a synthetic three-regime table)")
    parser.add_argument("--quick", action="store_true", help="10 repeats instead of 100")
    parser.add_argument("--repeats", type=int, help="seeds per sampler and density")
    parser.add_argument("--budget", type=int, help="trials per replay (default 2 x temperatures)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--transfer", action="store_true", help="the regime sampler knows the "
                        "table's other densities (python -m selection replay --transfer)")
    parser.add_argument("--relabel", action="store_true", help="label the table with "
                        "selection.regimes.label_grid instead of its regime column")
    parser.add_argument("--grid", choices=("paper", "paper-fine", "mnist1d", "mnist1d-fine"),
                        help="replay a synthetic grid of selection.synthetic instead of a table")
    parser.add_argument("--temperatures", help="comma-separated epochs of the synthetic table "
                        f"(default {','.join(map(str, TEMPERATURES))})")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "out"),
                        help="folder for the plot (and the synthetic table)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    if args.grid:
        from selection import synthetic as syn

        table = {"paper": lambda: syn.paper_like_grid(),
                 "paper-fine": lambda: syn.paper_like_grid(syn.PAPER_FINE_TEMPERATURES),
                 "mnist1d": lambda: syn.mnist1d_like_grid(),
                 "mnist1d-fine": lambda: syn.mnist1d_like_grid(syn.MNIST1D_FINE_TEMPERATURES),
                 }[args.grid]()
        source = f"synthetic {args.grid} grid (selection.synthetic, seed 0)"
    elif args.table:
        source, table = args.table, pd.read_csv(args.table)
    elif DEMO_TABLE.is_file():
        source, table = str(DEMO_TABLE), pd.read_csv(DEMO_TABLE)
    else:
        temperatures = ([int(t) if float(t).is_integer() else float(t)
                         for t in args.temperatures.split(",")]
                        if args.temperatures else TEMPERATURES)
        table = synthetic_grid(temperatures)
        out.mkdir(parents=True, exist_ok=True)
        source = str(out / "synthetic_grid.csv")
        table.to_csv(source, index=False)
    repeats = args.repeats or (10 if args.quick else 100)
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]

    # GP fits tiny matrices: one thread is faster than several fighting over two cores
    torch.set_num_threads(1)
    cells, knob = prepare_table(table, relabel=args.relabel)
    densities = sorted(cells[keys.DENSITY].unique().tolist())
    start = time.perf_counter()
    results = compare_samplers(cells, knob, densities, samplers, repeats=repeats, seed=args.seed,
                               budget=args.budget, transfer=args.transfer)
    seconds = time.perf_counter() - start

    n_temps = cells.groupby(keys.DENSITY)[keys.TEMPERATURE].nunique().max()
    print(f"replay of {source}: knob {knob}, {n_temps} temperatures x {len(densities)} "
          f"densities, {repeats} seeds per sampler, {seconds:.0f} s")
    print(format_results(results))
    figures: dict = {"table": source, "knob": knob, "repeats": repeats, "densities": {}}
    noise = noise_tolerance(table)
    if noise is not None:
        figures["noise_tolerance"] = noise
    print("\nregime sampler vs. the strongest baseline (lowest median trials to best among "
          f"{', '.join(b for b in BASELINES if b in samplers)}):")
    for density, by_sampler in results.items():
        summary = {name: r.summary() for name, r in by_sampler.items()}
        entry = {name: {k: s[k] for k in ("median_trials_to_best", "iqr_trials_to_best",
                                          "mean_trials_to_best", "median_trials_to_within_0.2",
                                          "fraction_reached_best")}
                 for name, s in summary.items()}
        if noise is not None:
            for name, result in by_sampler.items():
                entry[name]["median_trials_to_within_noise"] = float(np.median(
                    result.trials_to_within_of(noise)))
        baselines = [b for b in BASELINES if b in summary]
        if "regime" in summary and baselines:
            strongest = min(baselines, key=lambda b: (summary[b]["median_trials_to_best"],
                                                      summary[b]["mean_trials_to_best"]))
            ratio = (summary["regime"]["median_trials_to_best"]
                     / summary[strongest]["median_trials_to_best"])
            entry["strongest_baseline"] = strongest
            entry["regime_over_strongest_median_ratio"] = ratio
            print(f"  density {density:g}: regime {summary['regime']['median_trials_to_best']:g}"
                  f" vs {strongest} {summary[strongest]['median_trials_to_best']:g} trials "
                  f"(median), ratio {ratio:.2f}; means "
                  f"{summary['regime']['mean_trials_to_best']:.2f} vs "
                  f"{summary[strongest]['mean_trials_to_best']:.2f}")
            if noise is not None:
                # the strongest baseline on this figure (ties: the lower mean trials to best)
                within = min(baselines, key=lambda b: (entry[b]["median_trials_to_within_noise"],
                                                       summary[b]["mean_trials_to_best"]))
                entry["strongest_baseline_within_noise"] = within
                entry["regime_over_strongest_within_noise_ratio"] = (
                    entry["regime"]["median_trials_to_within_noise"]
                    / entry[within]["median_trials_to_within_noise"])
                print(f"    to within the noise ({noise:.4f}): regime "
                      f"{entry['regime']['median_trials_to_within_noise']:g} vs {within} "
                      f"{entry[within]['median_trials_to_within_noise']:g} trials (median), "
                      f"ratio {entry['regime_over_strongest_within_noise_ratio']:.2f}")
        figures["densities"][f"{density:g}"] = entry
    ratios = [e["regime_over_strongest_median_ratio"] for e in figures["densities"].values()
              if "regime_over_strongest_median_ratio" in e]
    if ratios:
        figures["mean_ratio"] = float(np.mean(ratios))
        figures["max_ratio"] = float(max(ratios))
        print(f"median ratio regime / strongest baseline: mean over densities "
              f"{figures['mean_ratio']:.2f} (target <= 0.5), max {figures['max_ratio']:.2f} "
              "(target <= 1)")
    within = [e["regime_over_strongest_within_noise_ratio"]
              for e in figures["densities"].values()
              if "regime_over_strongest_within_noise_ratio" in e]
    if within:
        figures["mean_ratio_within_noise"] = float(np.mean(within))
        figures["max_ratio_within_noise"] = float(max(within))
        print(f"to within the noise ({noise:.4f}): mean over densities "
              f"{figures['mean_ratio_within_noise']:.2f}, max "
              f"{figures['max_ratio_within_noise']:.2f}")
    plot = plot_results(results, out / "replay.png")
    print(f"plot: {plot}")
    low = [e for d, e in figures["densities"].items()
           if float(d) <= LOW_DENSITY and "strongest_baseline" in e]
    if low:
        figures["regime_wins_at_low_density"] = all(
            e["regime"]["median_trials_to_best"]
            < e[e["strongest_baseline"]]["median_trials_to_best"] for e in low)
    print(json.dumps(figures, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
