"""A team tracking server: ``mlflow server`` on PostgreSQL with a shared artifact location.

The grid's processes need only the server's URI. The server dies mid-grid: the grid retries
with backoff, stops with a clear error, and a re-run after the restart resumes cleanly.
"""

from __future__ import annotations

import re

import pytest
from helpers import (
    MlflowServer,
    cli,
    cli_env,
    finished_per_hash,
    pg_url,
    postgres_database,
    runs_of,
    start_cli,
    tiny,
    wait_for,
    write_config,
)
from mlflow import MlflowClient

from tracking import keys
from tracking.tables import RESULT_COLUMNS, read_table


def _summary(text: str) -> dict[str, int]:
    m = re.search(r"(\d+) cells: (\d+) computed, (\d+) cached, (\d+) failed", text)
    assert m, text
    return dict(zip(("cells", "computed", "cached", "failed"), map(int, m.groups()), strict=True))


@pytest.mark.slow
def test_grid_on_a_postgresql_tracking_server_survives_a_server_outage(tmp_path):
    with postgres_database() as db:
        server = MlflowServer(pg_url(db), tmp_path / "shared-artifacts", tmp_path / "server.log")
        try:
            server.start()
            env = cli_env(server.uri)          # workers know the URI, nothing else
            init = cli(["tracking", "--tracking-uri", server.uri, "init",
                        "--experiment", "scale-tiny"], env)
            assert init.returncode == 0, init.stderr
            client = MlflowClient(server.uri)
            exp = client.get_experiment_by_name("scale-tiny").experiment_id

            config = write_config(tmp_path / "grid.yaml",
                                  tiny(runtime={"threads": 1, "batch_cells": False}))
            args = ["pipeline", "grid", str(config), "--no-progress"]
            # a short store timeout: the outage below is waited out for 6 s, not the default 30
            grid = start_cli(args, cli_env(server.uri, THREE_REGIME_STORE_TIMEOUT="6"),
                             tmp_path / "grid1.log")
            wait_for(lambda: runs_of(client, exp, keys.KIND_CELL, "FINISHED"), 300, interval=0.5,
                     what="a first finished cell", proc=grid, log=tmp_path / "grid1.log")
            server.stop()                      # SIGKILL: the server is gone mid-grid
            grid.wait(timeout=180)
            out = (tmp_path / "grid1.log").read_text()
            assert grid.returncode == 1, out
            assert f"tracking store {server.uri} unreachable after" in out
            assert f"tracking store {server.uri} did not answer (attempt 1" in out   # visible
            assert "run the same command again" in out and "Traceback" not in out

            server.start()                     # same port, same database, same artifacts
            finished_before = set(finished_per_hash(client, exp, keys.KIND_CELL))
            # credentials in the URI (this server ignores them): never printed
            secret_uri = server.uri.replace("http://", "http://alice:S3cretPw@")
            rerun = cli(args, cli_env(secret_uri))
            assert rerun.returncode == 0, rerun.stdout + rerun.stderr
            assert "S3cretPw" not in rerun.stdout + rerun.stderr
            assert _summary(rerun.stdout) == {"cells": 4, "computed": 4 - len(finished_before),
                                              "cached": len(finished_before), "failed": 0}
            per_hash = finished_per_hash(client, exp, keys.KIND_CELL)
            assert len(per_hash) == 4 and set(per_hash.values()) == {1}
            assert not runs_of(client, exp, keys.KIND_CELL, "RUNNING")
            print(f"server outage: {len(finished_before)} cells finished before it, re-run "
                  f"computed {4 - len(finished_before)}, duplicated 0")

            out_csv = tmp_path / "results.csv"
            table = cli(["tracking", "--tracking-uri", server.uri, "table",
                         "--experiment", "scale-tiny", "--out", str(out_csv)], env)
            assert table.returncode == 0, table.stderr
            df = read_table(out_csv)
            assert list(df.columns) == RESULT_COLUMNS and len(df) == 4
            assert sorted(zip(df.temperature, df.density, strict=True)) == [
                (2, 0.2), (2, 0.6), (3, 0.2), (3, 0.6)]
            assert df.test_acc.between(0, 1).all() and df.cka.between(0, 1.001).all()
            # the artifacts went to the shared location, through the server
            assert len(list((tmp_path / "shared-artifacts").rglob(keys.ARTIFACT_MASK))) >= 4
        finally:
            server.stop()
