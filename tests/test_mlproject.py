"""The MLproject entry points, run the way a user runs them: `mlflow run . --env-manager local`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import TINY

from tracking.tables import results_table

ROOT = Path(__file__).resolve().parent.parent


def _mlflow_run(entry: str, params: dict, env: dict) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "--env-manager", "local",
           "-e", entry, "--experiment-name", "launches"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_grid_and_report_entry_points_through_mlflow_run(tmp_path, tracking_uri):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = _mlflow_run("grid", {"config": config}, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 computed" in done.stdout + done.stderr
    printed = (done.stdout + done.stderr).splitlines()
    header = printed.index("best temperature per density (mean fine-tuned test accuracy):")
    assert printed[header + 1].split() == ["density", "epochs", "test_acc"]
    assert [line.split()[0] for line in printed[header + 2:header + 4]] == ["0.2", "0.6"]
    table = results_table("tiny")
    assert len(table) == 4 and table["lmc_barrier"].notna().all()

    again = _mlflow_run("grid", {"config": config}, env)
    assert again.returncode == 0 and "4 cached" in again.stdout + again.stderr

    out = tmp_path / "report"
    report = _mlflow_run("report", {"experiment": "tiny", "out": out}, env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (out / "phase_diagrams.png").stat().st_size > 10_000
