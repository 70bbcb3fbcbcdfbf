"""``python -m selection classify``: label regimes, fit, cross-validate, log and register the
regime classifiers, tag the cell runs, draw the regime map (:func:`selection.classify.classify`).
"""

from __future__ import annotations

import argparse

import pandas as pd

from selection.classifier import DEFAULT_ALIAS
from selection.classify import CLASSIFY_COLUMNS, classify
from selection.cli._common import (
    add_mlflow_options,
    add_table_source,
    add_threshold_options,
    fail,
    load_table,
    log_target,
)
from tracking import keys
from tracking.tables import write_table

__all__ = ["add_parser", "run_classify"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``classify`` subcommand."""
    parser = subparsers.add_parser(
        "classify", help="label regimes, fit + cross-validate + register the regime classifier",
        description="Label each cell I / II-A / II-B from its LMC barrier and CKA (thresholds "
                    "given or estimated), fit the landscape and phase classifiers, "
                    "cross-validate them, and log + register them in MLflow. Needs columns "
                    + ", ".join(CLASSIFY_COLUMNS) + ".")
    add_table_source(parser)
    add_threshold_options(parser)
    parser.add_argument("--out", help="write the input rows with a 'regime' column to this CSV")
    parser.add_argument("--map", help="also write the regime map PNG here")
    parser.add_argument("--group-by-density", action="store_true",
                        help="cross-validate with GroupKFold over densities (predicts unseen "
                        "densities) instead of StratifiedKFold")
    parser.add_argument("--register-as", help="registered model name of the landscape "
                        "classifier; the phase one is NAME-phase (default: "
                        "<experiment>-regime-classifier)")
    parser.add_argument("--alias", default=DEFAULT_ALIAS,
                        help=f"alias set on the new model versions (default: {DEFAULT_ALIAS})")
    add_mlflow_options(parser)
    parser.set_defaults(func=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    """Run the ``classify`` command."""
    try:
        df = load_table(args, CLASSIFY_COLUMNS)
        experiment, grid_run_id = log_target(args)
        report = classify(df, args.eps, args.tau, args.group_by_density, experiment,
                          grid_run_id, args.register_as, args.alias, args.map)
        if args.out:
            write_table(report.labelled, args.out, CLASSIFY_COLUMNS)
    except (ValueError, FileNotFoundError) as e:
        return fail(e)
    print(report.summary())
    replaced = _replaced_labels(df, report.labelled)
    if replaced:
        print(f"note: {replaced}")
    if args.out:
        print(f"labels written to {args.out}")
    return 0


def _replaced_labels(table: pd.DataFrame, labelled: pd.DataFrame) -> str:
    """A remark when the input had its own ``regime`` labels: classify replaces them."""
    if keys.REGIME not in table.columns:
        return ""
    given = table[keys.REGIME]
    given = given[given.notna() & (given.astype(str).str.strip() != "")]
    if given.empty:
        return ""
    new = labelled[keys.REGIME].reindex(given.index)
    differ = int((given.astype(str) != new.astype(str)).sum())
    return (f"the table's own {keys.REGIME!r} column ({len(given)} labelled rows) was replaced "
            f"by new labels; {differ} of them differ")
