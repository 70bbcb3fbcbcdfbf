"""The Dask executor: the same DAG semantics as the serial one, and the same results table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, cli, cli_env, free_port, runs_of, stop, tiny, write_config
from mlflow import MlflowClient

from pipeline.config import parse_config
from pipeline.executors import EXECUTORS, DaskExecutor, Node, get_executor
from pipeline.grid import GridRunner
from tracking import keys
from tracking.tables import results_table


def _boom():
    raise ValueError("boom")


def _dag() -> list[Node]:
    return [
        Node("a", lambda: 1),
        Node("b", _boom),
        Node("c", lambda x: x + 1, {"x": "a"}),
        Node("d", lambda z: z, {"z": "b"}),                 # depends on a failing node
        # an argument named like a keyword of Client.submit must reach the function
        Node("e", lambda key, workers: key + workers, {"key": "a", "workers": "c"}),
    ]


@pytest.fixture(scope="module")
def scheduler():
    """An in-process Dask cluster (threads): its address exercises the ``scheduler`` option."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster:
        yield cluster.scheduler_address


@pytest.mark.parametrize("executor", ["serial", "dask"])
def test_executors_map_results_and_failures_per_node(executor, scheduler):
    options = {"scheduler": scheduler, "torch_threads": 0} if executor == "dask" else {}
    results = get_executor(executor, **options).run(_dag())
    assert results["a"] == 1 and results["c"] == 2 and results["e"] == 3
    assert isinstance(results["b"], ValueError) and str(results["b"]) == "boom"
    # the dependant of a failed node fails with the same error and is not run
    assert isinstance(results["d"], ValueError) and str(results["d"]) == "boom"


def test_dask_is_registered_and_checks_its_options():
    assert "dask" in EXECUTORS.names()
    with pytest.raises(ValueError, match="workers=-1"):
        get_executor("dask", workers=-1)
    assert DaskExecutor(workers=0).workers >= 1          # 0 = one per core


def test_grid_runner_pickles_to_a_worker_with_its_own_client(tracking_uri):
    import cloudpickle

    runner = GridRunner(parse_config(tiny()), progress=True)
    clone = cloudpickle.loads(cloudpickle.dumps(runner))
    assert clone.client is not runner.client and clone.uri == tracking_uri
    assert clone.cache.experiment_id == runner.experiment_id and not clone.progress
    # a worker process is one core's share: no second fan-out of model chunks inside it
    assert runner.cfg.runtime.workers == 0 and clone.cfg.runtime.workers == 1
    # the rebuilt client really talks to the same store
    assert clone.client.get_experiment(runner.experiment_id).name == runner.experiment


@pytest.mark.slow
def test_serial_and_dask_grids_give_the_same_results_table(tracking_uri):
    cfg = parse_config(tiny())
    serial = GridRunner(cfg, experiment="via-serial", progress=False).run()
    dask = GridRunner(cfg, experiment="via-dask", progress=False).run(
        executor="dask", executor_options={"workers": 2})
    assert serial.ok and dask.ok, (serial.lines(), dask.lines())
    assert (serial.computed, dask.computed) == (4, 4)
    assert (serial.dense_computed, dask.dense_computed) == (1, 1)

    a, b = results_table("via-serial"), results_table("via-dask")
    assert len(a) == len(b) == 4
    cols = [keys.KNOB, keys.TEMPERATURE, keys.DENSITY, keys.DENSE_SEED, keys.SPEC_HASH]
    assert a[cols].equals(b[cols])              # same cells, same spec hashes, same order
    for metric in (keys.TEST_ACC, keys.VAL_ACC, keys.LMC_BARRIER, keys.CKA, keys.PRUNED_ACC,
                   keys.DENSE_ACC, keys.TEST_ACC_STD, keys.CKA_STD):
        np.testing.assert_allclose(a[metric].to_numpy(float), b[metric].to_numpy(float),
                                   rtol=0, atol=1e-6, err_msg=metric)
    assert set(a["run_id"]).isdisjoint(b["run_id"])  # really computed twice, not shared


def _start_dask(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """``dask <args>`` (the venv's ``dask`` command) in its own process group, from the repo."""
    with open(log, "w") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "dask"), *args], env=env,
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


@pytest.mark.slow
def test_grid_on_a_separately_started_scheduler_and_worker(tmp_path):
    """The README's ``--executor dask --scheduler ADDRESS``: ``dask scheduler`` and one
    ``dask worker`` started by hand (as on a cluster), the stores created first by ``init``;
    every cell is computed by that worker and FINISHED, and the grid says so."""
    from distributed import Client

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = cli_env(uri, tmp_path / "mlruns")
    config = write_config(tmp_path / "tiny.yaml", tiny())
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _start_dask(["scheduler", "--host", "127.0.0.1", "--port", str(port),
                             "--no-dashboard"], env, tmp_path / "scheduler.log")
    worker = None
    try:
        worker = _start_dask(["worker", address, "--nworkers", "1", "--nthreads", "1",
                              "--no-dashboard", "--local-directory", str(tmp_path / "dask")],
                             env, tmp_path / "worker.log")
        # the stores are created while the scheduler and the worker start (before the grid)
        init = cli(["tracking", "init", "--experiment", tiny()["experiment"]], env)
        assert init.returncode == 0, init.stderr
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            (worker_pid,) = client.run(os.getpid).values()
        done = cli(["pipeline", "grid", str(config), "--executor", "dask", "--scheduler", address,
                    "--no-progress"], env, timeout=600)
        logs = "".join(f"\n--- {name}:\n{(tmp_path / name).read_text()[-2000:]}"
                       for name in ("scheduler.log", "worker.log"))
        assert done.returncode == 0, done.stdout + done.stderr + logs
        assert "4 cells: 4 computed, 0 cached, 0 failed; 1 dense runs trained" in done.stdout
        assert "best temperature per density" in done.stdout

        client = MlflowClient(uri)
        experiment_id = client.get_experiment_by_name(tiny()["experiment"]).experiment_id
        cells = runs_of(client, experiment_id, keys.KIND_CELL)
        assert len(cells) == 4 and {r.info.status for r in cells} == {"FINISHED"}
        (dense,) = runs_of(client, experiment_id, keys.KIND_DENSE)
        # computed by the separately started worker, not by the grid process
        owners = {r.data.tags[keys.OWNER].rsplit(":", 1)[1] for r in [*cells, dense]}
        assert owners == {str(worker_pid)}
        assert len(results_table(tiny()["experiment"], client)) == 4
    finally:
        if worker is not None:
            stop(worker)
        stop(scheduler)
    assert worker.returncode is not None and scheduler.returncode is not None


def test_dask_tasks_get_the_configs_torch_threads():
    """``runtime.threads`` reaches each Dask task (multi-core workers); unset it is 1 thread."""
    from pipeline.__main__ import build_parser, executor_options

    args = build_parser().parse_args(["grid", "x.yaml", "--executor", "dask", "--scheduler", "tcp://h:1"])
    assert executor_options(args, parse_config(tiny()))["torch_threads"] == 1
    options = executor_options(args, parse_config(tiny(runtime={"threads": 4})))
    assert options == {"workers": args.workers, "scheduler": "tcp://h:1", "torch_threads": 4}
    executor = get_executor("dask", **options)
    assert isinstance(executor, DaskExecutor) and executor.torch_threads == 4
    serial = build_parser().parse_args(["grid", "x.yaml"])
    assert executor_options(serial, parse_config(tiny(runtime={"threads": 4}))) == {}
