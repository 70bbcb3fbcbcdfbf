"""``python -m tracking {init,table,report}``: stores, results tables and phase diagrams."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tracking.cli import add_store_options, open_store
from tracking.store import TrackingUnavailableError, init_experiment, redact_uri


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tracking",
        description="MLflow stores, results tables and phase diagrams of pruning experiments.")
    add_store_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="create the store and the experiment (run once, "
                               "before any worker starts)")
    init.add_argument("--experiment", required=True)
    init.add_argument("--description", help="note shown for the experiment in the MLflow UI")

    table = commands.add_parser("table", help="write the one-row-per-cell results table as CSV")
    table.add_argument("--experiment", required=True)
    table.add_argument("--out", required=True, help="CSV file to write")

    report = commands.add_parser("report", help="results table + phase diagrams into a folder, "
                                 "also logged on the experiment's grid run")
    report.add_argument("--experiment", required=True)
    report.add_argument("--out", required=True, help="folder to write into")
    # the store options also after the subcommand, as `pipeline grid` and `selection` take them
    for command in (init, table, report):
        add_store_options(command, subcommand=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 on success, 1 on a reported error)."""
    args = _parser().parse_args(argv)
    try:
        uri = open_store(args)        # before any compute: the store answers, or a clear error
        if args.command == "init":
            exp_id = init_experiment(args.experiment, args.description)
            print(f"experiment {args.experiment!r} (id {exp_id}) ready in {redact_uri(uri)}")
        elif args.command == "table":
            from tracking.tables import results_table, write_table

            df = results_table(args.experiment)
            if df.empty:
                raise ValueError(f"experiment {args.experiment!r} has no FINISHED cell runs")
            path = write_table(df, args.out)
            print(f"wrote {len(df)} cells to {path.resolve()}")
        else:
            from tracking.plots import write_report

            report = write_report(args.experiment, args.out)
            print(f"wrote results table {report.table.resolve()}")
            for plot in report.plots:
                print(f"wrote phase diagram {plot.resolve()}")
            if report.grid_run_id is None:
                print(f"experiment {args.experiment!r} has no FINISHED grid run: "
                      "files written only, nothing logged to MLflow")
            else:
                print(f"logged them to grid run {report.grid_run_id} in {redact_uri(uri)}")
    except (ValueError, TrackingUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
