"""A diverging fine-tune (NaN/inf loss): its cells end FAILED with the reason, the grid goes on
to every other cell and exits non-zero."""

from __future__ import annotations

from helpers import runs_of, tiny, write_config
from mlflow import MlflowClient

from pipeline.__main__ import main
from tracking import keys


def test_nan_loss_fails_each_cell_with_the_reason_and_exits_non_zero(tracking_uri, tmp_path,
                                                                     capsys):
    config = write_config(tmp_path / "grid.yaml", tiny())
    code = main(["grid", str(config), "--no-progress", "--set", "finetune.lr=1e9"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "4 cells: 0 computed, 0 cached, 4 failed" in out
    # every cell was attempted and reported (the grid did not stop at the first failure)
    failed_lines = [line for line in out.splitlines() if line.strip().startswith("FAILED")]
    assert len(failed_lines) == 4
    assert all("non-finite training loss" in line for line in failed_lines)

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(tiny()["experiment"]).experiment_id
    cells = runs_of(client, exp, keys.KIND_CELL)
    assert len(cells) == 4 and {r.info.status for r in cells} == {"FAILED"}
    for run in cells:
        assert run.data.tags[keys.FAILURE_REASON].startswith(
            "DivergedError: non-finite training loss")
        assert keys.TEST_ACC not in run.data.metrics          # nothing half-written as a result
    (dense,) = runs_of(client, exp, keys.KIND_DENSE)
    assert dense.info.status == "FINISHED"                    # the dense run is kept for a re-run
    (grid,) = runs_of(client, exp, keys.KIND_GRID)
    assert grid.info.status == "FAILED"
    assert "4 cell(s) failed" in grid.data.tags[keys.FAILURE_REASON]
