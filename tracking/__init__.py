"""MLflow side of the project: keys, stores, the run cache, results tables and phase diagrams.

The lowest layer: it knows MLflow and pandas, nothing of torch training. ``pipeline`` logs
through it; ``selection`` reads results tables through it. CLI: ``python -m tracking
{init,table,report}``.

Modules: ``keys`` (every MLflow name), ``store`` (tracking URI, experiments, retries),
``tables`` (results tables), ``plots`` (phase diagrams and the report). The names below are
loaded on first use so that ``import tracking.keys`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "configure": "store",
    "artifact_root": "store",
    "init_experiment": "store",
    "with_retries": "store",
    "redact_uri": "store",
    "TrackingUnavailableError": "store",
    "RESULT_COLUMNS": "tables",
    "results_table": "tables",
    "read_table": "tables",
    "write_table": "tables",
    "validate_table": "tables",
    "phase_diagrams": "plots",
    "phase_grids": "plots",
    "write_report": "plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tracking.{_EXPORTS[name]}"), name)
