"""A selected cell's pruned model is registered with an alias and loads back by alias."""

from __future__ import annotations

import mlflow
import torch
from helpers import TINY
from mlflow import MlflowClient

from pipeline.config import parse_config
from pipeline.grid import ensure_cell
from pipeline.registry import register_cell_model
from tracking import keys
from tracking.artifacts import load_file


def test_registered_pruned_model_loads_by_alias_and_keeps_its_zeros(tracking_uri):
    cfg = parse_config({**TINY, "temperatures": [3], "densities": [0.3]})
    row = ensure_cell(cfg, 3, 0.3)
    version = register_cell_model(row["run_id"], "tiny-pruned")
    client = MlflowClient()
    assert client.get_model_version_by_alias("tiny-pruned", "champion").version == version
    assert "density 0.3" in client.get_model_version("tiny-pruned", version).description

    model = mlflow.pytorch.load_model("models:/tiny-pruned@champion")
    run = client.get_run(row["run_id"])
    val = {s: run.data.metrics[keys.member_metric(keys.VAL_ACC, s)] for s in (0, 1)}
    best_seed = max(val, key=val.get)                  # chosen by validation accuracy, never test
    state = load_file(client, row["run_id"], f"{keys.ARTIFACT_FINETUNED_DIR}/seed_{best_seed}.pt")
    mask = load_file(client, row["run_id"], keys.ARTIFACT_MASK)
    loaded = model.state_dict()
    for name, tensor in state.items():
        assert torch.equal(loaded[name].cpu(), tensor), name
    for name, m in mask.items():
        assert torch.all(loaded[name][m == 0] == 0)
