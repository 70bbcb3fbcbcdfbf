"""Benchmark: grid throughput on Dask (1 vs 2 workers) and the cost of a tracking server.

(a) Cells per hour with 1 and 2 Dask worker processes (one torch thread each) on the same
    grid, each in a fresh store. The dense run is trained first, outside the timing, so the
    timed part is the cells, which are independent nodes (``runtime.batch_cells: false``:
    a batch of cells is one node, which one worker would run alone). The time includes
    starting the LocalCluster, as a user pays it.
(b) The same grid, serial, tracked in the SQLite default vs an ``mlflow server`` on
    127.0.0.1 (PostgreSQL backend when it runs on 127.0.0.1:5432, else SQLite), dense run
    included: the overhead of talking to a server.

    python bench/scale.py [--quick] [--workers 1,2]

Timings on a shared machine are noisy: run it alone. The LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pipeline.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

FULL = ["temperatures=[4, 8, 12, 16]", "densities=[0.05, 0.1, 0.2, 0.4]", "dense.epochs=16",
        "finetune.epochs=4", "finetune.last_epochs=2", "data.train_subset=2000",
        "measure.cka_examples=500", "measure.lmc_points=5"]
QUICK = ["temperatures=[2, 3]", "densities=[0.1, 0.2, 0.4]", "dense.epochs=3", "finetune.epochs=1",
         "finetune.last_epochs=1", "finetune.seeds=[0, 1]", "data.train_subset=500",
         "measure.cka_examples=100", "measure.lmc_points=3"]


def _store(tmp: Path, name: str) -> str:
    """Point this process at a fresh SQLite store under ``tmp``; returns its URI."""
    from tracking.store import configure

    os.environ["THREE_REGIME_ARTIFACT_ROOT"] = str(tmp / f"{name}-artifacts")
    return configure(f"sqlite:///{tmp / f'{name}.db'}")


def dask_throughput(cfg, workers: int, tmp: Path) -> dict:
    from pipeline.grid import GridRunner

    _store(tmp, f"dask{workers}")
    runner = GridRunner(cfg, experiment=f"bench-dask-{workers}", progress=False)
    for dense, _, _ in cfg.cells()[:1]:
        runner.ensure_dense(dense)          # outside the timing: the cells are what scales
    start = time.perf_counter()
    summary = runner.run(executor="dask", executor_options={"workers": workers})
    seconds = time.perf_counter() - start
    if not summary.ok:
        raise SystemExit("\n".join(summary.lines()))
    return {"workers": workers, "cells": summary.computed, "seconds": round(seconds, 2),
            "cells_per_hour": round(3600 * summary.computed / seconds, 1)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_db() -> tuple[str, callable] | None:
    """A fresh database on 127.0.0.1:5432 and a function dropping it; None if unreachable."""
    try:
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres",
                                 connect_timeout=3)
    except Exception:  # noqa: BLE001 - no PostgreSQL: the server uses SQLite
        return None
    admin.autocommit = True
    name = f"three_regime_bench_{uuid.uuid4().hex[:8]}"
    admin.cursor().execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}", drop


def tracking_overhead(cfg, tmp: Path) -> dict:
    from pipeline.grid import GridRunner

    _store(tmp, "sqlite")
    start = time.perf_counter()
    GridRunner(cfg, experiment="bench-sqlite", progress=False).run()
    sqlite_s = time.perf_counter() - start

    pg = _postgres_db()
    backend = pg[0] if pg else f"sqlite:///{tmp / 'server.db'}"
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(tmp / "server-artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit("mlflow server did not start")
        from tracking.store import configure

        configure(uri)
        start = time.perf_counter()
        GridRunner(cfg, experiment="bench-server", progress=False).run()
        server_s = time.perf_counter() - start
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        if pg:
            pg[1]()
    return {"sqlite_s": round(sqlite_s, 2), "server_s": round(server_s, 2),
            "server_over_sqlite": round(server_s / sqlite_s, 3),
            "server_backend": "postgresql" if pg else "sqlite"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny grid (a smoke run, minutes)")
    ap.add_argument("--workers", default="1,2", help="Dask worker counts to compare")
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    args = ap.parse_args()
    overrides = QUICK if args.quick else FULL
    cfg = load_config(args.config, [*overrides, "runtime.batch_cells=false", "runtime.threads=1"])
    counts = [int(w) for w in args.workers.split(",")]
    print(f"grid: {cfg.data.name} {cfg.model.name}, {len(cfg.cells())} cells "
          f"({len(cfg.temperatures)} temperatures x {len(cfg.densities)} densities), "
          f"{len(cfg.finetune.seeds)} fine-tune seeds, "
          f"{cfg.finetune.train.epochs} fine-tune epochs; "
          f"{os.cpu_count()} CPUs; one torch thread per worker")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        dask = [dask_throughput(cfg, w, tmp) for w in counts]
        for d in dask:
            print(f"dask, {d['workers']} worker(s): {d['cells']} cells in {d['seconds']:.1f} s = "
                  f"{d['cells_per_hour']:.0f} cells/hour (LocalCluster start included)")
        speedup = dask[-1]["cells_per_hour"] / dask[0]["cells_per_hour"]
        print(f"throughput ratio {dask[-1]['workers']} vs {dask[0]['workers']} worker(s): "
              f"x{speedup:.2f}")
        tracking = tracking_overhead(cfg, tmp)
        print(f"tracking, serial grid with its dense run: "
              f"SQLite file {tracking['sqlite_s']:.1f} s, "
              f"mlflow server ({tracking['server_backend']} backend) {tracking['server_s']:.1f} s, "
              f"x{tracking['server_over_sqlite']:.2f}")
    print(json.dumps({"quick": args.quick, "cells": len(cfg.cells()), "cpus": os.cpu_count(),
                      "dask": dask, "dask_speedup": round(speedup, 3), "tracking": tracking}))


if __name__ == "__main__":
    main()
