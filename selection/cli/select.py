"""``python -m selection select``: model selection for target densities (paper Algorithms 2
and 2.1 with baselines), its regret table and plot."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from selection._tracking import log_selection
from selection.cli._common import (
    add_mlflow_options,
    add_table_source,
    add_threshold_options,
    fail,
    load_table,
    log_target,
)
from selection.model_selection import (
    ORACLE,
    SELECT_COLUMNS,
    SelectionResult,
    SelectionWarning,
    plot_regret,
    select_models,
)
from tracking import keys
from tracking.tables import MissingColumnsError

__all__ = ["add_parser", "format_selection", "parse_densities", "run_select"]


def parse_densities(values: list[str]) -> list[float] | None:
    """``--density`` values: numbers, or ``all`` (None: every density of the table)."""
    if any(v.strip().lower() == "all" for v in values):
        return None
    densities = []
    for v in values:
        try:
            densities.append(float(v))
        except ValueError:
            raise ValueError(f"--density must be a number in (0, 1] or 'all', got {v!r}"
                             ) from None
        if not 0 < densities[-1] <= 1:
            raise ValueError(f"--density must be a fraction in (0, 1], got {v!r}")
    return densities


def format_selection(result: SelectionResult) -> str:
    """The table of choices and regret, then each method's mean regret, as text."""
    lines = [f"{'density':>8} {'method':>11} {'temperature':>11} {'regime':>6} "
             f"{'test_acc':>8} {'regret':>7}"]
    for row in result.table.itertuples(index=False):
        flag = "  (fallback: every candidate Regime I)" if row.fallback else ""
        lines.append(f"{100 * row.density:>7g}% {row.method:>11} {float(row.temperature):>11g} "
                     f"{row.regime:>6} {100 * row.test_acc:>7.2f}% {100 * row.regret:>7.2f}"
                     + flag)
    lines.append("mean regret (%-points): " + ", ".join(
        f"{m} {100 * v:.2f}" for m, v in result.mean_regret().items() if m != ORACLE))
    t = result.thresholds
    lines.append(f"regimes with eps = {t.eps:.4g} ({t.eps_source}), "
                 f"tau = {t.tau:.4g} ({t.tau_source})")
    lines += [f"note: {w}" for w in result.warnings]
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``select`` subcommand."""
    parser = subparsers.add_parser(
        "select", help="choose the dense model to prune per density (Alg. 2 / 2.1, regret)",
        description="For each target density, choose a temperature by Algorithm 2 (discard "
                    "Regime I, best val_acc), Algorithm 2.1 (discard Regime I, best CKA) and "
                    "the baselines (best dense_acc, best val_acc), with regret against the "
                    "best test_acc. Needs columns " + ", ".join(SELECT_COLUMNS) + " (and "
                    "dense_acc for the best dense_acc baseline).")
    add_table_source(parser)
    parser.add_argument("--density", action="append", required=True,
                        help="target density (fraction); repeat it for several, or 'all'")
    add_threshold_options(parser)
    parser.add_argument("--out", help="write the table of choices to this CSV")
    parser.add_argument("--plot", help="also write the regret plot PNG here")
    add_mlflow_options(parser)
    parser.set_defaults(func=run_select)


def run_select(args: argparse.Namespace) -> int:
    """Run the ``select`` command."""
    try:
        densities = parse_densities(args.density)
        df = load_table(args, SELECT_COLUMNS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SelectionWarning)  # printed from result.warnings
            result = select_models(df, densities, args.eps, args.tau)
        experiment, grid_run_id = log_target(args)
        run_id = log_selection(result, experiment, grid_run_id) if experiment else None
    except (ValueError, FileNotFoundError) as e:
        if isinstance(e, MissingColumnsError) and keys.VAL_ACC in e.missing:
            e = ValueError(f"{e}. select needs {keys.VAL_ACC} (Algorithm 2 chooses by "
                           "validation accuracy, never by test); a table with test_acc only "
                           "can still be labelled (classify) and mapped (map --replay)")
        return fail(e)
    print(format_selection(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result.table.to_csv(args.out, index=False)
        print(f"choices written to {args.out}")
    if args.plot:
        plot_regret(result.table, args.plot)
    if run_id:
        nested = f" under grid run {grid_run_id}" if grid_run_id else ""
        print(f"selection run {run_id} in experiment {experiment}{nested}")
    return 0
