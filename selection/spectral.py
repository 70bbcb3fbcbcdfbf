"""Does the regime follow from measurements taken before any fine-tuning? The ablation, and a
regime predictor for the tuner built on its answer.

Feature sets compared (all with the classifier of ``selection.classifier``: log density,
knob-oriented temperature, the extra columns passed through, standardised, multinomial
logistic regression; the same cross-validation):

- ``phase``: temperature and density only;
- ``spectral``: + the weightwatcher summaries of the dense checkpoint and of the pruned model
  before fine-tuning (``tracking.keys.SPECTRAL_COLUMNS``; no data, no training);
- ``spectral_landscape``: + the LMC barrier and CKA of the fine-tuned copies;
- ``landscape``: today's classifier (temperature, density, LMC barrier, CKA).

The labels being rules over barrier and CKA, the landscape sets are close to an upper bound.

A predictor from the ``spectral`` set needs, at a temperature not yet run, only the dense
checkpoint at that temperature (for the epochs knob it exists as soon as the one dense run
does) and an SVD per layer: :class:`SpectralRegimePredictor` is the ``regime_predictor`` that
``selection.sampler.RegimeGuidedSampler`` accepts.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from selection import classifier
from tracking import keys

PHASE = classifier.PHASE
LANDSCAPE = classifier.LANDSCAPE
SPECTRAL = "spectral"
SPECTRAL_LANDSCAPE = "spectral_landscape"
_PHASE_COLUMNS = (keys.TEMPERATURE, keys.DENSITY)
_LANDSCAPE_COLUMNS = (keys.LMC_BARRIER, keys.CKA)
ABLATION_SETS: dict[str, tuple[str, ...]] = {
    PHASE: _PHASE_COLUMNS,
    SPECTRAL: (*_PHASE_COLUMNS, *keys.SPECTRAL_COLUMNS),
    SPECTRAL_LANDSCAPE: (*_PHASE_COLUMNS, *keys.SPECTRAL_COLUMNS, *_LANDSCAPE_COLUMNS),
    LANDSCAPE: (*_PHASE_COLUMNS, *_LANDSCAPE_COLUMNS),
}


@contextlib.contextmanager
def _feature_sets():
    """The ablation's sets visible to ``selection.classifier`` for the duration only (so that
    ``classify``, which fits every registered set, is never affected)."""
    added = {k: v for k, v in ABLATION_SETS.items() if k not in classifier.FEATURE_SETS}
    classifier.FEATURE_SETS.update(added)
    try:
        yield
    finally:
        for k in added:
            classifier.FEATURE_SETS.pop(k, None)


def ablation(labelled: pd.DataFrame, n_splits: int = 5, seed: int = 0) -> pd.DataFrame:
    """Cross-validated accuracy of the regime classifier per feature set, on the rows of the
    labelled table (column ``regime``) that have every feature (the same rows for all sets).

    Returns one row per feature set: ``feature_set``, ``features`` (count), ``cells``,
    ``cv_accuracy`` (stratified folds grouped by cell), ``cv_accuracy_by_density`` (folds
    grouped by density: densities never seen in training), ``folds`` and ``majority`` (the
    accuracy of always answering the most common regime).
    """
    missing = [c for c in ABLATION_SETS[SPECTRAL_LANDSCAPE] if c not in labelled.columns]
    if missing:
        raise ValueError(f"the table lacks {missing}: run the grid with measure.spectra=true "
                         "(python -m pipeline grid CONFIG --set measure.spectra=true)")
    used = labelled.dropna(subset=list(ABLATION_SETS[SPECTRAL_LANDSCAPE])).reset_index(drop=True)
    if used.empty:
        raise ValueError("no cell has every feature (all spectral or landscape values NaN)")
    majority = float(used[keys.REGIME].value_counts(normalize=True).max())
    rows = []
    with _feature_sets():
        for name, columns in ABLATION_SETS.items():
            strat = classifier.cross_validate(used, name, n_splits=n_splits, seed=seed)
            dens = classifier.cross_validate(used, name, n_splits=n_splits, group_by_density=True,
                                             seed=seed)
            rows.append({"feature_set": name, "features": len(columns), "cells": len(used),
                         "cv_accuracy": strat.accuracy, "cv_accuracy_by_density": dens.accuracy,
                         "folds": strat.n_splits, "majority": majority})
    return pd.DataFrame(rows)


def format_ablation(table: pd.DataFrame) -> list[str]:
    """Markdown lines of :func:`ablation`'s table."""
    lines = ["| features | n | cells | CV accuracy (stratified) | CV accuracy (by density) |",
             "|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.feature_set} | {r.features} | {r.cells} | {r.cv_accuracy:.3f} | "
                     f"{r.cv_accuracy_by_density:.3f} |")
    lines.append(f"majority-class accuracy: {table['majority'].iloc[0]:.3f}")
    return lines


def fit_spectral_classifier(labelled: pd.DataFrame):
    """The ``spectral`` classifier fitted on every usable row of a labelled table."""
    used = labelled.dropna(subset=list(ABLATION_SETS[SPECTRAL]))
    with _feature_sets():
        return classifier.fit_classifier(used, SPECTRAL)


def checkpoint_features(state: dict, prunable: list[str], prune_spec,
                        min_evals: int | None = None) -> dict[str, float]:
    """The ``spectral`` features of a dense checkpoint pruned by ``prune_spec`` (no data, no
    fine-tuning): the same values a cell with ``measure.spectra`` logs."""
    from pipeline.prune import prune
    from pipeline.spectra import MIN_EVALS, cell_spectra, cell_spectra_metrics

    mask = prune({k: state[k] for k in prunable}, prune_spec)
    return cell_spectra_metrics(cell_spectra(state, mask, min_evals or MIN_EVALS))


class SpectralRegimePredictor:
    """``temperature -> regime`` at one density from the ``spectral`` classifier.

    Args:
        model: from :func:`fit_spectral_classifier` (e.g. on a smaller or earlier grid).
        density: the study's target density.
        features: ``temperature -> {spectral column: value}`` for the dense checkpoint at that
            temperature pruned to ``density`` (see :func:`checkpoint_features` and
            :func:`grid_features`), or None when it cannot be had; then the prediction is None
            (the sampler bisects as without a predictor).

    Plug it in: ``RegimeGuidedSampler(..., regime_predictor=SpectralRegimePredictor(model, d,
    grid_features(cfg, d)))`` (``selection.tuner`` passes ``regime_predictor`` through).
    """

    def __init__(self, model, density: float,
                 features: Callable[[float], dict[str, float] | None]):
        self.model, self.density, self.features = model, float(density), features
        self._cache: dict[float, str | None] = {}

    def __call__(self, temperature: float) -> str | None:
        t = float(temperature)
        if t not in self._cache:
            values = self.features(t)
            if values is None or any(not math.isfinite(values.get(c, math.nan))
                                     for c in keys.SPECTRAL_COLUMNS):
                self._cache[t] = None
            else:
                row = pd.DataFrame([{keys.TEMPERATURE: t, keys.DENSITY: self.density, **values}])
                columns = list(self.model.feature_names_in_)
                self._cache[t] = str(np.asarray(self.model.predict(row[columns]))[0])
        return self._cache[t]


def grid_features(cfg, density: float, dense_seed: int | None = None,
                  experiment: str | None = None) -> Callable[[float], dict[str, float] | None]:
    """``temperature -> spectral features`` from a grid config's dense checkpoints, read from
    (or, if missing, trained into) its MLflow experiment; nothing is fine-tuned."""
    from pipeline.grid import GridRunner, checkpoint_path
    from pipeline.models import build_model
    from pipeline.prune import select_prunable
    from tracking.artifacts import load_file

    seed = cfg.dense_seeds[0] if dense_seed is None else dense_seed
    runner = GridRunner(cfg, experiment, progress=False)

    def features(temperature: float) -> dict[str, float] | None:
        try:
            dense, cell = cfg.cell(temperature, density, seed)
        except ValueError:
            return None
        run_id, _, _ = runner.ensure_dense(dense)
        state = load_file(runner.client, run_id, checkpoint_path(cell.checkpoint_epoch))
        from pipeline.data import load_dataset

        data = load_dataset(dense.data, cfg.runtime.device)
        model = build_model(dense.model, data.input_shape, data.num_classes)
        names = select_prunable(model, cell.prune)
        return checkpoint_features(state, names, cell.prune, cell.measure.spectra_min_evals)

    return features


# --- replay: trials saved by the predictor ----------------------------------------------------

@contextlib.contextmanager
def _replay_sampler_with(predictor):
    """``selection.replay`` builds its samplers by name; for the duration, its ``regime``
    sampler gets ``predictor`` (every other sampler is unchanged)."""
    from selection import replay

    original = replay.create_sampler

    def create(name, knob, seed=None, **kw):
        if name == "regime":
            kw["regime_predictor"] = predictor
        return original(name, knob, seed, **kw)

    replay.create_sampler = create
    try:
        yield
    finally:
        replay.create_sampler = original


def replay_trials_saved(table: pd.DataFrame, repeats: int = 20, seed: int = 0,
                        budget: int | None = None) -> pd.DataFrame:
    """Replay the regime-guided sampler per density with and without the spectral predictor.

    The predictor of a density is fitted on the OTHER densities' cells only (it never sees the
    labels of the density it steers), from their spectral columns (means over dense seeds),
    and is queried with the table's own pre-fine-tuning spectral values at that density.
    Returns per density: median and mean trials to the best cell without / with it, and
    ``saved`` (difference of the means; > 0 = fewer trials with the predictor).
    """
    from selection.replay import prepare_table, replay_density

    cells, knob = prepare_table(table)
    spectral = (table.groupby([keys.TEMPERATURE, keys.DENSITY], as_index=False)
                [list(keys.SPECTRAL_COLUMNS)].mean())
    cells = cells.merge(spectral, on=[keys.TEMPERATURE, keys.DENSITY], how="left")
    seeds = list(range(seed, seed + repeats))
    rows = []
    for d in sorted(cells[keys.DENSITY].unique()):
        others = cells[~np.isclose(cells[keys.DENSITY], d)]
        at = cells[np.isclose(cells[keys.DENSITY], d)].set_index(keys.TEMPERATURE)
        try:
            model = fit_spectral_classifier(others)
        except ValueError:
            continue      # e.g. no other density with every feature

        def features(t, at=at):
            if t not in at.index:
                return None
            return {c: float(at.at[t, c]) for c in keys.SPECTRAL_COLUMNS}

        plain = replay_density(cells, knob, d, "regime", seeds, budget=budget)
        with _replay_sampler_with(SpectralRegimePredictor(model, d, features)):
            guided = replay_density(cells, knob, d, "regime", seeds, budget=budget)
        rows.append({keys.DENSITY: float(d),
                     "median_trials_plain": float(np.median(plain.trials_to_best)),
                     "median_trials_predicted": float(np.median(guided.trials_to_best)),
                     "mean_trials_plain": float(plain.trials_to_best.mean()),
                     "mean_trials_predicted": float(guided.trials_to_best.mean()),
                     "saved": float(plain.trials_to_best.mean() - guided.trials_to_best.mean())})
    return pd.DataFrame(rows)
