"""Shared fixtures: every test is hermetic (its own tracking store) and CPU-only."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config):
    # One torch thread: the tests' models are tiny (a second thread buys little), and test
    # subprocesses, the pytest-xdist workers of `make test` (two by default) or other jobs
    # sharing the 2 cores must not oversubscribe them, which slows small training loops
    # 10-30x rather than 2x.
    import torch

    torch.set_num_threads(int(os.environ.get("THREE_REGIME_TEST_THREADS", "1")))


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store with local artifacts under ``tmp_path``.

    Sets ``MLFLOW_TRACKING_URI`` (and the project's artifact-root variable) for the test only.
    """
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("THREE_REGIME_ARTIFACT_ROOT", str(tmp_path / "mlruns"))
    mlflow.set_tracking_uri(uri)
    yield uri
    if mlflow.active_run() is not None:
        mlflow.end_run()
