"""Two grid processes on one experiment: no cell computed twice, one FINISHED run per hash."""

from __future__ import annotations

import os
import re

import pytest
from helpers import (
    cli_env,
    finished_per_hash,
    runs_of,
    start_cli,
    tiny,
    wait_for,
    write_config,
)
from mlflow import MlflowClient

from pipeline.config import parse_config
from pipeline.grid import GridRunner
from tracking import keys
from tracking.cache import RunCache
from tracking.store import get_client, init_experiment


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the protocol tests (creating one costs seconds); each test uses
    its own experiment."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('claims') / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("THREE_REGIME_ARTIFACT_ROOT", str(tmp_path_factory.mktemp("claims-artifacts")))
    mlflow.set_tracking_uri(uri)
    yield uri
    mp.undo()


@pytest.fixture
def experiment(store, request):
    return init_experiment(request.node.name)


def _cache(experiment: str, owner: str | None = None) -> RunCache:
    cache = RunCache(get_client(), experiment)
    if owner:
        cache.owner = owner
    return cache


# A live owner on this host that is not this process: the test runner's parent.
OTHER = f"{os.uname().nodename}:{os.getppid()}"


def test_create_then_check_gives_every_hash_one_winner(experiment):
    mine, other = _cache(experiment), _cache(experiment, OTHER)
    # both create their claims before either checks: the worst interleaving
    a = {h: mine.start(h, keys.KIND_CELL, h) for h in ("h1", "h2")}
    b = {h: other.start(h, keys.KIND_CELL, h) for h in ("h1", "h2")}
    runs = runs_of(mine.client, mine.experiment_id, keys.KIND_CELL)
    for h in ("h1", "h2"):
        seen_by_a = mine._settle({h: a[h]}, runs, keys.KIND_CELL, set())[h]
        seen_by_b = other._settle({h: b[h]}, runs, keys.KIND_CELL, set())[h]
        assert seen_by_a.winner == seen_by_b.winner == a[h]      # the earlier claim, for both
        assert seen_by_a.won and not seen_by_b.won


def test_a_late_claim_loses_and_is_ended_failed(experiment):
    first, second = _cache(experiment, OTHER), _cache(experiment)
    winner = first.claim("h", keys.KIND_CELL, "cell").run_id
    claim = second.claim("h", keys.KIND_CELL, "cell")
    assert not claim.won and claim.winner == winner
    lost = second.client.get_run(claim.run_id)
    assert lost.info.status == "FAILED"
    assert lost.data.tags[keys.FAILURE_REASON] == f"lost claim to {winner}"
    assert second.lookup("h", keys.KIND_CELL).resumable is None      # never resumed
    # a FINISHED run beats any live claim, even an earlier one
    first.finish(winner)
    assert not _cache(experiment).claim("h", keys.KIND_CELL, "cell").won


def test_a_dead_owners_claim_does_not_block(experiment):
    dead = _cache(experiment, f"{os.uname().nodename}:999999999")      # no such pid on this host
    dead.start("h", keys.KIND_CELL, "cell")
    assert _cache(experiment).claim("h", keys.KIND_CELL, "cell").won


def test_finish_refuses_a_second_finished_run_of_a_hash(experiment):
    a, b = _cache(experiment, OTHER), _cache(experiment)
    first, second = a.start("h", keys.KIND_CELL, "x"), b.start("h", keys.KIND_CELL, "x")
    assert b.finish(second, "h", keys.KIND_CELL)
    assert not a.finish(first, "h", keys.KIND_CELL)      # both won (clock skew): one FINISHED
    assert finished_per_hash(a.client, a.experiment_id, keys.KIND_CELL) == {"h": 1}
    assert a.client.get_run(first).data.tags[keys.FAILURE_REASON] == f"lost claim to {second}"


def test_the_dense_lock_admits_one_process(experiment):
    a, b = _cache(experiment, OTHER), _cache(experiment)
    with a.exclusive("d", keys.KIND_DENSE) as held_a:
        assert held_a
        with b.exclusive("d", keys.KIND_DENSE) as held_b:
            assert not held_b
    # the locks are gone; a live RUNNING dense run of another owner keeps others out
    assert not runs_of(a.client, a.experiment_id, keys.KIND_CLAIM)
    a.start("d", keys.KIND_DENSE, "dense")
    with b.exclusive("d", keys.KIND_DENSE) as held:
        assert not held


def _summary(log: str) -> dict[str, int]:
    m = re.search(r"(\d+) cells: (\d+) computed, (\d+) cached, (\d+) failed.*?; "
                  r"(\d+) dense runs trained", log)
    assert m, log
    names = ("cells", "computed", "cached", "failed", "dense")
    return dict(zip(names, map(int, m.groups()), strict=True))


@pytest.mark.slow
def test_two_grid_processes_started_at_once_compute_each_cell_once(tracking_uri, tmp_path):
    root = tmp_path / "mlruns"
    # one cell per node: the two processes walk the same cells and split them between them
    raw = tiny(densities=[0.2, 0.4, 0.6, 0.8], runtime={"threads": 1, "batch_cells": False})
    # the init step (and the shared dense run) before the workers: they race on the 8 cells only
    runner = GridRunner(parse_config(raw), progress=False)
    runner.ensure_dense(parse_config(raw).cell(3, 0.2, 0)[0])
    config = write_config(tmp_path / "grid.yaml", raw)
    env = cli_env(tracking_uri, root)
    procs = [start_cli(["pipeline", "grid", str(config), "--no-progress"], env,
                       tmp_path / f"grid{i}.log")
             for i in range(2)]
    wait_for(lambda: all(p.poll() is not None for p in procs), 400, interval=1, what="both grids")
    logs = [(tmp_path / f"grid{i}.log").read_text() for i in range(2)]
    assert [p.returncode for p in procs] == [0, 0], logs
    counts = [_summary(log) for log in logs]
    client = MlflowClient(tracking_uri)
    exp = runner.experiment_id
    # each cell computed exactly once, in one process or the other; both report all 8 cells
    assert sum(c["computed"] for c in counts) == 8, counts
    assert all(c["computed"] + c["cached"] == 8 and c["failed"] == 0 for c in counts), counts
    # ...which the store confirms: metrics were logged on 8 cell runs only
    cell_runs = runs_of(client, exp, keys.KIND_CELL)
    assert sum(keys.TEST_ACC in r.data.metrics for r in cell_runs) == 8
    for kind, n in ((keys.KIND_CELL, 8), (keys.KIND_DENSE, 1), (keys.KIND_GRID, 1)):
        per_hash = finished_per_hash(client, exp, kind)
        assert len(per_hash) == n and set(per_hash.values()) == {1}, (kind, per_hash)
    # every other cell run is a lost claim, ended FAILED with the winner's id
    for run in cell_runs:
        if run.info.status != "FINISHED":
            assert run.data.tags[keys.FAILURE_REASON].startswith("lost claim to "), run.data.tags
    print(f"two grids: computed {[c['computed'] for c in counts]}, "
          f"lost claims {sum(r.info.status == 'FAILED' for r in cell_runs)}")
