"""A store that does not answer is a clear error within a bounded wait, never minutes of
silence: the tracking store (HTTP, PostgreSQL, SQLite), the Optuna storage and a Dask
scheduler are checked before any compute, one line per pause, then one error naming the store
(password redacted) and what to check; nothing is computed or written. A store that goes away
mid-grid stops the grid after the same bound, and a re-run resumes."""

from __future__ import annotations

import re
import socket
import sqlite3
import time
import uuid
from contextlib import contextmanager

import mlflow
import pytest
from helpers import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    REPO,
    cli,
    cli_env,
    finished_per_hash,
    tiny,
    write_config,
)

from pipeline.__main__ import main as pipeline_main
from selection.__main__ import main as selection_main
from tracking import keys
from tracking.__main__ import main as tracking_main
from tracking.cli import ENV_STORE_TIMEOUT
from tracking.store import StoreUnreachableError, ensure_reachable, store_timeout

BOUND = 2.0      # seconds: the store timeout these tests set
SLACK = 20.0     # generous margin on a loaded machine (scheduling, first imports)
DEMO = str(REPO / "configs" / "demo.yaml")


@pytest.fixture
def bound(monkeypatch):
    """A short store timeout, and the clients' own timeouts restored after the test (the
    commands set environment defaults for them)."""
    monkeypatch.setenv(ENV_STORE_TIMEOUT, str(BOUND))
    for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
                        ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "5"), ("PGCONNECT_TIMEOUT", "5")):
        monkeypatch.setenv(name, value)
    return BOUND


@pytest.fixture
def restore_uri(tracking_uri):
    """Put the test's own store back as MLflow's URI (a command sets the bad one)."""
    yield tracking_uri
    mlflow.set_tracking_uri(tracking_uri)


def free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def silent_port():
    """A port whose connections the kernel accepts (listen backlog) but nobody ever answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def unreachable(fn, *args) -> tuple[str, float]:
    """The StoreUnreachableError message ``fn(*args)`` ends with, and the seconds it took."""
    started = time.monotonic()
    with pytest.raises(StoreUnreachableError) as info:
        fn(*args)
    return str(info.value), time.monotonic() - started


def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def wait_lines(err: str, what: str, shown: str) -> list[int]:
    """Attempt numbers of the one-line-per-pause messages about ``what`` at ``shown``."""
    pattern = (rf"^waiting for the {re.escape(what)} {re.escape(shown)}: attempt (\d+) failed "
               rf"\(.+\); next attempt in [\d.]+ s, giving up after {BOUND:.1f} s$")
    return [int(n) for n in re.findall(pattern, err, re.MULTILINE)]


def reported_attempts(message: str) -> int:
    m = re.search(r"unreachable after (\d+) attempts? over ([\d.]+) s", message)
    assert m, message
    assert float(m.group(2)) <= BOUND + SLACK
    return int(m.group(1))


# -- HTTP -----------------------------------------------------------------------------------

def test_http_port_with_nothing_listening(bound, capsys):
    port = free_port()
    uri = f"http://alice:S3cretPw@127.0.0.1:{port}"
    message, seconds = unreachable(ensure_reachable, uri)
    assert 0.9 * BOUND <= seconds < BOUND + SLACK      # it waited the bound, and no longer
    shown = f"http://alice:***@127.0.0.1:{port}"
    assert message.startswith(f"tracking store {shown} unreachable after")
    assert "Connection refused" in message
    assert "is the tracking server started" in message and f"--port {port}" in message
    assert "--host 0.0.0.0" in message and "--store-timeout" in message
    err = capsys.readouterr().err
    attempts = wait_lines(err, "tracking store", shown)
    assert attempts == list(range(1, reported_attempts(message)))   # one line per pause
    assert attempts, err
    assert "S3cretPw" not in message + err


def test_port_that_accepts_but_never_answers_stops_the_grid_within_the_flag(
        restore_uri, bound, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(ENV_STORE_TIMEOUT, "600")      # the flag wins over the environment
    config = write_config(tmp_path / "grid.yaml", tiny())
    before = files_under(tmp_path)
    with silent_port() as port:
        started = time.monotonic()
        code = pipeline_main(["grid", str(config), "--tracking-uri", f"http://127.0.0.1:{port}",
                              "--store-timeout", str(BOUND), "--no-progress"])
        seconds = time.monotonic() - started
    assert code == 2
    assert seconds < BOUND + SLACK
    out, err = capsys.readouterr()
    assert f"tracking store http://127.0.0.1:{port} unreachable after" in err
    assert "connected, but no answer within" in err and "Traceback" not in err
    assert "cells:" not in out                        # no grid summary: nothing ran
    assert files_under(tmp_path) == before            # nothing written (the test's store either)


def test_tracking_commands_check_the_store_first(restore_uri, bound, tmp_path, capsys):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    for argv in (["init", "--experiment", "x"],
                 ["report", "--experiment", "x", "--out", str(tmp_path / "report")]):
        assert tracking_main(["--tracking-uri", uri, *argv]) == 1
        err = capsys.readouterr().err
        assert f"error: tracking store {uri} unreachable after" in err, argv
    assert not (tmp_path / "report").exists()
    assert selection_main(["classify", "--experiment", "x", "--tracking-uri", uri]) == 1
    assert f"error: tracking store {uri} unreachable after" in capsys.readouterr().err
    # a --table input logged to MLflow needs the store too: checked before the table is read
    assert selection_main(["select", "--table", str(tmp_path / "missing.csv"), "--density",
                           "all", "--tracking-uri", uri]) == 1
    assert f"error: tracking store {uri} unreachable after" in capsys.readouterr().err
    assert files_under(tmp_path) == []                # nothing read, nothing written


def test_store_timeout_must_be_a_positive_number(monkeypatch, capsys):
    monkeypatch.setenv(ENV_STORE_TIMEOUT, "soon")
    with pytest.raises(ValueError, match=f"{ENV_STORE_TIMEOUT}='soon'"):
        store_timeout()
    monkeypatch.setenv(ENV_STORE_TIMEOUT, "-3")
    with pytest.raises(ValueError, match="> 0"):
        store_timeout()
    monkeypatch.delenv(ENV_STORE_TIMEOUT)
    assert store_timeout() == 30.0
    with pytest.raises(SystemExit):
        pipeline_main(["grid", DEMO, "--store-timeout", "0"])
    assert "--store-timeout" in capsys.readouterr().err


def test_the_issue_scenario_through_the_real_command(tmp_path):
    # MLFLOW_TRACKING_URI with a mistyped port: was five minutes of silence
    port = free_port()
    env = cli_env(f"http://127.0.0.1:{port}", tmp_path / "mlruns",
                  **{ENV_STORE_TIMEOUT: str(BOUND)})
    result = cli(["pipeline", "grid", DEMO, "--no-progress"], env, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    message = next(line for line in err.splitlines() if line.startswith("error: "))
    shown = f"http://127.0.0.1:{port}"
    assert message.startswith(f"error: tracking store {shown} unreachable after")
    assert wait_lines(err, "tracking store", shown) == list(range(1, reported_attempts(message)))
    assert "Traceback" not in err and result.stdout == ""
    assert not (tmp_path / "mlruns").exists()


# -- SQL stores ----------------------------------------------------------------------------

def test_sqlite_in_a_folder_that_does_not_exist(bound, tmp_path):
    message, seconds = unreachable(ensure_reachable, f"sqlite:///{tmp_path}/nope/mlflow.db")
    assert "cannot be used" in message and f"the folder {tmp_path}/nope" in message
    assert seconds < BOUND                            # waiting cannot help: at once
    ensure_reachable(f"sqlite:///{tmp_path}/mlflow.db")   # a new file is fine ...
    assert not (tmp_path / "mlflow.db").exists()          # ... and is not created by the check
    (tmp_path / "junk.db").write_text("not a database")
    message, _ = unreachable(ensure_reachable, f"sqlite:///{tmp_path}/junk.db")
    assert "file is not a database" in message


def postgres_or_skip() -> None:
    import psycopg2

    try:
        psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                         connect_timeout=3).close()
    except psycopg2.OperationalError as e:
        pytest.skip(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as {PG_USER}: {e}")


def database_exists(name: str) -> bool:
    import psycopg2

    with psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                          connect_timeout=3) as db, db.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return cur.fetchone() is not None


def test_postgresql_database_that_does_not_exist(restore_uri, bound, tmp_path, capsys):
    postgres_or_skip()
    name = f"three_regime_missing_{uuid.uuid4().hex[:8]}"
    uri = f"postgresql+psycopg2://{PG_USER}:S3cretPw@{PG_HOST}:{PG_PORT}/{name}"
    message, seconds = unreachable(ensure_reachable, uri)
    assert f"database \"{name}\" does not exist" in message
    assert f"createdb -h {PG_HOST} {name}" in message and "S3cretPw" not in message
    assert "attempt 1 failed" not in capsys.readouterr().err   # waiting cannot help: at once
    assert seconds < BOUND + SLACK
    # through the grid: exit 2, nothing computed, nothing created
    config = write_config(tmp_path / "grid.yaml", tiny())
    assert pipeline_main(["grid", str(config), "--tracking-uri", uri, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"tracking store {uri.replace('S3cretPw', '***')} cannot be used" in err
    assert "S3cretPw" not in err
    assert not database_exists(name)


def test_optuna_storage_that_does_not_answer_is_checked_before_anything_is_written(
        restore_uri, bound, tmp_path, capsys):
    port = free_port()
    storage = f"postgresql+psycopg2://alice:hunter2@127.0.0.1:{port}/optuna"
    config = write_config(tmp_path / "grid.yaml", tiny())
    started = time.monotonic()
    code = selection_main(["tune", "--config", str(config), "--density", "0.2", "--n-trials",
                           "1", "--storage", storage])
    seconds = time.monotonic() - started
    assert code == 1
    assert 0.9 * BOUND <= seconds < BOUND + SLACK
    err = capsys.readouterr().err
    shown = f"postgresql+psycopg2://alice:***@127.0.0.1:{port}/optuna"
    assert f"error: Optuna storage {shown} unreachable after" in err
    assert f"pg_isready -h 127.0.0.1 -p {port}" in err and "hunter2" not in err
    assert wait_lines(err, "Optuna storage", shown)
    assert files_under(tmp_path) == ["grid.yaml"]     # no MLflow store, no study, no cell


def test_optuna_storage_database_that_does_not_exist(bound):
    postgres_or_skip()
    from selection.tuner import make_storage

    name = f"three_regime_missing_{uuid.uuid4().hex[:8]}"
    message, _ = unreachable(make_storage, f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:"
                                           f"{PG_PORT}/{name}")
    assert message.startswith(f"Optuna storage postgresql+psycopg2://{PG_USER}@")
    assert "does not exist" in message and f"createdb -h {PG_HOST} {name}" in message


# -- Dask -----------------------------------------------------------------------------------

def test_dask_scheduler_with_nothing_behind_it(restore_uri, bound, tmp_path, capsys):
    import distributed  # noqa: F401 - imported before the clock starts

    port = free_port()
    config = write_config(tmp_path / "grid.yaml", tiny())
    before = files_under(tmp_path)
    started = time.monotonic()
    code = pipeline_main(["grid", str(config), "--executor", "dask", "--scheduler",
                          f"tcp://127.0.0.1:{port}", "--no-progress"])
    seconds = time.monotonic() - started
    assert code == 2
    assert 0.9 * BOUND <= seconds < BOUND + SLACK
    err = capsys.readouterr().err
    assert f"error: Dask scheduler tcp://127.0.0.1:{port} unreachable after" in err
    assert "dask scheduler --host" in err and "Traceback" not in err
    assert files_under(tmp_path) == before            # the store was not even created


def test_dask_port_that_accepts_but_never_answers(bound):
    # distributed.Client(address, timeout=...) alone waits forever on such a port
    import distributed  # noqa: F401

    from pipeline.executors import DaskExecutor

    with silent_port() as port:
        message, seconds = unreachable(DaskExecutor(scheduler=f"tcp://127.0.0.1:{port}").check)
    assert "connected, but no answer" in message
    assert seconds < BOUND + SLACK
    message, seconds = unreachable(DaskExecutor(scheduler="bogus://nowhere").check)
    assert "cannot be used" in message and "unknown address scheme" in message


# -- a store that goes away during a grid ----------------------------------------------------

def test_with_retries_is_bounded_by_the_store_timeout_and_says_each_pause(restore_uri, bound,
                                                                          capsys):
    import requests

    from tracking.store import TrackingUnavailableError, with_retries

    mlflow.set_tracking_uri("postgresql://u:S3cretPw@db.example/mlflow")
    calls = []

    def refused():
        calls.append(time.monotonic())
        raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")

    started = time.monotonic()
    with pytest.raises(TrackingUnavailableError) as info:
        with_retries(refused)
    seconds = time.monotonic() - started
    assert 0.9 * BOUND <= seconds < BOUND + 5         # nothing slow inside: the bound itself
    message = str(info.value)
    assert message.startswith("tracking store postgresql://u:***@db.example/mlflow unreachable "
                              f"after {len(calls)} attempts")
    assert "Connection refused" in message and "does the database mlflow exist" in message
    lines = re.findall(r"^tracking store postgresql://u:\*\*\*@db\.example/mlflow did not answer "
                       r"\(attempt (\d+): Connection refused\); retrying in [\d.]+ s, giving up "
                       rf"after {BOUND:.1f} s$", capsys.readouterr().err, re.MULTILINE)
    assert [int(n) for n in lines] == list(range(1, len(calls)))
    assert len(calls) >= 3                             # 0.5 s, 1 s, then what is left of 2 s
    assert "S3cretPw" not in message


@contextmanager
def database_gone_after_first_cell(monkeypatch):
    """Every SQL statement fails as if the database had gone, from the moment the first cell
    run is set FINISHED until the block ends. Yields a dict with ``gone_at`` (monotonic)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from tracking.cache import RunCache

    state = {"gone_at": None}
    real_finish = RunCache.finish

    def finish(self, run_id, spec_hash=None, kind=None):
        done = real_finish(self, run_id, spec_hash, kind)
        if kind == keys.KIND_CELL and state["gone_at"] is None:
            state["gone_at"] = time.monotonic()
        return done

    def refuse(conn, cursor, statement, parameters, context, executemany):
        if state["gone_at"] is not None:
            raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(RunCache, "finish", finish)
    event.listen(Engine, "before_cursor_execute", refuse)
    try:
        yield state
    finally:
        event.remove(Engine, "before_cursor_execute", refuse)
        monkeypatch.setattr(RunCache, "finish", real_finish)


@pytest.mark.slow
def test_store_gone_mid_grid_stops_it_visibly_and_a_rerun_resumes(tracking_uri, bound,
                                                                   monkeypatch, tmp_path,
                                                                   capsys):
    config = write_config(tmp_path / "grid.yaml",
                          tiny(runtime={"threads": 1, "batch_cells": False}))
    argv = ["grid", str(config), "--no-progress"]
    with database_gone_after_first_cell(monkeypatch) as state:
        code = pipeline_main(argv)
        stopped = time.monotonic()
    assert code == 1 and state["gone_at"] is not None
    assert stopped - state["gone_at"] < BOUND + SLACK   # stopped after the bound, not minutes
    err = capsys.readouterr().err
    assert f"tracking store {tracking_uri} did not answer (attempt 1" in err   # visible waits
    assert f"error: tracking store {tracking_uri} unreachable after" in err
    assert "run the same command again" in err and "Traceback" not in err

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("scale-tiny").experiment_id
    finished = finished_per_hash(client, exp, keys.KIND_CELL)
    assert sum(finished.values()) >= 1
    assert pipeline_main(argv) == 0                   # the store is back: the re-run resumes
    out = capsys.readouterr().out
    m = re.search(r"(\d+) cells: (\d+) computed, (\d+) cached, (\d+) failed", out)
    assert m, out
    assert tuple(map(int, m.groups())) == (4, 4 - len(finished), len(finished), 0)
    per_hash = finished_per_hash(client, exp, keys.KIND_CELL)
    assert len(per_hash) == 4 and set(per_hash.values()) == {1}
