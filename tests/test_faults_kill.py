"""A grid process killed with SIGKILL: the re-run recomputes only what was in flight.

Counts in the note of issue 8: cells recomputed (must be the ones in flight or never
started), runs duplicated (must be 0), data lost (none: every FINISHED run verifies).
"""

from __future__ import annotations

import signal
import time

import pytest
from helpers import (
    cli,
    cli_env,
    finished_per_hash,
    runs_of,
    start_cli,
    stop,
    tiny,
    wait_for,
    write_config,
)
from mlflow import MlflowClient

import pipeline.dense_run as dense_run_mod
from pipeline.config import parse_config
from pipeline.dense_run import checkpoint_path
from pipeline.grid import GridRunner
from tracking import keys
from tracking.artifacts import load_file
from tracking.store import get_client, init_experiment


def _summary_counts(stdout: str) -> dict[str, int]:
    """Numbers of the grid summary line: 'grid ...: 4 cells: 2 computed, 2 cached, 0 failed;
    0 dense'"""
    import re

    m = re.search(r"(\d+) cells: (\d+) computed, (\d+) cached, (\d+) failed.*?; "
                  r"(\d+) dense runs trained", stdout)
    assert m, stdout
    return dict(zip(("cells", "computed", "cached", "failed", "dense"), map(int, m.groups()),
                    strict=True))


@pytest.mark.slow
def test_sigkill_mid_dense_and_mid_cells_then_rerun_finishes(tracking_uri, tmp_path):
    # 6 dense epochs (temperatures 3 and 6); cells one per node so that some finish before the kill
    raw = tiny(temperatures=[3, 6], dense={"epochs": 6, "batch_size": 32},
               data={"name": "mnist1d", "train_subset": 1200},
               runtime={"threads": 1, "batch_cells": False})
    config = write_config(tmp_path / "grid.yaml", raw)
    root = tmp_path / "mlruns"
    env = cli_env(tracking_uri, root)
    client = MlflowClient(tracking_uri)
    exp = init_experiment(raw["experiment"])          # the init step, before any worker
    args = ["pipeline", "grid", str(config), "--no-progress"]

    # 1. killed while training the dense run, after its second epoch was recorded
    def dense_run_at_epoch(n: int):
        runs = runs_of(client, exp, keys.KIND_DENSE, "RUNNING")
        tag = f"{keys.CHECKSUM_PREFIX}{checkpoint_path(n)}"
        return runs and tag in runs[0].data.tags and runs[0]

    proc = start_cli(args, env, tmp_path / "run1.log")
    dense = wait_for(lambda: dense_run_at_epoch(2), 240, what="the dense run's epoch-2 checkpoint",
                     proc=proc, log=tmp_path / "run1.log")
    stop(proc, signal.SIGKILL)
    killed_at = time.time()
    epoch1 = next(root.rglob(f"{dense.info.run_id}/artifacts/{checkpoint_path(1)}"))
    assert epoch1.stat().st_mtime < killed_at

    # 2. killed while fine-tuning: at least one cell FINISHED and one in flight
    def cells_in_flight():
        done = runs_of(client, exp, keys.KIND_CELL, "FINISHED")
        running = runs_of(client, exp, keys.KIND_CELL, "RUNNING")
        return done and running and (done, running)

    proc = start_cli(args, env, tmp_path / "run2.log")
    wait_for(cells_in_flight, 300, interval=0.1, what="a finished and a running cell",
             proc=proc, log=tmp_path / "run2.log")
    stop(proc, signal.SIGKILL)
    finished_before = {r.data.tags[keys.SPEC_HASH]
                       for r in runs_of(client, exp, keys.KIND_CELL, "FINISHED")}
    in_flight = runs_of(client, exp, keys.KIND_CELL, "RUNNING")
    run2 = (tmp_path / "run2.log").read_text()
    assert "dense runs trained" not in run2         # it really died mid-grid

    # the dense run was resumed in the same run, from its saved state: epoch 1 was never redone
    (dense_done,) = runs_of(client, exp, keys.KIND_DENSE, "FINISHED")
    assert dense_done.info.run_id == dense.info.run_id
    assert epoch1.stat().st_mtime < killed_at
    last = next(root.rglob(f"{dense.info.run_id}/artifacts/{checkpoint_path(6)}"))
    assert last.stat().st_mtime > killed_at

    # 3. the re-run computes exactly the cells not FINISHED before the kill
    rerun = cli(args, env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    counts = _summary_counts(rerun.stdout)
    assert counts == {"cells": 4, "computed": 4 - len(finished_before),
                      "cached": len(finished_before), "failed": 0, "dense": 0}
    per_hash = finished_per_hash(client, exp, keys.KIND_CELL)
    assert len(per_hash) == 4 and set(per_hash.values()) == {1}      # no duplicate FINISHED run
    assert finished_before <= set(per_hash)                            # earlier work kept
    # the killed claim was taken over: FAILED with the reason, never left RUNNING
    for run in in_flight:
        status = client.get_run(run.info.run_id)
        assert status.info.status == "FAILED"
        assert "owner died" in status.data.tags[keys.FAILURE_REASON]
    assert not runs_of(client, exp, keys.KIND_CELL, "RUNNING")
    # no data lost: every finished cell's artifacts verify against their checksums
    for run in runs_of(client, exp, keys.KIND_CELL, "FINISHED"):
        assert load_file(client, run.info.run_id, keys.ARTIFACT_MASK)
    print(f"SIGKILL: {len(finished_before)} cells finished before the kill, {len(in_flight)} in "
          f"flight; re-run computed {counts['computed']}, duplicated 0; dense resumed in run "
          f"{dense.info.run_id}")


class _Killed(BaseException):
    """Stands for SIGKILL inside this process: nothing after it runs."""


def _die(*args, **kwargs):
    raise _Killed()


@pytest.mark.parametrize("killed, resumed", [
    ("mid-upload", 2),    # after epoch 3's files, before their checksums: slot 1 is unverifiable
    ("after", 1),         # right after epoch 1 was recorded: slot 0 was never written
])
def test_a_killed_dense_run_resumes_from_its_newest_verifiable_state(killed, resumed, tracking_uri,
                                                                      monkeypatch):
    """The training state is saved in two slots by epoch parity, so whatever moment the owner
    dies at, one slot verifies and the run resumes from it (never from epoch 0)."""
    cfg = parse_config(tiny(dense={"epochs": 4, "batch_size": 32}))
    dense, _ = cfg.cell(4, 0.5, 0)
    runner = GridRunner(cfg, progress=False)
    real_log = dense_run_mod.log_files
    client = get_client()

    def dying(cl, run_id, files):
        if killed == "mid-upload" and checkpoint_path(3) in files:
            with monkeypatch.context() as m:     # the upload happens, the tags never do
                m.setattr(cl, "log_batch", _die)
                real_log(cl, run_id, files)
        real_log(cl, run_id, files)
        if killed == "after" and checkpoint_path(1) in files:
            _die()

    monkeypatch.setattr(dense_run_mod, "log_files", dying)
    with pytest.raises(_Killed):
        runner.ensure_dense(dense)
    monkeypatch.setattr(dense_run_mod, "log_files", real_log)
    (run,) = runs_of(client, runner.experiment_id, keys.KIND_DENSE)

    resumed_from = []
    real_train = dense_run_mod.train_dense

    def spy(spec, data, keep, on_ckpt, on_state, resume, progress=None):
        resumed_from.append(resume.epoch if resume else 0)
        return real_train(spec, data, keep, on_ckpt, on_state, resume, progress)

    monkeypatch.setattr(dense_run_mod, "train_dense", spy)
    run_id, computed, _ = GridRunner(cfg, progress=False).ensure_dense(dense)
    assert computed and run_id == run.info.run_id
    assert resumed_from == [resumed]
    for epoch in (1, 2, 3, 4):                   # every checkpoint verifies in the end
        assert load_file(client, run_id, checkpoint_path(epoch))
