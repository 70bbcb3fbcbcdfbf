"""``python -m selection replay``: replays a finished results table as a tabular objective and
compares temperature samplers over many seeds (see :mod:`selection.replay`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from selection.cli._common import add_threshold_options
from selection.tuner import SAMPLER_NAMES

__all__ = ["add_parser", "run_replay"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``replay`` subcommand."""
    replay = subparsers.add_parser(
        "replay", help="compare samplers by replaying a finished grid table",
        description="Replay a finished results table as a tabular objective (a trial looks up "
                    "a cell) and compare temperature samplers over many seeds.")
    replay.add_argument("--table", required=True, help="results table CSV")
    replay.add_argument("--density", type=float, required=True, help="target density")
    replay.add_argument("--sampler", default=",".join(SAMPLER_NAMES),
                        help=f"comma-separated samplers among {', '.join(SAMPLER_NAMES)}")
    replay.add_argument("--repeats", type=int, default=50, help="seeds per sampler")
    replay.add_argument("--seed", type=int, default=0, help="first seed")
    replay.add_argument("--budget", type=int, help="trials per replay (default: twice the "
                        "number of temperatures)")
    replay.add_argument("--objective-column", default="val_acc")
    replay.add_argument("--tolerance", type=float, default=0.002,
                        help="'within' margin as a fraction (0.002 = 0.2 accuracy points)")
    replay.add_argument("--knob", help="the knob to replay when the table has several, or of "
                        "a table without a 'knob' column (every row)")
    add_threshold_options(replay, over="the table", note="; either one relabels the table, "
                          "whose own regime column is used otherwise")
    replay.add_argument("--relabel", action="store_true", help="label the table with the "
                        "grid labeller (jump along temperature) instead of its regime column")
    replay.add_argument("--transfer", action="store_true", help="replay the density with the "
                        "table's other densities known as finished cells of the grid (the "
                        "regime sampler starts from what they predict)")
    replay.add_argument("--json", action="store_true", help="print one JSON object keyed by "
                        "sampler instead of the table (no plot unless --out is given)")
    replay.add_argument("--out", help="folder for the plot (default: the current folder; "
                        "with --json: no plot)")
    replay.set_defaults(func=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    """Run the ``replay`` command."""
    from selection.replay import (
        compare_samplers,
        format_results,
        plot_results,
        prepare_table,
        results_json,
    )

    samplers = [s.strip() for s in args.sampler.split(",") if s.strip()]
    try:
        if not samplers:
            raise ValueError(f"--sampler names no sampler; give some of {', '.join(SAMPLER_NAMES)}")
        if args.budget is not None and args.budget < 1:
            raise ValueError(f"--budget must be >= 1 trial, got {args.budget}")
        if not args.tolerance >= 0:
            raise ValueError(f"--tolerance must be a fraction >= 0 (0.002 = 0.2 accuracy "
                             f"points), got {args.tolerance}")
        cells, knob = prepare_table(args.table, objective_column=args.objective_column,
                                    knob=args.knob, eps=args.eps, tau=args.tau,
                                    relabel=args.relabel)
        results = compare_samplers(cells, knob, [args.density], samplers,
                                   repeats=args.repeats, seed=args.seed, budget=args.budget,
                                   objective_column=args.objective_column,
                                   tolerance=args.tolerance, transfer=args.transfer)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    (by_sampler,) = results.values()
    plot = None
    if args.out or not args.json:
        name = f"replay_{knob}_d{args.density:g}.png"
        plot = plot_results(results, Path(args.out or ".") / name)
    if args.json:
        print(json.dumps(results_json(by_sampler), allow_nan=False))
        return 0
    print(f"replay of {args.table} at density {args.density:g} ({knob}), {args.repeats} seeds "
          f"per sampler, objective {args.objective_column}")
    print(format_results(results))
    print(f"plot: {plot}")
    return 0
