"""Where runs are stored: the tracking URI, the artifact root, experiments, retries.

Defaults (DESIGN.md section 4): with ``MLFLOW_TRACKING_URI`` unset, the store is the SQLite
file ``<repo>/mlflow.db`` and artifacts go under ``<repo>/mlruns`` (or
``$THREE_REGIME_ARTIFACT_ROOT``). The URI is always set explicitly, never left to MLflow's
implicit default, and exported so that worker processes inherit it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage, Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, TEMPORARILY_UNAVAILABLE, ErrorCode

from tracking import keys

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_ARTIFACT_ROOT = "THREE_REGIME_ARTIFACT_ROOT"
REPO_ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


class TrackingUnavailableError(RuntimeError):
    """The tracking store could not be reached after retrying."""


def default_tracking_uri() -> str:
    """The store used when nothing is configured: ``sqlite:///<repo>/mlflow.db``."""
    return f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def configure(tracking_uri: str | None = None) -> str:
    """Set the tracking URI explicitly and return it.

    Order: the argument, then ``$MLFLOW_TRACKING_URI``, then :func:`default_tracking_uri`.
    The chosen URI is also written to ``$MLFLOW_TRACKING_URI`` so that subprocesses (workers,
    ``mlflow run``) use the same store.
    """
    uri = tracking_uri or os.environ.get(ENV_TRACKING_URI) or default_tracking_uri()
    os.environ[ENV_TRACKING_URI] = uri
    # With a tracking server MLflow prints "View run <name> at: <URI>/..." for every run it
    # ends: two lines per cell, and the URI's password with them (http://user:pw@host).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    mlflow.set_tracking_uri(uri)
    return uri


def get_client() -> MlflowClient:
    """A client on the configured store (calls :func:`configure` if no URI is set yet)."""
    if not mlflow.is_tracking_uri_set():
        configure()
    return MlflowClient()


def artifact_root() -> str:
    """Root of local artifacts: ``$THREE_REGIME_ARTIFACT_ROOT`` or ``<repo>/mlruns``.

    Returns a URI (``file:///...`` for a local path; a remote URI such as ``s3://...`` as given).
    """
    root = os.environ.get(ENV_ARTIFACT_ROOT) or str(REPO_ROOT / "mlruns")
    if "://" in root:
        return root.rstrip("/")
    return Path(root).expanduser().resolve().as_uri()


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def init_experiment(name: str, description: str | None = None) -> str:
    """Create the experiment ``name`` if missing (restore it if deleted); return its id.

    Local stores put its artifacts under ``<artifact_root()>/<name>``; a tracking server
    chooses the location itself. ``description`` becomes the note shown in the MLflow UI.

    Note: call it once, from the ``init`` step, before workers start: it tolerates a
    concurrent creation of the same experiment, but a fresh SQLite database created by several
    processes at once can still race inside MLflow's schema migration.
    """
    client = get_client()
    experiment = with_retries(client.get_experiment_by_name, name)
    if experiment is None:
        location = None if _is_server(mlflow.get_tracking_uri()) else (
            f"{artifact_root()}/{_safe_name(name)}")
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except MlflowException as e:
            # another process created it between our lookup and our create
            if e.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
            experiment_id = client.get_experiment_by_name(name).experiment_id
    else:
        experiment_id = experiment.experiment_id
        if experiment.lifecycle_stage == LifecycleStage.DELETED:
            client.restore_experiment(experiment_id)
    if description is not None:
        client.set_experiment_tag(experiment_id, keys.NOTE, description)
    return experiment_id


def experiment_id(name: str, client: MlflowClient | None = None) -> str:
    """Id of the active experiment ``name``.

    Raises:
        ValueError: no active experiment has that name; the message lists those that exist.
    """
    client = client or get_client()
    experiment = with_retries(client.get_experiment_by_name, name)
    if experiment is None or experiment.lifecycle_stage != LifecycleStage.ACTIVE:
        names = sorted(e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY))
        raise ValueError(
            f"unknown experiment {name!r} in {redact_uri(mlflow.get_tracking_uri())}; "
            f"existing experiments: {', '.join(names) or '(none)'}")
    return experiment.experiment_id


def search_all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "",
                    order_by: list[str] | None = None) -> list[Run]:
    """Every active run matching ``filter_string``, following the pages of ``search_runs``."""
    runs: list[Run] = []
    token = None
    while True:
        page = with_retries(client.search_runs, experiment_ids, filter_string,
                            ViewType.ACTIVE_ONLY, 1000, order_by, token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_finished_run(client: MlflowClient, experiment_id: str, kind: str) -> Run | None:
    """The most recently started FINISHED run tagged ``run_kind`` = ``kind``, or None."""
    page = with_retries(
        client.search_runs, [experiment_id],
        f"tags.{keys.RUN_KIND} = '{kind}' and attributes.status = 'FINISHED'",
        ViewType.ACTIVE_ONLY, 1, ["attributes.start_time DESC"])
    return page[0] if page else None


def redact_uri(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (safe to print or log)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def redact_text(text: str, uri: str) -> str:
    """``text`` (an error message) with the password of ``uri``, if any, replaced by ``***``."""
    password = urlsplit(uri).password
    return text.replace(password, "***") if password else text


def _is_connection_error(error: BaseException) -> bool:
    import requests
    import sqlalchemy.exc

    transient = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                 sqlalchemy.exc.OperationalError)
    seen = set()
    # MLflow wraps the real cause (raise ... from e, or raise inside except): walk the chain.
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, transient):
            return True
        if (isinstance(error, MlflowException)
                and error.error_code == ErrorCode.Name(TEMPORARILY_UNAVAILABLE)):
            return True
        error = error.__cause__ or error.__context__
    return False


def with_retries(fn: Callable[..., T], *args, attempts: int = 5, backoff: float = 0.5,
                 **kwargs) -> T:
    """Call ``fn(*args, **kwargs)``, retrying connection errors with exponential backoff.

    Waits ``backoff * 2**(k-1)`` seconds after the k-th failure. Other errors propagate at once.

    Raises:
        TrackingUnavailableError: still failing after ``attempts`` tries; names the store URI.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    error: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not _is_connection_error(e):
                raise
            error = e
    uri = mlflow.get_tracking_uri()
    # the client's own message may repeat the URI, password included (http://user:pw@host)
    raise TrackingUnavailableError(
        f"tracking store {redact_uri(uri)} unreachable after {attempts} attempts: "
        f"{redact_text(str(error), uri)}") from error
