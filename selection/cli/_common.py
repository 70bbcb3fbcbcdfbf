"""Pieces shared by the ``python -m selection`` commands: the table source, the MLflow options,
the regime thresholds."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd

from selection._validate import one_knob
from tracking import keys
from tracking.cli import add_store_options, open_store

DEFAULT_LOG_EXPERIMENT = "selection"   # where --table runs are logged unless told otherwise


def add_table_source(parser: argparse.ArgumentParser) -> None:
    """``--experiment NAME | --table CSV`` (one required), ``--tracking-uri`` and
    ``--store-timeout``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--experiment", help="MLflow experiment whose FINISHED cell runs form "
                        "the results table; results are logged under its grid parent run")
    source.add_argument("--table", help="results table CSV "
                        "(columns: docs/design.md#the-results-table)")
    parser.add_argument("--knob", help="with --table: the knob of a table without a 'knob' "
                        "column, every row (e.g. epochs for a table typed from a paper)")
    add_store_options(parser)


def add_mlflow_options(parser: argparse.ArgumentParser) -> None:
    """``--no-mlflow`` and ``--mlflow-experiment`` (where a ``--table`` run is logged)."""
    parser.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow")
    parser.add_argument("--mlflow-experiment", default=DEFAULT_LOG_EXPERIMENT,
                        help="experiment to log to when the input is --table "
                        f"(default: {DEFAULT_LOG_EXPERIMENT})")


def add_threshold_options(parser: argparse.ArgumentParser, over: str = "the table's cells",
                          note: str = "") -> None:
    """``--eps`` and ``--tau``, the regime thresholds (see
    :func:`selection.regimes.label_grid`); ``over`` names the cells labelled without them,
    ``note`` ends both help texts."""
    parser.add_argument("--eps", type=float, help="LMC-barrier threshold, a train-error "
                        "fraction: Regime I iff lmc_barrier < eps (default: the jump along "
                        f"temperature over {over}){note}")
    parser.add_argument("--tau", type=float, help="CKA threshold: II-B iff cka >= tau among "
                        f"the Regime II cells (default: estimated from {over}){note}")


def load_table(args: argparse.Namespace, required: Sequence[str]) -> pd.DataFrame:
    """The results table named by ``--experiment`` or ``--table``.

    Raises:
        ValueError: unknown experiment, no finished cell run, or an invalid CSV.
        FileNotFoundError: no CSV at ``--table``.
    """
    from tracking.tables import read_table, results_table

    if args.experiment or not getattr(args, "no_mlflow", True):
        _configure(args)       # the store is needed: it answers, or one clear error, first
    if args.table:
        df = read_table(args.table, required, knob=getattr(args, "knob", None))
        if keys.KNOB in df and df[keys.KNOB].nunique() > 1:
            # the commands compare the temperatures of one knob
            one_knob(df, f"{args.table}: this command", "pick one with --knob NAME")
        return df
    if getattr(args, "knob", None):
        raise ValueError("--knob goes with --table (an experiment's cell runs name their knob)")
    _configure(args)
    df = results_table(args.experiment)
    if df.empty:
        raise ValueError(f"experiment {args.experiment!r} has no FINISHED cell runs")
    return df


def _configure(args: argparse.Namespace) -> None:
    """Set the tracking URI and check the store answers (once per command).

    Raises:
        StoreUnreachableError: it does not, within ``--store-timeout``.
    """
    if getattr(args, "store_checked", False):
        return
    open_store(args)
    args.store_checked = True


def log_target(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``(experiment, grid parent run id)`` to log to; ``(None, None)`` with ``--no-mlflow``.

    With ``--experiment`` runs nest under its latest FINISHED grid parent run (if any); with
    ``--table`` they go to ``--mlflow-experiment``, not nested.
    """
    if args.no_mlflow:
        return None, None
    from selection._tracking import grid_parent_run_id

    _configure(args)
    if args.experiment:
        return args.experiment, grid_parent_run_id(args.experiment)
    return args.mlflow_experiment, None


def fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 1
