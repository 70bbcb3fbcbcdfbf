"""Selection layer: regime labels, the regime classifier, model selection, the tuner.

Works from a results table (docs/design.md#the-results-table: a DataFrame or its CSV), so any
finished grid can be analysed without recomputation. CLI: ``python -m selection
{classify,select,tune,replay,demo,map}``, one module per command in :mod:`selection.cli`.

Modules: ``regimes`` (rule labels and their thresholds), ``classifier`` (the registered
regime classifier), ``classify`` (labels, classifiers and their record: the ``classify``
command's work), ``model_selection`` (paper Algorithms 2 and 2.1), ``regime_map`` (the
regime labels over the phase diagram), ``tuner`` and ``sampler`` (temperature tuning),
``replay`` (samplers compared on a finished table), ``mapping`` (adaptive regime mapping),
``synthetic`` (tables with known regimes); ``_tracking`` holds everything the layer writes to
MLflow. The names below are loaded on first use, so that importing one module does not import
them all.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "REGIME_I": "regimes",
    "REGIME_II_A": "regimes",
    "REGIME_II_B": "regimes",
    "REGIMES": "regimes",
    "Thresholds": "regimes",
    "label_regimes": "regimes",
    "label_grid": "regimes",
    "sensitivity": "regimes",
    "fit_classifier": "classifier",
    "cross_validate": "classifier",
    "predict_regimes": "classifier",
    "log_classifier": "classifier",
    "load_classifier": "classifier",
    "tag_cell_runs": "_tracking",
    "select_models": "model_selection",
    "log_selection": "_tracking",
    "plot_regime_map": "regime_map",
    "synthetic_table": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'selection' has no attribute {name!r}")
    return getattr(importlib.import_module(f"selection.{_EXPORTS[name]}"), name)
