"""MLflow plumbing of the selection layer: the grid parent run and the runs nested under it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow import MlflowClient

from tracking import keys
from tracking.store import experiment_id, get_client, init_experiment, latest_finished_run


def grid_parent_run_id(experiment: str, client: MlflowClient | None = None) -> str | None:
    """Id of the most recent FINISHED grid parent run of ``experiment`` (the run that
    ``tracking``'s report logs to), or None if it has none."""
    client = client or get_client()
    run = latest_finished_run(client, experiment_id(experiment, client), keys.KIND_GRID)
    return run.info.run_id if run is not None else None


@contextmanager
def child_run(experiment: str, kind: str, run_name: str, parent_run_id: str | None = None
              ) -> Iterator[mlflow.ActiveRun]:
    """An active MLflow run of ``experiment`` (created if missing) tagged ``run_kind=kind``,
    nested under ``parent_run_id`` when given.

    Note: the parent is attached by the ``mlflow.parentRunId`` tag, not by
    ``mlflow.start_run(parent_run_id=...)``, which requires the parent to be still running.
    """
    tags = {keys.RUN_KIND: kind}
    if parent_run_id is not None:
        tags[keys.PARENT_RUN_ID] = parent_run_id
    get_client()  # sets the tracking URI explicitly if nobody has
    with mlflow.start_run(experiment_id=init_experiment(experiment), run_name=run_name,
                          tags=tags) as run:
        yield run
