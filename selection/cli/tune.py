"""``python -m selection tune``: regime-guided (or baseline) Optuna tuning of the training
temperature for one target density of a grid config; each trial runs the cell through the
pipeline, or fetches it from the MLflow cache when it was computed before."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from typing import Any

from selection.cli._common import add_threshold_options
from selection.tuner import SAMPLER_NAMES
from tracking.cli import add_store_options

__all__ = ["add_parser", "run_tune"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``tune`` subcommand."""
    tune = subparsers.add_parser(
        "tune", help="tune the training temperature for a target density (Optuna)",
        description="Regime-guided Optuna tuning of the training temperature for one target "
                    "density: each trial runs (or fetches) one cell of the config's grid and "
                    "returns its validation accuracy.")
    tune.add_argument("--config", required=True, help="grid config YAML (knob, temperatures)")
    tune.add_argument("--density", type=float, required=True, help="target density (0, 1]")
    tune.add_argument("--n-trials", type=int, required=True, help="trials to run now")
    tune.add_argument("--sampler", default="regime", choices=SAMPLER_NAMES)
    tune.add_argument("--storage", help="Optuna storage: a .journal path, a database URL "
                      "(postgresql://...) or 'memory' (default: <repo>/optuna.journal)")
    tune.add_argument("--study", help="study name (default tune-<knob>-d<density>-<sampler>); "
                      "an existing study is resumed")
    add_threshold_options(tune, over="the study's cells")
    tune.add_argument("--classifier", help="registered regime classifier NAME[@ALIAS]: a "
                      "phase model steers the sampler, a landscape model labels the cells")
    tune.add_argument("--seed", type=int, default=0, help="sampler seed")
    tune.add_argument("--dense-seed", type=int, help="dense seed of the cells (default: the "
                      "config's first)")
    tune.add_argument("--experiment", help="MLflow experiment (default: the config's)")
    add_store_options(tune)       # --tracking-uri, --store-timeout
    tune.add_argument("--no-mlflow", action="store_true",
                      help="do not log the study and its trials to MLflow")
    tune.add_argument("--no-register", action="store_true",
                      help="do not register the best trial's pruned model "
                           "(default: registered as <study>-pruned, alias champion)")
    tune.set_defaults(func=run_tune)


def run_tune(args: argparse.Namespace,
             lookup: Callable[[float, float], Mapping[str, Any]] | None = None) -> int:
    """Run the ``tune`` command; ``lookup`` replaces the pipeline (tests, dry runs)."""
    from pipeline.config import load_config
    from selection._tracking import MlflowTrialLogger
    from selection.tuner import classifier_callables, make_storage, tune
    from tracking import keys
    from tracking.cli import open_store

    try:
        cfg = load_config(args.config)
        experiment = args.experiment or cfg.experiment
        open_store(args)                     # both stores answer before anything is written
        storage = make_storage(args.storage)
        if lookup is None:
            from pipeline.grid import ensure_cell

            # A cell the tuner computes joins the experiment's grid run in the UI; without a
            # parent, each trial would open a grid run of its own (one cell each), and the
            # newest of those would become the run that report and classify log to.
            parent = _grid_run_or_none(experiment)

            def lookup(temperature: float, density: float) -> Mapping[str, Any]:
                return ensure_cell(cfg, temperature, density, dense_seed=args.dense_seed,
                                   experiment=experiment, parent_run_id=parent)
        predictor = labeller = None
        if args.classifier:
            from selection.classifier import DEFAULT_ALIAS, load_classifier

            name, _, alias = args.classifier.partition("@")
            model = load_classifier(name, alias or DEFAULT_ALIAS)
            predictor, labeller = classifier_callables(model, args.density)
        logger = None if args.no_mlflow else MlflowTrialLogger(
            experiment, study_params={keys.KNOB: cfg.knob, keys.DENSITY: args.density,
                                      keys.SAMPLER: args.sampler},
            register_best=None if args.no_register else _register_best)
        context, transfer = _grid_context(experiment, cfg.knob, args.density,
                                          args.sampler == "regime", args.eps, args.tau)
        study = tune(lookup, density=args.density, temperature_space=list(cfg.temperatures),
                     knob=cfg.knob, n_trials=args.n_trials, sampler=args.sampler,
                     seed=args.seed, storage=storage, study_name=args.study,
                     eps=args.eps, tau=args.tau, regime_labeller=labeller,
                     regime_predictor=predictor, logger=logger, context=context,
                     transfer=transfer)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"study {study.study_name}: {len(study.trials)} trials")
    print(f"{'trial':>5} {'temperature':>11} {'val_acc':>8} {'regime':>6} {'state':>8}")
    for trial in study.trials:
        value = f"{trial.value:.4f}" if trial.value is not None else "-"
        print(f"{trial.number:>5} {trial.user_attrs.get(keys.TEMPERATURE, '-')!s:>11} "
              f"{value:>8} {trial.user_attrs.get(keys.REGIME) or '-':>6} {trial.state.name:>8}")
    try:
        best = study.best_trial
    except ValueError:
        print("no trial completed")
        return 1
    print(f"best: temperature {best.user_attrs.get(keys.TEMPERATURE)} "
          f"({cfg.knob}), val_acc {best.value:.4f}, regime {best.user_attrs.get(keys.REGIME)}, "
          f"trial {best.number}")
    return 0


def _grid_context(experiment: str, knob: str, density: float, want_transfer: bool,
                  eps: float | None, tau: float | None):
    """Finished cells of the experiment's grid at other densities (labels of the trials use
    them) and, for the regime sampler, the transfer start they give; (None, None) when the
    experiment has none yet."""
    import warnings

    from selection.regimes import RegimeWarning, label_grid
    from selection.sampler import transfer_prior
    from tracking import keys
    from tracking.tables import results_table

    try:
        table = results_table(experiment)
    except ValueError:   # no such experiment yet
        return None, None
    table = table[(table[keys.KNOB].astype(str) == knob)
                  & (abs(table[keys.DENSITY] - density) > 1e-9)]
    table = table.dropna(subset=[keys.LMC_BARRIER, keys.CKA])
    if table.empty:
        return None, None
    transfer = None
    if want_transfer:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RegimeWarning)
            labelled, _ = label_grid(table, eps, tau, n_resamples=0)
        transfer = transfer_prior(labelled, density, knob)
    print(f"{len(table)} finished cells of other densities in {experiment!r} inform the "
          "labels" + (" and the start" if transfer else ""))
    return table, transfer


def _register_best(study, best, study_run_id: str) -> None:
    """Register the best trial's pruned model (its cell run's best-validation copy)."""
    from pipeline.registry import register_cell_model
    from tracking.tables import RUN_ID

    cell_run = best.user_attrs.get(RUN_ID)
    if not cell_run:
        return
    from mlflow.exceptions import MlflowException

    from tracking.artifacts import CorruptArtifactError

    name = f"{study.study_name}-pruned"
    try:
        version = register_cell_model(cell_run, name)
    except (MlflowException, CorruptArtifactError) as e:
        # the study's result stands without it; say why nothing was registered
        print(f"warning: the best trial's model was not registered: {e}", file=sys.stderr)
        return
    print(f"registered the best trial's pruned model: models:/{name}@champion "
          f"(version {version})")


def _grid_run_or_none(experiment: str) -> str | None:
    """The latest FINISHED grid run of ``experiment``; None if it has none or does not exist."""
    from selection._tracking import grid_parent_run_id

    try:
        return grid_parent_run_id(experiment)
    except ValueError:   # no such experiment yet: the first cell creates it
        return None
