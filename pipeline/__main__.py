"""``python -m pipeline {grid,cell}``: run a grid (or one cell) of a config, tracked in MLflow."""

from __future__ import annotations

import argparse
import os
import sys

from pipeline.config import load_config
from pipeline.executors import EXECUTORS, get_executor
from tracking.cli import add_store_options, open_store


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML grid config, e.g. configs/demo.yaml")
    p.add_argument("--experiment", help="MLflow experiment (default: the config's `experiment`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set finetune.epochs=5 (repeatable)")
    add_store_options(p)          # --tracking-uri, --store-timeout
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grid", help="run or resume every cell of a config")
    _config_args(g)
    g.add_argument("--executor", default="serial", choices=EXECUTORS.names(),
                   help="where cells run (default: serial, in this process)")
    g.add_argument("--workers", type=int, default=0,
                   help="worker processes (dask; 0 = one per core)")
    g.add_argument("--scheduler", help="address of an existing Dask scheduler (dask executor)")
    c = sub.add_parser("cell", help="run one cell (temperature, density, dense seed)")
    _config_args(c)
    c.add_argument("--temperature", type=float, required=True, help="the knob's value")
    c.add_argument("--density", type=float, required=True, help="fraction of prunable weights kept")
    c.add_argument("--dense-seed", type=int, default=None, help="default: the config's first")
    return parser


def executor_options(args: argparse.Namespace, cfg) -> dict:
    """Options of ``--executor``: Dask gets the workers, the scheduler and the torch threads
    per task (``runtime.threads``, default 1: a worker runs one task per thread)."""
    if args.executor == "serial":
        return {}
    return {"workers": args.workers, "scheduler": args.scheduler,
            "torch_threads": cfg.runtime.threads or 1}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    from pipeline.grid import GridRunner, cell_name, ensure_cell
    from tracking.store import (
        StoreUnreachableError,
        TrackingUnavailableError,
        redact_text,
        redact_uri,
    )

    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "grid":
        options = executor_options(args, cfg)
        try:
            executor = get_executor(args.executor, **options)  # bad options fail before any compute
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:   # the store (and a --scheduler) answer, or one clear error: nothing computed
            open_store(args)
            getattr(executor, "check", lambda: None)()
        except (StoreUnreachableError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            runner = GridRunner(cfg, args.experiment, progress=not args.no_progress,
                                tracking_uri=args.tracking_uri)
        except (TrackingUnavailableError, MlflowException, OperationalError) as e:
            # bad input: nothing computed
            uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
            print(f"error: --tracking-uri={redact_uri(uri)!r}: the tracking store cannot be used: "
                  f"{redact_text(str(e), uri)}; "
                  "allowed: a reachable http(s):// tracking server, a database URL or sqlite:///PATH",
                  file=sys.stderr)
            return 2
        try:
            summary = runner.run(executor=args.executor, executor_options=options)
        except TrackingUnavailableError as e:
            print(f"error: {e}\nnothing half-written counts as finished: run the same command "
                  "again when the tracking store is back, it resumes where this run stopped",
                  file=sys.stderr)
            return 1
        print("\n".join(summary.lines()))
        print(f"results: python -m tracking table --experiment {runner.experiment!r} "
              "--out results.csv")
        return 0 if summary.ok else 1
    try:
        dense_seed = args.dense_seed if args.dense_seed is not None else cfg.dense_seeds[0]
        cfg.cell(args.temperature, args.density, dense_seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        open_store(args)
    except (StoreUnreachableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        row = ensure_cell(cfg, args.temperature, args.density, args.dense_seed, args.experiment,
                          progress=not args.no_progress)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    dense, cell = cfg.cell(args.temperature, args.density, args.dense_seed or cfg.dense_seeds[0])
    print(cell_name(cell, row["dense_seed"]))
    for k in ("test_acc", "val_acc", "lmc_barrier", "cka", "pruned_acc", "dense_acc", "run_id"):
        print(f"  {k:12s} {row[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
