"""Shared helpers (no tests here) for the scale-out and fault tests: tiny configs, CLI
subprocesses, a fresh PostgreSQL database, an ``mlflow server`` subprocess, run counts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from tiny import TINY as TINY_GRID  # noqa: E402  (tests are on sys.path)

REPO = Path(__file__).resolve().parent.parent
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"

TINY = {**TINY_GRID, "experiment": "scale-tiny", "temperatures": [2, 3]}

def tiny(**changes) -> dict:
    """The tiny config with top-level keys replaced."""
    return {**TINY, **changes}


def write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def cli_env(tracking_uri: str | None, artifact_root: Path | None = None, **extra: str) -> dict:
    """Environment of a CLI subprocess: one torch thread, the given store, quick failures."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               CUDA_VISIBLE_DEVICES="", MLFLOW_ENABLE_ASYNC_LOGGING="false",
               GIT_PYTHON_REFRESH="quiet",
               # MLflow's own HTTP retries take minutes; the project's with_retries backs off
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="0")
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if artifact_root is not None:
        env["THREE_REGIME_ARTIFACT_ROOT"] = str(artifact_root)
    env.update(extra)
    return env


def cli(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` to completion; stdout and stderr as text."""
    return subprocess.run([sys.executable, "-m", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def start_cli(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start ``python -m <args>`` in its own process group, output to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Signal a process group started by :func:`start_cli`; SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.25, what: str = "condition",
             proc: subprocess.Popen | None = None, log: Path | None = None):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` s,
    or as soon as ``proc`` (whose output is ``log``) has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} while waiting for {what}: "
                        f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def pg_url(database: str, password: str | None = None) -> str:
    """SQLAlchemy URL of a local database. Note: SQLAlchemy 2.1 defaults ``postgresql://`` to
    the psycopg 3 driver; the project ships psycopg2, hence ``postgresql+psycopg2://``."""
    auth = PG_USER if password is None else f"{PG_USER}:{password}"
    return f"postgresql+psycopg2://{auth}@{PG_HOST}:{PG_PORT}/{database}"


@contextmanager
def postgres_database(prefix: str = "three_regime_test"):
    """A fresh PostgreSQL database on 127.0.0.1:5432 (trust auth), dropped afterwards.

    Skips the test, with the reason, when PostgreSQL is not reachable there.
    """
    import psycopg2

    try:
        admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                                 connect_timeout=3)
    except psycopg2.OperationalError as e:
        pytest.skip(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as {PG_USER}: {e}")
    admin.autocommit = True
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


class MlflowServer:
    """``mlflow server`` on a free loopback port, as a subprocess group (start/stop/restart)."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path, port: int | None = None):
        self.backend_uri, self.artifacts, self.log = backend_uri, artifacts, log
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        env = cli_env(None, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
                 "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def healthy() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(healthy, timeout, interval=0.5, what=f"mlflow server on {self.uri}")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)
            self.proc = None


def finished_per_hash(client, experiment_id: str, kind: str) -> Counter:
    """How many FINISHED runs of ``kind`` each spec hash has."""
    from tracking import keys
    from tracking.store import search_all_runs

    runs = search_all_runs(client, [experiment_id],
                           f"tags.{keys.RUN_KIND} = '{kind}' and attributes.status = 'FINISHED'")
    return Counter(r.data.tags[keys.SPEC_HASH] for r in runs)


def runs_of(client, experiment_id: str, kind: str, status: str | None = None) -> list:
    from tracking import keys
    from tracking.store import search_all_runs

    flt = f"tags.{keys.RUN_KIND} = '{kind}'"
    if status:
        flt += f" and attributes.status = '{status}'"
    return search_all_runs(client, [experiment_id], flt)
