"""Corrupt or missing checkpoint artifacts are detected by checksum and recomputed, never used."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from helpers import runs_of, tiny

from pipeline.config import parse_config
from pipeline.dense_run import checkpoint_path
from pipeline.grid import run_grid
from tracking import keys
from tracking.artifacts import CorruptArtifactError, load_file
from tracking.store import experiment_id, get_client


def _file(run, artifact: str) -> Path:
    return Path(urlparse(run.info.artifact_uri).path) / artifact


def _only_finished_dense(client, exp):
    (run,) = runs_of(client, exp, keys.KIND_DENSE, "FINISHED")
    return run


@pytest.mark.slow
def test_corrupt_then_missing_checkpoint_is_recomputed_never_used(tracking_uri):
    client = get_client()
    first = run_grid(parse_config(tiny(densities=[0.2])), progress=False)
    assert first.ok and first.computed == 2
    exp = experiment_id(tiny()["experiment"])
    dense = _only_finished_dense(client, exp)
    good = load_file(client, dense.info.run_id, checkpoint_path(2))

    # 1. corrupt: same size, different bytes (a bit rot or a half-overwritten file)
    path = _file(dense, checkpoint_path(2))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifactError, match="checksum"):
        load_file(client, dense.info.run_id, checkpoint_path(2))

    second = run_grid(parse_config(tiny(densities=[0.2, 0.6])), progress=False)
    assert second.ok, second.lines()
    assert (second.computed, second.cached) == (2, 2)
    old = client.get_run(dense.info.run_id)
    assert old.info.status == "FAILED" and "checksum" in old.data.tags[keys.FAILURE_REASON]
    assert old.data.tags[keys.RESUMABLE] == "false"
    recomputed = _only_finished_dense(client, exp)
    assert recomputed.info.run_id != dense.info.run_id
    again = load_file(client, recomputed.info.run_id, checkpoint_path(2))
    for name, tensor in good.items():             # retrained from scratch to the same weights
        assert torch.equal(tensor, again[name]), name

    # 2. missing: the recomputed run loses a checkpoint file
    _file(recomputed, checkpoint_path(3)).unlink()
    with pytest.raises(CorruptArtifactError, match="missing"):
        load_file(client, recomputed.info.run_id, checkpoint_path(3))
    third = run_grid(parse_config(tiny(densities=[0.2, 0.6, 0.9])), progress=False)
    assert third.ok and (third.computed, third.cached) == (2, 4), third.lines()
    gone = client.get_run(recomputed.info.run_id)
    assert gone.info.status == "FAILED" and "missing" in gone.data.tags[keys.FAILURE_REASON]
    assert _only_finished_dense(client, exp).info.run_id not in (dense.info.run_id,
                                                                 recomputed.info.run_id)
    finished = runs_of(client, exp, keys.KIND_CELL, "FINISHED")
    assert len(finished) == 6 and not runs_of(client, exp, keys.KIND_CELL, "FAILED")
    # every cell names the dense run its checkpoint really came from, never a discarded one
    source = {r.data.tags[keys.DENSE_RUN_ID] for r in finished}
    last_dense = _only_finished_dense(client, exp).info.run_id
    assert source <= {dense.info.run_id, recomputed.info.run_id, last_dense}
    newest = [r for r in finished if float(r.data.params[keys.DENSITY]) == 0.9]
    assert {r.data.tags[keys.DENSE_RUN_ID] for r in newest} == {last_dense}


def test_a_checkpoint_without_a_recorded_checksum_is_refused(tracking_uri, tmp_path):
    """An artifact written behind the project's back (no checksum tag) is never loaded."""
    import mlflow

    client = get_client()
    run = client.create_run(client.create_experiment("foreign"))
    torch.save({"w": torch.ones(2)}, tmp_path / "epoch_0001.pt")
    client.log_artifact(run.info.run_id, str(tmp_path / "epoch_0001.pt"),
                        keys.ARTIFACT_CHECKPOINT_DIR)
    assert mlflow.artifacts.list_artifacts(run_id=run.info.run_id,
                                           artifact_path=keys.ARTIFACT_CHECKPOINT_DIR)
    with pytest.raises(CorruptArtifactError, match="none recorded"):
        load_file(client, run.info.run_id, checkpoint_path(1))
