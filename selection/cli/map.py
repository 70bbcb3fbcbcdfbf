"""``python -m selection map``: map the regimes with a fraction of a grid's cells.

- ``map CONFIG --budget N``: the adaptive loop of :mod:`selection.mapping` on the config's
  temperature x density grid, its cells run (or fetched from the cache) by the grid runner,
  nested under one MLflow ``map`` run; the same command again resumes it.
- ``map --table CSV --replay``: replays the loop and two baselines (random order, coarse to
  fine) on a finished results table; ``--json`` prints the figures as the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selection.cli._common import add_threshold_options, fail

__all__ = ["add_parser", "run_map_command"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from tracking.cli import add_store_options

    p = subparsers.add_parser(
        "map", help="map the regimes with a fraction of the grid's cells (active learning)",
        description="Adaptive regime mapping: run the cells that decide the regime map and the "
                    "best temperature per density, not the whole grid (CONFIG --budget N); or "
                    "replay it on a finished table (--table CSV --replay).")
    p.add_argument("config", nargs="?", help="grid config YAML (its temperatures x densities "
                   "are the candidate cells)")
    p.add_argument("--budget", type=_count, help="most points (temperature, density) to run, "
                   "the initial design included")
    p.add_argument("--batch", type=int, help="points per round (default: about sqrt(points)/2)")
    p.add_argument("--n-init", type=int, help="initial design size (default: max(5, 10%% of "
                   "the points): the 4 corners and spread points)")
    p.add_argument("--seed", type=int, default=0, help="tie-breaks of the design and the "
                   "choices (default 0)")
    add_threshold_options(p, over="the cells run")
    p.add_argument("--patience", type=int, default=2, help="stop rule: rounds without a label "
                   "change (default 2)")
    p.add_argument("--max-uncertainty", type=float, default=0.1, help="stop rule: the largest "
                   "1 - p(label) allowed over the points not run (default 0.1)")
    p.add_argument("--best-confidence", type=float, default=0.8, help="stop rule: the smallest "
                   "probability of each density's best temperature (default 0.8)")
    p.add_argument("--reference", help="results table CSV of the full grid, to report the "
                   "map's agreement with (default: the experiment's cells, when complete)")
    p.add_argument("--experiment", help="MLflow experiment (default: the config's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--executor", default="serial", choices=["serial", "dask"],
                   help="where cells run (default: serial, in this process)")
    p.add_argument("--workers", type=int, default=0, help="dask worker processes (0 = one "
                   "per core)")
    p.add_argument("--scheduler", help="address of an existing Dask scheduler")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--out", help="folder for the map's CSVs and pictures (also logged to "
                   "MLflow); with --replay: the replay curve")
    p.add_argument("--table", help="with --replay: a finished results table CSV")
    p.add_argument("--replay", action="store_true", help="replay the loop and the baselines on "
                   "--table instead of running cells")
    p.add_argument("--seeds", type=int, default=20, help="replay seeds (default 20)")
    p.add_argument("--jobs", type=int, default=1, help="replay: seeds replayed in this many "
                   "processes at once, one thread each (default 1; the same figures)")
    p.add_argument("--max-cells", type=int, help="replay: stop each replay after this many "
                   "cells (default: the whole grid)")
    p.add_argument("--knob", help="replay: the knob, when the table has several, or of a table "
                   "without a knob column (every row)")
    p.add_argument("--json", action="store_true", help="replay: print one JSON object as the "
                   "last line")
    add_store_options(p)
    p.set_defaults(func=run_map_command)


def _count(text: str) -> int:
    """A whole number, also written as a float (``12.0``: MLproject passes numbers so)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


def run_map_command(args: argparse.Namespace) -> int:
    if args.replay:
        return _replay(args)
    if args.table:
        return fail(ValueError("--table is for --replay; to map a grid give CONFIG --budget N"))
    if not args.config or args.budget is None:
        return fail(ValueError("give CONFIG --budget N (or --table CSV --replay)"))
    return _live(args)


def _stop_rule(args):
    from selection.mapping import StopRule

    for name in ("max_uncertainty", "best_confidence"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    if args.patience < 1:
        raise ValueError(f"--patience must be >= 1, got {args.patience}")
    return StopRule(args.patience, args.max_uncertainty, args.best_confidence)


def _live(args: argparse.Namespace) -> int:
    from pipeline.__main__ import executor_options
    from pipeline.config import load_config
    from pipeline.executors import get_executor
    from selection.mapping import plot_map, run_map
    from tracking.cli import open_store
    from tracking.store import StoreUnreachableError, TrackingUnavailableError
    from tracking.tables import read_table

    try:
        cfg = load_config(args.config, args.overrides)
        stop_rule = _stop_rule(args)
        if args.budget < 1:
            raise ValueError(f"--budget must be >= 1, got {args.budget}")
        options = executor_options(args, cfg)
        get_executor(args.executor, **options)          # bad options fail before any compute
        reference = None
        if args.reference:
            reference = read_table(args.reference, [
                "knob", "temperature", "density", "lmc_barrier", "cka"])
        open_store(args)
    except (ValueError, FileNotFoundError, StoreUnreachableError) as e:
        return fail(e)
    try:
        result = run_map(cfg, args.budget, experiment=args.experiment, batch_size=args.batch,
                         n_init=args.n_init, seed=args.seed, eps=args.eps, tau=args.tau,
                         stop_rule=stop_rule, executor=args.executor,
                         executor_options=options, progress=not args.no_progress,
                         reference=reference, log=lambda line: print(line, flush=True))
    except (ValueError, RuntimeError) as e:
        return fail(e)
    except TrackingUnavailableError as e:
        print(f"error: {e}\nrun the same command again when the store is back: the map "
              "resumes where it stopped", file=sys.stderr)
        return 1
    print("\n".join(result.lines()))
    if args.out and result.prediction is not None:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        result.prediction.frame().to_csv(out / "regime_map_predicted.csv", index=False)
        result.best_frame().to_csv(out / "best_temperature_predicted.csv", index=False)
        plot_map(result.prediction, out / "predicted_regime_map.png",
                 title=f"{cfg.experiment}: predicted regime map")
        print(f"map, best temperatures and picture: {out.resolve()}")
    print(f"map run: {result.map_run_id} (experiment {args.experiment or cfg.experiment!r}; "
          "the cells it ran are nested under it)")
    return 1 if result.failed else 0


def _replay(args: argparse.Namespace) -> int:
    from selection.mapping import plot_replay, replay, replay_summary
    from tracking.tables import MissingColumnsError, conversion_hint, read_table

    if not args.table:
        return fail(ValueError("--replay needs --table CSV (a finished results table)"))
    try:
        required = ["knob", "temperature", "density", "lmc_barrier", "cka"]
        try:
            table = read_table(args.table, [*required, "test_acc"], knob=args.knob)
        except MissingColumnsError as e:
            if e.missing != ["test_acc"]:
                raise
            # without test_acc the replay judges the labels alone, unless the table has its
            # accuracy under another name (test error): then the error, which says how to
            # convert it
            table = read_table(args.table, required, knob=args.knob)
            if conversion_hint(table, ["test_acc"]):
                raise
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        stop_rule = _stop_rule(args)
        curves = replay(table, seeds=range(args.seed, args.seed + args.seeds), knob=args.knob,
                        eps=args.eps, tau=args.tau, batch_size=args.batch, n_init=args.n_init,
                        max_cells=args.max_cells, stop_rule=stop_rule, jobs=args.jobs)
    except (ValueError, FileNotFoundError) as e:
        return fail(e)
    summary = replay_summary(curves)
    if args.out:
        path = plot_replay({Path(args.table).stem: curves},
                           Path(args.out) / f"map_replay_{Path(args.table).stem}.png")
        summary["plot"] = str(path)
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        print("\n".join(format_summary(summary, curves)))
    return 0


def format_summary(summary: dict, curves) -> list[str]:
    """Lines of a replay summary: per strategy, agreement and best found at budgets."""
    import numpy as np

    total, replayed = curves.total_cells, curves.cells_replayed
    budgets = sorted({max(1, round(f * total)) for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
                      if round(f * total) <= replayed} | {replayed})
    cut = "" if replayed == total else f" (the first {replayed} replayed: --max-cells)"
    scored = summary.get("best_scored", True)
    lines = [f"replay over {summary['seeds']} seeds, {total} cells{cut}; median agreement with "
             "the full grid's map" + (" / fraction of densities whose best temperature is "
                                      "found:" if scored else
                                      " (the table has no test_acc: the labels alone are "
                                      "judged, no best temperature):")]
    if curves.missing:
        lines.append(f"{len(curves.missing)} point(s) of the grid have no result in the table "
                     "(no row, or a NaN barrier, CKA or test accuracy) and are left out: "
                     + ", ".join(f"({t:g}, {d:g})" for t, d in curves.missing))
    header = "cells run".ljust(16) + "".join(f"{b:>12}" for b in budgets)
    lines.append(header)
    for strategy in curves.agreement:
        agree = np.median(curves.agreement[strategy], axis=0)
        best = np.median(curves.best_found[strategy], axis=0)
        lines.append(strategy.ljust(16) + "".join(
            f"{100 * agree[b - 1]:>7.0f}%/{best[b - 1]:.1f}" if scored
            else f"{100 * agree[b - 1]:>11.0f}%" for b in budgets))

    def cells(figures: dict) -> str:
        value = figures["cells_for_95"]
        return "never" if value is None else f"{value:g} ({100 * value / total:.0f}%)"

    lines.append(f"cells to 95% agreement (median): active {cells(summary)}, " + ", ".join(
        f"{name} {cells(f)}" for name, f in summary["baselines"].items()))
    if not scored:
        return lines + _stop_line(summary)
    lines.append(f"best temperature found there: active {summary['best_found_at_budget']:.2f} "
                 f"of densities ({summary['best_within_at_budget']:.2f} within 0.2 points), "
                 + ", ".join(f"{name} {f['best_found_at_budget']:.2f} "
                             f"({f['best_within_at_budget']:.2f})"
                             for name, f in summary["baselines"].items()))

    def goal(figures: dict, key: str = "cells_for_goal") -> str:
        value = figures[key]
        return "never" if value is None else f"{value:g} ({100 * value / total:.0f}%)"

    lines.append("cells until >= 95% agreement AND every density's best temperature found "
                 f"(median): active {goal(summary)}, " + ", ".join(
                     f"{name} {goal(f)}" for name, f in summary["baselines"].items()))
    lines.append("the same with every best found within 0.2 points of the best accuracy "
                 f"(median): active {goal(summary, 'cells_for_goal_within')}, " + ", ".join(
                     f"{name} {goal(f, 'cells_for_goal_within')}"
                     for name, f in summary["baselines"].items()))
    if "cells_for_goal_tied" in summary:
        lines.append("the same with every reported best tied with the true best within the "
                     "table's noise (2 standard errors of their difference; median): active "
                     f"{goal(summary, 'cells_for_goal_tied')}, " + ", ".join(
                         f"{name} {goal(f, 'cells_for_goal_tied')}"
                         for name, f in summary["baselines"].items()))
    repro = summary.get("reference_best_reproducibility")
    if repro is not None:
        per = ", ".join(f"{d:g}: {p:.2f}" for d, p in sorted(
            (float(d), p) for d, p in repro["per_density"].items()))
        copies = f"{repro['copies']} fine-tune copies per cell" + (
            " (assumed: the table does not say)" if repro["copies_assumed"] else "")
        lines.append(
            "how often re-running the WHOLE grid with new fine-tune seeds keeps its best "
            f"temperature ({copies}; test_acc_std as the seed noise): every density at once "
            f"{repro['every_density']:.2f}; per density {per}")
        tied = repro.get("tied_with_best")
        if tied is not None:
            lines.append(
                f"cells tied with their density's best (within {tied['z']:g} standard errors "
                f"of it, the best included): {tied['cells']} of {total} "
                f"({100 * tied['fraction']:.0f}%); naming every exact best with fewer cells "
                "run leaves out a cell the table's own noise cannot tell from the best")
    labels = summary.get("reference_label_reproducibility")
    if labels is not None:
        lines.append(
            "how far re-measuring the grid keeps its labels (the labeller's resampling of each "
            f"cell's {'pairs' if labels['pair_source'] == 'pairs' else 'mean and std'}, "
            f"{labels['draws']} draws): median agreement {100 * labels['median']:.1f}%, "
            f"{100 * labels['at_least_95']:.0f}% of the draws keep >= 95% of the labels")
    return lines + _stop_line(summary)


def _stop_line(summary: dict) -> list[str]:
    if summary.get("stopped_at_median") is None:
        return []
    return [f"the stopping rule stops the active loop at {summary['stopped_at_median']:g} "
            "cells (median)"]
