"""Helpers the test modules share (no tests here): the tiny grid, CLI subprocesses, a fresh
PostgreSQL database, an ``mlflow server`` subprocess, run counts, and writers of tiny dataset
files in torchvision's on-disk layouts.

Test modules import it as ``helpers`` (pytest puts ``tests/`` on ``sys.path``); a test module
never imports another test module.
"""

from __future__ import annotations

import gzip
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml

# The tiny grid the tests share: 2 temperatures x 2 densities of MNIST-1D on a half-width
# 1-D CNN, seconds per cell on one CPU thread.
TINY = {
    "experiment": "tiny",
    "knob": "epochs",
    "temperatures": [1, 3],
    "densities": [0.2, 0.6],
    "data": {"name": "mnist1d", "train_subset": 300},
    "model": {"name": "cnn1d", "width": 0.5},
    "dense": {"epochs": 3, "batch_size": 32},
    "finetune": {"epochs": 1, "batch_size": 32, "seeds": [0, 1], "last_epochs": 1},
    "measure": {"lmc_points": 3, "cka_examples": 100},
    "runtime": {"threads": 1},
}

REPO = Path(__file__).resolve().parent.parent
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"

# The scale-out and fault tests' variant of the tiny grid.
SCALE_TINY = {**TINY, "experiment": "scale-tiny", "temperatures": [2, 3]}


def tiny(**changes) -> dict:
    """The scale-out tests' tiny config (:data:`SCALE_TINY`) with top-level keys replaced."""
    return {**SCALE_TINY, **changes}


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

    def start(self, timeout: float = 120, wait: bool = True) -> None:
        """Start the server; with ``wait``, return once it answers (else call :meth:`wait`)."""
        env = cli_env(None, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
                 "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 120) -> None:
        """Return once the started server answers on /health; fail if it exits first."""
        def healthy() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited {self.proc.returncode}: "
                            f"{self.log.read_text()[-2000:]}")
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


# --- writers of torchvision's on-disk formats ----------------------------------------------


def _images(rng, n, c, h, w):
    return rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def _write_cifar(root: Path, folder: str, files: dict[str, tuple], label_key: bytes) -> None:
    (root / folder).mkdir(parents=True)
    for fname, (x, y) in files.items():
        with open(root / folder / fname, "wb") as f:
            pickle.dump({b"data": x.reshape(len(x), -1), label_key: [int(v) for v in y]}, f)


def _write_mat(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    from scipy.io import savemat

    labels = np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)   # SVHN stores 0 as 10
    savemat(path, {"X": np.transpose(x, (2, 3, 1, 0)), "y": labels})  # [32, 32, 3, N]


def _idx_bytes(a: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return header + a.astype(np.uint8).tobytes()


def _write_idx(raw: Path, x_train, y_train, x_test, y_test, gz: bool) -> None:
    raw.mkdir(parents=True)
    for fname, a in (("train-images-idx3-ubyte", x_train[:, 0]),
                     ("train-labels-idx1-ubyte", y_train),
                     ("t10k-images-idx3-ubyte", x_test[:, 0]), ("t10k-labels-idx1-ubyte", y_test)):
        if gz:
            with gzip.open(raw / (fname + ".gz"), "wb") as f:
                f.write(_idx_bytes(a))
        else:
            (raw / fname).write_bytes(_idx_bytes(a))


def write_tiny(name: str, root: Path) -> dict:
    """Write ``name`` under ``root``; return the raw arrays the loader should produce."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    if name in ("cifar10", "cifar100"):
        k = 10 if name == "cifar10" else 100
        batches = [(_images(rng, 8, 3, 32, 32), rng.integers(0, k, 8))
                   for _ in range(5 if k == 10 else 1)]
        test = (_images(rng, 10, 3, 32, 32), rng.integers(0, k, 10))
        if k == 10:
            files = {f"data_batch_{i + 1}": b for i, b in enumerate(batches)} | {"test_batch": test}
            _write_cifar(root, "cifar-10-batches-py", files, b"labels")
        else:
            _write_cifar(root, "cifar-100-python", {"train": batches[0], "test": test},
                         b"fine_labels")
        xtr, ytr = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
        xte, yte = test
    elif name == "svhn":
        k = 10
        xtr, ytr = _images(rng, 30, 3, 32, 32), np.arange(30) % 10      # includes digit 0
        xte, yte = _images(rng, 10, 3, 32, 32), np.arange(10)
        _write_mat(root / "train_32x32.mat", xtr, ytr)
        _write_mat(root / "test_32x32.mat", xte, yte)
    elif name in ("mnist", "fashion_mnist"):
        k = 10
        xtr, ytr = _images(rng, 30, 1, 28, 28), rng.integers(0, 10, 30)
        xte, yte = _images(rng, 10, 1, 28, 28), rng.integers(0, 10, 10)
        folder = "MNIST" if name == "mnist" else "FashionMNIST"
        _write_idx(root / folder / "raw", xtr, ytr, xte, yte, gz=name == "fashion_mnist")
    else:
        raise AssertionError(f"no tiny writer for dataset {name!r}: add one")
    return {"x_train": xtr.astype(np.float64) / 255, "y_train": np.asarray(ytr), "num_classes": k,
            "x_test": xte.astype(np.float64) / 255, "y_test": np.asarray(yte)}
