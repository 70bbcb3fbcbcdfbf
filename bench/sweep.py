"""A small MNIST-1D sweep through the cell function: does the three-regime effect show?

    python bench/sweep.py [--config configs/demo.yaml] [--quick] [--temperatures T ...]
                          [--densities D ...] [--set KEY=VALUE ...] [--threads N] [--csv PATH]

Runs every (temperature, density) cell of a grid config (default: the demo, 6 temperatures x
5 densities x 3 fine-tune seeds) with ``pipeline.grid.compute_grid``, in this process and
without MLflow, then prints tables (rows:
density; columns: temperature, coldest first) of test accuracy, LMC barrier and CKA, the best
temperature per density, and the checks of docs/method.md#the-small-default-mnist-1d: at low
density the best temperature is hotter than the coldest and the coldest has a barrier; at high
density the best temperature is the coldest (or close) and the landscape is connected. The
LAST line printed is one JSON object with all the numbers. ``--quick`` shrinks the grid (a
20-epoch dense run, 4 x 4 cells, 6 fine-tune epochs) to check the script in about a minute.

Reference cost (docs/method.md#the-small-default-mnist-1d): a 6 x 6 x 3 grid took ~8.5 minutes
in a plain per-model loop on 2 CPU cores; the elapsed time printed here is comparable (other
load on the machine aside).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from pipeline.cell import CellResult  # noqa: E402
from pipeline.config import GridConfig, load_config  # noqa: E402
from pipeline.grid import compute_grid  # noqa: E402
from pipeline.knobs import get_knob  # noqa: E402

DEMO = REPO_ROOT / "configs" / "demo.yaml"
QUICK = ["dense.epochs=20", "temperatures=[2, 5, 10, 20]", "densities=[0.05, 0.1, 0.4, 0.8]",
         "finetune.epochs=6", "finetune.last_epochs=3"]
LOW_DENSITY = 0.1        # densities <= this are "low" (hotter is better there)
HIGH_DENSITY = 0.4       # densities >= this are "high" (colder is better, connected)
BARRIER = -0.02          # a barrier below this (train-error fraction) counts as "a barrier"
NEAR_BEST = 0.005        # "colder is better": the coldest is within this of the best accuracy


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_sweep(cfg: GridConfig) -> tuple[list[CellResult], dict[str, float]]:
    """Every cell of ``cfg``: one dense run per distinct dense spec, then all cells batched."""
    grid = compute_grid(cfg, log=_log)
    return grid.results, {"dense_s": grid.dense_seconds, "cells_s": grid.cells_seconds}


def summarize(cfg: GridConfig, results: list[CellResult]) -> dict:
    """Per (density, temperature): metrics averaged over dense seeds; best temperature per
    density; the section-5 checks."""
    knob = get_knob(cfg.knob)
    temps = knob.sort_cold_to_hot(sorted(set(cfg.temperatures)))
    densities = sorted(set(cfg.densities))
    by_point: dict[tuple[float, float], list[dict]] = {}
    for r in results:
        by_point.setdefault((r.spec.prune.density, r.spec.temperature), []).append(r.metrics())
    names = ("test_acc", "val_acc", "lmc_barrier", "cka", "pruned_acc", "dense_acc",
             "test_acc_std", "lmc_barrier_std", "cka_std")
    cells = []
    for d in densities:
        for t in temps:
            ms = by_point[(float(d), float(t))]
            cells.append({"density": d, "temperature": t,
                          **{n: statistics.fmean(m[n] for m in ms) for n in names}})
    table = {(c["density"], c["temperature"]): c for c in cells}
    best, checks = {}, {}
    coldest, hottest = temps[0], temps[-1]
    for d in densities:
        accs = {t: table[(d, t)]["test_acc"] for t in temps}
        b = max(temps, key=lambda t: accs[t])
        best[d] = b
        row = {"best_temperature": b, "best_test_acc": accs[b],
               "coldest_test_acc": accs[coldest], "hottest_test_acc": accs[hottest],
               "barrier_at_coldest": table[(d, coldest)]["lmc_barrier"],
               "barrier_at_best": table[(d, b)]["lmc_barrier"],
               "barrier_at_hottest": table[(d, hottest)]["lmc_barrier"]}
        if d <= LOW_DENSITY:
            row["hotter_is_better"] = knob.hotter_than(b, coldest)
            row["barrier_when_cold"] = row["barrier_at_coldest"] < BARRIER
        elif d >= HIGH_DENSITY:
            row["colder_is_better"] = accs[coldest] >= accs[b] - NEAR_BEST
            row["connected_when_cold"] = row["barrier_at_coldest"] >= BARRIER
        checks[d] = row
    verdicts = [v for row in checks.values() for k, v in row.items() if isinstance(v, bool)]
    return {"knob": cfg.knob, "temperatures_cold_to_hot": temps, "densities": densities,
            "cells": cells, "best_temperature": best, "checks": checks,
            "effect_shown": bool(verdicts) and all(verdicts),
            "thresholds": {"low_density": LOW_DENSITY, "high_density": HIGH_DENSITY,
                           "barrier": BARRIER, "near_best": NEAR_BEST}}


def _fmt(v: float, scale: float, digits: int) -> str:
    return "nan" if math.isnan(v) else f"{v * scale:.{digits}f}"


def print_tables(summary: dict) -> None:
    temps, densities = summary["temperatures_cold_to_hot"], summary["densities"]
    table = {(c["density"], c["temperature"]): c for c in summary["cells"]}
    head = f"{'density':>8} | " + " ".join(f"{t:>7g}" for t in temps)
    for metric, scale, digits, title in (
            ("test_acc", 100, 2, "test accuracy (%), mean of the last epochs over fine-tune seeds"),
            ("lmc_barrier", 100, 2, "LMC barrier (train-error %-points; < 0 = a barrier)"),
            ("cka", 1, 3, "CKA of fine-tuned pairs (softmax outputs)"),
            ("pruned_acc", 100, 1, "accuracy right after pruning (%)"),
            ("dense_acc", 100, 1, "dense accuracy at the temperature (%)")):
        print(f"\n{title}; columns: {summary['knob']} (coldest first)")
        print(head)
        print("-" * len(head))
        for d in densities:
            values = (_fmt(table[(d, t)][metric], scale, digits) for t in temps)
            print(f"{d:>8g} | " + " ".join(f"{v:>7}" for v in values))
    print("\nbest temperature per density (by test accuracy), and the section-5 checks:")
    for d, row in summary["checks"].items():
        flags = ", ".join(f"{k}={v}" for k, v in row.items() if isinstance(v, bool))
        print(f"  density {d:g}: best {summary['knob']}={row['best_temperature']:g} "
              f"({100 * row['best_test_acc']:.2f}%; coldest {100 * row['coldest_test_acc']:.2f}%, "
              f"hottest {100 * row['hottest_test_acc']:.2f}%); barrier coldest "
              f"{100 * row['barrier_at_coldest']:+.2f}, at best "
              f"{100 * row['barrier_at_best']:+.2f} pts  {flags}")
    print(f"three-regime effect shown (docs/method.md#the-small-default-mnist-1d): "
          f"{summary['effect_shown']}")


def write_csv(cfg: GridConfig, results: list[CellResult], path: Path) -> None:
    """The results table (docs/design.md#the-results-table) of the sweep, one row per cell; no
    run ids (no MLflow)."""
    import pandas as pd

    from tracking import keys
    from tracking.tables import RESULT_COLUMNS, write_table

    rows = []
    for r in results:
        m = r.metrics()
        rows.append({keys.KNOB: cfg.knob, keys.TEMPERATURE: r.spec.temperature,
                     keys.DENSITY: r.spec.prune.density, keys.DENSE_SEED: r.dense.seed,
                     **{k: m[k] for k in RESULT_COLUMNS if k in m},
                     keys.REGIME: None, keys.RUN_ID: None, keys.SPEC_HASH: r.spec_hash})
    write_table(pd.DataFrame(rows), path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(DEMO), help="grid config (default: configs/demo.yaml)")
    p.add_argument("--quick", action="store_true", help="a smaller grid: " + " ".join(QUICK))
    p.add_argument("--temperatures", type=float, nargs="+",
                   help="override the config's temperatures")
    p.add_argument("--densities", type=float, nargs="+", help="override the config's densities")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config override, e.g. --set finetune.epochs=10 (repeatable)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the dense run (default 1: these models are tiny, and "
                        "with other processes on the cores more threads are several times "
                        "slower; 0 = PyTorch's default); fine-tuning runs runtime.workers chunks "
                        "of one thread each (--set runtime.workers=N)")
    p.add_argument("--csv", help="also write the results table (docs/design.md#the-results-table) "
                   "to this CSV")
    args = p.parse_args(argv)

    overrides = (QUICK if args.quick else []) + args.overrides
    if args.temperatures:
        temperatures = [int(t) if t == int(t) else t for t in args.temperatures]
        overrides.append(f"temperatures={temperatures}")
    if args.densities:
        overrides.append(f"densities={args.densities}")
    cfg = load_config(args.config, overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"sweep: {cfg.data.name} / {cfg.model.name}, knob {cfg.knob}, temperatures "
          f"{list(cfg.temperatures)}, densities {list(cfg.densities)}, dense seeds "
          f"{list(cfg.dense_seeds)}, "
          f"fine-tune seeds {list(cfg.finetune.seeds)} x {cfg.finetune.train.epochs} epochs, "
          f"pruning {cfg.prune.method}; torch threads {torch.get_num_threads()}, "
          f"workers {cfg.runtime.resolved_workers()}")
    started = time.perf_counter()
    results, timings = run_sweep(cfg)
    timings["total_s"] = time.perf_counter() - started
    summary = summarize(cfg, results)
    print_tables(summary)
    print(f"\ntime: dense {timings['dense_s']:.0f} s + cells {timings['cells_s']:.0f} s = "
          f"{timings['total_s']:.0f} s for {len(results)} cells "
          f"(reference: ~510 s for 36 cells in a plain per-model loop, "
          "docs/method.md#the-small-default-mnist-1d)")
    if args.csv:
        write_csv(cfg, results, Path(args.csv))
        print(f"results table: {args.csv}")
    summary["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    summary["config"] = {"path": args.config, "overrides": overrides}
    summary["best_temperature"] = {str(k): v for k, v in summary["best_temperature"].items()}
    summary["checks"] = {str(k): v for k, v in summary["checks"].items()}
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
