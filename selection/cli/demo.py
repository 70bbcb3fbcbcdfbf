"""``python -m selection demo``: the whole product on the demo grid, end to end.

grid (computed, or looked up by spec hash) -> report (phase diagrams) -> classify (regime
labels, registered classifier, regime map) -> select (Alg. 2 / 2.1 with regret) -> tune (the
regime-guided sampler on one target density, trials served by the cell cache) -> replay (the
sampler against Optuna's on the finished grid table). Each step is the same command a user
would type, called in-process.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from selection.cli._common import fail
from tracking.cli import add_store_options


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the demo grid and every analysis on it",
                              description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml", help="grid config (default: the demo)")
    p.add_argument("--density", type=float, default=0.05, help="target density of the tuning step")
    p.add_argument("--n-trials", type=float, default=6, help="tuning trials (served by the cache)")
    p.add_argument("--replay-repeats", type=int, default=20,
                   help="seeds per sampler in the replay at the tuning density")
    p.add_argument("--out", default="demo_out", help="folder for tables and pictures")
    add_store_options(p)          # --tracking-uri, --store-timeout (the steps inherit both)
    p.set_defaults(func=run_demo)


def ui_runs_url(server: str, experiment: str) -> str:
    """The MLflow UI page of ``experiment``'s runs table on ``server``.

    Note: MLflow 3's UI opens an experiment in its GenAI view (traces) by default; the
    ``workflowType=machine_learning`` parameter opens the runs table of model training.
    """
    from tracking.store import experiment_id

    return (f"{server.rstrip('/')}/#/experiments/{experiment_id(experiment)}/runs"
            "?workflowType=machine_learning")


def _print_best_temperatures(cfg, experiment: str) -> None:
    """The grid's best temperature per density, now with the regimes ``classify`` tagged."""
    from pipeline.grid import best_temperatures
    from pipeline.specs import cell_hash
    from tracking.tables import format_best_temperatures

    try:
        best = best_temperatures(experiment, {cell_hash(c, d) for d, c, _ in cfg.cells()})
    except ValueError:   # the grid step failed before creating the experiment
        return
    if best is not None:
        print("\n".join(format_best_temperatures(best)))


def run_demo(args: argparse.Namespace) -> int:
    from pipeline.__main__ import main as pipeline_main
    from pipeline.config import load_config
    from selection.__main__ import main as selection_main
    from tracking.__main__ import main as tracking_main
    from tracking.cli import open_store
    from tracking.store import StoreUnreachableError, redact_uri

    started = time.perf_counter()
    try:
        cfg = load_config(args.config)
    except (ValueError, FileNotFoundError) as e:
        return fail(e)
    try:
        uri = open_store(args)     # before any step: the store answers, or one clear error
    except (StoreUnreachableError, ValueError) as e:
        return fail(e)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exp = cfg.experiment
    steps: list[tuple[str, list[str], object]] = [
        ("grid", ["grid", args.config], pipeline_main),
        ("report", ["report", "--experiment", exp, "--out", str(out)], tracking_main),
        ("classify", ["classify", "--experiment", exp, "--out", str(out / "regime_labels.csv"),
                      "--map", str(out / "regime_map.png")], selection_main),
        ("select", ["select", "--experiment", exp, "--density", "all",
                    "--out", str(out / "selection.csv"),
                    "--plot", str(out / "selection_regret.png")],
         selection_main),
        ("tune", ["tune", "--config", args.config, "--density", str(args.density),
                  "--n-trials", str(int(args.n_trials)), "--sampler", "regime"], selection_main),
        ("replay", ["replay", "--table", str(out / "results.csv"), "--density", str(args.density),
                    "--sampler", "regime,tpe,tpe2,gp,random,grid",
                    "--repeats", str(args.replay_repeats),
                    "--out", str(out / "replay")], selection_main),
    ]
    codes = {}
    for name, argv, entry in steps:
        package = entry.__module__.split('.')[0]
        print(f"\n=== {name}: python -m {package} {' '.join(argv)}", flush=True)
        codes[name] = entry(argv)
        if name == "grid" and codes[name] != 0:
            print("the grid had failures: the analyses below use the cells that finished")
    seconds = time.perf_counter() - started
    print(f"\n=== demo finished in {seconds:.0f} s; steps: "
          + ", ".join(f"{k} {'ok' if v == 0 else f'exit {v}'}" for k, v in codes.items()))
    _print_best_temperatures(cfg, exp)
    print(f"phase diagrams, regime map, selection and replay: {out.resolve()}")
    print(f"tracking store: {redact_uri(uri)}")
    if uri.startswith("sqlite:///"):
        print(f"open the MLflow UI:  .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000")
        try:
            print(f"then the grid's runs:  {ui_runs_url('http://127.0.0.1:5000', exp)}")
        except ValueError:   # the grid step failed before creating the experiment
            pass
    return 0 if all(v == 0 for v in codes.values()) else 1
