"""Store configuration, experiments, run searches and retries."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import requests
import sqlalchemy.exc
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE
from mlflow.store.entities.paged_list import PagedList

from tracking import keys, store
from tracking.store import (
    REPO_ROOT,
    TrackingUnavailableError,
    artifact_root,
    configure,
    experiment_id,
    init_experiment,
    latest_finished_run,
    redact_uri,
    search_all_runs,
    with_retries,
)


@pytest.fixture
def restore_uri(tracking_uri):
    """Put the test's temporary store back as MLflow's URI after a test that changes it."""
    yield tracking_uri
    mlflow.set_tracking_uri(tracking_uri)


def test_repo_root_is_the_checkout():
    # the default store and artifacts go here: the folder that holds tests/, not wherever the
    # package happens to be imported from
    assert REPO_ROOT == Path(__file__).resolve().parent.parent


def test_configure_defaults_to_sqlite_at_repo_root(restore_uri, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri = configure()
    assert uri == f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
    assert mlflow.get_tracking_uri() == uri
    assert store.os.environ["MLFLOW_TRACKING_URI"] == uri   # inherited by workers


def test_configure_honours_env_then_argument(restore_uri, monkeypatch, tmp_path):
    assert configure() == restore_uri
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert configure(other) == other
    assert mlflow.get_tracking_uri() == other
    assert store.os.environ["MLFLOW_TRACKING_URI"] == other


def test_artifact_root(monkeypatch, tmp_path):
    monkeypatch.setenv("THREE_REGIME_ARTIFACT_ROOT", str(tmp_path / "art"))
    assert artifact_root() == (tmp_path / "art").as_uri()
    monkeypatch.setenv("THREE_REGIME_ARTIFACT_ROOT", "s3://bucket/runs/")
    assert artifact_root() == "s3://bucket/runs"
    monkeypatch.delenv("THREE_REGIME_ARTIFACT_ROOT")
    assert artifact_root() == (REPO_ROOT / "mlruns").as_uri()


def test_init_experiment_is_idempotent_and_places_artifacts(tracking_uri, tmp_path):
    exp_id = init_experiment("demo grid/1", "first words")
    client = MlflowClient()
    experiment = client.get_experiment(exp_id)
    assert experiment.name == "demo grid/1"
    assert experiment.artifact_location == f"{(tmp_path / 'mlruns').as_uri()}/demo_grid_1"
    assert experiment.tags[keys.NOTE] == "first words"

    assert init_experiment("demo grid/1") == exp_id
    assert client.get_experiment(exp_id).tags[keys.NOTE] == "first words"
    assert init_experiment("demo grid/1", "second words") == exp_id
    assert client.get_experiment(exp_id).tags[keys.NOTE] == "second words"

    run = client.create_run(exp_id)
    assert run.info.artifact_uri.startswith(experiment.artifact_location)


def test_init_experiment_restores_a_deleted_one(tracking_uri):
    exp_id = init_experiment("gone")
    MlflowClient().delete_experiment(exp_id)
    assert init_experiment("gone") == exp_id
    assert MlflowClient().get_experiment(exp_id).lifecycle_stage == LifecycleStage.ACTIVE


def test_init_experiment_survives_a_concurrent_creation(tracking_uri, monkeypatch):
    client = MlflowClient()
    existing = client.create_experiment("raced")
    # the other process creates it between our lookup and our create
    real_lookup = client.get_experiment_by_name
    lookups = iter([None])
    monkeypatch.setattr(client, "get_experiment_by_name",
                        lambda name: next(lookups, None) or real_lookup(name))
    monkeypatch.setattr(store, "get_client", lambda: client)
    assert init_experiment("raced") == existing


def test_init_experiment_lets_a_server_choose_the_location(tracking_uri, monkeypatch):
    created = {}

    class Client:
        def get_experiment_by_name(self, name):
            return None

        def create_experiment(self, name, artifact_location=None):
            created[name] = artifact_location
            return "7"

    monkeypatch.setattr(store, "get_client", Client)
    monkeypatch.setattr(store.mlflow, "get_tracking_uri", lambda: "https://mlflow.example:5000")
    assert init_experiment("remote") == "7"
    assert created == {"remote": None}


def test_experiment_id_lists_existing_names(tracking_uri):
    init_experiment("alpha")
    MlflowClient().delete_experiment(init_experiment("beta"))
    assert experiment_id("alpha") == MlflowClient().get_experiment_by_name("alpha").experiment_id
    with pytest.raises(ValueError, match=r"unknown experiment 'gamma'.*alpha") as info:
        experiment_id("gamma")
    assert "beta" not in str(info.value)
    with pytest.raises(ValueError, match="unknown experiment 'beta'"):
        experiment_id("beta")


def test_search_all_runs_follows_pages():
    pages = {None: PagedList([1, 2], "a"), "a": PagedList([3], "b"), "b": PagedList([4], None)}

    class Client:
        def search_runs(self, experiment_ids, filter_string, view, max_results, order_by,
                        token):
            return pages[token]

    assert search_all_runs(Client(), ["0"]) == [1, 2, 3, 4]


def test_latest_finished_run(tracking_uri):
    client = MlflowClient()
    exp_id = init_experiment("kinds")
    assert latest_finished_run(client, exp_id, keys.KIND_GRID) is None
    old = client.create_run(exp_id, start_time=1_000, tags={keys.RUN_KIND: keys.KIND_GRID})
    client.set_terminated(old.info.run_id)
    new = client.create_run(exp_id, start_time=2_000, tags={keys.RUN_KIND: keys.KIND_GRID})
    client.set_terminated(new.info.run_id)
    failed = client.create_run(exp_id, start_time=3_000, tags={keys.RUN_KIND: keys.KIND_GRID})
    client.set_terminated(failed.info.run_id, "FAILED")
    cell = client.create_run(exp_id, start_time=4_000, tags={keys.RUN_KIND: keys.KIND_CELL})
    client.set_terminated(cell.info.run_id)
    assert latest_finished_run(client, exp_id, keys.KIND_GRID).info.run_id == new.info.run_id


@pytest.mark.parametrize(("uri", "shown"), [
    ("postgresql://alice:s3cret@db.example:5432/mlflow",
     "postgresql://alice:***@db.example:5432/mlflow"),
    ("https://bob:p%40ss@mlflow.example/", "https://bob:***@mlflow.example/"),
    ("postgresql+psycopg2://carol:x@host/db", "postgresql+psycopg2://carol:***@host/db"),
    ("http://dave@host:5000", "http://dave@host:5000"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown


def _failing(errors):
    """A function that raises ``errors`` one by one, then returns 'ok'; counts its calls."""
    calls = []

    def fn(x, y=0):
        calls.append((x, y))
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"

    return fn, calls


def _wrapped_connection_error() -> MlflowException:
    # how MLflow's REST client reports a refused connection: raised inside an except block
    try:
        raise requests.exceptions.ConnectionError("Max retries exceeded")
    except requests.exceptions.ConnectionError:
        try:
            raise MlflowException("API request to http://h/api failed")
        except MlflowException as e:
            return e


@pytest.mark.parametrize("error", [
    requests.exceptions.ConnectionError("refused"),
    sqlalchemy.exc.OperationalError("select", {}, Exception("database is locked")),
    MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE),
    _wrapped_connection_error(),
], ids=["requests", "sqlalchemy", "unavailable", "wrapped"])
def test_with_retries_retries_connection_errors_with_backoff(error, monkeypatch):
    sleeps = []
    monkeypatch.setattr(store.time, "sleep", sleeps.append)
    fn, calls = _failing([error, error])
    assert with_retries(fn, 1, y=2, attempts=3, backoff=0.5) == "ok"
    assert calls == [(1, 2)] * 3
    assert sleeps == [0.5, 1.0]


def test_with_retries_gives_up_naming_the_store_without_its_password(monkeypatch):
    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    monkeypatch.setattr(store.mlflow, "get_tracking_uri",
                        lambda: "postgresql://u:hunter2@db.example/mlflow")
    fn, calls = _failing([requests.exceptions.ConnectionError("refused")] * 9)
    with pytest.raises(TrackingUnavailableError, match="db.example.*after 4 attempts") as info:
        with_retries(fn, 0, attempts=4)
    assert "hunter2" not in str(info.value)
    assert len(calls) == 4


def test_with_retries_does_not_retry_other_errors():
    fn, calls = _failing([MlflowException("bad filter"), KeyError("k")])
    with pytest.raises(MlflowException, match="bad filter"):
        with_retries(fn, 0)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="attempts"):
        with_retries(fn, 0, attempts=0)


def test_with_retries_on_an_unreachable_server(restore_uri, monkeypatch):
    # port 9 (discard) on localhost: nothing listens, the connection is refused at once
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    with pytest.raises(TrackingUnavailableError, match=r"http://127\.0\.0\.1:9"):
        with_retries(MlflowClient().search_experiments, attempts=2, backoff=0)

